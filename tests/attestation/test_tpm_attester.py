"""TPM evidence end to end against a real software TPM (swtpm), checked independently here.

Needs ``swtpm`` (Debian/Ubuntu packages ``swtpm`` and ``swtpm-tools``) and tpm2-pytss (which
needs ``libtss2-dev`` to build). The checks below parse TPMS_ATTEST and TPMT_SIGNATURE with
``struct`` and verify with pyca/cryptography, without ``qward.attestation.tpm_wire``, so a bug
shared by the producer's parser and its use cannot hide itself.
"""

from __future__ import annotations

import hashlib
import struct
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

from qward.attestation.binding import expected_field, report_data
from qward.attestation.evidence import Evidence
from qward.attestation.measurement import CoreMeasurement, core_measurement, pcr_after_extend
from qward.attestation.tpm import TPMQuoteVerifier
from qward.errors import AttestationError
from qward.protected import attesters, tpm_attester
from qward.protected.tpm_attester import TPMConfig

from .swtpm import NOW, PlatformCA, free_port_pair, require_software_tpm, start_swtpm

require_software_tpm()

BINDING = report_data(b"trust bundle of this core", b"client nonce 0123456789")


@pytest.fixture
def swtpm_factory(tmp_path: Path) -> Iterator[Callable[[], str]]:
    """Start fresh swtpm instances (each with its own state); all are stopped afterwards."""
    procs: list[subprocess.Popen[bytes]] = []

    def start() -> str:
        proc, tcti = start_swtpm(tmp_path / f"swtpm-{len(procs)}")
        procs.append(proc)
        return tcti

    yield start
    for proc in procs:
        proc.terminate()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        if proc.stderr:
            proc.stderr.close()


@pytest.fixture
def swtpm(swtpm_factory: Callable[[], str]) -> str:
    return swtpm_factory()


@pytest.fixture
def ca() -> PlatformCA:
    return PlatformCA()


def _collect(
    tcti: str, chain: Path, tmp_path: Path, measurement: CoreMeasurement, warnings: list[str]
) -> Evidence:
    environ = {tpm_attester.TCTI_ENV: tcti, tpm_attester.AK_CERT_ENV: str(chain)}
    return attesters.collect(
        BINDING,
        measurement=measurement,
        environ=environ,
        configfs=tmp_path / "no-configfs",  # this machine has no configfs-tsm; say so explicitly
        dev_root=tmp_path / "no-dev",
        warn=warnings.append,
    )


def _independent_quote(report: bytes) -> tuple[bytes, list[int], bytes]:
    """(extraData, quoted sha256 PCR indices, pcrDigest), parsed per TPM 2.0 Part 2, 10.12.12."""
    magic, kind = struct.unpack_from(">IH", report, 0)
    assert magic == 0xFF544347  # TPM_GENERATED_VALUE
    assert kind == 0x8018  # TPM_ST_ATTEST_QUOTE
    at = 6
    (size,) = struct.unpack_from(">H", report, at)  # qualifiedSigner
    at += 2 + size
    (size,) = struct.unpack_from(">H", report, at)
    extra = report[at + 2 : at + 2 + size]
    at += 2 + size + 17 + 8  # clockInfo (8+4+4+1), firmwareVersion (8)
    (banks,) = struct.unpack_from(">I", report, at)
    assert banks == 1
    alg, select_size = struct.unpack_from(">HB", report, at + 4)
    assert alg == 0x000B  # SHA-256
    select = report[at + 7 : at + 7 + select_size]
    indices = [8 * j + i for j, b in enumerate(select) for i in range(8) if b >> i & 1]
    at += 7 + select_size
    (size,) = struct.unpack_from(">H", report, at)
    assert at + 2 + size == len(report)
    return extra, indices, report[at + 2 :]


def _independent_signature(signature: bytes) -> bytes:
    """A TPMT_SIGNATURE (ECDSA, SHA-256) as DER, per TPM 2.0 Part 2, 11.3.4."""
    alg, hash_alg, r_size = struct.unpack_from(">HHH", signature, 0)
    assert (alg, hash_alg) == (0x0018, 0x000B)
    r = signature[6 : 6 + r_size]
    (s_size,) = struct.unpack_from(">H", signature, 6 + r_size)
    s = signature[8 + r_size : 8 + r_size + s_size]
    assert 8 + r_size + s_size == len(signature)
    return encode_dss_signature(int.from_bytes(r, "big"), int.from_bytes(s, "big"))


def _check_evidence(evidence: Evidence, ca: PlatformCA, measurement: CoreMeasurement) -> None:
    assert evidence.format == "tpm"
    ak_cert = x509.load_der_x509_certificate(evidence.certificates[0])
    assert evidence.certificates[1] == ca.cert.public_bytes(serialization.Encoding.DER)
    # 1. The AK certificate is the platform CA's.
    ak_cert.verify_directly_issued_by(ca.cert)
    # 2. The quote is signed by the certified AK.
    ak_key = ak_cert.public_key()
    assert isinstance(ak_key, ec.EllipticCurvePublicKey)
    der = _independent_signature(evidence.signature)
    ak_key.verify(der, evidence.report, ec.ECDSA(hashes.SHA256()))
    # 3. It binds the key manifest and nonce, and covers PCRs 0-7 and 23.
    extra, indices, digest = _independent_quote(evidence.report)
    assert extra == expected_field("tpm", BINDING) == BINDING[:32]
    assert indices == [0, 1, 2, 3, 4, 5, 6, 7, 23]
    assert sorted(evidence.pcrs) == sorted(f"sha256:{i}" for i in indices)
    # 4. The PCR values shipped with it are the ones quoted.
    values = b"".join(evidence.pcrs[f"sha256:{i}"] for i in indices)
    assert digest == hashlib.sha256(values).digest()
    # 5. PCR 23 holds exactly one extend of the core's measurement.
    assert evidence.pcrs["sha256:23"] == pcr_after_extend(measurement.digest)


def test_quote_binds_nonce_key_manifest_and_measurement(
    swtpm: str, ca: PlatformCA, tmp_path: Path
) -> None:
    measurement = core_measurement()
    warnings: list[str] = []
    started = time.perf_counter()
    evidence = _collect(swtpm, ca.chain_file(swtpm, tmp_path), tmp_path, measurement, warnings)
    elapsed = time.perf_counter() - started
    _check_evidence(evidence, ca, measurement)
    assert Evidence.from_bytes(evidence.to_bytes()) == evidence
    assert elapsed < 5, f"collecting TPM evidence took {elapsed:.2f}s"
    # The only warnings are about the absent sources, never about PCR 23.
    assert not any("PCR" in w for w in warnings)

    # Each check above can fail: a changed byte breaks the signature ...
    ak_key = x509.load_der_x509_certificate(evidence.certificates[0]).public_key()
    assert isinstance(ak_key, ec.EllipticCurvePublicKey)
    tampered = bytearray(evidence.report)
    tampered[-1] ^= 1
    with pytest.raises(InvalidSignature):
        ak_key.verify(
            _independent_signature(evidence.signature), bytes(tampered), ec.ECDSA(hashes.SHA256())
        )
    # ... and another measurement does not match PCR 23.
    assert evidence.pcrs["sha256:23"] != pcr_after_extend(hashlib.sha256(b"other").digest())


def test_second_quote_does_not_extend_again_and_new_code_resets(
    swtpm: str, ca: PlatformCA, tmp_path: Path
) -> None:
    chain = ca.chain_file(swtpm, tmp_path)
    first, second = core_measurement(), core_measurement(extra_paths=[chain])
    warnings: list[str] = []
    _collect(swtpm, chain, tmp_path, first, warnings)
    again = _collect(swtpm, chain, tmp_path, first, warnings)
    _check_evidence(again, ca, first)  # measured once per boot, not once per quote
    assert not any("PCR" in w for w in warnings)
    # A different core on the same TPM (an upgrade without a reboot) replaces the measurement.
    upgraded = _collect(swtpm, chain, tmp_path, second, warnings)
    _check_evidence(upgraded, ca, second)
    assert any("PCR 23 held" in w and "resetting" in w for w in warnings)


def test_changed_config_changes_pcr23_on_a_fresh_tpm(
    swtpm_factory: Callable[[], str], ca: PlatformCA, tmp_path: Path
) -> None:
    config = tmp_path / "core.toml"
    config.write_text('listen = "127.0.0.1:8443"\n')
    before = core_measurement(extra_paths=[config])
    config.write_text('listen = "0.0.0.0:8443"\n')
    after = core_measurement(extra_paths=[config])
    assert after.differences(before) == ("extra",)

    pcr23 = []
    for measurement in (before, after):
        tcti = swtpm_factory()  # a fresh TPM each time: PCR 23 starts from zero
        evidence = _collect(tcti, ca.chain_file(tcti, tmp_path), tmp_path, measurement, [])
        _check_evidence(evidence, ca, measurement)
        pcr23.append(evidence.pcrs["sha256:23"])
    assert pcr23[0] != pcr23[1]


def test_persistent_ak_quotes_under_the_same_key(
    swtpm: str, ca: PlatformCA, tmp_path: Path
) -> None:
    handle = 0x81010002
    public = tpm_attester.persist_ak(TPMConfig(tcti=swtpm), handle)
    assert public == tpm_attester.ak_public(TPMConfig(tcti=swtpm, ak_handle=handle))
    chain = tpm_attester.load_certificate_chain(str(ca.chain_file(swtpm, tmp_path)))
    config = TPMConfig(tcti=swtpm, ak_handle=handle, ak_certificates=chain)
    measurement = core_measurement()
    evidence = tpm_attester.quote(config, BINDING, measurement, warn=pytest.fail)
    _check_evidence(evidence, ca, measurement)
    missing = TPMConfig(tcti=swtpm, ak_handle=handle + 1, ak_certificates=chain)
    with pytest.raises(AttestationError) as info:
        tpm_attester.quote(missing, BINDING, measurement, warn=pytest.fail)
    assert info.value.check == "tpm-ak"


def test_qwards_verifier_accepts_the_evidence_and_names_a_tampered_quote(
    swtpm: str, ca: PlatformCA, tmp_path: Path
) -> None:
    """The producer and ``qward.attestation.tpm`` meet: what one makes, the other verifies."""
    measurement = core_measurement()
    evidence = _collect(swtpm, ca.chain_file(swtpm, tmp_path), tmp_path, measurement, [])
    verifier = TPMQuoteVerifier(roots=(ca.cert,))
    claims = verifier.verify(evidence, now=NOW)
    assert claims.report_data == expected_field("tpm", BINDING)
    assert claims.measurements["sha256:23"] == pcr_after_extend(measurement.digest).hex()
    assert set(claims.measurements) == {f"sha256:{i}" for i in (*range(8), 23)}
    with pytest.raises(AttestationError) as refused:
        TPMQuoteVerifier(roots=(PlatformCA().cert,)).verify(evidence, now=NOW)
    assert refused.value.check == "tpm-ak-root"
    changed = {**evidence.pcrs, "sha256:23": bytes(32)}
    with pytest.raises(AttestationError) as refused:
        verifier.verify(replace(evidence, pcrs=changed), now=NOW)
    assert refused.value.check == "tpm-pcr-digest"


def test_certificate_for_another_key_is_refused(
    swtpm_factory: Callable[[], str], ca: PlatformCA, tmp_path: Path
) -> None:
    mine, other = swtpm_factory(), swtpm_factory()
    chain = tpm_attester.load_certificate_chain(str(ca.chain_file(other, tmp_path)))
    config = TPMConfig(tcti=mine, ak_certificates=chain)
    with pytest.raises(AttestationError) as info:
        tpm_attester.quote(config, BINDING, core_measurement(), warn=pytest.fail)
    assert info.value.check == "ak-certificate"


def test_doctor_view_and_fallbacks(swtpm: str, ca: PlatformCA, tmp_path: Path) -> None:
    dev = tmp_path / "dev"
    dev.mkdir()
    no_configfs = tmp_path / "no-configfs"

    def tpm_status(environ: dict[str, str]) -> attesters.SourceStatus:
        statuses = attesters.available_sources(environ=environ, configfs=no_configfs, dev_root=dev)
        assert [s.name for s in statuses] == ["configfs-tsm", "sev-snp", "tdx", "nitro", "tpm"]
        assert not any(s.present for s in statuses[:4])
        return statuses[4]

    assert not tpm_status({}).present
    uncertified = tpm_status({tpm_attester.TCTI_ENV: swtpm})
    assert uncertified.present and not uncertified.usable
    assert tpm_attester.AK_CERT_ENV in uncertified.detail
    chain = ca.chain_file(swtpm, tmp_path)
    ready = tpm_status({tpm_attester.TCTI_ENV: swtpm, tpm_attester.AK_CERT_ENV: str(chain)})
    assert ready.present and ready.usable

    # A TPM that nobody certified yields software-only evidence, with both warnings.
    warnings: list[str] = []
    evidence = attesters.collect(
        BINDING,
        environ={tpm_attester.TCTI_ENV: swtpm},
        configfs=no_configfs,
        dev_root=dev,
        warn=warnings.append,
    )
    assert evidence == Evidence(format="software-only")
    assert any("tpm" in w and "not usable" in w for w in warnings)
    assert any("SOFTWARE-ONLY" in w for w in warnings)


def test_unreachable_tpm_is_reported_not_raised(tmp_path: Path, ca: PlatformCA) -> None:
    port = free_port_pair()  # nothing listens here
    cert = tmp_path / "ca.pem"
    cert.write_bytes(ca.cert.public_bytes(serialization.Encoding.PEM))
    environ = {
        tpm_attester.TCTI_ENV: f"swtpm:host=127.0.0.1,port={port}",
        tpm_attester.AK_CERT_ENV: str(cert),
    }
    status = attesters.available_sources(
        environ=environ, configfs=tmp_path / "none", dev_root=tmp_path
    )[-1]
    assert status.present and not status.usable
    assert "cannot open TPM" in status.detail


def test_quote_timing(swtpm: str, ca: PlatformCA, tmp_path: Path) -> None:
    """Not a benchmark: records how long one collect takes on swtpm (printed with -s)."""
    chain = tpm_attester.load_certificate_chain(str(ca.chain_file(swtpm, tmp_path)))
    config = TPMConfig(tcti=swtpm, ak_certificates=chain)
    measurement = core_measurement()
    tpm_attester.quote(config, BINDING, measurement, warn=pytest.fail)  # measures PCR 23
    times = []
    for _ in range(5):
        started = time.perf_counter()
        tpm_attester.quote(config, BINDING, measurement, warn=pytest.fail)
        times.append(time.perf_counter() - started)
    print(f"swtpm quote (open, AK, quote, 9 PCR reads): best {min(times) * 1000:.1f} ms")
    assert min(times) < 1.0
