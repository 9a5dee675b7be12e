"""report.py on fake run directories (pair and scene mode): every figure written, decodable, not blank."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import yaml

from mabe import report

PAIR_ACTIONS = ["approach", "attack", "mount", "rear", "sniff"]
SCENE_CLASSES = ["none", "investigation", "mount", "aggression"]
METRICS_HEADER = ("epoch,phase,lr,loss,val_loss,val_f1,val_acc,val_score,epoch_time_s,windows_per_s,"
                  "skipped_steps")


# ----------------------------------------------------------------------------- fake run directories


def _bouts(rng: np.random.Generator, n_frames: int, n_bouts: int) -> np.ndarray:
    y = np.zeros(n_frames, dtype=np.uint8)
    for _ in range(n_bouts):
        start = int(rng.integers(0, n_frames - 70))
        y[start:start + int(rng.integers(10, 60))] = 1
    return y


def _fake_pair_predictions(rng: np.random.Generator) -> dict[str, np.ndarray]:
    """2 labs x 2 videos x 4 ordered pairs (incl. self); model: late by 5 frames, noisy, misses attack."""
    probs, labels, offsets, video, lab, agent, target, fps, labeled = [], [], [0], [], [], [], [], [], []
    for lab_id, lab_fps, n_frames in [("LabA", 30.0, 900), ("LabB", 25.0, 600)]:
        for v in range(2):
            video_id = 1000 * (1 + (lab_id == "LabB")) + v
            for a, t in [(1, 2), (2, 1), (1, 1), (2, 2)]:
                lab_mask = np.array([a != t, a != t and lab_id == "LabA", a != t, a == t, a != t])
                y = np.zeros((n_frames, len(PAIR_ACTIONS)), dtype=np.uint8)
                for c in np.flatnonzero(lab_mask):
                    y[:, c] = _bouts(rng, n_frames, int(rng.integers(1, 5)))
                late = np.roll(y, 5, axis=0).astype(np.float32)
                late[:, 1] *= 0.2  # blind to attack
                p = np.clip(0.8 * late + 0.25 * rng.random(late.shape), 0, 1)
                probs.append(p.astype(np.float16))
                labels.append(y)
                offsets.append(offsets[-1] + n_frames)
                video.append(video_id)
                lab.append(lab_id)
                agent.append(a)
                target.append(t)
                fps.append(lab_fps)
                labeled.append(lab_mask)
    return {
        "probs": np.concatenate(probs), "labels": np.concatenate(labels),
        "offsets": np.asarray(offsets, dtype=np.int64), "video_id": np.asarray(video, dtype=np.int64),
        "lab_id": np.asarray(lab, dtype=str), "agent_id": np.asarray(agent, dtype=np.int8),
        "target_id": np.asarray(target, dtype=np.int8), "actions": np.asarray(PAIR_ACTIONS, dtype=str),
        "labeled": np.asarray(labeled, dtype=bool), "fps": np.asarray(fps, dtype=np.float64),
    }


def _fake_scene_predictions(rng: np.random.Generator) -> dict[str, np.ndarray]:
    """3 videos, one track each, 4 mutually exclusive classes (one-hot labels, softmax probs)."""
    probs, labels, offsets = [], [], [0]
    n_videos, n_frames, n_cls = 3, 800, len(SCENE_CLASSES)
    for _ in range(n_videos):
        cls = np.zeros(n_frames, dtype=np.int64)
        for c in (1, 1, 2, 3):
            b = _bouts(rng, n_frames, 2).astype(bool)
            cls[b] = c
        onehot = np.eye(n_cls, dtype=np.uint8)[cls]
        logits = 3.0 * np.roll(onehot, 4, axis=0) + rng.normal(0, 1.0, (n_frames, n_cls))
        e = np.exp(logits - logits.max(axis=1, keepdims=True))
        probs.append((e / e.sum(axis=1, keepdims=True)).astype(np.float16))
        labels.append(onehot)
        offsets.append(offsets[-1] + n_frames)
    return {
        "probs": np.concatenate(probs), "labels": np.concatenate(labels),
        "offsets": np.asarray(offsets, dtype=np.int64), "video_id": np.arange(n_videos, dtype=np.int64) + 7,
        "lab_id": np.asarray(["LabA", "LabA", "LabC"], dtype=str), "agent_id": np.zeros(n_videos, dtype=np.int8),
        "target_id": np.zeros(n_videos, dtype=np.int8), "actions": np.asarray(SCENE_CLASSES, dtype=str),
        "labeled": np.ones((n_videos, n_cls), dtype=bool), "fps": np.full(n_videos, 30.0),
    }


def _fake_val_metrics(rng: np.random.Generator, mode: str, per_lab: bool) -> dict:
    """eval/val_metrics.json as mabe.evaluate writes it (its one layout)."""
    names = PAIR_ACTIONS + ["freeze"] if mode == "pair" else SCENE_CLASSES  # freeze: never labelled nor predicted
    n = len(names)
    tp = rng.integers(50, 500, n).astype(float)
    fp = rng.integers(0, 300, n).astype(float)
    fn = rng.integers(0, 300, n).astype(float)
    if mode == "pair":
        tp[-1] = fp[-1] = fn[-1] = 0.0
    prec = np.divide(tp, tp + fp, out=np.zeros(n), where=(tp + fp) > 0)
    rec = np.divide(tp, tp + fn, out=np.zeros(n), where=(tp + fn) > 0)
    f1 = np.divide(2 * tp, 2 * tp + fp + fn, out=np.zeros(n), where=(2 * tp + fp + fn) > 0)
    vm = {"accuracy": 0.97, "f1_macro": float(f1[:-1].mean()), "names": names, "precision": prec.tolist(),
          "recall": rec.tolist(), "f1": f1.tolist(), "support": (tp + fn).tolist(), "mode": mode,
          "score": 0.43 if mode == "pair" else None, "checkpoint": "runs/x/checkpoints/best.pt"}
    if mode == "pair":
        vm.update(n_cells=12345, labelled_frames=[1000] * n, tp=tp.tolist(), fp=fp.tolist(), fn=fn.tolist())
    else:
        vm.update(n_frames=2400, confusion=rng.integers(0, 300, (n, n)).tolist())
    if per_lab:
        vm["per_lab"] = {lab: {"f1_macro": v, "accuracy": 0.9, "f1": f1.tolist()}
                         for lab, v in [("LabA", 0.38), ("LabB", 0.47), ("LabC", 0.2)]}
    return vm


def make_fake_run(root: Path, name: str = "fake", mode: str = "pair", epochs: int = 8, *, metrics: bool = True,
                  val_metrics: bool = True, predictions: bool = True, per_lab_in_metrics: bool = True,
                  seed: int = 0) -> Path:
    """A run directory as train.py writes it (docs/design.md), with plausible numbers."""
    rng = np.random.default_rng(seed)
    run_dir = root / name
    (run_dir / "eval").mkdir(parents=True)
    cfg = {"data": "demo/data", "task": {"mode": mode}, "model": {"name": "conv1d_bilstm"},
           "train": {"epochs": epochs, "batch_size": 384, "lr": 4e-4, "precision": "auto", "device": "auto"},
           "windows": {"sequence_length": 100}}
    (run_dir / "config.yaml").write_text(yaml.safe_dump(cfg))
    best = 0
    if metrics:
        lines = [METRICS_HEADER]
        f1s = []
        for e in range(1, epochs + 1):
            phase = "warmup" if e <= 3 else "train"
            lr = 4e-4 * e / 3 if e <= 3 else 4e-4 * (0.5 if e > 6 else 1)
            f1 = 0.2 + 0.3 * (1 - np.exp(-e / 3)) + 0.01 * rng.standard_normal()
            f1s.append(f1)
            score = f"{f1 - 0.05:.4f}" if mode == "pair" else ""
            lines.append(f"{e},{phase},{lr:.6g},{1 / e + 0.2:.4f},{1 / e + 0.25:.4f},{f1:.4f},{0.95:.4f},{score},"
                         f"{50 + rng.random():.2f},{7000 + 500 * rng.random():.1f},0")
        (run_dir / "metrics.csv").write_text("\n".join(lines) + "\n")
        best = int(np.argmax(f1s)) + 1
        best_f1 = round(float(max(f1s)), 4)
    status = {"state": "finished", "pid": None, "epoch": epochs, "epochs": epochs, "device": "cuda:0 (NVIDIA H100)",
              "started": "2025-01-01T10:00:00", "updated": "2025-01-01T11:00:00", "message": "done"}
    if best:
        status.update(best_f1=best_f1, best_epoch=best)
    (run_dir / "status.json").write_text(json.dumps(status))
    if val_metrics:
        vm = _fake_val_metrics(rng, mode, per_lab_in_metrics)
        (run_dir / "eval" / "val_metrics.json").write_text(json.dumps(vm))
    if predictions:
        arrays = _fake_pair_predictions(rng) if mode == "pair" else _fake_scene_predictions(rng)
        np.savez(run_dir / "eval" / "val_predictions.npz", **arrays)
    return run_dir


# ----------------------------------------------------------------------------- checks


def _image(path: Path) -> np.ndarray:
    from PIL import Image

    with Image.open(path) as im:
        assert im.format == "PNG", path
        return np.asarray(im.convert("RGB"), dtype=np.float32) / 255.0


def _assert_figure(path: Path, min_coloured: float = 0.003) -> None:
    """Decodes as a PNG of sensible size, is not blank, and shows coloured marks (not only axes and text)."""
    img = _image(path)
    h, w, _ = img.shape
    assert w >= 400 and h >= 250, (path.name, img.shape)
    assert img.std() > 0.03, f"{path.name} looks blank"
    rgb = (img * 255).astype(np.uint32)
    assert len(np.unique(rgb[..., 0] << 16 | rgb[..., 1] << 8 | rgb[..., 2])) > 20, path.name
    saturation = img.max(axis=2) - img.min(axis=2)  # greys, black and white have none
    assert (saturation > 0.25).mean() > min_coloured, f"{path.name}: no data drawn"


def _referenced(html_text: str) -> set[str]:
    return set(re.findall(r'<img src="figures/([^"]+)"', html_text))


@pytest.mark.parametrize("mode", ["pair", "scene"])
def test_full_report(tmp_path, mode):
    run_dir = make_fake_run(tmp_path / "runs", mode=mode)
    out = report.write_report(run_dir)
    assert out == run_dir / "report.html" and out.is_file()
    text = out.read_text()

    expected = {"curves.png", "throughput.png", "per_class.png", "per_lab.png", "ethogram_0.png", "ethogram_1.png",
                "ethogram_2.png"}
    if mode == "pair":
        expected.add("ethogram_3.png")  # 4 videos; scene has 3
    if mode == "scene":
        expected.add("confusion.png")
    written = {p.name for p in (run_dir / "figures").glob("*.png")}
    assert written == expected
    assert _referenced(text) == expected
    for name in sorted(expected):
        _assert_figure(run_dir / "figures" / name)

    assert "<h1>Run fake</h1>" in text
    assert "conv1d_bilstm" in text and "cuda:0 (NVIDIA H100)" in text  # config summary, device
    status = json.loads((run_dir / "status.json").read_text())
    assert f"{status['best_f1']:.4f} (epoch {status['best_epoch']})" in text
    assert "val_metrics: f1_macro" in text and "last epoch: windows_per_s" in text
    if mode == "pair":
        assert "not available: pair mode" in text  # no confusion matrix for multi-label
        # evaluate's per_lab holds frame macro F1, not the competition score: computed from predictions first
        assert "bars: competition-style score, from val_predictions.npz" in text
    else:
        assert "not available" not in text
        assert "bars: macro F1 over classes except none" in text
    assert "then: frame f1_macro (val_metrics.json)" in text


def test_report_by_name_and_rewrite_drops_stale_figures(tmp_path):
    root = tmp_path / "runs"
    run_dir = make_fake_run(root, name="exp1")
    assert report.write_report("exp1", runs_root=root) == run_dir / "report.html"
    assert (run_dir / "figures" / "ethogram_0.png").is_file()
    (run_dir / "eval" / "val_predictions.npz").unlink()
    report.write_report(run_dir)
    assert not list((run_dir / "figures").glob("ethogram_*.png"))
    assert "not available: no eval/val_predictions.npz yet" in (run_dir / "report.html").read_text()


def test_missing_inputs_say_not_available(tmp_path):
    run_dir = make_fake_run(tmp_path, name="early", metrics=False, val_metrics=False, predictions=False)
    text = report.write_report(run_dir).read_text()
    assert text.count("not available") >= 5
    assert "no metrics.csv yet" in text and "no eval/val_predictions.npz yet" in text
    assert not _referenced(text)

    # a run with only a log: still a page
    bare = tmp_path / "bare"
    bare.mkdir()
    (bare / "log.txt").write_text("starting\n")
    assert "not available" in report.write_report(bare).read_text()


def test_per_class_and_per_lab_fall_back_to_predictions(tmp_path):
    run_dir = make_fake_run(tmp_path, name="novm", val_metrics=False)
    text = report.write_report(run_dir).read_text()
    assert "Source: val_predictions.npz at p" in text  # per-action bars
    assert "bars: competition-style score, from val_predictions.npz" in text and "then:" not in text  # per-lab
    for name in ("per_class.png", "per_lab.png"):
        _assert_figure(run_dir / "figures" / name)


def test_corrupt_predictions_do_not_crash(tmp_path):
    run_dir = make_fake_run(tmp_path, name="bad")
    (run_dir / "eval" / "val_predictions.npz").write_bytes(b"not a zip")
    text = report.write_report(run_dir).read_text()
    assert "unreadable" in text and "curves.png" in text


# ----------------------------------------------------------------------------- helpers


def test_run_lengths():
    starts, stops = report.run_lengths(np.array([1, 1, 0, 0, 1, 0, 1, 1, 1], dtype=bool))
    assert starts.tolist() == [0, 4, 6] and stops.tolist() == [2, 5, 9]
    s, e = report.run_lengths(np.zeros(5, dtype=bool))
    assert len(s) == len(e) == 0


def _preds(**kw):
    from types import SimpleNamespace

    return SimpleNamespace(**kw)


def test_per_lab_from_predictions_follows_the_metric():
    # lab X: one track, actions a (perfect) and b (labelled, never true, predicted on 2 frames -> F1 0)
    # lab Y: one track, action a half found: TP 2, FN 2 -> F1 2*2/(4+0+2) = 2/3; b labelled, absent -> unscored
    acts = np.array(["a", "b"])
    y_x = np.array([[1, 0], [1, 0], [0, 0], [0, 0]], dtype=np.uint8)
    p_x = np.array([[0.9, 0.8], [0.9, 0.1], [0.1, 0.7], [0.1, 0.1]])
    y_y = np.array([[1, 0], [1, 0], [1, 0], [1, 0], [0, 0]], dtype=np.uint8)
    p_y = np.array([[0.9, 0.0], [0.9, 0.0], [0.1, 0.0], [0.2, 0.0], [0.1, 0.0]])
    # a third track (lab X) whose column a is not labelled: its predictions must be ignored
    y_z = np.zeros((3, 2), dtype=np.uint8)
    p_z = np.array([[0.9, 0.0]] * 3)
    preds = _preds(probs=np.concatenate([p_x, p_y, p_z]).astype(np.float16), labels=np.concatenate([y_x, y_y, y_z]),
                   offsets=np.array([0, 4, 9, 12]), video_id=np.array([1, 2, 1]), lab_id=np.array(["X", "Y", "X"]),
                   agent_id=np.array([1, 1, 2]), target_id=np.array([2, 2, 1]), actions=acts,
                   labeled=np.array([[True, True], [True, True], [False, True]]), fps=np.array([30.0, 30.0, 30.0]))
    df = report.per_lab_from_predictions(preds).set_index("lab")
    assert df.loc["X", "score"] == pytest.approx(0.5)  # mean(F1 a = 1, F1 b = 0)
    assert df.loc["Y", "score"] == pytest.approx(2 / 3)
    assert df.loc["X", "n_frames"] == 4 and df.loc["Y", "n_frames"] == 5  # video 1 counted once
    assert df.loc["X", "n_actions"] == 2 and df.loc["Y", "n_actions"] == 1
    per_action = report.per_action_from_predictions(preds).set_index("name")
    assert per_action.loc["a", "support"] == 6 and per_action.loc["a", "precision"] == pytest.approx(1.0)
    assert per_action.loc["a", "recall"] == pytest.approx(4 / 6)


def test_cli_report(tmp_path, capsys):
    from mabe import cli

    run_dir = make_fake_run(tmp_path, name="clirun", predictions=False)
    assert cli.main(["report", str(run_dir)]) == 0
    assert str(run_dir / "report.html") in capsys.readouterr().out


def test_val_metrics_layouts(rng):
    ev = _fake_val_metrics(rng, "pair", True)
    table = report._per_class_table(ev)
    assert list(table["name"]) == PAIR_ACTIONS  # "freeze" (never labelled nor predicted) dropped
    assert table["f1"].tolist() == pytest.approx(ev["f1"][:-1])
    labs, kind = report._per_lab_table(ev)
    assert kind == "f1_macro" and labs.set_index("lab")["score"].to_dict() == {"LabA": 0.38, "LabB": 0.47, "LabC": 0.2}
    assert report._confusion(ev) is None

    sc = _fake_val_metrics(rng, "scene", True)
    cm, names = report._confusion(sc)
    assert names == SCENE_CLASSES and cm.shape == (4, 4)
    assert list(report._per_class_table(sc)["name"]) == SCENE_CLASSES
    assert report._per_lab_table({"per_lab": {"A": {"f1": [0.1, 0.2]}}}) is None
