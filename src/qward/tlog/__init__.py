"""qward's transparency log: pure Merkle code at the bottom, storage and audit on top.

- ``merkle``: RFC 9162 hashing, inclusion and consistency proofs over a node getter, and the
  RFC's verification algorithms. No storage, no I/O.
- ``checkpoint``: the C2SP tlog-checkpoint note text (origin, size, root hash).
- ``note``: C2SP signed notes; Ed25519 (type 0x01) and ML-DSA-44 tlog cosignatures (type 0x06)
  signers and verifiers, and verifier key strings.
- ``layout``, ``tile_reader``: C2SP tlog-tiles paths and tiles, and proofs computed from tiles.
- ``backend``: ``LogBackend``, the storage contract, appended in three phases: ``sequence``,
  ``integrate``, ``publish``. The checkpoint signers are passed in; a store holds no key.
- ``sql_store``: the phases, proofs and reads in portable SQL; ``store`` binds them to SQLite
  (the embedded default), ``pg_store`` to PostgreSQL; ``location`` opens either by name.
- ``sequencer``: group commit in front of a backend (one transaction per batch, a checkpoint at
  least every interval).
- ``audit``: ``verify_log``, which recomputes the whole tree from the entry bytes and checks
  every stored node and signed checkpoint against it.

Nothing here imports ``qward.protected``; signers are built there and handed in.
"""

from __future__ import annotations
