"""Which witness cosignatures a verifier demands on a checkpoint before trusting it.

A witness cosigns only checkpoints consistent with every one it cosigned before, so a quorum of
independent witnesses on a checkpoint shows the log did not show this client a private fork. A
policy is a set of witnesses (each named, with one or more cosigning keys) and how many of them
must have cosigned; ``UnsafeNoWitnesses`` demands none and says so in its name.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from qward.errors import InputError, VerificationError
from qward.tlog.note import NoteVerifier, note_signatures

__all__ = ["Quorum", "UnsafeNoWitnesses", "WitnessPolicy", "policy_from_vkeys"]


@dataclass(frozen=True, kw_only=True)
class Quorum:
    """At least ``threshold`` of ``witnesses`` must have cosigned (any one key per witness)."""

    threshold: int
    witnesses: tuple[NoteVerifier, ...]

    def __post_init__(self) -> None:
        if any(not w.is_cosigner for w in self.witnesses):
            raise InputError("witness policy: every witness key must be a cosignature key")
        names = {w.name for w in self.witnesses}
        if not 1 <= self.threshold <= len(names):
            raise InputError(
                f"witness policy: quorum {self.threshold} of {len(names)} witnesses is impossible"
            )

    def check(self, note: bytes) -> tuple[str, ...]:
        """Raise ``VerificationError`` unless a quorum cosigned ``note``; returns who did.

        Signature lines from keys outside the policy are ignored; a line that names a policy key
        but does not verify makes the whole note fail, as c2sp.org/signed-note requires.
        """
        text, lines = note_signatures(note)
        keys = {(w.name, w.key_id): w for w in self.witnesses}
        cosigned: set[str] = set()
        for name, key_id, signature in lines:
            witness = keys.get((name, key_id))
            if witness is not None:
                witness.verify(text, signature)
                cosigned.add(name)
        if len(cosigned) < self.threshold:
            raise VerificationError(
                f"checkpoint has {len(cosigned)} valid witness cosignatures, "
                f"the policy requires {self.threshold}"
            )
        return tuple(sorted(cosigned))


@dataclass(frozen=True)
class UnsafeNoWitnesses:
    """Accepts a checkpoint with no witness cosignature: no protection against split views."""

    def check(self, note: bytes) -> tuple[str, ...]:
        """Accept ``note`` without looking for cosignatures."""
        return ()


WitnessPolicy = Quorum | UnsafeNoWitnesses


def policy_from_vkeys(threshold: int, vkeys: Sequence[str]) -> WitnessPolicy:
    """A quorum over witness verifier keys; threshold 0 and no keys is ``UnsafeNoWitnesses``."""
    if threshold == 0 and not vkeys:
        return UnsafeNoWitnesses()
    return Quorum(threshold=threshold, witnesses=tuple(NoteVerifier.from_vkey(v) for v in vkeys))
