"""The elastic fast pool under `neutrino up` (docs/architecture.md "Elastic fast pool"): the gateway finds HTTP
workers from their heartbeats and the autoscaler scales the sync pool by busy-thread utilisation, with the same
ScalingPolicy and stabilisation window as the HPA.

`--scale fast=1:3:0.5:4 --fast-workers 1 --fast-concurrency 2`: four callers that keep every thread busy make the policy
want ceil(replicas × 1.0 / 0.5), clamped to 3, so the pool grows 1 → 3; when only one caller is left, it wants 1, and
after the 4 s window the two extra workers are drained. Every call, during both changes, answers 200."""
from __future__ import annotations

import re
import signal
import threading
import time

from conftest import QUEUE_APP, assert_error_body, pools_by_name, post_task, read_journal, wait_for
from test_autoscaler import up  # noqa: F401  (the fixture: `neutrino up` as a subprocess)


class Load:
    """`callers` threads calling hold_sync back to back until stopped; every answer is kept."""

    def __init__(self, gateway: str, journal, callers: int, seconds: float):
        self.gateway, self.journal, self.seconds = gateway, journal, seconds
        self.stop = threading.Event()
        self.lock = threading.Lock()
        self.answers: list[tuple[int, str]] = []
        self.threads = [threading.Thread(target=self._run, daemon=True) for _ in range(callers)]
        for t in self.threads:
            t.start()

    def _run(self) -> None:
        while not self.stop.is_set():
            resp = post_task(self.gateway, "hold_sync", {"path": str(self.journal), "seconds": self.seconds}, timeout=90)
            with self.lock:
                self.answers.append((resp.status, resp.body[:300].decode("utf-8", "replace")))

    def end(self) -> list[tuple[int, str]]:
        self.stop.set()
        for t in self.threads:
            t.join(120)
            assert not t.is_alive(), "a caller is stuck"
        return self.answers

    @property
    def failed(self) -> list[tuple[int, str]]:
        with self.lock:
            return [a for a in self.answers if a[0] != 200]


def _http_workers(gateway: str) -> list[dict]:
    return [w for w in pools_by_name(gateway)["fast"]["workers"] if w.get("url")]


def test_fast_pool_grows_to_three_and_back_without_a_failed_call(up, tmp_path):
    u = up("--scale", "fast=1:3:0.5:4", "--fast-workers", "1", "--fast-concurrency", "2", "--heartbeat-interval", "0.5")
    u.wait_line(r"Press Ctrl-C to stop\.", timeout=240)
    gateway = re.search(r"gateway\s+(http://127\.0\.0\.1:\d+)", u.text).group(1)
    assert "pool fast   1 HTTP worker: http://127.0.0.1:" in u.text and "autoscaled 1..3" in u.text, u.text
    wait_for(lambda: len(_http_workers(gateway)) == 1, timeout=60,
             message=lambda: f"the first fast worker in /pools: {pools_by_name(gateway)['fast']}")

    journal = tmp_path / "journal.jsonl"
    steady = Load(gateway, journal, callers=1, seconds=0.3)  # runs through both changes
    burst = Load(gateway, journal, callers=4, seconds=0.5)
    t0 = time.monotonic()
    u.wait_line(r"autoscaler: fast \d → 3 ", timeout=120)
    wait_for(lambda: len(_http_workers(gateway)) == 3, timeout=120,
             message=lambda: f"3 fast workers discovered: {pools_by_name(gateway)['fast']}")
    t_out = time.monotonic()
    # The new workers take calls: the burst spreads over three processes.
    wait_for(lambda: len({e["pid"] for e in read_journal(journal) if e["event"] == "start"}) >= 3, timeout=60,
             message=lambda: f"calls on 3 workers: {sorted({e['pid'] for e in read_journal(journal)})}")
    burst_answers = burst.end()
    assert burst.failed == [], f"{len(burst.failed)} failed calls during scale-out: {burst.failed[:5]}"

    # In: only the steady caller is left; after the 4 s window the pool goes back to 1, two workers drain and exit 0.
    wait_for(lambda: (d := u.decisions("fast")) and d[-1][2] == 1, timeout=120, interval=0.2,
             message=lambda: f"fast back to 1:\n{u.text[-5000:]}")
    wait_for(lambda: len(re.findall(r"autoscaler: fast-\d+ drained and exited with status 0", u.text)) >= 2,
             timeout=120, message=lambda: f"2 drained fast workers to exit 0:\n{u.text[-5000:]}")
    wait_for(lambda: len(_http_workers(gateway)) == 1, timeout=60,
             message=lambda: f"1 fast worker left in /pools: {pools_by_name(gateway)['fast']}")
    t_in = time.monotonic()
    time.sleep(2.0)  # the steady caller keeps going on the one left
    steady_answers = steady.end()
    assert steady.failed == [], f"{len(steady.failed)} failed calls during the changes: {steady.failed[:5]}"
    assert "exited unexpectedly" not in u.text

    # Every call ran exactly once and completed.
    entries = read_journal(journal)
    starts = [e for e in entries if e["event"] == "start"]
    ends = [e for e in entries if e["event"] == "end"]
    assert len(starts) == len(ends) == len(burst_answers) + len(steady_answers), (len(starts), len(ends))
    print(f"\nscale-out 1 → 3 in {t_out - t0:.1f} s, back to 1 after {t_in - t_out:.1f} s; "
          f"{len(burst_answers)} burst + {len(steady_answers)} steady calls, all 200")
    for at, _, _, line in u.decisions("fast"):
        print(f"  t={at - t0:6.1f} s  {line}")
    assert u.stop() == 0, u.text[-5000:]


def test_discovered_worker_drains_its_calls_and_gets_no_new_ones(queue_stack, tmp_path):
    """No --http-pool: the gateway routes to the HTTP workers it heard from. SIGTERM on one while it runs a call:
    its last heartbeat says `stopping`, the gateway sends every new call to the other one at once, and the running
    call still answers 200."""
    stack = queue_stack(app=QUEUE_APP, name="elastic-drain", gateway=False)
    one = stack.http_worker("fast", concurrency=2)
    two = stack.http_worker("fast", concurrency=2)
    stack.start_gateway()  # no static list
    wait_for(lambda: {w["url"] for w in _http_workers(stack.url)} == {one.url, two.url}, timeout=60,
             message=lambda: f"both workers discovered: {pools_by_name(stack.url)['fast']}")

    journal = tmp_path / "journal.jsonl"
    # Long calls until one of them runs on `one` (round robin: the second at the latest).
    running: list = []
    answers: dict = {}

    def call(key: int) -> None:
        answers[key] = post_task(stack.url, "hold_sync", {"path": str(journal), "seconds": 3.0}, timeout=90)

    for key in range(2):
        t = threading.Thread(target=call, args=(key,), daemon=True)
        t.start()
        running.append(t)
    wait_for(lambda: {e["pid"] for e in read_journal(journal) if e["event"] == "start"} == {one.pid, two.pid},
             timeout=60, message=lambda: f"a call running on each worker: {read_journal(journal)}")

    one.proc.send_signal(signal.SIGTERM)
    wait_for(lambda: {w["url"] for w in _http_workers(stack.url)} == {two.url}, timeout=30,
             message=lambda: f"{one.url} gone from /pools: {pools_by_name(stack.url)['fast']}")
    # New calls while `one` still drains its call: all on `two`.
    quick = tmp_path / "quick.jsonl"
    for n in range(6):
        resp = post_task(stack.url, "hold_sync", {"path": str(quick), "seconds": 0.05}, timeout=60)
        assert resp.status == 200, resp
    assert {e["pid"] for e in read_journal(quick)} == {two.pid}, read_journal(quick)
    for t in running:
        t.join(60)
    assert [answers[k].status for k in range(2)] == [200, 200], answers
    assert one.wait_exit(60) == 0, one.output[-3000:]
    assert [e["event"] for e in read_journal(journal) if e["pid"] == one.pid] == ["start", "end"]


def test_a_call_before_the_first_worker_waits_for_it_to_join(queue_stack, tmp_path):
    """A gateway that just started (or a pool scaled to zero) has heard from no worker yet: a sync call waits up to
    --worker-join-wait for one to announce itself instead of failing, then runs there; and once the wait is over
    with still no worker it answers 503 NoWorkerAvailable saying why."""
    stack = queue_stack(app=QUEUE_APP, name="elastic-join", gateway=False)
    stack.start_gateway(extra_args=["--worker-join-wait", "60"])
    assert _http_workers(stack.url) == []
    answers: dict = {}
    caller = threading.Thread(target=lambda: answers.setdefault("r", post_task(stack.url, "hold_sync", {"path": str(tmp_path / "j.jsonl"), "seconds": 0}, timeout=90)))
    caller.start()
    time.sleep(0.5)  # the call is waiting in the gateway, the pool still empty
    assert "r" not in answers, answers
    worker = stack.http_worker("fast", concurrency=2)
    caller.join(90)
    assert not caller.is_alive(), "the waiting call never ended"
    resp = answers["r"]
    assert resp.status == 200, resp
    assert resp.json()["worker_id"] == worker.worker_id, resp


def test_an_empty_pool_answers_503_once_the_join_wait_is_over(queue_stack, tmp_path):
    stack = queue_stack(app=QUEUE_APP, name="elastic-empty", gateway=False)
    stack.start_gateway(extra_args=["--worker-join-wait", "0.5"])
    t0 = time.monotonic()
    resp = post_task(stack.url, "hold_sync", {"path": str(tmp_path / "j.jsonl"), "seconds": 0}, timeout=60)
    waited = time.monotonic() - t0
    body = assert_error_body(resp, 503, "NoWorkerAvailable")
    assert "announced itself within" in body["error"]["message"] and "--worker-join-wait" in body["error"]["message"], body
    assert resp.headers.get("retry-after") == "1", resp.headers
    assert waited >= 0.4, waited  # it did wait (a lower bound only: the machine may be slow)
