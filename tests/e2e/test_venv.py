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
