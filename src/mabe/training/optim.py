"""The optimizer: AdamW parameter groups, the fused/capturable AdamW, lr get/set, resume loading."""

from __future__ import annotations

import warnings
from collections.abc import Iterable
from typing import Any

import torch
from torch import nn

__all__ = ["param_groups", "make_optimizer", "set_lr", "get_lr", "load_optimizer_state"]


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


def make_optimizer(
    params: Iterable[Any], lr: float, *, betas: Iterable[float] = (0.9, 0.999), weight_decay: float = 0.0,
    eps: float = 1e-8, fused: bool = True, capturable: bool = False,
) -> torch.optim.AdamW:
    """AdamW over ``params`` (tensors or param-group dicts, e.g. ``param_groups(model, wd)``).

    ``fused``: one multi-tensor kernel per step (CUDA; CPU since torch 2.4) and the device-side
    ``found_inf`` skip ``TrainStep`` relies on; falls back to the default implementation with a
    warning where unsupported. ``capturable`` (CUDA only, for CUDA graphs): step counters stay on the
    device and each group's lr is its own 0-d device tensor (change it with ``set_lr``, in place;
    ReduceLROnPlateau already fills tensor lrs in place). Ignored off CUDA.
    """
    params = list(params)
    groups = [dict(g) for g in params] if params and isinstance(params[0], dict) else [{"params": params}]
    first = next((p for g in groups for p in g["params"]), None)
    device = first.device if first is not None else torch.device("cpu")
    capturable = capturable and device.type == "cuda"
    if capturable:  # one tensor per group: a shared one would be reduced once per group by a scheduler
        for g in groups:
            g["lr"] = torch.tensor(float(g.get("lr", lr)), dtype=torch.float32, device=device)
    kwargs = dict(lr=float(lr), betas=tuple(float(b) for b in betas), eps=eps, weight_decay=weight_decay)
    if fused:
        try:
            return torch.optim.AdamW(groups, fused=True, capturable=capturable, **kwargs)
        except (RuntimeError, ValueError) as err:
            warnings.warn(f"fused AdamW is not available here ({err}); using the default AdamW", stacklevel=2)
    return torch.optim.AdamW(groups, capturable=capturable, **kwargs)


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    """Set every group's learning rate; a tensor lr is filled in place (no sync, graph-safe)."""
    for g in optimizer.param_groups:
        if isinstance(g["lr"], torch.Tensor):
            g["lr"].fill_(float(lr))
        else:
            g["lr"] = float(lr)


def get_lr(optimizer: torch.optim.Optimizer) -> float:
    """The first group's learning rate as a float (a sync when it is a device tensor: once an epoch)."""
    return float(optimizer.param_groups[0]["lr"])
