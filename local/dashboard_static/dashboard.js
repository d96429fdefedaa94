// lighthpc mission control: plain JS, no build step, no external asset. Every call goes to
// /api/... on the server that served this page (local/dashboard.py), which forwards it to the
// API (signed there for a deployed stage: no credential is ever in this page).
"use strict";

const POLL_MS = Number(new URLSearchParams(location.search).get("poll")) || 2000;
const MAP_CHUNK = 10000; // the API's MAP_RANGE_LIMIT: indexes one map call covers
const MAP_CALLS_PER_REFRESH = 3; // a live refresh re-reads at most this many chunks
const TIMELINE_WINDOW = 1000; // the API's TIMELINE_RANGE_LIMIT: a small mission's whole timeline
const TIMELINE_LATEST = 300; // a bigger mission's: its latest claims (each attempt ~230 bytes)
const TERMINAL = new Set(["SUCCEEDED", "FAILED", "CANCELLED"]);
// Map codes (the API's STATUS_CODES) to colours and names; index in CODES is the byte stored.
const CODES = ["P", "W", "R", "S", "F", "C"];
const CODE_NAMES = { P: "pending", W: "retry waiting", R: "running", S: "succeeded", F: "failed", C: "cancelled" };
const CODE_COLOURS = { P: [208, 215, 222], W: [154, 103, 0], R: [9, 105, 218], S: [26, 127, 55], F: [207, 34, 46], C: [110, 119, 129] };
const $ = (id) => document.getElementById(id);

const state = { route: null, timer: null, mission: null, map: null, zoom: null, stats: { calls: 0, bytes: 0 } };

// ---- talking to the API ---------------------------------------------------------------

class ApiError extends Error {
  constructor(status, body) { super((body && body.error) || `HTTP ${status}`); this.status = status; this.body = body; }
}

async function call(path, method = "GET") {
  let response;
  try {
    response = await fetch("/api" + path, { method, headers: { Accept: "application/json" }, cache: "no-store" });
  } catch (e) {
    throw new ApiError(0, { error: "the dashboard server does not answer: is `lighthpc up` (or `lighthpc dashboard`) still running?" });
  }
  const text = await response.text();
  state.stats.calls += 1;
  state.stats.bytes += text.length;
  let body = null;
  try { body = text ? JSON.parse(text) : null; } catch (e) { body = { error: text }; }
  if (!response.ok) throw new ApiError(response.status, body);
  return body;
}

function offline(error) {
  const banner = $("offline");
  if (!error) { banner.hidden = true; return; }
  const gone = error.status === 0 || error.status === 502;
  banner.textContent = gone
    ? `Stack unreachable: ${error.message}. The page keeps trying.`
    : `The API answered ${error.status}: ${error.message}`;
  banner.dataset.kind = gone ? "unreachable" : "error";
  banner.hidden = false;
  $("live").textContent = gone ? "offline" : "error";
}

// ---- formatting -------------------------------------------------------------------------

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    // Styles through the CSSOM: the page's Content-Security-Policy refuses style attributes.
    if (k === "class") node.className = v; else if (k === "text") node.textContent = v;
    else if (k === "style") node.style.cssText = v; else node.setAttribute(k, v);
  }
  for (const child of children) node.append(child);
  return node;
}
const num = (n) => (n == null ? "–" : Number(n).toLocaleString("en-US"));
const usd = (n) => (n == null ? "–" : "$" + Number(n).toFixed(n < 1 ? 4 : 2));
function seconds(s) {
  if (s == null || !isFinite(s)) return "–";
  s = Math.max(0, Math.round(s));
  if (s < 90) return `${s} s`;
  if (s < 5400) return `${Math.floor(s / 60)} min ${s % 60} s`;
  return `${Math.floor(s / 3600)} h ${Math.floor((s % 3600) / 60)} min`;
}
const time = (iso) => (iso ? Date.parse(iso) / 1000 : null);

function progressBar(counts) {
  const total = counts.total || 0;
  const bar = el("div", { class: "progress", role: "progressbar", "aria-valuemin": "0", "aria-valuemax": String(total) });
  const done = (counts.SUCCEEDED || 0) + (counts.FAILED || 0);
  bar.setAttribute("aria-valuenow", String(done));
  bar.setAttribute("aria-label", `${done} of ${total} transactions done`);
  if (!total) return bar;
  for (const [code, key] of [["S", "SUCCEEDED"], ["F", "FAILED"], ["C", "CANCELLED"], ["R", "RUNNING"]]) {
    const n = counts[key] || 0;
    if (n) bar.append(el("span", { class: code, style: `width:${(100 * n) / total}%` }));
  }
  return bar;
}

function ageOrDuration(m, nowSeconds) {
  const began = time(m.running_at) || time(m.started_at) || time(m.created_at);
  const ended = time(m.finished_at);
  return ended ? `took ${seconds(ended - began)}` : `${seconds(nowSeconds - time(m.created_at))} old`;
}

// ---- routing ----------------------------------------------------------------------------

function route() {
  clearTimeout(state.timer);
  const match = location.hash.match(/^#\/m\/([A-Za-z0-9-]+)/);
  $("missions-page").hidden = !!match;
  $("mission-page").hidden = !match;
  if (match) {
    if (state.route !== match[1]) { state.mission = null; state.map = null; state.zoom = null; }
    state.route = match[1];
    refreshMission();
  } else {
    state.route = null;
    refreshMissions();
  }
}

function schedule(fn) { clearTimeout(state.timer); state.timer = setTimeout(fn, POLL_MS); }

function live(text) { $("live").textContent = text; }

// ---- the missions page ------------------------------------------------------------------

async function refreshMissions() {
  const status = $("status-filter").value;
  try {
    const body = await call("/overview" + (status ? `?status=${encodeURIComponent(status)}` : ""));
    offline(null);
    renderMissions(body);
    live(`live · updated ${new Date().toLocaleTimeString()}`);
  } catch (e) { offline(e); }
  if (state.route === null) schedule(refreshMissions);
}

function renderMissions(body) {
  const now = time(body.now) || Date.now() / 1000;
  const rows = body.missions.map((m) => {
    const c = m.transactions;
    const link = el("a", { href: `#/m/${m.mission_id}`, text: m.name || m.mission_id });
    return el("tr", { "data-mission": m.mission_id },
      el("td", {}, link, el("div", { class: "muted", text: m.mission_id })),
      el("td", { text: m.submitted_by || "" }),
      el("td", {}, el("span", { class: `badge ${m.status}`, text: m.status })),
      el("td", {}, progressBar(c)),
      el("td", { class: "num", "data-count": "SUCCEEDED", text: num(c.SUCCEEDED) }),
      el("td", { class: "num", "data-count": "FAILED", text: num(c.FAILED) }),
      el("td", { class: "num", "data-count": "RUNNING", text: num(c.RUNNING) }),
      el("td", { class: "num", "data-count": "PENDING", text: num(c.PENDING) }),
      el("td", { text: ageOrDuration(m, now) }),
      el("td", { class: "num", text: num(Math.round(m.instance_seconds)) }),
      el("td", { class: "num", text: usd(m.estimated_cost_usd) }));
  });
  $("missions").tBodies[0].replaceChildren(...rows);
  $("missions-empty").hidden = rows.length > 0;
}

// ---- a mission's page -------------------------------------------------------------------

async function refreshMission() {
  const id = state.route;
  try {
    const m = await call(`/missions/${id}/outcome`);
    if (state.route !== id) return;
    offline(null);
    trackRate(m);
    state.mission = m;
    renderMission(m);
    await refreshMap(m);
    await refreshTimeline(m);
    state.stats.refreshes = (state.stats.refreshes || 0) + 1;
    live(`live · updated ${new Date().toLocaleTimeString()}` + (TERMINAL.has(m.status) ? " · finished" : ""));
  } catch (e) {
    if (e.status === 404) { offline(null); $("mission-title").textContent = `no mission ${id}`; live("not found"); return; }
    offline(e);
  }
  if (state.route === id) schedule(refreshMission);
}

// Throughput from the counted outcomes between refreshes (a window of the last minute), so a
// mission that started slowly does not drag its ETA forever.
function trackRate(m) {
  const done = (m.transactions.SUCCEEDED || 0) + (m.transactions.FAILED || 0);
  const samples = (state.samples = state.samples && state.samplesFor === m.mission_id ? state.samples : []);
  state.samplesFor = m.mission_id;
  const now = time(m.now) || Date.now() / 1000;
  samples.push([now, done]);
  while (samples.length > 2 && now - samples[0][0] > 60) samples.shift();
}

function renderMission(m) {
  const c = m.transactions;
  $("mission-title").textContent = m.name || m.mission_id;
  $("m-status").textContent = m.status;
  $("m-status").className = `badge ${m.status}`;
  $("m-meta").textContent = `${m.mission_id} · owner ${m.submitted_by || "?"} · created ${m.created_at}`;
  $("m-error").hidden = !m.error;
  $("m-error").textContent = m.error || "";
  $("cancel").hidden = TERMINAL.has(m.status);
  $("m-progress").replaceWith(Object.assign(progressBar(c), { id: "m-progress" }));
  facts($("m-counts"), [
    ["total", num(c.total)], ["succeeded", num(c.SUCCEEDED)], ["failed", num(c.FAILED)],
    ["running", num(c.RUNNING)], ["pending", num(c.PENDING)], ["cancelled", num(c.CANCELLED)],
  ], "count");
  const now = time(m.now) || Date.now() / 1000;
  const began = time(m.running_at) || time(m.started_at);
  const ended = time(m.finished_at);
  const done = (c.SUCCEEDED || 0) + (c.FAILED || 0);
  const samples = state.samples || [];
  let rate = null;
  if (samples.length >= 2 && samples[samples.length - 1][0] > samples[0][0]) {
    const [t0, d0] = samples[0], [t1, d1] = samples[samples.length - 1];
    rate = (d1 - d0) / (t1 - t0);
  }
  if ((!rate || ended) && began) rate = done / Math.max(1, (ended || now) - began);
  const remaining = (c.total || 0) - done - (c.CANCELLED || 0);
  facts($("m-rate"), [
    ["throughput", rate == null ? "–" : `${rate.toFixed(2)} transactions/s`],
    ["elapsed", began ? seconds((ended || now) - began) : "not started"],
    ["ETA", TERMINAL.has(m.status) ? "finished" : rate > 0 ? seconds(remaining / rate) : "–"],
  ]);
  facts($("m-cost"), [
    ["instances", num(m.instances)],
    ["instance-seconds", num(Math.round(m.instance_seconds))],
    ["estimated cost", usd(m.estimated_cost_usd)],
  ]);
  facts($("m-result"), [
    ["result", m.result || "not yet"],
    ["receipt (manifest)", m.manifest ? m.manifest.uri : "not yet"],
    ["manifest sha256", m.manifest && m.manifest.sha256 ? m.manifest.sha256 : "–"],
    ["email", m.email ? `sent ${m.email.sent_at} to ${m.email.to || "the topic"}: “${m.email.subject}”` : "not sent yet"],
    ["verify with", m.result ? `lighthpc verify ${m.mission_id}` : "–"],
  ]);
}

function facts(dl, pairs, dataName) {
  dl.replaceChildren(...pairs.flatMap(([k, v]) => {
    const dd = el("dd", { text: v });
    if (dataName) dd.dataset[dataName] = k;
    return [el("dt", { text: k }), dd];
  }));
}

// ---- the transaction map ---------------------------------------------------------------
// The page keeps one byte per transaction; a chunk whose every transaction has a counted
// outcome never changes, so a live refresh reads only chunks still moving (at most
// MAP_CALLS_PER_REFRESH of them), and the chunks beyond the claim cursor are PENDING unread.

async function refreshMap(m) {
  const total = m.transactions.total || 0;
  if (!state.map || state.map.total !== total) {
    state.map = { total, codes: new Uint8Array(total), final: new Uint8Array(Math.ceil(total / MAP_CHUNK)), failures: new Map(), cursor: 0, terminalSeen: false, next: 0 };
  }
  const map = state.map;
  const chunks = map.final.length;
  const terminal = TERMINAL.has(m.status);
  const wanted = [];
  for (let k = 0; k < chunks; k++) {
    const chunk = (map.next + k) % chunks;
    if (map.final[chunk]) continue;
    // Beyond the claim cursor nothing was ever claimed: PENDING, no call needed (until the end).
    if (!terminal && chunk * MAP_CHUNK >= Math.max(map.cursor, 1) && map.loaded) continue;
    wanted.push(chunk);
  }
  const first = !map.loaded;
  const limit = first ? wanted.length : MAP_CALLS_PER_REFRESH;
  for (const chunk of wanted.slice(0, limit)) {
    const from = chunk * MAP_CHUNK, to = Math.min(total, from + MAP_CHUNK) - 1;
    const body = await call(`/missions/${m.mission_id}/map?first=${from}&last=${to}`);
    map.cursor = body.claim_cursor;
    let settled = true;
    for (let i = 0; i < body.statuses.length; i++) {
      const code = CODES.indexOf(body.statuses[i]);
      map.codes[from + i] = code;
      if (code !== 3 && code !== 4) settled = false;
    }
    for (const [i, f] of map.failures) if (i >= from && i <= to) map.failures.delete(i);
    for (const f of body.failures) map.failures.set(f.index, f);
    // A cancelled mission's statuses are final once read after its end.
    map.final[chunk] = settled || TERMINAL.has(body.status) ? 1 : 0;
    map.next = (chunk + 1) % chunks;
    if (first && chunk === wanted[0]) drawMap(); // the first render does not wait for the rest
  }
  if (!map.loaded) state.stats.mapLoadedMs = performance.now();
  map.loaded = true;
  drawMap();
  renderFailures();
}

function mapRange() {
  const total = state.map ? state.map.total : 0;
  if (!state.zoom) return [0, Math.max(0, total - 1)];
  return [Math.min(state.zoom[0], total - 1), Math.min(state.zoom[1], total - 1)];
}

function drawMap() {
  const canvas = $("map");
  const map = state.map;
  const width = Math.max(200, Math.floor(canvas.parentElement.clientWidth - 2));
  const [lo, hi] = mapRange();
  const n = map && map.total ? hi - lo + 1 : 0;
  // Square cells as large as fit in at most 320 px of height, one pixel at the least.
  const cell = n ? Math.max(1, Math.min(24, Math.floor(Math.sqrt((width * 320) / n)))) : 1;
  const columns = Math.max(1, Math.floor(width / cell));
  const rows = Math.max(1, Math.ceil(n / columns));
  canvas.width = width;
  canvas.height = Math.max(cell, rows * cell);
  canvas.style.height = canvas.height + "px";
  const context = canvas.getContext("2d");
  const image = context.createImageData(canvas.width, canvas.height);
  const pixels = image.data;
  const gap = cell >= 4 ? 1 : 0;
  const counts = { P: 0, W: 0, R: 0, S: 0, F: 0, C: 0 };
  for (let i = 0; i < n; i++) {
    const code = CODES[map.codes[lo + i]];
    counts[code] += 1;
    const [r, g, b] = CODE_COLOURS[code];
    const x0 = (i % columns) * cell, y0 = Math.floor(i / columns) * cell;
    for (let y = y0; y < y0 + cell - gap; y++) {
      let p = (y * canvas.width + x0) * 4;
      for (let x = 0; x < cell - gap; x++, p += 4) { pixels[p] = r; pixels[p + 1] = g; pixels[p + 2] = b; pixels[p + 3] = 255; }
    }
  }
  context.putImageData(image, 0, 0);
  if (n && !state.stats.firstMapMs) state.stats.firstMapMs = performance.now(); // measured, in README
  Object.assign(canvas.dataset, { cells: String(n), first: String(lo), last: String(hi), cell: String(cell), columns: String(columns), counts: JSON.stringify(counts) });
  canvas.setAttribute("aria-label", `transaction map of ${num(n)} transactions (${lo} to ${hi}): ` +
    Object.entries(counts).filter(([, v]) => v).map(([k, v]) => `${num(v)} ${CODE_NAMES[k]}`).join(", "));
}

function mapIndexAt(event) {
  const canvas = $("map");
  const { cell, columns } = canvas.dataset;
  const rect = canvas.getBoundingClientRect();
  const x = Math.floor((event.clientX - rect.left) / Number(cell));
  const y = Math.floor((event.clientY - rect.top) / Number(cell));
  const i = y * Number(columns) + x;
  const [lo, hi] = mapRange();
  return x < Number(columns) && lo + i <= hi ? lo + i : null;
}

function renderFailures() {
  const failures = [...state.map.failures.values()].sort((a, b) => a.index - b.index).slice(0, 50); // the first 50: the map keeps up to 100 a chunk
  $("failures").tBodies[0].replaceChildren(...failures.map((f) => el("tr", { "data-index": String(f.index) },
    el("td", { class: "num", text: String(f.index) }), el("td", { class: "num", text: String(f.attempts) }),
    el("td", { class: "num", text: f.exit_code == null ? "–" : String(f.exit_code) }),
    el("td", { class: "err", text: f.error_tail || "" }))));
  $("failures-none").hidden = failures.length > 0;
}

// ---- the worker timeline ----------------------------------------------------------------
// The attempts of the latest TIMELINE_WINDOW claims (the whole mission when it is that small),
// one row per instance, plus the marks of attempts that ended otherwise (a Spot hand-back, a
// lost worker) and each instance's state as EC2 tells it.

async function refreshTimeline(m) {
  const total = m.transactions.total || 0;
  const cursor = state.map ? state.map.cursor : total;
  const small = total <= TIMELINE_WINDOW;
  // A big mission's first page is read for its instances only (limit 1).
  const first = await call(`/missions/${m.mission_id}/timeline?after=-1&limit=${small ? TIMELINE_WINDOW : 1}`);
  let body = first;
  if (!small) {
    const after = Math.max(-1, Math.min(total, cursor) - TIMELINE_LATEST - 1);
    body = { ...(await call(`/missions/${m.mission_id}/timeline?after=${after}&limit=${TIMELINE_LATEST}`)), instances: first.instances };
    $("timeline-note").textContent = `Attempts of the latest ${num(TIMELINE_LATEST)} transactions claimed (indexes ${after + 1} to ${after + TIMELINE_LATEST}).`;
  } else {
    $("timeline-note").textContent = "A bar per transaction's latest attempt; earlier attempts show by the mark they left.";
  }
  renderTimeline(m, body);
}

function renderTimeline(m, body) {
  const rows = new Map();
  for (const i of body.instances || []) rows.set(i.instance_id, { instance: i, attempts: [], marks: [] });
  for (const a of body.attempts) {
    if (!rows.has(a.instance)) rows.set(a.instance, { instance: { instance_id: a.instance, state: null }, attempts: [], marks: [] });
    rows.get(a.instance).attempts.push(a);
  }
  for (const mark of body.marks) {
    const key = mark.instance || "(unknown instance)";
    if (!rows.has(key)) rows.set(key, { instance: { instance_id: key, state: null }, attempts: [], marks: [] });
    rows.get(key).marks.push(mark);
  }
  const now = time(body.now) || Date.now() / 1000;
  const starts = body.attempts.map((a) => time(a.started_at));
  const t0 = Math.min(time(m.running_at) || Infinity, ...starts, ...[...rows.values()].map((r) => time(r.instance.launched_at) || Infinity));
  const t1 = Math.max(time(m.finished_at) || now, ...body.attempts.map((a) => time(a.finished_at) || now));
  const span = Math.max(1, t1 - (isFinite(t0) ? t0 : now - 1));
  const origin = isFinite(t0) ? t0 : now - 1;
  const out = [];
  for (const [id, row] of rows) {
    const label = el("div", { class: "tl-label", title: id }, id);
    const st = row.instance.state;
    const lost = row.marks.some((k) => k.kind === "lost");
    const spot = row.marks.some((k) => k.kind === "spot");
    if (lost) label.append(el("span", { class: "mark lost", title: "lost without notice: its lease expired", text: "lost" }));
    if (spot) label.append(el("span", { class: "mark spot", title: "Spot interruption: its work was handed back", text: "spot" }));
    if (st && st !== "running" && !lost) label.append(el("span", { class: "mark ended", title: row.instance.state_reason || st, text: st }));
    const track = el("div", { class: "tl-track" });
    for (const a of row.attempts) {
      const s = time(a.started_at), e = time(a.finished_at) || (a.status === "RUNNING" ? now : s + (a.run_seconds || 0.5));
      const bar = el("div", { class: `tl-bar ${a.status}`, title: `#${a.index} ${a.status} · attempt ${a.attempts}` + (a.exit_code != null ? ` · exit ${a.exit_code}` : "") });
      bar.style.left = `${(100 * (s - origin)) / span}%`;
      bar.style.width = `${Math.max(0.3, (100 * (e - s)) / span)}%`;
      track.append(bar);
    }
    out.push(el("div", { class: "tl-row", "data-instance": id, "data-attempts": String(row.attempts.length) }, label, track));
  }
  if (!out.length) out.push(el("p", { class: "muted", text: "No worker has started yet." }));
  $("timeline").replaceChildren(...out);
}

// ---- cancel, with its confirmation ------------------------------------------------------

async function confirmCancel() {
  const dialog = $("confirm-cancel");
  $("confirm-title").textContent = `Cancel ${state.mission ? state.mission.name : "this mission"}?`;
  dialog.returnValue = "";
  dialog.showModal();
  $("confirm-keep").focus(); // the safe choice first: Enter or Escape keeps it running
  dialog.addEventListener("close", async () => {
    if (dialog.returnValue !== "cancel") { $("cancel").focus(); return; }
    try {
      await call(`/missions/${state.route}`, "DELETE");
      live("cancel requested");
    } catch (e) { offline(e); }
    refreshMission();
  }, { once: true });
}

// ---- wiring -----------------------------------------------------------------------------

function legend(target, entries) {
  target.replaceChildren(...entries.map(([colour, name]) => el("span", {}, el("i", { style: `background:${colour}` }), name)));
}

window.addEventListener("hashchange", route);
window.addEventListener("resize", () => { if (state.map) drawMap(); });
document.addEventListener("DOMContentLoaded", () => {
  legend($("map-legend"), CODES.map((c) => [`rgb(${CODE_COLOURS[c].join(",")})`, CODE_NAMES[c]]));
  legend($("timeline-legend"), [["var(--succeeded)", "succeeded"], ["var(--failed)", "failed"], ["var(--running)", "running"], ["var(--cancelled)", "cancelled"], ["var(--waiting)", "handed back / retry"]]);
  $("status-filter").addEventListener("change", refreshMissions);
  $("cancel").addEventListener("click", confirmCancel);
  $("zoom").addEventListener("submit", (event) => {
    event.preventDefault();
    const a = Number($("zoom-first").value), b = Number($("zoom-last").value);
    if (Number.isFinite(a) && Number.isFinite(b) && b >= a && $("zoom-first").value !== "") state.zoom = [a, b];
    drawMap();
  });
  $("zoom-reset").addEventListener("click", () => { state.zoom = null; drawMap(); });
  $("map").addEventListener("mousemove", (event) => {
    const i = mapIndexAt(event);
    $("map-hover").textContent = i == null ? "" : `#${i}: ${CODE_NAMES[CODES[state.map.codes[i]]]}`;
  });
  $("map").addEventListener("click", (event) => { // click: zoom to the 1,000 around it
    const i = mapIndexAt(event);
    if (i == null) return;
    state.zoom = [Math.max(0, i - 500), Math.min(state.map.total - 1, i + 499)];
    $("zoom-first").value = state.zoom[0]; $("zoom-last").value = state.zoom[1];
    drawMap();
  });
  route();
});
window.lighthpcDashboard = state; // for the tests and the measurements: calls and bytes so far
