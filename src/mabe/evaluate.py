"""Model + tracks (PositionTracks of the cache, or a TrackSet) -> per-frame probabilities; accuracy / F1 / confusion; ``mabe evaluate|predict``.

Windows overlap at evaluation (stride ``windows.eval_stride``, default half a window, plus one
window ending on each track's last frame); a frame's probability is the mean over every window
that covers it. Scene mode is scored as single-label frame classification (argmax); pair mode as
multi-label detection (threshold 0.5) on the labelled (track, action) cells only.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from mabe import checkpoint as ckpt
from mabe import metric, postprocess, predictions, prepare, runs, submit
from mabe.checkpoint import load_for_inference
from mabe.config import PostprocessConfig
from mabe.errors import MabeError
from mabe.io import write_json
from mabe.metric import f1_from_counts
from mabe.postracks import PositionTracks, load_position_tracks
from mabe.training.device import autocast_for, pick_device
from mabe.windows import TrackSet, rows_to_video_frames, run_split, window_index

__all__ = [
    "frame_metrics",
    "multilabel_metrics",
    "trackset_metrics",
    "predict_tracks",
    "competition_score",
    "save_predictions",
    "main_from_args",
    "predict_from_args",
]


# ----------------------------------------------------------------------------- metrics


def _f1_parts(tp: np.ndarray, fp: np.ndarray, fn: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    precision = np.divide(tp, tp + fp, out=np.zeros(tp.shape), where=(tp + fp) > 0)
    recall = np.divide(tp, tp + fn, out=np.zeros(tp.shape), where=(tp + fn) > 0)
    f1 = f1_from_counts(tp, fp, fn)
    return precision, recall, f1


def frame_metrics(y_true: np.ndarray, y_pred: np.ndarray, n_classes: int, names: list[str] | None = None) -> dict:
    """(N,) true and predicted classes -> accuracy, macro F1, per-class precision/recall/F1, confusion.

    ``confusion[i, j]`` counts frames of true class i predicted as j. Macro F1 averages the classes
    that occur in ``y_true`` or ``y_pred`` (as scikit-learn does), the none class included, as the
    reference reported it.
    """
    y_true = np.asarray(y_true, dtype=np.int64)
    y_pred = np.asarray(y_pred, dtype=np.int64)
    C = n_classes
    confusion = np.bincount(y_true * C + y_pred, minlength=C * C).reshape(C, C)
    tp = np.diag(confusion).astype(np.float64)
    fp = confusion.sum(axis=0) - tp
    fn = confusion.sum(axis=1) - tp
    precision, recall, f1 = _f1_parts(tp, fp, fn)
    present = (confusion.sum(axis=0) + confusion.sum(axis=1)) > 0
    names = names or [str(i) for i in range(C)]
    return {
        "n_frames": int(len(y_true)),
        "accuracy": float(tp.sum() / max(len(y_true), 1)),
        "f1_macro": float(f1[present].mean()) if present.any() else 0.0,
        "names": list(names),
        "precision": precision.tolist(),
        "recall": recall.tolist(),
        "f1": f1.tolist(),
        "support": confusion.sum(axis=1).tolist(),
        "confusion": confusion.tolist(),
    }


def multilabel_metrics(
    y_true: np.ndarray, y_pred: np.ndarray, mask: np.ndarray, names: list[str] | None = None
) -> dict:
    """(N, A) 0/1 truth and prediction, (N, A) bool labelled cells -> per-action and macro F1.

    Only labelled cells count. Macro F1 averages the actions with a labelled positive or a
    prediction; accuracy is the share of labelled cells predicted right.
    """
    t = np.asarray(y_true).astype(bool) & mask
    p = np.asarray(y_pred).astype(bool) & mask
    tp = (t & p).sum(axis=0).astype(np.float64)  # (A,)
    fp = (~t & p).sum(axis=0).astype(np.float64)
    fn = (t & ~p).sum(axis=0).astype(np.float64)
    precision, recall, f1 = _f1_parts(tp, fp, fn)
    scored = (tp + fp + fn) > 0
    n_cells = int(mask.sum())
    names = names or [str(i) for i in range(t.shape[1])]
    return {
        "n_cells": n_cells,
        "accuracy": float(1.0 - (fp.sum() + fn.sum()) / max(n_cells, 1)),
        "f1_macro": float(f1[scored].mean()) if scored.any() else 0.0,
        "names": list(names),
        "precision": precision.tolist(),
        "recall": recall.tolist(),
        "f1": f1.tolist(),
        "support": t.sum(axis=0).tolist(),
        "labelled_frames": mask.sum(axis=0).tolist(),
        "tp": tp.tolist(), "fp": fp.tolist(), "fn": fn.tolist(),
    }


def trackset_metrics(ts: TrackSet, probs: np.ndarray, threshold: float = 0.5) -> dict:
    """Probabilities (N, C) of a TrackSet's frames -> metrics overall and per lab."""
    lengths = ts.lengths
    lab_rows = np.repeat(ts.lab_id, lengths)
    if ts.mode == "scene":
        pred = probs.argmax(axis=1)

        def one(rows: Any) -> dict:
            return frame_metrics(ts.Y[rows], pred[rows], ts.n_outputs, ts.names)
    else:
        mask = np.repeat(ts.label_mask, lengths, axis=0)  # (N, A)
        pred = probs >= threshold

        def one(rows: Any) -> dict:
            return multilabel_metrics(ts.Y[rows], pred[rows], mask[rows], ts.names)

    out = one(slice(None))
    out["mode"] = ts.mode
    out["per_lab"] = {}
    for lab in np.unique(ts.lab_id):
        m = one(lab_rows == lab)
        out["per_lab"][str(lab)] = {"f1_macro": m["f1_macro"], "accuracy": m["accuracy"], "f1": m["f1"]}
    return out


# ----------------------------------------------------------------------------- prediction


@torch.no_grad()
def predict_tracks(
    model: nn.Module, ts: TrackSet, batch: int = 256, stride: int | None = None, *, length: int = 100,
    device: str | torch.device | None = None, precision: str = "auto", arrays: dict | None = None,
) -> np.ndarray:
    """Per-frame probabilities (N, C) float32 for every frame of ``ts``, overlapping windows averaged.

    Windows of ``length`` frames start every ``stride`` frames (default ``length // 2``) plus one
    ending on each track's last frame, so every frame is covered. Scene: softmax; pair: sigmoid.
    ``arrays``: ``ts.tensors(device)`` already on the device (saves a copy per call).
    """
    device = torch.device(device) if device is not None else next(model.parameters()).device
    stride = stride or max(length // 2, 1)
    arrays = arrays if arrays is not None else ts.tensors(device)
    windows = torch.from_numpy(window_index(ts.lengths, length, stride, cover_end=True)).to(device)
    sums = torch.zeros(ts.n_rows, ts.n_outputs, device=device)  # (N, C)
    counts = torch.zeros(ts.n_rows, device=device)  # (N,)
    offsets = arrays["offsets"]
    was_training = model.training
    model.eval()
    for i in range(0, len(windows), batch):
        w = windows[i : i + batch]  # (B, 2)
        b = ts.batch(arrays, w, length)  # PositionTracks: the features computed here, on the device
        with autocast_for(device, precision):
            logits = model(b["x"].float())  # (B, W, C)
        logits = logits.float()
        p = logits.softmax(-1) if ts.mode == "scene" else logits.sigmoid()  # (B, W, C)
        rows = offsets[w[:, 0]][:, None] + w[:, 1][:, None] + torch.arange(length, device=device)  # (B, W)
        valid = b["valid"]
        sums.index_add_(0, rows[valid], p[valid])
        counts.index_add_(0, rows[valid], torch.ones_like(rows[valid], dtype=counts.dtype))
    model.train(was_training)
    sums /= counts.clamp_(min=1)[:, None]  # in place: no second (N, C) float32 array (4 B x C a row)
    return sums.cpu().numpy()


# ----------------------------------------------------------------------------- competition score


def competition_score(ts: TrackSet, probs: np.ndarray, data_root: str | Path, pp_cfg: Any = None) -> float | None:
    """Pair mode: post-process ``probs`` (default thresholds) into intervals, make a submission and
    score it with the competition metric against the annotations of ``ts``'s videos.

    None in scene mode, or when the data directory has no annotations for these videos.
    """
    if ts.mode != "pair":
        return None

    preds = predictions.validate(_prediction_arrays(ts, probs, with_labels=False))
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            solution = metric.load_solution(Path(data_root), "train")
    except MabeError:
        return None
    solution = solution[solution["video_id"].isin(set(ts.video_id.tolist()))]
    if len(solution) == 0:
        return None
    intervals = postprocess.predictions_to_intervals(preds, pp_cfg or PostprocessConfig())
    return float(metric.score(solution, submit.to_submission(intervals)).final)


# ----------------------------------------------------------------------------- files


def _prediction_arrays(ts: TrackSet, probs: np.ndarray, with_labels: bool) -> dict[str, np.ndarray]:
    # Rows of a resampled cache (features.target_fps) are not video frames: map them back, so that
    # intervals, submissions and scores are in the video's own frames.
    probs_v, offsets, fps = rows_to_video_frames(ts, probs)
    out = {
        "probs": probs_v.astype(np.float16), "offsets": offsets, "video_id": ts.video_id,
        "lab_id": ts.lab_id.astype(str), "agent_id": ts.agent_id, "target_id": ts.target_id,
        "actions": np.asarray(ts.names, dtype=str), "labeled": ts.label_mask, "fps": fps,
    }
    if with_labels:
        out["labels"] = rows_to_video_frames(ts, ts.Y)[0]
    return out


def save_predictions(
    path: str | Path, ts: TrackSet, probs: np.ndarray, with_labels: bool = True, allow_scene: bool = False
) -> Path:
    """A TrackSet + its probabilities -> the predictions file (design.md).

    Pair mode only, unless ``allow_scene``: then the columns are the scene classes (``none``
    included), agent and target are -1 and ``labels`` is the one-hot class (the training run's
    ``eval/val_predictions.npz`` for reports; not usable for a submission).
    """

    if ts.mode == "scene" and allow_scene:
        a = _prediction_arrays(ts, probs, with_labels=False)
        labels = np.eye(ts.n_outputs, dtype=np.uint8)[rows_to_video_frames(ts, ts.Y)[0]] if with_labels else None
        return predictions.save(path, a["probs"], a["offsets"], a["video_id"], a["lab_id"], a["agent_id"],
                                a["target_id"], a["actions"], a["labeled"], a["fps"], labels=labels)
    if ts.mode != "pair":
        raise MabeError("a scene-mode model predicts classes for whole videos and cannot name an agent and "
                        "a target: predictions files need a pair-mode model (task.mode=pair)")
    a = _prediction_arrays(ts, probs, with_labels)
    return predictions.save(path, a["probs"], a["offsets"], a["video_id"], a["lab_id"], a["agent_id"],
                            a["target_id"], a["actions"], a["labeled"], a["fps"], labels=a.get("labels"))


# ----------------------------------------------------------------------------- loading data for a model


def videos_of_split(index_df: Any, cfg: Any, split: str) -> np.ndarray:
    """Video ids of ``split``: val / train (the training run's split of labelled train videos),
    all (every labelled train video) or test."""

    if split == "test":
        return np.unique(index_df.loc[index_df["split"] == "test", "video_id"].to_numpy())
    train_rows = index_df[(index_df["split"] == "train") & index_df["has_labels"].astype(bool)]
    if split == "all":
        return np.unique(train_rows["video_id"].to_numpy())
    w = cfg.windows
    tr, va = run_split(train_rows, w.val_fraction, w.split_seed, w.folds, w.fold)
    return va if split == "val" else tr


def trackset_for_model(meta: dict, data_root: str | Path, split: str) -> PositionTracks:
    """The tracks a loaded model (``meta`` from load_for_inference) reads on ``split``, with its ``norm``."""

    cfg = meta["config"]
    cache_dir = prepare.ensure_cache(cfg, Path(data_root), ["test" if split == "test" else "train"])
    _, index_df = prepare.open_cache(cache_dir)
    videos = videos_of_split(index_df, cfg, split)
    if len(videos) == 0:
        raise MabeError(f"{data_root}: no videos in split {split!r}")
    actions = meta["outputs"] if meta["mode"] == "pair" else None
    ts = load_position_tracks(cache_dir, cfg.task, videos, actions, drop_unlabeled=split != "test",
                              index_df=index_df)
    norm = {k: np.asarray(v, dtype=np.float32) for k, v in meta["norm"].items()}
    if norm["mean"].shape != (ts.n_base_features,):
        raise MabeError(f"{meta['path']}: normalisation stats have {norm['mean'].shape[0]} features, the tracks "
                        f"{ts.n_base_features}")
    ts.norm = norm
    where = meta.get("path", "the model")
    if cfg.model.lab_conditioning:
        if not meta.get("labs"):
            raise MabeError(f"{where}: model.lab_conditioning is on but the file lists no training labs")
        ts.labs = list(meta["labs"])
        if ts.unseen_labs:  # the rule: no lab column set, the fps column as for any lab
            warnings.warn(f"{where}: lab(s) {', '.join(ts.unseen_labs)} were not among the model's training "
                          f"labs ({', '.join(ts.labs)}): predicted with all-zero lab columns", stacklevel=2)
    if "in_features" in meta and ts.n_features != meta["in_features"]:
        raise MabeError(f"{where}: the model reads {meta['in_features']} features, the tracks give {ts.n_features}")
    return ts


def write_validation(
    cfg: Any, run_dir: Path, model: nn.Module, val_ts: TrackSet, device: torch.device, precision: str,
    arrays: dict | None = None, say: Callable[[str], Any] = print,
) -> dict:
    """A run's best checkpoint (``run_dir/checkpoints/best.pt``, loaded into ``model``) on validation ->
    ``eval/val_metrics.json`` and ``eval/val_predictions.npz`` (with labels); returns the metrics."""
    best = run_dir / "checkpoints" / "best.pt"
    if best.is_file():
        model.load_state_dict(ckpt.inference_weights(ckpt.load(best, map_location=device)))
    probs = predict_tracks(model, val_ts, batch=cfg.train.batch_size, stride=cfg.windows.eval_stride,
                           length=cfg.windows.sequence_length, device=device, precision=precision, arrays=arrays)
    metrics = trackset_metrics(val_ts, probs)
    metrics["score"] = competition_score(val_ts, probs, cfg.data, cfg.postprocess)
    metrics["checkpoint"] = str(best)
    write_json(run_dir / "eval" / "val_metrics.json", metrics)
    save_predictions(run_dir / "eval" / "val_predictions.npz", val_ts, probs, with_labels=True, allow_scene=True)
    line = f"best model on validation: F1 {metrics['f1_macro']:.4f} acc {metrics['accuracy']:.4f}"
    if metrics["score"] is not None:
        line += f" score {metrics['score']:.4f}"
    say(line + f" -> {run_dir / 'eval'}")
    return metrics


# ----------------------------------------------------------------------------- commands


def _print_table(metrics: dict, title: str) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title)
    for col in ("output", "precision", "recall", "F1", "support"):
        table.add_column(col, justify="left" if col == "output" else "right")
    for i, name in enumerate(metrics["names"]):
        table.add_row(name, f"{metrics['precision'][i]:.3f}", f"{metrics['recall'][i]:.3f}",
                      f"{metrics['f1'][i]:.3f}", f"{metrics['support'][i]:,}")
    console = Console()
    console.print(table)
    labs = Table(title="per lab")
    labs.add_column("lab")
    labs.add_column("macro F1", justify="right")
    labs.add_column("accuracy", justify="right")
    for lab, m in metrics["per_lab"].items():
        labs.add_row(lab, f"{m['f1_macro']:.4f}", f"{m['accuracy']:.4f}")
    console.print(labs)
    line = f"macro F1 {metrics['f1_macro']:.4f}  accuracy {metrics['accuracy']:.4f}"
    if metrics.get("score") is not None:
        line += f"  competition score {metrics['score']:.4f}"
    console.print(line)


def main_from_args(args: Any) -> dict:
    """``mabe evaluate RUN [DATA] [--split val|train|all] [--json FILE]``."""
    
    device = pick_device("auto")
    model, meta = load_for_inference(args.run, device)
    cfg = meta["config"]
    data_root = Path(args.data) if args.data else Path(cfg.data)
    ts = trackset_for_model(meta, data_root, args.split)
    probs = predict_tracks(model, ts, batch=cfg.train.batch_size, stride=cfg.windows.eval_stride,
                           length=cfg.windows.sequence_length, device=device, precision=cfg.train.precision)
    metrics = trackset_metrics(ts, probs)
    metrics["score"] = competition_score(ts, probs, data_root, cfg.postprocess)
    metrics.update(checkpoint=meta["path"], split=args.split, data=str(data_root))
    _print_table(metrics, f"{meta['path']} on {args.split} ({ts.n_tracks} tracks, {ts.n_rows:,} frames)")
    if getattr(args, "json", None):
        write_json(args.json, metrics)
        print(f"metrics: {args.json}")
    return metrics


def predict_from_args(args: Any) -> Path:
    """``mabe predict CKPT [CKPT ...] --data DIR --split test --out FILE``: averaged probabilities."""
    
    device = pick_device("auto")
    ref: TrackSet | None = None
    total: np.ndarray | None = None
    members = expand_cv(args.checkpoints, args.split)
    for ck in members:
        model, meta = load_for_inference(ck, device)
        if meta["mode"] != "pair":
            raise MabeError(f"{meta['path']}: a scene-mode model (task.mode=scene) predicts one class per "
                            "video frame and cannot name an agent and a target; `mabe predict` needs a "
                            "pair-mode model (train with task.mode=pair)")
        cfg = meta["config"]
        ts = trackset_for_model(meta, args.data, args.split)
        probs = predict_tracks(model, ts, batch=cfg.train.batch_size, stride=cfg.windows.eval_stride,
                               length=cfg.windows.sequence_length, device=device, precision=cfg.train.precision)
        if ref is None:
            ref, total = ts, probs.astype(np.float32)
        else:
            total += _align(ref, ts, probs, meta["path"])
        print(f"predict: {meta['path']}: {ts.n_tracks} tracks, {ts.n_rows:,} frames")
        del model
    assert ref is not None and total is not None
    total /= len(members)
    out = save_predictions(args.out, ref, total, with_labels=args.split != "test")
    print(f"predictions: {out} ({ref.n_tracks} tracks, {len(ref.names)} actions, "
          f"{len(members)} model{'s' if len(members) > 1 else ''})")
    return out


def expand_cv(checkpoints: list, split: str) -> list:
    """``mabe predict``'s members: a cv directory (``mabe cv``) stands for its fold runs (test split only:
    on train videos each fold's model has seen the others' videos; their out-of-fold file is the cv's own)."""
    out = []
    for ck in checkpoints:
        folds = runs.cv_fold_dirs(ck) if Path(ck).is_dir() else None
        if folds is None:
            out.append(ck)
        elif split != "test":
            raise MabeError(f"{ck} is a cv directory: predict its folds on --split test; its out-of-fold "
                            f"predictions of the train videos are {Path(ck) / 'oof_predictions.npz'}")
        else:
            out += [str(d) for d in folds]
    return out


def _align(ref: TrackSet, ts: TrackSet, probs: np.ndarray, where: str) -> np.ndarray:
    """Another ensemble member's probabilities in ``ref``'s track and action order."""
    if list(ts.names) != list(ref.names):
        raise MabeError(f"{where}: predicts actions {ts.names}, the first model {ref.names}; "
                        "ensemble members must share their action list")
    keys = {(v, a, t): i for i, (v, a, t) in enumerate(zip(ts.video_id, ts.agent_id, ts.target_id))}
    out = np.empty((ref.n_rows, ref.n_outputs), dtype=np.float32)
    for r, (v, a, t) in enumerate(zip(ref.video_id, ref.agent_id, ref.target_id)):
        j = keys.get((v, a, t))
        lo, hi = ref.offsets[r], ref.offsets[r + 1]
        if j is None or ts.offsets[j + 1] - ts.offsets[j] != hi - lo:
            raise MabeError(f"{where}: track (video {v}, agent {a}, target {t}) differs from the first model's")
        out[lo:hi] = probs[ts.offsets[j] : ts.offsets[j + 1]]
    return out
