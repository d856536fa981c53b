"""Dashboard logins (issue 12) on the real gateway binary with `--api-keys`: a key exchanged at POST /auth/session
for an HttpOnly, SameSite=Strict session cookie, which then stands for the key (its scopes, its limits) until it
expires, the user logs out, or the key is revoked. A state change authenticated only by the cookie must come from
the gateway's own origin. Also the access matrix route x scope (bearer key and cookie), the task's `submitted_by`,
and the dashboard in headless Chromium: log in, see tasks, a read-only key sees no Cancel, log out.
"""
from __future__ import annotations

import re
import subprocess
import sys

import pytest
from conftest import EXAMPLE_APP, GATEWAY_BIN, NATS_TASK_LOG, PYTHON_SDK, _server_env, http_request, post_task, wait_for

pytestmark = pytest.mark.skipif(NATS_TASK_LOG, reason="one task-log mode is enough for access control")

DASHBOARD_DIR = PYTHON_SDK.parent / "dashboard"


def keys_cli(*args: str) -> str:
    out = subprocess.run([sys.executable, "-m", "neutrino.cli", "keys", *args], check=True, capture_output=True,
                         text=True, env={**_server_env(), "PYTHONPATH": str(PYTHON_SDK)})
    return out.stdout.strip()


@pytest.fixture(scope="module")
def keyed(launcher, example_manifest):
    d = launcher.new_dir("sessions")
    keys = d / "keys.json"
    made = {scope: keys_cli("create", "--name", scope, "--scopes", scope, "--file", str(keys))
            for scope in ("read", "submit", "admin")}
    made["victim"] = keys_cli("create", "--name", "victim", "--scopes", "admin", "--file", str(keys))
    db = d / "tasks.sqlite"
    worker = launcher.worker(EXAMPLE_APP, db, log_dir=d)
    argv = [str(GATEWAY_BIN), "--manifest", str(example_manifest), "--http-pool", f"fast={worker.url}",
            "--task-log", f"sqlite:{db}", "--host", "127.0.0.1", "--port", "0", "--api-keys", str(keys),
            "--dashboard-dir", str(DASHBOARD_DIR)]
    gw = launcher.spawn("gateway-sessions", argv, env=_server_env(), log_dir=d)
    url = gw.wait_listening()
    return {"url": url, "keys": made, "file": keys, "gateway": gw, "dir": d}


def bearer(key: str) -> dict:
    return {"Authorization": f"Bearer {key}"}


def login(url: str, key: str, headers=None):
    return http_request("POST", f"{url}/auth/session", json_body={"key": key}, headers=headers)


def cookie_of(resp) -> str:
    m = re.match(r"neutrino_session=([^;]+)", resp.headers.get("set-cookie", ""))
    assert m, resp.headers
    return f"neutrino_session={m.group(1)}"


def test_login_sets_a_strict_http_only_cookie_and_logout_ends_it(keyed):
    url, keys = keyed["url"], keyed["keys"]
    assert login(url, keys["read"] + "x").status == 401
    assert login(url, "").status == 401
    assert http_request("POST", f"{url}/auth/session", body=b'{"key": 1}').status == 400
    # A form can not log in (CSRF on the login itself): text/plain and form encodings are refused.
    assert http_request("POST", f"{url}/auth/session", body=b"key=x",
                        headers={"Content-Type": "application/x-www-form-urlencoded"}).status == 403
    r = login(url, keys["read"])
    assert r.status == 200, r
    body = r.json()
    assert body["key_id"] == keys["read"].split("_")[1] and body["scopes"] == ["read"] and body["expires_at"]
    attrs = [a.strip() for a in r.headers["set-cookie"].split(";")]
    assert {"HttpOnly", "SameSite=Strict", "Path=/", "Max-Age=43200"} <= set(attrs) and "Secure" not in attrs
    assert keys["read"] not in r.headers["set-cookie"]
    secure = login(url, keys["read"], headers={"X-Forwarded-Proto": "https"})
    assert "Secure" in [a.strip() for a in secure.headers["set-cookie"].split(";")]

    cookie = {"Cookie": cookie_of(r)}
    assert http_request("GET", f"{url}/tasks", headers=cookie).status == 200
    who = http_request("GET", f"{url}/auth/session", headers=cookie)
    assert who.status == 200 and who.json()["key_id"] == body["key_id"], who
    assert http_request("GET", f"{url}/auth/session").status == 401
    bye = http_request("DELETE", f"{url}/auth/session", headers=cookie)
    assert bye.status == 200 and "Max-Age=0" in bye.headers["set-cookie"]
    assert http_request("GET", f"{url}/tasks", headers=cookie).status == 401
    assert http_request("GET", f"{url}/tasks", headers={"Cookie": "neutrino_session=forged"}).status == 401


def test_a_revoked_key_ends_its_sessions(keyed):
    url, keys = keyed["url"], keyed["keys"]
    cookie = {"Cookie": cookie_of(login(url, keys["victim"]))}
    assert http_request("GET", f"{url}/pools", headers=cookie).status == 200
    keys_cli("revoke", keys["victim"].split("_")[1], "--file", str(keyed["file"]))
    wait_for(lambda: http_request("GET", f"{url}/pools", headers=cookie).status == 401, timeout=10, interval=0.05,
             message="the revoked key's session to be refused")
    assert http_request("GET", f"{url}/auth/session", headers=cookie).status == 401


def test_access_matrix(keyed):
    """Every route x every scope, by bearer key and by session cookie (same-origin), plus the CSRF rule."""
    url, keys = keyed["url"], keyed["keys"]
    queued = post_task(url, "echo", {"x": 1}, headers=bearer(keys["submit"]))
    assert queued.status == 200, queued
    task_id = queued.headers["x-neutrino-task-id"]
    own = {"Origin": url, "Sec-Fetch-Site": "same-origin"}
    routes = [
        ("GET", "/tasks", None), ("GET", f"/tasks/{task_id}", None), ("GET", "/pools", None),
        ("GET", "/events?probe=1", None), ("POST", "/api/echo", {"args": {"x": 2}}),
        ("DELETE", f"/tasks/{task_id}", None), ("POST", f"/tasks/{task_id}/retry", None), ("GET", "/metrics", None),
        ("GET", "/healthz", None),
    ]
    cookies = {scope: {"Cookie": cookie_of(login(url, keys[scope]))} for scope in ("read", "submit", "admin")}
    matrix: dict[tuple[str, str], dict[str, int]] = {}
    for method, path, body in routes:
        row = {}
        for who, headers in [("none", {}), *((f"bearer {s}", bearer(keys[s])) for s in ("read", "submit", "admin")),
                             *((f"cookie {s}", {**cookies[s], **own}) for s in ("read", "submit", "admin"))]:
            if path.startswith("/events"):
                status = _status_only(url, path, headers)
            else:
                status = http_request(method, url + path, json_body=body, headers=headers).status
            row[who] = status
        matrix[(method, path.split("?")[0].replace(task_id, "<id>"))] = row
    print("\naccess matrix (route x credential → status):")
    for (method, path), row in matrix.items():
        print(f"  {method:6} {path:22} " + " ".join(f"{k}={v}" for k, v in row.items()))

    def expect(route, allowed: set[str], ok_statuses=(200, 409)):
        row = matrix[route]
        for who, status in row.items():
            scope = who.split(" ")[-1]
            if who == "none":
                assert status == 401, (route, who, status)
            elif scope in allowed or scope == "admin":
                assert status in ok_statuses, (route, who, status)
            else:
                assert status == 403, (route, who, status)

    for route in [("GET", "/tasks"), ("GET", "/tasks/<id>"), ("GET", "/pools"), ("GET", "/events")]:
        expect(route, {"read"})
    expect(("POST", "/api/echo"), {"submit"})
    expect(("DELETE", "/tasks/<id>"), set(), ok_statuses=(409,))  # admin: allowed, the task already completed
    expect(("POST", "/tasks/<id>/retry"), set(), ok_statuses=(409,))  # completed: not retryable
    expect(("GET", "/metrics"), set())
    assert set(matrix[("GET", "/healthz")].values()) == {200}

    # CSRF: a state change by cookie alone needs the gateway's own origin; a foreign one is refused first.
    admin = cookies["admin"]
    assert http_request("DELETE", f"{url}/tasks/{task_id}", headers=admin).status == 403
    delete = f"{url}/tasks/{task_id}"
    assert http_request("DELETE", delete, headers={**admin, "Sec-Fetch-Site": "cross-site"}).status == 403
    assert http_request("DELETE", delete, headers={**admin, "Origin": "http://evil.example"}).status == 403
    assert http_request("DELETE", delete, headers={**admin, "Origin": url}).status == 409
    assert post_task(url, "echo", {"x": 3}, headers=cookies["submit"]).status == 403
    assert post_task(url, "echo", {"x": 3}, headers={**cookies["submit"], **own}).status == 200


def _status_only(url: str, path: str, headers: dict) -> int:
    import http.client
    from urllib.parse import urlsplit
    parts = urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=30)
    try:
        conn.request("GET", path, headers=headers)
        return conn.getresponse().status
    finally:
        conn.close()


def test_submitted_by_is_in_the_task_record(keyed):
    url, keys = keyed["url"], keyed["keys"]
    r = post_task(url, "echo", {"x": 5}, headers=bearer(keys["submit"]))
    assert r.status == 200, r
    record = http_request("GET", f"{url}/tasks/{r.headers['x-neutrino-task-id']}", headers=bearer(keys["read"])).json()
    assert record["submitted_by"] == keys["submit"].split("_")[1], record


def test_dashboard_login_read_only_and_logout(keyed):
    from dashboard_browser import make_driver, missing_requirements
    if missing_requirements():
        pytest.skip("; ".join(missing_requirements()))
    from test_dashboard import click, text_of, wait_until

    url, keys = keyed["url"], keyed["keys"]
    r = post_task(url, "echo", {"x": 9}, headers=bearer(keys["submit"]))
    task_id = r.headers["x-neutrino-task-id"]
    driver = make_driver(1200, 800)
    try:
        driver.get(f"{url}/#/tasks")
        has_form = "return !!document.getElementById('login-form')"
        wait_until(driver, lambda d: d.execute_script(has_form), "the login form")
        # A wrong key: an error, still the form.
        driver.execute_script("document.getElementById('login-key').value = 'nk_bad_key'")
        click(driver, "#login-submit", "Log in")
        wait_until(driver, lambda d: (text_of(d, "#login-error") or "").strip(), "the login error")
        # The read-only key: the task list, the task's detail without Cancel or Retry, then log out.
        driver.execute_script("document.getElementById('login-key').value = arguments[0]", keys["read"])
        click(driver, "#login-submit", "Log in")
        wait_until(driver, lambda d: d.execute_script(
            "return !!document.querySelector(`#task-rows tr[data-task-id='${arguments[0]}']`)", task_id),
            "the submitted task in the list")
        assert "read" in (text_of(driver, "#who-key") or "")
        assert driver.execute_script("return document.cookie") == "", "the session cookie is HttpOnly"
        driver.execute_script("location.hash = arguments[0]", f"#/task/{task_id}")
        wait_until(driver, lambda d: text_of(d, "#detail-status") == "completed", "the task's detail")
        assert text_of(driver, "#submitted-by dd") == keys["submit"].split("_")[1]
        assert driver.execute_script("return document.getElementById('cancel-task')") is None
        assert driver.execute_script("return document.getElementById('retry-task')") is None
        click(driver, "#logout", "Log out")
        wait_until(driver, lambda d: d.execute_script("return !!document.getElementById('login-form')"),
                   "the login form after logging out")
        # An admin key sees Cancel (disabled: the task is finished).
        driver.execute_script("document.getElementById('login-key').value = arguments[0]", keys["admin"])
        click(driver, "#login-submit", "Log in")
        wait_until(driver, lambda d: d.execute_script("return document.getElementById('main').dataset.view"),
                   "the dashboard after the admin login")
        driver.execute_script("location.hash = arguments[0]", f"#/task/{task_id}")
        wait_until(driver, lambda d: d.execute_script("return !!document.getElementById('cancel-task')"),
                   "the Cancel button for an admin key")
    finally:
        driver.quit()
