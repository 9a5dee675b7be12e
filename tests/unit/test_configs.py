"""configs/*.yaml: every shipped config validates; h100.yaml is the reference; errors name key and file."""

from __future__ import annotations

from pathlib import Path

import pytest

from mabe.bench import REFERENCE_EPOCH_WINDOWS
from mabe.config import ConfigError, load_config

CONFIGS = sorted((Path(__file__).resolve().parents[2] / "configs").glob("*.yaml"))


def test_there_are_configs():
    assert {p.name for p in CONFIGS} >= {"h100.yaml", "demo.yaml"}


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_config_loads_and_has_a_launch_command(path):
    cfg = load_config(path)
    assert cfg.model.conv_channels
    header = [line for line in path.read_text().splitlines() if line.startswith("#")]
    assert any("mabe " in line for line in header), f"{path.name}: header should give the launch command"


def test_h100_is_the_reference():
    cfg = load_config(CONFIGS[0].parent / "h100.yaml")
    t = cfg.train
    assert (t.epochs, t.batch_size, t.lr, t.weight_decay, t.warmup_epochs) == (100, 384, 4e-4, 1e-4, 3.0)
    assert (t.scheduler, t.plateau_patience, t.plateau_factor, t.min_lr) == ("plateau", 5, 0.5, 1e-5)
    assert (t.grad_clip, t.save_freq, t.early_stopping_patience, t.seed, t.num_workers) == (1.0, 5, 15, 42, 2)
    assert cfg.task.mode == "scene" and cfg.task.class_weights == [1.0, 5.0, 8.0, 8.0]
    assert (cfg.augment.noise_std, cfg.augment.temporal_jitter, cfg.augment.mixup_alpha) == (0.01, 2, 0.0)
    assert (cfg.windows.sequence_length, cfg.windows.frame_gap) == (100, 1)
    # the reference's epoch size (what `mabe bench` projects epoch times for), a random subset each epoch
    assert cfg.windows.max_windows_per_epoch == REFERENCE_EPOCH_WINDOWS == 384_000
    assert t.steps_per_epoch is None and t.grad_accum == 1
    # the fast path is the trainer's default on the H100: one CUDA graph per step needs these
    assert t.cuda_graphs and t.fused_adamw and t.data_path == "auto" and t.precision == "auto"
    m = cfg.model
    assert (m.name, m.conv_channels, m.lstm_hidden, m.lstm_layers, m.bidirectional, m.dropout) == (
        "conv1d_bilstm", [64, 128, 256], 256, 2, True, 0.3)


def test_demo_is_pair_mode():
    cfg = load_config(CONFIGS[0].parent / "demo.yaml")
    assert cfg.task.mode == "pair"
    assert cfg.train.num_threads == 2  # the 2-core machine it is sized for; capped at the CPUs at run time


def test_unknown_key_names_the_key_and_the_file(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("train:\n  epochz: 3\n")
    with pytest.raises(ConfigError, match=r"bad\.yaml.*train\.epochz.*valid keys"):
        load_config(bad)


def test_wrong_type_names_the_key(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("train:\n  batch_size: lots\n")
    with pytest.raises(ConfigError, match=r"bad\.yaml.*train\.batch_size must be int"):
        load_config(bad)
    with pytest.raises(ConfigError, match="model.dropout"):
        load_config(CONFIGS[0].parent / "demo.yaml", ["model.dropout=2.0"])


def test_fp16_lstm_with_accumulation_is_accepted(tmp_path):
    """The one step scales and unscales the loss per accumulation group (tests/unit/training/
    test_step_accumulation.py), so fp16 with grad_accum > 1 is a valid config."""
    p = tmp_path / "acc.yaml"
    p.write_text("train:\n  lstm_precision: fp16\n  grad_accum: 2\n")
    cfg = load_config(p)
    assert (cfg.train.lstm_precision, cfg.train.grad_accum) == ("fp16", 2)


def test_k_fold_keys_are_checked_together(tmp_path):
    assert load_config(None, ["windows.folds=3", "windows.fold=2"]).windows.fold == 2
    with pytest.raises(ConfigError, match="windows.fold=3 must be below windows.folds=3"):
        load_config(None, ["windows.folds=3", "windows.fold=3"])
    with pytest.raises(ConfigError, match="windows.folds must be 0"):
        load_config(None, ["windows.folds=1"])
