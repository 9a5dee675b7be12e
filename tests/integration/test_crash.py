"""Crash safety: SIGKILL at seeded random moments, failing disks, non-finite streaks, graceful stops.

The kill test runs ``python -m mabe train`` in a subprocess, kills it (SIGKILL: no handler runs) mid
epoch, in the middle of a checkpoint write (``tests/slow_save.py`` stretches each write over a
second so the kill lands inside it) and at a random moment, resuming after each kill from whatever
``checkpoints/last.pt`` holds. After every kill the latest checkpoint must load and be complete; at
the end the metrics and weights must equal those of an uninterrupted run exactly (CPU).
"""

from __future__ import annotations

import argparse
import errno
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from helpers import metric_rows as _rows  # metrics.csv rows without the timing columns
from helpers import tiny_run
from mabe import checkpoint as ckpt
from mabe import io as mio
from mabe import models, runs
from mabe import train as T
from mabe.config import load_config
from mabe.errors import TrainingError

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # in-process runs: one intra-op thread


def _raw(tmp_path: Path, **train) -> dict:
    return tiny_run(tmp_path, train={"epochs": 6, "device": "cpu", "steps_per_epoch": 30, **train})


@pytest.fixture
def cache(fake_cache):
    return fake_cache


def _weights(path: Path) -> dict:
    return ckpt.load(path)[ckpt.MODEL_KEY]


def _env(**extra: str) -> dict:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1", **extra)
    env["PYTHONPATH"] = str(Path(__file__).resolve().parents[2] / "src") + os.pathsep + env.get("PYTHONPATH", "")
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        env.pop(k, None)
    return env


def _mabe(*args: str) -> list[str]:
    return [sys.executable, "-m", "mabe", *args]


def _epochs_done(run: Path) -> int:
    """Epochs whose checkpoint is written: status.json's epoch (updated after the checkpoint writes)."""
    return int(runs.read_status(run).get("epoch") or 0)


def _assert_latest_is_complete(run: Path) -> int | None:
    """The only file ever read as the latest is checkpoints/last.pt: it must load and be whole."""
    last = run / "checkpoints" / "last.pt"
    if not last.is_file():
        return None
    state = ckpt.load(last)  # a truncated file would fail here
    assert all(torch.isfinite(v).all() for v in state[ckpt.MODEL_KEY].values() if v.is_floating_point())
    assert state[ckpt.BATCH_KEY] == 0  # only epoch-boundary checkpoints in these runs (no SIGTERM)
    assert ckpt.resolve(run).name in ("best.pt", "last.pt")  # hidden temporaries are never picked
    return int(state[ckpt.EPOCH_KEY])


def _start(cfg: Path, run: Path, slow_save: float = 0.0) -> subprocess.Popen:
    if (run / "checkpoints" / "last.pt").is_file():
        argv = _mabe("train", "--resume", str(run))
    else:  # killed before its first checkpoint: start again under the same name
        argv = _mabe("train", "--config", str(cfg), "--name", run.name)
    if slow_save:  # each checkpoint write takes slow_save seconds (tests/slow_save.py wraps mabe.io's write)
        argv = [sys.executable, str(Path(__file__).with_name("slow_save.py")), str(slow_save), *argv[3:]]
    env = _env()
    return subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def _wait_for(pred, proc: subprocess.Popen, timeout: float = 40.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return
        if proc.poll() is not None:
            raise AssertionError(f"the run ended (rc {proc.returncode}) before the kill point: {proc.stderr.read()}")
        time.sleep(0.01)
    raise AssertionError("kill point never reached")


def _kill(proc: subprocess.Popen) -> None:
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=10)
    assert proc.returncode == -signal.SIGKILL


def test_sigkill_at_random_moments_then_resume_equals_uninterrupted(tmp_path, cache):
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(yaml.safe_dump(_raw(tmp_path)))
    ref = subprocess.run(_mabe("train", "--config", str(cfg), "--name", "ref"), env=_env(), capture_output=True,
                         text=True, timeout=120)
    assert ref.returncode == 0, ref.stderr[-3000:]
    rng = np.random.default_rng(1234)
    run = tmp_path / "runs" / "crash"
    ckdir = run / "checkpoints"

    # 1. mid-epoch: once a seeded number of epochs is logged, a seeded delay into the next one
    proc = _start(cfg, run)
    n = int(rng.integers(1, 3))
    # status.json's epoch, not the log's "Epoch n" line: the line is printed before best.pt / last.pt
    # are written, and on a loaded machine a kill 0.1 s after it can land before last.pt of epoch n
    _wait_for(lambda: _epochs_done(run) >= n, proc)
    time.sleep(float(rng.uniform(0.0, 0.1)))
    _kill(proc)
    epoch_1 = _assert_latest_is_complete(run)
    assert epoch_1 is not None and epoch_1 >= n

    # 2. during a checkpoint write: each write takes ~1 s; kill a seeded moment after a temporary appears
    proc = _start(cfg, run, slow_save=1.0)
    tmp_files = lambda: [p for p in ckdir.glob(".*.tmp")]  # noqa: E731
    _wait_for(lambda: bool(tmp_files()), proc)
    time.sleep(float(rng.uniform(0.1, 0.6)))
    partial = tmp_files()
    _kill(proc)
    assert partial and all(p.exists() for p in partial)  # the write was cut short ...
    assert all(p.stat().st_size < (ckdir / "last.pt").stat().st_size for p in partial)
    epoch_2 = _assert_latest_is_complete(run)  # ... and last.pt is still the previous, whole file
    assert epoch_2 == epoch_1

    # 3. a seeded random moment of the resumed run once it trains (a step, validation or a write)
    started = (run / "log.txt").read_text().count("model: ")
    proc = _start(cfg, run)
    _wait_for(lambda: (run / "log.txt").read_text().count("model: ") > started, proc)
    assert not tmp_files()  # the resumed run cleaned the partial file up
    time.sleep(float(rng.uniform(0.0, 0.6)))
    if proc.poll() is None:
        _kill(proc)
    epoch_3 = _assert_latest_is_complete(run)
    assert epoch_3 is not None and epoch_3 >= epoch_2

    # then to the end
    final = _start(cfg, run)
    _, err = final.communicate(timeout=120)
    assert final.returncode == 0, err[-3000:]
    assert not tmp_files()
    assert _rows(run) == _rows(tmp_path / "runs" / "ref")
    a, b = _weights(ckdir / "last.pt"), _weights(tmp_path / "runs" / "ref" / "checkpoints" / "last.pt")
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert json.loads((run / "status.json").read_text())["state"] == "finished"


# ----------------------------------------------------------------------------- in-process failures


def _nan_after(calls: int, until: int | None = None):
    """models.create whose forward returns NaN on forward calls ``calls .. until`` (training only)."""
    real = models.create
    count = {"n": 0}

    def create(*a, **k):
        m = real(*a, **k)

        def hook(mod, inp, out):
            if not mod.training:
                return out
            count["n"] += 1
            bad = count["n"] > calls and (until is None or count["n"] <= until)
            return out * float("nan") if bad else out
        m.register_forward_hook(hook)
        return m
    return create


def test_nonfinite_steps_are_skipped_and_counted(tmp_path, cache, monkeypatch):
    monkeypatch.setattr(T.models, "create", _nan_after(4, until=6))  # steps 5 and 6 of epoch 1
    out = T.train(load_config(None, _raw(tmp_path, epochs=2, max_nonfinite_steps=3)), tmp_path / "runs" / "r")
    assert out["state"] == "finished"
    rows = _rows(tmp_path / "runs" / "r")
    assert [r["skipped_steps"] for r in rows] == ["2", "0"]
    assert all(np.isfinite(float(r["loss"])) for r in rows)  # skipped steps do not enter the mean
    w = _weights(tmp_path / "runs" / "r" / "checkpoints" / "last.pt")
    assert all(torch.isfinite(v).all() for v in w.values() if v.is_floating_point())


def test_nonfinite_streak_stops_with_last_good_checkpoint_intact(tmp_path, cache, monkeypatch):
    raw = _raw(tmp_path, epochs=3, max_nonfinite_steps=5)
    good = T.train(load_config(None, dict(raw, train=dict(raw["train"], epochs=1))), tmp_path / "runs" / "good")
    assert good["state"] == "finished"
    monkeypatch.setattr(T.models, "create", _nan_after(30 + 7))  # every step from step 8 of epoch 2
    run = tmp_path / "runs" / "nan"
    with pytest.raises(TrainingError) as err:
        T.train(load_config(None, raw), run)
    msg = str(err.value)
    assert "non-finite" in msg and "in a row" in msg
    assert f"last good checkpoint is intact: {run / 'checkpoints' / 'last.pt'} (epoch 1)" in msg
    assert f"mabe train --resume {run}" in msg
    state = ckpt.load(run / "checkpoints" / "last.pt")
    assert state[ckpt.EPOCH_KEY] == 1 and state[ckpt.BATCH_KEY] == 0
    a, b = state[ckpt.MODEL_KEY], _weights(tmp_path / "runs" / "good" / "checkpoints" / "last.pt")
    assert all(torch.equal(a[k], b[k]) for k in a)  # exactly the weights after epoch 1, nothing of epoch 2
    assert json.loads((run / "status.json").read_text())["state"] == "failed"


@pytest.mark.parametrize("where, code", [("replace", errno.ENOSPC), ("open", errno.EROFS), ("write", errno.ENOSPC)])
def test_unwritable_checkpoint_dir_is_a_clear_error_and_keeps_the_previous(tmp_path, cache, monkeypatch, where, code):
    """Tests run as root, where a read-only chmod does not block writes: the failure is injected."""
    run = tmp_path / "runs" / "disk"
    real_replace, real_open = os.replace, open
    armed = {"on": False}

    def failing(*a, **k):
        raise OSError(code, os.strerror(code))

    def replace(src, dst, *a, **k):
        if armed["on"] and str(dst).endswith("last.pt"):
            failing()
        return real_replace(src, dst, *a, **k)

    def open_(file, mode="r", *a, **k):
        f = real_open(file, mode, *a, **k)
        if armed["on"] and str(file).endswith(".tmp") and "last.pt" in str(file):
            if where == "open":
                f.close()
                failing()
            real_write = f.write

            def write(data):
                real_write(bytes(data)[:100])  # a few bytes land, then the disk is full
                failing()
            f.write = write
        return f

    real_epoch_line = T.epoch_line

    def epoch_line(row, epochs):  # arm after epoch 1's checkpoints: epoch 2's last.pt write fails
        armed["on"] = row["epoch"] >= 2
        return real_epoch_line(row, epochs)

    monkeypatch.setattr(T, "epoch_line", epoch_line)
    if where == "replace":
        monkeypatch.setattr(mio.os, "replace", replace)
    else:
        monkeypatch.setattr(mio, "open", open_, raising=False)
    with pytest.raises(TrainingError) as err:
        T.train(load_config(None, _raw(tmp_path, epochs=3)), run)
    msg = str(err.value)
    assert f"cannot write checkpoint {run / 'checkpoints' / 'last.pt'}" in msg and os.strerror(code) in msg
    assert "previous last.pt is kept" in msg and "(epoch 1)" in msg
    assert ckpt.load(run / "checkpoints" / "last.pt")[ckpt.EPOCH_KEY] == 1
    assert not [p for p in (run / "checkpoints").iterdir() if p.name.endswith(".tmp")]
    status = json.loads((run / "status.json").read_text())
    assert status["state"] == "failed" and "cannot write checkpoint" in status["message"]


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_signal_stops_gracefully_and_says_how_to_resume(tmp_path, cache, monkeypatch, capsys, sig):
    real = T.augment
    calls = {"n": 0}

    def augment_then_signal(*a, **k):
        calls["n"] += 1
        if calls["n"] == 40:  # mid-epoch 2
            os.kill(os.getpid(), sig)
        return real(*a, **k)

    monkeypatch.setattr(T, "augment", augment_then_signal)
    run = tmp_path / "runs" / "sig"
    out = T.train(load_config(None, _raw(tmp_path, epochs=3)), run)
    assert out["state"] == "stopped"
    text = capsys.readouterr().out
    assert f"{sig.name}: finishing the current step" in text
    assert f"stopped; resume with: mabe train --resume {run}" in text
    state = ckpt.load(run / "checkpoints" / "last.pt")
    assert state[ckpt.EPOCH_KEY] == 1 and state[ckpt.BATCH_KEY] == 10
    monkeypatch.setattr(T, "augment", real)
    args = argparse.Namespace(config=None, overrides=[], data=None, name=None, resume=str(run), detach=False,
                              nproc=None)
    assert T.main_from_args(args) == 0
    assert json.loads((run / "status.json").read_text())["state"] == "finished"
