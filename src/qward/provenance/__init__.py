"""Model provenance: OpenSSF model-signing signatures checked before sealing and at registration.

- ``model_signature``: verify a ``model-signing`` (sigstore/model-transparency) signature over one
  model file against a pinned EC public key or a pinned certificate root; the signed-model
  metadata carried in a sealed model's authenticated header.
- ``signer_policy``: the core's list of trusted model signers (``<state>/model-signers.json``).
"""
