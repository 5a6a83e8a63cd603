// The console's shell: who we are, the live tick stream, and hash routing between the screens.
import { get, post, stream } from "./api.js";
import { h, replace } from "./dom.js";
import { failed } from "./ui.js";
import { signIn } from "./signin.js";
import { overview } from "./overview.js";
import { requests } from "./requests.js";
import { detail } from "./detail.js";
import { deadLetters } from "./dlq.js";

const main = document.getElementById("main");
const tickListeners = new Set();
let session = null;
let cleanup = null;
let ticks = null;
let lastTick = null;

// ---- theme: the system's preference until the operator picks one -----------------------------
const root = document.documentElement;
const savedTheme = localStorage.getItem("openhqm-theme");
if (savedTheme) root.dataset.theme = savedTheme;
document.getElementById("theme").addEventListener("click", () => {
  const dark = root.dataset.theme ? root.dataset.theme === "dark" : matchMedia("(prefers-color-scheme: dark)").matches;
  root.dataset.theme = dark ? "light" : "dark";
  localStorage.setItem("openhqm-theme", root.dataset.theme);
});

// ---- routing --------------------------------------------------------------------------------
function parseHash() {
  const raw = location.hash || "#/overview";
  const [path, q] = raw.slice(1).split("?");
  const decode = (part) => { try { return decodeURIComponent(part); } catch { return part; } };
  return { parts: path.split("/").filter(Boolean).map(decode), params: new URLSearchParams(q || "") };
}

function route() {
  if (cleanup) { try { cleanup(); } catch (err) { console.error(err); } cleanup = null; }
  if (!session) return;
  if (!session.signed_in) { cleanup = signIn(main, start); markNav(null); return; }
  const { parts, params } = parseHash();
  const ctx = {
    session, params, canAct: session.scopes.includes("admin"),
    onTick(fn) { tickListeners.add(fn); return () => tickListeners.delete(fn); },
    lastTick: () => lastTick,
  };
  let screen = "overview";
  if (parts[0] === "requests" && parts.length > 1) { screen = "requests"; cleanup = detail(main, ctx, parts.slice(1).join("/")); }
  else if (parts[0] === "requests") { screen = "requests"; cleanup = requests(main, ctx); }
  else if (parts[0] === "dlq") { screen = "dlq"; cleanup = deadLetters(main, ctx); }
  else cleanup = overview(main, ctx);
  markNav(screen);
  document.title = `${screen === "dlq" ? "Dead letters" : screen[0].toUpperCase() + screen.slice(1)} · OpenHQM console`;
}

function markNav(screen) {
  for (const a of document.querySelectorAll("#nav a")) {
    if (a.dataset.screen === screen) a.setAttribute("aria-current", "page");
    else a.removeAttribute("aria-current");
  }
  document.getElementById("nav").hidden = screen === null;
}

// ---- who we are ---------------------------------------------------------------------------
function showWho() {
  const who = document.getElementById("who");
  const out = document.getElementById("signout");
  const banner = document.getElementById("banner");
  out.hidden = !(session.auth_required && session.signed_in);
  banner.hidden = true;
  if (!session.auth_required) {
    replace(who, h("span", { class: "pill warn", title: "No auth.api_keys or auth.jwt is configured: anyone who reaches this listener can act. Keep it on a private address." }, "no access control"));
  } else if (session.signed_in) {
    const role = session.scopes.includes("admin") ? "admin" : "read only";
    replace(who, h("span", { class: "pill" }, session.client_id, h("span", { class: "muted" }, ` · ${role}`)));
    if (!session.scopes.includes("admin")) {
      replace(banner, "Signed in with a key without the admin scope: you can look, not act.");
      banner.hidden = false;
    }
  } else {
    replace(who);
  }
}

document.getElementById("signout").addEventListener("click", async () => {
  try { await post("/console/session/delete"); } catch (err) { failed(err); }
  await start();
});

function setLive(state) {
  const el = document.getElementById("live");
  el.className = `live is-${state}`;
  el.hidden = state === "off";
  el.textContent = state === "live" ? "live" : state === "closed" ? "offline" : "reconnecting…";
}

function openTicks() {
  if (ticks) ticks.close();
  ticks = stream("/api/v1/console/events", {
    tick: (data) => { lastTick = data; for (const fn of tickListeners) fn(data); },
  }, setLive);
}

async function start() {
  try {
    session = await get("/console/session");
  } catch (err) {
    replace(main, h("div", { class: "notice error" }, `The listener did not answer: ${err.message}`));
    return;
  }
  showWho();
  if (session.signed_in) openTicks();
  else { if (ticks) ticks.close(); ticks = null; setLive("off"); }
  route();
}

window.addEventListener("hashchange", route);
// "/" jumps to the filters, as in most consoles.
window.addEventListener("keydown", (e) => {
  if (e.key !== "/" || e.ctrlKey || e.metaKey || e.altKey || e.target.closest("input, select, textarea")) return;
  const first = main.querySelector("form.filters input, form.filters select");
  if (first) { e.preventDefault(); first.focus(); }
});
window.addEventListener("openhqm-unauthorized", () => { if (session && session.auth_required) start(); });
start();
