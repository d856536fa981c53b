// The tasks view: newest first over the cursor API, filters in the URL, rows streamed in live from /events.
import { listTasks, getTask, onTaskEvent, onLiveState, taskCatalog, liveState } from "./api.js";
import {
  el, fill, badge, timeNode, fmtDuration, shortId, looksLikeTaskId, STATUSES, MODES, TERMINAL, routeHref, parseTime,
} from "./util.js";

const PAGE = 50;
const RANGES = { "": "any time", "15m": "last 15 min", "1h": "last hour", "24h": "last 24 h", "7d": "last 7 days", custom: "custom…" };
const RANGE_MS = { "15m": 15 * 60e3, "1h": 3600e3, "24h": 86400e3, "7d": 7 * 86400e3 };
const FILTER_KEYS = ["status", "function", "pool", "mode", "q", "range", "since", "until"];
const MAX_FETCHES = 4; // concurrent GET /tasks/<id> refreshes of live rows

// datetime-local <-> ISO-8601 UTC
function toLocalInput(iso) {
  const t = parseTime(iso);
  if (t === null) return "";
  const d = new Date(t - new Date(t).getTimezoneOffset() * 60e3);
  return d.toISOString().slice(0, 16);
}
function fromLocalInput(v) {
  if (!v) return "";
  const t = new Date(v).getTime();
  return Number.isFinite(t) ? new Date(t).toISOString() : "";
}

export function renderTasks(main, params) {
  const f = Object.fromEntries(FILTER_KEYS.map((k) => [k, params.get(k) || ""]));
  if (f.range === "custom" && !f.since && !f.until) f.range = "custom";
  const disposers = [];
  const rows = new Map(); // task id -> {tr, rec}
  let nextBefore = null;
  let exhausted = false;
  let loading = false;
  let disposed = false;
  let liveAdded = 0;

  // ---- the query the API gets
  function apiFilters() {
    const q = { status: f.status, function: f.function, pool: f.pool, mode: f.mode, q: f.q };
    if (RANGE_MS[f.range]) q.since = String(Date.now() - RANGE_MS[f.range]);
    else if (f.range === "custom" || f.since || f.until) { q.since = f.since; q.until = f.until; }
    return q;
  }

  function navigate(changes) {
    const p = new URLSearchParams();
    const merged = { ...f, ...changes };
    for (const k of FILTER_KEYS) if (merged[k]) p.set(k, merged[k]);
    if (merged.range !== "custom") { p.delete("since"); p.delete("until"); }
    location.hash = routeHref("tasks", p);
  }

  // ---- filters form
  const statusSel = el("select", { id: "f-status", name: "status", onchange: () => navigate({ status: statusSel.value }) },
    el("option", { value: "" }, "any status"), STATUSES.map((s) => el("option", { value: s, selected: f.status === s }, s.replace("_", " "))));
  const fnSel = el("select", { id: "f-function", name: "function", onchange: () => navigate({ function: fnSel.value }) },
    el("option", { value: "" }, "any task"), f.function ? el("option", { value: f.function, selected: true }, f.function) : null);
  const poolSel = el("select", { id: "f-pool", name: "pool", onchange: () => navigate({ pool: poolSel.value }) },
    el("option", { value: "" }, "any pool"), f.pool ? el("option", { value: f.pool, selected: true }, f.pool) : null);
  const modeSel = el("select", { id: "f-mode", name: "mode", onchange: () => navigate({ mode: modeSel.value }) },
    el("option", { value: "" }, "any mode"), MODES.map((m) => el("option", { value: m, selected: f.mode === m }, m)));
  const rangeSel = el("select", { id: "f-range", name: "range", onchange: () => navigate({ range: rangeSel.value, since: "", until: "" }) },
    Object.entries(RANGES).map(([v, label]) => el("option", { value: v, selected: f.range === v || (v === "custom" && !f.range && !!(f.since || f.until)) }, label)));
  const custom = f.range === "custom" || (!f.range && (f.since || f.until));
  const sinceIn = el("input", { id: "f-since", type: "datetime-local", value: toLocalInput(f.since),
    onchange: () => navigate({ range: "custom", since: fromLocalInput(sinceIn.value) }) });
  const untilIn = el("input", { id: "f-until", type: "datetime-local", value: toLocalInput(f.until),
    onchange: () => navigate({ range: "custom", until: fromLocalInput(untilIn.value) }) });
  const searchIn = el("input", { id: "f-search", type: "search", name: "search", value: f.q, autocomplete: "off",
    placeholder: "task id (exact) or task name", "aria-describedby": "search-msg" });
  const searchMsg = el("span.muted", { id: "search-msg", role: "status" });

  taskCatalog().then((cat) => {
    for (const name of cat.map((t) => t.name)) if (name !== f.function) fnSel.append(el("option", { value: name }, name));
    for (const pool of [...new Set(cat.map((t) => t.pool))].sort()) if (pool !== f.pool) poolSel.append(el("option", { value: pool }, pool));
  });

  const form = el("form.filters", { id: "filters", role: "search", "aria-label": "Filter tasks",
    onsubmit: async (e) => {
      e.preventDefault();
      const v = searchIn.value.trim();
      if (v && looksLikeTaskId(v)) {
        searchMsg.textContent = "looking up…";
        try {
          await getTask(v);
          location.hash = "#/task/" + encodeURIComponent(v);
        } catch (err) {
          searchMsg.textContent = err.status === 404 ? `no task with id ${v}` : `lookup failed: ${err.message}`;
          notice.className = "notice error";
          notice.textContent = searchMsg.textContent;
        }
        return;
      }
      navigate({ q: v });
    } },
    el("label.search", {}, "Search", el("span.buttons", {}, searchIn, el("button", { type: "submit", id: "f-go" }, "Go"))),
    el("label", {}, "Status", statusSel),
    el("label", {}, "Task", fnSel),
    el("label", {}, "Pool", poolSel),
    el("label", {}, "Mode", modeSel),
    el("label", {}, "Time", rangeSel),
    custom ? el("label", {}, "From", sinceIn) : null,
    custom ? el("label", {}, "Until", untilIn) : null,
    el("span.buttons", {}, el("a.button", { href: "#/tasks", id: "f-clear" }, "Clear")),
  );

  // ---- table
  const tbody = el("tbody", { id: "task-rows" });
  const cols = [["c-status", "Status"], ["c-task", "Task"], ["c-id", "Id"], ["c-pool", "Pool"], ["c-worker", "Worker"],
    ["c-att num", "Tries"], ["c-time c-queued", "Queued"], ["c-time c-started", "Started"], ["c-time c-finished", "Finished"],
    ["c-dur num", "Duration"]];
  const table = el("table.tasks", { id: "tasks-table", "aria-label": "Tasks, newest first" },
    el("colgroup", {}, cols.map(([c]) => el("col", { class: c.replace(" num", "") }))),
    el("thead", {}, el("tr", {}, cols.map(([c, label]) => el("th", { class: c, scope: "col" }, label)))),
    tbody);
  const summary = el("div.summary-line", { id: "tasks-summary", "aria-live": "polite" });
  const notice = el("div", { id: "tasks-notice", role: "status" });
  const moreBtn = el("button", { id: "load-more", type: "button", onclick: () => loadPage() }, "Load older tasks");
  const footer = el("div.list-footer", { id: "tasks-footer" }, moreBtn);

  fill(main, el("h1", {}, "Tasks"), form, notice, summary, el("div.table-wrap", {}, table), footer);

  function updateSummary() {
    const parts = [`${rows.size} task${rows.size === 1 ? "" : "s"} shown`];
    if (liveAdded) parts.push(`${liveAdded} arrived live`);
    if (exhausted) parts.push("end of history");
    summary.textContent = parts.join(" · ");
  }

  // ---- rows
  function cells(rec) {
    const link = el("a", { href: "#/task/" + encodeURIComponent(rec.task_id), tabindex: "-1" }, rec.function || "?");
    return [
      el("td.c-status", {}, badge(rec.status)),
      el("td.c-task", { title: rec.function }, link),
      el("td.c-id.mono", { title: rec.task_id }, shortId(rec.task_id)),
      el("td.c-pool", {}, rec.pool || "—"),
      el("td.c-worker", { title: rec.worker_id || "" }, rec.worker_id || "—"),
      el("td.c-att.num", {}, rec.attempts ?? "—"),
      el("td.c-time.c-queued", { title: rec.created_at || "" }, timeNode(rec.created_at)),
      el("td.c-time.c-started", { title: rec.started_at || "" }, timeNode(rec.started_at)),
      el("td.c-time.c-finished", { title: rec.completed_at || "" }, timeNode(rec.completed_at)),
      el("td.c-dur.num", {}, fmtDuration(rec.duration_ms)),
    ];
  }

  function paint(entry) {
    const { tr, rec } = entry;
    const key = JSON.stringify(rec);
    if (entry.painted === key) return; // unchanged: keep the DOM (and focus) as it is
    entry.painted = key;
    tr.dataset.status = rec.status || "";
    tr.setAttribute("aria-label", `${rec.function} ${rec.status} ${rec.task_id}`);
    fill(tr, ...cells(rec));
  }

  function makeRow(rec) {
    const tr = el("tr", { tabindex: "0", "data-task-id": rec.task_id });
    const entry = { tr, rec };
    paint(entry);
    return entry;
  }

  function openRow(tr) { location.hash = "#/task/" + encodeURIComponent(tr.dataset.taskId); }
  tbody.addEventListener("click", (e) => {
    const tr = e.target.closest("tr[data-task-id]");
    if (tr && !e.target.closest("a")) openRow(tr);
  });
  tbody.addEventListener("keydown", (e) => {
    const tr = e.target.closest("tr[data-task-id]");
    if (!tr) return;
    if (e.key === "Enter" || e.key === " ") { e.preventDefault(); openRow(tr); }
    else if (e.key === "ArrowDown" && tr.nextElementSibling) { e.preventDefault(); tr.nextElementSibling.focus(); }
    else if (e.key === "ArrowUp") { e.preventDefault(); (tr.previousElementSibling || searchIn).focus(); }
  });

  function clearEmpty() { tbody.querySelector(".empty-row")?.remove(); }
  function showEmptyIfNone() {
    if (rows.size === 0 && !tbody.querySelector(".empty-row")) {
      tbody.append(el("tr.empty-row", {}, el("td", { colspan: String(cols.length) }, loading ? "loading…" : "No tasks match these filters.")));
    }
  }

  /** Insert or update a record; new ones go to their place by id (ids are time-ordered), keeping the view still. */
  function upsert(rec, { live = false, paged = false } = {}) {
    if (!rec || !rec.task_id) return;
    const have = rows.get(rec.task_id);
    if (have) {
      // A terminal status never goes back (events can arrive out of order).
      if (TERMINAL.has(have.rec.status) && !TERMINAL.has(rec.status)) rec = { ...rec, status: have.rec.status };
      have.rec = { ...have.rec, ...rec };
      paint(have);
      return;
    }
    if (!paged && !exhausted && nextBefore && rec.task_id < nextBefore) return; // arrives with a later page
    clearEmpty();
    const entry = makeRow(rec);
    rows.set(rec.task_id, entry);
    let after = null; // the first existing row with a smaller id (pages are older than every row shown)
    if (!paged || (tbody.lastElementChild?.dataset.taskId || "") < rec.task_id) {
      for (const tr of tbody.children) {
        if (tr.dataset.taskId && tr.dataset.taskId < rec.task_id) { after = tr; break; }
      }
    }
    const anchorTop = after ? after.getBoundingClientRect().top : null;
    tbody.insertBefore(entry.tr, after);
    if (live) {
      entry.tr.classList.add("fresh");
      liveAdded += 1;
      // Keep what the reader looks at in place: a row inserted above the viewport scrolls the page by its height.
      if (after && anchorTop !== null && anchorTop < 0) window.scrollBy(0, after.getBoundingClientRect().top - anchorTop);
    }
    updateSummary();
  }

  // ---- paging
  async function loadPage() {
    if (loading || exhausted || disposed) return;
    loading = true;
    moreBtn.disabled = true;
    moreBtn.textContent = "Loading…";
    showEmptyIfNone();
    try {
      const page = await listTasks(apiFilters(), { before: nextBefore, limit: PAGE });
      if (disposed) return;
      clearEmpty();
      for (const rec of page.tasks || []) upsert(rec, { paged: true });
      nextBefore = page.next_before || null;
      exhausted = !nextBefore;
      fill(notice);
      notice.className = "";
    } catch (err) {
      if (disposed) return;
      notice.className = "notice error";
      notice.textContent = `Could not load tasks: ${err.message}`;
    } finally {
      loading = false;
      moreBtn.disabled = false;
      moreBtn.textContent = "Load older tasks";
      moreBtn.classList.toggle("hidden", exhausted);
      clearEmpty();
      showEmptyIfNone();
      updateSummary();
    }
  }

  /** Catch-up without the event stream (or after it reconnects): merge the newest page. */
  async function refreshTop() {
    if (disposed || loading) return;
    try {
      const page = await listTasks(apiFilters(), { limit: PAGE });
      if (disposed) return;
      const newest = tbody.firstElementChild?.dataset.taskId || "";
      for (const rec of (page.tasks || []).slice().reverse()) upsert(rec, { live: rec.task_id > newest && rows.size > 0 });
      if (rows.size) clearEmpty();
    } catch { /* shown by the live indicator */ }
  }

  const sentinelObserver = new IntersectionObserver((entries) => {
    if (entries.some((e) => e.isIntersecting) && rows.size > 0) loadPage();
  }, { rootMargin: "300px" });
  sentinelObserver.observe(footer);
  disposers.push(() => sentinelObserver.disconnect());

  // ---- live
  function matches(ev) {
    if (f.status && ev.status !== f.status) return false;
    if (f.function && ev.function !== f.function) return false;
    if (f.pool && ev.pool !== f.pool) return false;
    if (f.mode && ev.mode !== f.mode) return false;
    if (f.q && !(ev.function || "").toLowerCase().includes(f.q.toLowerCase())) return false;
    if (f.until && (f.range === "custom" || !f.range)) return false; // a fixed window in the past
    return true;
  }

  const dirty = new Set();
  let inFlight = 0;
  function refreshRow(id) {
    dirty.add(id);
    pump();
  }
  function pump() {
    while (inFlight < MAX_FETCHES && dirty.size) {
      const id = dirty.values().next().value;
      dirty.delete(id);
      if (!rows.has(id)) continue;
      inFlight += 1;
      getTask(id).then((rec) => {
        if (!disposed && rows.has(id)) { const { events, ...row } = rec; upsert(row); }
      }).catch(() => {}).finally(() => { inFlight -= 1; pump(); });
    }
  }

  disposers.push(onTaskEvent((raw) => {
    // `status` is the task's status after the event; derive it from the event name if a gateway omits it.
    const ev = raw.status ? raw : { ...raw, status: raw.event === "retrying" ? "queued" : raw.event };
    const have = rows.get(ev.task_id);
    if (have) {
      const patch = { status: ev.status || have.rec.status };
      if (ev.worker_id) patch.worker_id = ev.worker_id;
      if (ev.attempt && ev.attempt > (have.rec.attempts || 0) && ev.event === "running") patch.attempts = ev.attempt;
      if (ev.event === "running" && ev.at) patch.started_at = ev.at;
      if (TERMINAL.has(ev.status) && ev.at) patch.completed_at = ev.at;
      upsert({ ...have.rec, ...patch });
      refreshRow(ev.task_id);
      return;
    }
    if (!matches(ev)) return;
    upsert({
      task_id: ev.task_id, function: ev.function, pool: ev.pool, execution_mode: ev.mode, status: ev.status,
      worker_id: ev.worker_id || null, attempts: ev.event === "running" ? ev.attempt : 0,
      created_at: ev.event === "pending" || ev.event === "queued" ? ev.at : null,
      started_at: ev.event === "running" ? ev.at : null, completed_at: null, duration_ms: null,
    }, { live: true });
    refreshRow(ev.task_id);
  }));

  // Without the stream (not served, or reconnecting), poll the newest page; after a reconnect, catch up once.
  let wasOpen = liveState() === "open";
  disposers.push(onLiveState((s) => {
    if (s === "open" && !wasOpen && rows.size) refreshTop();
    wasOpen = s === "open";
  }));
  const poll = setInterval(() => { if (liveState() !== "open") refreshTop(); }, 3000);
  disposers.push(() => clearInterval(poll));

  updateSummary();
  loadPage();
  return () => { disposed = true; for (const d of disposers) d(); };
}
