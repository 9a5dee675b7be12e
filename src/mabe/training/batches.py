"""The batch source: the micro-batches of an epoch, from the resident store or a DataLoader.

    DeviceStore(ts, device, storage)   tracks resident on the device, bytes reported; pinned-memory
                                       streaming when they will not fit. PositionTracks (the cache's):
                                       int16 positions, features computed per batch on the device;
                                       a TrackSet (a feature matrix): bf16/fp16/fp32 features
    Batches(ts, windows, ...)          the epoch plan (windows, jitter, DDP shares) -> batches on the device

Both sources yield the same batches; the resident one is all torch ops (no host work per step).
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch

from mabe.config import Config
from mabe.postracks import PositionTracks
from mabe.training.augment import position_augment, positions_on
from mabe.training.device import resolve_precision
from mabe.windows import TrackSet, WindowDataset, epoch_plan

__all__ = ["resolve_storage_dtype", "DeviceStore", "Batches", "format_bytes"]

GiB = 1 << 30
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
    - CPU: X's own dtype, float32 or float16 (``PositionTracks.to_trackset``'s): a zero-copy view;
    - CUDA with fp32 compute: float32 (exact);
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
    if device.type != "cuda":
        return torch.float16 if X.dtype == np.float16 else torch.float32
    if resolve_precision(precision, device) != "bf16":
        return torch.float32
    return torch.float16 if _absmax(X) <= _FP16_MAX else torch.bfloat16


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
        self, ts: TrackSet | PositionTracks, device: torch.device | str, storage: str = "auto", *,
        precision: str = "auto", headroom: int | None = None, max_bytes: int | None = None, chunk_rows: int = 1 << 18,
    ):
        self.device = torch.device(device)
        self.mode = ts.mode
        self.ts = ts
        if isinstance(ts, PositionTracks):
            self._positions(ts, storage, headroom, max_bytes)
            return
        self.n_rows, self.n_features = ts.X.shape
        self.dtype = resolve_storage_dtype(storage, ts.X, self.device, precision)
        itemsize = torch.empty((), dtype=self.dtype).element_size()
        side = {"Y": ts.Y.nbytes, "offsets": ts.offsets.nbytes, "label_mask": ts.label_mask.nbytes}
        self.nbytes = {"X": ts.X.size * itemsize, **side}
        self.nbytes["total"] = sum(self.nbytes.values())
        self.nbytes["fp32_total"] = ts.X.size * 4 + sum(side.values())
        self.max_abs_error = float(ts.stored_error)  # X's own rounding (float16 when computed), if any
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
            self.arrays = ts.tensors("cpu")  # X in its own dtype; each batch cast below
            self.max_abs_error += self._roundtrip_error_host(ts.X, chunk_rows)  # after X's own: a bound
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
    def _positions(self, ts: PositionTracks, storage: str, headroom: int | None, max_bytes: int | None) -> None:
        """The position store: int16 positions + labels where the step runs; each batch's features computed
        in float32 and handed over in ``storage`` (auto: float32; the features are no longer stored)."""
        self.n_rows, self.n_features = ts.n_rows, ts.n_features
        if storage != "auto" and storage not in _STORAGE:
            raise ValueError(f"storage dtype must be auto or one of {list(_STORAGE)}, got {storage!r}")
        self.dtype = torch.float32 if storage == "auto" else _STORAGE[storage]
        self.max_abs_error = 0.0
        nb = ts.nbytes
        self.nbytes = {"X": nb["store"], "Y": nb["Y"], "other": nb["other"], "total": nb["total"],
                       "fp32_total": nb["features_fp32"] + nb["Y"] + nb["other"]}
        room = _room(self.device, headroom, max_bytes)
        self.resident = room is None or nb["total"] <= room
        if self.resident:
            self.arrays = ts.tensors(self.device)
            where = f"resident on {self.device}"
        else:
            self.arrays = ts.tensors("cpu")
            where = "streamed from pinned host memory"
            warnings.warn(
                f"training positions ({format_bytes(nb['total'])}) do not fit in {format_bytes(max(room, 0))} "
                f"on {self.device}: computing each batch's features on the CPU and copying them (slower).",
                stacklevel=3,
            )
        self.message = (
            f"data {where}: {format_bytes(nb['total'])} (int16 positions of {ts.store.shape[0]:,} video frames + "
            f"labels; {_name(self.dtype)} features computed per batch; stored float32 features would take "
            f"{format_bytes(self.nbytes['fp32_total'])})"
        )

    def _upload(self, ts: TrackSet, chunk_rows: int) -> dict:
        dev, dt = self.device, self.dtype
        if dev.type == "cpu" and torch.from_numpy(ts.X[:0]).dtype == dt:  # X's own dtype
            return ts.tensors("cpu")  # zero copy
        X = torch.empty((self.n_rows, self.n_features), dtype=dt, device=dev)
        err = torch.zeros((), dtype=torch.float32, device=dev)
        for i in range(0, self.n_rows, chunk_rows):
            src = torch.from_numpy(np.ascontiguousarray(ts.X[i : i + chunk_rows])).to(dev).float()  # a chunk
            X[i : i + chunk_rows] = src  # cast to the storage dtype
            if dt != torch.float32:
                d = (X[i : i + chunk_rows].float() - src).abs()
                err = torch.maximum(err, torch.where(torch.isfinite(d), d, 0.0).max())
        self.max_abs_error += float(err)  # one sync, at construction; after X's own rounding: a bound
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

    def batch(self, windows: Any, length: int, shift: Any = None, augment: Any = None) -> dict[str, torch.Tensor]:
        """``windows.gather`` of (B, 2) ``(track, start)`` windows and optional (B,) start shifts ->
        batch tensors on the training device (x in the storage dtype; cast it with the augmentation).
        ``augment``: the micro-batch's ``PositionAugment`` (PositionTracks only: it acts on positions).

        Pass indices already on ``index_device`` (e.g. an epoch's plan uploaded once and sliced per
        step): numpy indices for a resident store cost a copy from pageable memory, which waits for
        the stream - a host sync.
        """
        idx = self.index_device
        w = torch.as_tensor(windows, dtype=torch.int64).to(idx, non_blocking=True)
        s = None if shift is None else torch.as_tensor(shift, dtype=torch.int64).to(idx, non_blocking=True)
        if augment is None:
            b = self.ts.batch(self.arrays, w, length, s)
        elif isinstance(self.ts, PositionTracks):
            b = self.ts.batch(self.arrays, w, length, s, augment)
        else:
            raise ValueError("geometric augmentation acts on positions: a feature matrix (TrackSet) has none")
        if isinstance(self.ts, PositionTracks) and b["x"].dtype != self.dtype:
            b["x"] = b["x"].to(self.dtype)
        if self.resident:
            return b
        b["x"] = b["x"].to(self.dtype)
        pin = self.device.type == "cuda"
        return {k: (v.pin_memory() if pin else v).to(self.device, non_blocking=pin) for k, v in b.items()}


def _room(device: torch.device, headroom: int | None, max_bytes: int | None) -> int | None:
    """Bytes a resident store may take on ``device`` (None: no limit, the CPU without ``max_bytes``)."""
    if device.type == "cuda":
        free, total = torch.cuda.mem_get_info(device)
        room = free - (headroom if headroom is not None else max(4 * GiB, int(0.2 * total)))
        return room if max_bytes is None else min(room, max_bytes)
    return max_bytes


def _name(dtype: torch.dtype) -> str:
    return str(dtype).replace("torch.", "")



class Batches:
    """The micro-batches of an epoch, from one of two sources that yield the same batches:

    - resident (``data_path`` gpu, and the in-process default on CPU): ``DeviceStore``, the whole
      TrackSet on the training device (``train.storage_dtype``); a batch is ``gather`` over window
      indices, all torch ops, no copies. When it does not fit in GPU memory the store says so and
      streams each batch through pinned host memory instead;
    - loader (the reference): a ``DataLoader`` with ``num_workers`` processes, numpy gather per window.
    """

    def __init__(
        self, ts: TrackSet | PositionTracks, windows: np.ndarray, weights: np.ndarray | None, cfg: Config,
        device: torch.device,
        path: str, n_draw: int, rank: int = 0, world: int = 1,
    ):
        self.ts, self.windows, self.weights, self.cfg, self.device = ts, windows, weights, cfg, device
        self.path, self.n_draw, self.rank, self.world = path, n_draw, rank, world
        self.length = cfg.windows.sequence_length
        self.batch_size = cfg.train.batch_size
        if path == "resident":
            self.store = DeviceStore(ts, device, cfg.train.storage_dtype, precision=cfg.train.precision)
            self.windows_t = torch.from_numpy(windows).to(self.store.index_device)
        else:
            self.dataset = WindowDataset(ts, self.length, cfg.train.batch_size)

    def plan(self, epoch: int) -> tuple[np.ndarray, np.ndarray]:
        """This rank's share of the epoch's windows and shifts (every rank computes the same plan)."""
        order, shift = epoch_plan(len(self.windows), self.n_draw, epoch, self.cfg.train.seed, self.weights,
                                  self.cfg.augment.temporal_jitter)
        # DDP: rank r takes windows r, r + world, ... so micro-batch j of all ranks together is windows
        # [j * B * world, (j + 1) * B * world) of the plan, as for one process with batch B * world.
        # The plan is cut to a multiple of world first: equal shares, hence the same number of steps
        # on every rank (one extra step on one rank would hang the others in its all-reduce).
        n = len(order) - len(order) % self.world
        return order[self.rank : n : self.world], shift[self.rank : n : self.world]

    def n_micro(self, epoch: int) -> int:
        """Micro-batches per epoch: full batches only (a last partial one is dropped), at least one."""
        n = len(self.plan(epoch)[0])
        return max(n // self.batch_size, 1)

    def epoch(self, epoch: int, start: int = 0) -> Iterator[tuple[int, dict]]:
        """Yield ``(j, batch)`` for micro-batches ``start ..`` of ``epoch``, batch tensors on the device."""
        order, shift = self.plan(epoch)
        B, n_micro = self.batch_size, max(len(order) // self.batch_size, 1)
        end = min(n_micro * B, len(order))
        if self.path == "resident":
            idx = self.store.index_device  # the device, or the CPU when the store streams
            o = torch.from_numpy(order[:end]).to(idx)
            s = torch.from_numpy(shift[:end]).to(idx)
            aug, seed = self.cfg.augment, self.cfg.train.seed
            slots = getattr(self.ts, "slots", ())
            for j in range(start, n_micro):
                sl = slice(j * B, (j + 1) * B)
                pos = position_augment(aug, slots, seed, self.rank, epoch, j)  # None when off
                yield j, self.store.batch(self.windows_t[o[sl]], self.length, s[sl], pos)
            return
        if positions_on(self.cfg.augment):
            raise ValueError("geometric augmentation (augment.rotate_degrees, reflect, time_stretch, "
                             "keypoint_dropout) runs in the resident path only, not train.data_path=loader")
        self.dataset.set_plan(self.windows[order[start * B : end]], shift[start * B : end])
        loader = torch.utils.data.DataLoader(  # one item = one batch: features computed batch-wise
            self.dataset, batch_size=None, shuffle=False, num_workers=self.cfg.train.num_workers,
            pin_memory=self.device.type == "cuda", drop_last=False,
            generator=torch.Generator().manual_seed(epoch),  # else it draws a seed from the global RNG
        )
        for j, b in enumerate(loader, start=start):
            yield j, {k: v.to(self.device, non_blocking=True) for k, v in b.items()}
