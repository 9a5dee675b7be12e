"""Issue 13 at scale: the float32 feature cache (before) vs the position cache + features per batch (after).

On a stated share of ``mabe synth --preset real`` (``--videos`` train videos of its plan; the share
of the real set's frames is printed), in one run on one machine, each in a child process:

1. synth: time to write the share (projected linearly to the whole preset);
2. prepare: ``mabe prepare`` of the real-data recipe in pair mode (``configs/h100.yaml`` with
   ``--set task.mode=pair``; its FeatureConfig is the default one) with this tree's code (after) and,
   given ``--before SRC`` (the ``src`` folder of the code before, e.g. ``git archive main``), with
   that one: wall time, frames/s, bytes a frame on disk, peak RSS;
3. train: one epoch of the CPU recipe (``configs/demo.yaml``, pair mode, ``--steps`` steps, 1 thread)
   on that cache with each tree: peak RSS (and above start-up, measured on the tiny preset: bytes a
   video frame, projected to the whole preset), windows/s, the epoch's seconds;
4. per batch: ``features_torch.window_features`` on a batch of windows drawn from the position
   cache (int16 store, decoded per batch), pair and scene mode, on CPU (and CUDA when present):
   frames/s, against numpy's ``all_pair_features`` over whole videos, and the largest difference
   from the numpy features of the same windows; one reference-model step for the share of the step;
5. the whole preset, projected from its plan (every video's frames, mice and tracked parts): bytes a
   frame of both caches on disk and of both device-resident stores.

    git archive main | tar -x -C /tmp/main_src
    python benchmarks/bench_scale.py --videos 8 --before /tmp/main_src/src --workdir /tmp/bench_scale --json /tmp/b.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]


def _run(cmd: list[str], env: dict | None = None) -> dict:
    """Run a child process; its wall time and peak RSS (from wait4, this child and its waited descendants)."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    out = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"failed ({proc.returncode}): {' '.join(cmd)}\n{out[-4000:]}")
    return {"seconds": wall, "peak_rss_mib": usage.ru_maxrss / 1024, "output": out}


def _du(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def _env(src: Path | str = REPO / "src") -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(src) + os.pathsep + env.get("PYTHONPATH", "")
    env["OMP_NUM_THREADS"] = "1"
    env["PYTHONDONTWRITEBYTECODE"] = "1"  # a --before tree stays as it is
    return env


def _prepare(py: str, data: Path, cache: Path, workers: int, env: dict, frames: int) -> dict:
    """``mabe prepare`` of the real-data recipe (pair mode) in a child: seconds, frames/s, bytes, peak RSS."""
    r = _run([py, "-m", "mabe", "prepare", str(data), "--config", str(REPO / "configs" / "h100.yaml"),
              "--set", "task.mode=pair", "--cache", str(cache), "--split", "train", "--workers", str(workers)], env)
    size = _du(cache)
    return {"seconds": r["seconds"], "frames_per_s": frames / r["seconds"], "bytes": size,
            "bytes_per_frame": size / frames, "peak_rss_mib": r["peak_rss_mib"]}


def _train(py: str, data: Path, cache: Path, runs: Path, steps: int, env: dict, extra: tuple[str, ...] = ()) -> dict:
    """One epoch of the CPU recipe (demo.yaml, pair) in a child: peak RSS, windows/s, epoch seconds.
    ``extra``: more --set overrides (the after tree's features_in_memory)."""
    import csv

    r = _run([py, "-m", "mabe", "train", "-c", str(REPO / "configs" / "demo.yaml"), "--data", str(data), "--name", "b",
              "--set", f"cache={cache}", "--set", f"runs={runs}", "--set", "train.epochs=1",
              "--set", f"train.steps_per_epoch={steps}", "--set", "train.num_threads=1",
              "--set", "train.report=false", "--set", "train.device=cpu", *[a for x in extra for a in ("--set", x)]],
             env)
    with open(runs / "b" / "metrics.csv") as f:
        row = list(csv.DictReader(f))[-1]
    data_line = " / ".join(ln for ln in r["output"].splitlines() if ln.startswith("data"))  # sizes, where
    return {"seconds": r["seconds"], "peak_rss_mib": r["peak_rss_mib"], "epoch_time_s": float(row["epoch_time_s"]),
            "windows_per_s": float(row["windows_per_s"]), "data_line": data_line}


# ----------------------------------------------------------------------------- per-batch features


def _windows(videos, rng, n: int, length: int):
    """n random pair windows (video, start, agent, target) over present mice."""
    v = rng.integers(0, len(videos), n)
    start, agent, target = [], [], []
    for i in v:
        meta = videos[i].meta
        start.append(int(rng.integers(0, max(meta["n_frames"] - length, 1))))
        mice = [m - 1 for m in meta["mice"]]
        agent.append(int(rng.choice(mice)))
        target.append(int(rng.choice(mice)))
    return v, np.array(start), np.array(agent), np.array(target)


def bench_batches(compact: Path, batch: int, length: int, repeats: int, device: str) -> dict:
    import torch

    from mabe import data, poscache
    from mabe import features as F
    from mabe import features_torch as FT
    from mabe.config import FeatureConfig

    slots = list(data.DEFAULT_SLOTS)
    fcfg = FeatureConfig()
    videos = [poscache.read_video(p.parent) for p in sorted(compact.glob("videos/*/*/meta.json"))]
    codes, offsets, quantum = poscache.stack_codes(videos, slots)
    fps = torch.tensor([v.meta["fps"] for v in videos], dtype=torch.float64)
    dev = torch.device(device)
    store = torch.from_numpy(codes).to(dev)
    off, q, fps_d = torch.from_numpy(offsets).to(dev), torch.from_numpy(quantum).to(dev), fps.to(dev)
    rng = np.random.default_rng(0)
    res: dict = {"device": device, "batch": batch, "window": length, "store_mib": codes.nbytes / 2**20}
    for mode in ("pair", "scene"):
        v, s, a, t = (torch.from_numpy(x).to(dev) for x in _windows(videos, rng, batch, length))
        times = []
        for _ in range(repeats + 1):
            if dev.type == "cuda":
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            out, valid = FT.window_features(store, off, v, s, length, fps_d, fcfg, slots, mode=mode, agent=a, target=t,
                                            quantum=q)
            if dev.type == "cuda":
                torch.cuda.synchronize()
            times.append(time.perf_counter() - t0)
        best = min(times[1:])  # the first call warms allocator / kernels
        # equality with the numpy features of the same windows (first 16), float32 both sides
        worst = 0.0
        for i in range(min(16, batch)):
            vid = videos[int(v[i])]
            cm = F.interpolate_gaps(vid.positions(slots), fcfg.max_gap)
            full = (F.scene_from_cm(cm, vid.meta["fps"]) if mode == "scene" else
                    F.all_pair_features(cm, vid.meta["fps"], [(int(a[i]), int(t[i]))], slots)[0])
            ref = full[int(s[i]) : int(s[i]) + length]
            got = out[i, : len(ref)].cpu().numpy()
            assert (np.isnan(got) == np.isnan(ref)).all(), "NaN pattern differs from numpy"
            both = np.isfinite(ref)
            worst = max(worst, float(np.abs(got - ref)[both].max(initial=0.0)))
        res[mode] = {"seconds": best, "frames_per_s": batch * length / best, "max_abs_diff_vs_numpy": worst,
                     "n_features": int(out.shape[-1])}
    # numpy, whole videos, as today's prepare computes pair features (all ordered pairs of present mice)
    t0 = time.perf_counter()
    n_frames = 0
    for vid in videos[:4]:
        cm = F.interpolate_gaps(vid.positions(slots), fcfg.max_gap)
        mice = [m - 1 for m in vid.meta["mice"]]
        F.all_pair_features(cm, vid.meta["fps"], [(x, y) for x in mice for y in mice], slots)
        n_frames += vid.n_frames * len(mice) ** 2
    res["numpy_pair_frames_per_s"] = n_frames / (time.perf_counter() - t0)
    return res


def bench_precision(data_root: Path, n_videos: int = 3) -> dict:
    """Largest feature error from stored positions: int16 at the poscache step vs float16 cm, against float64."""
    from mabe import data, poscache, prepare
    from mabe import features as F

    slots = list(data.DEFAULT_SLOTS)
    out: dict = {"int16": {}, "float16": {}}
    for task in prepare._tasks(data_root, ["train"])[:n_videos]:
        trk = data.read_tracking(task["tracking_path"], slots, data.MAX_MICE)
        centre = (task["width"] / 2, task["height"] / 2)
        cm = F.to_cm(trk.xy.astype(np.float64), task["pix_per_cm"], centre)
        codes, q, m, s_ = poscache.encode_positions(trk.xy, np.ones(data.MAX_MICE, bool), task["pix_per_cm"], centre)
        stored = {"int16": poscache.decode_positions(codes, q, m, s_, data.MAX_MICE, len(slots), np.float64),
                  "float16": cm.astype(np.float16).astype(np.float64)}
        mice = np.flatnonzero(trk.mice).tolist()
        pairs = [(a, b) for a in mice for b in mice]

        def feats(x, fps=task["fps"], pairs=pairs):
            x = F.interpolate_gaps(x, 10)
            return (F.scene_from_cm(x, fps).astype(np.float64),
                    F.all_pair_features(x, fps, pairs, slots).astype(np.float64))

        ref_scene, ref_pair = feats(cm)
        n = data.MAX_MICE * len(slots)
        for kind, x in stored.items():
            sc, pr = feats(x)
            d = np.abs(sc - ref_scene)
            blocks = {"positions_cm": d[:, : 2 * n], "speed_cm_s": d[:, 2 * n : 3 * n], "acc_cm_s2": d[:, 3 * n :],
                      "pair_any": np.abs(pr - ref_pair)}
            for k, v in blocks.items():
                out[kind][k] = max(out[kind].get(k, 0.0), float(np.nanmax(v, initial=0.0)))
    return out


def bench_step(batch: int, length: int, n_features: int, repeats: int = 2) -> dict:
    """One forward + backward + AdamW step of the reference model (conv1d_bilstm) on CPU, best of ``repeats``."""
    import torch

    from mabe import models
    from mabe.config import ModelConfig

    torch.manual_seed(0)
    model = models.create("conv1d_bilstm", n_features, 8, ModelConfig())
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    x = torch.randn(batch, length, n_features)
    y = (torch.rand(batch, length, 8) < 0.1).float()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        loss = torch.nn.functional.binary_cross_entropy_with_logits(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        times.append(time.perf_counter() - t0)
    return {"seconds": min(times), "params": sum(p.numel() for p in model.parameters())}


# ----------------------------------------------------------------------------- projection from the plan


def project_real(seed: int = 0) -> dict:
    """Bytes a frame of the whole real preset, from its plan: today's cache (pair mode) and the compact one."""
    from mabe import data, synth

    specs = [s for s in synth.plan_dataset("real", seed) if s.split == "train"]
    P, n_act = 90, len(data.ACTIONS)
    frames = old = new = dev_old = dev_new = 0
    for s in specs:
        T, M = s.n_frames, s.n_mice
        slots_tracked = {data.BODYPART_SYNONYMS.get(p, p) for p in s.parts} & set(data.DEFAULT_SLOTS)
        frames += T
        old += T * (288 * 4 + M * M * (P * 4 + n_act)) + M * M * n_act  # scene + pair + labels (+ labeled)
        new += T * M * len(slots_tracked) * 4  # int16 x, y of present mice and tracked slots (labels: intervals)
        # device, pair mode: today fp16 pair rows of every track (upper bound: all pairs labelled) + uint8 labels;
        # after: the int16 (4, 18, 2) store of every frame
        dev_old += T * M * M * (P * 2 + n_act)
        dev_new += T * 4 * len(data.DEFAULT_SLOTS) * 2 * 2
    return {"videos": len(specs), "frames": frames, "old_bytes_per_frame": old / frames,
            "new_bytes_per_frame": new / frames, "old_gib": old / 2**30, "new_gib": new / 2**30,
            "device_old_bytes_per_frame": dev_old / frames, "device_new_bytes_per_frame": dev_new / frames,
            "device_old_gib": dev_old / 2**30, "device_new_gib": dev_new / 2**30}


# ----------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--videos", type=int, default=8, help="train videos of the real preset's plan (default 8, ~1%%)")
    ap.add_argument("--workdir", default="/tmp/bench_scale", help="scratch folder (removed first)")
    ap.add_argument("--workers", type=int, default=1, help="processes for synth and prepare (default 1)")
    ap.add_argument("--batch", type=int, default=384, help="windows per feature batch (default 384)")
    ap.add_argument("--window", type=int, default=100, help="frames per window (default 100)")
    ap.add_argument("--repeats", type=int, default=3, help="timed feature batches, best reported (default 3)")
    ap.add_argument("--threads", type=lambda v: [int(x) for x in v.split(",")], default=[1, 2],
                    help="torch CPU threads for the feature batches, comma-separated (default 1,2)")
    ap.add_argument("--no-step", dest="step", action="store_false",
                    help="skip timing one training step of the reference model on CPU")
    ap.add_argument("--before", help="the src folder of the code to compare against (e.g. main's, from git archive)")
    ap.add_argument("--steps", type=int, default=40, help="training steps of the timed epoch (default 40)")
    ap.add_argument("--no-tiny", action="store_true", help="skip the start-up runs on the tiny preset")
    ap.add_argument("--json", help="write every number here")
    args = ap.parse_args(argv)

    import torch

    work = Path(args.workdir)
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    py, env = sys.executable, _env()
    plan = project_real()
    res: dict = {"machine": f"{platform.processor() or platform.machine()} ({os.cpu_count()} cores)",
                 "python": platform.python_version(), "torch": torch.__version__,
                 "load_average": os.getloadavg(), "args": vars(args), "real": plan}

    syn = _run([py, "-m", "mabe", "synth", str(work / "data"), "--preset", "real", "--videos", str(args.videos),
                "--test-videos", "0", "--workers", str(args.workers)], env)
    from mabe import synth

    frames = sum(s.n_frames for s in synth.plan_dataset("real", 0, args.videos, 0))  # what synth wrote
    share = frames / plan["frames"]
    res["share"] = {"videos": args.videos, "frames": frames, "of_real": share}
    res["synth"] = {"seconds": syn["seconds"], "projected_real_min": syn["seconds"] / share / 60}

    trees = {"after": REPO / "src"} | ({"before": Path(args.before)} if args.before else {})
    if not args.no_tiny:
        _run([py, "-m", "mabe", "synth", str(work / "tiny"), "--preset", "tiny"], env)
    # training needs labs with >= 2 videos (validation): the 30-video hard preset (6 labs), as issue 13's baseline
    _run([py, "-m", "mabe", "synth", str(work / "hard"), "--preset", "hard", "--test-videos", "0"], env)
    hard_frames = sum(s.n_frames for s in synth.plan_dataset("hard", 0) if s.split == "train")
    res["train_data"] = {"preset": "hard", "frames": hard_frames}
    for name, src in trees.items():
        e = _env(src)
        # after: features per batch, what the whole real preset gets (its float32 matrix would not fit)
        extra = ("train.features_in_memory=never",) if name == "after" else ()
        res[name] = _prepare(py, work / "data", work / f"cache_{name}", args.workers, e, frames)
        res[name]["prepare_hard"] = _prepare(py, work / "hard", work / f"cache_hard_{name}", args.workers, e,
                                             hard_frames)
        res[name]["train"] = _train(py, work / "hard", work / f"cache_hard_{name}", work / f"runs_{name}", args.steps,
                                    e, extra)
        if name == "after":  # and the CPU default for a set this size: the features once, in memory
            res[name]["train_memory"] = _train(py, work / "hard", work / f"cache_hard_{name}", work / "runs_after_mem",
                                               args.steps, e, ("train.features_in_memory=always",))
        if not args.no_tiny:  # start-up: the same run on the tiny preset
            res[name]["train_tiny"] = _train(py, work / "tiny", work / f"cache_tiny_{name}", work / f"runs_tiny_{name}",
                                             2, e, extra)
            above = res[name]["train"]["peak_rss_mib"] - res[name]["train_tiny"]["peak_rss_mib"]
            res[name]["train"]["rss_bytes_per_video_frame"] = above * 2**20 / hard_frames
            res[name]["train"]["projected_real_gib"] = (res[name]["train_tiny"]["peak_rss_mib"] * 2**20 + above * 2**20
                                                        * plan["frames"] / hard_frames) / 2**30
    new_dir = work / "cache_after"

    res["precision"] = bench_precision(work / "data")
    for n in args.threads:
        torch.set_num_threads(n)
        res[f"batches_cpu_{n}t"] = bench_batches(new_dir, args.batch, args.window, args.repeats, "cpu")
    res["batches_cpu"] = res[f"batches_cpu_{args.threads[0]}t"]
    if torch.cuda.is_available():
        res["batches_cuda"] = bench_batches(new_dir, args.batch, args.window, args.repeats, "cuda")

    if args.step:
        torch.set_num_threads(args.threads[0])
        res["train_step_cpu"] = bench_step(args.batch, args.window, res["batches_cpu"]["pair"]["n_features"])
    n = res["after"]
    o = res.get("before", {k: float("nan") for k in n})
    print(f"\nbench_scale: {args.videos} videos of the real preset, {frames:,} frames = {share:.2%} of its "
          f"{plan['frames']:,} train frames; {res['machine']}, load {res['load_average'][0]:.1f}")
    print(f"  synth            {syn['seconds']:7.1f} s  (whole preset projected: {res['synth']['projected_real_min']:.0f} min)")
    print(f"  {'':28} {'before':>14} {'after':>14} {'ratio':>8}")
    rows = [("seconds", "prepare s", "{:14.1f}"), ("frames_per_s", "prepare frames/s", "{:14,.0f}"),
            ("bytes_per_frame", "disk B/frame", "{:14,.1f}"), ("peak_rss_mib", "prepare peak RSS MiB", "{:14,.0f}")]
    for key, name, fmt in rows:
        print(f"  {name:28} {fmt.format(o[key])} {fmt.format(n[key])} {n[key] / o[key]:8.3f}")
    ot, nt = o.get("train", {}), n["train"]
    if "train_memory" in n:
        m = n["train_memory"]
        print(f"  after, features once in memory: train peak RSS {m['peak_rss_mib']:,.0f} MiB, "
              f"{m['windows_per_s']:,.0f} windows/s, epoch {m['epoch_time_s']:.1f} s")
    for key, name, fmt in (("peak_rss_mib", "train peak RSS MiB", "{:14,.0f}"),
                           ("rss_bytes_per_video_frame", "train RSS B/video frame", "{:14,.0f}"),
                           ("projected_real_gib", "train RSS real preset GiB", "{:14,.1f}"),
                           ("windows_per_s", "train windows/s (1 thread)", "{:14,.0f}"),
                           ("epoch_time_s", "train epoch s", "{:14,.1f}")):
        if key in nt:
            print(f"  {name:28} {fmt.format(ot.get(key, float('nan')))} {fmt.format(nt[key])} "
                  f"{nt[key] / ot.get(key, float('nan')):8.3f}")
    print(f"  whole real preset (plan): disk {plan['old_gib']:.1f} GiB -> {plan['new_gib']:.2f} GiB "
          f"({plan['old_bytes_per_frame']:,.0f} -> {plan['new_bytes_per_frame']:,.0f} B/frame); device store (pair) "
          f"{plan['device_old_gib']:.1f} GiB -> {plan['device_new_gib']:.1f} GiB "
          f"({plan['device_old_bytes_per_frame']:,.0f} -> {plan['device_new_bytes_per_frame']:,.0f} B/frame)")
    for key in [f"batches_cpu_{n}t" for n in args.threads] + ["batches_cuda"]:
        if key in res:
            b = res[key]
            where = b["device"] if b["device"] != "cpu" else f"cpu, {key.split('_')[-1][:-1]} thread(s)"
            for mode in ("pair", "scene"):
                m = b[mode]
                print(f"  features per batch ({where}, {mode}, {b['batch']} x {b['window']}): "
                      f"{m['seconds'] * 1e3:8.1f} ms  {m['frames_per_s']:>12,.0f} frames/s  "
                      f"max |diff| vs numpy {m['max_abs_diff_vs_numpy']:.2e}")
            print(f"  numpy pair features (today's prepare step): {b['numpy_pair_frames_per_s']:,.0f} pair-frames/s; "
                  f"torch pair/numpy {b['pair']['frames_per_s'] / b['numpy_pair_frames_per_s']:.2f}x")
    for kind, d in res["precision"].items():
        print(f"  stored as {kind:7}: max |feature error| vs float64 positions: "
              + ", ".join(f"{k} {v:.2e}" for k, v in d.items()))
    if "train_step_cpu" in res:
        st, ft = res["train_step_cpu"]["seconds"], res["batches_cpu"]["pair"]["seconds"]
        res["feature_share_of_step_cpu"] = ft / (st + ft)
        print(f"  reference model train step (cpu, {args.batch} x {args.window}, {args.threads[0]} thread(s)): "
              f"{st:.2f} s; features per batch {ft:.2f} s = {ft / (st + ft):.1%} of step + features")
    epoch = 384_000 * args.window / res["batches_cpu"]["pair"]["frames_per_s"]
    print(f"  CPU feature time for one reference epoch (384k windows of {args.window}, {args.threads[0]} thread(s)): "
          f"{epoch / 60:.1f} min")
    res["epoch_feature_minutes_cpu"] = epoch / 60
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=1, default=float))
    return res


if __name__ == "__main__":
    main()
