#!/usr/bin/env bash
# Run every fuzz target for SECONDS (default 600) each, JOBS (default 2) at a time, on a
# working corpus outside the tree seeded from fuzz/corpus/<target>; prints one result line
# per target. Needs the nightly toolchain and cargo-fuzz (`cargo install cargo-fuzz`).
set -uo pipefail
cd "$(dirname "$0")"
SECONDS_EACH="${1:-600}"
JOBS="${JOBS:-2}"
WORK="${FUZZ_WORK:-${TMPDIR:-/tmp}/ketenpost-fuzz}"
mkdir -p "$WORK" logs
TARGETS=$(cargo +nightly fuzz list)
cargo +nightly fuzz build >/dev/null 2>&1 || { echo "fuzz build failed"; exit 1; }
run_one() {
  t="$1"
  mkdir -p "$WORK/$t"
  start=$(date +%s)
  cargo +nightly fuzz run "$t" "$WORK/$t" "corpus/$t" -- \
    -max_total_time="$SECONDS_EACH" -rss_limit_mb=2048 -print_final_stats=1 \
    >"logs/$t.log" 2>&1
  rc=$?
  secs=$(( $(date +%s) - start ))
  runs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "logs/$t.log" | grep -o '[0-9]*$' | tail -1)
  crashes=$(ls "artifacts/$t" 2>/dev/null | wc -l)
  echo "$t: ${secs}s, ${runs:-?} runs, exit $rc, ${crashes} crash artifacts"
}
export -f run_one
export SECONDS_EACH WORK
printf '%s\n' $TARGETS | xargs -P "$JOBS" -I{} bash -c 'run_one {}'
