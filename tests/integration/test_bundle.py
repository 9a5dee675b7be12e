"""A lab's own tracking end to end: DLC files + CSV labels -> `mabe import` -> train -> predict ->
`mabe ethogram` (intervals + PNGs) and `mabe bundle` -> an offline, --no-index install in a fresh venv
writes the same submission."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import yaml
from test_packaging import fresh_venv_with_wheel
from test_pose_import import write_dlc_csv

from mabe import cli, data, ethogram, importer, postprocess, predictions, submit

LABS = ("CalMS21_task1", "JovialSwallow")


def _dense(path) -> tuple[np.ndarray, list[str]]:
    """A MABe tracking parquet -> (T, N, K, 2) float64 in its own body-part names, for writing DLC files."""
    df = data.read_tracking_table(path).to_pandas()
    parts = sorted(df["bodypart"].astype(str).unique())
    T, N = int(df["video_frame"].max()) + 1, int(df["mouse_id"].max())
    xy = np.full((T, N, len(parts), 2), np.nan)
    k = df["bodypart"].astype(str).map({p: i for i, p in enumerate(parts)}).to_numpy()
    xy[df["video_frame"].to_numpy(), df["mouse_id"].to_numpy() - 1, k] = df[["x", "y"]].to_numpy(np.float64)
    return xy, parts


@pytest.fixture(scope="module")
def lab_project(tiny_data, tmp_path_factory):
    """Synthetic videos written out as DeepLabCut CSVs + a labels CSV, imported, and a tiny model trained."""
    root = tmp_path_factory.mktemp("lab")
    pose, labels, fps = {"train": [], "test": []}, [], {}
    for split in ("train", "test"):
        meta = data.load_metadata(tiny_data, split)
        for r in meta[meta["lab_id"].isin(LABS)].itertuples():
            xy, parts = _dense(r.tracking_path)
            f = root / "pose" / split / f"{r.lab_id}_{r.video_id}DLC_resnet50_mice.csv"
            f.parent.mkdir(parents=True, exist_ok=True)
            write_dlc_csv(f, xy, np.ones(xy.shape[:3]), individuals=[f"m{i + 1}" for i in range(xy.shape[1])],
                          bodyparts=parts)
            pose[split].append(f)
            fps[split] = r.frames_per_second
            if split == "train" and r.has_annotation:
                a = data.read_annotation(r.annotation_path)
                labels += [{"video": f"{r.lab_id}_{r.video_id}", "agent": f"m{x.agent_id}",
                            "target": "self" if x.agent_id == x.target_id else f"m{x.target_id}",
                            "behaviour": x.action, "start_frame": x.start_frame, "stop_frame": x.stop_frame}
                           for x in a.itertuples()]
    pd.DataFrame(labels).to_csv(root / "labels.csv", index=False)
    dset = root / "data"
    common = ["--out", str(dset), "--pix-per-cm", "10", "--fps", "30", "--lab", "mylab"]
    assert cli.main(["import", *map(str, pose["train"]), *common, "--annotations", str(root / "labels.csv")]) == 0
    assert cli.main(["import", *map(str, pose["test"]), *common, "--split", "test",
                     "--behaviours", "sniff,sniffface,sniffgenital,chase,approach"]) == 0
    cfg = {
        "task": {"mode": "pair"}, "cache": str(root / "cache"), "runs": str(root / "runs"),
        "windows": {"sequence_length": 16, "frame_gap": 4, "val_fraction": 0.34, "eval_stride": 8},
        "model": {"conv_channels": [8], "lstm_hidden": 8, "lstm_layers": 1},
        "train": {"epochs": 1, "steps_per_epoch": 4, "batch_size": 16, "tensorboard": False, "report": False,
                  "num_threads": 1},
    }
    (root / "cfg.yaml").write_text(yaml.safe_dump(cfg))
    assert cli.main(["train", "-c", str(root / "cfg.yaml"), "--data", str(dset), "--name", "lab"]) == 0
    return root


def test_imported_folder_trains_and_predicts(lab_project):
    meta = data.load_metadata(lab_project / "data", "train")
    assert meta["lab_id"].unique().tolist() == ["mylab"] and meta["has_annotation"].all()
    assert (lab_project / "runs" / "lab" / "checkpoints" / "best.pt").is_file()


def test_ethogram_intervals_and_pngs(lab_project, capsys):
    root = lab_project
    preds_path = root / "test_predictions.npz"
    assert cli.main(["predict", str(root / "runs" / "lab"), "--data", str(root / "data"), "--out", str(preds_path)]) == 0
    out = root / "etho"
    assert cli.main(["ethogram", str(preds_path), "--out", str(out), "--data", str(root / "data"),
                     "--set", "postprocess.threshold=0.2"]) == 0
    table = pd.read_csv(out / ethogram.INTERVALS_FILE)
    assert list(table.columns) == list(ethogram.ETHOGRAM_COLUMNS)
    preds = predictions.load(preds_path)
    from mabe.config import load_config

    expected = postprocess.predictions_to_intervals(preds, load_config(None, ["postprocess.threshold=0.2"]).postprocess)
    assert len(table) == len(expected) > 0
    got = table.sort_values(["video_id", "agent_id", "target_id", "start_frame"]).reset_index(drop=True)
    exp = expected.sort_values(["video_id", "agent_id", "target_id", "start_frame"]).reset_index(drop=True)
    np.testing.assert_array_equal(got[["start_frame", "stop_frame"]].to_numpy(), exp[["start_frame", "stop_frame"]])
    np.testing.assert_allclose(got["start_s"], got["start_frame"] / 30.0)
    assert set(got["behaviour"]) <= {"sniff", "sniffface", "sniffgenital", "chase", "approach"}
    src = pd.read_csv(root / "data" / importer.SOURCES_FILE)
    names = dict(zip(src["video_id"], src["video_name"]))
    assert all(n == names[v] for n, v in zip(got["video_name"], got["video_id"]))  # the pose files' names
    animals = {v: json.loads(i) for v, i in zip(src["video_id"], src["individuals"])}
    assert all(a == animals[v][i - 1] for a, v, i in zip(got["agent"], got["video_id"], got["agent_id"]))
    for v, part in table.groupby("video_id"):  # the per-video files split intervals.csv, rows as there
        pd.testing.assert_frame_equal(pd.read_csv(out / f"intervals_mylab_{v}.csv"), part.reset_index(drop=True))
    pngs = sorted(out.glob("ethogram_mylab_*.png"))
    assert len(pngs) == len(set(got["video_id"])) and all(p.stat().st_size > 5000 for p in pngs)


def _bundle(root, tmp_path, runs=("lab",)):
    postprocess.save_thresholds(tmp_path / "thr.json", {("mylab", "sniff"): 0.3})
    bundle = tmp_path / "bundle"
    assert cli.main(["bundle", *(str(root / "runs" / r) for r in runs), "--out", str(bundle), "--thresholds",
                     str(tmp_path / "thr.json")]) == 0
    assert sorted(p.name for p in bundle.iterdir()) == ["config.yaml", "models", "predict_and_submit.py",
                                                         "thresholds.json", "wheels"]
    return bundle


def test_bundle_contents_predict_from_the_working_folder(lab_project, tmp_path, monkeypatch):
    """What predict_and_submit.py runs after its pip step, in this process (the slow test below runs the
    script itself in a fresh venv)."""
    import zipfile

    from mabe import checkpoint

    bundle = _bundle(lab_project, tmp_path, runs=("lab", "lab"))  # an ensemble of two
    (wheel,) = (bundle / "wheels").glob("mabe-*-py3-none-any.whl")
    assert {"mabe/configs/demo.yaml", "mabe/configs/h100.yaml", "mabe/bundle.py"} <= set(zipfile.ZipFile(wheel).namelist())
    models = sorted((bundle / "models").glob("*.mabe"))
    assert [m.name for m in models] == ["00_lab.mabe", "01_lab.mabe"]
    assert all(checkpoint.load(m)[checkpoint.CONFIG_KEY]["cache"] == "mabe_cache" for m in models)
    assert postprocess.load_thresholds(bundle / "thresholds.json") == {("mylab", "sniff"): 0.3}
    compile((bundle / "predict_and_submit.py").read_text(), "predict_and_submit.py", "exec")
    work = tmp_path / "working"
    work.mkdir()
    monkeypatch.chdir(work)
    assert cli.main(["predict", *map(str, models), "--data", str(lab_project / "data"), "--out", "p.npz"]) == 0
    assert (work / "mabe_cache").is_dir()  # relative cache: the working folder, not the training machine's path
    assert cli.main(["submit", "p.npz", "--out", "submission.csv", "-c", str(bundle / "config.yaml"),
                     "--thresholds", str(bundle / "thresholds.json")]) == 0
    submit.validate_submission(pd.read_csv(work / "submission.csv"), data.load_metadata(lab_project / "data", "test"))


@pytest.mark.slow
def test_bundle_runs_offline_in_a_fresh_venv(lab_project, tmp_path):
    """The issue's acceptance check (~40 s on a busy 2-core box): the bundle's own script, pip --no-index
    into a fresh venv, on a MABe-layout test folder, gives the same submission as predict + submit here."""
    root = lab_project
    bundle = _bundle(root, tmp_path)
    # reference: the same models, thresholds and config, in this process
    ref_preds = tmp_path / "ref.npz"
    model = next((bundle / "models").glob("*.mabe"))
    work_ref = tmp_path / "ref_work"
    work_ref.mkdir()
    venv_dir = tmp_path / "v"
    venv_dir.mkdir()
    vbin, env = fresh_venv_with_wheel(venv_dir)  # a clean venv; the bundle installs its own wheel into it
    subprocess.run([str(vbin / "python"), "-m", "pip", "uninstall", "-y", "-q", "mabe"], check=True, env=env,
                   capture_output=True)
    work = tmp_path / "kaggle_working"
    work.mkdir()
    run = subprocess.run([str(vbin / "python"), str(bundle / "predict_and_submit.py"), str(root / "data"),
                          "submission.csv"], cwd=work, env=env, capture_output=True, text=True)
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-2000:]
    assert "--no-index" in run.stdout
    assert (work / "mabe_cache").is_dir()  # the feature cache went to the working folder
    sub = pd.read_csv(work / "submission.csv")
    submit.validate_submission(sub, data.load_metadata(root / "data", "test"))
    # the same submission as predict + submit run here from the bundle's files
    old = os.getcwd()
    os.chdir(work_ref)
    try:
        assert cli.main(["predict", str(model), "--data", str(root / "data"), "--out", str(ref_preds)]) == 0
        assert cli.main(["submit", str(ref_preds), "--out", str(work_ref / "sub.csv"), "-c", str(bundle / "config.yaml"),
                         "--thresholds", str(bundle / "thresholds.json")]) == 0
    finally:
        os.chdir(old)
    pd.testing.assert_frame_equal(sub, pd.read_csv(work_ref / "sub.csv"))


def test_bundle_refuses_a_foreign_folder_and_bad_thresholds(lab_project, tmp_path, capsys):
    (tmp_path / "x").mkdir()
    (tmp_path / "x" / "notes.txt").write_text("mine")
    assert cli.main(["bundle", str(lab_project / "runs" / "lab"), "--out", str(tmp_path / "x")]) == 2
    assert "not a mabe bundle" in capsys.readouterr().err
    (tmp_path / "bad.json").write_text("{")
    assert cli.main(["bundle", str(lab_project / "runs" / "lab"), "--out", str(tmp_path / "y"),
                     "--thresholds", str(tmp_path / "bad.json")]) == 2
    assert not (tmp_path / "y").exists()


def test_ethogram_without_labelled_tracks_says_why(tmp_path, capsys):
    p = predictions.save(tmp_path / "p.npz", np.zeros((4, 37), np.float16), np.array([0, 4]), np.array([1]),
                         np.array(["L"]), np.array([1], np.int8), np.array([2], np.int8),
                         np.array(data.ACTIONS), np.zeros((1, 37), bool), np.array([30.0]))
    assert cli.main(["ethogram", str(p), "--out", str(tmp_path / "e")]) == 2
    assert "behaviors_labeled" in capsys.readouterr().err



def test_ethogram_refuses_a_lab_id_that_is_not_a_plain_name(tmp_path, capsys):
    """lab ids come from the predictions file and become file names: '../x' is refused before any write."""
    probs = np.zeros((40, 37), np.float16)
    probs[5:30, 0] = 1.0
    labeled = np.zeros((1, 37), bool)
    labeled[0, 0] = True
    p = predictions.save(tmp_path / "p.npz", probs, np.array([0, 40]), np.array([1]),
                         np.array(["../../escape"]), np.array([1], np.int8), np.array([2], np.int8),
                         np.array(data.ACTIONS), labeled, np.array([30.0]))
    out = tmp_path / "deep" / "e"
    assert cli.main(["ethogram", str(p), "--out", str(out)]) == 2
    assert "lab_id" in capsys.readouterr().err
    assert not (tmp_path / "escape_1.csv").exists() and not list(out.glob("intervals_*"))

if __name__ == "__main__":
    sys.exit(pytest.main([__file__, "-q"]))
