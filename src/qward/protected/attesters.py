"""Collect the core's hardware evidence from the first usable source on this machine.

WARNING: protected side. Only ``qward.protected`` may import this module.

Sources, in the order tried:

1. configfs-tsm (``/sys/kernel/config/tsm/report``, Linux 6.7+): the kernel's one interface for
   confidential-VM reports. The provider names the format: ``sev_guest`` gives an SEV-SNP
   ATTESTATION_REPORT (and, in ``auxblob``, the host's certificate table: VCEK or VLEK, ASK,
   ARK); ``tdx_guest`` gives a TDX quote (its PCK chain travels inside the quote).
2. ``/dev/sev-guest``, ``/dev/tdx_guest``, ``/dev/nsm``: reported as present but not usable. Their
   ioctl interfaces are not implemented here, because configfs-tsm is the interface the kernel
   supports for SEV-SNP and TDX and none of these devices exists on the machines qward is built
   and tested on, so an implementation could not be tested. (Nitro's NSM has no configfs-tsm
   provider; supporting it means its ioctl, to be written on a Nitro instance.)
3. A TPM 2.0: ``QWARD_TPM_TCTI`` (for example ``swtpm:host=127.0.0.1,port=2321``) or the kernel's
   resource manager ``/dev/tpmrm0`` (``qward.protected.tpm_attester``).

When no source is usable, ``collect`` returns ``Evidence(format="software-only")``: NO HARDWARE
VOUCHES FOR THIS CORE. Its keys and measurement are then only as trustworthy as its operator, and
``collect`` says so through ``warn`` every time.
"""

from __future__ import annotations

import importlib.util
import os
import secrets
import sys
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

from qward.attestation.evidence import SOFTWARE_ONLY, Evidence
from qward.attestation.measurement import CoreMeasurement, core_measurement
from qward.errors import AttestationError, InputError
from qward.protected import tpm_attester

__all__ = [
    "CONFIGFS_TSM",
    "SEV_CERTIFICATE_GUIDS",
    "PlatformAttester",
    "SourceStatus",
    "available_sources",
    "collect",
    "parse_sev_certificate_table",
    "select_attester",
]

CONFIGFS_TSM = Path("/sys/kernel/config/tsm/report")
#: Certificate table GUIDs (AMD GHCB specification, "SNP Extended Guest Request"), in the
#: order a verifier wants the chain: the chip's key (VCEK, or a cloud's VLEK), then ASK, ARK.
SEV_CERTIFICATE_GUIDS = {
    uuid.UUID("63da758d-e664-4564-adc5-f4b93be8accd"): "vcek",
    uuid.UUID("a8074bc2-a25a-483e-aae6-39c045a0b8a1"): "vlek",
    uuid.UUID("4ab7b379-bbac-4fe4-a02f-05aef327c782"): "ask",
    uuid.UUID("c0b406a4-a803-4952-9743-3fb6014cd0ae"): "ark",
}
_PROVIDERS = {"sev_guest": "sev-snp", "tdx_guest": "tdx"}
_IOCTL_DEVICES = (("sev-guest", "sev-snp"), ("tdx_guest", "tdx"), ("nsm", "nitro"))
_MAX_BLOB = 64 * 1024
_TABLE_ENTRY = 24  # GUID (16 bytes), offset (u32 LE), length (u32 LE)


@dataclass(frozen=True, kw_only=True)
class SourceStatus:
    """One evidence source as ``qward doctor`` shows it."""

    name: str
    path: str
    present: bool
    usable: bool
    detail: str


def _stderr_warning(message: str) -> None:
    print(f"qward core: WARNING {message}", file=sys.stderr, flush=True)


def available_sources(
    *,
    environ: Mapping[str, str] | None = None,
    configfs: Path = CONFIGFS_TSM,
    dev_root: Path = Path("/dev"),
) -> list[SourceStatus]:
    """Every source ``collect`` knows, whether it is present and whether it can be used.

    Side-effect free except for the TPM, which is asked for its AK to show it answers.
    """
    statuses = [_configfs_status(configfs)]
    for device, fmt in _IOCTL_DEVICES:
        path = dev_root / device
        statuses.append(
            SourceStatus(
                name=fmt,
                path=str(path),
                present=path.exists(),
                usable=False,
                detail="ioctl interface not implemented; qward uses configfs-tsm",
            )
        )
    statuses.append(_tpm_status(environ, dev_root / "tpmrm0"))
    return statuses


def collect(
    report_data: bytes,
    *,
    measurement: CoreMeasurement | None = None,
    environ: Mapping[str, str] | None = None,
    configfs: Path = CONFIGFS_TSM,
    dev_root: Path = Path("/dev"),
    warn: Callable[[str], None] = _stderr_warning,
) -> Evidence:
    """Evidence binding ``report_data`` (64 bytes) from the first usable source.

    Returns ``Evidence(format="software-only")`` when there is none, and warns loudly: such a
    core has no hardware vouching for its keys or its code. ``measurement`` is what a TPM
    extends into PCR 23 (default: ``core_measurement()``).
    """
    if len(report_data) != 64:
        raise InputError("report_data must be the 64-byte key binding")
    statuses = available_sources(environ=environ, configfs=configfs, dev_root=dev_root)
    for status in statuses:
        if status.present and not status.usable:
            warn(f"evidence source {status.name} at {status.path} is not usable: {status.detail}")
    usable = {s.name for s in statuses if s.usable}
    if "configfs-tsm" in usable:
        return _configfs_evidence(configfs, report_data)
    if "tpm" in usable:
        config = tpm_attester.TPMConfig.from_env(environ, device=str(dev_root / "tpmrm0"))
        assert config is not None  # usable implies configured
        return tpm_attester.quote(config, report_data, measurement or core_measurement(), warn=warn)
    warn(
        "no hardware evidence source: this core's attestation is SOFTWARE-ONLY; nothing but "
        "its operator vouches for its keys and its code"
    )
    return Evidence(format=SOFTWARE_ONLY)


class PlatformAttester:
    """The core's ``Attester``: ``collect`` with this installation's measurement, taken once.

    The measurement covers the qward package, the installed distributions and the operator's
    ``measured`` files (``qward.attestation.measurement``); a TPM extends it into PCR 23.
    """

    def __init__(self, *, environ: Mapping[str, str], measured: tuple[Path, ...]) -> None:
        self._environ = dict(environ)
        self.measurement = core_measurement(extra_paths=measured)

    def collect(self, report_data: bytes) -> Evidence:
        """Evidence binding ``report_data`` from the first usable source (or software-only)."""
        return collect(report_data, measurement=self.measurement, environ=self._environ)


def select_attester(*, tcti: str | None, measured: tuple[Path, ...]) -> PlatformAttester:
    """The attester for this machine; ``tcti`` names a TPM other than ``/dev/tpmrm0``."""
    environ = dict(os.environ)
    if tcti:
        environ[tpm_attester.TCTI_ENV] = tcti
    return PlatformAttester(environ=environ, measured=measured)


def _configfs_status(root: Path) -> SourceStatus:
    present = root.is_dir()
    usable = present and os.access(root, os.W_OK | os.X_OK)
    detail = (
        "writable: a report entry can be made"
        if usable
        else ("present but not writable by this user" if present else "no configfs-tsm")
    )
    return SourceStatus(
        name="configfs-tsm", path=str(root), present=present, usable=usable, detail=detail
    )


def _tpm_status(environ: Mapping[str, str] | None, device: Path) -> SourceStatus:
    try:
        config = tpm_attester.TPMConfig.from_env(environ, device=str(device))
    except InputError as exc:
        return SourceStatus(name="tpm", path="", present=True, usable=False, detail=str(exc))
    if config is None:
        detail = f"no {device} and {tpm_attester.TCTI_ENV} is unset"
        return SourceStatus(
            name="tpm", path=str(device), present=False, usable=False, detail=detail
        )
    if importlib.util.find_spec("tpm2_pytss") is None:
        detail = "tpm2-pytss is not installed (pip install 'qward[tpm]')"
    elif not config.ak_certificates:
        detail = f"no AK certificate chain: set {tpm_attester.AK_CERT_ENV}"
    else:
        try:
            tpm_attester.ak_public(config)
        except AttestationError as exc:
            detail = str(exc)
        else:
            return SourceStatus(
                name="tpm", path=config.tcti, present=True, usable=True, detail="AK ready"
            )
    return SourceStatus(name="tpm", path=config.tcti, present=True, usable=False, detail=detail)


def _configfs_evidence(root: Path, report_data: bytes) -> Evidence:
    # A private entry per request: configfs-tsm entries are shared state, and the generation
    # counter below proves nobody else wrote our inblob between our write and our read.
    entry = root / f"qward-{os.getpid()}-{secrets.token_hex(8)}"
    try:
        entry.mkdir()
    except OSError as exc:
        raise AttestationError(f"configfs-tsm: cannot make {entry}: {exc}", check="tsm") from None
    try:
        before = int(_read(entry / "generation"))
        (entry / "inblob").write_bytes(report_data)
        outblob = _read(entry / "outblob")
        provider = _read(entry / "provider").decode("ascii", "replace").strip()
        auxblob = _read(entry / "auxblob") if (entry / "auxblob").exists() else b""
        if int(_read(entry / "generation")) != before + 1:
            raise AttestationError(
                "configfs-tsm: the entry changed during the request", check="tsm"
            )
    finally:
        entry.rmdir()
    fmt = _PROVIDERS.get(provider)
    if fmt is None:
        raise AttestationError(f"configfs-tsm: unknown provider {provider!r}", check="tsm")
    certificates = parse_sev_certificate_table(auxblob) if fmt == "sev-snp" and auxblob else ()
    return Evidence(format=fmt, report=outblob, certificates=certificates)


def _read(path: Path) -> bytes:
    try:
        with path.open("rb") as handle:
            data = handle.read(_MAX_BLOB + 1)
    except OSError as exc:
        raise AttestationError(f"configfs-tsm: reading {path}: {exc}", check="tsm") from None
    if len(data) > _MAX_BLOB:
        raise AttestationError(f"configfs-tsm: {path} is over {_MAX_BLOB} bytes", check="tsm")
    return data


def parse_sev_certificate_table(table: bytes) -> tuple[bytes, ...]:
    """The DER certificates of an SEV-SNP certificate table, chip key first, then ASK, ARK.

    The table is a list of (GUID, offset, length) entries ended by an all-zero entry; offsets
    count from the table's start. GUIDs are read in RFC 4122 byte order (as AMD's sev-guest tool
    writes them with libuuid) and, failing that, in the mixed-endian order of a Windows GUID, so
    a host of either habit is understood. Unknown GUIDs (a CRL, say) are skipped.
    """
    found: dict[str, bytes] = {}
    for at in range(0, len(table) - _TABLE_ENTRY + 1, _TABLE_ENTRY):
        raw = table[at : at + 16]
        offset = int.from_bytes(table[at + 16 : at + 20], "little")
        length = int.from_bytes(table[at + 20 : at + 24], "little")
        if raw == bytes(16):
            break
        name = SEV_CERTIFICATE_GUIDS.get(uuid.UUID(bytes=raw)) or SEV_CERTIFICATE_GUIDS.get(
            uuid.UUID(bytes_le=raw)
        )
        if name is None:
            continue
        if offset + length > len(table) or length == 0:
            raise AttestationError(
                f"SEV certificate table: {name} is out of bounds", check="sev-certs"
            )
        found[name] = table[offset : offset + length]
    else:
        raise AttestationError("SEV certificate table has no terminating entry", check="sev-certs")
    chip = found.get("vcek") or found.get("vlek")
    return tuple(c for c in (chip, found.get("ask"), found.get("ark")) if c is not None)
