"""Real vendor evidence through the whole appraisal: the policy's checks refuse it by name.

The published samples were taken for other keys and other nonces, so appraising them for ours must
fail at the key binding (``report-data``); the debug samples must fail earlier, at
``debug-policy``; a nonce used before fails first of all. Each sample's own release (its
measurements, published in a release log) is in the policy, so nothing else is what refuses.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import replace
from datetime import UTC, datetime
from functools import partial
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from qward.attestation.appraisal import AppraisalPolicy, appraise
from qward.attestation.evidence import Evidence
from qward.attestation.release import ReleaseEntry
from qward.attestation.verifiers import verifiers_for
from qward.errors import AttestationError
from qward.release.log import ReleaseLog

from .samples import DATA, NOW, read, snp_evidence

MANIFEST = b'{"format":"qward/trust/v1"}'
NONCE = bytes(range(32))
NITRO_AT = datetime(2024, 9, 7, 14, 37, 39, 545000, tzinfo=UTC)
NITRO_DEBUG_AT = datetime(2024, 9, 7, 14, 38, 6, 508000, tzinfo=UTC)


def _tpm() -> Evidence:
    pcrs = json.loads((DATA / "gce_vtpm_pcrs_sha256.json").read_text())
    return Evidence(
        format="tpm",
        report=read("gce_vtpm_quote_sha256.tpms_attest"),
        signature=read("gce_vtpm_quote_sha256.tpmt_signature"),
        certificates=(read("gce_vtpm_ak_cert.der"), read("gce_tpm_ek_intermediate_2.der")),
        pcrs={k: bytes.fromhex(v) for k, v in pcrs.items()},
    )


def _google_root_pem() -> bytes:
    return x509.load_der_x509_certificate(read("gce_tpm_ek_root_1.der")).public_bytes(Encoding.PEM)


def _raw(kind: str, name: str, size: int | None = None) -> Evidence:
    return Evidence(format=kind, report=read(name)[:size])


def _snp(sample: str, chain: str) -> Evidence:
    return snp_evidence(sample, chain)


# (name, evidence, instant, debug sample?)
SAMPLES = [
    ("snp milan, debug", partial(_snp, "milan-go-sev-guest", "milan-cert-chain.pem"), NOW, True),
    ("sev-snp milan", partial(_snp, "milan-virtee", "milan-cert-chain.pem"), NOW, False),
    ("sev-snp genoa", partial(_snp, "genoa-lunal", "genoa-cert-chain.pem"), NOW, False),
    ("tdx spr", partial(_raw, "tdx", "tdx-go-tdx-guest-spr-quote.dat", 4935), NOW, False),
    ("tdx debug TD", partial(_raw, "tdx", "tdx-lunal-v4-debug-quote.dat"), NOW, True),
    ("nitro", partial(_raw, "nitro", "nitro_attestation.cose"), NITRO_AT, False),
    ("nitro debug", partial(_raw, "nitro", "nitro_attestation_debug.cose"), NITRO_DEBUG_AT, True),
    ("tpm gce", _tpm, NOW, False),
]  # fmt: skip


def _policy(tmp_path: Path, evidence: Evidence, now: datetime) -> AppraisalPolicy:
    """A policy whose one release is exactly this sample's measurements."""
    base = AppraisalPolicy(
        release_log_origin="x", release_log_keys=(), releases=(), tpm_roots=(_google_root_pem(),)
    )
    claims = verifiers_for(base)[evidence.format].verify(evidence, now=now)
    log = ReleaseLog.create(tmp_path / "log", origin="example.com/releases")
    entry = ReleaseEntry(
        version="sample", core_sha256="00" * 32, platforms={evidence.format: claims.measurements}
    )
    log.publish(entry)
    return replace(
        base,
        release_log_origin=log.origin,
        release_log_keys=(log.verifiers,),
        releases=log.statements(),
    )


@pytest.mark.parametrize(("name", "make", "now", "debug"), SAMPLES, ids=[s[0] for s in SAMPLES])
def test_real_evidence_is_refused_by_the_check_that_applies(
    name: str, make: Callable[[], Evidence], now: datetime, debug: bool, tmp_path: Path
) -> None:
    evidence = make()
    policy = _policy(tmp_path, evidence, now)
    args = {"verifiers": verifiers_for(policy), "manifest": MANIFEST, "nonce": NONCE, "now": now}

    def check(p: AppraisalPolicy, **more: object) -> str:
        with pytest.raises(AttestationError) as refused:
            appraise(evidence, policy=p, **{**args, **more})  # type: ignore[arg-type]
        return refused.value.check

    assert check(policy, seen_nonces=[NONCE]) == "nonce"
    assert check(policy) == ("debug-policy" if debug else "report-data")
    assert check(replace(policy, allow_debug=True)) == "report-data"
    other_format = replace(
        policy, formats=frozenset({"sev-snp", "tdx", "nitro", "tpm"} - {evidence.format})
    )
    assert check(other_format) == "format"
