"""Where a run computes and how: the one resolver of device, precision, autocast and backend flags.

    pick_device("auto", local_rank)   cuda:<local_rank> when CUDA is there, else cpu
    resolve_precision("auto", device) bf16 on CUDA, fp32 elsewhere
    autocast_for(device, precision)   the bf16 autocast context (or a no-op)
    resolve_lstm_precision("auto", d) bf16 where cuDNN has bf16 RNN kernels, else fp32 (train.lstm_precision)
    setup_backends(device)            TF32 for fp32 matmul/conv/RNN, cudnn.benchmark (CUDA only)

Training, evaluation, prediction and ``mabe bench`` all resolve through these functions, so
"auto" means the same thing everywhere.
"""

from __future__ import annotations

import contextlib
import os
import random
from typing import Any

import numpy as np
import torch

from mabe.errors import TrainingError

__all__ = [
    "pick_device", "resolve_precision", "resolve_lstm_precision", "bf16_lstm_supported", "autocast_for",
    "setup_backends", "backend_flags", "restore_backends", "seed_everything", "cpu_threads",
]


def pick_device(name: str, local_rank: int = 0) -> torch.device:
    """``train.device`` -> a torch device: ``auto`` and ``cuda`` take this process's GPU (torchrun's
    LOCAL_RANK); asking for CUDA where there is none is a TrainingError."""
    if name == "auto":
        return torch.device(f"cuda:{local_rank}" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and torch.cuda.is_available():
        return torch.device(f"cuda:{local_rank}")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise TrainingError(f"train.device={name} but CUDA is not available on this machine")
    return torch.device(name)


def resolve_precision(precision: str, device: torch.device) -> str:
    """``auto`` -> bf16 on CUDA, fp32 elsewhere; explicit values pass through."""
    if precision == "auto":
        return "bf16" if torch.device(device).type == "cuda" else "fp32"
    return precision


def bf16_lstm_supported(device: torch.device | str) -> bool:
    """True where cuDNN has bf16 RNN kernels: CUDA sm80+, torch >= 2.10, cuDNN >= 9.13.

    Elsewhere a bf16 LSTM still runs, on a slow non-cuDNN path, so ``auto`` does not pick it there.
    """
    device = torch.device(device)
    if device.type != "cuda" or not torch.cuda.is_available():
        return False
    major, minor = (int(x) for x in torch.__version__.split("+")[0].split(".")[:2])
    cudnn = torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None
    return (major, minor) >= (2, 10) and (cudnn or 0) >= 91300 and torch.cuda.get_device_capability(device) >= (8, 0)


def resolve_lstm_precision(name: str, device: torch.device | str) -> str:
    """``train.lstm_precision``: ``auto`` -> bf16 where ``bf16_lstm_supported``, else fp32; explicit
    fp32 / bf16 / fp16 pass through (fp16 makes the step scale the loss by ``step.FP16_LOSS_SCALE``)."""
    if name not in ("auto", "fp32", "bf16", "fp16"):
        raise ValueError(f"train.lstm_precision must be auto, fp32, bf16 or fp16, got {name!r}")
    if name != "auto":
        return name
    return "bf16" if bf16_lstm_supported(device) else "fp32"


def autocast_for(device: torch.device, precision: str, *, cache_enabled: bool = True) -> contextlib.AbstractContextManager:
    """bf16 autocast where ``precision`` resolves to bf16 (convs and linears; see the model's LSTM note).

    ``cache_enabled=False`` under CUDA-graph capture (the weight-cast cache must be off there)."""
    device = torch.device(device)
    if resolve_precision(precision, device) == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16, cache_enabled=cache_enabled)
    return contextlib.nullcontext()


def _new_tf32_api() -> bool:
    """torch >= 2.9 has per-backend ``fp32_precision``; reading the legacy ``allow_tf32`` after setting
    the new one raises, so only one API is ever used."""
    return hasattr(torch.backends.cudnn, "rnn") and hasattr(torch.backends.cudnn.rnn, "fp32_precision")


def backend_flags() -> dict:
    """The current TF32 / cuDNN autotuning flags (to restore them later)."""
    flags: dict[str, Any] = {"benchmark": torch.backends.cudnn.benchmark}
    if _new_tf32_api():
        flags.update(api="new", matmul=torch.backends.cuda.matmul.fp32_precision,
                     conv=torch.backends.cudnn.conv.fp32_precision, rnn=torch.backends.cudnn.rnn.fp32_precision)
    else:  # pragma: no cover - torch < 2.9
        flags.update(api="legacy", matmul=torch.backends.cuda.matmul.allow_tf32,
                     cudnn=torch.backends.cudnn.allow_tf32)
    return flags


def restore_backends(flags: dict) -> None:
    """Put back what ``backend_flags()`` returned."""
    torch.backends.cudnn.benchmark = flags["benchmark"]
    if flags["api"] == "new":
        torch.backends.cuda.matmul.fp32_precision = flags["matmul"]
        torch.backends.cudnn.conv.fp32_precision = flags["conv"]
        torch.backends.cudnn.rnn.fp32_precision = flags["rnn"]
    else:  # pragma: no cover - torch < 2.9
        torch.backends.cuda.matmul.allow_tf32 = flags["matmul"]
        torch.backends.cudnn.allow_tf32 = flags["cudnn"]


def setup_backends(device: torch.device | str, *, deterministic: bool = False) -> dict:
    """CUDA: TF32 tensor cores for fp32 matmuls, convolutions and cuDNN RNNs (the LSTM runs in fp32,
    see models/conv1d_bilstm.py; TF32 keeps fp32 range and accumulation, rounds inputs to 10 mantissa
    bits), and ``cudnn.benchmark`` (autotuned kernels for our static shapes) unless ``deterministic``.
    CPU: nothing. Returns the previous flags for ``restore_backends``.

    Replaces ``torch.set_float32_matmul_precision("high")`` in the trainer (same effect for matmuls).
    """
    old = backend_flags()
    if torch.device(device).type != "cuda":
        return old
    if old["api"] == "new":
        torch.backends.cuda.matmul.fp32_precision = "tf32"
        torch.backends.cudnn.conv.fp32_precision = "tf32"
        torch.backends.cudnn.rnn.fp32_precision = "tf32"
    else:  # pragma: no cover - torch < 2.9
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    torch.backends.cudnn.benchmark = not deterministic
    return old


def seed_everything(seed: int) -> None:
    """Python, numpy and torch global generators from one seed (the trainer adds the rank)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def cpu_threads(requested: int) -> int:
    """``train.num_threads`` capped at the CPUs this process may run on, shared among the ranks of
    this machine (torchrun's LOCAL_WORLD_SIZE): more intra-op threads than cores only makes OpenMP
    threads wait for each other."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        cpus = os.cpu_count() or 1
    local = max(int(os.environ.get("LOCAL_WORLD_SIZE", 1)), 1)
    return max(min(requested, cpus // local), 1)
