"""TLS to NATS (`--nats-tls-ca`, issue 12): a nats-server that requires TLS (a private CA made here with the
openssl CLI) and users; a gateway and a NATS worker given the CA and their credentials run a queued task; a worker
without the CA is refused (it cannot verify the server) and says why."""
from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
from conftest import (
    GATEWAY_BIN,
    NATS_READY_RE,
    NATS_SERVER_BIN,
    PYTHON_SDK,
    QUEUE_APP,
    WORKER_BIN,
    _server_env,
    build_manifest,
    http_request,
    post_task,
    wait_for,
    wait_for_output,
)
from neutrino.natsauth import NatsCredentials, authorization_block

pytestmark = pytest.mark.skipif(shutil.which("openssl") is None, reason="the openssl CLI makes the test's CA")


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=60)


def make_ca(d: Path) -> None:
    """ca.pem/ca.key, and server.pem/server.key for 127.0.0.1 signed by it."""
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.pem", "-days", "2",
             "-subj", "/CN=neutrino-test-ca", cwd=d)
    _openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", "server.key", "-out", "server.csr",
             "-subj", "/CN=127.0.0.1", cwd=d)
    (d / "san.ext").write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    _openssl("x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
             "-out", "server.pem", "-days", "2", "-extfile", "san.ext", cwd=d)


def test_gateway_and_worker_reach_nats_over_tls(launcher, tmp_path):
    d = launcher.new_dir("nats-tls")
    make_ca(d)
    creds = NatsCredentials.generate(["async", "gpu"])
    conf = d / "nats.conf"
    conf.touch(mode=0o600)
    conf.write_text(
        f'tls {{\n  cert_file: "{d / "server.pem"}"\n  key_file: "{d / "server.key"}"\n  timeout: 5\n}}\n'
        + authorization_block(creds))
    nats = launcher.spawn("nats-tls", [NATS_SERVER_BIN, "-c", str(conf), "-js", "-a", "127.0.0.1", "-p", "-1",
                                       "-sd", str(d / "js")], env=_server_env(), log_dir=d)
    wait_for_output(nats, NATS_READY_RE, timeout=60)
    port = int(wait_for_output(nats, r"Listening for client connections on 127\.0\.0\.1:(\d+)", timeout=5).group(1))
    url = f"tls://127.0.0.1:{port}"
    manifest = build_manifest(QUEUE_APP, tmp_path / "openapi.json")
    tls = ["--nats-tls-ca", str(d / "ca.pem")]

    gateway = launcher.spawn("gateway-tls", [str(GATEWAY_BIN), "--manifest", str(manifest), "--task-log",
                                             f"sqlite:{d / 'tasks.sqlite'}", "--host", "127.0.0.1", "--port", "0",
                                             "--nats", url, *tls],
                             env=_server_env(creds.gateway_env()), log_dir=d)
    base = gateway.wait_listening()
    worker_argv = [str(WORKER_BIN), "--mode", "nats", "--pool", "async", "--app", str(QUEUE_APP), "--python-path",
                   str(PYTHON_SDK), "--task-log", f"sqlite:{d / 'tasks.sqlite'}", "--nats", url, "--port", "0"]
    worker = launcher.spawn("worker-tls", [*worker_argv, *tls], env=_server_env(creds.worker_env("async")), log_dir=d)
    wait_for_output(worker, r"consuming pool_async from tls://127\.0\.0\.1:\d+", timeout=120)

    queued = post_task(base, "ping", {"n": 3})
    assert queued.status == 202, queued
    task_id = queued.json()["task_id"]
    def completed():
        r = http_request("GET", f"{base}/tasks/{task_id}?wait=10", timeout=60).json()
        return r if r.get("status") == "completed" else None

    record = wait_for(completed, timeout=120, message="the task over TLS")
    assert record["result"] == {"n": 3}, record

    # Without the CA the worker cannot verify the server: refused, and it says what to check.
    blind = launcher.spawn("worker-no-ca", worker_argv, env=_server_env(creds.worker_env("async")), log_dir=d)
    assert blind.wait_exit() == 1
    assert "refused the connection" in blind.output and "--nats-tls-ca" in blind.output
