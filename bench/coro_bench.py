#!/usr/bin/env python3
"""`async def` tasks over HTTP (issue 15): a sync-mode task that awaits `asyncio.sleep(0.01)`, driven by wrk at
c=256 (BENCH_CORO_CONCURRENCY), against uvicorn+FastAPI with 2 worker processes doing the same.

Targets: Neutrino gateway + 2 HTTP workers (each 2 threads and its event loop), one Neutrino worker direct, and
uvicorn+FastAPI --workers 2. The ideal is c / 0.01 s = 25,600 req/s at c=256 with a p50 of 10 ms; what is above
10 ms is each server's overhead. Reuses bench/run.py's process and wrk helpers; asserts nothing on timings.

Environment: BENCH_SECONDS, BENCH_WARMUP (as bench/run.py), BENCH_CORO_CONCURRENCY=256 (comma list),
BENCH_CORO_SLEEP=0.01, BENCH_CORO_ONLY=neutrino,neutrino-direct,fastapi-2.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

SLEEP = float(os.environ.get("BENCH_CORO_SLEEP", "0.01"))
# Before run is imported: its BODY (and post()'s default body, bound at import) is this table's request.
os.environ["BENCH_BODY"] = f'{{"args":{{"x":42,"seconds":{SLEEP}}}}}'

import run  # noqa: E402
from run import BENCH, GATEWAY_BIN, REPO, VENV, WORKER_BIN, Ctx, Proc, Row, Skip, Target, free_port  # noqa: E402

CONCURRENCY = [int(c) for c in os.environ.get("BENCH_CORO_CONCURRENCY", "256").split(",") if c.strip()]
run.CONCURRENCY = CONCURRENCY
APP = BENCH / "coro_app.py"


def _check(ctx: Ctx) -> None:
    if os.environ.get("BENCH_SKIP_NEUTRINO"):
        raise Skip(os.environ["BENCH_SKIP_NEUTRINO"])
    if not WORKER_BIN.exists() or not GATEWAY_BIN.exists():
        raise Skip(f"binaries not built ({WORKER_BIN.parent})")
    if ctx.manifest is None:
        manifest = ctx.state / "coro-openapi.json"
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(REPO / "python"), os.environ.get("PYTHONPATH")])))
        r = subprocess.run([sys.executable, "-m", "neutrino.cli", "openapi", str(APP), "-o", str(manifest)],
                           cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
        if r.returncode != 0:
            raise Skip(f"`neutrino.cli openapi` failed: {(r.stderr or r.stdout).strip()[-200:]}")
        ctx.manifest = manifest


def _worker(ctx: Ctx, name: str, db: Path) -> Proc:
    argv = [str(WORKER_BIN), "--mode", "http", "--pool", "fast", "--app", str(APP), "--port", "0",
            "--concurrency", "2", "--task-log", f"sqlite:{db}", "--python-path", str(REPO / "python"),
            "--log-level", "warning"]
    return Proc(name, argv, ctx.state / f"{name}.log")


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
    Target("fastapi-2", "uvicorn+FastAPI, 2 processes", start_fastapi, sleep=False, call=CALL),
]


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
                run.run_target(t, ctx, rows)
    finally:
        Proc.stop_all()
    print()
    print(f"## async def tasks: `await asyncio.sleep({SLEEP:g})` over HTTP (ideal: c / {SLEEP:g} s req/s, "
          f"p50 {SLEEP * 1000:g} ms)")
    print()
    print("\n".join(run.table(rows)))
    print()
    for n in ctx.notes:
        print(f"- note: {n}")
    if ctx.failed or os.environ.get("BENCH_KEEP"):
        print(f"- logs: {ctx.state}")
    else:
        shutil.rmtree(ctx.state, ignore_errors=True)
    return 1 if ctx.failed else 0


if __name__ == "__main__":
    sys.exit(main())
