// One request: state, timings, what was sent, what came back, every attempt, callbacks, live events.
import { get, post, del, stream } from "./api.js";
import { h, replace, badge, link, requestHref, timeCell, between, seconds, ms, pre, TERMINAL, when } from "./dom.js";
import { actionButton, confirmDialog, errorBox, empty, kv, section, toast } from "./ui.js";

export function detail(main, ctx, id) {
  const head = h("div", { class: "page-head" });
  const body = h("div", { class: "detail" }, h("p", { class: "muted" }, "Loading…"));
  const eventsList = h("ol", { class: "events" });
  const eventsCard = section("Lifecycle events", eventsList);
  replace(main, h("p", { class: "crumbs" }, link("#/requests", "← Requests")), head, body, eventsCard);

  let source = null, alive = true, record = null;
  async function load() {
    try {
      record = await get(`/api/v1/requests/${encodeURIComponent(id)}`);
    } catch (err) {
      replace(head, h("h1", { class: "mono" }, id));
      return replace(body, errorBox(err, "Reading the request"));
    }
    if (!alive) return;
    render(record);
    if (!source && !TERMINAL.has(record.status)) follow();
  }
  function follow() {
    source = stream(`/api/v1/requests/${encodeURIComponent(id)}/events`, {
      status: (e) => {
        eventsList.append(h("li", null, h("span", { class: "muted small" }, when(e.at)), " ", badge(e.status),
          ` attempt ${e.attempts}`, e.progress ? ` · ${Math.round((e.progress.fraction || 0) * 100)} % ${e.progress.message || ""}` : "",
          e.error ? h("span", { class: "error-text" }, " · ", e.error) : null));
        load();
        if (TERMINAL.has(e.status)) { source.close(); }
      },
    });
  }
  function render(r) {
    const actions = [];
    if (ctx.canAct && !TERMINAL.has(r.status)) {
      actions.push(actionButton("Cancel", async () => {
        if (!(await confirmDialog({ title: "Cancel this request?", action: "Cancel request",
          body: r.status === "PROCESSING" ? "It is running: its worker stops it." : "It will not run." }))) return;
        await del(`/api/v1/requests/${encodeURIComponent(id)}`);
        toast("Request cancelled.");
        await load();
      }, { cls: "danger" }));
    }
    if (ctx.canAct && TERMINAL.has(r.status)) {
      actions.push(actionButton("Replay", async () => {
        const out = await post(`/api/v1/requests/${encodeURIComponent(id)}/replay`);
        toast(`Replayed as ${out.correlation_id}.`);
        location.hash = requestHref(out.correlation_id);
      }, { cls: "primary", title: "Submit the same request again as a new one" }));
    }
    replace(head, h("h1", { class: "mono", "data-id": r.correlation_id }, r.correlation_id), copyButton(r.correlation_id), badge(r.status),
      h("span", { class: "spacer" }), actions);
    replace(body,
      h("div", { class: "grid2" },
        section("Summary", kv([
          ["Status", badge(r.status)],
          ["Target", r.endpoint ? `endpoint ${r.endpoint}` : r.handler ? `handler ${r.handler}` : "—"],
          ["Attempts", String(r.attempts ?? 0)],
          r.priority != null && ["Priority", String(r.priority)],
          r.session_id && ["Session", h("span", { class: "mono" }, r.session_id)],
          r.waiting_on && ["Waiting on", r.waiting_on],
          r.replayed_from && ["Replayed from", link(requestHref(r.replayed_from), r.replayed_from)],
          r.progress && ["Progress", progress(r.progress)],
        ])),
        section("Timings", kv([
          ["Submitted", timeCell(r.submitted_at)],
          ["Updated", timeCell(r.updated_at)],
          ["Completed", timeCell(r.completed_at)],
          r.next_attempt_at && ["Next attempt", timeCell(r.next_attempt_at)],
          ["End to end", seconds(between(r.submitted_at, r.completed_at))],
        ]))),
      r.error ? section("Error", pre(r.error, "error")) : null,
      r.result == null ? null : section("Result", pre(r.result)),
      section("Attempts", attempts(r.attempt_history)),
      section("Callback deliveries", callbacks(r.callbacks, r.callback_error)),
      h("div", { class: "grid2" },
        section("Payload", payload(r)),
        h("div", null,
          section("Headers", mapping(r.headers)),
          section("Metadata", mapping(r.metadata)))));
    if (!source) replace(eventsList, timeline(r).map(([at, what, extra]) =>
      h("li", null, h("span", { class: "muted small" }, when(at)), " ", what, extra ? h("span", { class: "muted" }, " · ", extra) : null)));
  }
  load();
  return () => { alive = false; if (source) source.close(); };
}

function payload(r) {
  if (r.payload === null && !r.payload_encoding) return h("p", { class: "muted" }, "Not kept for this request.");
  return [r.method || r.path ? h("p", { class: "mono small" }, [r.method, r.path].filter(Boolean).join(" ")) : null,
    r.payload_encoding && r.payload_encoding !== "json" ? h("p", { class: "muted small" }, `as ${r.payload_encoding}`) : null,
    pre(r.payload)];
}

function copyButton(text) {
  const button = h("button", { type: "button", class: "ghost small", title: "Copy the id" }, "copy");
  button.addEventListener("click", async () => {
    try { await navigator.clipboard.writeText(text); button.textContent = "copied"; } catch { button.textContent = "select it"; }
    setTimeout(() => { button.textContent = "copy"; }, 1500);
  });
  return button;
}

function mapping(value) {
  if (value === undefined || value === null) return h("p", { class: "muted" }, "—");
  if (typeof value === "object" && !Object.keys(value).length) return h("p", { class: "muted" }, "none");
  return pre(value);
}

// A finished request's story, rebuilt from its record (the live stream only tells what happens next).
function timeline(r) {
  const steps = [[r.submitted_at, badge(TERMINAL.has(r.status) || r.attempts ? "PENDING" : r.status), "submitted"]];
  for (const a of r.attempt_history || []) {
    steps.push([a.started_at, badge("PROCESSING"), `attempt ${a.attempt} started${a.worker_id ? ` on ${a.worker_id}` : ""}`]);
    if (a.finished_at) {
      const how = a.error ? `failed: ${a.error}` : a.status_code ? `answered ${a.status_code}` : "done";
      steps.push([a.finished_at, h("span", null, `attempt ${a.attempt} `), `${how} (${ms(a.duration_ms)})`]);
    }
  }
  if (TERMINAL.has(r.status)) steps.push([r.completed_at || r.updated_at, badge(r.status), r.error || ""]);
  return steps.filter(([at]) => at);
}

function progress(p) {
  const pct = Math.round((p.fraction || 0) * 100);
  return h("span", null, h("progress", { max: 100, value: pct }), ` ${pct} % `, p.message || "");
}

function attempts(history) {
  if (!history || !history.length) return empty("No attempt has started yet.");
  return h("table", { class: "table attempts" },
    h("thead", null, h("tr", null, ["#", "Started", "Finished", "Duration", "Worker", "Status code", "Error"].map((t) => h("th", null, t)))),
    h("tbody", null, history.map((a) => h("tr", { class: a.error ? "bad" : "" },
      h("td", { class: "num" }, String(a.attempt)), h("td", null, timeCell(a.started_at)), h("td", null, timeCell(a.finished_at)),
      h("td", { class: "num" }, ms(a.duration_ms)), h("td", { class: "mono small" }, a.worker_id || "—"),
      h("td", { class: "num" }, a.status_code == null ? "—" : String(a.status_code)),
      h("td", { class: "error-cell" }, a.error || "")))));
}

function callbacks(list, lastError) {
  if (!list || !list.length) return h("p", { class: "muted" }, lastError ? `Last error: ${lastError}` : "No callback delivery.");
  return h("table", { class: "table" },
    h("thead", null, h("tr", null, ["#", "At", "Status code", "Error"].map((t) => h("th", null, t)))),
    h("tbody", null, list.map((c) => h("tr", { class: c.error ? "bad" : "" },
      h("td", { class: "num" }, String(c.attempt)), h("td", null, timeCell(c.at)),
      h("td", { class: "num" }, c.status_code == null ? "—" : String(c.status_code)), h("td", { class: "error-cell" }, c.error || "")))));
}
