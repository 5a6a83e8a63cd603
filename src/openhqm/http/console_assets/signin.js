// Sign in once with an API key: the listener checks it and keeps it in an HttpOnly cookie.
import { post } from "./api.js";
import { h, replace } from "./dom.js";

export function signIn(main, onSignedIn) {
  const input = h("input", { type: "password", name: "api_key", autocomplete: "current-password",
    placeholder: "API key or token", required: true, autofocus: true });
  const message = h("p", { class: "error-text", role: "alert" });
  const form = h("form", { class: "signin card" },
    h("h1", null, "Sign in"),
    h("p", { class: "muted" }, "This listener requires client credentials. Paste an API key with the ",
      h("code", null, "read"), " scope (", h("code", null, "admin"), " to act)."),
    h("label", { class: "field" }, h("span", null, "API key"), input),
    message,
    h("button", { type: "submit", class: "primary" }, "Sign in"));
  form.addEventListener("submit", async (e) => {
    e.preventDefault();
    message.textContent = "";
    try {
      await post("/console/session", { api_key: input.value });
      input.value = "";
      await onSignedIn();
    } catch (err) {
      message.textContent = err.message;
    }
  });
  replace(main, h("div", { class: "center" }, form));
  input.focus();
  return () => {};
}
