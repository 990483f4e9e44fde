"""Attestation: what hardware evidence proves about the core, checked with no device present.

- ``evidence``: ``Evidence`` (one report, quote or document as collected, with its certificates),
  ``Claims`` (what a verifier established from it) and the ``EvidenceVerifier`` interface that
  every format implements.
- ``binding``: the 64 bytes a core puts into REPORT_DATA / user_data / qualifying data: a digest of
  its key manifest and the client's fresh nonce, so evidence cannot be replayed for another key.
- one verifier module per format (``sev_snp``, ``tdx``, ``nitro``, ``tpm``), each checking the
  vendor's signature chain up to a root pinned in ``roots/`` (provenance in ``roots/README.md``).
"""
