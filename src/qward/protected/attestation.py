"""The core's attestation: evidence that binds its keys, and the record its receipts carry.

At start the core collects evidence for its key manifest (the canonical trust bundle) with a
nonce of its own, logs it, and, if the operator gave an appraisal policy, appraises it and
refuses to start on a refusal (fail closed). The record that results goes into every receipt's
``attestation`` member: the evidence format, the log index of the logged evidence, and the
appraisal verdict with measurements and TCB (or ``software-only``/``unappraised``). On request the
core collects fresh evidence bound to a client's nonce, logged before it is handed out.
"""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Callable
from datetime import datetime
from typing import Any, Protocol

from qward.attestation.appraisal import AppraisalPolicy, appraise
from qward.attestation.binding import report_data
from qward.attestation.evidence import SOFTWARE_ONLY, Evidence
from qward.attestation.verifiers import verifiers_for
from qward.receipts.entries import attestation_entry

__all__ = ["Attester", "CoreAttestation", "SoftwareOnlyAttester"]


class Attester(Protocol):
    """Collects evidence whose report data is ``report_data`` (64 bytes)."""

    def collect(self, report_data: bytes) -> Evidence:
        """Evidence from the platform; ``format`` says which (``software-only`` if none)."""
        ...


class SoftwareOnlyAttester:
    """No TEE and no TPM: evidence that says so, and nothing else."""

    def collect(self, report_data: bytes) -> Evidence:
        """``software-only`` evidence (binds nothing: there is nothing to sign it)."""
        return Evidence(format=SOFTWARE_ONLY)


class CoreAttestation:
    """Evidence production for one core, and the attestation record of its receipts."""

    def __init__(
        self,
        *,
        attester: Attester,
        record: Callable[[bytes], int],
        clock: Callable[[], datetime],
        policy: AppraisalPolicy | None = None,
    ) -> None:
        self._attester = attester
        self._record = record
        self._clock = clock
        self._policy = policy
        self.receipt_record: dict[str, Any] = {"status": "unattested"}

    def start(self, manifest: bytes) -> None:
        """Collect, log and (under a policy) appraise startup evidence for ``manifest``."""
        nonce = secrets.token_bytes(32)
        evidence, index = self.collect(manifest, nonce, purpose="core-start")
        record: dict[str, Any] = {
            "evidence_format": evidence.format,
            "evidence_sha256": hashlib.sha256(evidence.to_bytes()).hexdigest(),
            "log_index": index,
        }
        if self._policy is None:
            status = SOFTWARE_ONLY if evidence.format == SOFTWARE_ONLY else "unappraised"
            self.receipt_record = {**record, "status": status}
            return
        result = appraise(
            evidence,
            policy=self._policy,
            verifiers=verifiers_for(self._policy),
            manifest=manifest,
            nonce=nonce,
            now=self._clock(),
            collected_at=self._clock(),
        )
        self.receipt_record = {**record, **result.to_json()}

    def collect(self, manifest: bytes, nonce: bytes, *, purpose: str) -> tuple[Evidence, int]:
        """Evidence binding ``manifest`` and ``nonce``, logged first; returns it and its index."""
        evidence = self._attester.collect(report_data(manifest, nonce))
        entry = attestation_entry(
            evidence=evidence.to_json(),
            nonce_sha256=hashlib.sha256(nonce).hexdigest(),
            manifest_sha256=hashlib.sha256(manifest).hexdigest(),
            purpose=purpose,
            at=self._clock().strftime("%Y-%m-%dT%H:%M:%SZ"),
        )
        return evidence, self._record(entry)
