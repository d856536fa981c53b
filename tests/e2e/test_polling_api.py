"""The polling API: GET /tasks/<id> and GET /tasks with filters, newest-first order and cursor pagination.

Runs on its own cluster so the task log holds exactly the tasks made here."""
from __future__ import annotations

import pytest

from conftest import EXAMPLE_APP, Cluster, Launcher, assert_error_body, uuid7

from neutrino.errors import UnknownTask

MAX_PAGES = 50


@pytest.fixture(scope="module")
def polled(launcher: Launcher, example_manifest) -> Cluster:
    c = launcher.cluster(app=EXAMPLE_APP, manifest=example_manifest, workers=1, concurrency=2, name="polling")
    yield c
    c.stop()


@pytest.fixture(scope="module")
def made(polled: Cluster) -> list[dict]:
    """9 tasks made one after another (so creation order is known): 5 echo, 2 boom (failed), 2 add."""
    plan = [("echo", {"x": 1}), ("add", {"a": 1, "b": 2}), ("echo", {"x": 2}), ("boom", {"message": "p1"}),
            ("echo", {"x": 3}), ("echo", {"x": 4}), ("add", {"a": 3, "b": 4}), ("boom", {"message": "p2"}),
            ("echo", {"x": 5})]
    out = []
    for function, args in plan:
        resp = polled.post(function, args)
        assert resp.status == (500 if function == "boom" else 200), resp
        body = resp.json()
        out.append({"task_id": body["task_id"], "function": function,
                    "status": "failed" if function == "boom" else "completed"})
    return out


def _list(c: Cluster, query: str) -> dict:
    resp = c.get("/tasks" + (f"?{query}" if query else ""))
    assert resp.status == 200, f"GET /tasks?{query}: {resp!r}"
    page = resp.json()
    assert isinstance(page.get("tasks"), list) and "next_before" in page, page
    return page


def _newest_first(items: list[dict]) -> list[str]:
    return [t["task_id"] for t in reversed(items)]


def test_list_all_newest_first(polled: Cluster, made: list[dict]):
    """GET /tasks lists every task, newest first, each with its function, status and pool."""
    page = _list(polled, "limit=100")
    assert [t["task_id"] for t in page["tasks"]] == _newest_first(made)
    assert page["next_before"] is None
    for t, m in zip(page["tasks"], reversed(made)):
        assert t["function"] == m["function"] and t["status"] == m["status"] and t["pool"] == "fast", t


@pytest.mark.parametrize(
    "query,keep",
    [
        ("status=failed", lambda m: m["status"] == "failed"),
        ("status=completed", lambda m: m["status"] == "completed"),
        ("status=running", lambda m: False),
        ("function=echo", lambda m: m["function"] == "echo"),
        ("function=add", lambda m: m["function"] == "add"),
        ("function=nope", lambda m: False),
        ("pool=fast", lambda m: True),
        ("pool=gpu", lambda m: False),
        ("function=boom&status=failed", lambda m: m["function"] == "boom"),
        ("function=echo&status=failed", lambda m: False),
        ("function=add&status=completed&pool=fast", lambda m: m["function"] == "add"),
    ],
)
def test_list_filters(polled: Cluster, made: list[dict], query: str, keep):
    """status=, function= and pool= filter (and combine), keeping newest-first order."""
    page = _list(polled, f"{query}&limit=100")
    assert [t["task_id"] for t in page["tasks"]] == _newest_first([m for m in made if keep(m)]), page
    assert page["next_before"] is None


@pytest.mark.parametrize("query,keep", [("", lambda m: True), ("function=echo&", lambda m: m["function"] == "echo")])
def test_cursor_pagination(polled: Cluster, made: list[dict], query: str, keep):
    """limit=2 pages, followed by next_before until it is null, visit every task once, newest first."""
    seen: list[str] = []
    before = None
    for _ in range(MAX_PAGES):
        page = _list(polled, f"{query}limit=2" + (f"&before={before}" if before else ""))
        ids = [t["task_id"] for t in page["tasks"]]
        assert len(ids) <= 2, page
        seen += ids
        before = page["next_before"]
        if before is None:
            break
        assert ids, f"an empty page must end the walk (next_before null), got {page}"
    else:
        pytest.fail(f"pagination did not end within {MAX_PAGES} pages")
    assert len(seen) == len(set(seen)), f"duplicates across pages: {seen}"
    assert seen == _newest_first([m for m in made if keep(m)])


def test_get_task_by_id(polled: Cluster, made: list[dict]):
    """GET /tasks/<id> for each made task returns its record."""
    for m in made:
        rec = polled.get(f"/tasks/{m['task_id']}")
        assert rec.status == 200, rec
        rec = rec.json()
        assert rec["task_id"] == m["task_id"] and rec["function"] == m["function"] and rec["status"] == m["status"]


def test_unknown_task_id_404(polled: Cluster, made: list[dict]):
    """GET /tasks/<well-formed id nobody made> -> 404 JSON error; the Client raises too."""
    unknown = uuid7()
    assert_error_body(polled.get(f"/tasks/{unknown}"), 404)
    with pytest.raises(UnknownTask):
        polled.client().get_task(unknown)


@pytest.mark.parametrize("query", ["status=bogus", "status=done&limit=2"])
def test_bad_status_400(polled: Cluster, made: list[dict], query: str):
    """A status that is not one of the seven -> 400 JSON error."""
    assert_error_body(polled.get(f"/tasks?{query}"), 400)


def test_client_list_tasks(polled: Cluster, made: list[dict]):
    """Client.list_tasks passes the filters through."""
    client = polled.client()
    listed = client.list_tasks(status="failed", function="boom", pool="fast", limit=10)
    assert [t["task_id"] for t in listed["tasks"]] == _newest_first([m for m in made if m["function"] == "boom"])
    assert listed["next_before"] is None
    first = client.list_tasks(limit=2)
    second = client.list_tasks(limit=2, before=first["next_before"])
    assert [t["task_id"] for t in first["tasks"] + second["tasks"]] == _newest_first(made)[:4]
