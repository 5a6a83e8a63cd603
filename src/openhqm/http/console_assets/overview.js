// Overview: the listener's readiness; per queue depth, age, throughput, latency, failures and pause;
// flow limits (when any is configured); live workers. The figures arrive with each tick of /api/v1/console/events (the same shapes as the
// public routes, which are read directly after an action and before the first tick).
import { get, post, query } from "./api.js";
import { h, replace, seconds, timeCell, STATUSES, badge } from "./dom.js";
import { throughputChart, latencyChart } from "./charts.js";
import { actionButton, confirmDialog, errorBox, empty, toast } from "./ui.js";

const MINUTES = 15;
const FIGURES = [
  ["pending", "Pending"], ["scheduled", "Scheduled"], ["processing", "Processing"],
  ["dead_letters", "Dead letters"], ["oldest_pending_age_s", "Oldest unfinished"], ["depth", "In the broker"],
];

export function overview(main, ctx) {
  const healthBox = h("div", { class: "health" });
  const countsBox = h("div", { class: "counts" });
  const queuesBox = h("div", { class: "queues" }, h("p", { class: "muted" }, "Loading queues…"));
  const workersBox = h("div");
  const flowBox = h("div");
  const flowCard = h("section", { class: "card", hidden: true, "data-panel": "flow" }, h("h2", null, "Flow limits"), flowBox);
  replace(main,
    h("div", { class: "page-head" }, h("h1", null, "Overview"),
      h("span", { class: "muted" }, "Figures refresh every 2 s while this page is open."), h("span", { class: "spacer" }),
      healthBox),
    h("section", { class: "card" }, h("h2", null, "Requests by status"), countsBox),
    h("h2", { class: "section-title" }, "Queues"), queuesBox, flowCard,
    h("section", { class: "card" }, h("h2", null, "Workers"), workersBox));

  let alive = true;
  const boxes = { healthBox, queuesBox, workersBox, flowCard, flowBox };
  const show = (figures) => { if (alive) render(boxes, figures, ctx, refetch); };
  async function refetch() { show(await fromRoutes()); }
  const off = ctx.onTick((tick) => { show(tick); showCounts(countsBox); });
  if (ctx.lastTick()) show(ctx.lastTick()); else refetch();
  showCounts(countsBox);
  return () => { alive = false; off(); };
}

// The same figures the tick carries, read from the public routes.
async function fromRoutes() {
  const part = (promise) => promise.catch((err) => ({ error: err }));
  const [queues, workers, flow, ready] = await Promise.all([part(get("/api/v1/queues")), part(get("/api/v1/workers")),
    part(get("/api/v1/flow")), get("/ready").then((r) => r.checks, (err) => (err.body && err.body.checks) || null)]);
  const series = {};
  if (Array.isArray(queues)) {
    await Promise.all(queues.map(async (q) => {
      series[q.name] = await part(get(`/api/v1/queues/${encodeURIComponent(q.name)}/series${query({ minutes: MINUTES })}`));
    }));
  }
  return { queues, series, workers, flow, ready };
}

function render({ healthBox, queuesBox, workersBox, flowCard, flowBox }, figures, ctx, refetch) {
  showHealth(healthBox, figures.ready);
  showQueues(queuesBox, figures.queues, figures.series || {}, ctx, refetch);
  showFlow(flowCard, flowBox, figures.flow, figures.at);
  showWorkers(workersBox, figures.workers);
}

function showHealth(box, checks) {
  if (!checks) return replace(box, h("span", { class: "pill bad" }, "readiness unknown"));
  const names = { queue: "Broker", results: "Result store" };
  replace(box, Object.entries(checks).map(([name, check]) =>
    h("span", { class: `pill ${check.ok ? "ok" : "bad"}`, title: check.detail || "", "data-check": name },
      `${names[name] || name} ${check.ok ? "up" : "DOWN"}`, check.ok || !check.detail ? null : `: ${check.detail}`)));
}

async function showCounts(box) {
  try {
    const { counts } = await get("/api/v1/requests/counts");
    replace(box, STATUSES.map((st) => h("a", { class: `count${counts[st] ? "" : " zero"}`, href: `#/requests?status=${st}` },
      badge(st), h("strong", null, String(counts[st] ?? 0)))));
  } catch (err) {
    replace(box, errorBox(err, "Counting requests"));
  }
}

function showQueues(box, queues, series, ctx, refetch) {
  if (!queues || queues.error) return replace(box, errorBox(queues && queues.error, "Reading the queues"));
  if (!queues.length) return replace(box, empty("No queues."));
  replace(box, queues.map((q) => queueCard(q, series[q.name], ctx, refetch)));
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

function queueCard(q, found, ctx, refetch) {
  const head = h("div", { class: "queue-head" }, h("h3", null, q.name),
    q.backend ? h("span", { class: "muted small" }, q.backend) : null,
    q.paused ? h("span", { class: "pill paused" }, "PAUSED") : null, h("span", { class: "spacer" }),
    pauseButton(q, ctx, refetch));
  return h("section", { class: `card queue${q.paused ? " is-paused" : ""}`, "data-queue": q.name }, head,
    h("div", { class: "figs" }, FIGURES.map(([k, label]) => figure(q, k, label))),
    h("div", { class: "charts" }, charts(found, q)));
}

function charts(found, q) {
  if (!found || found.error) {
    return h("div", { class: "muted small" }, `Throughput and latency: ${found && found.error ? found.error.message : "unknown"}`);
  }
  if ((found.not_reported || []).length) {
    return h("div", { class: "muted small" }, `Throughput and latency: not reported by this result store (${q.backend || ""}).`);
  }
  return [throughputChart(found.minutes), latencyChart(found.minutes), failureRate(found.minutes)];
}

function failureRate(minutes) {
  const done = minutes.reduce((n, m) => n + (m.completed || 0) + (m.failed || 0), 0);
  const bad = minutes.reduce((n, m) => n + (m.failed || 0), 0);
  const rate = done ? bad / done : null;
  return h("div", { class: `fig big${rate > 0.05 ? " warn" : ""}` }, h("span", { class: "label" }, "Failure rate"),
    h("span", { class: "value" }, rate == null ? "—" : `${(rate * 100).toFixed(rate < 0.1 ? 1 : 0)} %`),
    h("span", { class: "muted small" }, `${bad} of ${done} in ${minutes.length} min`));
}

function pauseButton(q, ctx, refetch) {
  const verb = q.paused ? "resume" : "pause";
  if (!ctx.canAct) return h("span", { class: "muted small" }, q.paused ? "paused" : "running");
  return actionButton(q.paused ? "Resume" : "Pause", async () => {
    if (!q.paused && !(await confirmDialog({ title: `Pause ${q.name}?`, action: "Pause queue", body:
      "Workers stop taking requests from this queue until it is resumed. Submits are still accepted and wait; running requests finish." }))) return;
    await post(`/api/v1/queues/${encodeURIComponent(q.name)}/${verb}`);
    toast(`Queue ${q.name} ${verb}d.`);
    await refetch();
  }, { cls: q.paused ? "primary" : "", title: `${verb} the queue` });
}

function showWorkers(box, workers) {
  if (!workers || workers.error) return replace(box, errorBox(workers && workers.error, "Listing workers"));
  if (!workers.length) return replace(box, empty("No worker has reported in."));
  const alive = workers.filter((w) => w.alive).length;
  replace(box, h("p", { class: "muted small" }, `${alive} alive of ${workers.length} heard from in the last hour`),
    h("table", { class: "table" },
      h("thead", null, h("tr", null, ["Worker", "Host", "PID", "Started", "Slots", "In flight", "Last seen", ""].map((t) => h("th", null, t)))),
      h("tbody", null, workers.map((w) => h("tr", { class: w.alive ? "" : "dim" },
        h("td", { class: "mono" }, w.worker_id), h("td", null, w.host), h("td", null, String(w.pid ?? "—")),
        h("td", null, timeCell(w.started_at)), h("td", { class: "num" }, String(w.concurrency ?? "—")),
        h("td", { class: "num" }, String(w.in_flight ?? "—")), h("td", null, timeCell(w.last_seen_at)),
        h("td", null, h("span", { class: `pill ${w.alive ? "ok" : "bad"}` }, w.alive ? "alive" : "gone")))))));
}

// Flow limits: shown only when some are configured (with none, the listing is empty and never fails,
// so a failed reading means there are limits). "Ahead" is measured on the listener's clock when the
// tick says what time it is there.
function showFlow(card, box, flow, at) {
  if (flow && !flow.error && Array.isArray(flow.limits) && !flow.limits.length) {
    card.hidden = true;
    return;
  }
  card.hidden = false;
  if (!flow || flow.error) return replace(box, errorBox(flow && flow.error, "Reading the flow limits"));
  const now = (at && Date.parse(at)) || Date.now();
  replace(box, h("table", { class: "table flow" },
    h("thead", null, h("tr", null, ["Limit", "Covers", "Key", "Rate", "Max concurrency", "Waiting", "In flight",
      "Reservations", "Most held keys"].map((t) => h("th", null, t)))),
    h("tbody", null, flow.limits.map((limit) => flowRow(limit, now)))));
}

function flowRow(limit, now) {
  const keyed = limit.key != null;
  const perKey = keyed ? " per key" : "";
  const ahead = limit.reserved_until ? (Date.parse(limit.reserved_until) - now) / 1000 : null;
  return h("tr", { "data-limit": limit.name },
    h("td", { class: "mono" }, limit.name),
    h("td", null, limit.endpoint != null ? `endpoint ${limit.endpoint}` : `handler ${limit.handler}`),
    h("td", null, keyed ? [h("span", { class: "mono" }, limit.key), h("div", { class: "muted small" },
      `${limit.keys} key${limit.keys === 1 ? "" : "s"} active`)] : h("span", { class: "muted" }, "one bucket")),
    h("td", null, limit.rate_per_s != null ? `${rate(limit.rate_per_s)}${perKey}, burst ${limit.burst}` : "—"),
    h("td", { class: "num" }, limit.max_concurrency != null ? `${limit.max_concurrency}${perKey}` : "—"),
    h("td", { class: `num${limit.waiting > 0 ? " warn" : ""}`, "data-figure": "waiting" }, String(limit.waiting)),
    h("td", { class: "num", "data-figure": "in_flight" },
      limit.max_concurrency != null && !keyed ? `${limit.in_flight} / ${limit.max_concurrency}` : String(limit.in_flight)),
    h("td", { "data-figure": "reserved_until", title: limit.reserved_until || "" },
      ahead != null && ahead > 0 ? `reservations run ${seconds(ahead)} ahead` : h("span", { class: "muted" }, "none ahead")),
    h("td", { "data-figure": "top_keys" }, limit.top_keys.length ? h("ul", { class: "keys" }, limit.top_keys.map((k) =>
      h("li", null, h("span", { class: "mono" }, k.key === "" ? "(no value)" : k.key),
        h("span", { class: "muted small" }, ` ${k.waiting} waiting, ${k.in_flight} in flight`)))) : h("span", { class: "muted" }, "—")));
}

function rate(perS) {
  return perS >= 1 ? `${Number(perS.toPrecision(4))}/s` : `1 every ${seconds(1 / perS)}`;
}
