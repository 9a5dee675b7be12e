"""A multi-scale temporal model: a residual stack of dual-dilated 1-D convolutions (MS-TCN++ style).

(B, W, F) -> Conv1d(F, C, 1) -> L x residual block -> norm -> GELU -> Conv1d(C, n_outputs, 1) -> (B, W, C).
Block l (dilation d_l from ``model.tcn_dilations``, e.g. 1, 2, 4, ..., 32) sees two time scales at
once: the sum of a kernel-``k`` convolution dilated by d_l and one dilated by d_(L-1-l) (the list read
backwards), so short and long context mix in every layer, not only at the top; then norm -> GELU ->
Dropout -> Conv1d(C, C, 1), added to the block's input. The receptive field is
1 + 2 (k - 1) / 2 * sum(max(d_l, d_(L-1-l))) frames: 127 frames each side for k = 3 and dilations up to
32, ~4 s at 30 fps (``features.target_fps``). No recurrence, so it is fast on a CPU and has no LSTM
precision to set. Non-causal (``padding="same"``): a frame's label may depend on what follows it.

Lab / fps conditioning: not here yet; the batch holds only the features (``windows.gather``), and
the model API is (B, W, F) -> (B, W, C).
"""

from __future__ import annotations

import torch
from torch import nn

from mabe.config import ModelConfig
from mabe.models.registry import norm_layer as _norm
from mabe.models.registry import register


class DualDilatedBlock(nn.Module):
    def __init__(self, channels: int, kernel: int, d_short: int, d_long: int, norm: str, dropout: float):
        super().__init__()
        self.short = nn.Conv1d(channels, channels, kernel, padding="same", dilation=d_short)
        self.long = nn.Conv1d(channels, channels, kernel, padding="same", dilation=d_long)
        self.norm = _norm(norm, channels)
        self.act = nn.GELU()
        self.drop = nn.Dropout(dropout)
        self.mix = nn.Conv1d(channels, channels, 1)

    def forward(self, h: torch.Tensor) -> torch.Tensor:  # (B, C, W) -> (B, C, W)
        return h + self.mix(self.drop(self.act(self.norm(self.short(h) + self.long(h)))))


class DilatedTCN(nn.Module):
    def __init__(self, in_features: int, n_outputs: int, cfg: ModelConfig):
        super().__init__()
        c, dil = int(cfg.tcn_channels), [int(d) for d in cfg.tcn_dilations]
        if c < 1 or not dil or min(dil) < 1:
            raise ValueError(f"model.tcn_channels must be >= 1 and tcn_dilations positive, got {c}, {dil}")
        self.inp = nn.Conv1d(in_features, c, 1)
        self.blocks = nn.Sequential(*[
            DualDilatedBlock(c, cfg.kernel_size, d, d_rev, getattr(cfg, "norm", "batch"), cfg.dropout)
            for d, d_rev in zip(dil, reversed(dil))
        ])
        self.out_norm = _norm(getattr(cfg, "norm", "batch"), c)
        self.head = nn.Conv1d(c, n_outputs, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.blocks(self.inp(x.transpose(1, 2)))  # (B, C, W)
        return self.head(torch.nn.functional.gelu(self.out_norm(h))).transpose(1, 2)  # (B, W, n_outputs)


@register("dilated_tcn")
def dilated_tcn(in_features: int, n_outputs: int, cfg: ModelConfig) -> nn.Module:
    return DilatedTCN(in_features, n_outputs, cfg)
