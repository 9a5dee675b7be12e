"""training/data.py: the training tracks, features per batch or computed once into host memory."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mabe import prepare
from mabe.config import ConfigError, load_config
from mabe.errors import MabeError
from mabe.postracks import PositionTracks, load_position_tracks
from mabe.training.data import features_in_memory, in_memory, load_tracksets, memory_dtype
from mabe.windows import TrackSet, window_index


def _cfg(tmp_path, **train):
    return load_config(None, {"data": str(tmp_path / "data"), "cache": str(tmp_path / "cache"),
                              "windows": {"val_fraction": 0.34}, "train": train})


def test_features_in_memory_on_the_cpu_when_they_fit(tmp_path):
    cfg = _cfg(tmp_path, features_memory_gb=1.0)
    assert features_in_memory(cfg, 2**30, "cpu") and features_in_memory(cfg, 2**30, None)
    assert not features_in_memory(cfg, 2**30 + 1, "cpu")  # over the limit: per batch
    assert not features_in_memory(cfg, 1, "cuda")  # on a GPU: per batch, on the device
    assert features_in_memory(_cfg(tmp_path, features_in_memory="always"), 2**40, "cuda")
    assert not features_in_memory(_cfg(tmp_path, features_in_memory="never"), 1, "cpu")


@pytest.mark.parametrize("storage, dtype, tol", [("float16", np.float16, 2e-3), ("auto", np.float32, 1e-4),
                                                 ("float32", np.float32, 1e-4)])
def test_in_memory_tracks_give_the_batches_of_the_per_batch_ones(tmp_path, fake_cache, storage, dtype, tol):
    """On the CPU the features computed once are float32 when they fit the limit (auto), float16 when asked
    (or when only float16 fits): the batches are those of the per-batch path within float16's rounding
    (2**-11 relative; exact-ish in float32)."""
    said = []
    mem, mem_val, stats = load_tracksets(_cfg(tmp_path, features_in_memory="always", storage_dtype=storage),
                                         say=said.append)
    per, per_val, stats2 = load_tracksets(_cfg(tmp_path, features_in_memory="never"), say=said.append)
    assert mem.X.dtype == dtype and mem_val.X.dtype == dtype
    assert any(f"MiB {np.dtype(dtype).name}" in s for s in said)
    assert isinstance(mem, TrackSet) and isinstance(per, PositionTracks) and isinstance(mem_val, TrackSet)
    assert any("computed once into host memory" in s for s in said) and any("per batch" in s for s in said)
    for k in ("mean", "std"):
        np.testing.assert_array_equal(stats[k], stats2[k])
    # standardised with the training tracks' statistics (NaN -> 0 = the mean): mean 0, std at most 1
    assert np.abs(mem.X.astype(np.float64).mean(0)).max() < 1e-3 and mem.X.std(0).max() < 1 + 1e-3
    assert mem.X.std(0).max() > 0.9
    for a, b in ((mem, per), (mem_val, per_val)):
        assert a.names == b.names and a.n_features == b.n_features
        np.testing.assert_array_equal(a.offsets, b.offsets)
        np.testing.assert_array_equal(a.Y, b.Y)
        w = window_index(a.lengths, 16, 5)
        shift = np.random.default_rng(0).integers(-3, 4, len(w))
        x = a.batch(a.tensors(), torch.from_numpy(w), 16, torch.from_numpy(shift))
        y = b.batch(b.tensors(), torch.from_numpy(w), 16, torch.from_numpy(shift))
        for k in ("valid", "y", "mask"):
            torch.testing.assert_close(x[k], y[k])
        assert x["x"].dtype == torch.from_numpy(a.X[:0]).dtype  # the stored dtype; consumers cast per batch
        torch.testing.assert_close(x["x"].float(), y["x"], rtol=tol, atol=tol)
        assert (x["x"] != 0).any()
        assert a.stored_error == (0.0 if dtype == np.float32 else pytest.approx(
            float((torch.from_numpy(a.X).float() - _recomputed(b)).abs().max()), rel=1e-6))


def _recomputed(ts: PositionTracks) -> torch.Tensor:
    """Every row's float32 features of ``ts`` (what ``to_trackset`` rounds)."""
    return torch.from_numpy(ts.to_trackset(dtype=np.float32).X)


def test_the_limit_counts_bytes_of_the_stored_dtype(tmp_path, fake_cache):
    """features_memory_gb is in bytes of what is stored: a set whose float16 features fit but float32 ones
    would not is computed once on the CPU (float16), and per batch when float32 is asked for."""
    per, per_val, _ = load_tracksets(_cfg(tmp_path, features_in_memory="never"), say=lambda _: None)
    fp32 = (per.n_rows + per_val.n_rows) * per.n_features * 4
    limit = 0.75 * fp32 / 2**30  # between the float16 and the float32 size
    ts, val, _ = load_tracksets(_cfg(tmp_path, features_memory_gb=limit), say=lambda _: None)
    assert isinstance(ts, TrackSet) and ts.X.dtype == np.float16 and val.X.dtype == np.float16
    assert ts.X.nbytes + val.X.nbytes == fp32 // 2
    ts, _, _ = load_tracksets(_cfg(tmp_path, features_memory_gb=limit, storage_dtype="float32"), say=lambda _: None)
    assert isinstance(ts, PositionTracks)
    assert memory_dtype(_cfg(tmp_path), "cpu") == np.float16 and memory_dtype(_cfg(tmp_path), "cuda") == np.float32
    # a set whose float32 features fit the limit keeps float32 (and the results of the old code) ...
    ts, val, _ = load_tracksets(_cfg(tmp_path), say=lambda _: None)
    assert isinstance(ts, TrackSet) and ts.X.dtype == np.float32 and val.X.dtype == np.float32
    cells = (per.n_rows + per_val.n_rows) * per.n_features
    assert memory_dtype(_cfg(tmp_path, features_memory_gb=2 * fp32 / 2**30), "cpu", cells) == np.float32
    # ... float16 only where float32 would not fit
    assert memory_dtype(_cfg(tmp_path, features_memory_gb=limit), "cpu", cells) == np.float16
    assert memory_dtype(_cfg(tmp_path, storage_dtype="float16"), "cuda") == np.float16
    assert memory_dtype(_cfg(tmp_path, storage_dtype="bfloat16"), "cpu") == np.float32  # numpy has no bfloat16


def test_float16_features_saturate_instead_of_overflowing(tmp_path, fake_cache):
    """A feature beyond float16's range (here: a tiny std) is stored as +-65504, not inf, and the rounding
    reported is the clamp's; the float32 features of the same tracks are unchanged."""
    ts, _, stats = load_tracksets(_cfg(tmp_path, features_in_memory="never"), say=lambda _: None)
    ts.norm = {"mean": stats["mean"], "std": stats["std"] * np.float32(1e-7)}  # ~1e7 standard deviations
    ref = _recomputed(ts)
    assert ref.abs().max() > 65504
    X = ts.to_trackset(dtype=np.float16)
    assert np.isfinite(X.X).all() and np.abs(X.X).max() == 65504
    want = (ref.clamp(-65504, 65504).half().float() - ref).abs().max()
    assert X.stored_error == pytest.approx(float(want), rel=1e-6)
    with pytest.raises(ValueError, match="float32 or float16"):
        ts.to_trackset(dtype=np.int16)


def test_features_once_video_group_by_video_group_equal_the_whole_sets(tmp_path, fake_cache):
    """``in_memory`` (positions dropped, features computed a run of videos at a time from positions read again)
    gives ``to_trackset``'s matrix exactly, whatever the run size; a cache whose tracks changed is an error."""
    cfg = _cfg(tmp_path, features_in_memory="never")
    ts, _, stats = load_tracksets(cfg, say=lambda _: None)
    cache = prepare.ensure_cache(cfg, tmp_path / "data", ["train"])
    index = prepare.open_cache(cache)[1]

    def load(videos):
        part = load_position_tracks(cache, cfg.task, videos, ts.names, index_df=index)
        part.norm = stats
        return part

    ref = ts.to_trackset(dtype=np.float16)
    assert len(set(ts.video_id.tolist())) >= 2
    for group in (1, 10**9):  # a video per run; every video in one
        again = load(sorted(set(ts.video_id.tolist())))
        got = in_memory(again, load, np.float16, group_rows=group)
        assert again.store.size == 0  # the positions were dropped
        np.testing.assert_array_equal(got.X, ref.X)
        assert got.stored_error == ref.stored_error and got.X.dtype == np.float16
        for k in ("Y", "offsets", "label_mask", "video_id", "agent_id", "target_id"):
            np.testing.assert_array_equal(getattr(got, k), getattr(ref, k))
    short = load(sorted(set(ts.video_id.tolist())))
    with pytest.raises(MabeError, match="changed in the cache"):
        in_memory(short, lambda v: load(v[:1]), np.float16, group_rows=10**9)  # one video's tracks for all


@pytest.mark.parametrize("limit", [0.0])
def test_a_limit_of_zero_keeps_positions_only(tmp_path, fake_cache, limit):
    ts, _, _ = load_tracksets(_cfg(tmp_path, features_memory_gb=limit), say=lambda _: None)
    assert isinstance(ts, PositionTracks)


def test_geometric_augmentation_computes_features_per_batch_and_refuses_always(tmp_path, fake_cache):
    aug = {"data": str(tmp_path / "data"), "cache": str(tmp_path / "cache"), "windows": {"val_fraction": 0.34},
           "augment": {"reflect": 0.5}}
    with pytest.raises(ConfigError, match=r"augment.reflect=0.5 changes the positions .*features_in_memory"):
        load_config(None, dict(aug, train={"features_in_memory": "always"}))
    cfg = load_config(None, aug)  # auto, on the CPU, small enough to fit: per batch all the same
    assert cfg.train.features_in_memory == "auto" and not features_in_memory(cfg, 1, "cpu")
    assert features_in_memory(_cfg(tmp_path), 1, "cpu")  # the same without the augmentation: once
    said = []
    train_ts, val_ts, _ = load_tracksets(cfg, say=said.append)
    assert isinstance(train_ts, PositionTracks)
    assert any("training features computed per batch" in s and "geometric augmentation" in s for s in said)
    assert isinstance(val_ts, TrackSet)  # never augmented: its features once, where they fit
    assert features_in_memory(cfg, 1, "cpu", augmented=False)
    with pytest.raises(ConfigError, match=r"augment.reflect=1.5 is out of range \[0, 1\]"):
        load_config(None, dict(aug, augment={"reflect": 1.5}))
