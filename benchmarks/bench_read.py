"""Time data.read_tracking against a plain pandas pivot on one large long-format tracking parquet.

    .venv/bin/python benchmarks/bench_read.py            # ~10.8 M rows (300k frames x 2 mice x 18 parts)
    .venv/bin/python benchmarks/bench_read.py --frames 500000 --repeat 5

Both paths build the same dense (T, 4, 18, 2) float32 array (headpiece = mean of its markers); the
script checks they agree before printing rows/s for each and the speed-up, measured in the same run.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from mabe import data

# A real 18-part layout (AdaptableSnail): 10 named parts + 8 headpiece markers -> 11 slots used.
PARTS = [
    "body_center", "ear_left", "ear_right", "lateral_left", "lateral_right", "neck", "nose", "tail_base",
    "tail_midpoint", "tail_tip", *data.HEADPIECE_PARTS,
]


def write_tracking(path: Path, frames: int, seed: int = 0, drop: float = 0.05) -> int:
    """Write a long-format parquet like the real files (sorted frame, mouse, part; ~5% rows missing); return rows."""
    rng = np.random.default_rng(seed)
    n_mice, n_parts = 2, len(PARTS)
    frame = np.repeat(np.arange(frames, dtype=np.int64), n_mice * n_parts)
    mouse = np.tile(np.repeat(np.arange(1, n_mice + 1, dtype=np.int64), n_parts), frames)
    part = np.tile(np.arange(n_parts, dtype=np.int32), frames * n_mice)
    keep = rng.random(frame.size) >= drop
    n = int(keep.sum())
    x = rng.uniform(0, 1200, n)
    y = rng.uniform(0, 1000, n)
    x[rng.random(n) < 0.01] = np.nan  # tracker dropouts inside present rows
    bodypart = pa.DictionaryArray.from_arrays(pa.array(part[keep]), pa.array(PARTS)).cast(pa.string())
    table = pa.table({"video_frame": frame[keep], "mouse_id": mouse[keep], "bodypart": bodypart, "x": x, "y": y})
    pq.write_table(table, path)
    return n


def pandas_dense(path: Path, n_mice: int = data.MAX_MICE, slots=data.DEFAULT_SLOTS) -> np.ndarray:
    """The straightforward way: read_parquet, map names to slots, pivot_table(mean), reindex to the dense grid."""
    df = pd.read_parquet(path)
    df["slot"] = df["bodypart"].map(data.BODYPART_SYNONYMS)
    df = df.dropna(subset=["x", "y"])  # a point needs both coordinates (same rule as read_tracking)
    wide = df.pivot_table(index="video_frame", columns=["mouse_id", "slot"], values=["x", "y"], aggfunc="mean")
    T = int(df["video_frame"].max()) + 1
    cols = pd.MultiIndex.from_product([["x", "y"], range(1, n_mice + 1), list(slots)])
    wide = wide.reindex(index=range(T), columns=cols)
    arr = wide.to_numpy(dtype=np.float32).reshape(T, 2, n_mice, len(slots))
    return np.ascontiguousarray(arr.transpose(0, 2, 3, 1))  # (T, M, S, 2)


def timed(fn, repeat: int, warmup: int) -> tuple[list[float], float, object]:
    """Wall seconds of each timed call, CPU seconds (user + sys) of the best one, the last result."""
    for _ in range(warmup):  # the first big allocations in a fresh process pay first-touch page faults
        fn()
    walls, cpus, out = [], [], None
    for _ in range(repeat):
        out = None  # free the previous result before the next call, as a loop over videos would
        c0, t0 = time.process_time(), time.perf_counter()
        out = fn()
        walls.append(time.perf_counter() - t0)
        cpus.append(time.process_time() - c0)
    return walls, cpus[int(np.argmin(walls))], out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--frames", type=int, default=300_000, help="frames in the synthetic video")
    p.add_argument("--repeat", type=int, default=5, help="timed repeats of read_tracking after one untimed call")
    p.add_argument("--baseline-repeat", type=int, default=1, help="timed repeats of the pandas baseline")
    args = p.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "tracking.parquet"
        rows = write_tracking(path, args.frames)
        size = path.stat().st_size / 2**20
        print(f"file: {rows:,} rows ({args.frames:,} frames x 2 mice x {len(PARTS)} parts, 5% dropped), {size:.0f} MiB")
        cold_t0 = time.perf_counter()
        data.read_tracking(path)
        cold = time.perf_counter() - cold_t0
        walls, cpu, tr = timed(lambda: data.read_tracking(path), args.repeat, warmup=0)
        base_walls, base_cpu, ref = timed(lambda: pandas_dense(path), args.baseline_repeat, warmup=0)
        same = np.array_equal(np.isnan(tr.xy), np.isnan(ref)) and np.allclose(tr.xy, ref, equal_nan=True, atol=1e-3)
        fast_s, base_s = min(walls), min(base_walls)
        load = os.getloadavg()[0]
        print(f"machine: {os.cpu_count()} cores, load average {load:.1f} (wall times suffer when it exceeds the cores)")
        print(f"read_tracking   best {fast_s:6.3f} s  {rows / fast_s / 1e6:6.2f} M rows/s   median "
              f"{np.median(walls):6.3f} s  {rows / np.median(walls) / 1e6:6.2f} M rows/s   "
              f"cpu {cpu:5.2f} s = {rows / cpu / 1e6:5.2f} M rows/cpu-s   "
              f"(first call {cold:.3f} s = {rows / cold / 1e6:.2f} M rows/s; {args.repeat} timed)")
        print(f"pandas pivot    best {base_s:6.3f} s  {rows / base_s / 1e6:6.2f} M rows/s   "
              f"cpu {base_cpu:5.2f} s = {rows / base_cpu / 1e6:5.2f} M rows/cpu-s   ({args.baseline_repeat} timed)")
        print(f"speed-up        {base_s / fast_s:6.1f} x (best vs best)   same array: {same}   xy {tr.xy.shape} {tr.xy.dtype}")
        if not same:
            raise SystemExit("read_tracking and the pandas baseline disagree")


if __name__ == "__main__":
    main()
