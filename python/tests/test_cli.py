"""The ``neutrino`` command: ``openapi``, and ``up`` supervising fake worker/gateway binaries."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Dict, List

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

# A stand-in for neutrino-worker / neutrino-gateway: records its argv, announces a URL, runs until SIGTERM.
FAKE_BINARY = """\
#!{python}
import json, os, signal, sys, time
name = os.path.basename(sys.argv[0])
log_dir = os.environ["FAKE_LOG_DIR"]
with open(os.path.join(log_dir, f"{{name}}-{{os.getpid()}}.json"), "w") as f:
    json.dump({{"argv": sys.argv[1:], "pid": os.getpid()}}, f)
if os.environ.get("FAKE_FAIL") == name:
    print("fatal: cannot import the app", flush=True)
    sys.exit(3)
signal.signal(signal.SIGTERM, lambda *_: (print("bye", flush=True), sys.exit(0)))
print("starting up", flush=True)
port = 40000 + os.getpid() % 20000
print(f"listening on http://127.0.0.1:{{port}}", flush=True)
die_after = os.environ.get("FAKE_DIE_AFTER") if os.environ.get("FAKE_DIE") == name else None
deadline = time.monotonic() + float(die_after) if die_after else None
while deadline is None or time.monotonic() < deadline:
    time.sleep(0.02)
sys.exit(7)
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
    for name in ("neutrino-worker", "neutrino-gateway"):
        path = folder / name
        path.write_text(FAKE_BINARY.format(python=sys.executable))
        path.chmod(0o755)
    (tmp_path / "log").mkdir()
    return folder


def start_up(tmp_path: Path, app_file: Path, fake_bin: Path, *extra: str, **env: str) -> subprocess.Popen:
    environment = {**os.environ, "FAKE_LOG_DIR": str(tmp_path / "log"), "PYTHONUNBUFFERED": "1", **env}
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
    found: Dict[str, List[dict]] = {"neutrino-worker": [], "neutrino-gateway": []}
    for path in sorted((tmp_path / "log").iterdir()):
        found[path.name.rsplit("-", 1)[0]].append(json.loads(path.read_text()))
    return found


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def flag(argv: List[str], name: str) -> List[str]:
    return [argv[i + 1] for i, arg in enumerate(argv) if arg == name]


def test_up_starts_workers_then_gateway_and_stops_on_sigint(tmp_path: Path, app_file: Path, fake_bin: Path) -> None:
    process = start_up(tmp_path, app_file, fake_bin, "--fast-workers", "2", "--concurrency", "3")
    try:
        output = read_until(process, "Press Ctrl-C to stop.")
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGINT)
    rest, _ = process.communicate(timeout=30)
    assert process.returncode == 0, rest

    text = "\n".join(output)
    assert "fast-1 | listening on http://127.0.0.1:" in text and "fast-2 | starting up" in text
    assert "gateway | listening on http://127.0.0.1:" in text
    assert "curl -s localhost:" in text and '/api/echo -d \'{"args":{"x":3}}\'' in text
    assert "/tasks?status=failed&function=echo" in text
    assert "async" in text and "not started" in text  # the async pool is pending
    assert "bye" in rest  # children got SIGTERM

    state = tmp_path / "state"
    assert json.loads((state / "openapi.json").read_text())["x-neutrino-app"] == "cli_demo"
    started = children(tmp_path)
    workers, [gateway] = started["neutrino-worker"], started["neutrino-gateway"]
    assert len(workers) == 2
    for worker in workers:
        argv = worker["argv"]
        assert argv[:4] == ["--mode", "http", "--pool", "fast"]
        assert flag(argv, "--app") == [str(app_file)]
        assert flag(argv, "--port") == ["0"] and flag(argv, "--concurrency") == ["3"]
        assert flag(argv, "--task-log") == [f"sqlite:{state / 'tasks.db'}"]
        [python_path] = flag(argv, "--python-path")
        assert (Path(python_path) / "neutrino" / "__init__.py").is_file()
    argv = gateway["argv"]
    assert flag(argv, "--manifest") == [str(state / "openapi.json")]
    [pool] = flag(argv, "--http-pool")
    name, urls = pool.split("=")
    assert (
        name == "fast" and len(urls.split(",")) == 2 and all(u.startswith("http://127.0.0.1:") for u in urls.split(","))
    )
    assert flag(argv, "--task-log") == [f"sqlite:{state / 'tasks.db'}"]
    assert flag(argv, "--host") == ["127.0.0.1"] and flag(argv, "--port") == ["18080"]
    assert not any(alive(child["pid"]) for child in [*workers, gateway])


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
