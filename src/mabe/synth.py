"""Seeded synthetic MABe data: the real layout and schema, with planted, learnable behaviours.

The real pose tracking cannot be downloaded, so the demo, the tests and the benchmarks run on what
this module writes: ``train.csv``, ``test.csv``, ``sample_submission.csv``,
``train_tracking/<lab>/<video>.parquet``, ``train_annotation/<lab>/<video>.parquet`` and
``test_tracking/<lab>/<video>.parquet``, with the real column names, order and dtypes, so code
written against it runs unchanged on the real data.

How a video is made (all vectorised numpy per video; the only Python loops run over mice, pairs
and the few hundred planted intervals, never over frames):

1. *Profile* (``plan_dataset``): a real lab's recording setup from ``synth_stats.json`` (fps,
   px/cm, video size, arena, tracker, body-part set, mice, labelled triples, mouse metadata style).
2. *Background motion* (``background_motion``): per mouse a speed process (smooth noise through a
   sigmoid: still / walking / running bouts) and a turning-rate process, integrated and folded
   into the arena (walls reflect), heading from the smoothed velocity, a little body curvature,
   tail wag and elongation with speed; mice softly repel each other.
3. *Schedule* (``schedule``): per labelled triple a Poisson number of intervals with log-normal
   lengths from the lab's statistics, placed so that a mouse takes part in one planted behaviour
   at a time (so no two actions of one ordered pair overlap).
4. *Behaviours* (``MODIFIERS``): each interval rewrites the agent's (and where it matters the
   target's) position, heading and posture so that the action's kinematic signature is really
   there: a lead-in brings the agent from where it was (a long lead-in towards a contact is
   itself labelled ``approach`` where the pair labels it), and after the interval the mouse
   drifts back to its own path through a decaying offset.  Labels are exactly the planted
   intervals, plus the reciprocal labels the motion implies (chase -> the target escapes,
   attack -> defends, nose-to-nose sniffface both ways).
5. *Pose and tracker* (``body_frame``, ``render_tracking``): body parts on a bendable spine arc
   (nose, head, ears, neck, spine, body centre, flanks, hips, tail base, a curving tail,
   head-mounted ``headpiece_*`` markers), px = arena offset + cm * px/cm, Gaussian tracker noise,
   rare outliers, NaN body parts, untracked stretches of a mouse and dropped whole frames.

Same seed, same bytes: every video has its own generator seeded from the dataset seed, parquet
is written by pyarrow with fixed settings and no timestamps, csv by pandas.
"""

from __future__ import annotations

import functools
import json
import math
import multiprocessing
import shutil
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from mabe.schema import ACTIONS, BODYPARTS, HEADPIECE_PARTS, METADATA_COLUMNS, SUBMISSION_COLUMNS

__all__ = [
    "COLUMNS", "PRESETS", "TRACKING_SCHEMA", "Arena", "Interval", "LabPick", "Preset", "Scene",
    "VideoSpec", "annotation_schema", "background_motion", "body_frame", "generate_video",
    "load_stats", "plan_dataset", "render_tracking", "schedule", "write_dataset",
]

STATS_PATH = Path(__file__).with_name("synth_stats.json")

COLUMNS = METADATA_COLUMNS  # train.csv / test.csv: the 38 real columns, in the real order

# Tracking parquet. The real Kaggle tracking files could not be inspected (not downloadable, and no
# public schema dump was found); this is the fallback agreed for the project: video_frame int64,
# mouse_id int64, bodypart string (large_string, like the real annotation files' string column,
# which were written by Polars), x / y float32. Readers should accept any int / float / string width.
TRACKING_SCHEMA = pa.schema([
    ("video_frame", pa.int64()), ("mouse_id", pa.int64()), ("bodypart", pa.large_string()),
    ("x", pa.float32()), ("y", pa.float32()),
])


def annotation_schema(max_frame: int) -> pa.Schema:
    """The real annotation schema: frames are int16 when they fit (743 of the 847 real files), else int32."""
    frame_t = pa.int16() if max_frame <= np.iinfo(np.int16).max else pa.int32()
    return pa.schema([
        ("agent_id", pa.int8()), ("target_id", pa.int8()), ("action", pa.large_string()),
        ("start_frame", frame_t), ("stop_frame", frame_t),
    ])


# Fixed writer settings (the real files are zstd-compressed parquet); nothing time-dependent is stored.
PARQUET_KW: dict[str, Any] = dict(
    compression="zstd", compression_level=1, use_dictionary=True, write_statistics=True,
    store_schema=True, version="2.6", data_page_version="1.0",
)
CHUNK_FRAMES = 65_536  # tracking is rendered and written in row groups of this many frames

# ----------------------------------------------------------------------------- statistics


@functools.lru_cache(maxsize=1)
def load_stats() -> dict:
    """``synth_stats.json``: per-lab aggregates derived from the real metadata and annotations."""
    stats = json.loads(STATS_PATH.read_text())
    if tuple(stats["columns"]) != COLUMNS:
        raise ValueError(f"{STATS_PATH}: columns differ from synth.COLUMNS")
    return stats


# ----------------------------------------------------------------------------- body model

# Body frame in cm for a mouse of scale 1: s = arclength along the midline (nose ahead, tail behind,
# body_center at 0), y = lateral offset (left > 0). Everything in front of the tail base lies on one
# spine arc of curvature kappa; the tail continues from the tail base with its own curvature.
S_TAIL_BASE = -3.8
NOSE_S = 5.0
BODY: dict[str, tuple[float, float]] = {
    "nose": (NOSE_S, 0.0), "head": (3.7, 0.0), "ear_left": (3.0, 0.95), "ear_right": (3.0, -0.95),
    "neck": (2.4, 0.0), "spine_1": (1.2, 0.0), "body_center": (0.0, 0.0),
    "lateral_left": (0.0, 1.6), "lateral_right": (0.0, -1.6), "spine_2": (-1.4, 0.0),
    "hip_left": (-2.4, 1.35), "hip_right": (-2.4, -1.35), "tail_base": (S_TAIL_BASE, 0.0),
    "tail_middle_1": (-6.0, 0.0), "tail_midpoint": (-7.6, 0.0), "tail_middle_2": (-9.2, 0.0),
    "tail_tip": (-11.8, 0.0),
}
for _hp in HEADPIECE_PARTS:  # a small box on the head; the top markers project a little inwards
    _top = "_top" in _hp
    _k = 0.8 if _top else 1.0
    BODY[_hp] = (3.2 + (0.55 if "front" in _hp else -0.55) * _k, (0.55 if _hp.endswith("left") else -0.55) * _k)
assert set(BODY) == set(BODYPARTS)

# Tracker noise (cm, one sd per coordinate) and how much worse the tail is.
TRACKER_NOISE_CM = {"MARS": 0.10, "DeepLabCut": 0.07, "SLEAP": 0.085}
PART_NOISE = {"tail_tip": 2.5, "tail_middle_2": 1.8, "tail_midpoint": 1.6, "tail_middle_1": 1.4, **{
    p: 0.6 for p in HEADPIECE_PARTS}}
PART_NAN = {"tail_tip": 4.0, "tail_middle_2": 2.5, "tail_midpoint": 2.0, "tail_middle_1": 1.5}


def body_frame(s: np.ndarray, y: np.ndarray, kappa: np.ndarray, ktail: np.ndarray, elong: np.ndarray) -> np.ndarray:
    """Body-frame positions (..., P, 2) of points (s, y) (P,) for postures (...,) (curvature 1/cm, elongation).

    The spine in front of the tail base is a circular arc of curvature ``kappa`` through the body
    centre (tangent along +x there), stretched by ``elong`` (rearing compresses it in 2-D); the tail
    continues from the tail base with curvature ``ktail``; ``y`` offsets lie along the local normal.
    """
    s = np.asarray(s, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    k, kt, e = _nonzero(kappa)[..., None], _nonzero(ktail)[..., None], elong[..., None]
    tail = s < S_TAIL_BASE
    sb = np.where(tail, S_TAIL_BASE, s) * e
    a = k * sb  # tangent angle at s; an arc from the origin: (sin a / k, (1 - cos a) / k)
    sa, ha = np.sin(a), np.sin(0.5 * a)
    ca = 1.0 - 2.0 * ha * ha
    bx, by = sa / k, 2.0 * ha * ha / k
    d = np.where(tail, s - S_TAIL_BASE, 0.0)
    a2 = kt * d
    h2 = np.sin(0.5 * a2)
    tx, ty = np.sin(a2) / kt, 2.0 * h2 * h2 / kt
    ang = a + a2
    x = bx + ca * tx - sa * ty - y * np.sin(ang)
    yy = by + sa * tx + ca * ty + y * np.cos(ang)
    return np.stack([x, yy], axis=-1)


def _nonzero(k: np.ndarray, eps: float = 1e-6) -> np.ndarray:
    """Curvatures kept away from 0 (the arc formulas divide by them; the error is ~eps * s^2)."""
    k = np.asarray(k, dtype=np.float64)
    return np.where(np.abs(k) < eps, np.where(k < 0, -eps, eps), k)


def _rotate(hv: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Rotate body-frame vectors ``v`` (..., 2) into the world by unit headings ``hv`` (..., 2)."""
    return np.stack([hv[..., 0] * v[..., 0] - hv[..., 1] * v[..., 1], hv[..., 1] * v[..., 0] + hv[..., 0] * v[..., 1]], -1)


def _unit(v: np.ndarray) -> np.ndarray:
    n = np.linalg.norm(v, axis=-1, keepdims=True)
    return v / np.maximum(n, 1e-9)


def _rot_angle(v: np.ndarray, ang: np.ndarray | float) -> np.ndarray:
    c, s = np.cos(ang), np.sin(ang)
    return np.stack([c * v[..., 0] - s * v[..., 1], s * v[..., 0] + c * v[..., 1]], -1)


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def _smoothstep(x: np.ndarray) -> np.ndarray:
    x = np.clip(x, 0.0, 1.0)
    return x * x * (3 - 2 * x)


# ----------------------------------------------------------------------------- time series


def _fftconv(x: np.ndarray, k: np.ndarray) -> np.ndarray:
    """Causal convolution along the last axis: out[i] = sum_j k[j] x[i - j], same length as x."""
    n = x.shape[-1] + len(k) - 1
    nfft = 1 << (n - 1).bit_length()
    out = np.fft.irfft(np.fft.rfft(x, nfft) * np.fft.rfft(k, nfft), nfft)
    return out[..., : x.shape[-1]]


def smooth_noise(rng: np.random.Generator, shape: tuple[int, ...], n: int, tau: float) -> np.ndarray:
    """Smooth stationary unit-variance noise (*shape, n): white noise through a Gaussian of sd ``tau`` frames.

    Unlike an AR(1) / Ornstein-Uhlenbeck sequence it is differentiable, so heading and posture
    wobble without per-frame roughness; ``tau`` < 0.5 frames gives white noise.
    """
    if tau < 0.5:
        return rng.standard_normal((*shape, n))
    r = int(math.ceil(3 * tau))
    k = np.exp(-0.5 * (np.arange(-r, r + 1) / tau) ** 2)
    k /= np.sqrt((k * k).sum())
    return _fftconv(rng.standard_normal((*shape, n + 2 * r)), k)[..., 2 * r:]


def smooth(x: np.ndarray, sigma: float, axis: int = -1) -> np.ndarray:
    """Gaussian smoothing (sigma in frames) along ``axis``, edges padded with the edge value."""
    if sigma < 0.3 or x.shape[axis] < 2:
        return x
    x = np.moveaxis(x, axis, -1)
    r = int(math.ceil(3 * sigma))
    k = np.exp(-0.5 * (np.arange(-r, r + 1) / sigma) ** 2)
    k /= k.sum()
    pad = [(0, 0)] * (x.ndim - 1) + [(r, r)]
    y = _fftconv(np.pad(x, pad, mode="edge"), k)[..., 2 * r:]
    return np.moveaxis(y, -1, axis)


# ----------------------------------------------------------------------------- arena


@dataclass(frozen=True)
class Arena:
    """Where body centres may go, in cm around the arena centre; walls reflect (by folding)."""

    half_w: float
    half_h: float
    circular: bool = False

    @property
    def half(self) -> np.ndarray:
        return np.array([self.half_w, self.half_h])

    def fold(self, raw: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Unbounded positions (..., 2) -> positions inside + the reflection sign of each axis."""
        v = np.mod(raw / self.half + 1.0, 4.0)
        inside = v < 2.0
        u = np.where(inside, v - 1.0, 3.0 - v)
        sign = np.where(inside, 1.0, -1.0)
        if self.circular:  # square -> disk (elliptical grid mapping), smooth and one-to-one
            u = np.stack([u[..., 0] * np.sqrt(1 - u[..., 1] ** 2 / 2), u[..., 1] * np.sqrt(1 - u[..., 0] ** 2 / 2)], -1)
        return u * self.half, sign

    def unfold(self, xy: np.ndarray) -> np.ndarray:
        """Inverse of ``fold`` for points inside: the raw position that folds onto ``xy``."""
        u = np.clip(xy / self.half, -1.0, 1.0)
        if self.circular:
            x, y = u[..., 0], u[..., 1]
            r2 = 2 * math.sqrt(2)

            def sq(a):
                return np.sqrt(np.maximum(a, 0.0))

            u = np.stack([
                0.5 * sq(2 + x * x - y * y + r2 * x) - 0.5 * sq(2 + x * x - y * y - r2 * x),
                0.5 * sq(2 - x * x + y * y + r2 * y) - 0.5 * sq(2 - x * x + y * y - r2 * y),
            ], -1)
            u = np.clip(u, -1.0, 1.0)
        return u * self.half

    def clamp(self, xy: np.ndarray) -> np.ndarray:
        u = xy / self.half
        if self.circular:
            r = np.linalg.norm(u, axis=-1, keepdims=True)
            u = u / np.maximum(r, 1.0)
        else:
            u = np.clip(u, -1.0, 1.0)
        return u * self.half

    def random_points(self, rng: np.random.Generator, n: int) -> np.ndarray:
        return self.fold(rng.uniform(-0.85, 0.85, (n, 2)) * self.half)[0]

    def wall_point(self, xy: np.ndarray, inset: float) -> tuple[np.ndarray, np.ndarray]:
        """Nearest point ``inset`` cm inside the wall from ``xy`` (2,), and the outward wall normal."""
        if self.circular:
            n = _unit(xy if np.linalg.norm(xy) > 1e-6 else np.array([1.0, 0.0]))
            return n * (self.half_w - inset), n
        gaps = np.array([self.half_w - xy[0], self.half_w + xy[0], self.half_h - xy[1], self.half_h + xy[1]])
        i = int(np.argmin(gaps))
        normal = np.array([[1.0, 0.0], [-1.0, 0.0], [0.0, 1.0], [0.0, -1.0]])[i]
        p = xy.copy()
        if i < 2:
            p[0] = normal[0] * (self.half_w - inset)
        else:
            p[1] = normal[1] * (self.half_h - inset)
        return p, normal


# ----------------------------------------------------------------------------- background motion


def background_motion(rng: np.random.Generator, n_mice: int, n: int, fps: float, arena: Arena,
                      vmax: float = 16.0) -> dict[str, np.ndarray]:
    """Undirected exploration of ``n_mice`` for ``n`` frames: pos/hv (M, n, 2), kappa/ktail/elong (M, n), cm."""
    M = n_mice
    z = smooth_noise(rng, (M,), n, 1.0 * fps)
    frac = _sigmoid(2.5 * z - 1.0)  # 0 still .. 1 running; median ~ 0.27
    speed = vmax * frac  # cm/s
    omega = 1.0 * smooth_noise(rng, (M,), n, 0.3 * fps) * (1.0 + 0.8 * (1.0 - frac))  # turn more when slow
    theta = rng.uniform(-np.pi, np.pi, (M, 1)) + np.cumsum(omega, axis=1) / fps
    dirs = np.stack([np.cos(theta), np.sin(theta)], -1)
    raw = arena.unfold(arena.random_points(rng, M))[:, None, :] + np.cumsum((speed / fps)[..., None] * dirs, axis=1)
    pos, sign = arena.fold(raw)
    pos = repel(pos, arena, fps)
    vel = np.gradient(pos, axis=1) * fps if n > 1 else np.zeros_like(pos)
    hv = _unit(smooth(vel + 3.0 * sign * dirs, 0.08 * fps, axis=1))
    return {
        "pos": pos,
        "hv": hv,
        "kappa": 0.04 * smooth_noise(rng, (M,), n, 0.8 * fps),
        "ktail": 0.06 * smooth_noise(rng, (M,), n, 0.6 * fps),
        "elong": 0.96 + 0.09 * frac + 0.02 * smooth_noise(rng, (M,), n, 1.0 * fps),
    }


def repel(pos: np.ndarray, arena: Arena, fps: float, dmin: float = 6.0, iters: int = 3) -> np.ndarray:
    """Push body centres (M, n, 2) apart where closer than ``dmin`` cm, smoothly in time."""
    M = pos.shape[0]
    for _ in range(iters):
        push = np.zeros_like(pos)
        for i in range(M):
            for j in range(i + 1, M):
                d = pos[i] - pos[j]
                dist = np.linalg.norm(d, axis=-1, keepdims=True)
                over = np.clip(dmin - dist, 0.0, None) * 0.55
                u = np.where(dist > 1e-6, d / np.maximum(dist, 1e-6), np.array([1.0, 0.0]))
                push[i] += over * u
                push[j] -= over * u
        pos = arena.clamp(pos + smooth(push, 0.1 * fps, axis=1))
    return pos


# ----------------------------------------------------------------------------- schedule


@dataclass
class Interval:
    """One labelled interval [start, stop) of ``agent`` doing ``action`` to ``target`` (1-based ids; self: equal)."""

    agent: int
    target: int
    action: str
    start: int
    stop: int
    lead: int = 0  # frames reserved before ``start`` for the lead-in motion
    kinematic: bool = True  # False: the label rides on another interval's motion (reciprocal / chained)


FAMILY: dict[str, str] = {
    "sniff": "contact", "sniffbody": "contact", "sniffface": "contact", "sniffgenital": "contact",
    "reciprocalsniff": "contact", "allogroom": "contact", "dominancegroom": "contact",
    "approach": "approach",
    "chase": "pursuit", "follow": "pursuit", "shepherd": "pursuit", "chaseattack": "pursuit",
    "escape": "flee", "avoid": "flee", "flinch": "flee", "disengage": "flee", "run": "flee",
    "attack": "fight", "tussle": "fight", "defend": "defend", "submit": "submit",
    "mount": "mount", "intromit": "mount", "attemptmount": "mount", "dominancemount": "mount",
    "ejaculate": "mount", "dominance": "mount",
    "rear": "rear", "climb": "rear", "selfgroom": "groom", "genitalgroom": "groom",
    "dig": "forage", "biteobject": "forage", "exploreobject": "forage",
    "freeze": "still", "rest": "still", "huddle": "still",
}
assert set(FAMILY) == set(ACTIONS)
# seconds reserved before an interval (the lead-in may use less) and after it (posture blends back)
LEAD_S = {"contact": 1.5, "approach": 0.3, "pursuit": 1.0, "flee": 0.3, "fight": 1.0, "defend": 1.0,
          "submit": 1.0, "mount": 1.5, "rear": 0.4, "groom": 0.3, "forage": 1.2, "still": 0.3}
TAIL_S = 0.4
# a pair action also labels the reverse pair with the first of these the video labels: the motion implies it
RECIPROCAL: dict[str, tuple[str, ...]] = {
    "chase": ("escape", "avoid"), "chaseattack": ("escape", "avoid"), "attack": ("defend",),
    "tussle": ("tussle",), "sniffface": ("sniffface",), "reciprocalsniff": ("reciprocalsniff",),
}


def schedule(rng: np.random.Generator, triples: list[tuple[int, int, str]], n: int, fps: float, n_mice: int,
             rates: dict[str, float], lengths: dict[str, tuple[float, float]],
             len_clip: tuple[float, float] = (0.0, 1e9), min_per_action: int = 0) -> list[Interval]:
    """Plant intervals for the labelled ``triples`` of one video; no mouse in two planted behaviours at once.

    ``rates``: intervals per labelled triple per minute; ``lengths``: (log-mean, log-sd) of the
    length in seconds. Returns kinematic intervals and the reciprocal labels they imply, unsorted.
    """
    labeled = set(triples)
    minutes = n / fps / 60.0
    cands: list[tuple[int, int, int, str, int]] = []  # (priority, agent, target, action, length)

    def length(act: str) -> int:
        mu, sd = lengths.get(act, (0.0, 0.8))
        sec = float(np.clip(math.exp(rng.normal(mu, sd)), *len_clip))
        return max(2, int(round(sec * fps)))

    for a, t, act in triples:
        for _ in range(rng.poisson(rates.get(act, 0.0) * minutes)):
            cands.append((1, a, t, act, length(act)))
    if min_per_action:
        by_action: dict[str, list[tuple[int, int, str]]] = {}
        for tr in triples:
            by_action.setdefault(tr[2], []).append(tr)
        for act in sorted(by_action):
            opts = by_action[act]
            for _ in range(min_per_action):
                a, t, _ = opts[int(rng.integers(len(opts)))]
                cands.append((0, a, t, act, length(act)))
    order = rng.permutation(len(cands))
    cands = sorted((cands[i] for i in order), key=lambda c: c[0])  # stable: minimum ones first
    busy = np.zeros((n_mice + 1, n), dtype=bool)
    tail = int(round(TAIL_S * fps))
    out: list[Interval] = []
    for _, a, t, act, ln in cands:
        lead = max(2, int(round(LEAD_S[FAMILY[act]] * fps)))
        lo, hi = lead + 1, n - ln - tail - 1
        if hi <= lo:
            continue
        mice = [a] if a == t else [a, t]
        for _attempt in range(8):
            s = int(rng.integers(lo, hi))
            if not busy[mice, s - lead: s + ln + tail].any():
                busy[mice, s - lead: s + ln + tail] = True
                out.append(Interval(a, t, act, s, s + ln, lead))
                for rec in RECIPROCAL.get(act, ()):
                    if a != t and (t, a, rec) in labeled:
                        out.append(Interval(t, a, rec, s, s + ln, 0, kinematic=False))
                        break
                break
    return out


# ----------------------------------------------------------------------------- scene: behaviours


class Scene:
    """Mutable per-video kinematics (cm, arena-centred) that behaviour modifiers rewrite in place."""

    def __init__(self, kin: dict[str, np.ndarray], scale: np.ndarray, fps: float, arena: Arena,
                 rng: np.random.Generator, objects: np.ndarray):
        self.pos, self.hv = kin["pos"], kin["hv"]
        self.kappa, self.ktail, self.elong = kin["kappa"], kin["ktail"], kin["elong"]
        self.scale, self.fps, self.arena, self.rng, self.objects = scale, fps, arena, rng, objects
        self.n = self.pos.shape[1]
        self.labeled: set[tuple[int, int, str]] = set()

    # -- helpers -------------------------------------------------------------------------------
    def f(self, seconds: float) -> int:
        return max(1, int(round(seconds * self.fps)))

    def wobble(self, n: int, tau_s: float, sd: float, dims: int = 0) -> np.ndarray:
        """Smooth noise of ``n`` frames (n,) or (n, dims), time scale ``tau_s`` seconds, sd ``sd``."""
        if sd == 0:
            return np.zeros((n, dims) if dims else n)
        if dims:
            return sd * smooth_noise(self.rng, (dims,), n, tau_s * self.fps).T
        return sd * smooth_noise(self.rng, (), n, tau_s * self.fps)

    def warp(self, m: int, s0: int, e: int, slow: float, ramp: int) -> tuple[np.ndarray, np.ndarray]:
        """Mouse ``m``'s own pos/hv over [s0, e) played back at ``slow`` x speed (easing in over ``ramp`` frames)."""
        n = e - s0
        rate = np.full(n, slow)
        if ramp > 0:
            r = min(ramp, n)
            rate[:r] = 1.0 - (1.0 - slow) * _smoothstep((np.arange(r) + 1) / (r + 1))
        u = s0 + np.concatenate([[0.0], np.cumsum(rate[:-1])])
        i0 = np.clip(np.floor(u).astype(np.int64), 0, self.n - 1)
        i1 = np.minimum(i0 + 1, self.n - 1)
        fr = (u - np.floor(u))[:, None]
        pos = self.pos[m, i0] * (1 - fr) + self.pos[m, i1] * fr
        hv = _unit(self.hv[m, i0] * (1 - fr) + self.hv[m, i1] * fr)
        return pos, hv

    def nose_local(self, m: int, kappa: np.ndarray, elong: np.ndarray, ktail: np.ndarray | None = None) -> np.ndarray:
        kt = np.zeros_like(kappa) if ktail is None else ktail
        return body_frame(np.array([NOSE_S]), np.array([0.0]), kappa, kt, elong)[:, 0] * self.scale[m]

    def part_world(self, m: int, s0: int, e: int, part: tuple[float, float], pos=None, hv=None) -> np.ndarray:
        """World position over [s0, e) of a body-frame point of mouse ``m`` (its current posture)."""
        pos = self.pos[m, s0:e] if pos is None else pos
        hv = self.hv[m, s0:e] if hv is None else hv
        loc = body_frame(np.array([part[0]]), np.array([part[1]]), self.kappa[m, s0:e], self.ktail[m, s0:e],
                         self.elong[m, s0:e])[:, 0] * self.scale[m]
        return pos + _rotate(hv, loc)

    def travel_lead(self, m: int, s: int, target_pos: np.ndarray, speed: float, lo_s: float, max_lead: int) -> int:
        """Lead-in frames for mouse ``m`` to reach ``target_pos`` at frame ``s`` at about ``speed`` cm/s."""
        dist = float(np.linalg.norm(self.pos[m, s] - target_pos))
        return int(np.clip(round(dist / speed * self.fps), min(self.f(lo_s), max_lead), max_lead))

    # -- the one writer ------------------------------------------------------------------------
    def set(self, m: int, s0: int, s: int, e: int, pos: np.ndarray, hv: np.ndarray, *,
            kappa: np.ndarray | float | None = None, ktail: np.ndarray | float | None = None,
            elong: np.ndarray | float | None = None, travel: bool = True) -> None:
        """Give mouse ``m`` the desired pos/hv/posture over [s0, e): blended in over [s0, s), exact on [s, e).

        After ``e`` the mouse returns to its own path: the position offset decays (at most ~8 cm/s),
        heading and posture blend back over a fraction of a second.
        """
        L = e - s0
        n_in = s - s0
        w = np.ones(L)
        if n_in > 0:
            w[:n_in] = _smoothstep((np.arange(n_in) + 1) / (n_in + 1))
        old_pos = self.pos[m, s0:e].copy()
        new = old_pos + w[:, None] * (pos - old_pos)
        mix = _unit((1 - w)[:, None] * self.hv[m, s0:e] + w[:, None] * hv)
        if n_in > 1 and travel:  # while travelling in, face where you go
            vel = np.gradient(new[: n_in + 1], axis=0)[:n_in] * self.fps
            mix[:n_in] = _unit(vel / 3.0 + mix[:n_in])
        self.pos[m, s0:e] = new
        self.hv[m, s0:e] = mix
        posture = {"kappa": kappa, "ktail": ktail, "elong": elong}
        for name, val in posture.items():
            if val is None:
                continue
            arr = getattr(self, name)
            cur = arr[m, s0:e]
            arr[m, s0:e] = cur + w * (np.broadcast_to(val, (L,)) - cur)
        if e >= self.n:
            return
        # return to the mouse's own path
        delta = new[-1] - old_pos[-1]
        tau = max(self.fps, float(np.linalg.norm(delta)) / 8.0 * self.fps)
        k = min(self.n - e, int(5 * tau))
        self.pos[m, e:e + k] += delta * np.exp(-(np.arange(k) + 1) / tau)[:, None]
        k = min(self.n - e, self.f(0.4))
        u = 1 - _smoothstep((np.arange(k) + 1) / (k + 1))
        self.hv[m, e:e + k] = _unit(self.hv[m, e:e + k] * (1 - u)[:, None] + mix[-1] * u[:, None])
        k = min(self.n - e, self.f(0.3))
        u = 1 - _smoothstep((np.arange(k) + 1) / (k + 1))
        for name, val in posture.items():
            if val is not None:
                arr = getattr(self, name)
                arr[m, e:e + k] = arr[m, e:e + k] * (1 - u) + arr[m, e - 1] * u

    def chain_approach(self, iv: Interval, s0: int) -> list[Interval]:
        """A long walk in towards a contact is an approach, where the pair labels one."""
        if (iv.agent, iv.target, "approach") in self.labeled and iv.start - s0 >= self.f(0.4):
            return [Interval(iv.agent, iv.target, "approach", s0, iv.start, 0, kinematic=False)]
        return []


# Per-action parameters of each family (cm, s, rad).
CONTACT = {  # the agent's nose on a point of the target (body frame of the target)
    "sniff": dict(point="flank", mode="side", slow=0.25, ang=0.25, jit=0.25, jit_tau=0.3),
    "sniffbody": dict(point="flank", mode="side", slow=0.25, ang=0.25, jit=0.25, jit_tau=0.3),
    "sniffface": dict(point=(NOSE_S + 0.6, 0.0), mode="oppose", slow=0.25, ang=0.2, jit=0.2, jit_tau=0.3),
    "reciprocalsniff": dict(point=(NOSE_S + 0.6, 0.0), mode="oppose", slow=0.2, ang=0.2, jit=0.2, jit_tau=0.3),
    "sniffgenital": dict(point=(S_TAIL_BASE - 0.6, 0.0), mode="align", slow=0.25, ang=0.2, jit=0.25, jit_tau=0.3),
    "allogroom": dict(point="neck", mode="side", turn=0.5, slow=0.1, ang=0.15, jit=0.45, jit_tau=0.12),
    "dominancegroom": dict(point="back", mode="align", turn=0.7, slow=0.1, ang=0.15, jit=0.4, jit_tau=0.12, elong=1.05),
}
PURSUIT = {
    "chase": dict(speed=(25.0, 40.0), lag=(0.2, 0.3), turn=1.0, lateral=0.0, jit=0.0),
    "chaseattack": dict(speed=(25.0, 38.0), lag=(0.1, 0.16), turn=1.2, lateral=0.0, jit=0.9),
    "follow": dict(speed=(9.0, 15.0), lag=(0.6, 0.9), turn=0.7, lateral=0.0, jit=0.0),
    "shepherd": dict(speed=(7.0, 12.0), lag=(0.5, 0.8), turn=0.6, lateral=3.0, jit=0.0),
}
FLEE = {
    "escape": dict(speed=(25.0, 40.0), turn=1.0, start_close=False),
    "avoid": dict(speed=(12.0, 20.0), turn=0.8, start_close=False),
    "flinch": dict(speed=(30.0, 45.0), turn=0.5, start_close=False),
    "disengage": dict(speed=(10.0, 18.0), turn=0.6, start_close=True),
    "run": dict(speed=(25.0, 38.0), turn=0.8, start_close=False),
}
MOUNT = {  # the agent's body centre at (dx, +-lat) in the target's frame, heading turned by +-turn
    "mount": dict(dx=-3.0, lat=0.0, lat_sd=0.3, turn=0.0, amp=0.5, hz=3.5, slow=0.15, elong=1.12, ang=0.12, jit=0.1),
    "intromit": dict(dx=-2.6, lat=0.0, lat_sd=0.2, turn=0.0, amp=0.8, hz=1.2, slow=0.08, elong=1.15, ang=0.08, jit=0.05),
    "attemptmount": dict(dx=-3.6, lat=0.0, lat_sd=1.0, turn=0.0, amp=0.6, hz=3.0, slow=0.35, elong=1.05, ang=0.3, jit=0.4),
    "dominancemount": dict(dx=-3.2, lat=0.0, lat_sd=0.3, turn=0.0, amp=0.3, hz=2.0, slow=0.15, elong=1.1, ang=0.15, jit=0.15),
    "ejaculate": dict(dx=-2.4, lat=0.0, lat_sd=0.1, turn=0.0, amp=0.0, hz=0.0, slow=0.02, elong=1.1, ang=0.03, jit=0.02),
    "dominance": dict(dx=-0.5, lat=1.8, lat_sd=0.3, turn=0.8, amp=0.0, hz=0.0, slow=0.1, elong=1.05, ang=0.15, jit=0.1),
}
SELF = {
    "rear": dict(slow=0.05, elong=0.55, kappa=0.0, ksd=0.05, jit=0.1, wall=False),
    "climb": dict(slow=0.05, elong=0.6, kappa=0.0, ksd=0.05, jit=0.15, wall=True),
    "selfgroom": dict(slow=0.03, elong=0.85, kappa=(0.35, 0.45), ksd=0.06, jit=0.15, hz=3.0, kamp=0.08),
    "genitalgroom": dict(slow=0.03, elong=0.75, kappa=(0.5, 0.6), ksd=0.05, jit=0.15, hz=2.0, kamp=0.05),
    "freeze": dict(slow=0.0, elong=None, kappa=None, ksd=0.0, jit=0.0),
    "rest": dict(slow=0.0, elong=0.8, kappa=(0.15, 0.25), ksd=0.01, jit=0.02),
    "huddle": dict(slow=0.02, elong=0.85, kappa=(0.08, 0.15), ksd=0.02, jit=0.05),
    "dig": dict(slow=0.15, elong=0.92, kappa=0.0, ksd=0.05, jit=0.2, hz=5.0, amp=0.5),
    "biteobject": dict(jit=0.35, jit_tau=0.06, ang=0.3),
    "exploreobject": dict(jit=0.25, jit_tau=0.3, ang=0.6),
}


def _contact(sc: Scene, iv: Interval) -> list[Interval]:
    """Agent's nose on a point of the target (sniff family, grooming the other): slow, close, head moving."""
    p = CONTACT[iv.action]
    a, b, s, e = iv.agent - 1, iv.target - 1, iv.start, iv.stop
    rng = sc.rng
    sb = s - iv.lead  # the target slows from the start of the reserved lead
    tpos, thv = sc.warp(b, sb, e, p["slow"], sc.f(0.5))
    sc.set(b, sb, sb, e, tpos, thv, travel=False)
    side = 1.0 if rng.random() < 0.5 else -1.0
    if p["point"] == "flank":
        point = (rng.uniform(-1.5, 1.8), 1.7 * side)
    elif p["point"] == "neck":
        point = (rng.uniform(2.4, 3.2), 0.9 * side)
    elif p["point"] == "back":
        point = (rng.uniform(0.0, 1.6), 0.6 * side)
    else:
        point = p["point"]
    L = e - sb
    c = sc.part_world(b, sb, e, point) + sc.wobble(L, p["jit_tau"], p["jit"], 2)
    alpha = rng.uniform(-p["ang"], p["ang"]) + sc.wobble(L, 0.8, p["ang"])
    if p["mode"] == "side":
        base = _rot_angle(-_rot_angle(thv, side * np.pi / 2), -side * p.get("turn", 0.0))  # facing the flank
    elif p["mode"] == "oppose":
        base = -thv
    else:
        base = _rot_angle(thv, side * p.get("turn", 0.0))
    hv = _rot_angle(base, alpha)
    kappa = sc.wobble(L, 0.4, 0.04)
    elong = np.full(L, p.get("elong", 1.0))
    pos = c - _rotate(hv, sc.nose_local(a, kappa, elong))
    i = s - sb
    lead = sc.travel_lead(a, s, pos[i], 12.0, 0.25, iv.lead)
    j = i - lead
    sc.set(a, s - lead, s, e, pos[j:], hv[j:], kappa=kappa[j:], elong=elong[j:])
    return sc.chain_approach(iv, s - lead)


def _approach(sc: Scene, iv: Interval) -> list[Interval]:
    """Agent walks towards the target at a moderate speed; the distance shrinks to about a body length."""
    a, b, s, e = iv.agent - 1, iv.target - 1, iv.start, iv.stop
    s0 = s - iv.lead
    tpos, thv = sc.warp(b, s0, e, 0.6, sc.f(0.3))
    sc.set(b, s0, s0, e, tpos, thv, travel=False)
    n = e - s
    rel = sc.pos[a, s] - tpos[iv.lead]
    d_now = float(np.linalg.norm(rel))
    u0 = rel / d_now if d_now > 1e-6 else np.array([1.0, 0.0])
    d1 = sc.rng.uniform(6.5, 8.5) * sc.scale[b]
    d0 = float(np.clip(d_now, d1 + 4.0, d1 + 18.0 * n / sc.fps))
    L = e - s0
    dist = np.full(L, d0)
    dist[iv.lead:] = d0 + (d1 - d0) * (np.arange(n) + 1) / n
    u = _rot_angle(u0, np.cumsum(sc.wobble(L, 0.5, 0.6)) / sc.fps)
    pos = tpos + dist[:, None] * u
    hv = _rot_angle(-u, sc.wobble(L, 0.3, 0.15))
    elong = np.full(L, 1.05)
    sc.set(a, s0, s, e, pos, hv, elong=elong)
    return []


def run_path(sc: Scene, p0: np.ndarray, h0: np.ndarray, speeds: np.ndarray, turn: float) -> tuple[np.ndarray, np.ndarray]:
    """A run from ``p0`` heading ``h0`` at ``speeds`` (n,) cm/s with smooth random turns, walls reflecting."""
    n = len(speeds)
    omega = turn * smooth_noise(sc.rng, (), n, 0.3 * sc.fps)
    theta = math.atan2(h0[1], h0[0]) + np.cumsum(omega) / sc.fps
    dirs = np.stack([np.cos(theta), np.sin(theta)], -1)
    raw = sc.arena.unfold(p0) + np.cumsum((speeds / sc.fps)[:, None] * dirs, axis=0)
    pos, sign = sc.arena.fold(raw)
    vel = np.gradient(pos, axis=0) * sc.fps if n > 1 else np.zeros_like(pos)
    hv = _unit(smooth(vel + 0.5 * sign * dirs, 0.04 * sc.fps, axis=0))
    return pos, hv


def _ramp_speed(sc: Scene, m: int, s0: int, n: int, v: float, ramp: int) -> np.ndarray:
    v0 = float(np.linalg.norm(sc.pos[m, min(s0 + 1, sc.n - 1)] - sc.pos[m, s0])) * sc.fps
    sp = np.full(n, v)
    r = min(ramp, n)
    sp[:r] = v0 + (v - v0) * _smoothstep((np.arange(r) + 1) / (r + 1))
    return sp


def _pursuit(sc: Scene, iv: Interval) -> list[Interval]:
    """Target runs (fast for chase); the agent runs on the target's track ``lag`` s behind, same heading."""
    p = PURSUIT[iv.action]
    a, b, s, e = iv.agent - 1, iv.target - 1, iv.start, iv.stop
    rng = sc.rng
    tl = min(sc.f(0.3), iv.lead)
    sb = s - tl
    speeds = _ramp_speed(sc, b, sb, e - sb, rng.uniform(*p["speed"]), tl)
    tpos, thv = run_path(sc, sc.pos[b, sb], sc.hv[b, sb], speeds, p["turn"])
    sc.set(b, sb, sb, e, tpos, thv, elong=1.08)
    lag = sc.f(rng.uniform(*p["lag"]))
    s0 = s - iv.lead
    idx = np.clip(np.arange(s0, e) - lag, 0, sc.n - 1)
    hv = sc.hv[b, idx]
    pos = sc.pos[b, idx] + _rotate(hv, np.array([0.0, p["lateral"] * (1 if rng.random() < 0.5 else -1)]))
    L = e - s0
    if p["jit"]:
        pos = pos + sc.wobble(L, 0.06, p["jit"], 2)
        hv = _rot_angle(hv, sc.wobble(L, 0.1, 0.3))
    lead = sc.travel_lead(a, s, pos[iv.lead], 20.0, 0.2, iv.lead)
    j = iv.lead - lead
    sc.set(a, s - lead, s, e, pos[j:], hv[j:], elong=np.full(L - j, 1.08))
    return []


def _flee(sc: Scene, iv: Interval) -> list[Interval]:
    """Agent runs away from the target (escape fast, avoid moderate, flinch a short jump; run: self)."""
    p = FLEE[iv.action]
    a, b, s, e = iv.agent - 1, iv.target - 1, iv.start, iv.stop
    rng = sc.rng
    if a == b:
        away = sc.hv[a, s]
        p0 = sc.pos[a, s]
    else:
        rel = sc.pos[a, s] - sc.pos[b, s]
        away = _unit(rel) if np.linalg.norm(rel) > 1e-6 else sc.hv[a, s]
        p0 = sc.pos[b, s] + away * 4.5 * sc.scale[b] if p["start_close"] else sc.pos[a, s]
    away = _rot_angle(away, rng.uniform(-0.4, 0.4))
    speeds = np.full(e - s, rng.uniform(*p["speed"]))
    r = min(sc.f(0.15), e - s)
    speeds[:r] *= _smoothstep((np.arange(r) + 1) / (r + 1)) * 0.7 + 0.3
    pos, hv = run_path(sc, sc.arena.clamp(p0), away, speeds, p["turn"])
    lead = iv.lead if p["start_close"] else min(iv.lead, sc.f(0.25))
    pos = np.concatenate([np.repeat(pos[:1], lead, 0), pos])
    hv = np.concatenate([np.repeat(away[None], lead, 0), hv])
    sc.set(a, s - lead, s, e, pos, hv, elong=1.08, travel=p["start_close"])
    return []


def _fight(sc: Scene, iv: Interval) -> list[Interval]:
    """Attack / tussle: body to body, fast erratic jitter of both, the agent circling and lunging."""
    a, b, s, e = iv.agent - 1, iv.target - 1, iv.start, iv.stop
    rng = sc.rng
    sb = s - iv.lead
    L = e - sb
    tussle = iv.action == "tussle"
    tpos, thv = sc.warp(b, sb, e, 0.3, sc.f(0.3))
    w = np.zeros(L)
    w[iv.lead:] = 1.0
    tpos = tpos + w[:, None] * sc.wobble(L, 0.08, 1.2 if tussle else 0.8, 2)
    rel = sc.pos[a, s] - tpos[iv.lead]
    phi0 = math.atan2(rel[1], rel[0])
    phi = phi0 + np.cumsum(sc.wobble(L, 0.2, 4.0)) / sc.fps
    d = rng.uniform(3.5, 4.5) + sc.wobble(L, 0.1, 0.6)
    pos = tpos + np.stack([np.cos(phi), np.sin(phi)], -1) * d[:, None] + sc.wobble(L, 0.06, 1.2, 2)
    hv = _rot_angle(_unit(tpos - pos), sc.wobble(L, 0.1, 0.45))
    thv_new = _rot_angle(_unit(pos - tpos), sc.wobble(L, 0.12, 0.6 if tussle else 0.5))
    thv = _unit((1 - w)[:, None] * thv + w[:, None] * thv_new)
    sc.set(b, sb, sb, e, tpos, thv, kappa=sc.wobble(L, 0.15, 0.12), elong=np.where(w > 0, 0.85, 1.0))
    lead = sc.travel_lead(a, s, pos[iv.lead], 20.0, 0.2, iv.lead)
    j = iv.lead - lead
    sc.set(a, s - lead, s, e, pos[j:], hv[j:], kappa=sc.wobble(L, 0.15, 0.15)[j:], elong=1.0 + sc.wobble(L - j, 0.2, 0.05))
    return []


def _defend(sc: Scene, iv: Interval) -> list[Interval]:
    """Agent faces the lunging target, hunched, nearly still."""
    a, b, s, e = iv.agent - 1, iv.target - 1, iv.start, iv.stop
    s0 = s - iv.lead
    L = e - s0
    apos, ahv = sc.warp(a, s0, e, 0.2, sc.f(0.3))
    face = _unit(sc.pos[b, s0:e] - apos)
    ahv = _unit(0.3 * ahv + face)
    ahv = _rot_angle(ahv, sc.wobble(L, 0.15, 0.2))
    apos = apos + sc.wobble(L, 0.1, 0.3, 2)
    sc.set(a, s0, s, e, apos, ahv, kappa=sc.wobble(L, 0.2, 0.1), elong=0.8, travel=False)
    t = np.arange(L) / sc.fps
    d = sc.rng.uniform(5.0, 7.0) - 1.5 * np.abs(np.sin(2 * np.pi * 1.5 * t)) + sc.wobble(L, 0.08, 0.6)
    bpos = sc.pos[a, s0:e] + sc.hv[a, s0:e] * d[:, None]
    bhv = _rot_angle(-sc.hv[a, s0:e], sc.wobble(L, 0.1, 0.3))
    lead = sc.travel_lead(b, s, bpos[iv.lead], 20.0, 0.2, iv.lead)
    j = iv.lead - lead
    sc.set(b, s - lead, s, e, bpos[j:], bhv[j:])
    return []


def _submit(sc: Scene, iv: Interval) -> list[Interval]:
    """Agent hunched and still, turned away; the target looms close behind it."""
    a, b, s, e = iv.agent - 1, iv.target - 1, iv.start, iv.stop
    s0 = s - iv.lead
    L = e - s0
    apos, ahv = sc.warp(a, s0, e, 0.1, sc.f(0.3))
    sign = 1.0 if sc.rng.random() < 0.5 else -1.0
    sc.set(a, s0, s, e, apos, ahv, kappa=sign * 0.12 + sc.wobble(L, 0.3, 0.03), elong=0.78, travel=False)
    off = np.array([-5.5, 2.0 * sign])
    bpos = sc.pos[a, s0:e] + _rotate(sc.hv[a, s0:e], np.broadcast_to(off, (L, 2))) + sc.wobble(L, 0.3, 0.3, 2)
    bhv = _unit(sc.pos[a, s0:e] - bpos)
    lead = sc.travel_lead(b, s, bpos[iv.lead], 12.0, 0.2, iv.lead)
    j = iv.lead - lead
    sc.set(b, s - lead, s, e, bpos[j:], bhv[j:])
    return []


def _mount(sc: Scene, iv: Interval) -> list[Interval]:
    """Agent's body on the target's rear, headings aligned, slow, elongated, rhythmic thrusts."""
    p = MOUNT[iv.action]
    a, b, s, e = iv.agent - 1, iv.target - 1, iv.start, iv.stop
    rng = sc.rng
    sb = s - iv.lead
    L = e - sb
    tpos, thv = sc.warp(b, sb, e, p["slow"], sc.f(0.5))
    sc.set(b, sb, sb, e, tpos, thv, elong=np.full(L, 0.92), travel=False)
    side = 1.0 if rng.random() < 0.5 else -1.0
    t = np.arange(L) / sc.fps
    dx = p["dx"] * sc.scale[b] + p["amp"] * np.sin(2 * np.pi * p["hz"] * t + rng.uniform(0, 2 * np.pi))
    lat = side * p["lat"] + sc.wobble(L, 0.4, p["lat_sd"])
    pos = tpos + _rotate(thv, np.stack([dx, lat], -1)) + sc.wobble(L, 0.1, p["jit"], 2)
    hv = _rot_angle(thv, side * p["turn"] + sc.wobble(L, 0.5, p["ang"]))
    lead = sc.travel_lead(a, s, pos[iv.lead], 12.0, 0.3, iv.lead)
    j = iv.lead - lead
    sc.set(a, s - lead, s, e, pos[j:], hv[j:], kappa=sc.wobble(L - j, 0.4, 0.03), elong=np.full(L - j, p["elong"]))
    return sc.chain_approach(iv, s - lead)


def _self(sc: Scene, iv: Interval) -> list[Interval]:
    """Self behaviours: (nearly) still with a posture signature; climb goes to a wall first."""
    p = SELF[iv.action]
    a, s, e = iv.agent - 1, iv.start, iv.stop
    rng = sc.rng
    s0 = s - iv.lead
    L = e - s0
    n_in = iv.lead
    if p.get("wall"):
        wp, normal = sc.arena.wall_point(sc.pos[a, s], 3.0)
        lead = sc.travel_lead(a, s, wp, 12.0, 0.2, iv.lead)
        s0, L, n_in = s - lead, e - s + lead, lead
        pos = np.repeat(wp[None], L, 0)
        hv = np.repeat(normal[None], L, 0)
    else:
        pos, hv = sc.warp(a, s0, e, p["slow"], max(1, n_in))
    pos = pos + sc.wobble(L, 0.15, p["jit"], 2)
    kappa = None
    if p["kappa"] is not None:
        k0 = p["kappa"] if np.isscalar(p["kappa"]) else rng.uniform(*p["kappa"]) * (1 if rng.random() < 0.5 else -1)
        kappa = k0 + sc.wobble(L, 0.3, p["ksd"])
        if "kamp" in p:
            kappa = kappa + np.sign(k0) * p["kamp"] * np.sin(2 * np.pi * p["hz"] * np.arange(L) / sc.fps)
    if "amp" in p:  # dig: head bobbing forwards and back
        pos = pos + hv * (p["amp"] * np.sin(2 * np.pi * p["hz"] * np.arange(L) / sc.fps))[:, None]
    elong = None if p["elong"] is None else p["elong"] + sc.wobble(L, 0.3, 0.02)
    ktail = None
    if iv.action == "freeze":  # everything stops, the tail too
        pos = np.repeat(pos[n_in:n_in + 1], L, 0)
        pos[:n_in] = sc.pos[a, s0:s]
        ktail = np.full(L, sc.ktail[a, s])
        kappa = np.full(L, sc.kappa[a, s])
    sc.set(a, s0, s, e, pos, hv, kappa=kappa, elong=elong, ktail=ktail, travel=bool(p.get("wall")))
    return []


def _object(sc: Scene, iv: Interval) -> list[Interval]:
    """Bite / explore an (untracked) object: walk to it, nose on it, head moving."""
    p = SELF[iv.action]
    a, s, e = iv.agent - 1, iv.start, iv.stop
    obj = sc.objects[int(sc.rng.integers(len(sc.objects)))]
    s0 = s - iv.lead
    L = e - s0
    toward = _unit(obj - sc.pos[a, s])
    hv = _rot_angle(np.repeat(toward[None], L, 0), sc.wobble(L, 0.6, p["ang"]))
    kappa = sc.wobble(L, 0.3, 0.05)
    elong = np.full(L, 0.95)
    pos = obj + sc.wobble(L, p["jit_tau"], p["jit"], 2) - _rotate(hv, sc.nose_local(a, kappa, elong))
    pos = sc.arena.clamp(pos)
    lead = sc.travel_lead(a, s, pos[iv.lead], 12.0, 0.2, iv.lead)
    j = iv.lead - lead
    sc.set(a, s - lead, s, e, pos[j:], hv[j:], kappa=kappa[j:], elong=elong[j:])
    return []


def _forage(sc: Scene, iv: Interval) -> list[Interval]:
    return _object(sc, iv) if iv.action in ("biteobject", "exploreobject") else _self(sc, iv)


MODIFIERS = {
    "contact": _contact, "approach": _approach, "pursuit": _pursuit, "flee": _flee, "fight": _fight,
    "defend": _defend, "submit": _submit, "mount": _mount, "rear": _self, "groom": _self,
    "forage": _forage, "still": _self,
}


def apply_behaviours(sc: Scene, intervals: list[Interval]) -> list[Interval]:
    """Run every kinematic interval's modifier in time order; returns all labels (planted + implied)."""
    labels = [iv for iv in intervals if not iv.kinematic]
    for iv in sorted((iv for iv in intervals if iv.kinematic), key=lambda iv: (iv.start, iv.agent, iv.target)):
        labels.append(iv)
        labels += MODIFIERS[FAMILY[iv.action]](sc, iv)
    sc.pos[:] = sc.arena.clamp(sc.pos)
    return labels


# ----------------------------------------------------------------------------- presets and plans


@dataclass(frozen=True)
class LabPick:
    """Which videos of one real lab profile a preset makes, and how they may be narrowed."""

    lab: str
    n_train: int
    n_test: int = 0
    fps: float | None = None  # use a setup with this fps
    n_mice: int | None = None  # exactly this many mice (labelled triples beyond them are dropped)
    parts: str | None = None  # a body-part set containing this substring (e.g. "headpiece")
    require: tuple[str, ...] = ()  # a labelled pattern holding all these actions
    actions: tuple[str, ...] | None = None  # keep only these labelled actions


@dataclass(frozen=True)
class Preset:
    picks: tuple[LabPick, ...] | None  # None: every lab, as many videos as the real labelled set
    frames: tuple[int, int] | None  # frames per video (uniform range); None: the lab's durations
    n_test: int = 0  # test videos when ``picks`` is None
    fill: float | None = 0.5  # planted time share per mouse (balanced actions); None: the real rates
    len_clip: tuple[float, float] = (0.0, 600.0)  # interval length limits, s
    min_per_action: int = 0  # at least this many intervals per labelled action per video
    rate_scale: float = 1.0  # multiplies the real rates (fill=None)
    seconds: tuple[float, float] | None = None  # video length in seconds (overrides ``frames``): fps-fair
    hard: bool = False  # real-data difficulties: see ``lookalike_triples`` and ``degrade_tracking``


PRESETS: dict[str, Preset] = {
    # tests: 3 labs with different fps (25 / 30 / 10), body parts (18 DLC with headpiece, 7 MARS,
    # 7 SLEAP), 3 and 2 mice; sniffface + sniffgenital and chase all planted; 2 test videos
    "tiny": Preset(
        picks=(
            LabPick("AdaptableSnail", 2, 1, fps=25.0, n_mice=3, parts="headpiece"),
            LabPick("CalMS21_task1", 2, 1, require=("sniffface", "sniffgenital")),
            LabPick("JovialSwallow", 2, 0),
        ),
        frames=(400, 600), fill=0.6, len_clip=(0.6, 2.5), min_per_action=1,
    ),
    # CPU demo: 3 labs, 8 actions (approach, attack, chase, mount, sniff, sniffgenital, rear, selfgroom)
    "demo": Preset(
        picks=(
            LabPick("CRIM13", 12, 1, actions=("approach", "attack", "mount", "sniff", "rear", "selfgroom")),
            LabPick("NiftyGoldfinch", 12, 2, actions=(
                "approach", "attack", "chase", "sniff", "sniffgenital", "rear", "selfgroom")),
            LabPick("UppityFerret", 12, 1, require=("mount",), actions=(
                "mount", "sniff", "sniffgenital", "rear", "selfgroom")),
        ),
        frames=(2400, 2400), fill=0.5, len_clip=(0.8, 4.0), min_per_action=1,
    ),
    # independent-data stand-in (issue 14): six real lab profiles (2-4 mice, 4-18 body parts, 10 to 120
    # fps), 2-minute videos, the real action rates and durations, per-lab tracker noise (white and
    # correlated), single-frame outliers, short identity swaps, dropped rows, and unlabelled
    # look-alike behaviour next to the labelled one
    "hard": Preset(
        picks=(
            LabPick("AdaptableSnail", 5, 2, parts="headpiece"),
            LabPick("GroovyShrew", 5, 2),
            LabPick("JovialSwallow", 5, 1),
            LabPick("LyricalHare", 5, 2),
            LabPick("CalMS21_task1", 5, 2, require=("sniff",)),
            LabPick("UppityFerret", 5, 1),
        ),
        frames=None, seconds=(110.0, 130.0), fill=None, rate_scale=1.0, len_clip=(0.2, 40.0),
        min_per_action=1, hard=True,
    ),
    # the real labelled set's scale: every lab, its video count, durations and action rates
    "real": Preset(picks=None, frames=None, n_test=10, fill=None, len_clip=(0.0, 600.0)),
}


@dataclass
class VideoSpec:
    """Everything needed to generate one video (picklable; generation is a pure function of it)."""

    lab: str
    video_id: int
    split: str
    seed: int
    n_frames: int
    fps: float
    pix_per_cm: float
    width: int
    height: int
    arena_width_cm: float
    arena_height_cm: float
    arena_shape: str
    arena_type: str
    tracking_method: str
    parts: list[str]
    n_mice: int
    triples: list[tuple[int, int, str]]  # labelled (agent, target, action); self: target == agent
    mice: list[list[Any]]  # per mouse: strain, color, sex, id, age, condition
    rates: dict[str, float] = field(default_factory=dict)
    lengths: dict[str, tuple[float, float]] = field(default_factory=dict)
    len_clip: tuple[float, float] = (0.0, 600.0)
    min_per_action: int = 0
    labeled_empty: bool = False  # behaviors_labeled missing (a tracking-only row)
    hard: bool = False  # Preset.hard: unlabelled look-alikes and a degraded tracker

    def metadata_row(self) -> dict[str, Any]:
        row: dict[str, Any] = {"lab_id": self.lab, "video_id": self.video_id}
        for i in range(4):
            vals = self.mice[i] if i < len(self.mice) else [None] * 6
            for f, v in zip(("strain", "color", "sex", "id", "age", "condition"), vals):
                row[f"mouse{i + 1}_{f}"] = v
        row.update({
            "frames_per_second": self.fps,
            "video_duration_sec": round(self.n_frames / self.fps, 2),
            "pix_per_cm_approx": self.pix_per_cm,
            "video_width_pix": self.width,
            "video_height_pix": self.height,
            "arena_width_cm": self.arena_width_cm,
            "arena_height_cm": self.arena_height_cm,
            "arena_shape": self.arena_shape,
            "arena_type": self.arena_type,
            "body_parts_tracked": json.dumps(self.parts),
            "behaviors_labeled": None if self.labeled_empty else json.dumps(sorted(triple_strings(self.triples))),
            "tracking_method": self.tracking_method,
        })
        return row


def triple_strings(triples: list[tuple[int, int, str]]) -> list[str]:
    return [f"mouse{a},{'self' if a == t else f'mouse{t}'},{act}" for a, t, act in triples]


def _parse_triple(s: str) -> tuple[int, int, str]:
    a, t, act = s.split(",")
    return int(a), (int(a) if t == "self" else int(t)), act


def _weighted(rng: np.random.Generator, items: list, weights: list[float]):
    w = np.asarray(weights, dtype=np.float64)
    return items[int(rng.choice(len(items), p=w / w.sum()))]


def _lab_rates(lab: dict, scale: float) -> tuple[dict[str, float], dict[str, tuple[float, float]]]:
    rates, lengths = {}, {}
    for act, a in lab["actions"].items():
        rates[act] = a["per_pair_minute"] * scale
        ln = a["length_sec"]
        if ln.get("n", 0) > 0:
            lengths[act] = (ln["log_mean"], max(ln["log_std"], 0.05))
    return rates, lengths


def _fill_rates(triples: list[tuple[int, int, str]], lengths: dict[str, tuple[float, float]], fps: float,
                fill: float) -> dict[str, float]:
    """Balanced per-triple rates so that each mouse spends about ``fill`` of its time in planted behaviours."""
    load: dict[int, int] = {}
    for a, t, _ in triples:
        for m in {a, t}:
            load[m] = load.get(m, 0) + 1
    k = max(load.values()) if load else 1
    rates = {}
    for act in {t[2] for t in triples}:
        mu, sd = lengths.get(act, (0.0, 0.8))
        busy = math.exp(mu + sd * sd / 2) + LEAD_S[FAMILY[act]] * 0.6 + TAIL_S
        rates[act] = fill * 60.0 / busy / k
    return rates


def _video_spec(rng: np.random.Generator, stats: dict, pick: LabPick, preset: Preset, split: str,
                video_id: int, frames: int | None) -> VideoSpec:
    lab = stats["labs"][pick.lab]
    setups = [s for s in lab["setups"] if pick.fps is None or abs(s["frames_per_second"] - pick.fps) < 0.5]
    setup = _weighted(rng, setups, [s["n"] for s in setups])
    wh = _weighted(rng, setup["video_wh"], [x[2] for x in setup["video_wh"]])
    bps = [b for b in lab["body_parts"] if pick.parts is None or any(pick.parts in p for p in b["parts"])]
    parts = list(_weighted(rng, bps, [b["n"] for b in bps])["parts"])
    pats = [p for p in lab["patterns"] if set(pick.require) <= {t.split(",")[2] for t in p["triples"]}]
    if pick.actions is not None:
        pats = [p for p in pats if any(t.split(",")[2] in pick.actions for t in p["triples"])]
    if split == "test" or pick.require or pick.actions is not None:
        pats = [p for p in pats if p["triples"]] or pats
    pat = _weighted(rng, pats, [p["n"] for p in pats])
    triples = [_parse_triple(t) for t in pat["triples"]]
    if pick.actions is not None:
        triples = [t for t in triples if t[2] in pick.actions]
    if pick.n_mice is not None:
        n_mice = pick.n_mice
        triples = [t for t in triples if max(t[0], t[1]) <= n_mice]
    else:
        need = max([max(a, t) for a, t, _ in triples], default=1)
        opts = {int(k): v for k, v in lab["n_mice"].items() if int(k) >= need} or {need: 1}
        n_mice = int(_weighted(rng, list(opts), list(opts.values())))
    # mouse metadata in the lab's style
    styles = [st for st in lab["mouse_styles"] if len(st["mice"]) >= n_mice] or lab["mouse_styles"]
    style = _weighted(rng, styles, [st["n"] for st in styles])["mice"]
    id_range = lab["mouse_id_range"]
    ids = (rng.choice(np.arange(int(id_range[0]), int(id_range[1]) + 1), size=n_mice, replace=False)
           if id_range and id_range[1] - id_range[0] + 1 >= n_mice else [None] * n_mice)
    mice = []
    for i in range(n_mice):
        strain, color, sex, age, cond = style[min(i, len(style) - 1)]
        mice.append([strain, color, sex, None if ids[i] is None else float(ids[i]), age, cond])
    fps = float(setup["frames_per_second"])
    if frames is not None:
        n_frames = int(frames)
    elif preset.seconds is not None:
        n_frames = int(round(rng.uniform(*preset.seconds) * fps))
    elif preset.frames is not None:
        n_frames = int(rng.integers(preset.frames[0], preset.frames[1] + 1))
    else:  # the lab's duration distribution (piecewise-linear inverse cdf through the stored quantiles)
        d = lab["duration_sec"]
        qs = [0.0, *stats["quantiles"], 1.0]
        vals = [d["min"], *d["quantiles"], d["max"]]
        n_frames = int(round(float(np.interp(rng.random(), qs, vals)) * fps))
    n_frames = max(n_frames, int(2 * fps), 60)
    rates, lengths = _lab_rates(lab, preset.rate_scale)
    if preset.fill is not None:
        rates = _fill_rates(triples, lengths, fps, preset.fill)
    return VideoSpec(
        lab=pick.lab, video_id=video_id, split=split, seed=int(rng.integers(2**63 - 1)), n_frames=n_frames,
        fps=fps, pix_per_cm=float(setup["pix_per_cm_approx"]), width=int(wh[0]), height=int(wh[1]),
        arena_width_cm=setup["arena_width_cm"], arena_height_cm=setup["arena_height_cm"],
        arena_shape=setup["arena_shape"], arena_type=setup["arena_type"],
        tracking_method=setup["tracking_method"], parts=parts, n_mice=n_mice, triples=triples, mice=mice,
        rates=rates, lengths=lengths, len_clip=preset.len_clip, min_per_action=preset.min_per_action,
        labeled_empty=not pat["triples"], hard=preset.hard,
    )


def _split_counts(picks: tuple[LabPick, ...], total: int | None, attr: str) -> list[int]:
    base = [getattr(p, attr) for p in picks]
    if total is None:
        return base
    out = [0] * len(picks)
    order = [i for i in range(len(picks)) if base[i] > 0] or list(range(len(picks)))
    for k in range(total):
        out[order[k % len(order)]] += 1
    return out


def plan_dataset(preset: str = "demo", seed: int = 0, n_train: int | None = None, n_test: int | None = None,
                 frames: int | None = None) -> list[VideoSpec]:
    """The videos a preset makes (train first, then test), deterministic in ``seed``."""
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; choose one of {sorted(PRESETS)}")
    p = PRESETS[preset]
    stats = load_stats()
    rng = np.random.default_rng([seed, 0x5EED])
    if p.picks is not None:
        picks = p.picks
        tr = _split_counts(picks, n_train, "n_train")
        te = _split_counts(picks, n_test, "n_test")
        jobs = [(pk, "train") for pk, k in zip(picks, tr) for _ in range(k)]
        jobs += [(pk, "test") for pk, k in zip(picks, te) for _ in range(k)]
    else:
        labs = sorted(stats["labs"])
        counts = np.array([stats["labs"][lab]["n_videos"] for lab in labs], dtype=np.float64)
        if n_train is None:
            train_labs = [lab for lab, c in zip(labs, counts) for _ in range(int(c))]
        else:  # every lab once (while there is room), the rest in proportion to the real counts
            first = list(rng.permutation(labs))[: min(n_train, len(labs))]
            rest = list(rng.choice(labs, size=max(0, n_train - len(first)), p=counts / counts.sum()))
            train_labs = sorted(first + rest)
        k_test = p.n_test if n_test is None else n_test
        test_labs = sorted(rng.choice(labs, size=k_test, p=counts / counts.sum())) if k_test else []
        jobs = [(LabPick(str(lab), 1), "train") for lab in train_labs]
        jobs += [(LabPick(str(lab), 0, 1), "test") for lab in test_labs]
    ids: set[int] = set()
    specs = []
    for pick, split in jobs:
        vid = int(rng.integers(10_000_000, 2_147_483_647))
        while vid in ids:
            vid = int(rng.integers(10_000_000, 2_147_483_647))
        ids.add(vid)
        specs.append(_video_spec(rng, stats, pick, p, split, vid, frames))
    return specs


# ----------------------------------------------------------------------------- one video


def _arena_of(spec: VideoSpec) -> tuple[Arena, np.ndarray]:
    """The arena (cm, centred) as it fits in the frame, and the arena centre in px."""
    ppc = spec.pix_per_cm
    aw = min(float(spec.arena_width_cm or 30.0), spec.width / ppc * 0.96)
    ah = min(float(spec.arena_height_cm or 30.0), spec.height / ppc * 0.96)
    circular = "circ" in str(spec.arena_shape)
    if circular:
        aw = ah = min(aw, ah)
    margin = 2.5
    arena = Arena(max(aw / 2 - margin, 1.0), max(ah / 2 - margin, 1.0), circular)
    return arena, np.array([spec.width / 2.0, spec.height / 2.0])


def simulate(spec: VideoSpec) -> tuple[Scene, list[Interval], np.random.Generator]:
    """Kinematics of every mouse (cm) and the planted labels of one video."""
    rng = np.random.default_rng(spec.seed)
    arena, _ = _arena_of(spec)
    kin = background_motion(rng, spec.n_mice, spec.n_frames, spec.fps, arena)
    scale = rng.uniform(0.9, 1.08, spec.n_mice)
    scale[0] = max(scale[0], 1.0)  # the resident is usually the bigger one
    objects = arena.random_points(rng, 2)
    sc = Scene(kin, scale, spec.fps, arena, rng, objects)
    sc.labeled = set(spec.triples)
    triples, rates = spec.triples, spec.rates
    if spec.hard:
        extra = lookalike_triples(spec.triples, spec.n_mice)
        triples = list(spec.triples) + extra
        rates = dict(spec.rates)
        for _, _, alt in extra:
            rates.setdefault(alt, LOOKALIKE_RATE * max([v for k, v in spec.rates.items()
                                                         if FAMILY[k] == FAMILY[alt]] or [0.5]))
    intervals = schedule(rng, triples, spec.n_frames, spec.fps, spec.n_mice, rates, spec.lengths,
                         spec.len_clip, spec.min_per_action if not spec.hard else 0)
    if spec.hard and spec.min_per_action:  # the labelled ones at least once; look-alikes only at their rate
        intervals = _ensure_labelled(rng, intervals, spec)
    labels = apply_behaviours(sc, intervals)
    labels = [iv for iv in labels if (iv.agent, iv.target, iv.action) in sc.labeled and iv.stop > iv.start]
    labels.sort(key=lambda iv: (iv.start, iv.agent, iv.target, iv.action))
    return sc, labels, rng


def _ensure_labelled(rng: np.random.Generator, intervals: list[Interval], spec: VideoSpec) -> list[Interval]:
    """Plant one more interval of each labelled action the schedule left out (where a mouse is free)."""
    have = {iv.action for iv in intervals if (iv.agent, iv.target, iv.action) in set(spec.triples)}
    missing = [t for t in spec.triples if t[2] not in have]
    if not missing:
        return intervals
    extra = schedule(rng, missing, spec.n_frames, spec.fps, spec.n_mice, {}, spec.lengths, spec.len_clip, 1)
    busy = np.zeros((spec.n_mice + 1, spec.n_frames), dtype=bool)
    tail = int(round(TAIL_S * spec.fps))
    for iv in intervals:
        busy[[iv.agent, iv.target], max(iv.start - iv.lead, 0): iv.stop + tail] = True
    out = list(intervals)
    placed: set[tuple[int, int]] = set()
    for iv in extra:
        span = slice(max(iv.start - iv.lead, 0), iv.stop + tail)
        if not iv.kinematic:  # a reciprocal label rides on the interval planted just before it
            if (iv.start, iv.stop) in placed:
                out.append(iv)
        elif not busy[[iv.agent, iv.target], span].any():
            busy[[iv.agent, iv.target], span] = True
            placed.add((iv.start, iv.stop))
            out.append(iv)
    return out


# an unlabelled behaviour that moves like a labelled one (same family, other details): real labs
# annotate some behaviours and the mice do others, so negatives hold look-alikes
LOOKALIKE: dict[str, str] = {
    "sniff": "allogroom", "sniffbody": "allogroom", "sniffgenital": "dominancegroom", "sniffface": "reciprocalsniff",
    "attack": "tussle", "chase": "follow", "follow": "shepherd", "approach": "follow",
    "mount": "attemptmount", "intromit": "dominancemount", "attemptmount": "dominancemount",
    "rear": "climb", "climb": "rear", "selfgroom": "genitalgroom", "genitalgroom": "selfgroom",
    "escape": "avoid", "avoid": "disengage", "defend": "submit", "dig": "exploreobject",
    "freeze": "rest", "rest": "huddle",
}
LOOKALIKE_RATE = 0.6  # look-alike intervals per minute, as a share of the labelled action's rate


def lookalike_triples(triples: list[tuple[int, int, str]], n_mice: int) -> list[tuple[int, int, str]]:
    """Unlabelled (agent, target, action) look-alikes of the labelled ``triples`` (none already labelled)."""
    labelled = set(triples)
    acts_of: dict[tuple[int, int], set[str]] = {}
    for a, t, act in triples:
        acts_of.setdefault((a, t), set()).add(act)
    out = []
    for (a, t), acts in sorted(acts_of.items()):
        for act in sorted(acts):
            alt = LOOKALIKE.get(act)
            if alt is not None and alt not in acts and (a, t, alt) not in labelled and (a, t, alt) not in out:
                out.append((a, t, alt))
    return out


def tracker_profile(lab: str) -> dict[str, float]:
    """A lab's tracker quality, fixed per lab name (crc32 seed): the same lab, the same tracker."""
    import zlib

    r = np.random.default_rng(zlib.crc32(lab.encode()))
    return {
        "white_cm": float(r.uniform(0.08, 0.35)),  # per-frame jitter on every point
        "corr_cm": float(r.uniform(0.2, 0.9)),  # slowly wandering offset per point (tracker bias)
        "corr_tau_s": float(r.uniform(0.15, 0.6)),
        "outlier_rate": float(r.uniform(5e-4, 4e-3)),  # single-frame jumps of one point
        "outlier_cm": float(r.uniform(4.0, 15.0)),
        "swaps_per_min": float(r.uniform(0.3, 2.5)),  # two mice exchange identities for a moment
        "swap_s": float(r.uniform(0.1, 0.8)),
        "drop_rate": float(r.uniform(0.003, 0.03)),  # a mouse's row missing on a frame
        "gaps_per_min": float(r.uniform(0.2, 1.5)),  # a mouse untracked for a stretch
    }


def degrade_tracking(px: np.ndarray, spec: VideoSpec, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """(T, M, P, 2) px of a whole video -> (degraded px, keep (T, M) rows) with the lab's tracker faults."""
    T, M, P, _ = px.shape
    prof = tracker_profile(spec.lab)
    ppc, fps = spec.pix_per_cm, spec.fps
    px = px + rng.standard_normal(px.shape) * prof["white_cm"] * ppc
    corr = smooth_noise(rng, (M, P, 2), T, prof["corr_tau_s"] * fps)  # (M, P, 2, T)
    px += np.moveaxis(corr, -1, 0) * prof["corr_cm"] * ppc
    out = rng.random((T, M, P)) < prof["outlier_rate"]
    px[out] += rng.normal(0.0, prof["outlier_cm"] * ppc, (int(out.sum()), 2))
    if M >= 2:
        for _ in range(rng.poisson(prof["swaps_per_min"] * T / fps / 60.0)):
            a, b = rng.choice(M, 2, replace=False)
            ln = max(1, int(rng.exponential(prof["swap_s"]) * fps))
            t0 = int(rng.integers(0, max(1, T - ln)))
            px[t0:t0 + ln, [a, b]] = px[t0:t0 + ln, [b, a]]
    keep = rng.random((T, M)) >= prof["drop_rate"]
    for m in range(M):
        for _ in range(rng.poisson(prof["gaps_per_min"] * T / fps / 60.0)):
            ln = int(rng.uniform(0.2, 2.0) * fps)
            t0 = int(rng.integers(1, max(2, T - ln - 1)))
            keep[t0:t0 + ln, m] = False
    keep[0] = keep[-1] = True  # the video's length stays visible in the table
    return px, keep


def render_tracking(sc: Scene, spec: VideoSpec, rng: np.random.Generator):
    """Yield long-format tracking tables (row groups of ``CHUNK_FRAMES`` frames) in px, with tracker noise and gaps."""
    T, M, fps = spec.n_frames, spec.n_mice, spec.fps
    parts = spec.parts
    P = len(parts)
    s_arr = np.array([BODY[p][0] for p in parts])
    y_arr = np.array([BODY[p][1] for p in parts])
    _, centre = _arena_of(spec)
    arena_px = np.array([sc.arena.half_w, sc.arena.half_h]) * spec.pix_per_cm
    slack = np.maximum(np.array([spec.width, spec.height]) / 2 - arena_px - 2.5 * spec.pix_per_cm, 0) * 0.8
    centre = centre + rng.uniform(-1, 1, 2) * slack
    noise_px = TRACKER_NOISE_CM.get(spec.tracking_method, 0.08) * spec.pix_per_cm
    part_sd = noise_px * np.array([PART_NOISE.get(p, 1.0) for p in parts])
    p_nan = rng.uniform(0.002, 0.012) * np.array([PART_NAN.get(p, 1.0) for p in parts])
    # frames dropped from the table, never the first or the last
    keep_frame = rng.random(T) >= rng.uniform(0.0005, 0.003)
    keep_frame[0] = keep_frame[-1] = True
    # a mouse untracked for a stretch: its rows are missing
    keep_mouse = np.ones((T, M), dtype=bool)
    for m in range(M):
        for _ in range(rng.poisson(0.6 * T / fps / 60.0)):
            ln = int(rng.uniform(0.3, 3.0) * fps)
            s = int(rng.integers(1, max(2, T - ln - 1)))
            keep_mouse[s:s + ln, m] = False
    dictionary = pa.array(parts, type=pa.large_string())
    hard_rng = np.random.default_rng([spec.seed, 0x4A4D]) if spec.hard else None  # other presets: same bytes
    for c0 in range(0, T, CHUNK_FRAMES):
        c1 = min(T, c0 + CHUNK_FRAMES)
        n = c1 - c0
        loc = body_frame(s_arr, y_arr, sc.kappa[:, c0:c1], sc.ktail[:, c0:c1], sc.elong[:, c0:c1])
        loc = loc * sc.scale[:, None, None, None]
        world = sc.pos[:, c0:c1, None, :] + _rotate(sc.hv[:, c0:c1, None, :], loc)  # (M, n, P, 2)
        px = centre + world.transpose(1, 0, 2, 3) * spec.pix_per_cm  # (n, M, P, 2)
        px = px + rng.standard_normal(px.shape) * part_sd[None, None, :, None]
        out = rng.random((n, M, P)) < 5e-4  # rare tracker outliers
        px[out] += rng.normal(0.0, 12.0 * noise_px, (int(out.sum()), 2))
        px[rng.random((n, M, P)) < p_nan] = np.nan
        mask = keep_frame[c0:c1, None] & keep_mouse[c0:c1]
        if hard_rng is not None:  # faults within a chunk (65k frames: a whole 2-minute video at 120 fps)
            px, keep = degrade_tracking(px, spec, hard_rng)
            mask &= keep
        t_idx, m_idx = np.nonzero(mask)
        xy = px[t_idx, m_idx].reshape(-1, 2).astype(np.float32)
        idx = pa.array(np.tile(np.arange(P, dtype=np.int32), len(t_idx)))
        yield pa.Table.from_arrays([
            pa.array(np.repeat(t_idx + c0, P).astype(np.int64)),
            pa.array(np.repeat(m_idx + 1, P).astype(np.int64)),
            pa.DictionaryArray.from_arrays(idx, dictionary).cast(pa.large_string()),
            pa.array(xy[:, 0]), pa.array(xy[:, 1]),
        ], schema=TRACKING_SCHEMA)


def annotation_table(labels: list[Interval]) -> pa.Table:
    stop = max([iv.stop for iv in labels], default=0)
    schema = annotation_schema(stop)
    ft = schema.field("start_frame").type.to_pandas_dtype()
    return pa.Table.from_arrays([
        pa.array(np.array([iv.agent for iv in labels], dtype=np.int8)),
        pa.array(np.array([iv.target for iv in labels], dtype=np.int8)),
        pa.array([iv.action for iv in labels], type=pa.large_string()),
        pa.array(np.array([iv.start for iv in labels], dtype=ft)),
        pa.array(np.array([iv.stop for iv in labels], dtype=ft)),
    ], schema=schema)


def generate_video(spec: VideoSpec) -> tuple[pa.Table, pa.Table]:
    """One video in memory: (tracking table, annotation table). Pure function of ``spec``."""
    sc, labels, rng = simulate(spec)
    tracking = pa.concat_tables(list(render_tracking(sc, spec, rng)))
    return tracking, annotation_table(labels)


def write_video(spec: VideoSpec, root: str | Path) -> tuple[int, int]:
    """Write one video's tracking (and, for labelled train videos, annotation) parquet. Returns (frames, rows)."""
    root = Path(root)
    sc, labels, rng = simulate(spec)
    tdir = root / f"{spec.split}_tracking" / spec.lab
    tdir.mkdir(parents=True, exist_ok=True)
    rows = 0
    with pq.ParquetWriter(tdir / f"{spec.video_id}.parquet", TRACKING_SCHEMA, **PARQUET_KW) as w:
        for tab in render_tracking(sc, spec, rng):
            w.write_table(tab, row_group_size=max(1, tab.num_rows))
            rows += tab.num_rows
    if spec.split == "train" and not spec.labeled_empty:
        adir = root / "train_annotation" / spec.lab
        adir.mkdir(parents=True, exist_ok=True)
        pq.write_table(annotation_table(labels), adir / f"{spec.video_id}.parquet", **PARQUET_KW)
    return spec.n_frames, rows


def _write_video_job(args: tuple[VideoSpec, str]) -> tuple[int, int]:
    return write_video(*args)


# ----------------------------------------------------------------------------- dataset


def metadata_frame(specs: list[VideoSpec]) -> pd.DataFrame:
    """train.csv / test.csv rows with the real columns, order and dtypes."""
    df = pd.DataFrame([s.metadata_row() for s in specs], columns=list(COLUMNS))
    ints = {"video_id", "video_width_pix", "video_height_pix"}
    floats = {f"mouse{i}_id" for i in range(1, 5)} | {
        "frames_per_second", "video_duration_sec", "pix_per_cm_approx", "arena_width_cm", "arena_height_cm"}
    for c in COLUMNS:
        df[c] = df[c].astype(np.int64 if c in ints else np.float64 if c in floats else object)
    return df


def write_dataset(out: str | Path, preset: str = "demo", seed: int = 0, n_train: int | None = None,
                  n_test: int | None = None, frames: int | None = None, workers: int = 1,
                  progress: bool | None = None) -> Path:
    """Write a complete synthetic MABe-layout dataset to ``out``; returns ``out``.

    ``preset``: ``tiny`` (tests), ``demo`` (CPU demo) or ``real`` (the real labelled set's scale);
    ``n_train`` / ``n_test`` / ``frames`` override the preset's counts and video length; ``workers``
    processes generate videos in parallel (the bytes do not depend on it).
    """
    out = Path(out)
    t0 = time.perf_counter()
    specs = plan_dataset(preset, seed, n_train, n_test, frames)
    if out.exists() and any(out.iterdir()):
        if not (out / "train.csv").is_file():
            raise FileExistsError(f"{out} exists, is not empty and holds no train.csv: not overwriting it")
        for sub in ("train_tracking", "train_annotation", "test_tracking"):
            shutil.rmtree(out / sub, ignore_errors=True)
        for f in ("train.csv", "test.csv", "sample_submission.csv"):
            (out / f).unlink(missing_ok=True)
    out.mkdir(parents=True, exist_ok=True)
    train = [s for s in specs if s.split == "train"]
    test = [s for s in specs if s.split == "test"]
    metadata_frame(train).to_csv(out / "train.csv", index=False, lineterminator="\n")
    metadata_frame(test).to_csv(out / "test.csv", index=False, lineterminator="\n")
    sub_rows = []
    for s in test:
        if s.triples:
            a, t, act = min(s.triples)
            sub_rows.append([len(sub_rows), s.video_id, f"mouse{a}", "self" if a == t else f"mouse{t}", act, 0, 1])
    pd.DataFrame(sub_rows, columns=list(SUBMISSION_COLUMNS)).to_csv(
        out / "sample_submission.csv", index=False, lineterminator="\n")
    order = sorted(range(len(specs)), key=lambda i: -specs[i].n_frames)  # big ones first: better balance
    jobs = [(specs[i], str(out)) for i in order]
    if progress is None:
        progress = len(specs) > 12 and sys.stderr.isatty()
    total_frames = total_rows = 0
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=sum(s.n_frames for s in specs), unit="frame", unit_scale=True, desc=f"synth {preset}")
    if workers > 1 and len(jobs) > 1:
        ctx = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(max_workers=workers, mp_context=ctx) as ex:
            for fr, rows in ex.map(_write_video_job, jobs, chunksize=1):
                total_frames += fr
                total_rows += rows
                if bar is not None:
                    bar.update(fr)
    else:
        for job in jobs:
            fr, rows = _write_video_job(job)
            total_frames += fr
            total_rows += rows
            if bar is not None:
                bar.update(fr)
    if bar is not None:
        bar.close()
    dt = time.perf_counter() - t0
    print(f"synth {preset} (seed {seed}): {len(train)} train + {len(test)} test videos, {total_frames:,} frames, "
          f"{total_rows:,} rows in {dt:.1f} s ({total_frames / max(dt, 1e-9) * 60:,.0f} frames/min) -> {out}")
    return out


if __name__ == "__main__":  # python -m mabe.synth OUT [preset] [seed]
    write_dataset(sys.argv[1], *(sys.argv[2:3] or ["demo"]), seed=int(sys.argv[3]) if len(sys.argv) > 3 else 0)
