"""The speed components of the fast training path, one small piece each.

    setup_backends(device)             TF32 for fp32 matmul/conv/RNN, cudnn.benchmark (CUDA only)
    DeviceStore(ts, device, storage)   a TrackSet resident on the device (bf16/fp16/fp32), bytes reported;
                                       pinned-memory streaming when it will not fit
    make_optimizer(groups, lr, ...)    AdamW, fused where supported, capturable + lr tensors for CUDA graphs
    set_lr(optimizer, lr)              change the lr without breaking a captured graph (in place)
    make_train_step(model, loss_fn, optimizer, ...) -> TrainStep
                                       forward (bf16 autocast on CUDA) + backward + clip + AdamW step,
                                       no host sync, non-finite steps skipped on the device, optionally
                                       the whole step captured in one CUDA graph

Everything degrades to plain eager PyTorch on CPU: no autocast unless asked, no graphs, no compile;
the fused AdamW (CPU kernels since torch 2.4) keeps the non-finite skip on the "device" there too, so
the CPU tests exercise the same code as the GPU.

No host sync in a step
----------------------
A step never reads a device value on the host. The loss is checked with ``isfinite`` and the total
gradient norm (computed anyway for clipping) with ``isfinite``; the flag goes to the fused AdamW as
``found_inf`` (the hook ``GradScaler`` uses): the fused kernel leaves parameters and moments untouched
and the step counter is decremented back, all on the device. Float buffers (BatchNorm running stats)
are restored from a copy taken before the forward when the step is skipped, so a NaN batch cannot
poison evaluation. Counters (finite-loss sum, steps, skipped steps, current and worst non-finite streak)
are device tensors updated in place; ``TrainStep.stats()`` reads them in one sync, once an epoch.
Only a non-fused optimizer (fused disabled or unavailable) falls back to ``if finite: step()``, a host
sync, and says so in ``TrainStep.describe()``.

CUDA graphs
-----------
With ``cuda_graphs`` the first ``warmup`` calls run eagerly on a side stream (cuDNN/cuBLAS
autotuning, lazy optimizer state, torch.compile), then the whole step - forward, loss, backward,
norm, clip, AdamW, counters - is captured once with static input buffers; every later call copies
the batch into those buffers and replays the graph (one launch). Requirements, checked or documented:
fused + capturable AdamW (``make_optimizer(..., capturable=True)``), learning rates as device tensors
changed in place (``set_lr``; a float assigned by a scheduler is copied into the captured tensor
before each replay, so nothing is silently ignored), autocast with ``cache_enabled=False``, static
shapes (a batch of another shape runs eagerly), and everything the loss reads must be a tensor in the
batch dict (a Python float captured in a closure, e.g. a mixup lambda, would be frozen at capture;
a constant such as class weights must be made on the device once, not by ``torch.tensor(list)`` in the
loss, which would copy host memory inside the capture). The graph replays in the mode the model had
when it was captured (train); validation in eval mode in between is fine, it runs eagerly.
If the capture itself fails (an op that cannot be captured, out of memory) a warning says so and the
step runs eagerly from then on. The returned loss tensor is the graph's static output: it is
overwritten by the next replay (clone it to keep it). The tensors of the batch passed in are only read.
"""

from __future__ import annotations

import contextlib
import math
import warnings
from collections.abc import Callable, Iterable
from typing import Any

import numpy as np
import torch
from torch import nn

from mabe.evaluate import resolve_precision
from mabe.windows import TrackSet, gather

__all__ = [
    "setup_backends",
    "backend_flags",
    "restore_backends",
    "resolve_storage_dtype",
    "resolve_lstm_precision",
    "bf16_lstm_supported",
    "DeviceStore",
    "make_optimizer",
    "set_lr",
    "get_lr",
    "compile_parts",
    "TrainStep",
    "make_train_step",
    "format_bytes",
    "projected_seconds",
]

GiB = 1 << 30
# static loss scale for an fp16 LSTM: gradients are unscaled before the norm and the clip; a step
# whose scaled gradients overflow is skipped on the device like any non-finite step
FP16_LOSS_SCALE = 1024.0
_STORAGE = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
_FP16_MAX = 65504.0


def format_bytes(n: float | None) -> str:
    """1536 -> '1.5 KiB'; None -> 'n/a'."""
    if n is None:
        return "n/a"
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.2f} {unit}"
        n /= 1024
    return f"{n:.2f} TiB"  # pragma: no cover


# ----------------------------------------------------------------------------- backends


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


# ----------------------------------------------------------------------------- resident data


def _absmax(X: np.ndarray, chunk: int = 1 << 18) -> float:
    """Largest finite |x| (0 when none), chunked so no full-size temporary is made."""
    m = 0.0
    for i in range(0, len(X), chunk):
        c = np.asarray(X[i : i + chunk])
        c = np.abs(c[np.isfinite(c)])
        if c.size:
            m = max(m, float(c.max()))
    return m


def resolve_storage_dtype(name: str, X: np.ndarray, device: torch.device | str, precision: str = "auto") -> torch.dtype:
    """The dtype a resident feature matrix is stored in.

    Explicit ``float32`` / ``bfloat16`` / ``float16`` pass through. ``auto``:
    - CPU, or CUDA with fp32 compute: float32 (exact; on CPU the store is a zero-copy view);
    - CUDA with bf16 compute: float16 when every finite |x| <= 65504, else bfloat16. Lossless enough:
      the convolutions read their input in bf16 under autocast anyway (8 significant bits), fp16 keeps
      11 (relative rounding error <= 2**-11 = 4.9e-4 on normalised features, 20x below the 0.01
      training noise), and half the bytes halve both the footprint and the gather traffic.
    """
    if name != "auto":
        if name not in _STORAGE:
            raise ValueError(f"storage dtype must be auto or one of {list(_STORAGE)}, got {name!r}")
        return _STORAGE[name]
    device = torch.device(device)
    if device.type != "cuda" or resolve_precision(precision, device) != "bf16":
        return torch.float32
    return torch.float16 if _absmax(X) <= _FP16_MAX else torch.bfloat16


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
    fp32 / bf16 / fp16 pass through (fp16 makes the step scale the loss by ``FP16_LOSS_SCALE``)."""
    if name not in ("auto", "fp32", "bf16", "fp16"):
        raise ValueError(f"train.lstm_precision must be auto, fp32, bf16 or fp16, got {name!r}")
    if name != "auto":
        return name
    return "bf16" if bf16_lstm_supported(device) else "fp32"


class DeviceStore:
    """A TrackSet's arrays (X, Y, offsets, label_mask) where the training step reads them.

    resident (the default when it fits): every array on ``device``, X in the storage dtype; a batch
    is ``windows.gather`` over device tensors of window indices - no host work, no copies.

    streaming (CUDA, when the arrays do not fit in free memory minus ``headroom``): the arrays stay
    in host memory; each batch is gathered on the CPU, put in page-locked (pinned) memory and copied
    to the device asynchronously. A warning says so, with the numbers.

    Attributes: ``resident``, ``dtype``, ``arrays`` (dict for ``gather``), ``nbytes`` (per array and
    ``total``; ``fp32_total`` for comparison), ``max_abs_error`` of the storage round trip (0 for
    float32), ``message`` (one line for the log).

    ``headroom`` (bytes): free memory left for the model, activations, graphs and the allocator's
    fragmentation; default max(4 GiB, 20% of the card). Cap the resident size with ``max_bytes``.
    """

    def __init__(
        self, ts: TrackSet, device: torch.device | str, storage: str = "auto", *, precision: str = "auto",
        headroom: int | None = None, max_bytes: int | None = None, chunk_rows: int = 1 << 18,
    ):
        self.device = torch.device(device)
        self.mode = ts.mode
        self.n_rows, self.n_features = ts.X.shape
        self.dtype = resolve_storage_dtype(storage, ts.X, self.device, precision)
        itemsize = torch.empty((), dtype=self.dtype).element_size()
        side = {"Y": ts.Y.nbytes, "offsets": ts.offsets.nbytes, "label_mask": ts.label_mask.nbytes}
        self.nbytes = {"X": ts.X.size * itemsize, **side}
        self.nbytes["total"] = sum(self.nbytes.values())
        self.nbytes["fp32_total"] = ts.X.size * 4 + sum(side.values())
        self.max_abs_error = 0.0
        self.resident = True
        reason = ""
        if self.device.type == "cuda":
            free, total = torch.cuda.mem_get_info(self.device)
            room = free - (headroom if headroom is not None else max(4 * GiB, int(0.2 * total)))
            if max_bytes is not None:
                room = min(room, max_bytes)
            if self.nbytes["total"] > room:
                self.resident = False
                reason = (f"{format_bytes(self.nbytes['total'])} as {_name(self.dtype)} does not fit in "
                          f"{format_bytes(max(room, 0))} ({format_bytes(free)} free on {self.device} minus headroom)")
        elif max_bytes is not None and self.nbytes["total"] > max_bytes:
            self.resident = False
            reason = f"{format_bytes(self.nbytes['total'])} exceeds max_bytes={format_bytes(max_bytes)}"

        if self.resident:
            self.arrays = self._upload(ts, chunk_rows)
            where = f"resident on {self.device}"
        else:
            # host arrays (zero-copy views); batches are cast and pinned one at a time
            self.arrays = ts.tensors("cpu", torch.float32)
            self.max_abs_error = self._roundtrip_error_host(ts.X, chunk_rows)
            where = "streamed from pinned host memory"
            warnings.warn(
                f"training data {reason}: streaming batches from pinned host memory instead (each batch "
                "gathered on the CPU and copied asynchronously; slower than the resident path). "
                "Use train.storage_dtype=float16/bfloat16, fewer videos, or a GPU with more free memory.",
                stacklevel=2,
            )
        self.message = (
            f"data {where}: {format_bytes(self.nbytes['total'])} ({_name(self.dtype)} features; "
            f"float32 would be {format_bytes(self.nbytes['fp32_total'])}; max round-trip error "
            f"{self.max_abs_error:.2e})"
        )

    # -- building
    def _upload(self, ts: TrackSet, chunk_rows: int) -> dict:
        dev, dt = self.device, self.dtype
        if dev.type == "cpu" and dt == torch.float32:
            return ts.tensors("cpu", torch.float32)  # zero copy
        X = torch.empty((self.n_rows, self.n_features), dtype=dt, device=dev)
        err = torch.zeros((), dtype=torch.float32, device=dev)
        for i in range(0, self.n_rows, chunk_rows):
            src = torch.from_numpy(np.ascontiguousarray(ts.X[i : i + chunk_rows])).to(dev)  # fp32 chunk
            X[i : i + chunk_rows] = src  # cast to the storage dtype
            if dt != torch.float32:
                d = (X[i : i + chunk_rows].float() - src).abs()
                err = torch.maximum(err, torch.where(torch.isfinite(d), d, 0.0).max())
        self.max_abs_error = float(err)  # one sync, at construction
        return {
            "X": X,
            "Y": torch.from_numpy(ts.Y).to(dev),
            "offsets": torch.from_numpy(ts.offsets).to(dev),
            "label_mask": torch.from_numpy(ts.label_mask).to(dev),
        }

    def _roundtrip_error_host(self, X: np.ndarray, chunk_rows: int) -> float:
        if self.dtype == torch.float32:
            return 0.0
        err = 0.0
        for i in range(0, len(X), chunk_rows):
            src = torch.from_numpy(np.ascontiguousarray(X[i : i + chunk_rows]))
            d = (src.to(self.dtype).float() - src).abs()
            d = d[torch.isfinite(d)]
            if d.numel():
                err = max(err, float(d.max()))
        return err

    # -- reading
    @property
    def index_device(self) -> torch.device:
        """Where window indices must live: the device when resident, the CPU when streaming."""
        return self.device if self.resident else torch.device("cpu")

    def batch(self, windows: Any, length: int, shift: Any = None) -> dict[str, torch.Tensor]:
        """``windows.gather`` of (B, 2) ``(track, start)`` windows and optional (B,) start shifts ->
        batch tensors on the training device (x in the storage dtype; cast it with the augmentation).

        Pass indices already on ``index_device`` (e.g. an epoch's plan uploaded once and sliced per
        step): numpy indices for a resident store cost a copy from pageable memory, which waits for
        the stream - a host sync.
        """
        idx = self.index_device
        w = torch.as_tensor(windows, dtype=torch.int64).to(idx, non_blocking=True)
        s = None if shift is None else torch.as_tensor(shift, dtype=torch.int64).to(idx, non_blocking=True)
        b = gather(self.arrays, w, length, s, mode=self.mode)
        if self.resident:
            return b
        b["x"] = b["x"].to(self.dtype)
        pin = self.device.type == "cuda"
        return {k: (v.pin_memory() if pin else v).to(self.device, non_blocking=pin) for k, v in b.items()}


def _name(dtype: torch.dtype) -> str:
    return str(dtype).replace("torch.", "")


# ----------------------------------------------------------------------------- optimizer


def make_optimizer(
    params: Iterable[Any], lr: float, *, betas: Iterable[float] = (0.9, 0.999), weight_decay: float = 0.0,
    eps: float = 1e-8, fused: bool = True, capturable: bool = False,
) -> torch.optim.AdamW:
    """AdamW over ``params`` (tensors or param-group dicts, e.g. ``train.param_groups(model, wd)``).

    ``fused``: one multi-tensor kernel per step (CUDA; CPU since torch 2.4) and the device-side
    ``found_inf`` skip ``TrainStep`` relies on; falls back to the default implementation with a
    warning where unsupported. ``capturable`` (CUDA only, for CUDA graphs): step counters stay on the
    device and each group's lr is its own 0-d device tensor (change it with ``set_lr``, in place;
    ReduceLROnPlateau already fills tensor lrs in place). Ignored off CUDA.
    """
    params = list(params)
    groups = [dict(g) for g in params] if params and isinstance(params[0], dict) else [{"params": params}]
    first = next((p for g in groups for p in g["params"]), None)
    device = first.device if first is not None else torch.device("cpu")
    capturable = capturable and device.type == "cuda"
    if capturable:  # one tensor per group: a shared one would be reduced once per group by a scheduler
        for g in groups:
            g["lr"] = torch.tensor(float(g.get("lr", lr)), dtype=torch.float32, device=device)
    kwargs = dict(lr=float(lr), betas=tuple(float(b) for b in betas), eps=eps, weight_decay=weight_decay)
    if fused:
        try:
            return torch.optim.AdamW(groups, fused=True, capturable=capturable, **kwargs)
        except (RuntimeError, ValueError) as err:
            warnings.warn(f"fused AdamW is not available here ({err}); using the default AdamW", stacklevel=2)
    return torch.optim.AdamW(groups, capturable=capturable, **kwargs)


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    """Set every group's learning rate; a tensor lr is filled in place (no sync, graph-safe)."""
    for g in optimizer.param_groups:
        if isinstance(g["lr"], torch.Tensor):
            g["lr"].fill_(float(lr))
        else:
            g["lr"] = float(lr)


def get_lr(optimizer: torch.optim.Optimizer) -> float:
    """The first group's learning rate as a float (a sync when it is a device tensor: once an epoch)."""
    return float(optimizer.param_groups[0]["lr"])


# ----------------------------------------------------------------------------- compile


def compile_parts(model: nn.Module, **kwargs: Any) -> bool:
    """torch.compile the parts of ``model`` where it helps: the conv stem and the head, through the
    model's ``compile_stem`` (Dynamo graph-breaks at nn.LSTM, which is one cuDNN call anyway).
    Returns whether anything was compiled. ``mode="reduce-overhead"`` is not used: it brings its own
    CUDA graphs, which would nest inside ours."""
    target = getattr(model, "module", model)  # DistributedDataParallel
    if not hasattr(target, "compile_stem"):
        warnings.warn(f"{type(target).__name__} has no compile_stem(): not compiled", stacklevel=2)
        return False
    target.compile_stem(**kwargs)
    return True


# ----------------------------------------------------------------------------- the step


def _total_norm(grads: list[torch.Tensor]) -> torch.Tensor:
    if hasattr(nn.utils, "get_total_norm"):
        return nn.utils.get_total_norm(grads, 2.0)
    return torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads]))  # pragma: no cover


def _clip_with_norm(params: list[torch.Tensor], max_norm: float, norm: torch.Tensor) -> None:
    """Scale the gradients of ``params`` (parameters, not gradients) so their total norm is <= max_norm."""
    if hasattr(nn.utils, "clip_grads_with_norm_"):
        # it reads ``p.grad`` of each entry: handing it the gradients themselves clips nothing
        nn.utils.clip_grads_with_norm_([p for p in params if p.grad is not None], max_norm, norm)
        return
    grads = [p.grad for p in params if p.grad is not None]  # pragma: no cover
    coef = torch.clamp(max_norm / (norm + 1e-6), max=1.0)  # pragma: no cover
    torch._foreach_mul_(grads, coef)  # pragma: no cover


_CAPTURABLE_WARNING = "This instance was constructed with capturable=True"


def check_reseed(captured_seed: int | None, current_seed: int) -> None:
    """Refuse a replay after the CUDA generator was reseeded: the reseed replaced the cuDNN LSTM's
    dropout-state buffer that the captured graph writes, so replays would no longer draw fresh masks."""
    if captured_seed is not None and current_seed != captured_seed:
        raise RuntimeError(
            f"the CUDA generator was reseeded (seed {captured_seed} -> {current_seed}) after the training step "
            "was captured in a CUDA graph; seed before the first step, or build a new step after reseeding")


class TrainStep:
    """``step(batch) -> loss``: one optimizer step on a batch dict (``x`` (B, W, F) plus whatever
    ``loss_fn(logits, batch)`` reads), with no host sync. Build it with ``make_train_step``.

    Device counters (updated inside the step, read by ``stats()``): ``loss_sum`` and ``n_finite``
    (the steps that updated: finite loss and gradient), ``n_steps``, ``skipped`` (non-finite loss or
    gradient: no update), ``streak`` (current run of skipped steps) and ``worst`` (longest run since
    the last reset).
    """

    def __init__(
        self, model: nn.Module, loss_fn: Callable[[torch.Tensor, dict], torch.Tensor],
        optimizer: torch.optim.Optimizer, *, precision: str = "auto", grad_clip: float = 0.0,
        cuda_graphs: bool = False, compile: bool = False, warmup: int = 3, protect_buffers: bool = True,
        loss_scale: float | None = None,
    ):
        self.model, self.loss_fn, self.optimizer = model, loss_fn, optimizer
        # None: FP16_LOSS_SCALE when the model runs its LSTM in fp16 (its gradients would underflow)
        if loss_scale is None:
            loss_scale = FP16_LOSS_SCALE if getattr(model, "lstm_dtype", None) == torch.float16 else 1.0
        self.loss_scale = float(loss_scale)
        self.device = next(model.parameters()).device
        self.precision = resolve_precision(precision, self.device)
        self.grad_clip = float(grad_clip)
        self.params = [p for g in optimizer.param_groups for p in g["params"]]
        groups = optimizer.param_groups
        self.fused = all(bool(g.get("fused")) for g in groups)
        capturable = all(bool(g.get("capturable")) for g in groups)
        self.graphs = bool(cuda_graphs) and self.device.type == "cuda"
        if self.graphs and not (self.fused and capturable):
            warnings.warn("cuda_graphs needs a fused, capturable AdamW (make_optimizer(..., fused=True, "
                          "capturable=True)); running the step eagerly", stacklevel=2)
            self.graphs = False
        if cuda_graphs and isinstance(model, nn.parallel.DistributedDataParallel):
            warnings.warn("cuda_graphs with DistributedDataParallel is not supported here; running eagerly",
                          stacklevel=2)
            self.graphs = False
        self.compiled = compile_parts(model) if compile and self.device.type == "cuda" else False
        self.warmup = max(int(warmup), 1)
        self.buffers = [b for b in model.buffers() if b.is_floating_point()] if protect_buffers else []
        self._saved = [torch.empty_like(b) for b in self.buffers]
        z = dict(device=self.device)
        self.loss_sum = torch.zeros((), dtype=torch.float64, **z)
        self.n_finite = torch.zeros((), dtype=torch.int64, **z)
        self.n_steps = torch.zeros((), dtype=torch.int64, **z)
        self.skipped = torch.zeros((), dtype=torch.int64, **z)
        self.streak = torch.zeros((), dtype=torch.int64, **z)
        self.worst = torch.zeros((), dtype=torch.int64, **z)
        self.calls = 0
        self.graph: torch.cuda.CUDAGraph | None = None
        self._static: dict[str, Any] = {}
        self._static_loss: torch.Tensor | None = None
        self._lr_tensors: list[torch.Tensor] = []
        self._side: Any = None
        self._warned_shape = False
        self._seed: int | None = None  # the CUDA generator's seed when the warm-up ran (graphs only)

    # -- public
    def __call__(self, batch: dict) -> torch.Tensor:
        self.calls += 1
        if not self.graphs:
            self._normalise_lr()
            return self._run(batch)
        if self.graph is None:
            self._normalise_lr()
            seed = self._generator_seed()
            if self.calls <= self.warmup or seed != self._seed:
                # a reseed since the warm-up makes cuDNN rebuild its LSTM dropout state (with a host
                # read) at the next call: let that happen eagerly, never inside the capture
                self._seed = seed
                return self._side_stream_run(batch)
            try:
                self._capture(batch)
            except RuntimeError as err:  # an op that cannot be captured, out of memory, ...
                return self._capture_failed(batch, err)
        check_reseed(self._seed, self._generator_seed())
        if not self._fits(batch):
            if not self._warned_shape:
                warnings.warn("a batch with other shapes than the captured one: running it eagerly", stacklevel=2)
                self._warned_shape = True
            return self._side_stream_run(batch)
        self._sync_lr()
        for k, v in self._static.items():
            if isinstance(v, torch.Tensor):
                v.copy_(batch[k], non_blocking=True)
        self.graph.replay()
        return self._static_loss

    def stats(self, reset: bool = False) -> dict:
        """The counters as Python numbers (one host sync); ``reset`` zeroes them in place."""
        vals = torch.stack([self.loss_sum.double(), self.n_finite.double(), self.n_steps.double(),
                            self.skipped.double(), self.streak.double(), self.worst.double()]).tolist()
        loss_sum, n_finite, n_steps, skipped, streak, worst = vals
        out = {"loss_sum": loss_sum, "n_finite": int(n_finite), "loss_mean": loss_sum / max(n_finite, 1),
               "steps": int(n_steps), "skipped": int(skipped), "streak": int(streak), "worst_streak": int(worst)}
        if reset:
            self.reset_stats()
        return out

    def reset_stats(self, keep_streak: bool = True) -> None:
        """Zero the counters in place (the captured graph keeps pointing at them)."""
        for t in (self.loss_sum, self.n_finite, self.n_steps, self.skipped, self.worst):
            t.zero_()
        if not keep_streak:
            self.streak.zero_()

    def set_stats(self, *, loss_sum: float = 0.0, n_finite: int = 0, steps: int = 0, skipped: int = 0) -> None:
        """Restore the epoch counters in place (a run resumed in the middle of an epoch)."""
        self.loss_sum.fill_(float(loss_sum))
        self.n_finite.fill_(int(n_finite))
        self.n_steps.fill_(int(steps))
        self.skipped.fill_(int(skipped))

    def describe(self) -> str:
        """One line: what this step does."""
        lstm = {torch.float32: "fp32/TF32", torch.bfloat16: "bf16", torch.float16: "fp16"}.get(
            getattr(self.model, "lstm_dtype", None), "as the model runs it")
        parts = [f"precision {self.precision} (LSTM {lstm}"
                 + (f", loss scale {self.loss_scale:g})" if self.loss_scale != 1.0 else ")"),
                 "fused AdamW (non-finite steps skipped on the device)" if self.fused
                 else "AdamW (non-finite check syncs the host)",
                 f"grad clip {self.grad_clip:g}" if self.grad_clip > 0 else "no grad clip",
                 "CUDA graph of the whole step" if self.graphs else "eager",
                 "compiled stem/head" if self.compiled else "not compiled"]
        return ", ".join(parts)

    # -- internals
    def _autocast(self, capturing: bool) -> contextlib.AbstractContextManager:
        if self.precision != "bf16":
            return contextlib.nullcontext()
        # the autocast weight-cast cache must be off under graph capture (torch.cuda.graphs docs)
        return torch.autocast(self.device.type, dtype=torch.bfloat16, cache_enabled=not self.graphs)

    def _run(self, batch: dict, capturing: bool = False) -> torch.Tensor:
        """The step itself, eager or under capture. No host reads except the non-fused fallback."""
        opt = self.optimizer
        if not capturing:
            opt.zero_grad(set_to_none=True)  # also detaches a captured graph's static grads
        x = batch["x"]
        if self.precision != "bf16" and x.dtype != torch.float32:
            x = x.float()  # fp16/bf16 storage; under bf16 autocast the conv casts it itself
        if self.buffers:
            torch._foreach_copy_(self._saved, self.buffers)
        with self._autocast(capturing):
            logits = self.model(x)
        loss = self.loss_fn(logits, batch)
        (loss * self.loss_scale if self.loss_scale != 1.0 else loss).backward()
        loss = loss.detach()
        grads = [p.grad for p in self.params if p.grad is not None]
        if self.loss_scale != 1.0 and grads:
            torch._foreach_mul_(grads, 1.0 / self.loss_scale)  # unscaled before the norm and the clip
        norm = _total_norm(grads) if grads else torch.zeros((), device=self.device)
        if self.grad_clip > 0 and grads:
            _clip_with_norm(self.params, self.grad_clip, norm)
        finite = torch.isfinite(loss) & torch.isfinite(norm)  # 0-d bool, stays on the device
        if self.fused:
            opt.found_inf = (~finite).float()  # 0-d: the fused kernel skips, the step count is restored
            try:
                with warnings.catch_warnings():
                    warnings.filterwarnings("ignore", message=_CAPTURABLE_WARNING)
                    opt.step()
            finally:
                del opt.found_inf  # never leak the flag into a later step
        elif bool(finite):  # non-fused optimizers: a host sync (CPU: free)
            opt.step()
        self._count(loss, finite)
        for b, s in zip(self.buffers, self._saved):
            b.copy_(torch.where(finite, b, s))
        if not capturing:
            opt.zero_grad(set_to_none=True)
        return loss

    def _count(self, loss: torch.Tensor, finite: torch.Tensor) -> None:
        bad = (~finite).to(torch.int64)
        self.loss_sum.add_(torch.where(finite, loss.double(), 0.0))
        self.n_finite.add_(finite.to(torch.int64))
        self.n_steps.add_(1)
        self.skipped.add_(bad)
        self.streak.add_(1).mul_(bad)
        torch.maximum(self.worst, self.streak, out=self.worst)

    def _generator_seed(self) -> int:
        """The seed of the generator dropout draws from (host-side, no sync)."""
        return torch.cuda.initial_seed() if self.device.type == "cuda" else torch.initial_seed()

    def _side_stream_run(self, batch: dict) -> torch.Tensor:
        """Eager step on a side stream (required before capture, and for odd-shaped batches after)."""
        if self._side is None:
            self._side = torch.cuda.Stream(self.device)
        cur = torch.cuda.current_stream(self.device)
        self._side.wait_stream(cur)
        with torch.cuda.stream(self._side):
            loss = self._run(batch)
        cur.wait_stream(self._side)
        return loss

    def _fits(self, batch: dict) -> bool:
        for k, v in self._static.items():
            b = batch.get(k)
            if isinstance(v, torch.Tensor) and not (
                isinstance(b, torch.Tensor) and b.shape == v.shape and b.dtype == v.dtype and b.device == v.device
            ):
                return False
        return set(batch) == set(self._static)

    def _normalise_lr(self) -> None:
        """Before capture: an lr the optimizer cannot take as is (a CPU tensor from a checkpoint loaded
        with map_location="cpu", or any tensor for a non-fused, non-capturable AdamW) becomes a float
        (a CPU tensor reads without a device sync); a tensor on another device moves to ours."""
        for g in self.optimizer.param_groups:
            v = g["lr"]
            if not isinstance(v, torch.Tensor) or (v.device == self.device and (self.fused or g.get("capturable"))):
                continue
            if v.device.type == "cpu" or not (self.fused or g.get("capturable")):
                g["lr"] = float(v)
            else:
                g["lr"] = v.to(self.device)

    def _sync_lr(self) -> None:
        """Keep each group's lr the tensor the graph captured; copy in a value a scheduler assigned."""
        for g, t in zip(self.optimizer.param_groups, self._lr_tensors):
            v = g["lr"]
            if v is t:
                continue
            if isinstance(v, torch.Tensor):
                t.copy_(v.reshape(()), non_blocking=True)
            else:
                t.fill_(float(v))
            g["lr"] = t

    def _capture_failed(self, batch: dict, err: BaseException) -> torch.Tensor:
        """Capture did not work: warn, drop the graph and run this step and every later one eagerly.
        Nothing of the failed capture ran (kernels recorded under capture are not executed), so the
        parameters, optimizer state and counters are as before this call."""
        warnings.warn(f"CUDA graph capture of the training step failed ({type(err).__name__}: "
                      f"{str(err).splitlines()[0] if str(err) else ''}); running the step eagerly",
                      stacklevel=3)
        self.graph, self.graphs = None, False
        self._static, self._static_loss = {}, None
        self.optimizer.zero_grad(set_to_none=True)  # grads allocated in the abandoned graph's pool
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.empty_cache()
        return self._run(batch)

    def _capture(self, batch: dict) -> None:
        torch.cuda.synchronize(self.device)
        torch.cuda.empty_cache()  # hand the warm-up's cached blocks back so the graph's pool can use them
        for g in self.optimizer.param_groups:  # the graph reads the lr from these tensors at replay
            if not (isinstance(g["lr"], torch.Tensor) and g["lr"].device == self.device):
                g["lr"] = torch.tensor(float(g["lr"]), dtype=torch.float32, device=self.device)
        self._lr_tensors = [g["lr"] for g in self.optimizer.param_groups]
        self._static = {k: (v.clone() if isinstance(v, torch.Tensor) else v) for k, v in batch.items()}
        self.optimizer.zero_grad(set_to_none=True)  # backward allocates .grad from the graph's pool
        self.graph = torch.cuda.CUDAGraph()
        # a compiled stem recompiling inside the capture would record the compiler's work: make it
        # an error instead (caught by __call__: eager fallback with a warning)
        no_recompile = (torch._dynamo.config.patch(error_on_recompile=True) if self.compiled
                        else contextlib.nullcontext())
        with no_recompile, torch.cuda.graph(self.graph):
            self._static_loss = self._run(self._static, capturing=True)
        torch.cuda.synchronize(self.device)


def make_train_step(
    model: nn.Module, loss_fn: Callable[[torch.Tensor, dict], torch.Tensor], optimizer: torch.optim.Optimizer,
    *, precision: str = "auto", grad_clip: float = 0.0, cuda_graphs: bool = False, compile: bool = False,
    warmup: int = 3, protect_buffers: bool = True, loss_scale: float | None = None,
) -> TrainStep:
    """The whole optimizer step as one callable: ``loss = step(batch)``.

    ``precision``: ``auto`` (bf16 on CUDA, fp32 elsewhere) | ``bf16`` | ``fp32``; bf16 autocasts the
    convolutions and the head; the LSTM runs in the model's own ``lstm_dtype`` (``models.set_lstm_precision``;
    an fp16 LSTM gets a static loss scale, ``loss_scale`` None = automatic). ``grad_clip`` > 0 clips the
    global norm (foreach, no sync). ``cuda_graphs`` (CUDA, fused + capturable optimizer): capture the
    whole step after ``warmup`` eager calls. ``compile``: torch.compile the conv stem and head (CUDA).
    See the module docstring for the no-sync design and the CUDA-graph rules.
    """
    return TrainStep(model, loss_fn, optimizer, precision=precision, grad_clip=grad_clip,
                     cuda_graphs=cuda_graphs, compile=compile, warmup=warmup, protect_buffers=protect_buffers,
                     loss_scale=loss_scale)


def projected_seconds(ms_per_step: float, batch: int, windows: int) -> float:
    """Seconds for ``windows`` windows at ``ms_per_step`` per batch of ``batch``."""
    return math.ceil(windows / batch) * ms_per_step / 1000.0
