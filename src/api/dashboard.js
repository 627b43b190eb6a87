// The dashboard's script (src/api/dashboard.html), served as /dashboard.js: the content
// security policy allows no inline script.
"use strict";

// ---- small helpers -------------------------------------------------------
const $ = (sel) => document.querySelector(sel);
const num = (v) => { const n = Number(v); return Number.isFinite(n) ? n : 0; };
const int = (v) => String(Math.round(num(v)));
const pad = (n) => String(n).padStart(2, "0");
const clock = (d) => `${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}`;

// Builds an element; text always goes through textContent, so API data is never parsed as HTML.
function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === "text") node.textContent = v;
    else if (k === "class") node.className = v;
    else node.setAttribute(k, v);
  }
  for (const c of children) node.append(c);
  return node;
}

// fetch with a timeout; resolves to {ok, status, body}, throws only on network failure.
async function request(path, opts = {}) {
  const ctl = new AbortController();
  const timer = setTimeout(() => ctl.abort(), 8000);
  try {
    const res = await fetch(path, {
      ...opts, signal: ctl.signal, cache: "no-store",
      headers: { Accept: "application/json, application/problem+json", ...(opts.headers || {}) },
    });
    let body = null;
    try { body = await res.json(); } catch (_) { /* empty or non-JSON body */ }
    return { ok: res.ok, status: res.status, body };
  } finally {
    clearTimeout(timer);
  }
}

// ---- stat cards ------------------------------------------------------------
// Counters are the cluster's (every live instance's, published through Redis), whichever
// instance serves the page; an instance too old to publish them shows its own.
const CARDS = [
  ["synced", "synced (all instances)", (m) => m.cluster?.totals?.synced ?? m.events?.synced],
  ["received", "received (all instances)", (m) => m.cluster?.totals?.received ?? m.events?.received],
  ["live-actors", "live actors", (m) => m.cluster?.totals?.actors_live ?? m.actors?.live],
  ["backlog", "stream backlog", (m) => m.backlog?.stream_length],
  ["outbox", "outbox rows", (m) => m.backlog?.outbox_rows],
  ["pending", "orders pending", (m) => m.orders?.pending],
  ["retrying", "orders retrying", (m) => m.orders?.retrying],
  ["dead", "orders dead", (m) => m.orders?.dead],
  ["lag-p95", "lag p95 (ms)", (m) => m.lag_ms?.p95],
  ["in-flight", "events in flight", (m) => m.cluster?.totals?.in_flight ?? m.events?.in_flight],
];
for (const [id, label] of CARDS) {
  $("#cards").append(el("div", { class: "card", id: `card-${id}` },
    el("div", { class: "label", text: label }),
    el("div", { class: "num", id: `stat-${id}`, text: "—" })));
}

function renderCards(m) {
  for (const [id, , pick] of CARDS) $(`#stat-${id}`).textContent = int(pick(m) ?? 0);
  $("#card-dead").classList.toggle("danger", num(m.orders?.dead) > 0);
  $("#card-retrying").classList.toggle("warn", num(m.orders?.retrying) > 0);
}

// ---- details ---------------------------------------------------------------
// Fills a <dl> from [label, value] pairs; a null entry draws a separator.
function fillKv(dl, pairs) {
  dl.replaceChildren(...pairs.flatMap((p) => p === null
    ? [el("div", { class: "sep" })]
    : [el("dt", { text: p[0] }), el("dd", { text: String(p[1]) })]));
}

function uptime(secs) {
  const s = Math.floor(num(secs)), d = Math.floor(s / 86400), h = Math.floor(s / 3600) % 24, m = Math.floor(s / 60) % 60;
  return d ? `${d}d ${h}h` : h ? `${h}h ${m}m` : `${m}m ${s % 60}s`;
}

function smallTable(headers, rows, emptyText) {
  if (!rows.length) return el("p", { class: "empty", text: emptyText });
  const head = el("tr", {}, ...headers.map((h, i) => el("th", { class: i ? "n" : "", text: h })));
  const body = rows.map((r) => el("tr", {}, ...r.map((c, i) => el("td", { class: i ? "n" : "", text: String(c) }))));
  return el("table", {}, el("thead", {}, head), el("tbody", {}, ...body));
}

// The outage banner: "External API down since 14:02:10, next probe in 3 s, 3,120 orders
// waiting". While it is down, calls wait and one probe at a time checks it (ARCHITECTURE.md).
function renderApiDown(api) {
  const banner = $("#api-down-banner");
  const down = api && (api.state === "down" || api.state === "probing");
  banner.hidden = !down;
  if (!down) return;
  const since = api.since ? new Date(api.since).toLocaleTimeString() : "just now";
  const probe = api.state === "probing" ? "a probe is under way"
    : api.next_probe_in_ms == null ? "probing soon" : `next probe in ${Math.ceil(num(api.next_probe_in_ms) / 1000)} s`;
  banner.replaceChildren(
    el("strong", { text: "External API down" }),
    el("span", { text: ` since ${since}, ${probe}, ${int(api.orders_waiting)} orders waiting. ` +
      "Calls wait without spending their retries, and go out in order once it answers again." }));
}

// No worker: changes have waited 30 s with no instance holding a shard, so nothing is synced
// (a deployment started with ROLE=api alone, or every worker down).
function renderNoWorker(workers) {
  const banner = $("#no-worker-banner");
  banner.hidden = !(workers && workers.missing);
  if (banner.hidden) return;
  const since = workers.unserved_since ? new Date(workers.unserved_since).toLocaleTimeString() : "a while";
  banner.replaceChildren(
    el("strong", { text: "No worker is live" }),
    el("span", { text: ` since ${since}: ${int(workers.changes_waiting)} ` +
      `${workers.changes_waiting === 1 ? "change waits" : "changes wait"} and nothing reaches ` +
      "the external API. Start an instance with ROLE=worker (or ROLE=all)." }));
}

function renderDetails(m) {
  const lag = m.lag_ms ?? {}, t = m.throttle ?? {}, ev = m.events ?? {}, a = m.actors ?? {};
  renderApiDown(m.external_api);
  renderNoWorker(m.workers);
  const paused = num(t.paused_for_ms) > 0 ? `${int(t.paused_for_ms)} ms` : "no";
  fillKv($("#details-throttle"), [
    ["lag p50 / p95 / p99", `${int(lag.p50)} / ${int(lag.p95)} / ${int(lag.p99)} ms`],
    ["lag samples", int(lag.samples)], null,
    ["rate limit (all instances)", `${int(t.rate_per_sec)} / s`], ["burst", int(t.burst)],
    ["max concurrent (this instance)", int(t.max_concurrent)],
    ["waiters", int(t.waiters)], ["backing off (Retry-After)", paused],
    ["syncing", m.sync === "paused" ? "paused by an operator" : "running"],
    ["external API", String(m.external_api?.state ?? "?")],
  ]);
  fillKv($("#details-events"), [
    ["skipped", int(ev.skipped)], ["purged", int(ev.purged)], ["retried", int(ev.retried)],
    ["parked", int(ev.parked)], ["failed", int(ev.failed)], ["in flight", int(ev.in_flight)], null,
    ["actors spawned / stopped", `${int(a.spawned)} / ${int(a.stopped)}`], ["actors restarted", int(a.restarted)],
    ["mailbox depth sum / max", `${int(a.mailbox?.depth_sum)} / ${int(a.mailbox?.depth_max)}`],
    ["uptime", uptime(m.uptime_secs)],
  ]);
  const calls = (Array.isArray(m.calls) ? m.calls : [])
    .map((c) => [String(c?.verb ?? "?"), String(c?.status ?? "?"), int(c?.count)])
    .sort((x, y) => x[0].localeCompare(y[0]) || x[1].localeCompare(y[1]));
  $("#details-calls").replaceChildren(smallTable(["verb", "status", "count"], calls, "No calls yet"));
  const shards = (Array.isArray(m.backlog?.shards) ? m.backlog.shards : [])
    .map((s) => [int(s?.shard), int(s?.length), int(s?.pending), String(s?.owner ?? "none")]);
  $("#details-shards").replaceChildren(
    smallTable(["shard", "length", "pending", "owner"], shards, "No shard data"),
    el("p", { class: "empty", text: `pending in stream: ${int(m.backlog?.pending)}` }));
  const self = m.instance?.id ?? null;
  const instances = (Array.isArray(m.cluster?.instances) ? m.cluster.instances : [])
    .map((i) => [
      String(i?.id ?? "?") + (i?.id === self ? " (this one)" : ""),
      String(i?.role ?? "?"),
      (Array.isArray(i?.shards) ? i.shards : []).map(int).join(" ") || "none",
      int(i?.synced),
      int(i?.failed),
      `${int(i?.heartbeat_expires_in_ms)} ms`,
    ]);
  $("#details-instances").replaceChildren(
    smallTable(["instance", "role", "shards", "synced", "failed", "heartbeat expires in"], instances, "No instance is live"));
}

// ---- chart: the server keeps the last 15 minutes (GET /metrics/history) ----
const WINDOW_MS = 15 * 60 * 1000;
let history = [];              // [{at_ms, synced_per_sec, lag_p95_ms}], oldest first

async function loadHistory() {
  try {
    const r = await request("/metrics/history", { headers: apiHeaders() });
    if (r.ok && Array.isArray(r.body?.points)) history = r.body.points;
  } catch (_) { /* the metrics loop reports an unreachable service */ }
}

// Rounds up to 1, 2 or 5 times a power of ten, so axis labels stay tidy.
function niceMax(v) {
  if (!(v > 0)) return 1;
  const p = Math.pow(10, Math.floor(Math.log10(v)));
  return [1, 2, 5, 10].map((k) => k * p).find((x) => x >= v);
}

function drawChart() {
  const canvas = $("#chart"), dpr = window.devicePixelRatio || 1;
  const w = canvas.clientWidth, h = canvas.clientHeight;
  if (!w || !h) return;
  canvas.width = Math.round(w * dpr); canvas.height = Math.round(h * dpr);
  const ctx = canvas.getContext("2d");
  if (!ctx) return;
  ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
  ctx.clearRect(0, 0, w, h);
  const L = 44, R = w - 48, T = 8, B = h - 22;
  const css = getComputedStyle(document.documentElement);
  const blue = css.getPropertyValue("--blue").trim(), violet = css.getPropertyValue("--violet").trim();
  const now = Date.now(), from = now - WINDOW_MS;
  const points = history.filter((p) => num(p?.at_ms) >= from)
    .map((p) => ({ at: num(p.at_ms), rate: num(p.synced_per_sec), lag: num(p.lag_p95_ms) }));
  const maxRate = niceMax(Math.max(0, ...points.map((p) => p.rate)));
  const maxLag = niceMax(Math.max(0, ...points.map((p) => p.lag)));
  const fmt = (v) => (v >= 10 || Number.isInteger(v) ? String(Math.round(v)) : v.toFixed(1));

  // grid lines and both y-axis scales
  ctx.font = "11px system-ui, sans-serif"; ctx.textBaseline = "middle"; ctx.lineWidth = 1;
  for (let i = 0; i <= 4; i++) {
    const y = Math.round(B - (B - T) * i / 4) + 0.5;
    ctx.strokeStyle = i ? "#eef0f3" : "#d5dae0";
    ctx.beginPath(); ctx.moveTo(L, y); ctx.lineTo(R, y); ctx.stroke();
    ctx.fillStyle = blue; ctx.textAlign = "right"; ctx.fillText(fmt(maxRate * i / 4), L - 6, y);
    ctx.fillStyle = violet; ctx.textAlign = "left"; ctx.fillText(fmt(maxLag * i / 4), R + 6, y);
  }
  ctx.fillStyle = "#6b7785"; ctx.textBaseline = "alphabetic";
  ctx.textAlign = "left"; ctx.fillText("15 min ago", L, h - 4);
  ctx.textAlign = "right"; ctx.fillText("now", R, h - 4);

  // one line per series, each point at its time: "now" is the right edge
  const line = (key, max, color) => {
    if (!points.length) return;
    ctx.strokeStyle = color; ctx.lineWidth = 2; ctx.lineJoin = "round"; ctx.beginPath();
    points.forEach((p, i) => {
      const x = L + (R - L) * (p.at - from) / WINDOW_MS, y = B - (B - T) * Math.min(p[key] / max, 1);
      i ? ctx.lineTo(x, y) : ctx.moveTo(x, y);
    });
    ctx.stroke();
  };
  line("lag", maxLag, violet);
  line("rate", maxRate, blue);
  canvas.dataset.points = String(points.length);   // what was drawn, for the browser test
}
window.addEventListener("resize", drawChart);

// ---- API token (API_TOKENS): sent with every request for figures -------------
const API_TOKEN_KEY = "orderSyncApiToken";
let apiToken = "";
try { apiToken = sessionStorage.getItem(API_TOKEN_KEY) || ""; } catch (_) { /* storage blocked */ }
$("#api-token").value = apiToken;
const apiHeaders = () => (apiToken ? { Authorization: `Bearer ${apiToken}` } : {});

function saveApiToken() {
  apiToken = $("#api-token").value.trim();
  try { apiToken ? sessionStorage.setItem(API_TOKEN_KEY, apiToken) : sessionStorage.removeItem(API_TOKEN_KEY); } catch (_) { /* ignore */ }
  refresh();
}
$("#save-api-token").addEventListener("click", saveApiToken);
$("#api-token").addEventListener("keydown", (ev) => { if (ev.key === "Enter") saveApiToken(); });

// The development banner: /health (open) says where external calls go. It says whether syncing
// is paused too, for viewers whose figures are refused (no API token).
async function loadHealth() {
  const epoch = syncEpoch;
  try {
    const r = await request("/health");
    $("#fake-banner").hidden = r.body?.external !== "built-in fake";
    setSyncState(r.body?.sync, epoch);
  } catch (_) { /* the metrics loop reports an unreachable service */ }
}

// ---- metrics ---------------------------------------------------------------
async function loadMetrics() {
  const status = $("#status-line");
  const epoch = syncEpoch;
  let m;
  try {
    const r = await request("/metrics/actors", { headers: apiHeaders() });
    if (r.status === 401) {
      status.textContent = apiToken ? "the API token was refused (401)" : "enter the API token (401)";
      status.className = "down"; status.title = "API_TOKENS is set on the server";
      await loadHealth();     // the paused banner still shows
      return;
    }
    if (!r.ok || !r.body || typeof r.body !== "object") throw new Error(`HTTP ${r.status}`);
    m = r.body;
  } catch (e) {
    status.textContent = "cannot reach the service";
    status.className = "down"; status.title = String(e?.message ?? e);
    return;
  }
  status.textContent = `updated ${clock(new Date())}`;
  status.className = "ok"; status.title = "";
  setSyncState(m.sync, epoch);
  runningJobsSeen = Array.isArray(m.jobs) && m.jobs.length > 0;
  // a rendering bug must not stop the loop or pass for a network error
  await loadHistory();
  try { renderCards(m); renderDetails(m); drawChart(); } catch (e) { console.error(e); }
}

// ---- admin: failed orders --------------------------------------------------
const TOKEN_KEY = "orderSyncAdminToken";
let token = "";
try { token = sessionStorage.getItem(TOKEN_KEY) || ""; } catch (_) { /* storage blocked */ }
$("#admin-token").value = token;

const busy = new Set();        // keys of actions whose request is running
let messageFromList = false;   // whether #admin-message shows a list error (cleared on success)
let lastSignature = "";

function showMessage(text, kind, fromList = false) {
  const box = $("#admin-message");
  box.textContent = text; box.className = kind; messageFromList = fromList;
}

// Turns an admin error response (a problem detail) into a sentence an operator can act on.
function adminError(r, isList) {
  const msg = r.body?.detail;
  if (r.status === 401) return "The token is missing or malformed (401)";
  if (r.status === 403) return "The token was refused (403)";
  if (r.status === 404 && (isList || /ADMIN_TOKEN|admin endpoints/i.test(msg ?? "")))
    return "Admin endpoints are off: set ADMIN_TOKEN on the server (404)";
  return `${msg || "Request failed"} (${r.status})`;
}

const authHeaders = () => ({ Authorization: `Bearer ${token}` });

function syncButtons() {
  $("#retry-all").disabled = !token || busy.has("all");
  for (const b of document.querySelectorAll("#failed-orders tbody button")) {
    b.disabled = busy.has(b.dataset.orderId);
  }
  syncControls();
}

function formatWhen(s) {
  if (!s) return "—";
  const d = new Date(s);
  return Number.isNaN(d.getTime()) ? String(s) : d.toLocaleString();
}

function renderOrders(orders, more) {
  const sig = JSON.stringify(orders) + more;
  if (sig === lastSignature) return;          // unchanged: keep the DOM (and hover state) as is
  lastSignature = sig;
  const rows = orders.map((o) => {
    const id = int(o?.id), state = String(o?.state ?? "?"), err = String(o?.last_error ?? "");
    return el("tr", { "data-order-id": id },
      el("td", { class: "id" }, el("a", { class: "order-link", href: `#order=${id}`, text: id })),
      el("td", {}, el("span", { class: `pill ${state}`, text: state })),
      el("td", { class: "n", text: int(o?.attempts) }),
      el("td", { class: "err", title: err, text: err || "—" }),
      el("td", { text: formatWhen(o?.next_attempt_at) }),
      el("td", {},
        el("button", { class: "retry-button", "data-order-id": id, text: "Retry" }),
        el("button", { class: "discard-button", "data-order-id": id, text: "Discard" })));
  });
  $("#failed-orders tbody").replaceChildren(...rows);
  $("#failed-orders").classList.toggle("hidden", !orders.length);
  $("#failed-empty").classList.toggle("hidden", orders.length > 0);
  $("#failed-more").classList.toggle("hidden", !more);
  $("#failed-count").textContent = orders.length ? `(${orders.length}${more ? "+" : ""})` : "";
  syncButtons();
}

// Shows the hint and clears the table (no token, or the token failed).
function clearOrders(showHint) {
  lastSignature = "";
  $("#failed-orders tbody").replaceChildren();
  for (const id of ["#failed-orders", "#failed-empty", "#failed-more"]) $(id).classList.add("hidden");
  $("#admin-hint").classList.toggle("hidden", !showHint);
  $("#failed-count").textContent = "";
  syncButtons();
}

async function loadAdmin() {
  if (!token) { clearOrders(true); return; }
  $("#admin-hint").classList.add("hidden");
  try {
    const r = await request("/admin/orders", { headers: authHeaders() });
    if (!r.ok) { clearOrders(false); showMessage(adminError(r, true), "error", true); return; }
    if (messageFromList) showMessage("", "");
    const orders = Array.isArray(r.body?.orders) ? r.body.orders : [];
    renderOrders(orders, r.body?.next_cursor != null);
  } catch (_) {
    // the status line already reports network trouble; keep the last table
  }
}

// Runs one admin action, reports its result and refreshes straight away.
async function act(key, method, path, describe) {
  if (busy.has(key)) return;
  busy.add(key); syncButtons();
  try {
    const r = await request(path, { method, headers: authHeaders() });
    if (r.ok) showMessage(describe(r.body ?? {}), "ok");
    else showMessage(adminError(r, false), "error");
  } catch (e) {
    showMessage(`Cannot reach the service: ${e?.message ?? e}`, "error");
  } finally {
    busy.delete(key); syncButtons();
    refresh();
  }
}

$("#failed-orders tbody").addEventListener("click", (ev) => {
  const link = ev.target.closest("a.order-link");
  if (link) {
    ev.preventDefault();
    lookUp(link.textContent).then(() => $("#lookup").scrollIntoView());
    return;
  }
  const btn = ev.target.closest("button[data-order-id]");
  if (!btn || btn.disabled) return;
  const id = btn.dataset.orderId;
  if (btn.classList.contains("retry-button")) {
    act(id, "POST", `/admin/orders/${encodeURIComponent(id)}/retry`, () => `Order ${id} queued for retry`);
  } else if (btn.classList.contains("discard-button")) {
    if (!confirm(`Discard order ${id}? It will not be synced again.`)) return;
    act(id, "DELETE", `/admin/orders/${encodeURIComponent(id)}`, () => `Order ${id} discarded`);
  }
});

$("#retry-all").addEventListener("click", () => act("all", "POST", "/admin/orders/retry-all", (b) => {
  const n = num(b.retried);
  return n === 0 ? "No dead orders to retry" : `${n} dead order${n === 1 ? "" : "s"} queued for retry`;
}));

function saveToken() {
  token = $("#admin-token").value.trim();
  try { token ? sessionStorage.setItem(TOKEN_KEY, token) : sessionStorage.removeItem(TOKEN_KEY); } catch (_) { /* ignore */ }
  showMessage(token ? "" : "Token cleared", "");
  controlMessage("", "");
  lastSignature = ""; lastJobsSignature = ""; jobsStale = true;
  refresh();
}
$("#save-token").addEventListener("click", saveToken);
$("#admin-token").addEventListener("keydown", (ev) => { if (ev.key === "Enter") saveToken(); });

// ---- admin: keep the external copy honest (audit, full resync, pause) -------
let syncState = null;          // "running" or "paused" (every instance), once known
let syncEpoch = 0;             // bumped by a switch: answers asked for before it are stale
let runningJobsSeen = false;   // /metrics/actors lists a running job (of any instance)
let jobsStale = true;          // load the jobs at the next refresh
let jobsRunning = false;       // the last list loaded had a running job
let jobsLoadedAt = 0;
let lastJobsSignature = "";
let controlFromList = false;   // whether #control-message shows a list error

function controlMessage(text, kind, fromList = false) {
  const box = $("#control-message");
  box.textContent = text; box.className = kind; controlFromList = fromList;
}

// Shows whether syncing runs: the banner at the top (for everyone), the state and the switch.
function setSyncState(value, epoch) {
  if ((value !== "paused" && value !== "running") || epoch !== syncEpoch) return;
  syncState = value;
  const paused = value === "paused";
  $("#paused-banner").hidden = !paused;
  const pill = $("#sync-state");
  pill.textContent = paused ? "sync: paused" : "sync: running";
  pill.className = `pill ${value}`;
  const toggle = $("#sync-toggle");
  toggle.textContent = paused ? "Resume syncing" : "Pause syncing";
  toggle.classList.toggle("primary", paused);
  syncControls();
}

function syncControls() {
  const none = !token;
  $("#start-audit").disabled = none || busy.has("audit");
  $("#start-resync").disabled = none || busy.has("resync");
  $("#sync-toggle").disabled = none || busy.has("sync") || syncState == null;
  $("#banner-resume").disabled = busy.has("sync");
  $("#banner-resume").classList.toggle("hidden", none);
  $("#banner-hint").classList.toggle("hidden", !none);
  $("#control-hint").classList.toggle("hidden", !none);
}

// An admin error, with the fields a 422 names.
function controlError(r) {
  const fields = r.body?.fields;
  if (r.status === 422 && fields && typeof fields === "object") {
    const said = Object.entries(fields).map(([k, v]) => `${k} ${Array.isArray(v) ? v.join(", ") : String(v)}`);
    if (said.length) return `${said.join("; ")} (422)`;
  }
  return adminError(r, false);
}

// Runs one control action (a POST, with a JSON body when given) and reports its result.
async function control(key, path, body, describe) {
  if (busy.has(key)) return;
  busy.add(key); syncControls();
  try {
    const opts = { method: "POST", headers: authHeaders() };
    if (body && Object.keys(body).length) {
      opts.body = JSON.stringify(body);
      opts.headers = { ...opts.headers, "Content-Type": "application/json" };
    }
    const r = await request(path, opts);
    if (r.ok) controlMessage(describe(r.body ?? {}), "ok");
    else controlMessage(controlError(r), "error");
  } catch (e) {
    controlMessage(`Cannot reach the service: ${e?.message ?? e}`, "error");
  } finally {
    busy.delete(key); syncControls();
    jobsStale = true;
    refresh();
  }
}

// The optional id range: {} for every id, or null (after saying why) when it is not valid.
function jobRange() {
  const range = {};
  for (const [key, sel, name] of [["from_id", "#job-from", "from"], ["to_id", "#job-to", "to"]]) {
    const v = $(sel).value.trim();
    if (!v) continue;
    if (!/^[1-9][0-9]{0,14}$/.test(v)) {
      controlMessage(`The ${name} id is a positive whole number, or empty`, "error");
      return null;
    }
    range[key] = Number(v);
  }
  if (range.from_id != null && range.to_id != null && range.to_id < range.from_id) {
    controlMessage("The to id must not be below the from id", "error");
    return null;
  }
  return range;
}

function rangeText(r) {
  if (r.from_id == null && r.to_id == null) return "every order";
  if (r.to_id == null) return `every order from id ${r.from_id}`;
  return `orders ${r.from_id ?? 1} to ${r.to_id}`;
}

function startJob(kind) {
  const range = jobRange();
  if (range == null) return;
  const what = rangeText(range);
  const question = kind === "audit"
    ? `Audit ${what}: read the external API's copy of each one (one GET per id, at the audit's share `
      + "of the rate limit) and repair what differs: a missing or different copy is sent again, a copy "
      + "of a deleted order is deleted. Start?"
    : `Resync sends the current state of ${what} to the external API again, one call per order at `
      + "the rate limit. Start?";
  if (!confirm(question)) return;
  const name = kind === "audit" ? "Audit" : "Resync";
  control(kind, `/admin/${kind}`, range,
    (job) => `${name} started: job ${int(job.id)}, ids ${int(job.from_id)} to ${int(job.to_id)}`);
}

function switchSync() {
  if (syncState == null) return;
  const pause = syncState !== "paused";
  const question = pause
    ? "Pause syncing on every instance? No calls are made to the external API until you resume; "
      + "orders still change here, and their changes are kept and sent on resume."
    : "Resume syncing on every instance? The changes kept while paused are sent to the external API, "
      + "at the rate limit.";
  if (!confirm(question)) return;
  control("sync", pause ? "/admin/sync/pause" : "/admin/sync/resume", null, (b) => {
    syncEpoch += 1;
    setSyncState(b.sync, syncEpoch);
    return b.sync === "paused"
      ? `Syncing paused on every instance at ${formatWhen(b.since)}`
      : `Syncing resumed at ${formatWhen(b.since)}: the changes kept are being sent`;
  });
}

$("#start-audit").addEventListener("click", () => startJob("audit"));
$("#start-resync").addEventListener("click", () => startJob("resync"));
$("#sync-toggle").addEventListener("click", switchSync);
$("#banner-resume").addEventListener("click", () => { if (syncState === "paused") switchSync(); });

function jobCounts(j) {
  if (j?.kind === "resync") return `sent ${int(j.sent)} of ${int(j.total)} orders · ${int(j.queued)} queued`;
  const repaired = num(j?.repaired_missing) + num(j?.repaired_different) + num(j?.repaired_stray);
  return `checked ${int(j?.checked)} of ${int(j?.total)} · ${int(j?.matching)} matching · `
    + `repaired ${int(repaired)} (${int(j?.repaired_missing)} missing, ${int(j?.repaired_different)} different, `
    + `${int(j?.repaired_stray)} stray) · ${int(j?.skipped)} skipped · ${int(j?.errors)} errors`;
}

function renderJobs(jobs) {
  const sig = JSON.stringify(jobs);
  if (sig === lastJobsSignature) return;
  lastJobsSignature = sig;
  const rows = jobs.map((j) => {
    const id = int(j?.id), status = String(j?.status ?? "?"), kind = String(j?.kind ?? "?");
    const p = Math.min(Math.max(num(j?.progress), 0), 1);
    const pct = status === "done" ? Math.round(p * 100) : Math.floor(p * 100);
    return el("tr", { "data-job-id": id, "data-status": status, "data-kind": kind },
      el("td", { class: "id", text: id }),
      el("td", { text: j?.sampled ? `${kind} (sample)` : kind }),
      el("td", {}, el("span", { class: `pill ${status}`, text: status })),
      el("td", { class: "num", text: `${int(j?.from_id)}–${int(j?.to_id)}` }),
      el("td", {},
        el("progress", { class: `job-progress ${status}`, max: "1", value: String(p), "aria-label": `job ${id} progress` }),
        el("span", { class: "pct", text: `${pct}%` })),
      el("td", { class: "counts", text: jobCounts(j) }),
      el("td", { text: formatWhen(j?.created_at) }));
  });
  $("#jobs tbody").replaceChildren(...rows);
  $("#jobs").classList.toggle("hidden", !jobs.length);
  $("#jobs-empty").classList.toggle("hidden", jobs.length > 0);
}

function clearJobs() {
  lastJobsSignature = ""; jobsRunning = false;
  $("#jobs tbody").replaceChildren();
  $("#jobs").classList.add("hidden");
  $("#jobs-empty").classList.add("hidden");
}

// The jobs, every refresh while one runs (here or on any instance); else now and then.
async function loadJobs() {
  if (!token) { clearJobs(); return; }
  const due = jobsStale || jobsRunning || runningJobsSeen || Date.now() - jobsLoadedAt > 15000;
  if (!due) return;
  try {
    const r = await request("/admin/jobs", { headers: authHeaders() });
    jobsLoadedAt = Date.now();
    if (!r.ok) { clearJobs(); controlMessage(adminError(r, true), "error", true); return; }
    if (controlFromList) controlMessage("", "");
    jobsStale = false;
    const jobs = Array.isArray(r.body?.jobs) ? r.body.jobs : [];
    jobsRunning = jobs.some((j) => j?.status === "running");
    renderJobs(jobs);
  } catch (_) {
    // the status line already reports network trouble; keep the last list
  }
}

// ---- order lookup: the sync explanation, the order, its attempts as a timeline ----
let lookedUp = null, olderCursor = null, expanded = false;

function lookupMessage(text) { $("#lookup-message").textContent = text; }

function attemptItem(a) {
  const ok = a?.outcome === "ok";
  const status = a?.http_status != null ? String(a.http_status)
    : a?.outcome === "timeout" ? "timed out" : "no answer";
  return el("li", { class: ok ? "ok" : "failed", "data-attempt-id": int(a?.id) },
    el("div", { class: "when", text: `${formatWhen(a?.attempted_at)} · ${int(a?.duration_ms)} ms · ${String(a?.instance ?? "")}` }),
    el("div", { class: "what", text: `${String(a?.verb ?? "?")} version ${int(a?.version)} → ${status}` }),
    el("div", { class: "excerpt", title: String(a?.excerpt ?? ""), text: String(a?.excerpt ?? "") }));
}

function showAttempts(page, append) {
  const items = (Array.isArray(page?.attempts) ? page.attempts : []).map(attemptItem);
  if (append) $("#lookup-timeline").append(...items); else $("#lookup-timeline").replaceChildren(...items);
  olderCursor = page?.next_cursor ?? null;
  $("#lookup-older").classList.toggle("hidden", olderCursor == null);
  $("#lookup-no-attempts").classList.toggle("hidden", $("#lookup-timeline").children.length > 0);
}

async function lookUp(rawId) {
  const id = String(rawId ?? "").trim();
  if (!/^[1-9][0-9]{0,18}$/.test(id)) { lookupMessage("An order id is a positive whole number"); return; }
  if (lookedUp !== id) expanded = false;
  lookedUp = id; if (document.activeElement !== $("#lookup-id")) $("#lookup-id").value = id; lookupMessage("");
  if (location.hash !== `#order=${id}`) history_replace(`#order=${id}`);
  const path = (p) => `/orders/${encodeURIComponent(id)}${p}`;
  try {
    const [sync, order, attempts] = await Promise.all([
      request(path("/sync"), { headers: apiHeaders() }),
      request(path(""), { headers: apiHeaders() }),
      request(path("/attempts?per_page=20"), { headers: apiHeaders() }),
    ]);
    if (lookedUp !== id) return;           // another lookup started meanwhile
    if (!sync.ok) {
      $("#lookup-result").classList.add("hidden");
      lookupMessage(sync.status === 404 ? `No order ${id}` : `${sync.body?.detail || "Lookup failed"} (${sync.status})`);
      return;
    }
    $("#lookup-hint").classList.add("hidden");
    const line = $("#lookup-explanation");
    line.textContent = `Order ${id}: ${String(sync.body?.explanation ?? "")}`;
    line.className = String(sync.body?.state ?? "");
    const f = sync.body?.facts ?? {}, o = order.ok ? order.body : null;
    fillKv($("#lookup-order"), [
      ["sync state", String(sync.body?.state ?? "?")],
      ["version / synced", `${f.version ?? "—"} / ${f.synced_version ?? "—"}`],
      ["failed attempts", String(f.failed_attempts ?? "—")],
      ["next attempt", formatWhen(f.next_attempt_at)],
      ["synced at", formatWhen(f.synced_at)], null,
      ["status", String(o?.status ?? (f.deleted ? "deleted" : "—"))],
      ["amount / tax", o ? `${int(o.amount)} / ${int(o.tax)}` : "—"],
      ["city", String(o?.city ?? "—")],
      ["updated", formatWhen(f.updated_at)],
    ]);
    showAttempts(attempts.ok ? attempts.body : null, false);
    $("#lookup-result").classList.remove("hidden");
  } catch (e) {
    lookupMessage(`Cannot reach the service: ${e?.message ?? e}`);
  }
}

async function loadOlderAttempts() {
  if (lookedUp == null || olderCursor == null) return;
  const r = await request(`/orders/${encodeURIComponent(lookedUp)}/attempts?per_page=20&cursor=${encodeURIComponent(olderCursor)}`,
    { headers: apiHeaders() }).catch(() => null);
  if (r?.ok) { expanded = true; showAttempts(r.body, true); }
}

function history_replace(hash) { try { window.history.replaceState(null, "", hash); } catch (_) { location.hash = hash; } }
const hashOrder = () => (/^#order=(\d+)$/.exec(location.hash) || [])[1];

$("#lookup-go").addEventListener("click", () => lookUp($("#lookup-id").value));
$("#lookup-id").addEventListener("keydown", (ev) => { if (ev.key === "Enter") lookUp($("#lookup-id").value); });
$("#lookup-older").addEventListener("click", loadOlderAttempts);
window.addEventListener("hashchange", () => { const id = hashOrder(); if (id) { lookUp(id); $("#lookup").scrollIntoView(); } });
if (hashOrder()) lookUp(hashOrder());

// ---- refresh loop: one refresh at a time, every 2 s ------------------------
let timer = null, running = false, again = false;

async function refresh() {
  if (running) { again = true; return; }   // run once more right after the current one
  clearTimeout(timer);
  running = true;
  try {
    await loadMetrics();
    await loadAdmin();
    await loadJobs();
    // the order looked up follows its sync, unless older attempts were opened
    if (lookedUp != null && !expanded) await lookUp(lookedUp);
  } finally {
    running = false;
    if (again) { again = false; refresh(); } else timer = setTimeout(refresh, 2000);
  }
}

syncButtons();
loadHealth();
refresh();
