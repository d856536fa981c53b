// Small DOM and formatting helpers shared by the views.

/** el("div.a.b", {attrs}, ...children): a DOM element. Attributes starting with "on" become listeners. */
export function el(spec, attrs = {}, ...children) {
  const [tag, ...classes] = spec.split(".");
  const node = document.createElement(tag || "div");
  if (classes.length) node.className = classes.join(" ");
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k.startsWith("on") && typeof v === "function") node.addEventListener(k.slice(2), v);
    else if (k === "text") node.textContent = v;
    else if (k === "dataset") Object.assign(node.dataset, v);
    else node.setAttribute(k, v === true ? "" : String(v));
  }
  append(node, children);
  return node;
}

/** Replaces the children of `node` (null, undefined and false are skipped, unlike DOM replaceChildren). */
export function fill(node, ...children) {
  node.replaceChildren();
  append(node, children);
  return node;
}

function append(node, children) {
  for (const c of children) {
    if (c === undefined || c === null || c === false) continue;
    if (Array.isArray(c)) append(node, c);
    else node.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
}

export const TERMINAL = new Set(["completed", "failed", "cancelled", "timed_out"]);
export const RETRYABLE = new Set(["failed", "timed_out", "cancelled"]);
export const STATUSES = ["pending", "queued", "running", "completed", "failed", "cancelled", "timed_out"];
export const MODES = ["sync", "async", "gpu"];

export function badge(status) {
  return el("span.badge.s-" + (status || "unknown"), { "data-status": status || "" }, (status || "?").replace("_", " "));
}

export function parseTime(v) {
  if (v === null || v === undefined || v === "") return null;
  const t = typeof v === "number" ? v : Date.parse(v);
  return Number.isFinite(t) ? t : null;
}

const pad = (n, w = 2) => String(n).padStart(w, "0");

/** Local wall-clock time: "14:03:07.120" today, "Mar 3 14:03:07" on other days. */
export function fmtTime(v) {
  const t = parseTime(v);
  if (t === null) return "—";
  const d = new Date(t);
  const hms = `${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}`;
  if (new Date().toDateString() === d.toDateString()) return `${hms}.${pad(d.getMilliseconds(), 3)}`;
  return `${d.toLocaleString(undefined, { month: "short", day: "numeric" })} ${hms}`;
}

/** fmtTime as DOM, the milliseconds in their own span (hidden on narrow screens). */
export function timeNode(v) {
  const text = fmtTime(v);
  const m = /^(\d\d:\d\d:\d\d)(\.\d{3})$/.exec(text);
  if (!m) return document.createTextNode(text);
  const span = document.createElement("span");
  span.append(m[1]);
  const ms = document.createElement("span");
  ms.className = "ms";
  ms.textContent = m[2];
  span.append(ms);
  return span;
}

export function fmtFull(v) {
  const t = parseTime(v);
  return t === null ? "—" : `${new Date(t).toLocaleString()} (${new Date(t).toISOString()})`;
}

export function fmtDuration(ms) {
  if (ms === null || ms === undefined || !Number.isFinite(Number(ms))) return "—";
  ms = Number(ms);
  if (ms < 1) return `${ms.toFixed(2)} ms`;
  if (ms < 1000) return `${ms < 10 ? ms.toFixed(1) : Math.round(ms)} ms`;
  const s = ms / 1000;
  if (s < 60) return `${s.toFixed(s < 10 ? 2 : 1)} s`;
  const m = Math.floor(s / 60);
  if (m < 60) return `${m}m ${Math.round(s % 60)}s`;
  return `${Math.floor(m / 60)}h ${m % 60}m`;
}

export function fmtNumber(v, digits = 0) {
  if (v === null || v === undefined || !Number.isFinite(Number(v))) return "—";
  return Number(v).toLocaleString(undefined, { maximumFractionDigits: digits, minimumFractionDigits: 0 });
}

export function fmtAgo(v) {
  const t = parseTime(v);
  if (t === null) return "—";
  const s = Math.max(0, (Date.now() - t) / 1000);
  if (s < 60) return `${Math.round(s)}s ago`;
  if (s < 3600) return `${Math.round(s / 60)}m ago`;
  return `${Math.round(s / 3600)}h ago`;
}

export function shortId(id) {
  return id ? (id.length > 13 ? id.slice(0, 8) + "…" + id.slice(-4) : id) : "—";
}

export function looksLikeTaskId(s) {
  return /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i.test(s) || /^[0-9A-HJKMNP-TV-Z]{26}$/i.test(s);
}

// ---------------------------------------------------------------------------------------- JSON rendering
// Pretty JSON as DOM: containers whose text is large and long strings are collapsed into <details>.
const COLLAPSE_CHARS = 400;
const LONG_STRING = 240;

export function renderJSON(value) {
  const pre = el("pre.json");
  if (value === undefined) { pre.textContent = "—"; return pre; }
  pre.append(jsonNode(value, 0, true));
  return pre;
}

function jsonNode(v, depth, top = false) {
  if (v === null) return el("span.l", {}, "null");
  if (typeof v === "boolean") return el("span.l", {}, String(v));
  if (typeof v === "number") return el("span.n", {}, String(v));
  if (typeof v === "string") {
    const quoted = JSON.stringify(v);
    if (quoted.length <= LONG_STRING) return el("span.s", {}, quoted);
    return el("details", {}, el("summary", { title: `${v.length} characters` },
      el("span.closed-hint", {}, el("span.s", {}, quoted.slice(0, 80) + "…"), el("span.muted", {}, ` (${fmtNumber(v.length)} chars)`)),
      el("span.open-hint.muted", {}, "▾ ")), el("span.s", {}, quoted));
  }
  const isArr = Array.isArray(v);
  const entries = isArr ? v.map((x, i) => [i, x]) : Object.entries(v);
  const [open, close] = isArr ? ["[", "]"] : ["{", "}"];
  if (entries.length === 0) return document.createTextNode(open + close);
  const indent = "  ".repeat(depth + 1);
  const body = document.createDocumentFragment();
  body.append(open + "\n");
  entries.forEach(([k, x], i) => {
    body.append(indent);
    if (!isArr) body.append(el("span.k", {}, JSON.stringify(k)), ": ");
    body.append(jsonNode(x, depth + 1));
    body.append((i < entries.length - 1 ? "," : "") + "\n");
  });
  body.append("  ".repeat(depth) + close);
  let size = 0;
  try { size = JSON.stringify(v).length; } catch { size = 0; }
  if (size <= COLLAPSE_CHARS && !(top && size > 20000)) {
    const span = el("span");
    span.append(body);
    return span;
  }
  const what = isArr ? `${entries.length} items` : `${entries.length} keys`;
  const details = el("details", top && size <= 20000 ? { open: true } : {},
    el("summary", {}, el("span.closed-hint", {}, open, el("span.muted", {}, ` … ${what}, ${fmtNumber(size)} chars `), close),
      el("span.open-hint.muted", {}, "▾ ")));
  details.append(body);
  return details;
}

/** A value that may be JSON text (the task log stores JSON columns) decoded. */
export function decodeMaybe(v) {
  if (typeof v !== "string") return v;
  const s = v.trim();
  if (!(s.startsWith("{") || s.startsWith("["))) return v;
  try { return JSON.parse(s); } catch { return v; }
}

// -------------------------------------------------------------------------------------------- routing

/** The hash route: {path: ["tasks"], params: URLSearchParams}. */
export function currentRoute() {
  const raw = location.hash.replace(/^#/, "") || "/tasks";
  const [p, q = ""] = raw.split("?");
  const path = p.split("/").filter(Boolean).map(decodeURIComponent);
  return { path, params: new URLSearchParams(q) };
}

export function routeHref(path, params) {
  const q = params && [...params.keys()].length ? "?" + params.toString() : "";
  return "#/" + path + q;
}
