#!/usr/bin/env bash
# Mutation check of one module with mutmut (not in CI: minutes per module on 2 cores).
#
#   scripts/mutation.sh postprocess            # mutate src/mabe/postprocess.py, run its tests
#   scripts/mutation.sh training/losses        # a module inside a package: src/mabe/training/losses.py
#   JOBS=4 scripts/mutation.sh metric          # parallel mutants (default 2)
#   MUTATION_TESTS="tests/unit/test_postprocess.py" scripts/mutation.sh postprocess   # other tests
#   then, to read a survivor:  cd .mutation/postprocess && mutmut show NAME
#   MUTANTS=old/survivors.txt MUTATION_NAME=windows_after scripts/mutation.sh windows
#       re-check only the mutants named in that file (a survivors.txt of an earlier run): minutes
#       instead of a full run; the earlier run's killed mutants stay killed (no test was removed)
#   MUTANT_PATTERNS="mabe.features.x_time_derivative* mabe.features.x__central*" scripts/mutation.sh features
#       run only the mutants of the functions matching these globs (a large module in parts)
#
# It works in a scratch copy (.mutation/MODULE, git-ignored): src/, tests/ and pyproject.toml plus
# a [tool.mutmut] section naming the one file to mutate and the tests that cover it, so runs of
# different modules never share mutmut's state and the checkout is never touched. mutmut runs
# only the tests that reach each mutated function (it records them in a first, clean pass).
# Prints killed / survived / no tests / timeout and the kill rate; docs/testing.md keeps the
# numbers and the survivors judged equivalent.
set -euo pipefail
START=$PWD
cd "$(dirname "$0")/.."
ROOT=$PWD
MODULE=${1:?usage: scripts/mutation.sh MODULE   (e.g. postprocess, metric, windows)}
PY=${PYTHON:-$ROOT/.venv/bin/python}
[ -x "$PY" ] || PY=$(command -v python)
"$PY" -c "import mutmut" 2>/dev/null || { echo "mutmut is not installed: pip install -e '.[mutation]'" >&2; exit 2; }
MUTMUT=$(dirname "$PY")/mutmut
SRC=src/mabe/$MODULE.py
[ -f "$SRC" ] || { echo "no such module: $SRC" >&2; exit 2; }

# the tests that exercise each module (the whole suite would work too, only slower)
case "$MODULE" in
  postprocess) TESTS="tests/unit/test_postprocess.py tests/unit/test_postprocess_behaviour.py tests/unit/test_postprocess_edges.py tests/unit/test_submit.py" ;;
  metric)      TESTS="tests/unit/test_metric.py tests/unit/test_metric_edges.py tests/unit/test_metric_io.py tests/unit/test_submit.py tests/unit/test_postprocess_behaviour.py" ;;
  windows)     TESTS="tests/unit/test_windows.py tests/unit/test_windows_edges.py tests/unit/training/test_augment.py tests/unit/test_norm.py" ;;
  features)    TESTS="tests/unit/test_features.py tests/unit/test_feature_units.py tests/unit/test_features_edges.py tests/unit/test_features_assembly.py" ;;
  submit)      TESTS="tests/unit/test_submit.py tests/unit/test_postprocess_behaviour.py" ;;
  train)       TESTS="tests/integration/test_train.py tests/unit/training/test_components.py tests/unit/training/test_losses.py tests/unit/training/test_augment.py tests/integration/test_train_behaviour.py" ;;
  training/losses)   TESTS="tests/unit/training/test_losses.py tests/unit/training/test_components.py tests/unit/training/test_step.py tests/unit/training/test_step_accumulation.py" ;;
  training/schedule) TESTS="tests/unit/training/test_schedule.py tests/unit/training/test_components.py" ;;
  training/step) TESTS="tests/unit/training/test_step.py tests/unit/training/test_step_accumulation.py tests/unit/training/test_storage_dtype.py tests/unit/training/test_step_contract.py tests/unit/training/test_step_graph_cpu.py" ;;
  training/augment) TESTS="tests/unit/training/test_augment.py tests/unit/training/test_augment_edges.py tests/unit/training/test_train_data.py" ;;
  features_torch) TESTS="tests/unit/test_features_torch.py tests/unit/test_features_torch_edges.py tests/unit/test_postracks.py tests/unit/test_poscache.py tests/unit/training/test_augment.py tests/unit/training/test_augment_edges.py" ;;
  *)           TESTS="tests" ;;
esac
TESTS=${MUTATION_TESTS:-$TESTS}  # e.g. the old tests only, for a "before" number

# MUTANTS relative to where the script was started (the script cds into WORK before reading it; a
# relative path used to find no file there and re-run every mutant)
if [ -n "${MUTANTS:-}" ]; then
  given=$MUTANTS
  MUTANTS=$(cd "$START" && realpath -e "$given") || { echo "no such survivors file: $given" >&2; exit 2; }
fi
WORK=$ROOT/.mutation/${MUTATION_NAME:-${MODULE//\//_}}
rm -rf "$WORK"
mkdir -p "$WORK"
cp -r src tests pyproject.toml "$WORK"/
find "$WORK" -name __pycache__ -prune -exec rm -rf {} +
{
  echo
  echo "[tool.mutmut]"
  echo "source_paths = [\"src\"]"
  echo "only_mutate = [\"$SRC\"]"
  printf 'pytest_add_cli_args_test_selection = ['
  first=1
  for t in $TESTS; do [ $first = 1 ] || printf ', '; printf '"%s"' "$t"; first=0; done
  echo ']'
  echo 'pytest_add_cli_args = ["-p", "no:xdist", "-p", "no:cacheprovider", "-q"]'
} >> "$WORK/pyproject.toml"

cd "$WORK"
# one intra-op thread per mutant process: the tests are tiny and the CPUs are shared
export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 PYTHONPATH=
start=$(date +%s)
NAMES=()
if [ -n "${MUTANTS:-}" ]; then
  mapfile -t NAMES < <(awk -F: '/: survived/ {gsub(/ /, "", $1); print $1}' "$MUTANTS")
  echo "re-checking only the ${#NAMES[@]} mutants that survived in $MUTANTS"
elif [ -n "${MUTANT_PATTERNS:-}" ]; then
  read -r -a NAMES <<< "$MUTANT_PATTERNS"
  echo "running only the mutants matching: ${NAMES[*]}"
fi
"$MUTMUT" run --max-children "${JOBS:-2}" "${NAMES[@]}" > mutmut-run.log 2>&1 || { tail -40 mutmut-run.log; exit 1; }
"$MUTMUT" export-cicd-stats > /dev/null
"$PY" - "$MODULE" "$(( $(date +%s) - start ))" <<'EOF'
import json, sys
s = json.load(open("mutants/mutmut-cicd-stats.json"))
killed, survived = s["killed"], s["survived"]
# with MUTANTS, the mutants not re-checked are "not checked" and counted in none of these
judged = killed + survived + s.get("timeout", 0)
rate = 100.0 * (killed + s.get("timeout", 0)) / max(judged, 1)
print(f"{sys.argv[1]}: {s['total']} mutants, killed {killed}, survived {survived}, no tests {s['no_tests']}, "
      f"timeout {s.get('timeout', 0)}, suspicious {s.get('suspicious', 0)}, skipped {s.get('skipped', 0)} "
      f"-> kill rate {rate:.1f}% ({sys.argv[2]} s)")
EOF
"$MUTMUT" results 2>/dev/null | grep -E ": (survived|timeout|no tests)" > survivors.txt || true
echo "survivors: $WORK/survivors.txt (mutmut show NAME inside $WORK for the diff)"
