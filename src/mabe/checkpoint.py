"""Checkpoints: named keys, atomic writes, resume state, inference loading and offline export.

A training checkpoint (``checkpoints/last.pt``, ``checkpoints/best.pt``) holds everything needed to
rebuild the model and continue the run exactly; an exported file (``mabe export``) holds only what
prediction needs: weights, config, output names and normalisation statistics. Every value is a
tensor or a plain Python container, so files load with ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import io
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

import mabe
from mabe import io as mio
from mabe import models
from mabe.config import Config, config_from_dict
from mabe.errors import MabeError

__all__ = [
    "MODEL_KEY", "OPTIMIZER_KEY", "SCHEDULER_KEY", "SCALER_KEY", "RNG_KEY", "EPOCH_KEY", "STEP_KEY",
    "BATCH_KEY", "EPOCH_STATE_KEY", "BEST_METRIC_KEY", "BEST_EPOCH_KEY", "EARLY_STOP_KEY",
    "CONFIG_KEY", "NORM_KEY", "OUTPUTS_KEY", "MODE_KEY", "IN_FEATURES_KEY", "N_OUTPUTS_KEY",
    "VERSION_KEY", "KIND_KEY", "METRICS_KEY",
    "WORLD_KEY", "RANK_RNG_KEY", "EMA_KEY", "LABS_KEY", "inference_weights",
    "save", "load", "clean_partial", "rng_state", "set_rng_state", "resolve", "load_for_inference", "export",
    "export_from_args",
]

# ----------------------------------------------------------------------------- keys

MODEL_KEY = "model"  # unwrapped, uncompiled state_dict
OPTIMIZER_KEY = "optimizer"
SCHEDULER_KEY = "scheduler"  # warmup + plateau state (train.LRSchedule.state_dict)
SCALER_KEY = "scaler"  # GradScaler state or None (bf16 needs none)
RNG_KEY = "rng"  # python, numpy, torch, cuda generator states
EPOCH_KEY = "epoch"  # completed epochs
STEP_KEY = "step"  # optimizer steps taken
BATCH_KEY = "batch_in_epoch"  # micro-batches done in the unfinished epoch (0 at an epoch boundary)
EPOCH_STATE_KEY = "epoch_state"  # partial sums of the unfinished epoch (a stop mid-epoch)
BEST_METRIC_KEY = "best_metric"  # best validation macro F1 so far
BEST_EPOCH_KEY = "best_epoch"
EARLY_STOP_KEY = "early_stop_count"  # epochs since the best
CONFIG_KEY = "config"  # the resolved Config as a plain dict
NORM_KEY = "norm"  # {"mean": (F,), "std": (F,)} float32 tensors
OUTPUTS_KEY = "outputs"  # output column names: ["none", *classes] (scene) or actions (pair)
MODE_KEY = "mode"  # "scene" | "pair"
IN_FEATURES_KEY = "in_features"
N_OUTPUTS_KEY = "n_outputs"
VERSION_KEY = "mabe_version"
KIND_KEY = "kind"  # "train" | "export"
METRICS_KEY = "metrics"  # validation metrics of the saved epoch
WORLD_KEY = "world_size"  # processes that wrote it (DDP); absent in older files = 1
RANK_RNG_KEY = "rng_ranks"  # DDP: every rank's RNG_KEY-style state, rank order (None for one process)
LABS_KEY = "labs"  # model.lab_conditioning: the training labs, one input column each; None or absent = off
EMA_KEY = "ema"  # train.ema_decay > 0: {"decay", "updates", "weights": state_dict}; None or absent = no EMA

_REQUIRED = (MODEL_KEY, CONFIG_KEY, OUTPUTS_KEY, MODE_KEY, IN_FEATURES_KEY, N_OUTPUTS_KEY, NORM_KEY)


# ----------------------------------------------------------------------------- RNG


def rng_state() -> dict:
    """Every generator a run draws from, as tensors and plain values."""
    np_state = np.random.get_state(legacy=False)
    state = {
        "python": random.getstate(),
        "numpy": {
            "key": torch.from_numpy(np_state["state"]["key"].astype(np.int64)),
            "pos": int(np_state["state"]["pos"]),
            "has_gauss": int(np_state["has_gauss"]),
            "gauss": float(np_state["gauss"]),
        },
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }
    return state


def set_rng_state(state: dict) -> None:
    """Restore what ``rng_state`` captured (CUDA states only where CUDA is available)."""
    random.setstate(_tuplify(state["python"]))
    n = state["numpy"]
    np.random.set_state({
        "bit_generator": "MT19937",
        "state": {"key": n["key"].numpy().astype(np.uint32), "pos": n["pos"]},
        "has_gauss": n["has_gauss"], "gauss": n["gauss"],
    })
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])


def _tuplify(x: Any) -> Any:
    return tuple(_tuplify(v) for v in x) if isinstance(x, (list, tuple)) else x


# ----------------------------------------------------------------------------- save / load


def save(path: str | Path, state: dict) -> Path:
    """Write ``state`` atomically and durably (``mabe.io.write_bytes``: temporary file, fsync, ``os.replace``).

    A kill mid-write leaves the previous file intact, never a truncated one; the orphaned temporary
    file (``.<name>.<pid>-<hex>.tmp``) is never read and ``clean_partial`` removes it later. The state
    is serialised in memory first, so a failing disk shows up as a plain ``OSError`` (ENOSPC, EROFS,
    EACCES...) from ``open`` / ``write`` / ``os.replace``, after which nothing of the new file remains.
    """
    buf = io.BytesIO()
    torch.save(state, buf)  # before touching the disk: a serialisation error leaves no file behind
    return mio.write_bytes(path, buf.getbuffer(), durable=True)


clean_partial = mio.clean_partial  # the temporaries of writes a kill interrupted
TMP_SUFFIX = mio.TMP_SUFFIX


def load(path: str | Path, map_location: str | torch.device = "cpu") -> dict:
    """Read a mabe checkpoint or exported file; clear errors for a missing or foreign file."""
    path = Path(path)
    if not path.is_file():
        raise MabeError(f"checkpoint {path} does not exist")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:  # noqa: BLE001 - any unpickling failure means "not ours"
        raise MabeError(f"{path}: not a readable mabe checkpoint ({type(err).__name__}: {err})") from None
    missing = [k for k in _REQUIRED if not isinstance(state, dict) or k not in state]
    if missing:
        raise MabeError(f"{path}: not a mabe checkpoint, missing key(s) {', '.join(missing)}")
    return state


def inference_weights(state: dict) -> dict:
    """The state_dict that prediction uses: the EMA of the weights where the run kept one, else ``MODEL_KEY``
    (which stays the trained weights, what a resume continues from)."""
    ema = state.get(EMA_KEY)
    return ema["weights"] if ema else state[MODEL_KEY]


def resolve(run_or_ckpt: str | Path, runs_root: str | Path = Config.runs) -> Path:
    """A checkpoint file, a run directory or a run name -> the checkpoint file (best, else last)."""
    p = Path(run_or_ckpt)
    if p.is_file():
        return p
    candidates = [p] if p.is_dir() else [Path(runs_root) / p, p]
    for d in candidates:
        for name in ("best.pt", "last.pt"):
            if (d / "checkpoints" / name).is_file():
                return d / "checkpoints" / name
    raise MabeError(
        f"no checkpoint at {run_or_ckpt}: expected a checkpoint file, a run directory with "
        f"checkpoints/best.pt or last.pt, or a run name under {runs_root}/"
    )


def load_for_inference(path: str | Path, device: str | torch.device = "cpu") -> tuple[nn.Module, dict]:
    """Checkpoint / exported file / run -> (model in eval mode on ``device``, meta).

    meta: ``config`` (Config), ``outputs``, ``mode``, ``norm`` (numpy mean/std), ``in_features``,
    ``n_outputs``, ``labs`` (model.lab_conditioning's training labs, else None), ``epoch``, ``best_metric``, ``path``.
    """
    path = resolve(path)
    state = load(path)
    cfg: Config = config_from_dict(state[CONFIG_KEY], where=f"{path} (config)")
    model = models.create(cfg.model.name, int(state[IN_FEATURES_KEY]), int(state[N_OUTPUTS_KEY]), cfg.model)
    model.load_state_dict(inference_weights(state))
    model.to(device).eval()
    meta = {
        "config": cfg,
        "outputs": list(state[OUTPUTS_KEY]),
        "mode": state[MODE_KEY],
        "norm": {k: v.numpy() for k, v in state[NORM_KEY].items()},
        "in_features": int(state[IN_FEATURES_KEY]),
        "n_outputs": int(state[N_OUTPUTS_KEY]),
        "labs": state.get(LABS_KEY),
        "epoch": state.get(EPOCH_KEY),
        "best_metric": state.get(BEST_METRIC_KEY),
        "metrics": state.get(METRICS_KEY),
        "version": state.get(VERSION_KEY),
        "path": str(path),
    }
    return model, meta


def export(run_or_ckpt: str | Path, out: str | Path) -> Path:
    """One offline file (weights, config, outputs, normalisation; no optimizer) for ``mabe predict``."""
    src = resolve(run_or_ckpt)
    state = load(src)
    keep = (MODEL_KEY, CONFIG_KEY, OUTPUTS_KEY, MODE_KEY, IN_FEATURES_KEY, N_OUTPUTS_KEY, NORM_KEY,
            EPOCH_KEY, BEST_METRIC_KEY, METRICS_KEY, LABS_KEY)
    slim = {k: state[k] for k in keep if k in state}
    slim[MODEL_KEY] = inference_weights(state)  # an exported file only predicts: the EMA where there is one
    slim[KIND_KEY] = "export"
    slim[VERSION_KEY] = mabe.__version__
    slim["source"] = str(src)
    return save(out, slim)


def export_from_args(args: Any) -> Path:
    """``mabe export RUN --out FILE``."""
    out = export(args.run, args.out)
    size = out.stat().st_size / 1e6
    print(f"exported {resolve(args.run)} -> {out} ({size:.1f} MB); predict with: "
          f"mabe predict {out} --data DATA --out predictions.npz")
    return out
