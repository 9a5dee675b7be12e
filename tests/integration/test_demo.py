"""The README's main job end to end (shortened): every artefact it promises exists and is valid."""

from __future__ import annotations

import argparse

import pandas as pd
import yaml

from mabe import cli, demo, metric, predictions, submit


def test_demo_pipeline_writes_valid_submission_and_scores(tmp_path, capsys):
    cfg = yaml.safe_load(demo.DEMO_CONFIG.read_text())
    cfg["train"].update(epochs=2, steps_per_epoch=10)
    config = tmp_path / "short.yaml"
    config.write_text(yaml.safe_dump(cfg))
    args = argparse.Namespace(workdir=tmp_path / "work", config=config, seed=3, fresh=False, preset="tiny")

    assert demo.run_demo(args, cli.main) == 0

    out = capsys.readouterr().out
    work = tmp_path / "work"
    run = work / "runs" / "demo"
    for path in [run / "checkpoints" / "best.pt", run / "metrics.csv", run / "report.html",
                 work / "out" / "model.mabe", work / "out" / "fit" / "thresholds.json",
                 work / "out" / "network_submission.csv", work / "out" / "gbdt" / "oof_predictions.npz"]:
        assert path.is_file(), path
    assert len(pd.read_csv(run / "metrics.csv")) == 2
    # Both test submissions are valid against the test metadata (known videos, listed triples only);
    # submission.csv is the gbdt recipe's own.
    for name in ("submission.csv", "network_submission.csv"):
        submit.validate_submission(pd.read_csv(work / "out" / name), work / "data" / "test.csv")
    assert (work / "out" / "submission.csv").read_bytes() == (work / "out" / "gbdt" / "submission.csv").read_bytes()
    # The summary's scores are the metric's values on the written files, both on the network's
    # validation videos only (the solution holds no other video).
    solution = metric.load_solution(work / "out" / "val_solution.csv")
    val_videos = {str(v) for v in predictions.load(work / "runs" / "demo" / "eval" / "val_predictions.npz").video_id}
    assert set(solution["video_id"].astype(str)) <= val_videos
    summary = next(line for line in out.splitlines()[::-1] if line.startswith("competition score on the"))
    assert f"the {len(val_videos)} validation videos" in summary
    for family, sub in (("gbdt", "gbdt_val_submission.csv"), ("network", "val_submission.csv")):
        expected = metric.score(solution, metric.read_submission(work / "out" / sub)).final
        printed = float(summary.split(f"{family} ")[1].split(",")[0].split(";")[0])
        assert abs(printed - expected) < 5e-4, (family, printed, expected)
