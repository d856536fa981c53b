"""One task cannot take a pool down: a worker that dies mid-call fails only that call (502 WorkerCrashed, not re-run
elsewhere unless the task opted in), and signals a task raises at its own process do not end the worker.

Destructive: each test starts its own cluster."""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from conftest import Launcher, assert_error_body, build_manifest, post_task

pytestmark = pytest.mark.destructive

POISON_APP = Path(__file__).parent / "apps" / "poison_app.py"


@pytest.fixture(scope="module")
def poison_manifest(tmp_path_factory) -> Path:
    return build_manifest(POISON_APP, tmp_path_factory.mktemp("poison") / "openapi.json")


def test_a_crashing_task_fails_alone_with_502_and_is_not_rerun(launcher: Launcher, poison_manifest):
    c = launcher.cluster(app=POISON_APP, manifest=poison_manifest, workers=2, concurrency=2, name="crash")
    try:
        with ThreadPoolExecutor(max_workers=4) as pool:
            echoes = [pool.submit(post_task, c.url, "echo", {"x": i}) for i in range(40)]
            crash = post_task(c.url, "die", {})
            results = [f.result() for f in echoes]
        body = assert_error_body(crash, 502, "WorkerCrashed")
        task_id = body["error"]["task_id"]
        assert body["error"]["status"] == "failed"
        row = c.log.wait_terminal(task_id)
        assert row["status"] == "failed" and "WorkerCrashed" in row["error"], row
        assert row["attempts"] <= 1, f"a crashed sync call must not be re-run elsewhere: {row}"
        # Exactly one worker died; the other one is still serving.
        dead = [w for w in c.workers if not w.alive()]
        assert len(dead) == 1, [w.alive() for w in c.workers]
        # Only calls that were on the dying worker at that moment may have failed, and only as WorkerCrashed.
        failed = [r for r in results if r.status != 200]
        assert all(r.status == 502 and r.json()["error"]["type"] == "WorkerCrashed" for r in failed), failed
        assert len(failed) <= 2, f"{len(failed)} echo calls failed besides the crash: {failed[:3]}"
        after = [post_task(c.url, "echo", {"x": i}) for i in range(10)]
        assert all(r.status == 200 for r in after), after
    finally:
        c.stop()


def test_a_task_opted_in_to_reruns_completes_on_another_worker(launcher: Launcher, poison_manifest, tmp_path):
    c = launcher.cluster(app=POISON_APP, manifest=poison_manifest, workers=2, concurrency=1, name="rerun")
    try:
        r = post_task(c.url, "die_once", {"marker_dir": str(tmp_path)})
        assert r.status == 200, r
        assert r.json()["result"]["attempt"] == 2
        row = c.log.wait_terminal(r.json()["task_id"], final_event="completed")
        assert row["status"] == "completed", row
    finally:
        c.stop()


def test_signals_from_a_task_do_not_end_its_worker(launcher: Launcher, poison_manifest):
    c = launcher.cluster(app=POISON_APP, manifest=poison_manifest, workers=1, concurrency=2, name="signals")
    try:
        r = post_task(c.url, "alarm", {"seconds": 1})
        assert r.status == 200 and r.json()["result"] == {"survived": True}, r
        r = post_task(c.url, "install_handler", {})
        assert_error_body(r, 500)
        assert r.json()["error"]["type"] == "ValueError", r.json()
        assert c.workers[0].alive()
        assert post_task(c.url, "echo", {"x": 7}).json()["result"] == 7
    finally:
        c.stop()
