"""qward: a quantum-safe secure execution layer for AI workloads.

Public surface (what applications import):

- ``qward.client``: the SDK verbs ``seal``, ``run``, ``verify``, ``replay``.
- ``qward.cli``: the ``qward`` command.
- ``qward.server``: the public HTTP API.

Below them: ``qward.receipts`` (receipts and offline verification), ``qward.tlog`` (the
transparency log), ``qward.runtime`` (the sandboxed deterministic worker), ``qward.crypto``
(public-key-only cryptography), and ``qward.protected`` (keys and signing; never imported by the
public surface).
"""

__version__ = "0.1.0"
__all__ = ["__version__"]
