"""The reference frame classifier: a Conv1d stem, a bidirectional LSTM, a per-frame linear head.

(B, W, F) -> 3 x [Conv1d(k=3) -> BatchNorm1d (model.norm) -> ReLU -> Dropout] (64, 128, 256 channels)
-> LSTM(256, hidden 256, 2 layers, bidirectional) -> Dropout -> Linear(512, C) -> (B, W, C) logits.
At the reference size (F=288, C=4) this is 2,811,204 parameters.

Mixed precision: under ``torch.autocast(dtype=torch.bfloat16)`` on CUDA the convolutions and the
head run in bf16, but autocast's op list casts ``lstm`` to *fp16* whatever dtype was asked for
(cuDNN's RNN kernels are listed as fp16 ops), so the LSTM would silently run in half precision with
its narrow exponent range. The LSTM therefore runs outside autocast, in fp32: its input is cast
back with ``.float()``. It is a small share of the FLOPs, and cuDNN fp32 RNNs use TF32 tensor cores.
"""

from __future__ import annotations

import torch
from torch import nn

from mabe.config import ModelConfig
from mabe.models.registry import register


def _norm(kind: str, channels: int) -> nn.Module:
    """The conv block's normalisation (``model.norm``); sync_batch is a BatchNorm1d that the trainer
    converts to SyncBatchNorm under DDP on CUDA, so every kind has the same state_dict keys as batch
    apart from group (weight, bias only) and none (nothing)."""
    if kind in ("batch", "sync_batch"):
        return nn.BatchNorm1d(channels)
    if kind == "group":
        return nn.GroupNorm(1, channels)
    if kind == "none":
        return nn.Identity()
    raise ValueError(f"model.norm must be batch, sync_batch, group or none, got {kind!r}")


class Conv1dBiLSTM(nn.Module):
    def __init__(self, in_features: int, n_outputs: int, cfg: ModelConfig):
        super().__init__()
        layers: list[nn.Module] = []
        c_in = in_features
        for c_out in cfg.conv_channels:
            layers += [
                nn.Conv1d(c_in, c_out, cfg.kernel_size, padding="same"),
                _norm(getattr(cfg, "norm", "batch"), c_out),
                nn.ReLU(inplace=True),
                nn.Dropout(cfg.dropout),
            ]
            c_in = c_out
        self.conv = nn.Sequential(*layers)
        self.lstm = nn.LSTM(
            c_in, cfg.lstm_hidden, cfg.lstm_layers, batch_first=True, bidirectional=cfg.bidirectional,
            dropout=cfg.dropout if cfg.lstm_layers > 1 else 0.0,
        )
        self.drop = nn.Dropout(cfg.dropout)
        self.head = nn.Linear(cfg.lstm_hidden * (2 if cfg.bidirectional else 1), n_outputs)
        # compiled callables (see compile_stem) live in a plain dict: not submodules, so the
        # state_dict keys never change and a checkpoint always holds the uncompiled weights
        self._compiled: dict[str, nn.Module] = {}

    def compile_stem(self, **kwargs) -> None:
        """torch.compile the conv stem and the head (not the LSTM); parameters and keys are unchanged."""
        self._compiled = {"conv": torch.compile(self.conv, **kwargs), "head": torch.compile(self.head, **kwargs)}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self._compiled.get("conv", self.conv)(x.transpose(1, 2))  # (B, F, W) -> (B, C_conv, W)
        h = h.transpose(1, 2)  # (B, W, C_conv)
        with torch.autocast(device_type=h.device.type, enabled=False):
            h, _ = self.lstm(h.float())  # (B, W, 2H) fp32, see the module docstring
        h = self.drop(h)
        return self._compiled.get("head", self.head)(h)  # (B, W, C)


@register("conv1d_bilstm")
def conv1d_bilstm(in_features: int, n_outputs: int, cfg: ModelConfig) -> nn.Module:
    return Conv1dBiLSTM(in_features, n_outputs, cfg)
