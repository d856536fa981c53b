"""``neutrino up`` as a library: :func:`up` runs an app's whole stack locally until Ctrl-C.

A child ``nats-server -js`` (when the app has async or gpu tasks, or sync pools to autoscale) with its store under
the state directory, NATS workers for each queued pool, HTTP workers for each sync pool, then the gateway in front
of them, all sharing one SQLite task log under the state directory; every pool is autoscaled
(:mod:`neutrino.local.autoscale`) to what the gateway's ``/pools`` wants (the gateway finds HTTP workers from their
heartbeats), and workers that exit on their own are restarted (:mod:`neutrino.local.restarts`).
"""

from __future__ import annotations

import dataclasses
import functools
import os
import signal
import sys
import json
import time
import urllib.parse
import urllib.request
from typing import Callable, Dict, List, Optional, Sequence

from ..loading import LoadedApp, absolute_app_spec, write_text_atomic
from ..natsauth import NatsCredentials, load_or_create
from . import autoscale
from .banner import banner
from .binaries import find_binaries, find_dashboard_dir, find_nats_server, sdk_path
from .nats import NatsServer, start_nats
from .supervisor import Child, Interrupted, StartupError, Supervisor
from .workers import QueueWorkers, drain_graces

__all__ = ["UpOptions", "up"]


@dataclasses.dataclass
class UpOptions:
    """The options of ``neutrino up`` (its command-line flags)."""

    host: str = "127.0.0.1"
    port: int = 8080
    #: HTTP workers per sync pool.
    fast_workers: int = 2
    #: NATS workers each queued pool starts with (None: the pool's scaling minimum; 1 without autoscaling).
    queue_workers: Optional[int] = None
    concurrency: int = 4
    #: Python threads of a fast (sync) worker
    fast_concurrency: int = 16
    nats_port: int = 4222
    state_dir: str = ".neutrino"
    bin_dir: Optional[str] = None
    scale: Sequence[autoscale.ScaleSpec] = ()
    autoscaling: bool = True
    heartbeat_interval: Optional[float] = None
    #: nats-server nodes: 1 (a single server), or N forming a JetStream cluster on loopback with replicated streams.
    nats_cluster: int = 1
    #: OTLP/HTTP base URL every process exports its traces to (``--otlp-endpoint``); None: off unless the environment
    #: (``OTEL_EXPORTER_OTLP_ENDPOINT``, inherited by the children) says otherwise.
    otlp_endpoint: Optional[str] = None


def _print_error(message: str) -> None:
    print(f"neutrino: error: {message}", file=sys.stderr)


def up(loaded: LoadedApp, options: UpOptions, error: Callable[[str], None] = _print_error) -> int:
    """Run the whole app locally: a nats-server with JetStream and NATS workers for each async/gpu pool (when
    the app has such tasks), HTTP workers for each sync pool, and the gateway in front of them.

    Every pool is autoscaled: once a second the gateway's ``/pools`` says how many workers each pool should have
    (the policy of ``--scale``: backlog for queued pools, busy-thread utilisation for sync pools), and workers are
    started, or drained with SIGTERM, to match. Pools with MIN 0 (gpu by default) start with none; sync pools
    start with ``--fast-workers`` (within their MIN..MAX). The gateway learns a sync pool's HTTP workers from their
    heartbeats and stops routing to one the moment it drains. A sync-only app runs without NATS unless ``--scale``
    names a sync pool; then, and with ``--no-autoscale``, sync pools keep ``--fast-workers`` in a static
    ``--http-pool`` list.

    A worker that exits without being asked to is restarted in its slot (same name and worker id; an HTTP worker
    on the same port): at once after exit status 0 or 75, and after a crash once it had started a task (a poison
    task's doing); else with a backoff of 1 s doubling to 30 s (:mod:`neutrino.local.restarts`). A worker that fails
    before it is ready during start-up is not restarted: start-up stops and ``error`` shows its output.

    Stop with Ctrl-C (or SIGTERM): the workers and the gateway get SIGTERM (SIGKILL after 10 s), then
    nats-server; the stack also stops when the gateway or nats-server exits. Returns the exit status: 0 after a
    signal, 1 when it could not start (``error`` says why) or the gateway or nats-server exited.
    """
    app, manifest = loaded.app, loaded.manifest
    pools = app.pools()
    sync_pools = [pool for pool, mode in pools.items() if mode == "sync"]
    queued_pools = {pool: mode for pool, mode in pools.items() if mode != "sync"}
    scale_specs: Dict[str, autoscale.ScaleSpec] = {spec.pool: spec for spec in options.scale}
    unknown = sorted(set(scale_specs) - set(pools))
    if unknown:
        error(f"--scale names pools the app does not use: {', '.join(unknown)} (its pools: {', '.join(pools)})")
        return 1
    try:
        worker_binary, gateway_binary = find_binaries(options.bin_dir)
        # A sync-only app runs without NATS (a static --http-pool list) unless --scale names one of its pools.
        scaled_sync = options.autoscaling and any(pool in scale_specs for pool in sync_pools)
        nats_binary = find_nats_server() if queued_pools or scaled_sync else None
    except StartupError as exc:
        error(str(exc))
        return 1

    # With NATS the gateway discovers HTTP workers from their heartbeats: sync pools are elastic (and autoscaled).
    elastic = nats_binary is not None
    autoscaling = options.autoscaling and (bool(queued_pools) or elastic)
    scaled = {pool: mode for pool, mode in pools.items() if mode != "sync" or (elastic and autoscaling)}
    policies = {pool: autoscale.policy_for(pool, mode, scale_specs) for pool, mode in scaled.items()}
    initial: Dict[str, int] = {}
    for pool, policy in policies.items():
        wanted = options.fast_workers if pools[pool] == "sync" else options.queue_workers
        if not autoscaling:
            initial[pool] = wanted or 1
        elif wanted is None:
            initial[pool] = policy.min
        else:
            initial[pool] = max(policy.min, min(wanted, policy.max))

    state_dir = os.path.abspath(options.state_dir)
    manifest_path = os.path.join(state_dir, "openapi.json")
    task_log = "sqlite:" + os.path.join(state_dir, "tasks.db")
    write_text_atomic(manifest_path, manifest)

    app_spec = absolute_app_spec(loaded.spec)
    static_sync = [pool for pool in sync_pools if pool not in scaled]
    worker_names = {pool: [f"{pool}-{i}" for i in range(1, options.fast_workers + 1)] for pool in static_sync}
    most = {pool: (policies[pool].max if autoscaling else initial[pool]) for pool in scaled}
    names = ["gateway", "nats"] + [f"nats-{i}" for i in range(1, options.nats_cluster + 1)]
    names += [n for ns in worker_names.values() for n in ns]
    names += [f"{pool}-{most[pool] + 1}" for pool in scaled]

    venv = worker_virtualenv()
    supervisor = Supervisor(prefix_width=max(len(name) for name in names), env={"VIRTUAL_ENV": venv} if venv else None)
    if venv:
        supervisor.say(f"neutrino: the workers use the virtualenv {venv} (the one this neutrino runs from)")
    previous_handlers = supervisor.install_signal_handlers()
    scaler: Optional[autoscale.Autoscaler] = None
    failure: Optional[StartupError] = None
    try:
        nats: Optional[NatsServer] = None
        creds: Optional[NatsCredentials] = None
        if nats_binary is not None:
            # NATS authenticates every client: a user per pool and one for the gateway, random passwords kept in
            # the state directory (mode 0600), handed to the children in their environment, never on argv.
            creds = load_or_create(os.path.join(state_dir, "nats-auth.json"), pools)
            nats = start_nats(
                supervisor, nats_binary, options.nats_port, state_dir, cluster=options.nats_cluster, credentials=creds
            )

        def worker_env(pool: str) -> Optional[Dict[str, str]]:
            return creds.worker_env(pool) if creds is not None else None

        nats_args = nats.client_args() if nats is not None else []

        common = ["--app", app_spec, "--concurrency", str(options.concurrency), "--task-log", task_log]
        common += ["--python-path", sdk_path()]
        common += nats_args  # heartbeats (and, for NATS workers, the queue)
        if options.heartbeat_interval is not None:
            common += ["--heartbeat-interval", f"{options.heartbeat_interval:g}"]
        tracing = ["--otlp-endpoint", options.otlp_endpoint] if options.otlp_endpoint else []
        common += tracing
        fast_common = common + ["--concurrency", str(options.fast_concurrency)]  # the later --concurrency wins
        workers: Dict[str, List[Child]] = {}
        for pool in static_sync:
            workers[pool] = [
                supervisor.spawn(
                    name,
                    _http_worker_argv(worker_binary, pool, name, 0, fast_common),
                    restart=functools.partial(_restart_http_worker, worker_binary, pool, fast_common),
                    env=worker_env(pool),
                )
                for name in worker_names[pool]
            ]

        elastic_sync = [pool for pool in sync_pools if pool in scaled]
        queue_workers = QueueWorkers(
            supervisor, worker_binary, common, drain_graces(app, autoscaling), sync_pools=elastic_sync, env=worker_env,
            sync_extra=["--concurrency", str(options.fast_concurrency)],
        )
        for pool, count in initial.items():
            for _ in range(count):
                queue_workers.start(pool)

        pool_urls = {
            pool: [supervisor.wait_listening(child) for child in children] for pool, children in workers.items()
        }
        for pool in elastic_sync:
            pool_urls[pool] = [supervisor.wait_listening(child) for child in queue_workers.children(pool)]

        gateway_argv = [gateway_binary, "--manifest", manifest_path]
        for pool in static_sync:
            gateway_argv += ["--http-pool", f"{pool}={','.join(pool_urls[pool])}"]
        gateway_argv += nats_args
        gateway_argv += ["--task-log", task_log, "--host", options.host, "--port", str(options.port)]
        for spec in options.scale:
            gateway_argv += ["--scale", spec.argument()]
        if options.heartbeat_interval is not None:
            gateway_argv += ["--heartbeat-timeout", f"{max(2.0, 4 * options.heartbeat_interval):g}"]
        gateway_argv += tracing
        dashboard = find_dashboard_dir(os.path.dirname(worker_binary))
        if dashboard is not None:
            gateway_argv += ["--dashboard-dir", dashboard]
        gateway_env = creds.gateway_env() if creds is not None else None
        gateway_url = supervisor.wait_listening(supervisor.spawn("gateway", gateway_argv, env=gateway_env))
        # The sync workers announce themselves within a heartbeat interval: wait for the gateway to route to them.
        _wait_discovered(supervisor, gateway_url, {pool: len(pool_urls[pool]) for pool in elastic_sync})
        # The gateway provisions the pools' consumers (a worker logged in to NATS may not), so the queue workers
        # are ready only after it started.
        for pool in queued_pools:
            for child in queue_workers.children(pool):
                supervisor.wait_ready(
                    child, f"'consuming pool_{pool} from {nats.url if nats else 'URL'}'", "it was consuming its queue"
                )

        queue_counts = {pool: len(queue_workers.children(pool)) for pool in queued_pools}
        supervisor.say(
            banner(
                app,
                gateway_url,
                pool_urls,
                queued_pools,
                queue_counts,
                nats,
                state_dir,
                policies if autoscaling else None,
                dashboard,
            )
        )
        if autoscaling:
            scaler = autoscale.Autoscaler(
                gateway_url,
                scaled,
                running=queue_workers.running,
                start=lambda pool: queue_workers.state(queue_workers.start(pool)),
                retire=queue_workers.retire,
                say=supervisor.say,
            )
            scaler.start()
        status = supervisor.supervise()
        if status == 0:
            supervisor.say("neutrino: stopping")
        return status
    except Interrupted:
        supervisor.say("neutrino: interrupted while starting; stopping")
        return 0
    except StartupError as exc:
        failure = exc
        return 1
    finally:
        if scaler is not None:
            scaler.stop()
        supervisor.stop_all()
        for signum, handler in previous_handlers.items():
            signal.signal(signum, handler)
        if failure is not None:  # last, below the other children's goodbyes: why it did not start
            error(failure.report())


def worker_virtualenv() -> Optional[str]:
    """The virtualenv the workers get: the one this ``neutrino`` runs from, activated or not (``sys.prefix`` of a
    venv), so ``venv/bin/neutrino up`` serves the app with that venv's packages. None outside a venv (an activated
    ``VIRTUAL_ENV`` is then passed on as it is). The worker embeds its own CPython and loads the venv's
    ``site-packages`` into it; a venv of another Python minor version is refused by the worker at start-up."""
    if sys.prefix != getattr(sys, "base_prefix", sys.prefix):
        return os.path.abspath(sys.prefix)
    return None


def _wait_discovered(supervisor: Supervisor, gateway_url: str, counts: Dict[str, int], timeout: float = 30.0) -> None:
    """Until the gateway's ``/pools`` lists ``counts[pool]`` HTTP workers of each elastic sync pool (bounded: after
    ``timeout`` it says so and goes on; the workers join when their heartbeats arrive)."""
    if not counts:
        return
    deadline = time.monotonic() + timeout
    seen: Dict[str, int] = {}
    failures = 0
    while time.monotonic() < deadline and not supervisor.stop_requested:
        try:
            with urllib.request.urlopen(f"{gateway_url}/pools", timeout=5) as response:
                document = json.loads(response.read())
            failures = 0
        except (OSError, ValueError) as exc:
            failures += 1
            if failures >= 10:  # a second of errors from a gateway that said it listens: do not hold start-up
                supervisor.say(f"neutrino: cannot read {gateway_url}/pools ({exc}); not waiting for the sync workers")
                return
            document = {}
        seen = {
            entry.get("name"): len([w for w in entry.get("workers") or [] if w.get("mode") == "http" and w.get("url")])
            for entry in document.get("pools") or []
        }
        if all(seen.get(pool, 0) >= n for pool, n in counts.items()):
            return
        time.sleep(0.1)
    supervisor.say(f"neutrino: the gateway has not heard from every sync worker yet ({seen}); they join when it does")


def _http_worker_argv(binary: str, pool: str, name: str, port: int, common: Sequence[str]) -> List[str]:
    """An HTTP worker's command line; ``--worker-id`` is its slot's name, the same after every restart."""
    return [binary, "--mode", "http", "--pool", pool, "--port", str(port), *common, "--worker-id", name]


def _restart_http_worker(binary: str, pool: str, common: Sequence[str], child: Child) -> List[str]:
    """The command line of an HTTP worker started again: the port it listened on before, since the gateway's
    ``--http-pool`` list of worker URLs is fixed."""
    port = urllib.parse.urlsplit(child.url).port if child.url else None
    return _http_worker_argv(binary, pool, child.name, port or 0, common)
