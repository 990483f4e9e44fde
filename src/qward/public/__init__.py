"""The public process: the HTTP API in front of the protected core. It holds no key.

- ``app``: ``create_app``, the FastAPI application (``/v1``, ``/log``, health).
- ``v2``: the Open Inference Protocol V2 routes and the sealed model repository.
- ``access``: who may call which endpoint; every decision logged before the call runs.
- ``auth``: bearer tokens (stored as SHA-256 only).
- ``observability``: Prometheus metrics, liveness and readiness.

It reaches the core only through ``qward.sdk.core_client``; it never imports ``qward.protected``.
"""
