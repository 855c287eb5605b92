#!/usr/bin/env bash
# `make fuzz`: builds the libFuzzer harness (fuzz/, nightly, cargo-fuzz installed when missing)
# and runs each target in turn on its corpus (fuzz/corpus/<target>/) for FUZZ_RUNS executions or
# FUZZ_TIME seconds, whichever comes first, then minimizes the corpus (scripts/fuzz-trim.sh). Crashing
# inputs land in fuzz/artifacts/<target>/. Logs and a summary table (executions, time, exec/s,
# crashes, corpus size) go to target/fuzz-logs/. Exits non-zero if any target crashed.
#
# Usage: scripts/fuzz.sh [TARGET...]   (default: every target)
# Environment: FUZZ_RUNS (default 1000000), FUZZ_TIME (seconds per target, default 600),
# FUZZ_ARGS (more libFuzzer flags).
#
# Builds without a sanitizer: the workspace forbids unsafe code, so AddressSanitizer would only
# slow the runs; debug assertions are on, so integer overflows panic like any other bug.
set -euo pipefail
cd "$(dirname "$0")/.."

FUZZ_RUNS=${FUZZ_RUNS:-1000000}
FUZZ_TIME=${FUZZ_TIME:-600}
FUZZ_ARGS=${FUZZ_ARGS:-}
LOGS=target/fuzz-logs
FUZZ=(cargo +nightly fuzz)
FLAGS=(--sanitizer none --debug-assertions --target-dir target/fuzz --fuzz-dir fuzz)
# Time and memory limits for one input: a filter or certificate that takes longer or more
# memory is a finding (the curator's filter pool budgets 5 s per call; this leaves room for a
# busy machine).
LIMITS=(-timeout=10 -rss_limit_mb=2048 -malloc_limit_mb=2048)

"${FUZZ[@]}" --version >/dev/null 2>&1 || cargo install --locked cargo-fuzz

if [ $# -gt 0 ]; then
  targets=("$@")
else
  mapfile -t targets < <("${FUZZ[@]}" list --fuzz-dir fuzz)
fi

mkdir -p "$LOGS"
"${FUZZ[@]}" build "${FLAGS[@]}"

summary="$LOGS/summary.md"
{
  echo "| target | executions | time (s) | exec/s | crashes | corpus files |"
  echo "| --- | ---: | ---: | ---: | ---: | ---: |"
} > "$summary"
failed=0
for t in "${targets[@]}"; do
  corpus="fuzz/corpus/$t"
  artifacts="fuzz/artifacts/$t"
  mkdir -p "$corpus" "$artifacts"
  log="$LOGS/$t.log"
  echo "== $t (up to $FUZZ_RUNS runs or $FUZZ_TIME s)"
  start=$(date +%s)
  status=0
  # shellcheck disable=SC2086 # FUZZ_ARGS is a list of flags
  "${FUZZ[@]}" run "${FLAGS[@]}" "$t" "$corpus" -- \
    -runs="$FUZZ_RUNS" -max_total_time="$FUZZ_TIME" "${LIMITS[@]}" \
    -print_final_stats=1 -artifact_prefix="$artifacts/" $FUZZ_ARGS >"$log" 2>&1 || status=$?
  elapsed=$(( $(date +%s) - start ))
  execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
  rate=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log" | tail -1)
  crashes=$(find "$artifacts" -type f | wc -l)
  if [ "$status" -ne 0 ]; then
    failed=1
    echo "   $t FAILED (exit $status); see $log and $artifacts/"
    tail -30 "$log"
  else
    scripts/fuzz-trim.sh "$t"
  fi
  files=$(find "$corpus" -type f | wc -l)
  echo "| $t | ${execs:-?} | $elapsed | ${rate:-?} | $crashes | $files |" | tee -a "$summary"
done
echo
cat "$summary"
exit "$failed"
