"""API keys end to end: a key made by `neutrino keys create` opens the real gateway binary (with a worker), its
scopes are enforced, and revoking it (the file changes; SIGHUP reloads at once) refuses it without a restart."""

from __future__ import annotations

import http.client
import json
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from typing import Optional

import pytest

from conftest import (EXAMPLE_APP, GATEWAY_BIN, NATS_TASK_LOG, PYTHON_SDK, _server_env, http_request, post_task,
                      wait_for)


def keys_cli(*args: str) -> str:
    out = subprocess.run([sys.executable, "-m", "neutrino.cli", "keys", *args], check=True, capture_output=True, text=True,
                         env={**_server_env(), "PYTHONPATH": str(PYTHON_SDK)})
    return out.stdout.strip()


@pytest.mark.skipif(NATS_TASK_LOG, reason="one task-log mode is enough for access control")
def test_cli_key_works_and_revocation_applies_without_restart(launcher, example_manifest):
    d = launcher.new_dir("api-keys")
    keys = d / "keys.json"
    submitter = keys_cli("create", "--name", "ci", "--scopes", "submit,read", "--file", str(keys))
    reader = keys_cli("create", "--name", "dash", "--scopes", "read", "--file", str(keys))
    submitter_id = submitter.split("_")[1]
    db = d / "tasks.sqlite"
    worker = launcher.worker(EXAMPLE_APP, db, log_dir=d)
    argv = [str(GATEWAY_BIN), "--manifest", str(example_manifest), "--http-pool", f"fast={worker.url}",
            "--task-log", f"sqlite:{db}", "--host", "127.0.0.1", "--port", "0", "--api-keys", str(keys)]
    gw = launcher.spawn("gateway-keys", argv, env=_server_env(), log_dir=d)
    url = gw.wait_listening()

    def auth(key: str) -> dict:
        return {"Authorization": f"Bearer {key}"}

    # No key, a wrong key, the wrong scope, the right one.
    assert post_task(url, "echo", {"x": 1}).status == 401
    assert post_task(url, "echo", {"x": 1}, headers=auth(submitter + "x")).status == 401
    assert post_task(url, "echo", {"x": 1}, headers=auth(reader)).status == 403
    r = post_task(url, "echo", {"x": 7}, headers=auth(submitter))
    assert r.status == 200, r.body
    task_id = r.headers["x-neutrino-task-id"]
    assert http_request("GET", f"{url}/tasks/{task_id}", headers=auth(reader)).status == 200
    assert http_request("GET", f"{url}/healthz").status == 200

    # The SDK with api_key= works the same.
    from neutrino import Client
    assert Client(url, api_key=submitter).call("echo", x=3)["x"] == 3

    # The key id, never the key, is in the task log's pending event.
    with sqlite3.connect(db) as conn:
        details = [row[0] for row in conn.execute("SELECT detail FROM task_events WHERE task_id = ?", (task_id,))]
    assert any(d_ and f"submitted_by={submitter_id}" in d_ for d_ in details), details
    assert submitter not in open(d / "gateway-keys.log").read()

    # Revoke through the CLI: the gateway polls the file and refuses the key within about a second.
    keys_cli("revoke", submitter_id, "--file", str(keys))
    started = time.monotonic()
    wait_for(lambda: post_task(url, "echo", {"x": 1}, headers=auth(submitter)).status == 401, timeout=3, interval=0.05)
    print(f"revoked key refused {time.monotonic() - started:.2f}s after `neutrino keys revoke`")
    assert http_request("GET", f"{url}/pools", headers=auth(reader)).status == 200

    # SIGHUP reloads at once (here: a key added by editing the file in place, mtime unchanged).
    doc = json.loads(keys.read_text())
    doc["keys"] = [k for k in doc["keys"] if k["name"] != "dash"]
    stat = keys.stat()
    keys.write_text(json.dumps(doc))
    os.utime(keys, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    os.kill(gw.pid, signal.SIGHUP)
    wait_for(lambda: http_request("GET", f"{url}/pools", headers=auth(reader)).status == 401, timeout=3, interval=0.05)
    assert gw.alive()


@pytest.mark.skipif(NATS_TASK_LOG, reason="one task-log mode is enough for access control")
def test_sync_calls_with_a_key_get_every_check_of_the_routes(launcher, example_manifest):
    """With --api-keys, a sync call whose key may submit its task is answered outside the router (`CallHandler`): the
    per-key rate, the in-flight quota, `submitted_by` and the per-key count must hold there as on the routes, and on
    the same keep-alive connection a key that may not call a task still gets the router's 401/403."""
    d = launcher.new_dir("api-keys-calls")
    keys = d / "keys.json"

    def create(name: str, *extra: str) -> str:
        return keys_cli("create", "--name", name, "--scopes", "submit", *extra, "--file", str(keys))

    plain, rated = create("plain"), create("rated", "--rate", "0.2", "--burst", "2")
    quota, echo_only = create("quota", "--max-in-flight", "1"), create("echo-only", "--tasks", "echo")
    admin = keys_cli("create", "--name", "ops", "--scopes", "admin", "--file", str(keys))
    key_id = {k: k.split("_")[1] for k in (plain, rated, quota, echo_only)}
    db = d / "tasks.sqlite"
    worker = launcher.worker(EXAMPLE_APP, db, log_dir=d, concurrency=4)
    argv = [str(GATEWAY_BIN), "--manifest", str(example_manifest), "--http-pool", f"fast={worker.url}",
            "--task-log", f"sqlite:{db}", "--host", "127.0.0.1", "--port", "0", "--api-keys", str(keys)]
    gw = launcher.spawn("gateway-key-calls", argv, env=_server_env(), log_dir=d)
    url = gw.wait_listening()
    host, port = url.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=10)

    def call(task: str, args: dict, key: Optional[str], on: http.client.HTTPConnection = conn):
        headers = {"Content-Type": "application/json"}
        if key:
            headers["Authorization"] = f"Bearer {key}"
        on.request("POST", f"/api/{task}", body=json.dumps({"args": args}), headers=headers)
        r = on.getresponse()
        return r.status, {k.lower(): v for k, v in r.getheaders()}, json.loads(r.read() or b"null")

    # One connection, every kind of answer in turn: it stays in step across both paths.
    status, headers, body = call("echo", {"x": 5}, plain)
    assert status == 200 and body["result"]["x"] == 5, body
    plain_task = headers["x-neutrino-task-id"]
    assert call("add", {"a": 1, "b": 2}, echo_only)[0] == 403
    status, headers, body = call("echo", {"x": 6}, plain + "x")
    assert status == 401 and body["error"]["type"] == "Unauthorized" and "bearer" in headers["www-authenticate"].lower()
    assert call("echo", {"x": 7}, None)[0] == 401
    assert call("echo", {"x": 8}, echo_only)[0] == 200
    assert call("echo", {"x": "not a number"}, plain)[0] == 422

    # The rate: a burst of 2, then 429 with Retry-After and the limit; other keys are unaffected.
    assert [call("echo", {"x": i}, rated)[0] for i in range(2)] == [200, 200]
    status, headers, body = call("echo", {"x": 3}, rated)
    assert status == 429, body
    assert body["error"]["type"] == "RateLimited" and body["error"]["limit"] == {"rate_per_second": 0.2, "burst": 2}
    assert int(headers["retry-after"]) >= 1
    assert call("echo", {"x": 9}, plain)[0] == 200

    # The in-flight quota: while a call of the key runs, another is refused; once it has answered, the slot is free.
    slow = http.client.HTTPConnection(host, int(port), timeout=10)
    outcome: list = []
    runner = threading.Thread(target=lambda: outcome.append(call("sleepy", {"seconds": 1.5}, quota, on=slow)))
    runner.start()
    # (Not the quota key itself to see the call start: its own calls would hold the one slot.)
    def worker_busy() -> bool:
        text = http_request("GET", f"{worker.url}/metrics").body.decode()
        return any(line.startswith("neutrino_worker_tasks_in_flight") and float(line.rsplit(" ", 1)[1]) > 0
                   for line in text.splitlines())
    wait_for(worker_busy, timeout=5, interval=0.02, message="the quota key's slow call running")
    refused = call("echo", {"x": 1}, quota)
    assert refused[0] == 429, refused
    assert "queued or running" in refused[2]["error"]["message"] and refused[2]["error"]["limit"] == {"max_in_flight": 1}
    runner.join(timeout=10)
    assert outcome and outcome[0][0] == 200, outcome
    assert call("echo", {"x": 2}, quota)[0] == 200

    # The task log names the submitting key; /metrics counts each key's answers by code.
    def submitted_by():
        with sqlite3.connect(db) as c:
            row = c.execute("SELECT submitted_by FROM tasks WHERE id = ?", (plain_task,)).fetchone()
        return row and row[0]
    assert wait_for(submitted_by, timeout=3, interval=0.05) == key_id[plain]
    metrics = http_request("GET", f"{url}/metrics", headers={"Authorization": f"Bearer {admin}"}).body.decode()

    def counted(kid: str, code: int) -> float:
        total = 0.0
        for line in metrics.splitlines():
            if line.startswith("neutrino_http_requests_by_key_total{") and f'key_id="{kid}"' in line \
                    and f'code="{code}"' in line:
                total += float(line.rsplit(" ", 1)[1])
        return total
    assert counted(key_id[plain], 200) == 2 and counted(key_id[plain], 422) == 1
    assert counted(key_id[rated], 200) == 2 and counted(key_id[rated], 429) == 1
    assert counted(key_id[quota], 429) >= 1 and counted(key_id[quota], 200) >= 2
    assert gw.alive()
