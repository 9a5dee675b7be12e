"""The compact position cache: what cannot be recomputed (positions, labels, metadata), ~10x smaller
than the float32 feature cache; the features are computed from it per batch (``mabe.features_torch``).

One folder per video, ``<cache>/videos/<lab>/<video_id>/``:

- ``xy.npy``  int16 (T, Mv, Sv, 2): arena-centred positions in units of ``meta.quantum_cm`` (a power
  of two, so decoding ``q * quantum`` is exact in any float format); ``MISSING`` (-32768) = not
  tracked. Only the video's Mv present mice (``meta.mice``, 1-based ids) and its Sv tracked slots
  (``meta.slots``, names) are stored; decoding expands to (T, n_mice, S, 2) with NaN elsewhere.
- ``intervals.npy`` int32 (n, 5): agent_id, target_id (1-based; target == agent for self), action
  (index into ``data.ACTIONS``), start_frame, stop_frame (exclusive), in video frames; only pairs of
  present mice (the others are dropped with a warning, as the feature cache does).
- ``labeled.npy`` int16 (k, 3): the (agent_id, target_id, action) triples of ``behaviors_labeled``.
- ``meta.json``: layout (``LAYOUT_VERSION``), lab, video, split, fps, n_frames, pix_per_cm,
  centre_px, quantum_cm, mice, slots, has_labels. Written last inside a hidden temporary folder that
  is then renamed into place: a folder with a ``meta.json`` is complete.

Precision. Positions are quantised to ``quantum_cm``: the smallest power of two (at least
``MIN_QUANTUM_CM``) that fits the video's largest |coordinate| into int16; for an arena within
+-64 cm of its centre that is 2^-9 cm = 0.002 cm (error <= 0.001 cm, plus ~1e-6 cm of float32 rounding
in the px -> cm conversion: 100x below tracker noise of ~0.1 cm), against float16's 2^-6..2^-5 cm
steps at 16..64 cm. Derivatives amplify the error by
fps per derivative: <= sqrt(2) * fps * quantum for speeds (0.08 cm/s at 30 fps) and <= 2 sqrt(2) *
fps^2 * quantum for accelerations (5 cm/s^2); tests/unit/test_poscache.py checks these bounds on the
features. Bytes a frame: Mv * Sv * 4 (2 mice x 18 slots: 144 B; 4 x 18: 288 B) plus labels.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from mabe.data import ACTIONS, MAX_MICE, MabeDataWarning, intervals_to_frames
from mabe.errors import MabeDataError, MabeError
from mabe.io import json_ready

__all__ = [
    "LAYOUT_VERSION",
    "MISSING",
    "MIN_QUANTUM_CM",
    "StaleCacheError",
    "quantum_for",
    "encode_positions",
    "decode_positions",
    "intervals_from_annotation",
    "write_video",
    "write_folder",
    "read_video",
    "PosVideo",
    "cache_layout",
    "check_layout",
    "folder_nbytes",
    "stack_codes",
]

# bump on any change to the files above; readers refuse other versions. 3: the first layout `mabe prepare`
# writes (meta.json records file sizes and the source fingerprint); 2 and 1 were the float32 feature cache
LAYOUT_VERSION = 3
MISSING = np.int16(-32768)  # the int16 code of a missing coordinate
MIN_QUANTUM_CM = 2.0**-12  # finest step (0.00024 cm): below it int16 would only encode tracker noise
_LIMIT = 32767
_TMP_PREFIX = ".tmp-"
FILES = ("xy.npy", "intervals.npy", "labeled.npy", "meta.json")


class StaleCacheError(MabeError):
    """A cache folder written by another layout version (or the old float32 feature cache)."""


# ----------------------------------------------------------------------------- positions


def quantum_for(max_abs_cm: float) -> float:
    """Largest |coordinate| (cm) -> the smallest power-of-two step (cm) that fits it into int16."""
    if not math.isfinite(max_abs_cm) or max_abs_cm <= 0:
        return MIN_QUANTUM_CM
    return max(MIN_QUANTUM_CM, 2.0 ** math.ceil(math.log2(max_abs_cm / _LIMIT)))


def encode_positions(
    xy_px: np.ndarray, mice: np.ndarray, pix_per_cm: float, centre_px: Sequence[float]
) -> tuple[np.ndarray, float, list[int], list[int]]:
    """(T, M, S, 2) px (NaN = missing), (M,) bool present mice -> int16 (T, Mv, Sv, 2) codes, quantum (cm),
    the stored mouse slots (0-based) and keypoint slots (indices): present mice, slots tracked in any frame."""
    if not (math.isfinite(pix_per_cm) and pix_per_cm > 0):
        raise ValueError(f"pix_per_cm must be a positive number, got {pix_per_cm}")
    xy_px = np.asarray(xy_px)
    m_idx = np.flatnonzero(np.asarray(mice, dtype=bool)).tolist()
    # a slot is tracked when some frame of a stored mouse has a coordinate of it: one mouse at a time,
    # reduced over frames (contiguous rows), without copying the grid
    T, S = xy_px.shape[0], xy_px.shape[2]
    tracked = np.zeros(S, bool)
    for m in m_idx:
        tracked |= ~np.isnan(xy_px[:, m]).reshape(T, S * 2).all(axis=0).reshape(S, 2).all(axis=1)
    s_idx = np.flatnonzero(tracked).tolist()
    # float32 in place, few passes (this is most of the writer's time): cm values below 2^15 steps keep
    # 8 spare bits of float32 mantissa, so the rounding to a step is the float64 one but for exact ties
    cm = xy_px[:, np.asarray(m_idx, np.int64)[:, None], np.asarray(s_idx, np.int64)[None, :]].astype(
        np.float32, copy=False)  # one fancy-index copy, already (T, Mv, Sv, 2)
    cm -= np.asarray(centre_px, dtype=np.float32)
    cm *= np.float32(1.0 / pix_per_cm)
    big = 0.0
    if cm.size:  # fmax / fmin skip NaN; two reductions, no |cm| temporary
        big = max(float(np.fmax.reduce(cm, axis=None, initial=-np.inf)),
                  -float(np.fmin.reduce(cm, axis=None, initial=np.inf)), 0.0)
    q = quantum_for(big)
    cm *= np.float32(1.0 / q)  # q is a power of two: exact
    np.rint(cm, out=cm)
    # |codes| <= 32767 after the scaling: MISSING (-32768) is only ever a missing point
    np.nan_to_num(cm, copy=False, nan=float(MISSING))
    return cm.astype(np.int16), q, m_idx, s_idx


def decode_positions(
    codes: np.ndarray, quantum: float, mice: Sequence[int], slot_idx: Sequence[int], n_mice: int, n_slots: int,
    dtype: Any = np.float32,
) -> np.ndarray:
    """int16 (T, Mv, Sv, 2) codes -> (T, n_mice, n_slots, 2) cm in ``dtype``, NaN where missing or not stored.
    ``mice`` / ``slot_idx``: where each stored mouse / slot goes (0-based); ones >= n_mice are left out."""
    T = codes.shape[0]
    out = np.full((T, n_mice, n_slots, 2), np.nan, dtype=dtype)
    keep = [i for i, m in enumerate(mice) if m < n_mice]
    if not keep or not len(slot_idx):
        return out
    raw = np.asarray(codes)[:, keep]
    vals = raw.astype(dtype) * np.asarray(quantum, dtype=dtype)
    vals[raw == MISSING] = np.nan
    out[:, np.asarray(mice)[keep][:, None], np.asarray(slot_idx)[None, :]] = vals
    return out


# ----------------------------------------------------------------------------- labels


def intervals_from_annotation(ann: pd.DataFrame, mice_ids: Sequence[int], where: str = "annotation") -> np.ndarray:
    """Validated annotation (data.read_annotation) -> int32 (n, 5) agent, target, action, start, stop of the
    intervals between present mice (1-based ids); the others are dropped with a warning naming them."""
    if not len(ann):
        return np.zeros((0, 5), dtype=np.int32)
    agent = ann["agent_id"].to_numpy(np.int64)
    target = ann["target_id"].to_numpy(np.int64)
    present = np.zeros(MAX_MICE + 1, dtype=bool)
    present[np.asarray(list(mice_ids), dtype=np.int64)] = True
    keep = present[agent] & present[target]
    if not keep.all():
        gone = pd.Series([f"({a},{t})" for a, t in zip(agent[~keep], target[~keep])]).value_counts()
        warnings.warn(f"{where}: {int((~keep).sum())} annotation interval(s) name mice absent from the tracking "
                      f"and are dropped: {', '.join(f'{k} x{v}' for k, v in gone.items())}", MabeDataWarning,
                      stacklevel=2)
    action = ann["action"].map({a: i for i, a in enumerate(ACTIONS)}).to_numpy(np.int64)
    out = np.stack([agent, target, action, ann["start_frame"].to_numpy(np.int64),
                    ann["stop_frame"].to_numpy(np.int64)], axis=1)[keep]
    return out.astype(np.int32)


# ----------------------------------------------------------------------------- writing


def write_folder(out: Path, arrays: dict[str, np.ndarray], meta: dict) -> dict:
    """Arrays as .npy + meta.json (last, with ``layout`` and ``files`` {name.npy: bytes}, which damage checks
    compare against) into a hidden sibling folder, then renamed onto ``out``; returns the meta written.
    The caller holds the video's lock (``mabe.prepare``): leftovers of killed writers are removed here."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    for stale in out.parent.glob(f"{_TMP_PREFIX}{out.name}-*"):
        shutil.rmtree(stale, ignore_errors=True)
    tmp = out.parent / f"{_TMP_PREFIX}{out.name}-{os.getpid()}"
    tmp.mkdir()
    try:
        files = {}
        for name, arr in arrays.items():
            np.save(tmp / f"{name}.npy", arr)
            files[f"{name}.npy"] = (tmp / f"{name}.npy").stat().st_size
        meta = {**meta, "layout": LAYOUT_VERSION, "files": files}
        (tmp / "meta.json").write_text(json.dumps(json_ready(meta), indent=1))  # last: the marker
        if out.exists():  # an incomplete folder (no meta.json), or one being rebuilt
            shutil.rmtree(out)
        os.rename(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return meta


def write_video(
    out: str | Path, *, xy_px: np.ndarray, mice: np.ndarray, slots: Sequence[str], fps: float, pix_per_cm: float,
    centre_px: Sequence[float], lab: str, video: Any, split: str, intervals: np.ndarray | None = None,
    labeled: Sequence[tuple[int, int, int]] | np.ndarray = (), has_labels: bool = False, extra: dict | None = None,
) -> dict:
    """One video's tracking (T, M, S, 2) px + labels -> its compact cache folder ``out``; returns its meta.

    ``mice`` (M,) bool: mouse slots present in the tracking file; ``intervals`` (n, 5) from
    ``intervals_from_annotation``; ``labeled`` (agent_id, target_id, action index) triples.
    """
    if len(slots) != xy_px.shape[2]:
        raise ValueError(f"{len(slots)} slot names for {xy_px.shape[2]} keypoint slots")
    codes, q, m_idx, s_idx = encode_positions(xy_px, mice, pix_per_cm, centre_px)
    iv = np.zeros((0, 5), np.int32) if intervals is None else np.asarray(intervals, dtype=np.int32).reshape(-1, 5)
    lab_arr = np.asarray(labeled, dtype=np.int16).reshape(-1, 3)
    meta = {
        "layout": LAYOUT_VERSION, "lab": str(lab), "video": video, "split": str(split), "fps": float(fps),
        "n_frames": int(xy_px.shape[0]), "pix_per_cm": float(pix_per_cm),
        "centre_px": [float(c) for c in centre_px], "quantum_cm": q, "mice": [m + 1 for m in m_idx],
        "slots": [str(slots[i]) for i in s_idx], "has_labels": bool(has_labels), **(extra or {}),
    }
    return write_folder(Path(out), {"xy": codes, "intervals": iv, "labeled": lab_arr}, meta)


# ----------------------------------------------------------------------------- reading


def check_layout(meta: dict, where: str | Path) -> None:
    """Raise StaleCacheError unless ``meta`` (a video's or a cache's) is of LAYOUT_VERSION."""
    got = meta.get("layout", 0)
    if got != LAYOUT_VERSION:
        old = f"the float32 feature cache (layout {got})" if got in (0, 1, 2) else f"cache layout {got}"
        raise StaleCacheError(f"{where}: written as {old}; this mabe reads position-cache layout {LAYOUT_VERSION}. "
                              "Rebuild it: delete that folder and run `mabe prepare` again")


def cache_layout(cache_dir: str | Path) -> int:
    """A cache folder -> its layout version: 0 for the float32 feature cache (scene.npy per video)."""
    cfg = Path(cache_dir) / "config.json"
    if cfg.is_file():
        return int(json.loads(cfg.read_text()).get("layout", 0))
    first = next(iter(sorted(Path(cache_dir).glob("videos/*/*/meta.json"))), None)
    return int(json.loads(first.read_text()).get("layout", 0)) if first else 0


@dataclass
class PosVideo:
    """One video of the position cache: codes (memory-mapped), labels and meta."""

    folder: Path
    meta: dict
    xy: np.ndarray  # int16 (T, Mv, Sv, 2)
    intervals: np.ndarray  # int32 (n, 5)
    labeled: np.ndarray  # int16 (k, 3)

    @property
    def n_frames(self) -> int:
        return int(self.meta["n_frames"])

    @property
    def pairs(self) -> list[tuple[int, int]]:
        """Ordered (agent_id, target_id) pairs of present mice, self included (1-based), as the feature cache."""
        return [(a, t) for a in self.meta["mice"] for t in self.meta["mice"]]

    def positions(self, slots: Sequence[str], n_mice: int = MAX_MICE, dtype: Any = np.float32,
                  arena_centre: bool = True) -> np.ndarray:
        """(T, n_mice, len(slots), 2) cm, arena-centred unless ``arena_centre`` is False; NaN where missing."""
        col = {s: i for i, s in enumerate(slots)}
        stored = [col.get(s, -1) for s in self.meta["slots"]]
        take = [i for i, c in enumerate(stored) if c >= 0]
        codes = np.asarray(self.xy)[:, :, take]
        out = decode_positions(codes, self.meta["quantum_cm"], [m - 1 for m in self.meta["mice"]],
                               [stored[i] for i in take], n_mice, len(slots), dtype)
        if not arena_centre:
            out += (np.asarray(self.meta["centre_px"]) / self.meta["pix_per_cm"]).astype(dtype)
        return out

    def frame_labels(self, pairs: Sequence[tuple[int, int]] | None = None, actions: Sequence[str] = ACTIONS,
                     frames: np.ndarray | None = None) -> np.ndarray:
        """uint8 (n_pairs, T, A) per-frame labels of ``pairs`` (default: all) at video frames ``frames`` (all)."""
        pairs = self.pairs if pairs is None else list(pairs)
        iv = np.asarray(self.intervals)
        ann = pd.DataFrame({"agent_id": iv[:, 0], "target_id": iv[:, 1],
                            "action": np.asarray(ACTIONS, dtype=object)[iv[:, 2]] if len(iv) else [],
                            "start_frame": iv[:, 3], "stop_frame": iv[:, 4]})
        lab = intervals_to_frames(ann, self.n_frames, pairs, tuple(actions), where=str(self.folder))
        return lab if frames is None else np.ascontiguousarray(lab[:, frames])

    def labeled_mask(self, pairs: Sequence[tuple[int, int]] | None = None, actions: Sequence[str] = ACTIONS
                     ) -> np.ndarray:
        """bool (n_pairs, A): the pair's actions listed in behaviors_labeled."""
        pairs = self.pairs if pairs is None else list(pairs)
        row = {p: i for i, p in enumerate(pairs)}
        col = {ACTIONS.index(a): j for j, a in enumerate(actions)}
        out = np.zeros((len(pairs), len(actions)), dtype=bool)
        for a, t, act in np.asarray(self.labeled).tolist():
            if (a, t) in row and act in col:
                out[row[(a, t)], col[act]] = True
        return out


def read_video(folder: str | Path, mmap: bool = True) -> PosVideo:
    """A video folder of the position cache -> PosVideo; StaleCacheError for another layout, MabeDataError
    naming the file when an array does not match its meta."""
    folder = Path(folder)
    meta_path = folder / "meta.json"
    if not meta_path.is_file():
        raise MabeError(f"{folder}: no complete cached video there (no meta.json); run `mabe prepare`")
    meta = json.loads(meta_path.read_text())
    check_layout(meta, folder)
    if (folder / "scene.npy").is_file():  # pragma: no cover - a layout-0 folder that claims layout 1
        raise StaleCacheError(f"{folder}: holds scene.npy of the float32 feature cache; rebuild it")
    mode = "r" if mmap else None
    xy = np.load(folder / "xy.npy", mmap_mode=mode)
    want = (meta["n_frames"], len(meta["mice"]), len(meta["slots"]), 2)
    if xy.dtype != np.int16 or xy.shape != want:
        raise MabeDataError(folder / "xy.npy", None, f"int16 {want} (meta.json)", f"{xy.dtype} {xy.shape}")
    iv = np.load(folder / "intervals.npy")
    lab = np.load(folder / "labeled.npy")
    if iv.ndim != 2 or iv.shape[1] != 5 or (len(iv) and not ((iv[:, 2] >= 0) & (iv[:, 2] < len(ACTIONS))).all()):
        raise MabeDataError(folder / "intervals.npy", None, f"(n, 5) intervals with actions in 0..{len(ACTIONS) - 1}",
                            f"shape {iv.shape}")
    return PosVideo(folder, meta, xy, iv, lab)


def folder_nbytes(folder: str | Path) -> int:
    """Bytes on disk of every file under ``folder`` (apparent size)."""
    return sum(p.stat().st_size for p in Path(folder).rglob("*") if p.is_file())


def stack_codes(videos: Sequence[PosVideo], slots: Sequence[str], n_mice: int = MAX_MICE
                ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Videos -> one flat int16 store (N, n_mice, len(slots), 2) of their codes (MISSING where a mouse or slot
    is not stored), offsets (V + 1,) int64 and quantum (V,) float64: what a device-resident store holds
    (``features_torch.window_features`` decodes it per batch)."""
    col = {s: i for i, s in enumerate(slots)}
    lengths = [v.n_frames for v in videos]
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    out = np.full((int(offsets[-1]), n_mice, len(slots), 2), MISSING, dtype=np.int16)
    for v, lo, hi in zip(videos, offsets[:-1], offsets[1:]):
        stored = [(i, col[s]) for i, s in enumerate(v.meta["slots"]) if s in col]
        mice = [(i, m - 1) for i, m in enumerate(v.meta["mice"]) if m - 1 < n_mice]
        if not stored or not mice:
            continue
        src = np.asarray(v.xy)[:, [i for i, _ in mice]][:, :, [i for i, _ in stored]]
        out[lo:hi, np.array([m for _, m in mice])[:, None], np.array([c for _, c in stored])[None, :]] = src
    quantum = np.array([v.meta["quantum_cm"] for v in videos], dtype=np.float64)
    return out, offsets, quantum
