"""Public-side cryptography: everything that needs only public keys.

- ``keys``: public key types (HPKE recipient, hybrid verification key) and key ids.
- ``envelope``: the sealed-artifact format and ``seal()``, which needs only the recipient's
  public key. Opening a sealed artifact needs a private key and lives in ``qward.protected``.
- ``signatures``: hybrid ML-DSA-65 + Ed25519 signature encoding and verification.
- ``trust``: the trust bundle a verifier pins (receipt keys, log keys, HPKE recipient).
"""
