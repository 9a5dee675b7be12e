"""Augmentation and frame alignment: ``augment`` (noise on valid frames only, the mixup identity),
the epoch's temporal jitter as the batches see it, and that predictions land on the frames they
were computed from (a model that echoes its input). Each test was seen failing on its break
(docs/testing.md)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

# every mabe name these tests use, in one place (the training modules are being reorganised)
from mabe.config import AugmentConfig, load_config
from mabe.evaluate import predict_tracks
from mabe.training.augment import augment
from mabe.training.batches import Batches
from mabe.windows import TrackSet, gather, window_index


def _batch(B=64, W=50, F=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(B, W, F, generator=g)
    valid = torch.ones(B, W, dtype=torch.bool)
    valid[: B // 2, W // 2 :] = False  # half the windows run past their track's end
    x[~valid] = 0.0
    return {"x": x, "valid": valid, "y": torch.zeros(B, W, 2, dtype=torch.uint8)}


def test_noise_has_the_configured_spread_on_valid_frames_and_none_on_padding():
    b = _batch()
    out, mix = augment(b, AugmentConfig(noise_std=0.05, temporal_jitter=0, mixup_alpha=0.0),
                       torch.Generator().manual_seed(1), np.random.default_rng(1))
    assert mix is None and out["x"].dtype == torch.float32
    d = out["x"] - b["x"]
    valid = b["valid"]
    assert (d[~valid] == 0).all()  # padding stays exactly zero
    on = d[valid]  # 64 * 50 * 4 * 3/4 = 9600 draws
    assert float(on.std()) == pytest.approx(0.05, rel=0.05)
    assert abs(float(on.mean())) < 0.05 * 4 / np.sqrt(on.numel())
    assert out["y"] is b["y"]  # labels untouched
    # a different micro-batch generator, different noise (no fixed pattern)
    again, _ = augment(b, AugmentConfig(noise_std=0.05, mixup_alpha=0.0), torch.Generator().manual_seed(2),
                       np.random.default_rng(1))
    assert not torch.equal(again["x"], out["x"])


def test_zero_noise_and_no_mixup_leave_the_batch_as_it_was():
    b = _batch()
    out, mix = augment(b, AugmentConfig(noise_std=0.0, mixup_alpha=0.0), torch.Generator(), np.random.default_rng(0))
    assert mix is None and torch.equal(out["x"], b["x"])


def test_mixup_is_the_convex_combination_with_a_permutation_of_the_batch():
    b = _batch(B=16)
    out, mix = augment(b, AugmentConfig(noise_std=0.0, mixup_alpha=0.4), torch.Generator().manual_seed(3),
                       np.random.default_rng(3))
    assert mix is not None
    lam, perm = mix
    assert 0.0 < lam < 1.0
    assert sorted(perm.tolist()) == list(range(16)) and perm.tolist() != list(range(16))
    torch.testing.assert_close(out["x"], lam * b["x"] + (1 - lam) * b["x"][perm])
    # lambda follows Beta(alpha, alpha): over many draws its mean is 1/2 and it spreads out
    lams = [augment(b, AugmentConfig(noise_std=0.0, mixup_alpha=0.4), torch.Generator().manual_seed(i),
                    np.random.default_rng(i))[1][0] for i in range(400)]
    assert np.mean(lams) == pytest.approx(0.5, abs=0.05)
    assert np.std(lams) == pytest.approx(np.sqrt(1 / (4 * 1.8)), rel=0.15)  # Var = 1 / (4 (2 alpha + 1))


def _trackset(lengths=(40, 57, 33), F=3, seed=0) -> TrackSet:
    rng = np.random.default_rng(seed)
    return TrackSet.from_tracks("pair", ["a", "b"], [rng.normal(size=(L, F)).astype(np.float32) for L in lengths],
                                [(rng.random((L, 2)) < 0.3).astype(np.uint8) for L in lengths])


def test_epoch_batches_carry_the_configured_temporal_jitter():
    cfg = load_config(None, {"augment": {"temporal_jitter": 2}, "train": {"batch_size": 8},
                             "windows": {"sequence_length": 10}})
    ts = _trackset()
    windows = window_index(ts.lengths, 10, 5)
    n = len(windows)
    batches = Batches(ts, windows, None, cfg, torch.device("cpu"), "resident", n)
    order, shift = batches.plan(0)
    assert shift.min() == -2 and shift.max() == 2 and set(np.unique(shift)) == {-2, -1, 0, 1, 2}
    assert not np.array_equal(shift, batches.plan(1)[1])  # drawn afresh every epoch
    # the batches are the jittered windows: gather of (window, shift) on the numpy arrays
    for j, b in batches.epoch(0):
        sl = slice(j * 8, (j + 1) * 8)
        ref = gather(ts.arrays(), windows[order[sl]], 10, shift[sl])
        np.testing.assert_array_equal(b["x"].numpy(), ref["x"])
    no_jitter = load_config(None, {"augment": {"temporal_jitter": 0}, "train": {"batch_size": 8},
                                   "windows": {"sequence_length": 10}})
    assert not Batches(ts, windows, None, no_jitter, torch.device("cpu"), "resident", n).plan(0)[1].any()


class EchoModel(nn.Module):
    """Logit of output c at window position w = input feature c + logit((w + 1) / (W + 1)): the
    prediction of a frame depends on that frame's input and on where the window put it."""

    def __init__(self):
        super().__init__()
        self.dummy = nn.Parameter(torch.zeros(()))

    def forward(self, x):
        W = x.shape[1]
        pos = torch.logit((torch.arange(W, dtype=torch.float32) + 1) / (W + 1))  # (W,)
        return x[..., :2] + pos[None, :, None] + 0 * self.dummy


def test_predictions_line_up_with_the_frames_they_were_computed_from():
    """Supersedes test_predict_averages_overlapping_windows, whose model ignored its input."""
    W, stride = 10, 4
    ts = _trackset(lengths=(7, 23, 40))
    probs = predict_tracks(EchoModel(), ts, batch=3, stride=stride, length=W)
    sums = np.zeros((len(ts.X), 2))
    count = np.zeros(len(ts.X))
    sig = lambda z: 1 / (1 + np.exp(-z))  # noqa: E731
    for t, s in window_index(ts.lengths, W, stride, cover_end=True):
        lo = ts.offsets[t]
        n = min(W, ts.lengths[t] - s)
        pos = np.log((np.arange(n) + 1) / (W - np.arange(n)))  # logit((k + 1) / (W + 1))
        sums[lo + s : lo + s + n] += sig(ts.X[lo + s : lo + s + n, :2] + pos[:, None])
        count[lo + s : lo + s + n] += 1
    assert (count > 0).all() and (count > 1).any()  # every frame covered, some by several windows
    np.testing.assert_allclose(probs, sums / count[:, None], rtol=1e-5, atol=1e-6)
    # the 7-frame track is one padded window: frame k is sigmoid(x_k + position k)
    np.testing.assert_allclose(probs[:7], sig(ts.X[:7, :2] + np.log((np.arange(7) + 1) / (W - np.arange(7)))[:, None]),
                               rtol=1e-5)
