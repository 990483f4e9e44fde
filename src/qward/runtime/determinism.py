"""The deterministic execution profile and what a receipt records about it.

Bit-identical outputs need the same kernels in the same order: ONNX Runtime on the CPU provider,
one intra-op and one inter-op thread, sequential execution, a fixed optimisation level, one request
per batch, and every random source seeded from the request. Two machines of the same platform
class (OS, architecture, libc and the CPU features that change MLAS kernel selection) and the
same library versions should produce the same bytes.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import platform
import sys
from typing import Any

import numpy as np
import onnxruntime as ort

from qward import __version__
from qward.errors import InputError

__all__ = [
    "MAX_SEED",
    "build_session_options",
    "environment_digest",
    "library_versions",
    "platform_class",
    "seed_everything",
    "session_options_record",
]

MAX_SEED = 2**63 - 1

# CPU features that select different MLAS/Eigen kernels, hence possibly different rounding.
_KERNEL_FLAGS = (
    "sse4_2",
    "avx",
    "avx2",
    "fma",
    "f16c",
    "avx512f",
    "avx512bw",
    "avx512vl",
    "avx512_vnni",
    "avx_vnni",
    "avx512_bf16",
    "amx_tile",
    "asimd",
    "asimddp",
    "sve",
    "sve2",
    "i8mm",
    "bf16",
)


def build_session_options() -> Any:
    """ONNX Runtime session options for the deterministic profile."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
    options.enable_profiling = False
    # Spinning threads only burn CPU with one thread; and deterministic compute pins kernels
    # that would otherwise pick non-deterministic algorithms.
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.add_session_config_entry("session.inter_op.allow_spinning", "0")
    if hasattr(options, "use_deterministic_compute"):
        options.use_deterministic_compute = True
    return options


def session_options_record() -> dict[str, int | str | bool]:
    """The profile as a receipt records it."""
    return {
        "execution_provider": "CPUExecutionProvider",
        "intra_op_num_threads": 1,
        "inter_op_num_threads": 1,
        "execution_mode": "ORT_SEQUENTIAL",
        "graph_optimization_level": "ORT_ENABLE_EXTENDED",
        "use_deterministic_compute": True,
        "batching": "one request per batch",
    }


def environment_digest() -> str:
    """SHA-256 over every installed distribution and its version: the lockfile actually in force."""
    pins = sorted(
        {
            f"{d.metadata['Name']}=={d.version}".lower()
            for d in importlib.metadata.distributions()
            if d.metadata["Name"]
        }
    )
    return hashlib.sha256("\n".join(pins).encode()).hexdigest()


def library_versions() -> dict[str, str]:
    """Versions of everything that computes an output, and the whole environment's digest."""
    return {
        "onnxruntime": ort.__version__,
        "numpy": np.__version__,
        "python": platform.python_version(),
        "qward": __version__,
        "environment_sha256": environment_digest(),
    }


def _cpu_flags() -> set[str]:
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as handle:
            for line in handle:
                key, _, value = line.partition(":")
                if key.strip() in ("flags", "Features"):
                    return set(value.split())
    except OSError:
        pass
    return set()


def platform_class() -> str:
    """OS, architecture, libc and kernel-selecting CPU features, e.g.
    ``linux-x86_64-glibc2.36-avx+avx2+fma``."""
    libc, version = platform.libc_ver()
    flags = _cpu_flags()
    features = "+".join(f for f in _KERNEL_FLAGS if f in flags) or "baseline"
    return f"{sys.platform}-{platform.machine()}-{libc or 'libc'}{version}-{features}"


def seed_everything(seed: int) -> None:
    """Seed every random source an ONNX graph can reach."""
    if not isinstance(seed, int) or isinstance(seed, bool) or not 0 <= seed <= MAX_SEED:
        raise InputError(f"seed must be an integer from 0 to {MAX_SEED}")
    ort.set_seed(seed)
    np.random.seed(seed % 2**32)
