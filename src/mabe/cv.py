"""``mabe cv``: k-fold cross-validation of the network, by video and stratified by lab, so that every
labelled train video gets an out-of-fold prediction (for thresholds and blend weights, ``mabe blend``).

    mabe cv --config configs/cpu_net.yaml --data DATA --name cvnet --folds 3
    mabe predict runs/cvnet --data DATA --split test --out net_test.npz      # the mean of the folds
    mabe blend --fit GBDT/oof_predictions.npz runs/cvnet/oof_predictions.npz \\
               --apply GBDT/test_predictions.npz net_test.npz --out blend/test_predictions.npz

The cv directory ``runs/<name>/`` holds ``cv.json`` (the base config, the fold of every video, the fold
run names), one ordinary run directory per fold (``fold<k>/``: the recipe of ``mabe train`` with
``windows.folds = K`` and ``windows.fold = k``, so fold k validates (best checkpoint, early stopping) on
fold k's videos and trains on the others), then ``oof_predictions.npz`` (each fold's best checkpoint on its
own videos, concatenated: every video predicted by the one model that never trained on it) and
``thresholds.json`` fitted on it. Folds use ``windows.assign_folds`` (the gbdt family's fold function)
seeded by ``windows.split_seed``; every fold predicts the same actions (``task.actions`` resolved once on
all labelled train videos) so that their test probabilities can be averaged.

Rerunning the command (or ``mabe cv --resume NAME``) continues: finished folds are kept, an interrupted
fold resumes from its last checkpoint. Note: a fold's best checkpoint is chosen on the videos it then
predicts out of fold (as the validation split of ``mabe train`` is), a mild optimism the gbdt family's
out-of-fold file does not have.
"""

from __future__ import annotations

import copy
import json
import time
from pathlib import Path
from typing import Any

from mabe import launch, paths, postprocess, predictions, prepare, runs, train
from mabe.config import Config, config_from_dict, config_to_dict, load_config
from mabe.errors import MabeError
from mabe.io import write_json
from mabe.postracks import resolve_actions
from mabe.windows import assign_folds

__all__ = ["fold_config", "plan", "run_cv", "collect_oof", "main_from_args"]


def fold_config(cfg: Config, fold: int, folds: int, actions: list[str] | None) -> Config:
    """The base config -> fold ``fold``'s: validates on that fold of ``folds``, predicts ``actions``."""
    out = copy.deepcopy(cfg)
    out.windows.folds, out.windows.fold = int(folds), int(fold)
    out.name = f"fold{fold}"
    if actions is not None:
        out.task.actions = list(actions)
    return out


def plan(cfg: Config, folds: int) -> dict:
    """Labelled train videos of ``cfg.data`` -> cv.json's content: ``folds``, ``runs`` (fold run names),
    ``fold_of_video`` ("lab/video" -> fold), ``actions`` and the base ``config``."""
    if folds < 2:
        raise MabeError("a new cv needs --folds K with K >= 2" + (f", got {folds}" if folds else
                        " (continue an existing one with `mabe cv --resume NAME`)"))
    if cfg.task.mode != "pair":
        raise MabeError("mabe cv writes out-of-fold predictions files, which need task.mode=pair")
    cache_dir = prepare.ensure_cache(cfg, Path(cfg.data), ["train"])
    _, index = prepare.open_cache(cache_dir)
    index = index[(index["split"] == "train") & index["has_labels"].astype(bool)]
    videos = index[["lab_id", "video_id"]].drop_duplicates()
    if len(videos) < folds:
        raise MabeError(f"{cfg.data}: {len(videos)} labelled train videos for {folds} folds")
    fold = assign_folds(videos["lab_id"].to_numpy(), videos["video_id"].to_numpy(), folds, cfg.windows.split_seed)
    actions = resolve_actions(cache_dir, cfg.task, videos["video_id"].tolist(), index)
    return {"folds": int(folds), "runs": [f"fold{k}" for k in range(folds)],
            "fold_of_video": {f"{lab}/{vid}": int(f) for lab, vid, f in zip(videos["lab_id"], videos["video_id"], fold)},
            "actions": list(actions), "config": config_to_dict(cfg)}


def _differences(a: dict, b: dict) -> list[str]:
    fa, fb = launch._flatten(a), launch._flatten(b)
    return sorted(k for k in set(fa) | set(fb) if fa.get(k) != fb.get(k) and k not in launch.RESUMABLE_KEYS)


def _done(run_dir: Path) -> bool:
    return (runs.read_status(run_dir).get("state") == "finished"
            and (run_dir / "eval" / "val_predictions.npz").is_file())


def collect_oof(cv_dir: Path, meta: dict) -> predictions.Predictions:
    """The folds' validation predictions -> one out-of-fold file's content; MabeError unless fold k
    predicted exactly fold k's videos (so no video is predicted by a model that trained on it)."""
    parts = []
    for k, d in enumerate(runs.cv_fold_dirs(cv_dir) or []):
        p = predictions.load(d / "eval" / "val_predictions.npz")
        got = {f"{lab}/{vid}" for lab, vid in zip(p.lab_id.tolist(), p.video_id.tolist())}
        want = {v for v, f in meta["fold_of_video"].items() if f == k}
        if got != want:
            raise MabeError(f"{d}: validated on {len(got)} videos, fold {k} of {cv_dir / runs.CV_FILE} holds "
                            f"{len(want)} ({len(got - want)} not in the fold, {len(want - got)} missing); "
                            "its out-of-fold predictions would not be out of fold")
        parts.append(p)
    return predictions.concat(parts)


def run_cv(cfg: Config | None, cv_dir: str | Path, folds: int | None = None, say: Any = print) -> dict:
    """Train (or continue) the folds of ``cv_dir`` and write its out-of-fold file and thresholds.

    ``cfg`` None continues ``cv_dir`` with the config its cv.json holds. Returns ``{"state", "oof",
    "thresholds", "cv_dir"}``; state "stopped" when a fold was stopped (resume by running again).
    """
    cv_dir = Path(cv_dir)
    meta_path = cv_dir / runs.CV_FILE
    paths.make_dir(cv_dir, "the cv directory")
    held = paths.lock(cv_dir / runs.LOCK_FILE, f"cv {cv_dir}")  # one `mabe cv` per cv directory
    try:
        if meta_path.is_file():
            meta = json.loads(meta_path.read_text())
            if cfg is not None:
                diff = _differences(config_to_dict(cfg), meta["config"])
                if diff or (folds and folds != meta["folds"]):
                    what = ", ".join(diff[:5]) if diff else f"--folds {folds} (was {meta['folds']})"
                    raise MabeError(f"cv {cv_dir} exists with another config ({what}); continue it with "
                                    f"`mabe cv --resume {cv_dir}` or pick another --name")
            cfg = config_from_dict(meta["config"], where=str(meta_path))
            say(f"cv: continuing {cv_dir} ({meta['folds']} folds)")
        else:
            if cfg is None:
                raise MabeError(f"--resume {cv_dir}: no {runs.CV_FILE} there")
            meta = plan(cfg, int(folds or 0))
            write_json(meta_path, meta)
        K = int(meta["folds"])
        t0, trained = time.perf_counter(), 0
        for k, d in enumerate(runs.cv_fold_dirs(cv_dir) or []):
            n_val = sum(f == k for f in meta["fold_of_video"].values())
            if _done(d):
                say(f"cv: fold {k + 1}/{K} already finished ({d})")
                continue
            resume = (d / "checkpoints" / "last.pt").is_file()
            fcfg = (launch.resume_config(d, None, None) if resume
                    else fold_config(cfg, k, K, meta["actions"]))
            say(f"cv: fold {k + 1}/{K}: {'resuming' if resume else 'training'} {d}, validating on its {n_val} "
                f"of {len(meta['fold_of_video'])} videos")
            summary = train.train(fcfg, d, resume=resume)
            if summary["state"] == "stopped":
                say(f"cv: fold {k + 1}/{K} stopped; continue with `mabe cv --resume {cv_dir}`")
                return {"state": "stopped", "cv_dir": cv_dir}
            trained += 1
            spent = time.perf_counter() - t0
            left = sum(not _done(x) for x in runs.cv_fold_dirs(cv_dir) or [])
            say(f"cv: fold {k + 1}/{K} {summary['state'].replace('_', ' ')}: best F1 {summary['best_f1']:.4f} "
                f"(epoch {summary['best_epoch']}); {spent:.0f} s so far, about {spent / trained * left:.0f} s left")
        oof = collect_oof(cv_dir, meta).save(cv_dir / "oof_predictions.npz")
        thr = postprocess.fit_thresholds(predictions.load(oof), cfg.postprocess)
        thr_path = postprocess.save_thresholds(cv_dir / "thresholds.json", thr)
        say(f"cv: out-of-fold predictions of {len(meta['fold_of_video'])} videos -> {oof}; {len(thr)} (lab, action) "
            f"thresholds fitted on them -> {thr_path}")
        return {"state": "finished", "oof": oof, "thresholds": thr_path, "cv_dir": cv_dir}
    finally:
        held.release()


def main_from_args(args: Any) -> int:
    """``mabe cv [--config C] --data D --name NAME --folds K [--set k=v]`` or ``mabe cv --resume NAME``."""
    if getattr(args, "resume", None):
        base = load_config(getattr(args, "config", None), getattr(args, "overrides", None))  # --set runs=...
        out = run_cv(None, runs.resolve_run(str(args.resume), base.runs))
    else:
        cfg = load_config(args.config, args.overrides)
        if getattr(args, "data", None):
            cfg.data = str(args.data)
        if getattr(args, "name", None):
            cfg.name = args.name
        if not cfg.name:
            raise MabeError("mabe cv needs --name (the cv directory under the runs root)")
        out = run_cv(cfg, runs.run_dir_for(cfg.runs, cfg.name), args.folds)
    return 0 if out["state"] == "finished" else 1
