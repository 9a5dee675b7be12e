"""Whole training runs on a tiny cache, each test pinned to one behaviour that can break silently:
the warmup ramp, the loss the step optimises (class / positive weights, the mixup mask), early
stopping, exact resume of the best model, the non-finite streak, normalisation statistics, the
validation split and the storage dtype. Every test here was seen failing on its break
(docs/testing.md lists them).

Observed through stable outputs (metrics.csv, checkpoints, log.txt, eval/) and two hooks: torch's
global optimizer-step hook (the lr of every optimizer step) and the ``loss_fn`` the trainer hands
to ``training.step.make_train_step`` (the loss the step really optimises).
"""

from __future__ import annotations

import argparse
import csv
import json
import re

import numpy as np
import pytest
import torch
from torch.optim.optimizer import register_optimizer_step_pre_hook

from helpers import make_fake_cache
from mabe import checkpoint as ckpt

# every mabe name these tests use, in one place (the training modules are being reorganised)
from mabe import models, predictions, prepare
from mabe import train as T
from mabe.config import load_config
from mabe.errors import TrainingError
from mabe.evaluate import trackset_for_model, videos_of_split
from mabe.schema import ACTION_INDEX
from mabe.training.batches import DeviceStore
from mabe.training.data import load_tracksets
from mabe.windows import IGNORE_INDEX, norm_stats

TRAIN = T.train
MAIN = T.main_from_args


def _cfg(tmp_path, model=None, **train):
    overrides = {
        "data": str(tmp_path / "data"), "cache": str(tmp_path / "cache"), "runs": str(tmp_path / "runs"),
        "windows": {"sequence_length": 16, "frame_gap": 4, "val_fraction": 0.34},
        "model": {"conv_channels": [8, 8], "lstm_hidden": 8, "lstm_layers": 1, **(model or {})},
        "augment": {"noise_std": 0.01, "temporal_jitter": 2, "mixup_alpha": 0.0},
        "train": {"epochs": 2, "batch_size": 16, "lr": 3e-3, "warmup_epochs": 1.0, "save_freq": 1,
                  "tensorboard": False, "report": False, "plateau_patience": 0, "min_lr": 1e-4,
                  "num_threads": 1, **train},
    }
    return load_config(None, overrides)


def _flat_cfg(tmp_path, **train):
    """A run whose validation F1 is exactly the same every epoch: no BatchNorm statistics to drift,
    no dropout, and an lr so small that float32 weights cannot move (w - 1e-12 rounds to w)."""
    return _cfg(tmp_path, model={"norm": "none", "dropout": 0.0},
                **{"lr": 1e-12, "min_lr": 0.0, "warmup_epochs": 0.0, **train})


@pytest.fixture
def cache(tmp_path):
    return make_fake_cache(tmp_path / "cache")


@pytest.fixture(autouse=True)
def _one_thread(one_torch_thread):
    yield


def _rows(run_dir) -> list[dict]:
    with open(run_dir / "metrics.csv") as f:
        return list(csv.DictReader(f))


def _steps_per_epoch(run_dir) -> int:
    m = re.search(r"micro-batches \((\d+) steps\) per epoch", (run_dir / "log.txt").read_text())
    assert m, "the run log names the optimizer steps per epoch"
    return int(m.group(1))


@pytest.fixture
def step_lrs():
    """The lr of every optimizer step taken while the test runs (torch's global step hook)."""
    lrs: list[float] = []
    handle = register_optimizer_step_pre_hook(
        lambda opt, args, kwargs: lrs.append(float(opt.param_groups[0]["lr"])))
    yield lrs
    handle.remove()


# ----------------------------------------------------------------------------- warmup


@pytest.mark.parametrize("accum", [1, 2])
def test_lr_ramps_linearly_over_the_first_epoch_then_holds_the_base_lr(tmp_path, cache, step_lrs, accum):
    """warmup_epochs 1: step k of epoch 1 runs at base * (k + 1) / n; epoch 2 at the base lr."""
    run = tmp_path / "runs" / f"warm{accum}"
    TRAIN(_cfg(tmp_path, grad_accum=accum, plateau_patience=10), run)  # no plateau cut in epoch 2
    n = _steps_per_epoch(run)
    assert n >= 3 and len(step_lrs) == 2 * n
    base = 3e-3  # lr_scaling none (the default)
    assert step_lrs[:n] == pytest.approx([base * (k + 1) / n for k in range(n)], rel=1e-6)
    assert step_lrs[n:] == pytest.approx([base] * n, rel=1e-6)
    rows = _rows(run)
    assert [r["phase"] for r in rows] == ["warmup", "train"]
    assert [float(r["lr"]) for r in rows] == pytest.approx([base, base], rel=1e-6)


# ----------------------------------------------------------------------------- the loss the step optimises


@pytest.fixture
def step_loss_fn(monkeypatch):
    """The ``loss_fn`` the trainer gives its step (training.step), kept after the run."""
    got = {}
    real = T.make_train_step  # the recipe's name for training.step.make_train_step

    def spy(model, loss_fn, *a, **k):
        got["fn"] = loss_fn
        return real(model, loss_fn, *a, **k)

    monkeypatch.setattr(T, "make_train_step", spy)
    return got


def test_scene_step_loss_is_the_class_weighted_cross_entropy(tmp_path, cache, step_loss_fn):
    """Supersedes test_scene_mode_runs (which only checked that a run finished)."""
    cfg = _cfg(tmp_path, epochs=1)
    cfg.task.mode = "scene"
    cfg.task.class_weights = [1.0, 5.0, 8.0, 3.0]
    run = tmp_path / "runs" / "scene"
    assert TRAIN(cfg, run)["state"] == "finished"
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(3, 7, 4, generator=g)
    y = torch.randint(0, 4, (3, 7), generator=g)
    y[0, :2] = IGNORE_INDEX  # padding
    loss = step_loss_fn["fn"](logits, {"x": torch.zeros(3, 7, 1), "y": y})
    w = torch.tensor(cfg.task.class_weights)
    logp = logits.log_softmax(-1)
    num = den = 0.0
    for b in range(3):  # the weighted mean of -log p(class), by hand
        for t in range(7):
            c = int(y[b, t])
            if c != IGNORE_INDEX:
                num += -w[c] * logp[b, t, c]
                den += w[c]
    assert float(loss) == pytest.approx(float(num / den), rel=1e-5)
    unweighted = torch.nn.functional.cross_entropy(logits.reshape(-1, 4), y.reshape(-1), ignore_index=IGNORE_INDEX)
    assert abs(float(loss) - float(unweighted)) > 1e-3  # the weights matter on this batch
    # the rest of a scene run: a confusion over the 4 classes that counts every validation frame
    metrics = json.loads((run / "eval" / "val_metrics.json").read_text())
    preds = np.load(run / "eval" / "val_predictions.npz")
    assert np.asarray(metrics["confusion"]).shape == (4, 4)
    assert np.asarray(metrics["confusion"]).sum() == int(preds["offsets"][-1])


def _pair_batch(seed=0, B=4, W=6, A=3):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(B, W, A, generator=g, requires_grad=True)
    y = (torch.rand(B, W, A, generator=g) < 0.4).to(torch.uint8)
    mask = torch.rand(B, W, A, generator=g) < 0.6
    return logits, y, mask


def test_pair_step_loss_is_the_pos_weighted_bce_over_labelled_cells(tmp_path, cache, step_loss_fn):
    cfg = _cfg(tmp_path, epochs=1)
    cfg.task.pos_weight = 4.0
    TRAIN(cfg, tmp_path / "runs" / "pw")
    logits, y, mask = _pair_batch()
    loss = step_loss_fn["fn"](logits, {"x": torch.zeros(1), "y": y, "mask": mask})
    p = logits.detach().sigmoid()
    yf = y.float()
    per = -(4.0 * yf * p.log() + (1 - yf) * (1 - p).log())  # BCE with pos_weight 4, by hand
    m = mask.float()
    loss = float(loss.detach())
    assert loss == pytest.approx(float((per * m).sum() / m.sum()), rel=1e-5)
    plain = -(yf * p.log() + (1 - yf) * (1 - p).log())
    assert abs(loss - float((plain * m).sum() / m.sum())) > 1e-2


def test_mixup_loss_counts_only_cells_labelled_in_both_windows(tmp_path, cache, step_loss_fn):
    """Under mixup the loss mask is ``mask & mask[perm]``: a cell unlabelled in either window mixed
    has no target, so it gets no gradient; the value is the BCE against the mixed targets."""
    cfg = _cfg(tmp_path, epochs=1)
    cfg.augment.mixup_alpha = 0.4
    cfg.task.pos_weight = "none"
    TRAIN(cfg, tmp_path / "runs" / "mix")
    logits, y, mask = _pair_batch(1)
    perm = torch.tensor([2, 0, 3, 1])
    lam = 0.3
    loss = step_loss_fn["fn"](logits, {"x": torch.zeros(1), "y": y, "mask": mask, "mix_lam": lam, "mix_perm": perm})
    (grad,) = torch.autograd.grad(loss, logits)
    both = mask & mask[perm]
    assert both.sum() < mask.sum()  # the batch has cells labelled in one window only
    assert (grad[~both] == 0).all() and (grad[both] != 0).all()
    target = lam * y.float() + (1 - lam) * y[perm].float()
    ref = torch.nn.functional.binary_cross_entropy_with_logits(logits.detach()[both], target[both])
    assert float(loss.detach()) == pytest.approx(float(ref), rel=1e-5)


# ----------------------------------------------------------------------------- early stopping, exact resume


def test_flat_f1_with_patience_1_stops_after_exactly_two_epochs(tmp_path, cache):
    run = tmp_path / "runs" / "flat"
    out = TRAIN(_flat_cfg(tmp_path, epochs=6, early_stopping_patience=1), run)
    rows = _rows(run)
    assert len({r["val_f1"] for r in rows}) == 1  # the premise: the F1 does not move
    assert out["state"] == "early_stopped" and out["epochs"] == 2 and len(rows) == 2
    assert out["best_epoch"] == 1
    assert "early stopping: no better validation F1 for 1 epochs" in (run / "log.txt").read_text()


def test_resume_keeps_the_best_epoch_best_checkpoint_and_final_metrics(tmp_path, cache):
    """A flat-F1 run's best epoch is 1: a resume that forgot its best F1 would call epoch 2 the best
    and overwrite best.pt (the old resume tests compared metrics rows and last.pt only)."""
    straight_dir, resumed_dir = tmp_path / "runs" / "straight", tmp_path / "runs" / "resumed"
    straight = TRAIN(_flat_cfg(tmp_path, epochs=3), straight_dir)
    assert TRAIN(_flat_cfg(tmp_path, epochs=1), resumed_dir)["state"] == "finished"
    args = argparse.Namespace(config=None, overrides=["train.epochs=3"], data=None, name=None,
                              resume=str(resumed_dir), detach=False, nproc=None)
    assert MAIN(args) == 0
    assert straight["best_epoch"] == 1
    a = ckpt.load(straight_dir / "checkpoints" / "best.pt")
    b = ckpt.load(resumed_dir / "checkpoints" / "best.pt")
    assert a[ckpt.EPOCH_KEY] == b[ckpt.EPOCH_KEY] == 1
    assert a[ckpt.BEST_EPOCH_KEY] == b[ckpt.BEST_EPOCH_KEY] == 1
    assert all(torch.equal(a[ckpt.MODEL_KEY][k], b[ckpt.MODEL_KEY][k]) for k in a[ckpt.MODEL_KEY])
    last = ckpt.load(resumed_dir / "checkpoints" / "last.pt")
    assert last[ckpt.BEST_EPOCH_KEY] == 1 and last[ckpt.EARLY_STOP_KEY] == 2
    for name in ("status.json",):
        sa, sb = (json.loads((d / name).read_text()) for d in (straight_dir, resumed_dir))
        assert (sa["best_epoch"], sa["best_f1"]) == (sb["best_epoch"], sb["best_f1"]) == (1, straight["best_f1"])
    ma, mb = (json.loads((d / "eval" / "val_metrics.json").read_text()) for d in (straight_dir, resumed_dir))
    ma.pop("checkpoint"), mb.pop("checkpoint")
    assert ma == mb


def test_resume_of_a_learning_run_ends_with_the_same_best_model(tmp_path, cache):
    """Supersedes the part of test_run_writes_its_files_and_resume_equals_uninterrupted that never
    looked at best.pt: best model, best epoch and final validation metrics equal the straight run's."""
    straight_dir, resumed_dir = tmp_path / "runs" / "straight", tmp_path / "runs" / "resumed"
    straight = TRAIN(_cfg(tmp_path, epochs=3), straight_dir)
    TRAIN(_cfg(tmp_path, epochs=2), resumed_dir)
    assert TRAIN(_cfg(tmp_path, epochs=3), resumed_dir, resume=True)["best_epoch"] == straight["best_epoch"]
    a = ckpt.load(straight_dir / "checkpoints" / "best.pt")[ckpt.MODEL_KEY]
    b = ckpt.load(resumed_dir / "checkpoints" / "best.pt")[ckpt.MODEL_KEY]
    assert all(torch.equal(a[k], b[k]) for k in a)
    ma, mb = (json.loads((d / "eval" / "val_metrics.json").read_text()) for d in (straight_dir, resumed_dir))
    ma.pop("checkpoint"), mb.pop("checkpoint")
    assert ma == mb


# ----------------------------------------------------------------------------- non-finite steps


def _nan_on_training_forwards(monkeypatch, bad_calls: set[int]) -> None:
    """The model's output is NaN on the given training-mode forward calls (1-based)."""
    real = models.create
    calls = {"n": 0}

    def create(*a, **k):
        m = real(*a, **k)

        def hook(mod, inp, out):
            if not mod.training:
                return out
            calls["n"] += 1
            return out * float("nan") if calls["n"] in bad_calls else out

        m.register_forward_hook(hook)
        return m

    monkeypatch.setattr(models, "create", create)


@pytest.mark.parametrize("accum", [1, 2])
def test_non_consecutive_nonfinite_steps_do_not_add_up_to_a_streak(tmp_path, cache, monkeypatch, accum):
    """Three bad optimizer steps, never two in a row, with max_nonfinite_steps 3: the run finishes
    with the three steps skipped; three in a row stop it."""
    bad_steps = [0, 2, 4]
    _nan_on_training_forwards(monkeypatch, {s * accum + 1 for s in bad_steps})
    run = tmp_path / "runs" / f"spaced{accum}"
    out = TRAIN(_cfg(tmp_path, epochs=2, grad_accum=accum, max_nonfinite_steps=3), run)
    assert out["state"] == "finished"
    assert sum(int(r["skipped_steps"]) for r in _rows(run)) == 3
    _nan_on_training_forwards(monkeypatch, {s * accum + 1 for s in (1, 2, 3)})
    with pytest.raises(TrainingError, match="3 optimizer steps in a row"):
        TRAIN(_cfg(tmp_path, epochs=2, grad_accum=accum, max_nonfinite_steps=3), tmp_path / "runs" / f"row{accum}")


# ----------------------------------------------------------------------------- data: statistics, split, storage


def _video_ids(npz_path) -> set[int]:
    return set(predictions.load(npz_path).video_id.tolist())


def test_normalisation_statistics_come_from_the_training_videos_only(tmp_path, cache):
    cfg = _cfg(tmp_path, epochs=1)
    run = tmp_path / "runs" / "norm"
    TRAIN(cfg, run)
    state = ckpt.load(run / "checkpoints" / "last.pt")
    _, index = prepare.open_cache(cache)
    every = set(index["video_id"].tolist())
    val = _video_ids(run / "eval" / "val_predictions.npz")  # the videos the run validated on
    train_videos = sorted(every - val)
    assert val and train_videos
    actions = list(state[ckpt.OUTPUTS_KEY])
    cols = [ACTION_INDEX[a] for a in actions]

    def features(videos):  # the labelled pair tracks' whole-video numpy features (prepare.load_video)
        rows = index[index.video_id.isin(videos)][["lab_id", "video_id"]].drop_duplicates()
        vs = [prepare.load_video(cache, lab, vid) for lab, vid in rows.itertuples(index=False)]
        return np.concatenate([v["pair"][p] for v in vs for p in range(len(v["pair"])) if v["labeled"][p, cols].any()])

    expect = norm_stats(features(train_videos))
    other = norm_stats(features(sorted(val)))
    for k, v in state[ckpt.NORM_KEY].items():
        np.testing.assert_allclose(v.numpy(), expect[k], rtol=1e-5, atol=1e-6)
        assert not np.allclose(v.numpy(), other[k], rtol=1e-3)  # the test can tell them apart


def test_evaluation_reads_the_runs_validation_videos_disjoint_from_training(tmp_path, cache):
    cfg = _cfg(tmp_path, epochs=1)
    run = tmp_path / "runs" / "split"
    TRAIN(cfg, run)
    run_val = _video_ids(run / "eval" / "val_predictions.npz")
    _, index = prepare.open_cache(cache)
    val = set(videos_of_split(index, cfg, "val").tolist())
    train_videos = set(videos_of_split(index, cfg, "train").tolist())
    assert val == run_val
    assert not (val & train_videos) and val | train_videos == set(index["video_id"].tolist())
    state = ckpt.load(run / "checkpoints" / "best.pt")
    meta = {"config": cfg, "mode": state[ckpt.MODE_KEY], "outputs": state[ckpt.OUTPUTS_KEY],
            "norm": {k: v.numpy() for k, v in state[ckpt.NORM_KEY].items()}}
    ts = trackset_for_model(meta, cfg.data, "val")
    assert set(ts.video_id.tolist()) == run_val


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_the_trainer_stores_features_in_the_configured_dtype(tmp_path, cache, dtype):
    """Features computed once into host memory (the CPU default when they fit) are stored in storage_dtype."""
    run = tmp_path / "runs" / dtype
    TRAIN(_cfg(tmp_path, epochs=1, storage_dtype=dtype), run)
    log = (run / "log.txt").read_text()
    assert f"({dtype} features;" in log and "computed once into host memory" in log
    err = float(re.search(r"max round-trip error ([0-9.e+-]+)\)", log).group(1))
    assert err > 0


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_the_trainer_hands_per_batch_features_over_in_the_configured_dtype(tmp_path, cache, dtype):
    """Features per batch from the int16 positions (issue 13) come in storage_dtype."""
    run = tmp_path / "runs" / dtype
    TRAIN(_cfg(tmp_path, epochs=1, storage_dtype=dtype, features_in_memory="never"), run)
    log = (run / "log.txt").read_text()
    assert "int16 positions of" in log and f"; {dtype} features computed per batch;" in log
    cfg = _cfg(tmp_path, epochs=1, storage_dtype=dtype, features_in_memory="never")
    train_ts, _, _ = load_tracksets(cfg, say=lambda _: None)
    store = DeviceStore(train_ts, "cpu", dtype)
    assert store.batch(np.array([[0, 0], [1, 3]]), 16)["x"].dtype == getattr(torch, dtype)


def test_lab_conditioning_feeds_the_lab_to_the_model_and_zeroes_an_unseen_lab(tmp_path, cache):
    cfg = _cfg(tmp_path, epochs=1, model={"lab_conditioning": True})
    run = tmp_path / "runs" / "labs"
    TRAIN(cfg, run)
    state = ckpt.load(run / "checkpoints" / "best.pt")
    assert state[ckpt.LABS_KEY] == ["Lab0", "Lab1"]
    assert state[ckpt.IN_FEATURES_KEY] == 90 + 2 + 1  # pair features + one column per lab + the fps
    model, meta = ckpt.load_for_inference(run)
    assert meta["labs"] == ["Lab0", "Lab1"]
    ts = trackset_for_model(meta, cfg.data, "val")
    arrays = ts.tensors()
    w = torch.tensor([[t, 0] for t in range(ts.n_tracks)])
    b = ts.batch(arrays, w, 16)
    lab_cols = b["x"][:, :, 90:92]
    want = torch.tensor([[lab == "Lab0", lab == "Lab1"] for lab in ts.lab_id], dtype=torch.float32)
    assert torch.equal(lab_cols[:, 0], want) and torch.equal(lab_cols, want[:, None, :].expand_as(lab_cols))
    assert torch.equal(b["x"][:, :, 92], torch.zeros(len(w), 16))  # log2(30 / 30)
    # the lab input reaches the model: the same frames read as the other lab predict differently
    other = b["x"].clone()
    other[:, :, 90:92] = other[:, :, 90:92].flip(-1)
    with torch.no_grad():
        assert not torch.allclose(model(b["x"]), model(other))
    # a lab the model was not trained on: said, and its lab columns are all zero (the fps column stays)
    meta["labs"] = ["Lab0"]
    meta["in_features"] = 90 + 1 + 1
    with pytest.warns(UserWarning, match=r"lab\(s\) Lab1 were not among the model's training labs \(Lab0\): "
                                         r"predicted with all-zero lab columns"):
        ts1 = trackset_for_model(meta, cfg.data, "val")
    x1 = ts1.batch(ts1.tensors(), w, 16)["x"]
    seen = torch.from_numpy(ts1.lab_id == "Lab0")
    assert (x1[~seen][:, :, 90] == 0).all() and (x1[seen][:, :, 90] == 1).all()
    assert ts1.n_features == 92 and ts1.unseen_labs == ["Lab1"]
