"""`GET /metrics` of the gateway, of HTTP workers and of NATS workers: valid Prometheus exposition (parsed with
prometheus_client's text parser), the names of docs/observability-contract.md, and counters and histograms that
move as tasks run."""
from __future__ import annotations

import math
import signal
from collections import defaultdict

import pytest

from conftest import EXAMPLE_APP, NATS_TASK_LOG, QUEUE_APP, Scrape, scrape, wait_for

pytest.importorskip("prometheus_client", reason="prometheus_client (test extra) parses the exposition")

COUNTERS = {"neutrino_http_requests_total", "neutrino_tasks_submitted_total", "neutrino_tasks_total",
            "neutrino_events_applied_total", "neutrino_worker_restarts_total", "neutrino_http_rejected_total",
            "neutrino_auth_rejections_total", "neutrino_http_requests_by_key_total", "neutrino_rate_limited_total",
            "neutrino_tasklog_events_dropped_total", "neutrino_tasklog_events_lost_total",
            "neutrino_tasklog_events_rejected_total", "neutrino_tasklog_pruned_tasks_total"}
HISTOGRAMS = {"neutrino_task_duration_seconds", "neutrino_task_execution_seconds", "neutrino_tasklog_batch_size",
              "neutrino_tasklog_write_seconds", "neutrino_tasklog_checkpoint_seconds",
              "neutrino_tasklog_checkpoint_yield_seconds", "neutrino_tasklog_prune_transaction_seconds",
              "neutrino_tasklog_lock_wait_seconds"}
GAUGES = {"neutrino_worker_tasks_in_flight", "neutrino_worker_slots", "neutrino_worker_tasks_queued", "neutrino_queue_pending",
          "neutrino_queue_in_flight", "neutrino_queue_redelivered", "neutrino_queue_depth",
          "neutrino_queue_oldest_age_seconds", "neutrino_dlq_depth", "neutrino_workers_alive",
          "neutrino_pool_desired_replicas", "neutrino_pool_waiting_calls", "neutrino_tasklog_db_bytes",
          "neutrino_tasklog_queued_events", "neutrino_tasklog_wal_bytes"}
TYPES = {**{n: "counter" for n in COUNTERS}, **{n: "histogram" for n in HISTOGRAMS}, **{n: "gauge" for n in GAUGES}}
# The task-log histograms of a worker: only one with a SQLite writer has them (not a `--task-log nats` worker).
WORKER_TASKLOG = set() if NATS_TASK_LOG else {"neutrino_tasklog_batch_size", "neutrino_tasklog_write_seconds"}


def check_exposition(s: Scrape, expected: set[str]) -> None:
    """The families named in the contract have its type; every histogram is well formed; every neutrino_
    metric is one the contract names."""
    for name in expected:
        family = s.family(name)
        assert family.type == TYPES[name], f"{name} is a {family.type}, the contract says {TYPES[name]}"
    for family in s.families.values():
        if family.name.startswith("neutrino_"):
            exposed = family.name + ("_total" if family.type == "counter" else "")
            assert exposed in TYPES or family.name in TYPES, f"{exposed} is not in the contract's metric table"
        for sample in family.samples:
            assert not math.isnan(sample.value), f"{sample} is NaN"
        if family.type != "histogram":
            continue
        series: dict[tuple, list[tuple[float, float]]] = defaultdict(list)
        counts: dict[tuple, float] = {}
        for sample in family.samples:
            key = tuple(sorted((k, v) for k, v in sample.labels.items() if k != "le"))
            if sample.name.endswith("_bucket"):
                series[key].append((float(sample.labels["le"]), sample.value))
            elif sample.name.endswith("_count"):
                counts[key] = sample.value
        for key, buckets in series.items():
            buckets.sort()
            values = [v for _, v in buckets]
            assert values == sorted(values), f"{family.name}{dict(key)} buckets not cumulative: {buckets}"
            assert buckets[-1][0] == math.inf, f"{family.name}{dict(key)} has no +Inf bucket"
            assert buckets[-1][1] == counts.get(key), f"{family.name}{dict(key)}: +Inf bucket != _count"


def test_gateway_and_http_worker_metrics_move_as_sync_tasks_run(cluster):
    gateway_before = scrape(cluster.url)
    workers_before = [scrape(w.url) for w in cluster.workers]
    for x in range(3):
        assert cluster.post("echo", {"x": x}).status == 200
    assert cluster.post("boom", {"message": "metrics"}).status == 500

    def gateway_moved():
        s = scrape(cluster.url)
        done = s.value("neutrino_tasks_total", task="echo", mode="sync", pool="fast", status="completed")
        failed = s.value("neutrino_tasks_total", task="boom", mode="sync", pool="fast", status="failed")
        return s if (done - gateway_before.value("neutrino_tasks_total", task="echo", mode="sync", pool="fast",
                                                   status="completed") == 3
                     and failed - gateway_before.value("neutrino_tasks_total", task="boom", mode="sync",
                                                       pool="fast", status="failed") == 1) else None

    g = wait_for(gateway_moved, timeout=30, message=lambda: "the gateway's neutrino_tasks_total to count 3 echo, "
                 f"1 boom:\n{scrape(cluster.url).text[:3000]}")
    check_exposition(g, {"neutrino_http_requests_total", "neutrino_tasks_total", "neutrino_task_duration_seconds",
                         "neutrino_tasklog_batch_size", "neutrino_tasklog_write_seconds"})
    delta = lambda name, **labels: g.value(name, **labels) - gateway_before.value(name, **labels)  # noqa: E731
    assert delta("neutrino_task_duration_seconds_count", task="echo", mode="sync", pool="fast") == 3
    assert delta("neutrino_task_duration_seconds_sum", task="echo", mode="sync", pool="fast") > 0
    assert delta("neutrino_http_requests_total", code="200") >= 3
    assert delta("neutrino_http_requests_total", code="500") >= 1
    if g.samples("neutrino_tasks_submitted_total", task="echo"):  # the gateway counts sync submissions too
        assert delta("neutrino_tasks_submitted_total", task="echo", mode="sync", pool="fast") == 3
    assert g.value("neutrino_tasklog_batch_size_count") > 0 and g.value("neutrino_tasklog_write_seconds_count") > 0
    # No call waits for room here (the gauge is refreshed once a second, with the pool's other gauges).
    assert wait_for(lambda: scrape(cluster.url).samples("neutrino_pool_waiting_calls", pool="fast"), timeout=30,
                    message="neutrino_pool_waiting_calls{pool=fast} exposed")
    assert scrape(cluster.url).value("neutrino_pool_waiting_calls", pool="fast") == 0

    def workers_moved():
        scrapes = [scrape(w.url) for w in cluster.workers]
        total = sum(s.value("neutrino_tasks_total", task="echo", mode="sync", pool="fast", status="completed")
                    for s in scrapes)
        before = sum(s.value("neutrino_tasks_total", task="echo", mode="sync", pool="fast", status="completed")
                     for s in workers_before)
        return scrapes if total - before == 3 else None

    scrapes = wait_for(workers_moved, timeout=30, message="the workers' neutrino_tasks_total to count 3 echo")
    for w, s, before in zip(cluster.workers, scrapes, workers_before):
        # No task-log metrics required here: the gateway records the short calls it forwards (one writer per call,
        # test_sync_calls.py), so these workers may not have written at all.
        check_exposition(s, {"neutrino_http_requests_total", "neutrino_worker_slots",
                             "neutrino_worker_tasks_in_flight", "neutrino_worker_tasks_queued"})
        # --concurrency + --max-coroutines (default 512): examples/app.py has an async def task in pool fast.
        assert s.value("neutrino_worker_slots", pool="fast") == 4 + 512, s.samples("neutrino_worker_slots")
        assert s.value("neutrino_worker_tasks_in_flight", pool="fast") == 0
        assert s.value("neutrino_worker_tasks_queued", pool="fast") == 0
    total = lambda name, **labels: sum(s.value(name, **labels) - b.value(name, **labels)  # noqa: E731
                                       for s, b in zip(scrapes, workers_before))
    assert total("neutrino_task_execution_seconds_count", task="echo", mode="sync", pool="fast") == 3
    assert total("neutrino_tasks_total", task="boom", mode="sync", pool="fast", status="failed") == 1
    assert total("neutrino_http_requests_total") >= 4


def test_nats_worker_and_queue_metrics_move_as_queued_tasks_run(queue_stack):
    stack = queue_stack(app=QUEUE_APP, name="metrics")
    worker = stack.worker("async", concurrency=2)
    worker_url = worker.wait_listening()  # `--mode nats --port 0` also serves /metrics
    ids = [stack.submit("ping", {"n": n}) for n in range(3)]
    for task_id in ids:
        assert stack.wait_task(task_id)["status"] == "completed"

    def worker_counted():
        s = scrape(worker_url)
        return s if s.value("neutrino_tasks_total", task="ping", mode="async", pool="async",
                            status="completed") == 3 else None

    w = wait_for(worker_counted, timeout=30, message=lambda: f"the NATS worker to count 3 pings:\n"
                 f"{scrape(worker_url).text[:3000]}")
    check_exposition(w, {"neutrino_tasks_total", "neutrino_task_execution_seconds", "neutrino_worker_slots",
                         "neutrino_worker_tasks_in_flight", "neutrino_worker_tasks_queued", *WORKER_TASKLOG})
    assert w.value("neutrino_task_execution_seconds_count", task="ping", mode="async", pool="async") == 3
    assert w.value("neutrino_worker_slots", pool="async") == 2
    assert w.value("neutrino_worker_tasks_in_flight", pool="async") == 0

    def gateway_settled():
        s = scrape(stack.url)
        ok = (s.value("neutrino_tasks_submitted_total", task="ping", mode="async", pool="async") == 3
              and s.value("neutrino_workers_alive", pool="async") == 1
              and s.value("neutrino_queue_depth", pool="async") == 0
              and s.samples("neutrino_queue_depth", pool="gpu"))
        return s if ok else None

    g = wait_for(gateway_settled, timeout=30, message=lambda: "the gateway to show 3 submitted pings, 1 async worker "
                 f"alive and an empty queue:\n{scrape(stack.url).text[:4000]}")
    check_exposition(g, {"neutrino_tasks_submitted_total", "neutrino_http_requests_total", "neutrino_queue_pending",
                         "neutrino_queue_in_flight", "neutrino_queue_redelivered", "neutrino_queue_depth",
                         "neutrino_queue_oldest_age_seconds", "neutrino_dlq_depth", "neutrino_workers_alive",
                         "neutrino_pool_desired_replicas", "neutrino_tasklog_batch_size",
                         "neutrino_tasklog_write_seconds"})
    assert g.value("neutrino_dlq_depth") == 0
    assert g.value("neutrino_pool_desired_replicas", pool="async") >= 1  # min 1 by default
    assert g.value("neutrino_workers_alive", pool="gpu") == 0

    # The pool stops: what is submitted now waits, and the queue gauges (refreshed once a second) show it.
    worker.ended_by_test = True
    worker.proc.send_signal(signal.SIGTERM)
    assert worker.wait_exit(timeout=60) == 0
    waiting = [stack.submit("ping", {"n": n}) for n in range(4)]

    def queue_shows_four():
        s = scrape(stack.url)
        return s if (s.value("neutrino_queue_pending", pool="async") == 4
                     and s.value("neutrino_queue_depth", pool="async") == 4
                     and s.value("neutrino_queue_oldest_age_seconds", pool="async") > 0) else None

    g = wait_for(queue_shows_four, timeout=30, message=lambda: "neutrino_queue_pending{pool=async} == 4 "
                 f"(jsz: {stack.nats.queue_depth('async')}):\n{scrape(stack.url).text[:4000]}")
    assert stack.nats.queue_depth("async") == (4, 0)
    assert g.value("neutrino_queue_in_flight", pool="async") == 0
    assert g.value("neutrino_tasks_submitted_total", task="ping", mode="async", pool="async") == 7
    wait_for(lambda: scrape(stack.url).value("neutrino_workers_alive", pool="async") == 0, timeout=30,
             message="neutrino_workers_alive{pool=async} == 0 once the worker is gone")
    for task_id in waiting:
        assert stack.record(task_id)["status"] == "queued"
