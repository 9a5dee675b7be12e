"""evaluate.py: metrics against hand-computed values, overlap averaging, predictions files."""

from __future__ import annotations

import argparse

import numpy as np
import pytest
import torch
from torch import nn

from mabe import checkpoint as ckpt
from mabe import models, predictions
from mabe.config import Config, config_to_dict
from mabe.errors import MabeError
from mabe.evaluate import (
    frame_metrics,
    multilabel_metrics,
    predict_from_args,
    predict_tracks,
    trackset_metrics,
)
from mabe.windows import TrackSet, window_index

torch.set_num_threads(1)


def test_frame_metrics_against_a_hand_confusion():
    y_true = np.array([0, 0, 0, 0, 1, 1, 1, 2, 2, 0])
    y_pred = np.array([0, 0, 1, 0, 1, 1, 0, 2, 1, 0])
    m = frame_metrics(y_true, y_pred, 4)
    # rows = truth, columns = prediction
    assert m["confusion"] == [[4, 1, 0, 0], [1, 2, 0, 0], [0, 1, 1, 0], [0, 0, 0, 0]]
    assert m["accuracy"] == pytest.approx(7 / 10)
    p = [4 / 5, 2 / 4, 1 / 1, 0]
    r = [4 / 5, 2 / 3, 1 / 2, 0]
    f1 = [2 * a * b / (a + b) if a + b else 0 for a, b in zip(p, r)]
    np.testing.assert_allclose(m["precision"], p)
    np.testing.assert_allclose(m["recall"], r)
    np.testing.assert_allclose(m["f1"], f1)
    assert m["f1_macro"] == pytest.approx(np.mean(f1[:3]))  # class 3 never occurs: not averaged
    assert m["support"] == [5, 3, 2, 0]


def test_multilabel_metrics_count_labelled_cells_only():
    y = np.array([[1, 0], [1, 1], [0, 1], [0, 0]])
    p = np.array([[1, 1], [0, 1], [0, 1], [1, 1]])
    mask = np.array([[1, 0], [1, 1], [1, 1], [0, 0]], bool)
    m = multilabel_metrics(y, p, mask)
    assert m["tp"] == [1, 2] and m["fp"] == [0, 0] and m["fn"] == [1, 0]
    np.testing.assert_allclose(m["f1"], [2 / 3, 1.0])
    assert m["f1_macro"] == pytest.approx((2 / 3 + 1) / 2)
    assert m["accuracy"] == pytest.approx(4 / 5)


class PositionModel(nn.Module):
    """Logit of (w + 1) / (W + 1) at window position w: overlapping windows give known averages."""

    def __init__(self):
        super().__init__()
        self.dummy = nn.Parameter(torch.zeros(()))

    def forward(self, x):
        B, W, _ = x.shape
        p = (torch.arange(W, dtype=torch.float32) + 1) / (W + 1)
        return torch.logit(p)[None, :, None].expand(B, W, 2) + 0 * self.dummy


def test_predict_averages_overlapping_windows(rng):
    lengths, W, stride = (7, 23, 40), 10, 4
    ts = TrackSet.from_tracks("pair", ["a", "b"], [rng.normal(size=(L, 3)) for L in lengths],
                              [np.zeros((L, 2)) for L in lengths])
    probs = predict_tracks(PositionModel(), ts, batch=3, stride=stride, length=W)
    expected = np.zeros(len(ts.X))
    count = np.zeros(len(ts.X))
    for t, s in window_index(ts.lengths, W, stride):
        lo = ts.offsets[t]
        n = min(W, ts.lengths[t] - s)
        expected[lo + s : lo + s + n] += (np.arange(n) + 1) / (W + 1)
        count[lo + s : lo + s + n] += 1
    assert (count > 0).all()
    np.testing.assert_allclose(probs[:, 0], expected / count, rtol=1e-5)
    np.testing.assert_allclose(probs[:, 1], probs[:, 0])
    # the 7-frame track is one padded window: frame k sees only position k
    np.testing.assert_allclose(probs[:7, 0], (np.arange(7) + 1) / (W + 1), rtol=1e-5)


def test_trackset_metrics_per_lab(rng):
    ys = [np.array([[1, 0]] * 5 + [[0, 0]] * 5), np.array([[0, 1]] * 10)]
    ts = TrackSet.from_tracks("pair", ["a", "b"], [np.zeros((10, 1))] * 2, ys,
                              np.array([[1, 0], [1, 1]], bool), lab_id=["L1", "L2"])
    probs = np.concatenate(ys).astype(np.float32)
    m = trackset_metrics(ts, probs)
    assert m["f1_macro"] == 1.0 and set(m["per_lab"]) == {"L1", "L2"}
    assert m["per_lab"]["L1"]["f1_macro"] == 1.0


N_FEATURES = 90  # the pair features of 18 slots (the fake cache's)


def _write_ckpt(path, mode: str, outputs: list[str]):
    cfg = Config()
    cfg.task.mode = mode
    cfg.model.conv_channels, cfg.model.lstm_hidden = [4], 4
    model = models.create(cfg.model.name, N_FEATURES, len(outputs), cfg.model)
    ckpt.save(path, {
        ckpt.MODEL_KEY: model.state_dict(), ckpt.CONFIG_KEY: config_to_dict(cfg), ckpt.OUTPUTS_KEY: outputs,
        ckpt.MODE_KEY: mode, ckpt.IN_FEATURES_KEY: N_FEATURES, ckpt.N_OUTPUTS_KEY: len(outputs),
        ckpt.NORM_KEY: {"mean": torch.zeros(N_FEATURES), "std": torch.ones(N_FEATURES)},
    })
    return cfg


def test_predict_refuses_scene_models(tmp_path):
    _write_ckpt(tmp_path / "scene.pt", "scene", ["none", "a"])
    args = argparse.Namespace(checkpoints=[str(tmp_path / "scene.pt")], data=tmp_path, split="test",
                              out=tmp_path / "p.npz")
    with pytest.raises(MabeError, match="cannot name an agent and a target"):
        predict_from_args(args)


def test_predict_from_args_averages_checkpoints(tmp_path, monkeypatch):
    from helpers import make_fake_cache

    monkeypatch.chdir(tmp_path)
    make_fake_cache(tmp_path / "cache")
    outputs = ["attack", "rear", "sniff"]
    for i in range(2):
        torch.manual_seed(i)
        _write_ckpt(tmp_path / f"m{i}.pt", "pair", outputs)
    args = argparse.Namespace(checkpoints=[str(tmp_path / "m0.pt"), str(tmp_path / "m1.pt")], data=tmp_path,
                              split="val", out=tmp_path / "p.npz")
    predict_from_args(args)
    both = predictions.load(tmp_path / "p.npz")
    singles = []
    for i in range(2):
        args.checkpoints, args.out = [str(tmp_path / f"m{i}.pt")], tmp_path / f"p{i}.npz"
        predict_from_args(args)
        singles.append(predictions.load(args.out).probs.astype(np.float32))
    assert list(both.actions) == outputs and both.labels is not None
    np.testing.assert_allclose(both.probs.astype(np.float32), (singles[0] + singles[1]) / 2, atol=2e-3)
