#!/usr/bin/env bash
# `make bench`: installs what the benchmark needs, builds Neutrino (release), then runs
# bench/run.py, which starts each server in turn, drives it with wrk and prints a Markdown table (sync
# tasks over HTTP), bench/async_bench.py, which prints a second one (queued tasks: Neutrino on NATS
# JetStream against Celery 5 + Redis), and bench/cluster_bench.py, a third (what replicated streams cost:
# publish and submit latency at R1 on one nats-server against R3 on a 3-node cluster).
#
#   BENCH_SKIP_BUILD=1          don't run `make build-release` (use the binaries as they are)
#   BENCH_SYNC=0                skip the sync table (bench/run.py)
#   BENCH_ASYNC=0               skip the async table (bench/async_bench.py)
#   BENCH_FAULTS=0              skip the fault-containment table (bench/faults.py)
#   BENCH_CLUSTER=0             skip the R1 vs R3 table (bench/cluster_bench.py)
#   BENCH_CORO=0                skip the async def table (bench/coro_bench.py: asyncio.sleep(0.01) at c=256
#                               against uvicorn+FastAPI with 2 workers)
#   BENCH_RETRY_RAY=1           retry a Ray install that failed before (the failure is cached)
#   BENCH_RAY_INSTALL_TIMEOUT   seconds for `pip install "ray[serve]"` (default 900)
#   BENCH_NO_RAY=1              don't try to install Ray at all
# and the BENCH_* variables of bench/run.py (BENCH_SECONDS, BENCH_ONLY, ...) and bench/async_bench.py
# (BENCH_ASYNC_TASKS, BENCH_ASYNC_ONLY, ...).
set -euo pipefail

BENCH_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(dirname "$BENCH_DIR")"
cd "$REPO"
PY="${PYTHON:-python3}"
say() { echo "[bench] $*" >&2; }
# apt-get install, as root or through sudo; returns non-zero when neither is possible or it fails.
apt_install() {
  local sudo=""
  if [ "$(id -u)" != 0 ]; then
    command -v sudo >/dev/null 2>&1 || return 1
    sudo="sudo -n"
  fi
  command -v apt-get >/dev/null 2>&1 || return 1
  $sudo apt-get update -qq >/dev/null && DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "$@" >/dev/null
}

# --- wrk (Debian package)
if ! command -v wrk >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    say "installing wrk"
    apt-get update -qq && apt-get install -y -qq wrk >/dev/null
  else
    say "wrk not found: install it (Debian: sudo apt-get install -y wrk)"; exit 2
  fi
fi

# --- nginx (Debian package): the reference proxy hop (nginx → uvicorn-2); its row is skipped without it
if ! command -v nginx >/dev/null 2>&1 && [ ! -x /usr/sbin/nginx ]; then
  say "installing nginx-light"
  # Debian's package may start a system instance on :80; the benchmark starts its own on a free port.
  apt_install nginx-light || say "nginx missing and could not be installed: the nginx → uvicorn-2 row is skipped"
fi

# --- bench/.venv: starlette + uvicorn[standard] (uvloop, httptools), fastapi (the async def table's peer)
if ! "$BENCH_DIR/.venv/bin/python" -c "import starlette, uvicorn, uvloop, httptools, fastapi" 2>/dev/null; then
  say "creating bench/.venv (starlette, uvicorn[standard], fastapi)"
  [ -x "$BENCH_DIR/.venv/bin/python" ] || "$PY" -m venv "$BENCH_DIR/.venv"
  "$BENCH_DIR/.venv/bin/python" -m pip install -q --disable-pip-version-check \
    starlette 'uvicorn[standard]' fastapi
fi

# --- the async table: nats-server (Neutrino) and redis-server + celery[redis] (the comparison)
if [ "${BENCH_ASYNC:-1}" != 0 ]; then
  if ! command -v nats-server >/dev/null 2>&1; then
    say "installing nats-server"
    apt_install nats-server || say "nats-server missing and could not be installed: the Neutrino async column is skipped"
  fi
  if ! command -v redis-server >/dev/null 2>&1; then
    say "installing redis-server"
    # Debian's package may start a system instance on :6379; the benchmark starts its own on a free port.
    apt_install redis-server || { say "redis-server missing and could not be installed: the Celery column is skipped"
                                  export BENCH_SKIP_CELERY="redis-server not installed (apt-get install redis-server)"; }
  fi
  if ! "$BENCH_DIR/.venv/bin/python" -c "import celery, redis" 2>/dev/null; then
    say "installing celery[redis] into bench/.venv"
    "$BENCH_DIR/.venv/bin/python" -m pip install -q --disable-pip-version-check 'celery[redis]>=5,<6' ||
      { say "pip install celery[redis] failed: the Celery column is skipped"
        export BENCH_SKIP_CELERY="${BENCH_SKIP_CELERY:-pip install celery[redis] failed}"; }
  fi
fi

# --- the R1 vs R3 table: nats-server only
if [ "${BENCH_CLUSTER:-1}" != 0 ] && ! command -v nats-server >/dev/null 2>&1; then
  say "installing nats-server"
  apt_install nats-server || say "nats-server missing and could not be installed: the R1 vs R3 table is skipped"
fi

# --- bench/.venv-ray: ray[serve], tried once; a failure is cached in the venv with its reason
RAY_FAILED="$BENCH_DIR/.venv-ray/bench-install-failed"
if [ -n "${BENCH_NO_RAY:-}" ]; then
  :
elif [ -f "$RAY_FAILED" ] && [ -z "${BENCH_RETRY_RAY:-}" ]; then
  say "ray serve: earlier install failed ($(head -c 200 "$RAY_FAILED")); BENCH_RETRY_RAY=1 retries"
elif ! "$BENCH_DIR/.venv-ray/bin/python" -c "import ray.serve" 2>/dev/null; then
  say "installing ray[serve] into bench/.venv-ray (once; timeout ${BENCH_RAY_INSTALL_TIMEOUT:-900} s)"
  rm -f "$RAY_FAILED"
  raylog="$(mktemp)"
  if "$PY" -m venv "$BENCH_DIR/.venv-ray" >"$raylog" 2>&1 &&
     timeout "${BENCH_RAY_INSTALL_TIMEOUT:-900}" "$BENCH_DIR/.venv-ray/bin/python" -m pip install \
       -q --disable-pip-version-check "ray[serve]" >>"$raylog" 2>&1 &&
     "$BENCH_DIR/.venv-ray/bin/python" -c "import ray.serve" >>"$raylog" 2>&1; then
    say "ray[serve] installed"
  else
    rc=$?
    mkdir -p "$BENCH_DIR/.venv-ray"
    if [ "$rc" = 124 ]; then reason="pip install timed out after ${BENCH_RAY_INSTALL_TIMEOUT:-900} s"
    else reason="$(grep -E 'ERROR|Error' "$raylog" | tail -1 | cut -c1-200)"; reason="${reason:-exit status $rc}"; fi
    echo "$reason" >"$RAY_FAILED"
    say "ray serve: install failed: $reason (full log: $raylog)"
  fi
fi

# --- Neutrino: SDK (for the manifest) and the release build
if [ -f python/pyproject.toml ] || [ -f python/setup.py ]; then
  if ! "$PY" -c "import neutrino.cli, os, sys; sys.exit(0 if os.path.realpath(neutrino.__file__).startswith(os.path.realpath('python')) else 1)" 2>/dev/null; then
    say "pip install -e python/"
    "$PY" -m pip install -q --disable-pip-version-check -e python/ ||
      say "warning: pip install -e python/ failed (run.py falls back to PYTHONPATH=python)"
  fi
fi
if [ -z "${BENCH_SKIP_BUILD:-}" ]; then
  # The release build users get (`make build-release`: with the profile-guided optimisation, see the Makefile).
  say "make build-release"
  if ! make --no-print-directory build-release >&2; then
    say "make build-release failed: the Neutrino rows are skipped"
    export BENCH_SKIP_NEUTRINO="make build-release failed"
  fi
fi

rc=0
if [ "${BENCH_SYNC:-1}" != 0 ]; then
  "$PY" "$BENCH_DIR/run.py" "$@" || rc=$?
  # Interrupted (Ctrl-C, SIGTERM): don't start the async half.
  if [ "$rc" -ge 128 ]; then exit "$rc"; fi
fi
if [ "${BENCH_CORO:-1}" != 0 ]; then
  "$PY" "$BENCH_DIR/coro_bench.py" || { r=$?; [ "$rc" != 0 ] || rc=$r; }
  if [ "$rc" -ge 128 ]; then exit "$rc"; fi
fi
if [ "${BENCH_ASYNC:-1}" != 0 ]; then
  # bench/.venv's Python: the Celery client runs in the benchmark process.
  "$BENCH_DIR/.venv/bin/python" "$BENCH_DIR/async_bench.py" || { r=$?; [ "$rc" != 0 ] || rc=$r; }
  if [ "$rc" -ge 128 ]; then exit "$rc"; fi
fi
if [ "${BENCH_CLUSTER:-1}" != 0 ]; then
  "$PY" "$BENCH_DIR/cluster_bench.py" || { r=$?; [ "$rc" != 0 ] || rc=$r; }
fi
if [ "${BENCH_FAULTS:-1}" != 0 ]; then
  # Fault containment under `neutrino up`: capacity back after stuck tasks, a poison storm, a killed worker.
  "$PY" "$BENCH_DIR/faults.py" || { r=$?; [ "$rc" != 0 ] || rc=$r; }
fi
exit "$rc"
