"""When ``neutrino up`` restarts a worker that exited without being asked to, and how it says so.

- Exit status 0, 75 (``EX_TEMPFAIL``: the worker recycled itself after N tasks / M MB) or 70 (``EX_SOFTWARE``: its
  interpreter was wedged past a task's hard timeout), after the worker was ready: restart at once.
- A crash (any other status, a signal such as SIGKILL) of a worker that was ready: the first one restarts at once
  (one poison task must not cost the pool a second of capacity), consecutive ones after 1 s, 2 s, 4 s … at most
  30 s; a worker that stayed up 30 s counts as healthy again, and so does one that started a task since it
  started (it printed ``started its first task``): its crash was a task's doing (one that calls ``os._exit``, say),
  not a worker that cannot start, so it restarts at once however often that happens, as Celery replaces a pool
  process. A worker that dies before it starts any task still backs off.
- An exit before the worker was ready: 1 s, 2 s, 4 s … at most 30 s (a broken worker must not spin).

Pure functions, so the policy is tested without processes; :class:`~neutrino.local.supervisor.Supervisor` applies it.
"""

from __future__ import annotations

import dataclasses
import signal
from typing import Tuple

__all__ = ["EX_TEMPFAIL", "RESTART_AT_ONCE", "RESTARTS_ENV", "Backoff", "plan_restart", "describe_exit"]

#: The exit status of a worker that recycled itself (sysexits.h EX_TEMPFAIL).
EX_TEMPFAIL = 75
#: The exit status of a worker whose interpreter was wedged by a task holding the GIL (sysexits.h EX_SOFTWARE).
EX_SOFTWARE = 70
#: Exit statuses after which a worker is restarted without delay.
RESTART_AT_ONCE = (0, EX_TEMPFAIL, EX_SOFTWARE)
#: Set for every worker child: how often its slot was restarted (0 on the first start); the worker reports it in
#: its heartbeats, so the gateway's /pools shows it.
RESTARTS_ENV = "NEUTRINO_WORKER_RESTARTS"


@dataclasses.dataclass(frozen=True)
class Backoff:
    """Delays before restarting a crashing child: ``first``, doubling with each consecutive crash, at most
    ``cap``; a child that stayed up ``reset_after`` seconds counts as healthy again."""

    first: float = 1.0
    cap: float = 30.0
    reset_after: float = 30.0
    #: Whether the first crash of a worker that was serving restarts it at once (the backoff starts at the second).
    immediate_first: bool = True

    def delay(self, crashes: int) -> float:
        """The delay after the ``crashes``-th consecutive crash (1: ``first``)."""
        return min(self.cap, self.first * 2.0 ** min(max(crashes - 1, 0), 62))


def plan_restart(
    status: int, uptime: float, crashes: int, backoff: Backoff, ready: bool = True, ran_task: bool = False
) -> Tuple[float, int]:
    """``(delay, consecutive crashes)`` after a child that had ``crashes`` consecutive crashes before exited with
    ``status`` (``Popen.returncode``: negative for a signal) after ``uptime`` seconds, having printed its ready
    line (``ready``) or not, and having started a task (``ran_task``) or not. Exiting 0 or 75 before it was ready
    counts as a crash: it would restart in a loop."""
    if uptime >= backoff.reset_after or (ready and ran_task):
        crashes = 0
    if status in RESTART_AT_ONCE and ready:
        return 0.0, crashes
    crashes += 1
    if not ready:
        return backoff.delay(crashes), crashes
    # A worker that was serving: its first crash restarts at once, a loop of them backs off.
    if not backoff.immediate_first:
        return backoff.delay(crashes), crashes
    return (0.0 if crashes == 1 else backoff.delay(crashes - 1)), crashes


def describe_exit(status: int) -> str:
    """``exited with status 3``, ``exited with status 75 (EX_TEMPFAIL)``, ``was killed by SIGKILL``."""
    if status < 0:
        try:
            name = signal.Signals(-status).name
        except ValueError:
            name = f"signal {-status}"
        return f"was killed by {name}"
    if status == EX_TEMPFAIL:
        return f"exited with status {status} (EX_TEMPFAIL)"
    if status == EX_SOFTWARE:
        return f"exited with status {status} (EX_SOFTWARE: wedged interpreter)"
    return f"exited with status {status}"
