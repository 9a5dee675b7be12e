"""scripts/recipe_cpu.sh end to end on tiny data (the network shortened): the blend of both families is the
submission, fitted on their out-of-fold files only; a failing network stage leaves the gbdt's submission."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd

from mabe import submit

ROOT = Path(__file__).resolve().parents[2]
SHORT = ("--net-set", "train.epochs=1", "--net-set", "train.steps_per_epoch=2", "--net-set", "train.batch_size=4")


def recipe(data: Path, out: Path, *args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, MABE_PYTHON=sys.executable, PYTHONPATH=str(ROOT / "src"), OMP_NUM_THREADS="1")
    return subprocess.run(["bash", str(ROOT / "scripts" / "recipe_cpu.sh"), str(data), str(out), *args],
                          env=env, capture_output=True, text=True, timeout=600)


def test_the_recipe_submits_the_blend_fitted_on_both_out_of_fold_files(data, tmp_path):
    out = tmp_path / "out"
    res = recipe(data, out, *SHORT)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-2000:]
    assert "blend of gbdt and network" in res.stdout
    assert (out / "submission.csv").read_bytes() == (out / "blend" / "submission.csv").read_bytes()
    meta = json.loads((out / "blend" / "blend.json").read_text())
    assert [Path(p) for p in meta["fit"]] == [out / "oof_predictions.npz", out / "net" / "runs" / "cv" / "oof_predictions.npz"]
    assert [Path(p) for p in meta["apply"]] == [out / "test_predictions.npz", out / "net" / "test_predictions.npz"]
    submit.validate_submission(pd.read_csv(out / "submission.csv"), data / "test.csv")
    submit.validate_submission(pd.read_csv(out / "submission_gbdt.csv"), data / "test.csv")
    assert "not in every file" not in res.stderr  # the gbdt's unlabelled pairs are no reason to warn


def test_a_failing_network_stage_keeps_the_gbdt_submission_and_says_so(data, tmp_path):
    out = tmp_path / "out"
    res = recipe(data, out, *SHORT, "--net-set", "model.name=no_such_model")
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-2000:]
    assert "network stage failed" in res.stderr and "gbdt's alone" in res.stderr
    assert (out / "submission.csv").read_bytes() == (out / "submission_gbdt.csv").read_bytes()
    assert not (out / "blend" / "submission.csv").exists()


def test_no_network_runs_the_gbdt_alone_and_bad_options_are_refused(data, tmp_path):
    out = tmp_path / "out"
    res = recipe(data, out, "--no-network")
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-2000:]
    assert not (out / "net").exists() and (out / "submission.csv").is_file()
    bad = recipe(data, tmp_path / "bad", "--net-set")
    assert bad.returncode == 2 and "--net-set needs KEY=VALUE" in bad.stderr
