"""Long-poll deadlines and the live feed's resume, on a real gateway over a real SQLite file.

Rows are written into the gateway's task log directly (as another process's commit would), so the tests control
exactly which events exist. Nothing asserts on speed: a long poll that outlived its deadline would hang until the
HTTP client's bound and fail there."""
from __future__ import annotations

import socket
import sqlite3
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from urllib.parse import urlsplit

import pytest

from conftest import Cluster, Launcher, EXAMPLE_APP, assert_error_body, uuid7


@pytest.fixture(scope="module")
def fresh(launcher: Launcher, example_manifest) -> Cluster:
    c = launcher.cluster(app=EXAMPLE_APP, manifest=example_manifest, workers=1, concurrency=2, name="waits")
    yield c
    c.stop()


def _insert_running(db_path, task_id: str) -> None:
    with sqlite3.connect(db_path, timeout=30) as db:
        db.execute(
            "INSERT INTO tasks (id, function_name, status, created_at, pool, execution_mode, attempts)"
            " VALUES (?, 'echo', 'running', '2026-01-01T00:00:00.000Z', 'fast', 'sync', 1)", (task_id,))


def _complete(db_path, task_id: str) -> None:
    with sqlite3.connect(db_path, timeout=30) as db:
        db.execute("UPDATE tasks SET status = 'completed', result = '1' WHERE id = ?", (task_id,))


def _insert_events(db_path, task_id: str, n: int, start_attempt: int = 0) -> list[int]:
    """`n` task_events rows (the unique index is on task, event and attempt: attempts make them distinct)."""
    ids = []
    with sqlite3.connect(db_path, timeout=30) as db:
        for i in range(n):
            cur = db.execute("INSERT INTO task_events (task_id, event, at, attempt) VALUES (?, 'running', ?, ?)",
                             (task_id, "2026-01-01T00:00:00.000Z", start_attempt + i))
            ids.append(cur.lastrowid)
    return ids


def test_tiny_waits_never_outlive_their_deadline(fresh: Cluster):
    """100 polls with ?wait=0.000001 on a task that stays running all come back with it running (one of 100 used to
    be held until the task finished, because its timer fired before the waiter was registered)."""
    task_id = uuid7()
    _insert_running(fresh.db_path, task_id)
    try:
        def poll(_):
            return fresh.get(f"/tasks/{task_id}?wait=0.000001", timeout=60)

        with ThreadPoolExecutor(16) as pool:
            answers = list(pool.map(poll, range(100)))
        assert all(a.status == 200 and a.json()["status"] == "running" for a in answers), [a for a in answers if a.status != 200][:3]
    finally:
        _complete(fresh.db_path, task_id)


class SSEReader:
    """A raw-socket SSE client: sends the request, then parses `id:` / `event:` / `data:` blocks."""

    def __init__(self, url: str, last_event_id: int | None = None):
        parts = urlsplit(url)
        self.sock = socket.create_connection((parts.hostname, parts.port), timeout=60)
        headers = f"GET /events HTTP/1.1\r\nHost: {parts.hostname}:{parts.port}\r\nAccept: text/event-stream\r\n"
        if last_event_id is not None:
            headers += f"Last-Event-ID: {last_event_id}\r\n"
        self.sock.sendall((headers + "\r\n").encode())
        self.buffer = b""
        # A bound on the whole exchange: keep-alive comments every 15 s would keep a plain socket timeout from firing.
        self.deadline = time.monotonic() + 180
        self.head = self._read_until(b"\r\n\r\n")
        self.chunked = b"transfer-encoding: chunked" in self.head.lower()
        self.body = b""

    def _recv(self) -> bytes:
        assert time.monotonic() < self.deadline, "the event stream did not deliver what was expected within its bound"
        return self.sock.recv(65536)

    def _read_until(self, marker: bytes) -> bytes:
        while marker not in self.buffer:
            data = self._recv()
            assert data, f"connection closed while waiting for {marker!r}; have {self.buffer[:200]!r}"
            self.buffer += data
        head, self.buffer = self.buffer.split(marker, 1)
        return head

    def _more_body(self) -> None:
        if not self.chunked:
            data = self._recv()
            assert data, "stream ended"
            self.body += data
            return
        size_line = self._read_until(b"\r\n")
        size = int(size_line.split(b";")[0], 16)
        assert size > 0, "stream ended"
        while len(self.buffer) < size + 2:
            data = self._recv()
            assert data, "stream ended mid-chunk"
            self.buffer += data
        self.body += self.buffer[:size]
        self.buffer = self.buffer[size + 2:]

    def next_block(self) -> dict:
        while b"\n\n" not in self.body:
            self._more_body()
        block, self.body = self.body.split(b"\n\n", 1)
        out: dict = {}
        for line in block.decode().split("\n"):
            if line.startswith(":") or ":" not in line:
                continue
            k, v = line.split(":", 1)
            out[k] = v.strip()
        return out

    def task_ids(self, count: int, max_blocks: int = 100_000) -> list[int]:
        ids: list[int] = []
        for _ in range(max_blocks):
            if len(ids) >= count:
                break
            b = self.next_block()
            assert b.get("event") != "gap", f"unexpected gap notice {b}"
            if b.get("event") == "task":
                ids.append(int(b["id"]))
        return ids

    def close(self) -> None:
        self.sock.close()


def test_resume_delivers_exactly_the_missed_events_then_live(fresh: Cluster):
    """A reconnect whose Last-Event-ID is 1,000 events back gets all 1,000 (the 1,000th used to be lost to the buffer
    slot the opening `retry:` line took), in order, then the live events, while more are committed during the
    catch-up: strictly increasing ids, no gap, no duplicate."""
    task_id = uuid7()
    warm = SSEReader(fresh.url)  # a live listener, so the feed's loop hands events out while the other resumes
    try:
        missed = _insert_events(fresh.db_path, task_id, 1000)
        resume_from = missed[0] - 1
        live: list[int] = []

        def commit_more():
            for k in range(5):
                live.extend(_insert_events(fresh.db_path, task_id, 40, start_attempt=2000 + 40 * k))

        writer = threading.Thread(target=commit_more)
        reader = SSEReader(fresh.url, last_event_id=resume_from)
        try:
            writer.start()
            first = reader.task_ids(1000)
            writer.join(60)
            assert first == missed, "the 1,000 missed events, in order"
            rest = reader.task_ids(len(live))
            got = first + rest
            assert got == sorted(set(got)), "strictly increasing, no duplicate"
            assert got == missed + live, "every event committed after Last-Event-ID, once, in order"
        finally:
            reader.close()
    finally:
        warm.close()


def test_resume_too_far_back_says_gap(fresh: Cluster):
    """Further behind than the backlog (1,000), the client is told (`event: gap`) and resumes 1,000 before the head."""
    task_id = uuid7()
    ids = _insert_events(fresh.db_path, task_id, 1100)
    reader = SSEReader(fresh.url, last_event_id=ids[0] - 1)
    try:
        blocks = []
        for _ in range(3):  # the opening lines, then the notice
            blocks.append(reader.next_block())
            if blocks[-1].get("event") == "gap":
                break
        assert blocks[-1].get("event") == "gap", blocks
        got = reader.task_ids(1000)
        assert got[-1] >= ids[-1] and got == sorted(set(got)), got[:5]
    finally:
        reader.close()


def test_bad_last_event_id_is_400(fresh: Cluster):
    assert_error_body(fresh.get("/events", headers={"Last-Event-ID": "soon"}), 400, "BadRequest")
