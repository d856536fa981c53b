"""Tracing (issue 16): OpenTelemetry spans exported over OTLP/HTTP to a real receiver on loopback (`otlp_collector`,
decoding with `opentelemetry-proto`). A gateway, a fast HTTP worker and a NATS worker, all tracing: the gateway and the
fast worker turned on by `--otlp-endpoint`, the NATS worker by `OTEL_EXPORTER_OTLP_ENDPOINT`, each exporting every
100 ms (`OTEL_BSP_SCHEDULE_DELAY`). A sync call and a queued task each make one connected trace with the expected
spans and parents; an incoming `traceparent` is continued; the trace id is in `GET /tasks/<id>`, the worker's log
lines and the dashboard's task detail; the task's Python code sees the trace context, and a span it starts with the
OpenTelemetry SDK nests under the worker's execution span."""
from __future__ import annotations

import importlib.util
import os
import re
import secrets
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Optional

import pytest

from conftest import (
    APPS_DIR,
    NATS_SERVER_BIN,
    WORKER_BIN,
    REPO_ROOT,
    Launcher,
    NatsServer,
    QueueStack,
    build_manifest,
    post_task,
    wait_for_output,
)
from otlp_collector import Collector, Span

TRACING_APP = APPS_DIR / "tracing_app.py"
DASHBOARD_DIR = REPO_ROOT / "dashboard"
TRACE_ID = re.compile(r"^[0-9a-f]{32}$")
# Where the workers' embedded interpreter finds the OpenTelemetry SDK: this test's own venv, when it is one of the
# interpreter's minor version (the worker refuses another).
OTEL_VENV: Optional[str] = (
    sys.prefix
    if sys.prefix != sys.base_prefix and sys.version_info[:2] == (3, 11)
    and importlib.util.find_spec("opentelemetry.sdk") is not None
    else None
)


@dataclass
class Traced:
    stack: QueueStack
    collector: Collector

    @property
    def url(self) -> str:
        return self.stack.url


@pytest.fixture(scope="module")
def traced(launcher: Launcher) -> Iterable[Traced]:
    if not (os.path.isfile(NATS_SERVER_BIN) and os.access(NATS_SERVER_BIN, os.X_OK)):
        pytest.skip("nats-server is not installed (Debian package nats-server)")
    collector = Collector().start()
    d = launcher.new_dir("tracing")
    stack = QueueStack(launcher=launcher, dir=d, name="tracing", app=TRACING_APP,
                       manifest=build_manifest(TRACING_APP, d / "openapi.json"), ack_wait=30.0,
                       nats=NatsServer(launcher, d), db_path=d / "tasks.sqlite")
    try:
        stack.nats.start()
        env = {"OTEL_BSP_SCHEDULE_DELAY": "100"}
        worker_env = {**env, **({"VIRTUAL_ENV": OTEL_VENV} if OTEL_VENV else {})}
        fast = stack.http_worker("fast", extra_args=["--otlp-endpoint", collector.url], env_extra=worker_env)
        stack.start_gateway(http_pools={"fast": [fast.url]}, env_extra=env,
                            extra_args=["--otlp-endpoint", collector.url, "--dashboard-dir", str(DASHBOARD_DIR)])
        stack.worker("async", env_extra={**worker_env, "OTEL_EXPORTER_OTLP_ENDPOINT": collector.url})
        yield Traced(stack, collector)
    finally:
        stack.stop()
        collector.stop()


def one(spans: list[Span], name: str, service: str) -> Span:
    found = [s for s in spans if s.name == name and s.service == service]
    assert len(found) == 1, f"expected one {name!r} span of {service}, got {found} in {spans}"
    return found[0]


def server_span(spans: list[Span]) -> Span:
    found = [s for s in spans if s.kind == "SERVER" and s.service == "neutrino-gateway"]
    assert len(found) == 1, f"expected the gateway's one request span, got {found}"
    return found[0]


def assert_one_tree(spans: list[Span], root_parent: str = "") -> Span:
    """Every span's parent is a span of the trace, but for one root (whose parent is `root_parent`: none, or the
    caller's span); span ids are unique. Returns the root."""
    ids = [s.span_id for s in spans]
    assert len(ids) == len(set(ids)), f"duplicate span ids in {spans}"
    roots = [s for s in spans if s.parent_span_id not in ids]
    assert len(roots) == 1, f"not one connected trace: roots {roots} in {spans}"
    assert roots[0].parent_span_id == root_parent, roots[0]
    return roots[0]


def has_names(*names: str):
    return lambda spans: set(names) <= {s.name for s in spans}


def check_python_side(result: dict, trace_id: str, execute: Span) -> None:
    assert result["trace_id"] == trace_id, result
    assert result["traceparent"] == f"00-{trace_id}-{execute.span_id}-01", (result, execute)
    if OTEL_VENV is None:
        return
    # opentelemetry-api in the worker: the task runs in the execution span's context, its own span nests under it.
    assert result["otel"] == {"trace_id": trace_id, "span_id": execute.span_id}, result
    assert result["user_span"] == {"trace_id": trace_id, "parent_span_id": execute.span_id}, result


def test_sync_call_is_one_trace(traced: Traced):
    resp = post_task(traced.url, "whoami", {"x": 1})
    assert resp.status == 200, resp
    body = resp.json()
    result = body["result"]
    trace_id = result["trace_id"]
    assert TRACE_ID.match(trace_id or ""), result
    assert traced.stack.record(body["task_id"])["trace_id"] == trace_id

    spans = traced.collector.wait_trace(
        trace_id, has_names("neutrino.call", "neutrino.execute", "neutrino.tasklog.write"))
    request = server_span(spans)
    call = one(spans, "neutrino.call", "neutrino-gateway")
    execute = one(spans, "neutrino.execute", "neutrino-worker")
    write = one(spans, "neutrino.tasklog.write", "neutrino-gateway")
    assert assert_one_tree(spans) is request
    assert request.attributes.get("http.route") and request.attributes.get("http.response.status_code") == 200, request
    assert (call.kind, call.parent_span_id) == ("CLIENT", request.span_id)
    assert (execute.kind, execute.parent_span_id) == ("SERVER", call.span_id)
    assert write.parent_span_id == request.span_id
    for s in (call, execute, write):
        assert s.attributes["neutrino.task_id"] == body["task_id"], s.attributes
        assert s.attributes["neutrino.task"] == "whoami", s.attributes
    assert execute.attributes["neutrino.status"] == "completed"
    assert call.start_ns <= execute.start_ns and execute.end_ns <= call.end_ns, (call, execute)
    check_python_side(result, trace_id, execute)


def test_queued_task_is_one_trace(traced: Traced):
    task_id = traced.stack.submit("whoami_later", {"x": 2})
    record = traced.stack.wait_task(task_id)
    assert record["status"] == "completed", record
    trace_id = record["trace_id"]
    assert TRACE_ID.match(trace_id or ""), record
    result = record["result"]

    spans = traced.collector.wait_trace(
        trace_id,
        lambda ss: has_names("neutrino.enqueue", "neutrino.queue.wait", "neutrino.execute")(ss)
        and sum(s.name == "neutrino.tasklog.write" for s in ss) == 2)
    request = server_span(spans)
    enqueue = one(spans, "neutrino.enqueue", "neutrino-gateway")
    wait = one(spans, "neutrino.queue.wait", "neutrino-worker")
    execute = one(spans, "neutrino.execute", "neutrino-worker")
    queued_write = one(spans, "neutrino.tasklog.write", "neutrino-gateway")
    outcome_write = one(spans, "neutrino.tasklog.write", "neutrino-worker")
    assert assert_one_tree(spans) is request
    assert request.attributes.get("http.response.status_code") == 202, request
    assert (enqueue.kind, enqueue.parent_span_id) == ("PRODUCER", request.span_id)
    assert enqueue.attributes["messaging.destination.name"] == "neutrino.async.whoami_later", enqueue.attributes
    assert queued_write.parent_span_id == request.span_id
    # The worker's spans hang off the enqueue span (the message's traceparent).
    for s in (wait, execute, outcome_write):
        assert s.parent_span_id == enqueue.span_id, s
        assert s.attributes["neutrino.task_id"] == task_id and s.attributes["neutrino.attempt"] == 1, s.attributes
    assert execute.kind == "CONSUMER"
    # The wait starts when JetStream stored the message (after the publish began) and ends before the run starts.
    assert enqueue.start_ns <= wait.start_ns <= wait.end_ns <= execute.start_ns, (enqueue, wait, execute)
    assert execute.end_ns <= outcome_write.start_ns + 1_000_000, (execute, outcome_write)
    check_python_side(result, trace_id, execute)
    # The worker's log lines for the task carry the trace id.
    worker = traced.stack.workers[-1]
    wait_for_output(worker, re.compile(rf"(?m)^(?=.*task_id={task_id})(?=.*trace_id={trace_id}).*task completed"),
                    timeout=30)


@pytest.mark.parametrize("task", ["whoami", "whoami_later"])
def test_incoming_traceparent_is_continued(traced: Traced, task: str):
    trace_id, parent = secrets.token_hex(16), secrets.token_hex(8)
    resp = post_task(traced.url, task, {"x": 3}, headers={"traceparent": f"00-{trace_id}-{parent}-01"})
    assert resp.status in (200, 202), resp
    task_id = resp.json()["task_id"]
    record = traced.stack.wait_task(task_id) if resp.status == 202 else traced.stack.record(task_id)
    assert record["trace_id"] == trace_id, record
    assert record["result"]["trace_id"] == trace_id, record
    # Sync: request, call, execute, task-log write; queued: request, enqueue, two writes, wait, execute.
    spans = traced.collector.wait_trace(trace_id, lambda ss: len(ss) >= (4 if task == "whoami" else 6))
    request = server_span(spans)
    assert request.parent_span_id == parent, request
    assert assert_one_tree(spans, root_parent=parent) is request


def test_malformed_traceparent_starts_a_new_trace(traced: Traced):
    resp = post_task(traced.url, "whoami", {"x": 4}, headers={"traceparent": "00-NOT-A-TRACE-01"})
    assert resp.status == 200, resp
    trace_id = resp.json()["result"]["trace_id"]
    assert TRACE_ID.match(trace_id or ""), resp.json()
    spans = traced.collector.wait_trace(trace_id, lambda ss: len(ss) >= 4)
    assert server_span(spans).parent_span_id == ""


def test_dashboard_shows_the_trace_id(traced: Traced):
    from dashboard_browser import make_driver, missing_requirements

    missing = missing_requirements()
    if missing:
        pytest.skip("browser tests need: " + ", ".join(missing))
    resp = post_task(traced.url, "whoami", {"x": 5})
    assert resp.status == 200, resp
    task_id, trace_id = resp.json()["task_id"], resp.json()["result"]["trace_id"]
    from selenium.webdriver.support.ui import WebDriverWait

    driver = make_driver(1366, 900)
    try:
        driver.get(f"{traced.url}/#/task/{task_id}")
        WebDriverWait(driver, 60, poll_frequency=0.1).until(
            lambda d: trace_id in (d.execute_script(
                "const n = document.querySelector('#trace-id dd'); return n ? n.textContent : ''") or ""))
    finally:
        driver.quit()


def test_tracing_off_stores_no_trace(cluster):
    """The shared cluster traces nothing (no endpoint): a caller's traceparent is not taken up, no trace id is
    stored, the task sees none."""
    trace_id, parent = secrets.token_hex(16), secrets.token_hex(8)
    resp = post_task(cluster.url, "echo", {"x": 1}, headers={"traceparent": f"00-{trace_id}-{parent}-01"})
    assert resp.status == 200, resp
    record = cluster.get(f"/tasks/{resp.json()['task_id']}").json()
    assert record["trace_id"] is None, record


def test_reads_are_not_traced(traced: Traced):
    """Polls and probes make no spans (each would be a trace of its own): only requests acting on tasks do."""
    resp = post_task(traced.url, "whoami", {"x": 6})
    assert resp.status == 200, resp
    for path in (f"/tasks/{resp.json()['task_id']}", "/tasks?limit=5", "/healthz", "/pools"):
        assert traced.stack.get(path).status == 200, path
    # A later traced call's spans arrive after anything the reads would have exported.
    later = post_task(traced.url, "whoami", {"x": 7}).json()["result"]["trace_id"]
    traced.collector.wait_trace(later, lambda ss: len(ss) >= 4)
    with traced.collector._lock:
        methods = {s.attributes.get("http.request.method") for s in traced.collector.spans if s.kind == "SERVER"
                   and s.service == "neutrino-gateway"}
    assert methods == {"POST"}, methods


def test_tracing_without_the_exporter_library_refuses_to_start(tmp_path: Path):
    """swift-otel is in libNeutrinoOTLP.so, loaded only when tracing is on: a process asked to trace that cannot load
    it exits at start with a message naming the library, instead of running untraced."""
    env = {**os.environ, "NEUTRINO_OTLP_LIBRARY": str(tmp_path / "missing" / "libNeutrinoOTLP.so")}
    proc = subprocess.run(
        [str(WORKER_BIN), "--mode", "http", "--pool", "fast", "--app", str(TRACING_APP), "--port", "0",
         "--python-path", str(REPO_ROOT / "python"), "--otlp-endpoint", "http://127.0.0.1:9"],
        env=env, capture_output=True, text=True, timeout=60,
    )
    assert proc.returncode != 0, proc.stdout[-2000:]
    assert "libNeutrinoOTLP.so" in proc.stderr + proc.stdout, (proc.stderr + proc.stdout)[-2000:]
