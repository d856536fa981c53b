"""The tracing test's app: each task reports the trace context it sees (`current_task().traceparent`) and, when
OpenTelemetry is importable in the worker, the current OpenTelemetry span and a span of its own started there (the
user's span must nest under the worker's execution span). It records that span with the OpenTelemetry SDK into
memory (no exporter, no network)."""
from __future__ import annotations

from neutrino import App, current_task

app = App("tracing")

try:
    from opentelemetry import trace
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
except ImportError:  # the worker's environment has no OpenTelemetry: the tasks still report the traceparent
    trace = None
else:
    _exporter = InMemorySpanExporter()
    _provider = TracerProvider()
    _provider.add_span_processor(SimpleSpanProcessor(_exporter))
    _tracer = _provider.get_tracer("tracing_app")


def _report(x: int) -> dict:
    task = current_task()
    out: dict = {"x": x, "traceparent": task.traceparent, "trace_id": task.trace_id, "otel": None, "user_span": None}
    if trace is None:
        return out
    current = trace.get_current_span().get_span_context()
    if current.is_valid:
        out["otel"] = {"trace_id": format(current.trace_id, "032x"), "span_id": format(current.span_id, "016x")}
    with _tracer.start_as_current_span("user.work") as span:
        ctx = span.get_span_context()
        parent = span.parent
        out["user_span"] = {
            "trace_id": format(ctx.trace_id, "032x"),
            "parent_span_id": format(parent.span_id, "016x") if parent is not None else None,
        }
    return out


@app.task()
def whoami(x: int) -> dict:
    return _report(x)


@app.task(execution_mode="async", timeout_secs=60)
def whoami_later(x: int) -> dict:
    print(f"whoami_later {x}")
    return _report(x)
