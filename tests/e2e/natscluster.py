"""A real JetStream cluster of nats-server nodes on 127.0.0.1 for the end-to-end tests.

`NatsCluster` stands where a `NatsServer` stands in a `QueueStack` (same `url`, `start`, `stop`, `/jsz` helpers), with
`url` listing every node comma-separated (the `--nats` of the gateway and the workers). Each node has its own
configuration file (unique `server_name` `n1`, `n2`, …; routes to every node) and store, on ports picked once, so a
node SIGKILLed with `kill(i)` comes back with `start_node(i)` on the same ports and store.

`/jsz` reads follow what KEDA's nats-jetstream scaler does in a cluster: a consumer's numbers are read from the
consumer's leader (a follower's view of pending/ack-pending can lag).
"""
from __future__ import annotations

import json
import socket
from pathlib import Path
from typing import Optional

from conftest import (
    NATS_READY_RE,
    NATS_SERVER_BIN,
    Launcher,
    ServerProcess,
    _server_env,
    http_request,
    wait_for,
    wait_for_output,
)

__all__ = ["NatsCluster"]


def _free_ports(count: int) -> list[int]:
    sockets, ports = [], []
    try:
        for _ in range(count):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            sockets.append(s)
            ports.append(int(s.getsockname()[1]))
    finally:
        for s in sockets:
            s.close()
    return ports


class NatsCluster:
    """`size` nats-server nodes forming one JetStream cluster on loopback."""

    def __init__(self, launcher: Launcher, log_dir: Path, size: int = 3, name: str = "neutrino-e2e"):
        self.launcher = launcher
        self.log_dir = Path(log_dir)
        self.size = size
        ports = _free_ports(3 * size)
        self.ports = ports[:size]
        self.cluster_ports = ports[size:2 * size]
        self.monitor_ports = ports[2 * size:]
        self.names = [f"n{i + 1}" for i in range(size)]
        self.procs: list[Optional[ServerProcess]] = [None] * size
        self._starts = [0] * size
        routes = "\n".join(f"    nats-route://127.0.0.1:{p}" for p in self.cluster_ports)
        self.configs = []
        for i in range(size):
            store = self.log_dir / f"js-{self.names[i]}"
            conf = self.log_dir / f"{self.names[i]}.conf"
            conf.write_text(
                f"server_name: {self.names[i]}\n"
                f"host: 127.0.0.1\nport: {self.ports[i]}\nhttp: \"127.0.0.1:{self.monitor_ports[i]}\"\n"
                f"jetstream {{ store_dir: {json.dumps(str(store))} }}\n"
                f"cluster {{\n  name: {name}\n  listen: \"127.0.0.1:{self.cluster_ports[i]}\"\n"
                f"  routes: [\n{routes}\n  ]\n}}\n")
            self.configs.append(conf)

    # -- processes ---------------------------------------------------------------------------------------

    @property
    def urls(self) -> list[str]:
        return [f"nats://127.0.0.1:{p}" for p in self.ports]

    @property
    def url(self) -> str:
        """Every node's client URL, comma-separated (what `--nats` takes)."""
        return ",".join(self.urls)

    def monitor_url(self, i: int) -> str:
        return f"http://127.0.0.1:{self.monitor_ports[i]}"

    def start_node(self, i: int) -> ServerProcess:
        assert not self.alive(i), f"{self.names[i]} is already running"
        self._starts[i] += 1
        proc = self.launcher.spawn(f"nats-{self.names[i]}-{self._starts[i]}", [NATS_SERVER_BIN, "-c", str(self.configs[i])],
                                   env=_server_env(), log_dir=self.log_dir)
        self.procs[i] = proc
        wait_for_output(proc, NATS_READY_RE, timeout=60)
        return proc

    def start(self) -> "NatsCluster":
        """Starts every node that is not running; returns once the cluster has a JetStream meta leader."""
        for i in range(self.size):
            if not self.alive(i):
                self.start_node(i)
        self.wait_meta_leader()
        return self

    def kill(self, i: int) -> None:
        """SIGKILL: the node dies without a goodbye (no lame-duck mode, no leadership transfer)."""
        proc = self.procs[i]
        assert proc is not None
        proc.kill()

    def stop(self) -> None:
        for proc in self.procs:
            if proc is not None:
                proc.stop()

    def alive(self, i: Optional[int] = None) -> bool:
        if i is None:
            return any(self.alive(j) for j in range(self.size))
        proc = self.procs[i]
        return proc is not None and proc.alive()

    def index(self, server_name: str) -> int:
        return self.names.index(server_name)

    # -- monitoring ---------------------------------------------------------------------------------------

    def jsz(self, i: Optional[int] = None, query: str = "?acc=%24G&consumers=true&config=true") -> dict:
        """/jsz of node `i` (default: the first running node)."""
        if i is None:
            i = next(j for j in range(self.size) if self.alive(j))
        resp = http_request("GET", f"{self.monitor_url(i)}/jsz{query}", timeout=30)
        assert resp.status == 200, f"/jsz of {self.names[i]} answered {resp!r}"
        return resp.json()

    def meta_leader(self) -> Optional[str]:
        """The meta leader every running node agrees on, or None."""
        seen = set()
        for i in range(self.size):
            if self.alive(i):
                try:
                    seen.add((self.jsz(i, "").get("meta_cluster") or {}).get("leader") or None)
                except (AssertionError, OSError):
                    return None
        return seen.pop() if len(seen) == 1 and None not in seen else None

    def wait_meta_leader(self, timeout: float = 90.0) -> str:
        return wait_for(self.meta_leader, timeout=timeout, interval=0.2,
                        message=lambda: f"a JetStream meta leader ({[self.jsz(i, '').get('meta_cluster') for i in range(self.size) if self.alive(i)]})")

    def streams(self, i: Optional[int] = None) -> dict[str, dict]:
        out: dict[str, dict] = {}
        for account in self.jsz(i).get("account_details") or []:
            for stream in account.get("stream_detail") or []:
                out[stream["name"]] = stream
        return out

    def stream(self, name: str) -> Optional[dict]:
        """The stream as its leader reports it (any node's view when it has no leader)."""
        view = self.streams().get(name)
        leader = ((view or {}).get("cluster") or {}).get("leader")
        if leader and leader in self.names and self.alive(self.index(leader)):
            return self.streams(self.index(leader)).get(name) or view
        return view

    def stream_leader(self, name: str) -> Optional[str]:
        return ((self.stream(name) or {}).get("cluster") or {}).get("leader") or None

    def consumer(self, name: str, stream: str = "NEUTRINO_TASKS") -> Optional[dict]:
        """The consumer as its leader reports it (KEDA's rule)."""
        def find(i: Optional[int]) -> Optional[dict]:
            for c in (self.streams(i).get(stream) or {}).get("consumer_detail") or []:
                if c.get("name") == name:
                    return c
            return None

        view = find(None)
        leader = ((view or {}).get("cluster") or {}).get("leader")
        if leader and leader in self.names and self.alive(self.index(leader)):
            return find(self.index(leader)) or view
        return view

    def consumer_leader(self, name: str, stream: str = "NEUTRINO_TASKS") -> Optional[str]:
        return ((self.consumer(name, stream) or {}).get("cluster") or {}).get("leader") or None

    def wait_current(self, stream: str, timeout: float = 120.0) -> None:
        """Until the stream has a leader and every other replica is current (a restarted node caught up)."""
        def current():
            s = self.stream(stream)
            cluster = (s or {}).get("cluster") or {}
            replicas = cluster.get("replicas") or []
            return (cluster.get("leader") and len(replicas) == self.size - 1
                    and all(r.get("current") and not r.get("offline") for r in replicas))

        wait_for(current, timeout=timeout, interval=0.25,
                 message=lambda: f"{stream} to have a leader and current replicas ({(self.stream(stream) or {}).get('cluster')})")

    def wait_events_consumer(self, gateway_id: str, timeout: float = 60.0) -> dict:
        name = f"events_{gateway_id}"
        return wait_for(lambda: self.consumer(name, stream="NEUTRINO_EVENTS"), timeout=timeout,
                        message=lambda: f"the gateway to provision the events consumer {name}")

    def queue_depth(self, pool: str) -> tuple[int, int]:
        c = self.consumer(f"pool_{pool}")
        assert c is not None, f"no consumer pool_{pool}"
        return int(c.get("num_pending", 0)), int(c.get("num_ack_pending", 0))
