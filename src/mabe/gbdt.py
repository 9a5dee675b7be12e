"""The gradient-boosted model family: one LightGBM binary model per (lab, action) on per-frame
tabular features (``mabe.tabular``), k-fold by video stratified by lab, out-of-fold predictions.

Why LightGBM (not XGBoost): histogram training that is fast on a few CPU cores, native NaN routing
(untracked body parts stay missing, never 0), ``num_threads`` parallelism, and a small wheel with
no CUDA payload. Why per (lab, action): labs annotate differently (what one lab calls "sniff"
another splits in three) and track different body parts; a lab's model never has to explain
another lab's conventions.

Unlabelled is not negative: the model of (lab, action) trains only on tracks whose video lists that
action for that pair in ``behaviors_labeled``. Output is the predictions file of ``mabe.predictions``
(rows = video frames), so ``mabe submit --fit / --thresholds``, ``mabe score`` and
``predictions.average`` work unchanged.

Pooled models (``gbdt.pooled``): a lab has a few videos, so a rare action may have a handful of
intervals there, too few for its own model; the features are body-length normalised and in seconds,
so the same action in other labs is evidence. Beside each (lab, action) model, one model per action
is fitted on every lab's labelled tracks. Per (lab, action), the out-of-fold F1 (at its best
threshold) picks the lab's own model, the pooled one or their mean (``choose_sources``): a lab whose
conventions differ keeps its own model, and the choice never sees a video's own fold.

Flow (``run``): prepare the feature cache -> collect subsampled training rows of every labelled
train video -> K fold models (each trained without its fold's videos) -> out-of-fold predictions of
every train video (by the model that never saw it) -> per (lab, action) source chosen out of fold ->
test predictions (mean of the K fold models).
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from tqdm import tqdm

from mabe import data, postprocess, predictions, prepare, submit, tabular
from mabe.config import FeatureConfig, GbdtConfig, PostprocessConfig, load_config
from mabe.errors import MabeError
from mabe.io import write_json
from mabe.paths import safe_name, within
from mabe.windows import assign_folds

__all__ = [
    "TrainingRows",
    "collect_rows",
    "fit_models",
    "pos_weights",
    "POOLED",
    "SOURCES",
    "choose_sources",
    "predict_video",
    "predict_cache",
    "run",
    "save_models",
    "load_models",
]

Models = dict[tuple[str, str], Any]  # (lab, action) -> lightgbm.Booster; lab POOLED: every lab's model
POOLED = "*"  # the lab key of the pooled models; never a real lab (lab ids pass paths.safe_name)
SOURCES = ("lab", "pooled", "mean")  # what a (lab, action) column is predicted from (choose_sources)
Choice = dict[tuple[str, str], str]  # (lab, action) -> one of SOURCES; missing = "lab"


def _lgb():
    try:
        import lightgbm
    except ImportError as err:  # pragma: no cover - the dependency is declared
        raise MabeError("the gbdt model family needs LightGBM: pip install 'mabe[gbdt]' (or lightgbm)") from err
    return lightgbm


def _threads(cfg: GbdtConfig) -> int:
    if cfg.n_jobs:
        return int(cfg.n_jobs)
    try:
        return max(len(os.sched_getaffinity(0)), 1)
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


# ----------------------------------------------------------------------------- training rows


@dataclass
class TrainingRows:
    """Subsampled training frames of many tracks: features, labels and who they belong to."""

    X: np.ndarray  # (N, F) float32
    Y: np.ndarray  # (N, A) uint8, columns = actions
    labeled: np.ndarray  # (N, A) bool: the row's track lists that action in behaviors_labeled
    lab: np.ndarray  # (N,) str
    video: np.ndarray  # (N,) int64
    actions: list[str] = field(default_factory=list)


def _keep_rows(labels: np.ndarray, fps: float, cfg: GbdtConfig, rng: np.random.Generator) -> np.ndarray:
    """(T, A) labels of one track -> frame indices to train on: time-based strides, denser on positives."""
    T = len(labels)
    pos = labels.any(1)
    step_p = max(int(round(fps / cfg.pos_hz)), 1)
    step_n = max(int(round(fps / cfg.neg_hz)), 1)
    t = np.arange(T)
    keep = np.where(pos, (t + rng.integers(step_p)) % step_p == 0, (t + rng.integers(step_n)) % step_n == 0)
    return np.flatnonzero(keep)


def _slots(fcfg: FeatureConfig) -> list[str]:
    return list(fcfg.slots) if fcfg.slots is not None else list(data.DEFAULT_SLOTS)


def _videos(index: pd.DataFrame, split: str, labelled_only: bool) -> pd.DataFrame:
    rows = index[index["split"] == split]
    if labelled_only:
        rows = rows[rows["has_labels"]]
    return rows.drop_duplicates(["lab_id", "video_id"])[["lab_id", "video_id"]].reset_index(drop=True)


def collect_rows(cache_dir: Path, videos: pd.DataFrame, actions: list[str], cfg: GbdtConfig,
                 progress: bool = True) -> TrainingRows:
    """Every track of ``videos`` (lab_id, video_id rows) in the cache -> subsampled :class:`TrainingRows`."""
    fcfg, _ = prepare.open_cache(cache_dir)
    slots = _slots(fcfg)
    cols = np.array([data.ACTION_INDEX[a] for a in actions], dtype=np.int64)
    rng = np.random.default_rng(cfg.seed)
    xs, ys, ls, labs, vids = [], [], [], [], []
    for lab, vid in tqdm(list(zip(videos["lab_id"], videos["video_id"])), desc="gbdt features", unit="video",
                         disable=not progress, file=sys.stderr, dynamic_ncols=True):
        v = prepare.load_video(cache_dir, lab, vid)
        fps = float(v["meta"]["fps"])
        for p in range(len(v["meta"]["pairs"])):
            labeled = np.asarray(v["labeled"][p])[cols]
            if not labeled.any():
                continue
            y = np.asarray(v["labels"][p])[:, cols]
            keep = _keep_rows(y * labeled, fps, cfg, rng)
            feats = tabular.track_features(np.asarray(v["pair"][p]), fps, slots)
            xs.append(feats[keep])
            ys.append(y[keep])
            ls.append(np.repeat(labeled[None], len(keep), 0))
            labs.append(np.full(len(keep), str(lab), dtype=object))
            vids.append(np.full(len(keep), int(vid), dtype=np.int64))
    n_f = len(tabular.feature_names())
    if not xs:
        return TrainingRows(np.zeros((0, n_f), np.float32), np.zeros((0, len(actions)), np.uint8),
                            np.zeros((0, len(actions)), bool), np.zeros(0, str), np.zeros(0, np.int64), list(actions))
    return TrainingRows(np.concatenate(xs), np.concatenate(ys).astype(np.uint8), np.concatenate(ls),
                        np.concatenate(labs).astype(str), np.concatenate(vids), list(actions))


# ----------------------------------------------------------------------------- fitting


def _params(cfg: GbdtConfig) -> dict[str, Any]:
    return {
        "objective": "binary", "learning_rate": cfg.learning_rate, "num_leaves": cfg.num_leaves,
        "min_data_in_leaf": cfg.min_child_samples, "feature_fraction": cfg.feature_fraction,
        "bagging_fraction": cfg.bagging_fraction, "bagging_freq": 1, "lambda_l2": cfg.lambda_l2,
        "max_bin": cfg.max_bin, "num_threads": 1, "verbosity": -1, "seed": cfg.seed,
        "deterministic": True,
    }


def _cap(y: np.ndarray, max_rows: int, rng: np.random.Generator) -> np.ndarray:
    """Row indices of ``y`` kept under ``max_rows``: negatives are dropped first, then positives."""
    idx = np.arange(len(y))
    if len(idx) <= max_rows:
        return idx
    pos, neg = idx[y > 0], idx[y == 0]
    n_pos = min(len(pos), max_rows // 2)
    n_neg = min(len(neg), max_rows - n_pos)
    n_pos = min(len(pos), max_rows - n_neg)
    return np.sort(np.concatenate([rng.choice(pos, n_pos, replace=False), rng.choice(neg, n_neg, replace=False)]))


def pos_weights(y: np.ndarray, balance: float) -> np.ndarray:
    """(N,) 0/1 labels -> (N,) row weights: negatives 1, positives raised so that their total weight is at
    least ``balance`` x the negatives' (never lowered below 1; ``balance`` 0 = all ones)."""
    y = np.asarray(y) > 0
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    w_pos = max(1.0, balance * n_neg / n_pos) if n_pos and balance > 0 else 1.0
    return np.where(y, w_pos, 1.0).astype(np.float32)


def fit_models(rows: TrainingRows, cfg: GbdtConfig, use: np.ndarray | None = None, progress: bool = True,
               desc: str = "gbdt fit") -> Models:
    """One booster per (lab, action) with a positive and a negative labelled row among ``use`` (bool (N,));
    with ``cfg.pooled`` also one per action over every lab's labelled rows, keyed (POOLED, action)."""
    lgb = _lgb()
    use = np.ones(len(rows.X), dtype=bool) if use is None else np.asarray(use, dtype=bool)
    jobs = []
    labs = sorted(set(rows.lab[use].tolist()))
    for lab in labs + ([POOLED] if cfg.pooled and len(labs) > 1 else []):
        in_lab = use & (rows.lab == lab) if lab != POOLED else use
        for j, action in enumerate(rows.actions):
            sel = np.flatnonzero(in_lab & rows.labeled[:, j])
            if len(sel):
                y = rows.Y[sel, j]
                if 0 < y.sum() < len(y):
                    jobs.append((lab, action, sel, j))
    jobs.sort(key=lambda job: -len(job[2]))  # the largest first: the pool's threads finish together
    params = _params(cfg)

    def one(i: int) -> Any:
        lab, action, sel, j = jobs[i]
        sel = sel[_cap(rows.Y[sel, j], cfg.max_rows, np.random.default_rng([cfg.seed, i]))]
        y = rows.Y[sel, j]
        # a rare action (a few hundred frames among tens of thousands) otherwise never reaches a probability
        # the threshold grid resolves, and its out-of-fold F1 reads 0 ("never predict"); the thresholds
        # fitted out of fold undo the shift in calibration
        ds = lgb.Dataset(rows.X[sel], label=y.astype(np.float32), weight=pos_weights(y, cfg.pos_balance),
                         free_raw_data=True)
        return lgb.train(params, ds, num_boost_round=cfg.n_estimators)

    # one thread per model, models in parallel: on a busy machine LightGBM's OpenMP threads spin
    # against each other (2 threads measured 6x slower than 1 on a loaded 2-core box); ctypes
    # releases the GIL, so plain threads run the models side by side
    models: Models = {}
    with ThreadPoolExecutor(max_workers=max(1, min(_threads(cfg), len(jobs) or 1))) as pool:
        bar = tqdm(total=len(jobs), desc=desc, unit="model", disable=not progress, file=sys.stderr,
                   dynamic_ncols=True)
        for (lab, action, _, _), booster in zip(jobs, pool.map(one, range(len(jobs)))):
            models[(lab, action)] = booster
            bar.update(1)
        bar.close()
    return models


# ----------------------------------------------------------------------------- predicting


def _member_mean(members: list[Models], key: tuple[str, str], X: np.ndarray) -> np.ndarray | None:
    """(T,) mean prediction of the members that have a model for ``key``; None when none has."""
    ms = [m[key] for m in members if key in m]
    return np.mean([b.predict(X, num_threads=1) for b in ms], axis=0) if ms else None


def predict_video(members: list[Models], video: dict, actions: list[str], slots: list[str],
                  smooth_s: float = 0.0, choice: Choice | None = None,
                  sources: tuple[str, ...] = ("chosen",)) -> np.ndarray:
    """A cached video (``prepare.load_video``) -> probs (len(sources), n_pairs, T, A) float32 (the first axis
    dropped for the default one source), the mean of the members' models; 0 where none has or the track
    does not list the action; a centred mean over ``smooth_s`` seconds when > 0 (in seconds, so 10 and
    120 fps labs get the same).

    Source ``lab``: the (lab, action) models; ``pooled``: the (POOLED, action) models; ``mean``: the mean of
    both where both exist, else whichever exists; ``chosen``: per (lab, action) the source ``choice`` names
    ("lab" where it names none)."""
    lab = str(video["meta"]["lab"])
    fps = float(video["meta"]["fps"])
    choice = choice or {}
    cols = np.array([data.ACTION_INDEX[a] for a in actions], dtype=np.int64)
    n_pairs, T = len(video["meta"]["pairs"]), int(video["meta"]["n_frames"])
    out = np.zeros((len(sources), n_pairs, T, len(actions)), dtype=np.float32)
    for p in range(n_pairs):
        labeled = np.asarray(video["labeled"][p])[cols]
        todo = [j for j in np.flatnonzero(labeled)
                if any((lab, actions[j]) in m or (POOLED, actions[j]) in m for m in members)]
        if not todo or T == 0:
            continue
        X = tabular.track_features(np.asarray(video["pair"][p]), fps, slots)
        for j in todo:
            want = {choice.get((lab, actions[j]), "lab") if s == "chosen" else s for s in sources}
            own = _member_mean(members, (lab, actions[j]), X) if want & {"lab", "mean"} else None
            pool = _member_mean(members, (POOLED, actions[j]), X) if want & {"pooled", "mean"} else None
            both = [q for q in (own, pool) if q is not None]
            got = {"lab": own, "pooled": pool, "mean": np.mean(both, axis=0) if both else None}
            for k, s in enumerate(sources):
                q = got[choice.get((lab, actions[j]), "lab") if s == "chosen" else s]
                if q is not None:
                    out[k, p, :, j] = q
        if smooth_s > 0:
            for k in range(len(sources)):
                out[k, p][:, todo] = tabular.rolling(out[k, p][:, todo], max(int(round(smooth_s * fps)), 1))[0]
    return out[0] if sources == ("chosen",) else out


def predict_cache(cache_dir: Path, videos: pd.DataFrame, member_of: Any, actions: list[str], path: Path,
                  with_labels: bool, progress: bool = True, desc: str = "gbdt predict",
                  smooth_s: float = 0.0, choice: Choice | None = None,
                  sources: tuple[str, ...] = ("chosen",)) -> Path | list[Path]:
    """Predict every track of ``videos`` and write a predictions file (one per source, ``path`` with
    ``.<source>`` before the suffix, when ``sources`` is not the default; see :func:`predict_video`).

    ``member_of(lab, video) -> list[Models]`` picks the models of a video (its fold's for OOF, all
    folds for test). Rows are video frames (the cache is kept at each video's own fps).
    """
    fcfg, _ = prepare.open_cache(cache_dir)
    if fcfg.target_fps is not None:
        raise MabeError(f"{cache_dir}: the gbdt family reads a cache at each video's own fps "
                        "(features.target_fps must be null)")
    slots = _slots(fcfg)
    cols = np.array([data.ACTION_INDEX[a] for a in actions], dtype=np.int64)
    probs, labels, labeled, offsets = [], [], [], [0]
    vids, labs, agents, targets, fpss = [], [], [], [], []
    for lab, vid in tqdm(list(zip(videos["lab_id"], videos["video_id"])), desc=desc, unit="video",
                         disable=not progress, file=sys.stderr, dynamic_ncols=True):
        v = prepare.load_video(cache_dir, lab, vid)
        pr = predict_video(member_of(str(lab), vid), v, actions, slots, smooth_s, choice, sources)
        pr = pr[None] if sources == ("chosen",) else pr
        for p, (agent, target) in enumerate(v["meta"]["pairs"]):
            probs.append(pr[:, p].astype(np.float16))
            if with_labels:
                labels.append(np.asarray(v["labels"][p])[:, cols])
            labeled.append(np.asarray(v["labeled"][p])[cols])
            offsets.append(offsets[-1] + pr.shape[2])
            vids.append(int(vid))
            labs.append(str(lab))
            agents.append(int(agent))
            targets.append(int(target))
            fpss.append(float(v["meta"]["fps"]))
    A = len(actions)
    written = []
    for k, source in enumerate(sources):
        out = path if sources == ("chosen",) else path.with_name(f"{path.stem}.{source}{path.suffix}")
        written.append(predictions.save(
            out,
            np.concatenate([q[k] for q in probs]) if probs else np.zeros((0, A), np.float16),
            np.asarray(offsets, dtype=np.int64), np.asarray(vids, dtype=np.int64), np.asarray(labs, dtype=str),
            np.asarray(agents, dtype=np.int8), np.asarray(targets, dtype=np.int8), np.asarray(actions, dtype=str),
            np.asarray(labeled, dtype=bool).reshape(-1, A), np.asarray(fpss, dtype=np.float64),
            labels=(np.concatenate(labels) if labels else np.zeros((0, A), np.uint8)) if with_labels else None,
        ))
    return written[0] if sources == ("chosen",) else written


def choose_sources(oof: dict[str, predictions.Predictions], cfg: PostprocessConfig) -> Choice:
    """Out-of-fold predictions per source (SOURCES keys, same tracks) -> per (lab, action) the source with
    the best out-of-fold F1 at its best threshold; ties go to the earlier of SOURCES (the lab's own model)."""
    scores = {s: postprocess.fit_thresholds_f1(oof[s], cfg)[1] for s in SOURCES if s in oof}
    keys = sorted(set().union(*(set(v) for v in scores.values()))) if scores else []
    choice: Choice = {}
    for key in keys:
        f1 = [(scores[s].get(key) or 0.0, -i, s) for i, s in enumerate(SOURCES) if s in scores]
        choice[key] = max(f1)[2]
    return choice


def combine_sources(oof: dict[str, predictions.Predictions], choice: Choice) -> predictions.Predictions:
    """The per-source predictions (same tracks) -> one, each (lab, action) column from its chosen source."""
    ref = oof["lab"]
    probs = ref.probs.copy()
    actions = [str(a) for a in ref.actions]
    lab_of_row = np.repeat(np.asarray(ref.lab_id).astype(str), np.diff(ref.offsets))
    for (lab, action), source in choice.items():
        if source == "lab" or action not in actions:
            continue
        rows = lab_of_row == lab
        j = actions.index(action)
        probs[rows, j] = oof[source].probs[rows, j]
    return dataclasses.replace(ref, probs=probs)


# ----------------------------------------------------------------------------- model files


def save_models(folder: Path, folds: list[Models], actions: list[str], fold_of: dict[str, int],
                choice: Choice | None = None) -> Path:
    """``folder/fold<k>/<lab>__<action>.txt`` (LightGBM text models; ``pooled__<action>.txt`` for the
    pooled ones) + ``folder/models.json`` (with the per-(lab, action) source ``choice``)."""
    folder = Path(folder)
    entries = []
    for k, models in enumerate(folds):
        (folder / f"fold{k}").mkdir(parents=True, exist_ok=True)
        for (lab, action), booster in sorted(models.items()):
            who = "pooled" if lab == POOLED else safe_name(lab, "metadata", "lab_id")
            name = f"fold{k}/{who}__{safe_name(action, 'metadata', 'action')}.txt"
            booster.save_model(str(folder / name))
            entries.append({"fold": k, "lab": lab, "action": action, "file": name})
    nested: dict[str, dict[str, str]] = {}
    for (lab, action), source in sorted((choice or {}).items()):
        nested.setdefault(lab, {})[action] = source
    meta = {"actions": actions, "folds": len(folds), "models": entries, "fold_of_video": fold_of,
            "features": tabular.feature_names(), "choice": nested}
    write_json(folder / "models.json", meta)
    return folder


def load_choice(folder: Path) -> Choice:
    """The per-(lab, action) sources :func:`save_models` wrote ({} for older model folders)."""
    path = Path(folder) / "models.json"
    nested = json.loads(path.read_text()).get("choice") or {}
    out: Choice = {}
    for lab, per in nested.items():
        for action, source in per.items():
            if source not in SOURCES:
                raise MabeError(f"{path}: choice {lab}.{action} must be one of {list(SOURCES)}, got {source!r}")
            out[(str(lab), str(action))] = str(source)
    return out


def load_models(folder: Path) -> tuple[list[Models], list[str]]:
    """What :func:`save_models` wrote -> (one Models per fold, actions)."""
    lgb = _lgb()
    folder = Path(folder)
    path = folder / "models.json"
    if not path.is_file():
        raise MabeError(f"{folder}: no models.json; train with `mabe gbdt DATA --out {folder.parent}` first")
    meta = json.loads(path.read_text())
    if meta.get("features") != tabular.feature_names():
        raise MabeError(f"{path}: models were trained on other tabular features than this mabe computes; retrain")
    folds: list[Models] = [{} for _ in range(int(meta["folds"]))]
    for e in meta["models"]:
        file = within(folder, folder / str(e["file"]))  # a name from a file is untrusted
        folds[int(e["fold"])][(str(e["lab"]), str(e["action"]))] = lgb.Booster(model_file=str(file))
    return folds, list(meta["actions"])


# ----------------------------------------------------------------------------- the whole run


def _actions_of(cache_dir: Path, videos: pd.DataFrame) -> list[str]:
    """Actions listed in behaviors_labeled of any of ``videos`` (sorted, as data.ACTIONS)."""
    seen = np.zeros(len(data.ACTIONS), dtype=bool)
    for lab, vid in zip(videos["lab_id"], videos["video_id"]):
        seen |= prepare.read_video(cache_dir, lab, vid).labeled_mask().any(0)  # the triples: no features needed
    return [a for a, s in zip(data.ACTIONS, seen) if s]


def run(data_root: str | Path, out: str | Path, cfg: GbdtConfig, fcfg: FeatureConfig | None = None,
        workers: int | None = None, progress: bool = True, pp_cfg: PostprocessConfig | None = None) -> dict[str, Path]:
    """Cache, k-fold models, OOF predictions (with labels) and test predictions under ``out``.

    Writes ``out/cache/``, ``out/models/``, ``out/oof_predictions.npz`` and, when the data has a
    test split, ``out/test_predictions.npz``; returns those paths by name. With pooled models the
    per-source out-of-fold files ``out/oof_predictions.<source>.npz`` stay beside them and ``pp_cfg``
    (the postprocessing the thresholds will be fitted with) scores the sources.
    """
    out = Path(out)
    fcfg = fcfg or FeatureConfig()
    if fcfg.target_fps is not None:
        raise MabeError("the gbdt family works at each video's own fps: features.target_fps must be null")
    if not fcfg.pair_features:
        raise MabeError("the gbdt family needs pair features: features.pair_features must be true")
    t0 = time.perf_counter()
    cache_dir = prepare.prepare_dataset(data_root, fcfg, cache_root=out / "cache", workers=workers,
                                        progress=progress)
    _, index = prepare.open_cache(cache_dir)
    train = _videos(index, "train", labelled_only=True)
    if len(train) == 0:
        raise MabeError(f"{data_root}: no train video with annotations to learn from")
    k = min(cfg.folds, len(train))
    if k < 2:
        raise MabeError(f"{data_root}: k-fold needs at least 2 labelled train videos, found {len(train)}")
    actions = _actions_of(cache_dir, train)
    fold = assign_folds(train["lab_id"].to_numpy(), train["video_id"].to_numpy(), k, cfg.fold_seed)
    fold_of = {f"{lab}/{vid}": int(f) for lab, vid, f in zip(train["lab_id"], train["video_id"], fold)}
    print(f"gbdt: {len(train)} labelled train videos, {train['lab_id'].nunique()} labs, {len(actions)} actions, "
          f"{k} folds stratified by lab")
    rows = collect_rows(cache_dir, train, actions, cfg, progress)
    row_fold = np.array([fold_of[f"{lab}/{vid}"] for lab, vid in zip(rows.lab, rows.video)], dtype=np.int64)
    print(f"gbdt: {len(rows.X):,} training frames x {rows.X.shape[1]} features")
    folds = [fit_models(rows, cfg, row_fold != f, progress, desc=f"gbdt fold {f + 1}/{k}") for f in range(k)]
    del rows
    paths = {"cache": cache_dir, "models": out / "models"}
    oof_of = lambda lab, vid: [folds[fold_of[f"{lab}/{vid}"]]]  # noqa: E731
    choice: Choice = {}
    if any(lab == POOLED for m in folds for lab, _ in m):
        files = predict_cache(cache_dir, train, oof_of, actions, out / "oof_predictions.npz", with_labels=True,
                              progress=progress, desc="gbdt out-of-fold", smooth_s=cfg.smooth_seconds,
                              sources=SOURCES)
        per = {s: predictions.load(f) for s, f in zip(SOURCES, files)}
        choice = choose_sources(per, pp_cfg or PostprocessConfig())
        paths["oof"] = combine_sources(per, choice).save(out / "oof_predictions.npz")
        counts = {s: sum(v == s for v in choice.values()) for s in SOURCES}
        print("gbdt: out-of-fold source per (lab, action): " + ", ".join(f"{n} {s}" for s, n in counts.items()))
    else:
        paths["oof"] = predict_cache(cache_dir, train, oof_of, actions, out / "oof_predictions.npz",
                                     with_labels=True, progress=progress, desc="gbdt out-of-fold",
                                     smooth_s=cfg.smooth_seconds)
    save_models(out / "models", folds, actions, fold_of, choice)
    test = _videos(index, "test", labelled_only=False)
    if len(test):
        paths["test"] = predict_cache(cache_dir, test, lambda lab, vid: folds, actions,
                                      out / "test_predictions.npz", with_labels=False, progress=progress,
                                      desc="gbdt test", smooth_s=cfg.smooth_seconds, choice=choice)
    n_models = sum(len(m) for m in folds)
    print(f"gbdt: {n_models} models in {time.perf_counter() - t0:.1f} s; out-of-fold -> {paths['oof']}"
          + (f"; test -> {paths['test']}" if "test" in paths else ""))
    return paths


def predict_with(models_dir: str | Path, data_root: str | Path, out: str | Path, split: str = "test",
                 fcfg: FeatureConfig | None = None, workers: int | None = None, progress: bool = True,
                 smooth_s: float = 0.0) -> Path:
    """Saved fold models (``OUT/models`` of a run) -> ``out/<split>_predictions.npz`` for another dataset
    (the mean of the folds; a lab without a model gets probability 0)."""
    folds, actions = load_models(Path(models_dir))
    choice = load_choice(Path(models_dir))
    cache_dir = prepare.prepare_dataset(data_root, fcfg or FeatureConfig(), cache_root=Path(out) / "cache",
                                        splits=[split], workers=workers, progress=progress)
    _, index = prepare.open_cache(cache_dir)
    videos = _videos(index, split, labelled_only=False)
    return predict_cache(cache_dir, videos, lambda lab, vid: folds, actions, Path(out) / f"{split}_predictions.npz",
                         with_labels=split != "test", progress=progress, desc=f"gbdt {split}", smooth_s=smooth_s,
                         choice=choice)


def main_from_args(args: Any) -> dict[str, Path]:
    """``mabe gbdt DATA --out DIR [-c CONFIG] [--set gbdt.folds=5]``: fit, OOF thresholds, submission."""
    cfg = load_config(getattr(args, "config", None), getattr(args, "overrides", None))
    if getattr(args, "folds", None):
        cfg.gbdt.folds = int(args.folds)
    if getattr(args, "models", None) is not None:  # no training: predict DATA's test split with saved models
        path = predict_with(args.models, args.data, args.out, "test", cfg.features, getattr(args, "workers", None),
                            smooth_s=cfg.gbdt.smooth_seconds)
        print(f"gbdt: test predictions -> {path}")
        return {"test": path}
    paths = run(args.data, args.out, cfg.gbdt, cfg.features, workers=getattr(args, "workers", None),
                pp_cfg=cfg.postprocess)
    oof = predictions.load(paths["oof"])
    thr = postprocess.fit_thresholds(oof, cfg.postprocess)
    paths["thresholds"] = postprocess.save_thresholds(Path(args.out) / "thresholds.json", thr)
    print(f"gbdt: {len(thr)} (lab, action) thresholds fitted out of fold -> {paths['thresholds']}")
    if "test" in paths:
        preds = predictions.load(paths["test"])
        sub = submit.to_submission(postprocess.predictions_to_intervals(preds, cfg.postprocess, thr))
        submit.validate_submission(sub)
        paths["submission"] = submit.write_submission(sub, Path(args.out) / "submission.csv")
        print(f"gbdt: {len(sub)} intervals in {sub['video_id'].nunique() if len(sub) else 0} test videos -> "
              f"{paths['submission']}")
    return paths
