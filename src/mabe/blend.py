"""Blend model families: align predictions files of the same triples, fit per-family weights and
per-(lab, action) thresholds on labelled out-of-sample frames, apply them to the test files.

    mabe blend --fit gbdt/oof_predictions.npz run/eval/val_predictions.npz \\
               --apply gbdt/test_predictions.npz net_test.npz --out blend/test_predictions.npz
    mabe submit blend/test_predictions.npz --thresholds blend/thresholds.json --out submission.csv

Alignment: a track is keyed by (lab, video, agent, target) and a row within it is the video frame
(the predictions file's contract), so files from different families (a gbdt with rows = video frames,
a network resampled to another fps and mapped back) line up without resampling. Action columns are
the union of the members' columns. A member contributes to a (track, action) cell when it has the
track, the column and ``labeled`` allows the cell, and to a frame when its track is that long; where
one member lacks a cell or frame the others are used (renormalised weights), with a warning that
counts what was missing.

Fitting (:func:`fit_blend`) sees only the ``--fit`` files, which must carry ``labels`` and must be
out of sample for every member (a gbdt's out-of-fold file, a network's validation videos): weights
are searched on a grid over the simplex, each scored by the lab-mean of the per-(lab, action) frame
F1 that its fitted thresholds reach (``postprocess.fit_thresholds_f1``, the metric's averaging);
the winner's thresholds are the ones written. Only tracks that every fit member covers enter the
fit (elsewhere the weights would not matter). Fit and apply files sharing a video is an error: the
thresholds would be fitted on the frames being submitted.
"""

from __future__ import annotations

import itertools
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mabe import postprocess, predictions
from mabe.config import PostprocessConfig, load_config
from mabe.errors import MabeDataError, MabeError
from mabe.io import write_json
from mabe.predictions import Predictions

__all__ = ["Aligned", "align", "combine", "simplex_grid", "blend_score", "fit_blend", "main_from_args"]


@dataclass
class Aligned:
    """Members on one track / column layout: ``probs`` (K, N, A) float16, NaN where a member has nothing.

    ``base`` holds the union's tracks (offsets, ids, fps), the union ``actions``, ``labeled`` = any member
    labels the cell, ``labels`` per cell from the first member with labels there (None unless every
    track has labels in some member) and ``probs`` zeros (fill it with :func:`combine`).
    """

    base: Predictions
    probs: np.ndarray
    names: list[str]


def _key(p: Predictions, t: int) -> tuple[str, int, int, int]:
    return (str(p.lab_id[t]), int(p.video_id[t]), int(p.agent_id[t]), int(p.target_id[t]))


def align(members: Sequence[Predictions], names: Sequence[str] | None = None, *, common_only: bool = False,
          what: str = "blend") -> Aligned:
    """K predictions -> :class:`Aligned` over the union of their tracks (``common_only``: the tracks
    every member has) and action columns; warns, with counts, about cells and frames a member lacks."""
    members = list(members)
    if not members:
        raise ValueError("align() needs at least one predictions file")
    names = list(names) if names is not None else [f"member {k}" for k in range(len(members))]
    actions: list[str] = []
    for p in members:
        actions += [a for a in p.actions.tolist() if a not in actions]
    col = {a: i for i, a in enumerate(actions)}
    index = [{_key(p, t): t for t in range(p.n_tracks)} for p in members]
    keys: list[tuple[str, int, int, int]] = []
    seen: set = set()
    for p in members:
        for t in range(p.n_tracks):
            k = _key(p, t)
            if k not in seen:
                seen.add(k)
                keys.append(k)
    if common_only:
        dropped = [k for k in keys if not all(k in ix for ix in index)]
        keys = [k for k in keys if all(k in ix for ix in index)]
        # a track no member labels holds nothing to fit (gbdt files carry every pair, a network's only the
        # pairs with a labelled action): left out in silence
        dropped = [k for k in dropped if any(k in ix and p.labeled[ix[k]].any() for p, ix in zip(members, index))]
        if dropped:
            warnings.warn(f"{what}: {len(dropped)} track(s) are not in every file ({_count_by_member(dropped, index, names)})"
                          f"; left out of the fit", stacklevel=2)
        if not keys:
            raise MabeError(f"{what}: the files share no (lab, video, agent, target) track")
    n_t, n_a = len(keys), len(actions)
    lengths = np.zeros(n_t, dtype=np.int64)
    fps = np.zeros(n_t, dtype=np.float64)
    for i, k in enumerate(keys):
        have = [(p, ix[k]) for p, ix in zip(members, index) if k in ix]
        lengths[i] = max(p.track_length(t) for p, t in have)
        fps[i] = have[0][0].fps[have[0][1]]
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    N = int(offsets[-1])
    probs = np.full((len(members), N, n_a), np.nan, dtype=np.float16)
    labeled = np.zeros((n_t, n_a), dtype=bool)
    labels = np.zeros((N, n_a), dtype=np.uint8)
    has_labels = np.zeros(n_t, dtype=bool)
    label_set = np.zeros((n_t, n_a), dtype=bool)  # cells whose labels a member has written
    short_frames = np.zeros(len(members), dtype=np.int64)
    missing_cells = np.zeros(len(members), dtype=np.int64)
    cells_of = []
    for m, (p, ix) in enumerate(zip(members, index)):
        cols = np.array([col[a] for a in p.actions.tolist()], dtype=np.int64)
        cells_of.append(cols)
        for i, k in enumerate(keys):
            t = ix.get(k)
            if t is None:
                continue
            lo = int(offsets[i])
            pr, lb = p.track(t)
            T = len(pr)
            short_frames[m] += int(lengths[i] - T) * int(p.labeled[t].sum())
            on = p.labeled[t]
            probs[m][lo:lo + T][:, cols[on]] = pr[:, on]
            labeled[i, cols[on]] = True
            if lb is not None:
                new_cols = ~label_set[i, cols]
                labels[lo:lo + T][:, cols[new_cols]] = lb[:, new_cols]
                label_set[i, cols] = True
                has_labels[i] = True
    for m, (p, ix) in enumerate(zip(members, index)):
        # cells the union labels that this member cannot fill (no track, no column, or not labelled)
        have_cell = np.zeros((n_t, n_a), dtype=bool)
        for i, k in enumerate(keys):
            t = ix.get(k)
            if t is not None:
                have_cell[i, cells_of[m][p.labeled[t]]] = True
        missing_cells[m] = int((labeled & ~have_cell).sum())
    for m, name in enumerate(names):
        if missing_cells[m] or short_frames[m]:
            warnings.warn(f"{what}: {name} lacks {missing_cells[m]} of the {int(labeled.sum())} (track, action) "
                          f"cells and {short_frames[m]} frame-cells of shorter tracks; the other files fill them",
                          stacklevel=2)
    base = Predictions(
        probs=np.zeros((N, n_a), dtype=np.float16), offsets=offsets,
        video_id=np.array([k[1] for k in keys], dtype=np.int64), lab_id=np.array([k[0] for k in keys], dtype=str),
        agent_id=np.array([k[2] for k in keys], dtype=np.int8), target_id=np.array([k[3] for k in keys], dtype=np.int8),
        actions=np.array(actions, dtype=str), labeled=labeled, fps=fps,
        labels=labels if has_labels.all() else None,
    )
    if has_labels.any() and not has_labels.all():
        warnings.warn(f"{what}: {int((~has_labels).sum())} of {n_t} tracks have labels in no file; "
                      "the blend carries no labels", stacklevel=2)
    return Aligned(base=base, probs=probs, names=names)


def _count_by_member(dropped, index, names) -> str:
    return ", ".join(f"{sum(k not in ix for k in dropped)} missing from {n}" for ix, n in zip(index, names))


def combine(al: Aligned, weights: Sequence[float]) -> Predictions:
    """The weighted mean of the members where they have a value; where every member with weight > 0
    lacks it, the plain mean of the members that have it; 0 where none has. Returns ``al.base`` with
    ``probs`` (N, A) float16 filled (a new object; ``al`` is unchanged)."""
    w = np.asarray(weights, dtype=np.float32)
    if w.shape != (len(al.probs),) or np.any(w < 0) or w.sum() <= 0:
        raise ValueError(f"weights must be {len(al.probs)} non-negative numbers with a positive sum, got {weights}")
    num = np.zeros(al.probs.shape[1:], dtype=np.float32)
    den = np.zeros_like(num)
    any_num = np.zeros_like(num)
    any_n = np.zeros_like(num)
    for k in range(len(al.probs)):
        p = al.probs[k].astype(np.float32)
        have = ~np.isnan(p)
        p = np.where(have, p, 0.0)
        num += w[k] * p
        den += w[k] * have
        any_num += p
        any_n += have
    out = np.where(den > 0, num / np.maximum(den, 1e-12), any_num / np.maximum(any_n, 1))
    b = al.base
    return Predictions(probs=out.astype(np.float16), offsets=b.offsets, video_id=b.video_id, lab_id=b.lab_id,
                       agent_id=b.agent_id, target_id=b.target_id, actions=b.actions, labeled=b.labeled, fps=b.fps,
                       labels=b.labels)


def simplex_grid(k: int, step: float) -> np.ndarray:
    """Every weight vector (G, k) of multiples of ``step`` that sums to 1 (``step`` must divide 1)."""
    n = int(round(1.0 / step))
    if n < 1 or abs(n * step - 1.0) > 1e-6:
        raise ValueError(f"blend step must divide 1 (0.1, 0.05, 0.25, ...), got {step}")
    rows = [c + (n - sum(c),) for c in itertools.product(range(n + 1), repeat=k - 1) if sum(c) <= n]
    return np.array(rows, dtype=np.float64).reshape(-1, k) / n


def blend_score(f1: dict[tuple[str, str], float | None]) -> float:
    """The metric's averaging of per-(lab, action) F1: mean over a lab's scored actions (None = not
    scored), then over labs; 0 when nothing is scored."""
    per_lab: dict[str, list[float]] = {}
    for (lab, _), v in f1.items():
        if v is not None:
            per_lab.setdefault(lab, []).append(v)
    return float(np.mean([np.mean(v) for v in per_lab.values()])) if per_lab else 0.0


def fit_blend(al: Aligned, cfg: PostprocessConfig | None = None, step: float = 0.1,
              weights: Sequence[float] | None = None) -> dict:
    """Weights (the grid point with the best :func:`blend_score`; ties: nearest to equal weights) and
    the thresholds fitted at them, from the labelled ``al`` alone. ``weights`` given: only thresholds.

    Returns ``{"weights": [...], "thresholds": {...}, "score": float, "grid": [[w..., score], ...]}``.
    """
    if al.base.labels is None:
        raise MabeDataError("<blend --fit>", "labels", "fit files with ground-truth labels (validation or "
                            "out-of-fold predictions)", "no labels")
    cfg = cfg or PostprocessConfig()
    K = len(al.probs)
    grid = np.asarray([weights], dtype=np.float64) if weights is not None else simplex_grid(K, step)
    results = []
    for w in grid:
        thr, f1 = postprocess.fit_thresholds_f1(combine(al, w), cfg)
        results.append((blend_score(f1), thr))
    scores = np.array([s for s, _ in results])
    spread = np.abs(grid - 1.0 / K).sum(axis=1)
    best = int(np.lexsort((spread, -scores))[0])
    return {"weights": grid[best].tolist(), "thresholds": results[best][1], "score": float(scores[best]),
            "grid": [[*g.tolist(), float(s)] for g, s in zip(grid, scores)]}


def _videos(preds: Sequence[Predictions]) -> set[tuple[str, int]]:
    return {(str(lab), int(v)) for p in preds for lab, v in zip(p.lab_id, p.video_id)}


def main_from_args(args) -> Path:
    """``mabe blend --fit F1 F2 .. --apply A1 A2 .. --out OUT.npz [--weights W,W | --step S]``."""
    cfg = load_config(getattr(args, "config", None), getattr(args, "overrides", []))
    if len(args.fit) != len(args.apply):
        raise MabeError(f"--fit has {len(args.fit)} files and --apply {len(args.apply)}: give one of each per "
                        "model family, in the same order")
    fit = [predictions.load(f) for f in args.fit]
    test = [predictions.load(f) for f in args.apply]
    shared = _videos(fit) & _videos(test)
    if shared:
        lab, vid = sorted(shared)[0]
        raise MabeError(f"--fit and --apply share {len(shared)} video(s) (e.g. {lab}/{vid}): thresholds and weights "
                        "would be fitted on the frames being submitted; fit on validation or out-of-fold files")
    names = [str(f) for f in args.apply]
    weights = None
    if args.weights:
        weights = [float(x) for x in args.weights.split(",")]
        if len(weights) != len(fit):
            raise MabeError(f"--weights has {len(weights)} values for {len(fit)} families")
        weights = list(np.asarray(weights) / max(sum(weights), 1e-12))
    fitted = fit_blend(align(fit, [str(f) for f in args.fit], common_only=True, what="blend --fit"),
                       cfg.postprocess, args.step or cfg.postprocess.blend_step, weights)
    out = combine(align(test, names, what="blend --apply"), fitted["weights"]).save(args.out)
    out_dir = Path(args.out).parent
    thr_path = postprocess.save_thresholds(out_dir / "thresholds.json", fitted["thresholds"])
    write_json(out_dir / "blend.json", {"fit": [str(f) for f in args.fit], "apply": names,
                                        "weights": fitted["weights"], "fit_score": fitted["score"],
                                        "grid": fitted["grid"]})
    ws = ", ".join(f"{w:.2f}" for w in fitted["weights"])
    print(f"blend: weights [{ws}] (fit score {fitted['score']:.4f} on {len(args.fit)} labelled files) -> {out}; "
          f"thresholds -> {thr_path}")
    return out
