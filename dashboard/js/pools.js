// The pools view: GET /pools once a second; per pool a queue chart (kept in memory for the last minutes),
// throughput, latency, failure rate, workers with busy slots, and the autoscaler's decisions.
import { getPools } from "./api.js";
import { el, fill, fmtDuration, fmtNumber, fmtAgo, fmtTime } from "./util.js";
import { createChart, drawChart } from "./chart.js";

const WINDOW_MS = 5 * 60e3;
const history = new Map(); // pool name -> [{t, depth, inFlight}]
let latest = null;
let lastError = null;
let timer = null;
let fastPolling = false;
const subscribers = new Set();

async function pollOnce() {
  try {
    latest = await getPools();
    lastError = null;
    const t = Date.now();
    for (const p of latest.pools || []) {
      const q = p.queue;
      const sample = q ? { t, depth: q.depth ?? (q.pending || 0) + (q.in_flight || 0), inFlight: q.in_flight || 0 }
        : { t, depth: 0, inFlight: p.running ?? busySlots(p) };
      const h = history.get(p.name) || [];
      h.push(sample);
      while (h.length && h[0].t < t - WINDOW_MS) h.shift();
      history.set(p.name, h);
    }
  } catch (err) {
    lastError = err;
  }
  for (const fn of subscribers) fn();
}

function loop() {
  clearTimeout(timer);
  const delay = document.visibilityState === "hidden" ? 10000 : fastPolling ? 1000 : 5000;
  timer = setTimeout(async () => { await pollOnce(); loop(); }, delay);
}

/** Keeps a coarse history (every 5 s) while other views are open, so the chart has a past when opened. */
export function startPoolsSampler() {
  if (timer) return;
  pollOnce().then(loop);
}

const busySlots = (p) => (p.workers || []).reduce((n, w) => n + (w.busy || 0), 0);
const totalSlots = (p) => (p.workers || []).reduce((n, w) => n + (w.concurrency || 0), 0);

function stat(label, value, id) {
  return el("div.stat", id ? { "data-stat": id } : {}, el("div.v", {}, value), el("div.l", {}, label));
}

function slots(w) {
  const n = Math.min(64, w.concurrency || 0);
  const box = el("span.slots", { title: `${w.busy || 0} of ${w.concurrency || 0} slots busy` });
  for (let i = 0; i < n; i++) box.append(el("i", { class: i < (w.busy || 0) ? "busy" : "" }));
  return box;
}

function poolCard(name) {
  const chart = createChart(`queue depth and in-flight tasks of pool ${name}, last 5 minutes`);
  const card = el("section.panel.pool", { "data-pool": name, "aria-label": `pool ${name}` });
  const parts = {
    head: el("h2"), stats: el("div.stats"), chart,
    legend: el("div.legend", {}, el("span", {}, el("span.sw", { style: "background:var(--chart-depth)" }), "queue depth"),
      el("span", {}, el("span.sw", { style: "background:var(--chart-flight)" }), "in flight")),
    workersSummary: el("summary"), workersList: el("ul.workers-list"),
    scaling: el("div.scaling"),
  };
  parts.workers = el("details.workers", { open: true }, parts.workersSummary, parts.workersList);
  card.append(parts.head, parts.stats, parts.chart, parts.legend, parts.workers, parts.scaling);
  card._parts = parts;
  return card;
}

function paintCard(card, p) {
  const { head, stats, chart, workersSummary, workersList, scaling } = card._parts;
  fill(head, p.name, el("span.badge.mode", {}, p.mode));
  const q = p.queue;
  const lm = p.last_minute || {};
  const finished = (lm.completed || 0) + (lm.failed || 0);
  const failRate = finished ? (lm.failed || 0) / finished : null;
  fill(stats, 
    q ? stat("queue depth", fmtNumber(q.depth), "depth") : stat("running", fmtNumber(p.running ?? busySlots(p)), "running"),
    q ? stat("pending", fmtNumber(q.pending), "pending") : null,
    !q && p.waiting_calls ? stat("waiting for room", fmtNumber(p.waiting_calls), "waiting") : null,
    q ? stat("in flight", fmtNumber(q.in_flight), "in_flight") : null,
    q && q.redelivered ? stat("redelivered", fmtNumber(q.redelivered), "redelivered") : null,
    q ? stat("oldest queued", q.oldest_queued_age_seconds ? fmtDuration(q.oldest_queued_age_seconds * 1000) : "—", "oldest") : null,
    stat("workers alive", `${fmtNumber(p.workers_alive)}`, "workers"),
    p.restarts ? stat("restarts", fmtNumber(p.restarts), "restarts") : null,
    stat("busy slots", `${busySlots(p)} / ${totalSlots(p)}`, "busy"),
    stat("per second (1 min)", fmtNumber(lm.per_second, 2), "throughput"),
    stat("done / failed (1 min)", `${fmtNumber(lm.completed)} / ${fmtNumber(lm.failed)}`, "counts"),
    stat("failure rate", failRate === null ? "—" : `${(failRate * 100).toFixed(1)} %`, "failure_rate"),
    stat("p50", fmtDuration(lm.p50_ms), "p50"),
    stat("p95", fmtDuration(lm.p95_ms), "p95"),
  );
  drawChart(chart, history.get(p.name) || [], { windowMs: WINDOW_MS });

  const workers = p.workers || [];
  workersSummary.textContent = `Workers (${workers.length})`;
  fill(workersList, ...(workers.length ? workers.map((w) => el("li", { "data-worker": w.worker_id },
    el("span.wid.mono", { title: `${w.host || ""} pid ${w.pid ?? "?"} ${w.url || ""} · v${w.version || "?"}` }, w.worker_id),
    w.gpu ? el("span.badge", {}, "gpu") : null, slots(w),
    w.restarts ? el("span.badge.warn", { title: "restarted by its supervisor (crashes, wedged interpreter, recycling)", "data-restarts": String(w.restarts) },
      `${w.restarts} restart${w.restarts === 1 ? "" : "s"}`) : null,
    el("span.muted", { title: w.last_seen || "" }, `seen ${fmtAgo(w.last_seen)}`)))
    : [el("li.muted", {}, q ? "no worker alive: tasks wait in the queue" : "no worker alive")]));

  const s = p.scaling;
  if (!s) { fill(scaling); return; }
  const decisions = (s.decisions || []).slice(-5).reverse();
  fill(scaling, 
    el("h3.muted", { style: "font-size:.8rem;margin:.6rem 0 .2rem;text-transform:uppercase" }, "Scaling"),
    el("div", { "data-scaling": "" }, el("strong", {}, `${s.current ?? "?"} → ${s.desired ?? "?"}`), " replicas ",
      el("span.muted", {}, `(min ${s.min}, max ${s.max}, target ${s.target}${s.scale_to_zero ? ", scales to zero" : ""})`)),
    s.reason ? el("div.muted", { style: "font-size:.82rem" }, s.reason) : null,
    decisions.length ? el("ul.decisions", {}, decisions.map((d) =>
      el("li", {}, el("span.mono", { title: d.at }, fmtTime(d.at)), ` ${d.from} → ${d.to}: ${d.reason || ""}`))) : null);
}

export function renderPools(main) {
  const notice = el("div", { id: "pools-notice", role: "status" });
  const meta = el("div.summary-line", { id: "pools-meta" });
  const grid = el("div.pools", { id: "pools" });
  fill(main, el("h1", {}, "Pools"), notice, meta, grid);
  const cards = new Map();

  function paint() {
    if (lastError) {
      notice.className = "notice error";
      notice.textContent = lastError.status === 404 ? "This gateway does not serve /pools." : `Could not load /pools: ${lastError.message}`;
    } else { notice.className = ""; notice.textContent = ""; }
    if (!latest) return;
    meta.textContent = `updated ${fmtTime(latest.updated_at)}` + (latest.dlq ? ` · dead-letter queue: ${fmtNumber(latest.dlq.messages)} messages` : "");
    const seen = new Set();
    for (const p of latest.pools || []) {
      seen.add(p.name);
      let card = cards.get(p.name);
      if (!card) { card = poolCard(p.name); cards.set(p.name, card); grid.querySelector(":scope > p")?.remove(); grid.append(card); }
      paintCard(card, p);
    }
    for (const [name, card] of cards) if (!seen.has(name)) { card.remove(); cards.delete(name); }
    if (!cards.size) fill(grid, el("p.muted", {}, "No pools."));
  }

  subscribers.add(paint);
  fastPolling = true;
  startPoolsSampler();
  paint();
  pollOnce().then(loop);
  const onResize = () => paint();
  window.addEventListener("resize", onResize);
  return () => {
    subscribers.delete(paint);
    fastPolling = false;
    window.removeEventListener("resize", onResize);
  };
}
