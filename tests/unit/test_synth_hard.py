"""The hard synthetic preset: real-lab variety, tracker faults and unlabelled look-alikes."""

from __future__ import annotations

import numpy as np
import pandas as pd

from mabe import data, synth


def test_hard_plan_spans_the_real_variety():
    specs = synth.plan_dataset("hard", seed=0)
    train = [s for s in specs if s.split == "train"]
    assert len(train) == 30 and len([s for s in specs if s.split == "test"]) == 10
    assert len({s.lab for s in specs}) == 6
    assert {s.n_mice for s in specs} >= {2, 4}
    assert min(len(s.parts) for s in specs) == 4 and max(len(s.parts) for s in specs) >= 14
    assert min(s.fps for s in specs) == 10 and max(s.fps for s in specs) == 120
    # about two minutes whatever the fps
    minutes = np.array([s.n_frames / s.fps / 60 for s in specs])
    assert minutes.min() > 1.7 and minutes.max() < 2.3
    assert all(s.hard for s in specs)
    assert not any(s.hard for s in synth.plan_dataset("demo", seed=0))


def test_lookalikes_are_never_labelled_triples():
    triples = [(1, 2, "sniff"), (1, 2, "allogroom"), (1, 2, "attack"), (2, 1, "attack"), (1, 1, "rear")]
    extra = synth.lookalike_triples(triples, 2)
    assert (1, 2, "tussle") in extra and (2, 1, "tussle") in extra and (1, 1, "climb") in extra
    assert not set(extra) & set(triples)
    for a, t, alt in extra:  # each look-alike is the mapped neighbour of an action labelled for that pair
        assert any(synth.LOOKALIKE.get(act) == alt for a2, t2, act in triples if (a2, t2) == (a, t))
    # sniff's look-alike (allogroom) is labelled here, so it is not planted as unlabelled
    assert not any(act == "allogroom" for _, _, act in extra)


def _spec(lab: str = "GroovyShrew", fps: float = 30.0, T: int = 3600, M: int = 3) -> synth.VideoSpec:
    return synth.VideoSpec(
        lab=lab, video_id=1, split="train", seed=7, n_frames=T, fps=fps, pix_per_cm=10.0, width=800, height=800,
        arena_width_cm=40.0, arena_height_cm=40.0, arena_shape="square", arena_type="familiar",
        tracking_method="DeepLabCut", parts=["nose", "body_center"], n_mice=M, triples=[], mice=[], hard=True)


def test_degrade_tracking_adds_the_lab_faults():
    spec = _spec()
    T, M, P = spec.n_frames, spec.n_mice, 2
    px = np.zeros((T, M, P, 2))
    px[:, :, :, 0] = np.array([100.0, 400.0, 700.0])[None, :, None]  # mice far apart, standing still
    out, keep = synth.degrade_tracking(px.copy(), spec, np.random.default_rng(0))
    prof = synth.tracker_profile(spec.lab)
    err = out - px
    # correlated noise: neighbouring frames' errors agree far more than white noise would
    e = err[:, 0, 0, 1]
    assert np.corrcoef(e[:-1], e[1:])[0, 1] > 0.5
    # single-frame outliers: a few large jumps
    jumps = np.abs(err[..., 1]) > 3 * (prof["white_cm"] + prof["corr_cm"]) * spec.pix_per_cm + 10
    assert 0 < jumps.mean() < 0.02
    # identity swaps: a mouse's points are at another mouse's place for a moment
    swapped = np.abs(err[:, :, 0, 0]) > 200
    assert swapped.any() and swapped.mean() < 0.1
    # dropped rows
    assert 0 < 1 - keep.mean() < 0.2 and keep[0].all() and keep[-1].all()
    # deterministic in the generator; the tracker profile is the lab's
    again, _ = synth.degrade_tracking(px.copy(), spec, np.random.default_rng(0))
    np.testing.assert_array_equal(out, again)
    assert synth.tracker_profile("GroovyShrew") == prof != synth.tracker_profile("LyricalHare")


def test_hard_videos_are_valid_mabe_data(tmp_path):
    out = synth.write_dataset(tmp_path / "h", preset="hard", seed=1, n_train=6, n_test=1, frames=400)
    meta = data.load_metadata(out, "train")
    assert len(meta) == 6
    for _, row in meta.iterrows():
        trk = data.read_tracking(out / "train_tracking" / row["lab_id"] / f"{row['video_id']}.parquet")
        assert trk.xy.shape[0] <= 400
        ann = data.read_annotation(out / "train_annotation" / row["lab_id"] / f"{row['video_id']}.parquet")
        labelled = {(a, t, act) for a, t, act in row["labeled"]}
        # look-alikes move but are never annotated: every label is a labelled triple
        got = set(zip(ann["agent_id"].astype(int), ann["target_id"].astype(int), ann["action"]))
        assert got <= labelled
    df = pd.read_parquet(next((out / "train_tracking").rglob("*.parquet")))
    assert len(df)


def test_hard_same_seed_same_bytes(tmp_path):
    a = synth.write_dataset(tmp_path / "a", preset="hard", seed=2, n_train=2, n_test=0, frames=200)
    b = synth.write_dataset(tmp_path / "b", preset="hard", seed=2, n_train=2, n_test=0, frames=200)
    for f in sorted(a.rglob("*.parquet")):
        assert f.read_bytes() == (b / f.relative_to(a)).read_bytes()

