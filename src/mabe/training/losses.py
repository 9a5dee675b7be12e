"""Training losses, pure functions of logits and targets; DDP-exact means (one scalar all-reduce).

    scene_loss(logits, y, weight)          (B, W, C), (B, W) -> weighted cross-entropy
    pair_loss(logits, y, mask, pos_weight) (B, W, A) -> BCE over the labelled cells only
    auto_pos_weight(ts, cap)               per-action pos_weight from the training frames
    prob_loss(ts, probs, ...)              the same loss on averaged probabilities (validation)
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from mabe.config import TaskConfig
from mabe.windows import IGNORE_INDEX, TrackSet

__all__ = [
    "scene_loss", "pair_loss", "global_mean", "auto_pos_weight", "loss_weights", "prob_loss", "mixed_loss",
]


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
    # (n_tracks, A) positives, a track at a time: reduceat with dtype=int64 casts the whole of Y first
    # (8 B a cell: GBs on the real set), a reduction with a dtype casts in small buffers
    per_track = np.stack([ts.Y[a:b].sum(axis=0, dtype=np.int64) for a, b in zip(ts.offsets[:-1], ts.offsets[1:])]
                         ).reshape(ts.n_tracks, ts.Y.shape[1])
    pos = (per_track * ts.label_mask).sum(axis=0).astype(np.float64)
    cells = (ts.lengths[:, None] * ts.label_mask).sum(axis=0).astype(np.float64)
    ratio = np.divide(cells - pos, pos, out=np.full(pos.shape, cap**2), where=pos > 0)
    return np.minimum(np.sqrt(ratio), cap).astype(np.float32)


def loss_weights(task: TaskConfig, ts: TrackSet, device: torch.device
                 ) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """``(class_weight, pos_weight)`` on the device from ``task`` (scene class weights; pair pos_weight
    ``auto`` from ``ts``'s training frames, a number, or none); None where the mode has none."""
    class_weight = pos_weight = None
    if task.mode == "scene" and task.class_weights is not None:
        class_weight = torch.tensor(task.class_weights, dtype=torch.float32, device=device)
    if task.mode == "pair" and task.pos_weight != "none":
        pw = (auto_pos_weight(ts, task.pos_weight_max) if task.pos_weight == "auto"
              else np.full(ts.n_outputs, float(task.pos_weight), np.float32))
        pos_weight = torch.from_numpy(pw).to(device)
    return class_weight, pos_weight


def prob_loss(ts: TrackSet, probs: np.ndarray, weight: np.ndarray | None, pos_weight: np.ndarray | None,
              chunk_rows: int = 1 << 16) -> float:
    """The training loss evaluated on averaged per-frame probabilities (the validation loss)."""
    eps = 1e-7
    if ts.mode == "scene":
        p = probs[np.arange(len(ts.Y)), ts.Y].clip(eps, 1.0)
        w = weight[ts.Y] if weight is not None else np.ones(len(p))
        return float(-(w * np.log(p)).sum() / w.sum())
    pw = pos_weight if pos_weight is not None else 1.0
    total, cells = 0.0, 0
    # one track at a time, in row chunks: a few float32 copies of (rows, C) for the whole validation set
    # would be ~1 KB a row (GBs on the real set)
    for t, (lo, hi) in enumerate(zip(ts.offsets[:-1], ts.offsets[1:])):
        m = ts.label_mask[t]
        if not m.any():
            continue
        for a in range(int(lo), int(hi), chunk_rows):
            b = min(a + chunk_rows, int(hi))
            p = probs[a:b].clip(eps, 1 - eps)
            y = ts.Y[a:b].astype(np.float32)
            per = -(pw * y * np.log(p) + (1 - y) * np.log(1 - p))
            total += float(per[:, m].sum(dtype=np.float64))
        cells += int(hi - lo) * int(m.sum())
    return total / max(cells, 1)


def mixed_loss(
    mode: str, logits: torch.Tensor, b: dict, mix: tuple | None, *, class_weight: torch.Tensor | None = None,
    pos_weight: torch.Tensor | None = None, label_smoothing: float = 0.0,
) -> torch.Tensor:
    """The training loss of one batch in ``mode`` (scene | pair), with mixup ``(lam, perm)`` when given:
    scene mixes the two losses, pair mixes the targets and keeps the cells labelled in both."""
    if mode == "scene":
        loss = scene_loss(logits, b["y"], class_weight, label_smoothing)
        if mix is not None:
            lam, perm = mix
            loss = lam * loss + (1 - lam) * scene_loss(logits, b["y"][perm], class_weight, label_smoothing)
        return loss
    y, mask = b["y"], b["mask"]
    if mix is not None:
        lam, perm = mix
        y, mask = lam * y.float() + (1 - lam) * y[perm].float(), mask & mask[perm]
    return pair_loss(logits, y, mask, pos_weight, label_smoothing)
