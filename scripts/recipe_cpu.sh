#!/usr/bin/env bash
# The CPU recipe: any MABe-layout folder DATA -> OUT/submission.csv.
#   1. gbdt: k-fold (by video, stratified by lab) per-(lab, action) and pooled per-action LightGBM on per-frame
#      tabular features (the source per (lab, action) chosen out of fold); test = the mean of the fold models.
#   2. network: `mabe cv` of configs/cpu_net.yaml (dilated TCN, 30 fps, EMA) in 3 folds of 5 epochs;
#      test = the mean of the folds.
#   3. blend: one weight per family and per-(lab, action) thresholds fitted on both families' out-of-fold
#      predictions of every train video (`mabe blend`), then `mabe submit`.
# Why both: on 40 evaluation videos a run the blend beat the gbdt alone on 5 of 5 runs of two generators
# (+0.002 to +0.032, benchmarks/RESULTS.md); 5 epochs because 20 cost 4x and did not blend better.
# If the network stage fails, OUT/submission.csv stays the gbdt's (and the recipe says so).
# Everything it writes (feature caches, models, runs, predictions, thresholds, submission) is under OUT.
# Budget: 30 two-minute videos in under 10 minutes on 2 cores.
#   --no-network        the gbdt alone (about a third of the time)
#   --net-set KEY=VALUE  override one key of the network stage (repeatable, e.g. --net-set train.epochs=20)
#   other args go to `mabe gbdt` (e.g. --folds 5, --set gbdt.n_estimators=300)
set -euo pipefail
if [ $# -lt 2 ]; then
    echo "usage: $0 DATA OUT [--no-network] [--net-set KEY=VALUE ...] [mabe gbdt options]" >&2
    exit 2
fi
DATA=$(realpath "$1")
OUT=$(realpath -m "$2")
shift 2
NETWORK=1
GBDT_ARGS=()
NET_SET=()
while [ $# -gt 0 ]; do
    case "$1" in
        --no-network) NETWORK=0 ;;
        --net-set) [ $# -ge 2 ] || { echo "recipe: --net-set needs KEY=VALUE" >&2; exit 2; }
                   NET_SET+=(--set "$2"); shift ;;
        *) GBDT_ARGS+=("$1") ;;
    esac
    shift
done
cd "$(dirname "$0")/.."
if [ -z "${MABE_PYTHON:-}" ]; then
    bash scripts/setup.sh
    MABE_PYTHON=.venv/bin/python
fi
mabe() { "$MABE_PYTHON" -m mabe "$@"; }
start=$(date +%s)
mabe gbdt "$DATA" --out "$OUT" ${GBDT_ARGS[@]+"${GBDT_ARGS[@]}"}
test -f "$OUT/submission.csv" || { echo "recipe: no test split in $DATA, so no submission" >&2; exit 1; }
cp "$OUT/submission.csv" "$OUT/submission_gbdt.csv"
echo "recipe: gbdt done in $(( $(date +%s) - start )) s"
if [ "$NETWORK" = 1 ]; then
    if mabe cv -c cpu_net --set task.mode=pair --set train.epochs=5 --set "runs=$OUT/net/runs" \
            --set "cache=$OUT/net/cache" ${NET_SET[@]+"${NET_SET[@]}"} --data "$DATA" --name cv --folds 3 \
        && mabe predict "$OUT/net/runs/cv" --data "$DATA" --split test --out "$OUT/net/test_predictions.npz" \
        && mabe blend --fit "$OUT/oof_predictions.npz" "$OUT/net/runs/cv/oof_predictions.npz" \
            --apply "$OUT/test_predictions.npz" "$OUT/net/test_predictions.npz" \
            --out "$OUT/blend/test_predictions.npz" \
        && mabe submit "$OUT/blend/test_predictions.npz" --thresholds "$OUT/blend/thresholds.json" \
            --out "$OUT/blend/submission.csv"; then
        cp "$OUT/blend/submission.csv" "$OUT/submission.csv"
        echo "recipe: blend of gbdt and network -> $OUT/submission.csv"
    else
        echo "recipe: the network stage failed (see above); $OUT/submission.csv is the gbdt's alone" >&2
    fi
fi
echo "recipe: $OUT/submission.csv in $(( $(date +%s) - start )) s"
