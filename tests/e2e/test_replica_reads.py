"""Read-your-writes across gateway replicas (docs/architecture.md "Read-your-writes across replicas"): two replicas in
the NATS task-log mode, each with its own file; a task accepted by A is answered by B at once — `GET /tasks/<id>`,
`?wait=`, `DELETE` — never a 404 (B waits, bounded by --replication-lag-bound, for a young id its events consumer has
not applied yet). The Python client's `wait()` works against the two behind a round-robin proxy (a Service without
session affinity)."""
from __future__ import annotations

import http.client
import itertools
import statistics
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import urlsplit

from conftest import QUEUE_APP, _server_env, http_request, new_gateway_id, post_task, uuid7


def _replicas(queue_stack, launcher, name: str):
    stack = queue_stack(app=QUEUE_APP, name=name, task_log="nats")  # replica A
    b_id = new_gateway_id(f"{name}-b")
    b = launcher.spawn(f"{name}-gateway-b", stack.gateway_argv(db_path=stack.dir / "replica-b.sqlite", gateway_id=b_id),
                       env=_server_env(), log_dir=stack.dir)
    b_url = b.wait_listening()
    stack.wait_provisioned(b_id)
    return stack, b, b_url


def test_submit_on_a_poll_b_never_404s(queue_stack, launcher):
    stack, b, b_url = _replicas(queue_stack, launcher, "ryw")
    a_url = stack.url
    try:
        latencies = []
        not_found = []
        for n in range(1000):
            resp = post_task(a_url, "ping", {"n": n})  # no async worker: every task stays queued
            assert resp.status == 202, resp
            task_id = resp.json()["task_id"]
            started = time.monotonic()
            got = http_request("GET", f"{b_url}/tasks/{task_id}")
            latencies.append(time.monotonic() - started)
            if got.status == 404:
                not_found.append(task_id)
                continue
            assert got.status == 200, got
            record = got.json()
            assert record["task_id"] == task_id and record["status"] == "queued" and record["args"] == {"n": n}, record
        assert not_found == [], f"{len(not_found)} of 1000 polls on B answered 404"
        latencies.sort()
        print(f"GET on B right after the 202 of A: p50 {statistics.median(latencies) * 1000:.1f} ms, "
              f"p99 {latencies[989] * 1000:.1f} ms, max {latencies[-1] * 1000:.1f} ms")

        # ?wait= and DELETE on B right after the submit on A.
        for n in range(20):
            task_id = post_task(a_url, "ping", {"n": n}).json()["task_id"]
            if n % 2:
                got = http_request("GET", f"{b_url}/tasks/{task_id}?wait=0.2", timeout=30)
                assert got.status == 200 and got.json()["status"] == "queued", got
            else:
                gone = http_request("DELETE", f"{b_url}/tasks/{task_id}")
                assert gone.status == 200 and gone.json() == {"task_id": task_id, "status": "cancelled"}, gone

        # An id nobody made: 404 at once when it is old, after the bounded wait when it is young.
        old = "01000000-0000-7000-8000-000000000000"
        started = time.monotonic()
        assert http_request("GET", f"{b_url}/tasks/{old}").status == 404
        young = uuid7()
        assert http_request("GET", f"{b_url}/tasks/{young}", timeout=60).status == 404
        assert time.monotonic() - started < 30, "a young unknown id waited past the lag bound"
    finally:
        b.stop()
    assert b.proc.returncode == 0, b.output[-3000:]


class _RoundRobin(ThreadingHTTPServer):
    """A reverse proxy sending each request to the next of `upstreams` (like a Service with no session affinity)."""

    daemon_threads = True

    def __init__(self, upstreams: list[str]):
        self.upstreams = itertools.cycle([urlsplit(u) for u in upstreams])
        self.lock = threading.Lock()
        self.counts: dict[int, int] = {}
        super().__init__(("127.0.0.1", 0), _Forward)

    def pick(self):
        with self.lock:
            target = next(self.upstreams)
            self.counts[target.port] = self.counts.get(target.port, 0) + 1
            return target


class _Forward(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def _forward(self) -> None:
        target = self.server.pick()  # type: ignore[attr-defined]
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else None
        headers = {k: v for k, v in self.headers.items() if k.lower() not in ("host", "connection")}
        conn = http.client.HTTPConnection(target.hostname, target.port, timeout=90)
        try:
            conn.request(self.command, self.path, body=body, headers=headers)
            resp = conn.getresponse()
            data = resp.read()
        finally:
            conn.close()
        self.send_response(resp.status)
        for k, v in resp.getheaders():
            if k.lower() not in ("connection", "content-length", "transfer-encoding"):
                self.send_header(k, v)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    do_GET = do_POST = do_DELETE = _forward

    def log_message(self, *args) -> None:
        pass


def test_client_wait_through_a_round_robin_pair(queue_stack, launcher, tmp_path: Path):
    from neutrino import Client

    stack, b, b_url = _replicas(queue_stack, launcher, "ryw-client")
    proxy = _RoundRobin([stack.url, b_url])
    serving = threading.Thread(target=proxy.serve_forever, daemon=True)
    serving.start()
    try:
        stack.worker("async", concurrency=2)
        url = f"http://127.0.0.1:{proxy.server_address[1]}"
        with Client(url, timeout=60) as client:
            handles = [client.submit("ping", n=n) for n in range(40)]
            assert [h.wait(timeout=120) for h in handles] == [{"n": n} for n in range(40)]
            # A status right after each submit, wherever it lands.
            for n in range(40):
                h = client.submit("ping", n=n)
                assert h.status()["task_id"] == h.task_id
        ports = {urlsplit(u).port for u in (stack.url, b_url)}
        assert set(proxy.counts) == ports and min(proxy.counts.values()) > 40, proxy.counts
    finally:
        proxy.shutdown()
        proxy.server_close()
        b.stop()
