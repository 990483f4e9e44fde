"""The release log: where a release's reference measurements are published (its publisher).

- ``log``: ``ReleaseLog``, a qward transparency log in one directory (SQLite entries, a seed file
  with its checkpoint keys) that appends ``qward/release/v1`` entries and hands out
  ``ReleaseStatement``s with inclusion proofs, and writes the appraisal policy clients use.

This package holds the release log's private keys; the public server, the SDK and the core never
import it. Verification of what it publishes lives in ``qward.attestation``.
"""
