#!/bin/bash
# The quick demo end to end, this tree against a baseline commit, in turns (issue 23's demo target).
#
#   benchmarks/unlearning/demo_ab.sh [PAIRS] [BASELINE]     (defaults: 2 pairs, 7fb516c)
#
# BASELINE defaults to the commit before the unlearning speed work (per-phase gc.collect skipped on CPU,
# length-bucketed sub-batches, the attribution run's EK-FAC factors reused). Like for like: the baseline's
# demo ran DMM with 1 calibration retrain, which its own guardrail refuses on this corpus (r^2 < 0), so
# its unlearning stopped before fine-tuning; the baseline here runs the 3 calibration retrains this tree's
# demo runs. Each run gets a fresh lake and state folder; the reference model is built once per tree
# (a warm-up run, not timed). Prints wall, user and sys seconds of every run (GNU time).
set -euo pipefail
PAIRS=${1:-2}
BASELINE=${2:-7fb516c}
HERE=$(cd "$(dirname "$0")/../.." && pwd)
PY=${PY:-$HERE/.venv/bin/python}
WORK=$(mktemp -d)
trap 'git -C "$HERE" worktree remove --force "$WORK/base" >/dev/null 2>&1 || true; rm -rf "$WORK"' EXIT
git -C "$HERE" worktree add --detach "$WORK/base" "$BASELINE" >/dev/null 2>&1
sed -i '/    "calibration_retrains": 1,/d' "$WORK/base/flows/demo.py"
declare -A TREE=([baseline]="$WORK/base" [this]="$HERE")
run() {  # variant, label
  local dir="$WORK/run-$1-$2"
  mkdir -p "$dir"
  (cd "$dir" && ASSAY_HOME="$dir/.assay" ASSAY_CACHE="$WORK/cache-$1" PYTHONPATH="${TREE[$1]}" \
    /usr/bin/time -f "$1 $2 wall %e user %U sys %S" "$PY" -m flows.cli demo --quick >"$dir/out.txt" 2>"$dir/err.txt") \
    || { echo "$1 $2 failed: $dir/err.txt"; tail -5 "$dir/err.txt"; return 1; }
  tail -1 "$dir/err.txt"
}
run baseline warm-up >/dev/null
run this warm-up >/dev/null
for i in $(seq "$PAIRS"); do
  if [ $((i % 2)) -eq 1 ]; then run baseline "$i"; run this "$i"; else run this "$i"; run baseline "$i"; fi
done
