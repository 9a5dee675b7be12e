"""PositionTracks (compact cache, features per batch) against TrackSet (float32 cache) on the tiny synth set."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from mabe import data, poscache, postracks, prepare, windows
from mabe.config import FeatureConfig, TaskConfig

SLOTS = list(data.DEFAULT_SLOTS)


def _compact(root, out):
    """The tiny set's train videos -> a position cache (the integration's prepare will do this)."""
    for task in prepare._tasks(root, ["train"]):
        trk = data.read_tracking(task["tracking_path"], SLOTS, data.MAX_MICE)
        ids = [m + 1 for m in np.flatnonzero(trk.mice)]
        iv = (poscache.intervals_from_annotation(data.read_annotation(task["annotation_path"]), ids)
              if task["has_annotation"] else None)
        poscache.write_video(
            prepare.video_dir(out, task["lab_id"], task["video_id"]), xy_px=trk.xy, mice=trk.mice, slots=SLOTS,
            fps=task["fps"], pix_per_cm=task["pix_per_cm"], centre_px=(task["width"] / 2, task["height"] / 2),
            lab=task["lab_id"], video=task["video_id"], split="train", intervals=iv,
            labeled=[(a, t, data.ACTION_INDEX[act]) for a, t, act in task["labeled"]], has_labels=task["has_annotation"])


@pytest.fixture(scope="module")
def caches(tiny_data, tmp_path_factory):
    out = {}
    base = tmp_path_factory.mktemp("postracks")
    _compact(tiny_data, base / "pos")
    for name, fcfg in (("native", FeatureConfig()), ("resampled", FeatureConfig(target_fps=15.0))):
        out[name] = (fcfg, prepare.prepare_dataset(tiny_data, fcfg, base / "old", splits=["train"], workers=1,
                                                   progress=False))
    return base / "pos", out


@pytest.mark.parametrize("which", ["native", "resampled"])
@pytest.mark.parametrize("mode", ["pair", "scene"])
def test_position_tracks_match_the_float32_cache(caches, which, mode):
    pos, old = caches
    fcfg, cache = old[which]
    task = TaskConfig(mode=mode)
    _, index = prepare.open_cache(cache)
    vids = sorted(index["video_id"].unique())
    actions = windows.resolve_actions(cache, task, vids, index) if mode == "pair" else None
    ts = windows.load_trackset(cache, task, vids, actions, index_df=index)
    pt = postracks.load_position_tracks(pos, task, vids, fcfg, actions or [], SLOTS)
    for k in ("offsets", "video_id", "agent_id", "target_id", "label_mask", "Y"):
        np.testing.assert_array_equal(getattr(pt, k), getattr(ts, k), err_msg=k)
    assert list(pt.lab_id) == list(ts.lab_id) and pt.names == ts.names
    np.testing.assert_allclose(pt.fps, ts.fps)
    assert (pt.to_video is None) == (ts.to_video is None) == (which == "native")
    if pt.to_video:
        for a, b in zip(pt.to_video, ts.to_video):
            np.testing.assert_array_equal(a[0], b[0]) and a[1:] == b[1:]

    W = 64
    wins = windows.window_index(ts.lengths, W, 40)
    shift = np.random.default_rng(0).integers(-3, 4, len(wins))
    ref = windows.gather(ts.arrays(), wins, W, shift, mode=mode)
    arrays = pt.tensors()
    got = postracks.batch(arrays, torch.from_numpy(wins), W, fcfg, SLOTS, mode=mode, max_ratio=pt.max_ratio,
                          shift=torch.from_numpy(shift))
    for k in ("valid", "y") + (("mask",) if mode == "pair" else ()):
        np.testing.assert_array_equal(got[k].numpy(), ref[k], err_msg=k)
    # features: equal up to the stored positions' quantisation (poscache's bound for accelerations)
    bound = 2 * math.sqrt(2) * float(pt.video_fps.max()) ** 2 * float(pt.quantum.max())
    x_ref = np.nan_to_num(ref["x"], nan=0.0)
    diff = np.abs(got["x"].numpy() - x_ref)
    assert diff.max() <= bound + 1e-4 * np.abs(x_ref).max()
    assert (got["x"].numpy() == 0).mean() == pytest.approx((x_ref == 0).mean(), abs=1e-3)  # NaN where numpy's

    stats_ref = windows.norm_stats(ts.X)
    stats = postracks.norm_stats(arrays, fcfg, SLOTS, mode=mode, max_ratio=pt.max_ratio, chunk=256)
    np.testing.assert_allclose(stats["mean"], stats_ref["mean"], rtol=1e-3, atol=1e-3)
    np.testing.assert_allclose(stats["std"], stats_ref["std"], rtol=1e-3, atol=1e-3)
    normed = postracks.batch(arrays, torch.from_numpy(wins[:8]), W, fcfg, SLOTS, mode=mode, max_ratio=pt.max_ratio,
                             shift=torch.from_numpy(shift[:8]), norm={k: torch.from_numpy(v) for k, v in stats.items()})
    raw = got["x"][:8]
    keep = raw != 0  # zeros stood for NaN or padding, which stay 0 after standardising
    want = (raw - torch.from_numpy(stats["mean"])) / torch.from_numpy(stats["std"])
    torch.testing.assert_close(normed["x"][keep], want[keep])
    assert (normed["x"][~got["valid"][:8]] == 0).all()
