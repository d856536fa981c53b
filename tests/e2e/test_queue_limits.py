"""Queued submits against a real nats-server: message sizes that JetStream cannot take are 413 (not a 503 to retry
forever), and Idempotency-Key works like Stripe's (a key whose publish failed is released; the same key with other
arguments is 422)."""
from __future__ import annotations

import json

from conftest import EXAMPLE_APP, assert_error_body, http_request, wait_for

NATS_DEFAULT_MAX_PAYLOAD = 1 << 20  # nats-server's default max_payload: 1 MB
GATEWAY_DEFAULT_MAX_BODY = 1 << 20


def _report_body(dataset_len: int) -> bytes:
    return json.dumps({"args": {"dataset": "d" * dataset_len}}).encode()


def test_message_over_max_payload_is_413_naming_the_limit(queue_stack):
    """A body under the gateway's 1 MiB limit whose NATS message (payload + headers) is over the server's 1 MB
    max_payload: 413 with the limit, no Retry-After, nothing recorded. (It was 503 QueueUnavailable + Retry-After.)"""
    stack = queue_stack(app=EXAMPLE_APP, name="maxpayload")
    stack.worker("async", concurrency=1)
    too_big = _report_body(GATEWAY_DEFAULT_MAX_BODY - 40)
    assert len(too_big) <= GATEWAY_DEFAULT_MAX_BODY
    resp = http_request("POST", f"{stack.url}/api/generate_report", body=too_big)
    body = assert_error_body(resp, 413, "PayloadTooLarge")
    assert body["error"]["limit"] == NATS_DEFAULT_MAX_PAYLOAD, body
    assert "max_payload" in body["error"]["message"], body
    assert "retry-after" not in resp.headers, resp.headers
    assert not stack.log.query("SELECT id FROM tasks WHERE function_name = 'generate_report'")

    # Just under the limit, the same task is queued.
    fits = _report_body(NATS_DEFAULT_MAX_PAYLOAD - 4096)
    resp = http_request("POST", f"{stack.url}/api/generate_report", body=fits)
    assert resp.status == 202, resp
    # And one of ordinary size runs. (The near-limit one is not awaited: with --task-log nats its events, which carry
    # the arguments, are themselves over max_payload.)
    resp = http_request("POST", f"{stack.url}/api/generate_report", body=_report_body(64 * 1024))
    assert resp.status == 202, resp
    record = stack.wait_task(resp.json()["task_id"])
    assert record["status"] == "completed", {k: v for k, v in record.items() if k != "args"}


def test_same_key_other_arguments_is_422(queue_stack):
    stack = queue_stack(app=EXAMPLE_APP, name="idem-reuse")
    headers = {"Idempotency-Key": "order-7"}
    first = stack.post("generate_report", {"dataset": "a"}, headers=headers)
    assert first.status == 202, first
    task_id = first.json()["task_id"]
    # The same arguments written differently (key order, an integral float for an int) are the same request.
    again = stack.post("train_model", {"data": "x", "epochs": 1}, headers=headers)
    assert again.status == 202, again  # another task: keys are per task
    same = http_request("POST", f"{stack.url}/api/train_model", body=b'{"args": {"epochs": 1.0, "data": "x"}}',
                        headers=headers)
    assert same.status == 202 and same.json()["task_id"] == again.json()["task_id"], same
    assert same.headers.get("idempotent-replayed") == "true", same.headers
    other = stack.post("generate_report", {"dataset": "b"}, headers=headers)
    body = assert_error_body(other, 422, "IdempotencyKeyReused")
    assert body["error"]["task_id"] == task_id, body
    rows = stack.log.query("SELECT id FROM tasks WHERE function_name = 'generate_report'")
    assert [r["id"] for r in rows] == [task_id], rows


def test_key_is_released_when_the_publish_fails(queue_stack):
    """NATS down: the keyed submit is 503 and its task failed; the retry the 503 invites, once NATS is back, queues and
    runs the task under the same key (it used to get 202 with the failed task for 120 s)."""
    stack = queue_stack(app=EXAMPLE_APP, name="idem-release")
    stack.worker("async", concurrency=1)
    headers = {"Idempotency-Key": "release-me"}
    stack.nats.stop()
    refused = stack.post("generate_report", {"dataset": "r"}, headers=headers)
    body = assert_error_body(refused, 503, "QueueUnavailable")
    failed_id = body["error"]["task_id"]
    assert refused.headers.get("retry-after"), refused.headers
    stack.nats.start()

    def retry():
        r = stack.post("generate_report", {"dataset": "r"}, headers=headers)
        if r.status == 503:
            assert_error_body(r, 503, "QueueUnavailable")
            return None
        return r

    accepted = wait_for(retry, timeout=90, interval=0.5, message="the keyed retry to be accepted after NATS restarted")
    assert accepted.status == 202, accepted
    assert accepted.headers.get("idempotent-replayed") is None, accepted.headers
    new_id = accepted.json()["task_id"]
    assert new_id != failed_id and accepted.json()["status"] == "queued", accepted
    assert stack.wait_task(new_id)["status"] == "completed"
    # From now on the key names the task that ran.
    replay = stack.post("generate_report", {"dataset": "r"}, headers=headers)
    assert replay.status == 202 and replay.json()["task_id"] == new_id, replay
    assert replay.headers.get("idempotent-replayed") == "true"
    assert stack.record(failed_id)["status"] == "failed"
