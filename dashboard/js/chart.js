// A small time-series chart drawn as inline SVG (no library): an area for queue depth, a dashed line for in-flight.
import { fill } from "./util.js";

const NS = "http://www.w3.org/2000/svg";

function svgEl(tag, attrs = {}, text) {
  const n = document.createElementNS(NS, tag);
  for (const [k, v] of Object.entries(attrs)) n.setAttribute(k, String(v));
  if (text !== undefined) n.textContent = text;
  return n;
}

export function createChart(label) {
  const svg = svgEl("svg", { class: "chart", role: "img", "aria-label": label, preserveAspectRatio: "none" });
  svg.append(svgEl("title", {}, label));
  return svg;
}

/** Draws `samples` ([{t, depth, inFlight}], t in ms) over the last `windowMs` into `svg`. */
export function drawChart(svg, samples, { windowMs = 5 * 60e3, now = Date.now() } = {}) {
  const W = Math.max(200, Math.round(svg.clientWidth || 480));
  const H = Math.max(80, Math.round(svg.clientHeight || 120));
  const padL = 28, padR = 6, padT = 8, padB = 16;
  const iw = W - padL - padR, ih = H - padT - padB;
  svg.setAttribute("viewBox", `0 0 ${W} ${H}`);
  const title = svg.querySelector("title");
  fill(svg, title);

  const start = now - windowMs;
  const pts = samples.filter((s) => s.t >= start);
  const max = Math.max(1, ...pts.map((s) => Math.max(s.depth || 0, s.inFlight || 0)));
  const nice = niceCeil(max);
  const x = (t) => padL + ((t - start) / windowMs) * iw;
  const y = (v) => padT + ih - (v / nice) * ih;

  for (const frac of [0, 0.5, 1]) {
    const yy = y(nice * frac);
    svg.append(svgEl("line", { class: "grid", x1: padL, x2: W - padR, y1: yy, y2: yy }));
    svg.append(svgEl("text", { class: "axis", x: padL - 4, y: yy + 3, "text-anchor": "end" }, fmt(nice * frac)));
  }
  const minutes = Math.round(windowMs / 60e3);
  svg.append(svgEl("text", { class: "axis", x: padL, y: H - 3 }, `−${minutes} min`));
  svg.append(svgEl("text", { class: "axis", x: W - padR, y: H - 3, "text-anchor": "end" }, "now"));

  if (pts.length === 0) return;
  const line = (key) => pts.map((s, i) => `${i ? "L" : "M"}${x(s.t).toFixed(1)},${y(s[key] || 0).toFixed(1)}`).join(" ");
  const depthLine = line("depth");
  const area = `${depthLine} L${x(pts[pts.length - 1].t).toFixed(1)},${y(0)} L${x(pts[0].t).toFixed(1)},${y(0)} Z`;
  svg.append(svgEl("path", { class: "depth", d: area }));
  svg.append(svgEl("path", { class: "flight", d: line("inFlight") }));
}

function niceCeil(v) {
  const p = Math.pow(10, Math.floor(Math.log10(v)));
  for (const m of [1, 2, 5, 10]) if (m * p >= v) return m * p;
  return 10 * p;
}

function fmt(v) {
  return v >= 1000 ? `${(v / 1000).toFixed(v % 1000 ? 1 : 0)}k` : String(Math.round(v * 10) / 10);
}
