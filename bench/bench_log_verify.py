"""`qward log verify` on a large log: recompute the whole tree and check every checkpoint.

    python bench/bench_log_verify.py [--entries 1000000] [--checkpoint-every 100000]

1. Start a real core once on a fresh state directory (keystore, trust bundle, SQLite log), stop it.
2. Append ``--entries`` audit-sized entries (~200 B) to its log in batches through the store's
   phases, publishing a checkpoint signed with the core's own log keys every
   ``--checkpoint-every`` entries, as a long-running core would.
3. Run the user's command, `qward log verify --state-dir DIR`, in a subprocess and print its
   report and wall time, beside the time to build the log (the baseline cost of hashing it once).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from rich.progress import Progress

from qward.protected.keystore import load_keystore
from qward.receipts.trust import TrustBundle
from qward.sdk.core_process import CoreProcess
from qward.tlog.store import SQLiteLogStore

_BATCH = 50_000


def _entry(n: int) -> bytes:
    head = b'{"type":"qward/bench/v1","n":%d,"pad":"' % n
    return head + b"x" * (200 - len(head) - 2) + b'"}'


def build(state: Path, entries: int, checkpoint_every: int) -> tuple[float, int]:
    """Append ``entries`` to the core's log; returns (seconds, checkpoints published)."""
    keys = load_keystore(state)
    trust = TrustBundle.from_bytes((state / "trust.json").read_bytes())
    published = 0
    started = time.perf_counter()
    with SQLiteLogStore.open(state / "log.sqlite") as store, Progress() as progress:
        task = progress.add_task("appending", total=entries)
        done = 0
        while done < entries:
            count = min(_BATCH, entries - done, checkpoint_every - done % checkpoint_every)
            base = store.sequenced_size()
            store.sequence([_entry(base + i) for i in range(count)])
            store.integrate()
            done += count
            if done % checkpoint_every == 0 or done == entries:
                store.publish(origin=trust.origin, signers=keys.log_signers)
                published += 1
            progress.update(task, completed=done)
    return time.perf_counter() - started, published


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--entries", type=int, default=1_000_000)
    parser.add_argument("--checkpoint-every", type=int, default=100_000)
    parser.add_argument("--dir", type=Path, help="where to put the state directory")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        state = Path(tmp) / "state"
        CoreProcess.start(state).stop()
        seconds, published = build(state, args.entries, args.checkpoint_every)
        size = (state / "log.sqlite").stat().st_size
        print(
            f"built {args.entries:,} entries, {published} checkpoints in {seconds:.1f} s "
            f"({size / 2**20:,.0f} MiB)"
        )
        started = time.perf_counter()
        result = subprocess.run(
            [sys.executable, "-m", "qward", "log", "verify", "--state-dir", str(state)],
            capture_output=True,
            text=True,
            check=False,
        )
        wall = time.perf_counter() - started
        print(result.stdout.strip() or result.stderr.strip())
        print(
            f"`qward log verify` wall time {wall:.1f} s "
            f"({args.entries / wall:,.0f} entries/s); building the log took {seconds:.1f} s "
            f"(ratio {wall / seconds:.2f})"
        )
        sys.exit(result.returncode)


if __name__ == "__main__":
    main()
