"""features.py: units, hand-computed kinematics, NaN handling, scene layout, pair geometry."""

from __future__ import annotations

import numpy as np
import pytest

from mabe import features as F
from mabe.config import FeatureConfig
from mabe.data import DEFAULT_SLOTS

SLOTS = list(DEFAULT_SLOTS)
S = len(SLOTS)


def _track(x_px: np.ndarray, y_px: np.ndarray) -> np.ndarray:
    """One point trajectory -> (T, 1, 1, 2)."""
    return np.stack([x_px, y_px], axis=-1)[:, None, None, :].astype(np.float64)


# ----------------------------------------------------------------------------- units and kinematics


def test_to_cm_scales_and_centres():
    xy = np.array([[[[340.0, 230.0]]]])  # (1, 1, 1, 2) px
    np.testing.assert_allclose(F.to_cm(xy, 10.0, (320.0, 240.0)), [[[[2.0, -1.0]]]])
    np.testing.assert_allclose(F.to_cm(xy, 10.0, None), [[[[34.0, 23.0]]]])
    assert F.to_cm(xy.astype(np.float32), 10.0, (320, 240)).dtype == np.float32
    with pytest.raises(ValueError):
        F.to_cm(xy, 0.0)


def test_constant_speed_hand_computed():
    # 3 px/frame at 30 fps with 2 px/cm -> 1.5 cm/frame -> 45 cm/s, on every frame (edges one-sided)
    n = np.arange(50, dtype=float)
    cm = F.to_cm(_track(100 + 3 * n, np.full(50, 7.0)), 2.0, None)
    np.testing.assert_allclose(F.speed(cm, 30.0), 45.0)
    np.testing.assert_allclose(F.velocity(cm, 30.0)[..., 0], 45.0)
    np.testing.assert_allclose(F.acceleration(cm, 30.0), 0.0, atol=1e-9)
    # 3-4-5 diagonal: 5 px/frame -> 75 cm/s
    cm = F.to_cm(_track(3 * n, -4 * n), 2.0, None)
    np.testing.assert_allclose(F.speed(cm, 30.0), 75.0)


def test_uniform_acceleration_hand_computed():
    # x = 0.5 * 1 px/frame^2 * n^2; at 30 fps, 2 px/cm: a = 1 * 30^2 / 2 = 450 cm/s^2, v(n) = 15 n cm/s
    n = np.arange(40, dtype=float)
    cm = F.to_cm(_track(0.5 * n**2, np.zeros(40)), 2.0, None)
    acc = F.acceleration(cm, 30.0)[:, 0, 0]
    spd = F.speed(cm, 30.0)[:, 0, 0]
    np.testing.assert_allclose(acc[2:-2], 450.0)
    np.testing.assert_allclose(spd[1:-1], 15.0 * n[1:-1])


def test_time_derivative_matches_np_gradient_and_propagates_nan(rng):
    x = rng.normal(size=(30, 3, 2))
    np.testing.assert_allclose(F.time_derivative(x, 25.0), np.gradient(x, 1 / 25.0, axis=0))
    x = np.arange(10, dtype=float) * 2.0
    x[4] = np.nan
    d = F.time_derivative(x, 10.0)
    assert np.isnan(d[4])
    np.testing.assert_allclose(np.delete(d, 4), 20.0)  # one-sided next to the gap, still exact
    assert np.isnan(F.time_derivative(np.array([1.0]), 30.0)).all()


# ----------------------------------------------------------------------------- gaps, smoothing, resampling


def test_interpolate_gaps_short_long_edges():
    t = np.arange(30, dtype=float)
    x = 2.0 * t + 1.0
    x[[0, 1]] = np.nan  # leading edge
    x[5:8] = np.nan  # gap of 3
    x[12:16] = np.nan  # gap of 4
    x[28:] = np.nan  # trailing edge
    orig = x.copy()
    out = F.interpolate_gaps(x, max_gap=3)
    np.testing.assert_array_equal(x, orig)  # input untouched
    np.testing.assert_allclose(out[5:8], 2.0 * t[5:8] + 1.0)  # exact for linear motion
    assert np.isnan(out[12:16]).all()
    assert np.isnan(out[[0, 1, 28, 29]]).all()
    ok = ~np.isnan(orig)
    np.testing.assert_array_equal(out[ok], orig[ok])
    np.testing.assert_array_equal(F.interpolate_gaps(x, 0), orig)
    assert np.isnan(F.interpolate_gaps(x, 4)[28:]).all()
    np.testing.assert_allclose(F.interpolate_gaps(x, 4)[12:16], 2.0 * t[12:16] + 1.0)


def test_interpolate_gaps_per_channel_nd():
    T = 20
    base = np.arange(T, dtype=np.float32)[:, None, None, None] * np.array([1, -2], dtype=np.float32)
    x = np.broadcast_to(base, (T, 2, 3, 2)).copy()
    x[3:5, 0, 1, 0] = np.nan  # 2-frame gap in one channel
    x[6:15, 1, 2, :] = np.nan  # 9-frame gap in another
    x[:, 1, 0, :] = np.nan  # an untracked part: stays NaN
    out = F.interpolate_gaps(x, 4)
    assert out.dtype == np.float32 and out.shape == x.shape
    np.testing.assert_allclose(out[3:5, 0, 1, 0], [3.0, 4.0])
    assert np.isnan(out[6:15, 1, 2]).all() and np.isnan(out[:, 1, 0]).all()


def test_moving_average_nan_aware():
    x = np.arange(10, dtype=float)
    np.testing.assert_allclose(F.moving_average(x, 3)[1:-1], x[1:-1])  # linear: unchanged inside
    np.testing.assert_allclose(F.moving_average(x, 3)[[0, -1]], [0.5, 8.5])  # truncated at the edges
    x[5] = np.nan
    y = F.moving_average(x, 3)
    assert np.isnan(y[5])
    np.testing.assert_allclose(y[4], 3.5)  # mean of 3 and 4 (5 missing)
    np.testing.assert_array_equal(F.moving_average(x, 1), x)


def test_resample_linear_and_nearest_frames():
    x = np.arange(10, dtype=float) * 3.0  # 60 fps
    out = F.resample(x, 60.0, 30.0)
    np.testing.assert_allclose(out, x[::2])
    np.testing.assert_array_equal(F.nearest_frames(10, 60.0, 30.0), np.arange(0, 10, 2))
    up = F.resample(x, 30.0, 60.0)
    np.testing.assert_allclose(up, np.arange(19) * 1.5)
    np.testing.assert_array_equal(F.nearest_frames(4, 30.0, 60.0), [0, 1, 1, 2, 2, 3, 3])  # 0.5 rounds up
    x[3] = np.nan
    up = F.resample(x, 30.0, 60.0)
    assert np.isnan(up[6])  # exactly on the missing frame
    assert up[5] == 6.0 and up[7] == 12.0  # nearer present neighbour
    np.testing.assert_allclose(F.resample(np.zeros((9, 2, 3)), 45.0, 30.0).shape, (6, 2, 3))


# ----------------------------------------------------------------------------- scene vector


def _scene_px(T: int, rng: np.random.Generator) -> np.ndarray:
    xy = rng.normal(300, 40, (T, 4, S, 2)).astype(np.float32)
    xy[:, 3] = np.nan  # mouse 4 absent
    return xy


def test_scene_layout_names_and_values(rng):
    T = 40
    xy = _scene_px(T, rng)
    nose = SLOTS.index("nose")
    xy[:, 1, nose, 0] = 100 + 3 * np.arange(T)  # mouse2 nose: 3 px/frame in x
    xy[:, 1, nose, 1] = 50
    cfg = FeatureConfig()
    sc = F.scene_features(xy, 30.0, 2.0, (80.0, 40.0), cfg)
    names = F.scene_feature_names(SLOTS, 4)
    assert sc.shape == (T, 288) and sc.dtype == np.float32 and len(names) == 288
    assert names[0] == "mouse1.body_center.x" and names[1] == "mouse1.body_center.y"
    assert names[143] == "mouse4.headpiece.y" and names[144] == "mouse1.body_center.speed"
    assert names[216] == "mouse1.body_center.acc" and names[-1] == "mouse4.headpiece.acc"
    col = {n: i for i, n in enumerate(names)}
    np.testing.assert_allclose(sc[:, col["mouse2.nose.x"]], (100 + 3 * np.arange(T) - 80) / 2.0, rtol=1e-6)
    np.testing.assert_allclose(sc[:, col["mouse2.nose.y"]], 5.0)
    np.testing.assert_allclose(sc[:, col["mouse2.nose.speed"]], 45.0, rtol=1e-5)
    np.testing.assert_allclose(sc[:, col["mouse2.nose.acc"]], 0.0, atol=1e-3)
    assert np.isnan(sc[:, [i for n, i in col.items() if n.startswith("mouse4.")]]).all()
    assert np.isfinite(sc[:, [i for n, i in col.items() if not n.startswith("mouse4.")]]).all()


def test_scene_gaps_and_n_mice(rng):
    T = 60
    xy = _scene_px(T, rng)
    xy[10:13, 0, 0] = np.nan  # short gap: interpolated
    xy[20:40, 0, 1] = np.nan  # long gap: NaN
    cfg = FeatureConfig(max_gap=5)
    before = xy.copy()
    sc = F.scene_features(xy, 30.0, 2.0, None, cfg)
    F.clean_positions(xy, 2.0, (3.0, 4.0), 5)
    F.to_cm(xy, 2.0, (3.0, 4.0))
    np.testing.assert_array_equal(xy, before)  # inputs are never modified
    assert np.isfinite(sc[10:13, 0:2]).all()
    assert np.isnan(sc[20:40, 2:4]).all()
    assert np.isnan(sc[20:40, 144 + 1]).all() and np.isnan(sc[20:40, 216 + 1]).all()
    two = F.scene_features(xy, 30.0, 2.0, None, FeatureConfig(n_mice=2))
    assert two.shape == (T, 2 * S * 4)
    np.testing.assert_array_equal(two[:, : 2 * S * 2], sc[:, : 2 * S * 2])
    six = F.scene_features(xy[:, :2], 30.0, 2.0, None, FeatureConfig(n_mice=4))  # padded with NaN
    assert six.shape == (T, 288) and np.isnan(six[:, 2 * S * 2 : 4 * S * 2]).all()


def test_scene_smoothing_only_touches_derivatives(rng):
    xy = _scene_px(50, rng)
    raw = F.scene_features(xy, 30.0, 2.0, None, FeatureConfig())
    smooth = F.scene_features(xy, 30.0, 2.0, None, FeatureConfig(smooth_window=5))
    np.testing.assert_array_equal(raw[:, :144], smooth[:, :144])
    assert np.nanmean(smooth[:, 144:216]) < 0.8 * np.nanmean(raw[:, 144:216])  # noise is damped


# ----------------------------------------------------------------------------- pair features


def _mouse(centre, angle, length=4.0, rng=None) -> np.ndarray:
    """(T, S, 2) cm: a straight mouse of nose-tail length ``length`` at ``centre`` (T, 2) facing ``angle`` (T,)."""
    T = len(centre)
    u = np.stack([np.cos(angle), np.sin(angle)], axis=-1)  # (T, 2)
    length = np.broadcast_to(np.asarray(length, dtype=float), (T,))[:, None]  # (T, 1)
    along = np.linspace(-0.5, 0.5, S)[None, :, None] * length[:, :, None]  # (T, S, 1)
    pts = centre[:, None, :] + along * u[:, None, :]
    if rng is not None:  # lateral scatter so the parts are not colinear
        n = np.stack([-u[:, 1], u[:, 0]], axis=-1)
        pts = pts + rng.normal(0, 0.3, (1, S, 1)) * n[:, None, :]
    idx = {s: i for i, s in enumerate(SLOTS)}
    pts[:, idx["nose"]] = centre + 0.5 * length * u
    pts[:, idx["tail_base"]] = centre - 0.5 * length * u
    pts[:, idx["body_center"]] = centre
    return pts


def _two_mice(T: int, rng: np.random.Generator) -> np.ndarray:
    t = np.arange(T) / 30.0
    a = _mouse(np.stack([5 * np.cos(t), 3 * t], -1), 0.3 + 0.5 * np.sin(2 * t), rng=rng)
    b = _mouse(np.stack([10 - 4 * t, 2 + np.sin(3 * t)], -1), 2.0 - t, length=5.0, rng=rng)
    return np.stack([a, b], axis=1)  # (T, 2, S, 2)


def test_pair_feature_names_and_width():
    names = F.pair_feature_names(SLOTS)
    assert len(names) == F.n_pair_features(S) == 90
    assert len(set(names)) == len(names)
    assert names[0] == "agent.body_center.x" and names[2 * S] == "target.body_center.x"
    assert names[4 * S] == "dist.nose_nose" and names[-1] == "is_self"
    assert F.n_pair_features(7) == len(F.pair_feature_names(SLOTS[:7])) == 46


def test_pair_features_rigid_motion_invariant(rng):
    xy = _two_mice(80, rng)
    ref = F.pair_features(xy, 30.0, 0, 1, SLOTS)
    assert ref.shape == (80, 90) and ref.dtype == np.float32 and np.isfinite(ref).all()
    theta = 1.1
    rot = np.array([[np.cos(theta), -np.sin(theta)], [np.sin(theta), np.cos(theta)]])
    moved = xy @ rot.T + np.array([-37.0, 12.5])
    np.testing.assert_allclose(F.pair_features(moved, 30.0, 0, 1, SLOTS), ref, atol=2e-3)
    # mirrored scene: distances and speeds stay, signed angles flip
    mirror = xy * np.array([1.0, -1.0])
    mir = F.pair_features(mirror, 30.0, 0, 1, SLOTS)
    names = F.pair_feature_names(SLOTS)
    for n in ("dist.body_body", "agent.speed", "rel.speed", "rel.heading_cos", "agent.acc"):
        np.testing.assert_allclose(mir[:, names.index(n)], ref[:, names.index(n)], atol=2e-3)
    for n in ("rel.heading_sin", "bearing.sin", "agent.turn_rate"):
        np.testing.assert_allclose(mir[:, names.index(n)], -ref[:, names.index(n)], atol=2e-3)


def test_pair_features_hand_checked_geometry():
    T = 30
    t = np.arange(T) / 30.0
    agent = _mouse(np.zeros((T, 2)), np.full(T, np.pi / 2))  # at the origin, facing +y, nose (0, 2)
    # target 10 cm ahead of the agent, facing it, walking towards it at 6 cm/s
    target = _mouse(np.stack([np.zeros(T), 10 - 6 * t], -1), np.full(T, -np.pi / 2))
    xy = np.stack([agent, target], axis=1) + np.array([3.0, -4.0])  # translation does not matter
    f = F.pair_features(xy, 30.0, 0, 1, SLOTS)
    v = dict(zip(F.pair_feature_names(SLOTS), f[0]))
    assert v["dist.body_body"] == pytest.approx(10.0, abs=1e-4)
    assert v["dist.nose_nose"] == pytest.approx(6.0, abs=1e-4)  # 2 + 6 ... nose (0,2) vs (0,8)
    assert v["dist.nose_tailbase"] == pytest.approx(10.0, abs=1e-4)  # (0,2) vs (0,12)
    assert v["dist.nose_body"] == pytest.approx(8.0, abs=1e-4)
    assert v["dist.tailbase_nose"] == pytest.approx(10.0, abs=1e-4)  # (0,-2) vs (0,8)
    assert v["target.nose.x"] == pytest.approx(8.0, abs=1e-4) and v["target.nose.y"] == pytest.approx(0, abs=1e-4)
    assert v["agent.nose.x"] == pytest.approx(2.0, abs=1e-4) and v["agent.tail_base.x"] == pytest.approx(-2.0, abs=1e-4)
    assert (v["rel.heading_cos"], v["rel.heading_sin"]) == pytest.approx((-1.0, 0.0), abs=1e-5)
    assert (v["bearing.cos"], v["bearing.sin"]) == pytest.approx((1.0, 0.0), abs=1e-5)
    assert v["agent.body_length"] == pytest.approx(4.0, abs=1e-5)
    assert v["agent.speed"] == pytest.approx(0.0, abs=1e-4)
    assert v["is_self"] == 0.0
    col = F.pair_feature_names(SLOTS).index
    np.testing.assert_allclose(f[:, col("target.speed")], 6.0, atol=1e-3)
    np.testing.assert_allclose(f[:, col("rel.speed")], -6.0, atol=1e-3)
    np.testing.assert_allclose(f[:, col("agent.turn_rate")], 0.0, atol=1e-4)
    # the target on the agent's left: bearing (0, 1)
    left = np.stack([agent, _mouse(np.tile([-5.0, 0.0], (T, 1)), np.zeros(T))], axis=1)
    g = dict(zip(F.pair_feature_names(SLOTS), F.pair_features(left, 30.0, 0, 1, SLOTS)[0]))
    assert (g["bearing.cos"], g["bearing.sin"]) == pytest.approx((0.0, 1.0), abs=1e-5)
    assert (g["rel.heading_cos"], g["rel.heading_sin"]) == pytest.approx((0.0, -1.0), abs=1e-5)


def test_turn_rate_and_body_length_rate():
    T = 40
    t = np.arange(T) / 20.0
    m = _mouse(np.zeros((T, 2)), 0.7 * t, length=4.0 + 2.0 * t)  # turning 0.7 rad/s, growing 2 cm/s
    f = F.pair_features(m[:, None], 20.0, 0, 0, SLOTS)
    col = F.pair_feature_names(SLOTS).index
    np.testing.assert_allclose(f[:, col("agent.turn_rate")], 0.7, atol=1e-4)
    np.testing.assert_allclose(f[:, col("agent.body_length_rate")], 2.0, atol=1e-3)


def test_self_pair_layout(rng):
    xy = _two_mice(20, rng)
    f = F.pair_features(xy, 30.0, 1, 1, SLOTS)
    names = F.pair_feature_names(SLOTS)
    np.testing.assert_array_equal(f[:, : 2 * S], f[:, 2 * S : 4 * S])
    v = {n: f[:, i] for i, n in enumerate(names)}
    for n in ("dist.nose_nose", "dist.body_body", "bearing.cos", "bearing.sin", "rel.heading_sin"):
        np.testing.assert_allclose(v[n], 0.0, atol=1e-6)
    np.testing.assert_allclose(v["dist.nose_tailbase"], v["agent.body_length"], rtol=1e-6)
    np.testing.assert_allclose(v["dist.tailbase_nose"], v["agent.body_length"], rtol=1e-6)
    np.testing.assert_allclose(v["dist.nose_body"], 0.5 * v["agent.body_length"], rtol=1e-5)
    np.testing.assert_allclose(v["rel.heading_cos"], 1.0, atol=1e-6)
    np.testing.assert_array_equal(v["is_self"], 1.0)
    np.testing.assert_array_equal(v["agent.speed"], v["target.speed"])


def test_all_pair_features_matches_single(rng):
    xy = _two_mice(25, rng)
    pairs = [(0, 0), (0, 1), (1, 0), (1, 1)]
    allp = F.all_pair_features(xy, 30.0, pairs, SLOTS)
    assert allp.shape == (4, 25, 90)
    for i, (a, t) in enumerate(pairs):
        np.testing.assert_array_equal(allp[i], F.pair_features(xy, 30.0, a, t, SLOTS))


def test_pair_fallbacks_for_sparse_trackers(rng):
    xy = _two_mice(30, rng)
    mars = ["nose", "ear_left", "ear_right", "neck", "hip_left", "hip_right", "tail_base"]
    sub = xy[:, :, [SLOTS.index(s) for s in mars]]
    f = F.pair_features(sub, 30.0, 0, 1, mars)
    assert f.shape == (30, F.n_pair_features(7)) and np.isfinite(f).all()
    # no nose, no tail_base at all: heading falls back to head / hips, still finite
    xy2 = xy.copy()
    xy2[:, :, SLOTS.index("nose")] = np.nan
    xy2[:, :, SLOTS.index("tail_base")] = np.nan
    g = F.pair_features(xy2, 30.0, 0, 1, SLOTS)
    assert np.isfinite(g[:, 4 * S :]).all()  # every derived feature still defined
    assert np.isnan(g[:, F.pair_feature_names(SLOTS).index("agent.nose.x")]).all()  # the part itself is not
    # frames where the agent is missing entirely are NaN, not garbage
    xy3 = xy.copy()
    xy3[5:8, 0] = np.nan
    g = F.pair_features(xy3, 30.0, 0, 1, SLOTS)
    assert np.isnan(g[5:8, 4 * S]).all() and np.isfinite(g[12:, :]).all()
    with pytest.raises(ValueError):
        F.pair_features(xy, 30.0, 0, 1, SLOTS[:5])


def test_degenerate_inputs_do_not_crash():
    cfg = FeatureConfig()
    empty = np.full((30, 4, S, 2), np.nan, dtype=np.float32)  # nothing tracked at all
    sc = F.scene_features(empty, 30.0, 2.0, (1.0, 1.0), cfg)
    assert sc.shape == (30, 288) and np.isnan(sc).all()
    assert np.isnan(F.clean_positions(empty, 2.0, None, 5)).all()
    for T in (1, 2):
        xy = np.ones((T, 4, S, 2), dtype=np.float32)
        assert F.scene_features(xy, 30.0, 2.0, None, cfg).shape == (T, 288)
        assert F.all_pair_features(F.clean_positions(xy, 2.0, None, 5), 30.0, [(0, 1)], SLOTS).shape == (1, T, 90)
    assert F.all_pair_features(empty, 30.0, [], SLOTS).shape == (0, 30, 90)
    assert F.all_pair_features(empty, 30.0, [(0, 1)], SLOTS).shape == (1, 30, 90)


@pytest.mark.parametrize("chunk", [2048, 7, 1])
def test_sparse_slots_scene_matches_dense_computation(rng, monkeypatch, chunk):
    # live-channel compaction and time blocking must give exactly what one dense pass gives
    monkeypatch.setattr(F, "_TIME_CHUNK", chunk)
    xy = _scene_px(200, rng)
    xy[:, :, [1, 2, 5, 9, 10, 17]] = np.nan  # parts this "lab" does not track
    xy[rng.random((200, 4, S)) < 0.1] = np.nan
    sc = F.scene_features(xy, 30.0, 2.0, (5.0, 7.0), FeatureConfig(max_gap=3))
    cm = F.interpolate_gaps(F.to_cm(xy, 2.0, (5.0, 7.0)), 3)
    dense = np.concatenate(
        [cm.reshape(200, -1), F.speed(cm, 30.0).reshape(200, -1), F.acceleration(cm, 30.0).reshape(200, -1)], axis=1)
    np.testing.assert_allclose(sc, dense, rtol=1e-6, atol=1e-6)
    np.testing.assert_array_equal(np.isnan(sc), np.isnan(dense))
    np.testing.assert_array_equal(F.clean_positions(xy, 2.0, (5.0, 7.0), 3), cm)


LYRICAL = ["ear_left", "ear_right", "nose", "tail_base", "tail_tip"]  # a real 5-part lab: no body centre


def test_centre_fallback_is_mid_body_for_head_and_tail_labs(rng):
    xy = _two_mice(40, rng)
    sub = xy[:, :, [SLOTS.index(s) for s in LYRICAL]]
    kin = F.mouse_kinematics(sub, 30.0, LYRICAL)
    p = {s: sub[:, :, i] for i, s in enumerate(LYRICAL)}
    # the midpoint of the ears' mean (shoulder) and the tail base (hip), not the tail base itself
    want = ((p["ear_left"] + p["ear_right"]) / 2 + p["tail_base"]) / 2
    np.testing.assert_allclose(kin["centre"], want, rtol=1e-6, atol=1e-9)
    assert not np.allclose(kin["centre"], p["tail_base"], atol=0.05)  # the old fallback: the tail base
    f = F.pair_features(sub, 30.0, 0, 1, LYRICAL)
    assert np.isfinite(f[:, 4 * len(LYRICAL):]).all()
    body = F.pair_feature_names(LYRICAL).index("dist.body_body")
    np.testing.assert_allclose(f[:, body], np.hypot(*(want[:, 0] - want[:, 1]).T), rtol=1e-5)
    # frame by frame: where the ears are lost the shoulder falls back to the nose
    sub2 = sub.copy()
    sub2[10:15, :, :2] = np.nan
    c2 = F.mouse_kinematics(sub2, 30.0, LYRICAL)["centre"]
    np.testing.assert_allclose(c2[10:15], ((p["nose"] + p["tail_base"]) / 2)[10:15], rtol=1e-6, atol=1e-9)
    np.testing.assert_allclose(c2[20:], want[20:], rtol=1e-6, atol=1e-9)
    # MARS (neck + hips): the neck-hips midpoint; a tracked body_center or mid-body parts still win
    mars = ["nose", "ear_left", "ear_right", "neck", "hip_left", "hip_right", "tail_base"]
    m = xy[:, :, [SLOTS.index(s) for s in mars]]
    q = {s: m[:, :, i] for i, s in enumerate(mars)}
    np.testing.assert_allclose(F.mouse_kinematics(m, 30.0, mars)["centre"],
                               (q["neck"] + (q["hip_left"] + q["hip_right"]) / 2) / 2, rtol=1e-6, atol=1e-9)
    np.testing.assert_allclose(F.mouse_kinematics(xy, 30.0, SLOTS)["centre"], xy[:, :, SLOTS.index("body_center")])
    lat = ["nose", "lateral_left", "lateral_right", "tail_base"]
    w = xy[:, :, [SLOTS.index(s) for s in lat]]
    np.testing.assert_allclose(F.mouse_kinematics(w, 30.0, lat)["centre"], (w[:, :, 1] + w[:, :, 2]) / 2,
                               rtol=1e-6, atol=1e-9)
