#!/usr/bin/env bash
# Minimizes the corpora of the named targets for checking in: set-cover merging (libFuzzer's
# smallest subset of inputs keeping every coverage feature the corpus reaches; plain `cmin`
# also keeps inputs for hit counts, which leaves thousands), then, if still above
# FUZZ_CORPUS_CAP files (default 200), a deterministic sample (by content hash, the file name)
# of that many, so the replay in `make test` stays a matter of seconds.
#
# Usage: scripts/fuzz-trim.sh TARGET...
set -euo pipefail
cd "$(dirname "$0")/.."

CAP=${FUZZ_CORPUS_CAP:-200}
FLAGS=(--sanitizer none --debug-assertions --target-dir target/fuzz --fuzz-dir fuzz)
mkdir -p target/fuzz-logs
for t in "$@"; do
  corpus="fuzz/corpus/$t"
  cargo +nightly fuzz cmin "${FLAGS[@]}" "$t" "$corpus" -- -set_cover_merge=1 \
    >"target/fuzz-logs/$t.cmin.log" 2>&1
  n=$(find "$corpus" -type f | wc -l)
  if [ "$n" -gt "$CAP" ]; then
    find "$corpus" -type f -printf '%f\n' | sort | tail -n +"$((CAP + 1))" |
      (cd "$corpus" && xargs -r rm -f --)
  fi
  echo "$t: $(find "$corpus" -type f | wc -l) files (of $n after merging)"
done
