"""The worker children of the autoscaled pools, which the autoscaler starts and drains: NATS workers of the
queued pools, and HTTP workers of the sync pools (which the gateway finds from their heartbeats, so any port
will do)."""

from __future__ import annotations

import threading
from typing import Callable, Dict, List, Optional, Sequence

from ..app import App
from . import autoscale
from .supervisor import CONSUMING, LISTENING, SHUTDOWN_GRACE_SECS, Child, Supervisor

__all__ = ["QueueWorkers", "drain_graces"]


class QueueWorkers:
    """The worker children of the autoscaled pools, started and retired by the autoscaler's thread: ``--mode
    nats`` for a queued pool, ``--mode http`` for a pool named in ``sync_pools``.

    A worker that crashes keeps its slot (the supervisor restarts it): it still counts as running, so the
    autoscaler does not start another one in its place."""

    def __init__(
        self,
        supervisor: Supervisor,
        binary: str,
        common: Sequence[str],
        drain_grace: Dict[str, float],
        sync_pools: Sequence[str] = (),
        env: Optional[Callable[[str], Optional[Dict[str, str]]]] = None,
        sync_extra: Sequence[str] = (),
    ):
        self._sync_extra = list(sync_extra)
        self._supervisor = supervisor
        self._env = env
        self._binary = binary
        self._common = list(common)
        self._drain_grace = drain_grace
        self._sync_pools = set(sync_pools)
        self._lock = threading.Lock()
        self._children: Dict[str, List[Child]] = {}
        self._numbers: Dict[str, int] = {}
        self._order: Dict[str, int] = {}

    def start(self, pool: str) -> Child:
        """Start the pool's next worker (``<pool>-<n>``, n counting on) without waiting for it to be ready."""
        with self._lock:
            number = self._numbers.get(pool, 0) + 1
            self._numbers[pool] = number
        name = f"{pool}-{number}"
        if pool in self._sync_pools:
            # SIGTERM: its last heartbeat says `stopping`, the gateway stops routing to it, its calls finish.
            argv = [self._binary, "--mode", "http", "--pool", pool, *self._common, *self._sync_extra, "--port", "0"]
            argv += ["--worker-id", name]
            ready = LISTENING
        else:
            argv = [self._binary, "--mode", "nats", "--pool", pool, *self._common, "--port", "0"]
            argv += ["--drain-grace", f"{self._drain_grace.get(pool, 1.0):g}", "--worker-id", name]
            ready = CONSUMING
        env = self._env(pool) if self._env is not None else None
        child = self._supervisor.spawn(name, argv, ready=ready, restart=lambda _child: argv, env=env)
        with self._lock:
            self._children.setdefault(pool, []).append(child)
            self._order[name] = number
        return child

    def children(self, pool: str) -> List[Child]:
        with self._lock:
            return list(self._children.get(pool, []))

    def state(self, child: Child) -> autoscale.WorkerState:
        with self._lock:
            return autoscale.WorkerState(child.name, child.process.pid, self._order.get(child.name, 0))

    def running(self, pool: str) -> List[autoscale.WorkerState]:
        """The pool's workers that are not draining: running, or waiting to be restarted."""
        with self._lock:
            slots = [c for c in self._children.get(pool, []) if self._supervisor.supervises(c)]
            self._children[pool] = slots
            live = [c for c in slots if c.retired_at is None]
        return [self.state(child) for child in live]

    def retire(self, pool: str, worker: autoscale.WorkerState) -> None:
        for child in self.children(pool):
            if child.name == worker.name:
                self._supervisor.retire(child)


def drain_graces(app: App, autoscaling: bool) -> Dict[str, float]:
    """``--drain-grace`` of each queued pool's workers.

    Autoscaled: the pool's largest task timeout plus 5 s, so a worker drained to scale in always finishes its
    running tasks (nothing is handed back because of scaling). Otherwise: within the supervisor's Ctrl-C grace.
    """
    graces: Dict[str, float] = {}
    for spec in app.tasks.values():
        if spec.execution_mode == "sync":
            continue
        if autoscaling:
            graces[spec.pool] = max(graces.get(spec.pool, 0.0), spec.timeout_ms / 1000.0 + 5.0)
        else:
            graces[spec.pool] = max(1.0, SHUTDOWN_GRACE_SECS - 3)
    return graces

