"""Request-level errors through the gateway: unknown task, malformed JSON, argument validation against the
manifest's schema, body size limit, async/gpu not yet served, and a result that JSON cannot encode."""
from __future__ import annotations

import json

import pytest

from conftest import (
    SHARED_MAX_BODY_BYTES,
    Cluster,
    assert_error_body,
    http_request,
    loads_json_column,
)

from neutrino.errors import InvalidArguments, NotSupported, TaskFailed, UnknownTask


# ------------------------------------------------------------------------------------------- unknown task

def test_unknown_task_404(cluster: Cluster):
    """POST /api/<no such task> -> 404 JSON error; the Client raises UnknownTask."""
    assert_error_body(cluster.post("no_such_task", {}), 404)
    with pytest.raises(UnknownTask):
        cluster.client().call("no_such_task", x=1)


# ------------------------------------------------------------------------------------------ malformed JSON

@pytest.mark.parametrize("raw", [b'{"args": {"x": 1', b"not json at all", b'{"args": {"x": 1}} trailing'],
                         ids=["truncated", "not-json", "trailing-garbage"])
def test_malformed_json_400(cluster: Cluster, raw: bytes):
    """A body that is not valid JSON -> 400 JSON error."""
    resp = http_request("POST", f"{cluster.url}/api/echo", body=raw)
    assert_error_body(resp, 400)


# ------------------------------------------------------------------------------------------ argument schema

@pytest.mark.parametrize(
    "task,args,why",
    [
        ("echo", {"x": "three"}, "wrong type: string for int"),
        ("echo", {"x": 1.5}, "wrong type: fraction for int"),
        ("echo", {"x": 1, "label": 5}, "wrong type: int for str"),
        ("echo", {"label": "no x"}, "missing required x"),
        ("echo", {"x": 1, "extra": True}, "unknown key"),
        ("add", {"a": "1", "b": 2}, "wrong type: string for float"),
        ("sleepy", {}, "missing required seconds"),
        ("centroid", {"points": "not-a-list"}, "points not a list"),
        ("centroid", {"points": [{"x": 1}]}, "dataclass item missing y"),
        ("centroid", {"points": [{"x": "a", "y": 1}]}, "dataclass item field of wrong type"),
        ("centroid", {"points": [{"x": 1, "y": 2}], "weights": ["heavy"]}, "Optional list with wrong item type"),
        ("centroid", {"points": [{"x": 1, "y": 2}], "weights": 3}, "Optional list given a number"),
    ],
    ids=lambda v: v if isinstance(v, str) and " " in v else None,
)
def test_invalid_arguments_422(cluster: Cluster, task: str, args: dict, why: str):
    """Arguments that fail the task's schema -> 422 InvalidArguments with a non-empty list of details."""
    body = assert_error_body(cluster.post(task, args), 422, "InvalidArguments")
    details = body["error"].get("details")
    assert isinstance(details, list) and details, f"{why}: error.details should be a non-empty list: {body}"


def test_invalid_arguments_python_client(cluster: Cluster):
    """The Client raises InvalidArguments for a schema failure."""
    with pytest.raises(InvalidArguments):
        cluster.client().call("echo", x="three")


def test_args_must_be_an_object(cluster: Cluster):
    """`args` that is not a JSON object is refused (400 or 422, JSON error) and never reaches a task."""
    resp = http_request("POST", f"{cluster.url}/api/echo", json_body={"args": [1, 2]})
    assert resp.status in (400, 422), resp
    assert_error_body(resp, resp.status)


def test_optional_accepts_null(cluster: Cluster):
    """centroid(weights=None): an Optional argument accepts JSON null."""
    resp = cluster.post("centroid", {"points": [{"x": 0, "y": 0}, {"x": 2, "y": 4}], "weights": None})
    assert resp.status == 200, resp
    assert resp.json()["result"] == {"x": pytest.approx(1.0), "y": pytest.approx(2.0)}


def test_defaults_may_be_omitted(cluster: Cluster):
    """An argument with a default may be left out."""
    resp = cluster.post("echo", {"x": 3})
    assert resp.status == 200, resp
    assert resp.json()["result"] == {"x": 3, "label": ""}


# ---------------------------------------------------------------------------------------------- body size

def test_body_over_limit_413(cluster: Cluster):
    """A body over --max-body-bytes (64 KiB here) -> 413 JSON error; the Client raises PayloadTooLarge."""
    big = json.dumps({"args": {"x": 1, "label": "a" * (SHARED_MAX_BODY_BYTES + 1024)}}).encode()
    assert len(big) > SHARED_MAX_BODY_BYTES
    assert_error_body(http_request("POST", f"{cluster.url}/api/echo", body=big), 413)

    from neutrino.errors import PayloadTooLarge

    with pytest.raises(PayloadTooLarge):
        cluster.client().call("echo", x=1, label="b" * (SHARED_MAX_BODY_BYTES + 1024))


def test_body_under_limit_passes(cluster: Cluster):
    """A body just under the limit is served normally (the limit is not smaller than configured)."""
    label = "c" * (SHARED_MAX_BODY_BYTES - 1024)
    resp = cluster.post("echo", {"x": 2, "label": label})
    assert resp.status == 200, resp
    assert resp.json()["result"] == {"x": 2, "label": label}


# ------------------------------------------------------------------------------------------ async and gpu

@pytest.mark.sqlite_task_log_only("the NATS task-log mode gives the gateway --nats, which accepts queued tasks")
@pytest.mark.parametrize("task,args", [("generate_report", {"dataset": "d"}), ("train_model", {"data": "d"})])
def test_async_and_gpu_tasks_not_supported_yet(cluster: Cluster, task: str, args: dict):
    """Until the JetStream path exists, async/gpu tasks answer 501 with a JSON error (never a fake 202)."""
    assert_error_body(cluster.post(task, args), 501)
    with pytest.raises(NotSupported):
        cluster.client().call(task, **args)


# --------------------------------------------------------------------------------------- result not JSON

def test_result_not_serializable(extra_cluster: Cluster):
    """A task returning a set -> 500 failed, error.type ResultNotSerializable; the row is failed too."""
    body = assert_error_body(extra_cluster.post("returns_set", {}), 500, "ResultNotSerializable")
    assert body["status"] == "failed", body
    task_id = body["task_id"]
    rec = extra_cluster.get(f"/tasks/{task_id}").json()
    assert rec["status"] == "failed", rec
    assert rec["error"]["type"] == "ResultNotSerializable", rec
    row = extra_cluster.log.wait_terminal(task_id, final_event="failed")
    assert row["status"] == "failed"
    assert loads_json_column(row["error"])["type"] == "ResultNotSerializable"

    with pytest.raises(TaskFailed) as info:
        extra_cluster.client().call("returns_set")
    assert info.value.remote_type == "ResultNotSerializable"


def test_app_folder_is_on_sys_path(extra_cluster: Cluster):
    """extra_app.py imports a sibling module; the worker found it (the app's folder is on sys.path)."""
    resp = extra_cluster.post("helper_tag", {})
    assert resp.status == 200, resp
    assert resp.json()["result"] == "e2e-helpers-from-app-folder"
