"""Unauthenticated log flooding (issue 10.6): refusals are aggregated per source and interval,
and the logged counts still add up to every refused call."""

from __future__ import annotations

import asyncio
import json
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from public.serving import App, start_app, stop_app
from qward.public.auth import TOKEN_FILE, TokenStore
from qward.sdk.core_process import CoreProcess

_FLOOD = 2000


def _refusals(state: Path) -> list[dict[str, Any]]:
    with sqlite3.connect(state / "log.sqlite") as db:
        entries = [json.loads(bytes(d)) for (d,) in db.execute("SELECT data FROM entries")]
    return [e for e in entries if str(e.get("decision", "")).startswith("deny-")]


@pytest.fixture()
def flooded(tmp_path: Path) -> Iterator[tuple[App, Path]]:
    core = CoreProcess.start(tmp_path)
    token = TokenStore(tmp_path / TOKEN_FILE).create(role="admin", models=())[0]
    proc = start_app(tmp_path, refusal_interval=1.0)
    yield App(url=proc.url, tokens={"admin": token}), tmp_path  # type: ignore[attr-defined]
    stop_app(proc)
    core.stop()


async def _flood(url: str) -> list[int]:
    limits = httpx.Limits(max_connections=16)
    async with httpx.AsyncClient(limits=limits, timeout=60) as client:
        replies = await asyncio.gather(
            *(client.post(f"{url}/v2/models/iris/infer", content=b"{}") for _ in range(_FLOOD))
        )
    return [r.status_code for r in replies]


def test_unauthenticated_flood_is_a_bounded_number_of_log_entries(
    flooded: tuple[App, Path],
) -> None:
    app, state = flooded
    before = len(_refusals(state))
    started = time.monotonic()
    statuses = asyncio.run(_flood(app.url))
    elapsed = time.monotonic() - started
    assert statuses == [401] * _FLOOD
    time.sleep(2.5)  # the last interval closes and its aggregate is logged
    entries = _refusals(state)[before:]
    assert sum(int(e.get("count", 1)) for e in entries) == _FLOOD
    # One first refusal and one aggregate per interval of 1 s, plus slack for interval edges.
    assert len(entries) <= 2 * (int(elapsed) + 3), (len(entries), elapsed)
    aggregates = [e for e in entries if "count" in e]
    assert aggregates and all(len(e["digest"]) == 64 and e["first_at"] for e in aggregates)


def test_allowed_calls_are_still_logged_one_by_one(flooded: tuple[App, Path]) -> None:
    app, state = flooded
    for _ in range(3):
        assert httpx.post(app.url + "/v2/repository/index", headers=app.auth("admin")).is_success
    with sqlite3.connect(state / "log.sqlite") as db:
        entries = [json.loads(bytes(d)) for (d,) in db.execute("SELECT data FROM entries")]
    allowed = [e for e in entries if e.get("decision") == "allow"]
    assert len(allowed) == 3 and all("count" not in e for e in allowed)
