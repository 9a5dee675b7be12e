"""The training recipe, top to bottom: config -> data -> model -> loop -> validation -> checkpoints.

    mabe train --config configs/h100.yaml --data DATA --name NAME      # one process
    mabe train --config configs/h100.yaml --nproc 8                    # DDP under torchrun
    mabe train --resume NAME                                           # continue exactly

Read in this order: the pure pieces (learning-rate schedule, losses, augmentation, parameter
groups), the batch source (fast path and DataLoader path), the run log, then ``train()``.

Exactness on resume: the windows an epoch visits, their jitter, the augmentation noise and the
mixup draws are pure functions of (seed, epoch, micro-batch); the global RNGs (dropout), the
optimizer, the schedule and every counter come from the checkpoint. On CPU a resumed run ends with
exactly the metrics of an uninterrupted one.

The step is ``accel``'s (grad_accum 1), the same code ``mabe bench`` times as its fast path: it never
waits for the device; losses and skip counters accumulate in device tensors and are read once per
epoch (and the non-finite streak once every ``max_nonfinite_steps`` steps); the fused AdamW (CUDA and
CPU) skips a non-finite step on the device through ``found_inf``, the same hook GradScaler uses; on
CUDA with ``train.cuda_graphs`` the whole step is one CUDA graph. grad_accum > 1 keeps its own loop.
"""

from __future__ import annotations

import contextlib
import csv
import math
import os
import signal
import subprocess
import sys
import time
import warnings
from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
import yaml
from torch import nn
from tqdm.auto import tqdm

import mabe
from mabe import accel, models, runs
from mabe import checkpoint as ckpt
from mabe.config import Config, ConfigError, config_from_dict, config_to_dict, load_config, parse_overrides
from mabe.errors import MabeError, TrainingError
from mabe.evaluate import (
    autocast_for,
    competition_score,
    ensure_cache,
    predict_tracks,
    resolve_precision,
    save_predictions,
    trackset_metrics,
    write_json,
)
from mabe.windows import (
    IGNORE_INDEX,
    TrackSet,
    WindowDataset,
    epoch_plan,
    load_trackset,
    norm_stats,
    normalize_,
    resolve_actions,
    split_videos,
    window_index,
    window_weights,
)

__all__ = [
    "warmup_lr", "LRSchedule", "scene_loss", "pair_loss", "auto_pos_weight", "param_groups",
    "augment", "Batches", "train", "main_from_args", "METRICS_COLUMNS",
]

METRICS_COLUMNS = (
    "epoch", "phase", "lr", "loss", "val_loss", "val_f1", "val_acc", "val_score", "epoch_time_s",
    "windows_per_s", "skipped_steps",
)
# keys a resumed run may change; anything under model/features/task/windows must match the checkpoint
RESUMABLE_KEYS = {
    "data", "cache", "runs", "name", "train.epochs", "train.early_stopping_patience", "train.save_freq",
    "train.device", "train.data_path", "train.num_workers", "train.tensorboard", "train.val_every",
    "train.max_nonfinite_steps", "train.compile", "train.num_threads", "train.cuda_graphs",
}


# ----------------------------------------------------------------------------- schedule


def warmup_lr(step: int, base_lr: float, warmup_steps: int) -> float:
    """Learning rate of optimizer step ``step`` (0-based): linear from base/warmup to base, then base."""
    if warmup_steps <= 0 or step >= warmup_steps:
        return base_lr
    return base_lr * (step + 1) / warmup_steps


class LRSchedule:
    """Linear warmup stepped per optimizer step, then ReduceLROnPlateau on validation F1 per epoch.

    ``before_step(step)`` sets the warmup learning rate; ``after_epoch(f1, step)`` steps the
    plateau only once warmup is over (the last warmup step runs at exactly the base rate).
    """

    def __init__(self, optimizer: torch.optim.Optimizer, base_lr: float, warmup_steps: int, cfg: Any):
        self.optimizer = optimizer
        self.base_lr = base_lr
        self.warmup_steps = warmup_steps
        self.plateau = None
        if cfg.scheduler == "plateau":
            self.plateau = torch.optim.lr_scheduler.ReduceLROnPlateau(
                optimizer, mode="max", factor=cfg.plateau_factor, patience=cfg.plateau_patience,
                min_lr=cfg.min_lr,
            )
        self._set(warmup_lr(0, base_lr, warmup_steps))

    def _set(self, lr: float) -> None:
        accel.set_lr(self.optimizer, lr)  # in place when the lr is a (CUDA-graph captured) tensor

    @property
    def lr(self) -> float:
        return accel.get_lr(self.optimizer)

    def in_warmup(self, step: int) -> bool:
        return step < self.warmup_steps

    def before_step(self, step: int) -> None:
        if self.in_warmup(step):
            self._set(warmup_lr(step, self.base_lr, self.warmup_steps))

    def after_epoch(self, val_f1: float | None, step: int) -> None:
        if self.plateau is not None and val_f1 is not None and not self.in_warmup(step):
            self.plateau.step(val_f1)

    def state_dict(self) -> dict:
        return {"base_lr": self.base_lr, "warmup_steps": self.warmup_steps, "lr": self.lr,
                "plateau": self.plateau.state_dict() if self.plateau is not None else None}

    def load_state_dict(self, state: dict) -> None:
        self.base_lr, self.warmup_steps = state["base_lr"], state["warmup_steps"]
        if self.plateau is not None and state["plateau"] is not None:
            self.plateau.load_state_dict(state["plateau"])
        self._set(state["lr"])


# ----------------------------------------------------------------------------- losses


def scene_loss(
    logits: torch.Tensor, y: torch.Tensor, weight: torch.Tensor | None = None, label_smoothing: float = 0.0
) -> torch.Tensor:
    """(B, W, C) logits, (B, W) classes (IGNORE_INDEX on padding) -> weighted cross-entropy."""
    C = logits.shape[-1]
    y = y.reshape(-1)
    total = F.cross_entropy(
        logits.reshape(-1, C).float(), y, weight=weight, ignore_index=IGNORE_INDEX,
        label_smoothing=label_smoothing, reduction="sum",
    )
    valid = y != IGNORE_INDEX
    # the denominator of cross_entropy's weighted mean: the weights of the valid frames' classes
    count = weight[y.clamp(min=0)].mul(valid).sum() if weight is not None else valid.sum().float()
    return global_mean(total, count)


def pair_loss(
    logits: torch.Tensor, y: torch.Tensor, mask: torch.Tensor, pos_weight: torch.Tensor | None = None,
    label_smoothing: float = 0.0,
) -> torch.Tensor:
    """(B, W, A) logits, targets and labelled mask -> BCE averaged over labelled cells only.

    An unlabelled (track, action) is not a negative: it contributes neither loss nor gradient.
    """
    target = y.float()
    if label_smoothing > 0:
        target = target * (1 - label_smoothing) + 0.5 * label_smoothing
    per = F.binary_cross_entropy_with_logits(logits.float(), target, pos_weight=pos_weight, reduction="none")
    m = mask.float()  # (B, W, A)
    return global_mean((per * m).sum(), m.sum())


def global_mean(total: torch.Tensor, count: torch.Tensor) -> torch.Tensor:
    """``total / count``, with ``count`` summed over every DDP rank (times the world size, since DDP
    averages gradients), so that W ranks of batch b train exactly like one process of batch W*b even
    when ranks hold different numbers of labelled cells. One all-reduce of a scalar, no host sync.
    """
    count = count.detach().float()
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        world = torch.distributed.get_world_size()
        if world > 1:
            count = count.clone()
            torch.distributed.all_reduce(count)
            return total * world / count.clamp(min=1.0)
    return total / count.clamp(min=1.0)


def auto_pos_weight(ts: TrackSet, cap: float) -> np.ndarray:
    """Per-action BCE pos_weight from the training frames: sqrt(neg / pos) over labelled cells, <= cap."""
    per_track = np.add.reduceat(ts.Y, ts.offsets[:-1], axis=0, dtype=np.int64)  # (n_tracks, A) positives
    pos = (per_track * ts.label_mask).sum(axis=0).astype(np.float64)
    cells = (ts.lengths[:, None] * ts.label_mask).sum(axis=0).astype(np.float64)
    ratio = np.divide(cells - pos, pos, out=np.full(pos.shape, cap**2), where=pos > 0)
    return np.minimum(np.sqrt(ratio), cap).astype(np.float32)


def prob_loss(ts: TrackSet, probs: np.ndarray, weight: np.ndarray | None, pos_weight: np.ndarray | None) -> float:
    """The training loss evaluated on averaged per-frame probabilities (the validation loss)."""
    eps = 1e-7
    if ts.mode == "scene":
        p = probs[np.arange(len(ts.Y)), ts.Y].clip(eps, 1.0)
        w = weight[ts.Y] if weight is not None else np.ones(len(p))
        return float(-(w * np.log(p)).sum() / w.sum())
    mask = np.repeat(ts.label_mask, ts.lengths, axis=0)
    p = probs.clip(eps, 1 - eps)
    y = ts.Y.astype(np.float32)
    pw = pos_weight if pos_weight is not None else 1.0
    per = -(pw * y * np.log(p) + (1 - y) * np.log(1 - p))
    return float((per * mask).sum() / max(mask.sum(), 1))


# ----------------------------------------------------------------------------- optimizer


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """AdamW groups: decay on weight matrices and kernels; none on biases and norm parameters."""
    decay, no_decay = [], []
    for _, p in model.named_parameters():
        if p.requires_grad:
            (decay if p.ndim >= 2 else no_decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


_OWN_GROUP_KEYS = ("fused", "capturable", "foreach", "lr")


def load_optimizer_state(optimizer: torch.optim.Optimizer, saved: dict) -> None:
    """``optimizer.load_state_dict(saved)``, keeping this run's implementation flags (fused,
    capturable, foreach) and lr objects: ``load_state_dict`` would take them from the checkpoint, so
    a run saved on the CPU and resumed on CUDA would lose its capturable (CUDA-graph) AdamW, and a
    capturable lr tensor would be replaced by the checkpoint's CPU copy. The flags also decide where
    the step counters are loaded (the device for fused/capturable). The lr value itself comes back
    through ``LRSchedule.load_state_dict``."""
    groups = saved.get("param_groups", [])
    if len(groups) == len(optimizer.param_groups):  # else load_state_dict raises its own error
        groups = [dict(sg, **{k: g[k] for k in _OWN_GROUP_KEYS if k in g})
                  for sg, g in zip(groups, optimizer.param_groups)]
        saved = dict(saved, param_groups=groups)
    optimizer.load_state_dict(saved)


# ----------------------------------------------------------------------------- augmentation


def batch_rng(seed: int, rank: int, epoch: int, micro: int) -> np.random.Generator:
    """The host generator of one micro-batch: a pure function of its coordinates."""
    return np.random.default_rng([seed, rank, epoch, micro])


def augment(
    batch: dict, aug: Any, gen: torch.Generator, rng: np.random.Generator
) -> tuple[dict, tuple[float, torch.Tensor] | None]:
    """Noise on valid frames (normalised units) and mixup, on the batch's device; no host sync.

    Returns the batch (x float32) and ``(lam, perm)`` when mixup mixed it with ``x[perm]``.
    """
    x = batch["x"].float()  # (B, W, F)
    if aug.noise_std > 0:
        noise = torch.randn(x.shape, generator=gen, device=x.device)  # (B, W, F)
        x = x + aug.noise_std * noise * batch["valid"][..., None]
    mix = None
    if aug.mixup_alpha > 0:
        lam = float(rng.beta(aug.mixup_alpha, aug.mixup_alpha))
        perm = torch.randperm(x.shape[0], generator=gen, device=x.device)  # (B,)
        x = lam * x + (1 - lam) * x[perm]
        mix = (lam, perm)
    return dict(batch, x=x), mix


# ----------------------------------------------------------------------------- batches


class Batches:
    """The micro-batches of an epoch, from one of two sources that yield the same batches:

    - resident (``data_path`` gpu, and the in-process default on CPU): ``accel.DeviceStore``, the whole
      TrackSet on the training device (``train.storage_dtype``); a batch is ``gather`` over window
      indices, all torch ops, no copies. When it does not fit in GPU memory the store says so and
      streams each batch through pinned host memory instead;
    - loader (the reference): a ``DataLoader`` with ``num_workers`` processes, numpy gather per window.
    """

    def __init__(
        self, ts: TrackSet, windows: np.ndarray, weights: np.ndarray | None, cfg: Config, device: torch.device,
        path: str, n_draw: int, rank: int = 0, world: int = 1,
    ):
        self.ts, self.windows, self.weights, self.cfg, self.device = ts, windows, weights, cfg, device
        self.path, self.n_draw, self.rank, self.world = path, n_draw, rank, world
        self.length = cfg.windows.sequence_length
        self.batch_size = cfg.train.batch_size
        if path == "resident":
            self.store = accel.DeviceStore(ts, device, cfg.train.storage_dtype, precision=cfg.train.precision)
            self.windows_t = torch.from_numpy(windows).to(self.store.index_device)
        else:
            self.dataset = WindowDataset(ts, self.length)

    def plan(self, epoch: int) -> tuple[np.ndarray, np.ndarray]:
        """This rank's share of the epoch's windows and shifts (every rank computes the same plan)."""
        order, shift = epoch_plan(len(self.windows), self.n_draw, epoch, self.cfg.train.seed, self.weights,
                                  self.cfg.augment.temporal_jitter)
        # DDP: rank r takes windows r, r + world, ... so micro-batch j of all ranks together is windows
        # [j * B * world, (j + 1) * B * world) of the plan, as for one process with batch B * world.
        # The plan is cut to a multiple of world first: equal shares, hence the same number of steps
        # on every rank (one extra step on one rank would hang the others in its all-reduce).
        n = len(order) - len(order) % self.world
        return order[self.rank : n : self.world], shift[self.rank : n : self.world]

    def n_micro(self, epoch: int) -> int:
        """Micro-batches per epoch: full batches only (a last partial one is dropped), at least one."""
        n = len(self.plan(epoch)[0])
        return max(n // self.batch_size, 1)

    def epoch(self, epoch: int, start: int = 0) -> Iterator[tuple[int, dict]]:
        """Yield ``(j, batch)`` for micro-batches ``start ..`` of ``epoch``, batch tensors on the device."""
        order, shift = self.plan(epoch)
        B, n_micro = self.batch_size, max(len(order) // self.batch_size, 1)
        end = min(n_micro * B, len(order))
        if self.path == "resident":
            idx = self.store.index_device  # the device, or the CPU when the store streams
            o = torch.from_numpy(order[:end]).to(idx)
            s = torch.from_numpy(shift[:end]).to(idx)
            for j in range(start, n_micro):
                sl = slice(j * B, (j + 1) * B)
                yield j, self.store.batch(self.windows_t[o[sl]], self.length, s[sl])
            return
        self.dataset.set_plan(self.windows[order[start * B : end]], shift[start * B : end])
        loader = torch.utils.data.DataLoader(
            self.dataset, batch_size=B, shuffle=False, num_workers=self.cfg.train.num_workers,
            pin_memory=self.device.type == "cuda", drop_last=False,
            generator=torch.Generator().manual_seed(epoch),  # else it draws a seed from the global RNG
        )
        for j, b in enumerate(loader, start=start):
            yield j, {k: v.to(self.device, non_blocking=True) for k, v in b.items()}


# ----------------------------------------------------------------------------- run log


class _Tee:
    """Write to the terminal and to log.txt."""

    def __init__(self, stream: Any, path: Path):
        self.stream = stream
        self.file = open(path, "a", buffering=1)  # noqa: SIM115 - closed by RunLog.close

    def write(self, text: str) -> int:
        self.file.write(text)
        return self.stream.write(text)

    def flush(self) -> None:
        self.stream.flush()
        self.file.flush()

    def isatty(self) -> bool:
        return self.stream.isatty()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.stream, name)


class RunLog:
    """Everything a run writes besides checkpoints: log.txt, metrics.csv, status.json, tb/.

    Only rank 0 writes; elsewhere every method is a no-op.
    """

    def __init__(self, run_dir: Path, cfg: Config, enabled: bool, resume_epoch: int | None = None):
        self.run_dir, self.enabled = run_dir, enabled
        self.tee = None
        self.tb = None
        if not enabled:
            return
        if not os.environ.get("MABE_DETACHED"):  # a detached run's stdout already goes to log.txt
            self.tee = _Tee(sys.stdout, run_dir / "log.txt")
            sys.stdout = self.tee
        self.csv_path = run_dir / "metrics.csv"
        if resume_epoch is None or not self.csv_path.is_file():
            with open(self.csv_path, "w", newline="") as f:
                csv.writer(f).writerow(METRICS_COLUMNS)
        else:  # drop rows past the checkpoint: they will be recomputed
            with open(self.csv_path, newline="") as f:
                rows = [r for r in csv.DictReader(f) if int(r["epoch"]) <= resume_epoch]
            with open(self.csv_path, "w", newline="") as f:
                w = csv.DictWriter(f, METRICS_COLUMNS)
                w.writeheader()
                w.writerows(rows)
        if cfg.train.tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.tb = SummaryWriter(str(run_dir / "tb"))
            except ImportError:
                print("tensorboard is not installed: no tb/ logs (pip install tensorboard)")

    def print(self, *args: Any) -> None:
        if self.enabled:
            print(*args, flush=True)

    def status(self, **fields: Any) -> None:
        if self.enabled:
            write_status(self.run_dir, **fields)

    def epoch(self, row: dict) -> None:
        if not self.enabled:
            return
        with open(self.csv_path, "a", newline="") as f:
            csv.writer(f).writerow([_csv_value(row.get(c)) for c in METRICS_COLUMNS])
        if self.tb is not None:
            for key in ("lr", "loss", "val_loss", "val_f1", "val_acc", "val_score", "windows_per_s"):
                if row.get(key) is not None:
                    self.tb.add_scalar(key, row[key], row["epoch"])
            self.tb.flush()

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()
        if self.tee is not None:
            sys.stdout = self.tee.stream
            self.tee.file.close()
            self.tee = None


def _csv_value(v: Any) -> str:
    if v is None:
        return ""
    if isinstance(v, float):
        return f"{v:.8g}"
    return str(v)


def write_status(run_dir: Path, **fields: Any) -> None:
    """status.json through mabe.runs (atomic merge)."""
    from mabe import runs

    runs.write_status(run_dir, **fields)


def _now() -> str:
    return datetime.now().isoformat(timespec="seconds")


STOP_CHECK_STEPS = 10  # DDP: the ranks agree on a stop request every this many optimizer steps


class StopRequest:
    """SIGTERM / SIGINT -> finish the current step, write last.pt, exit as ``stopped``.

    A second Ctrl-C interrupts at once. Under DDP a signal may reach one rank only (``mabe stop``
    signals rank 0, the pid in status.json) or reach the ranks at different steps (torchrun forwards
    its SIGTERM to every rank): ``check(step)`` all-reduces the flag (MAX) every ``STOP_CHECK_STEPS``
    optimizer steps, a step number every rank shares, so all ranks leave the loop after the same
    step and rank 0 writes the one checkpoint. One process reads its own flag every step, for free.
    """

    def __init__(self, log: RunLog, world: int = 1, device: torch.device | None = None,
                 every: int = STOP_CHECK_STEPS):
        self.requested = False
        self.signal_name: str | None = None
        self.announced = False
        self.log = log
        self.world, self.device, self.every = world, device, max(int(every), 1)
        self._old: dict[int, Any] = {}
        if threading_main():
            for sig in (signal.SIGTERM, signal.SIGINT):
                self._old[sig] = signal.signal(sig, self._handle)

    def check(self, step: int) -> bool:
        """Stop after optimizer step ``step``? The same answer on every rank (a collective every
        ``every`` steps under DDP, so every rank must call it after every step)."""
        if self.world == 1:
            return self.requested and self._announce()
        return step % self.every == 0 and self.agree()

    def agree(self) -> bool:
        """Whether any rank was asked to stop (every rank must call it at the same point)."""
        if self.world > 1:
            flag = torch.tensor([1.0 if self.requested else 0.0], device=self.device)
            torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX)
            if flag.item() > 0:
                self.requested = True
        return self.requested and self._announce()

    def _handle(self, signum: int, frame: Any) -> None:
        if self.requested and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.requested = True
        # no print here: a handler that writes while the interrupted code is inside a write to the same
        # stream raises "reentrant call" (and under DDP that one rank's error aborts the others)
        self.signal_name = signal.Signals(signum).name

    def _announce(self) -> bool:
        """Say once, from the training loop, that the run is stopping; returns True."""
        if not self.announced:
            self.announced = True
            why = self.signal_name or "stop requested on another rank"
            self.log.print(f"\n{why}: finishing the current step, then saving checkpoints/last.pt")
        return True

    def restore(self) -> None:
        for sig, old in self._old.items():
            signal.signal(sig, old)
        self._old = {}


def threading_main() -> bool:
    import threading

    return threading.current_thread() is threading.main_thread()


# ----------------------------------------------------------------------------- distributed


def dist_info() -> tuple[int, int, int]:
    """(rank, local_rank, world_size) from torchrun's environment; (0, 0, 1) without it."""
    return int(os.environ.get("RANK", 0)), int(os.environ.get("LOCAL_RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))


def init_distributed() -> tuple[int, int, int]:
    """Join the process group when launched by torchrun with several processes."""
    rank, local_rank, world = dist_info()
    if world > 1 and not torch.distributed.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        if torch.cuda.is_available():
            torch.cuda.set_device(local_rank)
        timeout = timedelta(seconds=float(os.environ.get("MABE_DIST_TIMEOUT_S", 3600)))  # rank 0 may prepare the cache
        torch.distributed.init_process_group(backend=backend, timeout=timeout)
    return rank, local_rank, world


def all_reduce_sum(values: list[float], device: torch.device, world: int) -> list[float]:
    """Sum ``values`` over the ranks (float64; identity for one process)."""
    if world == 1:
        return [float(v) for v in values]
    t = torch.tensor([float(v) for v in values], dtype=torch.float64, device=device)
    torch.distributed.all_reduce(t)
    return t.tolist()


def broadcast_floats(values: list[float], device: torch.device, world: int) -> list[float]:
    """Rank 0's ``values`` on every rank: decisions (best epoch, plateau, early stop) must agree even
    where a non-deterministic kernel made two ranks' validation differ in the last bit."""
    if world == 1:
        return [float(v) for v in values]
    t = torch.tensor([float(v) for v in values], dtype=torch.float64, device=device)
    torch.distributed.broadcast(t, src=0)
    return t.tolist()


def gather_rng_states(world: int) -> list | None:
    """Every rank's ``ckpt.rng_state()`` (rank order) for the checkpoint; None for one process.
    A collective: every rank calls it at the same point."""
    if world == 1:
        return None
    out: list = [None] * world
    torch.distributed.all_gather_object(out, ckpt.rng_state())
    return out


def save_checkpoint(path: Path, state: dict) -> Path:
    """``ckpt.save`` with a full, read-only or failing disk as a TrainingError naming the file; the
    write is atomic, so the previous checkpoint at ``path`` is still there and still complete."""
    try:
        return ckpt.save(path, state)
    except OSError as err:
        why = err.strerror or str(err)
        raise TrainingError(
            f"cannot write checkpoint {path}: {why} (errno {err.errno}); the previous {path.name} is kept "
            f"intact. Free space or make {path.parent} writable, then resume") from err


def _lr_factor(kind: str, processes_x_accum: int) -> float:
    """``train.lr_scaling``: the learning rate is ``train.lr`` times this, for a global batch of
    ``batch_size * world * grad_accum`` (relative to ``batch_size``, the batch ``train.lr`` was tuned for)."""
    return {"none": 1.0, "linear": float(processes_x_accum), "sqrt": math.sqrt(processes_x_accum)}[kind]


def adapt_resume(
    state: dict, cfg: Config, world: int, schedule: LRSchedule, step: int, start_micro: int, steps_per_epoch: int,
    log: RunLog,
) -> tuple[int, int]:
    """A checkpoint written with another global batch (N processes resumed with M, or another batch
    size / grad_accum): convert the position and the learning rate, return ``(step, start_micro)``.

    - micro-batch: the ranks take strided shares of one global plan, so the first k micro-batches of N
      processes are the first ``k * batch * N`` windows of the epoch's plan whatever N is; the resumed
      run starts at the micro-batch holding that many windows (rounded down to an accumulation group:
      at most one group's windows are seen twice);
    - step: rescaled by old / new global batch, so warmup keeps its progress in epochs; warmup length
      is recomputed for the new steps per epoch;
    - lr: the current rate (after any plateau reductions) times new / old ``train.lr_scaling`` factor.

    Adam's moments are kept as they are. The run is then not bit-identical to an uninterrupted one.
    """
    tc = cfg.train
    old_tc = state[ckpt.CONFIG_KEY].get("train", {})
    old_world = int(state.get(ckpt.WORLD_KEY) or 1)
    old_b, old_accum = int(old_tc.get("batch_size", tc.batch_size)), int(old_tc.get("grad_accum", tc.grad_accum))
    b, accum = tc.batch_size, tc.grad_accum
    if (old_world, old_b, old_accum) == (world, b, accum):
        return step, start_micro
    micro = start_micro * old_b * old_world // (b * world)
    micro -= micro % accum
    new_step = round(step * (old_b * old_accum * old_world) / (b * accum * world))
    old_factor = _lr_factor(old_tc.get("lr_scaling", tc.lr_scaling), old_accum * old_world)
    new_factor = _lr_factor(tc.lr_scaling, accum * world)
    lr = schedule.lr * new_factor / old_factor
    schedule.base_lr = tc.lr * new_factor
    schedule.warmup_steps = round(tc.warmup_epochs * steps_per_epoch)
    schedule._set(lr)
    schedule.before_step(new_step)  # inside warmup: the warmup rate of the converted step
    log.print(f"resuming a checkpoint of {old_world} process(es) x batch {old_b} x accum {old_accum} with {world} x "
              f"{b} x {accum}: step {step} -> {new_step}, micro-batch {start_micro} -> {micro}, lr x "
              f"{new_factor / old_factor:g} ({tc.lr_scaling} scaling); not bit-identical to an uninterrupted run")
    return new_step, micro


def pick_device(name: str, local_rank: int = 0) -> torch.device:
    if name == "auto":
        return torch.device(f"cuda:{local_rank}" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and torch.cuda.is_available():
        return torch.device(f"cuda:{local_rank}")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise TrainingError(f"train.device={name} but CUDA is not available on this machine")
    return torch.device(name)


def seed_everything(seed: int) -> None:
    import random

    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


# ----------------------------------------------------------------------------- data


def prepare_data(cfg: Config, log: RunLog, stats: dict | None = None) -> tuple[TrackSet, TrackSet, dict]:
    """Cache (prepared if missing) -> split by video -> normalised train and val TrackSets.

    ``stats``: normalisation to apply (a resumed run's); None computes it on the training tracks.
    """
    from mabe import prepare

    cache_dir = ensure_cache(cfg, Path(cfg.data), ["train"])
    _, index = prepare.open_cache(cache_dir)
    index = index[(index["split"] == "train") & index["has_labels"].astype(bool)]
    if index.empty:
        raise MabeError(f"{cache_dir}: no labelled training videos (from {cfg.data})")
    train_videos, val_videos = split_videos(index, cfg.windows.val_fraction, cfg.windows.split_seed)
    if len(val_videos) == 0:
        raise MabeError(f"{cfg.data}: no validation videos (windows.val_fraction={cfg.windows.val_fraction}, "
                        f"{len(train_videos)} labelled videos); validation drives the schedule and checkpoints")
    actions = resolve_actions(cache_dir, cfg.task, train_videos, index) if cfg.task.mode == "pair" else None
    train_ts = load_trackset(cache_dir, cfg.task, train_videos, actions, index_df=index)
    val_ts = load_trackset(cache_dir, cfg.task, val_videos, actions, index_df=index)
    stats = stats if stats is not None else norm_stats(train_ts.X)
    normalize_(train_ts, stats)
    normalize_(val_ts, stats)
    log.print(f"data: {cache_dir} | train {len(train_videos)} videos, {train_ts.n_tracks} tracks, "
              f"{len(train_ts.X):,} frames | val {len(val_videos)} videos, {val_ts.n_tracks} tracks, "
              f"{len(val_ts.X):,} frames | {train_ts.n_features} features -> {train_ts.n_outputs} outputs "
              f"({cfg.task.mode})")
    return train_ts, val_ts, stats


# ----------------------------------------------------------------------------- the recipe


def train(cfg: Config, run_dir: str | Path, resume: bool = False) -> dict:
    """Train ``cfg`` into ``run_dir``; ``resume`` continues from ``run_dir/checkpoints/last.pt``.

    Returns a summary dict: state (finished | stopped | early_stopped), best_f1, best_epoch, epochs.
    """
    run_dir = Path(run_dir)
    rank, local_rank, world = init_distributed()
    master = rank == 0
    device = pick_device(cfg.train.device, local_rank)
    precision = resolve_precision(cfg.train.precision, device)
    stale: list[Path] = []
    held = runs.lock_run(run_dir, resume) if master else None  # one trainer per run dir; dies with us
    if master:
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "config.yaml").write_text(yaml.safe_dump(config_to_dict(cfg), sort_keys=False))
        stale = ckpt.clean_partial(run_dir / "checkpoints")  # writes a kill interrupted; never read
    state = ckpt.load(run_dir / "checkpoints" / "last.pt") if resume else None
    log = RunLog(run_dir, cfg, master, resume_epoch=state[ckpt.EPOCH_KEY] if state else None)
    if stale:
        log.print(f"removed {len(stale)} partial checkpoint file(s) left by an interrupted write: "
                  + ", ".join(p.name for p in stale))
    started = _now()
    log.status(state="running", pid=os.getpid(), epoch=state[ckpt.EPOCH_KEY] if state else 0,
               epochs=cfg.train.epochs, device=str(device), started=started, message="preparing data")
    threads = torch.get_num_threads()  # train.num_threads changes it for the run only
    try:
        summary = _train(cfg, run_dir, state, log, rank, world, device, precision)
    except TrainingError as err:  # say what is left to resume from
        err = TrainingError(f"{err}; {last_checkpoint_note(run_dir)}")
        log.status(state="failed", message=f"TrainingError: {err}"[:500])
        raise err from None
    except BaseException as err:
        msg = f"{type(err).__name__}: {err}"
        log.status(state="failed", message=msg[:500])
        raise
    finally:
        log.close()
        if held is not None:
            held.release()
        torch.set_num_threads(threads)
        if world > 1 and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()
    return summary


def last_checkpoint_note(run_dir: Path) -> str:
    """Where a failed run can be resumed from: its last complete checkpoint, or that there is none."""
    last = run_dir / "checkpoints" / "last.pt"
    if not last.is_file():
        return f"no checkpoint was written yet ({last})"
    try:
        state = ckpt.load(last)
        where = f"epoch {int(state[ckpt.EPOCH_KEY])}" + (f", micro-batch {int(state[ckpt.BATCH_KEY])}"
                                                         if state.get(ckpt.BATCH_KEY) else "")
    except (MabeError, KeyError, TypeError, ValueError):
        return f"{last} is there but unreadable"
    return f"the last good checkpoint is intact: {last} ({where}); resume with: mabe train --resume {run_dir}"


def cpu_threads(requested: int) -> int:
    """``train.num_threads`` capped at the CPUs this process may run on, shared among the ranks of
    this machine (torchrun's LOCAL_WORLD_SIZE): more intra-op threads than cores only makes OpenMP
    threads wait for each other."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        cpus = os.cpu_count() or 1
    local = max(int(os.environ.get("LOCAL_WORLD_SIZE", 1)), 1)
    return max(min(requested, cpus // local), 1)


def _train(
    cfg: Config, run_dir: Path, state: dict | None, log: RunLog, rank: int, world: int,
    device: torch.device, precision: str,
) -> dict:
    master = rank == 0
    tc = cfg.train
    accel.setup_backends(device, deterministic=tc.deterministic)  # CUDA: TF32, cudnn.benchmark unless deterministic
    if tc.deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
    if tc.num_threads is not None:
        torch.set_num_threads(cpu_threads(tc.num_threads))  # train() puts the old value back
    seed_everything(tc.seed + rank)

    # ---- data
    if world > 1:  # rank 0 prepares a missing cache alone (shared filesystem); the others wait, then read it
        if master:
            ensure_cache(cfg, Path(cfg.data), ["train"])
        torch.distributed.barrier()
    saved_stats = {k: v.numpy() for k, v in state[ckpt.NORM_KEY].items()} if state else None
    train_ts, val_ts, stats = prepare_data(cfg, log, saved_stats)
    if state is not None and list(state[ckpt.OUTPUTS_KEY]) != train_ts.names:
        raise TrainingError(f"the checkpoint predicts {state[ckpt.OUTPUTS_KEY]}, the data gives {train_ts.names}")
    W = cfg.windows.sequence_length
    windows = window_index(train_ts.lengths, W, cfg.windows.frame_gap)
    weights = window_weights(train_ts, windows, W, cfg.windows.rare_oversample)
    B, accum = tc.batch_size, tc.grad_accum
    if tc.steps_per_epoch:
        n_draw = tc.steps_per_epoch * B * accum * world
    else:
        n_draw = min(len(windows), cfg.windows.max_windows_per_epoch or len(windows))
    path = tc.data_path
    if path == "auto" or path == "gpu":
        path = "resident"  # CUDA: whole TrackSet on the GPU; CPU: the same gather in-process
    batches = Batches(train_ts, windows, weights, cfg, device, path, n_draw, rank, world)
    if path == "resident":
        log.print(batches.store.message)
    val_arrays = val_ts.tensors(device)

    # ---- model, loss, optimizer, schedule
    torch.manual_seed(tc.seed)  # the same initial weights on every rank
    raw_model = models.create(cfg.model.name, train_ts.n_features, train_ts.n_outputs, cfg.model).to(device)
    if getattr(cfg.model, "norm", "batch") == "sync_batch" and world > 1:
        if device.type == "cuda":  # batch statistics over the global batch (same state_dict keys)
            raw_model = nn.SyncBatchNorm.convert_sync_batchnorm(raw_model)
        else:
            log.print("model.norm=sync_batch: SyncBatchNorm needs CUDA; BatchNorm statistics stay per process")
    lstm_precision = accel.resolve_lstm_precision(tc.lstm_precision, device)
    if not models.set_lstm_precision(raw_model, lstm_precision):
        log.print(f"train.lstm_precision={lstm_precision}: model {cfg.model.name} has no LSTM precision to set")
    n_params = sum(p.numel() for p in raw_model.parameters())
    model: nn.Module = raw_model
    if world > 1:
        model = nn.parallel.DistributedDataParallel(raw_model, device_ids=[device.index] if device.type == "cuda" else None)
    if tc.compile and accum > 1 and device.type == "cuda":
        accel.compile_parts(raw_model)  # grad_accum 1: accel.make_train_step compiles (CUDA only too)

    class_weight = pos_weight = None
    if cfg.task.mode == "scene" and cfg.task.class_weights is not None:
        class_weight = torch.tensor(cfg.task.class_weights, dtype=torch.float32, device=device)
    if cfg.task.mode == "pair" and cfg.task.pos_weight != "none":
        pw = auto_pos_weight(train_ts, cfg.task.pos_weight_max) if cfg.task.pos_weight == "auto" else \
            np.full(train_ts.n_outputs, float(cfg.task.pos_weight), np.float32)
        pos_weight = torch.from_numpy(pw).to(device)

    scale = _lr_factor(tc.lr_scaling, accum * world)  # global batch B * world * accum, relative to B
    # one CUDA graph per step: static shapes and one process; mixup's lambda is a Python float
    use_graphs = (tc.cuda_graphs and device.type == "cuda" and world == 1 and accum == 1
                  and cfg.augment.mixup_alpha == 0)
    optimizer = accel.make_optimizer(param_groups(raw_model, tc.weight_decay), tc.lr * scale, betas=tc.betas,
                                     fused=tc.fused_adamw, capturable=use_graphs)
    n_micro = batches.n_micro(0)
    steps_per_epoch = math.ceil(n_micro / accum)
    schedule = LRSchedule(optimizer, tc.lr * scale, round(tc.warmup_epochs * steps_per_epoch), tc)

    # ---- counters (fresh or from the checkpoint)
    start_epoch, step, start_micro = 0, 0, 0
    best_f1, best_epoch, since_best = -1.0, 0, 0
    partial: dict = {}
    if state is not None:
        raw_model.load_state_dict(state[ckpt.MODEL_KEY])
        load_optimizer_state(optimizer, state[ckpt.OPTIMIZER_KEY])
        schedule.load_state_dict(state[ckpt.SCHEDULER_KEY])
        start_epoch, step = int(state[ckpt.EPOCH_KEY]), int(state[ckpt.STEP_KEY])
        start_micro = int(state.get(ckpt.BATCH_KEY) or 0)
        partial = state.get(ckpt.EPOCH_STATE_KEY) or {}
        best_f1, best_epoch = float(state[ckpt.BEST_METRIC_KEY]), int(state[ckpt.BEST_EPOCH_KEY])
        since_best = int(state[ckpt.EARLY_STOP_KEY])
        if rank > 0:  # the saved window count is every rank's: rank 0 carries it on (loss sums are per step)
            partial = dict(partial, windows=0)
        rank_rngs = state.get(ckpt.RANK_RNG_KEY)
        if rank_rngs is not None and len(rank_rngs) == world:  # DDP with as many ranks: each its own RNGs
            ckpt.set_rng_state(rank_rngs[rank])
        else:
            ckpt.set_rng_state(state[ckpt.RNG_KEY])
            if rank > 0:  # more ranks than the checkpoint had: not rank 0's dropout draws
                seed_everything(tc.seed + rank + 7919 * (step + 1))
        step, start_micro = adapt_resume(state, cfg, world, schedule, step, start_micro, steps_per_epoch, log)
        log.print(f"resumed {run_dir} at epoch {start_epoch}" + (f", micro-batch {start_micro}" if start_micro else "")
                  + f", step {step}, best F1 {best_f1:.4f} (epoch {best_epoch})")
    log.print(f"model: {cfg.model.name}, {n_params:,} parameters | device {device}, {precision}, "
              f"data path {path} | batch {B} x accum {accum} x {world} process(es), lr {tc.lr:g} x {scale:g} "
              f"({tc.lr_scaling} scaling) | {len(windows):,} windows, "
              f"{n_micro} micro-batches ({steps_per_epoch} steps) per epoch, warmup {schedule.warmup_steps} steps")

    def checkpoint_state(epoch_done: int, micro: int = 0, epoch_state: dict | None = None, metrics: dict | None = None,
                         rank_rngs: list | None = None) -> dict:
        return {
            ckpt.MODEL_KEY: raw_model.state_dict(),
            ckpt.OPTIMIZER_KEY: optimizer.state_dict(),
            ckpt.SCHEDULER_KEY: schedule.state_dict(),
            ckpt.SCALER_KEY: None,  # bf16 autocast needs no loss scaling
            ckpt.RNG_KEY: ckpt.rng_state(),
            ckpt.EPOCH_KEY: epoch_done, ckpt.STEP_KEY: step, ckpt.BATCH_KEY: micro,
            ckpt.EPOCH_STATE_KEY: epoch_state or {},
            ckpt.BEST_METRIC_KEY: best_f1, ckpt.BEST_EPOCH_KEY: best_epoch, ckpt.EARLY_STOP_KEY: since_best,
            ckpt.CONFIG_KEY: config_to_dict(cfg),
            ckpt.NORM_KEY: {k: torch.from_numpy(np.asarray(v)) for k, v in stats.items()},
            ckpt.OUTPUTS_KEY: list(train_ts.names), ckpt.MODE_KEY: cfg.task.mode,
            ckpt.IN_FEATURES_KEY: train_ts.n_features, ckpt.N_OUTPUTS_KEY: train_ts.n_outputs,
            ckpt.VERSION_KEY: mabe.__version__, ckpt.KIND_KEY: "train", ckpt.METRICS_KEY: metrics or {},
            ckpt.WORLD_KEY: world, ckpt.RANK_RNG_KEY: rank_rngs,
        }

    def loss_of(logits: torch.Tensor, b: dict, mix: tuple | None) -> torch.Tensor:
        if cfg.task.mode == "scene":
            loss = scene_loss(logits, b["y"], class_weight, cfg.task.label_smoothing)
            if mix is not None:
                lam, perm = mix
                loss = lam * loss + (1 - lam) * scene_loss(logits, b["y"][perm], class_weight, cfg.task.label_smoothing)
            return loss
        y, mask = b["y"], b["mask"]
        if mix is not None:
            lam, perm = mix
            y, mask = lam * y.float() + (1 - lam) * y[perm].float(), mask & mask[perm]
        return pair_loss(logits, y, mask, pos_weight, cfg.task.label_smoothing)

    def validate() -> dict:
        probs = predict_tracks(raw_model, val_ts, batch=B, stride=cfg.windows.eval_stride, length=W,
                               device=device, precision=precision, arrays=val_arrays)
        m = trackset_metrics(val_ts, probs)
        cw = np.asarray(cfg.task.class_weights) if cfg.task.class_weights else None
        m["loss"] = prob_loss(val_ts, probs, cw, pos_weight.cpu().numpy() if pos_weight is not None else None)
        # every rank validates the same weights on the same videos; rank 0's numbers decide for all
        m["f1_macro"], m["accuracy"], m["loss"] = broadcast_floats([m["f1_macro"], m["accuracy"], m["loss"]],
                                                                   device, world)
        m["score"] = competition_score(val_ts, probs, cfg.data, cfg.postprocess) if master else None
        return m | {"probs": probs}

    # ---- the loop
    stop = StopRequest(log, world, device)
    gen = torch.Generator(device=device)
    params = [p for p in raw_model.parameters() if p.requires_grad]
    fused = all(bool(g.get("fused")) for g in optimizer.param_groups)
    check_every = tc.max_nonfinite_steps

    def step_loss(logits: torch.Tensor, b: dict) -> torch.Tensor:
        """``loss_of`` as accel's step calls it: a mixup draw travels in the batch (eager only)."""
        return loss_of(logits, b, (b["mix_lam"], b["mix_perm"]) if "mix_perm" in b else None)

    step_fn = None  # grad_accum 1: accel's step, built after the checkpoint was loaded
    if accum == 1:
        step_fn = accel.make_train_step(model, step_loss, optimizer, precision=precision, grad_clip=tc.grad_clip,
                                        cuda_graphs=use_graphs, compile=tc.compile)
        log.print(f"step: {step_fn.describe()}")
    else:
        log.print(f"step: eager, gradient accumulation over {accum} micro-batches, "
                  + ("fused AdamW (non-finite steps skipped on the device)" if fused else "AdamW"))
    # grad_accum > 1: BatchNorm running stats of a skipped step are put back (accel's step does the same)
    bufs = [buf for buf in raw_model.buffers() if buf.is_floating_point()] if step_fn is None else []
    saved_bufs = [torch.empty_like(buf) for buf in bufs]
    if tc.cuda_graphs and device.type == "cuda" and not use_graphs:
        log.print("train.cuda_graphs needs one process, grad_accum 1 and augment.mixup_alpha 0: running eagerly")
    outcome = "finished"
    epoch = start_epoch
    log.status(message="training")
    try:
        for epoch in range(start_epoch, tc.epochs):
            t0 = time.perf_counter()
            model.train()
            n_micro = batches.n_micro(epoch)
            first = start_micro if epoch == start_epoch else 0
            if step_fn is not None:  # the epoch's counters live in the step (device tensors, filled in place)
                step_fn.set_stats(loss_sum=float(partial.get("loss_sum", 0.0)), n_finite=int(partial.get("n_loss", 0)),
                                  steps=first, skipped=int(partial.get("skipped", 0)))
            else:
                loss_sum = torch.tensor(float(partial.get("loss_sum", 0.0)), device=device)
                n_loss = torch.tensor(float(partial.get("n_loss", 0.0)), device=device)
                skipped = torch.tensor(int(partial.get("skipped", 0)), device=device)
                streak = torch.zeros((), dtype=torch.int64, device=device)
                worst = torch.zeros((), dtype=torch.int64, device=device)
            n_windows = int(partial.get("windows", 0))
            t_train = float(partial.get("train_s", 0.0))
            phase = partial.get("phase") or ("warmup" if schedule.in_warmup(step) else "train")
            partial = {}
            bar = tqdm(total=n_micro, initial=first, desc=f"epoch {epoch + 1}/{tc.epochs}", leave=False,
                       disable=not master or not sys.stderr.isatty(), file=sys.stderr, dynamic_ncols=True)
            stopped_at = None
            for j, b in batches.epoch(epoch, first):
                rng = batch_rng(tc.seed, rank, epoch, j)
                gen.manual_seed(int(rng.integers(2**62)))
                b, mix = augment(b, cfg.augment, gen, rng)
                if step_fn is not None:  # one call: forward, backward, clip, AdamW, counters; no host sync
                    if mix is not None:
                        b["mix_lam"], b["mix_perm"] = mix
                    schedule.before_step(step)
                    step_fn(b)
                    n_windows += b["x"].shape[0]
                    bar.update(1)
                    step += 1
                    if step % check_every == 0 and int(step_fn.worst) >= tc.max_nonfinite_steps:
                        raise TrainingError(nonfinite_message(int(step_fn.worst), step))
                    if stop.check(step):  # DDP: every rank leaves after the same step
                        stopped_at = j + 1
                        break
                    continue
                # ---- grad_accum > 1: micro-batches accumulate, then one optimizer step
                group_start = j - j % accum
                group_size = min(accum, n_micro - group_start)
                last_micro = j == group_start + group_size - 1
                if j == group_start and bufs:
                    torch._foreach_copy_(saved_bufs, bufs)
                sync = model.no_sync() if world > 1 and not last_micro else contextlib.nullcontext()
                with sync:
                    with autocast_for(device, precision):
                        logits = model(b["x"])  # (B, W, C)
                    loss = loss_of(logits, b, mix)
                    (loss / group_size).backward()
                ok = torch.isfinite(loss)
                loss_sum += torch.where(ok, loss.detach(), 0.0)
                n_loss += ok.float()
                n_windows += b["x"].shape[0]
                bar.update(1)
                if not last_micro:
                    continue
                # ---- one optimizer step
                schedule.before_step(step)
                gnorm = nn.utils.clip_grad_norm_(params, tc.grad_clip if tc.grad_clip > 0 else float("inf"))
                finite = torch.isfinite(gnorm) & ok
                if fused:  # skipped on the device when found_inf is set: no host sync
                    optimizer.found_inf = (~finite).float()  # 0-d, like the fused kernel's step counters
                    try:
                        optimizer.step()
                    finally:
                        del optimizer.found_inf  # never leak the flag into a later step
                elif bool(finite):  # off the GPU the check is free
                    optimizer.step()
                optimizer.zero_grad(set_to_none=True)
                for buf, kept in zip(bufs, saved_bufs):
                    buf.copy_(torch.where(finite, buf, kept))
                bad = (~finite).long()
                skipped += bad
                streak = (streak + 1) * bad
                worst = torch.maximum(worst, streak)
                step += 1
                if step % check_every == 0 and int(worst) >= tc.max_nonfinite_steps:
                    raise TrainingError(nonfinite_message(int(worst), step))
                if stop.check(step):  # DDP: every rank leaves after the same step
                    stopped_at = j + 1
                    break
            bar.close()
            t_train += time.perf_counter() - t0
            if step_fn is not None:  # the epoch's one sync
                st = step_fn.stats(reset=True)
                ep_loss, ep_n, ep_skipped, ep_worst = st["loss_sum"], float(st["n_finite"]), st["skipped"], st["worst_streak"]
            else:
                ep_loss, ep_n, ep_skipped, ep_worst = float(loss_sum), float(n_loss), int(skipped), int(worst)
            if ep_worst >= tc.max_nonfinite_steps:
                raise TrainingError(nonfinite_message(ep_worst, step))

            if stopped_at is not None and stopped_at < n_micro:  # mid-epoch: save and leave
                # DDP: loss sums per step (the mean over ranks, as one process with the global batch would
                # count them) and the windows of every rank, so a resume with any number of processes adds up
                ep_loss, ep_n, n_windows = all_reduce_sum([ep_loss / world, ep_n / world, n_windows], device, world)
                epoch_state = {"loss_sum": ep_loss, "n_loss": ep_n, "skipped": ep_skipped,
                               "windows": int(n_windows), "train_s": t_train, "phase": phase}
                rank_rngs = gather_rng_states(world)
                if master:
                    save_checkpoint(run_dir / "checkpoints" / "last.pt",
                                    checkpoint_state(epoch, stopped_at, epoch_state, rank_rngs=rank_rngs))
                outcome = "stopped"
                break

            # ---- end of epoch: one sync, validation, schedule, checkpoints
            # DDP: the mean training loss over every rank's batches; the windows of every rank
            ep_loss, ep_n, n_windows = all_reduce_sum([ep_loss / world, ep_n / world, n_windows], device, world)
            train_loss = ep_loss / max(ep_n, 1.0)
            row: dict = {"epoch": epoch + 1, "phase": phase, "loss": train_loss, "skipped_steps": ep_skipped,
                         "windows_per_s": n_windows / max(t_train, 1e-9)}
            val = None
            if (epoch + 1) % tc.val_every == 0 or epoch + 1 == tc.epochs:
                val = validate()
                row.update(val_loss=val["loss"], val_f1=val["f1_macro"], val_acc=val["accuracy"],
                           val_score=val["score"])
                if val["f1_macro"] > best_f1:
                    best_f1, best_epoch, since_best = val["f1_macro"], epoch + 1, 0
                else:
                    since_best += 1
            schedule.after_epoch(val["f1_macro"] if val else None, step)
            row["lr"] = schedule.lr
            row["epoch_time_s"] = time.perf_counter() - t0
            log.epoch(row)
            log.print(epoch_line(row, tc.epochs))
            early = tc.early_stopping_patience > 0 and since_best >= tc.early_stopping_patience
            stopping = stop.agree()  # DDP: a collective, so every rank takes the same branch below
            done = epoch + 1 == tc.epochs or early or stopping
            rank_rngs = gather_rng_states(world)
            if master:
                metrics = {k: v for k, v in row.items()}
                if val is not None and best_epoch == epoch + 1:
                    save_checkpoint(run_dir / "checkpoints" / "best.pt",
                                    checkpoint_state(epoch + 1, metrics=metrics, rank_rngs=rank_rngs))
                if (epoch + 1) % tc.save_freq == 0 or done:
                    save_checkpoint(run_dir / "checkpoints" / "last.pt",
                                    checkpoint_state(epoch + 1, metrics=metrics, rank_rngs=rank_rngs))
            log.status(epoch=epoch + 1, best_f1=best_f1, best_epoch=best_epoch, message=f"epoch {epoch + 1} done")
            if stopping:
                outcome = "stopped"
                break
            if early:
                log.print(f"early stopping: no better validation F1 for {since_best} epochs "
                          f"(best {best_f1:.4f} at epoch {best_epoch})")
                outcome = "early_stopped"
                break
    finally:
        stop.restore()

    if outcome == "stopped":
        log.status(state="stopped", message="stopped by signal; checkpoints/last.pt written")
        log.print(f"stopped; resume with: mabe train --resume {run_dir}")
        if master:
            write_run_report(cfg, run_dir, log)
        return {"state": "stopped", "best_f1": best_f1, "best_epoch": best_epoch, "run_dir": str(run_dir)}

    # ---- final evaluation of the best model
    if master:
        finish_eval(cfg, run_dir, raw_model, val_ts, val_arrays, device, precision, log)
    log.status(state="finished", message=f"{outcome.replace('_', ' ')}: best F1 {best_f1:.4f} at epoch {best_epoch}")
    log.print(f"done: best validation F1 {best_f1:.4f} at epoch {best_epoch}; run directory {run_dir}")
    if master:
        write_run_report(cfg, run_dir, log)
    return {"state": outcome, "best_f1": best_f1, "best_epoch": best_epoch, "epochs": epoch + 1,
            "run_dir": str(run_dir)}


def write_run_report(cfg: Config, run_dir: Path, log: RunLog) -> None:
    """report.html at the end of a run; a figure that fails must not fail a finished run."""
    if not cfg.train.report:
        return
    from mabe import report

    try:
        log.print(f"report: {report.write_report(run_dir)}")
    except Exception as err:  # noqa: BLE001 - the checkpoints are written; the report is a view of them
        log.print(f"report: not written ({type(err).__name__}: {err}); retry with `mabe report {run_dir}`")


def nonfinite_message(worst: int, step: int) -> str:
    return (f"{worst} optimizer steps in a row had a non-finite loss or gradient (at step {step}); "
            "try a lower train.lr or longer train.warmup_epochs")


def finish_eval(
    cfg: Config, run_dir: Path, model: nn.Module, val_ts: TrackSet, val_arrays: dict, device: torch.device,
    precision: str, log: RunLog,
) -> None:
    """Best checkpoint -> eval/val_metrics.json and eval/val_predictions.npz (with labels)."""
    best = run_dir / "checkpoints" / "best.pt"
    if best.is_file():
        model.load_state_dict(ckpt.load(best, map_location=device)[ckpt.MODEL_KEY])
    probs = predict_tracks(model, val_ts, batch=cfg.train.batch_size, stride=cfg.windows.eval_stride,
                           length=cfg.windows.sequence_length, device=device, precision=precision, arrays=val_arrays)
    metrics = trackset_metrics(val_ts, probs)
    metrics["score"] = competition_score(val_ts, probs, cfg.data, cfg.postprocess)
    metrics["checkpoint"] = str(best)
    write_json(run_dir / "eval" / "val_metrics.json", metrics)
    save_predictions(run_dir / "eval" / "val_predictions.npz", val_ts, probs, with_labels=True, allow_scene=True)
    line = f"best model on validation: F1 {metrics['f1_macro']:.4f} acc {metrics['accuracy']:.4f}"
    if metrics["score"] is not None:
        line += f" score {metrics['score']:.4f}"
    log.print(line + f" -> {run_dir / 'eval'}")


def epoch_line(row: dict, epochs: int) -> str:
    """``Epoch 3/100 (warmup) lr=4.0e-04 loss=0.2512 val_loss=0.3011 F1=0.3912 acc=0.9809 score=0.4102 time=51s``."""
    parts = [f"Epoch {row['epoch']}/{epochs}" + (" (warmup)" if row["phase"] == "warmup" else ""),
             f"lr={row['lr']:.1e}", f"loss={row['loss']:.4f}"]
    if row.get("val_f1") is not None:
        parts += [f"val_loss={row['val_loss']:.4f}", f"F1={row['val_f1']:.4f}", f"acc={row['val_acc']:.4f}"]
    if row.get("val_score") is not None:
        parts.append(f"score={row['val_score']:.4f}")
    parts.append(f"time={row['epoch_time_s']:.0f}s")
    if row.get("skipped_steps"):
        parts.append(f"skipped={row['skipped_steps']}")
    return " ".join(parts)


# ----------------------------------------------------------------------------- command line


def _flatten(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict) and k not in ("classes",):
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def resume_config(run_dir: Path, overrides: list[str] | None, data: Path | None) -> Config:
    """The checkpoint's config plus the overrides a resume may change (e.g. train.epochs)."""
    state = ckpt.load(run_dir / "checkpoints" / "last.pt")
    raw = state[ckpt.CONFIG_KEY]
    extra = parse_overrides(overrides)
    if data is not None:
        extra["data"] = str(data)
    changed = _flatten(extra)
    base = _flatten(raw)
    fixed = [k for k in changed if k not in RESUMABLE_KEYS and base.get(k, object()) != changed[k]]
    if fixed:
        frozen = [k for k in fixed if k.split(".")[0] in ("model", "features", "task", "windows")]
        if frozen:
            raise ConfigError(f"--resume {run_dir}: cannot change {', '.join(frozen)} (fixed by the checkpoint)")
        warnings.warn(f"--resume {run_dir}: changing {', '.join(fixed)}; the run will not match an "
                      "uninterrupted one", stacklevel=2)
    from mabe.config import _merge

    return config_from_dict(_merge(raw, extra), where=f"{run_dir}/checkpoints/last.pt (with overrides)")


def _argv_from_args(args: Any) -> list[str]:
    argv = ["train"]
    if getattr(args, "config", None):
        argv += ["--config", str(args.config)]
    for o in getattr(args, "overrides", None) or []:
        argv += ["--set", o]
    if getattr(args, "data", None):
        argv += ["--data", str(args.data)]
    if getattr(args, "name", None):
        argv += ["--name", args.name]
    if getattr(args, "resume", None):
        argv += ["--resume", str(args.resume)]
    return argv


def _resolve_run(run: str, runs_root: str) -> Path:
    try:
        from mabe import runs

        return runs.resolve_run(run, runs_root)
    except ImportError:  # pragma: no cover
        p = Path(run)
        return p if p.is_dir() else Path(runs_root) / run


def _run_forwarding_signals(cmd: list[str]) -> int:
    """Run torchrun; pass a SIGTERM on to it (it forwards it to every rank, which stop gracefully), so
    ``kill`` on this wrapper leaves no orphaned training behind. A terminal's Ctrl-C already reaches
    torchrun (same process group): the wrapper only waits, since a second SIGINT would make torchrun
    abandon its graceful shutdown."""
    proc = subprocess.Popen(cmd)

    def forward(signum: int, frame: Any) -> None:
        if signum == signal.SIGTERM and proc.poll() is None:
            proc.send_signal(signum)

    old = {sig: signal.signal(sig, forward) for sig in (signal.SIGTERM, signal.SIGINT)} if threading_main() else {}
    try:
        return proc.wait()
    finally:
        for sig, handler in old.items():
            signal.signal(sig, handler)


def main_from_args(args: Any) -> int:
    """``mabe train``: resolve the config and run directory, then detach, relaunch or train here."""
    nproc = getattr(args, "nproc", None)
    if nproc and nproc > 1 and "WORLD_SIZE" not in os.environ:
        argv = _argv_from_args(args)
        if not getattr(args, "name", None) and not getattr(args, "resume", None):
            argv += ["--name", datetime.now().strftime("%Y%m%d-%H%M%S")]  # every rank must agree
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
               "-m", "mabe", *argv]
        print("launching:", " ".join(cmd))
        return _run_forwarding_signals(cmd)

    if getattr(args, "resume", None):
        base = load_config(args.config, None) if getattr(args, "config", None) else Config()
        run_dir = _resolve_run(str(args.resume), base.runs)
        if not (run_dir / "checkpoints" / "last.pt").is_file():
            raise MabeError(f"--resume {args.resume}: no checkpoints/last.pt in {run_dir}")
        cfg = resume_config(run_dir, args.overrides, args.data)
    else:
        cfg = load_config(args.config, args.overrides)
        if getattr(args, "data", None):
            cfg.data = str(args.data)
        if getattr(args, "name", None):
            cfg.name = args.name
        name = cfg.name or datetime.now().strftime("%Y%m%d-%H%M%S")
        run_dir = runs.run_dir_for(cfg.runs, name)  # a plain name, under cfg.runs
        if (run_dir / "checkpoints" / "last.pt").is_file():
            raise MabeError(f"run {run_dir} already exists; continue it with `mabe train --resume {run_dir}` "
                            "or pick another --name")

    if getattr(args, "detach", False):
        return runs.detach(_argv_from_args(args) + (["--name", run_dir.name] if not args.resume else []), run_dir)

    summary = train(cfg, run_dir, resume=bool(getattr(args, "resume", None)))
    return 0 if summary["state"] in ("finished", "early_stopped", "stopped") else 1
