"""prepare.py: the on-disk cache end to end (layout, labels, resume, bad videos, resampling)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from mabe import data, prepare
from mabe import features as F
from mabe.config import FeatureConfig, feature_hash
from mabe.errors import MabeDataError, MabeError

A = data.ACTION_INDEX
PARTS = ["nose", "ear_left", "ear_right", "neck", "body_center", "tail_base"]

# (lab, video, split, fps, n_frames, mice, annotation rows, behaviors_labeled)
VIDEOS = [
    ("LabA", 101, "train", 30.0, 120, [1, 2],
     [(1, 2, "sniff", 10, 20), (2, 1, "attack", 30, 35), (1, 1, "rear", 0, 5), (1, 2, "sniff", 50, 51),
      (1, 3, "chase", 40, 60)],  # mouse 3 is not tracked: warned about, dropped
     ["mouse1,mouse2,sniff", "mouse2,mouse1,attack", "mouse1,self,rear", "mouse1,mouse3,chase"]),
    ("LabB", 202, "train", 25.0, 60, [1, 2, 3],
     [(3, 1, "mount", 5, 15), (2, 2, "selfgroom", 20, 80)],  # runs past the end: clipped
     ["mouse3,mouse1,mount", "mouse2,self,selfgroom", "mouse1,mouse2,sniff"]),
    ("LabA", 303, "test", 30.0, 40, [1, 2], [], ["mouse1,mouse2,sniff", "mouse2,self,rear"]),
]


def _write_tracking(path: Path, n_frames: int, mice: list[int], seed: int) -> None:
    rng = np.random.default_rng(seed)
    rows = []
    for m in mice:
        centre = np.cumsum(rng.normal(0, 2, (n_frames, 2)), axis=0) + 300
        for k, part in enumerate(PARTS):
            xy = centre + np.array([3.0 * k - 8, rng.normal(0, 2)]) + rng.normal(0, 0.3, (n_frames, 2))
            frames = np.arange(n_frames)
            keep = rng.random(n_frames) > 0.05
            keep[[0, -1]] = True
            rows.append(pd.DataFrame({
                "video_frame": frames[keep].astype(np.int64), "mouse_id": np.int64(m),
                "bodypart": part, "x": xy[keep, 0].astype(np.float32), "y": xy[keep, 1].astype(np.float32),
            }))
    df = pd.concat(rows).sort_values(["video_frame", "mouse_id"]).reset_index(drop=True)
    df["bodypart"] = df["bodypart"].astype("string")
    path.parent.mkdir(parents=True, exist_ok=True)
    df.to_parquet(path, index=False)


def _write_dataset(root: Path) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    tables: dict[str, list[dict]] = {"train": [], "test": []}
    for i, (lab, vid, split, fps, n, mice, ann, labeled) in enumerate(VIDEOS):
        row = {c: np.nan for c in data.METADATA_COLUMNS}
        row.update(lab_id=lab, video_id=vid, frames_per_second=fps, video_duration_sec=n / fps,
                   pix_per_cm_approx=4.0, video_width_pix=640, video_height_pix=480,
                   body_parts_tracked=json.dumps(PARTS), behaviors_labeled=json.dumps(labeled),
                   arena_shape="square", tracking_method="DeepLabCut")
        for m in mice:
            row[f"mouse{m}_strain"] = "C57Bl/6J"
        tables[split].append(row)
        _write_tracking(root / f"{split}_tracking" / lab / f"{vid}.parquet", n, mice, seed=i)
        if split == "train":
            a = pd.DataFrame(ann, columns=list(data.ANNOTATION_COLUMNS)).astype({
                "agent_id": np.int8, "target_id": np.int8, "start_frame": np.int32, "stop_frame": np.int32})
            (root / "train_annotation" / lab).mkdir(parents=True, exist_ok=True)
            a.to_parquet(root / "train_annotation" / lab / f"{vid}.parquet", index=False)
    for split, rows in tables.items():
        pd.DataFrame(rows, columns=list(data.METADATA_COLUMNS)).to_csv(root / f"{split}.csv", index=False)
    return root


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    return _write_dataset(tmp_path_factory.mktemp("prep") / "data")


@pytest.fixture(scope="module")
def cache(dataset, tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("cache")
    with pytest.warns(UserWarning) as rec:
        out = prepare.prepare_dataset(dataset, FeatureConfig(), cache_root=root, workers=1, progress=False)
    msgs = [str(w.message) for w in rec]
    assert any("LabA/101" in m and "(1,3)" in m for m in msgs), msgs  # absent mouse 3: warned
    return out


def _expected_labels(n: int, pairs: list[tuple[int, int]], ann: list[tuple]) -> np.ndarray:
    y = np.zeros((len(pairs), n, len(data.ACTIONS)), dtype=np.uint8)
    for agent, target, action, start, stop in ann:
        if (agent, target) in pairs:
            y[pairs.index((agent, target)), start:min(stop, n), A[action]] = 1
    return y


def test_cache_layout_shapes_dtypes(cache):
    assert cache.name == feature_hash(FeatureConfig())
    assert json.loads((cache / "config.json").read_text()) == json.loads(json.dumps(FeatureConfig().__dict__))
    for lab, vid, split, fps, n, mice, _, _ in VIDEOS:
        v = prepare.load_video(cache, lab, vid)
        pairs = [(a, t) for a in mice for t in mice]
        assert v["meta"]["pairs"] == [list(p) for p in pairs]
        assert (v["meta"]["lab"], v["meta"]["video"], v["meta"]["split"]) == (lab, vid, split)
        assert v["meta"]["fps"] == fps and v["meta"]["n_frames"] == n and v["meta"]["pix_per_cm"] == 4.0
        assert v["scene"].shape == (n, 288) and v["scene"].dtype == np.float32
        assert v["pair"].shape == (len(pairs), n, F.n_pair_features(18)) and v["pair"].dtype == np.float32
        assert v["labels"].shape == (len(pairs), n, 37) and v["labels"].dtype == np.uint8
        assert v["labeled"].shape == (len(pairs), 37) and v["labeled"].dtype == bool
        np.testing.assert_array_equal(v["frames"], np.arange(n))
        # on disk: positions and labels only (issue 13), the positions memory-mapped
        folder = cache / "videos" / lab / str(vid)
        assert sorted(p.name for p in folder.iterdir()) == ["intervals.npy", "labeled.npy", "meta.json", "xy.npy"]
        pv = prepare.read_video(cache, lab, vid)
        assert isinstance(pv.xy, np.memmap) and pv.xy.dtype == np.int16 and pv.xy.shape[:2] == (n, len(mice)) and pv.xy.shape[2] == len(pv.meta["slots"])
        assert pv.meta["layout"] == prepare.CACHE_LAYOUT and pv.meta["mice"] == list(mice)
    assert not list((cache / "videos").glob("*/.tmp-*"))  # no temporary folder left behind
    assert json.loads((cache / "skipped.json").read_text()) == []


def _close(got, want, fps, q):
    """Equal NaN patterns and values within what int16 positions of step q cm allow (poscache's bounds)."""
    np.testing.assert_array_equal(np.isnan(got), np.isnan(want))
    bound = 2 * np.sqrt(2) * fps**2 * q + 1e-4 * np.nanmax(np.abs(want))
    assert np.nanmax(np.abs(got - want)) <= bound


def test_features_match_the_feature_functions(cache, dataset):
    v = prepare.load_video(cache, "LabB", 202)
    q = v["meta"]["quantum_cm"]
    trk = data.read_tracking(dataset / "train_tracking" / "LabB" / "202.parquet")
    want = F.scene_features(trk.xy, 25.0, 4.0, (320, 240), FeatureConfig())
    _close(v["scene"], want, 25.0, q)
    assert np.nanmax(np.abs(v["scene"][:, :288 // 3] - want[:, :288 // 3])) <= q / 2 + 1e-5  # positions: half a step
    cm = F.clean_positions(trk.xy, 4.0, (320, 240), FeatureConfig().max_gap)
    _close(v["pair"][7], F.pair_features(cm, 25.0, 2, 1, list(data.DEFAULT_SLOTS)), 25.0, q)
    assert np.isnan(v["scene"][:, 3 * 18 * 2 : 4 * 18 * 2]).all()  # mouse 4 absent
    assert np.isfinite(v["scene"][:, :2 * 2]).all()  # body_center of mouse 1 tracked (gaps filled)


def test_labels_frame_exact_and_labeled_mask(cache):
    for lab, vid, split, _, n, mice, ann, labeled in VIDEOS:
        v = prepare.load_video(cache, lab, vid)
        pairs = [(a, t) for a in mice for t in mice]
        expected = _expected_labels(n, pairs, ann) if split == "train" else np.zeros((len(pairs), n, 37), np.uint8)
        np.testing.assert_array_equal(v["labels"], expected)
        mask = np.zeros((len(pairs), 37), dtype=bool)
        for item in labeled:
            a, t, act = item.split(",")
            a = int(a[5:])
            t = a if t == "self" else int(t[5:])
            if (a, t) in pairs:
                mask[pairs.index((a, t)), A[act]] = True
        np.testing.assert_array_equal(v["labeled"], mask)
    v = prepare.load_video(cache, "LabA", 101)
    sniff = v["labels"][1, :, A["sniff"]]  # pair (1, 2)
    assert sniff.sum() == 11 and sniff[10:20].all() and sniff[50] == 1 and sniff[20] == 0 and sniff[9] == 0


def test_index(cache):
    cfg, index = prepare.open_cache(cache)
    assert cfg == FeatureConfig()
    for col in ("lab_id", "video_id", "split", "n_frames", "fps", "agent_id", "target_id", "pair_index", "path"):
        assert col in index.columns
    assert len(index) == 4 + 9 + 4
    assert index["video_id"].dtype == np.int64
    b = index[index["video_id"] == 202]
    assert b["pair_index"].tolist() == list(range(9))
    assert list(zip(b["agent_id"], b["target_id"]))[:4] == [(1, 1), (1, 2), (1, 3), (2, 1)]
    assert set(b["n_frames"]) == {60} and set(b["fps"]) == {25.0} and set(b["split"]) == {"train"}
    assert set(index.loc[index["video_id"] == 303, "split"]) == {"test"}
    for path in index["path"].unique():
        assert (cache / path / "meta.json").is_file()
    with pytest.raises(MabeError):
        prepare.open_cache(cache / "nowhere")


def test_resume_skips_and_rebuilds(dataset, tmp_path, capsys):
    root = tmp_path / "cache"
    with pytest.warns(UserWarning):
        out = prepare.prepare_dataset(dataset, FeatureConfig(), cache_root=root, workers=1, progress=False)
    stamps = {p: p.stat().st_mtime_ns for p in out.glob("videos/*/*/xy.npy")}
    assert len(stamps) == 3
    capsys.readouterr()
    prepare.prepare_dataset(dataset, FeatureConfig(), cache_root=root, workers=1, progress=False)
    assert "3 already prepared, 0 to do" in capsys.readouterr().out
    assert {p: p.stat().st_mtime_ns for p in stamps} == stamps  # nothing rewritten
    shutil.rmtree(out / "videos" / "LabB" / "202")
    (out / "videos" / "LabB" / ".tmp-202-99999").mkdir()  # a stale temporary folder from a killed run
    with pytest.warns(UserWarning, match="clipped"):
        prepare.prepare_dataset(dataset, FeatureConfig(), cache_root=root, workers=1, progress=False)
    assert "2 already prepared, 1 to do" in capsys.readouterr().out
    assert (out / "videos" / "LabB" / "202" / "meta.json").is_file()
    assert {p: p.stat().st_mtime_ns for p in stamps if "202" not in str(p)} == {
        p: t for p, t in stamps.items() if "202" not in str(p)}
    assert len(prepare.open_cache(out)[1]) == 17
    assert not list((out / "videos").glob("*/.tmp-*"))


def test_bad_video_stops_or_is_skipped(dataset, tmp_path, capsys):
    bad = _write_dataset(tmp_path / "data")
    broken = bad / "train_tracking" / "LabB" / "202.parquet"
    broken.write_bytes(b"PAR1 this is not a parquet file")
    with pytest.warns(UserWarning), pytest.raises(MabeDataError, match="202.parquet"):
        prepare.prepare_dataset(bad, FeatureConfig(), cache_root=tmp_path / "c1", workers=1, progress=False)
    with pytest.warns(UserWarning):
        out = prepare.prepare_dataset(bad, FeatureConfig(), cache_root=tmp_path / "c2", workers=1,
                                      progress=False, skip_bad=True)
    text = capsys.readouterr().out
    assert "skipped 1 bad video" in text and "LabB/202" in text
    skipped = json.loads((out / "skipped.json").read_text())
    assert [(s["lab_id"], s["video_id"]) for s in skipped] == [("LabB", 202)]
    assert "202.parquet" in skipped[0]["file"] and skipped[0]["reason"]
    index = prepare.open_cache(out)[1]
    assert sorted(index["video_id"].unique()) == [101, 303]
    assert not (out / "videos" / "LabB" / "202").exists()


def test_missing_tracking_file_is_a_bad_video(dataset, tmp_path):
    bad = _write_dataset(tmp_path / "data")
    (bad / "test_tracking" / "LabA" / "303.parquet").unlink()
    with pytest.raises(MabeDataError, match="303"):
        prepare.prepare_dataset(bad, FeatureConfig(), cache_root=tmp_path / "c", splits=["test"], workers=1,
                                progress=False)


def test_resampled_cache_maps_back_to_video_frames(dataset, tmp_path):
    cfg = FeatureConfig(target_fps=15.0, pair_features=False)
    with pytest.warns(UserWarning):
        out = prepare.prepare_dataset(dataset, cfg, cache_root=tmp_path, splits=["train"], workers=1, progress=False)
    v = prepare.load_video(out, "LabA", 101)
    frames = np.arange(0, 120, 2)
    np.testing.assert_array_equal(v["frames"], frames)
    assert not (out / "videos" / "LabA" / "101" / "frames.npy").exists()  # positions stay at video frames
    assert v["meta"]["fps"] == 15.0 and v["meta"]["video_fps"] == 30.0 and v["meta"]["n_frames"] == 60
    assert v["scene"].shape == (60, 288) and "pair" not in v
    full = _expected_labels(120, [(1, 1), (1, 2), (2, 1), (2, 2)], VIDEOS[0][6])
    np.testing.assert_array_equal(v["labels"], full[:, frames])
    b = prepare.load_video(out, "LabB", 202)  # 25 -> 15 fps: nearest frames
    np.testing.assert_array_equal(b["frames"], F.nearest_frames(60, 25.0, 15.0))
    assert b["scene"].shape[0] == len(b["frames"]) == 36
    index = prepare.open_cache(out)[1]
    assert set(index["fps"]) == {15.0} and set(index["video_fps"]) == {25.0, 30.0}


def test_process_pool_gives_the_same_cache(dataset, cache, tmp_path):
    with pytest.warns(UserWarning):
        out = prepare.prepare_dataset(dataset, FeatureConfig(), cache_root=tmp_path, workers=2, progress=False)
    for lab, vid, *_ in VIDEOS:
        a, b = prepare.load_video(cache, lab, vid), prepare.load_video(out, lab, vid)
        for key in ("scene", "pair", "labels", "labeled"):
            np.testing.assert_array_equal(a[key], b[key])
    pd.testing.assert_frame_equal(prepare.open_cache(cache)[1], prepare.open_cache(out)[1])


def test_tiny_synthetic_dataset_end_to_end(request, tmp_path):
    pytest.importorskip("mabe.synth", reason="mabe.synth not written yet")
    tiny_data = request.getfixturevalue("tiny_data")
    out = prepare.prepare_dataset(tiny_data, FeatureConfig(), cache_root=tmp_path, workers=1, progress=False)
    cfg, index = prepare.open_cache(out)
    assert len(index) > 0 and set(index["split"]) <= {"train", "test"}
    meta = pd.concat([data.load_metadata(tiny_data, s) for s in ("train", "test") if (tiny_data / f"{s}.csv").is_file()])
    assert set(index["video_id"]) == set(meta["video_id"])
    for row in meta.itertuples():
        v = prepare.load_video(out, row.lab_id, row.video_id)
        pairs = [tuple(p) for p in v["meta"]["pairs"]]
        T = v["meta"]["n_frames"]
        assert v["scene"].shape == (T, 288) and v["labels"].shape == (len(pairs), T, 37)
        if row.has_annotation:
            ann = data.read_annotation(row.annotation_path)
            ann = ann[[(a, t) in pairs for a, t in zip(ann["agent_id"], ann["target_id"])]]
            np.testing.assert_array_equal(v["labels"], data.intervals_to_frames(ann, T, pairs))
            for a, t, act in row.labeled:
                if (a, t) in pairs:
                    assert v["labeled"][pairs.index((a, t)), A[act]]
            assert v["labeled"].sum() == sum((a, t) in pairs for a, t, _ in row.labeled)
