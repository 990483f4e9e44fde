"""Key administration in the core: list, rotate, retire, rewrap and the migration report.

WARNING: this module uses private keys. Only ``qward.protected`` may import it.

These are ``CoreService`` operations kept in their own module; ``service.dispatch`` falls back to
``KEY_ADMIN_OPS``. Public tools (``qward keys ...``) reach them only through the core socket and
never hold key material: rewrap sends the artifact's front (magic, header, key wrap) and gets back
the front with a new wrap, so payload bytes never travel.

Every change is logged: a rotation or retirement is an admin entry, each private-key use (unwrapping
a data key to rewrap it, the root signing a manifest) a key-use entry sequenced before the use.
A change is written to the keystore before it is logged, and rolled back if logging fails, so the
keystore never holds a change the log does not.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import weakref
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from cryptography.exceptions import InvalidTag

from qward.crypto.envelope import derive_payload_keys, hpke_info, hpke_suite, wrap_data_key
from qward.crypto.manifest import KeyManifest, KeyState, Purpose, signed_manifest_bytes
from qward.crypto.rewrap import ArtifactFront, parse_front, read_front, rewrap_file
from qward.encoding import canonical_json, parse_canonical_json, read_limited
from qward.errors import DecryptionError, FormatError, InputError, NotFoundError, UnknownKeyError
from qward.protected.keyring import KeyRing
from qward.receipts.trust import TrustBundle
from qward.suites import Policy, suite_policy

if TYPE_CHECKING:
    from qward.protected.keystore import CoreKeys
    from qward.protected.models import ModelRegistry

__all__ = [
    "KEY_ADMIN_OPS",
    "KeyAdminHost",
    "build_trust",
    "check_unwrap",
    "migration_report",
    "op_keys_list",
    "op_keys_report",
    "op_keys_retire",
    "op_keys_rewrap",
    "op_keys_rewrap_model",
    "op_keys_rotate",
]

Reply = tuple[dict[str, Any], bytes]
_MAX_FRONT = 2 * 64 * 1024 + 64
_MAX_SCAN_FILES = 100_000
# The signed manifest of each ring, by manifest serial: the root signs once per change.
_SIGNED: weakref.WeakKeyDictionary[KeyRing, tuple[int, bytes]] = weakref.WeakKeyDictionary()


def build_trust(keys: CoreKeys) -> TrustBundle:
    """The trust bundle for ``keys``: primary KEK, the checkpoint keys in use, every checkpoint
    and receipt key version (so evidence signed before a rotation still verifies)."""
    # A shared log identity has one checkpoint key; the keystore's own are not used then.
    key_sets = keys.ring.checkpoint_key_sets() if keys.log_identity is None else ()
    return TrustBundle(
        origin=keys.origin,
        log_verifiers=tuple(s.verifier() for s in keys.log_signers),
        receipt_keys=keys.ring.manifest().receipt_keys(),
        hpke_recipient=keys.hpke_public,
        # Only a log that rotated its checkpoint keys needs the per-version sets.
        log_key_versions=key_sets if len(key_sets) > 1 else (),
    )


def check_unwrap(keys: CoreKeys, key_id: str, *, use: str) -> None:
    """Refuse, naming the key and its state, to open anything wrapped to a retired KEK."""
    # A key this core never held is left to the opening, which names it; the manifest is not
    # rebuilt per request (it derives the root's public key).
    try:
        keys.ring.find(key_id)
    except UnknownKeyError:
        return
    keys.ring.require_usable(key_id, purpose=Purpose.HPKE_UNWRAP, use=use)


class KeyAdminHost(Protocol):
    """What key administration needs of the core (``CoreService`` provides it)."""

    @property
    def keys(self) -> CoreKeys: ...
    @property
    def models(self) -> ModelRegistry: ...
    def log_admin(self, action: str, **details: Any) -> None: ...
    def log_key_use(self, *, key_id: str, purpose: str, data: bytes) -> None: ...
    def refresh_trust(self) -> TrustBundle: ...


# -- helpers ---------------------------------------------------------------------------------


def _keys(service: KeyAdminHost) -> CoreKeys:
    return service.keys


def _state_dir(service: KeyAdminHost) -> Path:
    state = _keys(service).state_dir
    if state is None:
        raise InputError("this core has no state directory to administer")
    return state


def _log_key_use(service: KeyAdminHost, *, key_id: str, purpose: str, data: bytes) -> None:
    service.log_key_use(key_id=key_id, purpose=purpose, data=data)


def _signed_manifest(service: KeyAdminHost) -> bytes:
    ring = _keys(service).ring
    with ring.lock:
        manifest = ring.manifest()
        cached = _SIGNED.get(ring)
        if cached is not None and cached[0] == manifest.serial:
            return cached[1]
        message = manifest.signed_message()
        _log_key_use(
            service, key_id=manifest.root_key_id, purpose="sign-key-manifest", data=message
        )
        signed = signed_manifest_bytes(manifest, ring.sign_manifest(manifest))
        _SIGNED[ring] = (manifest.serial, signed)
        return signed


def _publish(service: KeyAdminHost) -> bytes:
    """After a change: refresh the trust bundle and rewrite trust.json and keys-manifest.json."""
    trust = service.refresh_trust()
    signed = _signed_manifest(service)
    state = _state_dir(service)
    _replace(state / "trust.json", trust.to_bytes())
    _replace(state / "keys-manifest.json", signed)
    return signed


def _replace(path: Path, data: bytes) -> None:
    partial = path.with_name(f".{path.name}.{os.getpid()}.partial")
    partial.write_bytes(data)
    os.replace(partial, path)


def _change(
    service: KeyAdminHost, change: Callable[[KeyRing], dict[str, Any]], action: str
) -> dict[str, Any]:
    """Apply ``change`` to the ring, save the keystore, log ``action``; roll back on failure."""
    keys = _keys(service)
    with keys.ring.lock:
        snapshot = keys.ring.to_material()
        details = change(keys.ring)
        try:
            keys.save()
            service.log_admin(action, **details)
        except BaseException:
            keys.ring = KeyRing.from_material(snapshot)
            keys.save()
            raise
    _publish(service)
    return details


def _manifest_summary(manifest: KeyManifest) -> dict[str, Any]:
    return {
        "origin": manifest.origin,
        "policy": manifest.policy.value,
        "serial": manifest.serial,
        "root_key_id": manifest.root_key_id,
        "keys": [
            {
                "key_id": k.key_id,
                "purpose": k.purpose.value,
                "suite": k.suite,
                "version": k.version,
                "state": k.state.value,
            }
            for k in manifest.keys
        ],
    }


# -- rewrap ----------------------------------------------------------------------------------


def _rewrap_front(service: KeyAdminHost, front: ArtifactFront) -> tuple[bytes, dict[str, Any]]:
    """Unwrap the data key with its (non-retired) KEK and wrap it to the primary KEK.

    1. Refuse a retired or foreign key, or a suite the policy cannot read.
    2. Log the key use, then HPKE-open the data key bound to this header.
    3. Check the key commitment in constant time: the data key must be this artifact's.
    4. HPKE-seal the data key to the primary KEK under the same header binding.
    """
    ring = _keys(service).ring
    primary = ring.primary(Purpose.HPKE_UNWRAP)
    old = front.wrap.key_id
    if old == primary.key_id:
        return front.to_bytes(), {"changed": False, "old_key_id": old, "new_key_id": old}
    version = ring.require_usable(old, purpose=Purpose.HPKE_UNWRAP, use="rewrap")
    _log_key_use(service, key_id=old, purpose="rewrap", data=front.to_bytes())
    try:
        dek = hpke_suite(version.suite).decrypt(
            front.wrap.encapsulated_key,
            version.hpke_handle().unsafe_key(),
            info=hpke_info(front.header),
        )
    except (InvalidTag, ValueError):
        raise DecryptionError(f"{front.kind}: the data key does not open under {old}") from None
    if not hmac.compare_digest(derive_payload_keys(dek)[1], front.commitment):
        raise DecryptionError(f"{front.kind}: key commitment does not match")
    wrap = wrap_data_key(
        dek,
        recipient=primary.recipient(),
        header=front.header,
        policy=suite_policy(ring.policy),
    )
    new_front = front.with_wrap(wrap)
    details = {
        "changed": True,
        "kind": front.kind,
        "old_key_id": old,
        "new_key_id": primary.key_id,
        "header_sha256": hashlib.sha256(front.header).hexdigest(),
    }
    service.log_admin("artifact-rewrapped", **details)
    return new_front, details


# -- migration report ------------------------------------------------------------------------


def _artifacts(directory: Path) -> Iterator[Path]:
    if not directory.is_dir():
        raise InputError(f"{directory} is not a directory")
    for count, path in enumerate(sorted(directory.rglob("*"))):
        if count >= _MAX_SCAN_FILES:
            raise InputError(f"{directory} has more than {_MAX_SCAN_FILES} files")
        if path.is_file() and not path.name.startswith("."):
            yield path


def _classify(front: ArtifactFront, manifest: KeyManifest) -> list[str]:
    rules = suite_policy(manifest.policy)
    reasons = []
    if front.wrap.suite not in rules.accepted:
        reasons.append(
            f"suite {front.wrap.suite} is not accepted for new seals under policy "
            f"{manifest.policy.value}"
        )
    known = {k.key_id: k for k in manifest.keys}
    record = known.get(front.wrap.key_id)
    if record is None:
        reasons.append("key is not in this core's manifest")
    elif record.state != KeyState.PRIMARY:
        reasons.append(f"key is {record.state.value} (v{record.version}), not primary")
    return reasons


def migration_report(manifest: KeyManifest, directories: list[Path]) -> list[dict[str, Any]]:
    """Every sealed artifact or stream under ``directories`` that is under a suite the policy does
    not accept for new seals, or wrapped to a key that is not the primary KEK."""
    items = []
    for directory in directories:
        for path in _artifacts(directory):
            try:
                with open(path, "rb") as src:
                    front = read_front(src)
            except (FormatError, OSError):
                continue  # not a sealed artifact (a record, a README, ...)
            reasons = _classify(front, manifest)
            if reasons:
                items.append(
                    {
                        "path": str(path),
                        "kind": front.kind,
                        "suite": front.wrap.suite,
                        "key_id": front.wrap.key_id,
                        "reasons": reasons,
                    }
                )
    return items


# -- operations ------------------------------------------------------------------------------


def op_keys_list(service: KeyAdminHost, header: dict[str, Any], payload: bytes) -> Reply:
    """The key manifest: a summary in the header, the signed manifest as the payload."""
    signed = _signed_manifest(service)
    return {"ok": True, **_manifest_summary(_keys(service).ring.manifest())}, signed


def op_keys_rotate(service: KeyAdminHost, header: dict[str, Any], payload: bytes) -> Reply:
    """Make a new version primary (``purpose``), or switch the policy (``policy``)."""
    policy, purpose = header.get("policy"), header.get("purpose")
    if policy is not None:
        target = suite_policy(str(policy)).policy

        def _switch(ring: KeyRing) -> dict[str, Any]:
            before = ring.policy
            rotated = ring.set_policy(Policy(target))
            return {
                "from_policy": before.value,
                "to_policy": target.value,
                "rotated": [{"purpose": v.purpose.value, "key_id": v.key_id} for v in rotated],
            }

        details = _change(service, _switch, "key-policy-changed")
    else:
        try:
            which = Purpose(str(purpose))
        except ValueError:
            names = ", ".join(p.value for p in Purpose)
            raise InputError(f"unknown key purpose {purpose!r}; known: {names}") from None
        if which is Purpose.CHECKPOINT_SIGNING and _keys(service).log_identity is not None:
            # Every core of a shared log signs with the shared identity; one core cannot change it.
            raise InputError(
                "this core signs checkpoints with a shared log identity (QWARD_LOG_IDENTITY); "
                "its checkpoint key is not rotated per core"
            )

        def _rotate(ring: KeyRing) -> dict[str, Any]:
            old = ring.primary(which)
            new = ring.rotate(which)
            return {
                "purpose": which.value,
                "key_id": new.key_id,
                "version": new.version,
                "suite": new.suite,
                "previous_key_id": old.key_id,
            }

        details = _change(service, _rotate, "key-rotated")
    return {"ok": True, **details}, b""


def op_keys_retire(service: KeyAdminHost, header: dict[str, Any], payload: bytes) -> Reply:
    """Retire a non-primary key version."""
    key_id = header.get("key_id")
    if not isinstance(key_id, str):
        raise InputError("key_id must be a string")

    def _retire(ring: KeyRing) -> dict[str, Any]:
        try:
            version = ring.retire(key_id)
        except UnknownKeyError as exc:
            # Naming a key the core does not hold is a mistake in the request, not bad evidence.
            raise NotFoundError(str(exc)) from None
        return {"key_id": key_id, "purpose": version.purpose.value, "version": version.version}

    return {"ok": True, **_change(service, _retire, "key-retired")}, b""


def op_keys_rewrap(service: KeyAdminHost, header: dict[str, Any], payload: bytes) -> Reply:
    """Rewrap one artifact front (payload) to the primary KEK; returns the new front."""
    if len(payload) > _MAX_FRONT:
        raise InputError("rewrap takes only the artifact's front (magic, header, key wrap)")
    new_front, details = _rewrap_front(service, parse_front(payload))
    return {"ok": True, **details}, new_front


def op_keys_rewrap_model(service: KeyAdminHost, header: dict[str, Any], payload: bytes) -> Reply:
    """Rewrap a model in the core's own model store, and update its record's sealed digest."""
    entry = service.models.get(str(header.get("model_sha256")))
    models = _state_dir(service) / "models"
    path = models / f"{entry.model_sha256}.sealed"
    with open(path, "rb") as src:
        front = read_front(src)
    new_front, details = _rewrap_front(service, front)
    if details["changed"]:
        with entry.lock:
            rewrap_file(path, front, new_front)
            sealed_sha = hashlib.sha256(
                read_limited(str(path), limit=2**31, what="sealed model")
            ).hexdigest()
            record_path = models / f"{entry.model_sha256}.json"
            record = parse_canonical_json(record_path.read_bytes(), what="model record")
            record["sealed_sha256"] = sealed_sha
            _replace(record_path, canonical_json(record))
            entry.sealed_sha256 = sealed_sha
        details["sealed_sha256"] = sealed_sha
    return {"ok": True, "model_sha256": entry.model_sha256, **details}, b""


def op_keys_report(service: KeyAdminHost, header: dict[str, Any], payload: bytes) -> Reply:
    """The migration report over the core's model store and the directories named."""
    extra = header.get("directories", [])
    if not isinstance(extra, list) or not all(isinstance(d, str) for d in extra):
        raise InputError("directories must be a list of paths")
    directories = [_state_dir(service) / "models", *(Path(d) for d in extra)]
    manifest = _keys(service).ring.manifest()
    return {
        "ok": True,
        "policy": manifest.policy.value,
        "artifacts": migration_report(manifest, directories),
    }, b""


KEY_ADMIN_OPS: dict[str, Callable[[KeyAdminHost, dict[str, Any], bytes], Reply]] = {
    "keys_list": op_keys_list,
    "keys_rotate": op_keys_rotate,
    "keys_retire": op_keys_retire,
    "keys_rewrap": op_keys_rewrap,
    "keys_rewrap_model": op_keys_rewrap_model,
    "keys_report": op_keys_report,
}
