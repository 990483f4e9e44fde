"""``qward trust fetch``, ``qward attest show|verify`` and ``qward release init|publish|policy``.

A client pins a remote core's keys with ``trust fetch``: fresh evidence for its own nonce,
appraised against its policy, before anything is sealed. ``release`` is the publisher's side:
reference measurements go into a release log, and ``release policy`` writes the appraisal policy
(release statements with inclusion proofs) that clients use.
"""

from __future__ import annotations

import json
import secrets
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Annotated

import typer

from qward import __version__
from qward.attestation.appraisal import AppraisalPolicy
from qward.attestation.measurement import core_measurement, pcr_after_extend
from qward.attestation.release import ReleaseEntry
from qward.attestation.response import AttestationResponse
from qward.cli._app import (
    DEFAULT_STATE,
    StateDir,
    app,
    console,
    err_console,
    writable_path,
    write_file,
)
from qward.encoding import read_limited
from qward.errors import InputError
from qward.release.log import ReleaseLog
from qward.sdk.attested_trust import appraise_response, fetch_attested_trust
from qward.sdk.core_process import core_session

__all__: list[str] = []

trust_app = typer.Typer(no_args_is_help=True, help="Pin a core's keys after attestation.")
app.add_typer(trust_app, name="trust")
attest_app = typer.Typer(no_args_is_help=True, help="Hardware evidence: show and verify.")
app.add_typer(attest_app, name="attest")
release_app = typer.Typer(no_args_is_help=True, help="Publish release measurements to a log.")
app.add_typer(release_app, name="release")

_MAX_FILE = 1024 * 1024
PolicyFile = Annotated[Path, typer.Option("--policy", help="Appraisal policy (release policy).")]
SoftwareOnly = Annotated[
    bool,
    typer.Option(
        "--allow-software-only",
        help="Accept a core without TEE or TPM evidence (stamped in the trust bundle; unsafe).",
    ),
]
ReleaseDir = Annotated[
    Path, typer.Option("--dir", help="The release log's directory (its keys and entries).")
]


def _policy(path: Path) -> AppraisalPolicy:
    return AppraisalPolicy.from_bytes(read_limited(str(path), limit=_MAX_FILE, what="policy"))


@trust_app.command("fetch")
def _fetch(
    url: Annotated[str, typer.Option(help="Base URL of qward serve.")],
    policy: PolicyFile,
    output: Annotated[Path, typer.Option("--out", "-o", help="Where to pin the trust bundle.")],
    token: Annotated[str, typer.Option(envvar="QWARD_TOKEN", help="Token (env QWARD_TOKEN).")] = "",
    allow_software_only: SoftwareOnly = False,
) -> None:
    """Fetch the core's trust bundle with fresh evidence, appraise it, and only then pin it."""
    writable_path(output, what="trust bundle")
    trust = fetch_attested_trust(
        url, policy=_policy(policy), token=token, allow_software_only=allow_software_only
    )
    write_file(output, trust.to_bytes(), what="trust bundle")
    result = trust.attestation or {}
    console.print(
        f"pinned {output}: {result.get('status')} ({result.get('evidence_format')}), "
        f"release {(result.get('release') or {}).get('version', '-')}"
    )


@attest_app.command("show")
def _show(
    output: Annotated[
        Path | None, typer.Option("--out", "-o", help="Also write the response here.")
    ] = None,
    state_dir: StateDir = DEFAULT_STATE,
) -> None:
    """This machine's evidence: the local core's answer to a fresh nonce (logged by the core)."""
    if output is not None:
        writable_path(output, what="attestation response")
    with core_session(state_dir) as core:
        answer = core.attest(secrets.token_bytes(32))
    if output is not None:
        write_file(output, answer, what="attestation response")
    doc = json.loads(answer)
    evidence = doc["evidence"]
    console.print_json(
        json.dumps(
            {
                "evidence_format": evidence["kind"],
                "collected_at": doc["collected_at"],
                "log_index": doc["log_index"],
                "pcrs": evidence.get("pcrs", {}),
                "certificates": len(evidence.get("certificates", [])),
            }
        )
    )


@attest_app.command("verify")
def _verify(
    response: Annotated[Path, typer.Argument(help="An attestation response (attest show --out).")],
    policy: PolicyFile,
    max_age_minutes: Annotated[
        int, typer.Option(help="Accept evidence up to this old (it carries its own nonce).")
    ] = 60 * 24 * 365,
    allow_software_only: SoftwareOnly = False,
) -> None:
    """Appraise saved evidence offline. The nonce is the one inside the file, so this proves
    what the core was, not that it is fresh: fetch with `qward trust fetch` for that."""
    data = read_limited(str(response), limit=_MAX_FILE, what="attestation response")
    nonce = AttestationResponse.from_bytes(data).nonce
    appraisal_policy = replace(_policy(policy), max_age=timedelta(minutes=max_age_minutes))
    trust = appraise_response(
        data,
        policy=appraisal_policy,
        nonce=nonce,
        now=datetime.now(UTC),
        allow_software_only=allow_software_only,
    )
    console.print_json(json.dumps(trust.attestation))


@release_app.command("init")
def _release_init(
    origin: Annotated[str, typer.Option(help="The release log's name, e.g. example.com/rel.")],
    directory: ReleaseDir,
) -> None:
    """Create a release log (its Ed25519 and ML-DSA-44 checkpoint keys) in a new directory."""
    log = ReleaseLog.create(directory, origin=origin)
    for verifier in log.verifiers:
        console.print(verifier.to_vkey())


@release_app.command("publish")
def _release_publish(
    directory: ReleaseDir,
    version: Annotated[str, typer.Option(help="Release version.")] = __version__,
    tpm_pcr: Annotated[
        int, typer.Option(help="The PCR the core extends its measurement into.")
    ] = 23,
    measure: Annotated[
        list[Path] | None,
        typer.Option("--measure", help="Extra file the core measures (same as the core's)."),
    ] = None,
    platform: Annotated[
        list[str] | None,
        typer.Option(help="More reference values, FORMAT:NAME=HEX (e.g. sev-snp:measurement=..)."),
    ] = None,
) -> None:
    """Publish this installation's core measurement (and the TPM PCR value it yields) as a
    release entry; prints the entry."""
    # Absolute, as `qward serve --measure` hands them to the core: the path is measured too.
    measured = core_measurement(extra_paths=tuple(p.resolve() for p in measure or ()))
    platforms: dict[str, dict[str, str]] = {
        "tpm": {f"sha256:{tpm_pcr}": pcr_after_extend(measured.digest).hex()}
    }
    for item in platform or ():
        fmt, _, rest = item.partition(":")
        name, _, value = rest.partition("=")
        if not fmt or not name or not value:
            raise InputError(f"--platform {item!r} is not FORMAT:NAME=HEX")
        platforms.setdefault(fmt, {})[name] = value.lower()
    entry = ReleaseEntry(version=version, core_sha256=measured.digest.hex(), platforms=platforms)
    statement = ReleaseLog.open(directory).publish(entry)
    console.print_json(json.dumps({"index": statement.index, "entry": entry.to_json()}))


@release_app.command("policy")
def _release_policy(
    directory: ReleaseDir,
    output: Annotated[Path, typer.Option("--out", "-o", help="Where to write the policy.")],
    tpm_root: Annotated[
        list[Path] | None,
        typer.Option(help="PEM root that certifies TPM attestation keys (repeatable)."),
    ] = None,
    max_age_minutes: Annotated[int, typer.Option(help="Maximum evidence age.")] = 10,
) -> None:
    """Write an appraisal policy that accepts every release in the log, with proofs."""
    writable_path(output, what="policy")
    log = ReleaseLog.open(directory)
    roots = tuple(read_limited(str(p), limit=64 * 1024, what="TPM root") for p in tpm_root or ())
    policy = AppraisalPolicy(
        release_log_origin=log.origin,
        release_log_keys=(log.verifiers,),
        releases=log.statements(),
        tpm_roots=roots,
        max_age=timedelta(minutes=max_age_minutes),
    )
    write_file(output, policy.to_bytes(), what="policy")
    err_console.print(f"wrote {output}: {len(policy.releases)} release(s) from {log.origin}")
