"""Exact input semantics (README "Input semantics and limits"), through the real gateway and workers of
examples/app.py: what each JSON Schema type accepts and exactly what Python receives, numbers Python could not
receive as written refused with their path, bytes that are not UTF-8 or cannot be stored refused, the one JSON
error shape for routes nobody serves, capped issue lists, and the short string escapes."""
from __future__ import annotations

import json

import pytest

from conftest import Cluster, assert_error_body, http_request

INT64_MAX = 2**63 - 1


def _post_raw(cluster: Cluster, task: str, raw: bytes):
    return http_request("POST", f"{cluster.url}/api/{task}", body=raw)


def _stored_args(cluster: Cluster, task_id: str) -> dict:
    rec = cluster.get(f"/tasks/{task_id}")
    assert rec.status == 200, rec
    return rec.json()["args"]


# ----------------------------------------------------------------------------------------------- integers

@pytest.mark.parametrize("written", ["1e3", "1000.0", "1E+3", "10000e-1", "1000"])
def test_integral_numbers_reach_python_as_int(cluster: Cluster, written: str):
    """An integral number given for an `integer` parameter is delivered as the int 1000: spin(iterations=1e3) used to
    reach Python as a float (range() refused it: 500)."""
    resp = _post_raw(cluster, "spin", f'{{"args": {{"iterations": {written}}}}}'.encode())
    assert resp.status == 200, resp
    assert resp.json()["result"] == sum(range(1000))
    resp = _post_raw(cluster, "echo", f'{{"args": {{"x": {written}}}}}'.encode())
    assert resp.status == 200, resp
    x = resp.json()["result"]["x"]
    assert x == 1000 and type(x) is int, resp
    assert b'"x": 1000' in resp.body or b'"x":1000' in resp.body, resp
    # The task log stores what the worker received.
    stored = _stored_args(cluster, resp.json()["task_id"])
    assert stored["x"] == 1000 and type(stored["x"]) is int, stored


def test_int64_bounds(cluster: Cluster):
    """Integers are 64-bit: the largest goes through exactly, one more is 422 with the path."""
    resp = _post_raw(cluster, "echo", f'{{"args": {{"x": {INT64_MAX}}}}}'.encode())
    assert resp.status == 200, resp
    assert resp.json()["result"]["x"] == INT64_MAX
    resp = _post_raw(cluster, "echo", f'{{"args": {{"x": -{INT64_MAX + 1}}}}}'.encode())
    assert resp.status == 200, resp
    assert resp.json()["result"]["x"] == -(INT64_MAX + 1)
    for too_big in (str(INT64_MAX + 1), str(-(INT64_MAX + 2)), "1e19", "9" * 5000):
        body = assert_error_body(_post_raw(cluster, "echo", f'{{"args": {{"x": {too_big}}}}}'.encode()), 422,
                                 "InvalidArguments")
        assert [d["path"] for d in body["error"]["details"]] == ["args.x"], body
        assert len(body["error"]["message"]) < 400, "the number is abbreviated in the message"


def test_fraction_for_integer_is_422(cluster: Cluster):
    body = assert_error_body(_post_raw(cluster, "echo", b'{"args": {"x": 1.5}}'), 422, "InvalidArguments")
    assert body["error"]["details"][0]["path"] == "args.x"


# ------------------------------------------------------------------------------------------------- floats

@pytest.mark.parametrize("written", ["1e400", "-1e400", "1.8e308"])
def test_non_finite_floats_are_422(cluster: Cluster, written: str):
    """add(a=1e400) used to reach Python as inf (500); now 422 with the path."""
    body = assert_error_body(_post_raw(cluster, "add", f'{{"args": {{"a": {written}, "b": 1}}}}'.encode()), 422,
                             "InvalidArguments")
    assert [d["path"] for d in body["error"]["details"]] == ["args.a"], body


def test_floats_as_written(cluster: Cluster):
    """A `number` parameter gets what Python's json makes of the literal: 1.5 a float, 2 an int, 1e-400 is 0.0."""
    resp = _post_raw(cluster, "add", b'{"args": {"a": 1.5, "b": 2}}')
    assert resp.status == 200 and resp.json()["result"] == 3.5, resp
    resp = _post_raw(cluster, "add", b'{"args": {"a": 1e-400, "b": 1}}')
    assert resp.status == 200 and resp.json()["result"] == 1.0, resp


# ------------------------------------------------------------------------------------------------ strings

def test_invalid_utf8_is_400(cluster: Cluster):
    """Bytes that are not UTF-8 inside a string are refused, not silently replaced by U+FFFD."""
    for raw in (b'{"args": {"x": 1, "label": "\xff"}}', b'{"args": {"x": 1, "label": "\xc3"}}',
                b'{"args": {"x": 1, "label": "\xed\xa0\x80"}}', b'{"args": {"x": 1, "\xc0\xaf": 1}}'):
        assert_error_body(_post_raw(cluster, "echo", raw), 400, "MalformedJSON")


def test_valid_utf8_and_nul_in_strings_round_trip(cluster: Cluster):
    label = "é€😀 \u0000 \b\f\n"
    resp = cluster.post("echo", {"x": 1, "label": label})
    assert resp.status == 200, resp
    assert resp.json()["result"]["label"] == label


def test_short_escapes_are_written(cluster: Cluster):
    """\\b and \\f are stored (and served) as two-byte escapes, not \\u0008 / \\u000c."""
    resp = cluster.post("echo", {"x": 1, "label": "\b\f"})
    assert resp.status == 200, resp
    raw = cluster.get(f"/tasks/{resp.json()['task_id']}").body
    assert b'"label":"\\b\\f"' in raw, raw


def test_duplicate_keys_last_wins(cluster: Cluster):
    resp = _post_raw(cluster, "echo", b'{"args": {"x": 1, "x": 2}}')
    assert resp.status == 200 and resp.json()["result"]["x"] == 2, resp


# ---------------------------------------------------------------------------------------- issues and routes

def test_issue_list_is_capped(cluster: Cluster):
    """5,000 unexpected keys: 20 details and the count, not 5,000 details."""
    args = {"x": 1, **{f"k{i}": 1 for i in range(5000)}}
    body = assert_error_body(cluster.post("echo", args), 422, "InvalidArguments")
    assert len(body["error"]["details"]) == 20, len(body["error"]["details"])
    assert body["error"]["issue_count"] == 5000, body["error"]["issue_count"]


@pytest.mark.parametrize("query", ["function=echo%00boom", "pool=fa%00st", "status=completed&q=%00", "function=%ff%fe",
                                   "function=%zz"])
def test_unstorable_query_values_are_400(cluster: Cluster, query: str):
    """A NUL (SQLite would stop the value at it: `echo%00boom` matched `echo`), non-UTF-8 or a malformed escape."""
    assert_error_body(cluster.get(f"/tasks?{query}"), 400, "BadRequest")


def test_unknown_route_is_a_json_404(cluster: Cluster):
    for method, path in (("GET", "/nope"), ("POST", "/nope/deeper"), ("GET", "/tasks/x/y/z"), ("PUT", "/")):
        body = assert_error_body(http_request(method, cluster.url + path), 404, "NotFound")
        assert path in body["error"]["message"]


def test_wrong_method_is_405_with_allow(cluster: Cluster):
    resp = http_request("GET", f"{cluster.url}/api/echo")
    assert_error_body(resp, 405, "MethodNotAllowed")
    assert resp.headers.get("allow") == "POST", resp.headers
    resp = http_request("PUT", f"{cluster.url}/tasks/{'0' * 8}")
    assert_error_body(resp, 405, "MethodNotAllowed")
    assert set(resp.headers.get("allow", "").split(", ")) == {"GET", "DELETE"}, resp.headers


def test_list_omits_bodies_unless_asked(cluster: Cluster):
    made = cluster.post("echo", {"x": 5, "label": "listed"}).json()
    page = cluster.get("/tasks?function=echo&limit=5").json()
    assert page["tasks"] and all("args" not in t and "result" not in t and "error" not in t for t in page["tasks"]), page
    page = cluster.get("/tasks?function=echo&limit=50&fields=args,result").json()
    mine = [t for t in page["tasks"] if t["task_id"] == made["task_id"]]
    assert mine and mine[0]["args"] == {"x": 5, "label": "listed"} and "error" not in mine[0], mine
    assert_error_body(cluster.get("/tasks?fields=secrets"), 400, "BadRequest")


def test_invalid_json_nesting_is_400(cluster: Cluster):
    deep = b'{"args": {"x": 1, "label": ' + b"[" * 5000 + b"]" * 5000 + b"}}"
    assert_error_body(_post_raw(cluster, "echo", deep), 400, "MalformedJSON")
    assert json.loads(cluster.get("/healthz").body)["status"] == "ok"


def test_args_are_required_as_the_manifest_says(cluster: Cluster):
    """The manifest's request schema requires `args` (found by the fuzzer: `{}` ran the task)."""
    body = assert_error_body(_post_raw(cluster, "whoami", b"{}"), 422, "InvalidArguments")
    assert [d["path"] for d in body["error"]["details"]] == ["args"], body
    assert _post_raw(cluster, "whoami", b'{"args": {}}').status == 200
