"""The process supervisor of ``neutrino up``: starts child processes, relays their output line by line with a name
prefix, waits until each is ready, restarts workers that exit on their own (:mod:`neutrino.local.restarts`), and
stops them all in order."""

from __future__ import annotations

import dataclasses
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import deque
from typing import Any, Callable, Deque, Dict, List, Optional, Pattern, Sequence, TextIO

from .restarts import RESTARTS_ENV, Backoff, describe_exit, plan_restart

__all__ = [
    "STARTUP_TIMEOUT_SECS",
    "NATS_STARTUP_TIMEOUT_SECS",
    "SHUTDOWN_GRACE_SECS",
    "LISTENING",
    "CONSUMING",
    "STARTUP_OUTPUT_LINES",
    "StartupError",
    "Interrupted",
    "Child",
    "Supervisor",
    "RestartArgv",
    "send_signal",
]

#: How long a child may take to print its ``listening on`` (or ``consuming``) line.
STARTUP_TIMEOUT_SECS = 60.0
#: How long nats-server may take to accept TCP connections.
NATS_STARTUP_TIMEOUT_SECS = 30.0
#: How long children get to exit after SIGTERM before they are killed.
SHUTDOWN_GRACE_SECS = 10.0
#: How many lines a child's start-up output keeps for the error message when it fails to start.
STARTUP_OUTPUT_LINES = 1000

#: What the gateway and ``neutrino-worker --mode http`` print once they accept connections.
LISTENING = re.compile(r"listening on (https?://\S+)")
#: What ``neutrino-worker --mode nats`` prints once it pulls from its pool's consumer.
CONSUMING = re.compile(r"consuming (\S+) from (\S+)")
#: What a worker prints once, when a Python thread starts the first task it runs: it got through its start-up, so a
#: crash after that is a task's doing (:func:`~neutrino.local.restarts.plan_restart`).
STARTED_TASK = re.compile(r"^started its first task$")


class StartupError(Exception):
    """A child could not be started or did not come up. ``output`` is what that child printed since it started
    (its traceback, when the app could not be imported), for the error message."""

    def __init__(self, message: str, output: Sequence[str] = (), omitted: int = 0) -> None:
        super().__init__(message)
        self.output = list(output)
        #: Earlier lines left out of ``output`` (it keeps the last STARTUP_OUTPUT_LINES).
        self.omitted = omitted

    @classmethod
    def of(cls, child: "Child", message: str) -> "StartupError":
        """An error about ``child`` with what its current process printed so far."""
        output = list(child.startup_output)
        return cls(message, output, child.startup_lines - len(output))

    def report(self) -> str:
        """The message with the child's output below it, indented (trailing blank lines left out)."""
        output = list(self.output)
        while output and not output[-1].strip():
            output.pop()
        if not output:
            return str(self)
        head = f"{self}; its output" + (f" (the last {len(self.output)} lines)" if self.omitted else "") + ":"
        return "\n".join([head, *(f"    {line}" if line.strip() else "" for line in output)])


class Interrupted(Exception):
    """SIGINT or SIGTERM arrived while starting up."""


#: A reason to restart a child: ``restart(child)`` returns the argv to start it with again.
RestartArgv = Callable[["Child"], Sequence[str]]


@dataclasses.dataclass(eq=False)
class Child:
    """One supervised child: a slot with a name, and the process that runs in it now (a restart replaces the
    process, never the slot)."""

    name: str
    process: subprocess.Popen
    #: The line that says the child is ready; group 1 becomes :attr:`url`.
    ready_pattern: Optional[Pattern[str]] = LISTENING
    #: Stopped after every other child (nats-server: the workers and the gateway still talk to it).
    stop_last: bool = False
    #: How to start it again when it exits on its own (workers); None: its exit stops everything.
    restart_argv: Optional[RestartArgv] = None
    #: Variables added to the child's environment (secrets such as NATS passwords: never on its command line).
    env: Optional[Dict[str, str]] = None
    relay: Optional[threading.Thread] = None
    #: Group 1 of the first ready line (a server's URL); kept across restarts.
    url: Optional[str] = None
    #: Set once the current process printed its ready line.
    listening: threading.Event = dataclasses.field(default_factory=threading.Event)
    #: Set once the current process said it started its first task (:data:`STARTED_TASK`).
    ran_task: threading.Event = dataclasses.field(default_factory=threading.Event)
    #: The last lines it printed, to explain a failed start.
    tail: Deque[str] = dataclasses.field(default_factory=lambda: deque(maxlen=40))
    #: What the current process printed before its ready line (the last STARTUP_OUTPUT_LINES lines), and how many
    #: lines that was in all.
    startup_output: Deque[str] = dataclasses.field(default_factory=lambda: deque(maxlen=STARTUP_OUTPUT_LINES))
    startup_lines: int = 0
    #: When the current process started (monotonic).
    started_at: float = dataclasses.field(default_factory=time.monotonic)
    #: When the autoscaler sent it SIGTERM to scale in (monotonic); its exit is then expected.
    retired_at: Optional[float] = None
    #: How often the slot was restarted, and its consecutive crashes (for the backoff).
    restarts: int = 0
    crashes: int = 0
    #: When a restart is due (monotonic) while the slot waits out its backoff; None otherwise.
    restart_at: Optional[float] = None

    @property
    def restartable(self) -> bool:
        return self.restart_argv is not None


class Supervisor:
    """Starts child processes, relays their output line by line with a name prefix, restarts the workers that
    exit on their own, and stops them all.

    Children run in their own session, so a Ctrl-C in the terminal reaches only the supervisor, which
    then stops them in order: SIGTERM, up to :data:`SHUTDOWN_GRACE_SECS` to exit, then SIGKILL; children
    spawned with ``stop_last`` (nats-server) only once every other child has exited.

    A child spawned with ``restart`` (a worker) that exits without being asked to is started again in its slot,
    at once after exit status 0 or 75, else after the :class:`~neutrino.local.restarts.Backoff` delay; each
    start sets ``NEUTRINO_WORKER_RESTARTS`` in its environment. Any other child exiting stops everything.

    Children may be spawned and retired (:meth:`retire`) from another thread (the autoscaler) while
    :meth:`supervise` runs; a retired child's exit is expected: it is reported, never restarted.
    """

    def __init__(
        self,
        out: TextIO = sys.stdout,
        prefix_width: int = 8,
        backoff: Optional[Backoff] = None,
        env: Optional[Dict[str, str]] = None,
    ) -> None:
        self.children: List[Child] = []
        #: Set in every child's environment on top of this process's (the workers' VIRTUAL_ENV).
        self.env = dict(env or {})
        self.backoff = backoff or Backoff()
        self._children_lock = threading.RLock()
        self._closed = False  # stop_all began: no new children, no restarts
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
        ready: Optional[Pattern[str]] = LISTENING,
        stop_last: bool = False,
        restart: Optional[RestartArgv] = None,
        env: Optional[Dict[str, str]] = None,
    ) -> Child:
        """Start ``argv``; ``ready`` is the pattern of the line that says it is ready (None: no such line).

        With ``restart`` the child is a worker: restarted with ``restart(child)`` when it exits on its own. ``env``
        is added to its environment (at every restart too): how secrets reach it without showing in ``ps``."""
        with self._children_lock:
            if self._closed:
                raise StartupError(f"not starting {name}: stopping")
            try:
                process = self._popen(argv, 0 if restart is not None else None, env)
            except OSError as exc:
                raise StartupError(f"cannot start {name} ({argv[0]}): {exc}") from None
            child = Child(name, process, ready_pattern=ready, stop_last=stop_last, restart_argv=restart, env=env)
            self._relay_output(child)
            self.children.append(child)
        return child

    def retire(self, child: Child) -> None:
        """SIGTERM ``child`` to scale in: a NATS worker drains (finishes its running tasks) and exits; its exit is
        reported, not treated as a failure, and it is not restarted. A child waiting to be restarted is dropped."""
        with self._children_lock:
            if child.retired_at is None:
                child.retired_at = time.monotonic()
            waiting = child.restart_at is not None
            if waiting:
                child.restart_at = None
                if child in self.children:
                    self.children.remove(child)
        if waiting:
            self.say(f"autoscaler: {child.name} removed while it waited to be restarted")
        else:
            send_signal(child.process, signal.SIGTERM)

    def _popen(
        self, argv: Sequence[str], restarts: Optional[int], extra: Optional[Dict[str, str]] = None
    ) -> subprocess.Popen:
        env = None
        if restarts is not None or self.env or extra:
            env = dict(os.environ)
            env.update(self.env)
            env.update(extra or {})
        if restarts is not None:
            env[RESTARTS_ENV] = str(restarts)
        return subprocess.Popen(
            list(argv),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            errors="replace",
            bufsize=1,
            start_new_session=True,
            env=env,
        )

    def _relay_output(self, child: Child) -> None:
        """Start the thread that relays the output of the child's current process."""
        child.started_at = time.monotonic()
        child.listening = threading.Event()
        child.ran_task = threading.Event()
        child.startup_output = deque(maxlen=STARTUP_OUTPUT_LINES)
        child.startup_lines = 0
        child.relay = threading.Thread(
            target=self._relay,
            args=(child, child.process, child.listening, child.ran_task, child.startup_output),
            name=f"relay-{child.name}",
            daemon=True,
        )
        child.relay.start()

    def supervises(self, child: Child) -> bool:
        """Whether ``child`` is still one of the supervised children (retired ones leave once they exited)."""
        with self._children_lock:
            return child in self.children

    def _snapshot(self) -> List[Child]:
        with self._children_lock:
            return list(self.children)

    def _relay(
        self,
        child: Child,
        process: subprocess.Popen,
        listening: threading.Event,
        ran_task: threading.Event,
        startup_output: Deque[str],
    ) -> None:
        assert process.stdout is not None
        for line in process.stdout:
            line = line.rstrip("\r\n")
            child.tail.append(line)
            if not listening.is_set():
                startup_output.append(line)
                child.startup_lines += 1
                match = child.ready_pattern.search(line) if child.ready_pattern is not None else None
                if match:
                    if child.url is None:
                        child.url = match.group(1).rstrip("/")
                    listening.set()
            elif not ran_task.is_set() and STARTED_TASK.match(line):
                ran_task.set()
            self.log(child.name, line)
        self._wake.set()

    def wait_listening(self, child: Child, timeout: float = STARTUP_TIMEOUT_SECS) -> str:
        """Wait for the child's ``listening on http://HOST:PORT`` line; returns that URL."""
        return self.wait_ready(child, "'listening on http://HOST:PORT'", "it was listening", timeout)

    def wait_ready(self, child: Child, expected: str, before: str, timeout: float = STARTUP_TIMEOUT_SECS) -> str:
        """Wait for the line matching the child's ready pattern; returns its first group.

        ``expected`` names that line and ``before`` the state it announces, for the error messages.
        """
        deadline = time.monotonic() + timeout
        while not child.listening.wait(0.05):
            if self.stop_requested:
                raise Interrupted()
            status = child.process.poll()
            if status is not None:
                if child.relay is not None:
                    child.relay.join(1.0)  # let its last words reach the terminal first
                if not child.listening.is_set():
                    raise StartupError.of(
                        child,
                        f"{child.name} {describe_exit(status)} before {before}{_hint(child)}"
                        + (" (a worker that fails to start is not restarted)" if child.restartable else ""),
                    )
            if time.monotonic() > deadline:
                raise StartupError.of(child, f"{child.name} did not print {expected} within {timeout:.0f} s")
        assert child.url is not None
        return child.url

    def wait_accepting(self, child: Child, host: str, port: int, timeout: float = NATS_STARTUP_TIMEOUT_SECS) -> None:
        """Wait until the child accepts TCP connections on ``host:port`` (for servers that print no URL)."""
        deadline = time.monotonic() + timeout
        while True:
            if self.stop_requested:
                raise Interrupted()
            status = child.process.poll()
            if status is not None:
                if child.relay is not None:
                    child.relay.join(1.0)
                raise StartupError.of(
                    child, f"{child.name} {describe_exit(status)} before it accepted connections on {host}:{port}"
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
        """Block until a signal (→ 0) or until a child that is not a worker exits (→ 1).

        A worker that exits on its own is restarted in its slot (see :meth:`_schedule_restart`); a child retired by
        the autoscaler may exit (reported, then forgotten)."""
        while True:
            self._wake.wait(self._next_wait())
            self._wake.clear()
            if self.stop_requested:
                return 0
            for child in self._snapshot():
                if child.restart_at is not None:
                    if time.monotonic() >= child.restart_at:
                        self._restart(child)
                    continue
                status = child.process.poll()
                if status is None:
                    continue
                if child.relay is not None:
                    child.relay.join(1.0)
                if child.retired_at is not None:
                    took = time.monotonic() - child.retired_at
                    self.say(f"autoscaler: {child.name} drained and exited with status {status} after {took:.1f} s")
                    with self._children_lock:
                        if child in self.children:
                            self.children.remove(child)
                    continue
                if not child.restartable:
                    self.say(f"neutrino: {child.name} {_unexpected(status)}; stopping")
                    return 1
                self._schedule_restart(child, status)

    def _next_wait(self) -> float:
        """Seconds until the supervise loop must look again: at most 0.5, less when a restart is due sooner."""
        due = [child.restart_at for child in self._snapshot() if child.restart_at is not None]
        if not due:
            return 0.5
        return max(0.0, min(0.5, min(due) - time.monotonic()))

    def _schedule_restart(self, child: Child, status: int) -> None:
        """Decide when the worker that exited with ``status`` starts again, say so in one line, and restart it
        at once when there is no delay."""
        with self._children_lock:
            if self._closed or child.retired_at is not None or child not in self.children:
                return
            uptime = time.monotonic() - child.started_at
            ready = child.listening.is_set()
            delay, child.crashes = plan_restart(
                status, uptime, child.crashes, self.backoff, ready, ran_task=child.ran_task.is_set()
            )
            child.restarts += 1
            child.restart_at = time.monotonic() + delay
            early = "" if ready else ", before it was ready"
            when = "now" if delay == 0 else f"in {delay:g} s"
            exited = f"{child.name} {describe_exit(status)} after {uptime:.1f} s{early}"
            line = f"neutrino: {exited}; restart {child.restarts} {when}"
        self.say(line)
        if delay == 0:
            self._restart(child)

    def _restart(self, child: Child) -> None:
        """Start the slot's process again (with ``NEUTRINO_WORKER_RESTARTS`` = its restart count)."""
        with self._children_lock:
            if self._closed or child.retired_at is not None or child.restart_at is None:
                return
            child.restart_at = None
            assert child.restart_argv is not None
            argv = list(child.restart_argv(child))
            try:
                child.process = self._popen(argv, child.restarts, child.env)
            except OSError as exc:
                # The binary may be gone for a moment (a rebuild): a crash like any other, retried after the backoff.
                child.crashes += 1
                delay = self.backoff.delay(child.crashes)
                child.restarts += 1
                child.restart_at = time.monotonic() + delay
                self.say(
                    f"neutrino: cannot restart {child.name} ({argv[0]}: {exc}); restart {child.restarts} in {delay:g} s"
                )
                return
            child.tail.clear()
            self._relay_output(child)

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

    def _stop_group(self, group: List[Child], grace: float, signals_before: int) -> None:
        running = [child for child in group if child.process.poll() is None]
        for child in running:
            send_signal(child.process, signal.SIGTERM)
        deadline = time.monotonic() + grace
        for child in running:
            while child.process.poll() is None:
                # A second Ctrl-C skips the grace period.
                if time.monotonic() >= deadline or self._signals > signals_before:
                    self.say(f"neutrino: {child.name} did not stop in time; killing it")
                    send_signal(child.process, signal.SIGKILL)
                    child.process.wait()
                    break
                time.sleep(0.05)


def _hint(child: Child) -> str:
    """Why a child may have refused to start, when its output says so."""
    text = "\n".join(child.tail)
    if re.search(r"Unknown option|Error: Unexpected argument", text) and re.search(r"--(nats|mode|drain-grace)", text):
        return (
            f" ({os.path.basename(str(child.process.args[0]))} does not know the JetStream options: "
            "are the binaries older than the JetStream path? rebuild with `swift build -c release`)"
        )
    return ""


def _unexpected(status: int) -> str:
    """``exited unexpectedly with status 7``, ``was killed unexpectedly by SIGKILL``."""
    text = describe_exit(status)
    return text.replace("exited with", "exited unexpectedly with").replace("killed by", "killed unexpectedly by")


def send_signal(process: subprocess.Popen, signum: int) -> None:
    try:
        process.send_signal(signum)
    except ProcessLookupError:
        pass

