"""``mabe bench``: the reference training step against the fast path, in one run, on one device.

    mabe bench                                     # CUDA if present: reference model, batch 384
    mabe bench --batch-sizes 384,1024,4096         # + the fast path at each size, largest that fits
    mabe bench --device cpu --small --features     # quick CPU run (< 1 min) + reading/features
    mabe bench --scale --before 333d279^           # issue 13: position cache vs the float32 feature cache

(a) reference: what the V6 pipeline did - fp32 eager, windows cut on the CPU by a 2-worker
    ``DataLoader`` (one numpy gather per window, jitter and noise in the workers), ``.item()`` every
    step, default (non-fused) AdamW, grad-norm clipping.
(b) fast: the trainer's own components (``mabe train`` with grad_accum 1 runs this code) -
    ``training.batches.DeviceStore`` (training features resident on the device), windows gathered by
    index and augmented on the device by ``training.augment``, ``training.losses.scene_loss``,
    ``training.optim.make_optimizer`` and ``training.step.make_train_step``: bf16 autocast (LSTM fp32/TF32) on CUDA, fused AdamW with the non-finite
    skip on the device, TF32 + cudnn.benchmark, the whole step in one CUDA graph, no sync.

Both train the same model on the same synthetic data of the reference shape (random features 288
wide, windows of 100 frames, 4 scene classes weighted [1, 5, 8, 8]). Every timestamp is taken after
``torch.cuda.synchronize()``; ms/step is the median over the timed steps. The fast path is also
timed "pipelined" (one sync for all steps, as the trainer runs). ``check_same`` trains both paths K
steps from the same initial weights on the same windows (dropout and augmentation off) and compares
the losses within a stated tolerance of the fp32 reference.

The pure functions (``bench_reference``, ``bench_fast``, ``check_same``, ``sweep``, ``run``) return
dicts; ``main_from_args`` prints the tables and writes ``--json``.
"""

from __future__ import annotations

import dataclasses
import gc
import math
import os
import platform
import re
import shlex
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn

from mabe import data, models, poscache, prepare, synth
from mabe import features as F
from mabe import features_torch as FT
from mabe.config import AugmentConfig, ConfigError, FeatureConfig, ModelConfig, TrainConfig
from mabe.training.augment import augment as augment_batch
from mabe.training.batches import DeviceStore, format_bytes
from mabe.training.device import (
    backend_flags,
    pick_device,
    resolve_lstm_precision,
    resolve_precision,
    restore_backends,
    setup_backends,
)
from mabe.training.losses import scene_loss
from mabe.training.optim import make_optimizer, param_groups
from mabe.training.step import make_train_step
from mabe.windows import TrackSet, WindowDataset, gather, window_index

__all__ = [
    "REFERENCE_EPOCH_WINDOWS",
    "BenchSetup",
    "synthetic_trackset",
    "reference_step",
    "bench_reference",
    "bench_fast",
    "check_same",
    "sweep",
    "run",
    "main_from_args",
    "scale",
    "print_scale",
]

REFERENCE_EPOCH_WINDOWS = 384_000  # the reference: ~1,000 steps of 384 windows an epoch
REFERENCE_EPOCHS = 100
TARGET_RATIO = 15.0  # issue 11: fast path >= 15x the reference way ...
TARGET_MS = 3.3  # ... and <= 3.3 ms a step at batch 384, on one H100/H200
TARGET_100_EPOCHS_S = 360.0  # 100 reference-size epochs in <= 6 minutes
LSTM_PRECISIONS = ("fp32", "bf16", "fp16")


@dataclass
class BenchSetup:
    """What both paths share: the reference recipe (configs/config_h100.yaml of the source)."""

    device: str = "cpu"
    model: ModelConfig = field(default_factory=ModelConfig)
    n_features: int = 288
    n_classes: int = 4
    length: int = 100
    class_weights: list[float] = field(default_factory=lambda: [1.0, 5.0, 8.0, 8.0])
    lr: float = 4e-4
    weight_decay: float = 1e-4
    betas: tuple[float, float] = (0.9, 0.999)
    grad_clip: float = 1.0
    noise_std: float = 0.01
    jitter: int = 2
    num_workers: int = 2
    seed: int = 42

    @property
    def torch_device(self) -> torch.device:
        return torch.device(self.device)


def small_model() -> ModelConfig:
    """The reference architecture, narrower: for a quick CPU run."""
    return ModelConfig(conv_channels=[32, 64, 64], lstm_hidden=64, lstm_layers=2)


# ----------------------------------------------------------------------------- data


def synthetic_trackset(
    n_frames: int, n_features: int = 288, n_classes: int = 4, track_len: int = 10_000, seed: int = 0
) -> TrackSet:
    """Scene-mode TrackSet of the reference shape: N(0, 1) features (as after normalisation) and
    per-frame classes in runs (mostly ``none``, like the real data)."""
    rng = np.random.default_rng(seed)
    lengths = [track_len] * (n_frames // track_len) + ([n_frames % track_len] if n_frames % track_len else [])
    xs, ys = [], []
    probs = np.array([0.85] + [0.15 / (n_classes - 1)] * (n_classes - 1))
    for n in lengths:
        xs.append(rng.standard_normal((n, n_features), dtype=np.float32))
        runs = rng.choice(n_classes, size=n // 20 + 1, p=probs)  # 20-frame runs
        ys.append(np.repeat(runs, 20)[:n].astype(np.int64))
    names = ["none"] + [f"class{i}" for i in range(1, n_classes)]
    return TrackSet.from_tracks("scene", names, xs, ys)


class _ReferenceWindows(WindowDataset):
    """The reference dataset: one window per item, numpy gather, Gaussian noise added in the worker."""

    def __init__(self, ts: TrackSet, length: int, noise_std: float):
        super().__init__(ts, length)
        self.noise_std = noise_std

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        item = super().__getitem__(i)
        if self.noise_std > 0:
            x = item["x"]
            item["x"] = x + self.noise_std * torch.randn(x.shape) * item["valid"][:, None]
        return item


# ----------------------------------------------------------------------------- helpers


def _loss_fn(setup: BenchSetup, device: torch.device):
    weight = torch.tensor(setup.class_weights, dtype=torch.float32, device=device)
    return lambda logits, b: scene_loss(logits, b["y"], weight)


def _model(setup: BenchSetup, cfg: ModelConfig | None = None) -> nn.Module:
    torch.manual_seed(setup.seed)  # the same initial weights for every path
    return models.create(cfg.name if cfg else setup.model.name, setup.n_features, setup.n_classes, cfg or setup.model)


def _stamp(device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter()


def _reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def _peak(device: torch.device) -> int | None:
    return int(torch.cuda.max_memory_allocated(device)) if device.type == "cuda" else None


def _free(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.empty_cache()


def _plan(n_windows: int, n_steps: int, batch: int, jitter: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(n_steps, batch) window ids drawn with replacement and their start shifts."""
    rng = np.random.default_rng(seed)
    order = rng.integers(0, n_windows, size=(n_steps, batch))
    shift = rng.integers(-jitter, jitter + 1, size=(n_steps, batch)) if jitter > 0 else np.zeros((n_steps, batch), np.int64)
    return order.astype(np.int64), shift.astype(np.int64)


def _summary(path: str, batch: int, times: list[float], device: torch.device, peak: int | None,
             pipelined_ms: float | None = None, **extra: Any) -> dict:
    ms = statistics.median(times) * 1000.0
    res = {
        "path": path, "batch": batch, "steps": len(times), "ms_per_step": ms,
        "ms_per_step_mean": statistics.fmean(times) * 1000.0,
        "ms_per_step_pipelined": pipelined_ms if pipelined_ms is not None else statistics.fmean(times) * 1000.0,
        "windows_per_s": batch / (ms / 1000.0), "peak_mem_bytes": peak,
        "epoch_s": projected_seconds(ms, batch, REFERENCE_EPOCH_WINDOWS),
    }
    res["epochs100_s"] = res["epoch_s"] * REFERENCE_EPOCHS
    res.update(extra)
    return res


def projected_seconds(ms_per_step: float, batch: int, windows: int) -> float:
    """Seconds for ``windows`` windows at ``ms_per_step`` per batch of ``batch``."""
    return math.ceil(windows / batch) * ms_per_step / 1000.0


def reference_step(model: nn.Module, loss_fn: Any, optimizer: torch.optim.Optimizer, batch: dict,
                   grad_clip: float) -> float:
    """One step the reference way: fp32 eager, clip, step, ``loss.item()`` (a host sync)."""
    return _reference_step_norm(model, loss_fn, optimizer, batch, grad_clip)[0]


def _reference_step_norm(model: nn.Module, loss_fn: Any, optimizer: torch.optim.Optimizer, batch: dict,
                         grad_clip: float) -> tuple[float, float]:
    """``reference_step``, also returning the gradient norm before clipping (nan without a clip)."""
    optimizer.zero_grad(set_to_none=True)
    logits = model(batch["x"])
    loss = loss_fn(logits, batch)
    loss.backward()
    norm = float("nan")
    if grad_clip > 0:
        norm = float(nn.utils.clip_grad_norm_(model.parameters(), grad_clip))
    optimizer.step()
    return loss.item(), norm


def _probe_norm(setup: BenchSetup, cfg: ModelConfig, batch: dict, loss_fn: Any) -> float:
    """The gradient norm of the initial weights on one batch (to pick a clip that engages)."""
    model = _model(setup, cfg).to(setup.torch_device).train()
    loss_fn(model(batch["x"]), batch).backward()
    norm = float(nn.utils.get_total_norm([p.grad for p in model.parameters() if p.grad is not None]))
    del model
    return norm


# ----------------------------------------------------------------------------- (a) reference


def bench_reference(ts: TrackSet, setup: BenchSetup, batch: int, steps: int, warmup: int) -> dict:
    """(a): fp32 eager, ``DataLoader(num_workers=2)`` windows, ``.item()`` per step, default AdamW.

    Runs with the backend flags PyTorch starts with (no cudnn.benchmark), as the reference did.
    """
    device = setup.torch_device
    flags = backend_flags()
    torch.backends.cudnn.benchmark = False
    model = _model(setup).to(device).train()
    optimizer = torch.optim.AdamW(param_groups(model, setup.weight_decay), lr=setup.lr, betas=setup.betas)
    loss_fn = _loss_fn(setup, device)
    windows = window_index(ts.lengths, setup.length, 1)
    n = warmup + steps
    order, shift = _plan(len(windows), n, batch, setup.jitter, setup.seed)
    dataset = _ReferenceWindows(ts, setup.length, setup.noise_std)
    dataset.set_plan(windows[order.reshape(-1)], shift.reshape(-1))
    loader = torch.utils.data.DataLoader(
        dataset, batch_size=batch, shuffle=False, num_workers=setup.num_workers,
        pin_memory=device.type == "cuda", drop_last=True,
    )
    _reset_peak(device)
    times, loss = [], float("nan")
    it = iter(loader)
    try:
        for i in range(n):
            t0 = _stamp(device)
            b = next(it)
            b = {k: v.to(device, non_blocking=True) for k, v in b.items()}
            loss = reference_step(model, loss_fn, optimizer, b, setup.grad_clip)
            t1 = _stamp(device)
            if i >= warmup:
                times.append(t1 - t0)
    finally:
        del it
        restore_backends(flags)
    res = _summary("reference", batch, times, device, _peak(device), final_loss=loss,
                   details=f"fp32 eager, DataLoader({setup.num_workers} workers), .item() per step, AdamW (default)")
    del model, optimizer, loader, dataset
    _free(device)
    return res


# ----------------------------------------------------------------------------- (b) fast


def bench_fast(
    ts: TrackSet, setup: BenchSetup, batch: int, steps: int, warmup: int, *, storage: str = "auto",
    precision: str = "auto", cuda_graphs: bool | None = None, compile: bool = False, augment: bool = True,
    lstm_precision: str = "fp32",
) -> dict:
    """(b): the trainer's components end to end - resident data, device gather + augmentation, the fused/captured step.

    ``cuda_graphs`` None = on for CUDA; ``lstm_precision`` fp32 | bf16 | fp16 (``train.lstm_precision``).
    Timed twice: a sync per step (median, like (a)) and pipelined.
    """
    device = setup.torch_device
    flags = setup_backends(device)
    try:
        res = _fast(ts, setup, batch, steps, warmup, storage=storage, precision=precision, cuda_graphs=cuda_graphs,
                    compile=compile, augment=augment, lstm_precision=lstm_precision)
    finally:
        restore_backends(flags)
    _free(device)  # after _fast returned: its tensors are gone
    return res


def _fast(ts: TrackSet, setup: BenchSetup, batch: int, steps: int, warmup: int, *, storage: str, precision: str,
          cuda_graphs: bool | None, compile: bool, augment: bool, lstm_precision: str = "fp32") -> dict:
    device = setup.torch_device
    graphs = device.type == "cuda" if cuda_graphs is None else (cuda_graphs and device.type == "cuda")
    store = DeviceStore(ts, device, storage, precision=precision)
    model = _model(setup).to(device).train()
    models.set_lstm_precision(model, lstm_precision)
    optimizer = make_optimizer(param_groups(model, setup.weight_decay), setup.lr, betas=setup.betas,
                                     fused=True, capturable=graphs)
    step = make_train_step(model, _loss_fn(setup, device), optimizer, precision=precision,
                                 grad_clip=setup.grad_clip, cuda_graphs=graphs, compile=compile,
                                 warmup=min(max(warmup, 1), 3))
    idx = store.index_device
    windows = torch.from_numpy(window_index(ts.lengths, setup.length, 1)).to(idx)
    n = warmup + 2 * steps
    order, shift = _plan(len(windows), n, batch, setup.jitter, setup.seed)
    order_t, shift_t = torch.from_numpy(order).to(idx), torch.from_numpy(shift).to(idx)
    gen = torch.Generator(device=device)
    gen.manual_seed(setup.seed)
    aug = AugmentConfig(noise_std=setup.noise_std, temporal_jitter=setup.jitter, mixup_alpha=0.0)
    rng = np.random.default_rng(setup.seed)  # mixup's draws; unused at mixup_alpha 0

    def one(i: int) -> torch.Tensor:
        b = store.batch(windows[order_t[i]], setup.length, shift_t[i] if augment else None)
        if augment:
            b, _ = augment_batch(b, aug, gen, rng)  # the trainer's noise (x cast to float32)
        return step(b)

    _reset_peak(device)
    times = []
    for i in range(warmup + steps):
        t0 = _stamp(device)
        one(i)
        t1 = _stamp(device)
        if i >= warmup:
            times.append(t1 - t0)
    loss = torch.full((), float("nan"))
    t0 = _stamp(device)
    for i in range(warmup + steps, n):
        loss = one(i)
    pipelined_ms = (_stamp(device) - t0) * 1000.0 / max(steps, 1)
    stats = step.stats()
    res = _summary("fast", batch, times, device, _peak(device), pipelined_ms=pipelined_ms,
                   final_loss=float(loss), skipped_steps=stats["skipped"], details=step.describe(),
                   storage_dtype=str(store.dtype).replace("torch.", ""), storage_bytes=store.nbytes["total"],
                   storage_fp32_bytes=store.nbytes["fp32_total"], storage_max_abs_error=store.max_abs_error,
                   resident=store.resident, storage_message=store.message, lstm_precision=lstm_precision)
    return res


# ----------------------------------------------------------------------------- same result


def tolerance(precision: str, device: torch.device, lstm_precision: str = "fp32") -> float:
    """Relative tolerance of the fast path's loss against the fp32 reference after K steps.

    fp32 on CPU: both exact fp32, only the AdamW implementation (fused vs for-loop) differs: 1e-4.
    fp32 on CUDA: TF32 matmuls/convs/RNN in the fast path: 1e-2. bf16: 8-bit mantissas in the convs
    and head, fp16 feature storage: 3e-2. A bf16 LSTM (8-bit mantissas through 100 recurrent steps):
    5e-2; an fp16 one (11-bit mantissas, loss scaled): 3e-2. These are estimates until measured on a GPU.
    """
    precision = resolve_precision(precision, device)
    base = 3e-2 if precision == "bf16" else (1e-2 if device.type == "cuda" else 1e-4)
    return max(base, {"fp32": 0.0, "bf16": 5e-2, "fp16": 3e-2}[lstm_precision])


def check_same(
    ts: TrackSet, setup: BenchSetup, batch: int, k: int, *, storage: str = "auto", precision: str = "auto",
    cuda_graphs: bool | None = None, lstm_precision: str = "fp32", clip: float | None = None,
) -> dict:
    """Train (a) and (b) ``k`` steps from the same initial weights on the same windows (no jitter,
    no noise, dropout 0) and compare the losses step by step against ``tolerance``.

    ``clip`` None: a tenth of the initial gradient norm, so clipping acts on every step (a clip that
    never engages cannot show that both paths clip alike); ``ok`` also needs every reference step clipped
    and ``clip_update_rel_diff`` <= 1e-3: AdamW is nearly blind to a gradient's scale (a no-op clip moved
    the CPU loss by only ~1e-4 in 10 steps), so the same steps also run with plain SGD, whose update is
    the clipped gradient itself, comparing the weight updates of (a) and (b).
    """
    device = setup.torch_device
    graphs = device.type == "cuda" if cuda_graphs is None else (cuda_graphs and device.type == "cuda")
    cfg = dataclasses.replace(setup.model, dropout=0.0)
    windows = window_index(ts.lengths, setup.length, 1)
    order, _ = _plan(len(windows), k, batch, 0, setup.seed + 1)
    loss_fn = _loss_fn(setup, device)
    arrays = ts.arrays()

    def batch_of(i: int) -> dict:
        b = gather(arrays, windows[order[i]], setup.length, mode="scene")
        return {key: torch.from_numpy(np.ascontiguousarray(v)).to(device) for key, v in b.items()}

    if clip is None:
        clip = 0.1 * _probe_norm(setup, cfg, batch_of(0), loss_fn)

    # (a) the reference: numpy gather on the CPU, fp32 eager, default AdamW
    flags = backend_flags()
    torch.backends.cudnn.benchmark = False
    model = _model(setup, cfg)
    init = {name: v.clone() for name, v in model.state_dict().items()}
    model.to(device).train()
    opt = torch.optim.AdamW(param_groups(model, setup.weight_decay), lr=setup.lr, betas=setup.betas)
    ref, norms = [], []
    for i in range(k):
        loss, norm = _reference_step_norm(model, loss_fn, opt, batch_of(i), clip)
        ref.append(loss)
        norms.append(norm)
    restore_backends(flags)
    del model, opt
    _free(device)

    # (b) the fast path
    flags = setup_backends(device)
    try:
        model = models.create(cfg.name, setup.n_features, setup.n_classes, cfg)
        model.load_state_dict(init)
        model.to(device).train()
        models.set_lstm_precision(model, lstm_precision)
        store = DeviceStore(ts, device, storage, precision=precision)
        opt = make_optimizer(param_groups(model, setup.weight_decay), setup.lr, betas=setup.betas,
                                   fused=True, capturable=graphs)
        step = make_train_step(model, loss_fn, opt, precision=precision, grad_clip=clip,
                                     cuda_graphs=graphs, warmup=min(3, max(k // 2, 1)))
        idx = store.index_device
        w_t, o_t = torch.from_numpy(windows).to(idx), torch.from_numpy(order).to(idx)
        fast_t = [step(store.batch(w_t[o_t[i]], setup.length)).clone() for i in range(k)]
        fast = torch.stack(fast_t).tolist() if fast_t else []
        describe = step.describe()
    finally:
        restore_backends(flags)
    del model, opt, store, step
    _free(device)

    clip_rel = _clip_update_diff(setup, cfg, [batch_of(i) for i in range(min(k, 3))], loss_fn, clip)
    rtol = tolerance(precision, device, lstm_precision)
    rel = [abs(f - r) / max(abs(r), 1e-12) for f, r in zip(fast, ref)]
    clipped = sum(1 for n in norms if n > clip)
    ok = (all(np.isfinite(fast)) and all(x <= rtol for x in rel) and clipped == k
          and clip_rel <= CLIP_UPDATE_RTOL)
    return {"steps": k, "batch": batch, "reference_losses": ref, "fast_losses": fast,
            "max_rel_diff": max(rel) if rel else 0.0, "final_rel_diff": rel[-1] if rel else 0.0,
            "rtol": rtol, "ok": bool(ok), "precision": resolve_precision(precision, device),
            "lstm_precision": lstm_precision, "clip": clip, "clipped_steps": clipped,
            "clip_update_rel_diff": clip_rel, "clip_update_rtol": CLIP_UPDATE_RTOL,
            "reference_grad_norms": norms, "fast_details": describe,
            "conditions": f"same init and windows; dropout, jitter and noise off; clip {clip:.3g} "
                          f"(acted on {clipped}/{k} reference steps)"}


CLIP_UPDATE_RTOL = 1e-3  # fp32 both ways, no TF32: rounding only; a no-op clip is off by ~10x (the clip factor)


def _clip_update_diff(setup: BenchSetup, cfg: ModelConfig, batches: list[dict], loss_fn: Any, clip: float) -> float:
    """||update(b) - update(a)|| / ||update(a)|| after ``len(batches)`` plain-SGD steps with ``clip``:
    the reference step's clip against the trainer's step (fp32, backend defaults)."""
    updates = []
    for fast in (False, True):
        model = _model(setup, cfg).to(setup.torch_device).train()
        init = [p.detach().clone() for p in model.parameters()]
        opt = torch.optim.SGD(model.parameters(), lr=setup.lr)
        if fast:
            step = make_train_step(model, loss_fn, opt, precision="fp32", grad_clip=clip)
            for b in batches:
                step(b)
        else:
            for b in batches:
                reference_step(model, loss_fn, opt, b, clip)
        updates.append(torch.cat([(p.detach() - q).flatten() for p, q in zip(model.parameters(), init)]))
        del model, opt
    ref, got = updates
    return float(torch.linalg.vector_norm(got - ref) / torch.linalg.vector_norm(ref).clamp_min(1e-30))


# ----------------------------------------------------------------------------- sweep


def _is_oom(err: BaseException) -> bool:
    oom = getattr(torch.cuda, "OutOfMemoryError", None)
    return (oom is not None and isinstance(err, oom)) or "out of memory" in str(err).lower()


def sweep(ts: TrackSet, setup: BenchSetup, batch_sizes: list[int], steps: int, warmup: int,
          known: dict[int, dict] | None = None, **fast_kwargs: Any) -> dict:
    """The fast path at each batch size; out-of-memory is caught, memory freed, the sweep goes on.
    ``known``: results already measured (batch -> bench_fast dict). Returns rows and ``largest_fit``."""
    rows = []
    for b in batch_sizes:
        if known and b in known:
            rows.append(dict(known[b], fits=True))
            continue
        oom = False
        try:
            rows.append(dict(bench_fast(ts, setup, b, steps, warmup, **fast_kwargs), fits=True))
        except (RuntimeError, MemoryError) as err:
            if not _is_oom(err):
                raise
            oom = True
        if oom:  # outside the except block: the traceback (and the tensors its frames hold) is gone
            rows.append({"path": "fast", "batch": b, "fits": False, "error": "out of memory"})
            _free(setup.torch_device)
    fits = [r["batch"] for r in rows if r["fits"]]
    return {"rows": rows, "largest_fit": max(fits) if fits else None}


# ----------------------------------------------------------------------------- features vs pandas (--features)


def synthetic_tracking(
    n_frames: int, n_mice: int = 2, seed: int = 0, drop: float = 0.03, size_px: float = 600.0
) -> pd.DataFrame:
    """A long-format tracking table (video_frame, mouse_id, bodypart, x, y) of random-walking mice.

    ``drop`` of the rows are removed (missing detections). For benchmarks and tests only.
    """
    rng = np.random.default_rng(seed)
    parts = [p for p in data.DEFAULT_SLOTS if p in data.BODYPARTS]
    body = np.cumsum(rng.normal(0, 2.0, (n_frames, n_mice, 1, 2)), axis=0) + size_px / 2
    offsets = rng.normal(0, 15.0, (1, n_mice, len(parts), 2))
    xy = (body + offsets + rng.normal(0, 0.5, (n_frames, n_mice, len(parts), 2))).astype(np.float32)
    f, m, p = np.meshgrid(np.arange(n_frames), np.arange(n_mice), np.arange(len(parts)), indexing="ij")
    df = pd.DataFrame({
        "video_frame": f.ravel().astype(np.int64),
        "mouse_id": (m.ravel() + 1).astype(np.int64),
        "bodypart": np.asarray(parts, dtype=object)[p.ravel()],  # written as parquet utf8, like the real files
        "x": xy[..., 0].ravel(),
        "y": xy[..., 1].ravel(),
    })
    keep = rng.random(len(df)) >= drop
    return df[keep].reset_index(drop=True)


def _pandas_baseline(path: Path, fps: float, ppc: float, centre: tuple[float, float], max_gap: int,
                     slots: Sequence[str], n_mice: int = 4) -> np.ndarray:
    """The straightforward way: read_parquet -> pivot_table -> per-column pandas/np.gradient -> (T, 288)."""
    df = pd.read_parquet(path)
    wide = df.pivot_table(index="video_frame", columns=["mouse_id", "bodypart"], values=["x", "y"])
    wide = wide.reindex(range(int(df["video_frame"].max()) + 1))
    pos, spd, acc = [], [], []
    for m in range(1, n_mice + 1):
        for s in slots:
            if ("x", m, s) in wide.columns:
                x = (wide[("x", m, s)] - centre[0]) / ppc
                y = (wide[("y", m, s)] - centre[1]) / ppc
                x = x.interpolate(limit=max_gap, limit_area="inside")
                y = y.interpolate(limit=max_gap, limit_area="inside")
            else:
                x = y = pd.Series(np.nan, index=wide.index)
            vx = np.gradient(x.to_numpy(), 1.0 / fps)
            vy = np.gradient(y.to_numpy(), 1.0 / fps)
            ax = np.gradient(vx, 1.0 / fps)
            ay = np.gradient(vy, 1.0 / fps)
            pos += [x.to_numpy(), y.to_numpy()]
            spd.append(np.sqrt(vx**2 + vy**2))
            acc.append(np.sqrt(ax**2 + ay**2))
    return np.stack(pos + spd + acc, axis=1).astype(np.float32)


def bench_prepare(
    n_frames: int = 54_000, n_mice: int = 2, repeats: int = 5, seed: int = 0, workdir: str | Path | None = None,
    verbose: bool = True,
) -> dict:
    """Reading + scene features: mabe (read_tracking + scene_features) vs a pandas pivot baseline.

    Same synthetic tracking file for both; the two are timed in alternating rounds (so a burst of
    load elsewhere hits both) and each reports its best of ``repeats``. Returns frames/s of each,
    their ratio, the read / feature split, the pair-feature throughput and the largest difference
    where both results are finite.
    """
    fcfg = FeatureConfig()
    slots = list(data.DEFAULT_SLOTS)
    fps, ppc, centre = 30.0, 2.0, (300.0, 300.0)
    tmp_ctx = tempfile.TemporaryDirectory() if workdir is None else None
    folder = Path(tmp_ctx.name if tmp_ctx else workdir)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "bench_tracking.parquet"
    synthetic_tracking(n_frames, n_mice, seed).to_parquet(path, index=False)

    def best(fn):
        times, out = [], None
        for _ in range(repeats):
            t = time.perf_counter()
            out = fn()
            times.append(time.perf_counter() - t)
        return min(times), out

    def fast() -> np.ndarray:
        trk = data.read_tracking(path, slots, data.MAX_MICE)
        return F.scene_features(trk.xy, fps, ppc, centre, fcfg)

    def baseline() -> np.ndarray:
        return _pandas_baseline(path, fps, ppc, centre, fcfg.max_gap, slots, fcfg.n_mice)

    try:
        fast_times, base_times = [], []
        for _ in range(repeats):  # alternate the two
            t = time.perf_counter()
            ours = fast()
            fast_times.append(time.perf_counter() - t)
            t = time.perf_counter()
            theirs = baseline()
            base_times.append(time.perf_counter() - t)
        t_fast, t_base = min(fast_times), min(base_times)
        t_read, trk = best(lambda: data.read_tracking(path, slots, data.MAX_MICE))
        t_scene, _ = best(lambda: F.scene_features(trk.xy, fps, ppc, centre, fcfg))
        cm = F.clean_positions(trk.xy, ppc, centre, fcfg.max_gap)
        mice = np.flatnonzero(trk.mice).tolist()
        pairs = [(a, t) for a in mice for t in mice]
        t_pair, _ = best(lambda: F.all_pair_features(cm, fps, pairs, slots))
    finally:
        if tmp_ctx:
            tmp_ctx.cleanup()
    both = np.isfinite(ours) & np.isfinite(theirs)
    n_pos = fcfg.n_mice * len(slots) * 2
    res = {
        "n_frames": n_frames,
        "n_mice": n_mice,
        "mabe_s": t_fast,
        "baseline_s": t_base,
        "mabe_frames_per_s": n_frames / t_fast,
        "baseline_frames_per_s": n_frames / t_base,
        "speedup": t_base / t_fast,
        "read_s": t_read,
        "scene_s": t_scene,
        "pair_s": t_pair,
        "pair_frames_per_s": n_frames / t_pair,
        "n_pairs": len(pairs),
        "max_abs_diff_positions": float(np.abs(ours - theirs)[:, :n_pos][both[:, :n_pos]].max(initial=0.0)),
        # relative to the largest baseline value of the block: float32 rounding, not a formula difference
        "max_rel_diff_motion": float(np.abs(ours - theirs)[:, n_pos:][both[:, n_pos:]].max(initial=0.0)
                                     / max(float(np.nanmax(np.abs(theirs[:, n_pos:]))), 1e-12)),
    }
    if verbose:
        print(f"features bench: {n_frames:,} frames, {n_mice} mice, best of {repeats}")
        print(f"  pandas pivot baseline  {res['baseline_s']:7.3f} s  {res['baseline_frames_per_s']:>12,.0f} frames/s")
        print(f"  mabe read + scene      {res['mabe_s']:7.3f} s  {res['mabe_frames_per_s']:>12,.0f} frames/s"
              f"  ({res['speedup']:.1f}x; read {res['read_s']:.3f} s + features {res['scene_s']:.3f} s)")
        print(f"  mabe pair features     {res['pair_s']:7.3f} s  {res['pair_frames_per_s']:>12,.0f} frames/s"
              f"  ({len(pairs)} pairs)")
        print(f"  max |diff| where both finite: positions {res['max_abs_diff_positions']:.2e} cm, "
              f"speeds/accelerations {res['max_rel_diff_motion']:.2e} (relative)")
    return res


# ----------------------------------------------------------------------------- scale (--scale, issue 13)

SCALE_DISK_BYTES = 380  # issue 13 targets, on the 2-core development machine: bytes a frame on disk ...
SCALE_PREPARE_FPS = 70_000  # ... prepare frames/s (the best worker count) ...
SCALE_PREPARE_GIB = 8.0  # ... peak host RAM preparing the real preset ...
SCALE_TRAIN_GIB = 16.0  # ... and training on it


def _tree_rss(pid: int) -> int:
    """Resident bytes of ``pid`` and every descendant (from /proc; 0 where it is gone or not Linux)."""
    total, todo, seen = 0, [pid], set()
    while todo:
        p = todo.pop()
        if p in seen:
            continue
        seen.add(p)
        try:
            with open(f"/proc/{p}/status") as f:
                total += next((int(ln.split()[1]) * 1024 for ln in f if ln.startswith("VmRSS:")), 0)
            for task in os.listdir(f"/proc/{p}/task"):
                with open(f"/proc/{p}/task/{task}/children") as f:
                    todo += [int(c) for c in f.read().split()]
        except (OSError, ValueError):
            continue
    return total


def run_child(cmd: list[str], env: dict | None = None, poll_s: float = 0.05) -> dict:
    """Run a child process: wall seconds, its output, peak RSS of the largest process (``wait4``) and of the
    whole process tree at once (sampled every ``poll_s``: worker pools count in full)."""
    import subprocess
    import threading

    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    peak, done = [0], threading.Event()

    def sample() -> None:
        while not done.is_set():
            peak[0] = max(peak[0], _tree_rss(proc.pid))
            done.wait(poll_s)

    th = threading.Thread(target=sample, daemon=True)
    th.start()
    out = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)
    done.set()
    th.join()
    proc.returncode = os.waitstatus_to_exitcode(status)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"failed ({proc.returncode}): {shlex.join(cmd)}\n{out[-4000:]}")
    # the tree holds at least its largest process (a peak between two samples is missed by the sampler)
    return {"seconds": wall, "cpu_s": usage.ru_utime + usage.ru_stime, "peak_rss_mib": usage.ru_maxrss / 1024,
            "tree_peak_mib": max(peak[0] / 2**20, usage.ru_maxrss / 1024), "output": out}


def _child_env(src: Path) -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(src) + os.pathsep + env.get("PYTHONPATH", "")
    env["OMP_NUM_THREADS"] = "1"
    env["PYTHONDONTWRITEBYTECODE"] = "1"  # a --before tree stays as it is
    return env


def before_tree(before: str, workdir: Path) -> Path:
    """``--before``: a folder (a ``src`` holding ``mabe/``, or a checkout holding ``src/mabe``) or a git revision
    of the repository in the current folder (exported with ``git archive`` under ``workdir``) -> its src folder."""
    import subprocess

    p = Path(before)
    if (p / "mabe").is_dir():
        return p
    if (p / "src" / "mabe").is_dir():
        return p / "src"
    out = workdir / "before_tree"
    out.mkdir(parents=True, exist_ok=True)
    try:
        blob = subprocess.run(["git", "archive", before, "src"], check=True, capture_output=True).stdout
    except (OSError, subprocess.CalledProcessError) as err:
        # ConfigError (a ValueError the CLI reports in one line): a bad argument, not a crash
        raise ConfigError(f"--before {before!r}: neither a source folder nor a git revision here (a folder "
                          f"holding mabe/ or src/mabe/, or a revision of this repository; {err})") from None
    import io as _io
    import tarfile

    with tarfile.open(fileobj=_io.BytesIO(blob)) as tar:
        tar.extractall(out, filter="data")
    return out / "src"


def scale_prepare(src: Path, data_dir: Path, cache: Path, workers: int, frames: int) -> dict:
    """``mabe prepare`` of the real-data recipe (``configs/h100.yaml``, pair mode; the default FeatureConfig)
    with the code in ``src``, in a child: seconds, frames/s, bytes on disk (a frame), peak RSS."""
    cfg = src / "mabe" / "configs" / "h100.yaml"
    r = run_child([sys.executable, "-m", "mabe", "prepare", str(data_dir), "--config", str(cfg), "--set",
                   "task.mode=pair", "--cache", str(cache), "--split", "train", "--workers", str(workers)],
                  _child_env(src))
    size = sum(p.stat().st_size for p in cache.rglob("*") if p.is_file())
    line = next((ln for ln in r["output"].splitlines() if "frames/s" in ln), "")
    # CPU seconds: of the prepare process only with 1 worker (pool workers are the forkserver's children,
    # which wait4 does not count)
    cpu = {"cpu_s": r["cpu_s"], "frames_per_cpu_s": frames / max(r["cpu_s"], 1e-9)} if workers == 1 else {}
    return {"workers": workers, "seconds": r["seconds"], "frames_per_s": frames / r["seconds"], **cpu, "bytes": size,
            "bytes_per_frame": size / frames, "peak_rss_mib": r["peak_rss_mib"], "tree_peak_mib": r["tree_peak_mib"],
            "log": line.strip()}


def scale_train(src: Path, data_dir: Path, cache: Path, runs: Path, steps: int, extra: Sequence[str] = ()) -> dict:
    """One epoch of the CPU recipe (``configs/demo.yaml``, pair mode, ``steps`` steps, 1 thread) in a child:
    peak RSS, windows/s, the epoch's seconds, the run log's data lines. ``extra``: more --set overrides."""
    import csv

    cfg = src / "mabe" / "configs" / "demo.yaml"
    sets = [f"cache={cache}", f"runs={runs}", "train.epochs=1", f"train.steps_per_epoch={steps}",
            "train.num_threads=1", "train.report=false", "train.device=cpu", *extra]
    r = run_child([sys.executable, "-m", "mabe", "train", "-c", str(cfg), "--data", str(data_dir), "--name", "b",
                   *[a for s in sets for a in ("--set", s)]], _child_env(src))
    with open(runs / "b" / "metrics.csv") as f:
        row = list(csv.DictReader(f))[-1]
    data_line = " / ".join(ln.split("data: ", 1)[-1] for ln in r["output"].splitlines() if "data: " in ln)
    out = {"seconds": r["seconds"], "cpu_s": r["cpu_s"], "peak_rss_mib": r["peak_rss_mib"],
           "epoch_time_s": float(row["epoch_time_s"]), "windows_per_s": float(row["windows_per_s"]), "data": data_line}
    held = re.search(r"features computed once into host memory \(([\d,.]+) MiB (\w+)", r["output"])
    if held:  # what the in-memory path holds (train + validation features), in its stored dtype
        out["features_mib"], out["features_dtype"] = float(held.group(1).replace(",", "")), held.group(2)
    return out


def _scale_windows(videos: list, rng: np.random.Generator, n: int, length: int):
    """n random pair windows (video, start, agent, target) over present mice."""
    v = rng.integers(0, len(videos), n)
    start, agent, target = [], [], []
    for i in v:
        meta = videos[i].meta
        start.append(int(rng.integers(0, max(meta["n_frames"] - length, 1))))
        mice = [m - 1 for m in meta["mice"]]
        agent.append(int(rng.choice(mice)))
        target.append(int(rng.choice(mice)))
    return v, np.array(start), np.array(agent), np.array(target)


def scale_batches(cache: Path, batch: int, length: int, repeats: int, device: str) -> dict:
    """``features_torch.window_features`` on ``batch`` windows drawn from a position cache (int16 store decoded
    per batch), pair and scene mode: best seconds, frames/s, largest difference from numpy's features of the
    same windows; and numpy's whole-video pair features (what the float32 cache's prepare computed)."""
    slots = list(data.DEFAULT_SLOTS)
    fcfg = FeatureConfig()
    videos = [poscache.read_video(p.parent) for p in sorted(Path(cache).glob("*/videos/*/*/meta.json"))]
    if not videos:
        raise ValueError(f"{cache}: no position-cache videos")
    codes, offsets, quantum = poscache.stack_codes(videos, slots)
    dev = torch.device(device)
    store = torch.from_numpy(codes).to(dev)
    fps = torch.tensor([v.meta["fps"] for v in videos], dtype=torch.float64, device=dev)
    off, q = torch.from_numpy(offsets).to(dev), torch.from_numpy(quantum).to(dev)
    rng = np.random.default_rng(0)
    res: dict = {"device": device, "threads": torch.get_num_threads(), "batch": batch, "window": length,
                 "store_mib": codes.nbytes / 2**20}
    for mode in ("pair", "scene"):
        v, s, a, t = (torch.from_numpy(x).to(dev) for x in _scale_windows(videos, rng, batch, length))
        times = []
        for _ in range(repeats + 1):
            t0 = _stamp(dev)
            out, _ = FT.window_features(store, off, v, s, length, fps, fcfg, slots, mode=mode, agent=a, target=t,
                                        quantum=q)
            times.append(_stamp(dev) - t0)
        best = min(times[1:])  # the first call warms the allocator / kernels
        worst = 0.0
        for i in range(min(16, batch)):  # the numpy features of the same windows, float32 both sides
            vid = videos[int(v[i])]
            cm = F.interpolate_gaps(vid.positions(slots), fcfg.max_gap)
            full = (F.scene_from_cm(cm, vid.meta["fps"]) if mode == "scene" else
                    F.all_pair_features(cm, vid.meta["fps"], [(int(a[i]), int(t[i]))], slots)[0])
            ref = full[int(s[i]) : int(s[i]) + length]
            got = out[i, : len(ref)].cpu().numpy()
            if not (np.isnan(got) == np.isnan(ref)).all():
                raise AssertionError(f"{mode}: the NaN pattern differs from numpy's features")
            both = np.isfinite(ref)
            worst = max(worst, float(np.abs(got - ref)[both].max(initial=0.0)))
        res[mode] = {"seconds": best, "frames_per_s": batch * length / best, "max_abs_diff_vs_numpy": worst,
                     "n_features": int(out.shape[-1])}
    t0, n = time.perf_counter(), 0
    for vid in sorted(videos, key=lambda x: x.n_frames)[:4]:
        cm = F.interpolate_gaps(vid.positions(slots), fcfg.max_gap)
        mice = [m - 1 for m in vid.meta["mice"]]
        F.all_pair_features(cm, vid.meta["fps"], [(x, y) for x in mice for y in mice], slots)
        n += vid.n_frames * len(mice) ** 2
    res["numpy_pair_frames_per_s"] = n / (time.perf_counter() - t0)
    return res


def scale_precision(data_dir: Path, n_videos: int = 3) -> dict:
    """Largest feature error from stored positions: int16 at the poscache step vs float16 cm, against float64."""
    slots = list(data.DEFAULT_SLOTS)
    out: dict = {"int16": {}, "float16": {}}
    for task in sorted(prepare._tasks(Path(data_dir), ["train"]), key=lambda t: prepare._file_size(
            t["tracking_path"]))[:n_videos]:
        trk = data.read_tracking(task["tracking_path"], slots, data.MAX_MICE)
        centre = (task["width"] / 2, task["height"] / 2)
        cm = F.to_cm(trk.xy.astype(np.float64), task["pix_per_cm"], centre)
        codes, q, m, s_ = poscache.encode_positions(trk.xy, np.ones(data.MAX_MICE, bool), task["pix_per_cm"], centre)
        stored = {"int16": poscache.decode_positions(codes, q, m, s_, data.MAX_MICE, len(slots), np.float64),
                  "float16": cm.astype(np.float16).astype(np.float64)}
        mice = np.flatnonzero(trk.mice).tolist()
        pairs = [(a, b) for a in mice for b in mice]

        def feats(x: np.ndarray, fps: float = task["fps"], pairs: list = pairs) -> tuple[np.ndarray, np.ndarray]:
            x = F.interpolate_gaps(x, 10)
            return (F.scene_from_cm(x, fps).astype(np.float64),
                    F.all_pair_features(x, fps, pairs, slots).astype(np.float64))

        ref_scene, ref_pair = feats(cm)
        n = data.MAX_MICE * len(slots)
        for kind, x in stored.items():
            sc, pr = feats(x)
            d = np.abs(sc - ref_scene)
            blocks = {"positions_cm": d[:, : 2 * n], "speed_cm_s": d[:, 2 * n : 3 * n], "acc_cm_s2": d[:, 3 * n :],
                      "pair_any": np.abs(pr - ref_pair)}
            for k, v in blocks.items():
                out[kind][k] = max(out[kind].get(k, 0.0), float(np.nanmax(v, initial=0.0)))
    return out


def scale_step(batch: int, length: int, n_features: int, repeats: int = 2) -> dict:
    """One forward + backward + AdamW step of the reference model (conv1d_bilstm) on the CPU, best of ``repeats``."""
    torch.manual_seed(0)
    model = models.create("conv1d_bilstm", n_features, 8, ModelConfig())
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    x = torch.randn(batch, length, n_features)
    y = (torch.rand(batch, length, 8) < 0.1).float()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        loss = nn.functional.binary_cross_entropy_with_logits(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        times.append(time.perf_counter() - t0)
    return {"seconds": min(times), "params": sum(p.numel() for p in model.parameters())}


def project_real(seed: int = 0) -> dict:
    """Bytes a frame of the whole real preset's train videos, from its plan: the float32 feature cache (pair
    mode) and the position cache on disk, and the device-resident stores of both."""
    specs = [s for s in synth.plan_dataset("real", seed) if s.split == "train"]
    P, n_act = F.n_pair_features(len(data.DEFAULT_SLOTS)), len(data.ACTIONS)
    frames = old = new = dev_old = dev_new = 0
    for s in specs:
        T, M = s.n_frames, s.n_mice
        tracked = {data.BODYPART_SYNONYMS.get(p, p) for p in s.parts} & set(data.DEFAULT_SLOTS)
        frames += T
        old += T * (288 * 4 + M * M * (P * 4 + n_act)) + M * M * n_act  # scene + pair + labels (+ labeled)
        new += T * M * len(tracked) * 4  # int16 x, y of present mice and tracked slots (labels: intervals)
        # device, pair mode: fp16 pair rows of every ordered pair (an upper bound) + uint8 labels; after:
        # the int16 (4, 18, 2) store of every frame
        dev_old += T * M * M * (P * 2 + n_act)
        dev_new += T * data.MAX_MICE * len(data.DEFAULT_SLOTS) * 2 * 2
    largest = max(specs, key=lambda s: s.n_frames)
    return {"videos": len(specs), "frames": frames, "largest_video_frames": largest.n_frames,
            "old_bytes_per_frame": old / frames, "new_bytes_per_frame": new / frames, "old_gib": old / 2**30,
            "new_gib": new / 2**30, "device_old_bytes_per_frame": dev_old / frames,
            "device_new_bytes_per_frame": dev_new / frames}


def scale(
    videos: int = 24, workdir: str | Path = "/tmp/mabe_bench_scale", before: str | None = None,
    workers: Sequence[int] = (1, 2), steps: int = 40, batch: int = 384, window: int = 100, repeats: int = 3,
    threads: Sequence[int] = (1,), step: bool = True, train_real: bool = True, seed: int = 0,
    train_preset: str = "hard", startup: bool = True, train_rounds: int = 2, verbose: bool = True,
) -> dict:
    """Issue 13 at scale on the first ``videos`` train videos of ``mabe synth --preset real`` (the share of its
    frames is reported, and the whole preset projected from it and from its plan), each step in a child
    process: synth; prepare with this code (and ``before``'s: a src folder or a git revision, the float32
    feature cache) at each worker count; training on the hard preset (the 30 videos issue 13's "before"
    was measured on) with each tree, and on the share with this code (features per batch and in memory),
    with the tiny preset's run as the start-up; per-batch feature speed and precision; a reference step.
    ``train_preset`` (hard) and ``startup`` (the tiny runs) make a quick check possible (the unit test)."""
    import shutil

    say = print if verbose else (lambda *a, **k: None)
    work = Path(workdir)
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    here = Path(__file__).resolve().parents[1]  # the src folder this mabe runs from
    trees = {"after": here} | ({"before": before_tree(before, work)} if before else {})
    plan = project_real(seed)
    res: dict = {"machine": f"{platform.machine()} ({os.cpu_count()} cores)", "python": platform.python_version(),
                 "torch": torch.__version__, "load_average_start": os.getloadavg(), "real": plan,
                 "args": {"videos": videos, "before": before, "workers": list(workers), "steps": steps,
                          "batch": batch, "window": window, "threads": list(threads), "seed": seed},
                 "trees": {k: str(v) for k, v in trees.items()}}
    t_all = time.perf_counter()
    py, env = sys.executable, _child_env(here)

    def synth_(out: Path, *a: str) -> dict:
        return run_child([py, "-m", "mabe", "synth", str(out), "--seed", str(seed), *a], env)

    say(f"scale: synth {videos} videos of the real preset ...")
    syn = synth_(work / "data", "--preset", "real", "--videos", str(videos), "--test-videos", "0",
                 "--workers", str(max(workers)))
    specs = synth.plan_dataset("real", seed, videos, 0)
    frames = sum(s.n_frames for s in specs)
    share = frames / plan["frames"]
    res["share"] = {"videos": videos, "frames": frames, "of_real": share,
                    "largest_video_frames": max(s.n_frames for s in specs),
                    "mice": sorted(int(s.n_mice) for s in specs)}
    res["synth"] = {"seconds": syn["seconds"], "workers": max(workers),
                    "projected_real_min": syn["seconds"] / share / 60}
    synth_(work / "hard", "--preset", train_preset, "--test-videos", "0")
    if startup:
        synth_(work / "tiny", "--preset", "tiny")
    hard_frames = sum(s.n_frames for s in synth.plan_dataset(train_preset, seed) if s.split == "train")
    res["hard_frames"], res["train_preset"] = hard_frames, train_preset
    labs = [s.lab for s in specs]
    train_real = train_real and any(labs.count(x) >= 2 for x in labs)  # validation needs a lab with 2 videos

    for name, src in trees.items():
        r: dict = {"prepare": {}}
        for w in workers:
            say(f"scale: prepare ({name}, {w} worker(s)) ...")
            cache = work / f"cache_{name}_w{w}"
            r["prepare"][str(w)] = scale_prepare(src, work / "data", cache, w, frames)
            if w != workers[0]:
                shutil.rmtree(cache)  # the same bytes again: disk space
        r["prepare_hard"] = scale_prepare(src, work / "hard", work / f"cache_hard_{name}", 1, hard_frames)
        if startup:
            r["prepare_tiny"] = scale_prepare(src, work / "tiny", work / f"cache_tiny_{name}", 1, 1)
        res[name] = r
    # training: every tree and mode once per round, rounds interleaved (the load of a shared machine drifts);
    # the best windows/s and the largest peak RSS of the rounds are kept
    # "always" stores float16, what auto picks on the real preset (its float32 features do not fit the limit;
    # a share or the hard preset alone would fit and get float32)
    always = ("train.features_in_memory=always", "train.storage_dtype=float16")
    runs = [(name, mode, extra) for name in trees for mode, extra in (
        {"": ()} if name == "before" else {"never": ("train.features_in_memory=never",),
                                           "always": always}).items()]
    start: dict = {}
    for name, mode, extra in runs if startup else ():
        sfx = f"_{mode}" if mode else ""
        res[name]["tiny" + sfx] = start[(name, mode)] = scale_train(
            trees[name], work / "tiny", work / f"cache_tiny_{name}", work / f"runs_tiny_{name}{mode}", 2, extra)
    for rnd in range(max(train_rounds, 1)):
        for name, mode, extra in runs:
            say(f"scale: train on the {train_preset} preset ({name} {mode}, round {rnd + 1}) ...")
            key = "train" + (f"_{mode}" if mode else "")
            runs_dir = work / f"runs_hard_{name}{mode}_{rnd}"
            t = scale_train(trees[name], work / "hard", work / f"cache_hard_{name}", runs_dir, steps, extra)
            shutil.rmtree(runs_dir, ignore_errors=True)
            old = res[name].get(key)
            if old is not None:
                t["windows_per_s_rounds"] = old.get("windows_per_s_rounds", [old["windows_per_s"]]) + [t["windows_per_s"]]
                t["windows_per_s"] = max(t["windows_per_s_rounds"])
                t["epoch_time_s"] = min(t["epoch_time_s"], old["epoch_time_s"])
                t["peak_rss_mib"] = max(t["peak_rss_mib"], old["peak_rss_mib"])
            res[name][key] = t
    for name, mode, _ in runs:
        key = "train" + (f"_{mode}" if mode else "")
        res[name][key] = _above(res[name][key], start.get((name, mode)), hard_frames, plan["frames"])
    if train_real:
        for mode, extra in (("never", ("train.features_in_memory=never",)),
                            ("always", always)):
            say(f"scale: train on the real share ({mode}) ...")
            res["after"][f"real_{mode}"] = _above(scale_train(here, work / "data", work / f"cache_after_w{workers[0]}",
                                                              work / f"runs_real_{mode}", steps, extra),
                                                  start.get(("after", mode)), frames, plan["frames"])
    shutil.rmtree(work / "cache_hard_before", ignore_errors=True)

    say("scale: per-batch features, precision, a reference step ...")
    res["precision"] = scale_precision(work / "data")
    old_threads = torch.get_num_threads()
    try:
        for n in threads:
            torch.set_num_threads(n)
            res[f"batches_cpu_{n}t"] = scale_batches(work / f"cache_after_w{workers[0]}", batch, window, repeats, "cpu")
        if torch.cuda.is_available():
            res["batches_cuda"] = scale_batches(work / f"cache_after_w{workers[0]}", batch, window, repeats, "cuda")
        if step:
            torch.set_num_threads(threads[0])
            res["train_step_cpu"] = scale_step(batch, window, res[f"batches_cpu_{threads[0]}t"]["pair"]["n_features"])
            ft = res[f"batches_cpu_{threads[0]}t"]["pair"]["seconds"]
            res["feature_share_of_step_cpu"] = ft / (res["train_step_cpu"]["seconds"] + ft)
    finally:
        torch.set_num_threads(old_threads)
    res["targets"] = _scale_targets(res)
    res["load_average_end"] = os.getloadavg()
    res["wall_s"] = time.perf_counter() - t_all
    return res


def _above(run: dict, start: dict | None, frames: int, real_frames: int) -> dict:
    """A training run's peak RSS above the start-up run's, per video frame, and projected to ``real_frames``."""
    if start is not None:
        run["start_mib"] = start["peak_rss_mib"]
        run["bytes_per_video_frame"] = (run["peak_rss_mib"] - start["peak_rss_mib"]) * 2**20 / frames
        run["projected_real_gib"] = (start["peak_rss_mib"] * 2**20 + run["bytes_per_video_frame"] * real_frames) / 2**30
    if "features_mib" in run:  # the in-memory features of the whole set, linear in its frames
        run["features_real_gib"] = run["features_mib"] * real_frames / frames / 1024
    return run


def _scale_targets(res: dict) -> dict:
    a, b = res["after"], res.get("before")
    first = next(iter(a["prepare"].values()))
    best = max(p["frames_per_s"] for p in a["prepare"].values())
    # the real preset's largest video is in the share (default 24 videos): the peak while preparing is
    # per process (one video at a time each), so the whole preset's peak is the share's
    peak = max(p["tree_peak_mib"] for p in a["prepare"].values()) / 1024
    train = [a[k]["projected_real_gib"] for k in ("real_never", "train_never") if "projected_real_gib" in a.get(k, {})]
    out = {"disk_bytes_per_frame": first["bytes_per_frame"] <= SCALE_DISK_BYTES,
           "prepare_frames_per_s": best >= SCALE_PREPARE_FPS,
           "prepare_peak_gib": peak <= SCALE_PREPARE_GIB  # the share holds a video as long as the preset's longest
           if res["share"]["largest_video_frames"] >= 0.99 * res["real"]["largest_video_frames"] else None,
           "train_real_gib": train[0] <= SCALE_TRAIN_GIB if train else None}
    mem = a.get("real_always", {})
    if "projected_real_gib" in mem:  # the in-memory path on the whole preset: within RAM, and what auto picks
        out["train_real_in_memory_gib"] = mem["projected_real_gib"] <= SCALE_TRAIN_GIB
    if "features_real_gib" in mem:
        out["auto_in_memory_real"] = mem["features_real_gib"] <= TrainConfig().features_memory_gb
    if b and "train" in b and "train_always" in a:
        out["cpu_throughput_in_memory"] = a["train_always"]["windows_per_s"] >= b["train"]["windows_per_s"]
        out["cpu_throughput_per_batch"] = a["train_never"]["windows_per_s"] >= b["train"]["windows_per_s"]
    return out


def print_scale(res: dict) -> None:
    """The scale benchmark's tables (``scale``'s result)."""
    sh, plan = res["share"], res["real"]
    a, b = res["after"], res.get("before", {})
    nan = float("nan")
    print(f"\nscale: {sh['videos']} videos of the real preset, {sh['frames']:,} frames = {sh['of_real']:.2%} of its "
          f"{plan['frames']:,} train frames (largest video {sh['largest_video_frames']:,}; the preset's "
          f"{plan['largest_video_frames']:,}); {res['machine']}, load {res['load_average_start'][0]:.1f} -> "
          f"{res['load_average_end'][0]:.1f}")
    print(f"  synth ({res['synth']['workers']} workers): {res['synth']['seconds']:.1f} s (whole preset projected: "
          f"{res['synth']['projected_real_min']:.0f} min)")
    print(f"  {'':36} {'before':>12} {'after':>12} {'ratio':>7}   (training rows: the {res['train_preset']} preset)")

    def row(name: str, o: float, n: float, fmt: str = "{:12,.1f}") -> None:
        print(f"  {name:36} {fmt.format(o)} {fmt.format(n)} {n / o if o else nan:7.3f}")

    for w, p in a["prepare"].items():
        q = b.get("prepare", {}).get(w, {})
        row(f"prepare {w} worker(s): s", q.get("seconds", nan), p["seconds"])
        row(f"prepare {w} worker(s): frames/s", q.get("frames_per_s", nan), p["frames_per_s"], "{:12,.0f}")
        row(f"prepare {w} worker(s): peak RSS MiB (tree)", q.get("tree_peak_mib", nan), p["tree_peak_mib"], "{:12,.0f}")
        if "frames_per_cpu_s" in p:  # wall time on a loaded machine is mostly waiting for a core
            row(f"prepare {w} worker(s): frames/CPU-s", q.get("frames_per_cpu_s", nan), p["frames_per_cpu_s"],
                "{:12,.0f}")
    p0 = next(iter(a["prepare"].values()))
    q0 = next(iter(b.get("prepare", {}).values()), {})
    row("disk B/frame (share)", q0.get("bytes_per_frame", nan), p0["bytes_per_frame"])
    row("disk B/frame (whole preset, plan)", plan["old_bytes_per_frame"], plan["new_bytes_per_frame"])
    row("device B/frame (pair, plan)", plan["device_old_bytes_per_frame"], plan["device_new_bytes_per_frame"])
    bt = b.get("train", {})
    for mode in ("never", "always"):
        t = a.get(f"train_{mode}")
        if not t:
            continue
        label = "per batch" if mode == "never" else "in memory"
        row(f"train: train windows/s ({label})", bt.get("windows_per_s", nan), t["windows_per_s"])
        row(f"train: epoch s ({label})", bt.get("epoch_time_s", nan), t["epoch_time_s"])
        row(f"train: train peak RSS MiB ({label})", bt.get("peak_rss_mib", nan), t["peak_rss_mib"], "{:12,.0f}")
        if "projected_real_gib" in t:
            row(f"train: RSS B/video frame ({label})", bt.get("bytes_per_video_frame", nan),
                t["bytes_per_video_frame"], "{:12,.0f}")
            row(f"train -> real GiB projected ({label})", bt.get("projected_real_gib", nan), t["projected_real_gib"])
    for mode in ("never", "always"):
        t = a.get(f"real_{mode}")
        if t and "projected_real_gib" in t:
            print(f"  real share, {'per batch' if mode == 'never' else 'in memory'}: peak RSS {t['peak_rss_mib']:,.0f} "
                  f"MiB ({t['bytes_per_video_frame']:,.0f} B/video frame above start-up {t['start_mib']:,.0f} MiB) -> "
                  f"whole preset {t['projected_real_gib']:.1f} GiB; {t['windows_per_s']:,.0f} windows/s, epoch "
                  f"{t['epoch_time_s']:.1f} s"
                  + (f"; features held {t['features_mib']:,.0f} MiB {t['features_dtype']} -> whole preset "
                     f"{t['features_real_gib']:.2f} GiB (auto's limit {TrainConfig().features_memory_gb:g})"
                     if "features_real_gib" in t else ""))
    for key in [k for k in res if k.startswith("batches_")]:
        bb = res[key]
        for mode in ("pair", "scene"):
            m = bb[mode]
            print(f"  features per batch ({bb['device']}, {bb['threads']} thread(s), {mode}, {bb['batch']} x "
                  f"{bb['window']}): {m['seconds'] * 1e3:8.1f} ms, {m['frames_per_s']:,.0f} frames/s, max |diff| vs "
                  f"numpy {m['max_abs_diff_vs_numpy']:.1e}")
        print(f"  numpy whole-video pair features: {bb['numpy_pair_frames_per_s']:,.0f} pair-frames/s")
    for kind, d in res["precision"].items():
        print(f"  stored as {kind:7}: max |feature error| vs float64 positions: "
              + ", ".join(f"{k} {v:.2e}" for k, v in d.items()))
    if "train_step_cpu" in res:
        print(f"  reference model step (cpu, {res['args']['batch']} x {res['args']['window']}): "
              f"{res['train_step_cpu']['seconds']:.2f} s; features per batch = {res['feature_share_of_step_cpu']:.1%} "
              "of step + features")
    print("  targets: " + ", ".join(f"{k} {'met' if v else ('n/a' if v is None else 'MISSED')}"
                                    for k, v in res["targets"].items()))
    print(f"  ({res['wall_s'] / 60:.1f} min)")


# ----------------------------------------------------------------------------- environment


def device_info(device: torch.device) -> dict:
    """Device name and library versions for the record."""
    info: dict[str, Any] = {"device": str(device), "torch": torch.__version__, "cuda": torch.version.cuda,
                            "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
                            "python": platform.python_version(), "cpu_cores": os.cpu_count()}
    if device.type == "cuda":
        info["name"] = torch.cuda.get_device_name(device)
        info["total_memory_bytes"] = torch.cuda.get_device_properties(device).total_memory
    else:
        name = platform.processor() or platform.machine()
        try:
            for line in Path("/proc/cpuinfo").read_text().splitlines():
                if line.startswith("model name"):
                    name = line.split(":", 1)[1].strip()
                    break
        except OSError:
            pass
        info["name"] = f"{name} ({os.cpu_count()} cores)"
    return info


def _command() -> str:
    argv = sys.argv[1:]
    return "mabe " + shlex.join(argv) if argv[:1] == ["bench"] else shlex.join(sys.argv)


# ----------------------------------------------------------------------------- run


def run(
    device: str = "auto", batch_sizes: list[int] | None = None, steps: int = 50, warmup: int = 5,
    check_steps: int = 10, small: bool = False, features: bool = False, feature_frames: int | None = None,
    data_frames: int | None = None, storage: str = "auto", compile: bool = False, cuda_graphs: bool | None = None,
    lstm_precisions: list[str] | None = None, verbose: bool = True,
) -> dict:
    """The whole benchmark; returns everything ``--json`` writes.

    ``lstm_precisions``: the fast path is timed and checked with each (default: all three on CUDA,
    fp32 elsewhere); the fastest that passes the same-result check is the ``fast`` row, is used for
    the sweep and is reported as ``recommended_lstm_precision`` next to what ``auto`` resolves to.
    """
    steps, warmup, check_steps = max(int(steps), 1), max(int(warmup), 0), max(int(check_steps), 1)
    dev = pick_device(device, torch.cuda.current_device() if torch.cuda.is_available() else 0)
    batch_sizes = batch_sizes or [32 if small else 384]
    main_batch = batch_sizes[0]
    setup = BenchSetup(device=str(dev), model=small_model() if small else ModelConfig())
    n_frames = data_frames or (20_000 if small else 400_000)
    say = print if verbose else (lambda *a, **k: None)
    say(f"mabe bench on {dev}: synthetic data {n_frames:,} frames x {setup.n_features} features, "
        f"windows of {setup.length}, batch {main_batch}, {'small model' if small else 'reference model'}")
    ts = synthetic_trackset(n_frames, setup.n_features, setup.n_classes, seed=setup.seed)
    n_params = sum(p.numel() for p in _model(setup).parameters())
    fast_kwargs = dict(storage=storage, compile=compile, cuda_graphs=cuda_graphs)
    lstm_precisions = list(lstm_precisions or (LSTM_PRECISIONS if dev.type == "cuda" else ("fp32",)))
    for lp in lstm_precisions:
        if lp not in LSTM_PRECISIONS:
            raise ValueError(f"--lstm-precisions: {lp!r} is not one of {', '.join(LSTM_PRECISIONS)}")

    t0 = time.perf_counter()
    say("(a) reference ...")
    ref = bench_reference(ts, setup, main_batch, steps, warmup)
    lstm_rows = []
    for lp in lstm_precisions:
        say(f"(b) fast, LSTM {lp} ...")
        row = bench_fast(ts, setup, main_batch, steps, warmup, lstm_precision=lp, **fast_kwargs)
        say(f"check, LSTM {lp}: {check_steps} steps ...")
        row["check"] = check_same(ts, setup, main_batch, check_steps, storage=storage, cuda_graphs=cuda_graphs,
                                  lstm_precision=lp)
        lstm_rows.append(row)
    passing = [r for r in lstm_rows if r["check"]["ok"]] or lstm_rows
    fast = min(passing, key=lambda r: r["ms_per_step"])
    check = fast["check"]
    fast_kwargs["lstm_precision"] = fast["lstm_precision"]
    sw = None
    if len(batch_sizes) > 1:
        say(f"sweep: {batch_sizes} ...")
        sw = sweep(ts, setup, batch_sizes, steps, warmup, known={main_batch: fast}, **fast_kwargs)
    feat = None
    if features:
        say("features: reading + scene features vs the pandas pivot baseline ...")
        feat = bench_prepare(feature_frames or (10_000 if small else 54_000), n_mice=4, repeats=1 if small else 3,
                             verbose=False)
    ratio = ref["ms_per_step"] / fast["ms_per_step"]
    targets = {
        "ratio": ratio >= TARGET_RATIO,
        "ms_per_step": fast["ms_per_step"] <= TARGET_MS,
        "epochs100": fast["epochs100_s"] <= TARGET_100_EPOCHS_S,
        "same_result": bool(check["ok"]),
        "applies": dev.type == "cuda" and not small,
    }
    return {
        "command": _command(), "env": device_info(dev), "small": small, "model": dataclasses.asdict(setup.model),
        "n_params": n_params, "data_frames": n_frames, "n_features": setup.n_features, "window": setup.length,
        "class_weights": setup.class_weights, "batch": main_batch, "steps": steps, "warmup": warmup,
        "reference": ref, "fast": fast, "ratio": ratio, "check": check, "sweep": sw, "features": feat,
        "lstm": lstm_rows, "recommended_lstm_precision": fast["lstm_precision"],
        "auto_lstm_precision": resolve_lstm_precision("auto", dev),
        "targets": targets, "epoch_windows": REFERENCE_EPOCH_WINDOWS, "wall_s": time.perf_counter() - t0,
    }


# ----------------------------------------------------------------------------- printing


def _dur(s: float) -> str:
    if s < 120:
        return f"{s:.1f} s"
    if s < 7200:
        return f"{s / 60:.1f} min"
    return f"{int(s // 3600)} h {int(s % 3600 // 60)} min"


def print_results(res: dict) -> None:
    """The tables of ``run``'s result (rich)."""
    from rich.console import Console
    from rich.table import Table

    con = Console() if sys.stdout.isatty() else Console(width=150)  # logs and files: no wrapping
    env = res["env"]
    con.print(f"[bold]mabe bench[/] on {env['name']} | torch {env['torch']} | CUDA {env['cuda']} | "
              f"cuDNN {env['cudnn']} | model {res['n_params']:,} params"
              + (" (small)" if res["small"] else "") + f" | batch {res['batch']} x {res['window']} x {res['n_features']}")
    t = Table(title=f"training step: reference vs fast ({res['steps']} timed steps after {res['warmup']} warm-up)")
    for c in ("path", "batch", "ms/step (median)", "ms/step (pipelined)", "windows/s", "peak GPU mem",
              f"epoch ({res['epoch_windows'] // 1000}k win)", "100 epochs"):
        t.add_column(c, justify="right" if c != "path" else "left")
    for key, label in (("reference", "(a) reference"), ("fast", "(b) fast")):
        r = res[key]
        t.add_row(label, str(r["batch"]), f"{r['ms_per_step']:.2f}", f"{r['ms_per_step_pipelined']:.2f}",
                  f"{r['windows_per_s']:,.0f}", format_bytes(r["peak_mem_bytes"]), _dur(r["epoch_s"]),
                  _dur(r["epochs100_s"]))
    con.print(t)
    con.print(f"(a) {res['reference']['details']}")
    con.print(f"(b) {res['fast']['details']}; {res['fast']['storage_message']}")
    con.print(f"[bold]speed-up (a)/(b): {res['ratio']:.1f}x[/] (median ms/step, same run, same device)")
    ck = res["check"]
    con.print(f"same result: {ck['steps']} steps, {ck['conditions']}: max relative loss difference "
              f"{ck['max_rel_diff']:.2e} (tolerance {ck['rtol']:.0e}, {ck['precision']} + LSTM "
              f"{ck['lstm_precision']} vs fp32) -> " + ("[green]OK[/]" if ck["ok"] else "[red]FAILED[/]"))
    rows = res.get("lstm") or []
    if len(rows) > 1:
        t = Table(title="fast path by train.lstm_precision")
        for c in ("LSTM", "ms/step", "speed-up vs (a)", "max rel. loss diff", "tolerance", "same result"):
            t.add_column(c, justify="right")
        for r in rows:
            c = r["check"]
            t.add_row(r["lstm_precision"], f"{r['ms_per_step']:.2f}", f"{res['reference']['ms_per_step'] / r['ms_per_step']:.1f}x",
                      f"{c['max_rel_diff']:.2e}", f"{c['rtol']:.0e}", "[green]OK[/]" if c["ok"] else "[red]FAILED[/]")
        con.print(t)
    con.print(f"fastest LSTM precision that passes: {res['recommended_lstm_precision']} "
              f"(train.lstm_precision=auto resolves to {res['auto_lstm_precision']} here"
              + ("" if res["recommended_lstm_precision"] == res["auto_lstm_precision"] else
                 "; [yellow]set it explicitly, or correct auto[/]") + ")")
    tg = res["targets"]
    goals = (f"(b) >= {TARGET_RATIO:.0f}x (a), (b) <= {TARGET_MS:g} ms/step, 100 epochs <= "
             f"{TARGET_100_EPOCHS_S / 60:.0f} min, same result")
    if tg["applies"]:
        def mark(ok: bool) -> str:
            return "[green]yes[/]" if ok else "[red]no[/]"

        con.print(f"targets {goals}: {mark(tg['ratio'])}, {mark(tg['ms_per_step'])}, {mark(tg['epochs100'])}, "
                  f"{mark(tg['same_result'])}")
    else:
        con.print(f"targets ({goals}) apply to the reference model on an H100/H200; not judged on this run")
    if res["sweep"]:
        t = Table(title="fast path: batch-size sweep")
        for c in ("batch", "fits", "ms/step", "windows/s", "peak GPU mem", "100 epochs"):
            t.add_column(c, justify="right")
        for r in res["sweep"]["rows"]:
            if r["fits"]:
                t.add_row(str(r["batch"]), "yes", f"{r['ms_per_step']:.2f}", f"{r['windows_per_s']:,.0f}",
                          format_bytes(r["peak_mem_bytes"]), _dur(r["epochs100_s"]))
            else:
                t.add_row(str(r["batch"]), "[red]OOM[/]", "-", "-", "-", "-")
        con.print(t)
        con.print(f"largest batch that fits: {res['sweep']['largest_fit']}")
    f = res["features"]
    if f:  # bench_prepare's dict; only its core keys are relied on
        line = (f"reading + scene features ({f.get('n_frames', 0):,} frames, {f.get('n_mice', '?')} mice): mabe "
                f"{f.get('mabe_frames_per_s', float('nan')):,.0f} frames/s vs pandas pivot baseline "
                f"{f.get('baseline_frames_per_s', float('nan')):,.0f} frames/s ({f.get('speedup', float('nan')):.1f}x)")
        if "pair_frames_per_s" in f:
            line += f"; pair features {f['pair_frames_per_s']:,.0f} frames/s ({f.get('n_pairs', '?')} pairs)"
        diffs = [f"{k.removeprefix('max_')} {v:.1e}" for k, v in f.items() if k.startswith("max_") and isinstance(v, float)]
        con.print(line + (f"; {', '.join(diffs)}" if diffs else ""))
    con.print(f"command: {res['command']}  ({res['wall_s']:.0f} s)")


def _ints(text: str | None) -> list[int] | None:
    if text in (None, ""):
        return None
    return [int(x) for x in str(text).split(",") if x.strip()]


def main_from_args(args: Any) -> dict:
    """``mabe bench``: run, print, optionally write ``--json``; returns the results."""
    import json

    if getattr(args, "scale", False):  # issue 13's scale benchmark instead of the step benchmark
        res = scale(int(getattr(args, "scale_videos", None) or 24), getattr(args, "workdir", None)
                    or Path(tempfile.gettempdir()) / "mabe_bench_scale", getattr(args, "before", None),
                    steps=int(getattr(args, "steps", None) or 40))
        out = getattr(args, "json", None)
        if out:
            Path(out).parent.mkdir(parents=True, exist_ok=True)
            Path(out).write_text(json.dumps(res, indent=1, default=float))
        print_scale(res)
        return res
    small = bool(getattr(args, "small", False))

    def opt(name: str, full: int, quick: int) -> int:
        v = getattr(args, name, None)
        return int(v) if v is not None else (quick if small else full)

    no_graphs = bool(getattr(args, "no_cuda_graphs", False))
    res = run(
        device=getattr(args, "device", "auto") or "auto",
        batch_sizes=_ints(getattr(args, "batch_sizes", None)),
        steps=opt("steps", 50, 6), warmup=opt("warmup", 5, 2), check_steps=opt("check_steps", 10, 4),
        small=small, features=bool(getattr(args, "features", False)), feature_frames=getattr(args, "frames", None),
        data_frames=getattr(args, "data_frames", None),
        storage=getattr(args, "storage_dtype", None) or "auto", compile=bool(getattr(args, "compile", False)),
        cuda_graphs=False if no_graphs else None,
        lstm_precisions=[x for x in (getattr(args, "lstm_precisions", None) or "").split(",") if x] or None,
    )
    out = getattr(args, "json", None)
    if out:  # before printing: the numbers survive a display problem
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        Path(out).write_text(json.dumps(res, indent=1, default=str))
    print_results(res)
    if out:
        print(f"results: {out}")
    return res
