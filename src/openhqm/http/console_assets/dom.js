// Every piece of data reaches the page as text (textContent / text nodes), never as HTML.

export function h(tag, props, ...children) {
  const el = document.createElement(tag);
  setProps(el, props);
  append(el, children);
  return el;
}

const SVG_NS = "http://www.w3.org/2000/svg";

export function s(tag, attrs, ...children) {
  const el = document.createElementNS(SVG_NS, tag);
  for (const [k, v] of Object.entries(attrs || {})) if (v != null) el.setAttribute(k, String(v));
  append(el, children);
  return el;
}

function setProps(el, props) {
  for (const [k, v] of Object.entries(props || {})) {
    if (v == null || v === false) continue;
    if (k === "class") el.className = v;
    else if (k.startsWith("on")) el.addEventListener(k.slice(2), v);
    else if (k === "dataset") Object.assign(el.dataset, v);
    else if (k === "value" || k === "checked" || k === "disabled" || k === "hidden") el[k] = v;
    else el.setAttribute(k, v === true ? "" : String(v));
  }
}

export function append(el, children) {
  for (const c of children.flat(Infinity)) {
    if (c == null || c === false) continue;
    el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return el;
}

export function clear(el) {
  while (el.firstChild) el.firstChild.remove();
  return el;
}

export function replace(el, ...children) {
  return append(clear(el), children);
}

export function link(hash, ...children) {
  return h("a", { href: hash }, ...children);
}

export function requestHref(id) {
  return "#/requests/" + encodeURIComponent(id);
}

// ---- formatting -----------------------------------------------------------------------------

export function ago(iso) {
  if (!iso) return "—";
  const s = (Date.now() - Date.parse(iso)) / 1000;
  if (Number.isNaN(s)) return "—";
  const future = s < 0;
  const a = Math.abs(s);
  const t = a < 1 ? "now" : a < 60 ? `${Math.round(a)}s` : a < 3600 ? `${Math.round(a / 60)}m`
    : a < 86400 ? `${(a / 3600).toFixed(1)}h` : `${(a / 86400).toFixed(1)}d`;
  if (t === "now") return "just now";
  return future ? `in ${t}` : `${t} ago`;
}

export function when(iso) {
  if (!iso) return "—";
  const d = new Date(iso);
  if (Number.isNaN(d.getTime())) return String(iso);
  return d.toLocaleString(undefined, { month: "short", day: "numeric", hour: "2-digit", minute: "2-digit",
    second: "2-digit", hour12: false });
}

export function timeCell(iso) {
  return h("span", { title: iso || "" }, when(iso), h("span", { class: "muted small" }, " · ", ago(iso)));
}

export function seconds(s) {
  if (s == null) return "—";
  if (s < 1) return `${Math.round(s * 1000)} ms`;
  if (s < 120) return `${s.toFixed(1)} s`;
  if (s < 7200) return `${(s / 60).toFixed(1)} min`;
  return `${(s / 3600).toFixed(1)} h`;
}

export function ms(v) {
  if (v == null) return "—";
  return v < 1000 ? `${Math.round(v)} ms` : seconds(v / 1000);
}

export function between(a, b) {
  if (!a || !b) return null;
  return (Date.parse(b) - Date.parse(a)) / 1000;
}

export function pretty(value) {
  if (value === undefined) return "";
  if (typeof value === "string") return value;
  try { return JSON.stringify(value, null, 2); } catch { return String(value); }
}

export function shortId(id) {
  return id && id.length > 13 ? id.slice(0, 8) + "…" + id.slice(-4) : id;
}

export const TERMINAL = new Set(["COMPLETED", "FAILED", "CANCELLED", "EXPIRED"]);
export const STATUSES = ["PENDING", "SCHEDULED", "PROCESSING", "RETRY", "COMPLETED", "FAILED", "CANCELLED", "EXPIRED"];

export function badge(status) {
  return h("span", { class: `badge st-${String(status || "").toLowerCase()}` }, status || "?");
}

export function pre(value, cls) {
  return h("pre", { class: "code " + (cls || "") }, pretty(value));
}

// Datetime-local input value (local time) <-> RFC 3339 (UTC) for the API.
export function toRfc3339(local) {
  if (!local) return "";
  const d = new Date(local);
  return Number.isNaN(d.getTime()) ? "" : d.toISOString();
}

export function toLocalInput(iso) {
  if (!iso) return "";
  const d = new Date(iso);
  if (Number.isNaN(d.getTime())) return "";
  const pad = (n) => String(n).padStart(2, "0");
  return `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())}T${pad(d.getHours())}:${pad(d.getMinutes())}`;
}
