"""`make soak`: mixed load on a real gateway, fast HTTP workers, NATS workers, nats-server and SQLite task log, while
faults are injected in rotation (a fast worker SIGKILLed, a NATS worker SIGKILLed, nats-server restarted, the gateway
restarted), each process restarted on its own port. Bounded by SOAK_MINUTES (default 10). At the end, every task id
the gateway handed out must reach a terminal status, and an exact account is printed as a table:
accepted vs terminal, tasks run twice (a task that completed and then ran again, from the tasks' own journal),
re-runs after a crash, 5xx during and outside fault windows, unanswered requests, p50/p99 latency, and the RSS of the
gateway and workers at start and end. Exit status 1 if the account does not balance.

Not part of `make test`; nothing here is a timed assertion: the latencies are reported, not checked."""
from __future__ import annotations

import itertools
import json
import os
import random
import signal
import sqlite3
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from pathlib import Path

E2E = Path(__file__).resolve().parent
sys.path.insert(0, str(E2E))
import conftest as c  # noqa: E402  (the e2e helpers: processes, nats-server, manifests, HTTP)

SOAK_MINUTES = float(os.environ.get("SOAK_MINUTES", "10"))
CLIENTS = int(os.environ.get("SOAK_CLIENTS", "8"))
APP = E2E / "apps" / "soak_app.py"
SETTLE_S = 2.0  # a fault window lasts until the gateway is ready again, plus this


def rss_kb(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


class Soak:
    def __init__(self, base: Path):
        self.launcher = c.Launcher(base)
        self.dir = self.launcher.new_dir("soak")
        self.db = self.dir / "tasks.sqlite"
        self.journal = self.dir / "journal.jsonl"
        self.manifest = c.build_manifest(APP, self.dir / "openapi.json")
        self.nats = c.NatsServer(self.launcher, self.dir).start()
        self.fast: list[dict] = [{"id": f"fast-{i}", "port": 0, "proc": None} for i in range(2)]
        self.queued: list[dict] = [{"id": f"async-{i}", "proc": None} for i in range(2)]
        self.gateway = None
        self.gateway_port = 0
        self.counter = itertools.count(1)
        for w in self.fast:
            self.start_fast(w)
        for w in self.queued:
            self.start_queued(w)
        self.start_gateway()
        self.rss_start = self.rss()

    def spawn(self, name: str, argv: list[str]):
        return self.launcher.spawn(f"{name}-{next(self.counter)}", argv, env=c._server_env(), log_dir=self.dir)

    def start_fast(self, w: dict) -> None:
        argv = [str(c.WORKER_BIN), "--mode", "http", "--pool", "fast", "--app", str(APP), "--host", "127.0.0.1",
                "--port", str(w["port"]), "--concurrency", "4", "--task-log", f"sqlite:{self.db}",
                "--python-path", str(c.PYTHON_SDK), "--worker-id", w["id"], "--nats", self.nats.url]
        w["proc"] = self.spawn(w["id"], argv)
        url = w["proc"].wait_listening()
        w["port"] = int(url.rsplit(":", 1)[1])

    def start_queued(self, w: dict) -> None:
        argv = [str(c.WORKER_BIN), "--mode", "nats", "--pool", "async", "--app", str(APP), "--python-path",
                str(c.PYTHON_SDK), "--task-log", f"sqlite:{self.db}", "--nats", self.nats.url, "--concurrency", "4",
                "--ack-wait", "5", "--worker-id", w["id"], "--host", "127.0.0.1", "--port", "0"]
        w["proc"] = self.spawn(w["id"], argv)
        c.wait_for_output(w["proc"], c.CONSUMING_RE)

    def start_gateway(self) -> None:
        urls = ",".join(f"http://127.0.0.1:{w['port']}" for w in self.fast)
        argv = [str(c.GATEWAY_BIN), "--manifest", str(self.manifest), "--http-pool", f"fast={urls}",
                "--task-log", f"sqlite:{self.db}", "--nats", self.nats.url, "--ack-wait", "5",
                "--host", "127.0.0.1", "--port", str(self.gateway_port)]
        self.gateway = self.spawn("gateway", argv)
        url = self.gateway.wait_listening()
        self.gateway_port = int(url.rsplit(":", 1)[1])
        self.url = url

    def ready(self) -> bool:
        try:
            return c.http_request("GET", f"{self.url}/readyz", timeout=10).status == 200
        except OSError:
            return False

    def rss(self) -> dict[str, int]:
        out = {"gateway": rss_kb(self.gateway.pid)}
        for w in self.fast + self.queued:
            out[w["id"]] = rss_kb(w["proc"].pid)
        return out

    # -- faults -----------------------------------------------------------------------------------------------

    def fault(self, n: int) -> str:
        kind = ["kill fast worker", "kill NATS worker", "restart nats-server", "restart gateway"][n % 4]
        if kind == "kill fast worker":
            w = random.choice(self.fast)
            w["proc"].kill()
            time.sleep(1.0)
            self.start_fast(w)
        elif kind == "kill NATS worker":
            w = random.choice(self.queued)
            w["proc"].kill()
            time.sleep(1.0)
            self.start_queued(w)
        elif kind == "restart nats-server":
            self.nats.stop()
            time.sleep(1.0)
            self.nats.start()
        else:
            self.gateway.stop()
            self.start_gateway()
        return kind

    def stop(self) -> None:
        self.launcher.stop_all()


class Load:
    """Client threads: mixed calls until `deadline`; every answer recorded."""

    def __init__(self, soak: Soak, deadline: float):
        self.soak = soak
        self.deadline = deadline
        self.lock = threading.Lock()
        self.records: list[dict] = []

    def one(self, rng: random.Random, i: int) -> dict:
        roll = rng.random()
        headers = {}
        if roll < 0.5:
            task, args = "echo", {"x": i, "label": "soak"}
        elif roll < 0.6:
            task, args = "boom", {"message": "expected"}
        elif roll < 0.75:
            task, args = "journal_sync", {"path": str(self.soak.journal)}
        else:
            task, args = "journal", {"path": str(self.soak.journal)}
            if rng.random() < 0.5:
                headers["Idempotency-Key"] = str(uuid.uuid4())
        started = time.monotonic()
        rec = {"task": task, "at": started, "status": 0, "task_id": None}
        try:
            r = c.http_request("POST", f"{self.soak.url}/api/{task}", json_body={"args": args}, headers=headers, timeout=60)
            rec["status"] = r.status
            try:
                body = r.json()
                rec["task_id"] = body.get("task_id") or (body.get("error") or {}).get("task_id")
                rec["type"] = (body.get("error") or {}).get("type")
            except AssertionError:
                pass
        except OSError as exc:
            rec["error"] = type(exc).__name__
        rec["latency"] = time.monotonic() - started
        return rec

    def client(self, seed: int) -> None:
        rng = random.Random(seed)
        for i in itertools.count():
            if time.monotonic() >= self.deadline:
                return
            rec = self.one(rng, i)
            with self.lock:
                self.records.append(rec)
            if rec["status"] == 0:
                time.sleep(0.2)  # the gateway is restarting: do not spin


def percentile(values: list[float], p: float) -> float:
    if not values:
        return 0.0
    s = sorted(values)
    return s[min(len(s) - 1, max(0, int(round(p * len(s) + 0.5)) - 1))]


def main() -> int:
    base = Path(tempfile.mkdtemp(prefix="neutrino-soak-"))
    soak = Soak(base)
    windows: list[tuple[float, float, str]] = []
    try:
        duration = SOAK_MINUTES * 60
        deadline = time.monotonic() + duration
        load = Load(soak, deadline)
        threads = [threading.Thread(target=load.client, args=(k,), daemon=True) for k in range(CLIENTS)]
        for t in threads:
            t.start()
        interval = max(10.0, duration / 12)
        n = 0
        while time.monotonic() + interval < deadline:
            time.sleep(interval)
            began = time.monotonic()
            kind = soak.fault(n)
            n += 1
            c.wait_for(soak.ready, timeout=120, interval=0.2, message=f"the gateway to be ready after '{kind}'")
            windows.append((began, time.monotonic() + SETTLE_S, kind))
            print(f"fault {n}: {kind} ({time.monotonic() - began:.1f} s to ready)", flush=True)
        for t in threads:
            t.join(120)
        records = load.records

        # Every task id handed out must end.
        handed = {r["task_id"] for r in records if r.get("task_id")}

        def statuses() -> dict[str, str]:
            out: dict[str, str] = {}
            ids = list(handed)
            with sqlite3.connect(f"file:{soak.db}?mode=ro", uri=True, timeout=30) as db:
                for k in range(0, len(ids), 500):
                    chunk = ids[k:k + 500]
                    marks = ",".join("?" * len(chunk))
                    out.update(dict(db.execute(f"SELECT id, status FROM tasks WHERE id IN ({marks})", chunk)))
            return out

        def settled():
            s = statuses()
            return all(s.get(i) in c.TERMINAL_STATUSES for i in handed) and s

        try:
            final = c.wait_for(settled, timeout=600, interval=1.0, message="every accepted task to be terminal")
        except AssertionError:
            final = statuses()
        rss_end = soak.rss()
    finally:
        soak.stop()

    def in_fault(r: dict) -> bool:
        """Whether the request was in flight during a fault window (from before the fault to ready + SETTLE_S)."""
        start, end = r["at"], r["at"] + r["latency"]
        return any(start <= b and end >= a for a, b, _ in windows)

    terminal = {i for i in handed if final.get(i) in c.TERMINAL_STATUSES}
    by_status = Counter(final.get(i, "missing") for i in handed)
    runs: dict[str, list[dict]] = {}
    if soak.journal.exists():
        for line in soak.journal.read_text().splitlines():
            e = json.loads(line)
            runs.setdefault(e["task_id"], []).append(e)
    ran_twice = sum(1 for evs in runs.values()
                    if sum(e["event"] == "end" for e in evs) >= 1 and sum(e["event"] == "start" for e in evs) >= 2
                    and any(e["event"] == "start" and e["at"] > min(x["at"] for x in evs if x["event"] == "end") for e in evs))
    reran_after_crash = sum(1 for evs in runs.values() if sum(e["event"] == "start" for e in evs) >= 2) - ran_twice

    def is_expected_500(r):  # boom raises on purpose; a task's own exception is its answer
        return r["status"] == 500 and r["task"] == "boom"

    five_during = Counter(r["status"] for r in records if r["status"] >= 500 and not is_expected_500(r) and in_fault(r))
    five_outside = Counter(r["status"] for r in records if r["status"] >= 500 and not is_expected_500(r) and not in_fault(r))
    unanswered_during = sum(1 for r in records if r["status"] == 0 and in_fault(r))
    unanswered_outside = sum(1 for r in records if r["status"] == 0 and not in_fault(r))
    answered = [r["latency"] * 1000 for r in records if r["status"]]
    calm = [r["latency"] * 1000 for r in records if r["status"] and not in_fault(r)]

    rows = [
        ("duration (min)", f"{SOAK_MINUTES:g}"), ("client threads", CLIENTS), ("requests", len(records)),
        ("faults injected", ", ".join(f"{k}" for _, _, k in windows) or "none"),
        ("accepted (task ids handed out)", len(handed)), ("terminal", len(terminal)),
        ("not terminal", len(handed) - len(terminal)),
        ("by status", ", ".join(f"{k} {v}" for k, v in sorted(by_status.items()))),
        ("run twice (completed, then ran again)", ran_twice), ("re-run after a crash (at-least-once)", reran_after_crash),
        ("5xx during faults", sum(five_during.values())), ("  by code", dict(five_during)),
        ("5xx outside faults", sum(five_outside.values())), ("  by code", dict(five_outside)),
        ("expected 500 (boom raised)", sum(1 for r in records if is_expected_500(r))),
        ("unanswered during faults", unanswered_during), ("unanswered outside faults", unanswered_outside),
        ("p50 / p99 ms (all answers)", f"{percentile(answered, 0.5):.1f} / {percentile(answered, 0.99):.1f}"),
        ("p50 / p99 ms (outside faults)", f"{percentile(calm, 0.5):.1f} / {percentile(calm, 0.99):.1f}"),
        ("RSS start KiB", soak.rss_start), ("RSS end KiB", rss_end),
    ]
    width = max(len(str(k)) for k, _ in rows)
    print("\n| " + "measure".ljust(width) + " | value |\n|" + "-" * (width + 2) + "|-------|")
    for k, v in rows:
        print(f"| {str(k).ljust(width)} | {v} |")
    balanced = len(handed) == len(terminal) and ran_twice == 0 and not five_outside and unanswered_outside == 0
    print(f"\nsoak: {'balanced' if balanced else 'NOT balanced'} (logs under {base})")
    return 0 if balanced else 1


if __name__ == "__main__":
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(1))
    sys.exit(main())
