#!/usr/bin/env bash
# Runs every fuzz target for SECONDS (default 600), two at a time (one per core), starting
# from the committed seeds and the local corpus (fuzz/corpus, git-ignored). A crash stops its
# target and leaves the input in fuzz/artifacts/<target>/; copy it into fuzz/regressions/ and
# add a regression test. Needs cargo-fuzz (`cargo install cargo-fuzz`); the machine's stable
# toolchain accepts its nightly flags with RUSTC_BOOTSTRAP=1.
set -euo pipefail
cd "$(dirname "$0")"
seconds=${1:-600}
targets=(jetstream_event config spf dkim dmarc query_labels)
export RUSTC_BOOTSTRAP=1
cargo fuzz build -O
run() {
  mkdir -p "corpus/$1"
  cargo fuzz run -O "$1" "corpus/$1" "seeds/$1" -- -max_total_time="$seconds" -print_final_stats=1 \
    > "logs/$1.log" 2>&1 && echo "$1: ok ($(grep -o 'Done [0-9]* runs' "logs/$1.log"))" \
    || echo "$1: FAILED, see fuzz/logs/$1.log"
}
mkdir -p logs
for ((i = 0; i < ${#targets[@]}; i += 2)); do
  run "${targets[i]}" &
  [ -n "${targets[i+1]:-}" ] && run "${targets[i+1]}" &
  wait
done
