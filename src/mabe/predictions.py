"""The predictions file: per-frame probabilities of every track, one ``.npz`` (docs/design.md).

Keys (n = n_tracks, N = total frames, A = actions):

- ``probs`` float16 (N, A); track t is rows ``offsets[t]:offsets[t+1]`` and row - offsets[t] = video_frame
- ``offsets`` int64 (n + 1,), ``video_id`` int64 (n,), ``lab_id`` str (n,), ``agent_id`` int8 (n,),
  ``target_id`` int8 (n,) (== agent for a self behaviour), ``actions`` str (A,), ``labeled`` bool (n, A),
  ``fps`` float64 (n,), and optionally ``labels`` uint8 (N, A) (ground truth, for threshold fitting).

Strings are stored as fixed-width unicode arrays so that loading never needs pickle.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mabe.errors import MabeDataError
from mabe.io import atomic_path

__all__ = ["Predictions", "save", "load", "average", "concat", "validate"]

_REQUIRED = ("probs", "offsets", "video_id", "lab_id", "agent_id", "target_id", "actions", "labeled", "fps")
_PER_TRACK = ("video_id", "lab_id", "agent_id", "target_id", "fps")


@dataclass
class Predictions:
    """Per-frame probabilities of a set of tracks (see the module docstring for the layout)."""

    probs: np.ndarray
    offsets: np.ndarray
    video_id: np.ndarray
    lab_id: np.ndarray
    agent_id: np.ndarray
    target_id: np.ndarray
    actions: np.ndarray
    labeled: np.ndarray
    fps: np.ndarray
    labels: np.ndarray | None = None

    @property
    def n_tracks(self) -> int:
        return int(len(self.offsets) - 1)

    @property
    def n_frames(self) -> int:
        return int(self.offsets[-1])

    def track(self, t: int) -> tuple[np.ndarray, np.ndarray | None]:
        """``(probs (T, A), labels (T, A) or None)`` of track ``t`` (views, no copy)."""
        if not 0 <= t < self.n_tracks:
            raise IndexError(f"track {t} out of range (0..{self.n_tracks - 1})")
        a, b = int(self.offsets[t]), int(self.offsets[t + 1])
        return self.probs[a:b], (None if self.labels is None else self.labels[a:b])

    def track_length(self, t: int) -> int:
        return int(self.offsets[t + 1] - self.offsets[t])

    def save(self, path: str | Path) -> Path:
        return save(
            path, self.probs, self.offsets, self.video_id, self.lab_id, self.agent_id, self.target_id,
            self.actions, self.labeled, self.fps, labels=self.labels,
        )


def _as_arrays(
    probs, offsets, video_id, lab_id, agent_id, target_id, actions, labeled, fps, labels=None
) -> dict[str, np.ndarray]:
    out = {
        "probs": np.asarray(probs),
        "offsets": np.asarray(offsets),
        "video_id": np.asarray(video_id),
        "lab_id": np.asarray(lab_id),
        "agent_id": np.asarray(agent_id),
        "target_id": np.asarray(target_id),
        "actions": np.asarray(actions),
        "labeled": np.asarray(labeled),
        "fps": np.asarray(fps),
    }
    if labels is not None:
        out["labels"] = np.asarray(labels)
    return out


def _check_int(arr: np.ndarray, file: object, key: str) -> None:
    if arr.dtype.kind not in "iu":
        raise MabeDataError(file, key, "an integer array", f"dtype {arr.dtype}")


def validate(arrays: dict[str, np.ndarray], file: object = "<predictions>") -> Predictions:
    """Check shapes and dtypes; return a :class:`Predictions` with the binding dtypes.

    Raises :class:`MabeDataError` naming ``file`` and the offending key.
    """
    for key in _REQUIRED:
        if key not in arrays:
            raise MabeDataError(file, key, "this key in the predictions file", "it is missing")
    probs = arrays["probs"]
    if probs.ndim != 2 or probs.dtype.kind != "f":
        raise MabeDataError(file, "probs", "a 2-d float array (frames, actions)", f"{probs.dtype} {probs.shape}")
    n_frames, n_actions = probs.shape
    offsets = arrays["offsets"]
    _check_int(offsets, file, "offsets")
    if offsets.ndim != 1 or len(offsets) < 1:
        raise MabeDataError(file, "offsets", "a 1-d array of n_tracks + 1 values", f"shape {offsets.shape}")
    if offsets[0] != 0 or offsets[-1] != n_frames:
        raise MabeDataError(
            file, "offsets", f"to start at 0 and end at the number of probs rows ({n_frames})",
            f"{int(offsets[0])} .. {int(offsets[-1])}",
        )
    if np.any(np.diff(offsets) < 0):
        i = int(np.flatnonzero(np.diff(offsets) < 0)[0])
        raise MabeDataError(file, "offsets", "non-decreasing offsets", f"offsets[{i + 1}] < offsets[{i}]")
    n_tracks = len(offsets) - 1
    for key in _PER_TRACK:
        arr = arrays[key]
        if arr.shape != (n_tracks,):
            raise MabeDataError(file, key, f"shape ({n_tracks},) (one value per track)", f"shape {arr.shape}")
    for key in ("video_id", "agent_id", "target_id"):
        _check_int(arrays[key], file, key)
    if arrays["lab_id"].dtype.kind not in "UO":
        raise MabeDataError(file, "lab_id", "strings", f"dtype {arrays['lab_id'].dtype}")
    if arrays["fps"].dtype.kind not in "fiu":
        raise MabeDataError(file, "fps", "numbers", f"dtype {arrays['fps'].dtype}")
    actions = arrays["actions"]
    if actions.shape != (n_actions,) or actions.dtype.kind not in "UO":
        raise MabeDataError(
            file, "actions", f"{n_actions} action names (one per probs column)", f"{actions.dtype} {actions.shape}"
        )
    if len(set(actions.tolist())) != n_actions:
        raise MabeDataError(file, "actions", "distinct action names", list(actions))
    labeled = arrays["labeled"]
    if labeled.shape != (n_tracks, n_actions) or labeled.dtype.kind not in "biu":
        raise MabeDataError(file, "labeled", f"bool shape ({n_tracks}, {n_actions})", f"{labeled.dtype} {labeled.shape}")
    labels = arrays.get("labels")
    if labels is not None:
        if labels.shape != probs.shape or labels.dtype.kind not in "biu":
            raise MabeDataError(file, "labels", f"0/1 shape {probs.shape} like probs", f"{labels.dtype} {labels.shape}")
        labels = labels.astype(np.uint8, copy=False)
    return Predictions(
        probs=probs.astype(np.float16, copy=False),
        offsets=offsets.astype(np.int64, copy=False),
        video_id=arrays["video_id"].astype(np.int64, copy=False),
        lab_id=arrays["lab_id"].astype(str),
        agent_id=arrays["agent_id"].astype(np.int8, copy=False),
        target_id=arrays["target_id"].astype(np.int8, copy=False),
        actions=actions.astype(str),
        labeled=labeled.astype(bool, copy=False),
        fps=arrays["fps"].astype(np.float64, copy=False),
        labels=labels,
    )


def save(
    path: str | Path,
    probs,
    offsets,
    video_id,
    lab_id,
    agent_id,
    target_id,
    actions,
    labeled,
    fps,
    labels=None,
) -> Path:
    """Validate and write a predictions ``.npz`` (atomically: temp file, then rename)."""
    path = Path(path)
    preds = validate(
        _as_arrays(probs, offsets, video_id, lab_id, agent_id, target_id, actions, labeled, fps, labels), path
    )
    arrays = {
        "probs": preds.probs,
        "offsets": preds.offsets,
        "video_id": preds.video_id,
        "lab_id": np.asarray(preds.lab_id, dtype=str),
        "agent_id": preds.agent_id,
        "target_id": preds.target_id,
        "actions": np.asarray(preds.actions, dtype=str),
        "labeled": preds.labeled,
        "fps": preds.fps,
    }
    if preds.labels is not None:
        arrays["labels"] = preds.labels
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:  # a file object: savez would add ".npz" to a path
        np.savez(fh, **arrays)
    return path


def load(path: str | Path) -> Predictions:
    """Read and validate a predictions ``.npz``; :class:`MabeDataError` names the file and key."""
    path = Path(path)
    if not path.is_file():
        raise MabeDataError(path, None, "an existing predictions .npz file", "no such file")
    try:
        with np.load(path, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
    except (OSError, ValueError) as err:
        raise MabeDataError(path, None, "a numpy .npz archive", f"unreadable ({err})") from None
    return validate(arrays, path)


def average(preds: Sequence[Predictions], weights: Sequence[float] | None = None) -> Predictions:
    """Ensemble: the (weighted) mean of the probabilities of predictions over the same tracks.

    Every member must have the same tracks (offsets, video, lab, agent, target), the same action
    columns in the same order and the same ``labeled`` mask; otherwise :class:`MabeDataError` names
    the first member and key that differ. ``labels`` are taken from the first member that has them.
    """
    preds = list(preds)
    if not preds:
        raise ValueError("average() needs at least one Predictions")
    if weights is None:
        weights = [1.0] * len(preds)
    if len(weights) != len(preds) or any(w < 0 for w in weights) or sum(weights) <= 0:
        raise ValueError(f"weights must be {len(preds)} non-negative numbers with a positive sum, got {weights}")
    ref = preds[0]
    for i, p in enumerate(preds[1:], start=1):
        where = f"ensemble member {i}"
        for key in ("offsets", "video_id", "lab_id", "agent_id", "target_id", "actions", "labeled"):
            a, b = getattr(ref, key), getattr(p, key)
            if a.shape != b.shape or not np.array_equal(a, b):
                raise MabeDataError(where, key, f"the same {key} as member 0 (tracks and actions must align)",
                                    _first_difference(a, b))
    acc = np.zeros(ref.probs.shape, dtype=np.float32)
    for w, p in zip(weights, preds):
        acc += np.float32(w) * p.probs.astype(np.float32)
    acc /= np.float32(sum(weights))
    labels = next((p.labels for p in preds if p.labels is not None), None)
    return Predictions(
        probs=acc.astype(np.float16), offsets=ref.offsets.copy(), video_id=ref.video_id.copy(),
        lab_id=ref.lab_id.copy(), agent_id=ref.agent_id.copy(), target_id=ref.target_id.copy(),
        actions=ref.actions.copy(), labeled=ref.labeled.copy(), fps=ref.fps.copy(), labels=labels,
    )


def concat(preds: Sequence[Predictions]) -> Predictions:
    """Predictions of disjoint tracks with the same action columns -> one (tracks in the given order);
    ``labels`` kept only when every part has them. :class:`MabeDataError` for other columns or a repeated track."""
    preds = list(preds)
    if not preds:
        raise ValueError("concat() needs at least one Predictions")
    ref = preds[0]
    seen: set[tuple[str, int, int, int]] = set()
    for i, p in enumerate(preds):
        if not np.array_equal(p.actions, ref.actions):
            raise MabeDataError(f"part {i}", "actions", "the same action columns as part 0",
                                _first_difference(ref.actions, p.actions))
        keys = set(zip(p.lab_id.tolist(), p.video_id.tolist(), p.agent_id.tolist(), p.target_id.tolist()))
        if len(keys) < p.n_tracks or keys & seen:
            raise MabeDataError(f"part {i}", "tracks", "tracks no other part has", "a repeated (lab, video, agent, target)")
        seen |= keys
    offsets = np.concatenate([[0], np.cumsum([p.n_frames for p in preds])])
    starts = np.concatenate([p.offsets[:-1] + o for p, o in zip(preds, offsets[:-1])] + [offsets[-1:]])
    with_labels = all(p.labels is not None for p in preds)
    return Predictions(
        probs=np.concatenate([p.probs for p in preds]), offsets=starts.astype(np.int64),
        video_id=np.concatenate([p.video_id for p in preds]), lab_id=np.concatenate([p.lab_id for p in preds]),
        agent_id=np.concatenate([p.agent_id for p in preds]), target_id=np.concatenate([p.target_id for p in preds]),
        actions=ref.actions.copy(), labeled=np.concatenate([p.labeled for p in preds]),
        fps=np.concatenate([p.fps for p in preds]),
        labels=np.concatenate([p.labels for p in preds]) if with_labels else None,
    )


def _first_difference(a: np.ndarray, b: np.ndarray) -> str:
    if a.shape != b.shape:
        return f"shape {b.shape} instead of {a.shape}"
    idx = np.argwhere(a != b)[0]
    pos = tuple(int(i) for i in idx)
    return f"{b[pos]!r} instead of {a[pos]!r} at index {pos if len(pos) > 1 else pos[0]}"
