"""A log process for the crash tests: appends under load until it is killed.

    python crash_writer.py sqlite|postgres PATH-OR-DSN SEED

Opens the store, starts a ``Sequencer`` with a short checkpoint interval, prints ``R`` once it is
ready, and then has four writer threads append random entries (single adds and small groups)
forever. Every acknowledgement is printed as ``A <index> <entry hex>`` and every published
checkpoint as ``C <base64 note>``, one flushed write per line, only after the store has committed
it, so the test knows exactly what was promised when it sends SIGKILL.
"""

from __future__ import annotations

import base64
import os
import random
import sys
import threading
import time
from concurrent.futures import Future
from typing import Any

from cryptography.hazmat.primitives.asymmetric import ed25519, mldsa

from qward.tlog.backend import LogBackend
from qward.tlog.note import Ed25519NoteSigner, MLDSA44NoteSigner
from qward.tlog.sequencer import Sequencer

ORIGIN = "log.example/crash"
SIGNERS = (
    Ed25519NoteSigner(
        name=ORIGIN, private_key=ed25519.Ed25519PrivateKey.from_private_bytes(bytes(range(32)))
    ),
    MLDSA44NoteSigner(
        name=ORIGIN, private_key=mldsa.MLDSA44PrivateKey.from_seed_bytes(bytes(range(32)))
    ),
)
_out = threading.Lock()


def _emit(line: str) -> None:
    with _out:
        sys.stdout.write(line + "\n")
        sys.stdout.flush()


def _acknowledged(entries: list[bytes]) -> Any:
    def report(future: Future[Any]) -> None:
        if future.exception() is not None:
            return
        result = future.result()
        first = result if isinstance(result, int) else result[0]
        for offset, entry in enumerate(entries):
            _emit(f"A {first + offset} {entry.hex()}")

    return report


def _writer(sequencer: Sequencer, seed: int) -> None:
    rng = random.Random(seed)
    while True:
        if rng.random() < 0.7:
            entries = [rng.randbytes(rng.randint(1, 120))]
            future: Future[Any] = sequencer.add(entries[0])
        else:
            entries = [rng.randbytes(rng.randint(1, 120)) for _ in range(rng.randint(2, 8))]
            future = sequencer.add_many(entries)
        future.add_done_callback(_acknowledged(entries))
        time.sleep(rng.random() * 0.002)


def _open(kind: str, target: str) -> LogBackend:
    if kind == "sqlite":
        from qward.tlog.store import SQLiteLogStore

        return SQLiteLogStore.open(target)
    from qward.tlog.pg_store import PostgresLogStore

    return PostgresLogStore.open(target)


def _die(args: threading.ExceptHookArgs) -> None:
    # Dying on its own is a failure the test must see, unlike the SIGKILL it expects.
    print(f"crash writer failed: {args.exc_type.__name__}: {args.exc_value}", file=sys.stderr)
    sys.stderr.flush()
    os._exit(3)


def main() -> None:
    threading.excepthook = _die
    kind, target, seed = sys.argv[1], sys.argv[2], int(sys.argv[3])
    store = _open(kind, target)
    sequencer = Sequencer(
        store=store,
        origin=ORIGIN,
        signers=SIGNERS,
        checkpoint_interval=0.05,
        on_publish=lambda note: _emit(f"C {base64.b64encode(note).decode()}"),
    )
    _emit("R")
    threads = [
        threading.Thread(target=_writer, args=(sequencer, seed * 16 + n), daemon=True)
        for n in range(4)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()


if __name__ == "__main__":
    try:
        main()
    except BaseException as exc:
        print(f"crash writer failed: {type(exc).__name__}: {exc}", file=sys.stderr, flush=True)
        os._exit(3)
