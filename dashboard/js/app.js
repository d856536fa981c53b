// Entry point: hash routing (#/tasks?filters, #/task/<id>, #/pools) and the live-connection indicator.
import { startLive, onLiveState } from "./api.js";
import { currentRoute } from "./util.js";
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

window.addEventListener("hashchange", route);
startLive();
route();
startPoolsSampler();
