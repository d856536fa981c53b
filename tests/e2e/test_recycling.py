"""Workers recycle themselves like Celery's max_tasks_per_child / max_memory_per_child: after N tasks (or past M MB
resident) they drain and exit with status 75, and nothing is lost or run twice. Heartbeats carry the supervisor's
restart count (`NEUTRINO_WORKER_RESTARTS`) into /pools."""
from __future__ import annotations

from conftest import QUEUE_APP, count_events, post_task, wait_for

RECYCLED = 75


def test_an_http_worker_recycles_after_max_tasks(launcher, example_manifest):
    d = launcher.new_dir("recycle-http")
    worker = launcher.worker(launcher_app(), d / "tasks.sqlite", log_dir=d, worker_id="recycle-h1",
                             extra_args=["--max-tasks-per-worker", "3"])
    gateway = launcher.gateway(example_manifest, {"fast": [worker.url]}, d / "tasks.sqlite", log_dir=d)
    try:
        answers = [post_task(gateway.url, "echo", {"x": i}) for i in range(3)]
        assert [a.status for a in answers] == [200, 200, 200], answers
        worker.ended_by_test = True
        assert worker.wait_exit(timeout=30) == RECYCLED, worker.output[-3000:]
        assert "recycling" in worker.output
    finally:
        gateway.stop()
        worker.stop()


def test_a_nats_worker_recycles_and_loses_nothing(queue_stack, tmp_path):
    stack = queue_stack(app=QUEUE_APP, name="recycle")
    first = stack.worker("async", concurrency=1, extra_args=["--max-tasks-per-worker", "2"])
    journal = tmp_path / "journal.jsonl"
    ids = [stack.submit("journal", {"path": str(journal), "seconds": 0.2, "tag": f"t{i}"}) for i in range(5)]
    first.ended_by_test = True
    assert first.wait_exit(timeout=60) == RECYCLED, first.output[-3000:]
    second = stack.worker("async", concurrency=2, env_extra={"NEUTRINO_WORKER_RESTARTS": "1"})
    for task_id in ids:
        stack.log.wait_terminal(task_id, final_event="completed")
        assert count_events(stack.log, task_id, "completed") == 1, stack.log.events(task_id)
    by_worker = {}
    for task_id in ids:
        record = stack.log.task(task_id)
        assert record["attempts"] == 1, record
        by_worker[record["worker_id"]] = by_worker.get(record["worker_id"], 0) + 1
    assert by_worker.get(first.worker_id) == 2, by_worker

    def restarts_shown():
        workers = stack.pools()["async"]["workers"]
        return any(w["worker_id"] == second.worker_id and w["restarts"] == 1 for w in workers)

    wait_for(restarts_shown, timeout=20, message=lambda: f"/pools to show the restart count: {stack.pools()['async']}")


def launcher_app():
    from conftest import EXAMPLE_APP
    return EXAMPLE_APP
