"""The dashboard in a real browser: Debian's Chromium, headless, driven by Playwright, against a
real `runner serve --no-schedule` and real `runner cycle` runs beside it (as the CronJob runs them).

``DASHBOARD_SCREENSHOT=1`` also writes the final screenshot to docs/dashboard.png (the README's).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from tests.conftest import ROOT, RedisServer, require_binary, run_cli
from tests.integration.helpers import env_for, scheduled_now
from tests.integration.web import TOKEN, Served, start_serve

pytestmark = pytest.mark.integration

SYMBOLS = ["AAVE/USD", "AVAX/USD", "BTC/USD", "DOGE/USD", "ETH/USD", "LINK/USD", "SOL/USD", "UNI/USD"]
#: Generous: a loaded machine is slow, never wrong.
WAIT_MS = 30_000
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    """Chromium with a fresh profile (Playwright drives the browser installed on the machine)."""
    executable = require_binary("chromium")
    from playwright.sync_api import sync_playwright

    profile = tempfile.mkdtemp(prefix="runner-chromium-")
    with sync_playwright() as pw:
        context = pw.chromium.launch_persistent_context(
            profile,
            executable_path=executable,
            headless=True,
            args=CHROMIUM_ARGS,
            viewport={"width": 1400, "height": 720},
            color_scheme="dark",
        )
        context.set_default_timeout(WAIT_MS)
        yield context
        context.close()
    shutil.rmtree(profile, ignore_errors=True)


def run_cycle(redis_server: RedisServer, tmp_path: Path, minute: int) -> dict[str, Any]:
    environ = env_for(
        redis_server.url,
        tmp_path,
        scripted=False,
        RUNNER_SCHEDULED_AT=scheduled_now(minute),
        RUNNER_SYMBOLS=json.dumps(SYMBOLS),
    )
    result = run_cli(["cycle", "--json"], environ)
    assert result.code == 0, result.stderr
    doc: dict[str, Any] = result.json()
    return doc


def write_later_stages(client: redis.Redis, signals: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Scores and advice for each signal, written as the pipeline's later stages publish them."""
    advice_by_symbol = {}
    for i, s in enumerate(signals):
        score = 40 + 7 * i
        grade = "A" if score >= 75 else "B" if score >= 60 else "C" if score >= 45 else "D"
        doc = {"id": s["id"], "stage": "score", "symbol": s["symbol"], "score": score, "grade": grade,
               "generated_at": s["generated_at"]}  # fmt: skip
        client.xadd("signals:scored", {"symbol": s["symbol"], "doc": json.dumps(doc)})
        client.hset("signals:latest:scored", s["symbol"], json.dumps(doc))
        action = s["action"] if grade != "D" else "HOLD"
        price = float(s["price"])
        side = {"BUY": 1, "SELL": -1}.get(action, 0)
        advice = {
            "id": s["id"], "stage": "advise", "symbol": s["symbol"], "action": action,
            "entry": price if side else None, "stop_loss": price * (1 - 0.02 * side) if side else None,
            "take_profit": price * (1 + 0.04 * side) if side else None,
            "position_size_pct": round(score / 10, 1) if side else 0, "horizon_minutes": 60,
            "generated_at": s["generated_at"],
        }  # fmt: skip
        client.xadd("signals:advised", {"symbol": s["symbol"], "doc": json.dumps(advice)})
        client.hset("signals:latest:advised", s["symbol"], json.dumps(advice))
        advice_by_symbol[s["symbol"]] = advice
    report = {
        "id": f"report:{signals[0]['id'].split(':', 1)[1]}:0/1",
        "stage": "report",
        "generated_at": signals[0]["generated_at"],
        "summary": f"## Cycle {signals[0]['id'].split(':', 1)[1]}\n\n{len(signals)} symbols, "
        f"{len(signals)} signals, {sum(a['action'] != 'HOLD' for a in advice_by_symbol.values())} "
        "advised.\n\n- nothing failed",
    }
    client.xadd("reports:cycle", {"symbol": "", "doc": json.dumps(report)})
    client.set("reports:latest", json.dumps(report))
    return advice_by_symbol


#: Every row shows a signal of the minute ``m``.
ALL_ROWS_OF_MINUTE = (
    "m => [...document.querySelectorAll('#rows tr')].every(r => r.dataset.signalId.endsWith(m))"
)


def board(page: Any) -> list[list[str]]:
    """The table as text, without the age column (it counts up by itself)."""
    rows: list[list[str]] = page.eval_on_selector_all(
        "#rows tr",
        "rows => rows.map(r => [...r.children].filter(td => td.dataset.field !== 'age')"
        ".map(td => td.textContent.trim()))",
    )
    return rows


def row_attr(page: Any, symbol: str, name: str) -> str:
    value: str = page.get_attribute(f'#rows tr[data-symbol="{symbol}"]', name) or ""
    return value


def test_the_dashboard_fills_changes_live_reconnects_and_shows_the_same_after_a_reload(
    browser: Any, real_redis: redis.Redis, redis_server: RedisServer, tmp_path: Path
) -> None:
    # Published while no browser was open: there when one opens the page.
    first = run_cycle(redis_server, tmp_path, -3)
    server: Served = start_serve(redis_server.url, tmp_path, RUNNER_API_TOKEN=TOKEN)
    page = browser.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    try:
        page.goto(server.base + "/")
        page.wait_for_selector('#conn[data-state="live"]')
        page.wait_for_function(f"() => document.querySelectorAll('#rows tr').length === {len(SYMBOLS)}")
        shown = {s: page.text_content(f'#rows tr[data-symbol="{s}"] [data-field="action"]') for s in SYMBOLS}
        assert shown == {s["symbol"]: s["action"] for s in first["signals"]}
        assert page.is_hidden("#empty")

        # A cycle while the page is open: every row changes without a reload.
        second = run_cycle(redis_server, tmp_path, -2)
        minute = second["signals"][0]["id"].split(":", 1)[1]
        page.wait_for_function(ALL_ROWS_OF_MINUTE, arg=minute)
        assert {row_attr(page, s, "data-changed") for s in SYMBOLS} == {"signal"}
        page.wait_for_function("() => document.querySelectorAll('#strip .c').length === 2")

        # The later stages arrive: their cells fill in and are marked as just changed.
        advice = write_later_stages(real_redis, second["signals"])
        page.wait_for_function(
            "() => [...document.querySelectorAll('#rows tr')].every(r => r.dataset.changed === 'advice')"
        )
        eth = advice["ETH/USD"]
        assert page.text_content('#rows tr[data-symbol="ETH/USD"] [data-field="advice"]') == eth["action"]
        page.wait_for_function("() => document.querySelector('#report').textContent.includes('nothing')")

        # The kill switch, from the page's controls, shows on its tile.
        page.click("#controls summary")
        page.fill("#token", TOKEN)
        page.fill("#reason", "maintenance window")
        page.click("#kill-on")
        page.wait_for_function("() => document.querySelector('#kill').textContent === 'ON'")
        assert "maintenance window" in (page.text_content("#kill-detail") or "")
        page.click("#kill-off")
        page.wait_for_function("() => document.querySelector('#kill').textContent === 'off'")
        page.click("#controls summary")

        # Reload: the same state, from the snapshot.
        before = board(page)
        page.reload()
        page.wait_for_selector('#conn[data-state="live"]')
        page.wait_for_function(f"() => document.querySelectorAll('#rows tr').length === {len(SYMBOLS)}")
        page.wait_for_function("() => document.querySelectorAll('#strip .c').length === 2")
        assert board(page) == before

        # The server restarts: the page reconnects by itself and misses nothing.
        result = server.stop()
        assert result.code == 0, result.stderr
        page.wait_for_selector('#conn:not([data-state="live"])')
        third = run_cycle(redis_server, tmp_path, -1)
        server = start_serve(redis_server.url, tmp_path, port=server.port, RUNNER_API_TOKEN=TOKEN)
        page.wait_for_selector('#conn[data-state="live"]')
        minute = third["signals"][0]["id"].split(":", 1)[1]
        page.wait_for_function(ALL_ROWS_OF_MINUTE, arg=minute)
        page.wait_for_function("() => document.querySelectorAll('#strip .c').length === 3")

        write_later_stages(real_redis, third["signals"])
        page.wait_for_function(
            "() => [...document.querySelectorAll('#rows tr')].every(r => r.dataset.changed === 'advice')"
        )
        page.set_viewport_size({"width": 1400, "height": 520})
        page.wait_for_function("() => document.getAnimations().length === 0")  # the highlights faded
        shot = tmp_path / "dashboard.png"
        page.screenshot(path=str(shot))
    finally:
        page.close()
        server.stop()

    assert errors == []
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    if os.environ.get("DASHBOARD_SCREENSHOT"):
        shutil.copyfile(shot, ROOT / "docs" / "dashboard.png")
