"""A transparency-log witness service (c2sp.org/tlog-witness), run as its own process.

- ``keys``: the witness's own cosigning keys (Ed25519 cosignature/v1 and ML-DSA-44), kept in a
  0600 file in its state directory. They never leave this process.
- ``app``: the HTTP service: ``POST /add-checkpoint`` and ``GET /witness`` (its public keys).
- ``__main__``: ``python -m qward.witness init|serve``; ``qward witness`` runs it.

The protocol logic and durable state are ``qward.tlog.witness``. Like ``qward.protected``, this
package holds private keys, so the public surface never imports it.
"""

from __future__ import annotations
