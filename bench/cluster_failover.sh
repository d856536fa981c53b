#!/usr/bin/env bash
# The failover proof of tests/e2e/test_nats_cluster.py at a larger scale, printed as a table: a 3-node JetStream
# cluster on 127.0.0.1, a gateway and 2 NATS workers on all three nodes (streams at R3), NEUTRINO_CLUSTER_SUBMITS
# (default 2000) tasks submitted at a steady pace while the leader of NEUTRINO_TASKS (then, with the task log over
# NATS, of NEUTRINO_EVENTS) is SIGKILLed and restarted, then another node. The test's assertions hold at this scale
# too (every 202 completed exactly once, every 503 with Retry-After and never run); the table adds the figures.
#
#   NEUTRINO_CLUSTER_SUBMITS=2000   tasks per run
#   NEUTRINO_BIN_DIR=.build/debug   the binaries (swift build first)
#   PYTHON=python3                  a Python with pytest (make venv: .venv/bin/python)
set -euo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO"
PY="${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3 )}"
report="$(mktemp)"
trap 'rm -f "$report"' EXIT
rc=0
NEUTRINO_CLUSTER_SUBMITS="${NEUTRINO_CLUSTER_SUBMITS:-2000}" NEUTRINO_CLUSTER_REPORT="$report" \
NEUTRINO_BIN_DIR="${NEUTRINO_BIN_DIR:-$REPO/.build/debug}" PYTHONPATH="$REPO/python${PYTHONPATH:+:$PYTHONPATH}" \
  "$PY" -m pytest -q tests/e2e/test_nats_cluster.py || rc=$?
"$PY" - "$report" <<'PYEOF'
import json, sys
rows = [json.loads(line) for line in open(sys.argv[1]) if line.strip()]
print()
print("### Failover under load: 3-node cluster, streams at R3, two nodes SIGKILLed in turn")
print()
print("| task log | killed (leader of) | tasks | completed once | ran again | redeliveries skipped | ran twice "
      "| 503 + Retry-After | longest submit stall | submit p50 / p99 |")
print("|---|---|---|---|---|---|---|---|---|---|")
for r in rows:
    kills = ", ".join(f"{k['node']}" + (f" ({k['stream_leader_of']})" if k.get("stream_leader_of") else "")
                      for k in r["kills"])
    print(f"| {r['task_log']} | {kills} | {r['submits']} | {r['accepted'] - r['terminal_duplicates']} "
          f"| {r['redelivered_tasks']} | {sum(r.get('skipped_deliveries', {}).values())} | {r['ran_twice']} | {r['refused_503']} "
          f"| {r['longest_stall_s']} s "
          f"| {r['submit_p50_ms']} / {r['submit_p99_ms']} ms |")
PYEOF
exit "$rc"
