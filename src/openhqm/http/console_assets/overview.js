// Overview: each queue's depth, age, throughput, latency and failures; live workers; pause/resume.
import { get, post, query } from "./api.js";
import { h, replace, seconds, timeCell, STATUSES, badge } from "./dom.js";
import { throughputChart, latencyChart } from "./charts.js";
import { actionButton, confirmDialog, errorBox, empty, toast } from "./ui.js";

const FIGURES = [
  ["pending", "Pending"], ["scheduled", "Scheduled"], ["processing", "Processing"],
  ["dead_letters", "Dead letters"], ["oldest_pending_age_s", "Oldest pending"],
];

export function overview(main, ctx) {
  const healthBox = h("div", { class: "health" });
  const countsBox = h("div", { class: "counts" });
  const queuesBox = h("div", { class: "queues" }, h("p", { class: "muted" }, "Loading queues…"));
  const workersBox = h("div");
  replace(main,
    h("div", { class: "page-head" }, h("h1", null, "Overview"),
      h("span", { class: "muted" }, "Figures refresh every 2 s while this page is open."), h("span", { class: "spacer" }),
      healthBox),
    h("section", { class: "card" }, h("h2", null, "Requests by status"), countsBox),
    h("h2", { class: "section-title" }, "Queues"), queuesBox,
    h("section", { class: "card" }, h("h2", null, "Workers"), workersBox));

  let lastTick = null, busy = false, alive = true;
  async function refresh() {
    if (busy || !alive) return;
    busy = true;
    try {
      await Promise.all([showHealth(healthBox), showCounts(countsBox), showQueues(queuesBox, ctx, lastTick, refresh), showWorkers(workersBox)]);
    } finally { busy = false; }
  }
  const off = ctx.onTick((tick) => { lastTick = tick; refresh(); });
  refresh();
  return () => { alive = false; off(); };
}

// The listener's own readiness (GET /ready): is the broker or the result store the problem?
async function showHealth(box) {
  let report;
  try { report = await get("/ready"); } catch (err) { report = err.body && err.body.checks ? err.body : null; }
  if (!report) return replace(box, h("span", { class: "pill bad" }, "readiness unknown"));
  const names = { queue: "Broker", results: "Result store" };
  replace(box, Object.entries(report.checks).map(([name, check]) =>
    h("span", { class: `pill ${check.ok ? "ok" : "bad"}`, title: check.detail || "", "data-check": name },
      `${names[name] || name} ${check.ok ? "up" : "DOWN"}`, check.ok || !check.detail ? null : `: ${check.detail}`)));
}

async function showCounts(box) {
  let counts;
  try {
    counts = (await get("/api/v1/requests/counts")).counts;
  } catch (err) {
    if (!err.missing) return replace(box, errorBox(err, "Counting requests"));
    try { counts = (await get("/api/v1/stats")).requests; } catch (e2) { return replace(box, errorBox(err, "Counting requests")); }
  }
  replace(box, STATUSES.map((st) => h("a", { class: `count${counts[st] ? "" : " zero"}`, href: `#/requests?status=${st}` },
    badge(st), h("strong", null, String(counts[st] ?? 0)))));
}

async function showQueues(box, ctx, tick, refresh) {
  let queues;
  try {
    queues = await get("/api/v1/queues");
  } catch (err) {
    if (!err.missing || !tick) return replace(box, errorBox(err, "Reading the queues"));
    // An older listener: only the depth the console's tick carries is known.
    queues = Object.entries(tick.queues).map(([name, q]) => ({ name, paused: null, pending: q.depth, scheduled: null,
      processing: null, dead_letters: null, oldest_pending_age_s: null, backend: null, not_reported: [] }));
  }
  if (!queues.length) return replace(box, empty("No queues."));
  const cards = await Promise.all(queues.map((q) => queueCard(q, ctx, refresh)));
  replace(box, cards);
}

function figure(q, key, label) {
  const v = q[key];
  let shown;
  if (v == null) {
    const why = (q.not_reported || []).includes(key) ? `not reported by ${q.backend || "this broker"}` : "unknown";
    shown = h("span", { class: "na", title: why }, why);
  } else {
    shown = key === "oldest_pending_age_s" ? seconds(v) : String(v);
  }
  const warn = (key === "dead_letters" && v > 0) || (key === "oldest_pending_age_s" && v > 60);
  return h("div", { class: `fig${warn ? " warn" : ""}`, "data-figure": key }, h("span", { class: "label" }, label),
    h("span", { class: "value" }, shown));
}

async function queueCard(q, ctx, refresh) {
  let series = null, seriesErr = null;
  try {
    series = (await get(`/api/v1/queues/${encodeURIComponent(q.name)}/series${query({ minutes: 15 })}`)).minutes;
  } catch (err) { seriesErr = err; }
  const head = h("div", { class: "queue-head" }, h("h3", null, q.name),
    q.backend ? h("span", { class: "muted small" }, q.backend) : null,
    q.paused ? h("span", { class: "pill paused" }, "PAUSED") : null, h("span", { class: "spacer" }),
    q.paused == null ? null : pauseButton(q, ctx, refresh));
  const charts = series ? [throughputChart(series), latencyChart(series), failureRate(series)]
    : [h("div", { class: "muted small" }, seriesErr && seriesErr.missing
      ? "Throughput and latency: not available on this listener." : `Series: ${seriesErr ? seriesErr.message : "—"}`)];
  return h("section", { class: `card queue${q.paused ? " is-paused" : ""}`, "data-queue": q.name }, head,
    h("div", { class: "figs" }, FIGURES.map(([k, label]) => figure(q, k, label))),
    h("div", { class: "charts" }, charts));
}

function failureRate(minutes) {
  const done = minutes.reduce((n, m) => n + (m.completed || 0) + (m.failed || 0), 0);
  const bad = minutes.reduce((n, m) => n + (m.failed || 0), 0);
  const rate = done ? bad / done : null;
  return h("div", { class: `fig big${rate > 0.05 ? " warn" : ""}` }, h("span", { class: "label" }, "Failure rate"),
    h("span", { class: "value" }, rate == null ? "—" : `${(rate * 100).toFixed(rate < 0.1 ? 1 : 0)} %`),
    h("span", { class: "muted small" }, `${bad} of ${done} in ${minutes.length} min`));
}

function pauseButton(q, ctx, refresh) {
  const verb = q.paused ? "resume" : "pause";
  if (!ctx.canAct) return h("span", { class: "muted small" }, q.paused ? "paused" : "running");
  return actionButton(q.paused ? "Resume" : "Pause", async () => {
    if (!q.paused && !(await confirmDialog({ title: `Pause ${q.name}?`, action: "Pause queue", body:
      "Workers stop taking new requests from this queue until it is resumed; submits are still accepted." }))) return;
    await post(`/api/v1/queues/${encodeURIComponent(q.name)}/${verb}`);
    toast(`Queue ${q.name} ${verb}d.`);
    await refresh();
  }, { cls: q.paused ? "primary" : "", title: `${verb} the queue` });
}

async function showWorkers(box) {
  let workers;
  try { workers = await get("/api/v1/workers"); } catch (err) { return replace(box, errorBox(err, "Listing workers")); }
  if (!workers.length) return replace(box, empty("No worker has reported in."));
  const alive = workers.filter((w) => w.alive).length;
  replace(box, h("p", { class: "muted small" }, `${alive} alive of ${workers.length} known`),
    h("table", { class: "table" },
      h("thead", null, h("tr", null, ["Worker", "Host", "PID", "Started", "Slots", "In flight", "Last seen", ""].map((t) => h("th", null, t)))),
      h("tbody", null, workers.map((w) => h("tr", { class: w.alive ? "" : "dim" },
        h("td", { class: "mono" }, w.worker_id), h("td", null, w.host), h("td", null, String(w.pid ?? "—")),
        h("td", null, timeCell(w.started_at)), h("td", null, String(w.concurrency ?? "—")),
        h("td", null, String(w.in_flight ?? "—")), h("td", null, timeCell(w.last_seen_at)),
        h("td", null, h("span", { class: `pill ${w.alive ? "ok" : "bad"}` }, w.alive ? "alive" : "gone")))))));
}
