"""How `neutrino up` restarts a fast worker that a task crashed (python/neutrino/local/restarts.py), end to end: the
real CLI as a subprocess with one fast worker of the poison app, whose `die` task ends its worker with `os._exit`.

A worker prints `started its first task` as a Python thread starts its first task. A crash after that was a task's
doing (even when that first task is the one that crashed it), so the worker is restarted at once every time, as
Celery replaces a pool process: a poison task arriving every few seconds must not push the pool into a backoff of up
to 30 s. A worker that crashes before it starts any task still backs off (it may not be able to start at all)."""
from __future__ import annotations

import os
import re
import signal
import subprocess

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


def _started(u: Up, gateway: str, times: int) -> None:
    """Calls `echo` until the (restarted) worker answers, then waits for its `started its first task` line (the
    `times`-th in the output)."""
    wait_for(lambda: post_task(gateway, "echo", {"x": 7}, timeout=10).status == 200, timeout=60,
             message="the fast worker answering echo")
    wait_for(lambda: len(re.findall(r"started its first task", u.text)) >= times, timeout=30,
             message=lambda: f"'started its first task' #{times} in neutrino up's output:\n{u.text[-3000:]}")


def _fast_1_pid(u: Up) -> int:
    """The pid of this `neutrino up`'s worker fast-1 (a child of its process)."""
    out = subprocess.run(["pgrep", "-P", str(u.proc.pid), "-f", "--", r" --worker-id fast-1( |$)"], capture_output=True,
                         text=True).stdout.split()
    assert len(out) == 1, out
    return int(out[0])


def test_a_worker_that_ran_a_task_restarts_at_once_after_every_crash_and_one_that_did_not_backs_off(up_poison):
    u, gateway = up_poison
    for n in (1, 2, 3):
        _started(u, gateway, n)
        assert post_task(gateway, "die", {}, timeout=30).status == 502
        line = u.wait_line(RESTART.format(n=n), timeout=60)
        # Before, consecutive crashes backed off 1 s, 2 s ...: the second and third would wait.
        assert line.endswith("now"), u.text[-3000:]
    # A task that crashes the worker as its very first one is still a task's doing.
    wait_for(lambda: re.search(r"fast-1 \| listening on http://", u.text.rsplit("restart 3 now", 1)[-1]), timeout=60,
             message=lambda: f"the fourth fast-1 listening:\n{u.text[-3000:]}")
    assert post_task(gateway, "die", {}, timeout=30).status == 502
    assert u.wait_line(RESTART.format(n=4), timeout=60).endswith("now"), u.text[-3000:]
    # The fifth process dies before it starts any task: that is what a worker that cannot start looks like.
    wait_for(lambda: re.search(r"fast-1 \| listening on http://", u.text.rsplit("restart 4 now", 1)[-1]), timeout=60,
             message=lambda: f"the fifth fast-1 listening:\n{u.text[-3000:]}")
    os.kill(_fast_1_pid(u), signal.SIGKILL)
    line = u.wait_line(r"fast-1 was killed by SIGKILL after [\d.]+ s; restart 5 (now|in [\d.]+ s)", timeout=60)
    assert line.endswith("in 1 s"), u.text[-3000:]
    _started(u, gateway, 5)
