"""Augmentation on the batch's device, no host sync: Gaussian noise on valid frames and mixup (on the
features), and the geometric augmentation of the positions before the features are computed (rotation,
reflection with the left/right body parts swapped, time stretch, keypoint dropout).

The draws are pure functions of (seed, rank, epoch, micro-batch) through ``batch_rng`` (noise, mixup)
and ``position_augment`` (positions, a stream of its own, so turning it on leaves the noise and mixup
draws as they were), so a resumed run sees exactly the augmentation an uninterrupted one would.

Rotation and reflection act about the origin of the cache's positions, which is the arena centre
(``features.arena_centre``): an arena is symmetric about its centre, so a rotated or mirrored scene is
one the same arena could have shown, with the mice as far from its walls as before. About each window's
centroid instead, the scene features (absolute positions) would move mice across the walls. The
agent-centric pair features do not change under a rotation at all (they are measured in the agent's
frame); a reflection changes them (the target is on the other side, left parts become right parts).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from mabe.schema import MAX_MICE

__all__ = [
    "batch_rng",
    "augment",
    "positions_on",
    "mirror_slots",
    "rotate_positions",
    "reflect_positions",
    "drop_points",
    "PositionDraw",
    "PositionAugment",
    "position_augment",
]

_POSITION_STREAM = 1  # the 5th coordinate of the position draws' seed: a stream apart from batch_rng's


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


# ----------------------------------------------------------------------------- positions


def positions_on(aug: Any) -> bool:
    """Whether ``aug`` (AugmentConfig) changes positions, so the features must be computed per batch."""
    return any(getattr(aug, k) > 0 for k in ("rotate_degrees", "reflect", "time_stretch", "keypoint_dropout"))


def mirror_slots(slots: Sequence[str]) -> list[int]:
    """Slot names -> for each slot the index of its mirror image (``*_left`` <-> ``*_right``; itself when
    the mirror is not among ``slots`` or the part is on the midline)."""
    pos = {s: i for i, s in enumerate(slots)}

    def mirror(name: str) -> str:
        for a, b in (("_left", "_right"), ("_right", "_left")):
            if name.endswith(a):
                return name[: -len(a)] + b
        return name

    return [pos.get(mirror(s), i) for i, s in enumerate(slots)]


def _bcast(v: torch.Tensor, xy: torch.Tensor) -> torch.Tensor:
    """(B,) -> (B, 1, ..., 1) broadcastable against the (B, T, K, S) leading axes of ``xy``."""
    return v.reshape((-1,) + (1,) * (xy.ndim - 2))


def rotate_positions(xy: torch.Tensor, angle: torch.Tensor) -> torch.Tensor:
    """(B, T, K, S, 2) cm about the origin (the arena centre), (B,) radians counter-clockwise -> same; NaN stays NaN."""
    c, s = _bcast(torch.cos(angle), xy).to(xy.dtype), _bcast(torch.sin(angle), xy).to(xy.dtype)
    x, y = xy[..., 0], xy[..., 1]
    return torch.stack([c * x - s * y, s * x + c * y], dim=-1)


def reflect_positions(xy: torch.Tensor, flip: torch.Tensor, mirror: torch.Tensor) -> torch.Tensor:
    """(B, T, K, S, 2) cm, (B,) bool, (S,) ``mirror_slots`` -> where ``flip``: x -> -x (the mirror through the
    arena's vertical axis) and every part moved to its mirror slot, missing points (NaN) with it."""
    swapped = xy[..., mirror.to(xy.device), :]
    swapped = torch.stack([-swapped[..., 0], swapped[..., 1]], dim=-1)
    return torch.where(_bcast(flip, xy)[..., None], swapped, xy)


def drop_points(xy: torch.Tensor, drop: torch.Tensor) -> torch.Tensor:
    """(B, T, K, S, 2), (B, T, K, S) bool -> the dropped points missing (NaN, as the cache's missing code
    reads); every other point as it was."""
    return torch.where(drop[..., None], math.nan, xy)


@dataclass
class PositionDraw:
    """One micro-batch's geometric draws on the device where its features are computed."""

    angle: torch.Tensor | None  # (B,) radians; None: no rotation
    flip: torch.Tensor | None  # (B,) bool; None: no reflection
    speed: torch.Tensor | None  # (B,) float64 rows per step (time stretch); None: 1
    dropout: float  # probability that a point of a frame is set missing
    mirror: torch.Tensor  # (S,) int64 mirror slot of each slot
    gen: torch.Generator  # draws the dropout mask, whose shape is the gather's
    max_speed: float = 1.0  # the largest speed the config allows (fixes the gather's length)

    def positions(self, xy: torch.Tensor, mice: torch.Tensor | None) -> torch.Tensor:
        """(B, L, K, S, 2) gathered cm (``mice`` (B, K) their mouse slots, None: all) -> augmented:
        dropout, then reflection, then rotation (together every element of O(2))."""
        if self.dropout > 0:
            B, L, K, S = xy.shape[:4]
            # one draw per (window, frame, mouse slot, part), picked by mouse slot: the two copies of a
            # self pair's mouse lose the same points
            n = MAX_MICE if mice is not None else K
            u = torch.rand((B, L, n, S), generator=self.gen, device=xy.device)
            if mice is not None:
                u = u.gather(2, mice[:, None, :, None].expand(B, L, K, S))
            xy = drop_points(xy, u < self.dropout)
        if self.flip is not None:
            xy = reflect_positions(xy, self.flip, self.mirror)
        if self.angle is not None:
            xy = rotate_positions(xy, self.angle)
        return xy


@dataclass(frozen=True)
class PositionAugment:
    """The geometric augmentation of one micro-batch: the config's amounts and the batch's seed;
    ``draw`` makes the draws on a device (the same seed gives the same draws there)."""

    rotate_degrees: float
    reflect: float
    time_stretch: float
    keypoint_dropout: float
    mirror: tuple[int, ...]
    seed: int

    @property
    def max_speed(self) -> float:
        return 1.0 + self.time_stretch

    def draw(self, n: int, device: torch.device | str) -> PositionDraw:
        """Draws for ``n`` windows on ``device``: angle uniform in +-rotate_degrees, a mirror with
        probability ``reflect``, speed uniform in [1 - time_stretch, 1 + time_stretch]; no host sync."""
        gen = torch.Generator(device=device)
        gen.manual_seed(self.seed)
        u = torch.rand((3, n), generator=gen, device=device, dtype=torch.float64)
        angle = math.radians(self.rotate_degrees) * (2 * u[0] - 1) if self.rotate_degrees > 0 else None
        flip = u[1] < self.reflect if self.reflect > 0 else None
        speed = 1.0 + self.time_stretch * (2 * u[2] - 1) if self.time_stretch > 0 else None
        return PositionDraw(angle, flip, speed, self.keypoint_dropout,
                            _mirror_tensor(self.mirror, str(device)), gen, self.max_speed)


@functools.lru_cache(maxsize=16)
def _mirror_tensor(mirror: tuple[int, ...], device: str) -> torch.Tensor:
    """The mirror index on ``device``, made once: a copy from host memory per batch would wait for the device."""
    return torch.tensor(mirror, dtype=torch.long, device=device)


def position_augment(aug: Any, slots: Sequence[str], seed: int, rank: int, epoch: int, micro: int
                     ) -> PositionAugment | None:
    """The micro-batch's geometric augmentation (None when ``aug`` changes no positions): a pure function
    of (seed, rank, epoch, micro-batch) and the config."""
    if not positions_on(aug):
        return None
    s = int(np.random.default_rng([seed, rank, epoch, micro, _POSITION_STREAM]).integers(2**62))
    return PositionAugment(float(aug.rotate_degrees), float(aug.reflect), float(aug.time_stretch),
                           float(aug.keypoint_dropout), tuple(mirror_slots(slots)), s)
