"""API keys end to end: a key made by `neutrino keys create` opens the real gateway binary (with a worker), its
scopes are enforced, and revoking it (the file changes; SIGHUP reloads at once) refuses it without a restart."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time

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
