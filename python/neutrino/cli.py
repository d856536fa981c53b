"""The ``neutrino`` command.

``neutrino openapi APP [-o FILE]``
    Print (or write) the app's OpenAPI manifest, the file the gateway is started with.

``neutrino up APP [--port 8080] [--host 127.0.0.1] [--fast-workers 2] [--queue-workers N] [--concurrency 4]
[--nats-port 4222] [--state-dir .neutrino] [--bin-dir DIR] [--scale POOL=MIN:MAX[:TARGET[:WINDOW]]]...
[--no-autoscale] [--heartbeat-interval SECONDS]``
    Run the whole app locally: when the app has async or gpu tasks, a child ``nats-server -js`` with its
    store under the state directory and NATS workers for each queued pool; HTTP workers for each sync pool;
    then the gateway in front of them, all sharing one SQLite task log under the state directory. The
    queued pools are autoscaled (:mod:`neutrino.autoscale`) to what the gateway's ``/pools`` wants. Ctrl-C
    stops the workers and the gateway first, nats-server last.

``APP`` is ``path/to/app.py``, ``module`` or ``module:attr``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import traceback
from collections import deque
from typing import Any, Deque, Dict, List, Optional, Pattern, Sequence, TextIO, Tuple

import neutrino

from . import autoscale
from ._loader import load_app, split_spec
from .app import App, TaskSpec
from .errors import NeutrinoError
from .manifest import build_openapi
from .schema import SchemaBuilder

__all__ = ["main", "Supervisor"]

WORKER_BINARY = "neutrino-worker"
GATEWAY_BINARY = "neutrino-gateway"
NATS_BINARY = "nats-server"
#: How long a child may take to print its ``listening on`` (or ``consuming``) line.
STARTUP_TIMEOUT_SECS = 60.0
#: How long nats-server may take to accept TCP connections.
NATS_STARTUP_TIMEOUT_SECS = 30.0
#: How long children get to exit after SIGTERM before they are killed.
SHUTDOWN_GRACE_SECS = 10.0
#: NATS's conventional monitoring port, used when free.
NATS_MONITOR_PORT = 8222

_LISTENING = re.compile(r"listening on (https?://\S+)")
#: What ``neutrino-worker --mode nats`` prints once it pulls from its pool's consumer.
_CONSUMING = re.compile(r"consuming (\S+) from (\S+)")


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Entry point of the ``neutrino`` console script; returns the exit status."""
    parser = _parser()
    args = parser.parse_args(argv)
    if not getattr(args, "handler", None):
        parser.print_help()
        return 2
    return args.handler(args)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="neutrino", description="Neutrino task orchestrator: Python SDK and CLI.")
    parser.add_argument("--version", action="version", version=f"neutrino {neutrino.__version__}")
    commands = parser.add_subparsers(title="commands", metavar="COMMAND")
    app_help = "the app: path/to/app.py, module or module:attr"

    openapi = commands.add_parser("openapi", help="print the app's OpenAPI manifest", description=_cmd_openapi.__doc__)
    openapi.add_argument("app", metavar="APP", help=app_help)
    openapi.add_argument("-o", "--output", metavar="FILE", help="write to FILE instead of stdout")
    openapi.set_defaults(handler=_cmd_openapi)

    up = commands.add_parser(
        "up", help="run the app locally (nats-server, workers, gateway)", description=_cmd_up.__doc__
    )
    up.add_argument("app", metavar="APP", help=app_help)
    up.add_argument("--host", default="127.0.0.1", help="the gateway's listen address (default: %(default)s)")
    up.add_argument("--port", type=int, default=8080, help="the gateway's port (default: %(default)s)")
    up.add_argument(
        "--fast-workers",
        type=_positive_int,
        default=2,
        metavar="N",
        help="HTTP workers per sync pool (default: %(default)s)",
    )
    up.add_argument(
        "--queue-workers",
        type=_positive_int,
        default=None,
        metavar="N",
        help="NATS workers each async/gpu pool starts with (default: the pool's scaling minimum; "
        "1 with --no-autoscale); the autoscaler then keeps the number the gateway's /pools wants",
    )
    up.add_argument(
        "--concurrency",
        type=_positive_int,
        default=4,
        metavar="N",
        help="Python threads per worker (default: %(default)s)",
    )
    up.add_argument(
        "--nats-port",
        type=_port,
        default=4222,
        metavar="PORT",
        help="client port of the local nats-server, started when the app has async or gpu tasks; "
        "a free one is picked when it is busy (default: %(default)s)",
    )
    up.add_argument(
        "--state-dir",
        default=".neutrino",
        metavar="DIR",
        help="where the manifest, the task log and the JetStream store live (default: %(default)s)",
    )
    up.add_argument(
        "--bin-dir",
        metavar="DIR",
        help=f"where {WORKER_BINARY} and {GATEWAY_BINARY} are "
        "(default: $NEUTRINO_BIN_DIR, else ./.build/release, ./.build/debug, $PATH)",
    )
    up.add_argument(
        "--scale",
        type=_scale_spec,
        action="append",
        default=[],
        metavar="POOL=MIN:MAX[:TARGET[:WINDOW]]",
        help="scaling policy of one pool, repeatable (given to the gateway, which computes each pool's desired "
        "replicas): MIN..MAX workers, TARGET tasks of backlog per replica (queued pools; default 10, gpu 1), "
        "WINDOW seconds of lower demand before scaling in (default 60); MIN 0 lets a pool scale to zero "
        "(gpu default: 0:1:1:60)",
    )
    up.add_argument(
        "--no-autoscale",
        action="store_true",
        help="keep the async/gpu pools at --queue-workers instead of following /pools",
    )
    up.add_argument(
        "--heartbeat-interval",
        type=_positive_float,
        default=None,
        metavar="SECONDS",
        help="how often workers announce themselves on NATS (default: the worker's, 2 s); "
        "the gateway forgets a worker after 4 missed intervals (at least 2 s)",
    )
    up.set_defaults(handler=_cmd_up)

    from . import deploy  # noqa: PLC0415 - `neutrino deploy` (renders k8s manifests)

    deploy.add_parser(commands, app_help)
    return parser


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return value


def _positive_float(text: str) -> float:
    value = float(text)
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError("must be a number above 0")
    return value


def _scale_spec(text: str) -> autoscale.ScaleSpec:
    try:
        return autoscale.parse_scale(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _port(text: str) -> int:
    value = int(text)
    if not 1 <= value <= 65535:
        raise argparse.ArgumentTypeError("must be a port number (1-65535)")
    return value


def _error(message: str) -> None:
    print(f"neutrino: error: {message}", file=sys.stderr)


def _load(spec: str) -> Optional[App]:
    """Load the app, reporting failures on stderr (with the app's traceback when its own code failed)."""
    try:
        return load_app(spec)
    except (NeutrinoError, FileNotFoundError, ModuleNotFoundError) as exc:
        _error(str(exc))
    except Exception:
        traceback.print_exc()
        _error(f"importing {spec} failed (traceback above)")
    return None


def _manifest_text(app: App) -> Optional[str]:
    try:
        return json.dumps(build_openapi(app), indent=2, ensure_ascii=False) + "\n"
    except NeutrinoError as exc:
        _error(str(exc))
        return None


def _load_with_manifest(spec: str) -> Optional[Tuple[App, str]]:
    """The app and its manifest text, or None after reporting on stderr why not."""
    app = _load(spec)
    if app is None:
        return None
    manifest = _manifest_text(app)
    return None if manifest is None else (app, manifest)


def _write_file(path: str, text: str) -> None:
    """Write ``text`` to ``path`` atomically (readers never see half a file)."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    temporary = f"{path}.tmp{os.getpid()}"
    with open(temporary, "w", encoding="utf-8") as file:
        file.write(text)
    os.replace(temporary, path)


# -- neutrino openapi ------------------------------------------------------------------------------


def _cmd_openapi(args: argparse.Namespace) -> int:
    """Print the app's OpenAPI 3.1 manifest (the gateway's --manifest file)."""
    loaded = _load_with_manifest(args.app)
    if loaded is None:
        return 1
    app, text = loaded
    if args.output:
        _write_file(args.output, text)
        print(f"wrote {args.output} ({len(app.tasks)} tasks)", file=sys.stderr)
    else:
        sys.stdout.write(text)
    return 0


# -- neutrino up -----------------------------------------------------------------------------------


class StartupError(Exception):
    """A child could not be started or did not come up."""


class _Interrupted(Exception):
    """SIGINT or SIGTERM arrived while starting up."""


@dataclasses.dataclass
class _Child:
    name: str
    process: subprocess.Popen
    #: The line that says the child is ready; group 1 becomes :attr:`url`.
    ready_pattern: Optional[Pattern[str]] = _LISTENING
    #: Stopped after every other child (nats-server: the workers and the gateway still talk to it).
    stop_last: bool = False
    relay: Optional[threading.Thread] = None
    url: Optional[str] = None
    listening: threading.Event = dataclasses.field(default_factory=threading.Event)
    #: The last lines it printed, to explain a failed start.
    tail: Deque[str] = dataclasses.field(default_factory=lambda: deque(maxlen=40))
    #: When the autoscaler sent it SIGTERM to scale in (monotonic); its exit is then expected.
    retired_at: Optional[float] = None


class Supervisor:
    """Starts child processes, relays their output line by line with a name prefix, and stops them all.

    Children run in their own session, so a Ctrl-C in the terminal reaches only the supervisor, which
    then stops them in order: SIGTERM, up to :data:`SHUTDOWN_GRACE_SECS` to exit, then SIGKILL; children
    spawned with ``stop_last`` (nats-server) only once every other child has exited.

    Children may be spawned and retired (:meth:`retire`) from another thread (the autoscaler) while
    :meth:`supervise` runs; a retired child's exit is expected and does not stop the others.
    """

    def __init__(self, out: TextIO = sys.stdout, prefix_width: int = 8) -> None:
        self.children: List[_Child] = []
        self._children_lock = threading.Lock()
        self._closed = False  # stop_all began: no new children
        self._out = out
        self._width = prefix_width
        self._print_lock = threading.Lock()
        self._wake = threading.Event()  # set by a signal, or when a child's output ends
        self._signals = 0

    # -- output

    def log(self, name: str, line: str) -> None:
        with self._print_lock:
            self._out.write(f"{name:>{self._width}} | {line}\n")
            self._out.flush()

    def say(self, text: str) -> None:
        with self._print_lock:
            self._out.write(text if text.endswith("\n") else text + "\n")
            self._out.flush()

    # -- signals

    def install_signal_handlers(self) -> Dict[int, Any]:
        """Route SIGINT and SIGTERM to :meth:`request_stop`; returns the previous handlers."""
        previous: Dict[int, Any] = {}
        for signum in (signal.SIGINT, signal.SIGTERM):
            previous[signum] = signal.signal(signum, lambda signum, frame: self.request_stop())
        return previous

    def request_stop(self) -> None:
        self._signals += 1
        self._wake.set()

    @property
    def stop_requested(self) -> bool:
        return self._signals > 0

    # -- children

    def spawn(
        self,
        name: str,
        argv: Sequence[str],
        ready: Optional[Pattern[str]] = _LISTENING,
        stop_last: bool = False,
    ) -> _Child:
        """Start ``argv``; ``ready`` is the pattern of the line that says it is ready (None: no such line)."""
        with self._children_lock:
            if self._closed:
                raise StartupError(f"not starting {name}: stopping")
            try:
                process = subprocess.Popen(
                    list(argv),
                    stdin=subprocess.DEVNULL,
                    stdout=subprocess.PIPE,
                    stderr=subprocess.STDOUT,
                    text=True,
                    errors="replace",
                    bufsize=1,
                    start_new_session=True,
                )
            except OSError as exc:
                raise StartupError(f"cannot start {name} ({argv[0]}): {exc}") from None
            child = _Child(name, process, ready_pattern=ready, stop_last=stop_last)
            child.relay = threading.Thread(target=self._relay, args=(child,), name=f"relay-{name}", daemon=True)
            child.relay.start()
            self.children.append(child)
        return child

    def retire(self, child: _Child) -> None:
        """SIGTERM ``child`` to scale in: a NATS worker drains (finishes its running tasks) and exits; its exit is
        reported, not treated as a failure."""
        if child.retired_at is None:
            child.retired_at = time.monotonic()
        _signal(child.process, signal.SIGTERM)

    def _snapshot(self) -> List[_Child]:
        with self._children_lock:
            return list(self.children)

    def _relay(self, child: _Child) -> None:
        assert child.process.stdout is not None
        for line in child.process.stdout:
            line = line.rstrip("\r\n")
            child.tail.append(line)
            if child.url is None and child.ready_pattern is not None:
                match = child.ready_pattern.search(line)
                if match:
                    child.url = match.group(1).rstrip("/")
                    child.listening.set()
            self.log(child.name, line)
        self._wake.set()

    def wait_listening(self, child: _Child, timeout: float = STARTUP_TIMEOUT_SECS) -> str:
        """Wait for the child's ``listening on http://HOST:PORT`` line; returns that URL."""
        return self.wait_ready(child, "'listening on http://HOST:PORT'", "it was listening", timeout)

    def wait_ready(self, child: _Child, expected: str, before: str, timeout: float = STARTUP_TIMEOUT_SECS) -> str:
        """Wait for the line matching the child's ready pattern; returns its first group.

        ``expected`` names that line and ``before`` the state it announces, for the error messages.
        """
        deadline = time.monotonic() + timeout
        while not child.listening.wait(0.05):
            if self.stop_requested:
                raise _Interrupted()
            status = child.process.poll()
            if status is not None:
                if child.relay is not None:
                    child.relay.join(1.0)  # let its last words reach the terminal first
                if child.url is None:
                    raise StartupError(f"{child.name} exited with status {status} before {before}{_hint(child)}")
            if time.monotonic() > deadline:
                raise StartupError(f"{child.name} did not print {expected} within {timeout:.0f} s")
        assert child.url is not None
        return child.url

    def wait_accepting(self, child: _Child, host: str, port: int, timeout: float = NATS_STARTUP_TIMEOUT_SECS) -> None:
        """Wait until the child accepts TCP connections on ``host:port`` (for servers that print no URL)."""
        deadline = time.monotonic() + timeout
        while True:
            if self.stop_requested:
                raise _Interrupted()
            status = child.process.poll()
            if status is not None:
                if child.relay is not None:
                    child.relay.join(1.0)
                raise StartupError(
                    f"{child.name} exited with status {status} before it accepted connections on {host}:{port}"
                )
            try:
                with socket.create_connection((host, port), timeout=0.5):
                    pass
            except OSError:
                if time.monotonic() > deadline:
                    raise StartupError(
                        f"{child.name} did not accept connections on {host}:{port} within {timeout:.0f} s"
                    ) from None
                time.sleep(0.05)
                continue
            if child.process.poll() is None:  # not someone else's server on a port taken meanwhile
                return

    def supervise(self) -> int:
        """Block until a signal (→ 0) or until a child exits on its own (→ 1); children retired by the
        autoscaler may exit (reported, then forgotten)."""
        while True:
            self._wake.wait(0.5)
            self._wake.clear()
            if self.stop_requested:
                return 0
            for child in self._snapshot():
                status = child.process.poll()
                if status is not None:
                    if child.relay is not None:
                        child.relay.join(1.0)
                    if child.retired_at is not None:
                        took = time.monotonic() - child.retired_at
                        self.say(f"autoscaler: {child.name} drained and exited with status {status} after {took:.1f} s")
                        with self._children_lock:
                            self.children.remove(child)
                        continue
                    self.say(f"neutrino: {child.name} exited unexpectedly with status {status}; stopping")
                    return 1

    def stop_all(self, grace: float = SHUTDOWN_GRACE_SECS) -> None:
        """Stop every running child: first all but the ``stop_last`` ones, then those (nats-server).

        Each group gets SIGTERM (the last started first), up to ``grace`` s to exit, then SIGKILL.
        """
        signals_before = self._signals
        with self._children_lock:
            self._closed = True
        children = self._snapshot()
        for last in (False, True):
            group = [child for child in reversed(children) if child.stop_last == last]
            self._stop_group(group, grace, signals_before)
        for child in children:
            if child.relay is not None:
                child.relay.join(1.0)

    def _stop_group(self, group: List[_Child], grace: float, signals_before: int) -> None:
        running = [child for child in group if child.process.poll() is None]
        for child in running:
            _signal(child.process, signal.SIGTERM)
        deadline = time.monotonic() + grace
        for child in running:
            while child.process.poll() is None:
                # A second Ctrl-C skips the grace period.
                if time.monotonic() >= deadline or self._signals > signals_before:
                    self.say(f"neutrino: {child.name} did not stop in time; killing it")
                    _signal(child.process, signal.SIGKILL)
                    child.process.wait()
                    break
                time.sleep(0.05)


def _hint(child: _Child) -> str:
    """Why a child may have refused to start, when its output says so."""
    text = "\n".join(child.tail)
    if re.search(r"Unknown option|Error: Unexpected argument", text) and re.search(r"--(nats|mode|drain-grace)", text):
        return (
            f" ({os.path.basename(str(child.process.args[0]))} does not know the JetStream options: "
            "are the binaries older than the JetStream path? rebuild with `swift build -c release`)"
        )
    return ""


def _signal(process: subprocess.Popen, signum: int) -> None:
    try:
        process.send_signal(signum)
    except ProcessLookupError:
        pass


def find_binaries(bin_dir: Optional[str] = None) -> Tuple[str, str]:
    """Paths of ``neutrino-worker`` and ``neutrino-gateway``.

    Looks in ``bin_dir`` (or ``$NEUTRINO_BIN_DIR``) only, when given; else in ``./.build/release``,
    ``./.build/debug`` (here and at the root of the repository holding this SDK), then on ``$PATH``.
    """
    explicit = bin_dir or os.environ.get("NEUTRINO_BIN_DIR")
    if explicit:
        folders = [explicit]
    else:
        repository = os.path.dirname(_sdk_path())
        folders = []
        for root in (os.getcwd(), repository):
            for configuration in ("release", "debug"):
                folder = os.path.join(root, ".build", configuration)
                if folder not in folders:
                    folders.append(folder)
    for folder in folders:
        worker, gateway = (os.path.join(folder, name) for name in (WORKER_BINARY, GATEWAY_BINARY))
        if _is_executable(worker) and _is_executable(gateway):
            return worker, gateway
    if not explicit:
        found_worker, found_gateway = shutil.which(WORKER_BINARY), shutil.which(GATEWAY_BINARY)
        if found_worker and found_gateway:
            return found_worker, found_gateway
    where = ", ".join(folders) + ("" if explicit else ", $PATH")
    raise StartupError(
        f"cannot find {WORKER_BINARY} and {GATEWAY_BINARY} (looked in {where}); "
        "build them with `swift build -c release` or pass --bin-dir"
    )


def _is_executable(path: str) -> bool:
    return os.path.isfile(path) and os.access(path, os.X_OK)


def _sdk_path() -> str:
    """The folder holding the ``neutrino`` package: what the embedded interpreter needs on ``sys.path``."""
    return os.path.dirname(os.path.dirname(os.path.abspath(neutrino.__file__)))


def _absolute_app_spec(spec: str) -> str:
    """The app spec with a file path made absolute (children may resolve it from elsewhere)."""
    target, attr = split_spec(spec)
    if target.endswith(".py") or os.sep in target or "/" in target:
        target = os.path.abspath(target)
        return f"{target}:{attr}" if attr else target
    return spec


def find_nats_server() -> str:
    """Path of ``nats-server`` on ``$PATH``."""
    found = shutil.which(NATS_BINARY)
    if not found:
        raise StartupError(
            f"the app has async or gpu tasks, which run through NATS JetStream, but {NATS_BINARY} is not on PATH; "
            "install it (Debian: `sudo apt-get install nats-server`) or run `make deps`"
        )
    return found


def _port_is_free(host: str, port: int) -> bool:
    """Whether a server could listen on ``host:port`` now (SO_REUSEADDR, as servers set it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError:
            return False
    return True


def _free_port(host: str, preferred: Optional[int] = None, avoid: Sequence[int] = ()) -> int:
    """``preferred`` when it is free, else a port the kernel picks."""
    if preferred is not None and preferred not in avoid and _port_is_free(host, preferred):
        return preferred
    while True:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
            probe.bind((host, 0))
            port = int(probe.getsockname()[1])
        if port not in avoid:
            return port


@dataclasses.dataclass
class _Nats:
    """The local nats-server: where clients and the monitoring page reach it, where it stores streams."""

    url: str
    monitor_url: str
    store_dir: str


def _cmd_up(args: argparse.Namespace) -> int:
    """Run the whole app locally: a nats-server with JetStream and NATS workers for each async/gpu pool (when
    the app has such tasks), HTTP workers for each sync pool, and the gateway in front of them.

    The async/gpu pools are autoscaled: once a second the gateway's ``/pools`` says how many workers each
    pool should have (the policy of ``--scale``), and workers are started, or drained with SIGTERM, to match.
    Pools with MIN 0 (gpu by default) start with none. Sync pools keep ``--fast-workers``.

    Stop with Ctrl-C (or SIGTERM): the workers and the gateway get SIGTERM (SIGKILL after 10 s), then
    nats-server.
    """
    loaded = _load_with_manifest(args.app)
    if loaded is None:
        return 1
    app, manifest = loaded
    pools = app.pools()
    sync_pools = [pool for pool, mode in pools.items() if mode == "sync"]
    queued_pools = {pool: mode for pool, mode in pools.items() if mode != "sync"}
    scale_specs: Dict[str, autoscale.ScaleSpec] = {spec.pool: spec for spec in args.scale}
    unknown = sorted(set(scale_specs) - set(pools))
    if unknown:
        _error(f"--scale names pools the app does not use: {', '.join(unknown)} (its pools: {', '.join(pools)})")
        return 1
    try:
        worker_binary, gateway_binary = find_binaries(args.bin_dir)
        nats_binary = find_nats_server() if queued_pools else None
    except StartupError as exc:
        _error(str(exc))
        return 1

    autoscaling = bool(queued_pools) and not args.no_autoscale
    policies = {pool: autoscale.policy_for(pool, mode, scale_specs) for pool, mode in queued_pools.items()}
    initial: Dict[str, int] = {}
    for pool, policy in policies.items():
        if not autoscaling:
            initial[pool] = args.queue_workers or 1
        elif args.queue_workers is None:
            initial[pool] = policy.min
        else:
            initial[pool] = max(policy.min, min(args.queue_workers, policy.max))

    state_dir = os.path.abspath(args.state_dir)
    manifest_path = os.path.join(state_dir, "openapi.json")
    task_log = "sqlite:" + os.path.join(state_dir, "tasks.db")
    _write_file(manifest_path, manifest)

    app_spec = _absolute_app_spec(args.app)
    worker_names = {pool: [f"{pool}-{i}" for i in range(1, args.fast_workers + 1)] for pool in sync_pools}
    most = {pool: (policies[pool].max if autoscaling else initial[pool]) for pool in queued_pools}
    names = ["gateway", "nats"] + [n for ns in worker_names.values() for n in ns]
    names += [f"{pool}-{most[pool] + 1}" for pool in queued_pools]

    supervisor = Supervisor(prefix_width=max(len(name) for name in names))
    previous_handlers = supervisor.install_signal_handlers()
    scaler: Optional[autoscale.Autoscaler] = None
    try:
        nats: Optional[_Nats] = None
        if nats_binary is not None:
            nats = _start_nats(supervisor, nats_binary, args.nats_port, state_dir)

        common = ["--app", app_spec, "--concurrency", str(args.concurrency), "--task-log", task_log]
        common += ["--python-path", _sdk_path()]
        if nats is not None:
            common += ["--nats", nats.url]  # heartbeats (and, for NATS workers, the queue)
        if args.heartbeat_interval is not None:
            common += ["--heartbeat-interval", f"{args.heartbeat_interval:g}"]
        workers: Dict[str, List[_Child]] = {}
        for pool in sync_pools:
            workers[pool] = [
                supervisor.spawn(name, [worker_binary, "--mode", "http", "--pool", pool, "--port", "0", *common])
                for name in worker_names[pool]
            ]

        queue_workers = _QueueWorkers(supervisor, worker_binary, common, _drain_graces(app, autoscaling))
        for pool, count in initial.items():
            for _ in range(count):
                queue_workers.start(pool)

        pool_urls = {
            pool: [supervisor.wait_listening(child) for child in children] for pool, children in workers.items()
        }
        for pool in queued_pools:
            for child in queue_workers.children(pool):
                supervisor.wait_ready(
                    child, f"'consuming pool_{pool} from {nats.url if nats else 'URL'}'", "it was consuming its queue"
                )

        gateway_argv = [gateway_binary, "--manifest", manifest_path]
        for pool, urls in pool_urls.items():
            gateway_argv += ["--http-pool", f"{pool}={','.join(urls)}"]
        if nats is not None:
            gateway_argv += ["--nats", nats.url]
        gateway_argv += ["--task-log", task_log, "--host", args.host, "--port", str(args.port)]
        for spec in args.scale:
            gateway_argv += ["--scale", spec.argument()]
        if args.heartbeat_interval is not None:
            gateway_argv += ["--heartbeat-timeout", f"{max(2.0, 4 * args.heartbeat_interval):g}"]
        dashboard = find_dashboard_dir(os.path.dirname(worker_binary))
        if dashboard is not None:
            gateway_argv += ["--dashboard-dir", dashboard]
        gateway_url = supervisor.wait_listening(supervisor.spawn("gateway", gateway_argv))

        queue_counts = {pool: len(queue_workers.children(pool)) for pool in queued_pools}
        supervisor.say(
            _banner(
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
                queued_pools,
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
    except _Interrupted:
        supervisor.say("neutrino: interrupted while starting; stopping")
        return 0
    except StartupError as exc:
        _error(str(exc))
        return 1
    finally:
        if scaler is not None:
            scaler.stop()
        supervisor.stop_all()
        for signum, handler in previous_handlers.items():
            signal.signal(signum, handler)


class _QueueWorkers:
    """The NATS worker children of the queued pools, started and retired by the autoscaler's thread."""

    def __init__(self, supervisor: Supervisor, binary: str, common: Sequence[str], drain_grace: Dict[str, float]):
        self._supervisor = supervisor
        self._binary = binary
        self._common = list(common)
        self._drain_grace = drain_grace
        self._lock = threading.Lock()
        self._children: Dict[str, List[_Child]] = {}
        self._numbers: Dict[str, int] = {}
        self._order: Dict[int, int] = {}

    def start(self, pool: str) -> _Child:
        """Start the pool's next worker (``<pool>-<n>``, n counting on) without waiting for it to be ready."""
        with self._lock:
            number = self._numbers.get(pool, 0) + 1
            self._numbers[pool] = number
        argv = [self._binary, "--mode", "nats", "--pool", pool, *self._common, "--port", "0"]
        argv += ["--drain-grace", f"{self._drain_grace.get(pool, 1.0):g}"]
        child = self._supervisor.spawn(f"{pool}-{number}", argv, ready=_CONSUMING)
        with self._lock:
            self._children.setdefault(pool, []).append(child)
            self._order[child.process.pid] = number
        return child

    def children(self, pool: str) -> List[_Child]:
        with self._lock:
            return list(self._children.get(pool, []))

    def state(self, child: _Child) -> autoscale.WorkerState:
        with self._lock:
            return autoscale.WorkerState(child.name, child.process.pid, self._order.get(child.process.pid, 0))

    def running(self, pool: str) -> List[autoscale.WorkerState]:
        """The pool's workers that run and are not draining."""
        with self._lock:
            live = [c for c in self._children.get(pool, []) if c.retired_at is None and c.process.poll() is None]
            self._children[pool] = [c for c in self._children.get(pool, []) if c.process.poll() is None]
        return [self.state(child) for child in live]

    def retire(self, pool: str, worker: autoscale.WorkerState) -> None:
        for child in self.children(pool):
            if child.process.pid == worker.pid:
                self._supervisor.retire(child)


def _drain_graces(app: App, autoscaling: bool) -> Dict[str, float]:
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


def find_dashboard_dir(bin_dir: Optional[str] = None) -> Optional[str]:
    """The dashboard's static files for the gateway's ``--dashboard-dir``: ``$NEUTRINO_DASHBOARD_DIR`` when set,
    else the ``dashboard/`` folder of the repository holding this SDK, of the one holding the binaries
    (``<repo>/.build/<configuration>``), or of the current directory; one with an ``index.html`` first."""
    configured = os.environ.get("NEUTRINO_DASHBOARD_DIR")
    if configured:
        return os.path.abspath(configured) if os.path.isdir(configured) else None
    roots = [os.path.dirname(_sdk_path())]
    if bin_dir:
        roots.append(os.path.dirname(os.path.dirname(os.path.abspath(bin_dir))))
    roots.append(os.getcwd())
    folders = []
    for root in roots:
        folder = os.path.join(root, "dashboard")
        if os.path.isdir(folder) and folder not in folders:
            folders.append(folder)
    with_index = [folder for folder in folders if os.path.isfile(os.path.join(folder, "index.html"))]
    return (with_index or folders or [None])[0]


def _start_nats(supervisor: Supervisor, binary: str, wanted_port: int, state_dir: str) -> _Nats:
    """Start ``nats-server -js`` on 127.0.0.1 (``wanted_port``, or a free one when that is busy) with its store
    under ``state_dir/nats``, and wait until it accepts connections."""
    host = "127.0.0.1"
    port = _free_port(host, wanted_port)
    if port != wanted_port:
        supervisor.say(f"neutrino: port {wanted_port} is busy; nats-server listens on {port} instead")
    monitor_port = _free_port(host, NATS_MONITOR_PORT, avoid=[port])
    store_dir = os.path.join(state_dir, "nats")
    os.makedirs(store_dir, exist_ok=True)
    argv = [binary, "-js", "-a", host, "-p", str(port), "-sd", store_dir, "-m", str(monitor_port)]
    child = supervisor.spawn("nats", argv, ready=None, stop_last=True)
    supervisor.wait_accepting(child, host, port)
    return _Nats(f"nats://{host}:{port}", f"http://{host}:{monitor_port}", store_dir)


def _banner(
    app: App,
    gateway_url: str,
    pool_urls: Dict[str, List[str]],
    queued_pools: Dict[str, str],
    queue_counts: Dict[str, int],
    nats: Optional[_Nats],
    state_dir: str,
    policies: Optional[Dict[str, autoscale.ScaleSpec]] = None,
    dashboard: Optional[str] = None,
) -> str:
    address = re.sub(r"^http://(127\.0\.0\.1|0\.0\.0\.0|\[::\]|\[::1\])(?=:)", "localhost", gateway_url)
    address = address[len("http://") :] if address.startswith("http://") else address
    lines = [
        "",
        f"Neutrino app {app.name!r} is up",
        f"  gateway     {gateway_url}   (manifest at /openapi.json, tasks at /tasks)",
        f"  dashboard   {gateway_url}/"
        + ("" if dashboard else "   (no dashboard/ folder found; set NEUTRINO_DASHBOARD_DIR)"),
        f"  pools       {gateway_url}/pools   (queue depth, workers, scaling)",
        f"  metrics     {gateway_url}/metrics   (Prometheus)",
    ]
    for pool, urls in pool_urls.items():
        lines.append(f"  pool {pool:<6} {len(urls)} HTTP worker{'s' if len(urls) != 1 else ''}: {', '.join(urls)}")
    for pool, mode in queued_pools.items():
        count = queue_counts.get(pool, 0)
        line = f"  pool {pool:<6} {count} NATS worker{'s' if count != 1 else ''} ({mode}), consumer pool_{pool}"
        policy = (policies or {}).get(pool)
        if policy is not None:
            line += (
                f", autoscaled {policy.min}..{policy.max} (target {policy.target:g} tasks/replica, "
                f"scale-down window {policy.window:g} s)"
            )
        lines.append(line)
    if queued_pools:
        lines.append(
            "  autoscaler  "
            + (
                "follows /pools' desired replicas of the queued pools, once a second"
                if policies is not None
                else "off (--no-autoscale)"
            )
        )
    if nats is not None:
        lines.append(f"  nats        {nats.url}   (JetStream store in {nats.store_dir})")
        lines.append(f"  monitoring  {nats.monitor_url}/jsz   (streams, consumers, queue depth)")
    lines.append(f"  state       {state_dir} (openapi.json, tasks.db{', nats/' if nats is not None else ''})")

    specs = list(app.tasks.values())
    sync_specs = [spec for spec in specs if spec.execution_mode == "sync"]
    queued_specs = [spec for spec in specs if spec.execution_mode != "sync"]
    if sync_specs or queued_specs:
        lines += ["", "Try:"]
    if sync_specs:
        example = sync_specs[0]
        lines += [
            f"  curl -s {address}/api/{example.name} -d '{_example_body(example)}'",
            f"  curl -s {address}/tasks/<task_id>",
            f"  curl -s '{address}/tasks?status=failed&function={example.name}'",
        ]
    if queued_specs:
        example = queued_specs[0]
        commands = [
            (f"curl -s {address}/api/{example.name} -d '{_example_body(example)}'", "202: queued, with its task_id"),
            (f"curl -s '{address}/tasks/<task_id>?wait=30'", "waits up to 30 s for the result"),
            (f"curl -s -X DELETE {address}/tasks/<task_id>", "cancels it while queued or running"),
        ]
        width = max(len(command) for command, _ in commands)
        lines += [f"  {command:<{width}}   # {comment}" for command, comment in commands]
    lines += ["", "Press Ctrl-C to stop.", ""]
    return "\n".join(lines)


def _example_body(spec: TaskSpec) -> str:
    return json.dumps({"args": _example_args(spec)}, separators=(",", ":"))


def _example_args(spec: TaskSpec) -> Dict[str, Any]:
    """Placeholder values for a task's required arguments, for the banner's curl example."""
    try:
        schema = SchemaBuilder().args_schema(spec.func)
    except NeutrinoError:
        return {}
    return {name: _sample(schema["properties"][name]) for name in schema["required"]}


def _sample(schema: Dict[str, Any]) -> Any:
    if "default" in schema:
        return schema["default"]
    if schema.get("enum"):
        return schema["enum"][0]
    for option in schema.get("anyOf", []):
        if option.get("type") != "null":
            return _sample(option)
    if "$ref" in schema:
        return {}
    samples: Dict[str, Any] = {
        "integer": 3,
        "number": 1.5,
        "string": "hello",
        "boolean": True,
        "array": [],
        "object": {},
    }
    return samples.get(str(schema.get("type")))


if __name__ == "__main__":
    sys.exit(main())
