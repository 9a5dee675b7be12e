"""train.py: schedule, losses, one step, and whole runs on a tiny cache (files, resume, stop, NaN)."""

from __future__ import annotations

import argparse
import json
import os
import signal

import numpy as np
import pytest
import torch

from helpers import metric_rows as _rows
from helpers import tiny_run
from mabe import checkpoint as ckpt
from mabe import models, predictions
from mabe import train as T
from mabe.config import Config, load_config
from mabe.errors import TrainingError

torch.set_num_threads(1)


# ----------------------------------------------------------------------------- whole runs


def _cfg(tmp_path, **train) -> Config:
    return load_config(None, tiny_run(tmp_path, train=train))


@pytest.fixture
def cache(fake_cache):
    return fake_cache


def _sigterm_at_micro(monkeypatch, n: int):
    """Make the recipe receive SIGTERM while augmenting micro-batch ``n`` (1-based); returns the real augment
    (set it back before resuming)."""
    calls = {"n": 0}
    real = T.augment

    def augment_then_signal(*a, **k):
        calls["n"] += 1
        if calls["n"] == n:
            os.kill(os.getpid(), signal.SIGTERM)
        return real(*a, **k)

    monkeypatch.setattr(T, "augment", augment_then_signal)
    return real


def test_features_per_batch_train_as_features_computed_once(tmp_path, cache):
    """The two ways of serving the same features (per batch from positions, the default on a GPU or for
    large sets; once into host memory, the CPU default) give the same run, epoch for epoch, resume included:
    float32 in memory the same numbers, float16 (the CPU's when float32 would not fit) the same losses within
    its rounding."""
    once = T.train(_cfg(tmp_path, epochs=2, features_in_memory="always", storage_dtype="float32"),
                   tmp_path / "runs" / "once")
    half = T.train(_cfg(tmp_path, epochs=2, features_in_memory="always", storage_dtype="float16"),
                   tmp_path / "runs" / "half")
    per = T.train(_cfg(tmp_path, epochs=2, features_in_memory="never"), tmp_path / "runs" / "per")
    assert once["state"] == per["state"] == half["state"] == "finished"
    assert "computed per batch" in (tmp_path / "runs" / "per" / "log.txt").read_text()
    assert "MiB float16, max rounding" in (tmp_path / "runs" / "half" / "log.txt").read_text()
    a, b = _rows(tmp_path / "runs" / "once"), _rows(tmp_path / "runs" / "per")
    for ra, rb in zip(a, b, strict=True):
        for k in ("loss", "val_loss", "val_f1", "val_acc"):
            assert float(ra[k]) == pytest.approx(float(rb[k]), rel=1e-4, abs=1e-5), (k, ra, rb)
    for ra, rb in zip(_rows(tmp_path / "runs" / "half"), b, strict=True):  # thresholded F1 may flip a frame
        for k in ("loss", "val_loss"):
            assert float(ra[k]) == pytest.approx(float(rb[k]), rel=1e-3), (k, ra, rb)
    args = argparse.Namespace(config=None, overrides=["train.epochs=3"], data=None, name=None,
                              resume=str(tmp_path / "runs" / "per"), detach=False, nproc=None)
    assert T.main_from_args(args) == 0
    assert len(_rows(tmp_path / "runs" / "per")) == 3


def test_run_writes_its_files_and_resume_equals_uninterrupted(tmp_path, cache):
    straight = T.train(_cfg(tmp_path), tmp_path / "runs" / "straight")
    run = tmp_path / "runs" / "straight"
    assert straight["state"] == "finished" and straight["best_epoch"] >= 1
    for f in ("config.yaml", "log.txt", "metrics.csv", "status.json", "checkpoints/last.pt",
              "checkpoints/best.pt", "eval/val_metrics.json", "eval/val_predictions.npz"):
        assert (run / f).is_file(), f
    status = json.loads((run / "status.json").read_text())
    assert status["state"] == "finished" and status["epoch"] == 4 and status["best_f1"] == straight["best_f1"]
    rows = _rows(run)
    assert [r["epoch"] for r in rows] == ["1", "2", "3", "4"] and rows[0]["phase"] == "warmup"
    assert all(r["val_f1"] for r in rows) and rows[0]["val_score"] == ""  # no annotations on disk
    assert "Epoch 1/4 (warmup) lr=" in (run / "log.txt").read_text()
    preds = predictions.load(run / "eval" / "val_predictions.npz")
    assert preds.labels is not None and list(preds.actions) == ["attack", "rear", "sniff"]
    metrics = json.loads((run / "eval" / "val_metrics.json").read_text())
    assert metrics["f1_macro"] == pytest.approx(straight["best_f1"], abs=1e-9)

    first = T.train(_cfg(tmp_path, epochs=2), tmp_path / "runs" / "resumed")
    assert first["state"] == "finished"
    args = argparse.Namespace(config=None, overrides=["train.epochs=4"], data=None, name=None,
                              resume=str(tmp_path / "runs" / "resumed"), detach=False, nproc=None)
    assert T.main_from_args(args) == 0
    assert _rows(tmp_path / "runs" / "resumed") == rows
    a = ckpt.load(run / "checkpoints" / "last.pt")[ckpt.MODEL_KEY]
    b = ckpt.load(tmp_path / "runs" / "resumed" / "checkpoints" / "last.pt")[ckpt.MODEL_KEY]
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_sigterm_mid_epoch_stops_cleanly_and_resumes_exactly(tmp_path, cache, monkeypatch):
    cfg = _cfg(tmp_path, epochs=2, grad_accum=2)
    T.train(cfg, tmp_path / "runs" / "ref")
    real = _sigterm_at_micro(monkeypatch, 5)  # mid-epoch 1, inside an accumulation group
    run = tmp_path / "runs" / "stopped"
    out = T.train(cfg, run)
    assert out["state"] == "stopped"
    assert json.loads((run / "status.json").read_text())["state"] == "stopped"
    state = ckpt.load(run / "checkpoints" / "last.pt")
    assert state[ckpt.EPOCH_KEY] == 0 and state[ckpt.BATCH_KEY] == 6  # finished the step (micro 5 and 6)
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL
    monkeypatch.setattr(T, "augment", real)
    T.train(cfg, run, resume=True)
    assert _rows(run) == _rows(tmp_path / "runs" / "ref")


def test_geometric_augmentation_stops_mid_epoch_and_resumes_exactly(tmp_path, cache, monkeypatch):
    """The position draws are functions of (seed, rank, epoch, micro-batch): a run stopped mid-epoch and
    resumed ends with the metrics of an uninterrupted one, and the augmentation did change the run."""
    geo = {"rotate_degrees": 30.0, "reflect": 0.5, "time_stretch": 0.2, "keypoint_dropout": 0.05}
    cfg = load_config(None, tiny_run(tmp_path, train={"epochs": 2}, augment=geo))
    T.train(cfg, tmp_path / "runs" / "ref")
    assert "training features computed per batch" in (tmp_path / "runs" / "ref" / "log.txt").read_text()
    real = _sigterm_at_micro(monkeypatch, 5)
    run = tmp_path / "runs" / "stopped"
    assert T.train(cfg, run)["state"] == "stopped"
    assert ckpt.load(run / "checkpoints" / "last.pt")[ckpt.BATCH_KEY] == 5
    monkeypatch.setattr(T, "augment", real)
    T.train(cfg, run, resume=True)
    assert _rows(run) == _rows(tmp_path / "runs" / "ref")
    T.train(_cfg(tmp_path, epochs=2), tmp_path / "runs" / "plain")
    assert _rows(tmp_path / "runs" / "plain") != _rows(tmp_path / "runs" / "ref")


def test_scene_mode_runs(tmp_path, cache):
    cfg = _cfg(tmp_path, epochs=1)
    cfg.task.mode = "scene"
    cfg.task.class_weights = [1.0, 5.0, 8.0, 8.0]
    out = T.train(cfg, tmp_path / "runs" / "scene")
    metrics = json.loads((tmp_path / "runs" / "scene" / "eval" / "val_metrics.json").read_text())
    assert out["state"] == "finished" and len(metrics["confusion"]) == 4


def test_loader_path_matches_resident_path(tmp_path, cache):
    a = T.train(_cfg(tmp_path, epochs=1), tmp_path / "runs" / "resident")
    b = T.train(_cfg(tmp_path, epochs=1, data_path="loader", num_workers=0), tmp_path / "runs" / "loader")
    assert a["best_f1"] == b["best_f1"]
    assert _rows(tmp_path / "runs" / "resident") == _rows(tmp_path / "runs" / "loader")


def test_non_finite_streak_stops_with_a_training_error(tmp_path, cache, monkeypatch):
    real = models.create

    def nan_model(*a, **k):
        m = real(*a, **k)
        m.register_forward_hook(lambda mod, inp, out: out * float("nan"))
        return m

    monkeypatch.setattr(T.models, "create", nan_model)
    with pytest.raises(TrainingError, match="non-finite"):
        T.train(_cfg(tmp_path, max_nonfinite_steps=3), tmp_path / "runs" / "nan")
    assert json.loads((tmp_path / "runs" / "nan" / "status.json").read_text())["state"] == "failed"


def _poison_call(monkeypatch, n: int) -> None:
    """Make the ``n``-th augmented micro-batch non-finite (NaN in one feature of one frame)."""
    real = T.augment
    calls = {"n": 0}

    def augment_then_poison(*a, **k):
        b, mix = real(*a, **k)
        calls["n"] += 1
        if calls["n"] == n:
            b = dict(b, x=b["x"].clone())
            b["x"][0, 0, 0] = float("nan")
        return b, mix

    monkeypatch.setattr(T, "augment", augment_then_poison)


@pytest.mark.parametrize("accum", [1, 2])
def test_fused_adamw_skips_a_nonfinite_batch_on_the_device(tmp_path, cache, monkeypatch, accum):
    """The fused AdamW runs on the CPU too (the CPU tests exercise the GPU's code) and a non-finite
    batch skips its step on the device through ``found_inf``: a (1,)-shaped flag crashed the fused
    kernel (its step counters are 0-d). grad_accum 1 and 2 run the one step (training.step), 2 accumulating."""
    _poison_call(monkeypatch, 3)
    run = tmp_path / "runs" / f"nan-{accum}"
    out = T.train(_cfg(tmp_path, epochs=2, grad_accum=accum, num_threads=1), run)
    assert out["state"] == "finished"
    rows = _rows(run)
    assert [int(r["skipped_steps"]) for r in rows] == [1, 0]
    assert all(np.isfinite(float(r[k])) for r in rows for k in ("loss", "val_loss", "val_f1"))
    state = ckpt.load(run / "checkpoints" / "last.pt")
    opt = state[ckpt.OPTIMIZER_KEY]
    assert all(g["fused"] for g in opt["param_groups"])
    # every parameter's AdamW step count is one behind the trainer's: the skipped step did not count
    assert {float(s["step"]) for s in opt["state"].values()} == {state[ckpt.STEP_KEY] - 1.0}
    model = state[ckpt.MODEL_KEY]
    assert all(torch.isfinite(v).all() for v in model.values() if v.is_floating_point())  # BatchNorm stats too


def test_sigterm_mid_epoch_resumes_exactly_with_the_shared_step(tmp_path, cache, monkeypatch):
    """grad_accum 1 (the one step, counters on the device): stop after micro-batch 5, resume, same rows."""
    cfg = _cfg(tmp_path, epochs=2)
    T.train(cfg, tmp_path / "runs" / "ref")
    real = _sigterm_at_micro(monkeypatch, 5)
    run = tmp_path / "runs" / "stopped"
    assert T.train(cfg, run)["state"] == "stopped"
    state = ckpt.load(run / "checkpoints" / "last.pt")
    assert state[ckpt.EPOCH_KEY] == 0 and state[ckpt.BATCH_KEY] == 5 and state[ckpt.STEP_KEY] == 5
    assert state[ckpt.EPOCH_STATE_KEY]["n_loss"] == 5
    monkeypatch.setattr(T, "augment", real)
    T.train(cfg, run, resume=True)
    assert _rows(run) == _rows(tmp_path / "runs" / "ref")


# ----------------------------------------------------------------------------- CUDA (opt-in: -m gpu)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_gpu_fast_path_trains_and_gathers_like_numpy(tmp_path, cache):
    from mabe.postracks import load_position_tracks
    from mabe.training.data import track_stats
    from mabe.windows import window_index

    ts = load_position_tracks(cache, Config().task, [1000, 1001], ["attack", "rear", "sniff"])
    ts.norm = track_stats(ts)
    w = torch.from_numpy(window_index(ts.lengths, 16, 3))
    shift = torch.from_numpy(np.random.default_rng(0).integers(-2, 3, len(w)))
    ref = ts.batch(ts.tensors(), w, 16, shift)  # features computed on the CPU ...
    dev = ts.batch(ts.tensors("cuda"), w.cuda(), 16, shift.cuda())  # ... and on the GPU
    for k in ref:
        if k == "x":
            torch.testing.assert_close(dev[k].cpu(), ref[k], rtol=1e-4, atol=1e-3)
        else:
            np.testing.assert_array_equal(ref[k].numpy(), dev[k].cpu().numpy())
    out = T.train(_cfg(tmp_path, epochs=2, device="cuda"), tmp_path / "runs" / "gpu")
    assert out["state"] == "finished" and out["best_f1"] > 0
    rows = _rows(tmp_path / "runs" / "gpu")
    assert all(float(r["loss"]) < 10 and r["skipped_steps"] == "0" for r in rows)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_gpu_trainer_captures_the_step_and_resumes(tmp_path, cache):
    """configs/h100.yaml's path: the step as one CUDA graph (grad_accum 1, no mixup), a capturable
    AdamW whose lr the warmup and plateau change in place, and a resume that keeps it graph-ready."""
    import warnings

    cfg = _cfg(tmp_path, epochs=2, device="cuda", cuda_graphs=True)
    cfg.augment.mixup_alpha = 0.0
    run = tmp_path / "runs" / "graphs"
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message=".*capture of the training step failed")
        assert T.train(cfg, run)["state"] == "finished"
        assert "CUDA graph of the whole step" in (run / "log.txt").read_text()
        args = argparse.Namespace(config=None, overrides=["train.epochs=3"], data=None, name=None,
                                  resume=str(run), detach=False, nproc=None)
        assert T.main_from_args(args) == 0
    rows = _rows(run)
    assert len(rows) == 3 and all(r["skipped_steps"] == "0" and float(r["loss"]) < 10 for r in rows)
    assert float(rows[0]["lr"]) == pytest.approx(3e-3)  # the warmup reached the base rate through set_lr
    state = ckpt.load(run / "checkpoints" / "last.pt")
    assert state[ckpt.EPOCH_KEY] == 3
    assert all(g["fused"] and g["capturable"] for g in state[ckpt.OPTIMIZER_KEY]["param_groups"])


def test_ema_validates_with_the_average_and_resumes_exactly(tmp_path, cache):
    """train.ema_decay: the checkpoint carries the average, inference reads it, a resume continues it."""
    run = tmp_path / "runs" / "ema"
    T.train(_cfg(tmp_path, epochs=3, ema_decay=0.9), run)
    state = ckpt.load(run / "checkpoints" / "last.pt")
    ema = state[ckpt.EMA_KEY]
    assert ema is not None and ema["updates"] == state[ckpt.STEP_KEY] > 0
    assert any(not torch.equal(ema["weights"][k], state[ckpt.MODEL_KEY][k]) for k in ema["weights"])
    model, _ = ckpt.load_for_inference(run / "checkpoints" / "last.pt")
    assert all(torch.equal(v, ema["weights"][k]) for k, v in model.state_dict().items())
    resumed = tmp_path / "runs" / "ema_resumed"
    T.train(_cfg(tmp_path, epochs=1, ema_decay=0.9), resumed)
    T.train(_cfg(tmp_path, epochs=3, ema_decay=0.9), resumed, resume=True)
    assert _rows(resumed) == _rows(run)
    again = ckpt.load(resumed / "checkpoints" / "last.pt")[ckpt.EMA_KEY]
    assert again["updates"] == ema["updates"]
    assert all(torch.equal(again["weights"][k], ema["weights"][k]) for k in ema["weights"])
    # without EMA the rows differ (validation reads the trained weights): the option acts
    T.train(_cfg(tmp_path, epochs=3), tmp_path / "runs" / "plain")
    assert [r["val_loss"] for r in _rows(tmp_path / "runs" / "plain")] != [r["val_loss"] for r in _rows(run)]
    assert ckpt.load(tmp_path / "runs" / "plain" / "checkpoints" / "last.pt")[ckpt.EMA_KEY] is None
