// thrifty dashboard: reads the JSON API under ./api/ and draws it.
// Filters live in the page's query string, so a view can be shared by its URL.

const FILTERS = ["since", "until", "model", "provider", "key", "project", "user", "tag"];
const API = location.pathname.replace(/\/(index\.html)?$/, "") + "/api/";
const $ = (sel) => document.querySelector(sel);

function query() {
  return new URLSearchParams(location.search);
}

function apiParams(extra = {}) {
  const q = query();
  const p = new URLSearchParams();
  for (const name of FILTERS) if (q.get(name)) p.set(name, q.get(name));
  for (const [k, v] of Object.entries(extra)) if (v != null && v !== "") p.set(k, v);
  return p;
}

function url(view, extra) {
  const p = apiParams(extra).toString();
  return API + view + (p ? "?" + p : "");
}

class ApiError extends Error {}

async function get(view, extra) {
  let res;
  try {
    res = await fetch(url(view, extra), { headers: { accept: "application/json" } });
  } catch (e) {
    throw new ApiError(`the proxy did not answer (${e.message})`);
  }
  let body = null;
  try { body = await res.json(); } catch { /* not JSON */ }
  if (!res.ok) {
    const err = body && body.error;
    const msg = err ? err.message + (err.param ? ` (parameter: ${err.param})` : "") : `HTTP ${res.status}`;
    throw new ApiError(msg);
  }
  return body;
}

// The API answers a list, or an object holding one (rows/items/data/...).
function rowsOf(data) {
  if (Array.isArray(data)) return data;
  if (data && typeof data === "object") {
    for (const k of ["rows", "items", "data", "buckets", "groups", "calls", "keys", "techniques", "series"]) {
      if (Array.isArray(data[k])) return data[k];
    }
    const arr = Object.values(data).find(Array.isArray);
    if (arr) return arr;
  }
  return [];
}

const isNum = (v) => typeof v === "number" || (typeof v === "string" && v.trim() !== "" && /^-?\d+(\.\d+)?([eE][-+]?\d+)?$/.test(v));

function fmt(k, v) {
  if (v == null) return "–";
  if (typeof v === "object") return JSON.stringify(v);
  if (isNum(v)) {
    const n = Number(v);
    if (/usd|cost|spend|price/i.test(k) && !/token|calls|count/i.test(k)) return "$" + n.toLocaleString("en-US", { minimumFractionDigits: 2, maximumFractionDigits: n !== 0 && Math.abs(n) < 1 ? 6 : 2 });
    if (/(^|_)(rate|ratio|share|pct|fraction)($|_)/i.test(k) && Math.abs(n) <= 1) return (n * 100).toFixed(1) + "%";
    return Number.isInteger(n) ? n.toLocaleString("en-US") : n.toLocaleString("en-US", { maximumFractionDigits: 3 });
  }
  return String(v);
}

function el(tag, attrs = {}, ...kids) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) e.setAttribute(k, v);
  for (const kid of kids) e.append(kid);
  return e;
}

function table(target, rows, barColumn, only) {
  target.replaceChildren();
  if (!rows.length) { target.append(el("p", { class: "empty" }, "Nothing here for these filters.")); return; }
  let cols = [...new Set(rows.flatMap((r) => Object.keys(r)))];
  if (only) cols = only.filter((c) => cols.includes(c));
  const max = barColumn ? Math.max(...rows.map((r) => Number(r[barColumn]) || 0)) : 0;
  const t = el("table", {}, el("thead", {}, el("tr", {}, ...cols.map((c) => el("th", {}, c.replaceAll("_", " "))))));
  const body = el("tbody");
  for (const r of rows) {
    const tr = el("tr");
    for (const c of cols) {
      const td = el("td", { "data-col": c }, fmt(c, r[c]));
      if (isNum(r[c])) td.className = "num";
      if (c === barColumn && max > 0) td.prepend(el("span", { class: "bar", style: `width:${Math.round(60 * Number(r[c]) / max)}px` }));
      tr.append(td);
    }
    body.append(tr);
  }
  t.append(body);
  target.append(t);
}

// Cards for the scalar fields of an object (the API's ``total`` for the summary).
function cards(box, data, prefix = "") {
  for (const [k, v] of Object.entries(data || {})) {
    if (v && typeof v === "object") continue;
    box.append(el("div", { class: "card", "data-summary": prefix + k },
      el("div", { class: "label" }, k.replaceAll("_", " ")), el("div", { class: "value" }, fmt(k, v))));
  }
}

function summary(data) {
  const box = $("#summary");
  box.replaceChildren();
  cards(box, data && data.total ? data.total : data);
}

function errorsView(data) {
  const box = $("#errors-view");
  const rates = el("div", { class: "cards" });
  cards(rates, { calls: data.calls, errors: data.errors, error_rate: data.error_rate, retries: data.retries, retry_rate: data.retry_rate }, "errors_");
  const rows = el("div");
  table(rows, rowsOf(data));
  box.replaceChildren(rates, rows);
}

// Bucket labels are "2025-01-31T14:00" (hour, UTC) or "2025-01-31" (day; week: its Monday).
function bucketTime(row) {
  const t = row.bucket ?? row.group;
  if (typeof t === "number") return t;
  const iso = /T\d\d:\d\d$/.test(t) ? t + ":00Z" : t;
  return Date.parse(iso) / 1000;
}

let chart = null;
function timeseries(data) {
  const box = $("#timeseries-chart");
  const rows = rowsOf(data);
  if (chart) { chart.destroy(); chart = null; }
  box.replaceChildren();
  if (!rows.length) { box.append(el("p", { class: "empty" }, "No calls in this range.")); return; }
  const xs = rows.map(bucketTime);
  const num = (k) => rows.map((r) => Number(r[k] ?? 0));
  const opts = {
    width: Math.max(320, box.clientWidth || 800), height: 260,
    series: [
      {},
      { label: "cost USD", stroke: "#2f6fdf", width: 2, points: { size: 7 }, scale: "usd", value: (u, v) => v == null ? "–" : "$" + v.toFixed(4) },
      { label: "saved USD", stroke: "#1f9d63", width: 2, scale: "usd", value: (u, v) => v == null ? "–" : "$" + v.toFixed(4) },
      { label: "tokens", stroke: "#b07a1f", width: 1, dash: [4, 4], scale: "tok" },
      { label: "calls", stroke: "#888", width: 1, scale: "tok", show: false },
    ],
    axes: [{}, { scale: "usd", size: 80, values: (u, vs) => vs.map((v) => "$" + v) }, { scale: "tok", side: 1, grid: { show: false } }],
    scales: { x: { time: true, range: () => { const pad = BUCKET_SECONDS[$("#bucket").value] / 2; return [Math.min(...xs) - pad, Math.max(...xs) + pad]; } } },
  };
  chart = new uPlot(opts, [xs, num("cost_usd"), num("usd_saved"), num("tokens"), num("calls")], box);
}

function setCsvLinks() {
  for (const a of document.querySelectorAll("a.csv")) {
    const view = a.dataset.view;
    const extra = { format: "csv" };
    if (view === "timeseries") extra.bucket = $("#bucket").value;
    if (view === "breakdown") extra.by = $("#by").value;
    if (view === "calls") Object.assign(extra, { order: "cost", limit: 50 });
    a.href = url(view, extra);
    a.setAttribute("download", `thrifty-${view}.csv`);
  }
}

// Savings per technique, with what each saving was measured against.
function savingsView(data) {
  const against = (data && data.counterfactuals) || {};
  const rows = rowsOf(data).map((r) => ({ ...r, measured_against: against[r.technique] ?? null }));
  table($("#savings"), rows, "usd_saved");
}

// Budget use per key: a bar of spent (and reserved) against the budget.
function budgetsView(data) {
  const rows = rowsOf(data);
  table($("#budgets"), rows);
  const trs = $("#budgets").querySelectorAll("tbody tr");
  rows.forEach((r, i) => {
    const cell = trs[i] && trs[i].querySelector('td[data-col="spent_usd"]');
    const budget = Number(r.budget_usd);
    if (!cell || r.budget_usd == null || !(budget > 0)) return;
    const used = (Number(r.spent_usd) + Number(r.reserved_usd || 0)) / budget;
    const meter = el("span", { class: "meter" + (used >= 0.9 ? " high" : ""), title: (used * 100).toFixed(1) + "% of the budget" },
      el("span", { style: `width:${Math.min(100, Math.round(used * 100))}%` }));
    meter.dataset.used = used.toFixed(4);
    cell.prepend(meter);
  });
}

// the call list's columns on the page (its CSV has them all)
const CALL_COLUMNS = ["started_at", "model_used", "model", "provider", "key_id", "project", "user", "status",
  "input_tokens", "output_tokens", "duration_ms", "attempt", "cost_usd"];
const BUCKET_SECONDS = { hour: 3600, day: 86400, week: 7 * 86400 };

const VIEWS = {
  summary: [() => ({}), summary],
  timeseries: [() => ({ bucket: $("#bucket").value }), timeseries],
  breakdown: [() => ({ by: $("#by").value }), (d) => table($("#breakdown"), rowsOf(d), "cost_usd")],
  savings: [() => ({}), savingsView],
  latency: [() => ({}), (d) => table($("#latency"), rowsOf(d))],
  errors: [() => ({}), errorsView],
  calls: [() => ({ order: "cost", limit: 50 }), (d) => table($("#calls"), rowsOf(d), "cost_usd", CALL_COLUMNS)],
  budgets: [() => ({}), budgetsView],
};

async function load(names = Object.keys(VIEWS)) {
  document.body.dataset.state = "loading";
  setCsvLinks();
  const problems = [];
  await Promise.all(names.map(async (name) => {
    const [params, draw] = VIEWS[name];
    try {
      draw(await get(name, params()));
    } catch (e) {
      problems.push([name, e.message]);
    }
  }));
  const box = $("#errors");
  const byMessage = new Map();  // one line per distinct message, naming the views it hit
  for (const [name, msg] of problems) byMessage.set(msg, [...(byMessage.get(msg) || []), name]);
  box.replaceChildren(...[...byMessage].map(([msg, views]) => el("div", {}, `${msg} (${views.join(", ")})`)));
  document.body.dataset.state = problems.length ? "error" : "ready";
}

function init() {
  const q = query();
  const form = $("#filters");
  for (const name of FILTERS) form.elements[name].value = q.get(name) || "";
  if (q.get("bucket")) $("#bucket").value = q.get("bucket");
  if (q.get("by")) $("#by").value = q.get("by");
  form.addEventListener("submit", (ev) => {
    ev.preventDefault();
    const next = new URLSearchParams();
    for (const name of FILTERS) { const v = form.elements[name].value.trim(); if (v) next.set(name, v); }
    for (const k of ["bucket", "by"]) if (q.get(k) || query().get(k)) next.set(k, $("#" + k).value);
    history.pushState(null, "", "?" + next.toString());
    load();
  });
  for (const [id, views] of [["bucket", ["timeseries"]], ["by", ["breakdown"]]]) {
    $("#" + id).addEventListener("change", () => {
      const p = query(); p.set(id, $("#" + id).value);
      history.replaceState(null, "", "?" + p.toString());
      load(views);
    });
  }
  window.addEventListener("popstate", () => location.reload());
  load();
}

if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", init);
else init();
