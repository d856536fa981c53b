"""NATS is authenticated and authorised (issue 12; users and permissions: python/neutrino/natsauth.py).

Every NatsServer of the e2e suite runs with the generated users (conftest, $NEUTRINO_E2E_NATS_AUTH), so every other
queue test is the "normal flow with auth on". These tests check the refusals on a real nats-server: a client
without (or with wrong) credentials is refused; a worker of pool `async` cannot fetch from pool `gpu`, publish a
task (not even one of its own pool) or a cancellation, nor read another user's replies; the gateway cannot speak
for a worker. The raw wire client (`NatsWire`) is used so that each refusal is the server's own answer.
"""
from __future__ import annotations

import time

import pytest
from conftest import NATS_AUTH, QUEUE_APP, wait_for_output

pytestmark = pytest.mark.skipif(not NATS_AUTH, reason="NEUTRINO_E2E_NATS_AUTH=0: the suite runs NATS without auth")


def _refusal(action) -> str:
    """The server's -ERR text for `action` (which must fail with one)."""
    try:
        action()
    except AssertionError as failure:
        return str(failure)
    return "accepted"


def _until_pong(nc, data: bytes) -> str:
    """Sends `data` + PING; the server's -ERR text before the PONG ("" when there was none)."""
    nc._send(data + b"PING\r\n")
    errors = []
    while True:
        try:
            kind, _ = nc._read()
        except AssertionError as failure:  # an -ERR line
            errors.append(str(failure))
            continue
        if kind == "PONG":
            return " ".join(errors)


def _publish_refused(nc, subject: str, payload: bytes = b"x") -> str:
    """Publishes to `subject`; the error the server answers ("" when it took the message)."""
    return _until_pong(nc, f"PUB {subject} {len(payload)}\r\n".encode() + payload + b"\r\n")


def test_a_client_without_credentials_is_refused(queue_stack):
    stack = queue_stack(app=QUEUE_APP, name="auth-anon")
    assert "Authorization Violation" in _refusal(lambda: stack.nats.wire(user=None))
    assert "Authorization Violation" in _refusal(lambda: stack.nats.wire(user="gateway", password="not-the-password"))
    assert "Authorization Violation" in _refusal(lambda: stack.nats.wire(user="nobody", password="x"))

    # A real worker given no credentials stops at once with a message that says why; the server logged the refusal.
    worker = stack.worker("async", wait=False, env_extra={"NEUTRINO_NATS_USER": ""})
    assert worker.wait_exit() == 1
    assert "the NATS server refused the connection" in worker.output and "--nats-user" in worker.output
    assert "consuming pool_async" not in worker.output
    wait_for_output(stack.nats.proc, r'auth-anon-async-w\d+" - authentication error', timeout=30)
    # So does one with another pool's password.
    gpu_password = stack.nats.credentials.password("worker_gpu")
    wrong = stack.worker("async", wait=False,
                         env_extra={"NEUTRINO_NATS_USER": "worker_async", "NEUTRINO_NATS_PASSWORD": gpu_password})
    assert wrong.wait_exit() == 1 and "refused the connection" in wrong.output


def test_a_worker_may_pull_only_its_own_pool(queue_stack):
    stack = queue_stack(app=QUEUE_APP, name="auth-pools")
    worker = stack.worker("async")  # pool `async`'s own credentials: it consumes and completes its tasks
    record = stack.wait_task(stack.submit("ping", {"n": 7}))
    assert record["status"] == "completed", record
    # Everything it published on the way (fetch, ack, events or finished notice) was allowed.
    time.sleep(0.5)
    assert "NATS asynchronous error" not in worker.output, worker.output[-2000:]

    with stack.nats.wire(user="worker_async") as nc:
        # Allowed: its own consumer.
        info = nc.js_api("CONSUMER.INFO.NEUTRINO_TASKS.pool_async")
        assert info.get("name") == "pool_async", info
        # Refused: another pool's consumer, info or fetch.
        for what in ("CONSUMER.INFO.NEUTRINO_TASKS.pool_gpu", "CONSUMER.MSG.NEXT.NEUTRINO_TASKS.pool_gpu"):
            refusal = _refusal(lambda what=what: nc.js_api(what, {"batch": 1}))
            assert "Permissions Violation for Publish" in refusal, what
    with stack.nats.wire(user="worker_async") as nc:
        # Refused: publishing a task (another pool's or its own), a cancellation, another pool's heartbeat or
        # events, provisioning anything but a missing events stream, changing or emptying that stream, deleting a queued
        # task.
        for subject in ("neutrino.gpu.train", "neutrino.async.journal", "neutrino.control.cancel",
                        "neutrino.heartbeat.gpu", "neutrino.events.gpu", "$JS.API.STREAM.DELETE.NEUTRINO_TASKS",
                        "$JS.API.STREAM.MSG.DELETE.NEUTRINO_TASKS", "$JS.API.CONSUMER.CREATE.NEUTRINO_TASKS",
                        # the events stream it publishes to: changing its limits, purging or deleting it
                        "$JS.API.STREAM.UPDATE.NEUTRINO_EVENTS", "$JS.API.STREAM.PURGE.NEUTRINO_EVENTS",
                        "$JS.API.STREAM.DELETE.NEUTRINO_EVENTS", "$JS.API.STREAM.MSG.DELETE.NEUTRINO_EVENTS",
                        # a settled mark for another pool's task (its worker would skip the task)
                        "neutrino.settled.gpu.01a236d1-715a-7141-826d-70f910bee20a",
                        # a finished notice for another pool's task (it would wake that pool's long polls)
                        "neutrino.control.finished.gpu"):
            assert "Permissions Violation for Publish" in _publish_refused(nc, subject), subject
    with stack.nats.wire(user="worker_async") as nc:
        # Refused: listening to another user's replies (where the tasks pool gpu fetches arrive) or to tasks.
        for sid, subject in enumerate(("_INBOX_worker_gpu.>", "_INBOX.>", "neutrino.gpu.*"), start=9):
            refused = _until_pong(nc, f"SUB {subject} {sid}\r\n".encode())
            assert "Permissions Violation for Subscription" in refused, subject
        # Allowed: its own heartbeat subject, and its own pool's finished notices.
        assert _publish_refused(nc, "neutrino.heartbeat.async", b"{}") == ""
        assert _publish_refused(nc, "neutrino.control.finished.async", b"01a236d1-715a-7141-826d-70f910bee20a") == ""
    with stack.nats.wire(user="gateway") as nc:
        # The gateway hears every pool's finished notices.
        assert _until_pong(nc, b"SUB neutrino.control.finished.* 9\r\n") == ""
        assert "Permissions Violation for Publish" in _publish_refused(nc, "neutrino.heartbeat.async")
