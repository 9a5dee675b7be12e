"""The README's main job end to end (shortened): every artefact it promises exists and is valid."""

from __future__ import annotations

import argparse

import pandas as pd
import yaml

from mabe import cli, demo, metric, submit


def test_demo_pipeline_writes_valid_submission_and_scores(tmp_path, capsys):
    cfg = yaml.safe_load(demo.DEMO_CONFIG.read_text())
    cfg["train"].update(epochs=2, steps_per_epoch=10)
    config = tmp_path / "short.yaml"
    config.write_text(yaml.safe_dump(cfg))
    args = argparse.Namespace(workdir=tmp_path / "work", config=config, seed=3, fresh=False)

    assert demo.run_demo(args, cli.main) == 0

    out = capsys.readouterr().out
    work = tmp_path / "work"
    run = work / "runs" / "demo"
    for path in [run / "checkpoints" / "best.pt", run / "metrics.csv", run / "report.html",
                 work / "out" / "model.mabe", work / "out" / "fit" / "thresholds.json"]:
        assert path.is_file(), path
    assert len(pd.read_csv(run / "metrics.csv")) == 2
    # The test submission is valid against the test metadata (known videos, listed triples only).
    sub = pd.read_csv(work / "out" / "submission.csv")
    submit.validate_submission(sub, work / "data" / "test.csv")
    # The validation score printed by `mabe score` is the metric's value on the written files.
    printed = float(next(line for line in out.splitlines()[::-1] if line.startswith("score: ")).split()[1])
    expected = metric.score(metric.load_solution(work / "out" / "val_solution.csv"),
                            metric.read_submission(work / "out" / "val_submission.csv")).final
    assert abs(printed - expected) < 1e-6
