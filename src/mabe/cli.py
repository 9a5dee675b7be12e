"""The ``mabe`` command line: argparse, one thin function per command.

argparse (stdlib) rather than typer: no extra dependency, and ``torchrun -m mabe train`` works as is.
Each ``cmd_*`` parses nothing itself; it calls into the stage module that does the work. The stage
modules are imported inside each ``cmd_*`` on purpose: they pull in torch / pandas / pyarrow, and
``mabe --help`` or ``mabe status`` should not wait seconds for those.
"""

from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path

from mabe.config import Config, ConfigError, load_config
from mabe.errors import MabeError


def _add_config_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", "-c", type=Path, help="YAML config (configs/demo.yaml, configs/h100.yaml, ...)")
    p.add_argument(
        "--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
        help="override one config key, e.g. --set train.lr=1e-3 (repeatable)",
    )


# ----------------------------------------------------------------------------- commands


def cmd_synth(args: argparse.Namespace) -> int:
    from mabe import synth

    synth.write_dataset(
        args.out, preset=args.preset, seed=args.seed, n_train=args.videos, n_test=args.test_videos,
        frames=args.frames, workers=args.workers,
    )
    return 0


def cmd_info(args: argparse.Namespace) -> int:
    from mabe import data

    data.print_info(args.data, split=args.split)
    return 0


def cmd_prepare(args: argparse.Namespace) -> int:
    from mabe import prepare

    cfg = load_config(args.config, args.overrides)
    prepare.prepare_dataset(
        args.data, cfg.features, cache_root=args.cache or cfg.cache, splits=args.split,
        workers=args.workers, skip_bad=args.skip_bad,
    )
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from mabe import train

    return train.main_from_args(args)


def cmd_cv(args: argparse.Namespace) -> int:
    from mabe import cv

    return cv.main_from_args(args)


def cmd_evaluate(args: argparse.Namespace) -> int:
    from mabe import evaluate

    evaluate.main_from_args(args)
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    from mabe import evaluate

    evaluate.predict_from_args(args)
    return 0


def cmd_submit(args: argparse.Namespace) -> int:
    from mabe import submit

    submit.main_from_args(args)
    return 0


def cmd_score(args: argparse.Namespace) -> int:
    from mabe import metric

    metric.main_from_args(args)
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from mabe import checkpoint

    checkpoint.export_from_args(args)
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    from mabe import bench

    bench.main_from_args(args)
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from mabe import report

    path = report.write_report(args.run)
    print(f"report: {path}")
    return 0


def cmd_logs(args: argparse.Namespace) -> int:
    from mabe import runs

    return runs.logs(args.run, follow=args.follow, runs_root=args.runs)


def cmd_status(args: argparse.Namespace) -> int:
    from mabe import runs

    runs.print_status(args.runs)
    return 0


def cmd_stop(args: argparse.Namespace) -> int:
    from mabe import runs

    return runs.stop(args.run, runs_root=args.runs, wait=not args.no_wait)


def cmd_configs(args: argparse.Namespace) -> int:
    from mabe import config

    if args.copy is not None:
        for path in config.copy_configs(args.copy, args.names, overwrite=args.force):
            print(f"wrote {path}")
        return 0
    for name, path in config.packaged_configs().items():
        if not args.names or name in args.names or f"{name}.yaml" in args.names:
            first = next((ln.lstrip("# ").strip() for ln in path.read_text().splitlines() if ln.startswith("#")), "")
            print(f"{name:<10} {path}  {first}")
    return 0


def cmd_import(args: argparse.Namespace) -> int:
    from mabe import importer

    importer.main_from_args(args)
    return 0


def cmd_ethogram(args: argparse.Namespace) -> int:
    from mabe import ethogram

    ethogram.main_from_args(args)
    return 0


def cmd_bundle(args: argparse.Namespace) -> int:
    from mabe import bundle

    bundle.main_from_args(args)
    return 0


def cmd_gbdt(args: argparse.Namespace) -> int:
    from mabe import gbdt

    gbdt.main_from_args(args)
    return 0


def cmd_blend(args: argparse.Namespace) -> int:
    from mabe import blend

    blend.main_from_args(args)
    return 0


def cmd_stack(args: argparse.Namespace) -> int:
    from mabe import stack

    stack.main_from_args(args)
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from mabe import demo

    return demo.run_demo(args, main)


# ----------------------------------------------------------------------------- parser


def build_parser() -> argparse.ArgumentParser:
    """The full ``mabe`` argument parser."""
    parser = argparse.ArgumentParser(
        prog="mabe",
        description="Learn frame-level mouse social behaviour from MABe pose tracking, fast.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    p = sub.add_parser("demo", help="the main job on hard synthetic data: gbdt recipe, network, honest scores, submission")
    p.add_argument("--workdir", type=Path, default=Path("demo"), help="where data, cache and runs go")
    p.add_argument("--config", "-c", type=Path, default=None, help="training config (default: the shipped demo config)")
    p.add_argument("--seed", type=int, default=0, help="synthetic data seed")
    p.add_argument("--preset", choices=["tiny", "demo", "hard"], default=None,
                   help="synthetic data preset (default: hard, the real-data difficulties; demo is the easy "
                        "planted one, tiny the tests')")
    p.add_argument("--fresh", action="store_true", help="regenerate the synthetic data even if present")
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("synth", help="write a synthetic dataset in the exact MABe layout")
    p.add_argument("out", type=Path, help="output directory (created)")
    p.add_argument("--preset", choices=["tiny", "demo", "hard", "real"], default="demo",
                   help="size preset: tiny (tests), demo (CPU demo), hard (six real lab profiles, 2-minute "
                        "videos, real rates, tracker faults, unlabelled look-alikes), real (the real "
                        "labelled set's scale)")
    p.add_argument("--seed", type=int, default=0, help="random seed; same seed, same bytes")
    p.add_argument("--videos", type=int, default=None, help="train videos (overrides the preset)")
    p.add_argument("--test-videos", type=int, default=None, help="test videos (overrides the preset)")
    p.add_argument("--frames", type=int, default=None, help="frames per video (overrides the preset)")
    p.add_argument("--workers", type=int, default=1, help="parallel processes")
    p.set_defaults(func=cmd_synth)

    p = sub.add_parser("info", help="per-lab summary of a MABe-layout directory")
    p.add_argument("data", type=Path, help="directory holding train.csv / test.csv")
    p.add_argument("--split", default="train", choices=["train", "test"])
    p.set_defaults(func=cmd_info)

    p = sub.add_parser("import", help="your own DeepLabCut / SLEAP / NWB / LightningPose tracking -> a MABe-layout folder",
                       description="Convert pose files (one per video) and optionally their behaviour labels into "
                                   "a MABe-layout folder that every mabe command reads. Nothing is written when "
                                   "any file is bad.")
    p.add_argument("pose", nargs="+", type=Path, help="pose files: DLC .csv/.h5, SLEAP .h5/.slp, NWB .nwb, LightningPose .csv")
    p.add_argument("--out", type=Path, required=True, help="MABe-layout folder to create or add to")
    p.add_argument("--format", default="auto", choices=["auto", "dlc", "lightningpose", "sleap", "nwb"],
                   help="pose file format (default: from extension and content)")
    p.add_argument("--fps", type=float, default=None, help="frames per second (required unless the file says, e.g. NWB)")
    p.add_argument("--pix-per-cm", type=float, default=None, required=True, help="pixels per cm in the video")
    p.add_argument("--lab", default="lab", help="lab id (a folder name; default: lab)")
    p.add_argument("--split", default="train", choices=["train", "test"], help="train (labelled or not) or test")
    p.add_argument("--bodyparts", type=Path, default=None, metavar="MAP.yaml",
                   help="YAML: their body-part name -> mabe's (or null to leave out); common DLC / SLEAP names "
                        "(snout, leftear, tailbase, centroid, ...) map by default")
    p.add_argument("--min-likelihood", type=float, default=None,
                   help="points scored below this become missing (default: keep all)")
    p.add_argument("--frame-size", default=None, metavar="WxH", help="video size in px (default: file, else tracked extent)")
    p.add_argument("--arena-cm", default=None, metavar="WxH", help="arena size in cm (default: frame size / pix-per-cm)")
    p.add_argument("--annotations", type=Path, action="append", default=None, metavar="FILE",
                   help="labels: CSV (video, agent, target, behaviour, start_frame/stop_frame or start_s/stop_s) "
                        "or a BORIS export (repeatable)")
    p.add_argument("--behaviours", default=None, metavar="A,B,...",
                   help="MABe actions listed as labelled (behaviors_labeled): what `mabe predict` predicts on "
                        "test videos (default: all 37) or what the labels cover on train videos (default: "
                        "the annotated ones)")
    p.set_defaults(func=cmd_import)

    p = sub.add_parser("prepare", help="write every video's positions and labels into the compact on-disk cache "
                                       "(features are computed from it where the model runs)")
    p.add_argument("data", type=Path, help="MABe-layout directory")
    _add_config_args(p)
    p.add_argument("--cache", type=Path, default=None, help="cache root (default: config's cache)")
    p.add_argument("--split", action="append", choices=["train", "test"], default=None,
                   help="split(s) to prepare (default: every split present)")
    p.add_argument("--workers", type=int, default=None, help="parallel processes (default: all cores)")
    p.add_argument("--skip-bad", action="store_true", help="skip videos that fail validation, list them at the end")
    p.set_defaults(func=cmd_prepare)

    p = sub.add_parser("train", help="train a model (one process, or DDP under torchrun)")
    _add_config_args(p)
    p.add_argument("--data", type=Path, default=None, help="MABe-layout directory (overrides config's data)")
    p.add_argument("--name", default=None, help="run name (default: timestamp)")
    p.add_argument("--resume", default=None, metavar="RUN", help="continue a run (directory or name) from its last checkpoint")
    p.add_argument("--detach", action="store_true", help="start in the background, print the run id and return")
    p.add_argument("--nproc", type=int, default=None, help="shortcut: relaunch under torchrun with this many processes")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("cv", help="k-fold network runs (by video, stratified by lab) -> out-of-fold predictions",
                       description="Train one run per fold under runs/NAME/fold<k> (fold k validates on its videos "
                                   "and trains on the others), then write runs/NAME/oof_predictions.npz (every "
                                   "labelled train video predicted by the fold model that never trained on it) and "
                                   "thresholds.json fitted on it. Run it again (or --resume NAME) to continue; "
                                   "`mabe predict runs/NAME --split test` averages the folds.")
    _add_config_args(p)
    p.add_argument("--data", type=Path, default=None, help="MABe-layout directory (overrides config's data)")
    p.add_argument("--name", default=None, help="the cv directory's name under the runs root")
    p.add_argument("--folds", type=int, default=None, help="k of the k-fold (required for a new cv)")
    p.add_argument("--resume", default=None, metavar="CV", help="continue a cv (directory or name) with its saved config")
    p.set_defaults(func=cmd_cv)

    p = sub.add_parser("evaluate", help="metrics of a run or checkpoint on a dataset's validation videos")
    p.add_argument("run", help="run directory, run name or checkpoint file")
    p.add_argument("data", type=Path, nargs="?", default=None, help="MABe-layout directory (default: the run's)")
    p.add_argument("--split", default="val", choices=["val", "train", "all"], help="which videos to score")
    p.add_argument("--json", type=Path, default=None, help="also write the metrics here as JSON")
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("predict", help="per-frame probabilities for every labelled triple (ensembles several)")
    p.add_argument("checkpoints", nargs="+",
                   help="run directories, names, checkpoints, exported .mabe files or cv directories (`mabe cv`: "
                        "its folds)")
    p.add_argument("--data", type=Path, required=True, help="MABe-layout directory")
    p.add_argument("--split", default="test", choices=["test", "train", "val"])
    p.add_argument("--out", type=Path, required=True, help="output predictions file (.npz)")
    p.set_defaults(func=cmd_predict)

    p = sub.add_parser("submit", help="predictions -> a validated competition submission CSV")
    p.add_argument("predictions", type=Path, help="file written by `mabe predict`")
    p.add_argument("--out", type=Path, required=True, help="submission CSV to write")
    p.add_argument("--thresholds", type=Path, default=None, help="per-(lab, action) thresholds JSON (from --fit)")
    p.add_argument("--fit", type=Path, default=None, metavar="VAL_PREDICTIONS",
                   help="fit thresholds on these validation predictions (with labels) first")
    _add_config_args(p)
    p.set_defaults(func=cmd_submit)

    p = sub.add_parser("ethogram", help="predictions -> per-video behaviour intervals (CSV, frames and seconds) + PNGs")
    p.add_argument("predictions", type=Path, help="file written by `mabe predict`")
    p.add_argument("--out", type=Path, required=True, help="folder for intervals.csv and ethogram_<lab>_<video>.png")
    p.add_argument("--data", type=Path, default=None,
                   help="the data folder (from `mabe import`): names videos and animals as the pose files did")
    p.add_argument("--thresholds", type=Path, default=None, help="per-(lab, action) thresholds JSON (mabe submit --fit)")
    p.add_argument("--no-png", action="store_true", help="intervals.csv only")
    _add_config_args(p)
    p.set_defaults(func=cmd_ethogram)

    p = sub.add_parser("gbdt", help="gradient-boosted family: k-fold per-(lab, action) LightGBM, OOF thresholds, submission",
                       description="Prepare DATA's cache under OUT, train one LightGBM model per (lab, action) in "
                                   "k folds by video (stratified by lab), write out-of-fold predictions "
                                   "(OUT/oof_predictions.npz), thresholds fitted on them (OUT/thresholds.json), "
                                   "test predictions from the mean of the fold models (OUT/test_predictions.npz) "
                                   "and OUT/submission.csv.")
    p.add_argument("data", type=Path, help="MABe-layout directory (train split labelled; test split optional)")
    p.add_argument("--out", type=Path, required=True, help="output directory (cache, models, predictions, submission)")
    p.add_argument("--folds", type=int, default=None, help="k of the k-fold (default: gbdt.folds of the config)")
    p.add_argument("--workers", type=int, default=None, help="processes for the feature cache (default: all cores)")
    p.add_argument("--models", type=Path, default=None, metavar="MODELS_DIR",
                   help="no training: predict DATA's test split with the fold models of an earlier run "
                        "(its OUT/models) into OUT/test_predictions.npz (then `mabe submit --thresholds`)")
    _add_config_args(p)
    p.set_defaults(func=cmd_gbdt)

    p = sub.add_parser("blend", help="blend model families: weights + thresholds fitted on labelled out-of-sample "
                                     "files, applied to the test files",
                       description="Align predictions files of several model families on (lab, video, agent, target, "
                                   "frame), fit per-family weights (a grid on the simplex) and per-(lab, action) "
                                   "thresholds on the --fit files (validation / out-of-fold, with labels), blend the "
                                   "--apply files with those weights into OUT, and write OUT's folder thresholds.json "
                                   "(for `mabe submit --thresholds`) and blend.json (weights, grid scores).")
    p.add_argument("--fit", nargs="+", type=Path, required=True, metavar="LABELLED.npz",
                   help="one labelled out-of-sample file per family (gbdt OUT/oof_predictions.npz, a run's "
                        "eval/val_predictions.npz)")
    p.add_argument("--apply", nargs="+", type=Path, required=True, metavar="TEST.npz",
                   help="the same families' test predictions, in the same order")
    p.add_argument("--out", type=Path, required=True, help="blended predictions file to write (.npz)")
    p.add_argument("--step", type=float, default=None, help="weight grid step on the simplex (default: postprocess.blend_step)")
    p.add_argument("--weights", default=None, metavar="W,W,..", help="fixed weights (no search); thresholds still fitted")
    _add_config_args(p)
    p.set_defaults(func=cmd_blend)

    p = sub.add_parser("stack", help="second stage: a LightGBM per action on the members' out-of-fold probabilities",
                       description="Fit a second stage (one LightGBM per action, pooled over labs, on each member's "
                                   "probabilities and their rolling mean / max in seconds) on the --fit out-of-fold "
                                   "files with its own k-fold by video, fit per-(lab, action) thresholds on its "
                                   "out-of-fold predictions, apply it to the --apply files (each --apply group once, "
                                   "the groups averaged) into OUT, and write OUT's folder thresholds.json, stack.json "
                                   "and stack_oof_predictions.npz.")
    p.add_argument("--fit", nargs="+", type=Path, required=True, metavar="OOF.npz",
                   help="one labelled out-of-fold file per first-stage member (gbdt OUT/oof_predictions.npz, "
                        "a mabe cv directory's oof_predictions.npz)")
    p.add_argument("--apply", nargs="+", type=Path, required=True, action="append", metavar="TEST.npz",
                   help="the same members' test predictions, in the --fit order; repeat the option for several "
                        "groups (e.g. one per first-stage fold model): stage 2 is applied to each, then averaged")
    p.add_argument("--out", type=Path, required=True, help="stacked predictions file to write (.npz)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    _add_config_args(p)
    p.set_defaults(func=cmd_stack)

    p = sub.add_parser("score", help="the competition metric: SOLUTION vs SUBMISSION")
    p.add_argument("solution", type=Path, help="data directory (annotations + train.csv) or solution CSV")
    p.add_argument("submission", type=Path, help="submission CSV")
    p.add_argument("--json", type=Path, default=None,
                   help="also write the final, per-lab and per-action scores here as JSON (full precision)")
    p.set_defaults(func=cmd_score)

    p = sub.add_parser("configs", help="list the shipped configs (or copy them to a folder to edit)")
    p.add_argument("names", nargs="*", help="config names (default: all), e.g. demo h100")
    p.add_argument("--copy", type=Path, default=None, metavar="DIR", help="copy them into DIR")
    p.add_argument("--force", action="store_true", help="with --copy: overwrite existing files")
    p.set_defaults(func=cmd_configs)

    p = sub.add_parser("export", help="one offline file with weights, config, classes and normalisation")
    p.add_argument("run", help="run directory, name or checkpoint")
    p.add_argument("--out", type=Path, required=True, help="output file (.mabe or .pt)")
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("bundle", help="one Kaggle dataset folder for an internet-off notebook: wheel, models, "
                                      "thresholds, predict_and_submit.py")
    p.add_argument("runs", nargs="+", help="run directories, names, checkpoints or exported .mabe files (pair mode)")
    p.add_argument("--out", type=Path, required=True, help="bundle folder to write (upload it as one dataset)")
    p.add_argument("--thresholds", type=Path, default=None, help="fitted thresholds JSON (mabe submit --fit)")
    p.add_argument("--wheel", type=Path, default=None,
                   help="mabe's wheel to bundle (default: built from the source tree mabe runs from)")
    p.set_defaults(func=cmd_bundle)

    p = sub.add_parser("bench", help="reference path vs fast path, same run, same device")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda")
    p.add_argument("--batch-sizes", default=None,
                   help="comma-separated batch sizes; the first is compared with the reference, all are "
                        "swept on the fast path (default 384; 32 with --small)")
    p.add_argument("--steps", type=int, default=None, help="timed steps per measurement (default 50; 6 with --small)")
    p.add_argument("--warmup", type=int, default=None, help="untimed steps before timing (default 5; 2 with --small)")
    p.add_argument("--check-steps", type=int, default=None,
                   help="steps for the same-result check (default 10; 4 with --small)")
    p.add_argument("--small", action="store_true", help="a small model and batch (quick CPU run)")
    p.add_argument("--features", action="store_true", help="also benchmark reading + feature preparation")
    p.add_argument("--frames", type=int, default=None, help="frames for the feature benchmark")
    p.add_argument("--storage-dtype", default="auto", choices=["auto", "float32", "bfloat16", "float16"],
                   help="dtype of the resident features on the fast path")
    p.add_argument("--compile", action="store_true", help="fast path: torch.compile the conv stem and head")
    p.add_argument("--no-cuda-graphs", action="store_true", help="fast path: no CUDA-graph capture")
    p.add_argument("--lstm-precisions", default=None, metavar="LIST",
                   help="fast path: LSTM precisions to time and check, comma-separated from fp32,bf16,fp16 "
                        "(default: all three on CUDA, fp32 on CPU); the fastest that passes is reported")
    p.add_argument("--scale", action="store_true",
                   help="instead: issue 13's scale benchmark (synth a share of the real preset, prepare, train; "
                        "child processes, ~30 min on 2 cores; benchmarks/bench_scale.py has every option)")
    p.add_argument("--scale-videos", type=int, default=None,
                   help="--scale: train videos of the real preset (default 24: 5.2%% of its frames)")
    p.add_argument("--before", default=None,
                   help="--scale: the code to compare against, a git revision (of the repository here) or a src folder")
    p.add_argument("--workdir", type=Path, default=None, help="--scale: scratch folder (removed first)")
    p.add_argument("--json", type=Path, default=None, help="write the results as JSON")
    p.set_defaults(func=cmd_bench)

    p = sub.add_parser("report", help="write report.html with figures for a run")
    p.add_argument("run", help="run directory or name")
    p.set_defaults(func=cmd_report)

    for name, helptext in [("status", "list runs: state, epoch, best F1"), ("runs", "same as status")]:
        p = sub.add_parser(name, help=helptext)
        p.add_argument("--runs", type=Path, default=Path(Config.runs), help="runs root")
        p.set_defaults(func=cmd_status)

    p = sub.add_parser("logs", help="print a run's log (--follow streams it)")
    p.add_argument("run", help="run directory or name")
    p.add_argument("--follow", "-f", action="store_true", help="keep streaming until the run ends")
    p.add_argument("--runs", type=Path, default=Path(Config.runs), help="runs root")
    p.set_defaults(func=cmd_logs)

    p = sub.add_parser("stop", help="stop a running run gracefully (it writes a checkpoint)")
    p.add_argument("run", help="run directory or name")
    p.add_argument("--runs", type=Path, default=Path(Config.runs), help="runs root")
    p.add_argument("--no-wait", action="store_true", help="return at once instead of waiting for the run to stop")
    p.set_defaults(func=cmd_stop)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``mabe``; clear one-line errors for expected failures."""
    args = build_parser().parse_args(argv)
    original = warnings.formatwarning
    warnings.formatwarning = _one_line_warning(args.command)  # data quirks: one line each, no source line
    try:
        return int(args.func(args) or 0)
    except (MabeError, ConfigError) as err:
        print(f"mabe {args.command}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"mabe {args.command}: interrupted", file=sys.stderr)
        return 130
    finally:
        warnings.formatwarning = original


def _one_line_warning(command: str):
    def fmt(message, category, filename, lineno, line=None) -> str:
        return f"mabe {command}: warning: {message}\n"
    return fmt


if __name__ == "__main__":
    raise SystemExit(main())
