// The gateway's HTTP API (same origin) and the live event stream (GET /events, Server-Sent Events).

export class ApiError extends Error {
  constructor(status, body) {
    const err = body && body.error;
    super(err && err.message ? `${err.type || "Error"}: ${err.message}` : `HTTP ${status}`);
    this.status = status;
    this.body = body;
  }
}

async function request(method, path, { body, signal } = {}) {
  const init = { method, headers: { Accept: "application/json" }, signal, cache: "no-store" };
  if (body !== undefined) {
    init.headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  const resp = await fetch(path, init);
  let data = null;
  const text = await resp.text();
  if (text) {
    try { data = JSON.parse(text); } catch { data = { error: { type: "BadResponse", message: text.slice(0, 200) } }; }
  }
  return { status: resp.status, ok: resp.ok, data };
}

async function getJSON(path, opts) {
  const r = await request("GET", path, opts);
  if (!r.ok) throw new ApiError(r.status, r.data);
  return r.data;
}

/** GET /tasks with the given filters: {tasks, next_before}. */
export function listTasks(filters, { before, limit = 50, signal } = {}) {
  const q = new URLSearchParams();
  for (const [k, v] of Object.entries(filters)) if (v !== undefined && v !== null && v !== "") q.set(k, v);
  if (before) q.set("before", before);
  q.set("limit", String(limit));
  return getJSON("/tasks?" + q.toString(), { signal });
}

export const getTask = (id, opts) => getJSON("/tasks/" + encodeURIComponent(id), opts);
export const getPools = (opts) => getJSON("/pools", opts);
export const getManifest = (opts) => getJSON("/openapi.json", opts);
export const cancelTask = (id) => request("DELETE", "/tasks/" + encodeURIComponent(id));

// ------------------------------------------------------------------------------------------ login
// With --api-keys the dashboard logs in with a key: POST /auth/session answers with an HttpOnly, SameSite=Strict
// session cookie (the page never sees it) and the key's scopes; GET /auth/session says who we are (401: log in);
// DELETE /auth/session logs out. Without keys, GET /auth/session answers {"auth":"off"} with every scope.

let identity = null;

/** Who the dashboard is: {auth, key_id?, name?, scopes, expires_at?}, or null when not logged in. */
export async function whoami() {
  const r = await request("GET", "/auth/session");
  identity = r.ok ? r.data : null;
  return identity;
}

/** Whether the logged-in key (or an open gateway) has `scope`; admin implies every scope. */
export function can(scope) {
  const scopes = (identity && identity.scopes) || [];
  return scopes.includes("admin") || scopes.includes(scope);
}

export const login = (key) => request("POST", "/auth/session", { body: { key } });
export const logout = () => request("DELETE", "/auth/session");
export const retryTask = (id) => request("POST", "/tasks/" + encodeURIComponent(id) + "/retry");

/** The tasks the manifest routes: [{name, mode, pool}]; cached. */
let manifestPromise = null;
export function taskCatalog() {
  if (!manifestPromise) {
    manifestPromise = getManifest().then((doc) => {
      const out = [];
      for (const [path, item] of Object.entries((doc && doc.paths) || {})) {
        const op = item && item.post;
        const m = /^\/api\/([^/]+)$/.exec(path);
        if (!op || !m) continue;
        out.push({ name: m[1], mode: op["x-neutrino-mode"] || "sync", pool: op["x-neutrino-pool"] || "" });
      }
      return out.sort((a, b) => a.name.localeCompare(b.name));
    }).catch(() => { manifestPromise = null; return []; });
  }
  return manifestPromise;
}

// ------------------------------------------------------------------------------------------ live events
// One EventSource for the page. EventSource reconnects by itself and sends Last-Event-ID, so the gateway
// resumes after the last event we saw. Listeners get the parsed `data` of each `task` event.

const listeners = new Set();
const stateListeners = new Set();
let source = null;
let state = "connecting";
let watchdog = null;

function setState(s) {
  if (s === state) return;
  state = s;
  for (const fn of stateListeners) fn(s);
}

export function liveState() { return state; }

export function startLive() {
  if (source || typeof EventSource === "undefined") return;
  source = new EventSource("/events");
  source.onopen = () => setState("open");
  source.onerror = () => setState(source.readyState === EventSource.CLOSED ? "error" : "connecting");
  const deliver = (msg) => {
    let ev;
    try { ev = JSON.parse(msg.data); } catch { return; }
    if (!ev || !ev.task_id) return;
    for (const fn of listeners) {
      try { fn(ev); } catch (e) { console.error(e); }
    }
  };
  source.addEventListener("task", deliver);
  source.onmessage = deliver; // an event without an `event:` field
  // A closed stream (e.g. the gateway dropped a slow client with an HTTP error) is reopened after a pause.
  if (watchdog) return;
  watchdog = setInterval(() => {
    if (source && source.readyState === EventSource.CLOSED) {
      source = null;
      startLive();
    }
  }, 5000);
}

export function onTaskEvent(fn) { listeners.add(fn); return () => listeners.delete(fn); }
export function onLiveState(fn) { stateListeners.add(fn); fn(state); return () => stateListeners.delete(fn); }
