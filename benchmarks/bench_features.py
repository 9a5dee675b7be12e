"""Reading + scene features: mabe (data.read_tracking + features.scene_features) vs a pandas pivot baseline.

    .venv/bin/python benchmarks/bench_features.py                  # 54k frames (30 min at 30 fps), 2 mice
    .venv/bin/python benchmarks/bench_features.py --frames 200000 --mice 4 --repeat 5 --json out.json

Both paths read the same synthetic long-format tracking parquet and produce the (T, 288) scene vector
(positions cm, speeds cm/s, accelerations cm/s^2, gaps <= max_gap interpolated). The baseline is the
straightforward way: pd.read_parquet -> pivot_table -> per-column pandas interpolate / np.gradient.
The script prints frames/s of each, the speed-up (same run, same machine), the pair-feature
throughput and the largest difference where both results are finite.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from mabe.bench import bench_prepare


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--frames", type=int, default=54_000, help="frames in the synthetic video")
    p.add_argument("--mice", type=int, default=2, help="mice in the synthetic video (1-4)")
    p.add_argument("--repeat", type=int, default=5, help="timed repeats; the best is reported")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = p.parse_args()
    res = bench_prepare(args.frames, args.mice, repeats=args.repeat, seed=args.seed)
    if args.json:
        args.json.write_text(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
