"""An independent MABe-layout generator for accuracy checks: shares nothing with ``mabe.synth`` but the file format.

Why: accuracy must not be judged on data made with the assumptions a pipeline was tuned on. This
generator is written separately (agent-based, not schedule-based) and reads the lab profiles from the
real metadata (``/work/shared/data/mabe2025/train.csv`` or ``--meta``): fps, pix_per_cm, frame size,
body-part list, ``behaviors_labeled``, mice count.

Model: mice move at a 10 Hz decision rate (a Python loop over decision steps, not frames) and are
interpolated to the lab's fps. Each mouse is free (goal-directed exploring, pauses) or engaged.
A free mouse may engage a free partner: an unlabelled orienting lead-in, an approach (labelled only
where the lab lists ``approach``), then a contact act (sniff variants, attack + defend/escape, chase,
follow, avoid, mount/intromit, submit) whose annotated onset lags arrival; or a self act (rear,
selfgroom, dig, climb, rest). Look-alike acts that no lab lists (allogroom ~ sniffbody, tussle ~
attack, shepherd ~ chase, pass-by, wall-sniff ~ rear) are never annotated. Acts the lab does not list
happen unannotated too. Body parts come from a bendable spine model with per-mouse size; tracking
adds white + AR(1) noise, single-frame outliers, identity swaps, dropped frames, missing part runs.

    PYTHONPATH=src python benchmarks/indep_data.py OUT --seed 0   # OUT/data (train + test), OUT/solution
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
from scipy.signal import lfilter

META = Path("/work/shared/data/mabe2025/train.csv")
LABS = ("AdaptableSnail", "GroovyShrew", "JovialSwallow", "LyricalHare", "PleasantMeerkat", "ElegantMink")
DT = 0.1  # decision step, s
PAIR_ACTS = {  # act: (relative rate, mean duration s)
    "sniff": (3.0, 2.0), "sniffface": (1.5, 1.5), "sniffbody": (1.5, 2.0), "sniffgenital": (1.5, 2.0),
    "attack": (1.2, 1.2), "chase": (1.0, 1.8), "chaseattack": (0.4, 1.5), "follow": (0.8, 2.5),
    "avoid": (0.8, 1.2), "mount": (0.6, 3.0), "intromit": (0.4, 4.0), "submit": (0.4, 2.0),
    # look-alikes, never annotated
    "allogroom": (1.0, 3.0), "tussle": (0.6, 1.2), "shepherd": (0.6, 2.0), "passby": (1.0, 0.8),
}
SELF_ACTS = {"rear": (1.0, 1.5), "selfgroom": (1.0, 4.0), "dig": (0.6, 2.5), "climb": (0.5, 2.0),
             "rest": (0.4, 6.0), "wallsniff": (0.8, 1.5)}
SNIFF_SPOT = {"sniff": None, "sniffface": 0.5, "sniffbody": 0.0, "sniffgenital": -0.5, "allogroom": 0.1}


def profiles(meta: Path) -> dict[str, pd.Series]:
    """One real metadata row per lab in LABS (the first labelled one)."""
    df = pd.read_csv(meta)
    df = df[df["behaviors_labeled"].notna()]
    return {lab: df[df["lab_id"] == lab].iloc[0] for lab in LABS}


def _n_mice(row: pd.Series) -> int:
    ids = {s for b in json.loads(row["behaviors_labeled"]) for s in b.split(",")[:2] if s.startswith("mouse")}
    return max(2, max(int(s[5:]) for s in ids))


def simulate(row: pd.Series, seconds: float, rng: np.random.Generator):
    """Decision-step trajectories (K, M, 7) [x, y, heading, bend, scale, jitter, thrust] in cm and step labels."""
    ppc = float(row["pix_per_cm_approx"])
    W, H = float(row["video_width_pix"]) / ppc, float(row["video_height_pix"]) / ppc
    M, K = _n_mice(row), int(seconds / DT)
    labelled = {b.split(",")[2] for b in json.loads(row["behaviors_labeled"])}
    L = rng.uniform(7.5, 10.0) * rng.uniform(0.9, 1.1, M)  # nose-to-tail-base length per mouse
    pos = np.c_[rng.uniform(0.15, 0.85, M) * W, rng.uniform(0.15, 0.85, M) * H]
    hd = rng.uniform(-np.pi, np.pi, M)
    goal = pos.copy()
    mode, partner, left, phase, spot = ["free"] * M, [-1] * M, np.zeros(M), ["-"] * M, np.zeros(M)
    t0, lag, fs, dfd = np.zeros(M, int), np.zeros(M), np.full(M, 6.0), np.zeros(M, bool)
    traj = np.zeros((K, M, 7))
    labels: list[tuple[int, int, str, int]] = []  # (agent, target, action, step)
    pa, pr = list(PAIR_ACTS), np.array([v[0] for v in PAIR_ACTS.values()])
    sa, sr = list(SELF_ACTS), np.array([v[0] for v in SELF_ACTS.values()])
    sociality = rng.uniform(0.6, 1.4)
    for k in range(K):
        vel = np.zeros((M, 2))
        want_hd = hd.copy()
        bend, scale, jit, thr = np.zeros(M), np.ones(M), np.zeros(M), np.zeros(M)
        for m in range(M):
            if mode[m] == "free":
                free = [j for j in range(M) if j != m and mode[j] == "free"]
                u = rng.random()
                if free and u < 0.02 * sociality:
                    j = int(rng.choice(free))
                    act = pa[rng.choice(len(pa), p=pr / pr.sum())]
                    mode[m], partner[m], phase[m], left[m] = act, j, "orient", rng.uniform(0.3, 1.0)
                    mode[j], partner[j], phase[j], left[j] = "_target", m, "-", 1e9
                    spot[m] = SNIFF_SPOT.get(act) if SNIFF_SPOT.get(act) is not None else rng.uniform(-0.5, 0.5)
                elif u < 0.02 * sociality + 0.006:
                    act = sa[rng.choice(len(sa), p=sr / sr.sum())]
                    mode[m], phase[m], left[m] = act, "lead", rng.uniform(0.2, 0.8)
                    if act in ("climb", "wallsniff", "rear") and rng.random() < 0.7:
                        goal[m] = [rng.choice([2.0, W - 2.0]), pos[m, 1]]
                if mode[m] == "free":
                    if np.linalg.norm(goal[m] - pos[m]) < 2 or rng.random() < 0.01:
                        goal[m] = [rng.uniform(3, W - 3), rng.uniform(3, H - 3)]
                    d = goal[m] - pos[m]
                    if k % 15 == 0:  # walk, trot or pause, re-drawn every 1.5 s
                        fs[m] = rng.choice([0.0, 6.0, 14.0], p=[0.25, 0.5, 0.25])
                    vel[m] = d / (np.linalg.norm(d) + 1e-6) * fs[m]
                    want_hd[m] = np.arctan2(d[1], d[0])
                    continue
            act = mode[m]
            if act == "_target":
                continue  # moved by its agent below
            left[m] -= DT
            if act in SELF_ACTS:
                if phase[m] == "lead":
                    d = goal[m] - pos[m]
                    vel[m] = d / (np.linalg.norm(d) + 1e-6) * min(10.0, np.linalg.norm(d) / DT)
                    want_hd[m] = np.arctan2(d[1], d[0]) if np.linalg.norm(d) > 1 else hd[m]
                    if left[m] <= 0:
                        phase[m], left[m] = "act", rng.exponential(SELF_ACTS[act][1]) + 0.3
                    continue
                scale[m] = {"rear": 0.6, "selfgroom": 0.8, "climb": 0.65, "rest": 0.85, "wallsniff": 0.75}.get(act, 1.0)
                bend[m] = 0.7 * np.sin(2 * np.pi * 1.5 * k * DT) if act == "selfgroom" else 0.0
                jit[m] = {"selfgroom": 0.4, "dig": 0.9, "rear": 0.2}.get(act, 0.0)
                if act == "dig":
                    vel[m] = 1.5 * np.array([np.cos(hd[m]), np.sin(hd[m])])
                if act in labelled:
                    labels.append((m, m, act, k))
                if left[m] <= 0:
                    mode[m], phase[m] = "free", "-"
                continue
            j = partner[m]
            d = pos[j] - pos[m]
            dist = np.linalg.norm(d) + 1e-6
            if phase[m] == "orient":  # unlabelled lead-in: slow turn toward the partner
                want_hd[m], vel[m] = np.arctan2(d[1], d[0]), d / dist * 2.0
                phase[m] = "approach" if left[m] <= 0 else "orient"
                continue
            if phase[m] == "approach":
                want_hd[m] = np.arctan2(d[1], d[0])
                vel[m] = d / dist * min(rng.uniform(12, 25), (dist - 0.8 * L[m]) / DT)
                if "approach" in labelled and act not in ("avoid", "passby"):
                    labels.append((m, j, "approach", k))
                if dist < 1.3 * (L[m] + L[j]) / 2 or act in ("avoid",):
                    phase[m], left[m] = "contact", rng.exponential(PAIR_ACTS[act][1]) + 0.4
                    t0[m], lag[m] = k, rng.uniform(0.2, 0.6)  # the annotator's onset lag, s
                    dfd[m] = rng.random() < 0.5  # an attacked mouse defends or escapes
                continue
            u = np.array([np.cos(hd[j]), np.sin(hd[j])])
            lag_ok = (k - t0[m]) * DT >= lag[m]
            if act in SNIFF_SPOT or act == "passby":  # nose to a spot along the partner's body
                tgt = pos[j] + spot[m] * L[j] * u
                if act == "passby":
                    tgt = pos[j] + 1.2 * L[j] * np.array([-u[1], u[0]])
                nose_dir = tgt - pos[m]
                want_hd[m] = np.arctan2(nose_dir[1], nose_dir[0])
                c = tgt - 0.55 * L[m] * nose_dir / (np.linalg.norm(nose_dir) + 1e-6)
                vel[m] = (c - pos[m]) / DT * 0.4
                vel[j] = rng.normal(0, 2.0 if act != "allogroom" else 0.5, 2)
                jit[m] = 0.3 if act != "allogroom" else 0.15
            elif act in ("attack", "tussle"):
                want_hd[m] = np.arctan2(d[1], d[0])
                c = pos[j] - 0.6 * L[m] * d / dist
                vel[m] = (c - pos[m]) / DT * 0.5 + rng.normal(0, 8, 2)
                jit[m], jit[j] = (1.6, 1.2) if act == "attack" else (1.0, 1.0)
                defend = act == "attack" and dfd[m]
                want_hd[j] = np.arctan2(-d[1], -d[0]) if defend or act == "tussle" else hd[j]
                vel[j] = rng.normal(0, 6, 2) if defend or act == "tussle" else d / dist * 18
                if act == "attack" and ("defend" if defend else "escape") in labelled:
                    labels.append((j, m, "defend" if defend else "escape", k))
            elif act in ("chase", "chaseattack", "follow", "shepherd"):
                sp = {"chase": 32, "chaseattack": 28, "follow": 11, "shepherd": 16}[act]
                flee = d / dist if act != "follow" else np.array([np.cos(hd[j]), np.sin(hd[j])])
                turn = rng.normal(0, 0.25)
                flee = np.array([[np.cos(turn), -np.sin(turn)], [np.sin(turn), np.cos(turn)]]) @ flee
                vel[j], want_hd[j] = flee * sp, np.arctan2(flee[1], flee[0])
                behind = pos[j] - (1.3 if act != "shepherd" else 2.5) * L[m] * flee
                vel[m], want_hd[m] = (behind - pos[m]) / DT * 0.35 + vel[j] * 0.6, np.arctan2(d[1], d[0])
                jit[m] = 1.2 if act == "chaseattack" else 0.1
                if act == "chase" and "escape" in labelled:
                    labels.append((j, m, "escape", k))
            elif act == "avoid":  # the partner comes on, the agent leaves
                vel[j], vel[m] = -d / dist * 12, -d / dist * 20
                want_hd[j] = want_hd[m] = np.arctan2(-d[1], -d[0])
            elif act in ("mount", "intromit"):
                c = pos[j] - 0.35 * L[j] * u
                vel[m], want_hd[m], vel[j] = (c - pos[m]) / DT * 0.5, hd[j], u * 1.0
                thr[m], scale[m] = 0.8 if act == "intromit" else 0.2, 1.1
            elif act == "submit":
                want_hd[m], scale[m] = np.arctan2(d[1], d[0]), 0.8
                vel[j] = (pos[m] + 0.8 * L[j] * d / dist - pos[j]) / DT * 0.2
            if act in labelled and lag_ok:
                labels.append((m, j, act, k))
            if left[m] <= 0 or dist > 6 * L[m] and act not in ("avoid", "chase", "follow", "shepherd"):
                mode[m], mode[j], phase[m], phase[j] = "free", "free", "-", "-"
        spd = np.linalg.norm(vel, axis=1, keepdims=True)
        vel = vel * np.minimum(1.0, 45 / np.maximum(spd, 1e-6))
        pos = np.clip(pos + vel * DT, [1.0, 1.0], [W - 1.0, H - 1.0])
        dh = np.angle(np.exp(1j * (want_hd - hd)))
        hd = hd + np.clip(dh, -1.2, 1.2) * 0.6
        traj[k] = np.c_[pos, hd, bend, scale, jit, thr]
    return traj, labels, L, (W, H)


def body(traj_f: np.ndarray, L: np.ndarray, t: np.ndarray, parts: list[str], rng) -> np.ndarray:
    """Frame trajectories (T, M, 7) -> keypoints (T, M, P, 2) cm, from a spine with a bendable head and a waving tail."""
    x, y, hd, bend, sc, jit, thr = np.moveaxis(traj_f, -1, 0)
    T, M = x.shape
    Ls = L[None] * sc
    ub = np.stack([np.cos(hd), np.sin(hd)], -1)
    uh = np.stack([np.cos(hd + bend), np.sin(hd + bend)], -1)
    nb = np.stack([-ub[..., 1], ub[..., 0]], -1)
    nh = np.stack([-uh[..., 1], uh[..., 0]], -1)
    ph = rng.uniform(0, 2 * np.pi, M)
    c = np.stack([x, y], -1) + (jit * np.sin(2 * np.pi * 4.0 * t[:, None] + ph))[..., None] * ub \
        + (jit * 0.6 * np.cos(2 * np.pi * 6.3 * t[:, None] + ph))[..., None] * nb \
        + (thr * np.sin(2 * np.pi * 3.0 * t[:, None]))[..., None] * ub
    Lx = Ls[..., None]
    neck = c + 0.25 * Lx * ub
    tb = c - 0.5 * Lx * ub
    wag = 0.5 * np.sin(2 * np.pi * 0.7 * t[:, None] + ph)
    ut = np.stack([np.cos(hd + np.pi + wag), np.sin(hd + np.pi + wag)], -1)
    geo = {
        "nose": neck + 0.33 * Lx * uh, "head": neck + 0.2 * Lx * uh, "neck": neck, "body_center": c,
        "ear_left": neck + 0.08 * Lx * uh + 0.12 * Lx * nh, "ear_right": neck + 0.08 * Lx * uh - 0.12 * Lx * nh,
        "lateral_left": c + 0.2 * Lx * nb, "lateral_right": c - 0.2 * Lx * nb,
        "hip_left": c - 0.3 * Lx * ub + 0.17 * Lx * nb, "hip_right": c - 0.3 * Lx * ub - 0.17 * Lx * nb,
        "spine_1": c + 0.12 * Lx * ub, "spine_2": c - 0.25 * Lx * ub, "tail_base": tb,
        "tail_middle_1": tb + 0.3 * Lx * ut, "tail_midpoint": tb + 0.45 * Lx * ut,
        "tail_middle_2": tb + 0.6 * Lx * ut, "tail_tip": tb + 0.9 * Lx * ut,
    }
    for fb, a in (("front", 0.16), ("back", 0.08)):
        for lr, s in (("left", 1), ("right", -1)):
            for tb_, w in (("top", 0.05), ("bottom", 0.08)):
                geo[f"headpiece_{tb_}{fb}{lr}"] = neck + a * Lx * uh + s * w * Lx * nh
    return np.stack([geo[p] for p in parts], 2)


def video(row: pd.Series, vid: int, seconds: float, rng: np.random.Generator):
    """One video: tracking frame (pixels, faults added) and annotation frame."""
    fps, ppc = float(row["frames_per_second"]), float(row["pix_per_cm_approx"])
    parts = json.loads(row["body_parts_tracked"])
    traj, labels, L, _ = simulate(row, seconds, rng)
    K, M, _ = traj.shape
    T = int(seconds * fps)
    t = np.arange(T) / fps
    ks = t / DT
    traj[:, :, 2] = np.unwrap(traj[:, :, 2], axis=0)
    tf = np.array([[np.interp(ks, np.arange(K), traj[:, m, c]) for c in range(7)] for m in range(M)])
    tf = tf.transpose(2, 0, 1)  # (T, M, 7)
    kp = body(tf, L, t, parts, rng)  # (T, M, P, 2)
    P = len(parts)
    # tracker: white + AR(1) correlated noise (cm), outliers, identity swaps
    a = np.exp(-1.0 / max(fps * 0.3, 1.0))
    e = rng.normal(0, 0.35 * np.sqrt(1 - a * a), kp.shape)
    kp = kp + lfilter([1.0], [1.0, -a], e, axis=0) + rng.normal(0, rng.uniform(0.08, 0.25), kp.shape)
    out = rng.random((T, M, P)) < 0.002
    kp[out] += rng.normal(0, 10, (int(out.sum()), 2))
    for _ in range(rng.poisson(1.0 + 3.0 * (M > 2))):
        i, j = rng.choice(M, 2, replace=False)
        s = rng.integers(T)
        e_ = min(T, s + int(rng.uniform(0.3, 3.0) * fps))
        kp[s:e_, [i, j]] = kp[s:e_, [j, i]]
    keep = np.ones((T, M, P), bool)
    keep[rng.random(T) < 0.01] = False  # dropped frames
    for _ in range(rng.poisson(T / fps / 10)):  # missing part runs
        s = rng.integers(T)
        keep[s:s + int(rng.uniform(0.2, 4) * fps), rng.integers(M), rng.integers(P)] = False
    keep[:, :, rng.random(P) < 0.05] &= rng.random((T, M, 1)) < 0.4  # an unreliable part per lab-video
    f, m, p = np.nonzero(keep)
    xy = kp[f, m, p] * ppc
    trk = pd.DataFrame({"video_frame": f.astype(np.int64), "mouse_id": (m + 1).astype(np.int64),
                        "bodypart": np.array(parts)[p], "x": xy[:, 0].astype(np.float32),
                        "y": xy[:, 1].astype(np.float32)})
    ann = []
    lab = pd.DataFrame(labels, columns=["a", "t", "act", "k"]).sort_values(["a", "t", "act", "k"])
    for (ag, tg, act), g in lab.groupby(["a", "t", "act"]):
        k = g["k"].to_numpy()
        br = np.flatnonzero(np.diff(k) > 1)
        for s, e_ in zip(np.r_[k[0], k[br + 1]], np.r_[k[br], k[-1]]):
            ann.append((ag + 1, tg + 1, act, int(round(s * DT * fps)), min(T, int(round((e_ + 1) * DT * fps)))))
    ann = pd.DataFrame(ann, columns=["agent_id", "target_id", "action", "start_frame", "stop_frame"])
    ann = ann.astype({"agent_id": np.int8, "target_id": np.int8, "start_frame": np.int32, "stop_frame": np.int32})
    meta = row.copy()
    meta["video_id"], meta["video_duration_sec"] = vid, seconds
    return trk, ann, meta


def write(out: Path, seed: int, n_train: int = 30, n_test: int = 10, seconds: float = 120.0,
          meta: Path = META) -> tuple[Path, Path]:
    """Write ``out/data`` (train + test tracking, train labels) and ``out/solution`` (test labels as a train split)."""
    prof = profiles(meta)
    rng = np.random.default_rng(seed)
    d, sol = out / "data", out / "solution"
    [shutil.rmtree(p, ignore_errors=True) for p in (d, sol)]
    rows = {"train": [], "test": []}
    for i in range(n_train + n_test):
        split = "train" if i < n_train else "test"
        lab = LABS[i % len(LABS)]
        vid = int(rng.integers(10**8, 10**9))
        trk, ann, m = video(prof[lab], vid, seconds, np.random.default_rng([seed, i]))
        tdir = d / f"{split}_tracking" / lab
        adir = (d / "train_annotation" if split == "train" else sol / "train_annotation") / lab
        [p.mkdir(parents=True, exist_ok=True) for p in (tdir, adir)]
        trk.to_parquet(tdir / f"{vid}.parquet", index=False)
        ann.to_parquet(adir / f"{vid}.parquet", index=False)
        rows[split].append(m)
    pd.DataFrame(rows["train"]).to_csv(d / "train.csv", index=False)
    pd.DataFrame(rows["test"]).to_csv(d / "test.csv", index=False)
    pd.DataFrame(rows["test"]).to_csv(sol / "train.csv", index=False)
    return d, sol


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out", type=Path)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--meta", type=Path, default=META, help="real train.csv with the lab profiles")
    ap.add_argument("--seconds", type=float, default=120.0)
    args = ap.parse_args()
    d, sol = write(args.out, args.seed, seconds=args.seconds, meta=args.meta)
    print(f"{d}  {sol}")


if __name__ == "__main__":
    main()
