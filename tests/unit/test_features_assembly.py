"""The scene and pair assembly of mabe.features (found by mutation testing of the sparse-slot scene
path, _landmarks, mouse_kinematics and all_pair_features): untracked slots among tracked ones, the
scene's smoothing and arena centre, its names, derivatives from the smoothed positions, every front /
back / centre fallback with hand-placed parts, a one-ear frame, no warnings on missing frames, any
memory layout, the messages. docs/testing.md lists the mutants these kill and the survivors judged equivalent."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

# every mabe name these tests use, in one place
from mabe import features as F
from mabe.config import FeatureConfig
from mabe.schema import DEFAULT_SLOTS

SLOTS = list(DEFAULT_SLOTS)
N_SLOTS = len(SLOTS)
SMOOTHED = ("speed", "acc", "body_length_rate", "turn_rate")


def _walk(T=60, M=2, S=N_SLOTS, seed=0, missing=0.05) -> np.ndarray:
    rng = np.random.default_rng(seed)
    xy = np.cumsum(rng.normal(0, 0.5, (T, M, 1, 2)), 0) + rng.normal(0, 3, (1, M, S, 2))
    xy = xy + rng.normal(0, 0.4, xy.shape)  # jitter: smoothing changes the derivatives
    xy[rng.random((T, M, S)) < missing] = np.nan
    return xy


@pytest.mark.parametrize("window", [2, 3])
def test_derivatives_come_from_the_smoothed_positions_and_the_rest_from_the_raw_ones(window):
    xy = _walk()
    got = F.mouse_kinematics(xy, 30.0, SLOTS, window)
    raw = F.mouse_kinematics(xy, 30.0, SLOTS, 1)
    pre = F.mouse_kinematics(F.moving_average(xy, window), 30.0, SLOTS, 1)
    for k in SMOOTHED:
        np.testing.assert_allclose(got[k], pre[k], rtol=1e-12, atol=1e-12, equal_nan=True)
        assert not np.allclose(got[k], raw[k], equal_nan=True)
    for k in ("centre", "front", "back", "heading", "body_length"):
        np.testing.assert_array_equal(got[k], raw[k])
    # the pair vector's agent / target speeds are the smoothed ones
    pair = F.pair_features(xy, 30.0, 0, 1, SLOTS, window)
    i = 4 * N_SLOTS + F.SCALAR_NAMES.index("agent.speed")
    np.testing.assert_allclose(pair[:, i], got["speed"][:, 0], rtol=1e-5, equal_nan=True)
    np.testing.assert_allclose(pair[:, i + 1], got["speed"][:, 1], rtol=1e-5, equal_nan=True)


def test_the_default_is_no_smoothing():
    xy = _walk()
    for k, v in F.mouse_kinematics(xy, 30.0, SLOTS).items():
        np.testing.assert_array_equal(v, F.mouse_kinematics(xy, 30.0, SLOTS, 1)[k])


def _parts(slots, where, T=4, M=1):
    """(T, M, S, 2): each slot at its (x, y) of ``where`` on every frame, mouse m shifted by 100 m cm."""
    xy = np.zeros((T, M, len(slots), 2))
    for i, s in enumerate(slots):
        xy[:, :, i] = where[s]
    return xy + 100.0 * np.arange(M)[None, :, None, None]


@pytest.mark.parametrize(("slots", "front"), [
    (["head", "ear_left", "ear_right", "neck", "tail_base"], "head"),
    (["headpiece", "ear_left", "ear_right", "neck", "tail_base"], "headpiece"),
    (["ear_left", "ear_right", "neck", "tail_base"], "ears"),
    (["neck", "tail_base"], "neck"),
])
def test_each_front_fallback_gives_its_part(slots, front):
    where = {"head": (5.0, 1.0), "headpiece": (6.0, 2.0), "ear_left": (3.0, 1.0), "ear_right": (3.0, -3.0),
             "neck": (2.0, 0.0), "tail_base": (-5.0, 0.0)}
    want = (3.0, -1.0) if front == "ears" else where[front]
    k = F.mouse_kinematics(_parts(slots, where, M=2), 30.0, slots)
    np.testing.assert_allclose(k["front"][:, 0], np.broadcast_to(want, (4, 2)))
    np.testing.assert_allclose(k["front"][:, 1], np.broadcast_to(want, (4, 2)) + 100.0)


@pytest.mark.parametrize(("slots", "back", "want"), [
    (["nose", "hip_left", "hip_right", "spine_2"], "hips", (-4.0, 0.0)),
    (["nose", "spine_2"], "spine_2", (-1.0, 0.5)),
])
def test_each_back_fallback_gives_its_part(slots, back, want):
    where = {"nose": (5.0, 0.0), "hip_left": (-4.0, 2.0), "hip_right": (-4.0, -2.0), "spine_2": (-1.0, 0.5)}
    k = F.mouse_kinematics(_parts(slots, where), 30.0, slots)
    np.testing.assert_allclose(k["back"][:, 0], np.broadcast_to(want, (4, 2)))


def test_the_last_centre_fallback_is_the_mean_of_the_non_tail_parts():
    slots = ["paw_left", "paw_right", "tail_tip", "tail_middle_1"]
    where = {"paw_left": (1.0, 1.0), "paw_right": (3.0, -1.0), "tail_tip": (-20.0, 0.0), "tail_middle_1": (-9.0, 0.0)}
    k = F.mouse_kinematics(_parts(slots, where), 30.0, slots)
    np.testing.assert_allclose(k["centre"][:, 0], np.broadcast_to((2.0, 0.0), (4, 2)))


def test_one_missing_ear_leaves_the_other_and_missing_frames_warn_nothing():
    slots = ["ear_left", "ear_right", "tail_base"]
    xy = _parts(slots, {"ear_left": (3.0, 1.0), "ear_right": (3.0, -3.0), "tail_base": (-5.0, 0.0)}, T=5)
    xy[1, 0, 0] = np.nan  # the left ear missing: the front is the right ear
    xy[2, 0, :2] = np.nan  # both ears missing: no front, NaN heading
    xy[3, 0, 2] = xy[3, 0, 0] = xy[3, 0, 1] = (0.0, 0.0)  # front on the back: a zero-length heading vector
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # 0 / 0 on missing parts is expected and silenced
        k = F.mouse_kinematics(xy, 30.0, slots)
    np.testing.assert_allclose(k["front"][1, 0], (3.0, -3.0))
    assert np.isnan(k["front"][2, 0]).all() and np.isnan(k["heading"][3, 0]).all()
    np.testing.assert_allclose(k["front"][0, 0], (3.0, -1.0))


def test_any_memory_layout_gives_the_same_features():
    xy = _walk(T=30)
    fortran = np.asfortranarray(xy)
    for k, v in F.mouse_kinematics(fortran, 30.0, SLOTS).items():
        np.testing.assert_array_equal(v, F.mouse_kinematics(xy, 30.0, SLOTS)[k])
    np.testing.assert_array_equal(F.pair_features(fortran, 30.0, 0, 1, SLOTS), F.pair_features(xy, 30.0, 0, 1, SLOTS))


def test_slot_name_count_messages():
    xy = np.zeros((4, 2, N_SLOTS, 2))
    msg = rf"^3 slot names for {N_SLOTS} keypoint slots$"
    with pytest.raises(ValueError, match=msg):
        F.mouse_kinematics(xy, 30.0, SLOTS[:3])
    with pytest.raises(ValueError, match=msg):
        F.all_pair_features(xy, 30.0, [(0, 1)], SLOTS[:3])


# ----------------------------------------------------------------------------- scene


def _scene_reference(xy, fps, window=1):
    """The scene vector written out: positions, then per-slot speeds and accelerations of the smoothed
    positions (mabe.features' basic functions)."""
    T = xy.shape[0]
    moving = F.moving_average(xy, window) if window > 1 else xy
    return np.concatenate([xy.reshape(T, -1), F.speed(moving, fps).reshape(T, -1),
                           F.acceleration(moving, fps).reshape(T, -1)], axis=1)


@pytest.mark.parametrize("window", [1, 2])
def test_untracked_slots_among_tracked_ones_keep_every_column_in_place(window):
    xy = _walk(T=40, M=3, missing=0.0)
    xy[:, 0, 0] = np.nan  # mouse 1's first slot untracked: the first live column follows dead ones
    xy[:, 0, 3] = np.nan  # and a dead slot after live ones
    xy[:, 2] = np.nan  # a whole mouse absent
    got = F.scene_from_cm(xy, 30.0, window)
    np.testing.assert_allclose(got, _scene_reference(xy, 30.0, window).astype(np.float32), rtol=1e-6, atol=1e-5,
                               equal_nan=True)


def test_scene_features_without_arena_centre_keep_the_pixel_origin():
    px = _walk(T=30, missing=0.0) * 10 + 300
    cfg = FeatureConfig(n_mice=2, arena_centre=False, max_gap=0)
    got = F.scene_features(px, 30.0, 10.0, (320.0, 240.0), cfg)
    np.testing.assert_allclose(got[:, : 2 * 2 * N_SLOTS], (px / 10.0).reshape(30, -1), rtol=1e-6)


def test_scene_names_default_to_four_mice_and_pad_mice_keeps_the_dtype():
    names = F.scene_feature_names(SLOTS)
    assert len(names) == 4 * N_SLOTS * 4 == 288 and names[-1] == f"mouse4.{SLOTS[-1]}.acc"
    padded = F.pad_mice(np.zeros((3, 2, N_SLOTS, 2), np.float32), 4)
    assert padded.dtype == np.float32 and np.isnan(padded[:, 2:]).all()
