#!/usr/bin/env bash
# Startup time to serving, and idle memory, of the release `labeler` binary.
#
#   cargo build --release && bench/startup.sh [RUNS]
#
# Each run starts `labeler` in an empty directory (so it initialises: config, key, database,
# as the Docker image does on an empty volume), measures the time from exec to the first
# 200 from /xrpc/_health, then lets it idle for 10 s (Jetstream unreachable: it keeps
# retrying with backoff) and reads VmRSS and VmHWM from /proc. A second start on the same
# state measures a warm start (state already there). Everything on 127.0.0.1.
set -euo pipefail
bin=$(cd "$(dirname "$0")/.." && pwd)/target/release/labeler
runs=${1:-5}
port=18765
printf '| run | cold start ms | warm start ms | idle VmRSS MiB | VmHWM MiB |\n|---|---|---|---|---|\n'
for run in $(seq 1 "$runs"); do
  dir=$(mktemp -d)
  # Sets $pid and $ms. The daemon's stdio must not be a pipe of ours, or we would wait on it.
  measure() {
    local t0 t1
    t0=$(date +%s%N)
    (cd "$dir" && LABELER_LISTEN_ADDR=127.0.0.1:$port RUST_LOG=warn exec "$bin" >/dev/null 2>&1) &
    pid=$!
    for _ in $(seq 1 2000); do
      if curl -sf "http://127.0.0.1:$port/xrpc/_health" >/dev/null 2>&1; then break; fi
      sleep 0.005
    done
    t1=$(date +%s%N)
    ms=$(( (t1 - t0) / 1000000 ))
  }
  measure; cold=$ms
  sleep 10
  rss=$(awk '/VmRSS/ {printf "%.1f", $2/1024}' /proc/$pid/status)
  hwm=$(awk '/VmHWM/ {printf "%.1f", $2/1024}' /proc/$pid/status)
  kill -TERM $pid; wait $pid || true
  measure; warm=$ms; kill -TERM $pid; wait $pid || true
  printf '| %s | %s | %s | %s | %s |\n' "$run" "$cold" "$warm" "$rss" "$hwm"
  rm -rf "$dir"
done
