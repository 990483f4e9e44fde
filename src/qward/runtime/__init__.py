"""The execution runtime: the sandboxed, deterministic worker and its supervisor.

- ``determinism``: the ONNX Runtime profile, seeding, library versions and platform class.
- ``sandbox``: isolation layers (network namespace, Landlock, seccomp, rlimits) and the
  self-check that reports what is really in force.
- ``circuit_spec``: the declarative ``qward/circuit/v1`` quantum-circuit model format and its
  strict parser (pure; no PennyLane).
- ``circuits``: running a circuit spec on a fresh, seeded PennyLane simulator per request and
  hashing the compiled circuit (imported only by circuit workers; the ``quantum`` extra).
- ``worker``: the worker process (``python -m qward.runtime.worker``); it never holds a key.
- ``supervisor``: ``WorkerProcess``, used by the core to start, call and stop workers.
"""
