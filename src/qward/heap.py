"""The garbage collector in a long-running qward process.

Each process (the core, the public server, a worker) builds most of its objects once, at start-up:
imported modules, the web application, keys, an ONNX Runtime session. CPython's cyclic collector
would walk all of them again on every full collection, and under load that is a pause of 20 to 35
ms (measured on the public server and the core) that every request in flight waits out: the tail
latency. Frozen, they are left out of every later collection.
"""

from __future__ import annotations

import atexit
import gc

__all__ = ["settle_heap"]


def settle_heap() -> None:
    """Collect what start-up left behind, then freeze the survivors out of the collector's reach.

    Call once, when the process is ready to serve: objects created afterwards are collected as
    usual. The collection comes first so that no garbage is frozen (it would never be freed).
    At exit everything is thawed again, so the interpreter's last collection still finalizes
    what start-up built: a log database left in a reference cycle is closed, and its write-ahead
    log folded back into it, as before.
    """
    gc.collect()
    gc.freeze()
    atexit.register(gc.unfreeze)
