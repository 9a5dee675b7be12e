"""Augmentation edges found by mutation testing (scripts/mutation.sh training/augment): the batch
generator of a micro-batch's coordinates, noise and mixup drawn only from the micro-batch's own
generators (and nothing drawn when off), a lone left part mirrored onto itself, rotation keeping the
positions' dtype, keypoint dropout drawn per mouse, and the laws of the geometric draws (range,
spread, independence, float64, off means none). docs/testing.md lists the mutants these kill and
the survivors judged equivalent."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

# every mabe name these tests use, in one place
from mabe import features_torch as FT
from mabe.config import AugmentConfig, FeatureConfig
from mabe.schema import DEFAULT_SLOTS, MAX_MICE
from mabe.training.augment import (
    PositionAugment,
    augment,
    batch_rng,
    mirror_slots,
    rotate_positions,
)

SLOTS = list(DEFAULT_SLOTS)


def _pos_aug(seed=3, **amounts) -> PositionAugment:
    kw = {"rotate_degrees": 0.0, "reflect": 0.0, "time_stretch": 0.0, "keypoint_dropout": 0.0} | amounts
    return PositionAugment(**kw, mirror=tuple(mirror_slots(SLOTS)), seed=seed)


def _batch(B=16, W=20, F=3):
    g = torch.Generator().manual_seed(0)
    valid = torch.ones(B, W, dtype=torch.bool)
    valid[:4, 10:] = False
    return {"x": torch.randn(B, W, F, generator=g) * valid[..., None], "valid": valid}


# ----------------------------------------------------------------------------- noise, mixup


def test_batch_rng_is_a_pure_function_of_the_micro_batch_coordinates():
    a = batch_rng(7, 1, 3, 5).random(8)
    np.testing.assert_array_equal(a, batch_rng(7, 1, 3, 5).random(8))
    for other in ((8, 1, 3, 5), (7, 0, 3, 5), (7, 1, 4, 5), (7, 1, 3, 6)):
        assert not np.array_equal(batch_rng(*other).random(8), a)


def test_noise_and_mixup_draw_only_from_the_micro_batch_generators():
    """torch's global generator (model init, dropout) must not move the augmentation: a resumed run
    reseeds only the micro-batch generators."""
    b, cfg = _batch(), AugmentConfig(noise_std=0.1, mixup_alpha=0.4)
    torch.manual_seed(0)
    one, (lam1, perm1) = augment(b, cfg, torch.Generator().manual_seed(5), np.random.default_rng(5))
    torch.manual_seed(123)
    two, (lam2, perm2) = augment(b, cfg, torch.Generator().manual_seed(5), np.random.default_rng(5))
    assert lam1 == lam2 and torch.equal(perm1, perm2) and torch.equal(one["x"], two["x"])
    assert not torch.equal(one["x"], b["x"])  # it did act


@pytest.mark.parametrize("mixup", [0.0, 0.4])
def test_no_noise_draws_nothing_from_the_generator(mixup):
    """noise_std 0: no (B, W, F) draw per batch, so the generator is where it was (or moved by the
    mixup permutation only: the permutation a fresh generator of the seed gives)."""
    b = _batch()
    gen = torch.Generator().manual_seed(9)
    before = gen.get_state()
    out, mix = augment(b, AugmentConfig(noise_std=0.0, mixup_alpha=mixup), gen, np.random.default_rng(9))
    if mixup == 0.0:
        assert mix is None and torch.equal(gen.get_state(), before) and torch.equal(out["x"], b["x"])
    else:
        assert torch.equal(mix[1], torch.randperm(16, generator=torch.Generator().manual_seed(9)))


# ----------------------------------------------------------------------------- positions


def test_a_part_whose_mirror_is_not_among_the_slots_stays_in_its_own_slot():
    slots = ["nose", "ear_left", "hip_left", "hip_right", "tail_base"]
    assert mirror_slots(slots) == [0, 1, 3, 2, 4]


def test_rotation_by_a_quarter_turn_is_minus_y_x_and_keeps_the_positions_dtype():
    xy = torch.tensor([[[[[1.0, 0.0], [2.0, 3.0], [math.nan, math.nan]]]]], dtype=torch.float32)  # (1, 1, 1, 3, 2)
    out = rotate_positions(xy, torch.tensor([math.pi / 2], dtype=torch.float64))
    assert out.dtype == torch.float32  # float64 angles do not promote the batch
    torch.testing.assert_close(out[0, 0, 0], torch.tensor([[0.0, 1.0], [-3.0, 2.0], [math.nan, math.nan]]),
                               equal_nan=True, atol=1e-6, rtol=0)


def test_pair_dropout_is_the_dropout_of_the_mice_the_pair_shows():
    """A point is dropped per (window, frame, mouse, part): a pair's agent and target lose what the
    same draw drops from those mice in the scene layout (all MAX_MICE mouse slots)."""
    B, L, S = 6, 30, len(SLOTS)
    scene = torch.zeros(B, L, MAX_MICE, S, 2, dtype=torch.float64)
    aug = _pos_aug(keypoint_dropout=0.3)
    dropped = torch.isnan(aug.draw(B, "cpu").positions(scene, None)).any(-1)  # (B, L, MAX_MICE, S)
    mice = torch.tensor([[3, 0], [2, 1], [1, 3], [0, 2], [3, 3], [1, 0]])
    pair = torch.zeros(B, L, 2, S, 2, dtype=torch.float64)
    got = torch.isnan(aug.draw(B, "cpu").positions(pair, mice)).any(-1)  # (B, L, 2, S)
    want = torch.stack([dropped[b][:, mice[b]] for b in range(B)])
    assert torch.equal(got, want)


def test_no_dropout_draws_nothing():
    d = _pos_aug(reflect=1.0).draw(4, "cpu")
    before = d.gen.get_state()
    xy = torch.zeros(4, 10, 2, len(SLOTS), 2, dtype=torch.float64)
    d.positions(xy, torch.tensor([[0, 1]] * 4))
    assert torch.equal(d.gen.get_state(), before)


def test_geometric_draws_follow_their_laws_independently():
    n, deg, ts = 20000, 30.0, 0.2
    d = _pos_aug(rotate_degrees=deg, reflect=0.5, time_stretch=ts).draw(n, "cpu")
    r = math.radians(deg)
    assert d.angle.dtype == torch.float64 and d.speed.dtype == torch.float64 and d.flip.dtype == torch.bool
    # angle uniform on [-r, r], speed uniform on [1 - ts, 1 + ts]
    for v, lo, hi in ((d.angle, -r, r), (d.speed, 1 - ts, 1 + ts)):
        v = v.numpy()
        assert v.min() >= lo and v.max() <= hi
        assert v.min() < lo + 0.01 * (hi - lo) and v.max() > hi - 0.01 * (hi - lo)
        assert v.mean() == pytest.approx((lo + hi) / 2, abs=0.02 * (hi - lo))
        assert v.std() == pytest.approx((hi - lo) / math.sqrt(12), rel=0.03)
    assert d.max_speed == pytest.approx(1 + ts)
    flip = d.flip.numpy()
    assert flip.mean() == pytest.approx(0.5, abs=0.02)
    # independent: a flipped window is as likely to turn either way, and to be slowed as sped up
    assert (d.angle.numpy()[flip] < 0).mean() == pytest.approx(0.5, abs=0.03)
    assert (d.speed.numpy()[flip] < 1).mean() == pytest.approx(0.5, abs=0.03)
    assert (d.angle.numpy()[d.speed.numpy() < 1] < 0).mean() == pytest.approx(0.5, abs=0.03)


def test_an_amount_of_zero_draws_none_and_a_small_one_draws():
    off = _pos_aug(keypoint_dropout=0.1).draw(8, "cpu")
    assert off.angle is None and off.flip is None and off.speed is None and off.max_speed == 1.0
    small = _pos_aug(rotate_degrees=0.5).draw(200, "cpu")
    assert small.angle is not None
    assert 0 < float(small.angle.abs().max()) <= math.radians(0.5)


def test_a_drawn_time_stretch_reads_the_frames_its_rows_fall_on_to_the_window_end():
    """The draw's max_speed sizes the gather: the fastest windows still read their last rows' frames."""
    T = 400
    store = torch.zeros(T, 1, len(SLOTS), 2, dtype=torch.float64)
    store[..., 0] = 0.1 * torch.arange(T, dtype=torch.float64)[:, None, None]  # x = 0.1 cm * frame
    d = _pos_aug(time_stretch=0.5).draw(16, "cpu")
    assert float(d.speed.max()) > 1.3
    start = torch.arange(16) * 5
    out, valid = FT.window_features(store, torch.tensor([0, T]), torch.zeros(16, dtype=torch.long), start, 64,
                                    torch.tensor([30.0], dtype=torch.float64), FeatureConfig(n_mice=1), SLOTS,
                                    mode="scene", dtype=torch.float64, speed=d.speed, max_speed=d.max_speed)
    rows = start[:, None] + d.speed[:, None] * torch.arange(64, dtype=torch.float64)
    assert valid.all()
    torch.testing.assert_close(out[..., 0], 0.1 * rows)
