// Dead letters: why each one died, replay or delete one, or all a filter matches after a count.
import { get, post, query } from "./api.js";
import { h, replace, link, requestHref, shortId, timeCell, toLocalInput } from "./dom.js";
import { actionButton, applyFiltersOnSubmit, confirmDialog, errorBox, empty, field, toast } from "./ui.js";

const FILTERS = ["endpoint", "handler", "reason", "since", "until"];
const SHOWN = 200;  // the list refreshes every 2 s: the newest 200 are plenty to read
const LIST_LIMIT = 1000;  // counted before a bulk run, and the most one run touches

export function deadLetters(main, ctx) {
  const filters = {};
  for (const k of FILTERS) if (ctx.params.get(k)) filters[k] = ctx.params.get(k);
  const tableBox = h("div", null, h("p", { class: "muted" }, "Loading…"));
  const summary = h("span", { class: "muted" });
  const bulk = ctx.canAct ? [
    actionButton("Replay matching…", () => bulkRun("replay", filters, load), { cls: "primary" }),
    actionButton("Delete matching…", () => bulkRun("delete", filters, load), { cls: "danger" }),
  ] : null;
  replace(main,
    h("div", { class: "page-head" }, h("h1", null, "Dead letters"), summary, h("span", { class: "spacer" }), bulk),
    filterForm(filters),
    h("section", { class: "card flush" }, tableBox));

  let alive = true, busy = false;
  async function load() {
    if (busy || !alive) return;
    busy = true;
    try {
      const items = await get("/api/v1/dlq" + query({ ...filters, limit: SHOWN }));
      summary.textContent = items.length >= SHOWN ? `newest ${SHOWN} shown` : `${items.length} matching`;
      replace(tableBox, items.length ? table(items, ctx, load) : empty("No dead letter matches. Good."));
    } catch (err) {
      replace(tableBox, errorBox(err, "Listing dead letters"));
    } finally { busy = false; }
  }
  const off = ctx.onTick(load);
  load();
  return () => { alive = false; off(); };
}

function filterForm(filters) {
  const input = (name, placeholder, type = "text") => h("input", { name, type, placeholder,
    value: type === "datetime-local" ? toLocalInput(filters[name]) : filters[name] || "" });
  const form = h("form", { class: "filters card cols-6" },
    field("Endpoint", input("endpoint", "name")), field("Handler", input("handler", "name")),
    field("Reason", input("reason", "e.g. max_attempts")),
    field("Dead after", input("since", "", "datetime-local")), field("Dead before", input("until", "", "datetime-local")),
    h("div", { class: "filter-actions" }, h("button", { type: "submit", class: "primary" }, "Apply"),
      h("a", { class: "button ghost", href: "#/dlq" }, "Clear")));
  applyFiltersOnSubmit(form, FILTERS, "#/dlq");
  return form;
}

function table(items, ctx, reload) {
  return h("table", { class: "table" },
    h("thead", null, h("tr", null, ["Dead letter", "Request", "Reason", "Attempts", "Last error", "Target", "When", ""].map((t) => h("th", null, t)))),
    h("tbody", null, items.map((d) => h("tr", { "data-id": d.id },
      h("td", { class: "mono small" }, shortId(d.id)),
      h("td", { class: "mono" }, d.correlation_id ? link(requestHref(d.correlation_id), shortId(d.correlation_id)) : "—"),
      h("td", null, h("span", { class: "pill bad" }, d.reason || "?")),
      h("td", { class: "num" }, String(d.attempts ?? "—")),
      h("td", { class: "error-cell", title: d.last_error || "" }, d.last_error || ""),
      h("td", null, d.target || "—", d.status_code ? h("span", { class: "muted small" }, ` · ${d.status_code}`) : null),
      h("td", null, timeCell(d.dead_lettered_at)),
      h("td", { class: "row-actions" }, ctx.canAct ? [
        actionButton("Replay", async () => {
          const out = await post(`/api/v1/dlq/${encodeURIComponent(d.id)}/replay`);
          toast(`Replayed as ${out.correlation_id}.`);
          await reload();
        }, { cls: "small" }),
        actionButton("Delete", async () => {
          if (!(await confirmDialog({ title: "Delete this dead letter?", action: "Delete",
            body: "The record of this failure is removed; the request itself stays as it is." }))) return;
          await post("/api/v1/dlq/delete", { ids: [d.id] });
          toast("Dead letter deleted.");
          await reload();
        }, { cls: "small ghost" }),
      ] : null)))));
}

async function bulkRun(verb, filters, reload) {
  const items = await get("/api/v1/dlq" + query({ ...filters, limit: LIST_LIMIT }));
  const n = items.length;
  if (!n) { toast("No dead letter matches these filters.", "warn"); return; }
  const described = Object.entries(filters).map(([k, v]) => `${k} = ${v}`).join(", ") || "no filter: every dead letter";
  const ok = await confirmDialog({
    title: `${verb === "replay" ? "Replay" : "Delete"} ${n}${n >= LIST_LIMIT ? "+" : ""} dead letter${n === 1 ? "" : "s"}?`,
    action: `${verb === "replay" ? "Replay" : "Delete"} ${n}`, danger: verb === "delete",
    body: [h("p", null, `${n}${n >= LIST_LIMIT ? " or more" : ""} dead letter${n === 1 ? "" : "s"} match `, h("code", null, described), "."),
      h("p", { class: "muted" }, verb === "replay" ? "Each is submitted again as a new request."
        : "Their records are removed for good.")],
  });
  if (!ok) return;
  const out = await post(`/api/v1/dlq/${verb}`, { filter: filters, limit: LIST_LIMIT });
  toast(`Matched ${out.matched}, ${verb === "replay" ? "replayed" : "deleted"} ${out.done}${out.skipped.length ? `, skipped ${out.skipped.length}` : ""}.`);
  await reload();
}
