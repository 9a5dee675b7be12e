"""The training losses against hand-written formulas: positive weights in the pair BCE, class
weights in the scene cross-entropy, and that the weights change the value (docs/testing.md)."""

from __future__ import annotations

import pytest
import torch

# every mabe name these tests use, in one place (the training modules are being reorganised)
from mabe.training.losses import pair_loss, scene_loss
from mabe.windows import IGNORE_INDEX


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
