"""A worker that dies (SIGKILL) is routed around; with every worker of the pool dead a call waits --worker-join-wait
for one to come back (a supervisor restarting it), and answers 503 when none does.

Destructive: each test starts its own cluster."""
from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from urllib.parse import urlsplit

import pytest

from conftest import EXAMPLE_APP, Cluster, Launcher, assert_error_body, post_task

from neutrino.errors import ServiceUnavailable

pytestmark = pytest.mark.destructive


@pytest.fixture
def doomed(launcher: Launcher, example_manifest) -> Cluster:
    c = launcher.cluster(app=EXAMPLE_APP, manifest=example_manifest, workers=2, concurrency=2, name="kill",
                         gateway_args=["--worker-join-wait", "0.5"])
    yield c
    c.stop()


def _echo(c: Cluster, i: int):
    return post_task(c.url, "echo", {"x": i, "label": "failover"})


def test_killed_worker_is_routed_around_then_503(doomed: Cluster):
    victim, survivor = doomed.workers
    victim_id, survivor_id = doomed.worker_ids

    # Both workers serve while alive.
    warm = [_echo(doomed, i) for i in range(6)]
    assert all(r.status == 200 for r in warm), warm
    assert {r.json()["worker_id"] for r in warm} == {victim_id, survivor_id}

    victim.kill()
    assert not victim.alive()

    with ThreadPoolExecutor(max_workers=8) as pool:
        after = list(pool.map(lambda i: _echo(doomed, i), range(50)))
    failed = [r for r in after if r.status != 200]
    assert not failed, f"{len(failed)} of 50 calls failed after one worker was killed, e.g. {failed[:3]}"
    served_by = {r.json()["worker_id"] for r in after}
    assert served_by == {survivor_id}, served_by
    for r in after:
        row = doomed.log.wait_terminal(r.json()["task_id"], final_event="completed")
        assert row["status"] == "completed" and row["worker_id"] == survivor_id, row

    survivor.kill()
    assert not survivor.alive()
    for i in range(3):
        body = assert_error_body(_echo(doomed, i), 503, "NoWorkerAvailable")
        assert "came back within 0.5 seconds (--worker-join-wait)" in body["error"]["message"], body
    with pytest.raises(ServiceUnavailable):
        doomed.client().call("echo", x=1)
    health = doomed.get("/healthz")
    assert health.status == 200, f"the gateway itself should stay alive: {health!r}"
    assert doomed.gateway.alive()


def test_all_workers_down_from_the_start_503(launcher: Launcher, example_manifest):
    """A gateway whose only worker was killed answers 503 (not a hang, not a 500)."""
    c = launcher.cluster(app=EXAMPLE_APP, manifest=example_manifest, workers=1, concurrency=1, name="dead",
                         gateway_args=["--worker-join-wait", "0.2"])
    try:
        c.workers[0].kill()
        body = assert_error_body(c.post("echo", {"x": 1}), 503)
        assert body["error"]["type"], body
        # Other routes keep working.
        assert c.get("/tasks?limit=1").status == 200
    finally:
        c.stop()
    assert c.gateway.proc.returncode == 0, (
        f"gateway exited {c.gateway.proc.returncode} on SIGTERM:\n{c.gateway.output[-3000:]}")


def test_a_call_waits_for_its_pool_to_come_back(launcher: Launcher, example_manifest):
    """Every worker of the pool down (killed, restarting): a call waits for one to accept connections again instead
    of failing at once, and runs there. Calls waiting together share one probe of the pool."""
    c = launcher.cluster(app=EXAMPLE_APP, manifest=example_manifest, workers=1, concurrency=2, name="back",
                         gateway_args=["--worker-join-wait", "60"])
    replacement = None
    try:
        assert _echo(c, 0).status == 200
        old = c.workers[0]
        port = urlsplit(old.url).port
        old.kill()
        assert not old.alive()

        answers: list = []
        callers = [threading.Thread(target=lambda i=i: answers.append(_echo(c, i))) for i in range(1, 5)]
        for t in callers:
            t.start()
        # No answer while nothing listens on the worker's port (a 503 at once would be here already).
        for t in callers:
            t.join(0.5)
        assert not answers, answers

        # A supervisor brings the worker back on the same port.
        replacement = launcher.worker(EXAMPLE_APP, c.db_path, log_dir=old.log_path.parent, worker_id="back-w2",
                                      concurrency=2, port=port,
                                      nats_url=c.nats.url if c.nats is not None else None)
        for t in callers:
            t.join(120)  # a bound, not a measurement
        assert len(answers) == 4 and all(r.status == 200 for r in answers), answers
        assert {r.json()["worker_id"] for r in answers} == {"back-w2"}
        for r in answers:
            row = c.log.wait_terminal(r.json()["task_id"], final_event="completed")
            assert row["status"] == "completed" and row["worker_id"] == "back-w2", row
        # The waits left one warning for each refused call, not one per probe.
        warnings = c.gateway.output.count("worker unreachable")
        assert warnings <= 8, f"{warnings} 'worker unreachable' lines:\n{c.gateway.output[-3000:]}"
    finally:
        if replacement is not None:
            replacement.stop()
        c.stop()
