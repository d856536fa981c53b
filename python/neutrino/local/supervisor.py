"""The process supervisor of ``neutrino up``: starts child processes, relays their output line by line with a name
prefix, waits until each is ready, and stops them all in order."""

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
from typing import Any, Deque, Dict, List, Optional, Pattern, Sequence, TextIO

__all__ = [
    "STARTUP_TIMEOUT_SECS",
    "NATS_STARTUP_TIMEOUT_SECS",
    "SHUTDOWN_GRACE_SECS",
    "LISTENING",
    "CONSUMING",
    "StartupError",
    "Interrupted",
    "Child",
    "Supervisor",
    "send_signal",
]

#: How long a child may take to print its ``listening on`` (or ``consuming``) line.
STARTUP_TIMEOUT_SECS = 60.0
#: How long nats-server may take to accept TCP connections.
NATS_STARTUP_TIMEOUT_SECS = 30.0
#: How long children get to exit after SIGTERM before they are killed.
SHUTDOWN_GRACE_SECS = 10.0

#: What the gateway and ``neutrino-worker --mode http`` print once they accept connections.
LISTENING = re.compile(r"listening on (https?://\S+)")
#: What ``neutrino-worker --mode nats`` prints once it pulls from its pool's consumer.
CONSUMING = re.compile(r"consuming (\S+) from (\S+)")


class StartupError(Exception):
    """A child could not be started or did not come up."""


class Interrupted(Exception):
    """SIGINT or SIGTERM arrived while starting up."""


@dataclasses.dataclass
class Child:
    name: str
    process: subprocess.Popen
    #: The line that says the child is ready; group 1 becomes :attr:`url`.
    ready_pattern: Optional[Pattern[str]] = LISTENING
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
        self.children: List[Child] = []
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
        ready: Optional[Pattern[str]] = LISTENING,
        stop_last: bool = False,
    ) -> Child:
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
            child = Child(name, process, ready_pattern=ready, stop_last=stop_last)
            child.relay = threading.Thread(target=self._relay, args=(child,), name=f"relay-{name}", daemon=True)
            child.relay.start()
            self.children.append(child)
        return child

    def retire(self, child: Child) -> None:
        """SIGTERM ``child`` to scale in: a NATS worker drains (finishes its running tasks) and exits; its exit is
        reported, not treated as a failure."""
        if child.retired_at is None:
            child.retired_at = time.monotonic()
        send_signal(child.process, signal.SIGTERM)

    def _snapshot(self) -> List[Child]:
        with self._children_lock:
            return list(self.children)

    def _relay(self, child: Child) -> None:
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
                if child.url is None:
                    raise StartupError(f"{child.name} exited with status {status} before {before}{_hint(child)}")
            if time.monotonic() > deadline:
                raise StartupError(f"{child.name} did not print {expected} within {timeout:.0f} s")
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


def send_signal(process: subprocess.Popen, signum: int) -> None:
    try:
        process.send_signal(signum)
    except ProcessLookupError:
        pass

