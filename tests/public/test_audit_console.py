"""The audit console: its JSON over plain HTTP, and the page in a real browser (Debian's chromium
driven by Playwright), against a real `qward serve` with real runs in its log."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from qward.encoding import recanonicalize_json
from qward.public.auth import TOKEN_FILE, TokenStore
from qward.public.console import CONSOLE_CSP
from qward.receipts.receipt_checks import CHECK_NAMES, receipt_checks
from qward.receipts.trust import TrustBundle
from qward.receipts.verify import Verifier
from qward.sdk.client import seal_model

from conftest import Served, example_bytes, start_serve, stop_serve

CHROMIUM = "/usr/bin/chromium"
_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


@dataclass(frozen=True)
class Console:
    served: Served
    auditor: str
    client: str
    receipts: list[str]
    trust: TrustBundle


@pytest.fixture(scope="module")
def console(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Console]:
    state = tmp_path_factory.mktemp("console")
    tokens = TokenStore(state / TOKEN_FILE)
    auditor, _ = tokens.create(role="auditor", models=())
    client, _ = tokens.create(role="client", models=("iris",))
    served = start_serve(state)
    trust = TrustBundle.from_bytes(
        httpx.get(served.url + "/v1/trust", headers=served.headers).content
    )
    httpx.post(
        served.url + "/v1/models",
        params={"name": "iris"},
        headers=served.headers,
        content=seal_model(example_bytes("iris-mlp.onnx"), trust=trust),
    ).raise_for_status()
    request = json.loads(example_bytes("iris-request.json"))
    receipts = []
    for _ in range(3):
        reply = httpx.post(
            served.url + "/v2/models/iris/infer",
            json=request,
            headers={"Authorization": f"Bearer {client}"},
        )
        reply.raise_for_status()
        receipts.append(reply.json()["parameters"]["qward_receipt"])
    yield Console(served, auditor, client, receipts, trust)
    stop_serve(served)


def _get(console: Console, path: str, token: str | None) -> httpx.Response:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return httpx.get(console.served.url + path, headers=headers)


def _tampered(receipt: str) -> str:
    doc = json.loads(receipt)
    digest = doc["body"]["output"]["sha256"]
    doc["body"]["output"]["sha256"] = ("0" if digest[0] != "0" else "1") + digest[1:]
    return json.dumps(doc, indent=2)


def _size(console: Console) -> int:
    note = _get(console, "/log/checkpoint", None).text
    return int(note.split("\n")[1])


def test_the_page_is_static_and_locked_down(console: Console) -> None:
    page = _get(console, "/audit", None)
    assert page.status_code == 200 and page.headers["content-security-policy"] == CONSOLE_CSP
    assert "'unsafe-inline'" not in CONSOLE_CSP and "<script>" not in page.text
    assert "http://" not in page.text and "https://" not in page.text  # no CDN
    assert _get(console, "/audit/static/console.js", None).status_code == 200
    assert _get(console, "/audit/static/app.py", None).status_code == 404
    assert _get(console, "/audit/static/%2e%2e%2fapp.py", None).status_code in (401, 404)


def test_the_api_is_for_auditors_only(console: Console) -> None:
    assert _get(console, "/audit/api/overview", None).status_code == 401
    assert _get(console, "/audit/api/overview", console.client).status_code == 403
    overview = _get(console, "/audit/api/overview", console.auditor)
    assert overview.status_code == 200
    data = overview.json()
    assert data["log"]["size"] >= _size(console) - 2  # a few access records may land between
    assert {r["model"] for r in data["runs"]} == {"iris"} and len(data["runs"]) == 3
    assert data["entry_types"]["qward/receipt/v2"] == 3
    assert sum(s["runs"] for s in data["series"]) == 3


def test_receipt_checks_agree_with_the_verifier(console: Console) -> None:
    good = receipt_checks(console.receipts[0].encode(), trust=console.trust)
    assert [c.name for c in good] == list(CHECK_NAMES) and all(c.ok for c in good)
    Verifier(trust=console.trust).verify(console.receipts[0].encode())
    tampered = recanonicalize_json(_tampered(console.receipts[0]).encode(), what="receipt")
    bad = receipt_checks(tampered, trust=console.trust)
    failed = [c for c in bad if c.ok is False]
    assert [c.name for c in failed] == ["inclusion proof"]
    assert all(c.ok is None for c in bad[[c.name for c in bad].index("inclusion proof") + 1 :])


def test_a_bad_receipt_gets_a_clear_error(console: Console) -> None:
    headers = {"Authorization": f"Bearer {console.auditor}"}
    url = console.served.url + "/audit/api/verify-receipt"
    empty = httpx.post(url, headers=headers, content=b"")
    assert empty.status_code == 400 and "no receipt" in empty.json()["error"]["message"]
    junk = httpx.post(url, headers=headers, content=b"{not json")
    assert junk.status_code == 400 and "receipt" in junk.json()["error"]["message"]
    wrong = httpx.post(url, headers=headers, content=b'{"format": "something else"}')
    assert wrong.status_code == 200 and wrong.json()["verified"] is False
    assert wrong.json()["checks"][0]["ok"] is False


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    if not Path(CHROMIUM).exists():
        reason = "the console's browser tests need Debian's chromium (apt-get install chromium)"
        if os.environ.get("QWARD_REQUIRE_CHROMIUM") == "1":
            pytest.fail(f"QWARD_REQUIRE_CHROMIUM=1 but {reason}", pytrace=False)
        pytest.skip(reason)
    sync_api = pytest.importorskip("playwright.sync_api", reason="pip install playwright")
    with sync_api.sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=_ARGS)
        yield launched
        launched.close()


def _logged_in(browser: Any, console: Console, token: str) -> Any:
    page = browser.new_page()
    page.goto(console.served.url + "/audit")
    page.fill("#token", token)
    page.click("#load")
    # Selectors, not script predicates: the page's CSP (no eval) applies to the test too.
    page.wait_for_selector("#main:not([hidden]), #status.error", state="attached")
    return page


def test_the_console_in_a_browser(browser: Any, console: Console) -> None:
    page = _logged_in(browser, console, console.auditor)
    assert page.is_visible("#main"), page.text_content("#status")
    shown = int(page.text_content("#log-size") or "0")
    assert _size(console) - 2 <= shown <= _size(console)
    assert page.text_content("#log-origin") == console.trust.origin
    runs = page.locator("#runs-table tbody tr")
    assert runs.count() == 3 and "iris" in (runs.first.text_content() or "")
    assert page.locator("#plot-runs rect.bar").count() >= 1
    assert page.locator("#plot-size circle.point").count() >= 1
    assert (
        sum(
            float(v)
            for v in page.eval_on_selector_all(
                "#plot-runs rect.bar", "els => els.map(e => e.getAttribute('data-value'))"
            )
        )
        == 3
    )
    assert "no witnesses pinned" in (page.text_content("#witnesses") or "")
    assert page.evaluate("sessionStorage.getItem('qward-token')") == console.auditor
    assert console.auditor not in page.url

    page.fill("#receipt", console.receipts[1])
    page.click("#verify-button")
    page.wait_for_selector("#verdict.ok")
    assert page.text_content("#verdict") == "verified: every check passed"
    assert page.locator("#checks li.ok").count() == len(CHECK_NAMES)

    # A file dropped on the zone is verified at once: the tampered one shows which check failed.
    page.evaluate(
        """(text) => {
            const data = new DataTransfer();
            data.items.add(new File([text], "tampered.receipt.json", {type: "application/json"}));
            const zone = document.getElementById("dropzone");
            zone.dispatchEvent(new DragEvent("drop", {dataTransfer: data, bubbles: true}));
        }""",
        _tampered(console.receipts[1]),
    )
    page.wait_for_selector("#verdict.fail")
    assert page.text_content("#verdict") == "failed: inclusion proof"
    assert page.locator("#checks li.fail").count() == 1
    assert "inclusion proof" in (page.locator("#checks li.fail").text_content() or "")
    page.close()


def test_a_client_token_is_refused_in_the_browser(browser: Any, console: Console) -> None:
    page = _logged_in(browser, console, console.client)
    assert not page.is_visible("#main")
    assert (page.text_content("#status") or "").startswith("could not load: 403")
    page.close()
