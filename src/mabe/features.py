"""Pose tracking -> per-frame motion features: small pure numpy functions, vectorised over time.

Shapes: ``T`` frames, ``M`` mouse slots, ``S`` keypoint slots, last axis ``(x, y)``. Positions are in
pixels (``_px``) or centimetres (``_cm``), time derivatives in cm/s and cm/s^2. Missing values are NaN
and stay NaN (NaN in, NaN out) except where a function says it fills them.

Scene vector (``scene_features``), per frame, in this order (``scene_feature_names``):
``n_mice * S * 2`` positions (mouse, slot, x/y), then ``n_mice * S`` speeds, then ``n_mice * S``
accelerations; 4 x 18 -> 144 + 72 + 72 = 288. Positions are arena-centred cm with gaps of up to
``max_gap`` frames linearly interpolated (longer gaps and the edges stay NaN); ``smooth_window`` > 1
smooths the positions that are differentiated, not the positions stored.

Pair vector (``pair_features``) for an ordered (agent, target), in the agent's frame of reference
(origin at the agent's body centre, +x along its heading); see ``pair_feature_names``:

==========================  =====  ==========================================================
block                       size   meaning
==========================  =====  ==========================================================
agent.<slot>.x/y            2S     agent keypoints, agent-centric, cm
target.<slot>.x/y           2S     target keypoints, agent-centric, cm
dist.*                      5      nose-nose, nose-tail_base, nose-body, body-body,
                                   tail_base-nose (agent part first), cm
agent.speed, target.speed   2      body-centre speed, cm/s
rel.speed                   1      d/dt of the body-body distance, cm/s (< 0: closing in)
rel.heading_cos/sin         2      angle from the agent's heading to the target's
bearing.cos/sin             2      direction of the target's body centre seen from the agent
                                   ((0, 0) when the centres coincide, e.g. a self track)
agent.body_length(_rate)    2      agent nose - tail_base distance (cm) and its d/dt (cm/s)
agent.acc, target.acc       2      body-centre acceleration magnitude, cm/s^2
agent.turn_rate             1      d/dt of the agent's heading angle, rad/s (+ = counter-clockwise)
is_self                     1      1 for a self track (agent == target), else 0
==========================  =====  ==========================================================

P = 4 S + 18 (90 for the 18 default slots). A self track keeps the same layout: its target block
duplicates the agent's, nose-nose and body-body are 0 (the other distances are the agent's own body
measures), heading is (1, 0), bearing (0, 0) and ``is_self`` is 1.

Named parts fall back when a video does not track them (MARS tracks 7 parts, some labs 4):
the "nose" is the first present of nose, head, headpiece, the ears' mean, neck; the "tail_base" is
tail_base, the hips' mean, spine_2; the body centre is body_center, else the mean of the mid-body
parts (spine_1, spine_2, lateral_left, lateral_right), else the midpoint of a shoulder point (neck,
else the ears' mean, head, headpiece, nose) and a hip point (the hips' mean, else tail_base), else
the mean of every non-tail part. The midpoint keeps the centre mid-body for labs with only head
and tail-base parts (4-5 part labs): a mean of whatever torso parts exist would sit on the tail
base there. Fallbacks apply frame by frame.

Derivatives are central differences (np.gradient with spacing 1/fps), one-sided next to a missing
frame and at the ends; a missing value gives a missing derivative. Acceleration is the magnitude of the second derivative of position (|d^2 x / dt^2|, computed as the
central difference of the central-difference velocity), not the derivative of speed: it is
rotation-invariant and non-zero when a mouse turns at constant speed.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from mabe.config import FeatureConfig

__all__ = [
    "to_cm",
    "interpolate_gaps",
    "moving_average",
    "time_derivative",
    "velocity",
    "speed",
    "acceleration",
    "resample",
    "resample_positions",
    "nearest_frames",
    "clean_positions",
    "pad_mice",
    "scene_from_cm",
    "scene_features",
    "scene_feature_names",
    "mouse_kinematics",
    "pair_features",
    "all_pair_features",
    "pair_feature_names",
    "n_pair_features",
]

_EPS = 1e-6
_TIME_CHUNK = 2048  # frames per block in the memory-bound derivative step (cache-sized)

DIST_NAMES: tuple[str, ...] = (
    "dist.nose_nose", "dist.nose_tailbase", "dist.nose_body", "dist.body_body", "dist.tailbase_nose",
)
SCALAR_NAMES: tuple[str, ...] = DIST_NAMES + (
    "agent.speed", "target.speed", "rel.speed", "rel.heading_cos", "rel.heading_sin",
    "bearing.cos", "bearing.sin", "agent.body_length", "agent.body_length_rate",
    "agent.acc", "target.acc", "agent.turn_rate", "is_self",
)

_MIDBODY = ("spine_1", "spine_2", "lateral_left", "lateral_right")
# shoulder and hip points whose midpoint stands in for the body centre: (candidate groups, in priority order)
_SHOULDER = (("neck",), ("ear_left", "ear_right"), ("head",), ("headpiece",), ("nose",))
_HIP = (("hip_left", "hip_right"), ("tail_base",))
_TAIL = ("tail_middle_1", "tail_middle_2", "tail_midpoint", "tail_tip")


# ----------------------------------------------------------------------------- basics


def _float(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x)
    return x if np.issubdtype(x.dtype, np.floating) else x.astype(np.float64)


def to_cm(xy_px: np.ndarray, pix_per_cm: float, centre_px: Sequence[float] | np.ndarray | None = None) -> np.ndarray:
    """(T, M, S, 2) px -> (T, M, S, 2) cm, minus the arena centre (px, (2,)) first when given."""
    return _to_cm_inplace(np.array(_float(xy_px), copy=True), pix_per_cm, centre_px)


def _to_cm_inplace(xy: np.ndarray, pix_per_cm: float, centre_px: Sequence[float] | np.ndarray | None) -> np.ndarray:
    """to_cm on a float array we own, in place."""
    if pix_per_cm <= 0 or not np.isfinite(pix_per_cm):
        raise ValueError(f"pix_per_cm must be a positive number, got {pix_per_cm}")
    if centre_px is not None:
        for k in range(2):  # one long strided loop per coordinate, not a broadcast over a size-2 axis
            xy[..., k] -= xy.dtype.type(centre_px[k])
    xy *= xy.dtype.type(1.0 / pix_per_cm)
    return xy


def _gap_runs(nan: np.ndarray, max_gap: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(T, C) NaN mask -> interior NaN runs of <= max_gap frames: first row, length, column (each (R,))."""
    T = nan.shape[0]
    # Column-major, so one column's frames are adjacent; a run that crosses into the next column is an
    # edge run at both ends and fails the interior test below.
    seq = np.ascontiguousarray(nan.T).reshape(-1).view(np.int8)
    d = np.diff(seq, prepend=np.int8(0), append=np.int8(0))
    start = np.flatnonzero(d == 1)
    length = np.flatnonzero(d == -1) - start
    col, r0 = np.divmod(start, T)
    keep = (r0 > 0) & (r0 + length < T) & (length <= max_gap)
    return r0[keep], length[keep], col[keep]


def interpolate_gaps(x: np.ndarray, max_gap: int) -> np.ndarray:
    """(T, ...) -> same: linear fill of interior NaN runs of <= max_gap frames, per channel; edges stay NaN."""
    return _interpolate_inplace(np.array(_float(x), copy=True, order="C"), max_gap)


def _interpolate_inplace(out: np.ndarray, max_gap: int) -> np.ndarray:
    """interpolate_gaps on a C-contiguous float array we own: fills it in place and returns it."""
    T = out.shape[0]
    if max_gap <= 0 or T < 3 or out.size == 0:
        return out
    flat = out.reshape(T, -1)
    nan = np.isnan(flat)
    if not nan.any():
        return out
    r0, length, col = _gap_runs(nan, max_gap)
    if r0.size == 0:
        return out
    run = np.repeat(np.arange(r0.size), length)  # run of each frame to fill
    step = np.arange(run.size) - np.repeat(np.cumsum(length) - length, length)  # 0.. within its run
    lo, hi = flat[r0 - 1, col], flat[r0 + length, col]  # the present frames around each run
    w = ((step + 1) / (length[run] + 1)).astype(flat.dtype)
    flat[r0[run] + step, col[run]] = lo[run] + w * (hi[run] - lo[run])
    return out


def moving_average(x: np.ndarray, window: int) -> np.ndarray:
    """(T, ...) -> same: centred moving mean over ``window`` frames of the non-NaN values; NaN stays NaN."""
    x = _float(x)
    if window <= 1 or x.shape[0] == 0:
        return x.copy()
    T = x.shape[0]
    flat = x.reshape(T, -1)
    valid = ~np.isnan(flat)
    zero = np.zeros((1, flat.shape[1]))
    csum = np.concatenate([zero, np.cumsum(np.where(valid, flat, 0), axis=0, dtype=np.float64)])
    ccnt = np.concatenate([zero, np.cumsum(valid, axis=0, dtype=np.float64)])
    left = window // 2
    right = window - 1 - left
    idx = np.arange(T)
    lo = np.clip(idx - left, 0, T)
    hi = np.clip(idx + right + 1, 0, T)
    cnt = ccnt[hi] - ccnt[lo]
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = (csum[hi] - csum[lo]) / cnt
    mean[~valid] = np.nan
    return mean.astype(x.dtype).reshape(x.shape)


def _central(steps: np.ndarray, T: int, scale: float = 1.0) -> np.ndarray:
    """Forward steps (T-1, ...) -> (T, ...) centred, times ``scale``: the mean of the two neighbouring
    steps, or the one present next to a NaN; NaN where both are (e.g. the value itself is missing)."""
    out = np.empty((T,) + steps.shape[1:], dtype=steps.dtype)
    if T < 2:
        out.fill(np.nan)
        return out
    k = steps.dtype.type(scale)
    np.multiply(steps[:1], k, out=out[:1])
    np.multiply(steps[-1:], k, out=out[-1:])
    if T > 2:
        mid = out[1:-1]
        np.add(steps[:-1], steps[1:], out=mid)
        mid *= steps.dtype.type(0.5 * scale)
        flat = mid.reshape(-1)
        bad = np.flatnonzero(np.isnan(flat))
        if bad.size:  # one neighbour missing: one-sided difference
            bwd = steps[:-1].reshape(-1)[bad]
            fwd = steps[1:].reshape(-1)[bad]
            flat[bad] = np.where(np.isnan(fwd), bwd, fwd) * k
    return out


def time_derivative(x: np.ndarray, fps: float) -> np.ndarray:
    """(T, ...) -> (T, ...) per second: np.gradient(x, 1/fps, axis=0), one-sided next to a NaN neighbour; NaN in, NaN out."""
    x = _float(x)
    return _central(np.diff(x, axis=0), x.shape[0], fps)


def _complex(p: np.ndarray) -> np.ndarray:
    """(..., 2) float points -> (...) complex x + iy (a view when the last axis is contiguous)."""
    if p.strides[-1] != p.itemsize:
        p = np.ascontiguousarray(p)
    return p.view(np.dtype(f"c{2 * p.itemsize}"))[..., 0]


def _norm(v: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """(..., 2) -> (...): Euclidean norm, as the modulus of x + iy (one vectorised pass)."""
    return np.abs(_complex(v), out=out)


def velocity(xy_cm: np.ndarray, fps: float) -> np.ndarray:
    """(T, ..., 2) cm -> (T, ..., 2) cm/s, central differences."""
    return time_derivative(xy_cm, fps)


def speed(xy_cm: np.ndarray, fps: float) -> np.ndarray:
    """(T, M, S, 2) cm -> (T, M, S) cm/s: the norm of the velocity."""
    return _norm(velocity(xy_cm, fps))


def acceleration(xy_cm: np.ndarray, fps: float) -> np.ndarray:
    """(T, M, S, 2) cm -> (T, M, S) cm/s^2: the norm of the second derivative (of the velocity)."""
    return _norm(time_derivative(velocity(xy_cm, fps), fps))


# ----------------------------------------------------------------------------- resampling


def resample_positions(n_frames: int, fps: float, target_fps: float) -> np.ndarray:
    """(T',) float64: the source frame position of each output row when resampling fps -> target_fps."""
    if n_frames <= 0:
        return np.zeros(0)
    ratio = fps / target_fps  # source frames per output row
    n_out = int(np.floor((n_frames - 1) / ratio + 1e-9)) + 1
    return np.arange(n_out) * ratio


def nearest_frames(n_frames: int, fps: float, target_fps: float) -> np.ndarray:
    """(T',) int64: the nearest source frame of each resampled row (labels, mapping predictions back)."""
    pos = resample_positions(n_frames, fps, target_fps)
    return np.clip(np.floor(pos + 0.5), 0, max(n_frames - 1, 0)).astype(np.int64)


def resample(x: np.ndarray, fps: float, target_fps: float) -> np.ndarray:
    """(T, ...) at fps -> (T', ...) at target_fps, linear in time; a NaN neighbour: the nearer value if present."""
    x = _float(x)
    T = x.shape[0]
    if T == 0 or fps == target_fps:
        return x.copy()
    pos = resample_positions(T, fps, target_fps)
    i0 = np.minimum(np.floor(pos).astype(np.int64), T - 1)
    i1 = np.minimum(i0 + 1, T - 1)
    w = (pos - i0).astype(x.dtype).reshape((-1,) + (1,) * (x.ndim - 1))
    a, b = x[i0], x[i1]
    out = a + w * (b - a)
    use_a = (w < 0.5) | ((w == 0.5) & ~np.isnan(a))  # a tie takes whichever is present
    return np.where(np.isnan(out), np.where(use_a, a, b), out)


# ----------------------------------------------------------------------------- scene


def _live(xy: np.ndarray) -> np.ndarray:
    """(T, M, S, 2) -> bool (M, S): keypoint channels with at least one present value (absent mice and
    untracked parts are all-NaN: skipping them halves the work for the usual 2-mouse video)."""
    T = xy.shape[0]
    return (~np.isnan(xy.reshape(T, -1)).all(axis=0)).reshape(xy.shape[1:]).any(axis=-1)


def _column_runs(where: np.ndarray) -> list[tuple[int, int, int]]:
    """Column map (n,) -> runs (start, stop, source start) of consecutive source columns; source -1 = NaN."""
    n = where.size
    if n == 0:
        return []
    cont = ((where[1:] == where[:-1] + 1) & (where[:-1] >= 0)) | ((where[1:] < 0) & (where[:-1] < 0))
    starts = np.concatenate([[0], np.flatnonzero(~cont) + 1]).tolist()
    return [(s, e, int(where[s])) for s, e in zip(starts, starts[1:] + [n])]


def _copy_runs(dst: np.ndarray, src: np.ndarray, runs: list[tuple[int, int, int]]) -> None:
    """dst[:, s:e] = src[:, w:w + e - s] (or NaN where w < 0) for each run: slices, not a fancy take."""
    for s, e, w in runs:
        dst[:, s:e] = np.nan if w < 0 else src[:, w : w + e - s]


def _take_columns(src: np.ndarray, where: np.ndarray) -> np.ndarray:
    """(T, N) -> (T, len(where)): column j is src[:, where[j]], or NaN where where[j] < 0."""
    out = np.empty((src.shape[0], where.size), dtype=src.dtype)
    _copy_runs(out, src, _column_runs(where))
    return out


def _xy_columns(idx: np.ndarray) -> np.ndarray:
    """Channel indices (K,) -> their interleaved (x, y) column indices (2K,)."""
    return np.stack([2 * idx, 2 * idx + 1], axis=1).reshape(-1)


def _gather(xy: np.ndarray) -> tuple[np.ndarray, np.ndarray, int]:
    """(T, M, S, 2) -> a new (T, K, 2) array of the live channels, their flat indices (K,), C = M * S."""
    T, C = xy.shape[0], int(np.prod(xy.shape[1:-1]))
    idx = np.flatnonzero(_live(xy).reshape(-1))
    sub = _take_columns(xy.reshape(T, 2 * C), _xy_columns(idx))
    return sub.reshape(T, idx.size, 2), idx, C


def clean_positions(
    xy_px: np.ndarray, pix_per_cm: float, centre_px: Sequence[float] | np.ndarray | None, max_gap: int
) -> np.ndarray:
    """(T, M, S, 2) px -> (T, M, S, 2) cm, arena-centred, NaN gaps <= max_gap frames interpolated."""
    xy = _float(xy_px)
    sub, idx, C = _gather(xy)
    sub = _interpolate_inplace(_to_cm_inplace(sub, pix_per_cm, centre_px), max_gap)
    T, K = sub.shape[:2]
    if K == C:
        return sub.reshape(xy.shape)
    where = np.full(2 * C, -1, dtype=np.int64)
    where[_xy_columns(idx)] = np.arange(2 * K)
    return _take_columns(sub.reshape(T, 2 * K), where).reshape(xy.shape)


def _scene_compact(sub: np.ndarray, idx: np.ndarray, C: int, fps: float, smooth_window: int) -> np.ndarray:
    """(T, K, 2) cm of the live channels ``idx`` among C -> float32 (T, 4C) scene vector.

    Derivatives run over blocks of _TIME_CHUNK frames (plus 2 frames of context each side, so the
    result is identical to one pass) to stay in cache: this step is memory-bound.
    """
    T, K = sub.shape[:2]
    moving = moving_average(sub, smooth_window) if smooth_window > 1 else sub
    where = np.full(4 * C, -1, dtype=np.int64)  # output column -> column of the per-block `parts`
    k = np.arange(K)
    where[_xy_columns(idx)] = np.arange(2 * K)
    where[2 * C + idx], where[3 * C + idx] = 2 * K + k, 3 * K + k
    runs = _column_runs(where)
    pos = sub.reshape(T, 2 * K)
    out = np.empty((T, 4 * C), dtype=np.float32)
    parts = np.empty((min(_TIME_CHUNK, T), 4 * K), dtype=np.float32)  # positions, speeds, accelerations
    for t0 in range(0, T, _TIME_CHUNK):
        t1 = min(t0 + _TIME_CHUNK, T)
        a, b = max(t0 - 2, 0), min(t1 + 2, T)
        vel = velocity(moving[a:b], fps)
        acc = time_derivative(vel, fps)
        n, lo = t1 - t0, t0 - a
        p = parts[:n]
        p[:, : 2 * K] = pos[t0:t1]
        _norm(vel[lo : lo + n], out=p[:, 2 * K : 3 * K])
        _norm(acc[lo : lo + n], out=p[:, 3 * K :])
        _copy_runs(out[t0:t1], p, runs)
    return out


def scene_from_cm(xy_cm: np.ndarray, fps: float, smooth_window: int = 1) -> np.ndarray:
    """(T, M, S, 2) cm -> float32 (T, M*S*2 + M*S + M*S): positions, speeds (cm/s), accelerations (cm/s^2)."""
    sub, idx, C = _gather(_float(xy_cm))
    return _scene_compact(sub, idx, C, fps, smooth_window)


def pad_mice(xy: np.ndarray, n_mice: int) -> np.ndarray:
    """(T, M, S, 2) -> (T, n_mice, S, 2): the first n_mice slots, NaN-padded."""
    have = xy.shape[1]
    if have >= n_mice:
        return xy[:, :n_mice]
    pad = np.full((xy.shape[0], n_mice - have) + xy.shape[2:], np.nan, dtype=xy.dtype)
    return np.concatenate([xy, pad], axis=1)


def scene_features(
    xy_px: np.ndarray,
    fps: float,
    pix_per_cm: float,
    centre_px: Sequence[float] | np.ndarray | None,
    cfg: FeatureConfig,
) -> np.ndarray:
    """(T, M, S, 2) px -> float32 (T, n*S*2 + n*S + n*S), n = cfg.n_mice: the scene vector (288 for 4 x 18)."""
    sub, idx, C = _gather(pad_mice(_float(xy_px), cfg.n_mice))
    sub = _interpolate_inplace(_to_cm_inplace(sub, pix_per_cm, centre_px if cfg.arena_centre else None), cfg.max_gap)
    return _scene_compact(sub, idx, C, fps, cfg.smooth_window)


def scene_feature_names(slots: Sequence[str], n_mice: int = 4) -> list[str]:
    """Column names of the scene vector, e.g. ``mouse1.nose.x``, ``mouse1.nose.speed``, ``mouse1.nose.acc``."""
    mice = [f"mouse{m + 1}" for m in range(n_mice)]
    pos = [f"{m}.{s}.{c}" for m in mice for s in slots for c in "xy"]
    spd = [f"{m}.{s}.speed" for m in mice for s in slots]
    acc = [f"{m}.{s}.acc" for m in mice for s in slots]
    return pos + spd + acc


# ----------------------------------------------------------------------------- pairs


def _nanmean_parts(z: np.ndarray, idx: list[int]) -> np.ndarray:
    """(T, M, S) complex points, slot indices -> (T, M): mean of the present ones (NaN where none is)."""
    if len(idx) == 1:
        return z[:, :, idx[0]]
    total = np.zeros(z.shape[:2], dtype=z.dtype)
    count = np.zeros(z.shape[:2], dtype=z.real.dtype)
    for i in idx:  # a few parts: a loop of whole-array ops beats a gather + middle-axis reduction
        p = z[:, :, i]
        ok = ~np.isnan(p)  # complex isnan: x or y missing
        total += np.where(ok, p, 0)
        count += ok
    with np.errstate(invalid="ignore", divide="ignore"):
        return total / count


def _first_present(z: np.ndarray, candidates: list) -> np.ndarray:
    """Candidate slot groups (lists of slot indices, or ready (T, M) complex points) in priority order
    -> (T, M) complex: per frame and mouse, the mean of the first group with a present point; later
    groups are only consulted while gaps remain."""
    out = np.full(z.shape[:2], np.nan, dtype=z.dtype)
    for idx in candidates:
        if not isinstance(idx, np.ndarray) and not idx:
            continue
        miss = np.isnan(out)
        if not miss.any():
            break
        out[miss] = (idx if isinstance(idx, np.ndarray) else _nanmean_parts(z, idx))[miss]
    return out


def _landmarks(xy: np.ndarray, slots: Sequence[str]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(T, M, S, 2) cm -> body centre, "nose" (front) and "tail_base" (back) points, each (T, M, 2), with fallbacks."""
    pos = {s: i for i, s in enumerate(slots)}

    def parts(*names: str) -> list[int]:
        return [pos[n] for n in names if n in pos]

    z = _complex(xy)  # (T, M, S) x + iy
    shoulder = _first_present(z, [parts(*g) for g in _SHOULDER])
    hip = _first_present(z, [parts(*g) for g in _HIP])
    centre = _first_present(z, [
        parts("body_center"), parts(*_MIDBODY), (shoulder + hip) * 0.5, [i for s, i in pos.items() if s not in _TAIL],
    ])
    front = _first_present(z, [
        parts("nose"), parts("head"), parts("headpiece"), parts("ear_left", "ear_right"), parts("neck"),
    ])
    back = _first_present(z, [parts("tail_base"), parts("hip_left", "hip_right"), parts("spine_2")])
    return tuple(w[..., None].view(xy.dtype) for w in (centre, front, back))


def _unit_heading(centre: np.ndarray, front: np.ndarray, back: np.ndarray) -> np.ndarray:
    """(T, M, 2) points -> (T, M, 2) unit heading: front - back, else front - centre, else centre - back."""
    out = np.full_like(centre, np.nan)
    for a, b in ((front, back), (front, centre), (centre, back)):
        miss = np.isnan(out[..., 0])
        if not miss.any():
            break
        v = a[miss] - b[miss]
        norm = _norm(v)[..., None]
        with np.errstate(invalid="ignore", divide="ignore"):
            out[miss] = np.where(norm > _EPS, v / norm, np.nan)
    return out


def mouse_kinematics(
    xy_cm: np.ndarray, fps: float, slots: Sequence[str], smooth_window: int = 1
) -> dict[str, np.ndarray]:
    """(T, M, S, 2) cm -> per-mouse arrays: centre/front/back/heading (T, M, 2); speed, acc, body_length,
    body_length_rate, turn_rate (T, M) in cm, cm/s, cm/s^2, rad/s. Derivatives use the smoothed positions."""
    xy = _float(xy_cm)
    if len(slots) != xy.shape[2]:
        raise ValueError(f"{len(slots)} slot names for {xy.shape[2]} keypoint slots")
    centre, front, back = _landmarks(xy, slots)
    heading = _unit_heading(centre, front, back)
    if smooth_window > 1:
        s_centre, s_front, s_back = _landmarks(moving_average(xy, smooth_window), slots)
        s_heading = _unit_heading(s_centre, s_front, s_back)
    else:
        s_centre, s_front, s_back, s_heading = centre, front, back, heading
    vel = time_derivative(s_centre, fps)
    acc = time_derivative(vel, fps)
    body_length = _norm(front - back)
    s_length = _norm(s_front - s_back)
    h0, h1 = s_heading[:-1], s_heading[1:]
    turn = np.arctan2(h0[..., 0] * h1[..., 1] - h0[..., 1] * h1[..., 0], (h0 * h1).sum(-1))
    turn *= turn.dtype.type(fps)
    return {
        "centre": centre,
        "front": front,
        "back": back,
        "heading": heading,
        "speed": _norm(vel),
        "acc": _norm(acc),
        "body_length": body_length,
        "body_length_rate": time_derivative(s_length, fps),
        "turn_rate": _central(turn, xy.shape[0]),
    }


def _rotate(p: np.ndarray, origin: np.ndarray, heading: np.ndarray) -> np.ndarray:
    """(T, ..., 2) points, (T, 2) origin and unit heading -> points in that frame (x along the heading)."""
    shape = (p.shape[0],) + (1,) * (p.ndim - 2)
    z = _complex(p) - _complex(origin).reshape(shape)
    z *= np.conj(_complex(heading)).reshape(shape)  # rotate by minus the heading angle
    return z[..., None].view(p.dtype)


def _dist(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return _norm(a - b)


def pair_features(
    xy_cm: np.ndarray,
    fps: float,
    agent: int,
    target: int,
    slots: Sequence[str],
    smooth_window: int = 1,
) -> np.ndarray:
    """(T, M, S, 2) cm, 0-based mouse indices -> float32 (T, 4S + 18) agent-centric pair features (cm, cm/s)."""
    return all_pair_features(xy_cm, fps, [(agent, target)], slots, smooth_window)[0]


def all_pair_features(
    xy_cm: np.ndarray,
    fps: float,
    pairs: Sequence[tuple[int, int]],
    slots: Sequence[str],
    smooth_window: int = 1,
) -> np.ndarray:
    """(T, M, S, 2) cm, 0-based (agent, target) pairs -> float32 (n_pairs, T, 4S + 18); per-mouse
    quantities are computed once, only for the mice the pairs name."""
    xy = _float(xy_cm)
    T, S = xy.shape[0], len(slots)
    if xy.shape[2] != S:
        raise ValueError(f"{len(slots)} slot names for {xy.shape[2]} keypoint slots")
    out = np.empty((len(pairs), T, n_pair_features(S)), dtype=np.float32)
    if not len(pairs):
        return out
    used = sorted({int(m) for p in pairs for m in p})
    col = {m: i for i, m in enumerate(used)}
    sub = np.take(xy, used, axis=1)  # (T, U, S, 2): only the mice the pairs need
    kin = mouse_kinematics(sub, fps, slots, smooth_window)
    centre, front, back, heading = kin["centre"], kin["front"], kin["back"], kin["heading"]
    rotated: dict[int, np.ndarray] = {}  # mouse -> its parts in the current agent's frame
    current = -1
    k = 4 * S
    for i, (agent, target) in enumerate(pairs):
        a, t = col[int(agent)], col[int(target)]
        if a != current:
            rotated.clear()
            current = a
        for m in (a, t):
            if m not in rotated:
                rotated[m] = _rotate(sub[:, m], centre[:, a], heading[:, a]).reshape(T, 2 * S)
        o = out[i]
        o[:, : 2 * S] = rotated[a]
        o[:, 2 * S : k] = rotated[t]
        body = _dist(centre[:, a], centre[:, t])
        ha, ht = heading[:, a], heading[:, t]
        seen = _rotate(centre[:, t], centre[:, a], ha)  # (T, 2) target centre in the agent's frame
        norm = np.maximum(_norm(seen), _EPS)
        columns = (
            _dist(front[:, a], front[:, t]), _dist(front[:, a], back[:, t]), _dist(front[:, a], centre[:, t]),
            body, _dist(back[:, a], front[:, t]),
            kin["speed"][:, a], kin["speed"][:, t], time_derivative(body, fps),
            ha[:, 0] * ht[:, 0] + ha[:, 1] * ht[:, 1], ha[:, 0] * ht[:, 1] - ha[:, 1] * ht[:, 0],
            seen[:, 0] / norm, seen[:, 1] / norm,
            kin["body_length"][:, a], kin["body_length_rate"][:, a],
            kin["acc"][:, a], kin["acc"][:, t], kin["turn_rate"][:, a],
            float(a == t),
        )
        scalars = np.empty((len(columns), T), dtype=np.float32)  # filled row by row, then one transposed copy
        for j, value in enumerate(columns):
            scalars[j] = value
        o[:, k:] = scalars.T
    return out


def n_pair_features(n_slots: int) -> int:
    """P, the pair vector length for S keypoint slots: 4 S + 18."""
    return 4 * n_slots + len(SCALAR_NAMES)


def pair_feature_names(slots: Sequence[str]) -> list[str]:
    """Column names of the pair vector (P = 4 S + 18), in order."""
    coords = [f"{who}.{s}.{c}" for who in ("agent", "target") for s in slots for c in "xy"]
    return coords + list(SCALAR_NAMES)
