"""The compact position cache: round trip, precision bounds on the features, labels, layout check, size."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from mabe import data
from mabe import features as F
from mabe import poscache as P
from mabe.config import FeatureConfig

SLOTS = list(data.DEFAULT_SLOTS)


def _xy(rng, T=400, M=4, ppc=10.0, centre=(320.0, 240.0)):
    """(T, M, 18, 2) px random walks within about +-30 cm of the centre, with missing points and parts."""
    S = len(SLOTS)
    walk = np.cumsum(rng.normal(0, 0.3, (T, M, 1, 2)), axis=0) * ppc
    xy = np.array(centre) + np.clip(walk, -25 * ppc, 25 * ppc) + rng.normal(0, 2.0 * ppc, (1, M, S, 2))
    xy[rng.random((T, M, S)) < 0.05] = np.nan
    xy[:, :, 3] = np.nan  # an untracked slot
    return xy.astype(np.float32)


def test_quantum_is_a_power_of_two_that_fits():
    for big in (0.1, 30.0, 63.9, 64.0, 1000.0, 5e4):
        q = P.quantum_for(big)
        assert math.log2(q) == int(math.log2(q)) and big / q <= 32767 and (q == P.MIN_QUANTUM_CM or big / q > 16383)
    assert P.quantum_for(float("nan")) == P.MIN_QUANTUM_CM


def test_encode_decode_round_trip_within_half_a_step(rng):
    xy = _xy(rng)
    mice = np.array([True, True, False, True])
    xy[:, 2] = np.nan
    codes, q, m_idx, s_idx = P.encode_positions(xy, mice, 10.0, (320.0, 240.0))
    assert codes.dtype == np.int16 and m_idx == [0, 1, 3] and 3 not in s_idx and len(s_idx) == len(SLOTS) - 1
    back = P.decode_positions(codes, q, m_idx, s_idx, 4, len(SLOTS), np.float64)
    want = F.to_cm(xy.astype(np.float64), 10.0, (320.0, 240.0))
    np.testing.assert_array_equal(np.isnan(back), np.isnan(want))
    err = np.nanmax(np.abs(back - want))
    assert 0 < err <= q / 2 + 1e-5 and q <= 2.0**-9  # + float32 px -> cm rounding; within +-64 cm


def test_write_read_round_trip_and_bytes_a_frame(tmp_path, rng):
    xy = _xy(rng, T=500, M=4)
    mice = np.array([True, True, False, False])  # a 2-mouse video in 4 slots
    iv = np.array([[1, 2, data.ACTION_INDEX["sniff"], 10, 40], [2, 2, data.ACTION_INDEX["rear"], 100, 130]])
    meta = P.write_video(tmp_path / "v", xy_px=xy, mice=mice, slots=SLOTS, fps=30.0, pix_per_cm=10.0,
                         centre_px=(320.0, 240.0), lab="L", video=7, split="train", intervals=iv,
                         labeled=[(1, 2, data.ACTION_INDEX["sniff"])], has_labels=True)
    v = P.read_video(tmp_path / "v")
    assert isinstance(v.xy, np.memmap) and v.meta == json.loads((tmp_path / "v" / "meta.json").read_text())
    assert v.pairs == [(1, 1), (1, 2), (2, 1), (2, 2)] and meta["mice"] == [1, 2]
    pos = v.positions(SLOTS)
    want = F.to_cm(xy, 10.0, (320.0, 240.0))
    want[:, 2:] = np.nan
    np.testing.assert_array_equal(np.isnan(pos), np.isnan(want))
    assert np.nanmax(np.abs(pos - want)) <= meta["quantum_cm"] / 2 + 1e-6
    raw = v.positions(SLOTS, arena_centre=False)
    np.testing.assert_allclose(raw, pos + np.array([32.0, 24.0], np.float32), atol=1e-5)
    sub = v.positions(["tail_base", "nose"], n_mice=2)  # a slot subset, reordered
    np.testing.assert_array_equal(sub[:, :, 1], pos[:, :2, SLOTS.index("nose")])
    lab = v.frame_labels()
    assert lab.shape == (4, 500, len(data.ACTIONS))
    assert lab[1, 10:40, data.ACTION_INDEX["sniff"]].all() and lab[1].sum() == 30 and lab[3].sum() == 30
    assert v.labeled_mask()[1, data.ACTION_INDEX["sniff"]] and v.labeled_mask().sum() == 1
    frames = F.nearest_frames(500, 30.0, 10.0)
    np.testing.assert_array_equal(v.frame_labels(frames=frames), lab[:, frames])
    size = P.folder_nbytes(tmp_path / "v")
    stored = 2 * (len(SLOTS) - 1) * 2 * 2  # 2 mice x 17 tracked slots x (x, y) x int16
    assert 500 * stored <= size <= 500 * stored + 2048  # + npy headers, labels and meta.json


def test_intervals_from_annotation_drops_absent_mice():
    ann = data.pd.DataFrame({"agent_id": [1, 3], "target_id": [2, 1], "action": ["sniff", "attack"],
                             "start_frame": [0, 5], "stop_frame": [4, 9]})
    with pytest.warns(data.MabeDataWarning, match=r"\(3,1\) x1"):
        iv = P.intervals_from_annotation(ann, [1, 2])
    assert iv.tolist() == [[1, 2, data.ACTION_INDEX["sniff"], 0, 4]]


def test_layout_mismatch_and_old_cache_are_refused(tmp_path, rng):
    xy = _xy(rng, T=20, M=1)
    P.write_video(tmp_path / "v", xy_px=xy, mice=np.array([True]), slots=SLOTS, fps=30.0, pix_per_cm=10.0,
                  centre_px=(0.0, 0.0), lab="L", video=1, split="train")
    meta = json.loads((tmp_path / "v" / "meta.json").read_text())
    meta["layout"] = P.LAYOUT_VERSION + 1
    (tmp_path / "v" / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(P.StaleCacheError, match="Rebuild it"):
        P.read_video(tmp_path / "v")
    old = tmp_path / "old"
    (old / "videos" / "L" / "1").mkdir(parents=True)
    (old / "videos" / "L" / "1" / "meta.json").write_text(json.dumps({"lab": "L", "n_frames": 3}))
    (old / "config.json").write_text(json.dumps(FeatureConfig().__dict__))
    assert P.cache_layout(old) == 0
    with pytest.raises(P.StaleCacheError, match="float32 feature cache"):
        P.read_video(old / "videos" / "L" / "1")


def test_damaged_array_names_the_file(tmp_path, rng):
    xy = _xy(rng, T=30, M=1)
    P.write_video(tmp_path / "v", xy_px=xy, mice=np.array([True]), slots=SLOTS, fps=30.0, pix_per_cm=10.0,
                  centre_px=(0.0, 0.0), lab="L", video=1, split="train")
    np.save(tmp_path / "v" / "xy.npy", np.zeros((29, 1, 17, 2), np.int16))
    with pytest.raises(data.MabeDataError, match="xy.npy"):
        P.read_video(tmp_path / "v")


@pytest.mark.parametrize("fps", [30.0, 25.0])
def test_features_from_quantised_positions_within_the_stated_bounds(rng, fps):
    """The module docstring's bounds: positions q/2, speeds sqrt(2) fps q, accelerations 2 sqrt(2) fps^2 q."""
    xy = _xy(rng, T=600)
    codes, q, m_idx, s_idx = P.encode_positions(xy, np.ones(4, bool), 10.0, (320.0, 240.0))
    cm_q = P.decode_positions(codes, q, m_idx, s_idx, 4, len(SLOTS), np.float64)
    cm = F.to_cm(xy.astype(np.float64), 10.0, (320.0, 240.0))
    fcfg = FeatureConfig()
    a = F.scene_from_cm(F.interpolate_gaps(cm, fcfg.max_gap), fps).astype(np.float64)
    b = F.scene_from_cm(F.interpolate_gaps(cm_q, fcfg.max_gap), fps).astype(np.float64)
    np.testing.assert_array_equal(np.isnan(a), np.isnan(b))
    n = 4 * len(SLOTS)
    diff = np.abs(a - b)
    f32 = 1e-6 * np.nanmax(np.abs(a), axis=0, initial=0.0, where=~np.isnan(a))  # the cache's float32 rounding
    assert np.nanmax(diff[:, : 2 * n] - f32[: 2 * n]) <= q / 2 + 1e-5  # + the float32 px -> cm conversion
    assert np.nanmax(diff[:, 2 * n : 3 * n] - f32[2 * n : 3 * n]) <= math.sqrt(2) * fps * q
    assert np.nanmax(diff[:, 3 * n :] - f32[3 * n :]) <= 2 * math.sqrt(2) * fps**2 * q
    assert np.nanmax(diff[:, 2 * n : 3 * n]) > 0  # the quantisation did change something


def test_int16_store_windows_equal_numpy_features_of_the_decoded_positions(tmp_path, rng):
    """stack_codes -> features_torch.window_features decodes per batch: the numpy features of what was stored."""
    import torch

    from mabe import features_torch as FT

    assert int(P.MISSING) == FT.MISSING_CODE
    videos, fps = [], [30.0, 25.0]
    for i, (T, mice) in enumerate([(300, [True, True, False, False]), (200, [True, False, True, True])]):
        xy = _xy(rng, T=T, M=4, ppc=8.0 + i)
        P.write_video(tmp_path / str(i), xy_px=xy, mice=np.array(mice), slots=SLOTS, fps=fps[i], pix_per_cm=8.0 + i,
                      centre_px=(320.0, 240.0), lab="L", video=i, split="train")
        videos.append(P.read_video(tmp_path / str(i)))
    codes, offsets, quantum = P.stack_codes(videos, SLOTS)
    assert codes.shape == (500, 4, len(SLOTS), 2) and (codes[:300, 2:] == P.MISSING).all()
    fcfg = FeatureConfig()
    W, starts, video = 50, [0, 120, 260, 0, 90, 170], [0, 0, 0, 1, 1, 1]
    agent, target = [0, 1, 0, 0, 2, 3], [1, 1, 0, 2, 3, 0]
    out, valid = FT.window_features(
        torch.from_numpy(codes), torch.from_numpy(offsets), torch.tensor(video), torch.tensor(starts), W,
        torch.tensor(fps, dtype=torch.float64), fcfg, SLOTS, agent=torch.tensor(agent), target=torch.tensor(target),
        quantum=torch.from_numpy(quantum), dtype=torch.float64)
    for i, (v, s) in enumerate(zip(video, starts)):
        cm = F.interpolate_gaps(videos[v].positions(SLOTS, dtype=np.float64), fcfg.max_gap)
        ref = F.all_pair_features(cm, fps[v], [(agent[i], target[i])], SLOTS)[0][s : s + W]
        assert int(valid[i].sum()) == len(ref)
        got = out[i, : len(ref)].numpy()
        np.testing.assert_array_equal(np.isnan(got), np.isnan(ref))
        np.testing.assert_allclose(got, ref, rtol=1e-6, atol=1e-5)
