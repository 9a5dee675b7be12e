"""checkpoint.py: atomic writes, full round trip (model, optimizer, RNG), inference loading, export."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch

from mabe import checkpoint as ckpt
from mabe import models
from mabe.config import Config, config_to_dict
from mabe.errors import MabeError

torch.set_num_threads(1)


def _state(model, optimizer, cfg: Config) -> dict:
    return {
        ckpt.MODEL_KEY: model.state_dict(), ckpt.OPTIMIZER_KEY: optimizer.state_dict(),
        ckpt.RNG_KEY: ckpt.rng_state(), ckpt.EPOCH_KEY: 3, ckpt.STEP_KEY: 42,
        ckpt.CONFIG_KEY: config_to_dict(cfg), ckpt.OUTPUTS_KEY: ["sniff", "attack"], ckpt.MODE_KEY: "pair",
        ckpt.IN_FEATURES_KEY: 6, ckpt.N_OUTPUTS_KEY: 2, ckpt.BEST_METRIC_KEY: 0.5,
        ckpt.NORM_KEY: {"mean": torch.zeros(6), "std": torch.ones(6) * 2},
    }


@pytest.fixture
def trained():
    torch.manual_seed(0)
    cfg = Config()
    cfg.model.conv_channels, cfg.model.lstm_hidden = [8], 8
    model = models.create(cfg.model.name, 6, 2, cfg.model)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    for _ in range(2):
        model(torch.randn(2, 10, 6)).sum().backward()
        opt.step()
        opt.zero_grad()
    return cfg, model, opt


def test_round_trip_model_optimizer_rng(tmp_path, trained):
    cfg, model, opt = trained
    random.seed(5)
    np.random.seed(5)
    torch.manual_seed(5)
    path = ckpt.save(tmp_path / "c" / "last.pt", _state(model, opt, cfg))
    assert [p.name for p in path.parent.iterdir()] == ["last.pt"]  # no temporary file left
    expected = (random.random(), np.random.rand(), torch.rand(3))

    state = ckpt.load(path)
    model2 = models.create(cfg.model.name, 6, 2, cfg.model)
    model2.load_state_dict(state[ckpt.MODEL_KEY])
    opt2 = torch.optim.AdamW(model2.parameters(), lr=1e-3)
    opt2.load_state_dict(state[ckpt.OPTIMIZER_KEY])
    for a, b in zip(model.state_dict().values(), model2.state_dict().values()):
        assert torch.equal(a, b)
    assert torch.equal(opt.state_dict()["state"][0]["exp_avg"], opt2.state_dict()["state"][0]["exp_avg"])
    ckpt.set_rng_state(state[ckpt.RNG_KEY])
    got = (random.random(), np.random.rand(), torch.rand(3))
    assert got[0] == expected[0] and got[1] == expected[1] and torch.equal(got[2], expected[2])


def test_atomic_write_keeps_the_old_file(tmp_path, trained, monkeypatch):
    cfg, model, opt = trained
    path = ckpt.save(tmp_path / "last.pt", _state(model, opt, cfg))
    before = path.read_bytes()

    def broken(obj, f, *a, **k):
        f.write(b"half a checkpoint")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", broken)
    with pytest.raises(OSError):
        ckpt.save(path, {"x": 1})
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]


def test_load_rejects_foreign_files(tmp_path):
    with pytest.raises(MabeError, match="does not exist"):
        ckpt.load(tmp_path / "none.pt")
    torch.save({"weights": torch.zeros(2)}, tmp_path / "other.pt")
    with pytest.raises(MabeError, match="missing key"):
        ckpt.load(tmp_path / "other.pt")
    (tmp_path / "junk.pt").write_bytes(b"not a pickle")
    with pytest.raises(MabeError, match="not a readable"):
        ckpt.load(tmp_path / "junk.pt")
    with pytest.raises(MabeError, match="no checkpoint"):
        ckpt.resolve(tmp_path / "missing-run")


def test_export_then_inference_without_run_dir(tmp_path, trained):
    cfg, model, opt = trained
    run = tmp_path / "runs" / "r1"
    ckpt.save(run / "checkpoints" / "best.pt", _state(model, opt, cfg))
    assert ckpt.resolve(run) == run / "checkpoints" / "best.pt"
    out = ckpt.export(run, tmp_path / "model.mabe")
    state = torch.load(out, weights_only=True)
    assert ckpt.OPTIMIZER_KEY not in state and ckpt.RNG_KEY not in state
    m2, meta = ckpt.load_for_inference(out)
    assert meta["outputs"] == ["sniff", "attack"] and meta["mode"] == "pair" and meta["in_features"] == 6
    np.testing.assert_array_equal(meta["norm"]["std"], np.full(6, 2.0, np.float32))
    model.eval()
    x = torch.randn(2, 10, 6)
    with torch.no_grad():
        assert torch.equal(model(x), m2(x))
    assert not m2.training
