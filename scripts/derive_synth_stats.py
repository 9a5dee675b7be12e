"""Derive the synthetic generator's statistics from the real MABe 2025 metadata and annotations.

Reads ``train.csv`` and ``train_annotation/<lab>/<video>.parquet`` of a real MABe-layout folder and
writes ``src/mabe/synth_stats.json``: per-lab recording setups, body-part sets, mice per video,
labelled-triple patterns, mouse metadata styles and per-action interval rates and lengths. Only
aggregates are written (value counts, quantiles, log-normal fits), never rows of the real files.

    python scripts/derive_synth_stats.py [--data ../shared/data/mabe2025] [--out src/mabe/synth_stats.json]
"""

from __future__ import annotations

import argparse
import collections
import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATA = ROOT.parent / "shared" / "data" / "mabe2025"
DEFAULT_OUT = ROOT / "src" / "mabe" / "synth_stats.json"
MOUSE_FIELDS = ("strain", "color", "sex", "id", "age", "condition")
SETUP_FIELDS = (
    "frames_per_second", "pix_per_cm_approx", "arena_width_cm", "arena_height_cm", "arena_shape",
    "arena_type", "tracking_method",
)
QUANTILES = (0.05, 0.25, 0.5, 0.75, 0.95)


def _clean(v):
    """A JSON-friendly scalar: NaN -> None, numpy -> python."""
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return None
    if isinstance(v, np.generic):
        return v.item()
    return v


def parse_triple(s: str) -> tuple[int, int | str, str] | None:
    """``"mouse1,mouse2,sniff"`` -> ``(1, 2, "sniff")``; ``self`` target kept as ``"self"``.

    Tolerates the stray single quotes of a few real rows (``"mouse1','mouse2','attack'"``).
    """
    parts = [p.strip().strip("'\"") for p in s.split(",")]
    if len(parts) != 3 or not parts[0].startswith("mouse"):
        return None
    agent = int(parts[0][5:])
    target: int | str = "self" if parts[1] == "self" else int(parts[1][5:])
    return agent, target, parts[2]


def n_mice_of(row: pd.Series, triples: list) -> int:
    """Mice in a video: the highest mouse slot with metadata or named in behaviors_labeled."""
    n = 0
    for i in range(1, 5):
        if any(pd.notna(row[f"mouse{i}_{f}"]) for f in MOUSE_FIELDS):
            n = i
    for a, t, _ in triples:
        n = max(n, a, t if isinstance(t, int) else 0)
    return max(n, 1)


def lognormal_fit(x: np.ndarray) -> dict:
    x = x[x > 0]
    if len(x) == 0:
        return {"n": 0}
    lx = np.log(x)
    return {
        "n": int(len(x)),
        "log_mean": round(float(lx.mean()), 4),
        "log_std": round(float(lx.std()), 4),
        "quantiles": [round(float(q), 3) for q in np.quantile(x, QUANTILES)],
    }


def derive(data: Path) -> dict:
    meta = pd.read_csv(data / "train.csv")
    ann_dir = data / "train_annotation"
    stats: dict = {
        "source": "aggregates of the real MABe 2025 train.csv + train_annotation (scripts/derive_synth_stats.py)",
        "columns": list(meta.columns),
        "csv_dtypes": {c: str(meta[c].dtype) for c in meta.columns},
        "quantiles": list(QUANTILES),
        "labs": {},
    }
    for lab, g in meta.groupby("lab_id", sort=True):
        lab_stats: dict = {"n_videos": int(len(g))}
        # recording setups: joint value counts (fps and px/cm go together in some labs)
        setups: dict = collections.OrderedDict()
        for _, r in g.iterrows():
            key = tuple(_clean(r[f]) for f in SETUP_FIELDS)
            s = setups.setdefault(key, {"n": 0, "frames": collections.Counter()})
            s["n"] += 1
            s["frames"][(int(r["video_width_pix"]), int(r["video_height_pix"]))] += 1
        lab_stats["setups"] = [
            dict(zip(SETUP_FIELDS, k), n=v["n"], video_wh=[[w, h, c] for (w, h), c in v["frames"].most_common(6)])
            for k, v in sorted(setups.items(), key=lambda kv: -kv[1]["n"])
        ]
        dur = g["video_duration_sec"].to_numpy(float)
        lab_stats["duration_sec"] = {
            "min": round(float(dur.min()), 2), "max": round(float(dur.max()), 2),
            "quantiles": [round(float(q), 2) for q in np.quantile(dur, QUANTILES)],
        }
        bp = collections.Counter(json.dumps(json.loads(s)) for s in g["body_parts_tracked"])
        lab_stats["body_parts"] = [{"n": c, "parts": json.loads(k)} for k, c in bp.most_common()]
        # mouse metadata style: per video the tuple of non-id fields of every mouse slot
        styles: collections.Counter = collections.Counter()
        ids: list[float] = []
        patterns: collections.Counter = collections.Counter()
        n_mice = collections.Counter()
        labeled_minutes: collections.Counter = collections.Counter()  # action -> labelled pair-minutes
        labeled_videos: collections.Counter = collections.Counter()
        per_action_len: dict[str, list[np.ndarray]] = collections.defaultdict(list)
        per_action_count: collections.Counter = collections.Counter()
        frames_total = 0.0
        for _, r in g.iterrows():
            bl = r["behaviors_labeled"]
            triples = []
            if isinstance(bl, str):
                triples = [t for t in (parse_triple(s) for s in json.loads(bl)) if t is not None]
            nm = n_mice_of(r, triples)
            n_mice[nm] += 1
            style = tuple(
                tuple(_clean(r[f"mouse{i}_{f}"]) for f in MOUSE_FIELDS if f != "id") for i in range(1, nm + 1)
            )
            styles[json.dumps(style)] += 1
            ids += [float(r[f"mouse{i}_id"]) for i in range(1, 5) if pd.notna(r[f"mouse{i}_id"])]
            uniq = sorted(set(triples), key=lambda t: (t[0], str(t[1]), t[2]))
            patterns[json.dumps([f"{a},{t},{act}" for a, t, act in uniq])] += 1
            minutes = float(r["video_duration_sec"]) / 60.0
            fps = float(r["frames_per_second"])
            frames_total += float(r["video_duration_sec"]) * fps
            for _, _, act in uniq:
                labeled_minutes[act] += minutes
            for act in {t[2] for t in uniq}:
                labeled_videos[act] += 1
            f = ann_dir / str(lab) / f"{int(r['video_id'])}.parquet"
            if not f.is_file():
                continue
            ann = pq.read_table(f).to_pandas()
            ann = ann[ann["stop_frame"] > ann["start_frame"]]
            for act, a in ann.groupby("action"):
                per_action_count[act] += len(a)
                per_action_len[act].append((a["stop_frame"] - a["start_frame"]).to_numpy(float) / fps)
        lab_stats["n_mice"] = {str(k): v for k, v in sorted(n_mice.items())}
        lab_stats["mouse_styles"] = [{"n": c, "mice": json.loads(k)} for k, c in styles.most_common(8)]
        lab_stats["mouse_id_range"] = [min(ids), max(ids)] if ids else None
        lab_stats["patterns"] = [{"n": c, "triples": json.loads(k)} for k, c in patterns.most_common()]
        lab_stats["frames_total"] = int(round(frames_total))
        actions = {}
        for act in sorted(set(labeled_minutes) | set(per_action_count)):
            lens = np.concatenate(per_action_len[act]) if per_action_len[act] else np.zeros(0)
            m = labeled_minutes.get(act, 0.0)
            actions[act] = {
                "intervals": int(per_action_count.get(act, 0)),
                "videos_labeled": int(labeled_videos.get(act, 0)),
                "per_pair_minute": round(per_action_count.get(act, 0) / m, 4) if m > 0 else 0.0,
                "length_sec": lognormal_fit(lens),
            }
        lab_stats["actions"] = actions
        stats["labs"][str(lab)] = lab_stats
    return stats


def to_json(stats: dict) -> str:
    """Compact JSON, one top-level key (and one lab) per line: small and still diffable."""
    def dump(v) -> str:
        return json.dumps(v, separators=(",", ":"), ensure_ascii=True)

    lines = [f" {dump(k)}:{dump(v)}" for k, v in stats.items() if k != "labs"]
    labs = ",\n".join(f"  {dump(k)}:{dump(v)}" for k, v in stats["labs"].items())
    lines.append(f' "labs":{{\n{labs}\n }}')
    return "{\n" + ",\n".join(lines) + "\n}\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA)
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = ap.parse_args()
    stats = derive(args.data)
    text = to_json(stats)
    args.out.write_text(text)
    print(f"wrote {args.out} ({len(text) / 1024:.1f} KB, {len(stats['labs'])} labs)")


if __name__ == "__main__":
    main()
