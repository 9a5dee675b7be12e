#!/usr/bin/env bash
# The CPU recipe: any MABe-layout folder DATA -> OUT/submission.csv.
#   k-fold (by video, stratified by lab) per-(lab, action) and pooled per-action LightGBM on per-frame
#   tabular features (the source per (lab, action) chosen out of fold),
#   thresholds fitted on the out-of-fold predictions, test predicted by the mean of the fold models.
# Everything it writes (feature cache, models, predictions, thresholds, submission) is under OUT.
# Budget: 30 two-minute videos in under 10 minutes on 2 cores. Extra args go to `mabe gbdt`
# (e.g. --folds 5, --set gbdt.n_estimators=300).
set -euo pipefail
if [ $# -lt 2 ]; then
    echo "usage: $0 DATA OUT [mabe gbdt options]" >&2
    exit 2
fi
DATA=$(realpath "$1")
OUT=$(realpath -m "$2")
shift 2
cd "$(dirname "$0")/.."
if [ -z "${MABE_PYTHON:-}" ]; then
    bash scripts/setup.sh
    MABE_PYTHON=.venv/bin/python
fi
start=$(date +%s)
"$MABE_PYTHON" -m mabe gbdt "$DATA" --out "$OUT" "$@"
test -f "$OUT/submission.csv" || { echo "recipe: no test split in $DATA, so no submission" >&2; exit 1; }
echo "recipe: $OUT/submission.csv in $(( $(date +%s) - start )) s"
