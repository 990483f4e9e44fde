"""Receipts: signed statements of what ran, and their offline verification.

- ``entries``: the log entry types (receipt, key use, admin, replay) in canonical form.
- ``receipt``: the receipt body, the bundle a client keeps (body, signature, inclusion proof,
  checkpoint) and their strict parsers.
- ``circuit``: the compiled-circuit record a hybrid quantum-classical receipt binds, and replay's
  check of it.
- ``trust``: the trust bundle a verifier pins.
- ``verify``: ``Verifier``, which checks a bundle with no network and no core.
"""
