// Entry point: hash routing (#/tasks?filters, #/task/<id>, #/pools) and the live-connection indicator.
import { startLive, onLiveState, whoami, login, logout } from "./api.js";
import { currentRoute, el, fill } from "./util.js";
import { renderTasks } from "./tasks.js";
import { renderDetail } from "./detail.js";
import { renderPools, startPoolsSampler } from "./pools.js";

const main = document.getElementById("main");
let cleanup = null;
let lastView = null;

function route() {
  const { path, params } = currentRoute();
  if (cleanup) { try { cleanup(); } catch (e) { console.error(e); } cleanup = null; }
  let view = path[0] || "tasks";
  if (view === "task" && path[1]) {
    cleanup = renderDetail(main, path[1], params);
    document.title = `Task ${path[1]} · Neutrino`;
  } else if (view === "pools") {
    cleanup = renderPools(main);
    document.title = "Pools · Neutrino";
  } else {
    view = "tasks";
    cleanup = renderTasks(main, params);
    document.title = "Tasks · Neutrino";
  }
  for (const [id, v] of [["nav-tasks", "tasks"], ["nav-pools", "pools"]]) {
    const a = document.getElementById(id);
    if (v === view) a.setAttribute("aria-current", "page"); else a.removeAttribute("aria-current");
  }
  // Moving to another view puts keyboard focus at its start; filter changes keep focus where it is.
  if (lastView !== null && lastView !== view) { main.focus({ preventScroll: true }); window.scrollTo(0, 0); }
  lastView = view;
  main.dataset.view = view;
}

const live = document.getElementById("live");
onLiveState((s) => {
  live.dataset.state = s;
  live.textContent = s === "open" ? "live" : s === "error" ? "offline" : "connecting…";
});

// The login form, when the gateway wants an API key (GET /auth/session answered 401).
function showLogin(message) {
  document.body.dataset.auth = "login";
  const input = el("input", { id: "login-key", type: "password", name: "key", autocomplete: "off", required: true,
    placeholder: "nk_…", "aria-label": "API key" });
  const error = el("p.notice.error", { id: "login-error", role: "alert", hidden: !message }, message || "");
  const form = el("form.login", { id: "login-form" },
    el("h1", {}, "Log in"),
    el("p.muted", {}, "This gateway needs an API key (neutrino keys create). It is exchanged for a session cookie."),
    el("label", { for: "login-key" }, "API key"), input, error,
    el("button.primary", { id: "login-submit", type: "submit" }, "Log in"));
  form.addEventListener("submit", async (e) => {
    e.preventDefault();
    const r = await login(input.value).catch(() => ({ ok: false, data: null }));
    if (r.ok) { location.reload(); return; }
    error.hidden = false;
    error.textContent = r.data?.error?.message || "Login failed";
  });
  fill(main, form);
  input.focus();
}

function showIdentity(who) {
  const slot = document.getElementById("who");
  if (!who || who.auth !== "key") { fill(slot); return; }
  fill(slot,
    el("span.muted", { id: "who-key", title: "scopes: " + who.scopes.join(", ") }, `${who.name || who.key_id} (${who.scopes.join(", ")})`),
    el("button", { id: "logout", type: "button", onclick: async () => { await logout(); location.reload(); } }, "Log out"));
}

async function start() {
  const who = await whoami().catch(() => null);
  if (!who) { showLogin(); return; }
  document.body.dataset.auth = who.auth;
  showIdentity(who);
  window.addEventListener("hashchange", route);
  startLive();
  route();
  startPoolsSampler();
}

start();
