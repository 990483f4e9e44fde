"""Evidence source discovery without hardware, and the SEV-SNP certificate table layout.

This machine has no configfs-tsm, SEV-SNP, TDX or Nitro device, so the configfs-tsm and ioctl
paths themselves are not exercised here (see ``qward.protected.attesters``); the TPM path runs
against swtpm in ``tests/attestation/test_tpm_attester.py``.
"""

from __future__ import annotations

import struct
import uuid
from pathlib import Path

import pytest

from qward.attestation.evidence import Evidence
from qward.errors import AttestationError, InputError
from qward.protected import attesters

VCEK, ASK, ARK, CRL = (
    uuid.UUID("63da758d-e664-4564-adc5-f4b93be8accd"),
    uuid.UUID("4ab7b379-bbac-4fe4-a02f-05aef327c782"),
    uuid.UUID("c0b406a4-a803-4952-9743-3fb6014cd0ae"),
    uuid.UUID("92f81bc3-5811-4d3d-97ff-d19f88dc67ea"),
)


def _table(entries: list[tuple[bytes, bytes]], *, terminate: bool = True) -> bytes:
    """The GHCB certificate table: (GUID, offset u32 LE, length u32 LE)..., zero entry, blobs."""
    header_size = 24 * (len(entries) + (1 if terminate else 0))
    header, blobs = b"", b""
    for guid, blob in entries:
        header += guid + struct.pack("<II", header_size + len(blobs), len(blob))
        blobs += blob
    return header + (bytes(24) if terminate else b"") + blobs


def test_certificate_table_is_ordered_chip_key_first() -> None:
    table = _table(
        [(ARK.bytes, b"ark-der"), (CRL.bytes, b"crl"), (ASK.bytes, b"ask-der"), (VCEK.bytes, b"v")]
    )
    assert attesters.parse_sev_certificate_table(table) == (b"v", b"ask-der", b"ark-der")
    # A host writing GUIDs in the mixed-endian (Windows) byte order is understood too.
    mixed = _table([(VCEK.bytes_le, b"v"), (ASK.bytes_le, b"ask-der")])
    assert attesters.parse_sev_certificate_table(mixed) == (b"v", b"ask-der")


def test_malformed_certificate_tables_are_refused() -> None:
    with pytest.raises(AttestationError) as info:
        attesters.parse_sev_certificate_table(_table([(VCEK.bytes, b"v")], terminate=False)[:24])
    assert info.value.check == "sev-certs"
    bad = VCEK.bytes + struct.pack("<II", 48, 4096) + bytes(24)
    with pytest.raises(AttestationError, match="out of bounds"):
        attesters.parse_sev_certificate_table(bad)


def test_no_source_means_software_only_said_loudly(tmp_path: Path) -> None:
    warnings: list[str] = []
    evidence = attesters.collect(
        bytes(64),
        environ={},
        configfs=tmp_path / "tsm",
        dev_root=tmp_path,
        warn=warnings.append,
    )
    assert evidence == Evidence(format="software-only")
    assert warnings and "SOFTWARE-ONLY" in warnings[-1]
    with pytest.raises(InputError):
        attesters.collect(bytes(32), environ={}, configfs=tmp_path, dev_root=tmp_path)


def test_ioctl_devices_are_reported_present_but_unusable(tmp_path: Path) -> None:
    for name in ("sev-guest", "tdx_guest", "nsm"):
        (tmp_path / name).write_bytes(b"")  # Stands in for the device node's existence only.
    statuses = attesters.available_sources(environ={}, configfs=tmp_path / "tsm", dev_root=tmp_path)
    by_name = {s.name: s for s in statuses}
    for fmt in ("sev-snp", "tdx", "nitro"):
        assert by_name[fmt].present and not by_name[fmt].usable
        assert "configfs-tsm" in by_name[fmt].detail
    assert not by_name["configfs-tsm"].present
    warnings: list[str] = []
    evidence = attesters.collect(
        bytes(64), environ={}, configfs=tmp_path / "tsm", dev_root=tmp_path, warn=warnings.append
    )
    assert evidence.format == "software-only"
    assert sum("not usable" in w for w in warnings) == 3
