"""Issue 13 at scale: the float32 feature cache (before) vs the position cache + features per batch (after).

The benchmark itself is ``mabe.bench.scale`` (``mabe bench --scale`` runs it too); this script is its
full command line. On the first ``--videos`` train videos of ``mabe synth --preset real`` (24: 5.2% of
the preset's frames, its largest video of 594k frames included), each step in a child process:
synth; ``mabe prepare`` of the real-data recipe with 1 and 2 workers, with this tree's code and with
``--before``'s (a git revision, exported with ``git archive``, or a src folder): frames/s, bytes a
frame on disk, peak RSS of the process tree; one epoch of the CPU recipe on the hard preset (issue
13's "before" set) with both trees and on the share with this one (features per batch and in memory):
windows/s, epoch seconds, peak RSS above the tiny preset's start-up, projected to the whole preset;
per-batch feature speed and precision; one reference-model step for the features' share.

    PYTHONPATH=src .venv/bin/python benchmarks/bench_scale.py --before 333d279^ --json /tmp/bench_scale.json
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from mabe import bench


def _ints(v: str) -> list[int]:
    return [int(x) for x in v.split(",") if x.strip()]


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--videos", type=int, default=24, help="train videos of the real preset's plan (default 24)")
    ap.add_argument("--workdir", default="/tmp/mabe_bench_scale", help="scratch folder (removed first)")
    ap.add_argument("--before", default=None, help="code to compare against: a git revision or a src folder")
    ap.add_argument("--workers", type=_ints, default=[1, 2], help="prepare worker counts (default 1,2)")
    ap.add_argument("--steps", type=int, default=40, help="training steps of the timed epoch (default 40)")
    ap.add_argument("--batch", type=int, default=384, help="windows per feature batch (default 384)")
    ap.add_argument("--window", type=int, default=100, help="frames per window (default 100)")
    ap.add_argument("--repeats", type=int, default=3, help="timed feature batches, best reported (default 3)")
    ap.add_argument("--threads", type=_ints, default=[1], help="torch CPU threads for the feature batches")
    ap.add_argument("--no-step", dest="step", action="store_false", help="skip the reference-model step")
    ap.add_argument("--no-train-real", dest="train_real", action="store_false",
                    help="skip training on the real share (only the hard preset)")
    ap.add_argument("--train-rounds", type=int, default=2,
                    help="rounds of the training runs, interleaved between the trees; the best windows/s kept")
    ap.add_argument("--json", type=Path, help="write every number here")
    args = ap.parse_args(argv)
    res = bench.scale(args.videos, args.workdir, args.before, args.workers, args.steps, args.batch, args.window,
                      args.repeats, args.threads, args.step, args.train_real, train_rounds=args.train_rounds)
    if args.json:
        args.json.write_text(json.dumps(res, indent=1, default=float))
    bench.print_scale(res)
    return res


if __name__ == "__main__":
    main()
