"""The worker honours VIRTUAL_ENV: an app importing a module that exists only in a venv made with Debian's
`/usr/bin/python3 -m venv --without-pip` starts and runs with VIRTUAL_ENV set, and fails to start without it."""
from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from conftest import VENV_APP, Launcher, post_task

DEBIAN_PYTHON = Path("/usr/bin/python3")
MODULE = "neutrino_e2e_venv_only"


@pytest.fixture(scope="module")
def venv_dir(tmp_path_factory) -> Path:
    if not DEBIAN_PYTHON.exists():
        pytest.skip("Debian's /usr/bin/python3 is not installed")
    d = tmp_path_factory.mktemp("venv") / "venv"
    proc = subprocess.run([str(DEBIAN_PYTHON), "-m", "venv", "--without-pip", str(d)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, f"venv creation failed: {proc.stdout}\n{proc.stderr}"
    site = d / "lib" / "python3.11" / "site-packages"
    assert site.is_dir(), f"{site} missing (is /usr/bin/python3 Python 3.11?)"
    (site / f"{MODULE}.py").write_text('VALUE = "only-in-the-venv"\n')
    return d


def test_module_only_in_the_venv_is_not_elsewhere(venv_dir: Path):
    """Sanity: Debian's interpreter outside the venv cannot import the module."""
    proc = subprocess.run([str(DEBIAN_PYTHON), "-c", f"import {MODULE}"], capture_output=True, text=True,
                          timeout=60, cwd="/")
    assert proc.returncode != 0


def test_worker_with_virtual_env_imports_venv_module(launcher: Launcher, venv_dir: Path):
    """With VIRTUAL_ENV=DIR the worker starts, serves the app's task, and the module came from DIR."""
    d = launcher.new_dir("venv-ok")
    worker = launcher.worker(VENV_APP, d / "tasks.sqlite", log_dir=d, worker_id="venv-w1", concurrency=1,
                             env_extra={"VIRTUAL_ENV": str(venv_dir)})
    try:
        resp = post_task(worker.url, "venv_value", {})
        assert resp.status == 200, resp
        result = resp.json()["result"]
        assert result["value"] == "only-in-the-venv"
        assert Path(result["file"]).resolve().is_relative_to(venv_dir.resolve()), result
    finally:
        worker.stop()


def test_worker_without_virtual_env_fails_to_start(launcher: Launcher, venv_dir: Path):
    """Without VIRTUAL_ENV the app's import fails: the worker exits non-zero, names the missing module,
    and never announces it is listening."""
    d = launcher.new_dir("venv-missing")
    worker = launcher.worker(VENV_APP, d / "tasks.sqlite", log_dir=d, worker_id="venv-w2", concurrency=1,
                             wait=False)
    try:
        code = worker.wait_exit()
        assert code != 0, f"worker exited 0 although its app cannot be imported:\n{worker.output}"
        assert MODULE in worker.output, f"the failure does not name the missing module:\n{worker.output}"
        assert "listening on" not in worker.output, worker.output
    finally:
        worker.stop()


# ------------------------------------------------------------------ `neutrino up` run from a venv's interpreter

PYENV_312 = Path("/root/.pyenv/versions/3.12.1/bin/python3.12")


def _neutrino_up(python: Path, app: Path, tmp_path: Path) -> tuple[subprocess.Popen, str, list[str]]:
    """`PYTHON -m neutrino.cli up APP` with the venv NOT activated (no VIRTUAL_ENV in its environment; the SDK
    reaches that interpreter by PYTHONPATH); its output is collected in the returned list by a reader thread."""
    import os
    import socket
    import threading

    from conftest import BIN_DIR, PYTHON_SDK, REPO_ROOT

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONHOME")}
    env.update({"PYTHONPATH": str(PYTHON_SDK), "PYTHONUNBUFFERED": "1"})
    argv = [str(python), "-m", "neutrino.cli", "up", str(app), "--bin-dir", str(BIN_DIR), "--state-dir",
            str(tmp_path / "state"), "--host", "127.0.0.1", "--port", str(port), "--fast-workers", "1"]
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                            text=True, env=env, cwd=str(REPO_ROOT))
    lines: list[str] = []

    def read():
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.append(line.rstrip("\n"))

    threading.Thread(target=read, daemon=True).start()
    return proc, f"http://127.0.0.1:{port}", lines


def _stop(proc: subprocess.Popen) -> None:
    import signal

    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(30)


def test_up_from_an_unactivated_venv_gives_the_workers_its_packages(venv_dir: Path, tmp_path: Path):
    """`DIR/bin/python -m neutrino.cli up` (DIR a venv of Debian's Python 3.11, not activated): the workers import
    the module that only DIR has, and say which venv they use."""
    from conftest import wait_for

    proc, url, lines = _neutrino_up(venv_dir / "bin" / "python", VENV_APP, tmp_path)
    try:
        wait_for(lambda: any("Press Ctrl-C to stop" in line for line in lines) or proc.poll() is not None,
                 timeout=240, message=lambda: "neutrino up to start:\n" + "\n".join(lines[-50:]))
        assert proc.poll() is None, "neutrino up exited:\n" + "\n".join(lines)
        assert any(f"the workers use the virtualenv {venv_dir}" in line for line in lines), "\n".join(lines)
        resp = post_task(url, "venv_value", {})
        assert resp.status == 200, resp
        result = resp.json()["result"]
        assert result["value"] == "only-in-the-venv", result
        assert Path(result["file"]).resolve().is_relative_to(venv_dir.resolve()), result
    finally:
        _stop(proc)


def test_up_from_a_venv_of_another_python_is_refused_clearly(tmp_path: Path):
    """A venv of Python 3.12 (the worker embeds 3.11): `neutrino up` stops at start-up (no crash loop) with the
    worker's refusal, which names both versions and how to make a matching venv."""
    if not PYENV_312.exists():
        pytest.skip(f"no Python 3.12 at {PYENV_312} to make a mismatched venv with")
    d = tmp_path / "venv312"
    made = subprocess.run([str(PYENV_312), "-m", "venv", "--without-pip", str(d)], capture_output=True, text=True,
                          timeout=120)
    assert made.returncode == 0, made.stderr
    app = tmp_path / "plain_app.py"
    app.write_text("from neutrino import App\napp = App('plain')\n\n@app.task()\ndef hi() -> str:\n    return 'hi'\n")
    proc, _, lines = _neutrino_up(d / "bin" / "python", app, tmp_path)
    try:
        code = proc.wait(240)
    finally:
        _stop(proc)
    text = "\n".join(lines)
    assert code == 1, text
    assert "is Python 3.12, but this worker embeds Python 3.11" in text, text
    assert "-m venv DIR" in text, text
    assert "Press Ctrl-C to stop" not in text, text
    assert "restarting" not in text.lower(), text


def test_up_shows_a_worker_only_import_error_in_full_and_stops(tmp_path: Path):
    """An app that imports in the CLI but not in the worker: `neutrino up` exits 1 with the worker's traceback
    (module and line), once, instead of restarting it in a loop."""
    app = tmp_path / "worker_broken_app.py"
    app.write_text(
        "import sys\nfrom neutrino import App\n"
        "if sys.argv[0] == 'neutrino-worker':\n"
        "    import neutrino_e2e_missing_in_worker  # noqa: F401\n"
        "app = App('broken')\n\n@app.task()\ndef hi() -> str:\n    return 'hi'\n")
    import sys

    proc, _, lines = _neutrino_up(Path(sys.executable), app, tmp_path)
    try:
        code = proc.wait(240)
    finally:
        _stop(proc)
    text = "\n".join(lines)
    assert code == 1, text
    assert "ModuleNotFoundError: No module named 'neutrino_e2e_missing_in_worker'" in text, text
    assert "worker_broken_app.py" in text and "Traceback" in text, text
    assert "is not restarted" in text, text
