"""One task cannot take a pool down: a worker that dies mid-call fails only that call (502 WorkerCrashed, not re-run
elsewhere unless the task opted in), and signals a task raises at its own process do not end the worker.

Destructive: each test starts its own cluster."""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

import time

from conftest import NATS_TASK_LOG, Launcher, assert_error_body, build_manifest, post_task, wait_for

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
        # Exactly one worker died (its process may still be exiting when the 502 arrives); the other one serves on.
        wait_for(lambda: sum(not w.alive() for w in c.workers) == 1, timeout=10,
                 message=lambda: f"one dead worker: {[w.alive() for w in c.workers]}")
        # Only calls that were on the dying worker at that moment (running or queued for its 2 threads) may have
        # failed: as WorkerCrashed, or, on a starved machine, past their deadline while the survivor caught up.
        failed = [r for r in results if r.status != 200]
        assert all((r.status, r.json()["error"]["type"]) in {(502, "WorkerCrashed"), (504, "TimeoutError")} for r in failed), failed
        assert len(failed) <= 4, f"{len(failed)} echo calls failed besides the crash: {failed[:3]}"
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


def _worker_and_gateway(launcher: Launcher, manifest: Path, name: str, *, concurrency: int, extra_args=()):
    d = launcher.new_dir(name)
    db = d / "tasks.sqlite"
    worker = launcher.worker(POISON_APP, db, log_dir=d, worker_id=f"{name}-w1", concurrency=concurrency,
                             extra_args=["--hard-timeout-grace", "1", *extra_args])
    gateway = launcher.gateway(manifest, {"fast": [worker.url]}, db, log_dir=d)
    return worker, gateway


def test_threads_stuck_past_the_hard_limit_are_replaced(launcher: Launcher, poison_manifest):
    """Two tasks that swallow their TimeoutError and keep sleeping take both threads; after timeout + grace the
    threads are given up and replaced, so the worker serves again without a restart."""
    worker, gateway = _worker_and_gateway(launcher, poison_manifest, "stuck", concurrency=2)
    try:
        with ThreadPoolExecutor(max_workers=2) as pool:
            stuck = list(pool.map(lambda _: post_task(gateway.url, "stubborn_sleep", {"seconds": 120}), range(2)))
        assert [r.status for r in stuck] == [504, 504], stuck
        # Capacity comes back once the grace has passed: both threads replaced, the same process serves.
        def serves():
            r = post_task(gateway.url, "echo", {"x": 1}, timeout=10)
            return r.status == 200
        wait_for(serves, timeout=20, message=lambda: "the worker to serve again after its threads were replaced")
        answers = [post_task(gateway.url, "echo", {"x": i}) for i in range(4)]
        assert all(a.status == 200 for a in answers), answers
        assert worker.alive()
    finally:
        gateway.stop()
        worker.stop()


def test_a_gil_holding_task_wedges_its_worker_which_exits_70(launcher: Launcher, poison_manifest):
    """A catastrophic regex holds the GIL: the soft timeout answers 504, the other running call ends 502
    WorkerCrashed, and the worker exits with status 70 for its supervisor to restart it."""
    worker, gateway = _worker_and_gateway(launcher, poison_manifest, "wedge", concurrency=2)
    try:
        with ThreadPoolExecutor(max_workers=2) as pool:
            other = pool.submit(post_task, gateway.url, "slow", {"seconds": 3.5})
            time.sleep(0.3)
            bomb = post_task(gateway.url, "regex_bomb", {})
            other = other.result()
        body = assert_error_body(bomb, 504, "TimeoutError")
        assert body["status"] == "timed_out"
        assert_error_body(other, 502, "WorkerCrashed")
        worker.ended_by_test = True
        assert worker.wait_exit(timeout=30) == 70, worker.output[-3000:]
        assert "wedged" in worker.output
        row = gateway_log(gateway).wait_terminal(bomb.json()["task_id"])
        assert row["status"] == "timed_out", row
    finally:
        gateway.stop()
        worker.stop()


def test_a_segfaulting_task_fails_with_502(launcher: Launcher, poison_manifest):
    c = launcher.cluster(app=POISON_APP, manifest=poison_manifest, workers=2, concurrency=1, name="segv")
    try:
        assert_error_body(post_task(c.url, "segfault", {}), 502, "WorkerCrashed")
        assert post_task(c.url, "echo", {"x": 2}).json()["result"] == 2
    finally:
        c.stop()


def gateway_log(gateway):
    from conftest import TaskLog
    return TaskLog(Path(gateway.argv[gateway.argv.index("--task-log") + 1].removeprefix("sqlite:")))


def _chatty_calls_read_back(cluster, lines: int, calls: int) -> list[tuple[dict, dict]]:
    """`calls` calls of `chatty` from 4 threads, each answer's record read the moment the answer is in: (answer, record)
    pairs."""
    def call_and_read(_: int) -> tuple[dict, dict]:
        r = post_task(cluster.url, "chatty", {"lines": lines})
        assert r.status == 200 and r.json()["result"] == lines, r  # the answer relayed carries none of the output
        return r.json(), cluster.get(f"/tasks/{r.json()['task_id']}").json()

    with ThreadPoolExecutor(max_workers=4) as pool:
        return list(pool.map(call_and_read, range(calls)))


def test_what_a_task_prints_is_kept_with_it_and_logged_with_its_id(launcher: Launcher, poison_manifest):
    c = launcher.cluster(app=POISON_APP, manifest=poison_manifest, workers=1, concurrency=4, name="output")
    try:
        # The record read right after the answer is whole: what the task printed rode behind the answer to the gateway,
        # which recorded it with the outcome. (CI once read a terminal record whose output the worker had not written
        # yet: a worker's writer that lingers to batch, as it does under load, lost that race to the gateway's.) The
        # first calls go over HTTP, the others over the call lane.
        expected = "line 0\nline 1\nline 2\nto stderr\n"
        calls = _chatty_calls_read_back(c, lines=3, calls=40)
        for _, record in calls:
            assert record["status"] == "completed" and record["output"] == expected, record
        task_id = calls[-1][0]["task_id"]
        wait_for(lambda: f"[task {task_id}] line 2" in c.workers[0].output, timeout=10,
                 message=lambda: "the worker log to carry the task's lines with its id")
    finally:
        c.stop()


def test_output_too_large_to_ride_with_the_answer_is_recorded_before_it(launcher: Launcher, poison_manifest):
    """When the output does not fit behind the answer (`--max-worker-answer-bytes`), the worker records it itself and
    answers once that write is committed."""
    c = launcher.cluster(app=POISON_APP, manifest=poison_manifest, workers=1, concurrency=4, name="output-large",
                         gateway_args=["--max-worker-answer-bytes", "1024"])
    try:
        expected = "".join(f"line {i}\n" for i in range(300)) + "to stderr\n"
        for answer, record in _chatty_calls_read_back(c, lines=300, calls=20):
            task_id = answer["task_id"]
            if NATS_TASK_LOG:
                # The worker's event reaches the gateway's task log through a NATS stream, after its PubAck.
                wait_for(lambda: c.get(f"/tasks/{task_id}").json()["output"] == expected, timeout=30,
                         message=lambda: f"the output stored with the task: {c.get(f'/tasks/{task_id}').json()}")
            else:
                assert record["status"] == "completed" and record["output"] == expected, record
    finally:
        c.stop()
