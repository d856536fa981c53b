#!/usr/bin/env python3
"""What replication costs: publish and submit latency with streams at R1 (one nats-server) and at R3 (a 3-node
JetStream cluster on 127.0.0.1). Part of `make bench` (bench/run.sh; BENCH_CLUSTER=0 skips it), or alone:
`python3 bench/cluster_bench.py`.

For each setup:

  1. JetStream publish latency: BENCH_CLUSTER_PUBLISHES (2,000) publishes one after another (after 100 unmeasured)
     of a 128-byte message with a unique Nats-Msg-Id to a file stream of that replica count, each waiting for its
     PubAck (a request/reply on a plain socket: the client costs microseconds). At R3 twice: from a client
     connected to the stream leader's node, and from one connected to a follower (its publish crosses a route to
     the leader first).
  2. Gateway submit latency: BENCH_CLUSTER_SUBMITS (2,000) `POST /api/echo` one after another (after 100
     unmeasured) to a gateway with 2 NATS workers (`--nats` all the nodes, `--stream-replicas` 1 or 3), each
     timed until its 202 (JetStream has stored the task and the SQLite task log has committed `queued`).

Prints a Markdown table; asserts nothing. Knobs: BENCH_CLUSTER_PUBLISHES, BENCH_CLUSTER_SUBMITS,
BENCH_NEUTRINO_BIN_DIR (.build/release), BENCH_START_TIMEOUT, BENCH_KEEP=1 (keep the logs), as bench/run.py.
The machine's cores are shared by the three nodes, the gateway, the workers and this client, and the nodes talk
over loopback: R3 here costs a loopback round trip to a follower, not a network one.
"""
from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Optional

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))
import run as common  # noqa: E402
from async_bench import NeutrinoClient, TaskError, percentile, wait_log, wait_tcp  # noqa: E402
from run import REPO, START_TIMEOUT, Proc, Skip, StartError, free_port, log  # noqa: E402

PUBLISHES = int(os.environ.get("BENCH_CLUSTER_PUBLISHES", "2000"))
SUBMITS = int(os.environ.get("BENCH_CLUSTER_SUBMITS", "2000"))
WARMUP = 100
PAYLOAD = b"x" * 128


class Wire:
    """A minimal NATS client on a plain socket: CONNECT, SUB to an inbox, HPUB with a reply, read MSG/HMSG."""

    def __init__(self, port: int):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=30)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.file = self.sock.makefile("rb")
        self.inbox = f"_INBOX.bench{uuid.uuid4().hex}"
        self.n = 0
        assert self.file.readline().startswith(b"INFO ")
        connect = {"verbose": False, "pedantic": False, "headers": True, "no_responders": True, "protocol": 1}
        self.sock.sendall(b"CONNECT " + json.dumps(connect).encode() + b"\r\nSUB " + self.inbox.encode()
                          + b".* 1\r\nPING\r\n")
        while self._read()[0] != "PONG":
            pass

    def _read(self) -> tuple:
        while True:
            line = self.file.readline()
            if not line:
                raise OSError("connection closed")
            op, _, rest = line.rstrip(b"\r\n").partition(b" ")
            if op == b"PING":
                self.sock.sendall(b"PONG\r\n")
            elif op in (b"+OK", b"INFO"):
                continue
            elif op == b"PONG":
                return ("PONG", None)
            elif op == b"-ERR":
                raise OSError(rest.decode(errors="replace"))
            elif op == b"MSG":
                parts = rest.split()
                return ("MSG", (parts[0].decode(), b"", self.file.read(int(parts[-1]) + 2)[:-2]))
            elif op == b"HMSG":
                parts = rest.split()
                hdr, total = int(parts[-2]), int(parts[-1])
                raw = self.file.read(total + 2)[:-2]
                return ("MSG", (parts[0].decode(), raw[:hdr], raw[hdr:]))

    def request(self, subject: str, payload: bytes, headers: Optional[dict] = None) -> bytes:
        self.n += 1
        reply = f"{self.inbox}.{self.n}"
        if headers:
            hdr = ("NATS/1.0\r\n" + "".join(f"{k}: {v}\r\n" for k, v in headers.items()) + "\r\n").encode()
            self.sock.sendall(f"HPUB {subject} {reply} {len(hdr)} {len(hdr) + len(payload)}\r\n".encode()
                              + hdr + payload + b"\r\n")
        else:
            self.sock.sendall(f"PUB {subject} {reply} {len(payload)}\r\n".encode() + payload + b"\r\n")
        while True:
            kind, msg = self._read()
            if kind == "MSG" and msg[0] == reply:
                if msg[1].startswith(b"NATS/1.0 503"):
                    raise OSError(f"no responders for {subject}")
                return msg[2]

    def js(self, what: str, body: dict) -> dict:
        return json.loads(self.request(f"$JS.API.{what}", json.dumps(body).encode()))

    def close(self) -> None:
        self.file.close()
        self.sock.close()


class Setup:
    """One nats-server (R1) or a 3-node cluster (R3), and a gateway with 2 NATS workers on it."""

    def __init__(self, state: Path, nodes: int):
        self.state = state
        self.nodes = nodes
        self.replicas = 3 if nodes > 1 else 1
        self.procs: list = []
        self.ports: list = []
        self.monitors: list = []
        self.gateway_port = 0

    @property
    def label(self) -> str:
        return "R1: one nats-server" if self.nodes == 1 else f"R3: {self.nodes}-node cluster (loopback)"

    def start(self) -> None:
        nats_server = shutil.which("nats-server")
        if not nats_server:
            raise Skip("nats-server not installed (apt-get install nats-server)")
        if not common.WORKER_BIN.exists() or not common.GATEWAY_BIN.exists():
            raise Skip(f"binaries not built ({common.BIN_DIR}/neutrino-{{gateway,worker}} missing)")
        h = subprocess.run([str(common.GATEWAY_BIN), "--help"], capture_output=True, text=True, timeout=30)
        if "--stream-replicas" not in h.stdout + h.stderr:
            raise Skip(f"neutrino-gateway in {common.BIN_DIR} has no --stream-replicas (rebuild it)")
        self.ports = [free_port() for _ in range(self.nodes)]
        routes = [free_port() for _ in range(self.nodes)]
        self.monitors = [free_port() for _ in range(self.nodes)]
        for i in range(self.nodes):
            conf = self.state / f"n{i + 1}-R{self.replicas}.conf"
            text = (f"server_name: n{i + 1}\nhost: 127.0.0.1\nport: {self.ports[i]}\n"
                    f"http: \"127.0.0.1:{self.monitors[i]}\"\n"
                    f"jetstream {{ store_dir: {json.dumps(str(self.state / f'js-R{self.replicas}-n{i + 1}'))} }}\n")
            if self.nodes > 1:
                text += ("cluster {\n  name: bench\n" f"  listen: \"127.0.0.1:{routes[i]}\"\n  routes: [\n"
                         + "".join(f"    nats-route://127.0.0.1:{p}\n" for p in routes) + "  ]\n}\n")
            conf.write_text(text)
            self.procs.append(Proc(f"nats-n{i + 1}-R{self.replicas}", [nats_server, "-c", str(conf)],
                                   self.state / f"nats-n{i + 1}-R{self.replicas}.log"))
        for proc, port in zip(self.procs, self.ports):
            wait_tcp(proc, port, START_TIMEOUT)
        if self.nodes > 1:
            self._wait_meta_leader()
        url = ",".join(f"nats://127.0.0.1:{p}" for p in self.ports)
        manifest = self.state / "openapi-cluster.json"
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(REPO / "python"),
                                                                           os.environ.get("PYTHONPATH")])))
        r = subprocess.run([sys.executable, "-m", "neutrino.cli", "openapi", str(BENCH / "async_app.py"),
                            "-o", str(manifest)], cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
        if r.returncode != 0:
            raise StartError(f"`neutrino.cli openapi bench/async_app.py` failed: {r.stderr.strip()[-200:]}")
        db = self.state / f"tasks-R{self.replicas}.db"
        flags = ["--nats", url, "--stream-replicas", str(self.replicas)]
        workers = []
        for i in (1, 2):
            argv = [str(common.WORKER_BIN), "--mode", "nats", "--pool", "async", "--app", str(BENCH / "async_app.py"),
                    "--concurrency", "2", "--task-log", f"sqlite:{db}", *flags, "--python-path", str(REPO / "python"),
                    "--drain-grace", "5", "--log-level", "warning"]
            workers.append(Proc(f"worker-{i}-R{self.replicas}", argv, self.state / f"worker-{i}-R{self.replicas}.log"))
        self.procs += workers
        for w in workers:
            wait_log(w, b"consuming pool_async from", START_TIMEOUT)
        gateway = Proc(f"gateway-R{self.replicas}", [str(common.GATEWAY_BIN), "--manifest", str(manifest), *flags,
                                                     "--task-log", f"sqlite:{db}", "--port", "0",
                                                     "--log-level", "warning"],
                       self.state / f"gateway-R{self.replicas}.log")
        self.procs.append(gateway)
        self.gateway_port = gateway.wait_listening(START_TIMEOUT)
        client = NeutrinoClient(self.gateway_port)
        deadline = time.monotonic() + START_TIMEOUT
        try:
            while True:
                try:
                    client.wait(client.submit())
                    break
                except (TaskError, OSError):
                    if time.monotonic() > deadline:
                        raise StartError("the check task did not complete") from None
                    time.sleep(0.2)
        finally:
            client.close()

    def _wait_meta_leader(self) -> None:
        import urllib.request

        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            leaders = set()
            for port in self.monitors:
                try:
                    with urllib.request.urlopen(f"http://127.0.0.1:{port}/jsz", timeout=2) as resp:
                        leaders.add((json.loads(resp.read()).get("meta_cluster") or {}).get("leader"))
                except OSError:
                    leaders.add(None)
            if len(leaders) == 1 and None not in leaders and "" not in leaders:
                return
            time.sleep(0.1)
        raise StartError("the nats-server nodes elected no JetStream meta leader")

    def publish_latencies(self) -> dict:
        """{'leader': [ms...], 'follower': [ms...]} for a BENCH_R<n> stream at this setup's replica count."""
        stream = f"BENCH_R{self.replicas}"
        admin = Wire(self.ports[0])
        try:
            answer = admin.js(f"STREAM.CREATE.{stream}", {"name": stream, "subjects": [f"bench.r{self.replicas}"],
                                                          "storage": "file", "num_replicas": self.replicas,
                                                          "duplicate_window": 120_000_000_000})
            if "error" in answer:
                raise StartError(f"cannot create {stream}: {answer['error']}")
            info = admin.js(f"STREAM.INFO.{stream}", {})
        finally:
            admin.close()
        leader = (info.get("cluster") or {}).get("leader")
        names = [f"n{i + 1}" for i in range(self.nodes)]
        where = {"leader": names.index(leader) if leader in names else 0}
        if self.nodes > 1:
            where["follower"] = next(i for i in range(self.nodes) if i != where["leader"])
        out = {}
        for role, index in where.items():
            wire = Wire(self.ports[index])
            samples = []
            try:
                for i in range(WARMUP + PUBLISHES):
                    t0 = time.perf_counter()
                    ack = json.loads(wire.request(f"bench.r{self.replicas}", PAYLOAD,
                                                  {"Nats-Msg-Id": f"{role}-{i}-{uuid.uuid4().hex[:8]}"}))
                    if "error" in ack:
                        raise StartError(f"publish refused: {ack['error']}")
                    if i >= WARMUP:
                        samples.append((time.perf_counter() - t0) * 1e3)
            finally:
                wire.close()
            out[role] = samples
        return out

    def submit_latencies(self) -> tuple:
        client = NeutrinoClient(self.gateway_port)
        samples, errors = [], 0
        try:
            for i in range(WARMUP + SUBMITS):
                t0 = time.perf_counter()
                try:
                    client.submit()
                except (TaskError, OSError, ValueError):
                    errors += 1
                    continue
                if i >= WARMUP:
                    samples.append((time.perf_counter() - t0) * 1e3)
        finally:
            client.close()
        return samples, errors

    def stop(self) -> None:
        for p in reversed(self.procs):
            p.stop()


def cell(values: list) -> str:
    if not values:
        return "–"
    return f"{percentile(values, 50):.2f} / {percentile(values, 99):.2f}"


def main() -> int:
    state = Path(tempfile.mkdtemp(prefix="neutrino-cluster-bench-"))
    rows = []
    notes = []
    load = os.getloadavg()[0]
    try:
        for nodes in (1, 3):
            setup = Setup(state, nodes)
            log(f"cluster bench: {setup.label}")
            try:
                setup.start()
                publish = setup.publish_latencies()
                submit, errors = setup.submit_latencies()
                rows.append((setup.label, cell(publish.get("leader", [])), cell(publish.get("follower", [])),
                             cell(submit), errors))
            except (Skip, StartError) as e:
                rows.append((setup.label, "skipped", "", "", 0))
                notes.append(f"{setup.label}: {e}")
            finally:
                setup.stop()
    except KeyboardInterrupt:
        notes.append("interrupted")
    finally:
        Proc.stop_all()
    print()
    print(f"### Replication: R1 vs R3 (ms, p50 / p99; nproc {os.cpu_count()}, load {load:.2f} at start, "
          f"binaries {common.BIN_DIR})")
    print()
    print("| streams | JetStream publish, client on the leader's node | client on a follower | "
          f"gateway submit → 202 ({SUBMITS} sequential) | submit errors |")
    print("|---|---|---|---|---|")
    for label, leader, follower, submit, errors in rows:
        print(f"| {label} | {leader} | {follower or '–'} | {submit} | {errors} |")
    print()
    print(f"{PUBLISHES} publishes of 128 B with a Nats-Msg-Id, each awaiting its PubAck; file storage.")
    for note in notes:
        print(f"- {note}")
    if os.environ.get("BENCH_KEEP"):
        print(f"- logs kept in {state}")
    else:
        shutil.rmtree(state, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
