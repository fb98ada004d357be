"""What people see at a terminal: progress, the cycle table, the status screen (rich)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from rich.console import Console, Group
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from runner.archive.rows import id_moment
from runner.models import Outcome, SymbolStatus

STATUS_STYLE = {
    "ok": "green",
    "completed": "green",
    "failed": "red",
    "timeout": "yellow",
    "partial": "yellow",
    "locked": "cyan",
    "rate_limited": "magenta",
    "paused": "dim",
    "not_started": "dim",
    "skipped": "cyan",
    "closed": "green",
    "open": "red",
    "half_open": "yellow",
    "unconfirmed": "yellow",
}
ACTION_STYLE = {"BUY": "green", "SELL": "red", "HOLD": "white"}
SPARK = "▁▂▃▄▅▆▇█"


def _styled(value: str) -> Text:
    return Text(value, style=STATUS_STYLE.get(value, ""))


def cycle_table(outcome: Outcome) -> Table:
    """One row per selected symbol: its signal, score and advice, and why when not ok."""
    table = Table(title=None, expand=False)
    for col in ("symbol", "status", "signal", "score", "advice", "stop → target", "ms", "reason"):
        table.add_column(col, justify="right" if col == "ms" else "left", no_wrap=col != "reason")
    for r in outcome.results:
        sig, score, advice = r.signal, r.score, r.advice
        signal_cell = Text("-", style="dim")
        if sig:
            signal_cell = Text(sig.action, style=ACTION_STYLE[sig.action]).append(
                f" {sig.confidence:.2f}", style=""
            )
        advice_cell = Text("-", style="dim")
        if advice:
            advice_cell = Text(advice.action, style=ACTION_STYLE[advice.action])
            if advice.action != "HOLD":
                advice_cell.append(f" {advice.position_size_pct:.3g}%", style="")
        levels = ""
        if advice and advice.stop_loss and advice.take_profit:
            levels = f"{advice.stop_loss:.5g} → {advice.take_profit:.5g}"
        table.add_row(
            r.symbol,
            _styled(r.status.value),
            signal_cell,
            f"{score.score} {score.grade}" if score else "",
            advice_cell,
            levels,
            str(r.duration_ms) if r.status is not SymbolStatus.PAUSED else "",
            r.reason or "",
        )
    return table


def cycle_headline(outcome: Outcome) -> Text:
    text = Text()
    text.append(outcome.status.value.upper(), style=STATUS_STYLE.get(outcome.status.value, "bold"))
    if outcome.skip_reason and outcome.status.value == "skipped":
        text.append(f" ({outcome.skip_reason}) {outcome.skip_detail or ''}")
    ok = sum(r.status is SymbolStatus.OK for r in outcome.results)
    text.append(
        f"  cycle {outcome.cycle_id} on {outcome.instance_id}  {ok}/{len(outcome.results)} ok, "
        f"{len(outcome.signals)} signal(s), {len(outcome.scores)} score(s), {len(outcome.advice)} advice"
        f"{'' if outcome.published else ' (dry run: not published)'}, "
        f"{outcome.duration_ms} ms, exit {outcome.exit_code}"
    )
    return text


def print_cycle(console: Console, outcome: Outcome) -> None:
    if outcome.results and outcome.status.value != "skipped":
        console.print(cycle_table(outcome))
    if outcome.report is not None:
        from rich.markdown import Markdown

        console.print(Panel(Markdown(outcome.report.summary), title="report", expand=False))
    for w in outcome.warnings:
        console.print(Text(f"warning: {w}", style="yellow"))
    console.print(cycle_headline(outcome))


def _count(signals: Any) -> int:
    """The last cycle's signals: a list in the full document, a number in a summary."""
    return len(signals) if isinstance(signals, list) else int(signals or 0)


def _ago(epoch: float | None, now: float) -> str:
    if not epoch:
        return "-"
    d = int(now - epoch)
    return f"{d}s ago" if d < 120 else f"{d // 60}m ago"


def _ts(iso: str | None) -> float | None:
    if not iso:
        return None
    try:
        return datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


#: Gaps found longer ago than this are left to ``runner status --json``.
GAP_SHOWN_SECONDS = 7 * 86400


def archive_lines(archive: dict[str, Any], now: float) -> list[Text]:
    """The archive's state: when it was last written, why not since, and the gaps found lately."""
    out: list[Text] = []
    if archive.get("configured"):
        line = Text("archive: ")
        if archive.get("result") in (None, "ok"):
            line.append("ok", style="green")
            line.append(f", last written {_ago(archive.get('ok_at'), now)}")
        else:
            line.append(str(archive.get("result")), style="red")
            line.append(f" since {_ago(archive.get('error_at'), now)}")
            line.append(f" (last written {_ago(archive.get('ok_at'), now)})")
            line.append(f": {archive.get('error') or ''}"[:200])
        out.append(line)
    for stage, gap in sorted((archive.get("gaps") or {}).items()):
        at = gap.get("at") if isinstance(gap.get("at"), int | float) else None
        if at is not None and now - at > GAP_SHOWN_SECONDS:
            continue
        out.append(
            Text(
                f"archive gap in {stage}: {_lost(gap.get('lost'))}entries between "
                f"{id_moment(gap.get('from'))} and "
                f"{id_moment(gap.get('to'))} were dropped by the stream cap before they were archived "
                f"(found {_ago(at, now)})",
                style="red",
            )
        )
    return out


def _lost(count: Any) -> str:
    return f"{count} " if isinstance(count, int) and count > 0 else ""


def sparkline(history: list[dict[str, Any]], width: int = 60) -> Text:
    """Oldest to newest: bar height is duration, colour is the outcome."""
    items = list(reversed(history[:width]))
    text = Text()
    if not items:
        return text
    top = max((h.get("duration_ms") or 0) for h in items) or 1
    for h in items:
        d = h.get("duration_ms") or 0
        ch = SPARK[min(len(SPARK) - 1, int(d / top * (len(SPARK) - 1)))]
        text.append(ch, style=STATUS_STYLE.get(str(h.get("status")), ""))
    return text


def status_screen(doc: dict[str, Any], health_code: int, problems: list[str]) -> Group:
    """The whole status screen: why the last cycle did what it did, in one screen."""
    now = datetime.now(UTC).timestamp()
    parts: list[Any] = []
    last = doc.get("last_cycle")
    verdict = {0: ("healthy", "green"), 1: ("degraded", "yellow"), 3: ("unhealthy", "red")}[health_code]
    head = Text()
    head.append(verdict[0].upper(), style=f"bold {verdict[1]}")
    if problems:
        head.append("  " + "; ".join(problems))
    parts.append(head)
    if last:
        line = Text("last cycle: ")
        line.append(str(last.get("status")), style=STATUS_STYLE.get(str(last.get("status")), ""))
        if last.get("skip_reason"):
            line.append(f" ({last['skip_reason']}: {last.get('skip_detail') or ''})")
        line.append(
            f"  {last.get('cycle_id')} on {last.get('instance_id')} shard {last.get('shard')}, "
            f"{_ago(_ts(last.get('started_at')), now)}, {last.get('duration_ms')} ms, "
            f"{_count(last.get('signals'))} signal(s), exit {last.get('exit_code')}"
        )
        parts.append(line)
        trouble = [r for r in last.get("results") or [] if r.get("status") not in ("ok", "paused")]
        for r in trouble[:8]:
            row = Text(f"  {r.get('symbol')} ")
            row.append(str(r.get("status")), style=STATUS_STYLE.get(str(r.get("status")), ""))
            row.append(f" {r.get('reason') or ''}"[:140])
            parts.append(row)
        if len(trouble) > 8:
            parts.append(Text(f"  ... and {len(trouble) - 8} more (runner status --json)"))
        if last.get("error"):
            parts.append(Text(f"  error: {last['error']}"[:200], style="red"))
        for w in (last.get("warnings") or [])[:3]:
            parts.append(Text(f"  warning: {w}"[:160], style="yellow"))
        spark = Text("recent:     ")
        spark.append_text(sparkline(doc.get("history") or []))
        parts.append(spark)
    b = doc["breaker"]
    ks = doc["kill_switch"]
    ad = doc["adaptive"]
    state = Text("breaker: ")
    state.append(b["state"], style=STATUS_STYLE.get(b["state"], ""))
    state.append(f" ({b['failure_count']} failures)")
    if b.get("next_probe_at"):
        state.append(f", next probe {datetime.fromtimestamp(b['next_probe_at'], UTC):%H:%M:%S}Z")
    state.append("   kill switch: ")
    state.append("ON" if ks["on"] else "off", style="bold red" if ks["on"] else "green")
    if ks["on"]:
        state.append(f" by {ks.get('by')} {_ago(ks.get('at'), now)}: {ks.get('reason')}")
    parts.append(state)
    cool = (
        ", ".join(
            f"shard {k}: {v.get('cooldown_remaining', 0)} left, {v.get('consecutive_overruns', 0)} overruns"
            for k, v in doc["cooldown"].items()
        )
        or "none"
    )
    parts.append(
        Text(
            f"adaptive: concurrency {ad['concurrency']}, timeout {ad['symbol_timeout_seconds']:.1f}s, "
            f"p95 {ad['p95_ms']:.0f} ms, p99 {ad['p99_ms']:.0f} ms over {ad['samples']} samples"
            f"{' (HIGH LATENCY)' if ad['high_latency'] else ''}   backpressure: {cool}"
        )
    )
    sp = doc.get("spend") or {}
    if sp.get("calls") or sp.get("budget_usd"):
        budget = f" of ${sp['budget_usd']:.2f}" if sp.get("budget_usd") else ""
        parts.append(Text(f"spend today: ${sp.get('usd', 0):.4f}{budget} over {sp.get('calls', 0)} call(s)"))
    inst = (
        ", ".join(
            f"{i['instance_id']} ({len(i['cycles'])} cycle(s), ttl {i['ttl_seconds']}s)"
            for i in doc["instances"]
        )
        or "none"
    )
    parts.append(Text(f"live instances: {inst}   stream length: {doc.get('stream_length', 0)}"))
    rd = doc.get("redis")
    if isinstance(rd, dict):
        where = f"master {rd['address']}" if rd.get("address") else f"master unknown ({rd.get('error')})"
        replicas = f", {rd['replicas']} replica(s)" if "replicas" in rd else ""
        parts.append(Text(f"redis: {rd.get('topology')}, {where}{replicas}"))
    mem = doc.get("memory") or {}
    if mem.get("warning"):
        parts.append(Text(f"warning: {mem['warning']}", style="bold yellow"))
    parts += archive_lines(doc.get("archive") or {}, now)
    if doc["locks"]:
        t = Table(title="locks", title_justify="left")
        for c in ("symbol", "owner", "cycle", "token", "age", "ttl", "owner alive"):
            t.add_column(c)
        for lk in doc["locks"]:
            t.add_row(
                lk["symbol"],
                str(lk["owner"]),
                str(lk["cycle_id"]),
                str(lk["token"]),
                f"{lk['age_seconds']}s",
                f"{lk['ttl_seconds']}s",
                Text("yes", style="green") if lk["owner_alive"] else Text("no (stale)", style="red"),
            )
        parts.append(t)
    if doc["paused"]:
        parts.append(
            Text(
                "paused: "
                + ", ".join(f"{s} ({(v or {}).get('reason', '')})" for s, v in doc["paused"].items()),
                style="yellow",
            )
        )
    symbols = sorted(set(doc["symbols"]) | set(doc["latest"]))
    if symbols:
        t = Table(title="symbols", title_justify="left")
        numeric = ("conf", "runs", "ok %", "errors in a row", "avg ms")
        columns = ("symbol", "latest", "conf", "score", "advice", "at", "runs", "ok %", "stages ok %")
        for c in (*columns, "errors in a row", "avg ms", "last"):
            t.add_column(c, justify="right" if c in numeric else "left")
        scores, advice = doc.get("latest_scores") or {}, doc.get("latest_advice") or {}
        for s in symbols:
            st = doc["symbols"].get(s, {})
            sig = doc["latest"].get(s, {})
            runs = int(st.get("runs") or 0)
            okp = f"{100 * int(st.get('successes') or 0) / runs:.0f}" if runs else ""
            action = str(sig.get("action") or "-")
            sc, adv = scores.get(s, {}), advice.get(s, {})
            adv_action = str(adv.get("action") or "-")
            adv_cell = Text(adv_action, style=ACTION_STYLE.get(adv_action, "dim"))
            if adv_action in ("BUY", "SELL"):
                adv_cell.append(f" {float(adv.get('position_size_pct') or 0):.3g}%", style="")
            t.add_row(
                s,
                Text(action, style=ACTION_STYLE.get(action, "dim")),
                f"{sig['confidence']:.2f}" if "confidence" in sig else "",
                f"{sc.get('score')} {sc.get('grade')}" if sc else "",
                adv_cell,
                str(sig.get("generated_at") or "")[11:19],
                str(runs or ""),
                okp,
                _stage_rates(st.get("stages")),
                str(st.get("consecutive_errors") if st else ""),
                str(st.get("avg_ms") or ""),
                Text(
                    str(st.get("last_status") or ""), style=STATUS_STYLE.get(str(st.get("last_status")), "")
                ),
            )
        parts.append(t)
    report = doc.get("report")
    if isinstance(report, dict) and report.get("summary"):
        from rich.markdown import Markdown

        title = f"report {report.get('minute', '')} shard {report.get('shard', '')}"
        parts.append(Panel(Markdown(str(report["summary"])), title=title, expand=False))
    return Group(*parts)


def _pct(value: Any, digits: int = 0) -> str:
    return f"{value * 100:.{digits}f}%" if isinstance(value, int | float) else "-"


def _bps(value: Any) -> str:
    """A mean return in basis points, signed."""
    return f"{value * 10_000:+.1f} bp" if isinstance(value, int | float) else "-"


def scorecard_screen(doc: dict[str, Any]) -> Group:
    """``runner scorecard`` on a terminal: per symbol and model, then per action, then calibration."""
    parts: list[Any] = []
    if not doc["rows"]:
        parts.append(
            Text("no outcomes yet: signals are scored once their horizons have passed", style="yellow")
        )
        return Group(*parts)
    span = f"the last {doc['days']} day(s)" if doc.get("days") else "every archived day"
    source = " (PostgreSQL archive)" if doc.get("source") == "postgres" else ""
    head = Text(
        f"outcomes of {span}{source}; a hit beats a {doc['fee_bps']:g} bp fee; returns are means per signal"
    )
    parts.append(head)
    t = Table(title="per symbol and model", title_justify="left")
    for c in (
        "symbol",
        "model",
        "horizon",
        "signals",
        "hit rate",
        "return",
        "buy & hold",
        "beats",
        "brier",
        "per day",
        "cost/hit",
    ):
        t.add_column(c, justify="left" if c in ("symbol", "model") else "right")
    for s in doc["summary"]:
        beats = s["beats_buy_and_hold"]
        t.add_row(
            s["symbol"],
            s["model"],
            f"{s['horizon_minutes']}m",
            str(s["count"]),
            _pct(s["hit_rate"]),
            _bps(s["mean_return"]),
            _bps(s["buy_and_hold_return"]),
            Text("yes", style="green")
            if beats
            else Text("no", style="red")
            if beats is not None
            else Text("-"),
            f"{s['brier']:.3f}" if s["brier"] is not None else "-",
            f"{s['signals_per_day']:.0f}" if s["signals_per_day"] is not None else "-",
            f"${s['cost_per_hit']:.4f}" if s["cost_per_hit"] is not None else "-",
        )
    parts.append(t)
    t = Table(title="per action", title_justify="left")
    for c in (
        "symbol",
        "model",
        "action",
        "horizon",
        "signals",
        "hits",
        "hit rate",
        "return",
        "buy & hold",
        "unscored",
    ):
        t.add_column(c, justify="left" if c in ("symbol", "model", "action") else "right")
    for r in doc["rows"]:
        t.add_row(
            r["symbol"],
            r["model"],
            Text(r["action"], style=ACTION_STYLE.get(r["action"], "")),
            f"{r['horizon_minutes']}m",
            str(r["count"]),
            str(r["hits"]),
            _pct(r["hit_rate"]),
            _bps(r["mean_return"]),
            _bps(r["buy_and_hold_return"]),
            str(r["unscored"]),
        )
    parts.append(t)
    if doc["calibration"]:
        t = Table(title="calibration: does confidence mean anything?", title_justify="left")
        for c in ("confidence", "signals", "hit rate", ""):
            t.add_column(c, justify="left" if c in ("confidence", "") else "right")
        for c in doc["calibration"]:
            bar = "█" * round((c["hit_rate"] or 0) * 20)
            t.add_row(
                f"{c['confidence_from']:.1f}-{c['confidence_to']:.1f}",
                str(c["count"]),
                _pct(c["hit_rate"]),
                bar,
            )
        parts.append(t)
    return Group(*parts)


def _what(stage: str, d: dict[str, Any]) -> Text:
    """One document in a line: what it said."""
    if stage in ("signal", "advice"):
        action = str(d.get("action", "?"))
        text = Text(f"{action:<4}", style=ACTION_STYLE.get(action, ""))
        if stage == "signal":
            text.append(f" {float(d.get('confidence') or 0):.2f}  {str(d.get('reasoning', ''))[:70]}")
        else:
            text.append(f" {float(d.get('position_size_pct') or 0):.3g}% stop {d.get('stop_loss')} ")
            text.append(f"target {d.get('take_profit')}")
        return text
    if stage == "score":
        return Text(f"{d.get('score')} {d.get('grade')}  {'; '.join(d.get('factors') or [])[:70]}")
    if stage == "outcome":
        hit = d.get("hit")
        text = Text("hit " if hit else "miss", style="green" if hit else "red")
        ret = d.get("return")
        text.append(f" {d.get('action')} {d.get('horizon_minutes')}m {_bps(ret)}")
        return text
    summary = str(d.get("summary") or "").replace("**", "")
    return Text(summary.splitlines()[0][:90] if summary else "")


def history_screen(doc: dict[str, Any]) -> Group:
    """``runner history`` on a terminal: one line per document, newest first."""
    parts: list[Any] = []
    if doc.get("note"):
        parts.append(Text(str(doc["note"]), style="yellow"))
    if not doc["documents"]:
        parts.append(Text("nothing archived matches", style="yellow"))
        return Group(*parts)
    t = Table(title=f"{doc['count']} document(s), newest first", title_justify="left")
    for c in ("minute", "stage", "symbol", "what", "id"):
        t.add_column(c, no_wrap=c != "what")
    for d in doc["documents"]:
        body = d.get("doc") if isinstance(d.get("doc"), dict) else {}
        t.add_row(
            str(d.get("minute", ""))[:16].replace("T", " "),
            d["stage"],
            str(d.get("symbol") or ""),
            _what(d["stage"], body),
            str(d.get("id", "")),
        )
    parts.append(t)
    return Group(*parts)


def _stage_rates(stages: Any) -> str:
    """``score 100 advise 95``: the share of each stage's runs that succeeded."""
    if not isinstance(stages, dict):
        return ""
    rates = []
    for stage in ("score", "advise"):
        row = stages.get(stage)
        if isinstance(row, dict) and int(row.get("runs") or 0):
            rates.append(f"{stage} {100 * int(row.get('ok') or 0) / int(row['runs']):.0f}")
    return " ".join(rates)


def panel(title: str, body: Any) -> Panel:
    return Panel(body, title=title, expand=False)
