"""A real software TPM for tests: swtpm on loopback ports, and a platform CA for its AK."""

from __future__ import annotations

import hashlib
import importlib.util
import os
import shutil
import socket
import subprocess
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from qward.protected import tpm_attester
from qward.protected.tpm_attester import TPMConfig

SWTPM = shutil.which("swtpm")
NOW = datetime.now(UTC)


def require_software_tpm() -> None:
    """Skip the calling test module without swtpm or tpm2-pytss, or fail it where CI requires
    the TPM path to be tested (``QWARD_REQUIRE_SWTPM=1``)."""
    missing = [
        what
        for what, there in (
            ("swtpm (apt-get install -y swtpm)", SWTPM is not None),
            ("tpm2-pytss (pip install 'qward[tpm]')", importlib.util.find_spec("tpm2_pytss")),
        )
        if not there
    ]
    if not missing:
        return
    reason = f"the software TPM tests need {' and '.join(missing)}"
    if os.environ.get("QWARD_REQUIRE_SWTPM") == "1":
        pytest.fail(f"QWARD_REQUIRE_SWTPM=1 but {reason}", pytrace=False)
    pytest.skip(reason, allow_module_level=True)


def free_port_pair() -> int:
    """A loopback port P with P+1 also free (swtpm's control channel)."""
    for _ in range(50):
        with socket.socket() as first:
            first.bind(("127.0.0.1", 0))
            port = first.getsockname()[1]
            with socket.socket() as second:
                try:
                    second.bind(("127.0.0.1", port + 1))
                except OSError:
                    continue
        return int(port)
    raise RuntimeError("no free pair of loopback ports")


def start_swtpm(state: Path) -> tuple[subprocess.Popen[bytes], str]:
    state.mkdir()
    port = free_port_pair()
    proc = subprocess.Popen(
        [
            str(SWTPM), "socket", "--tpm2",
            "--server", f"type=tcp,port={port},bindaddr=127.0.0.1",
            "--ctrl", f"type=tcp,port={port + 1},bindaddr=127.0.0.1",
            "--flags", "not-need-init,startup-clear",
            "--tpmstate", f"dir={state}",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )  # fmt: skip
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return proc, f"swtpm:host=127.0.0.1,port={port}"
        except OSError:
            if proc.poll() is not None:
                raise RuntimeError("swtpm exited before listening") from None
            time.sleep(0.02)
    proc.kill()
    raise RuntimeError("swtpm did not start listening")


class PlatformCA:
    """A platform CA of the kind an operator runs for their own TPMs (here: made per test)."""

    def __init__(self) -> None:
        self.key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "test platform CA")])
        self.cert = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(self.key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(NOW - timedelta(days=1))
            .not_valid_after(NOW + timedelta(days=30))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=False,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=True,
                    crl_sign=True,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .sign(self.key, hashes.SHA256())
        )

    def chain_file(self, tcti: str, directory: Path) -> Path:
        """Certify the TPM's AK; write the chain (AK certificate, CA certificate) as PEM."""
        ak = tpm_attester.ak_public(TPMConfig(tcti=tcti))
        cert = tpm_attester.certify_ak(ak, self.key, self.cert, now=NOW)
        path = directory / f"ak-chain-{hashlib.sha256(ak).hexdigest()[:8]}.pem"
        pem = serialization.Encoding.PEM
        path.write_bytes(cert.public_bytes(pem) + self.cert.public_bytes(pem))
        return path
