"""An exponential moving average of the model's weights (``train.ema_decay``; 0 = off).

After every optimizer step ``update`` moves each floating tensor of the state_dict (parameters and
BatchNorm running statistics) towards the model's: ``ema = d * ema + (1 - d) * w`` with
``d = min(decay, (1 + n) / (10 + n))`` at the n-th update (n from 0), so that the first steps, far from
the final weights, do not dominate a short CPU run (the TensorFlow ``num_updates`` rule). Integer
buffers (BatchNorm's step count) are copied. ``applied(model)`` swaps the averaged weights in for
validation and puts the trained ones back; ``state_dict`` / ``load_state_dict`` make a resumed run
continue the same average.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import nn

__all__ = ["EMA", "ema_decay_at"]


def ema_decay_at(decay: float, n: int) -> float:
    """The decay of the ``n``-th update (0-based): ``min(decay, (1 + n) / (10 + n))``."""
    return min(float(decay), (1.0 + n) / (10.0 + n))


class EMA:
    """The moving average of ``model``'s state_dict (a detached copy on the model's device)."""

    def __init__(self, model: nn.Module, decay: float):
        if not 0.0 < decay < 1.0:
            raise ValueError(f"train.ema_decay must be in (0, 1) (0 = off), got {decay}")
        self.decay = float(decay)
        self.updates = 0
        self.weights = {k: v.detach().clone() for k, v in model.state_dict().items()}

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        """One step of the average towards ``model``'s current weights."""
        d = ema_decay_at(self.decay, self.updates)
        for k, v in model.state_dict().items():
            e = self.weights[k]
            if e.dtype.is_floating_point:
                e.lerp_(v.detach().to(e.dtype), 1.0 - d)
            else:
                e.copy_(v)
        self.updates += 1

    @contextlib.contextmanager
    def applied(self, model: nn.Module) -> Iterator[nn.Module]:
        """``model`` with the averaged weights inside the block, its own weights back after it."""
        own = {k: v.detach().clone() for k, v in model.state_dict().items()}
        model.load_state_dict(self.weights)
        try:
            yield model
        finally:
            model.load_state_dict(own)

    def state_dict(self) -> dict:
        return {"decay": self.decay, "updates": self.updates, "weights": {k: v.clone() for k, v in self.weights.items()}}

    def load_state_dict(self, state: dict) -> None:
        if set(state["weights"]) != set(self.weights):
            raise ValueError("the saved EMA holds other tensors than this model's state_dict (another model?)")
        self.decay = float(state["decay"])
        self.updates = int(state["updates"])
        for k, v in state["weights"].items():
            self.weights[k].copy_(v)
