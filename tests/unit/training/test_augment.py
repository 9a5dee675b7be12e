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
from mabe import features_torch as FT
from mabe import postracks
from mabe.config import AugmentConfig, FeatureConfig, TaskConfig, load_config
from mabe.evaluate import predict_tracks
from mabe.postracks import load_position_tracks
from mabe.schema import DEFAULT_SLOTS
from mabe.training.augment import (
    PositionAugment,
    augment,
    drop_points,
    mirror_slots,
    position_augment,
    reflect_positions,
)
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


# ----------------------------------------------------------------------------- positions (before the features)

SLOTS = list(DEFAULT_SLOTS)
S_ = {s: i for i, s in enumerate(SLOTS)}


def _pos_aug(seed=3, **amounts) -> PositionAugment:
    kw = {"rotate_degrees": 0.0, "reflect": 0.0, "time_stretch": 0.0, "keypoint_dropout": 0.0} | amounts
    return PositionAugment(**kw, mirror=tuple(mirror_slots(SLOTS)), seed=seed)


def _walk(B=3, T=40, K=2, seed=0) -> torch.Tensor:
    """(B, T, K, 18, 2) float64 cm: mice with distinct parts, some points missing."""
    g = torch.Generator().manual_seed(seed)
    xy = torch.cumsum(torch.randn(B, T, K, 1, 2, generator=g, dtype=torch.float64), 1) + \
        3 * torch.randn(1, 1, K, len(SLOTS), 2, generator=g, dtype=torch.float64)
    xy[torch.rand(B, T, K, len(SLOTS), generator=g) < 0.1] = float("nan")
    return xy


def test_reflection_moves_a_left_part_to_the_mirrored_right_slot_and_twice_is_the_identity():
    mirror = mirror_slots(SLOTS)
    swapped = {(SLOTS[i], SLOTS[j]) for i, j in enumerate(mirror) if i != j}
    assert swapped == {(f"{p}_{a}", f"{p}_{b}") for p in ("ear", "hip", "lateral")
                       for a, b in (("left", "right"), ("right", "left"))}
    xy = _walk(B=2)
    el, er, nose = S_["ear_left"], S_["ear_right"], S_["nose"]
    xy[0, 5, 0, el] = torch.tensor([2.0, 3.0], dtype=torch.float64)
    xy[0, 5, 0, er] = float("nan")  # the right ear missing where the left ear is at (2, 3)
    flip = torch.tensor([True, False])
    out = reflect_positions(xy, flip, torch.tensor(mirror))
    assert out[0, 5, 0, er].tolist() == [-2.0, 3.0]  # the left ear, mirrored, is now the right ear
    assert torch.isnan(out[0, 5, 0, el]).all()  # and the missing right ear became a missing left ear
    torch.testing.assert_close(out[0, ..., er, 0], -xy[0, ..., el, 0], equal_nan=True, rtol=0, atol=0)
    torch.testing.assert_close(out[0, ..., er, 1], xy[0, ..., el, 1], equal_nan=True, rtol=0, atol=0)
    torch.testing.assert_close(out[0, ..., nose, :], xy[0, ..., nose, :] * torch.tensor([-1.0, 1.0], dtype=torch.float64),
                               equal_nan=True, rtol=0, atol=0)  # a midline part stays in its slot
    torch.testing.assert_close(torch.isnan(out).sum(), torch.isnan(xy).sum())  # presence moved, none made
    torch.testing.assert_close(out[1], xy[1], equal_nan=True, rtol=0, atol=0)  # not drawn: untouched
    twice = reflect_positions(out, flip, torch.tensor(mirror))
    torch.testing.assert_close(twice, xy, equal_nan=True, rtol=0, atol=0)


def test_rotation_moves_the_positions_but_leaves_the_agent_centric_pair_features(fake_cache):
    ts = load_position_tracks(fake_cache, TaskConfig(mode="pair"), [1000, 1001, 2000])
    arrays = ts.tensors()
    w = torch.tensor([[t, s] for t in range(ts.n_tracks) for s in (0, 37)])
    rot = _pos_aug(rotate_degrees=180.0)
    d = rot.draw(len(w), "cpu")
    assert (d.angle.abs() > 0.1).sum() > len(w) // 2 and d.flip is None and d.speed is None
    # the positions move (by metres at a 180-degree turn)...
    gathered = FT.gather_positions(arrays["store"], arrays["video_offsets"], arrays["track_video"][w[:, 0]],
                                   w[:, 1], 50, torch.float64, arrays["quantum"])
    moved = d.positions(gathered, None) - gathered
    assert np.nanmax(moved.abs().numpy()) > 5.0
    # ...the pair features, measured in the agent's frame, do not
    kw = {"mode": "pair", "dtype": torch.float64}
    plain = postracks.batch(arrays, w, 50, ts.fcfg, ts.slots, **kw)
    turned = postracks.batch(arrays, w, 50, ts.fcfg, ts.slots, augment=rot, **kw)
    torch.testing.assert_close(turned["x"], plain["x"], rtol=1e-7, atol=1e-7)
    assert torch.equal(turned["y"], plain["y"]) and torch.equal(turned["valid"], plain["valid"])
    # the scene features (absolute positions) do change: the rotation did act
    scene = load_position_tracks(fake_cache, TaskConfig(mode="scene"), [1000, 1001])
    sa, sw = scene.tensors(), torch.tensor([[0, 0], [1, 10]])
    a = postracks.batch(sa, sw, 50, scene.fcfg, scene.slots, mode="scene", dtype=torch.float64)["x"]
    b = postracks.batch(sa, sw, 50, scene.fcfg, scene.slots, mode="scene", dtype=torch.float64, augment=rot)["x"]
    assert (a - b).abs().max() > 1.0


def test_keypoint_dropout_makes_exactly_the_drawn_points_missing_and_never_invents_one():
    xy = _walk(B=8, T=60)
    g = torch.Generator().manual_seed(0)
    mask = torch.rand(xy.shape[:4], generator=g) < 0.3
    out = drop_points(xy, mask)
    assert torch.equal(torch.isnan(out).any(-1), mask | torch.isnan(xy).any(-1))  # exactly the drawn, plus the old
    keep = ~mask[..., None].expand_as(xy) & ~torch.isnan(xy)
    assert torch.equal(out[keep], xy[keep])
    # the batch draws: about the configured share of the present points, none brought back
    d = _pos_aug(keypoint_dropout=0.25).draw(8, "cpu")
    mice = torch.tensor([[0, 1]] * 4 + [[1, 1]] * 4)  # 4 windows of a social pair, 4 of a self pair
    got = d.positions(xy, mice)
    was, now = torch.isnan(xy).any(-1), torch.isnan(got).any(-1)
    assert not (was & ~now).any()  # a missing point stays missing
    share = float((now & ~was).sum()) / float((~was).sum())
    assert share == pytest.approx(0.25, abs=0.02)
    present = ~now
    torch.testing.assert_close(got[present], xy[present], rtol=0, atol=0)  # the others untouched
    # a self pair's two copies are one mouse: they lose the same points
    self_drop = now & ~was
    same = torch.isnan(xy[4:, :, 0]).any(-1) == torch.isnan(xy[4:, :, 1]).any(-1)
    assert torch.equal(self_drop[4:, :, 0][same], self_drop[4:, :, 1][same])


def _line_store(T=200, fps=30.0):
    """One video, one mouse whose every part moves 0.1 cm a frame along x: position = 0.1 * frame."""
    x = 0.1 * torch.arange(T, dtype=torch.float64)
    store = torch.zeros(T, 1, len(SLOTS), 2, dtype=torch.float64)
    store[..., 0] = x[:, None, None]
    return store, torch.tensor([0, T]), torch.tensor([fps], dtype=torch.float64)


def test_time_stretch_at_speed_1_is_the_identity_and_a_stretch_by_2_halves_the_rows_spacing():
    store, offsets, fps = _line_store()
    fcfg = FeatureConfig(n_mice=1)
    video, start = torch.tensor([0, 0, 0]), torch.tensor([0, 20, 150])
    kw = {"mode": "scene", "dtype": torch.float64}
    plain, pv = FT.window_features(store, offsets, video, start, 64, fps, fcfg, SLOTS, **kw)
    one, ov = FT.window_features(store, offsets, video, start, 64, fps, fcfg, SLOTS, speed=torch.ones(3),
                                 max_speed=1.5, **kw)
    assert torch.equal(one, plain) and torch.equal(ov, pv)  # speed 1: the very same rows
    rkw = dict(kw, ratio=torch.tensor([2.5], dtype=torch.float64), max_ratio=2.5)  # resampled (75 -> 30 fps)
    plain_r, pv_r = FT.window_features(store, offsets, video, start // 3, 40, fps * 2.5, fcfg, SLOTS, **rkw)
    one_r, ov_r = FT.window_features(store, offsets, video, start // 3, 40, fps * 2.5, fcfg, SLOTS,
                                     speed=torch.ones(3), max_speed=1.2, **rkw)
    assert torch.equal(one_r, plain_r) and torch.equal(ov_r, pv_r)
    for speed in (0.5, 2.0):  # stretched by 2 (slow motion), squeezed by 2 (fast)
        out, valid = FT.window_features(store, offsets, video, start, 64, fps, fcfg, SLOTS,
                                        speed=torch.full((3,), speed), max_speed=2.0, **kw)
        rows = start[:, None] + speed * torch.arange(64, dtype=torch.float64)[None, :]
        assert torch.equal(valid, rows <= 199)
        x = out[..., 0]  # the first part's x position, cm
        torch.testing.assert_close(x[valid], (0.1 * rows)[valid])  # row i is at frame start + i * speed
        torch.testing.assert_close(x[0, 1:] - x[0, :-1], torch.full((63,), 0.1 * speed, dtype=torch.float64))
        # the speed feature: the same motion in speed times the time
        torch.testing.assert_close(out[0, 2:-2, 2 * len(SLOTS)], torch.full((60,), 3.0 * speed, dtype=torch.float64))


def test_time_stretch_labels_follow_the_rows(fake_cache):
    ts = load_position_tracks(fake_cache, TaskConfig(mode="pair"), [1000, 1001])
    arrays = ts.tensors()
    w = torch.tensor([[t, s] for t in range(ts.n_tracks) for s in (0, 50)])
    aug = _pos_aug(time_stretch=0.5)
    b = postracks.batch(arrays, w, 64, ts.fcfg, ts.slots, mode="pair", augment=aug)
    speed = aug.draw(len(w), "cpu").speed
    assert speed.min() < 0.8 and speed.max() > 1.2
    n = torch.from_numpy(np.diff(ts.offsets))[w[:, 0]]
    pos = w[:, 1:2].double() + torch.arange(64)[None, :] * speed[:, None]
    assert torch.equal(b["valid"], pos <= (n - 1)[:, None])
    rows = torch.from_numpy(ts.offsets)[w[:, 0]][:, None] + torch.floor(pos + 0.5).long().minimum((n - 1)[:, None])
    want = torch.from_numpy(ts.Y)[rows]
    assert torch.equal(b["y"][b["valid"]], want[b["valid"]])
    assert not torch.equal(b["y"], postracks.batch(arrays, w, 64, ts.fcfg, ts.slots, mode="pair")["y"])


def test_position_draws_are_a_pure_function_of_the_batch_coordinates(fake_cache):
    cfg = AugmentConfig(rotate_degrees=30.0, reflect=0.5, time_stretch=0.2, keypoint_dropout=0.1)
    assert position_augment(AugmentConfig(), SLOTS, 42, 0, 3, 7) is None  # all off: nothing drawn
    a, b = position_augment(cfg, SLOTS, 42, 0, 3, 7), position_augment(cfg, SLOTS, 42, 0, 3, 7)
    da, db = a.draw(16, "cpu"), b.draw(16, "cpu")
    for k in ("angle", "flip", "speed"):
        assert torch.equal(getattr(da, k), getattr(db, k))
    xy = _walk(B=16)
    torch.testing.assert_close(da.positions(xy, None), db.positions(xy, None), equal_nan=True, rtol=0, atol=0)
    for other in ((43, 0, 3, 7), (42, 1, 3, 7), (42, 0, 4, 7), (42, 0, 3, 8)):
        assert not torch.equal(position_augment(cfg, SLOTS, *other).draw(16, "cpu").angle, da.angle)
    # a resumed epoch (from micro-batch 2) sees the batches an uninterrupted one saw
    run = load_config(None, {"augment": {"rotate_degrees": 30.0, "reflect": 0.5, "time_stretch": 0.2,
                                         "keypoint_dropout": 0.1}, "train": {"batch_size": 4},
                             "windows": {"sequence_length": 32}})
    ts = load_position_tracks(fake_cache, TaskConfig(mode="pair"), [1000, 1001])
    windows = window_index(ts.lengths, 32, 16)
    batches = Batches(ts, windows, None, run, torch.device("cpu"), "resident", 16)
    full = dict(batches.epoch(1))
    resumed = dict(Batches(ts, windows, None, run, torch.device("cpu"), "resident", 16).epoch(1, 2))
    assert sorted(resumed) == [2, 3]
    for j in (2, 3):
        for k in full[j]:
            assert torch.equal(full[j][k], resumed[j][k])
    off = load_config(None, {"train": {"batch_size": 4}, "windows": {"sequence_length": 32}})
    plain = dict(Batches(ts, windows, None, off, torch.device("cpu"), "resident", 16).epoch(1))
    assert not torch.equal(plain[2]["x"], full[2]["x"])  # the augmentation did act
