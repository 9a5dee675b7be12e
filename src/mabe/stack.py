"""Second stage: a LightGBM per action stacked on the first stage's out-of-fold probabilities.

    mabe stack --fit gbdt/oof_predictions.npz cv/oof_predictions.npz \\
               --apply gbdt/test_predictions.npz cv_test.npz --out stack/test_predictions.npz
    mabe submit stack/test_predictions.npz --thresholds stack/thresholds.json --out submission.csv

Input: K members' predictions files (``blend.align`` lines them up by (lab, video, agent, target) and
frame). The ``--fit`` files must be out of fold for every member (a gbdt's ``oof_predictions.npz``, a
``mabe cv`` directory's) and carry labels; the ``--apply`` files are the same members on the test videos,
in the same order. ``--apply`` may be given several times (e.g. once per first-stage fold model): stage 2
is applied to each group and its probabilities averaged, so that it sees at apply time the same kind of
input (one fold model's probabilities) it was fitted on.

Features of a frame, for the action a of the model (:func:`track_features`): per member, the probability
of a, its centred mean and centred max over each of ``stack.scales`` seconds (the window in frames is
``round(s * fps)``, so labs at 10 and 120 fps get the same context); per member, the other actions' centred
mean over ``stack.context_seconds`` (what else the members think is happening); the lab (categorical).
A cell a member lacks (action not labelled there, or no track) is NaN, which LightGBM routes natively.

Fitting (:func:`fit_stack`): one model per action, pooled over labs, trained only on frames of tracks
whose lab labels the action (an unlabelled action is not a negative), subsampled in time like the gbdt
family (``pos_hz`` / ``neg_hz``), boosted from the members' mean logit (``stack.residual``) with the own
action's columns monotone (``stack.monotone``). Stage 2 has its own k-fold by video (``windows.assign_folds``): fold f's
videos are predicted by the model trained on the other folds, giving a stage-2 out-of-fold file on which
the per-(lab, action) thresholds are fitted. Test: one model per action refitted on every fit video
(``stack.test_models=refit``), or the mean of the fold models (``folds``). A cell no model covers (an
action without a positive and a negative frame to train on) gets the members' mean probability.

Caveat (standard for stacking): a stage-1 out-of-fold probability of a video in fold g came from a model
trained on the other stage-1 folds, so stage 2's training rows carry stage 1's view of fold f's labels;
stage 2's own folds keep the rows of the video being scored out of its model, which is what the
thresholds need.
"""

from __future__ import annotations

import itertools
import sys
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from mabe import blend, gbdt, postprocess, predictions, tabular
from mabe.blend import Aligned, align
from mabe.config import PostprocessConfig, StackConfig, load_config
from mabe.errors import MabeDataError, MabeError
from mabe.io import write_json
from mabe.predictions import Predictions
from mabe.windows import assign_folds

__all__ = ["Stacked", "track_features", "n_features", "fit_stack", "apply_stack", "main_from_args"]

REFIT = -1  # the fold key of the models refitted on every fit video


def _frames(seconds: float, fps: float) -> int:
    return max(int(round(seconds * fps)), 1)


def _centred_max(x: np.ndarray, w: int) -> np.ndarray:
    """(T, C) with NaN -> (T, C) max over the centred window of ``w`` frames (clipped; NaN where none)."""
    from scipy.ndimage import maximum_filter1d

    z = np.where(np.isfinite(x), x, -np.inf).astype(np.float32)
    m = maximum_filter1d(z, size=w, axis=0, mode="constant", cval=-np.inf)
    return np.where(np.isfinite(m), m, np.nan).astype(np.float32)


def _blocks(p: np.ndarray, fps: float, cfg: StackConfig) -> tuple[np.ndarray, np.ndarray | None]:
    """(K, T, A) member probabilities (NaN = none) -> own (T, K, A, 1 + 2S) and context (T, K, A) or None."""
    K, T, A = p.shape
    x = np.moveaxis(p, 0, 1).reshape(T, K * A).astype(np.float32)  # (T, K*A): every (member, action) column
    stats = [x]
    for s in cfg.scales:
        stats.append(tabular.rolling(x, _frames(s, fps))[0])
    for s in cfg.scales:
        stats.append(_centred_max(x, _frames(s, fps)))
    own = np.stack(stats, axis=-1).reshape(T, K, A, len(stats))
    ctx = tabular.rolling(x, _frames(cfg.context_seconds, fps))[0].reshape(T, K, A) if cfg.context_seconds > 0 else None
    return own, ctx


def n_features(n_members: int, n_actions: int, cfg: StackConfig) -> int:
    """Columns of :func:`track_features` for K members and A actions."""
    return n_members * (1 + 2 * len(cfg.scales)) + (n_members * (n_actions - 1) if cfg.context_seconds > 0 else 0) + 1


def track_features(p: np.ndarray, fps: float, cfg: StackConfig, lab_code: float,
                   blocks: tuple[np.ndarray, np.ndarray | None] | None = None) -> list[np.ndarray]:
    """(K, T, A) member probabilities of one track -> per action a, (T, F) float32 stage-2 features
    (:func:`n_features` columns: own statistics, the other actions' context, the lab code last)."""
    K, T, A = p.shape
    own, ctx = blocks if blocks is not None else _blocks(p, fps, cfg)
    lab = np.full((T, 1), lab_code, dtype=np.float32)
    out = []
    for a in range(A):
        parts = [own[:, :, a, :].reshape(T, -1)]
        if ctx is not None:
            parts.append(np.delete(ctx, a, axis=2).reshape(T, -1))
        parts.append(lab)
        out.append(np.concatenate(parts, axis=1))
    return out


@dataclass
class Stacked:
    """A fitted stage 2: ``models[(fold, action)]`` (fold REFIT = refitted on every fit video), the fit
    videos' stage-2 ``fold_of`` and what each model ``trained_on`` ((lab, video) pairs), the stage-2
    out-of-fold predictions ``oof`` (with labels) and the thresholds fitted on them."""

    actions: list[str]
    labs: list[str]
    n_members: int
    cfg: StackConfig
    models: dict[tuple[int, str], Any] = field(default_factory=dict)  # (fold, group of _group)
    fold_of: dict[tuple[str, int], int] = field(default_factory=dict)
    trained_on: dict[tuple[int, str], set[tuple[str, int]]] = field(default_factory=dict)
    oof: Predictions | None = None
    thresholds: dict = field(default_factory=dict)
    score: float = 0.0  # lab-mean out-of-fold F1 of the stage-2 out-of-fold file at its thresholds
    member_scores: list[float] = field(default_factory=list)  # the same for each member alone


def _group(cfg: StackConfig, lab: str, action: str) -> str:
    """The model key of a (lab, action) cell: the action (pooled over labs), or lab/action with per_lab."""
    return f"{lab}/{action}" if cfg.per_lab else action


def _lab_code(labs: list[str], lab: str) -> float:
    return float(labs.index(lab)) if lab in labs else np.nan


def _member_mean(p: np.ndarray) -> np.ndarray:
    """(K, T) with NaN -> (T,) mean of the members present (0 where none is)."""
    ok = np.isfinite(p)
    return np.where(ok, p, 0).sum(0) / np.maximum(ok.sum(0), 1)


def _base_logit(p: np.ndarray) -> np.ndarray:
    """(K, T) member probabilities of one action -> (T,) logit of their mean: stage 2's starting point."""
    q = np.clip(_member_mean(p), 1e-4, 1 - 1e-4)
    return np.log(q / (1 - q)).astype(np.float32)


def _predict(m: Any, X: np.ndarray, p: np.ndarray, cfg: StackConfig) -> np.ndarray:
    """One stage-2 model on (T, F) features and the (K, T) member probabilities -> (T,) probabilities."""
    if not cfg.residual:
        return m.predict(X, num_threads=1)
    return 1.0 / (1.0 + np.exp(-(m.predict(X, raw_score=True, num_threads=1) + _base_logit(p))))


def _track_probs(al: Aligned, t: int, cols: np.ndarray) -> np.ndarray:
    """Aligned track t -> (K, T, A) float32 over the stage-2 action columns ``cols`` (-1 = absent: NaN)."""
    lo, hi = int(al.base.offsets[t]), int(al.base.offsets[t + 1])
    p = al.probs[:, lo:hi].astype(np.float32)
    out = np.full(p.shape[:2] + (len(cols),), np.nan, dtype=np.float32)
    have = cols >= 0
    out[:, :, have] = p[:, :, cols[have]]
    return out


def fit_stack(al: Aligned, cfg: StackConfig | None = None, pp: PostprocessConfig | None = None,
              progress: bool = True) -> Stacked:
    """Labelled out-of-fold members (:func:`blend.align`) -> a fitted :class:`Stacked` with its
    stage-2 out-of-fold predictions and thresholds."""
    cfg = cfg or StackConfig()
    pp = pp or PostprocessConfig()
    b = al.base
    if b.labels is None:
        raise MabeDataError("<stack --fit>", "labels", "fit files with ground-truth labels (out-of-fold predictions)",
                            "no labels")
    lgb = gbdt._lgb()
    actions = [str(a) for a in b.actions]
    labs = sorted({str(x) for x in b.lab_id})
    K, A = len(al.probs), len(actions)
    videos = sorted({(str(lab), int(v)) for lab, v in zip(b.lab_id, b.video_id)})
    k = min(cfg.folds, len(videos))
    if k < 2:
        raise MabeError(f"stack: the k-fold needs at least 2 fit videos, found {len(videos)}")
    folds = assign_folds(np.array([lab for lab, _ in videos]), np.array([v for _, v in videos]), k, cfg.fold_seed)
    fold_of = {vid: int(f) for vid, f in zip(videos, folds)}
    cols = np.arange(A)
    rng = np.random.default_rng(cfg.seed)
    # training rows per model group (the action, or (lab, action) with per_lab): features, label, the row's
    # video fold and the (lab, video) of each track
    rows: dict[str, tuple[list, list, list, list, list]] = {}
    col_of: dict[str, int] = {}
    for t in tqdm(range(b.n_tracks), desc="stack features", unit="track", disable=not progress, file=sys.stderr,
                  dynamic_ncols=True):
        on = np.flatnonzero(b.labeled[t])
        if not len(on):
            continue
        lo, hi = int(b.offsets[t]), int(b.offsets[t + 1])
        y = b.labels[lo:hi]
        keep = gbdt._keep_rows(y[:, on], float(b.fps[t]), cfg, rng)
        vid = (str(b.lab_id[t]), int(b.video_id[t]))
        P = _track_probs(al, t, cols)
        X = track_features(P, float(b.fps[t]), cfg, _lab_code(labs, vid[0]))
        for a in on:
            g = _group(cfg, vid[0], actions[a])
            col_of[g] = int(a)
            xs, ys, fs, vs, bs = rows.setdefault(g, ([], [], [], [], []))
            bs.append(_base_logit(P[:, :, a])[keep])
            xs.append(X[a][keep])
            ys.append(y[keep, a])
            fs.append(np.full(len(keep), fold_of[vid], dtype=np.int64))
            vs.append(vid)
    st = Stacked(actions=actions, labs=labs, n_members=K, cfg=cfg, fold_of=fold_of)
    jobs = []
    for g, (xs, ys, fs, vs, bs) in rows.items():
        X, y, f, base = np.concatenate(xs), np.concatenate(ys), np.concatenate(fs), np.concatenate(bs)
        for fold in [*range(k), REFIT]:
            use = np.flatnonzero(f != fold) if fold != REFIT else np.arange(len(y))
            if 0 < y[use].sum() < len(use):
                jobs.append((fold, g, X, y, use, base))
                # which videos this model saw: every track row of the group outside the fold
                st.trained_on[(fold, g)] = {v for v in vs if fold == REFIT or fold_of[v] != fold}
    params = gbdt._params(cfg)
    if cfg.monotone:  # the own action's columns only raise the probability: no noisy non-monotone bins
        n_own = K * (1 + 2 * len(cfg.scales))
        params = {**params, "monotone_constraints": [1] * n_own + [0] * (n_features(K, A, cfg) - n_own),
                  "monotone_constraints_method": "advanced"}

    def one(i: int) -> Any:
        fold, g, X, y, use, base = jobs[i]
        sel = use[gbdt._cap(y[use], cfg.max_rows, np.random.default_rng([cfg.seed, i]))]
        # weighted positives spread the probabilities of rare actions over the threshold grid (as in gbdt)
        ds = lgb.Dataset(X[sel], label=y[sel].astype(np.float32), weight=gbdt.pos_weights(y[sel], cfg.pos_balance),
                         init_score=base[sel] if cfg.residual else None, categorical_feature=[X.shape[1] - 1],
                         free_raw_data=True)
        return lgb.train(params, ds, num_boost_round=cfg.n_estimators)

    with ThreadPoolExecutor(max_workers=max(1, min(gbdt._threads(cfg), len(jobs) or 1))) as pool:
        bar = tqdm(total=len(jobs), desc="stack fit", unit="model", disable=not progress, file=sys.stderr,
                   dynamic_ncols=True)
        for (fold, g, *_), booster in zip(jobs, pool.map(one, range(len(jobs)))):
            st.models[(fold, g)] = booster
            bar.update(1)
        bar.close()
    # stage-2 out of fold: every track by the models of its video's fold
    probs = np.zeros(b.probs.shape, dtype=np.float32)
    for t, on, lo, hi, lab, p, X in _labelled_tracks(al, cols, cfg, labs):
        fold = fold_of[(lab, int(b.video_id[t]))]
        for a in on:
            m = st.models.get((fold, _group(cfg, lab, actions[a])))
            probs[lo:hi, a] = _predict(m, X[a], p[:, :, a], cfg) if m is not None else _member_mean(p[:, :, a])
    st.oof = Predictions(probs=probs.astype(np.float16), offsets=b.offsets, video_id=b.video_id, lab_id=b.lab_id,
                         agent_id=b.agent_id, target_id=b.target_id, actions=b.actions, labeled=b.labeled,
                         fps=b.fps, labels=b.labels)
    thr, f1 = postprocess.fit_thresholds_f1(st.oof, pp)
    st.thresholds, st.score = thr, blend.blend_score(f1)
    for m in range(K):
        w = np.eye(K)[m]
        st.member_scores.append(blend.blend_score(postprocess.fit_thresholds_f1(blend.combine(al, w), pp)[1]))
    return st


def _labelled_tracks(al: Aligned, cols: np.ndarray, cfg: StackConfig, labs: list[str]):
    """Each track with a labelled action: (track, labelled columns, row range lo:hi, lab, the members'
    probabilities (K, T, A') in stage-2 column order, its stage-2 features per action)."""
    b = al.base
    for t in range(b.n_tracks):
        on = np.flatnonzero(b.labeled[t])
        if not len(on):
            continue
        lab = str(b.lab_id[t])
        p = _track_probs(al, t, cols)
        yield (t, on, int(b.offsets[t]), int(b.offsets[t + 1]), lab, p,
               track_features(p, float(b.fps[t]), cfg, _lab_code(labs, lab)))


def _apply_one(st: Stacked, al: Aligned) -> Predictions:
    """One group of K aligned test members -> stage-2 probabilities on ``al.base``'s layout."""
    b = al.base
    if len(al.probs) != st.n_members:
        raise MabeError(f"stack --apply: {len(al.probs)} files for a stage 2 fitted on {st.n_members}")
    idx = {a: i for i, a in enumerate(b.actions.tolist())}
    cols = np.array([idx.get(a, -1) for a in st.actions], dtype=np.int64)  # stage-2 column -> this file's
    folds = sorted({f for f, _ in st.models if f != REFIT})
    probs = np.zeros(b.probs.shape, dtype=np.float32)
    for _, on, lo, hi, lab, p, X in _labelled_tracks(al, cols, st.cfg, st.labs):
        raw = al.probs[:, lo:hi].astype(np.float32)
        for c in on:
            a = str(b.actions[c])
            j = st.actions.index(a) if a in st.actions else -1
            g = _group(st.cfg, lab, a)
            keys = [(REFIT, g)] if st.cfg.test_models == "refit" else [(f, g) for f in folds]
            ms = [st.models[key] for key in keys if key in st.models] if j >= 0 else []
            probs[lo:hi, c] = (np.mean([_predict(m, X[j], p[:, :, j], st.cfg) for m in ms], axis=0) if ms
                               else _member_mean(raw[:, :, c]))
    return Predictions(probs=probs.astype(np.float16), offsets=b.offsets, video_id=b.video_id, lab_id=b.lab_id,
                       agent_id=b.agent_id, target_id=b.target_id, actions=b.actions, labeled=b.labeled, fps=b.fps,
                       labels=b.labels)


def apply_stack(st: Stacked, groups: Sequence[Aligned]) -> Predictions:
    """Fitted stage 2 + G groups of K aligned test members (the same tracks) -> the mean over the groups
    of the stage-2 probabilities (N, A) on group 0's layout."""
    outs = [_apply_one(st, al) for al in groups]
    return outs[0] if len(outs) == 1 else predictions.average(outs)


def _load(path: str | Path, need_labels: bool) -> Predictions:
    p = predictions.load(path)
    if need_labels and p.labels is None:
        raise MabeDataError(path, "labels", "out-of-fold predictions with ground-truth labels (stack --fit)",
                            "no labels")
    return p


def main_from_args(args) -> Path:
    """``mabe stack --fit F1 .. FK --apply A1 .. AK [--apply ..] --out OUT.npz [-c CONFIG] [--set k=v]``."""
    cfg = load_config(getattr(args, "config", None), getattr(args, "overrides", []))
    groups_paths = [list(g) for g in args.apply]
    for g in groups_paths:
        if len(g) != len(args.fit):
            raise MabeError(f"--fit has {len(args.fit)} files and an --apply group {len(g)} ({' '.join(map(str, g))}): "
                            "give one file per first-stage member, in the --fit order")
    fit = [_load(f, True) for f in args.fit]
    groups = [[_load(f, False) for f in g] for g in groups_paths]
    shared = blend._videos(fit) & blend._videos(list(itertools.chain(*groups)))
    if shared:
        lab, vid = sorted(shared)[0]
        raise MabeError(f"--fit and --apply share {len(shared)} video(s) (e.g. {lab}/{vid}): the thresholds would be "
                        "fitted on the frames being submitted; fit on out-of-fold files")
    st = fit_stack(align(fit, [str(f) for f in args.fit], common_only=True, what="stack --fit"), cfg.stack,
                   cfg.postprocess, progress=not getattr(args, "quiet", False))
    aligned = [align(g, [str(f) for f in gp], what="stack --apply") for g, gp in zip(groups, groups_paths)]
    keys0 = [(str(a), int(v), int(g), int(t)) for a, v, g, t in zip(aligned[0].base.lab_id, aligned[0].base.video_id,
                                                                    aligned[0].base.agent_id, aligned[0].base.target_id)]
    for gp, al in zip(groups_paths[1:], aligned[1:]):
        keys = [(str(a), int(v), int(g), int(t)) for a, v, g, t in zip(al.base.lab_id, al.base.video_id,
                                                                       al.base.agent_id, al.base.target_id)]
        if keys != keys0:
            raise MabeDataError(gp[0], "tracks", f"the same tracks as the first --apply group ({groups_paths[0][0]})",
                                f"{len(keys)} tracks, {len(set(keys) ^ set(keys0))} not in both")
    out = apply_stack(st, aligned).save(args.out)
    out_dir = Path(args.out).parent
    st.oof.save(out_dir / "stack_oof_predictions.npz")
    thr_path = postprocess.save_thresholds(out_dir / "thresholds.json", st.thresholds)
    write_json(out_dir / "stack.json", {
        "fit": [str(f) for f in args.fit], "apply": [[str(f) for f in g] for g in groups_paths],
        "oof_score": st.score, "member_oof_scores": st.member_scores, "folds": len(set(st.fold_of.values())),
        "test_models": cfg.stack.test_models, "models": len(st.models),
        "fold_of_video": {f"{lab}/{v}": f for (lab, v), f in st.fold_of.items()},
    })
    ms = ", ".join(f"{s:.4f}" for s in st.member_scores)
    print(f"stack: out-of-fold score {st.score:.4f} (members alone: {ms}), {len(st.models)} models, "
          f"{len(groups)} apply group(s) -> {out}; thresholds -> {thr_path}")
    return out
