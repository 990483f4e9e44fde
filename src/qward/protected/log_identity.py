"""The identity of a transparency log that several cores share: its origin and checkpoint key.

WARNING: this module holds private key material. Only ``qward.protected`` may import it.

A single core signs checkpoints with the checkpoint key of its own keystore. Cores that append to
one PostgreSQL log must sign as one log, so each is given the same *log identity* file: the
origin line and the seeds of the Ed25519 + ML-DSA-44 checkpoint key (``NOTE_ED25519_MLDSA44``).
Every core holds it, not only the current publisher, so that any core can take over the publisher
lease at once when the publisher dies; the lease's fence, checked by the database, is what keeps
two cores from publishing. Each core keeps its own HPKE and receipt keys in its own keystore.

The file is JSON (``qward/log-identity/v1``), written 0600, read through a size limit;
``python -m qward.protected.log_identity create --out FILE`` makes one and prints its verifier keys
(one a line, nothing else, on standard output).
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import sys
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric import ed25519, mldsa

from qward.encoding import b64decode, b64encode, read_limited
from qward.errors import FormatError, KeystoreError, QwardError
from qward.protected.handles import KeyHandle
from qward.tlog.note import Ed25519NoteSigner, MLDSA44NoteSigner, NoteSigner

__all__ = ["LOG_IDENTITY_ENV", "LOG_IDENTITY_FORMAT", "LogIdentity", "main"]

#: Path of the shared log identity a core signs checkpoints with (cores sharing one log).
LOG_IDENTITY_ENV = "QWARD_LOG_IDENTITY"
LOG_IDENTITY_FORMAT = "qward/log-identity/v1"
_MAX_BYTES = 64 * 1024
_SEED_BYTES = 32


@dataclass(frozen=True)
class LogIdentity:
    """A log's origin and its checkpoint key seeds (kept behind a handle)."""

    origin: str
    seeds: KeyHandle[dict[str, bytes]]

    @classmethod
    def generate(cls, origin: str | None = None) -> LogIdentity:
        """A fresh identity; without ``origin`` one of the form ``qward.cluster/log/<random>``."""
        origin = origin or f"qward.cluster/log/{secrets.token_hex(4)}"
        _check_origin(origin)
        seeds = {"ed25519": secrets.token_bytes(_SEED_BYTES), "mldsa44": secrets.token_bytes(32)}
        return cls(origin=origin, seeds=_handle(origin, seeds))

    @classmethod
    def load(cls, path: Path) -> LogIdentity:
        """Read and strictly check the identity file at ``path``."""
        data = read_limited(str(path), limit=_MAX_BYTES, what="log identity")
        try:
            doc = json.loads(data)
        except (ValueError, UnicodeDecodeError):
            raise FormatError(f"log identity {path}: not JSON") from None
        if not isinstance(doc, dict) or doc.get("format") != LOG_IDENTITY_FORMAT:
            raise FormatError(f"log identity {path}: format is not {LOG_IDENTITY_FORMAT!r}")
        if set(doc) != {"format", "origin", "ed25519_seed", "mldsa44_seed"}:
            raise FormatError(
                f"log identity {path}: expected the fields format, origin, ed25519_seed and "
                "mldsa44_seed"
            )
        origin = doc["origin"]
        if not isinstance(origin, str):
            raise FormatError(f"log identity {path}: origin must be a string")
        _check_origin(origin)
        seeds = {}
        for name in ("ed25519", "mldsa44"):
            seed = b64decode(doc[f"{name}_seed"], what=f"log identity {path}: {name}_seed")
            if len(seed) != _SEED_BYTES:
                raise FormatError(f"log identity {path}: {name}_seed must be {_SEED_BYTES} bytes")
            seeds[name] = seed
        return cls(origin=origin, seeds=_handle(origin, seeds))

    def save(self, path: Path) -> None:
        """Write the identity to a new file at ``path``, readable by its owner only."""
        seeds = self.seeds.unsafe_key()
        doc = {
            "format": LOG_IDENTITY_FORMAT,
            "origin": self.origin,
            "ed25519_seed": b64encode(seeds["ed25519"]),
            "mldsa44_seed": b64encode(seeds["mldsa44"]),
        }
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            raise KeystoreError(f"{path} exists; a log identity is never overwritten") from None
        with os.fdopen(fd, "w") as handle:
            handle.write(json.dumps(doc, indent=2) + "\n")
            handle.flush()
            os.fsync(handle.fileno())

    @cached_property
    def signers(self) -> tuple[NoteSigner, ...]:
        """The checkpoint signers (Ed25519, then ML-DSA-44), named by the origin."""
        seeds = self.seeds.unsafe_key()
        return (
            Ed25519NoteSigner(
                name=self.origin,
                private_key=ed25519.Ed25519PrivateKey.from_private_bytes(seeds["ed25519"]),
            ),
            MLDSA44NoteSigner(
                name=self.origin,
                private_key=mldsa.MLDSA44PrivateKey.from_seed_bytes(seeds["mldsa44"]),
            ),
        )


def _handle(origin: str, seeds: dict[str, bytes]) -> KeyHandle[dict[str, bytes]]:
    return KeyHandle(purpose="log-identity", key_id=origin, key=seeds)


def _check_origin(origin: str) -> None:
    # A checkpoint's origin line and a note key's name: printable, no spaces or plus signs.
    if not 0 < len(origin) <= 255 or any(c in origin for c in " +") or not origin.isprintable():
        raise FormatError(f"log origin {origin!r}: printable, no space or '+', 1 to 255 characters")


def main(argv: list[str] | None = None) -> int:
    """``python -m qward.protected.log_identity create --out FILE [--origin ORIGIN]``."""
    parser = argparse.ArgumentParser(prog="python -m qward.protected.log_identity")
    commands = parser.add_subparsers(dest="command", required=True)
    create = commands.add_parser("create", help="make a new log identity file")
    create.add_argument("--out", type=Path, required=True)
    create.add_argument("--origin")
    args = parser.parse_args(argv)
    try:
        identity = LogIdentity.generate(args.origin)
        identity.save(args.out)
    except QwardError as exc:
        print(f"error ({exc.code}): {exc}", file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"error (input_error): cannot write {args.out}: {exc.strerror}", file=sys.stderr)
        return 1
    # The verifier keys alone on stdout, one a line, for witnesses' and auditors' configuration.
    for signer in identity.signers:
        print(signer.verifier().to_vkey())
    print(
        f"wrote {args.out} (mode 0600) for log {identity.origin}: give the same file to every "
        "core of this log; its verifier keys are on standard output",
        file=sys.stderr,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
