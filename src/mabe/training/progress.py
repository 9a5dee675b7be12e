"""The run's counters with ``state_dict()``, resume conversion, and checkpoint writing.

``Progress`` is what a checkpoint needs to continue the counting exactly: epochs done, optimizer
steps, micro-batches done of a stopped epoch (and that epoch's partial sums), best validation F1 and
its epoch, epochs since the best. ``adapt_resume`` converts a position saved under another global batch.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

import mabe
from mabe import checkpoint as ckpt
from mabe.config import Config, config_to_dict
from mabe.errors import MabeError, TrainingError
from mabe.training.schedule import LRSchedule, lr_factor
from mabe.windows import TrackSet

__all__ = ["Progress", "checkpoint_state", "adapt_resume", "save_checkpoint", "last_checkpoint_note"]


@dataclass
class Progress:
    """Counters of a run; ``epoch`` epochs are done, plus ``micro`` micro-batches of the next one."""

    epoch: int = 0
    step: int = 0
    micro: int = 0
    epoch_state: dict = field(default_factory=dict)  # a stopped epoch's loss sums, windows, time, phase
    best_f1: float = -1.0
    best_epoch: int = 0
    since_best: int = 0

    def state_dict(self) -> dict:
        """The checkpoint entries of the counters (named keys of mabe.checkpoint)."""
        return {
            ckpt.EPOCH_KEY: self.epoch, ckpt.STEP_KEY: self.step, ckpt.BATCH_KEY: self.micro,
            ckpt.EPOCH_STATE_KEY: dict(self.epoch_state),
            ckpt.BEST_METRIC_KEY: self.best_f1, ckpt.BEST_EPOCH_KEY: self.best_epoch,
            ckpt.EARLY_STOP_KEY: self.since_best,
        }

    @classmethod
    def from_state_dict(cls, state: dict) -> Progress:
        """The counters of a checkpoint (``mabe.checkpoint.load``'s dict)."""
        return cls(epoch=int(state[ckpt.EPOCH_KEY]), step=int(state[ckpt.STEP_KEY]),
                   micro=int(state.get(ckpt.BATCH_KEY) or 0), epoch_state=dict(state.get(ckpt.EPOCH_STATE_KEY) or {}),
                   best_f1=float(state[ckpt.BEST_METRIC_KEY]), best_epoch=int(state[ckpt.BEST_EPOCH_KEY]),
                   since_best=int(state[ckpt.EARLY_STOP_KEY]))

    def record(self, f1: float, epoch_done: int) -> bool:
        """A validation F1 after ``epoch_done`` epochs; whether it is the new best."""
        if f1 > self.best_f1:
            self.best_f1, self.best_epoch, self.since_best = f1, epoch_done, 0
            return True
        self.since_best += 1
        return False


def checkpoint_state(
    model: nn.Module, optimizer: torch.optim.Optimizer, schedule: LRSchedule, progress: Progress, cfg: Config,
    stats: dict, ts: TrackSet, *, world: int = 1, rank_rngs: list | None = None, metrics: dict | None = None,
    ema: dict | None = None,
) -> dict:
    """Everything a checkpoint holds (``mabe.checkpoint``'s keys): the unwrapped ``model``, optimizer,
    schedule, counters, RNGs, config, normalisation ``stats`` and output names of the training ``ts``;
    ``ema``: the weight average's ``state_dict()`` (None without one)."""
    return {
        ckpt.MODEL_KEY: model.state_dict(), ckpt.OPTIMIZER_KEY: optimizer.state_dict(),
        ckpt.SCHEDULER_KEY: schedule.state_dict(),
        ckpt.SCALER_KEY: None,  # the fp16 LSTM's loss scale is static; bf16 needs none
        ckpt.RNG_KEY: ckpt.rng_state(), **progress.state_dict(), ckpt.CONFIG_KEY: config_to_dict(cfg),
        ckpt.NORM_KEY: {k: torch.from_numpy(np.asarray(v)) for k, v in stats.items()},
        ckpt.OUTPUTS_KEY: list(ts.names), ckpt.MODE_KEY: cfg.task.mode,
        ckpt.IN_FEATURES_KEY: ts.n_features, ckpt.N_OUTPUTS_KEY: ts.n_outputs,
        ckpt.VERSION_KEY: mabe.__version__, ckpt.KIND_KEY: "train", ckpt.METRICS_KEY: metrics or {},
        ckpt.WORLD_KEY: world, ckpt.RANK_RNG_KEY: rank_rngs, ckpt.EMA_KEY: ema,
        ckpt.LABS_KEY: getattr(ts, "labs", None),
    }


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


def adapt_resume(
    state: dict, cfg: Config, world: int, schedule: LRSchedule, step: int, start_micro: int, steps_per_epoch: int,
    log: Any,
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
    old_factor = lr_factor(old_tc.get("lr_scaling", tc.lr_scaling), old_accum * old_world)
    new_factor = lr_factor(tc.lr_scaling, accum * world)
    lr = schedule.lr * new_factor / old_factor
    schedule.base_lr = tc.lr * new_factor
    schedule.warmup_steps = round(tc.warmup_epochs * steps_per_epoch)
    schedule._set(lr)
    schedule.before_step(new_step)  # inside warmup: the warmup rate of the converted step
    log.print(f"resuming a checkpoint of {old_world} process(es) x batch {old_b} x accum {old_accum} with {world} x "
              f"{b} x {accum}: step {step} -> {new_step}, micro-batch {start_micro} -> {micro}, lr x "
              f"{new_factor / old_factor:g} ({tc.lr_scaling} scaling); not bit-identical to an uninterrupted run")
    return new_step, micro


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
