// The dashboard: one EventSource for the live events, /api/status for the state around them.
// Plain JavaScript, no build step, nothing loaded from elsewhere. Text from the server only ever
// goes into the page as text (textContent), never as markup.
"use strict";

const STAGES = ["signal", "score", "advice"];
const MAX_CYCLES = 48;
const MAX_LOG = 40;
const STATUS_EVERY_MS = 15000;
const SCORECARD_EVERY_MS = 60000;

const state = {
  symbols: new Map(), // symbol -> {signal, score, advice}
  cycles: [], // newest first
  report: null,
  status: null,
  scorecard: null,
  cursor: null,
  lastEventAt: null,
};

const rows = new Map(); // symbol -> row elements
let source = null;
let retryMs = 1000;
let retryTimer = null;
let statusTimer = null;
let scorecardTimer = null;

const $ = (id) => document.getElementById(id);

function el(tag, cls, text) {
  const node = document.createElement(tag);
  if (cls) node.className = cls;
  if (text !== undefined && text !== null) node.textContent = String(text);
  return node;
}

// Formatting ------------------------------------------------------------------------------------

function price(x) {
  if (x === null || x === undefined || !Number.isFinite(Number(x))) return "—";
  const v = Number(x);
  if (Math.abs(v) >= 1000) return v.toLocaleString("en-US", { minimumFractionDigits: 2, maximumFractionDigits: 2 });
  return v.toLocaleString("en-US", { maximumSignificantDigits: 6 });
}

function millis(ms) {
  if (ms === null || ms === undefined) return "—";
  return ms < 1000 ? `${Math.round(ms)} ms` : `${(ms / 1000).toFixed(ms < 10000 ? 2 : 1)} s`;
}

function timeOf(iso) {
  const t = Date.parse(iso || "");
  return Number.isFinite(t) ? t : null;
}

function age(iso, now) {
  const t = timeOf(iso);
  if (t === null) return "—";
  const s = Math.max(0, Math.round((now - t) / 1000));
  if (s < 60) return `${s}s`;
  if (s < 3600) return `${Math.floor(s / 60)}m ${String(s % 60).padStart(2, "0")}s`;
  if (s < 86400) return `${Math.floor(s / 3600)}h ${String(Math.floor((s % 3600) / 60)).padStart(2, "0")}m`;
  return `${Math.floor(s / 86400)}d`;
}

function clock(iso) {
  const t = timeOf(iso);
  return t === null ? "" : new Date(t).toLocaleTimeString("en-GB", { hour12: false });
}

// The board -------------------------------------------------------------------------------------

function rowFor(symbol) {
  let r = rows.get(symbol);
  if (r) return r;
  const tr = el("tr");
  tr.dataset.symbol = symbol;
  const cell = (cls, field) => {
    const td = el("td", cls);
    td.dataset.field = field;
    tr.appendChild(td);
    return td;
  };
  r = {
    tr,
    sym: cell("sym", "symbol"),
    action: cell("", "action"),
    conf: cell("num", "confidence"),
    age: cell("num age", "age"),
    score: cell("num sep", "score"),
    grade: cell("", "grade"),
    advice: cell("sep", "advice"),
    entry: cell("num", "entry"),
    stop: cell("num", "stop"),
    target: cell("num", "target"),
    size: cell("num", "size"),
    rev: 0,
  };
  r.sym.textContent = symbol;
  rows.set(symbol, r);
  // Keep the rows in symbol order.
  const names = [...rows.keys()].sort();
  const next = names[names.indexOf(symbol) + 1];
  $("rows").insertBefore(tr, next ? rows.get(next).tr : null);
  $("empty").hidden = true;
  return r;
}

function setText(td, text, cls) {
  td.textContent = text;
  td.classList.toggle("none", text === "—");
  if (cls !== undefined) td.dataset.value = cls;
}

function action(td, value) {
  td.textContent = "";
  if (!value) {
    setText(td, "—");
    return;
  }
  td.classList.remove("none");
  const span = el("span", "action", value);
  span.dataset.action = value;
  td.appendChild(span);
}

function drawRow(symbol, changed) {
  const docs = state.symbols.get(symbol) || {};
  const r = rowFor(symbol);
  const s = docs.signal;
  const sc = docs.score;
  const a = docs.advice;
  r.tr.dataset.signalId = s ? s.id || "" : "";
  action(r.action, s && s.action);
  r.conf.textContent = "";
  if (s && Number.isFinite(Number(s.confidence))) {
    const wrap = el("span", "conf");
    const bar = el("span", "bar");
    const fill = el("i");
    fill.style.width = `${Math.round(Number(s.confidence) * 100)}%`;
    bar.appendChild(fill);
    wrap.append(bar, el("span", "num", Number(s.confidence).toFixed(2)));
    r.conf.appendChild(wrap);
    r.conf.classList.remove("none");
  } else {
    setText(r.conf, "—");
  }
  setText(r.score, sc && sc.score !== undefined ? String(sc.score) : "—");
  r.grade.textContent = "";
  if (sc && sc.grade) {
    const g = el("span", "grade", sc.grade);
    g.dataset.grade = sc.grade;
    r.grade.appendChild(g);
    r.grade.classList.remove("none");
  } else {
    setText(r.grade, "—");
  }
  action(r.advice, a && a.action);
  setText(r.entry, a ? price(a.entry) : "—");
  setText(r.stop, a ? price(a.stop_loss) : "—");
  setText(r.target, a ? price(a.take_profit) : "—");
  const size = a ? Number(a.position_size_pct) : NaN;
  setText(r.size, Number.isFinite(size) && size > 0 ? `${size.toFixed(1)}%` : "—");
  drawAge(r, Date.now());
  if (changed && changed.length) {
    r.rev += 1;
    r.tr.dataset.rev = String(r.rev);
    r.tr.dataset.changed = changed.join(" ");
    const cells = {
      signal: [r.action, r.conf, r.age],
      score: [r.score, r.grade],
      advice: [r.advice, r.entry, r.stop, r.target, r.size],
    };
    for (const stage of changed) {
      for (const td of cells[stage] || []) flash(td);
    }
  }
}

function drawSummary(now) {
  const node = $("summary");
  node.textContent = "";
  if (!state.symbols.size) return;
  const counts = { BUY: 0, SELL: 0, HOLD: 0 };
  let newest = null;
  for (const docs of state.symbols.values()) {
    if (!docs.signal) continue;
    counts[docs.signal.action] = (counts[docs.signal.action] || 0) + 1;
    const t = timeOf(docs.signal.generated_at);
    if (t !== null && (newest === null || t > newest)) newest = t;
  }
  const part = (label, value) => {
    const span = el("span");
    span.append(el("b", null, value), document.createTextNode(` ${label}`));
    node.appendChild(span);
  };
  part(state.symbols.size === 1 ? "symbol" : "symbols", state.symbols.size);
  for (const a of ["BUY", "SELL", "HOLD"]) part(a, counts[a]);
  if (newest !== null) node.appendChild(el("span", null, `newest signal ${age(new Date(newest).toISOString(), now)} ago`));
}

function flash(td) {
  td.classList.remove("flash");
  void td.offsetWidth; // restart the animation
  td.classList.add("flash");
}

function drawAge(r, now) {
  const docs = state.symbols.get(r.tr.dataset.symbol) || {};
  const s = docs.signal;
  r.age.textContent = s ? age(s.generated_at, now) : "—";
  const t = s ? timeOf(s.generated_at) : null;
  r.age.classList.toggle("old", t !== null && now - t > 5 * 60 * 1000);
  r.age.classList.toggle("none", !s);
}

function newer(doc, current) {
  if (!current) return true;
  const a = timeOf(doc.generated_at);
  const b = timeOf(current.generated_at);
  return a === null || b === null || a >= b;
}

// Events ----------------------------------------------------------------------------------------

function applySnapshot(snap) {
  state.symbols = new Map();
  for (const [symbol, docs] of Object.entries(snap.symbols || {})) {
    state.symbols.set(symbol, { signal: docs.signal, score: docs.score, advice: docs.advice });
  }
  for (const [symbol, r] of rows) {
    if (!state.symbols.has(symbol)) {
      r.tr.remove();
      rows.delete(symbol);
    }
  }
  for (const symbol of state.symbols.keys()) drawRow(symbol, null);
  $("empty").hidden = state.symbols.size > 0;
  drawSummary(Date.now());
  state.cycles = (snap.cycles || []).slice(0, MAX_CYCLES);
  state.report = snap.report || null;
  drawCycles();
  drawReport();
}

function applyStage(stage, doc) {
  if (!doc || !doc.symbol) return;
  const docs = state.symbols.get(doc.symbol) || { signal: null, score: null, advice: null };
  if (!newer(doc, docs[stage])) return;
  docs[stage] = doc;
  state.symbols.set(doc.symbol, docs);
  drawRow(doc.symbol, [stage]);
  drawSummary(Date.now());
}

function applyCycle(doc) {
  state.cycles = [doc, ...state.cycles.filter((c) => c.cycle_id !== doc.cycle_id)].slice(0, MAX_CYCLES);
  drawCycles(doc.cycle_id);
  refreshStatusSoon();
  refreshScorecardSoon(); // a cycle is when outcomes mature
}

function log(kind, doc) {
  const li = el("li");
  li.appendChild(el("span", "t", new Date().toLocaleTimeString("en-GB", { hour12: false })));
  li.appendChild(el("b", null, kind));
  let text = "";
  if (kind === "signal") text = `${doc.symbol} ${doc.action} ${Number(doc.confidence).toFixed(2)}`;
  else if (kind === "score") text = `${doc.symbol} ${doc.score} ${doc.grade || ""}`;
  else if (kind === "advice") text = `${doc.symbol} ${doc.action} ${price(doc.entry)}`;
  else if (kind === "report") text = doc.id || "";
  else if (kind === "cycle") text = `${doc.status} ${millis(doc.duration_ms)} ${doc.signals ?? ""} signal(s)`;
  else text = doc && doc.reason ? doc.reason : "";
  li.appendChild(document.createTextNode(` ${text}`));
  const list = $("log");
  list.insertBefore(li, list.firstChild);
  while (list.children.length > MAX_LOG) list.removeChild(list.lastChild);
}

function handle(kind, event) {
  let doc;
  try {
    doc = JSON.parse(event.data);
  } catch (_) {
    return;
  }
  if (event.lastEventId) state.cursor = event.lastEventId;
  state.lastEventAt = Date.now();
  if (kind === "snapshot") {
    applySnapshot(doc);
    refreshStatus();
    log("snapshot", { reason: `${state.symbols.size} symbol(s), ${state.cycles.length} cycle(s)` });
  } else if (kind === "signal" || kind === "score" || kind === "advice") {
    applyStage(kind, doc);
    log(kind, doc);
  } else if (kind === "report") {
    state.report = doc;
    drawReport();
    log(kind, doc);
  } else if (kind === "cycle") {
    applyCycle(doc);
    log(kind, doc);
  } else if (kind === "reset") {
    log("reset", doc);
  } else if (kind === "shutdown") {
    log("shutdown", doc);
    reconnectLater("server restarting");
  }
  drawConnection();
}

function connect() {
  clearTimeout(retryTimer);
  if (source) source.close();
  const url = state.cursor ? `/api/events?last_event_id=${encodeURIComponent(state.cursor)}` : "/api/events";
  source = new EventSource(url);
  setConnection("connecting");
  source.onopen = () => {
    retryMs = 1000;
    setConnection("live");
  };
  source.onerror = () => {
    // A network error: the browser reconnects by itself (sending Last-Event-ID). An HTTP error
    // closes the source for good: reconnect here, with the cursor in the query.
    if (source.readyState === EventSource.CLOSED) reconnectLater("offline");
    else setConnection("reconnecting");
  };
  for (const kind of ["snapshot", "signal", "score", "advice", "report", "cycle", "reset", "shutdown"]) {
    source.addEventListener(kind, (e) => handle(kind, e));
  }
}

function reconnectLater(why) {
  if (source) source.close();
  setConnection("offline", why);
  clearTimeout(retryTimer);
  retryTimer = setTimeout(connect, retryMs);
  retryMs = Math.min(retryMs * 2, 15000);
}

let connection = { state: "connecting", why: "" };

function setConnection(s, why) {
  connection = { state: s, why: why || "" };
  drawConnection();
}

function drawConnection() {
  const node = $("conn");
  node.dataset.state = connection.state;
  const label = { live: "live", connecting: "connecting", reconnecting: "reconnecting", offline: "offline" };
  let text = label[connection.state] || connection.state;
  if (connection.why && connection.state !== "live") text += ` · ${connection.why}`;
  if (connection.state === "live" && state.lastEventAt) text += ` · last event ${age(new Date(state.lastEventAt).toISOString(), Date.now())} ago`;
  $("conn-text").textContent = text;
}

// Cycles, report, state -------------------------------------------------------------------------

function drawCycles(fresh) {
  const strip = $("strip");
  strip.textContent = "";
  const shown = state.cycles.slice(0, MAX_CYCLES).reverse();
  const longest = Math.max(1, ...shown.map((c) => Number(c.duration_ms) || 0));
  for (const c of shown) {
    const bar = el("div", "c");
    bar.dataset.status = c.status || "unknown";
    const d = Number(c.duration_ms) || 0;
    bar.style.height = `${Math.max(8, Math.round((Math.sqrt(d) / Math.sqrt(longest)) * 100))}%`;
    bar.title = `${c.status}${c.skip_reason ? ` (${c.skip_reason})` : ""} · ${millis(d)} · ${clock(c.started_at)} · ${c.signals ?? 0} signal(s) · ${c.cycle_id}`;
    if (fresh && c.cycle_id === fresh) bar.classList.add("fresh");
    strip.appendChild(bar);
  }
  const counts = {};
  for (const c of shown) counts[c.status] = (counts[c.status] || 0) + 1;
  $("strip-note").textContent = shown.length
    ? `last ${shown.length}: ${Object.entries(counts).map(([k, v]) => `${v} ${k}`).join(", ")}`
    : "none yet";
  drawLast();
}

function drawLast() {
  const c = state.cycles[0];
  const tile = $("tile-last");
  if (!c) {
    $("last").textContent = "—";
    $("last-detail").textContent = "no cycle recorded yet";
    tile.dataset.level = "";
    return;
  }
  $("last").textContent = c.status === "skipped" ? `skipped · ${c.skip_reason}` : c.status;
  const n = c.signals ?? 0;
  $("last-detail").textContent = `${millis(c.duration_ms)} · ${n} signal${n === 1 ? "" : "s"} · ${age(c.started_at, Date.now())} ago`;
  tile.dataset.level = { completed: "good", partial: "warn", failed: "bad" }[c.status] || "";
}

function drawReport() {
  const r = state.report;
  const node = $("report");
  node.textContent = "";
  if (!r || !r.summary) {
    node.textContent = "No report yet.";
  } else {
    // A little of markdown, as text: headings, list items, tables, paragraphs.
    let table = null;
    for (const line of String(r.summary).split("\n")) {
      const t = line.trim();
      if (t.startsWith("|")) {
        if (/^\|[\s:|-]+\|$/.test(t)) continue; // the header's underline
        const cells = t.replace(/^\||\|$/g, "").split("|").map((c) => c.trim().replace(/\*\*/g, ""));
        const head = !table;
        if (head) table = node.appendChild(el("table", "md"));
        const tr = table.appendChild(el("tr"));
        for (const c of cells) tr.appendChild(el(head ? "th" : "td", /^[-+]?[\d.,]+%?$/.test(c) ? "num" : null, c));
        continue;
      }
      table = null;
      if (!t) node.appendChild(el("div", "gap"));
      else if (t.startsWith("#")) node.appendChild(el("div", "h", t.replace(/^#+\s*/, "")));
      else if (/^[-*] /.test(t)) node.appendChild(el("div", "li", t.slice(2).replace(/\*\*/g, "")));
      else node.appendChild(el("div", "p", t.replace(/\*\*/g, "")));
    }
  }
  $("report-meta").textContent = r ? `${r.id || ""} · ${age(r.generated_at, Date.now())} ago` : "";
}

function level(tile, value) {
  $(tile).dataset.level = value;
}

function drawStatus() {
  const doc = state.status;
  if (!doc) return;
  const h = doc.health || {};
  const names = { 0: "healthy", 1: "degraded", 3: "unhealthy" };
  $("health").textContent = names[h.code] || "—";
  $("health-detail").textContent = (h.problems || []).join(" · ") || "no problems";
  $("health-detail").title = (h.problems || []).join("\n");
  level("tile-health", { 0: "good", 1: "warn", 3: "bad" }[h.code] || "");

  const b = doc.breaker || {};
  $("breaker").textContent = (b.state || "—").replace("_", "-");
  $("breaker-detail").textContent = `${b.failure_count ?? 0} failure(s)${b.next_probe_at ? ` · probe ${clock(new Date(b.next_probe_at * 1000).toISOString())}` : ""}`;
  level("tile-breaker", { closed: "good", half_open: "warn", open: "bad" }[b.state] || "");

  const k = doc.kill_switch || {};
  $("kill").textContent = k.on ? "ON" : "off";
  $("kill-detail").textContent = k.on ? `${k.reason || ""}${k.by ? ` · ${k.by}` : ""}` : "cycles run";
  level("tile-kill", k.on ? "bad" : "good");

  const s = doc.spend || {};
  const usd = Number(s.usd || 0);
  $("budget").textContent = `$${usd.toFixed(2)}${s.budget_usd ? ` / $${Number(s.budget_usd).toFixed(2)}` : ""}`;
  $("budget-detail").textContent = `${s.calls || 0} call(s)${s.budget_usd ? ` · ${Math.round((usd / s.budget_usd) * 100)}% used` : " · no daily budget"}`;
  level("tile-budget", s.budget_usd && usd >= s.budget_usd ? "bad" : s.budget_usd && usd >= 0.8 * s.budget_usd ? "warn" : "");

  $("instance").textContent = doc.instances && doc.instances.length ? `${doc.instances.length} live instance(s)` : "";
}

async function refreshStatus() {
  clearTimeout(statusTimer);
  statusTimer = setTimeout(refreshStatus, STATUS_EVERY_MS);
  try {
    const response = await fetch("/api/status", { cache: "no-store" });
    if (!response.ok) throw new Error((await response.json()).error || response.statusText);
    state.status = await response.json();
    drawStatus();
  } catch (err) {
    $("health").textContent = "unknown";
    $("health-detail").textContent = String(err.message || err);
    level("tile-health", "bad");
  }
}

function refreshStatusSoon() {
  clearTimeout(statusTimer);
  statusTimer = setTimeout(refreshStatus, 300);
}

// The scorecard ---------------------------------------------------------------------------------

function percent(x) {
  return x === null || x === undefined ? "—" : `${Math.round(Number(x) * 100)}%`;
}

function signedPercent(x) {
  if (x === null || x === undefined) return "—";
  const v = Number(x) * 100;
  return `${v >= 0 ? "+" : ""}${v.toFixed(2)}%`;
}

function drawScorecard() {
  const doc = state.scorecard;
  if (!doc) return;
  const horizons = [...new Set([...(doc.horizons_minutes || []), ...doc.summary.map((s) => s.horizon_minutes)])].sort((a, b) => a - b);
  const head = $("scorecard-head");
  head.textContent = "";
  head.appendChild(el("th", "sym", "symbol"));
  for (const h of horizons) head.appendChild(el("th", "num", `${h} min`));

  // One row per symbol and model; one cell per horizon: the hit rate, and whether following the
  // signals beat holding the symbol over the same minutes (its colour).
  const byRow = new Map();
  for (const s of doc.summary) {
    const key = `${s.symbol}\u0000${s.model}`;
    if (!byRow.has(key)) byRow.set(key, { symbol: s.symbol, model: s.model, cells: new Map() });
    byRow.get(key).cells.set(s.horizon_minutes, s);
  }
  const models = new Set(doc.summary.map((s) => s.model));
  const body = $("scorecard-rows");
  body.textContent = "";
  for (const r of [...byRow.values()].sort((a, b) => (a.symbol + a.model).localeCompare(b.symbol + b.model))) {
    const tr = el("tr");
    tr.dataset.symbol = r.symbol;
    tr.dataset.model = r.model;
    const sym = el("td", "sym", r.symbol);
    if (models.size > 1) sym.appendChild(el("small", null, r.model));
    tr.appendChild(sym);
    for (const h of horizons) {
      const s = r.cells.get(h);
      const td = el("td", "hit");
      td.dataset.horizon = String(h);
      if (!s || !s.count) {
        setText(td, "—");
      } else {
        td.textContent = percent(s.hit_rate);
        td.appendChild(el("small", null, String(s.count)));
        td.dataset.count = String(s.count);
        td.dataset.beats = String(s.beats_buy_and_hold);
        td.title = `${s.count} scored · mean ${signedPercent(s.mean_return)} vs buy-and-hold ${signedPercent(s.buy_and_hold_return)} · Brier ${s.brier === null ? "—" : Number(s.brier).toFixed(3)}`;
      }
      tr.appendChild(td);
    }
    body.appendChild(tr);
  }
  $("scorecard-empty").hidden = byRow.size > 0;
  const days = doc.days ? `${doc.days} day${doc.days === 1 ? "" : "s"}` : "all";
  $("scorecard-meta").textContent = `${days} · fee ${doc.fee_bps} bps · ${doc.source}`;
  drawCalibration(doc.calibration || []);
}

function drawCalibration(deciles) {
  const svg = $("calibration");
  svg.textContent = "";
  $("calibration-box").hidden = deciles.length === 0;
  if (!deciles.length) return;
  const node = (tag, attrs) => {
    const n = document.createElementNS(svg.namespaceURI, tag); // the SVG namespace
    for (const [k, v] of Object.entries(attrs)) n.setAttribute(k, String(v));
    svg.appendChild(n);
    return n;
  };
  // x: confidence 0..1 across 200 units; y: hit rate 0..1 over 90 units, 0 at the bottom (y=95).
  node("line", { class: "axis", x1: 0, y1: 95, x2: 200, y2: 95 });
  const byDecile = new Map(deciles.map((d) => [d.decile, d]));
  for (let d = 0; d < 10; d += 1) {
    const c = byDecile.get(d);
    const rate = c && c.hit_rate !== null ? Number(c.hit_rate) : 0;
    const height = c ? Math.max(1.5, rate * 90) : 1.5;
    const bar = node("rect", { class: c ? "bar" : "bar empty-bar", x: d * 20 + 2, y: 95 - height, width: 16, height });
    bar.dataset.decile = String(d);
    if (c) {
      bar.dataset.count = String(c.count);
      const title = document.createElementNS(svg.namespaceURI, "title");
      title.textContent = `confidence ${c.confidence_from.toFixed(1)}–${c.confidence_to.toFixed(1)}: ${c.hits} of ${c.count} hit (${percent(c.hit_rate)})`;
      bar.appendChild(title);
    }
  }
  // Where a calibrated model's bars would end: hit rate equal to confidence.
  node("polyline", { class: "ideal", points: Array.from({ length: 10 }, (_, d) => `${d * 20 + 10},${95 - (d + 0.5) * 9}`).join(" ") });
  const n = deciles.reduce((sum, d) => sum + d.count, 0);
  $("calibration-note").textContent = `(${n} scored; dashes: hit rate = confidence)`;
}

async function refreshScorecard() {
  clearTimeout(scorecardTimer);
  scorecardTimer = setTimeout(refreshScorecard, SCORECARD_EVERY_MS);
  try {
    const response = await fetch("/api/scorecard?since=7d", { cache: "no-store" });
    if (!response.ok) throw new Error((await response.json()).error || response.statusText);
    state.scorecard = await response.json();
    drawScorecard();
  } catch (err) {
    $("scorecard-meta").textContent = `unavailable: ${String(err.message || err)}`;
  }
}

function refreshScorecardSoon() {
  clearTimeout(scorecardTimer);
  scorecardTimer = setTimeout(refreshScorecard, 500);
}

// Controls --------------------------------------------------------------------------------------

async function write(path, body) {
  const token = $("token").value.trim();
  sessionStorage.setItem("runner-token", token);
  const out = $("control-result");
  out.textContent = "…";
  try {
    const response = await fetch(path, {
      method: "POST",
      headers: { "Content-Type": "application/json", Authorization: `Bearer ${token}` },
      body: JSON.stringify(body),
    });
    const doc = await response.json();
    if (!response.ok) {
      out.textContent = `${response.status}: ${doc.error}`;
      return;
    }
    if (path === "/api/cycles") out.textContent = `cycle ${doc.status} in ${millis(doc.duration_ms)}`;
    else out.textContent = `kill switch ${doc.kill_switch.on ? "ON" : "off"}`;
    refreshStatusSoon();
  } catch (err) {
    out.textContent = String(err.message || err);
  }
}

function setupControls() {
  $("token").value = sessionStorage.getItem("runner-token") || "";
  $("run-cycle").addEventListener("click", () => write("/api/cycles", {}));
  $("kill-on").addEventListener("click", () => write("/api/kill-switch", { on: true, reason: $("reason").value }));
  $("kill-off").addEventListener("click", () => write("/api/kill-switch", { on: false }));
}

// Start -----------------------------------------------------------------------------------------

function tick() {
  const now = Date.now();
  for (const r of rows.values()) drawAge(r, now);
  drawLast();
  drawSummary(now);
  drawConnection();
  if (state.report) $("report-meta").textContent = `${state.report.id || ""} · ${age(state.report.generated_at, now)} ago`;
}

setupControls();
connect();
refreshStatus();
refreshScorecard();
setInterval(tick, 1000);
