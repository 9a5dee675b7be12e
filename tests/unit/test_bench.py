"""mabe bench on CPU: runs end to end and returns the documented keys (no timing assertions)."""

from __future__ import annotations

import argparse
import json

import numpy as np
import pytest
import torch

from mabe import bench
from mabe.config import ModelConfig
from mabe.training import step as tstep


@pytest.fixture(autouse=True)
def _one_thread(one_torch_thread):
    """Every test here runs with one intra-op thread (see conftest)."""


def tiny_setup() -> bench.BenchSetup:
    return bench.BenchSetup(device="cpu", model=ModelConfig(conv_channels=[8, 16], lstm_hidden=8, lstm_layers=2),
                            num_workers=2)


def test_synthetic_trackset_shape():
    ts = bench.synthetic_trackset(25_000, 288, 4, track_len=10_000, seed=0)
    assert ts.X.shape == (25_000, 288) and ts.X.dtype == np.float32
    assert list(ts.lengths) == [10_000, 10_000, 5_000]
    assert set(np.unique(ts.Y)) <= {0, 1, 2, 3} and ts.mode == "scene" and ts.n_outputs == 4


def test_paths_and_check_on_cpu():
    setup = tiny_setup()
    ts = bench.synthetic_trackset(2_000, setup.n_features, setup.n_classes, track_len=500, seed=0)
    ref = bench.bench_reference(ts, setup, 8, steps=2, warmup=1)
    fast = bench.bench_fast(ts, setup, 8, steps=2, warmup=1)
    for r in (ref, fast):
        assert r["ms_per_step"] > 0 and r["windows_per_s"] > 0 and r["steps"] == 2
        assert r["epoch_s"] > 0 and r["epochs100_s"] == pytest.approx(100 * r["epoch_s"])
        assert r["peak_mem_bytes"] is None  # CPU
        assert np.isfinite(r["final_loss"])
    assert fast["skipped_steps"] == 0 and fast["resident"] and fast["storage_dtype"] == "float32"
    check = bench.check_same(ts, setup, 8, 3)
    assert check["ok"], check
    assert check["rtol"] == 1e-4 and len(check["fast_losses"]) == len(check["reference_losses"]) == 3
    # the clip acted on every reference step: the check compares clipped steps with clipped steps
    assert check["clipped_steps"] == 3 and all(n > check["clip"] for n in check["reference_grad_norms"])
    assert check["clip_update_rel_diff"] <= check["clip_update_rtol"]


def test_check_same_fails_when_the_fast_path_does_not_clip(monkeypatch):
    """The same-result check must notice a fast path whose clip is a no-op (the bug it once missed)."""
    setup = tiny_setup()
    ts = bench.synthetic_trackset(2_000, setup.n_features, setup.n_classes, track_len=500, seed=0)
    monkeypatch.setattr(tstep, "_clip_with_norm", lambda params, max_norm, norm: None)
    check = bench.check_same(ts, setup, 8, 4)
    assert not check["ok"] and check["clip_update_rel_diff"] > 1.0  # the unclipped update is ~10x the clipped one


def test_check_same_with_a_clip_that_never_acts_is_not_ok():
    setup = tiny_setup()
    ts = bench.synthetic_trackset(2_000, setup.n_features, setup.n_classes, track_len=500, seed=0)
    check = bench.check_same(ts, setup, 8, 2, clip=1e9)
    assert check["clipped_steps"] == 0 and not check["ok"]


def test_low_precision_lstm_rows_on_cpu():
    res = bench.run(device="cpu", batch_sizes=[8], steps=1, warmup=1, check_steps=2, small=True,
                    data_frames=2_000, lstm_precisions=["fp32", "bf16"], verbose=False)
    assert [r["lstm_precision"] for r in res["lstm"]] == ["fp32", "bf16"]
    bf16 = res["lstm"][1]
    assert bf16["check"]["lstm_precision"] == "bf16" and bf16["check"]["rtol"] == 5e-2
    assert bf16["check"]["fast_losses"] != res["lstm"][0]["check"]["fast_losses"]  # it really ran in bf16
    assert res["recommended_lstm_precision"] in ("fp32", "bf16") and res["auto_lstm_precision"] == "fp32"
    assert res["fast"] in res["lstm"]
    with pytest.raises(ValueError, match="fp8"):
        bench.run(device="cpu", small=True, data_frames=2_000, lstm_precisions=["fp8"], verbose=False)


def test_sweep_catches_oom(monkeypatch):
    setup = tiny_setup()
    ts = bench.synthetic_trackset(1_000, setup.n_features, setup.n_classes, track_len=500)
    calls = []

    def fake_fast(ts, setup, batch, steps, warmup, **kw):
        calls.append(batch)
        if batch > 16:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return {"path": "fast", "batch": batch, "ms_per_step": 1.0, "windows_per_s": batch * 1000.0,
                "peak_mem_bytes": None, "epochs100_s": 1.0}

    monkeypatch.setattr(bench, "bench_fast", fake_fast)
    res = bench.sweep(ts, setup, [8, 16, 32, 64], 1, 1, known={8: {"batch": 8, "ms_per_step": 2.0}})
    assert calls == [16, 32, 64]  # 8 was known: not re-measured
    assert [r["fits"] for r in res["rows"]] == [True, True, False, False]
    assert res["largest_fit"] == 16

    def other_error(*a, **k):
        raise RuntimeError("something else")

    monkeypatch.setattr(bench, "bench_fast", other_error)
    with pytest.raises(RuntimeError, match="something else"):
        bench.sweep(ts, setup, [8], 1, 1)


def test_main_from_args_small_cpu(tmp_path, capsys):
    out = tmp_path / "bench.json"
    args = argparse.Namespace(device="cpu", batch_sizes="8,12", steps=2, warmup=1, check_steps=2, small=True,
                              features=False, frames=None, json=out, data_frames=2_000, storage_dtype="auto",
                              compile=False, no_cuda_graphs=False)
    res = bench.main_from_args(args)
    for key in ("command", "env", "reference", "fast", "ratio", "check", "sweep", "targets", "batch", "n_params"):
        assert key in res, key
    assert res["reference"]["ms_per_step"] > 0 and res["fast"]["ms_per_step"] > 0
    assert res["ratio"] > 0 and res["batch"] == 8
    assert res["check"]["ok"]
    assert [r["batch"] for r in res["sweep"]["rows"]] == [8, 12] and res["sweep"]["largest_fit"] == 12
    assert res["targets"]["applies"] is False
    assert res["env"]["torch"] == torch.__version__ and res["env"]["name"]
    saved = json.loads(out.read_text())
    assert saved["fast"]["ms_per_step"] == pytest.approx(res["fast"]["ms_per_step"])
    text = capsys.readouterr().out
    assert "speed-up (a)/(b)" in text and "same result" in text and "largest batch that fits: 12" in text


def test_cli_bench_parses():
    from mabe.cli import build_parser

    args = build_parser().parse_args(["bench", "--device", "cpu", "--small", "--batch-sizes", "8,16",
                                      "--no-cuda-graphs", "--storage-dtype", "float16"])
    assert args.small and args.batch_sizes == "8,16" and args.no_cuda_graphs and args.storage_dtype == "float16"
    assert args.steps is None and args.func.__name__ == "cmd_bench"


# ----------------------------------------------------------------------------- --scale (issue 13)


@pytest.mark.slow  # ~6 child processes (synth, prepare, train): ~1-2 min on 2 busy cores
def test_scale_quick_run_measures_every_step_of_both_paths(tmp_path, capsys):
    """The scale benchmark on one real-preset video, training rows from the tiny preset, no start-up runs:
    every number is there, the cache is the compact one, and the tables print (not timed)."""
    from mabe import synth

    res = bench.scale(videos=1, workdir=tmp_path / "w", workers=(1,), steps=1, batch=4, window=16, repeats=1,
                      step=False, train_real=False, train_preset="tiny", startup=False, train_rounds=1, verbose=False)
    plan = synth.plan_dataset("real", 0, 1, 0)
    assert res["share"]["frames"] == sum(s.n_frames for s in plan) and 0 < res["share"]["of_real"] < 0.01
    p = res["after"]["prepare"]["1"]
    assert p["frames_per_s"] > 0 and p["tree_peak_mib"] >= p["peak_rss_mib"] > 0
    assert 0 < p["bytes_per_frame"] <= bench.SCALE_DISK_BYTES  # int16 positions of 2 mice, not float32 features
    for mode in ("never", "always"):
        t = res["after"][f"train_{mode}"]
        assert t["windows_per_s"] > 0 and t["epoch_time_s"] > 0 and t["peak_rss_mib"] > 0
        assert f"features_in_memory={mode}" in t["data"], t["data"]
    held = res["after"]["train_always"]  # what the in-memory path holds: float16 on the CPU
    assert held["features_dtype"] == "float16" and held["features_mib"] > 0
    assert "features_mib" not in res["after"]["train_never"]
    b = res["batches_cpu_1t"]
    for mode in ("pair", "scene"):
        assert b[mode]["frames_per_s"] > 0 and b[mode]["max_abs_diff_vs_numpy"] < 1e-2
    assert res["precision"]["int16"]["positions_cm"] < res["precision"]["float16"]["positions_cm"]
    assert res["targets"]["disk_bytes_per_frame"] is True and res["targets"]["train_real_gib"] is None
    assert "before" not in res
    bench.print_scale(res)
    out = capsys.readouterr().out
    assert "disk B/frame (share)" in out and "features per batch" in out and "targets:" in out


def test_scale_before_tree_takes_a_src_or_a_checkout(tmp_path):
    src = tmp_path / "co" / "src"
    (src / "mabe").mkdir(parents=True)
    assert bench.before_tree(str(src), tmp_path) == src
    assert bench.before_tree(str(tmp_path / "co"), tmp_path) == src
    with pytest.raises(ValueError, match="neither a source folder nor a git revision"):
        bench.before_tree("no-such-revision-xyz", tmp_path)


def test_run_child_counts_the_whole_process_tree(tmp_path):
    """A child whose own child holds 200 MiB: the tree peak sees it, the wait4 peak of one process may not."""
    import sys

    code = ("import subprocess, sys; subprocess.run([sys.executable, '-c', "
            "'import time; b = bytearray(200 * 2**20); b[::4096] = b\"x\" * len(b[::4096]); time.sleep(1.0)'])")
    r = bench.run_child([sys.executable, "-c", code])
    assert r["tree_peak_mib"] >= 200 and r["seconds"] > 0


def test_main_from_args_scale_runs_the_scale_benchmark(tmp_path, monkeypatch, capsys):
    from mabe.cli import build_parser

    seen = {}

    def fake_scale(videos, workdir, before, steps):
        seen.update(videos=videos, workdir=workdir, before=before, steps=steps)
        return {"fake": True}

    monkeypatch.setattr(bench, "scale", fake_scale)
    monkeypatch.setattr(bench, "run", lambda **k: pytest.fail("--scale ran the step benchmark"))
    monkeypatch.setattr(bench, "print_scale", lambda res: print("scale tables"))
    args = build_parser().parse_args(["bench", "--scale", "--scale-videos", "3", "--before", "HEAD~1", "--workdir",
                                      str(tmp_path / "w"), "--steps", "5", "--json", str(tmp_path / "s.json")])
    assert args.func.__name__ == "cmd_bench"
    args.func(args)
    assert seen == {"videos": 3, "workdir": tmp_path / "w", "before": "HEAD~1", "steps": 5}
    assert json.loads((tmp_path / "s.json").read_text()) == {"fake": True}
    assert "scale tables" in capsys.readouterr().out
