"""A loopback stand-in for an OpenTimestamps calendar server. It is a test fake, not a calendar.

This machine reaches no network beyond package registries, so the public calendars cannot be
used. This server speaks the calendar's HTTP protocol (opentimestamps-server, otsserver/rpc.py and
otsserver/calendar.py) to the real python-opentimestamps client that ``OpenTimestampsAnchor`` uses:

- ``POST /digest`` with at most 64 bytes returns a serialised timestamp for them: append a 16-byte
  nonce and SHA-256 (the aggregator's ``nonce_timestamp``), prepend the 4-byte big-endian time and
  append an 8-byte HMAC (``Calendar.submit``), ending in a ``PendingAttestation`` naming this
  calendar's URL. Like a real calendar it batches nothing here, so its Merkle tree has one leaf.
- ``GET /timestamp/<hex commitment>`` returns 404 "Pending confirmation in Bitcoin blockchain"
  until ``confirm`` is called, then the path from the commitment to a Bitcoin attestation.

``confirm`` does not touch Bitcoin: it builds a *synthetic* block (a made-up transaction carrying
the commitments' Merkle tip, one sibling transaction, and an 80-byte header with that Merkle root
and a chosen time) and serves its header through ``header``. Real Bitcoin confirmation is not
tested.
"""

from __future__ import annotations

import hashlib
import os
import struct
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from opentimestamps.core.notary import (  # type: ignore[import-untyped]
    BitcoinBlockHeaderAttestation,
    PendingAttestation,
)
from opentimestamps.core.op import OpAppend, OpPrepend, OpSHA256  # type: ignore[import-untyped]
from opentimestamps.core.serialize import BytesSerializationContext  # type: ignore[import-untyped]
from opentimestamps.core.timestamp import (  # type: ignore[import-untyped]
    Timestamp,
    cat_sha256d,
    make_merkle_tree,
)

MAX_DIGEST_LENGTH = 64


def serialize(timestamp: Any) -> bytes:
    ctx = BytesSerializationContext()
    timestamp.serialize(ctx)
    return bytes(ctx.getbytes())


class StandInCalendar:
    """Serve the calendar protocol on 127.0.0.1 until ``close``."""

    def __init__(self) -> None:
        self._hmac_key = os.urandom(32)
        self._pending: dict[bytes, Any] = {}  # commitment -> its Timestamp node
        self._done: dict[bytes, Any] = {}
        self._headers: dict[int, bytes] = {}
        self._lock = threading.Lock()
        self.submissions = 0
        self.fail_with: int | None = None  # answer POST /digest with this status instead
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        # A short poll interval keeps close() (which waits for the loop to notice) fast.
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.01}, daemon=True
        )
        self._thread.start()

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join()

    def submit(self, digest: bytes) -> Any:
        """What the real calendar does with a submitted digest (otsserver.calendar)."""
        stamp = Timestamp(digest)
        nonced = stamp.ops.add(OpAppend(os.urandom(16))).ops.add(OpSHA256())
        tip = make_merkle_tree([nonced])
        commitment = tip.ops.add(OpPrepend(struct.pack(">L", int(time.time()))))
        mac = hashlib.sha256(commitment.msg + self._hmac_key).digest()[:8]
        macced = commitment.ops.add(OpAppend(mac))
        macced.attestations.add(PendingAttestation(self.url))
        with self._lock:
            self._pending[macced.msg] = macced
            self.submissions += 1
        return stamp

    def confirm(self, *, height: int, block_time: int) -> None:
        """Commit every pending commitment to one synthetic block (not real Bitcoin)."""
        with self._lock:
            pending, self._pending = list(self._pending.values()), {}
        fresh = [Timestamp(node.msg) for node in pending]
        tip = make_merkle_tree(fresh)
        # A made-up transaction carrying the tip, hashed twice for its txid, as in Bitcoin.
        tx = tip.ops.add(OpPrepend(b"\x01" * 40)).ops.add(OpAppend(b"\x00" * 12))
        txid = tx.ops.add(OpSHA256()).ops.add(OpSHA256())
        root = cat_sha256d(txid, hashlib.sha256(b"sibling transaction").digest())
        root.attestations.add(BitcoinBlockHeaderAttestation(height))
        header = struct.pack("<i32s32sIII", 2, bytes(32), root.msg, block_time, 0x207FFFFF, 0)
        with self._lock:
            self._headers[height] = header
            for stamp in fresh:
                self._done[stamp.msg] = stamp

    def header(self, height: int) -> bytes:
        """The synthetic block header at ``height``, as a trusted Bitcoin node would return."""
        with self._lock:
            return self._headers[height]

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        calendar = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:
                pass  # keep test output quiet

            def _reply(self, status: int, body: bytes, kind: str) -> None:
                self.send_response(status)
                self.send_header("Content-Type", kind)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                digest = self.rfile.read(length)
                if self.path != "/digest":
                    self._reply(404, b"not found", "text/plain")
                elif calendar.fail_with is not None:
                    self._reply(calendar.fail_with, b"unavailable", "text/plain")
                elif not 0 < length <= MAX_DIGEST_LENGTH:
                    self._reply(400, b"digest too long", "text/plain")
                else:
                    stamp = calendar.submit(digest)
                    self._reply(200, serialize(stamp), "application/octet-stream")

            def do_GET(self) -> None:
                if not self.path.startswith("/timestamp/"):
                    self._reply(404, b"not found", "text/plain")
                    return
                try:
                    commitment = bytes.fromhex(self.path[len("/timestamp/") :])
                except ValueError:
                    self._reply(400, b"commitment must be hex-encoded bytes", "text/plain")
                    return
                with calendar._lock:
                    stamp = calendar._done.get(commitment)
                    waiting = commitment in calendar._pending
                if stamp is not None:
                    self._reply(200, serialize(stamp), "application/octet-stream")
                else:
                    reason = (
                        b"Pending confirmation in Bitcoin blockchain" if waiting else b"Not found"
                    )
                    self._reply(404, reason, "text/plain")

        return Handler
