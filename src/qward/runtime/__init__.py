"""The execution runtime: the sandboxed, deterministic worker and its supervisor.

- ``determinism``: the ONNX Runtime profile, seeding, library versions and platform class.
- ``namespaces``: the first layers, applied while the worker is single-threaded: new user,
  mount, UTS, IPC and network namespaces, the core's state directory, ``/run`` and ``/tmp``
  hidden under empty read-only mounts, and every capability dropped.
- ``sandbox``: the other isolation layers (``no_new_privs``, Landlock, rlimits, the seccomp
  denylist before the model is parsed and the allowlist after warm-up) and the self-check that
  reports what is really in force.
- ``circuit_spec``: the declarative ``qward/circuit/v1`` quantum-circuit model format and its
  strict parser (pure; no PennyLane).
- ``circuits``: running a circuit spec on a fresh, seeded PennyLane simulator per request and
  hashing the compiled circuit (imported only by circuit workers; the ``quantum`` extra).
- ``model_checks``: what a model must be before it is sealed, registered or loaded (ONNX that
  parses, with no external data; or a valid circuit spec); used by the SDK, the core and the worker.
- ``llm_profile``: the fixed llama.cpp settings, sampling parameters (reals as ``float.hex()``),
  the GGUF header check and the token-by-token replay comparison (pure; no llama.cpp).
- ``llm_template``: a model's chat template rendered in Jinja's immutable sandbox, with its digest.
- ``memfd``: model bytes in a sealed memfd, opened as ``/proc/self/fd/N`` (never a named path).
- ``llm``: deterministic, streamable, replayable GGUF generation on llama.cpp (optional
  ``llama-cpp-python``; imported by GGUF workers only); ``llm_worker``: its worker frames.
- ``worker``: the worker process (``python -m qward.runtime.worker``); it never holds a key.
- ``supervisor``: ``WorkerPolicy`` and ``WorkerProcess``, used by the core to start, call and
  stop workers; it refuses a degraded sandbox unless the policy allows it, and caps outputs.
"""
