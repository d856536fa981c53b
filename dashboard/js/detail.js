// The task detail view: the record, args/result/error, progress, the event timeline, cancel and retry.
import { getTask, cancelTask, retryTask, onTaskEvent, can } from "./api.js";
import { el, fill, badge, fmtFull, fmtTime, fmtDuration, renderJSON, decodeMaybe, TERMINAL, RETRYABLE } from "./util.js";

/** A modal yes/no question on the page's <dialog>; resolves true on "yes". */
export function confirmDialog(title, text, yesLabel) {
  const dlg = document.getElementById("confirm");
  document.getElementById("confirm-title").textContent = title;
  document.getElementById("confirm-text").textContent = text;
  document.getElementById("confirm-yes").textContent = yesLabel;
  const opener = document.activeElement;
  return new Promise((resolve) => {
    dlg.returnValue = "";
    dlg.addEventListener("close", () => {
      resolve(dlg.returnValue === "yes");
      if (opener && opener.focus) opener.focus();
    }, { once: true });
    dlg.showModal();
    document.getElementById("confirm-no").focus();
  });
}

export function renderDetail(main, id, params) {
  let disposed = false;
  let rec = null;
  let timer = null;
  const head = el("div.detail-head");
  const notice = el("div", { id: "detail-notice", role: "status", "aria-live": "polite" });
  const body = el("div", { id: "detail-body" }, el("p.muted", {}, "loading…"));
  const from = params.get("retry_of");
  fill(main, 
    el("p", {}, el("a", { href: "#/tasks", id: "back-to-tasks" }, "← all tasks")),
    head, notice,
    from ? el("p.muted", { id: "retry-of" }, "Retry of ", el("a", { href: "#/task/" + encodeURIComponent(from) }, from)) : null,
    body);

  function say(text, error = false) {
    notice.className = error ? "notice error" : "notice";
    notice.textContent = text;
  }

  async function load() {
    try {
      const next = await getTask(id);
      const changed = JSON.stringify(next) !== JSON.stringify(rec);
      rec = next;
      if (!disposed && changed) paint();
    } catch (err) {
      if (disposed) return;
      if (err.status === 404) {
        fill(head, el("h1", {}, "Task not found"));
        fill(body, el("p", { id: "not-found" }, `No task with id ${id}.`));
      } else say(`Could not load the task: ${err.message}`, true);
    }
    schedule();
  }

  // While the task is not terminal, reload every 2 s as well (progress updates are not lifecycle events).
  function schedule() {
    clearTimeout(timer);
    if (disposed) return;
    if (!rec || !TERMINAL.has(rec.status)) timer = setTimeout(load, 2000);
  }

  let debounce = null;
  const off = onTaskEvent((ev) => {
    if (ev.task_id !== id) return;
    clearTimeout(debounce);
    debounce = setTimeout(load, 150);
  });

  async function doCancel() {
    const ok = await confirmDialog("Cancel this task?",
      `${rec.function} (${id}) is ${rec.status}. A queued task will never run; a running one is interrupted.`, "Cancel task");
    if (!ok) return;
    const r = await cancelTask(id).catch((e) => ({ status: 0, data: { error: { message: e.message } } }));
    if (r.status === 200 || r.status === 202) say(r.status === 200 ? "Cancelled." : "Cancelling: the worker interrupts the task.");
    else say(`Cancel refused (${r.status}): ${r.data?.error?.message || "error"}`, true);
    load();
  }

  async function doRetry() {
    const ok = await confirmDialog("Retry this task?",
      `Submits ${rec.function} again with the same arguments as a new task.`, "Retry");
    if (!ok) return;
    const r = await retryTask(id).catch((e) => ({ status: 0, data: { error: { message: e.message } } }));
    const newId = r.data && (r.data.task_id || (r.data.error && r.data.error.task_id));
    if (newId && newId !== id && r.status !== 404 && r.status !== 409) {
      location.hash = `#/task/${encodeURIComponent(newId)}?retry_of=${encodeURIComponent(id)}`;
    } else say(`Retry refused (${r.status}): ${r.data?.error?.message || "error"}`, true);
  }

  function paint() {
    const terminal = TERMINAL.has(rec.status);
    fill(head, 
      el("h1", { id: "detail-title" }, rec.function, " ", el("span.mono.muted", {}, rec.task_id)),
      el("span", { id: "detail-status" }, badge(rec.status)),
      // Cancel and Retry need the admin scope: a read-only key does not see them.
      can("admin") ? el("div.actions", {},
        el("button", { id: "cancel-task", type: "button", disabled: terminal, onclick: doCancel,
          title: terminal ? "finished tasks cannot be cancelled" : "cancel this task" }, "Cancel"),
        RETRYABLE.has(rec.status)
          ? el("button.primary", { id: "retry-task", type: "button", onclick: doRetry }, "Retry") : null) : null);

    const fact = (label, value, attrs = {}) => el("div", attrs, el("dt", {}, label), el("dd", {}, value ?? "—"));
    const facts = el("dl.facts", { id: "facts" },
      fact("Task", rec.function), fact("Status", rec.status), fact("Mode", rec.execution_mode), fact("Pool", rec.pool),
      fact("Worker", rec.worker_id), fact("Attempts", String(rec.attempts ?? "—")),
      fact("Submitted by", rec.submitted_by, { id: "submitted-by" }),
      // The OpenTelemetry trace id (tracing on, or a traceparent from the caller): search it in Jaeger/Tempo.
      fact("Trace", rec.trace_id ? el("span.mono", { title: "OpenTelemetry trace id" }, rec.trace_id) : null, { id: "trace-id" }),
      fact("Queued", fmtFull(rec.created_at)), fact("Started", fmtFull(rec.started_at)),
      fact("Finished", fmtFull(rec.completed_at)), fact("Duration", fmtDuration(rec.duration_ms)));

    const parts = [el("section.panel", {}, facts)];

    if (rec.progress !== null && rec.progress !== undefined || rec.progress_message) {
      const frac = Math.max(0, Math.min(1, Number(rec.progress) || 0));
      parts.push(el("section", { id: "progress" }, el("h2", {}, "Progress"),
        el("div.progress", {}, el("progress", { max: "1", value: String(frac), "aria-label": "progress" }),
          el("span", {}, `${Math.round(frac * 100)} %`), rec.progress_message ? el("span.muted", {}, rec.progress_message) : null)));
    }

    const error = decodeMaybe(rec.error);
    if (error) {
      const e = typeof error === "object" ? error : { message: String(error) };
      parts.push(el("section.panel.error-box", { id: "error" }, el("h2", {}, "Error"),
        el("p.error-title", { id: "error-title" }, el("span", { id: "error-type" }, e.type || "Error"), ": ",
          el("span", { id: "error-message" }, e.message || "")),
        e.traceback ? el("pre.traceback", { id: "traceback" }, e.traceback) : el("p.muted", {}, "no traceback")));
    }

    parts.push(el("div.two-col", {},
      el("section", { id: "args" }, el("h2", {}, "Arguments"), renderJSON(decodeMaybe(rec.args))),
      el("section", { id: "result" }, el("h2", {}, "Result"),
        rec.result === null || rec.result === undefined ? el("p.muted", {}, terminal ? "no result" : "not finished yet")
          : renderJSON(decodeMaybe(rec.result)))));

    if (rec.output) {
      parts.push(el("section.panel", { id: "output" }, el("h2", {}, "Output"),
        el("pre.traceback", { id: "output-text" }, rec.output)));
    }

    const events = rec.events || [];
    parts.push(el("section", { id: "timeline" }, el("h2", {}, `Timeline (${events.length} events)`),
      el("div.table-wrap", {}, el("table.timeline", { "aria-label": "Lifecycle events" },
        el("thead", {}, el("tr", {}, ["Event", "Time", "Worker", "Attempt", "Detail"].map((h) => el("th", { scope: "col" }, h)))),
        el("tbody", { id: "timeline-rows" }, events.length ? events.map((ev) => el("tr", { "data-event": ev.event },
          el("td", {}, badge(ev.event)), el("td.mono", { title: ev.at }, fmtTime(ev.at)),
          el("td", {}, ev.worker_id || "—"), el("td", {}, String(ev.attempt ?? "—")),
          el("td", {}, ev.detail ? detailText(ev.detail) : "")))
          : el("tr", {}, el("td", { colspan: "5" }, "no events recorded")))))));
    fill(body, ...parts);
  }

  load();
  return () => { disposed = true; clearTimeout(timer); clearTimeout(debounce); off(); };
}

function detailText(d) {
  const v = decodeMaybe(d);
  if (typeof v !== "object" || v === null) return String(v);
  const s = JSON.stringify(v);
  return s.length > 300 ? el("details", {}, el("summary", {}, s.slice(0, 80) + "…"), el("pre.json", {}, JSON.stringify(v, null, 2))) : s;
}
