"""Augmentation on the batch's device: Gaussian noise on valid frames and mixup; no host sync.

The draws are pure functions of (seed, rank, epoch, micro-batch) through ``batch_rng``, so a
resumed run sees exactly the noise an uninterrupted one would.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

__all__ = ["batch_rng", "augment"]


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
