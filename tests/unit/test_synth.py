"""The synthetic generator: real layout and schema, determinism, planted behaviours, realism."""

from __future__ import annotations

import csv
import filecmp
import json
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from mabe import synth
from mabe.data import ACTIONS

# ----------------------------------------------------------------------------- helpers


def _meta(root: Path, split: str = "train") -> pd.DataFrame:
    return pd.read_csv(root / f"{split}.csv")


def _files(root: Path) -> list[Path]:
    return sorted(p.relative_to(root) for p in root.rglob("*") if p.is_file())


def _dense(root: Path, row) -> tuple[np.ndarray, list[str]]:
    """Tracking of one video as (T, n_mice, P, 2) px, NaN where missing; independent of mabe.data."""
    split = "train" if (root / "train_tracking" / row.lab_id / f"{row.video_id}.parquet").is_file() else "test"
    tr = pd.read_parquet(root / f"{split}_tracking" / row.lab_id / f"{row.video_id}.parquet")
    parts = json.loads(row.body_parts_tracked)
    xy = np.full((int(tr.video_frame.max()) + 1, int(tr.mouse_id.max()), len(parts), 2), np.nan)
    pi = {p: i for i, p in enumerate(parts)}
    xy[tr.video_frame.to_numpy(), tr.mouse_id.to_numpy() - 1, tr.bodypart.map(pi).to_numpy()] = tr[["x", "y"]].to_numpy()
    return xy, parts


def _annotations(root: Path) -> list[tuple[pd.Series, pd.DataFrame]]:
    meta = _meta(root)
    return [(row, pd.read_parquet(root / "train_annotation" / row.lab_id / f"{row.video_id}.parquet"))
            for row in meta.itertuples()]


# ----------------------------------------------------------------------------- layout and schema


def test_layout(tiny_data):
    meta, test = _meta(tiny_data), _meta(tiny_data, "test")
    assert len(meta) == 6 and len(test) == 2
    assert meta.lab_id.nunique() == 3
    assert set(meta.frames_per_second) == {25.0, 30.0, 10.0}
    parts = [json.loads(p) for p in meta.body_parts_tracked]
    assert any(any(p.startswith("headpiece_") for p in ps) for ps in parts)
    assert {len(ps) for ps in parts} >= {7, 18}
    mice = meta.filter(like="_strain").notna().sum(axis=1)
    assert set(mice) == {2, 3}
    for row in meta.itertuples():
        assert (tiny_data / "train_tracking" / row.lab_id / f"{row.video_id}.parquet").is_file()
        assert (tiny_data / "train_annotation" / row.lab_id / f"{row.video_id}.parquet").is_file()
    for row in test.itertuples():
        assert (tiny_data / "test_tracking" / row.lab_id / f"{row.video_id}.parquet").is_file()
    assert not (tiny_data / "test_annotation").exists()
    assert meta.video_id.is_unique and (meta.video_id > 0).all()
    sub = pd.read_csv(tiny_data / "sample_submission.csv")
    assert list(sub.columns) == list(synth.SUBMISSION_COLUMNS)
    assert set(sub.video_id) <= set(test.video_id)


def test_csv_matches_real_columns_dtypes_and_quoting(tiny_data, real_data):
    with open(real_data / "train.csv", newline="") as f:
        real_header = next(csv.reader(f))
    real = pd.read_csv(real_data / "train.csv")
    assert tuple(real_header) == synth.COLUMNS
    for split in ("train", "test"):
        with open(tiny_data / f"{split}.csv", newline="") as f:
            assert next(csv.reader(f)) == real_header
        ours = _meta(tiny_data, split)
        filled = [c for c in ours.columns if ours[c].notna().any()]  # an all-empty column reads as float
        assert (ours[filled].dtypes == real[filled].dtypes).all(), ours[filled].dtypes[ours[filled].dtypes != real[filled].dtypes]
        for col in ("body_parts_tracked", "behaviors_labeled"):  # JSON lists written like the real ones
            for text in ours[col]:
                assert json.dumps(json.loads(text)) == text and json.loads(text) == sorted(json.loads(text))
    assert json.dumps(json.loads(real.body_parts_tracked[0])) == real.body_parts_tracked[0]
    raw_real = (real_data / "train.csv").read_text().splitlines()[1]
    raw_ours = (tiny_data / "train.csv").read_text().splitlines()[1]
    assert '"[""' in raw_real and '"[""' in raw_ours  # csv-quoted field, doubled inner quotes
    with open(real_data / "sample_submission.csv", newline="") as f:
        assert tuple(next(csv.reader(f))) == synth.SUBMISSION_COLUMNS


def test_annotation_schema_matches_real(tiny_data, real_data):
    real = {}
    for f in sorted((real_data / "train_annotation").rglob("*.parquet")):
        s = pq.read_schema(f)
        real.setdefault(str(s.field("stop_frame").type), s)
        if len(real) == 2:
            break
    assert set(real) == {"int16", "int32"}
    for f in sorted((tiny_data / "train_annotation").rglob("*.parquet")):
        s = pq.read_schema(f)
        assert s.equals(real[str(s.field("stop_frame").type)])
    assert synth.annotation_schema(40_000).equals(real["int32"])
    assert synth.annotation_schema(1000).equals(real["int16"])


def test_tracking_schema(tiny_data):
    for f in sorted(tiny_data.rglob("*_tracking/*/*.parquet")):
        assert pq.read_schema(f).equals(synth.TRACKING_SCHEMA)
    tr = pd.read_parquet(next(tiny_data.glob("train_tracking/*/*.parquet")))
    assert list(tr.columns) == ["video_frame", "mouse_id", "bodypart", "x", "y"]
    assert tr.video_frame.is_monotonic_increasing
    assert not tr.duplicated(["video_frame", "mouse_id", "bodypart"]).any()


def test_stats_json_is_small_and_complete():
    assert synth.STATS_PATH.stat().st_size < 100_000
    stats = synth.load_stats()
    assert len(stats["labs"]) == 19 and tuple(stats["columns"]) == synth.COLUMNS
    for lab in stats["labs"].values():
        assert lab["setups"] and lab["body_parts"] and lab["patterns"] and lab["n_mice"]
        assert set(lab["actions"]) <= set(ACTIONS)


# ----------------------------------------------------------------------------- determinism


def test_same_seed_same_bytes_other_seed_differs(tmp_path):
    a = synth.write_dataset(tmp_path / "a", preset="tiny", seed=3, n_train=3, n_test=1)
    b = synth.write_dataset(tmp_path / "b", preset="tiny", seed=3, n_train=3, n_test=1)
    c = synth.write_dataset(tmp_path / "c", preset="tiny", seed=4, n_train=3, n_test=1)
    files = _files(a)
    assert files == _files(b) and len(files) == 3 + 3 + 3 + 1  # 3 csv, 3 tracking, 3 annotation, 1 test
    for f in files:
        assert filecmp.cmp(a / f, b / f, shallow=False), f
    assert (a / "train.csv").read_bytes() != (c / "train.csv").read_bytes()
    track_a = sorted(a.glob("train_tracking/*/*.parquet"))[0].read_bytes()
    assert all(track_a != p.read_bytes() for p in c.glob("train_tracking/*/*.parquet"))


@pytest.mark.slow  # two spawned processes: ~5 s
def test_workers_do_not_change_bytes(tmp_path):
    a = synth.write_dataset(tmp_path / "a", preset="tiny", seed=5, n_train=2, n_test=0, workers=1)
    b = synth.write_dataset(tmp_path / "b", preset="tiny", seed=5, n_train=2, n_test=0, workers=2)
    for f in _files(a):
        assert filecmp.cmp(a / f, b / f, shallow=False), f


def test_rewrites_own_output_but_not_foreign_folders(tmp_path):
    out = synth.write_dataset(tmp_path / "d", preset="tiny", seed=0, n_train=1, n_test=0)
    synth.write_dataset(out, preset="tiny", seed=1, n_train=1, n_test=0)
    assert len(list(out.glob("train_tracking/*/*.parquet"))) == 1
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "keep.txt").write_text("x")
    with pytest.raises(FileExistsError):
        synth.write_dataset(tmp_path / "other", preset="tiny", n_train=1, n_test=0)


# ----------------------------------------------------------------------------- realism


def test_coordinates_mostly_inside_the_frame(tiny_data):
    for split in ("train", "test"):
        for row in _meta(tiny_data, split).itertuples():
            tr = pd.read_parquet(tiny_data / f"{split}_tracking" / row.lab_id / f"{row.video_id}.parquet")
            ok = tr.x.notna()
            x, y = tr.x[ok], tr.y[ok]
            inside = ((x >= 0) & (x < row.video_width_pix) & (y >= 0) & (y < row.video_height_pix)).mean()
            assert inside > 0.95, (row.lab_id, inside)


def test_nans_dropped_frames_and_untracked_stretches_exist(tiny_data):
    nan_rows = dropped = untracked = 0
    for row in _meta(tiny_data).itertuples():
        tr = pd.read_parquet(tiny_data / "train_tracking" / row.lab_id / f"{row.video_id}.parquet")
        assert (tr.x.isna() == tr.y.isna()).all()
        nan_rows += int(tr.x.isna().sum())
        T = int(tr.video_frame.max()) + 1
        frames = tr.video_frame.unique()
        dropped += T - len(frames)
        per_frame = tr.groupby("video_frame").mouse_id.nunique()
        untracked += int((per_frame < per_frame.max()).sum())
        assert tr.mouse_id.min() >= 1 and tr.mouse_id.max() <= 4
    assert nan_rows > 0 and dropped > 0 and untracked > 0


def test_motion_is_smooth_and_bodies_keep_their_shape(tiny_data):
    row = _meta(tiny_data).iloc[0]
    xy, parts = _dense(tiny_data, row)
    cm = xy / row.pix_per_cm_approx
    step = np.linalg.norm(np.diff(np.nanmean(cm, axis=2), axis=0), axis=-1) * row.frames_per_second
    assert np.nanmedian(step) < 25  # cm/s: mostly exploring, not teleporting
    nose, tail = cm[:, :, parts.index("nose")], cm[:, :, parts.index("tail_base")]
    length = np.linalg.norm(nose - tail, axis=-1)
    assert 6 < np.nanmedian(length) < 11


# ----------------------------------------------------------------------------- labels and behaviours


def test_labels_are_valid_and_do_not_overlap(tiny_data):
    actions = set()
    for row, ann in _annotations(tiny_data):
        labeled = set(json.loads(row.behaviors_labeled))
        assert len(ann) > 0
        assert ann.start_frame.is_monotonic_increasing
        T = len(pd.read_parquet(tiny_data / "train_tracking" / row.lab_id / f"{row.video_id}.parquet",
                                columns=["video_frame"]).video_frame.unique())
        for a in ann.itertuples():
            tgt = "self" if a.agent_id == a.target_id else f"mouse{a.target_id}"
            assert f"mouse{a.agent_id},{tgt},{a.action}" in labeled
            assert 0 <= a.start_frame < a.stop_frame <= T + 10
        for _, g in ann.groupby(["agent_id", "target_id"]):
            g = g.sort_values("start_frame")
            assert (g.start_frame.to_numpy()[1:] >= g.stop_frame.to_numpy()[:-1]).all()
        actions |= set(ann.action)
    assert {"chase", "sniffface", "sniffgenital", "rear"} <= actions


def _speeds_and_parts(root: Path, row) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    xy, parts = _dense(root, row)
    cm = xy / row.pix_per_cm_approx
    with warnings.catch_warnings():  # a mouse untracked on a frame: all-NaN mean
        warnings.simplefilter("ignore", RuntimeWarning)
        centre = np.nanmean(cm, axis=2)
    speed = np.linalg.norm(np.gradient(centre, axis=0), axis=-1) * row.frames_per_second  # (T, M) cm/s
    return speed, {p: cm[:, :, i] for i, p in enumerate(parts)}


def test_chase_is_fast(tiny_data):
    inside, outside = [], []
    for row, ann in _annotations(tiny_data):
        speed, _ = _speeds_and_parts(tiny_data, row)
        busy = np.zeros(speed.shape, dtype=bool)
        for a in ann.itertuples():
            busy[a.start_frame:a.stop_frame, a.agent_id - 1] = True
            busy[a.start_frame:a.stop_frame, a.target_id - 1] = True
        for a in ann[ann.action == "chase"].itertuples():
            inside.append(speed[a.start_frame:a.stop_frame, a.agent_id - 1])
        outside.append(speed[~busy])
    fast, calm = np.nanmean(np.concatenate(inside)), np.nanmean(np.concatenate(outside))
    assert fast > 20 and fast > 2.5 * calm, (fast, calm)


def test_sniff_targets_the_named_body_part(tiny_data):
    d = {"sniffface": [], "sniffgenital": []}  # (nose-nose, nose-tail_base) cm
    for row, ann in _annotations(tiny_data):
        _, p = _speeds_and_parts(tiny_data, row)
        for a in ann[ann.action.isin(list(d))].itertuples():
            sl, m, t = slice(a.start_frame, a.stop_frame), a.agent_id - 1, a.target_id - 1
            nn = np.nanmean(np.linalg.norm(p["nose"][sl, m] - p["nose"][sl, t], axis=-1))
            nt = np.nanmean(np.linalg.norm(p["nose"][sl, m] - p["tail_base"][sl, t], axis=-1))
            d[a.action].append((nn, nt))
    face, genital = np.array(d["sniffface"]), np.array(d["sniffgenital"])
    assert len(face) and len(genital)
    assert face[:, 0].mean() < 2.5 < face[:, 1].mean()
    assert genital[:, 1].mean() < 2.5 < genital[:, 0].mean()
    assert genital[:, 1].mean() < face[:, 1].mean() and face[:, 0].mean() < genital[:, 0].mean()


def test_rear_compresses_the_body_and_is_still(tiny_data):
    ratios, speeds = [], []
    for row, ann in _annotations(tiny_data):
        speed, p = _speeds_and_parts(tiny_data, row)
        if "nose" not in p or "tail_base" not in p:
            continue
        length = np.linalg.norm(p["nose"] - p["tail_base"], axis=-1)
        for a in ann[ann.action == "rear"].itertuples():
            m = a.agent_id - 1
            ratios.append(np.nanmean(length[a.start_frame:a.stop_frame, m]) / np.nanmedian(length[:, m]))
            speeds.append(np.nanmean(speed[a.start_frame:a.stop_frame, m]))
    assert ratios and np.mean(ratios) < 0.8 and np.mean(speeds) < 5


# ----------------------------------------------------------------------------- pure functions and presets


def test_schedule_respects_mouse_exclusivity():
    rng = np.random.default_rng(0)
    triples = [(1, 2, "sniff"), (2, 1, "sniff"), (1, 2, "chase"), (2, 1, "escape"), (1, 1, "rear"), (2, 3, "attack"),
               (3, 2, "defend")]
    lengths = {a: (0.0, 0.5) for a in ("sniff", "chase", "escape", "rear", "attack", "defend")}
    ivs = synth.schedule(rng, triples, 6000, 30.0, 3, {a: 6.0 for a in lengths}, lengths)
    kin = [iv for iv in ivs if iv.kinematic]
    assert len(kin) > 20
    for m in (1, 2, 3):
        mine = sorted((iv.start - iv.lead, iv.stop) for iv in kin if m in (iv.agent, iv.target))
        assert all(b[0] >= a[1] for a, b in zip(mine, mine[1:]))
    implied = [iv for iv in ivs if not iv.kinematic]
    assert implied and {iv.action for iv in implied} <= {"escape", "defend"}
    assert all((iv.agent, iv.target, iv.action) in set(triples) for iv in ivs)


def test_body_frame_geometry():
    s = np.array([synth.NOSE_S, 0.0, synth.S_TAIL_BASE, -11.8])
    y = np.zeros(4)
    one = np.ones(1)
    straight = synth.body_frame(s, y, 0 * one, 0 * one, one)[0]
    np.testing.assert_allclose(straight, np.stack([s, y], -1), atol=1e-3)
    reared = synth.body_frame(s, y, 0 * one, 0 * one, 0.55 * one)[0]
    assert reared[0, 0] - reared[2, 0] < 0.6 * (straight[0, 0] - straight[2, 0])
    curled = synth.body_frame(s, y, 0.45 * one, 0 * one, one)[0]
    assert np.linalg.norm(curled[0] - curled[2]) < 0.6 * np.linalg.norm(straight[0] - straight[2])


def test_presets_plan():
    demo = synth.plan_dataset("demo", seed=0)
    train = [s for s in demo if s.split == "train"]
    assert len(train) == 36 and len(demo) - len(train) == 4
    assert len({s.lab for s in demo}) == 3
    actions = {a for s in demo for _, _, a in s.triples}
    assert 5 <= len(actions) <= 8 and {"sniff", "attack", "rear"} <= actions
    assert all(1500 <= s.n_frames <= 3000 for s in demo)
    real = synth.plan_dataset("real", seed=0, n_test=0)
    assert len(real) == 862 and len({s.lab for s in real}) == 19
    assert 17e6 < sum(s.n_frames for s in real) < 26e6
    small = synth.plan_dataset("real", seed=0, n_train=25, n_test=2)
    assert len(small) == 27 and len({s.lab for s in small if s.split == "train"}) == 19
    with pytest.raises(ValueError):
        synth.plan_dataset("nope")


def test_generate_video_in_memory():
    spec = synth.plan_dataset("tiny", seed=1, n_train=1, n_test=0)[0]
    tracking, ann = synth.generate_video(spec)
    assert tracking.schema.equals(synth.TRACKING_SCHEMA)
    assert ann.num_rows > 0 and ann.schema.field("agent_id").type == pa.int8()


# ----------------------------------------------------------------------------- through mabe.data


def test_round_trip_through_the_reader(tiny_data):
    from mabe import data

    if not all(hasattr(data, f) for f in ("load_metadata", "read_tracking", "read_annotation")):
        pytest.skip("mabe.data reader not finished")
    meta = data.load_metadata(tiny_data, "train")
    assert len(meta) == 6
    for row in meta.itertuples():
        tr = data.read_tracking(row.tracking_path)
        ours, parts = _dense(tiny_data, row)
        assert tr.xy.shape[0] == ours.shape[0]
        if "nose" in parts:
            k = data.DEFAULT_SLOTS.index("nose")
            np.testing.assert_allclose(tr.xy[:, : ours.shape[1], k], ours[:, :, parts.index("nose")], rtol=1e-6)
        ann = data.read_annotation(row.annotation_path)
        assert len(ann) > 0
        labeled = set(row.labeled)
        assert all((a, t, act) in labeled for a, t, act in zip(ann.agent_id, ann.target_id, ann.action))
    test = data.load_metadata(tiny_data, "test")
    assert len(test) == 2
