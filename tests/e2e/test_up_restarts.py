"""How `neutrino up` restarts a fast worker that a task crashed (python/neutrino/local/restarts.py), end to end: the
real CLI as a subprocess with one fast worker of the poison app, whose `die` task ends its worker with `os._exit`.

A worker prints `served its first task` once its first task finishes. A crash after that was a task's doing, so the
worker is restarted at once every time, as Celery replaces a pool process: a poison task arriving every few seconds
must not push the pool into a backoff of up to 30 s. A worker that crashes before finishing any task still backs off
(it may not be able to serve at all)."""
from __future__ import annotations

import re

import pytest

from conftest import REPO_ROOT, post_task, wait_for
from test_autoscaler import Up, up  # noqa: F401  (the fixture: `neutrino up` as a subprocess)

POISON_APP = REPO_ROOT / "tests" / "e2e" / "apps" / "poison_app.py"
RESTART = r"fast-1 exited with status 9 after [\d.]+ s; restart {n} (now|in [\d.]+ s)"


@pytest.fixture
def up_poison(up):
    u = up("--fast-workers", "1", "--concurrency", "2", app=POISON_APP)
    u.wait_line(r"Press Ctrl-C to stop\.", timeout=240)
    return u, re.search(r"gateway\s+(http://127\.0\.0\.1:\d+)", u.text).group(1)


def _served(u: Up, gateway: str, times: int) -> None:
    """Calls `echo` until the (restarted) worker answers, then waits for its `served its first task` line (the
    `times`-th in the output)."""
    wait_for(lambda: post_task(gateway, "echo", {"x": 7}, timeout=10).status == 200, timeout=60,
             message="the fast worker answering echo")
    wait_for(lambda: len(re.findall(r"served its first task", u.text)) >= times, timeout=30,
             message=lambda: f"'served its first task' #{times} in neutrino up's output:\n{u.text[-3000:]}")


def test_a_worker_that_served_restarts_at_once_after_every_crash_and_one_that_did_not_backs_off(up_poison):
    u, gateway = up_poison
    for n in (1, 2, 3):
        _served(u, gateway, n)
        assert post_task(gateway, "die", {}, timeout=30).status == 502
        line = u.wait_line(RESTART.format(n=n), timeout=60)
        # Before, consecutive crashes backed off 1 s, 2 s ...: the second and third would wait.
        assert line.endswith("now"), u.text[-3000:]
    # The fourth process crashes before finishing a task: that is what a worker that cannot serve looks like.
    wait_for(lambda: re.search(r"fast-1 \| listening on http://", u.text.rsplit("restart 3 now", 1)[-1]), timeout=60,
             message=lambda: f"the fourth fast-1 listening:\n{u.text[-3000:]}")
    wait_for(lambda: post_task(gateway, "die", {}, timeout=30).status == 502, timeout=60,
             message="the fourth fast-1 taking the die call")
    line = u.wait_line(RESTART.format(n=4), timeout=60)
    assert line.endswith("in 1 s"), u.text[-3000:]
    _served(u, gateway, 4)
