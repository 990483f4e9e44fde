"""Loads the vendor-signed samples in ``data/`` (provenance and checksums in data/README.md)."""

from __future__ import annotations

import hashlib
import re
from datetime import UTC, datetime
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from qward.attestation.evidence import Evidence

DATA = Path(__file__).parent / "data"
#: An instant inside the validity window of every certificate in every sample (the day these
#: tests were written); fixed, so the tests do not start failing when a certificate expires.
NOW = datetime(2026, 12, 3, tzinfo=UTC)


def read(name: str) -> bytes:
    return (DATA / name).read_bytes()


def pem_chain_der(name: str) -> list[bytes]:
    return [c.public_bytes(Encoding.DER) for c in x509.load_pem_x509_certificates(read(name))]


def snp_report(name: str) -> bytes:
    raw = read(name)
    return bytes.fromhex(raw.decode().strip()) if name.endswith(".hex") else raw


def snp_evidence(sample: str, chain: str, *, with_ark: bool = True) -> Evidence:
    """``sample`` is the file prefix: ``<sample>-report.{bin,hex}`` and ``<sample>-vcek.der``."""
    suffix = ".hex" if (DATA / f"{sample}-report.hex").exists() else ".bin"
    ask, ark = pem_chain_der(chain)
    certs = (
        (read(f"{sample}-vcek.der"), ask, ark) if with_ark else (read(f"{sample}-vcek.der"), ask)
    )
    return Evidence(
        format="sev-snp", report=snp_report(f"{sample}-report{suffix}"), certificates=certs
    )


def readme_checksums() -> dict[str, str]:
    """The ``| `file` | ... | sha256 |`` rows of data/README.md."""
    text = (DATA / "README.md").read_text()
    return dict(re.findall(r"^\| `([^`]+)` \|.*\| `([0-9a-f]{64})` \|$", text, re.M))


def sha256(name: str) -> str:
    return hashlib.sha256(read(name)).hexdigest()
