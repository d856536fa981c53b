"""`async def` tasks (issue 15): in every execution mode they run on the worker's event loop with the same
contract as thread tasks (result, current_task, progress, output, exception with traceback, timeout, cancel); one
worker holds a thousand of them in flight; a coroutine that blocks the loop is logged by name and does not hold
back other coroutines' timeouts."""
from __future__ import annotations

import asyncio
import json
import threading
import time
from urllib.parse import urlsplit

import pytest

from conftest import CORO_APP, Launcher, post_task, wait_for


def _stack(queue_stack):
    """Gateway + an HTTP worker (sync pool fast) + NATS workers for pools async and gpu, all on coro_app.py."""
    stack = queue_stack(app=CORO_APP, name="coro", gateway=False)
    fast = stack.http_worker("fast", concurrency=1)
    stack.start_gateway(http_pools={"fast": [fast.url]})
    stack.worker("async", concurrency=1)
    stack.worker("gpu", concurrency=1)
    return stack


def _run(stack, task: str, args: dict) -> dict:
    """Runs `task` in its mode and returns its final record (with events and output)."""
    resp = stack.post(task, args)
    if task == "co_sync":
        assert resp.status in (200, 500, 504), resp
        task_id = resp.json()["task_id"]
    else:
        assert resp.status == 202, resp
        task_id = resp.json()["task_id"]
    return stack.wait_task(task_id)


@pytest.mark.parametrize("task,pool", [("co_sync", "fast"), ("co_async", "async"), ("co_gpu", "gpu")])
def test_async_def_in_every_mode(queue_stack, task: str, pool: str):
    stack = _stack(queue_stack)

    ok = _run(stack, task, {"seconds": 0.05})
    assert ok["status"] == "completed", ok
    assert ok["result"] == {"label": task, "task_id": ok["task_id"], "attempt": 1, "pool": pool}, ok
    # report_progress() inside the coroutine reached the task log (completion then sets progress to 1).
    assert ok["progress_message"] == f"{task} half way", ok
    assert f"{task} running as {ok['task_id']}" in (ok.get("output") or ""), ok

    failed = _run(stack, task, {"fail": True})
    assert failed["status"] == "failed", failed
    error = failed["error"]
    assert error["type"] == "ValueError" and error["message"] == f"{task} failed on purpose", error
    assert "coro_app.py" in error["traceback"] and "in _body" in error["traceback"], error

    started = time.monotonic()
    slow = _run(stack, task, {"seconds": 60})
    assert slow["status"] == "timed_out", slow
    assert time.monotonic() - started < 45, "the timeout did not stop the coroutine's task"

    # The worker is fine afterwards.
    assert _run(stack, task, {})["status"] == "completed"


@pytest.mark.parametrize("task", ["co_async", "co_gpu"])
def test_cancel_a_running_coroutine(queue_stack, task: str):
    stack = _stack(queue_stack)
    task_id = stack.submit(task, {"seconds": 3.5})
    stack.wait_status(task_id, "running")
    resp = stack.delete(task_id)
    assert resp.status == 202, resp
    record = stack.wait_task(task_id)
    assert record["status"] == "cancelled", record
    assert record["duration_ms"] is not None and record["duration_ms"] < 3400, record
    # The loop goes on.
    assert stack.wait_task(stack.submit(task, {}))["status"] == "completed"


async def _post_many(url: str, task: str, args: dict, n: int) -> list[tuple[int, dict]]:
    """`n` concurrent POST /api/<task> on their own connections (plain asyncio streams)."""
    parts = urlsplit(url)
    body = json.dumps({"args": args}).encode()

    async def one() -> tuple[int, dict]:
        reader, writer = await asyncio.open_connection(parts.hostname, parts.port)
        writer.write(
            f"POST /api/{task} HTTP/1.1\r\nHost: {parts.netloc}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode() + body)
        await writer.drain()
        raw = await reader.read()
        writer.close()
        head, _, rest = raw.partition(b"\r\n\r\n")
        status = int(head.split(b" ", 2)[1])
        if b"transfer-encoding: chunked" in head.lower():
            chunks, data = [], rest
            while data:
                size_text, _, data = data.partition(b"\r\n")
                size = int(size_text, 16)
                if size == 0:
                    break
                chunks.append(data[:size])
                data = data[size + 2:]
            rest = b"".join(chunks)
        return status, json.loads(rest)

    return await asyncio.gather(*(one() for _ in range(n)))


def test_a_thousand_coroutines_on_one_worker(launcher: Launcher):
    """1,000 concurrent `await asyncio.sleep(0.5)` tasks on one worker with 2 threads finish together (well under
    the 250 s that 2 threads would need), each taking about 0.5 s."""
    d = launcher.new_dir("coro-1000")
    worker = launcher.worker(CORO_APP, d / "tasks.sqlite", log_dir=d, worker_id="coro-1000", concurrency=2,
                             extra_args=["--max-coroutines", "1000"])
    try:
        started = time.monotonic()
        answers = asyncio.run(_post_many(worker.url, "nap", {"seconds": 0.5}, 1000))
        wall = time.monotonic() - started
        bad = [a for a in answers if a[0] != 200 or a[1].get("result") != 0.5]
        assert not bad, bad[:5]
        print(f"1000 x asyncio.sleep(0.5) on one worker: {wall:.2f} s")
        assert wall < 15, f"1000 concurrent coroutines took {wall:.1f} s"
    finally:
        worker.stop()


def test_a_loop_blocking_coroutine_is_logged_and_does_not_hold_back_timeouts(launcher: Launcher):
    """block_loop calls time.sleep(4) in an async def: the worker logs it by name, and a coroutine whose 1.5 s
    timeout falls inside those 4 s is answered timed out before block_loop ends (the watchdog does not need the
    loop)."""
    d = launcher.new_dir("coro-block")
    worker = launcher.worker(CORO_APP, d / "tasks.sqlite", log_dir=d, worker_id="coro-block", concurrency=1)
    try:
        answers: dict[str, tuple[float, object]] = {}

        def call(name: str, task: str, args: dict) -> None:
            resp = post_task(worker.url, task, args)
            answers[name] = (time.monotonic(), resp)

        blocker = threading.Thread(target=call, args=("block", "block_loop", {"seconds": 4.0}))
        blocker.start()
        wait_for(lambda: "block_loop" in worker.output and "blocked the event loop" in worker.output, timeout=60,
                 message=lambda: f"the blocked loop to be logged:\n{worker.output[-3000:]}")
        call("victim", "co_sync", {"seconds": 30})
        blocker.join(120)
        victim_at, victim = answers["victim"]
        block_at, block = answers["block"]
        assert victim.status == 504, victim  # timed out while the loop was still blocked
        assert block.status == 200 and block.json()["result"] == "unblocked", block
        assert victim_at < block_at, "the victim's timeout waited for the blocking coroutine"
        wait_for(lambda: "the event loop is running again" in worker.output, timeout=30,
                 message=lambda: worker.output[-3000:])
    finally:
        worker.stop()


def test_a_coroutine_spinning_past_its_hard_deadline_is_stopped_and_the_loop_goes_on(launcher: Launcher):
    """spin_loop busy-loops for 60 s (timeout 1 s, --hard-timeout-grace 1 s): the caller gets 504 at the timeout,
    the watcher raises TimeoutError in it past timeout + grace, and the same loop then runs other coroutines."""
    d = launcher.new_dir("coro-spin")
    worker = launcher.worker(CORO_APP, d / "tasks.sqlite", log_dir=d, worker_id="coro-spin", concurrency=1,
                             extra_args=["--hard-timeout-grace", "1"])
    try:
        resp = post_task(worker.url, "spin_loop", {"seconds": 60})
        assert resp.status == 504, resp
        wait_for(lambda: "raising TimeoutError in it" in worker.output and "running again" in worker.output,
                 timeout=60, message=lambda: f"the hard stop:\n{worker.output[-3000:]}")
        after = post_task(worker.url, "nap", {"seconds": 0.1})
        assert after.status == 200 and after.json()["result"] == 0.1, after
        assert worker.alive(), worker.output[-3000:]
    finally:
        worker.stop()


def test_a_loop_blocked_in_a_call_that_never_returns_recycles_the_worker(launcher: Launcher):
    """block_loop sleeps 120 s in time.sleep (timeout 5 s, grace 1 s): the caller gets 504 at the timeout; the
    TimeoutError raised past the hard deadline cannot stop a C call, so the loop is reported lost and the worker
    exits 75 (recycle) for a fresh one."""
    d = launcher.new_dir("coro-lost")
    worker = launcher.worker(CORO_APP, d / "tasks.sqlite", log_dir=d, worker_id="coro-lost", concurrency=1,
                             extra_args=["--hard-timeout-grace", "1"])
    try:
        resp = post_task(worker.url, "block_loop", {"seconds": 120})
        assert resp.status == 504, resp
        code = worker.wait_exit(timeout=90)
        assert code == 75, f"exit {code}:\n{worker.output[-3000:]}"
        assert "the event loop of the async def tasks is lost" in worker.output, worker.output[-3000:]
        assert "block_loop" in worker.output
    finally:
        worker.stop()


def test_max_coroutines_bounds_the_coroutines_in_flight(launcher: Launcher):
    """--max-coroutines 2: of 6 concurrent 1 s naps at most 2 run at once (the rest wait in the worker's queue),
    so they take three rounds; /healthz shows the bound and the busy count never exceeds it."""
    from concurrent.futures import ThreadPoolExecutor

    from conftest import http_request

    d = launcher.new_dir("coro-bound")
    worker = launcher.worker(CORO_APP, d / "tasks.sqlite", log_dir=d, worker_id="coro-bound", concurrency=1,
                             extra_args=["--max-coroutines", "2"])
    try:
        started = time.monotonic()
        with ThreadPoolExecutor(max_workers=6) as pool:
            futures = [pool.submit(post_task, worker.url, "nap", {"seconds": 1.0}) for _ in range(6)]
            seen = []
            while not all(f.done() for f in futures):
                health = http_request("GET", f"{worker.url}/healthz").json()
                seen.append((health["busy"], health["queued"]))
                time.sleep(0.1)
            answers = [f.result() for f in futures]
        took = time.monotonic() - started
        assert all(a.status == 200 for a in answers), answers
        assert health["max_coroutines"] == 2, health
        assert max(busy for busy, _ in seen) <= 2, seen
        assert any(queued > 0 for _, queued in seen), seen
        assert took >= 2.9, f"6 one-second naps with 2 slots finished in {took:.1f} s"
    finally:
        worker.stop()


def test_calls_of_thread_tasks_wait_for_a_thread_without_holding_up_coroutines(launcher: Launcher, tmp_path):
    """A worker with threads and coroutine slots says how many calls of plain-function tasks it takes at once
    (X-Neutrino-Max-Thread-Calls: a thread and a quarter more, rounded up: 2 for one thread) beside all its calls
    (X-Neutrino-Max-Calls, its coroutine slots included). The gateway, told by the manifest which tasks are
    `async def` (x-neutrino-coroutine), keeps 2 thread calls in flight to it and lines the rest up apart: six
    0.6 s `nap_thread` calls take their turns on the one thread (about 3.6 s) while twenty `nap` coroutines made
    meanwhile go straight to the coroutine slots, not into line behind them."""
    from concurrent.futures import ThreadPoolExecutor

    from conftest import GATEWAY_BIN, _server_env, build_manifest, http_request

    d = launcher.new_dir("coro-kinds")
    db = d / "tasks.sqlite"
    manifest = build_manifest(CORO_APP, tmp_path / "openapi.json")
    worker = launcher.worker(CORO_APP, db, log_dir=d, worker_id="coro-kinds", concurrency=1)
    argv = [str(GATEWAY_BIN), "--manifest", str(manifest), "--http-pool", f"fast={worker.url}",
            "--task-log", f"sqlite:{db}", "--host", "127.0.0.1", "--port", "0"]
    gw = launcher.spawn("gateway-coro-kinds", argv, env=_server_env(), log_dir=d)
    gw.wait_listening()
    try:
        direct = post_task(worker.url, "plain", {"x": 1})
        assert direct.headers.get("x-neutrino-max-thread-calls") == "2", direct.headers
        assert int(direct.headers["x-neutrino-max-calls"]) > 2, direct.headers
        assert post_task(gw.url, "plain", {"x": 2}).status == 200  # the gateway learns both bounds

        with ThreadPoolExecutor(26) as pool:
            threads = [pool.submit(post_task, gw.url, "nap_thread", {"seconds": 0.6}) for _ in range(6)]
            # One runs, one waits in the worker, four wait in the gateway's line for a thread place (/pools shows a
            # snapshot taken every second).
            def waiting_calls() -> int:
                pools = http_request("GET", f"{gw.url}/pools").json()["pools"]
                return next(p for p in pools if p["name"] == "fast")["waiting_calls"] or 0

            wait_for(lambda: waiting_calls() > 0, timeout=3, message="thread calls waiting in the gateway's line")
            assert http_request("GET", f"{worker.url}/healthz").json()["queued"] <= 1  # 0 between two calls
            threads_done_before = sum(f.done() for f in threads)
            coroutines = [pool.submit(post_task, gw.url, "nap", {"seconds": 0.3}) for _ in range(20)]
            naps = [f.result() for f in coroutines]
            threads_done_meanwhile = sum(f.done() for f in threads) - threads_done_before
            health = http_request("GET", f"{worker.url}/healthz").json()
            answers = [f.result() for f in threads]
        assert all(a.status == 200 for a in naps), [a for a in naps if a.status != 200][:2]
        # The coroutines take about 0.3 s, a thread call 0.6 s: at most one ends meanwhile (two on a stalled machine),
        # where coroutines in line behind the thread calls would wait for every one still waiting.
        assert threads_done_meanwhile <= 2, f"the coroutine calls waited behind {threads_done_meanwhile} thread calls"
        assert health["queued"] <= 1, health
        assert all(a.status == 200 for a in answers), [a for a in answers if a.status != 200][:2]
    finally:
        gw.stop()
        worker.stop()
