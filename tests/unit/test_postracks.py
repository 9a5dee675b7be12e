"""PositionTracks (the position cache, features per batch): the tracks it loads (order, labels, masks, what it
keeps and drops, resampled maps) and that its batches equal the whole-video numpy features
(``prepare.video_features``) of the same cache, on the tiny synth set."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest
import torch

from helpers import make_fake_cache
from mabe import data, postracks, prepare, windows
from mabe.config import FeatureConfig, TaskConfig
from mabe.data import ACTION_INDEX, ACTIONS
from mabe.errors import MabeError
from mabe.postracks import load_position_tracks, resolve_actions

SLOTS = list(data.DEFAULT_SLOTS)


def _numpy_trackset(cache, task, vids, actions) -> windows.TrackSet:
    """The same tracks as load_position_tracks, X from prepare.load_video (whole-video numpy features)."""
    xs, ys, masks, meta, to_video = [], [], [], [], []
    _, index = prepare.open_cache(cache)
    names = ["none", *task.classes] if task.mode == "scene" else list(actions)
    cols = [ACTION_INDEX[a] for a in names] if task.mode == "pair" else None
    for (lab, vid), _ in index[index.video_id.isin(vids)].groupby(["lab_id", "video_id"], sort=True):
        v = prepare.load_video(cache, lab, vid)
        back = (v["frames"], v["meta"]["n_video_frames"], v["meta"]["video_fps"]) if v["meta"]["resampled"] else None
        if task.mode == "scene":
            if v["labeled"].any():
                xs.append(v["scene"])
                ys.append(windows.scene_labels(v["labels"], task.classes))
                masks.append(np.full(len(names), True))
                meta.append((lab, vid, -1, -1, v["meta"]["fps"]))
                to_video.append(back)
            continue
        for p, (a, t) in enumerate(v["meta"]["pairs"]):
            if v["labeled"][p, cols].any():
                xs.append(v["pair"][p])
                ys.append(v["labels"][p][:, cols])
                masks.append(v["labeled"][p, cols])
                meta.append((lab, vid, a, t, v["meta"]["fps"]))
                to_video.append(back)
    lab_id, video_id, agent_id, target_id, fps = zip(*meta)
    ts = windows.TrackSet.from_tracks(task.mode, names, xs, ys, np.stack(masks), lab_id=lab_id, video_id=video_id,
                                      agent_id=agent_id, target_id=target_id, fps=fps)
    ts.to_video = to_video if any(b is not None for b in to_video) else None
    return ts


@pytest.fixture(scope="module")
def caches(tiny_data, tmp_path_factory):
    out = {}
    base = tmp_path_factory.mktemp("postracks")
    for name, fcfg in (("native", FeatureConfig()), ("resampled", FeatureConfig(target_fps=15.0))):
        out[name] = (fcfg, prepare.prepare_dataset(tiny_data, fcfg, base / "c", splits=["train"], workers=1,
                                                   progress=False))
    return out


@pytest.mark.parametrize("which", ["native", "resampled"])
@pytest.mark.parametrize("mode", ["pair", "scene"])
def test_position_tracks_match_the_numpy_features(caches, which, mode):
    fcfg, cache = caches[which]
    task = TaskConfig(mode=mode)
    _, index = prepare.open_cache(cache)
    vids = sorted(index["video_id"].unique())
    actions = resolve_actions(cache, task, vids, index) if mode == "pair" else None
    ts = _numpy_trackset(cache, task, vids, actions)
    pt = load_position_tracks(cache, task, vids, actions, index_df=index)
    assert pt.n_features == ts.n_features and pt.n_rows == ts.n_rows
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


# ----------------------------------------------------------------------------- loading (moved from test_windows*)


def test_load_position_tracks_pair_and_scene(fake_cache):
    cache_dir = fake_cache
    task = TaskConfig(mode="pair")
    videos = [1000, 1001]
    actions = resolve_actions(cache_dir, task, videos)
    assert actions == ["attack", "rear", "sniff"]  # ACTIONS order, everything labelled
    ts = load_position_tracks(cache_dir, task, videos, actions)
    assert ts.n_tracks == 8 and ts.names == actions and ts.n_features == 90
    assert ts.store.dtype == np.int16 and ts.Y.dtype == np.uint8 and ts.Y.shape == (ts.n_rows, 3)
    assert ts.label_mask[0].tolist() == [False, True, False]  # (1, 1) self: rear only
    assert ts.label_mask[1].tolist() == [True, False, True]  # (1, 2): attack, sniff
    assert ts.agent_id.tolist()[:4] == [1, 1, 2, 2] and ts.target_id.tolist()[:4] == [1, 2, 1, 2]
    pair = prepare.load_video(cache_dir, "Lab0", 1001)["pair"]
    lo, hi = ts.offsets[5], ts.offsets[6]
    X = ts.to_trackset().X
    np.testing.assert_allclose(X[lo:hi], np.nan_to_num(pair[1]), rtol=1e-4, atol=1e-3)

    scene = load_position_tracks(cache_dir, TaskConfig(mode="scene"), videos)
    assert scene.n_tracks == 2 and scene.names[0] == "none" and scene.Y.dtype == np.int64
    sniff = prepare.load_video(cache_dir, "Lab0", 1000)["labels"][:, :, ACTION_INDEX["sniff"]].any(0)
    assert sniff.any() and np.array_equal(scene.Y[: scene.offsets[1]], sniff.astype(np.int64))  # rear: no class


def _edit_labeled(cache_dir, lab, vid, fn):
    """Rewrite a cached video's labelled triples through its (n_pairs, 37) mask: ``fn(mask) -> mask``."""
    folder = cache_dir / "videos" / lab / str(vid)
    v = prepare.read_video(cache_dir, lab, vid)
    mask = fn(v.labeled_mask())
    p, a = np.nonzero(mask)
    pairs = np.array(v.pairs, dtype=np.int16).reshape(-1, 2)
    np.save(folder / "labeled.npy", np.column_stack([pairs[p], a]).astype(np.int16).reshape(-1, 3))
    meta = json.loads((folder / "meta.json").read_text())
    meta["files"]["labeled.npy"] = (folder / "labeled.npy").stat().st_size
    (folder / "meta.json").write_text(json.dumps(meta))
    return folder


@pytest.fixture
def cache(tmp_path):
    return make_fake_cache(tmp_path / "cache", labs=(3,), frames=(40, 60))


def test_unknown_actions_are_named_with_where_they_came_from(cache):
    valid = ", ".join(ACTIONS)
    with pytest.raises(MabeError) as e:
        load_position_tracks(cache, TaskConfig(mode="scene", classes={"inv": ["sniff", "bogus"]}), [1000])
    assert str(e.value) == f"task.classes: unknown action(s) ['bogus']; valid actions: {valid}"
    with pytest.raises(MabeError) as e:
        load_position_tracks(cache, TaskConfig(mode="pair"), [1000], ["nope"])
    assert str(e.value) == f"actions: unknown action(s) ['nope']; valid actions: {valid}"
    with pytest.raises(MabeError) as e:
        resolve_actions(cache, TaskConfig(mode="pair", actions=["rear", "zzz"]), [1000])
    assert str(e.value) == f"task.actions: unknown action(s) ['zzz']; valid actions: {valid}"
    assert resolve_actions(cache, TaskConfig(mode="pair", actions=["sniff", "rear"]), [1000]) == ["sniff", "rear"]


def test_resolved_actions_pool_every_video_and_the_loader_uses_them(cache):
    # only the first video labels "approach" (on pair 1): it must survive the later videos
    _edit_labeled(cache, "Lab0", 1000, lambda a: np.where(
        np.arange(len(ACTIONS)) == ACTION_INDEX["approach"], np.arange(4)[:, None] == 1, a))
    task = TaskConfig(mode="pair")
    actions = resolve_actions(cache, task, [1000, 1001, 1002])
    assert actions == ["approach", "attack", "rear", "sniff"]
    ts = load_position_tracks(cache, task, [1000, 1001, 1002])
    assert ts.names == actions
    assert ts.label_mask[:4, 0].tolist() == [False, True, False, False]


def test_a_given_index_is_used_for_the_tracks(cache):
    index = pd.read_parquet(cache / "index.parquet")
    task = TaskConfig(mode="pair")
    assert resolve_actions(cache, task, [1000], index_df=index) == ["attack", "rear", "sniff"]
    assert load_position_tracks(cache, task, [1000], index_df=index).n_tracks == 4
    assert load_position_tracks(cache, task, [1000], index_df=index[index.pair_index < 2]).n_tracks == 2
    (cache / "index.parquet").unlink()
    with pytest.raises(MabeError, match="not a prepared feature cache"):
        load_position_tracks(cache, task, [1000])


def test_tracks_come_in_lab_video_pair_order_whatever_the_index_order(cache):
    index = pd.read_parquet(cache / "index.parquet")
    shuffled = index.iloc[::-1].reset_index(drop=True)
    ts = load_position_tracks(cache, TaskConfig(mode="pair"), [1002, 1000], ["sniff", "rear"], index_df=shuffled)
    assert ts.video_id.tolist() == [1000] * 4 + [1002] * 4
    assert ts.agent_id.tolist() == [1, 1, 2, 2] * 2 and ts.target_id.tolist() == [1, 2, 1, 2] * 2
    sc = load_position_tracks(cache, TaskConfig(mode="scene"), [1002, 1000], index_df=shuffled)
    assert sc.video_id.tolist() == [1000, 1002]


def test_a_video_with_one_pair_in_the_index(tmp_path):
    cache = make_fake_cache(tmp_path / "c", labs=(2,), frames=(40, 50))
    index = pd.read_parquet(cache / "index.parquet")
    one = index[index.pair_index == 1]  # one track per video in this index
    ts = load_position_tracks(cache, TaskConfig(mode="pair"), [1000, 1001], ["sniff"], index_df=one)
    assert ts.n_tracks == 2 and ts.fps.tolist() == [30.0, 30.0] and ts.agent_id.tolist() == [1, 1]
    assert ts.target_id.tolist() == [2, 2] and ts.lab_id.tolist() == ["Lab0", "Lab0"]


def test_unlabelled_tracks_are_dropped_by_default_and_kept_on_request(cache):
    # video 1000: nothing labelled at all; video 1001: its first pair (1, 1) has nothing labelled
    _edit_labeled(cache, "Lab0", 1000, lambda a: np.zeros_like(a))
    _edit_labeled(cache, "Lab0", 1001, lambda a: np.where(np.arange(4)[:, None] == 0, False, a))
    pair = TaskConfig(mode="pair")
    ts = load_position_tracks(cache, pair, [1000, 1001, 1002], ["rear", "sniff"])
    assert list(zip(ts.video_id.tolist(), ts.agent_id.tolist(), ts.target_id.tolist())) == [
        (1001, 1, 2), (1001, 2, 1), (1001, 2, 2), (1002, 1, 1), (1002, 1, 2), (1002, 2, 1), (1002, 2, 2)]
    every = load_position_tracks(cache, pair, [1000, 1001, 1002], ["rear", "sniff"], drop_unlabeled=False)
    assert every.n_tracks == 12 and every.video_id.tolist() == [1000] * 4 + [1001] * 4 + [1002] * 4
    assert every.label_mask[:4].tolist() == [[False, False]] * 4

    scene = TaskConfig(mode="scene")
    sc = load_position_tracks(cache, scene, [1000, 1001, 1002])
    assert sc.video_id.tolist() == [1001, 1002] and sc.label_mask.all()
    sc_all = load_position_tracks(cache, scene, [1000, 1001, 1002], drop_unlabeled=False)
    assert sc_all.video_id.tolist() == [1000, 1001, 1002]
    assert sc_all.label_mask.dtype == bool
    assert sc_all.label_mask.tolist() == [[False] * 4, [True] * 4, [True] * 4]


def test_nothing_labelled_names_the_cache_and_the_video_count(cache):
    for vid in (1000, 1001):
        _edit_labeled(cache, "Lab0", vid, lambda a: np.zeros_like(a))
    with pytest.raises(MabeError) as e:
        load_position_tracks(cache, TaskConfig(mode="pair"), [1000, 1001], ["sniff"])
    assert str(e.value) == f"{cache}: no pair tracks with labels among 2 videos"
    with pytest.raises(MabeError) as e:
        resolve_actions(cache, TaskConfig(mode="pair"), [1000, 1001])
    assert str(e.value) == f"{cache}: no labelled behaviour in the 2 training videos"


def test_resampled_videos_carry_their_map_back_to_video_frames(tmp_path):
    fcfg = FeatureConfig(target_fps=15.0)
    cache = make_fake_cache(tmp_path / "cache", fcfg, labs=(3,), frames=(40, 60))
    folder = cache / "videos" / "Lab0" / "1000"  # a video already at 15 fps: not resampled
    meta = json.loads((folder / "meta.json").read_text())
    meta.update(fps=15.0, row_fps=15.0, n_rows=meta["n_frames"], resampled=False)
    (folder / "meta.json").write_text(json.dumps(meta))
    for task, n_per_video in ((TaskConfig(mode="pair"), 4), (TaskConfig(mode="scene"), 1)):
        ts = load_position_tracks(cache, task, [1000, 1001], ["rear", "sniff"] if task.mode == "pair" else None)
        assert ts.to_video is not None and len(ts.to_video) == 2 * n_per_video
        assert all(b is None for b in ts.to_video[:n_per_video])
        T = json.loads((cache / "videos" / "Lab0" / "1001" / "meta.json").read_text())["n_frames"]
        for f, n_video, fps in ts.to_video[n_per_video:]:
            assert f.dtype == np.int64 and f.tolist() == np.arange(0, T, 2).tolist()
            assert n_video == T and fps == 30.0
        assert ts.lengths.tolist() == [meta["n_frames"]] * n_per_video + [len(np.arange(0, T, 2))] * n_per_video
    plain = load_position_tracks(make_fake_cache(tmp_path / "c2", labs=(3,), frames=(40, 60)), TaskConfig(mode="pair"),
                                 [1000, 1002], ["sniff"])
    assert plain.to_video is None


def test_window_dataset_items_are_whole_batches_of_position_tracks(fake_cache):
    pt = load_position_tracks(fake_cache, TaskConfig(mode="pair"), [1000, 1001])
    w = windows.window_index(pt.lengths, 16, 8)
    shift = np.random.default_rng(0).integers(-2, 3, len(w))
    ds = windows.WindowDataset(pt, 16, batch_size=5)
    ds.set_plan(w, shift)
    assert len(ds) == math.ceil(len(w) / 5)
    ref = pt.batch(pt.tensors(), torch.from_numpy(w[5:10]), 16, torch.from_numpy(shift[5:10]))
    for k, v in ds[1].items():
        torch.testing.assert_close(v, ref[k])


def test_track_metadata_comes_from_the_index(cache):
    index = pd.read_parquet(cache / "index.parquet")
    index.loc[index.video_id == 1001, "fps"] = 25.0
    index["lab_id"] = index["lab_id"].astype(str)
    ts = load_position_tracks(cache, TaskConfig(mode="pair"), [1000, 1001], ["sniff"], index_df=index)
    assert ts.lab_id.tolist() == ["Lab0"] * 4  # the self pairs label no sniff: dropped
    assert ts.video_id.tolist() == [1000, 1000, 1001, 1001]
    assert ts.fps.tolist() == [30.0, 30.0, 25.0, 25.0]
    sc = load_position_tracks(cache, TaskConfig(mode="scene"), [1000, 1001], index_df=index)
    assert sc.lab_id.tolist() == ["Lab0", "Lab0"] and sc.fps.tolist() == [30.0, 25.0]
    assert sc.agent_id.tolist() == [-1, -1] and sc.target_id.tolist() == [-1, -1]
