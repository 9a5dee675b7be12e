"""The reference frame classifier: a Conv1d stem, a bidirectional LSTM, a per-frame linear head.

(B, W, F) -> 3 x [Conv1d(k=3) -> BatchNorm1d (model.norm) -> ReLU -> Dropout] (64, 128, 256 channels)
-> LSTM(256, hidden 256, 2 layers, bidirectional) -> Dropout -> Linear(512, C) -> (B, W, C) logits.
At the reference size (F=288, C=4) this is 2,811,204 parameters.

Where the work is: at the reference size the LSTM holds 2.63 M of the 2.81 M parameters (~94%),
and per frame ~2.62 M of the ~2.80 M multiply-adds (layer 1: 2 directions x 4 gates x (256 + 256)
x 256; layer 2 the same with a 512-wide input) against the stem's 3 x (288 x 64 + 64 x 128 +
128 x 256) = 0.18 M: ~94% of the FLOPs. The LSTM's precision is therefore the lever for speed;
autocast of the convolutions and the head alone touches ~6% of the step.

LSTM precision (``train.lstm_precision``, set with ``set_lstm_precision``): autocast's op list casts
cuDNN's ``lstm`` to *fp16* whatever dtype was asked for, so the LSTM always runs outside autocast,
in the dtype chosen here: ``fp32`` (TF32 tensor cores on CUDA; what a new model runs), ``bf16`` (cuDNN's bf16
RNN kernels, torch >= 2.10 with cuDNN >= 9.13 on sm80+; older cuDNN falls back to a slow non-cuDNN
path) or ``fp16`` (the trainer then scales the loss, see ``training.step.TrainStep``). In bf16/fp16 the
weights are cast per forward from the fp32 master copy (gradients flow back to it in fp32) and the
output is cast back to fp32 for the head.
"""

from __future__ import annotations

import torch
from torch import nn

from mabe.config import ModelConfig
from mabe.models.registry import norm_layer as _norm
from mabe.models.registry import register

_LSTM_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


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
        self.lstm_dtype = torch.float32

    def set_lstm_precision(self, precision: str) -> None:
        """Run the LSTM in ``fp32``, ``bf16`` or ``fp16`` (weights cast from the fp32 master copy)."""
        if precision not in _LSTM_DTYPES:
            raise ValueError(f"lstm precision must be one of {sorted(_LSTM_DTYPES)}, got {precision!r}")
        self.lstm_dtype = _LSTM_DTYPES[precision]

    def compile_stem(self, **kwargs) -> None:
        """torch.compile the conv stem and the head (not the LSTM); parameters and keys are unchanged."""
        self._compiled = {"conv": torch.compile(self.conv, **kwargs), "head": torch.compile(self.head, **kwargs)}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self._compiled.get("conv", self.conv)(x.transpose(1, 2))  # (B, F, W) -> (B, C_conv, W)
        h = h.transpose(1, 2)  # (B, W, C_conv)
        with torch.autocast(device_type=h.device.type, enabled=False):  # see the module docstring
            if self.lstm_dtype == torch.float32:
                h, _ = self.lstm(h.float())  # (B, W, 2H)
            else:
                dt = self.lstm_dtype
                weights = {n: p.to(dt) for n, p in self.lstm.named_parameters()}
                h, _ = torch.func.functional_call(self.lstm, weights, (h.to(dt),))
                h = h.float()
        h = self.drop(h)
        return self._compiled.get("head", self.head)(h)  # (B, W, C)


@register("conv1d_bilstm")
def conv1d_bilstm(in_features: int, n_outputs: int, cfg: ModelConfig) -> nn.Module:
    return Conv1dBiLSTM(in_features, n_outputs, cfg)
