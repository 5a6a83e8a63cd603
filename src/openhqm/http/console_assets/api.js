// The public API, called with the browser's session cookie; state changes echo the CSRF cookie.

export const BASE = document.querySelector('meta[name="openhqm-base"]')?.content || "";

export class ApiError extends Error {
  constructor(status, detail, body) {
    super(detail);
    this.status = status;
    this.body = body;
  }
}

function csrfToken() {
  const m = document.cookie.match(/(?:^|;\s*)openhqm_csrf=([^;]+)/);
  return m ? decodeURIComponent(m[1]) : null;
}

export async function call(method, path, body) {
  const headers = { Accept: "application/json" };
  if (body !== undefined) headers["Content-Type"] = "application/json";
  const token = csrfToken();
  if (method !== "GET" && token) headers["X-CSRF-Token"] = token;
  let response;
  try {
    response = await fetch(BASE + path, {
      method, headers, credentials: "same-origin",
      body: body === undefined ? undefined : JSON.stringify(body),
    });
  } catch (err) {
    throw new ApiError(0, `the listener did not answer (${err.message})`, null);
  }
  const text = await response.text();
  let data = null;
  try { data = text ? JSON.parse(text) : null; } catch { data = text; }
  if (response.status === 401 && !path.startsWith("/console/session")) {
    // The key was revoked or the token expired: back to the sign-in page.
    window.dispatchEvent(new CustomEvent("openhqm-unauthorized"));
  }
  if (!response.ok) {
    const detail = (data && typeof data === "object" && data.detail) || response.statusText || `HTTP ${response.status}`;
    throw new ApiError(response.status, String(detail), data);
  }
  return data;
}

export const get = (path) => call("GET", path);
export const post = (path, body) => call("POST", path, body);
export const del = (path) => call("DELETE", path);

export function query(params) {
  const q = new URLSearchParams();
  for (const [k, v] of Object.entries(params || {})) if (v != null && v !== "") q.set(k, v);
  const s = q.toString();
  return s ? "?" + s : "";
}

export function stream(path, handlers, onState) {
  const source = new EventSource(BASE + path, { withCredentials: true });
  for (const [name, fn] of Object.entries(handlers)) {
    source.addEventListener(name, (e) => {
      try { fn(JSON.parse(e.data)); } catch (err) { console.error(err); }
    });
  }
  if (onState) {
    source.onopen = () => onState("live");
    source.onerror = () => onState(source.readyState === EventSource.CLOSED ? "closed" : "reconnecting");
  }
  return source;
}
