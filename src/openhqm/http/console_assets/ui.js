// Shared pieces of the screens: notices, confirmation dialogs, empty and error states.
import { h, append, toRfc3339 } from "./dom.js";

export function toast(message, kind = "ok") {
  const box = document.getElementById("toasts");
  const el = h("div", { class: `toast ${kind}` }, message);
  box.append(el);
  setTimeout(() => el.remove(), kind === "error" ? 9000 : 5000);
}

export function failed(err) {
  toast(err && err.message ? err.message : String(err), "error");
}

// A modal of our own (not window.confirm): it states what will be touched before anything is.
export function confirmDialog({ title, body, action, danger = true }) {
  return new Promise((resolve) => {
    const dialog = h("dialog", { class: "confirm" });
    const done = (answer) => { dialog.close(); dialog.remove(); resolve(answer); };
    append(dialog, [
      h("h2", null, title),
      h("div", { class: "dialog-body" }, body),
      h("div", { class: "dialog-actions" },
        h("button", { type: "button", class: "ghost", onclick: () => done(false) }, "Keep as is"),
        h("button", { type: "button", class: danger ? "danger" : "primary", "data-confirm": "",
          onclick: () => done(true) }, action)),
    ]);
    dialog.addEventListener("cancel", (e) => { e.preventDefault(); done(false); });
    document.body.append(dialog);
    dialog.showModal();
  });
}

export function errorBox(err, what) {
  if (err && err.status === 403) {
    return h("div", { class: "notice" }, h("strong", null, "Not allowed: "), err.message);
  }
  return h("div", { class: "notice error" }, h("strong", null, `${what} failed: `), err ? err.message : "unknown error");
}

export function empty(text) {
  return h("div", { class: "empty" }, text);
}

export function section(title, ...children) {
  return h("section", { class: "card" }, h("h2", null, title), ...children);
}

export function field(label, input) {
  return h("label", { class: "field" }, h("span", null, label), input);
}

export function kv(pairs) {
  return h("dl", { class: "kv" }, pairs.filter(Boolean).map(([k, v]) => [h("dt", null, k), h("dd", null, v)]));
}

export function actionButton(label, handler, { cls = "", title, disabled } = {}) {
  const button = h("button", { type: "button", class: cls, title, disabled });
  button.textContent = label;
  button.addEventListener("click", async () => {
    button.disabled = true;
    try { await handler(); } catch (err) { failed(err); } finally { if (button.isConnected) button.disabled = false; }
  });
  return button;
}

// A filter form's submit puts its non-empty fields (times as RFC 3339) in the address: the list
// screens read their filters from there, so a filtered view can be shared and reloaded.
export function applyFiltersOnSubmit(form, keys, route) {
  form.addEventListener("submit", (e) => {
    e.preventDefault();
    const data = new FormData(form), next = new URLSearchParams();
    for (const k of keys) {
      let v = String(data.get(k) || "").trim();
      if (k === "since" || k === "until") v = toRfc3339(v);
      if (v) next.set(k, v);
    }
    location.hash = route + (next.toString() ? "?" + next : "");
  });
}
