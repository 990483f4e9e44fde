"""Attestation: what hardware evidence proves about the core, checked with no device present.

- ``evidence``: ``Evidence`` (one report, quote or document as collected, with its certificates),
  ``Claims`` (what a verifier established from it) and the ``EvidenceVerifier`` interface.
- ``binding``: the 64 bytes a core puts into REPORT_DATA / user_data / qualifying data: a digest of
  its key manifest and the client's fresh nonce, so evidence cannot be replayed for another key.
- one verifier per format, each checking the vendor's chain up to a root pinned in ``roots/``
  (provenance in ``roots/README.md``): ``sev_snp``, ``tdx``, ``nitro``, ``tpm`` (with
  ``tpm_structures`` and ``tpm_eventlog``); ``verifiers`` builds them for a policy. ``_certs``,
  ``_x509_path`` and ``_der`` are their private certificate and DER helpers.
- ``measurement``: the digest of the core's code, locked environment and configured files, and
  the PCR value one extend of it gives.
- ``release``: release entries (reference measurements) and the statements that prove a release
  log holds them.
- ``appraisal``: ``AppraisalPolicy`` and ``appraise``, which decides; ``AttestationResult``, the
  EAR-style verdict that trust bundles and receipts carry.
- ``response``: what a core answers to ``POST /v1/attestation``.
"""
