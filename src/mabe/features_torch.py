"""The features of ``mabe.features`` in torch, batched over windows, for computing them where the model runs.

Same definitions, same column order, same NaN rules as the numpy module (its docstring is the
reference); tested equal to it within float tolerance (tests/unit/test_features_torch.py). Every
function here takes a leading batch axis: ``(B, T, M, S, 2)`` positions of B windows of T frames,
with per-window ``fps`` / ``pix_per_cm`` / ``centre`` as ``(B,)`` / ``(B,)`` / ``(B, 2)`` tensors
(or Python numbers, the same for every window). Work is vectorised over batch, time, mice and
slots; the only Python loops run over a handful of landmark candidates and heading fallbacks.

Windows and their edges. A frame's features depend on nearby frames: the gap fill on up to
``max_gap`` frames each side (plus the present frame beyond), the smoothing on ``smooth_window // 2``,
the second derivative on 2. A window gathered with ``halo(fcfg)`` extra frames each side, with
frames outside its video set to NaN, therefore gives on its central frames exactly the features the
whole-track numpy functions give there, including at a video's first and last frames, where NaN
padding makes the central difference one-sided just as np.gradient's edge rule does. ``window_features``
does the gather, the computation, the crop and the resampling (``features.target_fps``) in one call.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np
import torch

from mabe.config import FeatureConfig
from mabe.features import _HIP, _MIDBODY, _SHOULDER, _TAIL, n_pair_features

__all__ = [
    "halo",
    "to_cm",
    "interpolate_gaps",
    "moving_average",
    "time_derivative",
    "velocity",
    "speed",
    "acceleration",
    "clean_positions",
    "pad_mice",
    "scene_from_cm",
    "scene_features",
    "mouse_kinematics",
    "pair_features",
    "pair_features_of",
    "resample_rows",
    "row_positions",
    "n_resampled_rows",
    "source_length",
    "gather_positions",
    "MISSING_CODE",
    "window_features",
]

_EPS = 1e-6
Scalar = float | torch.Tensor | np.ndarray | Sequence[float]


# ----------------------------------------------------------------------------- helpers


def halo(fcfg: FeatureConfig) -> int:
    """Context frames needed each side of a window so its frames get the whole-track features."""
    smooth = fcfg.smooth_window // 2 if fcfg.smooth_window > 1 else 0
    return int(fcfg.max_gap) + 2 + smooth


def _per_window(v: Scalar, like: torch.Tensor, ndim: int, factor: float = 1.0) -> float | torch.Tensor:
    """``factor * v`` for a number (kept a Python float: no host-to-device copy, CUDA-graph safe), or for (B,)
    values a tensor shaped (B, 1, ..., 1) (``ndim`` dims) in ``like``'s dtype; the product in float64 first,
    as numpy forms ``dtype(0.5 * fps)``."""
    if isinstance(v, (int, float)):
        return float(v) * factor
    t = (torch.as_tensor(v, device=like.device).double() * factor).to(like.dtype)
    return t if t.ndim == 0 else t.reshape((-1,) + (1,) * (ndim - 1))


def _nan_like(x: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor:
    return torch.full(shape, math.nan, dtype=x.dtype, device=x.device)


def _norm(v: torch.Tensor) -> torch.Tensor:
    """(..., 2) -> (...): Euclidean norm (hypot, as numpy's complex modulus)."""
    return torch.hypot(v[..., 0], v[..., 1])


def _missing(p: torch.Tensor) -> torch.Tensor:
    """(..., 2) points -> (...) bool: x or y is NaN (numpy's complex isnan)."""
    return torch.isnan(p[..., 0]) | torch.isnan(p[..., 1])


# ----------------------------------------------------------------------------- basics


def to_cm(xy_px: torch.Tensor, pix_per_cm: Scalar, centre_px: Scalar | None = None) -> torch.Tensor:
    """(B, T, M, S, 2) px -> same in cm, minus the arena centre (px, (2,) or (B, 2)) first when given."""
    x = xy_px if xy_px.is_floating_point() else xy_px.double()
    if centre_px is not None:
        c = torch.as_tensor(centre_px, dtype=x.dtype, device=x.device)
        x = x - (c if c.ndim == 1 else c.reshape((-1,) + (1,) * (x.ndim - 2) + (2,)))
    inv = 1.0 / (float(pix_per_cm) if isinstance(pix_per_cm, (int, float)) else
                 torch.as_tensor(pix_per_cm, device=x.device).double())
    return x * _per_window(inv, x, x.ndim)


def _nearest_present(idx: torch.Tensor, val: torch.Tensor, reach: int, forward: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, T, C) frame numbers (+-inf where missing) and values -> the nearest present frame at or before t
    (``forward``; else at or after) within ``reach`` frames, and its value; +-inf / NaN where there is none.

    Log-step doubling (shifts 1, 2, 4, ... summing to >= reach): a few whole-tensor ops, where a cummax and
    a gather along time are several times slower on CPU."""
    shift, covered = 1, 0
    T = idx.shape[1]
    while covered < reach and shift < T:
        # new tensors by concatenation (the untouched edge + the merged rest): no clone and in-place write
        if forward:
            cand_i, cand_v, cur_i, cur_v = idx[:, :-shift], val[:, :-shift], idx[:, shift:], val[:, shift:]
            better = cand_i > cur_i
            idx = torch.cat([idx[:, :shift], torch.where(better, cand_i, cur_i)], dim=1)
            val = torch.cat([val[:, :shift], torch.where(better, cand_v, cur_v)], dim=1)
        else:
            cand_i, cand_v, cur_i, cur_v = idx[:, shift:], val[:, shift:], idx[:, :-shift], val[:, :-shift]
            better = cand_i < cur_i
            idx = torch.cat([torch.where(better, cand_i, cur_i), idx[:, -shift:]], dim=1)
            val = torch.cat([torch.where(better, cand_v, cur_v), val[:, -shift:]], dim=1)
        covered += shift
        shift *= 2
    return idx, val


def interpolate_gaps(x: torch.Tensor, max_gap: int) -> torch.Tensor:
    """(B, T, ...) -> same: linear fill of NaN runs of <= max_gap frames between present frames; edges stay NaN."""
    B, T = x.shape[:2]
    if max_gap <= 0 or T < 3 or x.numel() == 0:
        return x.clone()
    flat = x.reshape(B, T, -1)
    ok = ~torch.isnan(flat)
    # frame numbers as floats (exact below 2^24), +-inf where missing
    t = torch.arange(T, dtype=torch.float32 if x.dtype == torch.float16 else x.dtype, device=x.device)
    t = t.reshape(1, T, 1).expand_as(flat)
    prev, lo = _nearest_present(torch.where(ok, t, -math.inf), flat, max_gap, forward=True)
    nxt, hi = _nearest_present(torch.where(ok, t, math.inf), flat, max_gap, forward=False)
    fill = ~ok & (nxt - prev - 1 <= max_gap)  # inf - (-inf): no present frame near enough on one side
    w = ((t - prev) / (nxt - prev)).to(x.dtype)
    return torch.where(fill, lo + w * (hi - lo), flat).reshape(x.shape)


def moving_average(x: torch.Tensor, window: int) -> torch.Tensor:
    """(B, T, ...) -> same: centred moving mean over ``window`` frames of the non-NaN values; NaN stays NaN."""
    if window <= 1 or x.shape[1] == 0:
        return x.clone()
    B, T = x.shape[:2]
    flat = x.reshape(B, T, -1)
    valid = ~torch.isnan(flat)
    left = window // 2
    right = window - 1 - left
    # A windowed sum over a short axis, not a running cumsum: no cancellation between large partial sums.
    vals = torch.nn.functional.pad(torch.where(valid, flat, 0).transpose(1, 2), (left, right))
    cnt = torch.nn.functional.pad(valid.to(x.dtype).transpose(1, 2), (left, right))
    total = vals.unfold(-1, window, 1).sum(-1)
    count = cnt.unfold(-1, window, 1).sum(-1)
    mean = (total / count).transpose(1, 2)
    return torch.where(valid, mean, math.nan).reshape(x.shape)


def _central(steps: torch.Tensor, scale: Scalar) -> torch.Tensor:
    """Forward steps (B, T-1, ...) -> (B, T, ...) centred, times ``scale`` ((B,) or a number): the mean of
    the two neighbouring steps, or the one present next to a NaN (and at the ends); NaN where neither is."""
    pad = _nan_like(steps, (steps.shape[0], 1) + tuple(steps.shape[2:]))
    bwd = torch.cat([pad, steps], dim=1)
    fwd = torch.cat([steps, pad], dim=1)
    mid = (bwd + fwd) * _per_window(scale, steps, steps.ndim, 0.5)
    one = torch.where(torch.isnan(fwd), bwd, fwd) * _per_window(scale, steps, steps.ndim)
    return torch.where(torch.isnan(mid), one, mid)


def time_derivative(x: torch.Tensor, fps: Scalar) -> torch.Tensor:
    """(B, T, ...) -> (B, T, ...) per second: central differences, one-sided next to a NaN and at the ends."""
    return _central(x[:, 1:] - x[:, :-1], fps)


def velocity(xy_cm: torch.Tensor, fps: Scalar) -> torch.Tensor:
    """(B, T, ..., 2) cm -> (B, T, ..., 2) cm/s."""
    return time_derivative(xy_cm, fps)


def speed(xy_cm: torch.Tensor, fps: Scalar) -> torch.Tensor:
    """(B, T, M, S, 2) cm -> (B, T, M, S) cm/s."""
    return _norm(velocity(xy_cm, fps))


def acceleration(xy_cm: torch.Tensor, fps: Scalar) -> torch.Tensor:
    """(B, T, M, S, 2) cm -> (B, T, M, S) cm/s^2: the norm of the second derivative."""
    return _norm(time_derivative(velocity(xy_cm, fps), fps))


def clean_positions(xy_px: torch.Tensor, pix_per_cm: Scalar, centre_px: Scalar | None, max_gap: int) -> torch.Tensor:
    """(B, T, M, S, 2) px -> cm, arena-centred, NaN gaps <= max_gap frames interpolated."""
    return interpolate_gaps(to_cm(xy_px, pix_per_cm, centre_px), max_gap)


def pad_mice(xy: torch.Tensor, n_mice: int) -> torch.Tensor:
    """(B, T, M, S, 2) -> (B, T, n_mice, S, 2): the first n_mice slots, NaN-padded."""
    have = xy.shape[2]
    if have >= n_mice:
        return xy[:, :, :n_mice]
    pad = _nan_like(xy, xy.shape[:2] + (n_mice - have,) + tuple(xy.shape[3:]))
    return torch.cat([xy, pad], dim=2)


# ----------------------------------------------------------------------------- scene


def scene_from_cm(xy_cm: torch.Tensor, fps: Scalar, smooth_window: int = 1) -> torch.Tensor:
    """(B, T, M, S, 2) cm -> (B, T, M*S*4): positions, speeds (cm/s), accelerations (cm/s^2)."""
    B, T, M, S = xy_cm.shape[:4]
    moving = moving_average(xy_cm, smooth_window) if smooth_window > 1 else xy_cm
    vel = velocity(moving, fps)
    acc = time_derivative(vel, fps)
    return torch.cat([xy_cm.reshape(B, T, -1), _norm(vel).reshape(B, T, -1), _norm(acc).reshape(B, T, -1)], dim=2)


def scene_features(
    xy_px: torch.Tensor, fps: Scalar, pix_per_cm: Scalar, centre_px: Scalar | None, cfg: FeatureConfig
) -> torch.Tensor:
    """(B, T, M, S, 2) px -> (B, T, n*S*4), n = cfg.n_mice: the scene vector (288 for 4 x 18)."""
    cm = clean_positions(pad_mice(xy_px, cfg.n_mice), pix_per_cm, centre_px if cfg.arena_centre else None, cfg.max_gap)
    return scene_from_cm(cm, fps, cfg.smooth_window)


# ----------------------------------------------------------------------------- pairs


def _nanmean_parts(xy: torch.Tensor, idx: list[int]) -> torch.Tensor:
    """(B, T, M, S, 2) points, slot indices -> (B, T, M, 2): mean of the present ones (NaN where none is)."""
    if len(idx) == 1:
        return xy[:, :, :, idx[0]]
    total = torch.zeros(xy.shape[:3] + (2,), dtype=xy.dtype, device=xy.device)
    count = torch.zeros(xy.shape[:3] + (1,), dtype=xy.dtype, device=xy.device)
    for i in idx:  # same order of additions as the numpy version
        p = xy[:, :, :, i]
        ok = ~_missing(p)[..., None]
        total = total + torch.where(ok, p, 0)
        count = count + ok
    return total / count


def _first_present(xy: torch.Tensor, candidates: list) -> torch.Tensor:
    """Candidate slot groups (lists of slot indices, or ready (B, T, M, 2) points) in priority order
    -> (B, T, M, 2): the mean of the first group present, per frame."""
    out = _nan_like(xy, xy.shape[:3] + (2,))
    for idx in candidates:
        if isinstance(idx, torch.Tensor):
            out = torch.where(_missing(out)[..., None], idx, out)
        elif idx:
            out = torch.where(_missing(out)[..., None], _nanmean_parts(xy, idx), out)
    return out


def _landmarks(xy: torch.Tensor, slots: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(B, T, M, S, 2) cm -> body centre, "nose" (front), "tail_base" (back), each (B, T, M, 2), with fallbacks."""
    pos = {s: i for i, s in enumerate(slots)}

    def parts(*names: str) -> list[int]:
        return [pos[n] for n in names if n in pos]

    shoulder = _first_present(xy, [parts(*g) for g in _SHOULDER])
    hip = _first_present(xy, [parts(*g) for g in _HIP])
    centre = _first_present(xy, [parts("body_center"), parts(*_MIDBODY), (shoulder + hip) * 0.5,
                                 [i for s, i in pos.items() if s not in _TAIL]])
    front = _first_present(xy, [parts("nose"), parts("head"), parts("headpiece"), parts("ear_left", "ear_right"),
                                parts("neck")])
    back = _first_present(xy, [parts("tail_base"), parts("hip_left", "hip_right"), parts("spine_2")])
    return centre, front, back


def _unit_heading(centre: torch.Tensor, front: torch.Tensor, back: torch.Tensor) -> torch.Tensor:
    """(..., 2) points -> (..., 2) unit heading: front - back, else front - centre, else centre - back."""
    out = torch.full_like(centre, math.nan)
    for a, b in ((front, back), (front, centre), (centre, back)):
        v = a - b
        n = _norm(v)[..., None]
        cand = torch.where(n > _EPS, v / n, math.nan)
        out = torch.where(torch.isnan(out[..., :1]), cand, out)
    return out


def mouse_kinematics(
    xy_cm: torch.Tensor, fps: Scalar, slots: Sequence[str], smooth_window: int = 1
) -> dict[str, torch.Tensor]:
    """(B, T, M, S, 2) cm -> centre/front/back/heading (B, T, M, 2); speed, acc, body_length,
    body_length_rate, turn_rate (B, T, M) in cm, cm/s, cm/s^2, rad/s. Derivatives use the smoothed positions."""
    if len(slots) != xy_cm.shape[3]:
        raise ValueError(f"{len(slots)} slot names for {xy_cm.shape[3]} keypoint slots")
    centre, front, back = _landmarks(xy_cm, slots)
    heading = _unit_heading(centre, front, back)
    if smooth_window > 1:
        s_centre, s_front, s_back = _landmarks(moving_average(xy_cm, smooth_window), slots)
        s_heading = _unit_heading(s_centre, s_front, s_back)
    else:
        s_centre, s_front, s_back, s_heading = centre, front, back, heading
    vel = time_derivative(s_centre, fps)
    acc = time_derivative(vel, fps)
    h0, h1 = s_heading[:, :-1], s_heading[:, 1:]
    turn = torch.atan2(h0[..., 0] * h1[..., 1] - h0[..., 1] * h1[..., 0], (h0 * h1).sum(-1))
    turn = turn * _per_window(fps, turn, turn.ndim)
    return {
        "centre": centre, "front": front, "back": back, "heading": heading,
        "speed": _norm(vel), "acc": _norm(acc),
        "body_length": _norm(front - back),
        "body_length_rate": time_derivative(_norm(s_front - s_back), fps),
        "turn_rate": _central(turn, 1.0),
    }


def _rotate(p: torch.Tensor, origin: torch.Tensor, heading: torch.Tensor) -> torch.Tensor:
    """(B, T, ..., 2) points, (B, T, 2) origin and unit heading -> points in that frame (x along the heading)."""
    shape = origin.shape[:2] + (1,) * (p.ndim - 3) + (2,)
    z = p - origin.reshape(shape)
    h = heading.reshape(shape)
    zx, zy, hx, hy = z[..., 0], z[..., 1], h[..., 0], h[..., 1]
    return torch.stack([zx * hx + zy * hy, zy * hx - zx * hy], dim=-1)


def pair_features(
    xy_cm: torch.Tensor, fps: Scalar, agent: torch.Tensor | Sequence[int], target: torch.Tensor | Sequence[int],
    slots: Sequence[str], smooth_window: int = 1,
) -> torch.Tensor:
    """(B, T, M, S, 2) cm, 0-based mouse slots (B,) -> (B, T, 4S + 18): agent-centric pair features."""
    B, T, _, S = xy_cm.shape[:4]
    if len(slots) != S:
        raise ValueError(f"{len(slots)} slot names for {S} keypoint slots")
    agent = torch.as_tensor(agent, dtype=torch.long, device=xy_cm.device).reshape(-1).expand(B)
    target = torch.as_tensor(target, dtype=torch.long, device=xy_cm.device).reshape(-1).expand(B)
    b = torch.arange(B, device=xy_cm.device)
    sub = torch.stack([xy_cm[b, :, agent], xy_cm[b, :, target]], dim=2)  # (B, T, 2, S, 2): agent, target
    return pair_features_of(sub, fps, agent == target, slots, smooth_window)


def pair_features_of(
    sub: torch.Tensor, fps: Scalar, is_self: torch.Tensor, slots: Sequence[str], smooth_window: int = 1
) -> torch.Tensor:
    """(B, T, 2, S, 2) cm of each window's agent and target (the same mouse twice for a self pair), (B,) bool
    self -> (B, T, 4S + 18) pair features (``pair_features`` once the two mice are picked)."""
    B, T, _, S = sub.shape[:4]
    if len(slots) != S:
        raise ValueError(f"{len(slots)} slot names for {S} keypoint slots")
    kin = mouse_kinematics(sub, fps, slots, smooth_window)
    c, f, k = kin["centre"], kin["front"], kin["back"]
    ca, ct, fa, ft, ba, bt = c[:, :, 0], c[:, :, 1], f[:, :, 0], f[:, :, 1], k[:, :, 0], k[:, :, 1]
    ha, ht = kin["heading"][:, :, 0], kin["heading"][:, :, 1]
    rot = _rotate(sub, ca, ha).reshape(B, T, 2 * 2 * S)  # agent block, then target block
    body = _norm(ca - ct)
    seen = _rotate(ct, ca, ha)
    norm = torch.clamp(_norm(seen), min=_EPS)  # NaN stays NaN
    is_self = is_self.to(sub.dtype)[:, None].expand(B, T)
    cols = [
        _norm(fa - ft), _norm(fa - bt), _norm(fa - ct), body, _norm(ba - ft),
        kin["speed"][:, :, 0], kin["speed"][:, :, 1], time_derivative(body, fps),
        ha[..., 0] * ht[..., 0] + ha[..., 1] * ht[..., 1], ha[..., 0] * ht[..., 1] - ha[..., 1] * ht[..., 0],
        seen[..., 0] / norm, seen[..., 1] / norm,
        kin["body_length"][:, :, 0], kin["body_length_rate"][:, :, 0],
        kin["acc"][:, :, 0], kin["acc"][:, :, 1], kin["turn_rate"][:, :, 0],
        is_self,
    ]
    out = torch.cat([rot, torch.stack(cols, dim=-1)], dim=-1)
    assert out.shape[-1] == n_pair_features(S)
    return out


# ----------------------------------------------------------------------------- windows and resampling


def n_resampled_rows(n_frames: torch.Tensor, ratio: torch.Tensor) -> torch.Tensor:
    """(V,) video frames, (V,) source frames per row (fps / target_fps) -> (V,) rows after resampling
    (features.resample_positions' count); ratio 1 keeps every frame."""
    n = torch.as_tensor(n_frames).double()
    r = torch.as_tensor(ratio, device=n.device).double()
    rows = torch.floor((n - 1) / r + 1e-9).long() + 1
    return torch.where(n > 0, rows, 0)


def source_length(length: int, max_ratio: float, halo_frames: int) -> int:
    """Frames to gather per window of ``length`` rows: the rows' source span at the largest ratio plus the halo."""
    return int(math.floor((length - 1) * max_ratio + 1e-9)) + 2 + 2 * halo_frames


def _source_start(start_row: torch.Tensor, ratio: torch.Tensor, n_frames: torch.Tensor, halo_frames: int):
    """First source frame of each window's gather: the frame under its first row, minus the halo."""
    first = torch.floor(start_row.double() * ratio.double()).long()
    return torch.minimum(first, n_frames.long() - 1) - halo_frames


MISSING_CODE = -32768  # poscache.MISSING: an int16 store's code of a missing coordinate


def gather_positions(
    store: torch.Tensor, offsets: torch.Tensor, video: torch.Tensor, src_start: torch.Tensor, length: int,
    dtype: torch.dtype = torch.float32, quantum: torch.Tensor | None = None, mice: torch.Tensor | None = None,
) -> torch.Tensor:
    """Flat positions (N, M, S, 2) of all videos (video v = rows offsets[v]:offsets[v+1]) -> (B, length, M, S, 2)
    of each window's frames ``src_start + 0..length-1`` in ``dtype``; frames outside the video are NaN.

    ``store``: float cm (NaN = missing), or int16 codes of the position cache with ``quantum`` (V,) cm per code.
    ``mice`` (B, K): gather only these mouse slots of each window -> (B, length, K, S, 2).
    """
    first = offsets[video]
    n = offsets[video + 1] - first
    t = src_start[:, None] + torch.arange(length, device=store.device)[None, :]
    inside = (t >= 0) & (t < n[:, None])
    rows = first[:, None] + t.clamp(min=0).minimum(n[:, None] - 1)
    raw = store[rows] if mice is None else store[rows[:, :, None], mice[:, None, :]]
    if store.is_floating_point():
        x = raw.to(dtype)
    else:
        if quantum is None:
            raise ValueError("an integer position store needs its per-video quantum")
        inside = inside[..., None, None, None] & (raw != MISSING_CODE)
        x = raw.to(dtype) * quantum.to(dtype)[video].reshape(-1, 1, 1, 1, 1)
        return torch.where(inside, x, math.nan)
    return torch.where(inside[..., None, None, None], x, math.nan)


def resample_rows(
    feat: torch.Tensor, start_row: torch.Tensor, length: int, ratio: torch.Tensor, src_start: torch.Tensor,
    n_frames: torch.Tensor, speed: torch.Tensor | None = None,
) -> torch.Tensor:
    """(B, L, F) features of each window's source frames (from ``src_start``) -> (B, length, F) at rows
    ``start_row + 0..length-1`` resampled as ``features.resample``: linear in time, the nearer value when a
    neighbour is NaN. Rows past the video's last are clamped to it (the caller marks them padding).
    ``speed`` (B,): rows ``start_row + i * speed`` instead (fractional rows; 1 gives the rows above exactly)."""
    B, L = feat.shape[:2]
    n = n_frames.long()
    n_rows = n_resampled_rows(n, ratio)
    rows = row_positions(start_row, length, speed)
    rows = torch.minimum(rows, (n_rows - 1).clamp(min=0).to(rows.dtype)[:, None])
    pos = rows.double() * ratio.double()[:, None]  # the source position of each row, as numpy computes it
    i0 = torch.minimum(torch.floor(pos).long(), n[:, None] - 1)
    i1 = torch.minimum(i0 + 1, n[:, None] - 1)
    # float32 weights whatever the feature dtype: the cache resamples float32 features, and a weight of
    # 0.50000000000001 (float64) picks the other neighbour at a NaN than its float32 rounding 0.5 does
    w = (pos - i0.double()).float().to(feat.dtype)[..., None]
    j0 = (i0 - src_start[:, None]).clamp(0, L - 1)
    j1 = (i1 - src_start[:, None]).clamp(0, L - 1)
    a = feat.gather(1, j0[..., None].expand(B, length, feat.shape[2]))
    b = feat.gather(1, j1[..., None].expand(B, length, feat.shape[2]))
    out = a + w * (b - a)
    use_a = (w < 0.5) | ((w == 0.5) & ~torch.isnan(a))
    return torch.where(torch.isnan(out), torch.where(use_a, a, b), out)


def row_positions(start_row: torch.Tensor, length: int, speed: torch.Tensor | None = None) -> torch.Tensor:
    """(B,) first rows -> (B, length) the window's rows: ``start_row + i`` (int64), or with ``speed`` (B,)
    rows per step (time stretch) ``start_row + i * speed`` (float64; exact integers at speed 1)."""
    i = torch.arange(length, device=start_row.device)[None, :]
    if speed is None:
        return start_row.long()[:, None] + i
    return start_row.double()[:, None] + i.double() * speed.double()[:, None]


def window_features(
    store: torch.Tensor, offsets: torch.Tensor, video: torch.Tensor, start_row: torch.Tensor, length: int,
    fps: torch.Tensor, fcfg: FeatureConfig, slots: Sequence[str], *, mode: str = "pair",
    agent: torch.Tensor | None = None, target: torch.Tensor | None = None, ratio: torch.Tensor | None = None,
    max_ratio: float = 1.0, dtype: torch.dtype = torch.float32, quantum: torch.Tensor | None = None,
    positions: Callable[[torch.Tensor, torch.Tensor | None], torch.Tensor] | None = None,
    speed: torch.Tensor | None = None, max_speed: float = 1.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """A batch of windows -> (features (B, length, F), valid (B, length) bool), F = the scene or pair vector.

    ``store`` (N, M, S, 2) arena-centred cm of every video (NaN = missing, any float dtype), or the
    position cache's int16 codes with ``quantum`` (V,) cm per code,
    ``offsets`` (V + 1,) its video boundaries, ``video`` / ``start_row`` (B,) each window's video and first
    row, ``fps`` (V,) each video's own frame rate, ``ratio`` (V,) source frames per row (fps /
    target_fps; None: no resampling, the crop path; a ratio of 1 there gives the same rows; ``max_ratio`` its
    maximum, which fixes the gather length). No host synchronisation: CUDA-graph capturable.
    Pair mode needs ``agent`` / ``target`` (B,) 0-based mouse slots. Rows past a video's end are
    padding (valid False, features of the last row); normalisation and NaN -> 0 are the caller's.

    Augmentation hooks (training): ``positions(xy, mice)`` maps the gathered (B, L, K, S, 2) cm positions
    (NaN = missing; ``mice`` (B, K) their mouse slots in pair mode, None in scene mode) before the gap fill;
    ``speed`` (B,) replays each window ``speed`` times faster (rows ``start_row + i * speed``, derivatives at
    ``speed * fps``; ``max_speed`` its maximum, for the gather length).
    """
    h = halo(fcfg)
    n_frames = (offsets[1:] - offsets[:-1])[video]
    r = torch.ones_like(fps, dtype=torch.float64) if ratio is None else ratio.double()
    rw, fw = r[video], fps[video]
    resampled = ratio is not None or speed is not None  # decided by the caller, not by a host sync on the values
    reach = (max_ratio if ratio is not None else 1.0) * (max_speed if speed is not None else 1.0)
    L = source_length(length, reach if resampled else 1.0, h)
    src = _source_start(start_row, rw, n_frames, h) if resampled else start_row.long() - h
    if speed is not None:
        fw = fw * speed.to(fw.dtype)  # a window replayed faster: the same motion in less time
    if mode == "scene":
        mice = None
    elif agent is None or target is None:
        raise ValueError("pair mode needs agent and target mouse slots")
    else:
        mice = torch.stack([agent, target], dim=1).long()
    raw = gather_positions(store, offsets, video, src, L, dtype, quantum, mice)  # pair: only its two mice
    if positions is not None:
        raw = positions(raw, mice)
    cm = interpolate_gaps(raw, fcfg.max_gap)
    if mode == "scene":
        feat = scene_from_cm(pad_mice(cm, fcfg.n_mice), fw, fcfg.smooth_window)
    else:
        feat = pair_features_of(cm, fw, agent == target, slots, fcfg.smooth_window)
    n_rows = n_resampled_rows(n_frames, rw) if resampled else n_frames
    if speed is None:
        valid = start_row[:, None] + torch.arange(length, device=store.device)[None, :] < n_rows[:, None]
    else:
        valid = row_positions(start_row, length, speed) <= (n_rows - 1).double()[:, None]
    if resampled:
        out = resample_rows(feat, start_row, length, rw, src, n_frames, speed)
    else:
        idx = (h + torch.arange(length, device=store.device))[None, :].minimum(
            (n_rows - 1 - start_row + h)[:, None].clamp(min=0)
        )
        out = feat.gather(1, idx[..., None].expand(feat.shape[0], length, feat.shape[2]))
    return out, valid
