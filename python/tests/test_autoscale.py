"""The local autoscaler of ``neutrino up``: ``--scale`` parsing, the decision taken from a ``/pools`` snapshot, the
polling loop with stand-ins, and ``neutrino up`` applying a fake gateway's ``/pools`` to fake worker processes."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Dict, List, Optional

import pytest

from neutrino.cli import build_parser
from neutrino.local import find_dashboard_dir
from neutrino.local.autoscale import Autoscaler, ScaleSpec, WorkerState, decide, describe, parse_scale, policy_for

# -- --scale ----------------------------------------------------------------------------------------


def test_parse_scale_forms() -> None:
    assert parse_scale("async=1:3") == ScaleSpec("async", 1, 3)
    assert parse_scale("async=1:3:2") == ScaleSpec("async", 1, 3, 2.0)
    assert parse_scale("gpu=0:1:1:4") == ScaleSpec("gpu", 0, 1, 1.0, 4.0)
    assert parse_scale("fast=1:4:0.7:60") == ScaleSpec("fast", 1, 4, 0.7, 60.0)
    assert parse_scale("a100=0:2:1:0.5").window == 0.5


@pytest.mark.parametrize(
    "text, message",
    [
        ("async", "POOL=MIN:MAX"),
        ("async=", "POOL=MIN:MAX"),
        ("Async=1:2", "[a-z0-9_]+"),
        ("as-ync=1:2", "[a-z0-9_]+"),
        ("async=1", "MIN:MAX"),
        ("async=1:2:3:4:5", "MIN:MAX"),
        ("async=a:2", "whole numbers"),
        ("async=1.5:2", "whole numbers"),
        ("async=-1:2", "0 or more"),
        ("async=3:2", "at least MIN"),
        ("async=0:0", "at least 1"),
        ("async=1:1000", "MAX above"),
        ("async=1:2:0", "TARGET must be above 0"),
        ("async=1:2:x", "TARGET must be a number"),
        ("async=1:2:nan", "TARGET must be finite"),
        ("async=1:2:1:-1", "WINDOW must be 0 or more"),
    ],
)
def test_parse_scale_rejects(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        parse_scale(text)


def test_scale_spec_argument_round_trips() -> None:
    for text in ("async=1:3", "async=1:3:2", "gpu=0:1:1:4", "fast=1:4:0.7:60"):
        assert parse_scale(text).argument() == text
        assert parse_scale(parse_scale(text).argument()) == parse_scale(text)


def test_policy_for_fills_in_the_mode_defaults() -> None:
    specs = {"async": parse_scale("async=1:3:2:4"), "a100": parse_scale("a100=0:2")}
    assert policy_for("async", "async", specs) == ScaleSpec("async", 1, 3, 2.0, 4.0)
    assert policy_for("a100", "gpu", specs) == ScaleSpec("a100", 0, 2, 1.0, 60.0)
    assert policy_for("gpu", "gpu", specs) == ScaleSpec("gpu", 0, 1, 1.0, 60.0)
    assert policy_for("reports", "async", {}) == ScaleSpec("reports", 1, 4, 10.0, 60.0)


# -- `neutrino up` arguments ------------------------------------------------------------------------


def test_up_arguments() -> None:
    args = build_parser().parse_args(
        ["up", "app.py", "--scale", "async=1:3:2:4", "--scale", "gpu=0:1", "--heartbeat-interval", "0.5",
         "--otlp-endpoint", "http://127.0.0.1:4318"]
    )
    assert args.otlp_endpoint == "http://127.0.0.1:4318"
    assert args.scale == [ScaleSpec("async", 1, 3, 2.0, 4.0), ScaleSpec("gpu", 0, 1)]
    assert args.heartbeat_interval == 0.5
    assert args.no_autoscale is False and args.queue_workers is None
    args = build_parser().parse_args(["up", "app.py", "--no-autoscale", "--queue-workers", "2"])
    assert args.no_autoscale is True and args.queue_workers == 2 and args.scale == []
    assert args.heartbeat_interval is None
    assert args.otlp_endpoint is None


@pytest.mark.parametrize("argv", [["--scale", "async=3:1"], ["--heartbeat-interval", "0"], ["--scale", "x"]])
def test_up_rejects_bad_arguments(argv: List[str], capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as exit_info:
        build_parser().parse_args(["up", "app.py", *argv])
    assert exit_info.value.code == 2
    assert "error: argument" in capsys.readouterr().err


def test_up_rejects_a_scale_for_an_unknown_pool(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from neutrino.cli import main

    app = tmp_path / "one_pool_app.py"
    app.write_text(ASYNC_GPU_APP)
    assert main(["up", str(app), "--scale", "fast=1:2", "--bin-dir", str(tmp_path)]) == 1
    assert "--scale names pools the app does not use: fast" in capsys.readouterr().err


# -- the dashboard folder --------------------------------------------------------------------------


def test_find_dashboard_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    custom = tmp_path / "custom"
    custom.mkdir()
    monkeypatch.setenv("NEUTRINO_DASHBOARD_DIR", str(custom))
    assert find_dashboard_dir() == str(custom)
    monkeypatch.setenv("NEUTRINO_DASHBOARD_DIR", str(tmp_path / "missing"))
    assert find_dashboard_dir() is None
    monkeypatch.delenv("NEUTRINO_DASHBOARD_DIR")
    # Without the variable: the dashboard/ folder of the repository holding this SDK.
    repository = Path(__file__).resolve().parents[2]
    found = find_dashboard_dir(str(tmp_path / ".build" / "debug"))
    if (repository / "dashboard").is_dir():
        assert found == str(repository / "dashboard")
    # ... and the one beside the binaries' .build when that is the only one with an index.html.
    other = tmp_path / "repo"
    (other / "dashboard").mkdir(parents=True)
    (other / "dashboard" / "index.html").write_text("<html></html>")
    if not (repository / "dashboard" / "index.html").is_file():
        assert find_dashboard_dir(str(other / ".build" / "release")) == str(other / "dashboard")


# -- the decision -----------------------------------------------------------------------------------


def pool(
    name: str = "async",
    desired: Optional[int] = 3,
    pending: int = 24,
    in_flight: int = 1,
    target: float = 10,
    window: float = 60,
    workers: Optional[List[Dict[str, Any]]] = None,
    mode: str = "async",
) -> Dict[str, Any]:
    """One pool entry of GET /pools, shaped as docs/observability-contract.md shows it."""
    return {
        "name": name,
        "mode": mode,
        "queue": {"pending": pending, "in_flight": in_flight, "redelivered": 0, "depth": pending + in_flight},
        "workers_alive": len(workers or []),
        "workers": workers or [],
        "scaling": {
            "min": 1,
            "max": 4,
            "target": target,
            "down_window_seconds": window,
            "current": len(workers or []),
            "recommended": desired,
            "desired": desired,
            "reason": "…",
        },
    }


def test_decide_scales_up_with_its_inputs() -> None:
    running = [WorkerState("async-1", 101, 1)]
    decision = decide(pool(desired=3), running)
    assert decision is not None
    assert (decision.pool, decision.current, decision.desired, decision.start, list(decision.stop)) == (
        "async",
        1,
        3,
        2,
        [],
    )
    assert decision.reason == "backlog 25 = pending 24 + in flight 1, target 10/replica"


def test_decide_nothing_to_do() -> None:
    running = [WorkerState("async-1", 101, 1)]
    assert decide(pool(desired=1), running) is None
    assert decide(pool(desired=None), running) is None  # no policy in the snapshot: hold
    snapshot = pool()
    del snapshot["scaling"]
    assert decide(snapshot, running) is None


def test_decide_scale_in_picks_the_least_busy_newest_first() -> None:
    running = [WorkerState("async-1", 101, 1), WorkerState("async-2", 102, 2), WorkerState("async-3", 103, 3)]
    workers = [{"worker_id": "a", "pid": 101, "busy": 0}, {"worker_id": "b", "pid": 102, "busy": 1},
               {"worker_id": "c", "pid": 103, "busy": 0}]
    decision = decide(pool(desired=1, pending=0, in_flight=1, target=2, window=4, workers=workers), running)
    assert decision is not None and decision.start == 0
    assert [w.name for w in decision.stop] == ["async-3", "async-1"]  # idle ones; among them the newest first
    assert decision.busy == {103: 0, 101: 0}
    assert decision.reason == "backlog 1 = pending 0 + in flight 1, target 2/replica, after the 4 s scale-down window"


def test_decide_scale_in_counts_an_unheard_worker_as_idle() -> None:
    running = [WorkerState("async-1", 101, 1), WorkerState("async-2", 102, 2)]
    decision = decide(pool(desired=1, workers=[{"pid": 101, "busy": 1}]), running)
    assert decision is not None and [w.name for w in decision.stop] == ["async-2"]
    assert decision.busy == {102: None}


def test_decide_scale_to_zero_and_back() -> None:
    gpu_worker = [WorkerState("gpu-1", 201, 1)]
    down = decide(pool("gpu", desired=0, pending=0, in_flight=0, target=1, window=4, mode="gpu"), gpu_worker)
    assert down is not None and [w.name for w in down.stop] == ["gpu-1"]
    up = decide(pool("gpu", desired=1, pending=1, in_flight=0, target=1, mode="gpu"), [])
    assert up is not None and up.start == 1 and up.reason == "backlog 1 = pending 1 + in flight 0, target 1/replica"


def test_decide_bounds_a_runaway_desired() -> None:
    decision = decide(pool(desired=10_000), [], limit=8)
    assert decision is not None and decision.start == 8


def test_describe_without_a_queue_uses_the_gateways_reason() -> None:
    snapshot = {"name": "fast", "mode": "sync", "queue": None, "scaling": {"reason": "busy 3/4 slots"}}
    assert describe(snapshot) == "busy 3/4 slots"


# -- the loop, with stand-ins -----------------------------------------------------------------------


class Stand:
    """Workers in a dict instead of processes; /pools from a list the test edits."""

    def __init__(self, pools: List[Dict[str, Any]]):
        self.document: Dict[str, Any] = {"pools": pools}
        self.workers: Dict[str, List[WorkerState]] = {}
        self.retired: List[str] = []
        self.lines: List[str] = []
        self.next_pid = 1000
        self.fail: Optional[Exception] = None

    def fetch(self) -> Dict[str, Any]:
        if self.fail is not None:
            raise self.fail
        return json.loads(json.dumps(self.document))

    def running(self, name: str) -> List[WorkerState]:
        return list(self.workers.get(name, []))

    def start(self, name: str) -> WorkerState:
        self.next_pid += 1
        number = len(self.workers.get(name, [])) + len([r for r in self.retired if r.startswith(name)]) + 1
        worker = WorkerState(f"{name}-{number}", self.next_pid, number)
        self.workers.setdefault(name, []).append(worker)
        return worker

    def retire(self, name: str, worker: WorkerState) -> None:
        self.workers[name].remove(worker)
        self.retired.append(worker.name)

    def scaler(self) -> Autoscaler:
        return Autoscaler(
            "http://127.0.0.1:1",
            {"async": "async", "gpu": "gpu"},
            running=self.running,
            start=self.start,
            retire=self.retire,
            say=self.lines.append,
            fetch=self.fetch,
        )


def test_autoscaler_step_applies_desired_and_logs_each_decision() -> None:
    stand = Stand([pool("async", desired=3, target=10), pool("gpu", desired=0, pending=0, in_flight=0, mode="gpu"),
                   {"name": "fast", "mode": "sync", "queue": None, "scaling": {"desired": 2}}])
    stand.workers["async"] = [WorkerState("async-1", 1, 1)]
    scaler = stand.scaler()
    decisions = scaler.step()
    assert [(d.pool, d.current, d.desired) for d in decisions] == [("async", 1, 3)]
    assert [w.name for w in stand.workers["async"]] == ["async-1", "async-2", "async-3"]
    assert stand.lines[0].startswith(
        "autoscaler: async 1 → 3 (backlog 25 = pending 24 + in flight 1, target 10/replica); starting async-2 (pid "
    )
    assert "pool fast (sync) keeps its HTTP workers" in stand.lines[1]

    # Same snapshot again: nothing to do, and the sync note is not repeated.
    assert scaler.step() == [] and len(stand.lines) == 2

    # The burst is done and the window passed: back to 1, the idle newest workers drain.
    stand.document["pools"][0] = pool("async", desired=1, pending=0, in_flight=0,
                                      workers=[{"pid": w.pid, "busy": 0} for w in stand.workers["async"]])
    # A gpu task is queued: 0 → 1.
    stand.document["pools"][1] = pool("gpu", desired=1, pending=1, in_flight=0, target=1, mode="gpu")
    decisions = scaler.step()
    assert [(d.pool, d.current, d.desired) for d in decisions] == [("async", 3, 1), ("gpu", 0, 1)]
    assert stand.retired == ["async-3", "async-2"] and [w.name for w in stand.workers["async"]] == ["async-1"]
    assert "draining async-3 (pid" in stand.lines[2] and "busy 0" in stand.lines[2]
    assert stand.lines[3].startswith("autoscaler: gpu 0 → 1 (backlog 1 = pending 1 + in flight 0, target 1/replica)")


def test_autoscaler_holds_while_the_gateway_is_unreachable() -> None:
    stand = Stand([pool("async", desired=2)])
    stand.workers["async"] = [WorkerState("async-1", 1, 1)]
    scaler = stand.scaler()
    stand.fail = ConnectionRefusedError("connection refused")
    assert scaler.step() == [] and scaler.step() == []
    assert len(stand.lines) == 1 and "cannot read http://127.0.0.1:1/pools" in stand.lines[0]
    stand.fail = None
    assert [d.desired for d in scaler.step()] == [2]
    assert "answers again" in stand.lines[1]


def test_autoscaler_thread_starts_and_stops() -> None:
    stand = Stand([pool("async", desired=2)])
    scaler = Autoscaler("http://127.0.0.1:1", {"async": "async"}, running=stand.running, start=stand.start,
                        retire=stand.retire, say=stand.lines.append, fetch=stand.fetch, interval=0.01)
    scaler.start()
    deadline = time.monotonic() + 10
    while len(stand.workers.get("async", [])) < 2 and time.monotonic() < deadline:
        time.sleep(0.01)
    scaler.stop()
    assert len(stand.workers["async"]) == 2
    stand.document["pools"][0]["scaling"]["desired"] = 4
    time.sleep(0.05)
    assert len(stand.workers["async"]) == 2  # stopped: no more decisions


# -- `neutrino up` with a fake gateway serving /pools ------------------------------------------------

ASYNC_GPU_APP = """
from neutrino import App

app = App("scale_demo")

@app.task(execution_mode="async", timeout_secs=40)
def slow(seconds: float) -> dict:
    return {}

@app.task(execution_mode="gpu")
def train(data: str) -> dict:
    return {}
"""

# A stand-in for neutrino-worker (NATS mode): records argv and SIGTERM, announces its consumer.
FAKE_WORKER = """\
#!{python}
import json, os, signal, sys, time
log_dir = os.environ["FAKE_LOG_DIR"]
with open(os.path.join(log_dir, f"worker-{{os.getpid()}}.json"), "w") as f:
    json.dump({{"argv": sys.argv[1:], "pid": os.getpid()}}, f)
def on_term(*_):
    open(os.path.join(log_dir, f"worker-{{os.getpid()}}.stop"), "w").close()
    print("draining", flush=True)
    sys.exit(0)
signal.signal(signal.SIGTERM, on_term)
pool = sys.argv[sys.argv.index("--pool") + 1]
print(f"consuming pool_{{pool}} from nats://fake", flush=True)
while True:
    time.sleep(0.02)
"""

# A stand-in for neutrino-gateway: serves GET /pools from the file $FAKE_POOLS (re-read on each request).
FAKE_GATEWAY = """\
#!{python}
import http.server, json, os, sys
log_dir = os.environ["FAKE_LOG_DIR"]
with open(os.path.join(log_dir, f"gateway-{{os.getpid()}}.json"), "w") as f:
    json.dump({{"argv": sys.argv[1:], "pid": os.getpid()}}, f)
class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        body = open(os.environ["FAKE_POOLS"], "rb").read() if self.path == "/pools" else b"{{}}"
        self.send_response(200 if self.path == "/pools" else 404)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *args):
        pass
server = http.server.HTTPServer(("127.0.0.1", 0), Handler)
print(f"listening on http://127.0.0.1:{{server.server_address[1]}}", flush=True)
server.serve_forever()
"""

FAKE_NATS = """\
#!{python}
import os, signal, socket, sys, time
signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
args = sys.argv[1:]
server = socket.socket()
server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
conf = dict(line.split(": ", 1) for line in open(args[args.index("-c") + 1]) if line[:5] in ("host:", "port:"))
server.bind((conf["host"].strip(), int(conf["port"])))
server.listen(64)
while True:
    time.sleep(0.02)
"""


def _workers(log: Path) -> Dict[int, Dict[str, Any]]:
    found = {}
    for path in log.glob("worker-*.json"):
        try:
            record = json.loads(path.read_text())
        except ValueError:  # being written
            continue
        record["stopped"] = path.with_suffix(".stop").exists()
        record["pool"] = record["argv"][record["argv"].index("--pool") + 1]
        found[record["pid"]] = record
    return found


def test_up_applies_the_gateways_desired_to_its_workers(tmp_path: Path) -> None:
    fake_bin, log = tmp_path / "bin", tmp_path / "log"
    fake_bin.mkdir()
    log.mkdir()
    for name, script in (("neutrino-worker", FAKE_WORKER), ("neutrino-gateway", FAKE_GATEWAY), ("nats-server", FAKE_NATS)):
        (fake_bin / name).write_text(script.format(python=sys.executable))
        (fake_bin / name).chmod(0o755)
    app = tmp_path / "scale_app.py"
    app.write_text(ASYNC_GPU_APP)
    pools_file = tmp_path / "pools.json"

    def publish(async_desired: int, gpu_desired: int, busy: Dict[int, int]) -> None:
        workers = [{"pid": pid, "busy": n} for pid, n in busy.items()]
        document = {"pools": [pool("async", desired=async_desired, target=2, window=4, workers=workers),
                              pool("gpu", desired=gpu_desired, pending=gpu_desired, in_flight=0, target=1,
                                   window=4, mode="gpu")]}
        temporary = pools_file.with_suffix(".tmp")
        temporary.write_text(json.dumps(document))
        temporary.replace(pools_file)

    publish(1, 0, {})
    environment = {**os.environ, "FAKE_LOG_DIR": str(log), "FAKE_POOLS": str(pools_file), "PYTHONUNBUFFERED": "1",
                   "PATH": f"{fake_bin}{os.pathsep}{os.environ.get('PATH', '')}"}
    environment.pop("NEUTRINO_DASHBOARD_DIR", None)
    process = subprocess.Popen(
        [sys.executable, "-m", "neutrino", "up", str(app), "--bin-dir", str(fake_bin), "--state-dir",
         str(tmp_path / "state"), "--port", "0", "--nats-port", "14222",
         "--scale", "async=1:3:2:4", "--scale", "gpu=0:1:1:4", "--heartbeat-interval", "0.5",
         "--otlp-endpoint", "http://127.0.0.1:4318"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=environment, cwd=tmp_path,
    )
    lines: List[str] = []

    def read_until(pattern: str, timeout: float = 30) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            line = process.stdout.readline()
            if not line:
                break
            lines.append(line.rstrip("\n"))
            if re.search(pattern, line):
                return line
        raise AssertionError(f"{pattern!r} not seen; output:\n" + "\n".join(lines))

    try:
        read_until("Press Ctrl-C to stop")
        text = "\n".join(lines)
        assert "pool async  1 NATS worker (async), consumer pool_async, autoscaled 1..3 (target 2 tasks/replica, " \
               "scale-down window 4 s)" in text
        assert "pool gpu    0 NATS workers (gpu), consumer pool_gpu, autoscaled 0..1" in text
        gateway_url = re.search(r"gateway     (http://127\.0\.0\.1:\d+)", text).group(1)
        assert f"dashboard   {gateway_url}/" in text and f"pools       {gateway_url}/pools" in text
        assert f"metrics     {gateway_url}/metrics" in text
        [first] = _workers(log).values()
        assert first["pool"] == "async"

        publish(3, 1, {first["pid"]: 1})
        read_until(r"autoscaler: async 1 → 3 \(backlog 25 = pending 24 \+ in flight 1, target 2/replica\); "
                   r"starting async-2 \(pid \d+\), async-3")
        read_until(r"autoscaler: gpu 0 → 1 \(backlog 1 = pending 1 \+ in flight 0, target 1/replica\); starting gpu-1")
        deadline = time.monotonic() + 30
        while len(_workers(log)) < 4 and time.monotonic() < deadline:
            time.sleep(0.05)
        workers = _workers(log)
        assert sorted(w["pool"] for w in workers.values()) == ["async", "async", "async", "gpu"]

        # async-1 is busy: the two idle ones drain; the gpu pool goes to zero.
        publish(1, 0, {pid: (1 if pid == first["pid"] else 0) for pid, w in workers.items() if w["pool"] == "async"})
        read_until(r"autoscaler: async 3 → 1 \(.*after the 4 s scale-down window\); draining async-3 \(pid \d+, busy 0\), "
                   r"async-2 \(pid \d+, busy 0\)")
        for _ in range(3):
            read_until(r"autoscaler: (async-[23]|gpu-1) drained and exited with status 0")
        text = "\n".join(lines)
        assert "autoscaler: gpu 1 → 0" in text
        workers = _workers(log)
        assert {w["pool"] for w in workers.values() if w["stopped"]} == {"async", "gpu"}
        assert [pid for pid, w in workers.items() if not w["stopped"]] == [first["pid"]]
        assert "exited unexpectedly" not in text
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGINT)
        rest, _ = process.communicate(timeout=30)
    assert process.returncode == 0, "\n".join(lines) + rest

    everyone = _workers(log)
    for worker in everyone.values():
        argv = worker["argv"]
        assert argv[argv.index("--heartbeat-interval") + 1] == "0.5" and argv[argv.index("--port") + 1] == "0"
        assert argv[argv.index("--nats") + 1].startswith("nats://127.0.0.1:")
        assert argv[argv.index("--otlp-endpoint") + 1] == "http://127.0.0.1:4318"  # tracing reaches every process
        grace = float(argv[argv.index("--drain-grace") + 1])
        assert grace >= (40 if worker["pool"] == "async" else 600)  # the pool's largest task timeout
    [gateway_record] = [json.loads(p.read_text()) for p in log.glob("gateway-*.json")]
    argv = gateway_record["argv"]
    assert [argv[i + 1] for i, a in enumerate(argv) if a == "--scale"] == ["async=1:3:2:4", "gpu=0:1:1:4"]
    assert argv[argv.index("--heartbeat-timeout") + 1] == "2"
    assert argv[argv.index("--otlp-endpoint") + 1] == "http://127.0.0.1:4318"
    assert all(worker["stopped"] for worker in everyone.values())  # Ctrl-C reached the rest
