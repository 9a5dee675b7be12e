"""Pair features of the cache -> per-frame tabular features for gradient-boosted trees, pure numpy.

Trees see one frame at a time, so every feature carries its own temporal context: multi-scale
rolling statistics in *seconds* (the window in frames is ``round(seconds * fps)``, so a 10 fps and a
120 fps lab get the same context), past-only and future-only means (a behaviour is often preceded by
an approach and followed by a retreat), and distances in body lengths as well as centimetres (labs
differ in mouse size and in ``pix_per_cm`` precision). Rows stay the video's own frames: no
resampling, no mapping back.

Input: one track's pair vector ``(T, P)`` from ``features.all_pair_features`` (agent-centric cm,
cm/s; ``features.pair_feature_names`` gives the columns). Output: ``(T, F)`` float32 with NaN where
the input is missing (LightGBM routes NaN natively). ``feature_names(slots)`` names the columns.

Rolling statistics are cumulative sums over NaN-zeroed values with a count of present frames, so a
window's mean is over the frames that exist; a window with no present frame is NaN.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from mabe.features import SCALAR_NAMES, pair_feature_names

__all__ = [
    "BASE_NAMES",
    "ROLL_CHANNELS",
    "MEAN_SECONDS",
    "STD_SECONDS",
    "SIDE_SECONDS",
    "base_features",
    "rolling",
    "track_features",
    "feature_names",
    "body_length_scale",
]

# what each base channel means is in base_features; "bl" = body lengths (the video's median agent length)
BASE_NAMES: tuple[str, ...] = (
    "d_nose_nose", "d_nose_tail", "d_nose_body", "d_body_body", "d_tail_nose", "d_min_parts",
    "d_nose_nose_bl", "d_nose_tail_bl", "d_body_body_bl", "d_min_parts_bl",
    "agent_speed", "target_speed", "agent_speed_bl", "target_speed_bl", "rel_speed",
    "heading_cos", "heading_sin", "bearing_cos", "bearing_sin",
    "target_x_bl", "target_y_bl", "agent_len_rel", "agent_len_rate",
    "agent_acc", "target_acc", "turn_rate",
    "agent_spread_x_bl", "agent_spread_y_bl", "target_spread_bl", "is_self",
)
# channels that get rolling statistics (the slow-moving, informative ones; not the constant is_self)
ROLL_CHANNELS: tuple[str, ...] = (
    "d_nose_nose_bl", "d_nose_tail_bl", "d_body_body_bl", "d_min_parts_bl",
    "agent_speed_bl", "target_speed_bl", "rel_speed", "heading_cos", "bearing_cos",
    "target_x_bl", "target_y_bl", "agent_len_rel", "agent_acc", "turn_rate",
    "agent_spread_x_bl", "agent_spread_y_bl",
)
MEAN_SECONDS: tuple[float, ...] = (0.2, 0.5, 1.0, 2.0, 4.0)  # centred means
STD_SECONDS: tuple[float, ...] = (0.5, 2.0)  # centred standard deviations
SIDE_SECONDS: tuple[float, ...] = (1.0, 3.0)  # past-only and future-only means, as a difference to now
_ROLL_IDX = np.array([BASE_NAMES.index(c) for c in ROLL_CHANNELS])
_EPS = 1e-6


def body_length_scale(body_length: np.ndarray) -> float:
    """Median agent body length (cm) over a track's frames; 1.0 when it was never measured."""
    bl = np.asarray(body_length, dtype=np.float64)
    bl = bl[np.isfinite(bl) & (bl > _EPS)]
    return float(np.median(bl)) if len(bl) else 1.0


def _nanstd_coords(c: np.ndarray) -> np.ndarray:
    """(T, S) coordinates with NaN -> (T,) spread over the present slots (NaN when fewer than 2)."""
    ok = np.isfinite(c)
    n = ok.sum(1)
    z = np.where(ok, c, 0.0)
    mean = z.sum(1) / np.maximum(n, 1)
    var = (np.where(ok, (c - mean[:, None]) ** 2, 0.0)).sum(1) / np.maximum(n, 1)
    return np.where(n >= 2, np.sqrt(var), np.nan)


def base_features(pair: np.ndarray, slots: Sequence[str]) -> np.ndarray:
    """One track's pair vector (T, 4S + 18) -> (T, len(BASE_NAMES)) float32 per-frame features."""
    pair = np.asarray(pair, dtype=np.float32)
    S = len(slots)
    if pair.ndim != 2 or pair.shape[1] != len(pair_feature_names(slots)):
        raise ValueError(f"pair vector must be (T, {4 * S + len(SCALAR_NAMES)}) for {S} slots, got {pair.shape}")
    T = pair.shape[0]
    sc = {name: pair[:, 4 * S + i] for i, name in enumerate(SCALAR_NAMES)}
    ax, ay = pair[:, 0:2 * S:2], pair[:, 1:2 * S:2]  # (T, S) agent parts, agent frame
    tx, ty = pair[:, 2 * S:4 * S:2], pair[:, 2 * S + 1:4 * S:2]
    bl = np.float32(body_length_scale(sc["agent.body_length"]))
    # closest approach of any agent part to any target part: contact without knowing which parts a lab tracks
    with np.errstate(invalid="ignore"):
        dmin = np.full(T, np.nan, dtype=np.float32)
        for s in range(S):  # S iterations of a (T, S) array: vectorised over frames
            d = np.hypot(ax[:, s:s + 1] - tx, ay[:, s:s + 1] - ty)
            d = np.where(np.isfinite(d), d, np.inf).min(1)
            dmin = np.fmin(dmin, np.where(np.isfinite(d), d, np.nan))
        ok_t = np.isfinite(tx)
        n_t = np.maximum(ok_t.sum(1), 1)
        cx = np.where(ok_t, tx, 0).sum(1) / n_t
        cy = np.where(ok_t, ty, 0).sum(1) / n_t
        cx[ok_t.sum(1) == 0] = np.nan
        cy[ok_t.sum(1) == 0] = np.nan
    cols = {
        "d_nose_nose": sc["dist.nose_nose"], "d_nose_tail": sc["dist.nose_tailbase"],
        "d_nose_body": sc["dist.nose_body"], "d_body_body": sc["dist.body_body"],
        "d_tail_nose": sc["dist.tailbase_nose"], "d_min_parts": dmin,
        "d_nose_nose_bl": sc["dist.nose_nose"] / bl, "d_nose_tail_bl": sc["dist.nose_tailbase"] / bl,
        "d_body_body_bl": sc["dist.body_body"] / bl, "d_min_parts_bl": dmin / bl,
        "agent_speed": sc["agent.speed"], "target_speed": sc["target.speed"],
        "agent_speed_bl": sc["agent.speed"] / bl, "target_speed_bl": sc["target.speed"] / bl,
        "rel_speed": sc["rel.speed"] / bl,
        "heading_cos": sc["rel.heading_cos"], "heading_sin": sc["rel.heading_sin"],
        "bearing_cos": sc["bearing.cos"], "bearing_sin": sc["bearing.sin"],
        "target_x_bl": cx / bl, "target_y_bl": cy / bl,
        "agent_len_rel": sc["agent.body_length"] / bl, "agent_len_rate": sc["agent.body_length_rate"] / bl,
        "agent_acc": sc["agent.acc"] / bl, "target_acc": sc["target.acc"] / bl,
        "turn_rate": sc["agent.turn_rate"],
        "agent_spread_x_bl": _nanstd_coords(ax) / bl, "agent_spread_y_bl": _nanstd_coords(ay) / bl,
        "target_spread_bl": np.sqrt(_nanstd_coords(tx) ** 2 + _nanstd_coords(ty) ** 2) / bl,
        "is_self": sc["is_self"],
    }
    out = np.empty((T, len(BASE_NAMES)), dtype=np.float32)
    for j, name in enumerate(BASE_NAMES):
        out[:, j] = cols[name]
    return out


def rolling(x: np.ndarray, window: int, kind: str = "centre") -> tuple[np.ndarray, np.ndarray]:
    """(T, C) with NaN -> (mean, std) (T, C) float32 over a window of ``window`` frames.

    ``kind``: ``centre`` (frames t - (w-1)//2 .. t + w//2), ``past`` (t - w + 1 .. t) or ``future``
    (t .. t + w - 1), clipped to the track; statistics over the present frames, NaN where none is.
    """
    x = np.asarray(x, dtype=np.float64)
    T = len(x)
    w = max(int(window), 1)
    ok = np.isfinite(x)
    z = np.where(ok, x, 0.0)
    cs = np.zeros((T + 1,) + x.shape[1:])
    cq = np.zeros_like(cs)
    cn = np.zeros_like(cs)
    np.cumsum(z, axis=0, out=cs[1:])
    np.cumsum(z * z, axis=0, out=cq[1:])
    np.cumsum(ok, axis=0, out=cn[1:])
    t = np.arange(T)
    if kind == "centre":
        lo, hi = t - (w - 1) // 2, t + w // 2 + 1
    elif kind == "past":
        lo, hi = t - w + 1, t + 1
    elif kind == "future":
        lo, hi = t, t + w
    else:
        raise ValueError(f"kind must be centre, past or future, got {kind!r}")
    lo, hi = np.clip(lo, 0, T), np.clip(hi, 0, T)
    n = cn[hi] - cn[lo]
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = (cs[hi] - cs[lo]) / n
        var = (cq[hi] - cq[lo]) / n - mean * mean
    std = np.sqrt(np.maximum(var, 0.0))
    return mean.astype(np.float32), std.astype(np.float32)


def _frames(seconds: float, fps: float) -> int:
    return max(int(round(seconds * fps)), 1)


def track_features(pair: np.ndarray, fps: float, slots: Sequence[str]) -> np.ndarray:
    """One track's pair vector (T, P) at ``fps`` -> (T, F) float32 tabular features (``feature_names``)."""
    base = base_features(pair, slots)
    r = base[:, _ROLL_IDX]
    blocks = [base]
    for s in MEAN_SECONDS:
        blocks.append(rolling(r, _frames(s, fps))[0])
    for s in STD_SECONDS:
        blocks.append(rolling(r, _frames(s, fps))[1])
    for s in SIDE_SECONDS:
        blocks.append(rolling(r, _frames(s, fps), "past")[0] - r)
        blocks.append(rolling(r, _frames(s, fps), "future")[0] - r)
    return np.concatenate(blocks, axis=1)


def feature_names() -> list[str]:
    """Column names of :func:`track_features`, in order."""
    names = list(BASE_NAMES)
    names += [f"{c}.mean{s:g}s" for s in MEAN_SECONDS for c in ROLL_CHANNELS]
    names += [f"{c}.std{s:g}s" for s in STD_SECONDS for c in ROLL_CHANNELS]
    for s in SIDE_SECONDS:
        names += [f"{c}.past{s:g}s" for c in ROLL_CHANNELS]
        names += [f"{c}.future{s:g}s" for c in ROLL_CHANNELS]
    return names
