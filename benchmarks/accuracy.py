"""Accuracy on data the pipelines were not tuned on: the CPU recipe (gbdt) vs the issue-14 baseline
(and optionally the reference network), competition score and time side by side, same run.

For each seed: train videos from ``mabe synth --preset hard --seed S``; evaluation videos from the
same preset with *another* seed (``S + 1000``: other videos, other mice, other schedules), written
as the test split with their annotations kept aside as the solution. Every pipeline sees only the
train split (plus the test split's tracking), writes a submission, and the official metric scores it.

Pipelines:
- ``baseline``: the issue-14 baseline, implemented here: one sklearn HistGradientBoosting per
  (lab, action) on hand pair features (the 18 scalar pair features of ``mabe.features``) with rolling
  mean/std over 0.25, 1 and 2 s, trained on labelled triples only, probabilities smoothed (5 frames),
  one action per frame = the argmax over the labelled actions above 0.5 (no fitted thresholds).
- ``gbdt``: ``scripts/recipe_cpu.sh --no-network`` (``mabe gbdt``): k-fold LightGBM, OOF thresholds.
- ``recipe``: ``scripts/recipe_cpu.sh``, the whole CPU recipe: the gbdt, a 3-fold 5-epoch ``cpu_net`` and their
  blend fitted on both out-of-fold files (what ``blend_cv`` builds step by step, timed as one job).
- ``recipe_gbdt`` / ``recipe_net``: the recipe's two parts alone, scored from its outputs (no extra training).
- ``network`` (``--network``): the README's real-data recipe with ``configs/demo.yaml`` in pair mode.
- ``blend`` (with ``--network``): mean of the gbdt and network test probabilities, the gbdt's OOF thresholds.
- ``cpu_net`` (``--network``): ``configs/cpu_net.yaml`` (dilated TCN, 30 fps, EMA), thresholds fitted on its
  validation videos.
- ``blend_net`` / ``blend_cpu_net`` / ``blend_all`` (``--network``): the product blend, ``mabe blend`` (weights
  and thresholds fitted on the gbdt's out-of-fold and the network's validation predictions of the same
  videos) + ``mabe submit --thresholds``, of gbdt + network, gbdt + cpu_net, and all three.
- ``cpu_net_aug`` (``--network``): ``cpu_net`` with the geometric augmentation of ``--aug-set`` (default: reflection
  0.5, time stretch 0.2, keypoint dropout 0.05), thresholds fitted on its validation videos: the augmentation's
  effect, both sides in the same run.
- ``gbdt_thr_val`` (``--network``): ``mabe blend --weights 1,0``: the gbdt alone with its thresholds fitted
  on the videos the blends fit on (cpu_net's validation videos), to tell the blend's effect from the
  effect of fitting thresholds on fewer videos.
- ``cv_net`` (``--network``): ``mabe cv`` of ``configs/cpu_net.yaml`` (``--cv-folds`` K, default 3): K fold
  runs, thresholds fitted on the out-of-fold predictions of every train video, test = the mean of the folds.
- ``blend_cv`` (``--network``): ``mabe blend`` fitted on the out-of-fold files of both families (gbdt and
  cv_net, every train video) + ``mabe submit --thresholds``.
- ``stack_gbdt``: ``mabe stack`` (a second-stage LightGBM per action, its own k-fold, thresholds on its
  out-of-fold file) fitted on the gbdt's out-of-fold file, applied to its test file (the mean of its folds).
- ``stack_gbdt_pf``: the same stage 2 applied once per gbdt fold model's test predictions (``--apply`` per
  fold, averaged), so that it sees at apply time the kind of input it was fitted on (one fold model's).
- ``stack_cv`` / ``stack_cv_pf`` (``--network``): the same on gbdt + cv_net (``_pf``: every pair of a gbdt fold
  model and a cv_net fold model). The stack rows read the gbdt / cv_net outputs of an earlier row or run.

    PYTHONPATH=src python benchmarks/accuracy.py --seeds 0 1 2 [--network] [--out bench_out]
    PYTHONPATH=src python benchmarks/accuracy.py --source indep --seeds 0 1 2   # benchmarks/indep_data.py

Wall times on a shared machine are inflated by other load; CPU time (user + sys of the process and
its children) is printed next to them.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pandas as pd

from mabe import data, metric, postprocess, predictions, prepare, submit, synth, tabular
from mabe.config import FeatureConfig, PostprocessConfig
from mabe.features import SCALAR_NAMES

ROOT = Path(__file__).resolve().parents[1]
AUG_DEFAULT = ("augment.reflect=0.5", "augment.time_stretch=0.2", "augment.keypoint_dropout=0.05")


def _cpu() -> float:
    a, b = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return a.ru_utime + a.ru_stime + b.ru_utime + b.ru_stime


def make_split(out: Path, seed: int, preset: str = "hard", n_eval: int = 10) -> tuple[Path, Path]:
    """``out/data`` (train = seed, test = ``n_eval`` other videos of seed + 1000) and ``out/solution`` (their labels)."""
    train = synth.write_dataset(out / "train_src", preset=preset, seed=seed, n_test=0, workers=2)
    evals = synth.write_dataset(out / "solution", preset=preset, seed=seed + 1000, n_train=n_eval, n_test=0, workers=2)
    d = out / "data"
    shutil.rmtree(d, ignore_errors=True)
    d.mkdir(parents=True)
    shutil.copy(train / "train.csv", d / "train.csv")
    shutil.copytree(train / "train_tracking", d / "train_tracking")
    shutil.copytree(train / "train_annotation", d / "train_annotation")
    test = pd.read_csv(evals / "train.csv")
    test.to_csv(d / "test.csv", index=False)
    shutil.copytree(evals / "train_tracking", d / "test_tracking")
    return d, evals


def score(solution_dir: Path, sub_csv: Path) -> float:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        sol = metric.load_solution(solution_dir, "train")
    return float(metric.score(sol, metric.read_submission(sub_csv)).final)


# ----------------------------------------------------------------------------- the issue-14 baseline


def _baseline_features(pair: np.ndarray, fps: float, n_slots: int) -> np.ndarray:
    x = np.asarray(pair[:, 4 * n_slots:], dtype=np.float32)  # the 18 hand pair features
    blocks = [x]
    for s in (0.25, 1.0, 2.0):
        m, sd = tabular.rolling(x, max(int(round(s * fps)), 1))
        blocks += [m, sd]
    return np.concatenate(blocks, 1)


def run_baseline(d: Path, out: Path) -> Path:
    from sklearn.ensemble import HistGradientBoostingClassifier

    fcfg = FeatureConfig()
    cache = prepare.prepare_dataset(d, fcfg, cache_root=out / "cache", workers=2, progress=False)
    _, index = prepare.open_cache(cache)
    S = len(data.DEFAULT_SLOTS)
    assert index is not None and len(SCALAR_NAMES) == 18
    train = index[(index["split"] == "train") & index["has_labels"]].drop_duplicates(["lab_id", "video_id"])
    acts = np.zeros(len(data.ACTIONS), bool)
    X, Y, L, LAB = [], [], [], []
    rng = np.random.default_rng(0)
    for lab, vid in zip(train["lab_id"], train["video_id"]):
        v = prepare.load_video(cache, lab, vid)
        fps = float(v["meta"]["fps"])
        step = max(int(round(fps / 10)), 1)  # 10 frames a second: what fits the 2-core budget
        for p in range(len(v["meta"]["pairs"])):
            lab_mask = np.asarray(v["labeled"][p])
            if not lab_mask.any():
                continue
            acts |= lab_mask
            keep = np.arange(int(rng.integers(step)), v["meta"]["n_frames"], step)
            X.append(_baseline_features(np.asarray(v["pair"][p]), fps, S)[keep])
            Y.append(np.asarray(v["labels"][p])[keep])
            L.append(np.repeat(lab_mask[None], len(keep), 0))
            LAB.append(np.full(len(keep), lab, dtype=object))
    X, Y, L, LAB = np.concatenate(X), np.concatenate(Y), np.concatenate(L), np.concatenate(LAB).astype(str)
    actions = [a for a, s in zip(data.ACTIONS, acts) if s]
    cols = [data.ACTION_INDEX[a] for a in actions]
    models = {}
    for lab in sorted(set(LAB.tolist())):
        for j, c in enumerate(cols):
            sel = (lab == LAB) & L[:, c]
            y = Y[sel, c]
            if sel.sum() and 0 < y.sum() < len(y):
                models[(lab, actions[j])] = HistGradientBoostingClassifier(max_iter=100, random_state=0).fit(
                    X[sel], y)
    test = index[index["split"] == "test"].drop_duplicates(["lab_id", "video_id"])
    probs, labeled, offsets, vids, labs, ag, tg, fpss = [], [], [0], [], [], [], [], []
    for lab, vid in zip(test["lab_id"], test["video_id"]):
        v = prepare.load_video(cache, lab, vid)
        fps = float(v["meta"]["fps"])
        for p, (a, t) in enumerate(v["meta"]["pairs"]):
            lm = np.asarray(v["labeled"][p])[cols]
            pr = np.zeros((v["meta"]["n_frames"], len(cols)), np.float32)
            if lm.any():
                Xt = _baseline_features(np.asarray(v["pair"][p]), fps, S)
                for j in np.flatnonzero(lm):
                    m = models.get((lab, actions[j]))
                    if m is not None:
                        pr[:, j] = m.predict_proba(Xt)[:, 1]
            probs.append(pr.astype(np.float16))
            labeled.append(lm)
            offsets.append(offsets[-1] + len(pr))
            vids.append(int(vid))
            labs.append(lab)
            ag.append(a)
            tg.append(t)
            fpss.append(fps)
    path = predictions.save(out / "test_predictions.npz", np.concatenate(probs), np.array(offsets), np.array(vids),
                            np.array(labs, dtype=str), np.array(ag, np.int8), np.array(tg, np.int8),
                            np.array(actions, dtype=str), np.array(labeled, bool), np.array(fpss))
    preds = predictions.load(path)
    sub = submit.to_submission(postprocess.predictions_to_intervals(preds, PostprocessConfig()))
    return submit.write_submission(sub, out / "submission.csv")


# ----------------------------------------------------------------------------- the others


def _mabe(*args: str, log: Path) -> None:
    env = dict(os.environ, PYTHONPATH=str(ROOT / "src"))
    with open(log, "a") as fh:
        subprocess.run([sys.executable, "-m", "mabe", *args], check=True, env=env, stdout=fh, stderr=subprocess.STDOUT)


def run_gbdt(d: Path, out: Path, extra: tuple[str, ...] = ()) -> Path:
    """``scripts/recipe_cpu.sh --no-network``: the gbdt family alone."""
    return run_recipe(d, out, ("--no-network", *extra))


def run_recipe(d: Path, out: Path, extra: tuple[str, ...] = ()) -> Path:
    """``scripts/recipe_cpu.sh DATA OUT``: the whole CPU recipe (gbdt, network k-fold, blend)."""
    env = dict(os.environ, PYTHONPATH=str(ROOT / "src"), MABE_PYTHON=sys.executable)
    out.mkdir(parents=True, exist_ok=True)
    with open(out.parent / f"{out.name}.log", "w") as fh:
        subprocess.run(["bash", str(ROOT / "scripts" / "recipe_cpu.sh"), str(d), str(out), *extra], check=True, env=env,
                       stdout=fh, stderr=subprocess.STDOUT)
    return out / "submission.csv"


def run_network(d: Path, out: Path, config: str = "demo.yaml", sets: tuple[str, ...] = ()) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    log = out / "log.txt"
    runs = out / "runs"
    _mabe("train", "-c", str(ROOT / "configs" / config), "--set", "task.mode=pair", "--set", f"runs={runs}",
          "--set", f"cache={out / 'cache'}", *(a for o in sets for a in ("--set", o)), "--data", str(d),
          "--name", "net", log=log)
    _mabe("submit", str(runs / "net" / "eval" / "val_predictions.npz"), "--fit",
          str(runs / "net" / "eval" / "val_predictions.npz"), "--out", str(out / "fit" / "val.csv"), log=log)
    _mabe("predict", str(runs / "net"), "--data", str(d), "--split", "test", "--out", str(out / "test.npz"), log=log)
    _mabe("submit", str(out / "test.npz"), "--thresholds", str(out / "fit" / "thresholds.json"),
          "--out", str(out / "submission.csv"), log=log)
    return out / "submission.csv"


def run_blend(gbdt_out: Path, net_out: Path, out: Path) -> Path:
    g = predictions.load(gbdt_out / "test_predictions.npz")
    n = predictions.load(net_out / "test.npz")
    # the network predicts its own action list: align its columns onto the gbdt's
    idx = {a: i for i, a in enumerate(n.actions)}
    key = {(v, a, t): i for i, (v, a, t) in enumerate(zip(n.video_id, n.agent_id, n.target_id))}
    probs = g.probs.astype(np.float32).copy()
    for t in range(g.n_tracks):
        j = key.get((g.video_id[t], g.agent_id[t], g.target_id[t]))
        if j is None:
            continue
        pn, _ = n.track(j)
        lo, hi = g.offsets[t], g.offsets[t + 1]
        for c, a in enumerate(g.actions):
            if a in idx and len(pn) == hi - lo:
                probs[lo:hi, c] = 0.5 * probs[lo:hi, c] + 0.5 * pn[:, idx[a]].astype(np.float32)
    g.probs = probs.astype(np.float16)
    thr = postprocess.load_thresholds(gbdt_out / "thresholds.json")
    sub = submit.to_submission(postprocess.predictions_to_intervals(g, PostprocessConfig(), thr))
    return submit.write_submission(sub, out / "submission.csv")


def run_product_blend(gbdt_out: Path, net_outs: list[Path], out: Path, weights: str | None = None) -> Path:
    """``mabe blend`` (fit on gbdt OOF + the networks' validation files) then ``mabe submit --thresholds``;
    ``weights`` fixed (e.g. "1,0": the gbdt alone, thresholds fitted on the network's validation videos only)."""
    out.mkdir(parents=True, exist_ok=True)
    log = out / "log.txt"
    fit = [str(gbdt_out / "oof_predictions.npz")] + [str(n / "runs" / "net" / "eval" / "val_predictions.npz")
                                                      for n in net_outs]
    apply = [str(gbdt_out / "test_predictions.npz")] + [str(n / "test.npz") for n in net_outs]
    _mabe("blend", "--fit", *fit, "--apply", *apply, "--out", str(out / "test_predictions.npz"),
          *(("--weights", weights) if weights else ()), log=log)
    _mabe("submit", str(out / "test_predictions.npz"), "--thresholds", str(out / "thresholds.json"),
          "--out", str(out / "submission.csv"), log=log)
    return out / "submission.csv"


def recipe_part(out: Path, part: str) -> Path:
    """A submission of one part of a finished ``recipe`` row: its gbdt alone (``submission_gbdt.csv``) or its
    network alone (the k-fold's test mean with the thresholds fitted on its out-of-fold file)."""
    if part == "gbdt":
        return out / "submission_gbdt.csv"
    _mabe("submit", str(out / "net" / "test_predictions.npz"), "--thresholds", str(out / "net" / "runs" / "cv" / "thresholds.json"),
          "--out", str(out / "net" / "submission.csv"), log=out / "net" / "log.txt")
    return out / "net" / "submission.csv"


def run_cv_network(d: Path, out: Path, config: str = "cpu_net.yaml", folds: int = 3, sets: tuple[str, ...] = ()) -> Path:
    """``mabe cv`` (K fold runs, out-of-fold file + thresholds), ``mabe predict`` of the cv dir (mean of the
    folds) on test, ``mabe submit --thresholds`` with the out-of-fold thresholds."""
    out.mkdir(parents=True, exist_ok=True)
    log = out / "log.txt"
    runs = out / "runs"
    _mabe("cv", "-c", str(ROOT / "configs" / config), "--set", "task.mode=pair", "--set", f"runs={runs}",
          "--set", f"cache={out / 'cache'}", *(a for o in sets for a in ("--set", o)), "--data", str(d),
          "--name", "cv", "--folds", str(folds), log=log)
    _mabe("predict", str(runs / "cv"), "--data", str(d), "--split", "test", "--out", str(out / "test.npz"), log=log)
    _mabe("submit", str(out / "test.npz"), "--thresholds", str(runs / "cv" / "thresholds.json"),
          "--out", str(out / "submission.csv"), log=log)
    return out / "submission.csv"


def run_cv_blend(gbdt_out: Path, cv_out: Path, out: Path) -> Path:
    """``mabe blend`` fitted on the out-of-fold files of both families (every train video), applied to
    their test files, then ``mabe submit --thresholds``."""
    out.mkdir(parents=True, exist_ok=True)
    log = out / "log.txt"
    _mabe("blend", "--fit", str(gbdt_out / "oof_predictions.npz"), str(cv_out / "runs" / "cv" / "oof_predictions.npz"),
          "--apply", str(gbdt_out / "test_predictions.npz"), str(cv_out / "test.npz"),
          "--out", str(out / "test_predictions.npz"), log=log)
    _mabe("submit", str(out / "test_predictions.npz"), "--thresholds", str(out / "thresholds.json"),
          "--out", str(out / "submission.csv"), log=log)
    return out / "submission.csv"


def gbdt_fold_tests(gbdt_out: Path) -> list[Path]:
    """``gbdt_out/test_fold<k>.npz``: the test split predicted by each fold model alone (kept once written)."""
    from mabe import gbdt

    folds, actions = gbdt.load_models(gbdt_out / "models")
    choice = gbdt.load_choice(gbdt_out / "models")
    out = [gbdt_out / f"test_fold{k}.npz" for k in range(len(folds))]
    if all(p.is_file() for p in out):
        return out
    (cache_dir,) = [c for c in (gbdt_out / "cache").iterdir() if c.is_dir()]
    _, index = prepare.open_cache(cache_dir)
    videos = gbdt._videos(index, "test", labelled_only=False)
    smooth = json.loads((gbdt_out / "models" / "models.json").read_text()).get("smooth_seconds", 0.0) or 0.0
    for k, path in enumerate(out):
        gbdt.predict_cache(cache_dir, videos, lambda lab, vid, m=folds[k]: [m], actions, path, with_labels=False,
                           progress=False, smooth_s=smooth, choice=choice)
    return out


def cv_fold_tests(d: Path, cv_out: Path) -> list[Path]:
    """``cv_out/test_fold<k>.npz``: ``mabe predict`` of each cv fold run alone on the test split."""
    from mabe import runs

    out = []
    for k, run in enumerate(runs.cv_fold_dirs(cv_out / "runs" / "cv")):
        path = cv_out / f"test_fold{k}.npz"
        if not path.is_file():
            _mabe("predict", str(run), "--data", str(d), "--split", "test", "--out", str(path), log=cv_out / "log.txt")
        out.append(path)
    return out


def run_stack(fit: list[Path], groups: list[list[Path]], out: Path, sets: tuple[str, ...] = ()) -> Path:
    """``mabe stack --fit FIT --apply G1 [--apply G2 ..]`` + ``mabe submit --thresholds``; ``groups`` may be a
    callable returning them (files written on demand)."""
    groups = groups() if callable(groups) else groups
    out.mkdir(parents=True, exist_ok=True)
    log = out / "log.txt"
    _mabe("stack", "--fit", *map(str, fit), *(a for g in groups for a in ("--apply", *map(str, g))),
          "--out", str(out / "test_predictions.npz"), "--quiet", *(a for o in sets for a in ("--set", o)), log=log)
    _mabe("submit", str(out / "test_predictions.npz"), "--thresholds", str(out / "thresholds.json"),
          "--out", str(out / "submission.csv"), log=log)
    return out / "submission.csv"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--preset", default="hard")
    ap.add_argument("--source", choices=["synth", "indep"], default="synth",
                    help="synth: mabe synth --preset (train seed S, test seed S + 1000); indep: benchmarks/indep_data.py, "
                         "a generator that shares no code or parameters with mabe.synth")
    ap.add_argument("--eval-videos", type=int, default=10,
                    help="evaluation videos per seed (10: the issue's setup; more: less noise from rare (lab, action) cells)")
    ap.add_argument("--network", action="store_true", help="also the reference network (demo.yaml) and the blend")
    ap.add_argument("--out", type=Path, default=Path("bench_out/accuracy"))
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument("--gbdt-set", nargs="+", default=[], help="config overrides for the recipe (gbdt.x=y)")
    ap.add_argument("--only", nargs="+", default=None, help="run only these pipelines (e.g. gbdt)")
    ap.add_argument("--reuse-baseline", action="store_true",
                    help="score OUT/seedS/baseline/submission.csv of an earlier run of the same seed and source instead "
                         "of refitting the baseline (it is deterministic; refit it when the features code changed)")
    ap.add_argument("--cv-folds", type=int, default=3, help="k of the network's k-fold (cv_net, blend_cv rows)")
    ap.add_argument("--reuse-data", action="store_true",
                    help="keep OUT/seedS/data and solution of an earlier run of the same seed and source (they are "
                         "deterministic) instead of writing them again: rows of another run can then share them")
    ap.add_argument("--net-set", nargs="+", default=[], metavar="KEY=VALUE",
                    help="config overrides of the network runs (e.g. train.epochs=5 on a loaded machine)")
    ap.add_argument("--net-threads", type=int, default=None,
                    help="train.num_threads of the network runs (default: their config's)")
    ap.add_argument("--stack-set", nargs="+", default=[], metavar="KEY=VALUE",
                    help="config overrides of the stack rows (stack.x=y)")
    ap.add_argument("--stack-tag", default="", help="suffix of the stack rows' output folders (variants side by side)")
    ap.add_argument("--aug-set", nargs="+", default=list(AUG_DEFAULT),
                    help="config overrides of the cpu_net_aug pipeline (augment.x=y)")
    args = ap.parse_args()
    rows = []
    for seed in args.seeds:
        base = args.out / f"seed{seed}"
        if args.reuse_data and (base / "data" / "test.csv").is_file() and (base / "solution").is_dir():
            d, sol = base / "data", base / "solution"
        elif args.source == "indep":
            sys.path.insert(0, str(Path(__file__).resolve().parent))
            import indep_data

            d, sol = indep_data.write(base, seed, n_test=args.eval_videos)
        else:
            d, sol = make_split(base, seed, args.preset, args.eval_videos)
        gsets = tuple(a for o in args.gbdt_set for a in ("--set", o))
        todo = [("baseline", run_baseline, (d, base / "baseline")), ("gbdt", run_gbdt, (d, base / "gbdt", gsets)),
                ("recipe", run_recipe, (d, base / "recipe", gsets)),
                # its two parts, scored from its own outputs: the blend must beat each
                ("recipe_gbdt", recipe_part, (base / "recipe", "gbdt")), ("recipe_net", recipe_part, (base / "recipe", "net"))]
        g, c, tag, ss = base / "gbdt", base / "cv_net", args.stack_tag, tuple(args.stack_set)
        todo.append(("stack_gbdt", run_stack, ([g / "oof_predictions.npz"], [[g / "test_predictions.npz"]],
                                               base / f"stack_gbdt{tag}", ss)))
        todo.append(("stack_gbdt_pf", run_stack, ([g / "oof_predictions.npz"],
                                                  lambda g=g: [[p] for p in gbdt_fold_tests(g)],
                                                  base / f"stack_gbdt_pf{tag}", ss)))
        if args.network:
            sets = (() if args.net_threads is None else (f"train.num_threads={args.net_threads}",)) + tuple(args.net_set)
            todo.append(("network", run_network, (d, base / "network", "demo.yaml", sets)))
            todo.append(("blend", run_blend, (base / "gbdt", base / "network", base / "blend")))
            todo.append(("cpu_net", run_network, (d, base / "cpu_net", "cpu_net.yaml", sets)))
            todo.append(("cpu_net_aug", run_network, (d, base / "cpu_net_aug", "cpu_net.yaml",
                                                      sets + tuple(args.aug_set))))
            todo.append(("blend_net", run_product_blend, (base / "gbdt", [base / "network"], base / "blend_net")))
            todo.append(("blend_cpu_net", run_product_blend, (base / "gbdt", [base / "cpu_net"], base / "blend_cpu_net")))
            todo.append(("gbdt_thr_val", run_product_blend, (base / "gbdt", [base / "cpu_net"], base / "gbdt_thr_val",
                                                             "1,0")))
            todo.append(("blend_all", run_product_blend, (base / "gbdt", [base / "network", base / "cpu_net"],
                                                          base / "blend_all")))
            # honest validation (issue 14 item 4): the network k-fold, and the blend fitted on both families'
            # out-of-fold predictions of every train video
            todo.append(("cv_net", run_cv_network, (d, base / "cv_net", "cpu_net.yaml", args.cv_folds, sets)))
            todo.append(("blend_cv", run_cv_blend, (base / "gbdt", base / "cv_net", base / "blend_cv")))
            cv_fit = [g / "oof_predictions.npz", c / "runs" / "cv" / "oof_predictions.npz"]
            todo.append(("stack_cv", run_stack, (cv_fit, [[g / "test_predictions.npz", c / "test.npz"]],
                                                 base / f"stack_cv{tag}", ss)))
            todo.append(("stack_cv_pf", run_stack, (cv_fit, lambda g=g, c=c, d=d: [
                [a, b] for a in gbdt_fold_tests(g) for b in cv_fold_tests(d, c)], base / f"stack_cv_pf{tag}", ss)))
        todo = [t for t in todo if args.only is None or t[0] in args.only]
        for name, fn, fn_args in todo:
            if name == "baseline" and args.reuse_baseline and (base / "baseline" / "submission.csv").is_file():
                fn = lambda *_, kept=base / "baseline" / "submission.csv": kept  # noqa: E731 (bound now, not at call)
            t0, c0 = time.perf_counter(), _cpu()
            try:
                sub = fn(*fn_args)
                s = score(sol, sub)
            except Exception as err:  # one pipeline failing must not hide the others' numbers
                print(f"seed {seed} {name}: failed: {err}", file=sys.stderr)
                s = float("nan")
            row = {"seed": seed, "pipeline": name, "score": s, "wall_s": time.perf_counter() - t0,
                   "cpu_s": _cpu() - c0}
            rows.append(row)
            print(f"seed {seed} {name:9s} score {s:.4f}  wall {row['wall_s']:7.1f} s  cpu {row['cpu_s']:7.1f} s",
                  flush=True)
    df = pd.DataFrame(rows)
    summary = df.groupby("pipeline", sort=False).agg(score=("score", "mean"), score_sd=("score", "std"),
                                                      wall_s=("wall_s", "mean"), cpu_s=("cpu_s", "mean"))
    print(summary.to_string(float_format=lambda x: f"{x:.4f}"))
    for name in ("gbdt", "recipe"):
        if name in summary.index and "baseline" in summary.index:
            print(f"{name} - baseline: {summary.loc[name, 'score'] - summary.loc['baseline', 'score']:+.4f}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(rows, indent=1) + "\n")


if __name__ == "__main__":
    main()
