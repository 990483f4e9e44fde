"""qward: a quantum-safe secure execution layer for AI workloads.

The tree shows the three processes:

- ``qward.public``: the public HTTP server (V2 routes, access control, tokens, metrics);
  it holds no key and never a plaintext model.
- ``qward.protected``: the protected core (``python -m qward.protected``), which holds the keys,
  signs and writes the transparency log.
- ``qward.runtime``: the sandboxed worker (``python -m qward.runtime.worker``) that runs one model.

On top: ``qward.sdk`` (what applications import: the core, HTTP and log clients) and
``qward.cli`` (the ``qward`` command). Below them: ``qward.core_api`` (what may be asked of the
core), ``qward.receipts`` (receipts and offline verification), ``qward.tlog`` (the
transparency log) and ``qward.crypto`` (public-key-only cryptography).
"""

__version__ = "0.1.0"
__all__ = ["__version__"]
