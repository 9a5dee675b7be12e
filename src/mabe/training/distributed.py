"""torchrun's environment and the few collectives the recipe needs; each is the identity for one process."""

from __future__ import annotations

import os
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import torch
from torch import nn

from mabe import checkpoint as ckpt
from mabe.config import ModelConfig

__all__ = [
    "dist_info", "init_distributed", "wrap_model", "all_reduce_sum", "broadcast_floats", "gather_rng_states",
]


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


def wrap_model(model: nn.Module, cfg: ModelConfig, world: int, device: torch.device,
               say: Callable[[str], Any] = print) -> tuple[nn.Module, nn.Module]:
    """``(raw, trained)``: the model to save and evaluate, and the one the step runs (DDP-wrapped when
    ``world`` > 1; ``model.norm=sync_batch`` converts BatchNorm to SyncBatchNorm on CUDA, same keys)."""
    if getattr(cfg, "norm", "batch") == "sync_batch" and world > 1:
        if device.type == "cuda":  # batch statistics over the global batch (same state_dict keys)
            model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
        else:
            say("model.norm=sync_batch: SyncBatchNorm needs CUDA; BatchNorm statistics stay per process")
    if world == 1:
        return model, model
    return model, nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
