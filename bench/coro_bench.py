#!/usr/bin/env python3
"""`async def` tasks and the ASGI fallback over HTTP (issue 15): an endpoint that awaits `asyncio.sleep(0.01)`,
driven by wrk at c=256 (BENCH_CORO_CONCURRENCY), as an `async def` task, as a FastAPI endpoint mounted on Neutrino
(`App.mount`, through the gateway's ASGI fallback), and under uvicorn+FastAPI with 2 worker processes, in one run.

Targets: Neutrino gateway + 2 HTTP workers (each 2 threads and its event loop) running the task, one Neutrino worker
direct, the same gateway + 2 workers serving bench/asgi_app.py's FastAPI endpoint, and uvicorn+FastAPI --workers 2.
The ideal is c / 0.01 s = 25,600 req/s at c=256 with a p50 of 10 ms; what is above 10 ms is each server's overhead.
The ASGI fallback and uvicorn also run at c=1 (BENCH_CORO_LATENCY_CONCURRENCY): the difference of their p50s is what
the fallback adds per request. Reuses bench/run.py's process and wrk helpers; asserts nothing on timings.

Environment: BENCH_SECONDS, BENCH_WARMUP (as bench/run.py), BENCH_CORO_CONCURRENCY=256 (comma list),
BENCH_CORO_SLEEP=0.01, BENCH_CORO_ONLY=neutrino,neutrino-direct,neutrino-asgi,fastapi-2.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Optional

SLEEP = float(os.environ.get("BENCH_CORO_SLEEP", "0.01"))
# Before run is imported: its BODY (and post()'s default body, bound at import) is this table's request.
os.environ["BENCH_BODY"] = f'{{"args":{{"x":42,"seconds":{SLEEP}}}}}'

import run  # noqa: E402
from run import BENCH, GATEWAY_BIN, REPO, VENV, WORKER_BIN, Ctx, Proc, Row, Skip, Target, free_port  # noqa: E402

CONCURRENCY = [int(c) for c in os.environ.get("BENCH_CORO_CONCURRENCY", "256").split(",") if c.strip()]
# The rows compared for the fallback's added latency also run at these (c=1: one request at a time).
LATENCY_CONCURRENCY = [int(c) for c in os.environ.get("BENCH_CORO_LATENCY_CONCURRENCY", "1").split(",") if c.strip()]
run.CONCURRENCY = CONCURRENCY
APP = BENCH / "coro_app.py"
ASGI_APP = BENCH / "asgi_app.py"


def _manifest(ctx: Ctx, app: Path, python: str = sys.executable) -> Path:
    if os.environ.get("BENCH_SKIP_NEUTRINO"):
        raise Skip(os.environ["BENCH_SKIP_NEUTRINO"])
    if not WORKER_BIN.exists() or not GATEWAY_BIN.exists():
        raise Skip(f"binaries not built ({WORKER_BIN.parent})")
    manifest = ctx.state / f"{app.stem}-openapi.json"
    if not manifest.exists():
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(REPO / "python"), os.environ.get("PYTHONPATH")])))
        r = subprocess.run([python, "-m", "neutrino.cli", "openapi", str(app), "-o", str(manifest)],
                           cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
        if r.returncode != 0:
            raise Skip(f"`neutrino.cli openapi` failed: {(r.stderr or r.stdout).strip()[-200:]}")
    return manifest


def _check(ctx: Ctx) -> None:
    ctx.manifest = _manifest(ctx, APP)


def _worker(ctx: Ctx, name: str, db: Path, app: Path = APP, env: Optional[dict] = None) -> Proc:
    argv = [str(WORKER_BIN), "--mode", "http", "--pool", "fast", "--app", str(app), "--port", "0",
            "--concurrency", "2", "--task-log", f"sqlite:{db}", "--python-path", str(REPO / "python"),
            "--log-level", "warning"]
    return Proc(name, argv, ctx.state / f"{name}.log", env=env)


def start_neutrino(ctx: Ctx):
    _check(ctx)
    db = ctx.state / "coro-gateway.db"
    workers = [_worker(ctx, f"coro-worker-{i}", db) for i in (1, 2)]
    ports = [w.wait_listening(run.START_TIMEOUT) for w in workers]
    argv = [str(GATEWAY_BIN), "--manifest", str(ctx.manifest),
            "--http-pool", "fast=" + ",".join(f"http://127.0.0.1:{p}" for p in ports),
            "--task-log", f"sqlite:{db}", "--port", "0"]
    gw = Proc("coro-gateway", argv, ctx.state / "coro-gateway.log")
    port = gw.wait_listening(run.START_TIMEOUT)
    return f"http://127.0.0.1:{port}/api/nap", workers + [gw]


def start_neutrino_direct(ctx: Ctx):
    _check(ctx)
    w = _worker(ctx, "coro-worker-direct", ctx.state / "coro-direct.db")
    port = w.wait_listening(run.START_TIMEOUT)
    return f"http://127.0.0.1:{port}/api/nap", [w]


def start_neutrino_asgi(ctx: Ctx):
    """Gateway + 2 workers serving bench/asgi_app.py's FastAPI endpoint (from bench/.venv: VIRTUAL_ENV)."""
    py = VENV / "bin" / "python"
    if subprocess.run([str(py), "-c", "import fastapi"], capture_output=True).returncode != 0:
        raise Skip("not installed (bench/.venv lacks fastapi; run bench/run.sh)")
    manifest = _manifest(ctx, ASGI_APP, str(py))
    env = dict(os.environ, VIRTUAL_ENV=str(VENV))
    db = ctx.state / "asgi-gateway.db"
    workers = [_worker(ctx, f"asgi-worker-{i}", db, ASGI_APP, env) for i in (1, 2)]
    ports = [w.wait_listening(run.START_TIMEOUT) for w in workers]
    argv = [str(GATEWAY_BIN), "--manifest", str(manifest),
            "--http-pool", "fast=" + ",".join(f"http://127.0.0.1:{p}" for p in ports),
            "--task-log", f"sqlite:{db}", "--port", "0"]
    gw = Proc("asgi-gateway", argv, ctx.state / "asgi-gateway.log")
    port = gw.wait_listening(run.START_TIMEOUT)
    return f"http://127.0.0.1:{port}/nap", workers + [gw]


def start_fastapi(ctx: Ctx):
    py = VENV / "bin" / "python"
    if subprocess.run([str(py), "-c", "import fastapi, uvicorn"], capture_output=True).returncode != 0:
        raise Skip("not installed (bench/.venv lacks fastapi; run bench/run.sh)")
    port = free_port()
    argv = [str(py), "-m", "uvicorn", "fastapi_app:app", "--app-dir", str(BENCH), "--host", "127.0.0.1",
            "--port", str(port), "--workers", "2", "--no-access-log", "--log-level", "warning"]
    return f"http://127.0.0.1:{port}/api/nap", [Proc("fastapi-2", argv, ctx.state / "fastapi-2.log")]


CALL = "await asyncio.sleep(0.01)"

TARGETS = [
    Target("neutrino", "neutrino: gateway + 2 workers", start_neutrino, sleep=False, call=CALL),
    Target("neutrino-direct", "neutrino: 1 worker direct", start_neutrino_direct, sleep=False, call=CALL),
    Target("neutrino-asgi", "neutrino: ASGI fallback, FastAPI on gateway + 2 workers", start_neutrino_asgi, sleep=False,
           call=CALL),
    Target("fastapi-2", "uvicorn+FastAPI, 2 processes", start_fastapi, sleep=False, call=CALL),
]
# Also measured at LATENCY_CONCURRENCY: what the fallback adds to a request over uvicorn+FastAPI directly.
LATENCY_TARGETS = {"neutrino-asgi", "fastapi-2"}


def added_latency(rows: list[Row]) -> str:
    def p50(key: str) -> Optional[float]:
        label = next(t.label for t in TARGETS if t.key == key)
        for r in rows:
            if r.target == label and r.conns == 1 and r.result:
                return r.result.p50_ms
        return None

    a, u = p50("neutrino-asgi"), p50("fastapi-2")
    if a is None or u is None:
        return "ASGI fallback's added latency: n/a (needs both rows at c=1)"
    return (f"ASGI fallback's added latency p50 (c=1): {run.fmt_ms(a - u)} (through the gateway {run.fmt_ms(a)} − "
            f"uvicorn+FastAPI directly {run.fmt_ms(u)})")


def main() -> int:
    if not shutil.which("wrk"):
        print("bench: wrk not found", file=sys.stderr)
        return 2
    only = {s.strip() for s in os.environ.get("BENCH_CORO_ONLY", "").split(",") if s.strip()}
    ctx = Ctx(state=Path(tempfile.mkdtemp(prefix="neutrino-coro-bench-")))
    rows: list[Row] = []
    try:
        for t in TARGETS:
            if not only or t.key in only:
                extra = [c for c in LATENCY_CONCURRENCY if c not in CONCURRENCY] if t.key in LATENCY_TARGETS else []
                run.CONCURRENCY = extra + CONCURRENCY
                run.run_target(t, ctx, rows)
    finally:
        Proc.stop_all()
    print()
    print(f"## async def tasks: `await asyncio.sleep({SLEEP:g})` over HTTP (ideal: c / {SLEEP:g} s req/s, "
          f"p50 {SLEEP * 1000:g} ms)")
    print()
    print("\n".join(run.table(rows)))
    print()
    print(f"- {added_latency(rows)}")
    for n in ctx.notes:
        print(f"- note: {n}")
    if ctx.failed or os.environ.get("BENCH_KEEP"):
        print(f"- logs: {ctx.state}")
    else:
        shutil.rmtree(ctx.state, ignore_errors=True)
    return 1 if ctx.failed else 0


if __name__ == "__main__":
    sys.exit(main())
