"""The learning-rate schedule: linear warmup per optimizer step, then ReduceLROnPlateau per epoch.

``warmup_lr(step)`` is a pure function of the step (exact on resume); ``lr_factor`` scales
``train.lr`` for the global batch.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from mabe.training.optim import get_lr, set_lr

__all__ = ["warmup_lr", "LRSchedule", "lr_factor"]


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
        set_lr(self.optimizer, lr)  # in place when the lr is a (CUDA-graph captured) tensor

    @property
    def lr(self) -> float:
        return get_lr(self.optimizer)

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


def lr_factor(kind: str, processes_x_accum: int) -> float:
    """``train.lr_scaling``: the learning rate is ``train.lr`` times this, for a global batch of
    ``batch_size * world * grad_accum`` (relative to ``batch_size``, the batch ``train.lr`` was tuned for)."""
    return {"none": 1.0, "linear": float(processes_x_accum), "sqrt": math.sqrt(processes_x_accum)}[kind]
