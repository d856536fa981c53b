"""The local autoscaler of ``neutrino up``.

The scaling policy has one implementation, in the gateway: ``GET /pools`` reports for each pool
``scaling.desired`` (the replica count the policy wants now, after the scale-down stabilisation window) with its
inputs. This module only *applies* it to the NATS worker child processes that ``neutrino up`` supervises:

- once a second it reads ``/pools`` (on its own thread);
- for each queued pool (async, gpu, any other JetStream pool) it starts workers until it runs ``desired`` of
  them, or, when ``desired`` is below what runs, sends SIGTERM to the least busy ones. A NATS worker drains on
  SIGTERM: it stops fetching and finishes the tasks it runs (``neutrino up`` gives autoscaled workers a
  ``--drain-grace`` of at least the pool's largest task timeout), so scaling in never hands a task back;
- for each sync pool (when ``neutrino up`` runs NATS) the same with HTTP workers, by busy-thread utilisation: the
  gateway finds them from their heartbeats, and a drained one (SIGTERM) says ``stopping`` in its last heartbeat,
  so the gateway stops routing to it while its calls in flight finish.

Every decision is printed with its inputs, e.g.
``autoscaler: async 1 → 3 (backlog 25 = pending 24 + in flight 1, target 10/replica)``.

The pure parts (``--scale`` parsing, :func:`decide`) are separate from the thread (:class:`Autoscaler`) so they
can be tested without processes.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
import threading
import urllib.error
import urllib.request
from typing import Any, Callable, Dict, Iterable, List, Mapping, Optional, Sequence

__all__ = [
    "ScaleSpec",
    "parse_scale",
    "DEFAULT_POLICY",
    "policy_for",
    "WorkerState",
    "Decision",
    "decide",
    "describe",
    "Autoscaler",
]

_POOL_NAME = re.compile(r"^[a-z0-9_]+$")

#: How often ``/pools`` is read.
POLL_INTERVAL_SECS = 1.0
#: A bound on the workers one pool may get, whatever ``/pools`` says (a typo in ``--scale`` must not fork-bomb
#: the machine).
MAX_LOCAL_REPLICAS = 64


@dataclasses.dataclass(frozen=True)
class ScaleSpec:
    """One ``--scale POOL=MIN:MAX[:TARGET[:WINDOW]]``: the scaling policy of one pool.

    ``target`` and ``window`` are ``None`` when not given (the gateway's defaults apply).
    """

    pool: str
    min: int
    max: int
    target: Optional[float] = None
    window: Optional[float] = None

    def argument(self) -> str:
        """The value of the gateway's ``--scale`` flag for this policy."""
        parts = [str(self.min), str(self.max)]
        if self.target is not None:
            parts.append(_number(self.target))
            if self.window is not None:
                parts.append(_number(self.window))
        return f"{self.pool}={':'.join(parts)}"


#: The gateway's default policies by pool mode (docs/observability-contract.md): min, max, target, window.
DEFAULT_POLICY: Dict[str, ScaleSpec] = {
    "sync": ScaleSpec("sync", 1, 4, 0.7, 60.0),
    "async": ScaleSpec("async", 1, 4, 10.0, 60.0),
    "gpu": ScaleSpec("gpu", 0, 1, 1.0, 60.0),
}


def _number(value: float) -> str:
    return f"{value:g}"


def parse_scale(text: str) -> ScaleSpec:
    """Parse ``POOL=MIN:MAX[:TARGET[:WINDOW]]``; raises :class:`ValueError` with a readable message."""
    pool, sep, rest = text.partition("=")
    pool = pool.strip()
    if not sep or not rest:
        raise ValueError(f"expected POOL=MIN:MAX[:TARGET[:WINDOW]], got {text!r}")
    if not _POOL_NAME.match(pool):
        raise ValueError(f"pool name {pool!r} must match [a-z0-9_]+")
    fields = rest.split(":")
    if not 2 <= len(fields) <= 4:
        raise ValueError(f"expected MIN:MAX[:TARGET[:WINDOW]] after '{pool}=', got {rest!r}")
    try:
        low, high = int(fields[0]), int(fields[1])
    except ValueError:
        raise ValueError(f"MIN and MAX must be whole numbers in {text!r}") from None
    if low < 0:
        raise ValueError(f"MIN must be 0 or more in {text!r}")
    if high < 1 or high < low:
        raise ValueError(f"MAX must be at least 1 and at least MIN in {text!r}")
    if high > MAX_LOCAL_REPLICAS:
        raise ValueError(f"MAX above {MAX_LOCAL_REPLICAS} in {text!r}")
    target: Optional[float] = None
    window: Optional[float] = None
    if len(fields) >= 3:
        target = _float(fields[2], "TARGET", text)
        if not target > 0:
            raise ValueError(f"TARGET must be above 0 in {text!r}")
    if len(fields) == 4:
        window = _float(fields[3], "WINDOW", text)
        if window < 0:
            raise ValueError(f"WINDOW must be 0 or more seconds in {text!r}")
    return ScaleSpec(pool, low, high, target, window)


def _float(field: str, name: str, text: str) -> float:
    try:
        value = float(field)
    except ValueError:
        raise ValueError(f"{name} must be a number in {text!r}") from None
    if not math.isfinite(value):
        raise ValueError(f"{name} must be finite in {text!r}")
    return value


def policy_for(pool: str, mode: str, specs: Mapping[str, ScaleSpec]) -> ScaleSpec:
    """The pool's policy: its ``--scale`` when given (unset fields from the mode's default), else the default."""
    default = DEFAULT_POLICY.get(mode, DEFAULT_POLICY["async"])
    spec = specs.get(pool)
    if spec is None:
        return dataclasses.replace(default, pool=pool)
    return ScaleSpec(
        pool,
        spec.min,
        spec.max,
        spec.target if spec.target is not None else default.target,
        spec.window if spec.window is not None else default.window,
    )


# -- the decision ----------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class WorkerState:
    """A worker child of one pool as the autoscaler sees it: its name, its pid, and the order it was started."""

    name: str
    pid: int
    started: int = 0


@dataclasses.dataclass(frozen=True)
class Decision:
    """What to do with one pool: start ``start`` workers, or stop the workers in ``stop`` (least busy first)."""

    pool: str
    current: int
    desired: int
    start: int = 0
    stop: Sequence[WorkerState] = ()
    #: busy slots of each worker in ``stop`` by pid (None: the gateway has not heard from it yet)
    busy: Mapping[int, Optional[int]] = dataclasses.field(default_factory=dict)
    reason: str = ""


def decide(
    snapshot: Mapping[str, Any], running: Sequence[WorkerState], limit: int = MAX_LOCAL_REPLICAS
) -> Optional[Decision]:
    """The action for one pool, given its entry of ``GET /pools`` and the workers it runs now (not draining).

    ``None`` when nothing is to be done or the entry says nothing usable (no ``scaling.desired``). Scale-in picks
    the least busy workers by the busy slots their heartbeats reported (a worker the gateway has not heard from
    counts as idle: it is still starting), the most recently started first among equals.
    """
    scaling = snapshot.get("scaling") or {}
    desired = scaling.get("desired")
    if not isinstance(desired, (int, float)) or isinstance(desired, bool):
        return None
    desired = max(0, min(int(desired), limit))
    current = len(running)
    if desired == current:
        return None
    pool = str(snapshot.get("name", ""))
    if desired > current:
        return Decision(pool, current, desired, start=desired - current, reason=describe(snapshot))
    busy = busy_by_pid(snapshot)
    ordered = sorted(running, key=lambda w: (busy.get(w.pid) or 0, -w.started))
    victims = ordered[: current - desired]
    return Decision(
        pool, current, desired, stop=victims, busy={w.pid: busy.get(w.pid) for w in victims},
        reason=describe(snapshot, scaling_down=True),
    )


def busy_by_pid(snapshot: Mapping[str, Any]) -> Dict[int, Optional[int]]:
    """``{pid: busy slots}`` of the workers in a pool's ``/pools`` entry."""
    out: Dict[int, Optional[int]] = {}
    for worker in snapshot.get("workers") or []:
        pid = worker.get("pid")
        if isinstance(pid, int):
            busy = worker.get("busy")
            out[pid] = int(busy) if isinstance(busy, (int, float)) and not isinstance(busy, bool) else None
    return out


def describe(snapshot: Mapping[str, Any], scaling_down: bool = False) -> str:
    """The inputs of the pool's scaling decision, e.g. ``backlog 25 = pending 24 + in flight 1, target 10/replica``;
    a scale-down also names the stabilisation window it waited for."""
    scaling = snapshot.get("scaling") or {}
    queue = snapshot.get("queue") or {}
    parts: List[str] = []
    if queue:
        pending = _int(queue.get("pending"))
        in_flight = _int(queue.get("in_flight"))
        parts.append(f"backlog {pending + in_flight} = pending {pending} + in flight {in_flight}")
    target = scaling.get("target")
    workers = snapshot.get("workers") or []
    if isinstance(target, (int, float)) and not isinstance(target, bool):
        if not queue and snapshot.get("mode") == "sync":
            parts.append(f"target utilisation {_number(float(target))}")
        else:
            parts.append(f"target {_number(float(target))}/replica")
    window = scaling.get("down_window_seconds")
    if scaling_down and isinstance(window, (int, float)) and not isinstance(window, bool):
        parts.append(f"after the {_number(float(window))} s scale-down window")
    if not queue and workers:
        busy = sum(_int(w.get("busy")) for w in workers)
        slots = sum(_int(w.get("concurrency")) for w in workers)
        parts.append(f"busy {busy}/{slots} threads")
    if not parts and scaling.get("reason"):
        parts.append(str(scaling["reason"]))
    return ", ".join(parts)


def _int(value: Any) -> int:
    return int(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else 0


# -- the thread ------------------------------------------------------------------------------------


class Autoscaler:
    """Applies ``/pools``' ``desired`` to the queued pools' worker children, once a second, on its own thread.

    ``running(pool)`` lists the pool's live, non-draining workers; ``start(pool)`` starts one and returns its
    :class:`WorkerState`; ``retire(pool, worker)`` sends it SIGTERM (it drains and exits). ``say`` prints a line.
    """

    def __init__(
        self,
        gateway_url: str,
        pools: Mapping[str, str],
        running: Callable[[str], List[WorkerState]],
        start: Callable[[str], WorkerState],
        retire: Callable[[str, WorkerState], None],
        say: Callable[[str], None],
        interval: float = POLL_INTERVAL_SECS,
        fetch: Optional[Callable[[], Mapping[str, Any]]] = None,
    ) -> None:
        self.gateway_url = gateway_url.rstrip("/")
        self.pools = dict(pools)  # queued pools: name -> mode
        self._running = running
        self._start = start
        self._retire = retire
        self._say = say
        self._interval = interval
        self._fetch = fetch or self._fetch_pools
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None
        self._unreachable: Optional[str] = None
        self._noted: set = set()

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="autoscaler", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop deciding (it never starts a worker after this returns)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(10.0)

    def _fetch_pools(self) -> Mapping[str, Any]:
        request = urllib.request.Request(f"{self.gateway_url}/pools", headers={"Accept": "application/json"})
        with urllib.request.urlopen(request, timeout=5) as response:
            return json.loads(response.read())

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                self.step()
            except Exception as exc:  # keep scaling; say what went wrong
                self._say(f"autoscaler: error: {exc!r}")
            self._stop.wait(self._interval)

    def step(self) -> List[Decision]:
        """One round: read ``/pools`` and apply it; returns what was decided."""
        try:
            document = self._fetch()
        except (OSError, ValueError, urllib.error.URLError) as exc:
            text = str(getattr(exc, "reason", exc))
            if self._unreachable is None:
                self._say(f"autoscaler: cannot read {self.gateway_url}/pools ({text}); holding the pools as they are")
            self._unreachable = text
            return []
        if self._unreachable is not None:
            self._say(f"autoscaler: {self.gateway_url}/pools answers again")
            self._unreachable = None
        decisions: List[Decision] = []
        for entry in document.get("pools") or []:
            name = entry.get("name")
            if name not in self.pools:
                if name and name not in self._noted and entry.get("mode") == "sync":
                    self._noted.add(name)
                    desired = (entry.get("scaling") or {}).get("desired")
                    self._say(
                        f"autoscaler: pool {name} (sync) keeps its HTTP workers: the gateway's worker list is static "
                        f"(/pools desired {desired} is advisory here; Kubernetes scales it)"
                    )
                continue
            if self._stop.is_set():
                break
            decision = decide(entry, self._running(name))
            if decision is not None:
                self._apply(decision)
                decisions.append(decision)
        return decisions

    def _apply(self, decision: Decision) -> None:
        head = f"autoscaler: {decision.pool} {decision.current} → {decision.desired} ({decision.reason})"
        if decision.start:
            started: List[WorkerState] = []
            for _ in range(decision.start):
                if self._stop.is_set():
                    break
                started.append(self._start(decision.pool))
            names = ", ".join(f"{w.name} (pid {w.pid})" for w in started)
            self._say(f"{head}; starting {names}")
        else:
            names = ", ".join(
                f"{w.name} (pid {w.pid}, busy {_or_unknown(decision.busy.get(w.pid))})" for w in decision.stop
            )
            self._say(f"{head}; draining {names}")
            for worker in decision.stop:
                self._retire(decision.pool, worker)


def _or_unknown(value: Optional[int]) -> str:
    return "?" if value is None else str(value)


def summary(pools: Mapping[str, str], specs: Mapping[str, ScaleSpec]) -> Iterable[str]:
    """One line per queued pool for the banner: ``MIN..MAX, target T/replica, down window W s``."""
    for pool, mode in pools.items():
        policy = policy_for(pool, mode, specs)
        yield (
            f"{pool}: {policy.min}..{policy.max} workers, target {_number(policy.target or 0)} tasks/replica, "
            f"scale-down window {_number(policy.window or 0)} s"
        )
