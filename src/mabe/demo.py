"""``mabe demo``: the main job on the embedded default, as the sequence of commands a user would type.

synthetic MABe data -> train (prepares the feature cache first) -> evaluate -> honest validation
submission + competition score -> thresholds fitted on validation -> test predictions -> submission
-> offline export (train also writes report.html). Each step is printed as its ``mabe ...`` command
and run through the same CLI, so the demo exercises exactly what users run.
"""

from __future__ import annotations

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

    if not (data / "train.csv").is_file() or getattr(args, "fresh", False):
        _run(main, ["synth", str(data), "--preset", "demo", "--seed", str(args.seed)])
    _run(main, ["info", str(data)])
    _run(main, ["train", "-c", str(config), "--data", str(data), "--name", "demo",
          "--set", f"cache={cache}", "--set", f"runs={runs}"])
    val_preds = run / "eval" / "val_predictions.npz"
    _run(main, ["evaluate", str(run), str(data), "--json", str(out / "val_metrics.json")])

    # Honest score: default post-processing, nothing fitted on the videos being scored.
    _run(main, ["submit", str(val_preds), "--out", str(out / "val_submission.csv"), "-c", str(config)])
    solution = _val_solution(data, val_preds, out / "val_solution.csv")
    _run(main, ["score", str(solution), str(out / "val_submission.csv")])

    # Thresholds fitted on validation are for the test submission only.
    _run(main, ["submit", str(val_preds), "--fit", str(val_preds), "--out", str(out / "fit" / "val_fitted.csv"),
          "-c", str(config)])
    _run(main, ["predict", str(run), "--data", str(data), "--split", "test", "--out", str(out / "test_predictions.npz")])
    _run(main, ["submit", str(out / "test_predictions.npz"), "--thresholds", str(out / "fit" / "thresholds.json"),
          "--out", str(out / "submission.csv"), "-c", str(config)])
    _run(main, ["export", str(run), "--out", str(out / "model.mabe")])  # `mabe train` already wrote report.html

    print(f"\ndemo finished in {time.perf_counter() - t0:.0f} s")
    for what, path in [
        ("run directory", run), ("best checkpoint", run / "checkpoints" / "best.pt"),
        ("metrics per epoch", run / "metrics.csv"), ("report", run / "report.html"),
        ("validation metrics", out / "val_metrics.json"), ("test submission", out / "submission.csv"),
        ("offline model", out / "model.mabe"),
    ]:
        print(f"  {what:<20} {path}")
    sys.stdout.flush()
    return 0
