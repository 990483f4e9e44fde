"""The protected core. DANGER: this package holds private keys and sees plaintext.

Nothing in qward's public surface (``qward.cli``, ``qward.public``, ``qward.sdk``) may import from
here; an import-linter contract and a run-time test enforce it. The core runs as its own
process (``python -m qward.protected``) and is reached only through the narrow socket interface in
``qward.core_api``.

- ``handles``: ``KeyHandle``, which cannot be printed, pickled or copied out.
- ``keystore``: the file keystore, sealed under a passphrase or a key file.
- ``opening``: opening sealed artifacts.
- ``signing``: the hybrid receipt signer.
- ``auditor``: fail-closed appends to the transparency log.
- ``service``: the core's request handlers; ``server`` its socket server.
"""
