"""The training losses against hand-written formulas: positive weights in the pair BCE, class
weights in the scene cross-entropy, and that the weights change the value (docs/testing.md)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

# every mabe name these tests use, in one place (the training modules are being reorganised)
from mabe.config import TaskConfig
from mabe.training import losses
from mabe.training.losses import global_mean, pair_loss, scene_loss
from mabe.windows import IGNORE_INDEX, TrackSet


def _pair(seed=0, B=3, W=8, A=4):
    g = torch.Generator().manual_seed(seed)
    logits = 2 * torch.randn(B, W, A, generator=g)
    y = (torch.rand(B, W, A, generator=g) < 0.4).to(torch.uint8)
    mask = torch.rand(B, W, A, generator=g) < 0.7
    return logits, y, mask


def _bce(logits, y, mask, pw, smoothing=0.0):
    """Mean over labelled cells of -(pw y log p + (1 - y) log(1 - p)), written out."""
    p = logits.sigmoid()
    t = y.float() * (1 - smoothing) + 0.5 * smoothing
    per = -(pw * t * p.log() + (1 - t) * (1 - p).log())
    return float(per[mask].mean())


def test_pair_loss_is_the_hand_written_pos_weighted_bce():
    logits, y, mask = _pair()
    pw = torch.tensor([1.0, 3.0, 0.5, 9.0])
    assert float(pair_loss(logits, y, mask, pw)) == pytest.approx(_bce(logits, y, mask, pw), rel=1e-5)
    assert float(pair_loss(logits, y, mask)) == pytest.approx(_bce(logits, y, mask, 1.0), rel=1e-5)
    assert float(pair_loss(logits, y, mask, pw, 0.2)) == pytest.approx(_bce(logits, y, mask, pw, 0.2), rel=1e-5)
    # the weights matter: a positive weight > 1 on a column with positives raises the loss
    assert float(pair_loss(logits, y, mask, pw)) != pytest.approx(float(pair_loss(logits, y, mask)), rel=1e-3)


def test_pos_weight_scales_only_the_positive_cells_gradient():
    logits, y, mask = _pair(1)
    logits.requires_grad_(True)
    pw = torch.full((4,), 5.0)
    (g5,) = torch.autograd.grad(pair_loss(logits, y, mask, pw), logits)
    (g1,) = torch.autograd.grad(pair_loss(logits, y, mask), logits)
    pos, neg = mask & (y == 1), mask & (y == 0)
    p = logits.detach().sigmoid()
    n = mask.sum()
    torch.testing.assert_close(g5[pos], 5.0 * (p[pos] - 1) / n)  # d/dz of -5 log sigmoid(z), per cell
    torch.testing.assert_close(g5[neg], g1[neg])
    assert (g5[~mask] == 0).all()


def test_scene_loss_is_the_hand_written_class_weighted_cross_entropy():
    g = torch.Generator().manual_seed(2)
    logits = torch.randn(2, 9, 4, generator=g)
    y = torch.randint(0, 4, (2, 9), generator=g)
    y[1, 6:] = IGNORE_INDEX
    w = torch.tensor([0.5, 4.0, 2.0, 7.0])
    logp = logits.log_softmax(-1)
    valid = y != IGNORE_INDEX
    c = y[valid]
    expect = float((-w[c] * logp[valid][torch.arange(len(c)), c]).sum() / w[c].sum())
    assert float(scene_loss(logits, y, w)) == pytest.approx(expect, rel=1e-5)
    plain = float((-logp[valid][torch.arange(len(c)), c]).mean())
    assert float(scene_loss(logits, y)) == pytest.approx(plain, rel=1e-5)
    assert abs(expect - plain) > 1e-3


# ---- edge cases found by mutation testing (scripts/mutation.sh training/losses, docs/testing.md) ----


def _smoothed_ce(logits, y, eps):
    """Mean over valid frames of (1 - eps) (-log p_y) + eps mean_c(-log p_c), written out."""
    logp = logits.log_softmax(-1)
    valid = y != IGNORE_INDEX
    lp, c = logp[valid], y[valid]
    per = (1 - eps) * -lp[torch.arange(len(c)), c] + eps * -lp.mean(-1)
    return float(per.mean())


def test_scene_loss_applies_label_smoothing_and_ignores_padding():
    g = torch.Generator().manual_seed(3)
    logits = torch.randn(2, 7, 3, generator=g)
    y = torch.randint(0, 3, (2, 7), generator=g)
    y[0, 5:] = IGNORE_INDEX
    assert float(scene_loss(logits, y, None, 0.2)) == pytest.approx(_smoothed_ce(logits, y, 0.2), rel=1e-5)
    assert float(scene_loss(logits, y, None, 0.2)) != pytest.approx(float(scene_loss(logits, y)), rel=1e-3)


def test_one_labelled_cell_is_its_own_mean():
    """A batch with a single labelled cell (count 1) averages over 1, not over a floor above 1."""
    logits = torch.tensor([[[0.3, -1.2]]])
    y = torch.tensor([[[1, 0]]], dtype=torch.uint8)
    mask = torch.tensor([[[True, False]]])
    assert float(pair_loss(logits, y, mask)) == pytest.approx(_bce(logits, y, mask, 1.0), rel=1e-6)
    assert float(pair_loss(logits, y, torch.zeros_like(mask))) == 0.0  # nothing labelled: 0, not nan


class _FakeWorld:
    """torch.distributed as seen by one rank of ``world`` ranks; the others hold ``other`` cells in all."""

    def __init__(self, world, other):
        self.world, self.other, self.reduced = world, other, []

    def install(self, monkeypatch):
        dist = torch.distributed
        monkeypatch.setattr(dist, "is_available", lambda: True)
        monkeypatch.setattr(dist, "is_initialized", lambda: True)
        monkeypatch.setattr(dist, "get_world_size", lambda: self.world)
        monkeypatch.setattr(dist, "all_reduce", self._all_reduce)

    def _all_reduce(self, t):
        self.reduced.append(t)
        t += self.other


@pytest.mark.parametrize("count, other", [(1.0, 5.0), (3.0, 5.0), (1.0, 0.0)])
def test_global_mean_divides_by_the_count_of_every_rank_times_the_world(monkeypatch, count, other):
    fake = _FakeWorld(world=2, other=other)
    fake.install(monkeypatch)
    c = torch.tensor(count)
    got = global_mean(torch.tensor(6.0), c)
    # DDP averages the ranks' gradients: rank loss * world / (cells of all ranks)
    assert float(got) == pytest.approx(6.0 * 2 / (count + other))
    assert len(fake.reduced) == 1 and float(c) == count  # the caller's count is not reduced in place


def test_global_mean_in_a_world_of_one_does_not_all_reduce(monkeypatch):
    fake = _FakeWorld(world=1, other=5.0)
    fake.install(monkeypatch)
    assert float(global_mean(torch.tensor(6.0), torch.tensor(3.0))) == pytest.approx(2.0)
    assert fake.reduced == []


def test_global_mean_of_a_rank_with_no_cells_is_finite(monkeypatch):
    _FakeWorld(world=3, other=0.0).install(monkeypatch)
    assert float(global_mean(torch.tensor(0.0), torch.tensor(0.0))) == 0.0  # count floored at 1, not 0/0


def _ts_pair(ys, label_mask):
    return TrackSet.from_tracks("pair", [f"a{i}" for i in range(ys[0].shape[1])],
                                [np.zeros((len(y), 1)) for y in ys], ys, np.asarray(label_mask, bool))


def test_auto_pos_weight_per_action_edge_cases():
    """Counts past 255 (uint8 labels), one positive, no positive, no labelled cell; 3 tracks x 4 actions."""
    T = 400
    y0 = np.zeros((T, 4), np.uint8)
    y0[:300, 0] = 1  # 300 positives in one track: a uint8 sum would wrap to 44
    y0[5, 1] = 1  # exactly one positive
    y1 = np.zeros((T, 4), np.uint8)
    y1[:, 3] = 1  # action 3 is positive here but labelled in no track
    y2 = np.zeros((T, 4), np.uint8)
    mask = [[1, 1, 1, 0], [1, 1, 1, 0], [0, 0, 1, 0]]
    pw = losses.auto_pos_weight(_ts_pair([y0, y1, y2], mask), cap=30.0)
    assert pw.dtype == np.float32 and pw.shape == (4,)
    np.testing.assert_allclose(pw[:2], [np.sqrt((800 - 300) / 300), np.sqrt(799 / 1)], rtol=1e-6)
    assert pw[2] == 30.0 and pw[3] == 30.0  # no positive / no labelled cell: the cap, never inf or nan


def test_auto_pos_weight_cap_below_one_is_the_cap():
    y = np.zeros((10, 2), np.uint8)
    y[:2, 1] = 1
    pw = losses.auto_pos_weight(_ts_pair([y], [[1, 1]]), cap=0.5)
    np.testing.assert_array_equal(pw, np.float32([0.5, 0.5]))


def test_loss_weights_per_mode():
    y = np.zeros((10, 2), np.uint8)
    y[:2, 0] = 1
    ts = _ts_pair([y], [[1, 1]])
    cpu = torch.device("cpu")
    cw, pw = losses.loss_weights(TaskConfig(mode="pair", pos_weight="auto", pos_weight_max=3.0), ts, cpu)
    assert cw is None and pw.dtype == torch.float32
    torch.testing.assert_close(pw, torch.tensor([2.0, 3.0]))  # sqrt(8/2); no positive -> the cap
    cw, pw = losses.loss_weights(TaskConfig(mode="pair", pos_weight=2.5), ts, cpu)
    assert cw is None and pw.dtype == torch.float32
    torch.testing.assert_close(pw, torch.tensor([2.5, 2.5]))
    assert losses.loss_weights(TaskConfig(mode="pair", pos_weight="none"), ts, cpu) == (None, None)
    scene = TaskConfig(mode="scene", class_weights=[1.0, 4.0, 0.5])
    cw, pw = losses.loss_weights(scene, ts, cpu)
    assert pw is None and cw.dtype == torch.float32 and cw.device == cpu
    torch.testing.assert_close(cw, torch.tensor([1.0, 4.0, 0.5]))
    assert losses.loss_weights(TaskConfig(mode="scene"), ts, cpu) == (None, None)


def test_loss_weights_are_float32_on_the_given_device():
    """Integer class weights (as YAML reads ``[1, 4, 2]``) still give a float tensor; both weights are
    made on the device asked for ("meta" stands in for an accelerator on CPU)."""
    y = np.zeros((10, 2), np.uint8)
    ts = _ts_pair([y], [[1, 1]])
    cw, _ = losses.loss_weights(TaskConfig(mode="scene", class_weights=[1, 4, 2]), ts, torch.device("cpu"))
    assert cw.dtype == torch.float32
    meta = torch.device("meta")
    cw, _ = losses.loss_weights(TaskConfig(mode="scene", class_weights=[1.0, 4.0]), ts, meta)
    assert cw.device.type == "meta"
    _, pw = losses.loss_weights(TaskConfig(mode="pair", pos_weight="auto"), ts, meta)
    assert pw.device.type == "meta"


def test_prob_loss_scene_is_the_weighted_nll_of_the_true_class():
    probs = np.array([[0.7, 0.2, 0.1], [0.1, 0.1, 0.8], [0.5, 0.5, 0.0], [0.2, 0.6, 0.2]])
    ts = TrackSet.from_tracks("scene", ["none", "b", "c"], [np.zeros((2, 1))] * 2,
                              [np.array([0, 2]), np.array([2, 1])])
    w = np.array([1.0, 3.0, 0.5])
    # the true class of frame 3 has p = 0: clipped at 1e-7
    nll = -np.log([0.7, 0.8, 1e-7, 0.6])
    assert losses.prob_loss(ts, probs, None, None) == pytest.approx(nll.mean(), rel=1e-6)
    ww = w[[0, 2, 2, 1]]
    assert losses.prob_loss(ts, probs, w, None) == pytest.approx((ww * nll).sum() / ww.sum(), rel=1e-6)


def test_prob_loss_pair_is_the_pos_weighted_bce_over_labelled_cells():
    probs = np.array([[0.9, 0.2], [0.3, 1.0], [0.6, 0.0], [0.1, 0.4], [0.5, 0.5]], np.float32)
    ys = [np.array([[1, 0], [0, 1]]), np.array([[1, 1], [0, 0], [1, 0]])]
    ts = TrackSet.from_tracks("pair", ["a", "b"], [np.zeros((2, 1)), np.zeros((3, 1))], ys,
                              np.array([[1, 1], [1, 0]], bool))
    pw = np.array([2.0, 5.0], np.float32)
    eps = 1e-7
    p = probs.astype(np.float64).clip(eps, 1 - eps)
    y = np.concatenate(ys).astype(np.float64)
    m = np.array([[1, 1], [1, 1], [1, 0], [1, 0], [1, 0]], bool)
    for pos_weight, pwv in ((pw, pw), (None, 1.0)):
        per = -(pwv * y * np.log(p) + (1 - y) * np.log(1 - p))
        assert losses.prob_loss(ts, probs, None, pos_weight) == pytest.approx(per[m].mean(), rel=1e-5)
        for chunk in (1, 2):  # computed a track and a chunk of rows at a time: the same number
            assert losses.prob_loss(ts, probs, None, pos_weight, chunk_rows=chunk) == pytest.approx(
                per[m].mean(), rel=1e-5)
    none = TrackSet.from_tracks("pair", ["a", "b"], [np.zeros((2, 1))], [ys[0]], np.zeros((1, 2), bool))
    assert losses.prob_loss(none, probs[:2], None, pw) == 0.0  # nothing labelled: 0, not nan
    one = TrackSet.from_tracks("pair", ["a", "b"], [np.zeros((1, 1))], [ys[0][:1]], np.array([[1, 0]], bool))
    assert losses.prob_loss(one, probs[:1], None, pw) == pytest.approx(-2.0 * np.log(0.9), rel=1e-6)


def test_mixed_loss_without_mixup_is_the_plain_loss():
    logits, y, mask = _pair(4)
    pw = torch.tensor([1.0, 3.0, 0.5, 9.0])
    got = losses.mixed_loss("pair", logits, {"y": y, "mask": mask}, None, pos_weight=pw, label_smoothing=0.1)
    assert float(got) == pytest.approx(float(pair_loss(logits, y, mask, pw, 0.1)), rel=1e-6)
    plain = losses.mixed_loss("pair", logits, {"y": y, "mask": mask}, None)  # default: no smoothing
    assert float(plain) == pytest.approx(_bce(logits, y, mask, 1.0), rel=1e-5)
    g = torch.Generator().manual_seed(5)
    sl = torch.randn(3, 6, 4, generator=g)
    sy = torch.randint(0, 4, (3, 6), generator=g)
    w = torch.tensor([0.5, 4.0, 2.0, 7.0])
    got = losses.mixed_loss("scene", sl, {"y": sy}, None, class_weight=w, label_smoothing=0.1)
    assert float(got) == pytest.approx(float(scene_loss(sl, sy, w, 0.1)), rel=1e-6)


def test_mixed_scene_loss_mixes_the_two_weighted_smoothed_losses():
    g = torch.Generator().manual_seed(6)
    sl = torch.randn(3, 6, 4, generator=g)
    sy = torch.randint(0, 4, (3, 6), generator=g)
    w = torch.tensor([0.5, 4.0, 2.0, 7.0])
    perm = torch.tensor([2, 0, 1])
    lam = 0.3
    got = losses.mixed_loss("scene", sl, {"y": sy}, (lam, perm), class_weight=w, label_smoothing=0.1)
    expect = lam * scene_loss(sl, sy, w, 0.1) + (1 - lam) * scene_loss(sl, sy[perm], w, 0.1)
    assert float(got) == pytest.approx(float(expect), rel=1e-6)


def test_mixed_pair_loss_mixes_the_targets_over_cells_labelled_in_both():
    logits, y, mask = _pair(7)
    pw = torch.tensor([1.0, 3.0, 0.5, 9.0])
    perm = torch.tensor([1, 2, 0])
    lam = 0.3
    got = losses.mixed_loss("pair", logits, {"y": y, "mask": mask}, (lam, perm), pos_weight=pw,
                            label_smoothing=0.1)
    t = (lam * y.float() + (1 - lam) * y[perm].float()) * 0.9 + 0.05
    p = logits.sigmoid()
    per = -(pw * t * p.log() + (1 - t) * (1 - p).log())
    both = mask & mask[perm]
    assert float(got) == pytest.approx(float(per[both].mean()), rel=1e-5)


def test_pos_weight_and_validation_loss_do_not_copy_the_whole_label_matrix():
    """At the real set's scale a float or int64 copy of every (row, action) cell is GBs: both work in pieces
    (numpy's allocations traced; a whole int64 / float32 copy would be 8x / 4x the uint8 labels)."""
    import tracemalloc

    rng = np.random.default_rng(0)
    n, c = 20_000, 16
    ys = [(rng.random((n, c)) < 0.05).astype(np.uint8) for _ in range(3)]
    ts = TrackSet.from_tracks("pair", [str(i) for i in range(c)], [np.zeros((n, 1), np.float32)] * 3, ys,
                              rng.random((3, c)) < 0.7)
    probs = rng.random((ts.n_rows, c), dtype=np.float32)
    for fn in (lambda: losses.auto_pos_weight(ts, 10.0),
               lambda: losses.prob_loss(ts, probs, None, np.ones(c, np.float32), chunk_rows=2_000)):
        tracemalloc.start()
        try:
            fn()
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        assert peak < ts.Y.nbytes, (peak, ts.Y.nbytes)
