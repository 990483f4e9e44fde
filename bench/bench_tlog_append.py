"""Transparency-log appends through the Sequencer, beside a naive one-fsync-per-entry baseline.

    python bench/bench_tlog_append.py [--entries 200000] [--threads 8] [--entry-bytes 200]
        [--baseline-entries 2000] [--checkpoint-interval 0.5] [--pg-dsn DSN] [--dir DIR]

qward: ``--threads`` writer threads append ``--entries`` entries of ``--entry-bytes`` bytes through
one ``Sequencer`` (group commit: one transaction and one fsync per batch; integrate and publish at
most every ``--checkpoint-interval`` seconds). Each writer keeps up to ``--window`` appends in
flight, as that many concurrent requests would. Appends/s counts from the first append to the last
acknowledgement. Checkpoint latency is, for a sample of entries, the time from the entry's
acknowledgement to the publication of the first checkpoint that covers it.

Baseline: the same store type, fresh, one ``store.sequence([entry])`` per entry from one thread:
one transaction and one fsync per entry. Both run in the same process, on SQLite always and on
PostgreSQL as well when ``--pg-dsn`` is given (each run in a fresh schema, dropped afterwards).
"""

from __future__ import annotations

import argparse
import os
import sqlite3
import statistics
import tempfile
import threading
import time
from bisect import bisect_right
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric import ed25519, mldsa

from qward.tlog.backend import LogBackend, note_checkpoint
from qward.tlog.note import Ed25519NoteSigner, MLDSA44NoteSigner
from qward.tlog.sequencer import Sequencer
from qward.tlog.store import SQLiteLogStore

ORIGIN = "bench.example/log"
SIGNERS = (
    Ed25519NoteSigner(name=ORIGIN, private_key=ed25519.Ed25519PrivateKey.generate()),
    MLDSA44NoteSigner(name=ORIGIN, private_key=mldsa.MLDSA44PrivateKey.generate()),
)

Opener = Callable[[], LogBackend]


def _entry(thread: int, n: int, size: int) -> bytes:
    head = b'{"writer":%d,"n":%d,"pad":"' % (thread, n)
    return head + b"x" * max(0, size - len(head) - 2) + b'"}'


@dataclass(frozen=True, kw_only=True)
class _Result:
    rate: float
    latencies: list[float]
    checkpoints: int


def _writer(
    sequencer: Sequencer,
    thread: int,
    count: int,
    args: argparse.Namespace,
    acks: list[tuple[int, float]],
) -> None:
    window: deque[Future[int]] = deque()
    for n in range(count):
        future = sequencer.add(_entry(thread, n, args.entry_bytes))
        if n % args.sample == 0:
            # The callback runs in the sequencer thread right after the commit: the ack time.
            future.add_done_callback(lambda f: acks.append((f.result(), time.perf_counter())))
        window.append(future)
        if len(window) >= args.window:
            window.popleft().result()
    for future in window:
        future.result()


def _grouped(args: argparse.Namespace, open_store: Opener) -> _Result:
    published: list[tuple[int, float]] = []
    acks: list[tuple[int, float]] = []

    def on_publish(note: bytes) -> None:
        published.append((note_checkpoint(note).size, time.perf_counter()))

    per_thread = args.entries // args.threads
    with open_store() as store:
        sequencer = Sequencer(
            store=store,
            origin=ORIGIN,
            signers=SIGNERS,
            checkpoint_interval=args.checkpoint_interval,
            max_delay=args.max_delay,
            on_publish=on_publish,
        )
        threads = [
            threading.Thread(target=_writer, args=(sequencer, t, per_thread, args, acks))
            for t in range(args.threads)
        ]
        started = time.perf_counter()
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        elapsed = time.perf_counter() - started
        sequencer.close()
        assert store.sequenced_size() == per_thread * args.threads
    sizes = [size for size, _ in published]
    latencies = []
    for index, acked in acks:
        first = bisect_right(sizes, index)
        latencies.append(published[first][1] - acked)
    return _Result(
        rate=per_thread * args.threads / elapsed, latencies=latencies, checkpoints=len(published)
    )


def _naive(args: argparse.Namespace, open_store: Opener) -> float:
    with open_store() as store:
        started = time.perf_counter()
        for n in range(args.baseline_entries):
            store.sequence([_entry(0, n, args.entry_bytes)])
        return args.baseline_entries / (time.perf_counter() - started)


def _percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def _report(name: str, result: _Result, naive: float) -> None:
    lat = result.latencies
    print(f"\n{name}")
    print(f"  naive, one sequence() + fsync per entry: {naive:>10,.0f} appends/s")
    print(f"  Sequencer, group commit:                 {result.rate:>10,.0f} appends/s")
    print(f"  ratio:                                   {result.rate / naive:>10.1f} x")
    print(
        f"  checkpoint latency after ack (n={len(lat)}, {result.checkpoints} checkpoints): "
        f"p50 {statistics.median(lat) * 1000:.0f} ms, p99 {_percentile(lat, 0.99) * 1000:.0f} ms, "
        f"max {max(lat) * 1000:.0f} ms"
    )


def _sqlite_opener(directory: Path) -> Opener:
    counter = iter(range(1_000_000))
    return lambda: SQLiteLogStore.open(directory / f"log-{next(counter)}.sqlite")


@contextmanager
def _postgres_opener(dsn: str) -> Iterator[Opener]:
    import psycopg
    from psycopg.conninfo import make_conninfo

    from qward.tlog.pg_store import PostgresLogStore

    schemas: list[str] = []

    def open_store() -> LogBackend:
        schema = f"qward_bench_{os.getpid()}_{len(schemas)}"
        with psycopg.connect(dsn, autocommit=True) as admin:
            admin.execute(f"CREATE SCHEMA {schema}")
        schemas.append(schema)
        return PostgresLogStore.open(make_conninfo(dsn, options=f"-c search_path={schema}"))

    try:
        yield open_store
    finally:
        with psycopg.connect(dsn, autocommit=True) as admin:
            for schema in schemas:
                admin.execute(f"DROP SCHEMA {schema} CASCADE")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--entries", type=int, default=200_000)
    parser.add_argument("--threads", type=int, default=8)
    parser.add_argument("--window", type=int, default=256, help="appends in flight per writer")
    parser.add_argument("--entry-bytes", type=int, default=200)
    parser.add_argument("--baseline-entries", type=int, default=2000)
    parser.add_argument("--checkpoint-interval", type=float, default=0.5)
    parser.add_argument("--max-delay", type=float, default=0.0)
    parser.add_argument("--sample", type=int, default=64, help="time every n-th entry's ack")
    parser.add_argument("--pg-dsn", help="also run on PostgreSQL (a fresh schema per run)")
    parser.add_argument("--dir", type=Path, help="directory for the SQLite files")
    args = parser.parse_args()

    print(
        f"{os.cpu_count()} cores, SQLite {sqlite3.sqlite_version} (WAL, synchronous=FULL); "
        f"{args.entries:,} entries of {args.entry_bytes} B from {args.threads} threads "
        f"(window {args.window}), checkpoint interval {args.checkpoint_interval} s; "
        f"baseline {args.baseline_entries:,} entries"
    )
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        opener = _sqlite_opener(Path(tmp))
        naive = _naive(args, opener)
        _report("SQLite", _grouped(args, opener), naive)
    if args.pg_dsn:
        with _postgres_opener(args.pg_dsn) as opener:
            naive = _naive(args, opener)
            _report("PostgreSQL", _grouped(args, opener), naive)


if __name__ == "__main__":
    main()
