"""Run directory -> ``report.html`` + ``figures/*.png``: curves, per-class and per-lab scores, ethograms.

Reads only the run directory (docs/design.md): ``config.yaml``, ``status.json``, ``metrics.csv``,
``eval/val_metrics.json`` and ``eval/val_predictions.npz``. Whatever is missing makes its section say
"not available"; the page is always written. Figures are drawn with matplotlib's object API on the
Agg canvas (no pyplot, no global backend switch).
"""

from __future__ import annotations

import html
import json
import math
import os
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from mabe import predictions, runs
from mabe.io import write_text
from mabe.metric import f1_from_counts

__all__ = ["write_report", "run_lengths", "per_lab_from_predictions", "per_action_from_predictions"]

DPI = 110
THRESHOLD = 0.5  # probability -> predicted frame, for ethograms and metrics computed from predictions
MAX_ETHOGRAM_VIDEOS = 4
MAX_ETHOGRAM_TRIPLES = 14  # rows per ethogram (each is a "true" and a "pred" lane)
FIGURE_NAMES = ("curves.png", "throughput.png", "per_class.png", "confusion.png", "per_lab.png")
_CONFIG_KEYS = (
    ("task", "mode"), ("model", "name"), ("train", "epochs"), ("train", "batch_size"), ("train", "lr"),
    ("train", "precision"), ("train", "device"), ("windows", "sequence_length"), ("train", "seed"), ("data",),
)


@dataclass
class Section:
    title: str
    body: str  # HTML


class NotAvailable(Exception):
    """A section's inputs are missing; the message says which."""


# ----------------------------------------------------------------------------- inputs


def _read_json(path: Path) -> dict | None:
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError, UnicodeDecodeError):
        return None
    return data if isinstance(data, dict) else None


def _read_config(run_dir: Path) -> dict:
    path = run_dir / "config.yaml"
    if not path.is_file():
        return {}
    import yaml

    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError:
        return {}
    return data if isinstance(data, dict) else {}


def _read_metrics(run_dir: Path) -> pd.DataFrame | None:
    path = run_dir / "metrics.csv"
    if not path.is_file():
        return None
    try:
        df = pd.read_csv(path)
    except (pd.errors.EmptyDataError, pd.errors.ParserError, OSError):
        return None
    if df.empty:
        return None
    for col in df.columns:
        if col != "phase":
            df[col] = pd.to_numeric(df[col], errors="coerce")
    if "epoch" not in df:
        df["epoch"] = np.arange(1, len(df) + 1)
    return df


def _load_predictions(path: Path) -> Any:
    """The predictions ``.npz`` (design.md format) as an object with the documented attributes."""
    return predictions.load(path)


def _num(x: Any) -> float | None:
    try:
        v = float(x)
    except (TypeError, ValueError):
        return None
    return v if math.isfinite(v) else None


# ----------------------------------------------------------------------------- array helpers


def run_lengths(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(T,) bool -> (starts, stops) of its runs of True; stop exclusive."""
    m = np.asarray(mask, dtype=bool).astype(np.int8)
    d = np.diff(np.concatenate(([0], m, [0])))
    return np.flatnonzero(d == 1), np.flatnonzero(d == -1)


def _is_scene(actions: np.ndarray) -> bool:
    return "none" in [str(a) for a in actions]


def _track_pred_true(preds: Any, t: int, scene: bool) -> tuple[np.ndarray, np.ndarray | None]:
    """Track t -> (pred bool (T, A), true bool (T, A) or None). Scene: argmax; pair: p >= 0.5."""
    a, b = int(preds.offsets[t]), int(preds.offsets[t + 1])
    p = np.asarray(preds.probs[a:b], dtype=np.float32)
    n_cls = p.shape[1]
    if scene:
        pred = np.eye(n_cls, dtype=bool)[p.argmax(axis=1)] if len(p) else np.zeros_like(p, dtype=bool)
    else:
        pred = p >= THRESHOLD
    true = None
    if preds.labels is not None:
        y = np.asarray(preds.labels[a:b])
        true = np.eye(n_cls, dtype=bool)[y.astype(np.int64)] if y.ndim == 1 else y > 0
    return pred, true


def _counts_by_lab(preds: Any, scene: bool) -> tuple[dict[str, np.ndarray], dict[str, int]]:
    """Per lab: (3, A) int64 [tp, fp, fn] pooled over its tracks' labelled columns; labelled frames."""
    if preds.labels is None:
        raise NotAvailable("val_predictions.npz has no labels")
    n_actions = len(preds.actions)
    counts: dict[str, np.ndarray] = {}
    video_frames: dict[tuple[str, int], int] = {}
    labeled = np.asarray(preds.labeled, dtype=bool)
    for t in range(len(preds.offsets) - 1):
        cols = np.ones(n_actions, dtype=bool) if scene else labeled[t]
        if not cols.any() or preds.offsets[t + 1] <= preds.offsets[t]:
            continue
        pred, true = _track_pred_true(preds, t, scene)
        pred, true = pred[:, cols], true[:, cols]
        lab = str(preds.lab_id[t])
        c = counts.setdefault(lab, np.zeros((3, n_actions), dtype=np.int64))
        c[0, cols] += np.count_nonzero(pred & true, axis=0)
        c[1, cols] += np.count_nonzero(pred & ~true, axis=0)
        c[2, cols] += np.count_nonzero(~pred & true, axis=0)
        key = (lab, int(preds.video_id[t]))
        video_frames[key] = max(video_frames.get(key, 0), int(preds.offsets[t + 1] - preds.offsets[t]))
    frames: dict[str, int] = {}
    for (lab, _), n in video_frames.items():
        frames[lab] = frames.get(lab, 0) + n
    return counts, frames


_f1 = f1_from_counts


def per_lab_from_predictions(preds: Any) -> pd.DataFrame:
    """Per-lab frame F1 from predictions with labels: columns lab, score, n_frames, n_actions.

    Pair mode follows the competition's averaging (mabe-format.md): per lab and action, TP/FP/FN pooled
    over the lab's labelled triples, F1 per action, the lab's score the mean over actions that occur in
    its labels or its predictions. Predictions are p >= 0.5 with no smoothing. Scene mode: argmax per
    frame, the same average over the classes other than ``none``.
    """
    scene = _is_scene(preds.actions)
    counts, frames = _counts_by_lab(preds, scene)
    keep = np.array([str(a) != "none" for a in preds.actions])
    rows = []
    for lab in sorted(counts):
        tp, fp, fn = counts[lab]
        scored = ((tp + fp + fn) > 0) & keep
        score = float(_f1(tp, fp, fn)[scored].mean()) if scored.any() else float("nan")
        rows.append({"lab": lab, "score": score, "n_frames": frames.get(lab, 0), "n_actions": int(scored.sum())})
    return pd.DataFrame(rows, columns=["lab", "score", "n_frames", "n_actions"])


def per_action_from_predictions(preds: Any) -> pd.DataFrame:
    """Per action (or class), pooled over every labelled track: name, precision, recall, f1, support."""
    scene = _is_scene(preds.actions)
    counts, _ = _counts_by_lab(preds, scene)
    tp, fp, fn = np.sum(list(counts.values()), axis=0) if counts else np.zeros((3, len(preds.actions)))
    present = (tp + fp + fn) > 0
    prec = np.divide(tp, tp + fp, out=np.zeros(len(tp)), where=(tp + fp) > 0)
    rec = np.divide(tp, tp + fn, out=np.zeros(len(tp)), where=(tp + fn) > 0)
    df = pd.DataFrame({"name": [str(a) for a in preds.actions], "precision": prec, "recall": rec,
                       "f1": _f1(tp, fp, fn), "support": tp + fn})
    return df[present].reset_index(drop=True)


def _confusion_from_predictions(preds: Any) -> tuple[np.ndarray, list[str]]:
    if preds.labels is None:
        raise NotAvailable("val_predictions.npz has no labels")
    n = len(preds.actions)
    probs = np.asarray(preds.probs, dtype=np.float32)
    labels = np.asarray(preds.labels)
    y = labels.astype(np.int64) if labels.ndim == 1 else labels.argmax(axis=1)
    p = probs.argmax(axis=1)
    cm = np.bincount(y * n + p, minlength=n * n).reshape(n, n)
    return cm, [str(a) for a in preds.actions]


# ----------------------------------------------------------------------------- val_metrics.json


def _per_class_table(vm: dict) -> pd.DataFrame | None:
    """Per-class metrics of val_metrics.json (``evaluate.trackset_metrics``'s lists ``names``,
    ``precision``, ``recall``, ``f1``, ``support``); pair mode keeps the actions that were scored
    (``tp + fp + fn > 0``). None when the file has no per-class lists."""
    names, f1 = vm.get("names"), vm.get("f1")
    if not (isinstance(names, list) and isinstance(f1, list) and len(names) == len(f1)):
        return None
    df = pd.DataFrame({"name": [str(x) for x in names], "precision": vm.get("precision"),
                       "recall": vm.get("recall"), "f1": f1, "support": vm.get("support")})
    if "tp" in vm:  # pair mode
        scored = (np.asarray(vm["tp"]) + np.asarray(vm["fp"]) + np.asarray(vm["fn"])) > 0
        df = df[scored].reset_index(drop=True)
    return df


def _confusion(vm: dict) -> tuple[np.ndarray, list[str]] | None:
    """Scene mode's ``confusion`` (true x predicted frame counts) and class ``names``; None in pair mode."""
    if "confusion" not in vm:
        return None
    return np.asarray(vm["confusion"], dtype=np.float64), [str(x) for x in vm["names"]]


def _per_lab_table(vm: dict) -> tuple[pd.DataFrame, str] | None:
    """val_metrics.json ``per_lab`` (``{lab: {"f1_macro", "accuracy", "f1"}}``) -> (DataFrame lab,
    score, n_frames; ``"f1_macro"``, the score's name); None without per-lab numbers."""
    per_lab = vm.get("per_lab")
    if not isinstance(per_lab, dict) or not per_lab:
        return None
    rows = [{"lab": str(lab), "score": _num(v.get("f1_macro")), "n_frames": None} for lab, v in per_lab.items()]
    if all(r["score"] is None for r in rows):
        return None
    return pd.DataFrame(rows), "f1_macro"


# ----------------------------------------------------------------------------- figures


def _figure(w: float, h: float):
    from matplotlib.figure import Figure

    return Figure(figsize=(w, h), dpi=DPI, layout="constrained")


def _save(fig, path: Path) -> None:
    fig.savefig(path, dpi=DPI, facecolor="white")


def _plot_series(ax, df: pd.DataFrame, col: str, label: str, **kw) -> bool:
    if col not in df:
        return False
    s = df[["epoch", col]].dropna()
    if s.empty:
        return False
    ax.plot(s["epoch"], s[col], marker="o", markersize=3 if len(s) > 30 else 4, label=label, **kw)
    return True


def _fig_curves(df: pd.DataFrame, status: dict, path: Path) -> str:
    from matplotlib.ticker import MaxNLocator

    fig = _figure(15, 4.2)
    ax_loss, ax_f1, ax_lr = fig.subplots(1, 3)
    warm = df.loc[df["phase"].astype(str) == "warmup", "epoch"] if "phase" in df else pd.Series(dtype=float)
    for ax in (ax_loss, ax_f1, ax_lr):
        if len(warm):
            ax.axvspan(float(np.min(warm)) - 0.5, float(np.max(warm)) + 0.5, color="0.9", zorder=0,
                       label="warmup")
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    drawn = _plot_series(ax_loss, df, "loss", "train loss", color="tab:blue")
    drawn |= _plot_series(ax_loss, df, "val_loss", "val loss", color="tab:orange")
    ax_loss.set(title="Loss", ylabel="loss")
    ax_loss.legend(loc="best")

    _plot_series(ax_f1, df, "val_f1", "val macro F1", color="tab:green")
    _plot_series(ax_f1, df, "val_score", "val competition score", color="tab:purple")
    best_epoch = _num(status.get("best_epoch"))
    best_f1 = _num(status.get("best_f1"))
    if (best_epoch is None or best_f1 is None) and "val_f1" in df and df["val_f1"].notna().any():
        i = df["val_f1"].idxmax()
        best_epoch, best_f1 = float(df.loc[i, "epoch"]), float(df.loc[i, "val_f1"])
    if best_epoch is not None and best_f1 is not None:
        ax_f1.axvline(best_epoch, color="tab:green", ls=":", lw=1)
        ax_f1.plot([best_epoch], [best_f1], marker="*", ms=14, color="gold", mec="k", ls="none",
                   label=f"best F1 {best_f1:.4f} (epoch {best_epoch:.0f})")
    ax_f1.set(title="Validation F1 and competition score", ylabel="score")
    ax_f1.legend(loc="best")

    if _plot_series(ax_lr, df, "lr", "learning rate", color="tab:red") and (df["lr"].dropna() > 0).all():
        ax_lr.set_yscale("log")
    ax_lr.set(title="Learning rate", ylabel="lr")
    ax_lr.legend(loc="best")
    if not drawn:
        raise NotAvailable("metrics.csv has no loss values")
    fig.suptitle("Training curves", fontweight="bold")
    _save(fig, path)
    return "Loss per epoch (train and validation), validation macro F1 and competition score (pair mode), " \
           "and the learning rate (log scale; shaded: warmup)."


def _fig_throughput(df: pd.DataFrame, status: dict, path: Path) -> str:
    from matplotlib.ticker import MaxNLocator

    if "windows_per_s" not in df or df["windows_per_s"].dropna().empty:
        raise NotAvailable("metrics.csv has no windows_per_s")
    device = status.get("device") or "unknown device"
    has_time = "epoch_time_s" in df and df["epoch_time_s"].notna().any()
    fig = _figure(10, 5.5 if has_time else 3.8)
    axes = fig.subplots(2 if has_time else 1, 1, sharex=True, squeeze=False, height_ratios=[3, 2][:1 + has_time])
    ax = axes[0, 0]
    s = df[["epoch", "windows_per_s"]].dropna()
    ax.bar(s["epoch"], s["windows_per_s"], color="tab:blue", alpha=0.85, label="training windows / s")
    med = float(s["windows_per_s"].median())
    ax.axhline(med, color="k", ls="--", lw=1, label=f"median {med:,.0f} / s")
    ax.set(ylabel="windows / s", title=f"Throughput on {device}")
    ax.set_ylim(0, float(s["windows_per_s"].max()) * 1.25)
    ax.grid(axis="y", alpha=0.3)
    ax.legend(loc="upper right", ncols=2, fontsize=8)
    if has_time:
        ax_t = axes[1, 0]
        t = df[["epoch", "epoch_time_s"]].dropna()
        ax_t.plot(t["epoch"], t["epoch_time_s"], color="tab:orange", marker="o", ms=3, label="epoch time")
        ax_t.set(ylabel="epoch time (s)")
        ax_t.set_ylim(0, float(t["epoch_time_s"].max()) * 1.25)
        ax_t.grid(alpha=0.3)
        ax_t.legend(loc="lower right", fontsize=8)
    axes[-1, 0].set_xlabel("epoch")
    axes[-1, 0].xaxis.set_major_locator(MaxNLocator(integer=True))
    _save(fig, path)
    return f"Training throughput per epoch on {html.escape(str(device))}: median {med:,.0f} windows/s."


def _fig_per_class(table: pd.DataFrame, path: Path, what: str) -> str:
    n = len(table)
    fig = _figure(10, 1.4 + 0.32 * n * (1.6 if table[["precision", "recall"]].notna().any().any() else 1))
    ax = fig.subplots()
    y = np.arange(n)
    bars = [("f1", "F1", "tab:green")]
    if table["precision"].notna().any():
        bars.insert(0, ("precision", "precision", "tab:blue"))
    if table["recall"].notna().any():
        bars.insert(1, ("recall", "recall", "tab:orange"))
    h = 0.8 / len(bars)
    for i, (col, label, color) in enumerate(bars):
        vals = table[col].astype(float).fillna(0).to_numpy()
        ax.barh(y - 0.4 + h * (i + 0.5), vals, height=h, color=color, label=label)
    for yi, (f1, sup) in enumerate(zip(table["f1"], table["support"])):
        txt = f"{f1:.2f}" if _num(f1) is not None else "-"
        if _num(sup) is not None:
            txt += f"  (n={sup:,.0f})"
        ax.text(1.01, yi, txt, va="center", fontsize=8, transform=ax.get_yaxis_transform())
    ax.set_yticks(y, table["name"])
    ax.invert_yaxis()
    ax.set_xlim(0, 1)
    ax.set(xlabel="score", title=f"Validation precision, recall and F1 per {what}")
    ax.grid(axis="x", alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    _save(fig, path)
    return f"Precision, recall and F1 per {what} on the validation videos; n = positive frames (support)."


def _fig_confusion(cm: np.ndarray, names: list[str], path: Path) -> str:
    n = len(names)
    rows = cm.sum(axis=1, keepdims=True)
    norm = np.divide(cm, rows, out=np.zeros_like(cm, dtype=np.float64), where=rows > 0)
    size = max(4.5, 0.6 * n + 2.5)
    fig = _figure(size + 1, size)
    ax = fig.subplots()
    im = ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
    fig.colorbar(im, ax=ax, label="fraction of the true class", shrink=0.8)
    ax.set_xticks(range(n), names, rotation=45, ha="right")
    ax.set_yticks(range(n), names)
    ax.set(xlabel="predicted class", ylabel="true class", title="Confusion matrix (rows normalised)")
    if n <= 12:
        for i in range(n):
            for j in range(n):
                color = "white" if norm[i, j] > 0.55 else "black"
                ax.text(j, i, f"{norm[i, j]:.2f}\n{cm[i, j]:,.0f}", ha="center", va="center", fontsize=8,
                        color=color)
    _save(fig, path)
    return "Rows: true class, normalised to 1; each cell shows the fraction and the frame count."


def _fig_per_lab(labs: list[str], series: list[tuple[str, np.ndarray]], n_frames: np.ndarray | None,
                 path: Path) -> str:
    """Horizontal bars per lab, one bar per series; the first series is annotated and its mean drawn."""
    n, k = len(labs), len(series)
    fig = _figure(10, 1.8 + 0.3 * n * max(k, 1.3))
    ax = fig.subplots()
    y = np.arange(n)
    h = 0.8 / k
    colors = ["tab:blue", "tab:orange", "tab:green"]
    for i, (label, vals) in enumerate(series):
        ax.barh(y - 0.4 + h * (i + 0.5), np.nan_to_num(vals), height=h, color=colors[i % 3], label=label)
    first = series[0][1]
    if np.isfinite(first).any():
        mean = float(np.nanmean(first))
        ax.axvline(mean, color="tab:red", ls="--", lw=1.2, label=f"mean over labs {mean:.4f}")
    for i in range(n):
        txt = f"{first[i]:.3f}" if math.isfinite(first[i]) else "n/a"
        if n_frames is not None and math.isfinite(n_frames[i]):
            txt += f"  ({n_frames[i]:,.0f} labelled frames)"
        ax.text(1.01, i, txt, va="center", fontsize=8, transform=ax.get_yaxis_transform())
    ax.set_yticks(y, labs)
    ax.invert_yaxis()
    ax.set_xlim(0, 1)
    ax.set(xlabel="score", title="Per-lab validation scores")
    ax.grid(axis="x", alpha=0.3)
    handles, labels = ax.get_legend_handles_labels()
    order = sorted(range(len(labels)), key=lambda j: labels[j].startswith("mean"))  # bars first, then the mean
    fig.legend([handles[j] for j in order], [labels[j] for j in order], loc="outside lower center", ncols=1,
               fontsize=8, frameon=False)
    _save(fig, path)
    names = "; ".join(f"{'bars' if i == 0 else 'then'}: {html.escape(label)}" for i, (label, _) in enumerate(series))
    return (f"Per-lab scores (the competition's final score is the mean over labs). {names}. The numbers are "
            "the first series, with each lab's labelled video frames.")


def _choose_videos(preds: Any, scene: bool) -> list[int]:
    """Up to MAX_ETHOGRAM_VIDEOS video ids, the richest in labelled positives, spread over labs."""
    per_video: dict[int, list] = {}
    labeled = np.asarray(preds.labeled, dtype=bool)
    keep = np.array([str(a) != "none" for a in preds.actions])
    for t in range(len(preds.offsets) - 1):
        a, b = int(preds.offsets[t]), int(preds.offsets[t + 1])
        cols = keep if scene else labeled[t] & keep
        v = int(preds.video_id[t])
        entry = per_video.setdefault(v, [str(preds.lab_id[t]), 0])
        if preds.labels is not None and cols.any() and b > a:
            lab = np.asarray(preds.labels[a:b])
            entry[1] += int(np.count_nonzero(lab[:, cols])) if lab.ndim == 2 else int(np.count_nonzero(lab))
    by_lab: dict[str, list[tuple[int, int]]] = {}
    for v, (lab, pos) in per_video.items():
        by_lab.setdefault(lab, []).append((-pos, v))
    queues = [sorted(x) for _, x in sorted(by_lab.items())]
    chosen: list[int] = []
    while len(chosen) < MAX_ETHOGRAM_VIDEOS and any(queues):
        for q in queues:
            if q and len(chosen) < MAX_ETHOGRAM_VIDEOS:
                chosen.append(q.pop(0)[1])
    return chosen


def _mouse(i: int) -> str:
    return f"mouse{i}"


def ethogram_png(preds: Any, video: int, path: str | Path, predicted: str | None = None) -> Path:
    """One video's ethogram (true vs predicted lanes per triple) as a PNG; ``predicted`` replaces the
    legend's description of the predicted lanes (e.g. when ``probs`` hold post-processed 0/1 decisions)."""
    path = Path(path)
    _fig_ethogram(preds, video, _is_scene(preds.actions), path, predicted)
    return path


def _fig_ethogram(preds: Any, video: int, scene: bool, path: Path, predicted: str | None = None) -> str:
    from matplotlib.patches import Patch

    tracks = np.flatnonzero(np.asarray(preds.video_id) == video)
    lab = str(preds.lab_id[tracks[0]])
    fps = _num(preds.fps[tracks[0]]) or 0.0
    labeled = np.asarray(preds.labeled, dtype=bool)
    has_truth = preds.labels is not None
    rows = []  # (priority, label, true runs, pred runs, f1)
    for t in tracks:
        pred, true = _track_pred_true(preds, t, scene)
        agent, target = int(preds.agent_id[t]), int(preds.target_id[t])
        for c, action in enumerate(str(a) for a in preds.actions):
            if action == "none" or not (scene or labeled[t, c]):
                continue
            tc = true[:, c] if has_truth else np.zeros(len(pred), dtype=bool)
            pc = pred[:, c]
            n_true, n_pred = int(tc.sum()), int(pc.sum())
            if n_true == 0 and n_pred == 0:
                continue
            if scene or agent < 0:
                who = action
            elif agent == target:
                who = f"{_mouse(agent)} self {action}"
            else:
                who = f"{_mouse(agent)}→{_mouse(target)} {action}"
            tp = int(np.count_nonzero(tc & pc))
            f1 = 2 * tp / (n_true + n_pred) if (n_true + n_pred) else 0.0
            rows.append(((-n_true, -n_pred, who), who, run_lengths(tc), run_lengths(pc), f1 if has_truth else None))
    if not rows:
        raise NotAvailable(f"video {video}: no labelled behaviour and no predictions")
    rows.sort(key=lambda r: r[0])
    dropped = max(0, len(rows) - MAX_ETHOGRAM_TRIPLES)
    rows = sorted(rows[:MAX_ETHOGRAM_TRIPLES], key=lambda r: r[1])  # the busiest, shown grouped by pair
    n_frames = int(max(preds.offsets[t + 1] - preds.offsets[t] for t in tracks))
    scale = 1.0 / fps if fps > 0 else 1.0
    unit = "time (s)" if fps > 0 else "frame"

    palette = _palette(len(rows))
    fig = _figure(14, 1.5 + 0.42 * 2 * len(rows))
    ax = fig.subplots()
    yticks, ylabels = [], []
    for i, (_, who, (ts, te), (ps, pe), f1) in enumerate(rows):
        color = palette[i]
        y_true, y_pred = 2 * i, 2 * i + 1
        if i % 2 == 0:
            ax.axhspan(y_true - 0.5, y_pred + 0.5, color="0.96", zorder=0)
        ax.broken_barh(list(zip(ts * scale, (te - ts) * scale)), (y_true - 0.38, 0.76), facecolors=color)
        ax.broken_barh(list(zip(ps * scale, (pe - ps) * scale)), (y_pred - 0.38, 0.76), facecolors=color,
                       alpha=0.45, hatch="///", edgecolor=color, linewidth=0)
        yticks += [y_true, y_pred]
        ylabels += [f"{who} · true", "pred" + (f" (F1 {f1:.2f})" if f1 is not None else "")]
    ax.set_yticks(yticks, ylabels, fontsize=8)
    ax.set_ylim(2 * len(rows) - 0.5, -0.5)
    ax.set_xlim(0, n_frames * scale)
    ax.set_xlabel(unit)
    ax.grid(axis="x", alpha=0.3)
    title = f"Ethogram: lab {lab}, video {video} ({n_frames:,} frames"
    title += f" at {fps:g} fps)" if fps > 0 else ")"
    if dropped:
        title += f"; {dropped} more triples not shown"
    ax.set_title(title)
    rule = "argmax class" if scene else f"p ≥ {THRESHOLD:g}"
    fig.legend(handles=[Patch(facecolor="0.35", label="true (annotation)"),
                        Patch(facecolor="0.35", alpha=0.45, hatch="///",
                              label=predicted or f"predicted ({rule}, unsmoothed)")],
               loc="outside lower right", ncols=2, fontsize=8, frameon=False)
    _save(fig, path)
    return f"Lab {html.escape(lab)}, video {video}: true vs predicted intervals per (agent, target, action)."


def _palette(n: int) -> list:
    from matplotlib import colormaps

    cmap = colormaps["tab10" if n <= 10 else "tab20"]
    return [cmap(i % cmap.N) for i in range(n)]


# ----------------------------------------------------------------------------- HTML


def _img(name: str, caption: str) -> str:
    return (f'<figure><img src="figures/{html.escape(name)}" alt="{html.escape(name)}">'
            f"<figcaption>{caption}</figcaption></figure>")


def _na(reason: str) -> str:
    return f'<p class="na">not available: {html.escape(reason)}</p>'


def _table(rows: list[tuple[str, Any]]) -> str:
    cells = "".join(f"<tr><th>{html.escape(str(k))}</th><td>{html.escape(_fmt(v))}</td></tr>" for k, v in rows)
    return f"<table>{cells}</table>"


def _fmt(v: Any) -> str:
    if isinstance(v, bool) or v is None:
        return "-" if v is None else str(v)
    if isinstance(v, (int, np.integer)):
        return f"{int(v):,}"
    if isinstance(v, (float, np.floating)):
        if not math.isfinite(v):
            return "-"
        if v != 0 and (abs(v) < 1e-3 or abs(v) >= 1e5):
            return f"{v:.3g}"
        return f"{v:.4f}" if abs(v) < 1 else f"{v:,.2f}"
    return str(v)


_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:2em auto;max-width:1200px;
color:#222;padding:0 1em}
h1{margin-bottom:.2em} h2{border-bottom:1px solid #ddd;padding-bottom:.2em;margin-top:1.6em}
.sub{color:#666;margin-top:0} .na{color:#a60;font-style:italic}
.cards{display:flex;gap:1em;flex-wrap:wrap} .card{background:#f5f7fa;border-radius:6px;padding:.6em 1em}
.card b{display:block;font-size:1.4em}
table{border-collapse:collapse;margin:.5em 0} th,td{border:1px solid #ddd;padding:.25em .7em;text-align:left}
th{background:#f5f7fa;font-weight:600}
figure{margin:1em 0} img{max-width:100%;height:auto;border:1px solid #eee}
figcaption{color:#555;font-size:.9em}
.cols{display:flex;gap:2em;flex-wrap:wrap}
"""


def _config_summary(cfg: dict) -> list[tuple[str, Any]]:
    out = []
    for path in _CONFIG_KEYS:
        node: Any = cfg
        for k in path:
            node = node.get(k) if isinstance(node, dict) else None
        if node is not None:
            out.append((".".join(path), node))
    return out


def _final_metrics(df: pd.DataFrame | None, vm: dict | None) -> list[tuple[str, Any]]:
    rows: list[tuple[str, Any]] = []
    if vm:
        for k, v in vm.items():
            if isinstance(v, (int, float)) and not isinstance(v, bool):
                rows.append((f"val_metrics: {k}", v))
    if df is not None:
        last = df.iloc[-1]
        for k, v in last.items():
            if isinstance(v, str) or (v is not None and not (isinstance(v, float) and math.isnan(v))):
                rows.append((f"last epoch: {k}", v))
    return rows


def _section(sections: list[Section], title: str, fn: Callable[[], str]) -> None:
    try:
        body = fn()
    except NotAvailable as why:
        body = _na(str(why))
    except Exception as err:  # a malformed input must not cost the rest of the report
        warnings.warn(f"report section {title!r} failed: {type(err).__name__}: {err}", stacklevel=2)
        body = _na(f"could not be drawn ({type(err).__name__}: {err})")
    sections.append(Section(title, body))


def write_report(run: str | os.PathLike, runs_root: str | os.PathLike = runs.RUNS_ROOT) -> Path:
    """Write ``report.html`` and ``figures/*.png`` into the run directory; return the HTML path.

    ``run``: a run directory or a run name under ``runs_root``.
    """
    t0 = time.perf_counter()
    run_dir = runs.resolve_run(run, runs_root)
    fig_dir = run_dir / "figures"
    fig_dir.mkdir(exist_ok=True)
    for old in [*(fig_dir / n for n in FIGURE_NAMES), *fig_dir.glob("ethogram_*.png")]:
        old.unlink(missing_ok=True)  # a figure whose input went away must not linger

    cfg = _read_config(run_dir)
    status = runs.read_status(run_dir)
    df = _read_metrics(run_dir)
    vm = _read_json(run_dir / "eval" / "val_metrics.json")
    pred_path = run_dir / "eval" / "val_predictions.npz"
    preds, pred_error = None, "no eval/val_predictions.npz yet"
    if pred_path.is_file():
        try:
            preds = _load_predictions(pred_path)
        except Exception as err:
            pred_error = f"eval/val_predictions.npz unreadable: {err}"
    mode = (cfg.get("task") or {}).get("mode") if isinstance(cfg.get("task"), dict) else None
    if mode is None:
        if preds is not None:
            mode = "scene" if _is_scene(preds.actions) else "pair"
        else:
            mode = "scene" if vm and _confusion(vm) is not None else "pair"
    scene = mode == "scene"

    sections: list[Section] = []
    no_metrics = "no metrics.csv yet" if not (run_dir / "metrics.csv").is_file() else "metrics.csv is empty"

    def curves() -> str:
        if df is None:
            raise NotAvailable(no_metrics)
        return _img("curves.png", _fig_curves(df, status, fig_dir / "curves.png"))

    def per_class() -> str:
        table, src = (_per_class_table(vm), "val_metrics.json") if vm else (None, "")
        if table is None and preds is not None and preds.labels is not None:
            table, src = per_action_from_predictions(preds), "val_predictions.npz at p ≥ 0.5"
        if table is None or table.empty:
            raise NotAvailable("no per-class metrics in eval/val_metrics.json and no labelled val_predictions")
        what = "class" if scene else "action"
        cap = _fig_per_class(table, fig_dir / "per_class.png", what)
        return _img("per_class.png", f"{cap} Source: {html.escape(src)}.")

    def confusion() -> str:
        got = _confusion(vm) if vm else None
        if got is None and scene and preds is not None and preds.labels is not None:
            got = _confusion_from_predictions(preds)
        if got is None:
            raise NotAvailable("pair mode (multi-label: no confusion matrix)" if not scene
                               else "no confusion matrix in eval/val_metrics.json")
        return _img("confusion.png", _fig_confusion(got[0], got[1], fig_dir / "confusion.png"))

    def per_lab() -> str:
        got = _per_lab_table(vm) if vm else None
        vm_table, vm_kind = got if got else (None, None)
        pred_table = None
        if preds is not None and preds.labels is not None:
            pred_table = per_lab_from_predictions(preds)
        series: list[tuple[str, pd.DataFrame]] = []
        if pred_table is not None and not pred_table.empty:
            what = "macro F1 over classes except none" if scene else "competition-style score"
            series.append((f"{what}, from val_predictions.npz (p ≥ 0.5, unsmoothed)"
                           if not scene else f"{what}, from val_predictions.npz (argmax)", pred_table))
        if vm_table is not None:
            series.append((f"frame {vm_kind} (val_metrics.json)", vm_table))
        if not series:
            why = "no per_lab in eval/val_metrics.json"
            raise NotAvailable(f"{why}; {pred_error}" if preds is None else f"{why} and no labels in predictions")
        labs = sorted({str(x) for _, t in series for x in t["lab"]})
        values = [(label, t.set_index("lab")["score"].astype(float).reindex(labs).to_numpy()) for label, t in series]
        frames = None
        for _, t in series:
            f = t.set_index("lab")["n_frames"].astype(float).reindex(labs).to_numpy()
            if np.isfinite(f).any():
                frames = f
                break
        return _img("per_lab.png", _fig_per_lab(labs, values, frames, fig_dir / "per_lab.png"))

    def ethograms() -> str:
        if preds is None:
            raise NotAvailable(pred_error)
        parts = []
        for k, video in enumerate(_choose_videos(preds, scene)):
            name = f"ethogram_{k}.png"
            try:
                parts.append(_img(name, _fig_ethogram(preds, video, scene, fig_dir / name)))
            except NotAvailable as why:
                parts.append(_na(str(why)))
        if not parts:
            raise NotAvailable("no validation videos in val_predictions.npz")
        note = "" if preds.labels is not None else _na("ground truth (val_predictions.npz has no labels)")
        return note + "".join(parts)

    def throughput() -> str:
        if df is None:
            raise NotAvailable(no_metrics)
        return _img("throughput.png", _fig_throughput(df, status, fig_dir / "throughput.png"))

    _section(sections, "Training curves", curves)
    _section(sections, "Per-class metrics" if scene else "Per-action metrics", per_class)
    _section(sections, "Confusion matrix", confusion)
    _section(sections, "Per-lab scores", per_lab)
    _section(sections, "Ethograms: true vs predicted", ethograms)
    _section(sections, "Throughput", throughput)

    # headline numbers
    best_f1, best_epoch = _num(status.get("best_f1")), status.get("best_epoch")
    if best_f1 is None and df is not None and "val_f1" in df and df["val_f1"].notna().any():
        i = df["val_f1"].idxmax()
        best_f1, best_epoch = float(df.loc[i, "val_f1"]), int(df.loc[i, "epoch"])
    last_score = None
    if df is not None and "val_score" in df and df["val_score"].notna().any():
        last_score = float(df["val_score"].dropna().iloc[-1])
    state = runs.run_state(status) if status else "unknown"
    epoch = status.get("epoch", None if df is None else int(df["epoch"].max()))
    epochs = status.get("epochs") or ((cfg.get("train") or {}).get("epochs") if isinstance(cfg.get("train"), dict)
                                      else None)
    cards = [("state", state), ("epoch", f"{_fmt(epoch)}/{_fmt(epochs)}" if epochs else _fmt(epoch)),
             ("best val F1", f"{_fmt(best_f1)} (epoch {_fmt(best_epoch)})" if best_f1 is not None else "-"),
             ("last val score", _fmt(last_score)), ("device", status.get("device") or "-")]
    if vm and _num(vm.get("score")) is not None:
        cards.insert(3, ("competition score, best model (post-processed)", _fmt(_num(vm["score"]))))
    cards_html = "".join(f'<div class="card">{html.escape(k)}<b>{html.escape(str(v))}</b></div>' for k, v in cards)
    cfg_rows = _config_summary(cfg)
    final_rows = _final_metrics(df, vm)
    msg = status.get("message")
    name = html.escape(run_dir.resolve().name)

    body = [f"<h1>Run {name}</h1>",
            f'<p class="sub">{html.escape(str(run_dir))} · mode {html.escape(mode)}'
            + (f" · {html.escape(str(msg))}" if msg else "")
            + f" · report written {time.strftime('%Y-%m-%d %H:%M:%S')}</p>",
            f'<div class="cards">{cards_html}</div>',
            '<div class="cols"><div><h2>Configuration</h2>'
            + (_table(cfg_rows) if cfg_rows else _na("no config.yaml"))
            + "</div><div><h2>Final metrics</h2>"
            + (_table(final_rows) if final_rows else _na("no metrics.csv or eval/val_metrics.json yet"))
            + "</div></div>"]
    body += [f"<h2>{html.escape(s.title)}</h2>{s.body}" for s in sections]
    page = (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>mabe run {name}</title>'
            f"<style>{_CSS}</style></head><body>\n" + "\n".join(body)
            + f'\n<p class="sub">generated by mabe report in {time.perf_counter() - t0:.1f} s</p></body></html>\n')
    return write_text(run_dir / "report.html", page)
