"""DDP on CPU (gloo, 2 processes under torchrun): sharding, reduction, stop agreement, N -> M resume.

``python -m torch.distributed.run --standalone --nproc_per_node 2 -m mabe train ...`` as a user runs it.

Equivalence: rank r takes windows r, r + 2, ... of one global plan, so micro-batch j of the two
ranks together is exactly the 2b windows of micro-batch j of one process with batch 2b, and DDP's
gradient (the mean of the two ranks' gradients) equals the one-process gradient when

- each rank's loss is a mean over the same number of cells: scene mode without class weights and
  windows that fit inside their tracks (no padding), so both means are over b * W frames;
- nothing is drawn per rank: noise, mixup and dropout off (temporal jitter is part of the global plan);
- normalisation is per window: ``model.norm=group``. BatchNorm statistics are per process under DDP
  (SyncBatchNorm needs CUDA: ``model.norm=sync_batch`` there), so with BatchNorm two ranks of b
  normalise with other statistics than one process of 2b and the runs differ by more than rounding.

What is left is floating-point summation order (two means of 128 frames averaged vs one mean of
256; gloo's all-reduce sum then / 2): ~1e-7 relative per step. Adam normalises every update, so
it does not grow over a few dozen steps: after 2 epochs (22 steps) the weights differ by ~6e-8.
Tolerance: 1e-5 absolute on weights and 1e-5 relative on every logged loss / metric.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from helpers import metric_rows, tiny_run
from mabe import checkpoint as ckpt
from mabe import train as T
from mabe.config import load_config
from mabe.training import runlog, schedule

pytestmark = [pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed not built"),
              pytest.mark.usefixtures("one_torch_thread")]

ATOL_WEIGHTS = 1e-5
RTOL_METRICS = 1e-5
# A hang guard, not a speed target: a 2-rank run takes ~25 s on a laptop core but several times that
# when the full suite runs under xdist on a shared 2-core machine (the 120 s it had expired once).
HANG_S = 600


def _config(tmp_path: Path, task: dict | None = None, **train) -> dict:
    return tiny_run(tmp_path, task=task or {"mode": "scene"}, model={"dropout": 0.0, "norm": "group"},
                    augment={"noise_std": 0.0, "mixup_alpha": 0.0},
                    train={"epochs": 2, "batch_size": 8, "device": "cpu", **train})


def _write(tmp_path: Path, name: str, raw: dict) -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(raw))
    return path


def _env() -> dict:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    src = str(Path(__file__).resolve().parents[2] / "src")
    env["PYTHONPATH"] = src + os.pathsep + env.get("PYTHONPATH", "")
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(k, None)
    return env


def torchrun(*args: str, nproc: int = 2) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
            "-m", "mabe", *args]


_rows = metric_rows


def assert_same_run(a: Path, b: Path) -> None:
    ra, rb = _rows(a), _rows(b)
    assert [r["epoch"] for r in ra] == [r["epoch"] for r in rb]
    for x, y in zip(ra, rb):
        assert x["phase"] == y["phase"] and x["skipped_steps"] == y["skipped_steps"]
        for key in ("lr", "loss", "val_loss", "val_f1", "val_acc"):
            assert float(x[key]) == pytest.approx(float(y[key]), rel=RTOL_METRICS), (key, x, y)
    wa = ckpt.load(a / "checkpoints" / "last.pt")[ckpt.MODEL_KEY]
    wb = ckpt.load(b / "checkpoints" / "last.pt")[ckpt.MODEL_KEY]
    assert wa.keys() == wb.keys()
    worst = max((wa[k].double() - wb[k].double()).abs().max().item() for k in wa)
    assert worst <= ATOL_WEIGHTS, worst


def _failure_text(text: str) -> str:
    """A failed torchrun's output for the assertion: rank 0's and the launcher's lines first (a crashing
    rank's traceback is long and would push what rank 0 said off the end), then the raw tail."""
    own = [line for line in text.splitlines() if not re.match(r"\[rank[1-9]\d*\]", line)]
    return "\n".join(own)[-2500:] + "\n--- raw tail ---\n" + text[-1500:]


@pytest.fixture
def cache(fake_cache):
    return fake_cache


@pytest.mark.parametrize("task", [
    {"mode": "scene", "class_weights": [1.0, 5.0, 8.0, 8.0]},  # weighted mean over both ranks' frames
    {"mode": "pair"},  # ranks hold different numbers of labelled cells: the masked mean is global
], ids=["scene-weighted", "pair-masked"])
def test_two_ranks_of_b_equal_one_process_of_2b(tmp_path, cache, task):
    """2 ranks x batch 8 with linear lr scaling (lr 1.5e-3 x 2) == 1 process x batch 16 at lr 3e-3."""
    cfg2 = _write(tmp_path, "ddp.yaml", _config(tmp_path, task, lr=1.5e-3, lr_scaling="linear"))
    try:
        out = subprocess.run(torchrun("train", "--config", str(cfg2), "--name", "ddp"), env=_env(),
                             capture_output=True, text=True, timeout=HANG_S)
    except subprocess.TimeoutExpired as err:  # say where it hung
        tail = (err.stdout or b"")[-3000:], (err.stderr or b"")[-3000:]
        raise AssertionError(f"torchrun still running after {HANG_S} s; output tail: {tail}") from None
    assert out.returncode == 0, _failure_text(out.stdout + out.stderr)
    ddp = tmp_path / "runs" / "ddp"
    log = (ddp / "log.txt").read_text()
    assert "batch 8 x accum 1 x 2 process(es), lr 0.0015 x 2 (linear scaling)" in log
    assert log.count("Epoch 1/2") == 1  # only rank 0 logs
    state = ckpt.load(ddp / "checkpoints" / "last.pt")
    assert state[ckpt.WORLD_KEY] == 2 and len(state[ckpt.RANK_RNG_KEY]) == 2

    one = T.train(load_config(None, _config(tmp_path, task, batch_size=16)), tmp_path / "runs" / "one")
    assert one["state"] == "finished"
    assert_same_run(ddp, tmp_path / "runs" / "one")


def test_sigterm_to_rank0_stops_every_rank_and_resumes_as_one_process(tmp_path, cache):
    """``mabe stop`` signals rank 0 only (the pid in status.json): the ranks agree at the next check,
    both leave after the same step, rank 0 writes one checkpoint, torchrun exits 0. The checkpoint of
    2 ranks x 8 then resumes as 1 process x 16 and ends where an uninterrupted 1 x 16 run ends."""
    raw = _config(tmp_path, epochs=40, steps_per_epoch=25)
    cfg = _write(tmp_path, "ddp.yaml", raw)
    run = tmp_path / "runs" / "ddp"
    proc = subprocess.Popen(torchrun("train", "--config", str(cfg), "--name", "ddp"), env=_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + HANG_S
        while time.monotonic() < deadline:
            if (run / "log.txt").is_file() and "Epoch 1/40" in (run / "log.txt").read_text():
                break
            time.sleep(0.05)
        else:
            raise AssertionError("the run never finished epoch 1")
        pid = json.loads((run / "status.json").read_text())["pid"]
        os.kill(pid, signal.SIGTERM)
        text, _ = proc.communicate(timeout=HANG_S)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, _failure_text(text)
    assert "stopped; resume with: mabe train --resume" in text
    assert json.loads((run / "status.json").read_text())["state"] == "stopped"
    state = ckpt.load(run / "checkpoints" / "last.pt")
    stopped_epoch, micro = state[ckpt.EPOCH_KEY], state[ckpt.BATCH_KEY]
    assert state[ckpt.WORLD_KEY] == 2 and stopped_epoch < 40
    assert (state[ckpt.STEP_KEY] % runlog.STOP_CHECK_STEPS == 0) or micro == 0  # a mid-epoch stop lands on a check
    assert not [p for p in (run / "checkpoints").iterdir() if p.name.startswith(".")]

    end = stopped_epoch + 2  # finish the interrupted epoch (if any) and one more
    from argparse import Namespace

    args = Namespace(config=None, overrides=[f"train.epochs={end}", "train.batch_size=16"], data=None, name=None,
                     resume=str(run), detach=False, nproc=None)
    with pytest.warns(UserWarning, match="train.batch_size"):
        assert T.main_from_args(args) == 0
    ref = T.train(load_config(None, dict(raw, train=dict(raw["train"], epochs=end, batch_size=16))),
                  tmp_path / "runs" / "ref")
    assert ref["state"] == "finished"
    assert_same_run(run, tmp_path / "runs" / "ref")


def test_stop_flag_and_lr_scaling_units():
    assert schedule.lr_factor("none", 8) == 1.0 and schedule.lr_factor("linear", 8) == 8.0
    assert schedule.lr_factor("sqrt", 4) == 2.0
    stop = runlog.StopRequest.__new__(runlog.StopRequest)  # no signal handlers: the flag logic alone
    stop.requested, stop.world, stop.every, stop.announced = False, 1, 10, False
    stop.signal_name, stop.log = "SIGTERM", runlog.RunLog(Path("."), None, enabled=False)
    assert not stop.check(10)
    stop.requested = True
    assert stop.check(3) and stop.agree()  # one process: every step, no collective
