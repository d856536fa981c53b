"""The dashboard in a real browser: headless Chromium (Debian's `chromium` + `chromium-driver`) driven by selenium,
against a real gateway (`--dashboard-dir dashboard`, `--nats`), HTTP workers for the sync pool, a NATS worker for
the async pool, no worker for the gpu pool (its tasks stay queued), nats-server and one SQLite task log.

One stack and one browser serve the whole module. Waits are bounded (WebDriverWait); nothing asserts on speed.
Screenshots of every view land in test-artifacts/screenshots/ (git-ignored).
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Iterable, Optional

import pytest
from conftest import (
    EXAMPLE_APP,
    GATEWAY_BIN,
    NATS_SERVER_BIN,
    PYTHON_SDK,
    REPO_ROOT,
    WORKER_BIN,
    Launcher,
    NatsServer,
    QueueStack,
    _server_env,
    http_request,
    queued_pools,
    wait_for,
)
from dashboard_browser import make_driver, missing_requirements, screenshot, severe_console_errors

DASHBOARD_DIR = REPO_ROOT / "dashboard"
UI_TIMEOUT_S = 45.0  # a bounded wait for the page to show something; not a speed assertion

# --------------------------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module", autouse=True)
def _require_browser() -> None:
    missing = missing_requirements()
    if not missing:
        return
    reason = ("dashboard browser tests need " + ", ".join(missing)
              + " (run `make browser-deps`, or `apt-get install chromium chromium-driver`)")
    if os.environ.get("CI", "").lower() in ("true", "1", "yes"):
        pytest.fail(reason + " - required in CI", pytrace=False)
    pytest.skip(reason)


class DashStack(QueueStack):
    """QueueStack plus the sync pool's HTTP workers and a gateway serving the dashboard."""

    http_workers: list = []

    def start_full_gateway(self) -> None:
        argv = [str(GATEWAY_BIN), "--manifest", str(self.manifest), "--task-log", f"sqlite:{self.db_path}",
                "--host", "127.0.0.1", "--port", "0", "--nats", self.nats.url, "--ack-wait", f"{self.ack_wait:g}",
                "--http-pool", "fast=" + ",".join(w.url for w in self.http_workers),
                "--dashboard-dir", str(DASHBOARD_DIR)]
        self.gateway = self.launcher.spawn(f"{self.name}-gateway", argv, env=_server_env(), log_dir=self.dir)
        self.gateway.wait_listening()
        wanted = {f"pool_{p}" for p in queued_pools(self.manifest)}

        def provisioned():
            s = self.nats.stream("NEUTRINO_TASKS")
            return wanted <= {c.get("name") for c in (s or {}).get("consumer_detail") or []}

        wait_for(provisioned, timeout=60, message=lambda: f"the gateway to provision consumers {sorted(wanted)}")

    def http_worker(self, worker_id: str):
        argv = [str(WORKER_BIN), "--mode", "http", "--pool", "fast", "--app", str(self.app), "--host", "127.0.0.1",
                "--port", "0", "--concurrency", "2", "--task-log", f"sqlite:{self.db_path}",
                "--python-path", str(PYTHON_SDK), "--worker-id", worker_id, "--nats", self.nats.url]
        p = self.launcher.spawn(f"worker-{worker_id}", argv, env=_server_env(), log_dir=self.dir)
        self.http_workers.append(p)
        return p

    def stop(self) -> None:
        super().stop()
        for w in self.http_workers:
            w.stop()


@pytest.fixture(scope="module")
def dash(launcher: Launcher, example_manifest: Path) -> Iterable[DashStack]:
    if not (os.path.isfile(NATS_SERVER_BIN) and os.access(NATS_SERVER_BIN, os.X_OK)):
        pytest.skip("nats-server is not installed (Debian package nats-server)")
    d = launcher.new_dir("dashboard")
    stack = DashStack(launcher=launcher, dir=d, name="dash", app=EXAMPLE_APP, manifest=example_manifest,
                      ack_wait=30.0, nats=NatsServer(launcher, d), db_path=d / "tasks.sqlite",
                      task_log="sqlite")  # its own command lines: the direct task log in either mode
    stack.http_workers = []
    try:
        stack.nats.start()
        for p in [stack.http_worker("dash-fast-1"), stack.http_worker("dash-fast-2")]:
            p.wait_listening()
        stack.start_full_gateway()
        stack.worker("async", worker_id="dash-async-1", concurrency=2)
        # No gpu worker: gpu tasks stay queued (cancel test, queue depth in the pools view).
        yield stack
    finally:
        stack.stop()


@pytest.fixture(scope="module")
def browser(dash: DashStack):
    driver = make_driver(1366, 900)
    try:
        yield driver
    finally:
        driver.quit()


# ---------------------------------------------------------------------------------------------- helpers


def wait_until(driver, predicate, what: str, timeout: float = UI_TIMEOUT_S):
    from selenium.common.exceptions import TimeoutException
    from selenium.webdriver.support.ui import WebDriverWait

    def safe(d):
        try:
            return predicate(d)
        except Exception:  # noqa: BLE001 - stale elements while the page re-renders: try again
            return None

    try:
        return WebDriverWait(driver, timeout, poll_frequency=0.1).until(safe)
    except TimeoutException:
        raise AssertionError(f"browser: timed out after {timeout:.0f}s waiting for {what}; at {driver.current_url}; "
                             f"page text: {page_text(driver)[:1500]!r}") from None


def page_text(driver) -> str:
    try:
        return driver.execute_script("return document.body.innerText") or ""
    except Exception:  # noqa: BLE001
        return ""


def rows(driver) -> dict[str, str]:
    """task id -> status of every row of the tasks table."""
    pairs = driver.execute_script(
        "return [...document.querySelectorAll('#task-rows tr[data-task-id]')]"
        ".map(r => [r.dataset.taskId, r.dataset.status])") or []
    return {k: v for k, v in pairs}


def row_order(driver) -> list[str]:
    return driver.execute_script(
        "return [...document.querySelectorAll('#task-rows tr[data-task-id]')].map(r => r.dataset.taskId)") or []


def text_of(driver, css: str) -> Optional[str]:
    return driver.execute_script("const n = document.querySelector(arguments[0]); return n ? n.textContent : null", css)


def open_page(driver, dash: DashStack, hash_: str = "#/tasks") -> None:
    driver.get(f"{dash.url}/{hash_}")
    wait_until(driver, lambda d: d.execute_script("return document.getElementById('main').dataset.view"),
               "the dashboard's first view")


def set_hash(driver, hash_: str) -> None:
    driver.execute_script("location.hash = arguments[0]", hash_)


def live_open(driver) -> bool:
    return text_of(driver, "#live") == "live"


def submit(dash: DashStack, task: str, args: Any, expect: Iterable[int] = (200, 202)) -> str:
    resp = dash.post(task, args)
    assert resp.status in set(expect), f"POST /api/{task}: {resp!r}"
    return resp.json()["task_id"]


def mark_page(driver) -> None:
    """A marker that a reload would erase: proves rows arrived without one."""
    driver.execute_script("window.__noReload = 'yes'")


def assert_not_reloaded(driver) -> None:
    assert driver.execute_script("return window.__noReload") == "yes", "the page was reloaded"


def no_console_errors(driver) -> None:
    errors = [e for e in severe_console_errors(driver) if "/events" not in e]
    assert not errors, f"JavaScript errors in the browser console: {errors}"


def select(driver, css: str, value: str) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    Select(driver.find_element(By.CSS_SELECTOR, css)).select_by_value(value)


def click(driver, css: str, what: str) -> None:
    """Clicks the element `css` finds, again if a live update replaced it in between (stale element)."""
    from selenium.webdriver.common.by import By

    def attempt(d):
        d.find_element(By.CSS_SELECTOR, css).click()
        return True

    wait_until(driver, attempt, f"a click on {what} ({css})")


def confirm(driver) -> None:
    wait_until(driver, lambda d: d.execute_script("return document.getElementById('confirm').open"), "the confirmation dialog")
    click(driver, "#confirm-yes", "Confirm")
    wait_until(driver, lambda d: not d.execute_script("return document.getElementById('confirm').open"), "the dialog to close")


# ------------------------------------------------------------------------------------------------ tests


def test_dashboard_is_served_by_the_gateway(dash: DashStack):
    index = http_request("GET", f"{dash.url}/")
    assert index.status == 200, index
    assert b'<script type="module" src="js/app.js">' in index.body, index
    js = http_request("GET", f"{dash.url}/js/tasks.js")
    assert js.status == 200 and b"renderTasks" in js.body, js
    assert "javascript" in js.headers.get("content-type", ""), js.headers
    css = http_request("GET", f"{dash.url}/css/style.css")
    assert css.status == 200 and "text/css" in css.headers.get("content-type", ""), css.headers
    # Offline: nothing references another origin.
    for path in [*DASHBOARD_DIR.rglob("*.js"), *DASHBOARD_DIR.rglob("*.css"), DASHBOARD_DIR / "index.html"]:
        text = path.read_text()
        assert "https://" not in text and "http://" not in text.replace("http://www.w3.org/2000/svg", ""), path


def test_rows_appear_live_without_reload(dash: DashStack, browser):
    before = submit(dash, "echo", {"x": 1, "label": "before"})
    open_page(browser, dash)
    wait_until(browser, lambda d: before in rows(d), "the task submitted before opening the page")
    wait_until(browser, live_open, "the live event stream to connect")
    mark_page(browser)

    sync_id = submit(dash, "echo", {"x": 2, "label": "live"})
    async_id = submit(dash, "generate_report", {"dataset": "dash"})
    wait_until(browser, lambda d: {sync_id, async_id} <= rows(d).keys(), "rows of tasks submitted after the page opened")
    # Newest first; the async row moves from queued/running to completed in place.
    order = row_order(browser)
    assert order.index(async_id) < order.index(sync_id) < order.index(before), order
    wait_until(browser, lambda d: rows(d).get(sync_id) == "completed", "the sync task's row to show completed")
    wait_until(browser, lambda d: rows(d).get(async_id) == "completed", "the async task's row to turn completed")
    assert row_order(browser).index(async_id) == order.index(async_id), "the row moved instead of updating in place"
    # The row was filled from the task record: worker and duration are shown.
    cells = browser.execute_script(
        "const r = document.querySelector(`#task-rows tr[data-task-id='${arguments[0]}']`);"
        "return [...r.cells].map(c => c.textContent)", async_id)
    assert "dash-async-1" in cells and "generate_report" in cells, cells
    wait_until(browser, lambda d: "—" != d.execute_script(
        "return document.querySelector(`#task-rows tr[data-task-id='${arguments[0]}'] .c-dur`).textContent", async_id),
        "the async row's duration")
    assert_not_reloaded(browser)
    # Fixed layout: every row has the same height (no layout shift while rows stream in).
    heights = browser.execute_script(
        "return [...document.querySelectorAll('#task-rows tr[data-task-id]')].map(r => r.getBoundingClientRect().height)")
    assert len(set(round(h) for h in heights)) == 1, heights
    assert browser.execute_script("return getComputedStyle(document.getElementById('tasks-table')).tableLayout") == "fixed"
    screenshot(browser, "tasks")
    no_console_errors(browser)


def test_filters_and_search(dash: DashStack, browser):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    failed = submit(dash, "boom", {"message": "filter-me"}, expect=(500,))
    ok = submit(dash, "echo", {"x": 3})
    report = submit(dash, "generate_report", {"dataset": "filters"})
    dash.wait_task(report)
    open_page(browser, dash)
    wait_until(browser, lambda d: {failed, ok, report} <= rows(d).keys(), "the new tasks in the unfiltered list")

    # Status filter through the form: the URL carries it, only failed rows remain.
    select(browser, "#f-status", "failed")
    wait_until(browser, lambda d: "status=failed" in d.current_url, "status=failed in the URL")
    wait_until(browser, lambda d: failed in rows(d) and set(rows(d).values()) == {"failed"}, "only failed rows")

    # Task (function) and mode filters combine with it.
    select(browser, "#f-function", "boom")
    wait_until(browser, lambda d: "function=boom" in d.current_url and "status=failed" in d.current_url,
               "function=boom and status=failed in the URL")
    wait_until(browser, lambda d: failed in rows(d) and ok not in rows(d), "the boom task only")
    set_hash(browser, "#/tasks?mode=async")
    wait_until(browser, lambda d: report in rows(d) and ok not in rows(d) and failed not in rows(d), "async tasks only")
    set_hash(browser, "#/tasks?pool=fast")
    wait_until(browser, lambda d: ok in rows(d) and report not in rows(d), "fast pool tasks only")

    # The shared URL opens the same view in a fresh page load.
    browser.get(f"{dash.url}/#/tasks?status=failed&function=boom")
    wait_until(browser, lambda d: failed in rows(d) and ok not in rows(d), "the filtered view from a shared URL")
    assert browser.find_element(By.ID, "f-status").get_attribute("value") == "failed"
    screenshot(browser, "tasks-filtered")

    # Search by task name (substring) ...
    set_hash(browser, "#/tasks")
    wait_until(browser, lambda d: ok in rows(d), "the unfiltered list")
    box = browser.find_element(By.ID, "f-search")
    box.send_keys("generate_rep", Keys.ENTER)
    wait_until(browser, lambda d: "q=generate_rep" in d.current_url and report in rows(d) and ok not in rows(d),
               "name search results")
    # ... and by exact task id, which opens the task.
    box = browser.find_element(By.ID, "f-search")
    box.clear()
    box.send_keys(ok, Keys.ENTER)
    wait_until(browser, lambda d: d.current_url.endswith(f"#/task/{ok}") and text_of(d, "#detail-status"),
               "the searched task's detail")
    # An unknown id says so.
    set_hash(browser, "#/tasks")
    wait_until(browser, lambda d: ok in rows(d), "the list again")
    box = browser.find_element(By.ID, "f-search")
    box.send_keys("00000000-0000-7000-8000-000000000000", Keys.ENTER)
    wait_until(browser, lambda d: "no task with id" in (text_of(d, "#tasks-notice") or ""), "the unknown id message")
    # Time range: a window in the past holds none of today's tasks, "last hour" holds them.
    set_hash(browser, "#/tasks?range=custom&since=2000-01-01T00:00:00.000Z&until=2000-01-02T00:00:00.000Z")
    wait_until(browser, lambda d: "No tasks match" in (text_of(d, "#task-rows") or ""), "an empty past window")
    set_hash(browser, "#/tasks?range=1h")
    wait_until(browser, lambda d: {ok, failed} <= rows(d).keys(), "the last hour's tasks")
    no_console_errors(browser)


def test_failed_task_shows_traceback_and_retries(dash: DashStack, browser):
    from selenium.webdriver.common.by import By

    failed = submit(dash, "boom", {"message": "dashboard traceback"}, expect=(500,))
    open_page(browser, dash, "#/tasks?status=failed")
    wait_until(browser, lambda d: failed in rows(d), "the failed task's row")
    # Keyboard: focus the row and press Enter.
    row = browser.find_element(By.CSS_SELECTOR, f"#task-rows tr[data-task-id='{failed}']")
    browser.execute_script("arguments[0].focus()", row)
    row.send_keys("\ue007")  # Enter
    wait_until(browser, lambda d: d.current_url.endswith(f"#/task/{failed}"), "Enter on the row to open the task")
    wait_until(browser, lambda d: "RuntimeError" in (text_of(d, "#traceback") or ""), "the traceback")
    assert "dashboard traceback" in text_of(browser, "#traceback")
    assert text_of(browser, "#error-type") == "RuntimeError"
    assert text_of(browser, "#error-message") == "dashboard traceback"
    assert "dashboard traceback" in text_of(browser, "#args")
    events = browser.execute_script(
        "return [...document.querySelectorAll('#timeline-rows tr[data-event]')].map(r => r.dataset.event)")
    assert "failed" in events, events
    screenshot(browser, "task-failed")

    # Retry asks first; "Keep" does nothing, "Retry" submits a new task and opens it.
    click(browser, "#retry-task", "Retry")
    wait_until(browser, lambda d: d.execute_script("return document.getElementById('confirm').open"), "the dialog")
    click(browser, "#confirm-no", "Keep")
    assert browser.current_url.endswith(f"#/task/{failed}")
    click(browser, "#retry-task", "Retry")
    confirm(browser)
    wait_until(browser, lambda d: "retry_of=" in d.current_url and f"#/task/{failed}" not in d.current_url,
               "the retried task's page")
    new_id = browser.current_url.split("#/task/")[1].split("?")[0]
    assert new_id != failed
    record = dash.record(new_id)
    assert record["function"] == "boom" and record["args"] == {"message": "dashboard traceback"}, record
    wait_until(browser, lambda d: "dashboard traceback" in (text_of(d, "#traceback") or ""), "the retry's traceback")
    no_console_errors(browser)


def test_cancel_queued_task(dash: DashStack, browser):
    from selenium.webdriver.common.by import By

    task_id = submit(dash, "train_model", {"data": "never-runs"}, expect=(202,))  # no gpu worker: stays queued
    open_page(browser, dash, "#/tasks?pool=gpu")
    wait_until(browser, lambda d: rows(d).get(task_id) == "queued", "the queued gpu task's row")
    mark_page(browser)
    click(browser, f"#task-rows tr[data-task-id='{task_id}'] a", "the queued task's link")
    wait_until(browser, lambda d: text_of(d, "#detail-status") == "queued", "the detail of the queued task")
    screenshot(browser, "task-queued")
    click(browser, "#cancel-task", "Cancel")
    confirm(browser)
    wait_until(browser, lambda d: text_of(d, "#detail-status") == "cancelled", "the status to change to cancelled")
    assert browser.find_element(By.ID, "cancel-task").get_attribute("disabled") is not None
    assert dash.record(task_id)["status"] == "cancelled"
    events = browser.execute_script(
        "return [...document.querySelectorAll('#timeline-rows tr[data-event]')].map(r => r.dataset.event)")
    assert events == ["queued", "cancelled"], events
    screenshot(browser, "task-cancelled")
    # Back in the list, the row shows it too (without a reload).
    click(browser, "#back-to-tasks", "the link back to the list")
    wait_until(browser, lambda d: rows(d).get(task_id) == "cancelled", "the cancelled row in the list")
    assert_not_reloaded(browser)

    # A task cancelled through the API while the list is open changes in place.
    other = submit(dash, "train_model", {"data": "cancel-live"}, expect=(202,))
    wait_until(browser, lambda d: rows(d).get(other) == "queued", "the second queued row, live")
    assert dash.delete(other).status == 200
    wait_until(browser, lambda d: rows(d).get(other) == "cancelled", "the row to turn cancelled live")
    assert_not_reloaded(browser)
    no_console_errors(browser)


def test_pools_view_shows_queue_depth_of_a_stopped_pool(dash: DashStack, browser):
    queued = [submit(dash, "train_model", {"data": f"depth-{i}"}, expect=(202,)) for i in range(3)]
    pools = dash.get("/pools")
    assert pools.status == 200, pools
    open_page(browser, dash, "#/pools")

    def gpu_depth(d) -> int:
        text = text_of(d, "[data-pool='gpu'] [data-stat='depth'] .v") or ""
        return int(text.replace(",", "")) if text.replace(",", "").isdigit() else 0

    # The gateway refreshes consumer info once a second, the page polls /pools once a second: wait for both.
    # (Cancelled gpu tasks of the earlier test still count: no worker has taken their messages off the queue.)
    wait_until(browser, lambda d: gpu_depth(d) >= len(queued),
               f"a queue depth of at least {len(queued)} for the gpu pool (no worker)")
    wait_until(browser, lambda d: text_of(d, "[data-pool='fast'] [data-stat='workers'] .v") == "2",
               "two live workers in the fast pool")
    wait_until(browser, lambda d: d.execute_script(
        "return document.querySelectorAll(\"[data-pool='gpu'] svg.chart path.depth\").length") >= 1,
        "the gpu pool's chart")
    worker_ids = browser.execute_script(
        "return [...document.querySelectorAll('[data-worker]')].map(n => n.dataset.worker)")
    assert {"dash-fast-1", "dash-fast-2", "dash-async-1"} <= set(worker_ids), worker_ids
    assert "no worker alive" in (text_of(browser, "[data-pool='gpu'] .workers-list") or "")
    screenshot(browser, "pools")
    for task_id in queued:
        dash.delete(task_id)
    no_console_errors(browser)


def test_history_survives_reload_and_gateway_restart(dash: DashStack, browser):
    ids = [submit(dash, "echo", {"x": i, "label": "history"}) for i in range(3)]
    open_page(browser, dash)
    wait_until(browser, lambda d: set(ids) <= rows(d).keys(), "the tasks before the reload")
    shown = set(rows(browser))
    browser.refresh()
    wait_until(browser, lambda d: set(ids) <= rows(d).keys(), "the same tasks after a reload")
    assert shown <= set(rows(browser)) | set(ids), "rows lost on reload"

    # A new gateway process on the same task log shows the same history.
    dash.gateway.stop()
    dash.start_full_gateway()
    open_page(browser, dash)
    wait_until(browser, lambda d: set(ids) <= rows(d).keys(), "the history after a gateway restart")
    # Older pages: scrolling down (or the button) loads the rest over the cursor.
    total = len(dash.get("/tasks?limit=500").json()["tasks"])
    wait_until(browser, lambda d: (d.execute_script("window.scrollTo(0, document.body.scrollHeight)"),
                                   len(rows(d)) >= total)[1], "every task after scrolling")
    order = row_order(browser)
    assert order == sorted(order, reverse=True), "rows not newest first"


def test_phone_width_and_keyboard(dash: DashStack, browser):
    from selenium.webdriver.common.by import By

    browser.set_window_size(375, 812)
    try:
        open_page(browser, dash)
        wait_until(browser, lambda d: len(rows(d)) > 0, "rows at phone width")
        overflow = browser.execute_script("return document.documentElement.scrollWidth - window.innerWidth")
        assert overflow <= 1, f"the page is {overflow}px wider than a 375px screen"
        visible = browser.execute_script(
            "return [...document.querySelectorAll('#tasks-table th')].filter(th => th.offsetWidth > 0)"
            ".map(th => th.textContent)")
        assert {"Status", "Task", "Duration"} <= set(visible), visible
        screenshot(browser, "tasks-phone")
        first = row_order(browser)[0]
        click(browser, f"#task-rows tr[data-task-id='{first}']", "the first row")
        wait_until(browser, lambda d: text_of(d, "#detail-status"), "the detail at phone width")
        overflow = browser.execute_script("return document.documentElement.scrollWidth - window.innerWidth")
        assert overflow <= 1, f"the detail page is {overflow}px wider than a 375px screen"
        screenshot(browser, "task-phone")
        set_hash(browser, "#/pools")
        wait_until(browser, lambda d: text_of(d, "[data-pool='gpu'] h2"), "the pools at phone width")
        screenshot(browser, "pools-phone")
    finally:
        browser.set_window_size(1366, 900)
    # Keyboard: the nav links and the first row are reachable with Tab, and focus is visible.
    open_page(browser, dash)
    browser.refresh()  # a fresh page: keyboard focus starts at the top
    wait_until(browser, lambda d: len(rows(d)) > 0, "rows")
    reached = []
    for _ in range(25):
        browser.switch_to.active_element.send_keys("\ue004")  # Tab
        active = browser.switch_to.active_element
        reached.append(active.get_attribute("id") or active.get_attribute("data-task-id") or active.tag_name)
        if active.get_attribute("data-task-id"):
            outline = browser.execute_script("return getComputedStyle(arguments[0]).outlineStyle", active)
            assert outline != "none", "no visible focus on the focused row"
            break
    assert "nav-pools" in reached and any(r in rows(browser) for r in reached), reached
    no_console_errors(browser)
