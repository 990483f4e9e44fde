"""Streaming seal/unseal throughput versus raw AES-256-GCM over the same bytes, and memory.

    python bench/bench_stream_seal.py [--size-mib 2048] [--chunk-kib 64] [--rounds 5]
                                      [--dir DIR] [--tmpfs DIR] [--no-files]

Everything runs in one process, on the same bytes, and each figure is the best of ``--rounds``
rounds that interleave raw and qward, so both see the same machine load. Wall-clock MiB/s are
printed with ratios (qward / raw) against each baseline; the CPU-time ratio is printed too, since
on a shared machine it is the steadier of the two.

1. Memory to memory, DRAM-bound: ``--size-mib`` of distinct bytes in RAM (a 4 MiB random block
   repeated; AES-GCM's speed does not depend on the values), output discarded.

   - raw one-shot: pyca ``AESGCM.encrypt_into`` / ``decrypt_into`` over 512 MiB per call into a
     preallocated buffer (pyca caps one call at 2**31 - 1 bytes, so "one-shot" is a few calls).
   - raw chunked: the same calls per ``--chunk-kib`` chunk into one reused buffer, fixed nonce, no
     bookkeeping: a floor for any chunked format. Decryption opens the chunks ``seal_stream``
     produced, with precomputed nonces.
   - qward: ``seal_stream`` from the bytes (sliced, no copy) and from an ``io.BytesIO`` over them
     (a reader: one copy per byte); the opener's chunk loop from the sealed bytes and from an
     ``io.BytesIO``; and the public ``open_stream_to_file`` from the sealed bytes to a file on
     tmpfs (with its write, fsync and rename).

2. Cache-resident, AES-bound: one run of chunks (8 x chunk) sealed or opened over and over to the
   same total, against raw chunked AES-GCM over that same block. Here the data sits in L2, so
   the per-chunk Python work of the format is all that separates the two.

3. File to file in ``--dir`` (disk-bound here): ``seal_stream`` and ``open_stream_to_file``, and
   the growth of peak RSS while sealing and opening the file (the constant-memory promise). The
   file runs come first, before the memory runs allocate their large buffers.
"""

from __future__ import annotations

import argparse
import io
import os
import re
import resource
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO, cast

from cryptography.hazmat.primitives import hpke
from cryptography.hazmat.primitives.asymmetric import mlkem, x25519
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from qward.crypto.keys import HPKERecipientKey
from qward.crypto.stream import (
    MAX_RUN_PIECES,
    TAG_SIZE,
    StreamHeader,
    _ChunkSealer,
    chunk_nonce,
    read_stream_header,
    seal_stream,
)
from qward.protected.handles import KeyHandle

# The public opener only writes files, by design (no plaintext leaves before the last chunk
# authenticates), so to time its chunk loop from memory to memory the benchmark calls the private
# steps it is made of; section 2 drives the private per-run sealer and opener directly.
from qward.protected.stream_opening import (
    _ChunkOpener,
    _open_chunks,
    _payload_key,
    open_stream_to_file,
)

MIB = 1024 * 1024
CT = "application/octet-stream"
ONE_SHOT = 512 * MIB
TARGET = 0.8  # issue 4, item 3: seal and unseal at >= 0.8x raw AES-256-GCM
Keys = dict[str, KeyHandle[Any]]


class _Sink(io.RawIOBase):
    """Discards what is written: isolates sealing cost from output cost."""

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        return len(data)


def _sink() -> BinaryIO:
    return cast(BinaryIO, _Sink())


class _PeakRSS:
    """Growth of peak RSS over a block: VmHWM reset through clear_refs, else ru_maxrss."""

    def __enter__(self) -> _PeakRSS:
        try:
            Path("/proc/self/clear_refs").write_text("5")
            self._reset = True
        except OSError:
            self._reset = False
        self._before = self._peak_kib()
        self.growth_mib = 0.0
        return self

    def _peak_kib(self) -> int:
        if self._reset:
            status = Path("/proc/self/status").read_text()
            match = re.search(r"^VmHWM:\s+(\d+) kB", status, re.M)
            if match:
                return int(match.group(1))
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss

    def __exit__(self, *_: object) -> None:
        self.growth_mib = (self._peak_kib() - self._before) / 1024


def _keys() -> tuple[HPKERecipientKey, Keys]:
    kem, xk = mlkem.MLKEM768PrivateKey.generate(), x25519.X25519PrivateKey.generate()
    public = HPKERecipientKey.from_hpke_parts(kem.public_key(), xk.public_key())
    handle = KeyHandle(
        purpose="bench", key_id=public.key_id, key=hpke.MLKEM768X25519PrivateKey(kem, xk)
    )
    return public, {public.key_id: handle}


class _Clock:
    """Wall and CPU seconds, summed over every ``with`` block."""

    def __init__(self) -> None:
        self.wall = self.cpu = 0.0

    def __enter__(self) -> _Clock:
        self._wall, self._cpu = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *_: object) -> None:
        self.wall += time.perf_counter() - self._wall
        self.cpu += time.process_time() - self._cpu

    @property
    def sample(self) -> tuple[float, float]:
        return self.wall, self.cpu


class _Report:
    """Wall and CPU times per named run, best of the rounds."""

    def __init__(self, total: int, chunk: int) -> None:
        self.mib, self.chunks = total / MIB, total // chunk
        self.times: dict[str, list[tuple[float, float]]] = {}

    def add(self, name: str, sample: tuple[float, float]) -> None:
        self.times.setdefault(name, []).append(sample)

    def time(self, name: str, run: Callable[..., object], *args: Any, **kwargs: Any) -> None:
        with _Clock() as clock:
            run(*args, **kwargs)
        self.add(name, clock.sample)

    def best(self, name: str, *, cpu: bool = False) -> float:
        return min(sample[cpu] for sample in self.times[name])

    def line(self, name: str, *against: str) -> str:
        text = f"  {name:<40} {self.mib / self.best(name):7.0f} MiB/s"
        for raw in against:
            text += f"  {self.best(raw) / self.best(name):4.2f}x {raw.split()[1]}"
        if against:
            raw = against[-1]
            ratio = self.best(raw, cpu=True) / self.best(name, cpu=True)
            extra = (self.best(name, cpu=True) - self.best(raw, cpu=True)) / self.chunks * 1e6
            text += f"  | cpu {ratio:4.2f}x {raw.split()[1]}, {extra:+.2f} us/chunk"
        return text


def _raw_one_shot(plain: memoryview, report: _Report) -> None:
    aead, nonce = AESGCM(os.urandom(32)), os.urandom(12)
    size = min(ONE_SHOT, len(plain))
    sealed, opened = memoryview(bytearray(size + TAG_SIZE)), memoryview(bytearray(size))
    enc, dec = _Clock(), _Clock()
    for start in range(0, len(plain), size):
        part = plain[start : start + size]
        out, back = sealed[: len(part) + TAG_SIZE], opened[: len(part)]
        with enc:
            aead.encrypt_into(nonce, part, b"", out)
        with dec:
            aead.decrypt_into(nonce, out, b"", back)
    report.add("raw one-shot encrypt", enc.sample)
    report.add("raw one-shot decrypt", dec.sample)


def _raw_chunked_encrypt(plain: memoryview, chunk: int, repeats: int = 1) -> None:
    aead, nonce, aad = AESGCM(os.urandom(32)), os.urandom(12), os.urandom(32)
    encrypt, out = aead.encrypt_into, bytearray(chunk + TAG_SIZE)
    for _ in range(repeats):
        for start in range(0, len(plain) - len(plain) % chunk, chunk):
            encrypt(nonce, plain[start : start + chunk], aad, out)


def _seal(src: Any, dst: BinaryIO, public: HPKERecipientKey, chunk: int) -> None:
    seal_stream(src, dst, recipient=public, content_type=CT, chunk_size=chunk)


def _memory_seal(
    plain: bytes, public: HPKERecipientKey, chunk: int, report: _Report, rounds: int
) -> tuple[bytes, float]:
    view = memoryview(plain)
    for _ in range(rounds):
        _raw_one_shot(view, report)
        report.time("raw chunked encrypt", _raw_chunked_encrypt, view, chunk)
        report.time("seal_stream from bytes", _seal, plain, _sink(), public, chunk)
        reader = io.BytesIO(plain)  # shares plain's buffer; each read copies
        report.time("seal_stream from io.BytesIO", _seal, reader, _sink(), public, chunk)
    with _PeakRSS() as rss:
        _seal(plain, _sink(), public, chunk)
    sealed = io.BytesIO()
    _seal(plain, sealed, public, chunk)
    return sealed.getvalue(), rss.growth_mib  # getvalue hands over the buffer without a copy


def _raw_chunked_decrypt(body: memoryview, head: StreamHeader, key: bytes) -> None:
    sealed_size = head.chunk_size + TAG_SIZE
    count = -(-len(body) // sealed_size)
    nonces = [chunk_nonce(head.nonce_prefix, i, last=i == count - 1) for i in range(count)]
    decrypt, aad, out = AESGCM(key).decrypt_into, head.aad, bytearray(head.chunk_size)
    for i, start in enumerate(range(0, len(body) - sealed_size + 1, sealed_size)):
        decrypt(nonces[i], body[start : start + sealed_size], aad, out)


def _memory_open(sealed: bytes, keys: Keys, report: _Report, rounds: int, tmpfs: Path) -> float:
    head = read_stream_header(sealed)
    key, body = _payload_key(head, keys), memoryview(sealed)[head.front_length :]
    target = tmpfs / f"bench-opened-{os.getpid()}.bin"
    for _ in range(rounds):
        report.time("raw chunked decrypt", _raw_chunked_decrypt, body, head, key)
        report.time("open chunks from bytes", _open_chunks, sealed, _sink(), head, key)
        reader = io.BytesIO(sealed)
        read_stream_header(reader)
        report.time("open chunks from io.BytesIO", _open_chunks, reader, _sink(), head, key)
        report.time(
            "open_stream_to_file bytes->tmpfs",
            open_stream_to_file,
            sealed,
            target,
            keys=keys,
            expected_content_type=CT,
        )
        target.unlink()
    with _PeakRSS() as rss:
        _open_chunks(sealed, _sink(), head, key)
    return rss.growth_mib


def _cache_resident(
    public: HPKERecipientKey, keys: Keys, chunk: int, report: _Report, rounds: int
) -> None:
    block = memoryview(os.urandom(chunk * MAX_RUN_PIECES))
    repeats = int(report.mib * MIB) // len(block)
    blob = io.BytesIO()
    _seal(block, blob, public, chunk)
    head = read_stream_header(blob.getvalue())
    key = _payload_key(head, keys)
    sealer = _ChunkSealer(AESGCM(key), head.nonce_prefix, head.aad, chunk, _sink(), None)
    run = io.BytesIO()
    _ChunkSealer(AESGCM(key), head.nonce_prefix, head.aad, chunk, run, None).seal(
        block, final=False
    )  # MAX_RUN_PIECES whole chunks, none flagged last: one run the opener can open again
    sealed_run = memoryview(run.getvalue())
    opener = _ChunkOpener(head, key, _sink())

    def seal_loop() -> None:
        for _ in range(repeats):
            sealer.seal(block, final=False)

    def open_loop() -> None:
        for _ in range(repeats):
            opener.index = 0
            opener.open(sealed_run, final=False)

    for _ in range(rounds):
        report.time("raw chunked encrypt (cached)", _raw_chunked_encrypt, block, chunk, repeats)
        report.time("seal chunk loop (cached)", seal_loop)
        report.time("raw chunked decrypt (cached)", _raw_decrypt_n, sealed_run, head, key, repeats)
        report.time("open chunk loop (cached)", open_loop)


def _raw_decrypt_n(run: memoryview, head: StreamHeader, key: bytes, repeats: int) -> None:
    sealed_size = head.chunk_size + TAG_SIZE
    nonces = [chunk_nonce(head.nonce_prefix, i, last=False) for i in range(MAX_RUN_PIECES)]
    decrypt, aad, out = AESGCM(key).decrypt_into, head.aad, bytearray(head.chunk_size)
    for _ in range(repeats):
        for i, start in enumerate(range(0, len(run), sealed_size)):
            decrypt(nonces[i], run[start : start + sealed_size], aad, out)


def _files(
    total: int, chunk: int, public: HPKERecipientKey, keys: Keys, where: Path | None
) -> tuple[float, float, float]:
    with tempfile.TemporaryDirectory(dir=where) as tmp:
        plain, sealed, opened = Path(tmp) / "model.bin", Path(tmp) / "model.qws", Path(tmp) / "out"
        with plain.open("wb") as handle:
            block = os.urandom(4 * MIB)
            for _ in range(total // len(block)):
                handle.write(block)
            handle.write(block[: total % len(block)])
        with _PeakRSS() as rss:
            start = time.perf_counter()
            with plain.open("rb") as src, sealed.open("wb") as dst:
                _seal(src, dst, public, chunk)
            seal_s = time.perf_counter() - start
            start = time.perf_counter()
            with sealed.open("rb") as src:
                open_stream_to_file(src, opened, keys=keys, expected_content_type=CT)
            open_s = time.perf_counter() - start
    return seal_s, open_s, rss.growth_mib


def _print_memory(report: _Report, seal_rss: float, open_rss: float) -> None:
    enc = ("raw one-shot encrypt", "raw chunked encrypt")
    dec = ("raw one-shot decrypt", "raw chunked decrypt")
    print(f"1. memory to memory, {report.mib:.0f} MiB in RAM (DRAM-bound), output discarded")
    for name in enc:
        print(report.line(name))
    for name in ("seal_stream from bytes", "seal_stream from io.BytesIO"):
        print(report.line(name, *enc))
    for name in dec:
        print(report.line(name))
    for name in (
        "open chunks from bytes",
        "open chunks from io.BytesIO",
        "open_stream_to_file bytes->tmpfs",
    ):
        print(report.line(name, *dec))
    print(f"  peak RSS growth: seal from bytes {seal_rss:.1f} MiB, open {open_rss:.1f} MiB")
    for name, raw in (("seal_stream from bytes", enc[1]), ("open chunks from bytes", dec[1])):
        wall = report.best(raw) / report.best(name)
        cpu = report.best(raw, cpu=True) / report.best(name, cpu=True)
        verdict = "meets" if min(wall, cpu) >= TARGET else "MISSES"
        print(f"  {name} {verdict} >= {TARGET}x raw chunked (wall {wall:.2f}x, cpu {cpu:.2f}x)")
    print("2. cache-resident: one run of chunks sealed/opened over and over (AES-bound)")
    print(report.line("raw chunked encrypt (cached)"))
    print(report.line("seal chunk loop (cached)", "raw chunked encrypt (cached)"))
    print(report.line("raw chunked decrypt (cached)"))
    print(report.line("open chunk loop (cached)", "raw chunked decrypt (cached)"))


def main() -> None:
    """Run the benchmark."""
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n", 1)[0])
    parser.add_argument("--size-mib", type=int, default=2048)
    parser.add_argument("--chunk-kib", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--dir", type=Path, default=None, help="where the file runs write")
    parser.add_argument("--tmpfs", type=Path, default=Path("/dev/shm"), help="a RAM-backed dir")
    parser.add_argument("--no-files", action="store_true", help="skip the file-to-file runs")
    args = parser.parse_args()
    total, chunk = args.size_mib * MIB, args.chunk_kib * 1024
    public, keys = _keys()
    report = _Report(total, chunk)
    print(f"size {report.mib:.0f} MiB, chunk {args.chunk_kib} KiB, best of {args.rounds} rounds")
    if not args.no_files:
        seal_s, open_s, growth = _files(total, chunk, public, keys, args.dir)
    block = os.urandom(4 * MIB)
    plain = block * (total // len(block)) + block[: total % len(block)]
    sealed, seal_rss = _memory_seal(plain, public, chunk, report, args.rounds)
    del plain
    tmpfs = args.tmpfs if args.tmpfs.is_dir() else Path(tempfile.gettempdir())
    open_rss = _memory_open(sealed, keys, report, args.rounds, tmpfs)
    del sealed
    _cache_resident(public, keys, chunk, report, args.rounds)
    _print_memory(report, seal_rss, open_rss)
    if not args.no_files:
        raw = report.mib / report.best("raw chunked encrypt")
        print(f"3. file to file in {args.dir or tempfile.gettempdir()} (disk-bound here)")
        for name, seconds in (("seal_stream", seal_s), ("open_stream_to_file", open_s)):
            speed = report.mib / seconds
            print(f"  {name + ' file->file':<40} {speed:7.0f} MiB/s  {speed / raw:4.2f}x chunked")
        print(f"  peak RSS growth while sealing and opening the file: {growth:.1f} MiB")


if __name__ == "__main__":
    main()
