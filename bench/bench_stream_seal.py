"""Streaming seal/unseal throughput versus raw AES-256-GCM, and memory, in one run.

    python bench/bench_stream_seal.py [--size-mib 2048] [--chunk-kib 64] [--dir DIR]

Baseline: AES-256-GCM (pyca/cryptography) over the same number of bytes in the same chunk size,
from memory to memory. qward: ``seal_stream`` file to file, then ``open_stream_to_file`` (which
authenticates every chunk, fsyncs and renames into place). Prints MiB/s, the ratios, and the
growth of peak RSS while sealing and opening a file of the given size.
"""

from __future__ import annotations

import argparse
import io
import os
import resource
import tempfile
import time
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import hpke
from cryptography.hazmat.primitives.asymmetric import mlkem, x25519
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from qward.crypto.keys import HPKERecipientKey
from qward.crypto.stream import seal_stream
from qward.protected.handles import KeyHandle
from qward.protected.stream_opening import open_stream_to_file

MIB = 1024 * 1024


def _peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _raw_gcm(total: int, chunk: int) -> float:
    aead = AESGCM(os.urandom(32))
    block = os.urandom(chunk)
    nonce = os.urandom(12)
    start = time.perf_counter()
    for _ in range(total // chunk):
        aead.encrypt(nonce, block, b"")
    return time.perf_counter() - start


class _Sink(io.RawIOBase):
    """Discards what is written: isolates sealing cost from disk cost."""

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        return len(data)


class _Repeat(io.RawIOBase):
    """Reads ``total`` bytes of one repeated random block, without holding them all."""

    def __init__(self, total: int) -> None:
        self._left, self._block = total, os.urandom(4 * MIB)

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        n = min(len(buffer), self._left, len(self._block))
        buffer[:n] = self._block[:n]
        self._left -= n
        return n


def main() -> None:
    """Run the benchmark."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--size-mib", type=int, default=1024)
    parser.add_argument("--chunk-kib", type=int, default=64)
    parser.add_argument("--dir", type=Path, default=None)
    args = parser.parse_args()
    total, chunk = args.size_mib * MIB, args.chunk_kib * 1024
    kem, xk = mlkem.MLKEM768PrivateKey.generate(), x25519.X25519PrivateKey.generate()
    public = HPKERecipientKey.from_hpke_parts(kem.public_key(), xk.public_key())
    keys = {
        public.key_id: KeyHandle(
            purpose="bench", key_id=public.key_id, key=hpke.MLKEM768X25519PrivateKey(kem, xk)
        )
    }
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        plain, sealed, opened = Path(tmp) / "model.bin", Path(tmp) / "model.qws", Path(tmp) / "out"
        with plain.open("wb") as handle:
            block = os.urandom(4 * MIB)
            for _ in range(total // len(block)):
                handle.write(block)
        raw = _raw_gcm(total, chunk)
        start = time.perf_counter()
        seal_stream(
            _Repeat(total),
            _Sink(),
            recipient=public,  # type: ignore[arg-type]
            content_type="application/octet-stream",
            chunk_size=chunk,
        )
        memory_s = time.perf_counter() - start
        rss_before = _peak_rss_mib()
        start = time.perf_counter()
        with plain.open("rb") as src, sealed.open("wb") as dst:
            seal_stream(
                src,
                dst,
                recipient=public,
                content_type="application/octet-stream",
                chunk_size=chunk,
            )
        seal_s = time.perf_counter() - start
        start = time.perf_counter()
        with sealed.open("rb") as src:
            open_stream_to_file(
                src, opened, keys=keys, expected_content_type="application/octet-stream"
            )
        open_s = time.perf_counter() - start
        growth = _peak_rss_mib() - rss_before
    mib = total / MIB
    print(f"size {mib:.0f} MiB, chunk {args.chunk_kib} KiB")
    print(f"raw AES-256-GCM (memory) {mib / raw:8.1f} MiB/s")
    print(f"qward seal_stream (memory) {mib / memory_s:6.1f} MiB/s  ratio {raw / memory_s:.2f}x")
    print(f"qward seal_stream (file) {mib / seal_s:8.1f} MiB/s  ratio {raw / seal_s:.2f}x")
    print(f"qward open_stream (file) {mib / open_s:8.1f} MiB/s  ratio {raw / open_s:.2f}x")
    print(f"peak RSS growth while sealing and opening: {growth:.1f} MiB")


if __name__ == "__main__":
    main()
