// Requests: filter, page newest first, counts per status, and cancel everything a filter matches.
import { get, post, query } from "./api.js";
import { h, replace, badge, link, requestHref, shortId, timeCell, STATUSES, TERMINAL, toLocalInput } from "./dom.js";
import { actionButton, applyFiltersOnSubmit, confirmDialog, errorBox, empty, field, toast } from "./ui.js";

const FILTERS = ["status", "endpoint", "handler", "session_id", "idempotency_key", "since", "until", "id_prefix"];
const PAGE = 50;
const BULK_LIMIT = 1000;

export function filtersFrom(params) {
  const f = {};
  for (const k of FILTERS) if (params.get(k)) f[k] = params.get(k);
  return f;
}

export function requests(main, ctx) {
  const filters = filtersFrom(ctx.params);
  const cursors = [null];  // the cursor of each page shown so far: "previous" walks back
  const countsBox = h("div", { class: "counts" });
  const tableBox = h("div", null, h("p", { class: "muted" }, "Loading…"));
  const pager = h("div", { class: "pager" });
  const bulk = ctx.canAct ? actionButton("Cancel matching…", () => bulkCancel(filters, load), { cls: "danger" }) : null;

  replace(main,
    h("div", { class: "page-head" }, h("h1", null, "Requests"), h("span", { class: "spacer" }), bulk),
    filterForm(filters),
    h("section", { class: "card" }, countsBox),
    h("section", { class: "card flush" }, tableBox, pager));

  let alive = true, busy = false;
  async function load() {
    if (busy || !alive) return;
    busy = true;
    try { await Promise.all([showCounts(countsBox, filters), showPage()]); } finally { busy = false; }
  }
  async function showPage() {
    const cursor = cursors[cursors.length - 1];
    let page;
    try {
      page = await get("/api/v1/requests" + query({ ...filters, cursor, limit: PAGE }));
    } catch (err) {
      replace(pager);
      return replace(tableBox, errorBox(err, "Listing requests"));
    }
    replace(tableBox, page.items.length ? table(page.items) : empty("No request matches these filters."));
    replace(pager,
      cursors.length > 1 ? h("button", { type: "button", class: "ghost", onclick: () => { cursors.pop(); load(); } }, "← Newer") : null,
      h("span", { class: "muted small" }, `page ${cursors.length} · ${page.items.length} shown`),
      page.next_cursor ? h("button", { type: "button", class: "ghost", "data-next": "",
        onclick: () => { cursors.push(page.next_cursor); load(); } }, "Next →") : null);
  }
  // Live: the first page follows new arrivals; a later page holds still while it is read.
  const off = ctx.onTick(() => { if (cursors.length === 1) load(); });
  load();
  return () => { alive = false; off(); };
}

function filterForm(filters) {
  const status = h("select", { name: "status" }, h("option", { value: "" }, "any"),
    STATUSES.map((st) => h("option", { value: st }, st)));
  status.value = filters.status || "";
  const input = (name, placeholder, type = "text") => h("input", { name, type, placeholder,
    value: type === "datetime-local" ? toLocalInput(filters[name]) : filters[name] || "" });
  const form = h("form", { class: "filters card cols-5" },
    field("Status", status), field("Endpoint", input("endpoint", "name")), field("Handler", input("handler", "name")),
    field("Session id", input("session_id", "")), field("Idempotency key", input("idempotency_key", "")),
    field("Submitted after", input("since", "", "datetime-local")), field("Submitted before", input("until", "", "datetime-local")),
    field("Id starts with", input("id_prefix", "")),
    h("div", { class: "filter-actions" }, h("button", { type: "submit", class: "primary" }, "Apply"),
      h("a", { class: "button ghost", href: "#/requests" }, "Clear")));
  applyFiltersOnSubmit(form, FILTERS, "#/requests");
  return form;
}

async function showCounts(box, filters) {
  const { status, ...rest } = filters;
  try {
    const { counts } = await get("/api/v1/requests/counts" + query(rest));
    const total = Object.values(counts).reduce((a, b) => a + b, 0);
    const href = (st) => "#/requests" + query({ ...rest, status: st });
    replace(box, h("a", { class: `count${status ? "" : " on"}`, href: href("") }, "all", h("strong", null, String(total))),
      STATUSES.map((st) => h("a", { class: `count${status === st ? " on" : ""}${counts[st] ? "" : " zero"}`, href: href(st), "data-count": st },
        badge(st), h("strong", null, String(counts[st] ?? 0)))));
  } catch (err) {
    replace(box, errorBox(err, "Counting requests"));
  }
}

function table(items) {
  return h("table", { class: "table" },
    h("thead", null, h("tr", null, ["Request", "Status", "Target", "Submitted", "Attempts", "Priority", "Session", "Error"].map((t) => h("th", null, t)))),
    h("tbody", null, items.map((r) => h("tr", { "data-id": r.correlation_id, class: "clickable",
      onclick: (e) => { if (!e.target.closest("a") && !window.getSelection().toString()) location.hash = requestHref(r.correlation_id); } },
      h("td", { class: "mono" }, link(requestHref(r.correlation_id), shortId(r.correlation_id))),
      h("td", null, badge(r.status)),
      h("td", null, r.endpoint ? h("span", null, h("span", { class: "muted small" }, "endpoint "), r.endpoint)
        : r.handler ? h("span", null, h("span", { class: "muted small" }, "handler "), r.handler) : "—"),
      h("td", null, timeCell(r.submitted_at)),
      h("td", { class: "num" }, String(r.attempts ?? 0)),
      h("td", { class: "num" }, String(r.priority ?? "—")),
      h("td", { class: "mono small" }, r.session_id || ""),
      h("td", { class: "error-cell", title: r.error || "" }, r.error || "")))));
}

async function bulkCancel(filters, reload) {
  const { status, ...rest } = filters;
  const { counts, exact } = await get("/api/v1/requests/counts" + query(rest));
  const about = exact === false ? "at least " : "";
  const open = Object.entries(counts).filter(([st]) => !TERMINAL.has(st) && (!status || st === status));
  const n = open.reduce((a, [, c]) => a + c, 0);
  const described = Object.entries(filters).map(([k, v]) => `${k} = ${v}`).join(", ") || "no filter: every request";
  if (n === 0) { toast("No unfinished request matches these filters: nothing to cancel.", "warn"); return; }
  const ok = await confirmDialog({
    title: `Cancel ${n} request${n === 1 ? "" : "s"}?`, action: `Cancel ${Math.min(n, BULK_LIMIT)}`,
    body: [h("p", null, `${about}${n} unfinished request${n === 1 ? "" : "s"} match${n === 1 ? "es" : ""} `, h("code", null, described), "."),
      n > BULK_LIMIT ? h("p", null, `At most ${BULK_LIMIT} are cancelled per run.`) : null,
      h("p", { class: "muted" }, "Running ones are stopped by their worker. Finished requests are left alone.")],
  });
  if (!ok) return;
  const out = await post("/api/v1/requests/cancel", { filter: filters, limit: BULK_LIMIT });
  toast(`Matched ${out.matched}, cancelled ${out.done}${out.skipped.length ? `, skipped ${out.skipped.length}` : ""}.`);
  await reload();
}
