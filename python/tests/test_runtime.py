"""``neutrino._runtime``: what the Swift worker calls through the C API."""

from __future__ import annotations

import ctypes
import json
import sys
import threading
from pathlib import Path

import pytest

from neutrino import _runtime as runtime
from neutrino import current_task
from neutrino._runtime import TaskError

APP_SOURCE = '''
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Optional

from neutrino import App, current_task

app = App("runtime_test")


class QuotaExceeded(Exception):
    """A custom error type."""


@dataclass
class Rect:
    w: float
    h: float


@dataclass
class Scene:
    rects: list[Rect]
    focus: Optional[Rect] = None


@app.task()
def echo(x: int, label: str = "") -> dict:
    return {"x": x, "label": label}


@app.task()
def boom(message: str) -> None:
    raise ValueError(message)  # BOOM-LINE


@app.task()
def quota() -> None:
    raise QuotaExceeded("over the limit")


@app.task()
def inner_type_error() -> None:
    return len(5)  # TYPE-ERROR-LINE


@app.task()
def calls_helper(n: int) -> int:
    return helper(n)


def helper(n: int) -> int:
    return 1 // n


@app.task()
def unserialisable() -> object:
    return {"values": {1, 2}}


@app.task()
def nan() -> float:
    return float("nan")


@app.task()
def context() -> dict:
    task = current_task()
    return {"id": task.id, "name": task.name, "attempt": task.attempt, "pool": task.pool}


@app.task()
def traced() -> dict:
    task = current_task()
    out = {"traceparent": task.traceparent, "trace_id": task.trace_id}
    try:
        from opentelemetry import trace
    except ImportError:
        return out
    ctx = trace.get_current_span().get_span_context()
    out["otel"] = [format(ctx.trace_id, "032x"), format(ctx.span_id, "016x")] if ctx.is_valid else None
    return out


@app.task()
async def co_traced() -> dict:
    return traced()


@app.task()
def unicode(text: str) -> str:
    return text + " ✓"


@app.task()
def area(rect: Rect) -> Rect:
    assert isinstance(rect, Rect)
    return Rect(rect.w * rect.h, 1.0)


@app.task()
def scene_area(scene: Scene) -> float:
    total = sum(r.w * r.h for r in scene.rects)
    return total + (scene.focus.w if scene.focus else 0)


@app.task(execution_mode="async", pool="slow", timeout_secs=60, retries=2)
def slow(seconds: float) -> str:
    time.sleep(seconds)
    return "done"


@app.task()
def exits() -> None:
    raise SystemExit(3)


@app.task()
async def co_echo(x: int) -> dict:
    import asyncio

    await asyncio.sleep(0)
    print("co", x)
    return {"x": x, "id": current_task().id}


@app.task()
async def co_fail() -> None:
    raise KeyError("nope")
'''


@pytest.fixture(scope="module")
def loaded(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("runtime") / "runtime_app.py"
    path.write_text(APP_SOURCE)
    specs = json.loads(runtime.load(str(path)))
    assert specs[0] == {
        "name": "echo", "execution_mode": "sync", "pool": "fast", "timeout_ms": 5000, "retries": 0, "coroutine": False
    }
    assert {
        "name": "slow", "execution_mode": "async", "pool": "slow", "timeout_ms": 60000, "retries": 2, "coroutine": False
    } in specs
    assert {"name": "co_echo", "execution_mode": "sync", "pool": "fast", "timeout_ms": 5000, "retries": 0,
            "coroutine": True} in specs
    return path


def invoke(name: str, args: object = None, **extra: object) -> bytes:
    payload = {"args": {} if args is None else args, **extra}
    return runtime.invoke(name, json.dumps(payload).encode())


def error_of(name: str, payload: bytes) -> dict:
    with pytest.raises(TaskError) as info:
        runtime.invoke(name, payload)
    error = json.loads(info.value.payload)
    assert set(error) == {"type", "message", "traceback"}
    assert info.value.payload == info.value.args[0]
    return error


def test_load_returns_specs(loaded: Path) -> None:
    assert isinstance(runtime.load(str(loaded)), bytes)


def test_success_bytes(loaded: Path) -> None:
    assert invoke("echo", {"x": 3}) == b'{"x":3,"label":""}'
    assert invoke("echo", {"x": 3, "label": "hi"}, task_id="t", attempt=1, pool="fast") == b'{"x":3,"label":"hi"}'
    assert runtime.invoke("echo", b'{"args": {"x": 1}}') == b'{"x":1,"label":""}'


def test_unicode_is_utf8_not_escaped(loaded: Path) -> None:
    assert invoke("unicode", {"text": "héllo"}) == '"héllo ✓"'.encode()


def test_exception_payload(loaded: Path) -> None:
    error = error_of("boom", b'{"args":{"message":"kaput"}}')
    assert error["type"] == "ValueError"
    assert error["message"] == "kaput"
    trace = error["traceback"]
    assert trace.startswith("Traceback (most recent call last):\n")
    assert str(loaded) in trace and "in boom" in trace and "BOOM-LINE" in trace
    assert trace.rstrip().endswith("ValueError: kaput")
    assert "_runtime" not in trace and "func(**args)" not in trace


def test_custom_exception_type_is_qualified(loaded: Path) -> None:
    error = error_of("quota", b'{"args":{}}')
    assert error["type"] == "runtime_app.QuotaExceeded"
    assert error["message"] == "over the limit"


def test_traceback_includes_helper_frames(loaded: Path) -> None:
    error = error_of("calls_helper", b'{"args":{"n":0}}')
    assert error["type"] == "ZeroDivisionError"
    assert "in calls_helper" in error["traceback"] and "in helper" in error["traceback"]


def test_missing_argument(loaded: Path) -> None:
    error = error_of("echo", b'{"args":{}}')
    assert error["type"] == "InvalidArguments"
    assert "missing 1 required positional argument: 'x'" in error["message"]


def test_unknown_argument(loaded: Path) -> None:
    error = error_of("echo", b'{"args":{"x":1,"y":2}}')
    assert error["type"] == "InvalidArguments"
    assert "unexpected keyword argument 'y'" in error["message"]


def test_type_error_inside_the_task_is_not_invalid_arguments(loaded: Path) -> None:
    error = error_of("inner_type_error", b'{"args":{}}')
    assert error["type"] == "TypeError"
    assert "TYPE-ERROR-LINE" in error["traceback"]


@pytest.mark.parametrize(
    "payload, fragment",
    [
        (b"not json", "not valid JSON"),
        (b"\xff\xfe\x00", "not valid JSON"),
        (b"[1, 2]", "must be a JSON object"),
        (b'{"args": [1]}', "args must be a JSON object, not an array"),
        (b'{"args": null}', "not null"),
    ],
)
def test_bad_payload(loaded: Path, payload: bytes, fragment: str) -> None:
    error = error_of("echo", payload)
    assert error["type"] == "InvalidArguments"
    assert fragment in error["message"]


def test_args_may_be_omitted(loaded: Path) -> None:
    assert runtime.invoke("context", b"{}").startswith(b'{"id":null,"name":"context","attempt":1')


def test_unknown_task(loaded: Path) -> None:
    error = error_of("nope", b'{"args":{}}')
    assert error["type"] == "UnknownTask"
    assert "'nope'" in error["message"] and "echo" in error["message"]


def test_result_not_serialisable(loaded: Path) -> None:
    error = error_of("unserialisable", b'{"args":{}}')
    assert error["type"] == "ResultNotSerializable"
    assert "set" in error["message"] and "'unserialisable'" in error["message"]


def test_nan_result_not_serialisable(loaded: Path) -> None:
    assert error_of("nan", b'{"args":{}}')["type"] == "ResultNotSerializable"


def test_current_task_inside_and_outside(loaded: Path) -> None:
    result = json.loads(invoke("context", task_id="0190abc", attempt=2, pool="fast"))
    assert result == {"id": "0190abc", "name": "context", "attempt": 2, "pool": "fast"}
    assert current_task() is None


def test_current_task_cleared_after_failure(loaded: Path) -> None:
    error_of("boom", b'{"args":{"message":"x"},"task_id":"t1"}')
    assert current_task() is None


def test_current_task_is_per_thread(loaded: Path) -> None:
    results = {}

    def run(i: int) -> None:
        results[i] = json.loads(invoke("context", task_id=f"t{i}"))["id"]

    threads = [threading.Thread(target=run, args=(i,)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert results == {i: f"t{i}" for i in range(8)}


def test_dataclass_arguments_and_results(loaded: Path) -> None:
    assert json.loads(invoke("area", {"rect": {"w": 2, "h": 3}})) == {"w": 6, "h": 1.0}
    scene = {"rects": [{"w": 1, "h": 2}, {"w": 3, "h": 4}], "focus": {"w": 10, "h": 0}}
    assert json.loads(invoke("scene_area", {"scene": scene})) == 24
    assert json.loads(invoke("scene_area", {"scene": {"rects": []}})) == 0


def test_bad_dataclass_argument(loaded: Path) -> None:
    error = error_of("area", b'{"args":{"rect":{"w":2}}}')
    assert error["type"] == "InvalidArguments" and "'h'" in error["message"]
    error = error_of("area", b'{"args":{"rect":[1,2]}}')
    assert error["type"] == "InvalidArguments" and "JSON object" in error["message"]


def test_base_exceptions_are_reported(loaded: Path) -> None:
    error = error_of("exits", b'{"args":{}}')
    assert error["type"] == "SystemExit" and error["message"] == "3"


def test_async_timeout_error_injection_is_reported(loaded: Path) -> None:
    """The worker interrupts a timed-out task with PyThreadState_SetAsyncExc(TimeoutError)."""
    outcome: dict = {}
    running = threading.Event()

    # A task that spins in Python bytecode, so the asynchronous exception is delivered promptly.
    def spin() -> None:
        running.set()
        while True:
            pass

    def run() -> None:
        try:
            runtime.invoke("spin", b'{"args":{},"task_id":"t-spin"}')
        except TaskError as exc:
            outcome["error"] = json.loads(exc.payload)
        outcome["context_after"] = current_task()

    runtime._tasks["spin"] = (spin, None)
    try:
        thread = threading.Thread(target=run)
        thread.start()
        assert running.wait(10)
        ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(thread.ident), ctypes.py_object(TimeoutError))
        thread.join(10)
        assert not thread.is_alive()
    finally:
        del runtime._tasks["spin"]
    assert outcome["error"]["type"] == "TimeoutError"
    assert "in spin" in outcome["error"]["traceback"]
    assert outcome["context_after"] is None


def test_await_task_runs_a_coroutine_in_its_own_context(loaded: Path) -> None:
    """What the worker's event loop runs: the result, what it printed, current_task() inside it only."""
    import asyncio
    import io

    from neutrino import _output

    async def both():
        payload = lambda i: json.dumps({"args": {"x": i}, "task_id": f"t{i}"}).encode()  # noqa: E731
        return await asyncio.gather(*(runtime.await_task(*runtime.prepare("co_echo", payload(i))) for i in range(3)))

    streams = _output.TaskStreams("stdout", io.StringIO())
    saved, sys.stdout = sys.stdout, streams
    try:
        results = asyncio.run(both())
    finally:
        sys.stdout = saved
    for i, (ok, data, output) in enumerate(results):
        assert ok is True
        assert json.loads(data) == {"x": i, "id": f"t{i}"}
        assert output == f"co {i}\n".encode()
    assert current_task() is None


def test_await_task_reports_an_exception_with_its_traceback(loaded: Path) -> None:
    import asyncio

    ok, data, output = asyncio.run(runtime.await_task(*runtime.prepare("co_fail", b'{"args": {}}')))
    assert ok is False and output is None
    error = json.loads(data)
    assert error["type"] == "KeyError" and "in co_fail" in error["traceback"], error


def test_prepare_refuses_bad_arguments_like_invoke(loaded: Path) -> None:
    with pytest.raises(TaskError) as info:
        runtime.prepare("co_echo", b'{"args": []}')
    assert json.loads(info.value.payload)["type"] == "InvalidArguments"


TRACEPARENT = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


def test_traceparent_reaches_the_task(loaded: Path) -> None:
    """The worker's trace context is `current_task().traceparent` (and its trace id); without one both are None."""
    payload = json.dumps({"args": {}, "task_id": "t1", "traceparent": TRACEPARENT}).encode()
    result = json.loads(runtime.invoke("traced", payload))
    assert result["traceparent"] == TRACEPARENT
    assert result["trace_id"] == "4bf92f3577b34da6a3ce929d0e0e4736"
    plain = json.loads(runtime.invoke("traced", b'{"args": {}}'))
    assert plain["traceparent"] is None and plain["trace_id"] is None


def test_opentelemetry_context_is_attached_while_the_task_runs(loaded: Path) -> None:
    """With opentelemetry-api importable the task runs in the remote parent's context (so the spans it starts are
    children of the worker's span), for a thread task and an `async def` task; outside the task it is gone again."""
    trace = pytest.importorskip("opentelemetry.trace")
    payload = json.dumps({"args": {}, "traceparent": TRACEPARENT}).encode()
    expected = ["4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7"]
    assert json.loads(runtime.invoke("traced", payload))["otel"] == expected
    assert not trace.get_current_span().get_span_context().is_valid
    import asyncio

    ok, data, _ = asyncio.run(runtime.await_task(*runtime.prepare("co_traced", payload)))
    assert ok, data
    assert json.loads(data)["otel"] == expected
    assert json.loads(runtime.invoke("traced", b'{"args": {}}'))["otel"] is None
