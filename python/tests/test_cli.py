"""The ``neutrino`` command: ``openapi``, and ``up`` supervising fake worker/gateway binaries."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Dict, List, Tuple

import pytest

from neutrino.cli import main

APP = """
from neutrino import App

app = App("cli_demo")

@app.task()
def echo(x: int, label: str = "") -> dict:
    return {"x": x, "label": label}

@app.task(execution_mode="async")
def report(dataset: str) -> dict:
    return {}
"""

SYNC_ONLY_APP = """
from neutrino import App

app = App("cli_sync")

@app.task()
def echo(x: int) -> dict:
    return {"x": x}
"""

POOLS_APP = """
from neutrino import App

app = App("cli_pools")

@app.task(execution_mode="async")
def report(dataset: str) -> dict:
    return {}

@app.task(execution_mode="gpu", pool="a100")
def train(data: str) -> dict:
    return {}
"""

# A stand-in for neutrino-worker / neutrino-gateway: records its argv, announces a URL (or, as a NATS-mode worker,
# the consumer it pulls from), runs until SIGTERM, and records when SIGTERM came.
FAKE_BINARY = """\
#!{python}
import json, os, signal, sys, time
name = os.path.basename(sys.argv[0])
log_dir = os.environ["FAKE_LOG_DIR"]
with open(os.path.join(log_dir, f"{{name}}-{{os.getpid()}}.json"), "w") as f:
    json.dump({{"argv": sys.argv[1:], "pid": os.getpid(), "nats_user": os.environ.get("NEUTRINO_NATS_USER"),
               "nats_password": os.environ.get("NEUTRINO_NATS_PASSWORD")}}, f)
def flag(option):
    return sys.argv[sys.argv.index(option) + 1] if option in sys.argv else None
nats_mode = flag("--mode") == "nats"
if os.environ.get("FAKE_FAIL") == name or (nats_mode and os.environ.get("FAKE_FAIL_NATS_MODE")):
    print(os.environ.get("FAKE_FAIL_MESSAGE", "fatal: cannot import the app"), flush=True)
    sys.exit(int(os.environ.get("FAKE_FAIL_STATUS", "3")))
def on_term(*_):
    with open(os.path.join(log_dir, f"{{name}}-{{os.getpid()}}.stop"), "w") as f:
        f.write(repr(time.time()))
    print("bye", flush=True)
    sys.exit(0)
signal.signal(signal.SIGTERM, on_term)
print("starting up", flush=True)
if nats_mode:
    print(f"consuming pool_{{flag('--pool')}} from {{flag('--nats')}}", flush=True)
else:
    port = 40000 + os.getpid() % 20000
    print(f"listening on http://127.0.0.1:{{port}}", flush=True)
die_after = os.environ.get("FAKE_DIE_AFTER") if os.environ.get("FAKE_DIE") == name else None
deadline = time.monotonic() + float(die_after) if die_after else None
while deadline is None or time.monotonic() < deadline:
    time.sleep(0.02)
sys.exit(7)
"""

# A stand-in for nats-server: records its argv, listens on the host and port of its -c file (it accepts nothing: the supervisor only needs
# the TCP handshake), runs until SIGTERM and records when SIGTERM came.
FAKE_NATS = """\
#!{python}
import json, os, signal, socket, sys, time
log_dir = os.environ["FAKE_LOG_DIR"]
with open(os.path.join(log_dir, f"nats-server-{{os.getpid()}}.json"), "w") as f:
    json.dump({{"argv": sys.argv[1:], "pid": os.getpid()}}, f)
def on_term(*_):
    with open(os.path.join(log_dir, f"nats-server-{{os.getpid()}}.stop"), "w") as f:
        f.write(repr(time.time()))
    sys.exit(0)
signal.signal(signal.SIGTERM, on_term)
args = sys.argv[1:]
time.sleep(0.2)  # not ready at once, like a real server
server = socket.socket()
server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
conf = open(args[args.index("-c") + 1]).read()
host = [line.split(": ")[1] for line in conf.splitlines() if line.startswith("host: ")][0]
port = [line.split(": ")[1] for line in conf.splitlines() if line.startswith("port: ")][0]
server.bind((host, int(port)))
server.listen(64)
print("[INF] Server is ready", flush=True)
while True:
    time.sleep(0.02)
"""


@pytest.fixture
def app_file(tmp_path: Path) -> Path:
    path = tmp_path / "cli_app.py"
    path.write_text(APP)
    return path


# -- openapi ----------------------------------------------------------------------------------------


def test_openapi_to_stdout(app_file: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["openapi", str(app_file)]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["x-neutrino-app"] == "cli_demo"
    assert set(doc["paths"]) == {"/api/echo", "/api/report"}


def test_openapi_to_file(app_file: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "out" / "openapi.json"
    assert main(["openapi", str(app_file), "-o", str(out)]) == 0
    assert json.loads(out.read_text())["openapi"] == "3.1.0"
    assert capsys.readouterr().out == ""


def test_openapi_bad_app(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    bad = tmp_path / "bad_app.py"
    bad.write_text("from neutrino import App\napp = App('x')\n@app.task(timeout_ms=9000)\ndef slow(): pass\n")
    assert main(["openapi", str(bad)]) == 1
    assert "use execution_mode='async'" in capsys.readouterr().err
    assert main(["openapi", str(tmp_path / "missing.py")]) == 1
    assert "not found" in capsys.readouterr().err


def test_openapi_app_raising_shows_traceback(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    bad = tmp_path / "raising_app.py"
    bad.write_text("raise RuntimeError('kaboom')\n")
    assert main(["openapi", str(bad)]) == 1
    err = capsys.readouterr().err
    assert "Traceback" in err and "kaboom" in err


def test_python_dash_m(app_file: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "neutrino", "openapi", str(app_file)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["info"]["title"] == "cli_demo"


# -- up ---------------------------------------------------------------------------------------------


@pytest.fixture
def fake_bin(tmp_path: Path) -> Path:
    folder = tmp_path / "bin"
    folder.mkdir()
    for name, script in (
        ("neutrino-worker", FAKE_BINARY),
        ("neutrino-gateway", FAKE_BINARY),
        ("nats-server", FAKE_NATS),
    ):
        path = folder / name
        path.write_text(script.format(python=sys.executable))
        path.chmod(0o755)
    (tmp_path / "log").mkdir()
    return folder


def start_up(tmp_path: Path, app_file: Path, fake_bin: Path, *extra: str, **env: str) -> subprocess.Popen:
    """``neutrino up`` with the fake binaries, and the fake nats-server first on PATH."""
    environment = {
        **os.environ,
        "FAKE_LOG_DIR": str(tmp_path / "log"),
        "PYTHONUNBUFFERED": "1",
        "PATH": f"{fake_bin}{os.pathsep}{os.environ.get('PATH', '')}",
        **env,
    }
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "neutrino",
            "up",
            str(app_file),
            "--bin-dir",
            str(fake_bin),
            "--state-dir",
            str(tmp_path / "state"),
            "--port",
            "18080",
            *extra,
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=environment,
        cwd=tmp_path,
    )


def run_until_banner_then_sigint(process: subprocess.Popen) -> Tuple[str, str]:
    """The output up to the banner's last line, then (after SIGINT) the rest; asserts a clean exit."""
    try:
        output = read_until(process, "Press Ctrl-C to stop.")
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGINT)
    rest, _ = process.communicate(timeout=30)
    assert process.returncode == 0, "\n".join(output) + rest
    return "\n".join(output), rest


def read_until(process: subprocess.Popen, marker: str, timeout: float = 30) -> List[str]:
    lines: List[str] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = process.stdout.readline()
        if not line:
            break
        lines.append(line.rstrip("\n"))
        if marker in line:
            return lines
    raise AssertionError(f"{marker!r} not seen; output:\n" + "\n".join(lines))


def children(tmp_path: Path) -> Dict[str, List[dict]]:
    """What each fake started: argv, pid, and ``stopped_at`` (time of its SIGTERM) when it got one."""
    found: Dict[str, List[dict]] = {"neutrino-worker": [], "neutrino-gateway": [], "nats-server": []}
    for path in sorted((tmp_path / "log").glob("*.json")):
        record = json.loads(path.read_text())
        stop = path.with_suffix(".stop")
        if stop.exists():
            record["stopped_at"] = float(stop.read_text())
        found[path.stem.rsplit("-", 1)[0]].append(record)
    return found


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def flag(argv: List[str], name: str) -> List[str]:
    return [argv[i + 1] for i, arg in enumerate(argv) if arg == name]


def test_up_starts_nats_workers_then_gateway_and_stops_on_sigint(
    tmp_path: Path, app_file: Path, fake_bin: Path
) -> None:
    process = start_up(tmp_path, app_file, fake_bin, "--fast-workers", "2", "--concurrency", "3")
    text, rest = run_until_banner_then_sigint(process)

    assert "fast-1 | listening on http://127.0.0.1:" in text and "fast-2 | starting up" in text
    assert "async-1 | consuming pool_async from nats://127.0.0.1:" in text
    assert "nats | [INF] Server is ready" in text
    assert "gateway | listening on http://127.0.0.1:" in text
    assert "curl -s localhost:" in text and '/api/echo -d \'{"args":{"x":3}}\'' in text
    assert "/tasks?status=failed&function=echo" in text
    # The async path: submit (202), long-poll, cancel; where NATS and its monitoring are.
    address = re.search(r"curl -s -H 'Content-Type: application/json' (localhost:\d+)/api/echo", text).group(1)  # the fake gateway's port
    assert f'curl -s -H \'Content-Type: application/json\' {address}/api/report -d \'{{"args":{{"dataset":"hello"}}}}\'' in text and "202" in text
    assert f"curl -s '{address}/tasks/<task_id>?wait=30'" in text
    assert f"curl -s -X DELETE {address}/tasks/<task_id>" in text
    assert "pool async  1 NATS worker (async), consumer pool_async" in text
    assert "not started" not in text
    assert "bye" in rest  # children got SIGTERM

    state = tmp_path / "state"
    assert json.loads((state / "openapi.json").read_text())["x-neutrino-app"] == "cli_demo"
    started = children(tmp_path)
    [nats], [gateway] = started["nats-server"], started["neutrino-gateway"]

    # nats-server: JetStream on 127.0.0.1, the store under the state directory, monitoring on its own port, every
    # client a user with a random password; its configuration file (it holds the passwords) is mode 0600.
    argv = nats["argv"]
    assert argv == ["-c", str(state / "nats.conf")]
    conf = (state / "nats.conf").read_text()
    assert "host: 127.0.0.1" in conf and (state / "nats").is_dir()
    assert f"store_dir: {json.dumps(str(state / 'nats'))}" in conf
    [port] = re.findall(r"^port: (\d+)$", conf, re.M)
    [monitor] = re.findall(r'^http: "127.0.0.1:(\d+)"$', conf, re.M)
    assert port != monitor
    assert (state / "nats.conf").stat().st_mode & 0o777 == 0o600
    assert (state / "nats-auth.json").stat().st_mode & 0o777 == 0o600
    passwords = json.loads((state / "nats-auth.json").read_text())["users"]
    assert set(passwords) == {"gateway", "worker_fast", "worker_async"}
    assert all(f'"password": "{p}"' in conf for p in passwords.values())
    nats_url = f"nats://127.0.0.1:{port}"
    assert f"nats        {nats_url}" in text and f"http://127.0.0.1:{monitor}/jsz" in text

    http_workers = [w for w in started["neutrino-worker"] if flag(w["argv"], "--mode") == ["http"]]
    nats_workers = [w for w in started["neutrino-worker"] if flag(w["argv"], "--mode") == ["nats"]]
    assert len(http_workers) == 2 and len(nats_workers) == 1
    for worker in http_workers:
        argv = worker["argv"]
        assert argv[:4] == ["--mode", "http", "--pool", "fast"]
        assert flag(argv, "--app") == [str(app_file)]
        # --concurrency is the queue workers' threads; fast workers get --fast-concurrency (16), given last.
        assert flag(argv, "--port") == ["0"] and flag(argv, "--concurrency") == ["3", "16"]
        assert flag(argv, "--task-log") == [f"sqlite:{state / 'tasks.db'}"]
        assert flag(argv, "--nats") == [nats_url]  # heartbeats
        assert flag(argv, "--heartbeat-interval") == []
        [python_path] = flag(argv, "--python-path")
        assert (Path(python_path) / "neutrino" / "__init__.py").is_file()
    [worker] = nats_workers
    argv = worker["argv"]
    assert argv[:4] == ["--mode", "nats", "--pool", "async"]
    assert flag(argv, "--app") == [str(app_file)] and flag(argv, "--concurrency") == ["3"]
    assert flag(argv, "--task-log") == [f"sqlite:{state / 'tasks.db'}"] and flag(argv, "--nats") == [nats_url]
    assert flag(argv, "--port") == ["0"]  # /metrics, /healthz; the URL goes into its heartbeats
    # Autoscaled: a drain outlasts the pool's longest task (report: async default 300 s) so scale-in hands nothing back.
    assert flag(argv, "--drain-grace") == ["305"]
    [python_path] = flag(argv, "--python-path")
    assert (Path(python_path) / "neutrino" / "__init__.py").is_file()

    argv = gateway["argv"]
    assert flag(argv, "--manifest") == [str(state / "openapi.json")]
    # NATS runs: the sync pool is elastic, the gateway finds its HTTP workers from their heartbeats (no static list),
    # and the workers are named slots the autoscaler starts and drains.
    assert flag(argv, "--http-pool") == []
    assert sorted(flag(w["argv"], "--worker-id")[0] for w in http_workers) == ["fast-1", "fast-2"]
    assert "pool fast   2 HTTP workers: http://127.0.0.1:" in text and "autoscaled 1..4" in text
    assert flag(argv, "--nats") == [nats_url]
    assert flag(argv, "--task-log") == [f"sqlite:{state / 'tasks.db'}"]
    assert flag(argv, "--host") == ["127.0.0.1"] and flag(argv, "--port") == ["18080"]

    # NATS credentials travel in the environment, never on a command line; each process gets its own user.
    for child in started["neutrino-worker"]:
        pool = flag(child["argv"], "--pool")[0]
        assert child["nats_user"] == f"worker_{pool}" and child["nats_password"] == passwords[f"worker_{pool}"]
    assert gateway["nats_user"] == "gateway" and gateway["nats_password"] == passwords["gateway"]
    for child in [nats, *started["neutrino-worker"], gateway]:
        assert not any(p in " ".join(child["argv"]) for p in passwords.values())

    # Start order: nats-server, then the workers, the gateway last. Stop order: nats-server after all others.
    everyone = [nats, *started["neutrino-worker"], gateway]
    assert all("stopped_at" in child for child in everyone)
    assert nats["stopped_at"] > max(child["stopped_at"] for child in everyone if child is not nats)
    assert not any(alive(child["pid"]) for child in everyone)


def test_up_sync_only_app_starts_no_nats(tmp_path: Path, fake_bin: Path) -> None:
    app = tmp_path / "sync_app.py"
    app.write_text(SYNC_ONLY_APP)
    process = start_up(tmp_path, app, fake_bin, "--fast-workers", "1")
    text, _ = run_until_banner_then_sigint(process)
    started = children(tmp_path)
    assert started["nats-server"] == []
    assert [flag(w["argv"], "--mode") for w in started["neutrino-worker"]] == [["http"]]
    assert flag(started["neutrino-gateway"][0]["argv"], "--nats") == []
    assert "nats" not in text.lower() and "?wait=" not in text and "/api/echo" in text


def test_up_one_queue_worker_set_per_pool(tmp_path: Path, fake_bin: Path) -> None:
    app = tmp_path / "pools_app.py"
    app.write_text(POOLS_APP)
    process = start_up(tmp_path, app, fake_bin, "--queue-workers", "2", "--concurrency", "1", "--no-autoscale")
    text, _ = run_until_banner_then_sigint(process)
    started = children(tmp_path)
    pools = sorted(flag(w["argv"], "--pool")[0] for w in started["neutrino-worker"])
    assert pools == ["a100", "a100", "async", "async"]
    assert all(flag(w["argv"], "--mode") == ["nats"] for w in started["neutrino-worker"])
    assert flag(started["neutrino-gateway"][0]["argv"], "--http-pool") == []
    assert "a100-2 | consuming pool_a100 from nats://" in text and "async-2 | consuming pool_async" in text
    assert "pool a100   2 NATS workers (gpu), consumer pool_a100" in text
    assert "autoscaler  off (--no-autoscale)" in text
    assert all(flag(w["argv"], "--drain-grace") == ["7"] for w in started["neutrino-worker"])
    assert "/api/report -d" in text and "/api/echo" not in text


def test_up_picks_a_free_nats_port_when_the_port_is_busy(tmp_path: Path, app_file: Path, fake_bin: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        taken = busy.getsockname()[1]
        process = start_up(tmp_path, app_file, fake_bin, "--fast-workers", "1", "--nats-port", str(taken))
        text, _ = run_until_banner_then_sigint(process)
    started = children(tmp_path)
    [conf] = flag(started["nats-server"][0]["argv"], "-c")
    [port] = re.findall(r"^port: (\d+)$", Path(conf).read_text(), re.M)
    assert int(port) != taken
    assert f"port {taken} is busy; nats-server listens on {port} instead" in text
    assert flag(started["neutrino-gateway"][0]["argv"], "--nats") == [f"nats://127.0.0.1:{port}"]


def test_up_without_nats_server(
    tmp_path: Path, app_file: Path, fake_bin: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    (fake_bin / "nats-server").unlink()
    monkeypatch.setenv("PATH", str(tmp_path / "nowhere"))
    assert main(["up", str(app_file), "--bin-dir", str(fake_bin), "--state-dir", str(tmp_path / "state")]) == 1
    err = capsys.readouterr().err
    assert "nats-server is not on PATH" in err and "apt-get install nats-server" in err
    assert list((tmp_path / "log").iterdir()) == []  # nothing was started


def test_up_fails_clearly_when_a_queue_worker_cannot_start(tmp_path: Path, app_file: Path, fake_bin: Path) -> None:
    process = start_up(tmp_path, app_file, fake_bin, FAKE_FAIL_NATS_MODE="1")
    output, _ = process.communicate(timeout=30)
    assert process.returncode == 1
    assert "async-1 exited with status 3 before it was consuming its queue" in output
    started = children(tmp_path)
    # The gateway starts before the queue workers are ready (it provisions the consumers they wait for, their NATS
    # users may not), and is stopped with everything else.
    assert len(started["neutrino-gateway"]) <= 1
    assert not any(alive(child["pid"]) for group in started.values() for child in group)


def test_up_explains_binaries_without_the_jetstream_options(tmp_path: Path, app_file: Path, fake_bin: Path) -> None:
    process = start_up(
        tmp_path,
        app_file,
        fake_bin,
        FAKE_FAIL="neutrino-gateway",
        FAKE_FAIL_MESSAGE="Error: Unknown option '--nats'",
        FAKE_FAIL_STATUS="64",
    )
    output, _ = process.communicate(timeout=30)
    assert process.returncode == 1
    assert "gateway exited with status 64 before it was listening" in output
    assert "older than the JetStream path" in output and "swift build -c release" in output
    assert not any(alive(child["pid"]) for group in children(tmp_path).values() for child in group)


@pytest.mark.skipif(shutil.which("nats-server") is None, reason="nats-server is not installed")
def test_up_with_the_real_nats_server(tmp_path: Path, app_file: Path, fake_bin: Path) -> None:
    (fake_bin / "nats-server").unlink()
    process = start_up(tmp_path, app_file, fake_bin, "--fast-workers", "1")
    try:
        output = "\n".join(read_until(process, "Press Ctrl-C to stop."))
        [nats_url] = flag(children(tmp_path)["neutrino-gateway"][0]["argv"], "--nats")
        [monitor] = re.findall(r"monitoring  (http://127\.0\.0\.1:\d+)/jsz", output)
        with urllib.request.urlopen(f"{monitor}/jsz", timeout=10) as response:
            assert "config" in json.loads(response.read())  # JetStream is on
        host, port = nats_url[len("nats://") :].split(":")
        with socket.create_connection((host, int(port)), timeout=5) as connection:
            assert connection.recv(4096).startswith(b"INFO ")
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGINT)
    rest, _ = process.communicate(timeout=30)
    assert process.returncode == 0, rest
    assert (tmp_path / "state" / "nats" / "jetstream").is_dir()
    assert "Server Exiting" in rest


def test_up_stops_on_sigterm(tmp_path: Path, app_file: Path, fake_bin: Path) -> None:
    process = start_up(tmp_path, app_file, fake_bin, "--fast-workers", "1")
    read_until(process, "Press Ctrl-C to stop.")
    process.send_signal(signal.SIGTERM)
    process.communicate(timeout=30)
    assert process.returncode == 0
    assert not any(alive(child["pid"]) for group in children(tmp_path).values() for child in group)


def test_up_exits_nonzero_when_a_child_dies(tmp_path: Path, app_file: Path, fake_bin: Path) -> None:
    process = start_up(tmp_path, app_file, fake_bin, FAKE_DIE="neutrino-gateway", FAKE_DIE_AFTER="0.5")
    output, _ = process.communicate(timeout=30)
    assert process.returncode == 1
    assert "gateway exited unexpectedly with status 7" in output
    assert not any(alive(child["pid"]) for group in children(tmp_path).values() for child in group)


def test_up_fails_clearly_when_a_worker_cannot_start(tmp_path: Path, app_file: Path, fake_bin: Path) -> None:
    process = start_up(tmp_path, app_file, fake_bin, FAKE_FAIL="neutrino-worker")
    output, _ = process.communicate(timeout=30)
    assert process.returncode == 1
    assert "fatal: cannot import the app" in output
    assert "exited with status 3 before it was listening" in output
    assert children(tmp_path)["neutrino-gateway"] == []


def test_up_without_binaries(tmp_path: Path, app_file: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["up", str(app_file), "--bin-dir", str(tmp_path / "nowhere")]) == 1
    assert "cannot find neutrino-worker and neutrino-gateway" in capsys.readouterr().err
