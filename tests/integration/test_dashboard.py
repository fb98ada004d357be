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
#: Outcomes scored one and two minutes on: the cycles of one test fill the scorecard.
HORIZONS = {"RUNNER_OUTCOMES__HORIZONS_MINUTES": "[1, 2]"}
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
        **HORIZONS,
    )
    result = run_cli(["cycle", "--json"], environ)
    assert result.code == 0, result.stderr
    doc: dict[str, Any] = result.json()
    return doc


def stages_of(cycle: dict[str, Any]) -> dict[str, list[str]]:
    """symbol -> what its row should show of the cycle's stages: signal, score, grade, advice."""
    scores = {s["symbol"]: s for s in cycle["scores"]}
    advice = {a["symbol"]: a for a in cycle["advice"]}
    return {
        s["symbol"]: [
            s["action"],
            str(scores[s["symbol"]]["score"]),
            scores[s["symbol"]]["grade"],
            advice[s["symbol"]]["action"],
        ]
        for s in cycle["signals"]
    }


def shown_stages(page: Any) -> dict[str, list[str]]:
    rows: list[list[Any]] = page.eval_on_selector_all(
        "#rows tr",
        "rows => rows.map(r => [r.dataset.symbol, ['action', 'score', 'grade', 'advice']"
        '.map(f => r.querySelector(`[data-field="${f}"]`).textContent.trim())])',
    )
    return {symbol: cells for symbol, cells in rows}


#: Every row's last change is its advice: the pipeline's last stage for a symbol.
ALL_ROWS_ADVISED = (
    "() => [...document.querySelectorAll('#rows tr')].every(r => r.dataset.changed === 'advice')"
)


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


def scorecard_cells(card: dict[str, Any]) -> dict[str, dict[str, str]]:
    """symbol -> horizon -> the text its cell should show (hit rate in whole percent, count)."""
    out: dict[str, dict[str, str]] = {}
    for s in card["summary"]:
        out.setdefault(s["symbol"], {})[str(s["horizon_minutes"])] = (
            f"{round(s['hit_rate'] * 100)}%{s['count']}"
        )
    return out


def shown_scorecard(page: Any) -> dict[str, dict[str, str]]:
    rows: list[list[Any]] = page.eval_on_selector_all(
        "#scorecard-rows tr",
        "rows => rows.map(r => [r.dataset.symbol, [...r.querySelectorAll('td[data-count]')]"
        ".map(td => [td.dataset.horizon, td.textContent.trim()])])",
    )
    return {symbol: dict(cells) for symbol, cells in rows}


def test_the_dashboard_fills_changes_live_reconnects_and_shows_the_same_after_a_reload(
    browser: Any, real_redis: redis.Redis, redis_server: RedisServer, tmp_path: Path
) -> None:
    # Published while no browser was open: there when one opens the page.
    first = run_cycle(redis_server, tmp_path, -3)
    server: Served = start_serve(redis_server.url, tmp_path, RUNNER_API_TOKEN=TOKEN, **HORIZONS)
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

        assert shown_stages(page) == stages_of(first)

        # A cycle while the page is open: every row changes without a reload, stage by stage,
        # and the cycle's report replaces the last one.
        second = run_cycle(redis_server, tmp_path, -2)
        minute = second["signals"][0]["id"].split(":", 1)[1]
        page.wait_for_function(ALL_ROWS_OF_MINUTE, arg=minute)
        page.wait_for_function(ALL_ROWS_ADVISED)
        assert shown_stages(page) == stages_of(second)
        page.wait_for_function("() => document.querySelectorAll('#strip .c').length === 2")
        page.wait_for_function(
            "id => document.querySelector('#report-meta').textContent.startsWith(id)",
            arg=second["report"]["id"],
        )
        assert "through every stage" in (page.text_content("#report") or "")

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
        server = start_serve(redis_server.url, tmp_path, port=server.port, RUNNER_API_TOKEN=TOKEN, **HORIZONS)
        page.wait_for_selector('#conn[data-state="live"]')
        minute = third["signals"][0]["id"].split(":", 1)[1]
        page.wait_for_function(ALL_ROWS_OF_MINUTE, arg=minute)
        page.wait_for_function("() => document.querySelectorAll('#strip .c').length === 3")

        page.wait_for_function(ALL_ROWS_ADVISED)
        assert shown_stages(page) == stages_of(third)

        # The scorecard: three cycles scored the signals of the earlier ones; the panel shows what
        # the API answers, refreshed after the last cycle without a reload.
        card = server.get("/api/scorecard?since=7d").body
        expected = scorecard_cells(card)
        assert len(expected) == len(SYMBOLS)
        page.wait_for_function(
            "n => [...document.querySelectorAll('#scorecard-rows td[data-count]')]"
            ".reduce((sum, td) => sum + Number(td.dataset.count), 0) === n",
            arg=sum(s["count"] for s in card["summary"]),
        )
        assert shown_scorecard(page) == expected
        assert page.is_hidden("#scorecard-empty")
        bars = page.eval_on_selector_all(
            "#calibration rect.bar[data-count]", "bars => bars.map(b => [b.dataset.decile, b.dataset.count])"
        )
        assert bars == [[str(c["decile"]), str(c["count"])] for c in card["calibration"]]
        page.set_viewport_size({"width": 1400, "height": 820})
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
