"""training/data.py: the training tracks, features per batch or computed once into host memory."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mabe.config import ConfigError, load_config
from mabe.postracks import PositionTracks
from mabe.training.data import features_in_memory, load_tracksets
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


def test_in_memory_tracks_give_the_batches_of_the_per_batch_ones(tmp_path, fake_cache):
    said = []
    mem, mem_val, stats = load_tracksets(_cfg(tmp_path, features_in_memory="always"), say=said.append)
    per, per_val, stats2 = load_tracksets(_cfg(tmp_path, features_in_memory="never"), say=said.append)
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
        torch.testing.assert_close(x["x"], y["x"], rtol=1e-4, atol=1e-4)
        assert (x["x"] != 0).any()


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
