"""``mabe demo``: the main job on the embedded default, as the sequence of commands a user would type.

synthetic MABe data (the ``hard`` preset by default: real lab profiles, tracker faults, unlabelled
look-alikes) -> the CPU recipe (``mabe gbdt``: k-fold LightGBM, thresholds fitted out of fold, the test
submission) -> the network (train, which prepares its cache, evaluate) -> both families scored
honestly on the network's validation videos (default post-processing, nothing fitted on them) ->
the network's thresholds fitted on validation, its test predictions and submission -> offline export
(train also writes report.html). Each step is printed as its ``mabe ...`` command and run through the
same CLI, so the demo exercises exactly what users run.
"""

from __future__ import annotations

import json
import shutil
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from mabe import metric, predictions
from mabe.config import PACKAGED_CONFIGS, resolve_config
from mabe.errors import MabeError

DEMO_CONFIG = PACKAGED_CONFIGS / "demo.yaml"  # package data: found from any folder, installed or not
DEMO_PRESET = "hard"  # the planted `demo` preset scores ~0.92 and says nothing about real data


def _run(main: Callable[[list[str]], int], argv: list[str]) -> None:
    print(f"\n$ mabe {' '.join(argv)}", flush=True)
    t0 = time.perf_counter()
    code = main(argv)
    if code != 0:
        raise MabeError(f"`mabe {' '.join(argv)}` failed with exit code {code}")
    print(f"  ({time.perf_counter() - t0:.1f} s)", flush=True)


def _val_solution(data: Path, val_predictions: Path, out: Path) -> Path:
    """Solution CSV restricted to the validation videos, so training videos do not count as misses."""
    videos = {str(v) for v in predictions.load(val_predictions).video_id.tolist()}
    sol = metric.load_solution(data)
    sol = sol[sol["video_id"].astype(str).isin(videos)]
    sol.to_csv(out, index=False)
    return out


def run_demo(args: Any, main: Callable[[list[str]], int]) -> int:
    """Run the whole pipeline in ``args.workdir`` through ``main`` (``mabe.cli.main``, which calls this:
    the demo sits below the CLI, not beside it); print where everything is."""
    work = Path(args.workdir)
    config = resolve_config(args.config or DEMO_CONFIG)
    if not config.is_file():
        raise MabeError(f"demo config {config} not found (`mabe configs` lists the shipped ones)")
    data, cache, runs, out = work / "data", work / "cache", work / "runs", work / "out"
    run = runs / "demo"
    if run.exists():  # the demo is re-runnable: its previous run is replaced, data and cache are reused
        shutil.rmtree(run)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()

    preset = getattr(args, "preset", None) or DEMO_PRESET
    if not (data / "train.csv").is_file() or getattr(args, "fresh", False):
        _run(main, ["synth", str(data), "--preset", preset, "--seed", str(args.seed)])
    _run(main, ["info", str(data)])
    # The CPU recipe first: the family that wins on data mabe did not generate (benchmarks/RESULTS.md).
    gbdt_out = out / "gbdt"
    _run(main, ["gbdt", str(data), "--out", str(gbdt_out)])
    _run(main, ["train", "-c", str(config), "--data", str(data), "--name", "demo",
          "--set", f"cache={cache}", "--set", f"runs={runs}"])
    val_preds = run / "eval" / "val_predictions.npz"
    _run(main, ["evaluate", str(run), str(data), "--json", str(out / "val_metrics.json")])

    # Honest scores: default post-processing, nothing fitted on the videos being scored. The gbdt's
    # out-of-fold predictions of the same validation videos come from models that never saw them.
    _run(main, ["submit", str(val_preds), "--out", str(out / "val_submission.csv"), "-c", str(config)])
    solution = _val_solution(data, val_preds, out / "val_solution.csv")
    _run(main, ["submit", str(gbdt_out / "oof_predictions.npz"), "--out", str(out / "gbdt_val_submission.csv")])
    scores = {}
    for family, sub in (("gbdt", "gbdt_val_submission.csv"), ("network", "val_submission.csv")):
        _run(main, ["score", str(solution), str(out / sub), "--json", str(out / f"{family}_val_score.json")])
        scores[family] = json.loads((out / f"{family}_val_score.json").read_text())["score"]

    # Thresholds fitted on validation are for the test submission only.
    _run(main, ["submit", str(val_preds), "--fit", str(val_preds), "--out", str(out / "fit" / "val_fitted.csv"),
          "-c", str(config)])
    _run(main, ["predict", str(run), "--data", str(data), "--split", "test", "--out", str(out / "test_predictions.npz")])
    _run(main, ["submit", str(out / "test_predictions.npz"), "--thresholds", str(out / "fit" / "thresholds.json"),
          "--out", str(out / "network_submission.csv"), "-c", str(config)])
    shutil.copyfile(gbdt_out / "submission.csv", out / "submission.csv")
    _run(main, ["export", str(run), "--out", str(out / "model.mabe")])  # `mabe train` already wrote report.html

    n_val = len(set(predictions.load(val_preds).video_id.tolist()))
    print(f"\ndemo finished in {time.perf_counter() - t0:.0f} s")
    print(f"competition score on the {n_val} validation videos (nothing fitted on them): "
          f"gbdt {scores['gbdt']:.3f}, network {scores['network']:.3f}; "
          f"submission.csv is the gbdt's (thresholds fitted out of fold)")
    for what, path in [
        ("run directory", run), ("best checkpoint", run / "checkpoints" / "best.pt"),
        ("metrics per epoch", run / "metrics.csv"), ("report", run / "report.html"),
        ("validation metrics", out / "val_metrics.json"), ("test submission", out / "submission.csv"),
        ("network submission", out / "network_submission.csv"),
        ("offline model", out / "model.mabe"),
    ]:
        print(f"  {what:<20} {path}")
    sys.stdout.flush()
    return 0
