#!/usr/bin/env bash
# Submit a job to a throw-away, loopback-only Ray cluster -- the same path as `ray job submit` on a
# real cluster (working dir uploaded through the Jobs API, driver run by the head), on one machine.
#
#   scripts/job_submit_local.sh                        # default entry: the tiny training run (below)
#   scripts/job_submit_local.sh -- python -c 'import hybrid_ray; print(hybrid_ray.__file__)'
#   NUM_CPUS=4 scripts/job_submit_local.sh -- python -m hybrid_ray.driver.tune --config tune/configs/tiny.yaml
#
# What it does:
#   1. `ray start --head --block` bound to 127.0.0.1 on free ports, with its own --temp-dir, in a
#      new session (its own process group), so several of these can run side by side;
#   2. waits for the dashboard, then `ray job submit --address http://127.0.0.1:<port>
#      --working-dir . -- <entry>` (waits for the job, streams its logs, exits non-zero if it fails);
#   3. on exit (trap) stops THIS cluster only: SIGTERM, then SIGKILL, to its process group. It never
#      runs `ray stop`, which would stop every Ray cluster of this user on the machine.
#
# The upload honours .gitignore (Ray's default; .venv/, runs/, caches are ignored there) plus the
# excludes below (.git is not in .gitignore). Auth: token auth is OFF (RAY_AUTH_MODE=disabled)
# because every listener is on 127.0.0.1; on real clusters it is ON (docs/deploy.md).
#
# Default entry (no arguments): writes a small pairs set with scripts/tiny_pairs.py (once) to
# $JOB_OUT/tiny-pairs.parquet, then runs
#   python -m hybrid_ray.train --config hybrid_ray/configs/tiny.yaml \
#       data.path=$JOB_OUT/tiny-pairs.parquet run.storage_path=$JOB_OUT run.name=tiny-<timestamp>
# (tiny.yaml leaves data.path unset on purpose). The exported encoder lands in
# $JOB_OUT/tiny-<timestamp>/encoder. This is what tests/test_job_submit.py runs.
#
# Environment: NUM_CPUS (default 2), RAY (ray executable; default .venv/bin/ray if present),
# READY_TIMEOUT (seconds to wait for the dashboard, default 60), KEEP_TMP=1 keeps the temp dir,
# JOB_OUT (default entry's data + run directory, default runs/job-submit-local).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

if [[ "${1:-}" == "--" ]]; then shift; fi

# The job's driver runs `python` from the head's PATH: make that the project's environment.
if [[ -z "${VIRTUAL_ENV:-}" && -x "$ROOT/.venv/bin/python" ]]; then
  export PATH="$ROOT/.venv/bin:$PATH"
fi
RAY="${RAY:-$(command -v ray || true)}"
PYTHON="$(command -v python || true)"
if [[ -z "$RAY" || -z "$PYTHON" ]]; then
  echo "[job_submit_local] need 'ray' and 'python' on PATH (or a .venv in $ROOT)" >&2
  exit 2
fi

if [[ $# -eq 0 ]]; then
  JOB_OUT="${JOB_OUT:-$ROOT/runs/job-submit-local}"
  mkdir -p "$JOB_OUT"
  JOB_OUT="$(cd "$JOB_OUT" && pwd)"  # absolute: the job runs in the uploaded copy, not here
  DATA="$JOB_OUT/tiny-pairs.parquet"
  if [[ ! -f "$DATA" ]]; then
    "$PYTHON" "$ROOT/scripts/tiny_pairs.py" "$DATA"
  fi
  set -- python -m hybrid_ray.train --config hybrid_ray/configs/tiny.yaml \
    "data.path=$DATA" "run.storage_path=$JOB_OUT" "run.name=tiny-$(date +%Y%m%d-%H%M%S)"
fi

export RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0
export RAY_AUTH_MODE=disabled
export GLOO_SOCKET_IFNAME=lo
export RAY_USAGE_STATS_ENABLED=0
export TOKENIZERS_PARALLELISM=false

# Free ports between Ray's worker-port range (10002-19999 by default) and the kernel's ephemeral
# range: Ray's own processes bind port 0 (ephemeral) while the head starts, so a port picked from
# that range can be taken before the dashboard binds it.
pick_ports() {
  "$PYTHON" - <<'PY'
import random, socket
lo, _hi = (int(x) for x in open("/proc/sys/net/ipv4/ip_local_port_range").read().split())
socks, tried = [], set()
while len(socks) < 7:
    port = random.randrange(20000, max(20001, lo))
    if port in tried:
        continue
    tried.add(port)
    s = socket.socket()
    try:
        s.bind(("127.0.0.1", port))
    except OSError:
        s.close()
        continue
    socks.append(s)
print(" ".join(str(s.getsockname()[1]) for s in socks))
for s in socks:
    s.close()
PY
}

TMP_DIR="$(mktemp -d /tmp/hrjs.XXXXXX)"
RAY_PID=""

cleanup() {
  local rc=$?
  stop_head  # defined below; bash resolves it when the trap runs
  if [[ "${KEEP_TMP:-0}" != "1" ]]; then rm -rf "$TMP_DIR"; fi
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

start_head() {
  read -r GCS_PORT DASH_PORT CLIENT_PORT AGENT_PORT AGENT_GRPC_PORT METRICS_PORT RTENV_PORT < <(pick_ports)
  echo "[job_submit_local] starting Ray head on 127.0.0.1 (gcs :$GCS_PORT, dashboard :$DASH_PORT)"
  setsid "$RAY" start --head --block \
    --num-cpus="${NUM_CPUS:-2}" \
    --node-ip-address=127.0.0.1 \
    --port="$GCS_PORT" \
    --dashboard-host=127.0.0.1 \
    --dashboard-port="$DASH_PORT" \
    --ray-client-server-port="$CLIENT_PORT" \
    --dashboard-agent-listen-port="$AGENT_PORT" \
    --dashboard-agent-grpc-port="$AGENT_GRPC_PORT" \
    --metrics-export-port="$METRICS_PORT" \
    --runtime-env-agent-port="$RTENV_PORT" \
    --temp-dir="$TMP_DIR" \
    --disable-usage-stats \
    >"$TMP_DIR/ray-start.log" 2>&1 &
  RAY_PID=$!
  ADDRESS="http://127.0.0.1:$DASH_PORT"
  local deadline=$((SECONDS + ${READY_TIMEOUT:-60}))
  until "$PYTHON" -c "import sys, urllib.request; urllib.request.urlopen(sys.argv[1], timeout=2)" \
    "$ADDRESS/api/version" >/dev/null 2>&1; do
    if ! kill -0 "$RAY_PID" 2>/dev/null || ((SECONDS > deadline)); then
      return 1
    fi
    sleep 1
  done
}

stop_head() {
  if [[ -n "$RAY_PID" ]] && kill -0 "$RAY_PID" 2>/dev/null; then
    kill -TERM -- "-$RAY_PID" 2>/dev/null || true
    for _ in $(seq 1 20); do
      pgrep -g "$RAY_PID" >/dev/null 2>&1 || break
      sleep 0.5
    done
    kill -KILL -- "-$RAY_PID" 2>/dev/null || true
  fi
  RAY_PID=""
}

# Up to 3 tries, with fresh ports, when a port was taken after all ("address already in use").
for attempt in 1 2 3; do
  if start_head; then break; fi
  if [[ $attempt -lt 3 ]] && grep -q "already in use" "$TMP_DIR/ray-start.log" 2>/dev/null; then
    echo "[job_submit_local] a port was taken while Ray started; retrying with new ports" >&2
    stop_head
    rm -rf "${TMP_DIR:?}"/*
    continue
  fi
  echo "[job_submit_local] Ray head did not come up; its log:" >&2
  cat "$TMP_DIR/ray-start.log" >&2 || true
  exit 1
done

echo "[job_submit_local] submitting: $*"
"$RAY" job submit \
  --address "$ADDRESS" \
  --working-dir . \
  --runtime-env-json '{"excludes": [".git", ".venv", "**/__pycache__", "runs", "out", ".cache", "*.egg-info"]}' \
  -- "$@"
