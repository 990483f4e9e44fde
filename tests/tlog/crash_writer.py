"""A log process for the crash tests: appends under load until it is killed.

    python crash_writer.py sqlite|postgres PATH-OR-DSN SEED
    python crash_writer.py postgres-shared DSN SEED HOLDER

Opens the store, starts a ``Sequencer`` with a short checkpoint interval (or, ``postgres-shared``,
a ``SharedLogSequencer`` named ``HOLDER`` in the publisher lease, one of several writers of the
log), prints ``R`` once it is ready, and then has four writer threads append random entries
(single adds, small groups and, shared, groups that wait for a covering checkpoint) forever.
Every acknowledgement is printed as ``A <index> <entry hex>`` and every published checkpoint as
``C <base64 note>``, one flushed write per line, only after the store has committed it, so the
test knows exactly what was promised when it sends SIGKILL.
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
from qward.tlog.shared_sequencer import SharedLogSequencer

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
        if isinstance(result, tuple):
            result = result[0]
        first = result if isinstance(result, int) else result[0]
        for offset, entry in enumerate(entries):
            _emit(f"A {first + offset} {entry.hex()}")

    return report


def _writer(sequencer: Sequencer, seed: int) -> None:
    rng = random.Random(seed)
    shared = isinstance(sequencer, SharedLogSequencer)
    while True:
        draw = rng.random()
        if draw < 0.6:
            entries = [rng.randbytes(rng.randint(1, 120))]
            future: Future[Any] = sequencer.add(entries[0])
        elif shared and draw < 0.75:
            entries = [rng.randbytes(rng.randint(1, 120)) for _ in range(rng.randint(1, 3))]
            future = sequencer.add_published(entries)
            future.add_done_callback(_acknowledged(entries))
            # As a core waits for its receipt's checkpoint before answering.
            future.result(timeout=60)
            continue
        else:
            entries = [rng.randbytes(rng.randint(1, 120)) for _ in range(rng.randint(2, 8))]
            future = sequencer.add_many(entries)
        future.add_done_callback(_acknowledged(entries))
        # Three shared writers at full speed would make each full audit read ~1M entries.
        time.sleep(rng.random() * (0.008 if shared else 0.002))


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


def _published(note: bytes) -> None:
    _emit(f"C {base64.b64encode(note).decode()}")


def _sequencer(kind: str, target: str) -> Sequencer:
    if kind != "postgres-shared":
        return Sequencer(
            store=_open(kind, target),
            origin=ORIGIN,
            signers=SIGNERS,
            checkpoint_interval=0.05,
            on_publish=_published,
        )
    from qward.tlog.pg_coordination import PostgresCoordination
    from qward.tlog.pg_store import PostgresLogStore

    store = PostgresLogStore.open(target)
    return SharedLogSequencer(
        store=store,
        origin=ORIGIN,
        signers=SIGNERS,
        coordination=PostgresCoordination(store, holder=sys.argv[4], ttl=1.0),
        checkpoint_interval=0.05,
        poll_interval=0.02,
        on_publish=_published,
        on_observe=_published,
    )


def main() -> None:
    threading.excepthook = _die
    kind, target, seed = sys.argv[1], sys.argv[2], int(sys.argv[3])
    sequencer = _sequencer(kind, target)
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
