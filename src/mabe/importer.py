"""``mabe import``: a lab's own pose files (and labels) -> a MABe-layout folder every mabe command reads.

pose files --pose_io--> Pose (their names) --map body parts / mice, likelihood cut, checks--> per video:
``<split>_tracking/<lab>/<video_id>.parquet`` (data.TRACKING_COLUMNS, synth's schema), one row of
``<split>.csv`` (data.METADATA_COLUMNS), optional ``train_annotation/<lab>/<video_id>.parquet``, and
``import_sources.csv`` (video_id -> the video's name, source file, animals, body-part map) so outputs
can be named by video again. Everything is read and checked before the first byte is written: bad
input raises one MabeDataError naming the file and field, and leaves the folder as it was.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from mabe import data, label_io, pose_io
from mabe.errors import MabeDataError, MabeError
from mabe.io import atomic_path
from mabe.paths import safe_name, within
from mabe.synth import PARQUET_KW, TRACKING_SCHEMA, annotation_schema

SOURCES_FILE = "import_sources.csv"
SOURCES_COLUMNS: tuple[str, ...] = (
    "split", "lab_id", "video_id", "video_name", "source", "format", "individuals", "bodyparts", "fps", "n_frames")
SAFE_VIDEO = re.compile(r"^[^\x00-\x1f\x7f/\\]{1,200}$")  # names are matched and printed, never used as paths

# ----------------------------------------------------------------------------- body parts


def _norm(name: str) -> str:
    return re.sub(r"[^a-z0-9]", "", name.lower())


def _default_aliases() -> dict[str, str]:
    """Normalised name (lower case, letters and digits only) -> mabe body part, for common DLC / SLEAP names."""
    out = {_norm(p): p for p in data.BODYPARTS}
    for p in data.BODYPARTS:  # ear_left: leftear, lear, earl, ...
        for side in ("left", "right"):
            if p.endswith("_" + side) and not p.startswith("headpiece"):
                base = _norm(p[: -len(side) - 1])
                for alias in (side + base, side[0] + base, base + side[0]):
                    out.setdefault(alias, p)
    extra = {
        "snout": "nose", "nosetip": "nose", "headcenter": "head", "headcentre": "head", "neckbase": "neck",
        "centroid": "body_center", "center": "body_center", "centre": "body_center", "bodycentre": "body_center",
        "mid": "body_center", "midbody": "body_center", "body": "body_center", "spine": "body_center",
        "tailroot": "tail_base", "tailstart": "tail_base", "basetail": "tail_base", "tail": "tail_base",
        "tailend": "tail_tip", "tailtip": "tail_tip", "endtail": "tail_tip",
        "tailmid": "tail_midpoint", "midtail": "tail_midpoint", "tailmiddle": "tail_midpoint",
        "tailcenter": "tail_midpoint", "tailcentre": "tail_midpoint",
        "leftside": "lateral_left", "rightside": "lateral_right", "sideleft": "lateral_left",
        "sideright": "lateral_right", "leftflank": "lateral_left", "rightflank": "lateral_right",
    }
    out.update(extra)
    return out


DEFAULT_ALIASES: dict[str, str] = _default_aliases()


def load_bodypart_map(path: str | Path | None) -> dict[str, str | None]:
    """``--bodyparts MAP.yaml``: {their name: mabe body part, or null to leave it out}; validated."""
    if path is None:
        return {}
    import yaml

    path = Path(path)
    if not path.is_file():
        raise MabeDataError(path, None, "a body-part map (YAML: their name -> mabe name)", "no such file")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise MabeDataError(path, None, "valid YAML", str(err).splitlines()[0]) from None
    if not isinstance(raw, dict):
        raise MabeDataError(path, None, "a mapping their name -> mabe body part (or null)", type(raw).__name__)
    out: dict[str, str | None] = {}
    for k, v in raw.items():
        if v is not None and (not isinstance(v, str) or v not in data.BODYPART_SYNONYMS):
            raise MabeDataError(path, str(k), f"a mabe body part ({', '.join(data.BODYPARTS)}) or null", repr(v))
        out[str(k)] = v
    return out


def map_bodyparts(names: list[str], user: dict[str, str | None], where: Path) -> list[str | None]:
    """Their body-part names -> mabe names (None: left out on purpose); unknown or clashing -> MabeDataError."""
    normed_user = {_norm(k): v for k, v in user.items()}
    out: list[str | None] = []
    unknown = []
    for n in names:
        if n in user:
            out.append(user[n])
        elif _norm(n) in normed_user:
            out.append(normed_user[_norm(n)])
        elif _norm(n) in DEFAULT_ALIASES:
            out.append(DEFAULT_ALIASES[_norm(n)])
        else:
            out.append(None)
            unknown.append(n)
    if unknown:
        raise MabeDataError(where, "bodyparts", "body parts mabe knows, or a --bodyparts MAP.yaml naming them "
                            f"(their name: one of {', '.join(data.BODYPARTS)}, or null to leave it out)",
                            f"unknown {unknown}")
    taken: dict[str, str] = {}
    for n, m in zip(names, out):
        if m is not None and m in taken:
            raise MabeDataError(where, "bodyparts", "one body part per mabe name",
                                f"{taken[m]!r} and {n!r} both map to {m!r} (map one to null in --bodyparts)")
        if m is not None:
            taken[m] = n
    return out


# ----------------------------------------------------------------------------- one video


@dataclass
class ImportOptions:
    """What ``mabe import`` applies to every file (None: take it from the file, or fail naming the field)."""

    fmt: str = "auto"
    fps: float | None = None
    pix_per_cm: float | None = None
    lab: str = "lab"
    split: str = "train"
    bodyparts: dict[str, str | None] = field(default_factory=dict)
    min_likelihood: float | None = None
    frame_size: tuple[float, float] | None = None
    arena_cm: tuple[float, float] | None = None
    behaviours: list[str] | None = None  # behaviors_labeled actions; None: annotated ones (train), all 37 (test)


@dataclass
class Video:
    """One checked video, ready to write."""

    name: str
    source: Path
    method: str
    xy: np.ndarray  # float32 (T, N, K, 2) px, NaN missing
    parts: list[str]  # K mabe body-part names
    individuals: list[str]  # N names from the file; mouse n+1 = individuals[n]
    bodypart_map: dict[str, str | None]
    fps: float
    pix_per_cm: float
    frame_size: tuple[float, float]
    arena_cm: tuple[float, float]
    n_lowconf: int = 0
    ignored: str = ""
    video_id: int = 0


def _positive(value: float | None, where: Path, fld: str, hint: str) -> float:
    if value is None:
        raise MabeDataError(where, fld, f"a value; the file has none, so pass {hint}")
    if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
        raise MabeDataError(where, fld, "a finite number > 0", value)
    return float(value)


def convert(pose: pose_io.Pose, opt: ImportOptions) -> Video:
    """Pose in the file's names -> Video in mabe's (body parts mapped, low-confidence points missing, checked)."""
    where = pose.path
    name = pose_io.video_name(where)
    if not SAFE_VIDEO.match(name):
        raise MabeDataError(where, "video name", "a name without control characters or slashes", repr(name))
    N = len(pose.individuals)
    if N == 0 or pose.n_frames == 0:
        raise MabeDataError(where, "tracks", "at least one animal and one frame", f"{N} animals, {pose.n_frames} frames")
    if N > data.MAX_MICE:
        raise MabeDataError(where, "individuals", f"at most {data.MAX_MICE} animals", f"{N}: {pose.individuals}")
    dup = sorted({i for i in pose.individuals if pose.individuals.count(i) > 1})
    if dup:
        raise MabeDataError(where, "individuals", "one name per animal", f"two or more animals named {dup}")
    mapped = map_bodyparts(pose.bodyparts, opt.bodyparts, where)
    keep = [k for k, m in enumerate(mapped) if m is not None]
    if not keep:
        raise MabeDataError(where, "bodyparts", "at least one body part kept", "every body part mapped to null")
    xy = pose.xy[:, :, keep]
    n_low = 0
    if opt.min_likelihood is not None:
        if pose.likelihood is None:
            raise MabeDataError(where, "likelihood", "confidence scores for --min-likelihood", "none in the file")
        low = pose.likelihood[:, :, keep] < opt.min_likelihood  # NaN scores compare False: kept
        n_low = int(np.count_nonzero(low & np.isfinite(xy).all(-1)))
        xy = np.where(low[..., None], np.nan, xy)
    ok = np.isfinite(xy).all(-1)
    xy = np.where(ok[..., None], xy, np.nan)  # a point is missing as a whole
    empty = [pose.individuals[n] for n in range(N) if not ok[:, n].any()]
    if empty:
        why = f" after --min-likelihood {opt.min_likelihood}" if opt.min_likelihood is not None else ""
        raise MabeDataError(where, "individuals", "at least one tracked point per animal",
                            f"no finite point{why} for {empty}")
    fps = _positive(opt.fps if opt.fps is not None else pose.fps, where, "fps", "--fps")
    ppc = _positive(opt.pix_per_cm, where, "pix_per_cm", "--pix-per-cm")
    frame = opt.frame_size or pose.frame_size
    if frame is None:  # no size known: the tracked extent, so arena-centred features stay sensible
        hi = np.nanmax(xy.reshape(-1, 2), axis=0)
        frame = (float(max(1.0, math.ceil(hi[0]) + 1)), float(max(1.0, math.ceil(hi[1]) + 1)))
    arena = opt.arena_cm or (frame[0] / ppc, frame[1] / ppc)
    xy32 = xy.astype(np.float32)
    if not np.isfinite(xy32[ok]).all():
        raise MabeDataError(where, "x, y", "coordinates that fit float32 (px)", "values beyond 3.4e38")
    bmap = {their: m for their, m in zip(pose.bodyparts, mapped)}
    return Video(name, where, pose_io.METHOD[pose.format], xy32, [mapped[k] for k in keep], list(pose.individuals),
                 bmap, fps, ppc, frame, arena, n_low, pose.ignored)


# ----------------------------------------------------------------------------- labels


def resolve_labels(labels: pd.DataFrame, videos: list[Video]) -> dict[str, pd.DataFrame]:
    """Label table (label_io.LABEL_COLUMNS) -> {video name: annotation frame (data.ANNOTATION_COLUMNS)}.

    Videos are matched by name; agent / target by the file's animal names or ``mouseN``; an empty or
    ``self`` target is the agent; a pair behaviour with no target in a two-animal video is the other one.
    """
    by_name = {v.name: v for v in videos}
    out: dict[str, list] = {}
    for r in labels.itertuples(index=False):
        where = f"{r.source} (row {r.row})"
        v = by_name.get(r.video)
        if v is None:
            raise MabeDataError(where, "video", f"one of the imported videos ({', '.join(sorted(by_name))})", repr(r.video))
        if r.behaviour not in data.ACTION_INDEX:
            raise MabeDataError(where, "behaviour", "one of the 37 MABe actions (" + ", ".join(data.ACTIONS) + ")",
                                repr(r.behaviour))
        agent = _animal(r.agent, v, where, "agent")
        self_action = r.behaviour in data.SELF_ACTIONS
        if r.target in ("", "self", None) or self_action:
            if not self_action and r.target in ("", None) and len(v.individuals) == 2:
                target = 3 - agent
            elif not self_action:
                raise MabeDataError(where, "target", f"the other animal of pair behaviour {r.behaviour!r}", repr(r.target))
            else:
                target = agent
                if r.target not in ("", "self", None) and _animal(r.target, v, where, "target") != agent:
                    raise MabeDataError(where, "target", f"no target (or self) for self behaviour {r.behaviour!r}",
                                        repr(r.target))
        else:
            target = _animal(r.target, v, where, "target")
            if target == agent:
                raise MabeDataError(where, "target", f"another animal than the agent for {r.behaviour!r}", repr(r.target))
        scale = v.fps if r.unit == "seconds" else 1.0
        start, stop = round(r.start * scale), round(r.stop * scale)
        T = v.xy.shape[0]
        if r.unit == "frames" and (r.start % 1 or r.stop % 1):
            raise MabeDataError(where, "start_frame, stop_frame", "whole frame numbers", f"{r.start}, {r.stop}")
        if not 0 <= start < stop <= T:
            raise MabeDataError(where, "start, stop", f"0 <= start < stop <= {T} frames (stop exclusive; "
                                f"{T / v.fps:.2f} s at {v.fps:g} fps)", f"{r.start}..{r.stop} {r.unit}")
        out.setdefault(v.name, []).append((agent, target, r.behaviour, start, stop))
    return {name: pd.DataFrame(rows, columns=list(data.ANNOTATION_COLUMNS)).sort_values(["start_frame", "agent_id"])
            .reset_index(drop=True) for name, rows in out.items()}


def _animal(token: str, v: Video, where: str, fld: str) -> int:
    """An animal's name in the pose file, or mouseN -> 1-based mouse id."""
    if token in v.individuals:
        return v.individuals.index(token) + 1
    m = re.fullmatch(r"mouse([1-4])", token or "")
    if m and int(m.group(1)) <= len(v.individuals):
        return int(m.group(1))
    raise MabeDataError(where, fld, f"an animal of video {v.name} ({', '.join(v.individuals)} or mouse1.."
                        f"mouse{len(v.individuals)})", repr(token))


def labeled_triples(v: Video, actions: set[str]) -> list[str]:
    """behaviors_labeled of a labelled video: every action the lab annotates, for every mouse / ordered pair."""
    n = len(v.individuals)
    out = []
    for a in sorted(actions):
        if a in data.SELF_ACTIONS:
            out += [f"mouse{m},self,{a}" for m in range(1, n + 1)]
        else:
            out += [f"mouse{m},mouse{t},{a}" for m in range(1, n + 1) for t in range(1, n + 1) if m != t]
    return out


# ----------------------------------------------------------------------------- writing


def _tracking_table(xy: np.ndarray, parts: list[str]) -> pa.Table:
    """(T, N, K, 2) float32 -> long rows of the tracked points (frame, mouse, part order); the last frame is
    always written (NaN if untracked) so that the reader's T = max(video_frame) + 1 is the video's length."""
    T, N, K, _ = xy.shape
    ok = np.isfinite(xy[..., 0])
    ok[-1] = True
    t, n, k = np.nonzero(ok)
    pts = xy[t, n, k]
    dictionary = pa.array(parts, type=pa.large_string())
    return pa.Table.from_arrays([
        pa.array(t.astype(np.int64)), pa.array((n + 1).astype(np.int64)),
        pa.DictionaryArray.from_arrays(pa.array(k.astype(np.int32)), dictionary).cast(pa.large_string()),
        pa.array(pts[:, 0]), pa.array(pts[:, 1]),
    ], schema=TRACKING_SCHEMA)


def _metadata_row(v: Video, lab: str, triples: list[str] | None) -> dict:
    row: dict = {c: None for c in data.METADATA_COLUMNS}
    for m in range(1, len(v.individuals) + 1):
        row[f"mouse{m}_id"] = float(m)  # a filled block is what counts a mouse (data._n_mice); names: SOURCES_FILE
    row.update({
        "lab_id": lab, "video_id": v.video_id, "frames_per_second": v.fps,
        "video_duration_sec": v.xy.shape[0] / v.fps, "pix_per_cm_approx": v.pix_per_cm,
        "video_width_pix": int(math.ceil(v.frame_size[0])), "video_height_pix": int(math.ceil(v.frame_size[1])),
        "arena_width_cm": v.arena_cm[0], "arena_height_cm": v.arena_cm[1],
        "body_parts_tracked": json.dumps(v.parts),
        "behaviors_labeled": json.dumps(triples) if triples else None, "tracking_method": v.method,
    })
    return row


def _atomic_csv(df: pd.DataFrame, path: Path) -> None:
    with atomic_path(path) as tmp:
        df.to_csv(tmp, index=False, lineterminator="\n")


def _existing(out: Path) -> tuple[dict[str, pd.DataFrame], pd.DataFrame]:
    metas = {s: pd.read_csv(out / f"{s}.csv") for s in ("train", "test") if (out / f"{s}.csv").is_file()}
    for s, m in metas.items():  # adding to a folder: it must already be MABe metadata
        missing = [c for c in data.METADATA_COLUMNS if c not in m.columns]
        if missing:
            raise MabeDataError(out / f"{s}.csv", "columns", "MABe metadata columns (to add videos to it)",
                                f"missing {missing[:5]}{' ...' if len(missing) > 5 else ''}")
    src = out / SOURCES_FILE
    sources = pd.read_csv(src) if src.is_file() else pd.DataFrame(columns=list(SOURCES_COLUMNS))
    return metas, sources


def import_videos(paths: list[str | Path], out: str | Path, opt: ImportOptions,
                  annotations: list[str | Path] | None = None) -> list[Video]:
    """Read, map and check every pose (and label) file, then write them into ``out`` (created, or added to)."""
    from tqdm.auto import tqdm

    out = Path(out)
    safe_name(opt.lab, "mabe import --lab", "lab_id")  # it becomes a folder name
    if opt.split not in ("train", "test"):
        raise MabeError(f"--split must be train or test, got {opt.split!r}")
    if annotations and opt.split != "train":
        raise MabeError("--annotations are labels for training: use --split train")
    if not paths:
        raise MabeError("no pose file given")
    videos: list[Video] = []
    for p in tqdm(paths, desc="import", unit="file", disable=len(paths) < 4):
        videos.append(convert(pose_io.read_pose(p, opt.fmt), opt))
    seen: dict[str, Path] = {}
    for v in videos:
        if v.name in seen:
            raise MabeDataError(v.source, "video name", "one pose file per video",
                                f"{v.name!r} again (also {seen[v.name]})")
        seen[v.name] = v.source
    metas, sources = _existing(out)
    clash = sorted(set(sources.loc[sources["lab_id"].astype(str) == opt.lab, "video_name"].astype(str)) & set(seen))
    if clash:
        raise MabeDataError(out / SOURCES_FILE, "video_name", f"videos not imported into lab {opt.lab} before",
                            f"already there: {clash}")
    ann: dict[str, pd.DataFrame] = {}
    actions: set[str] = set(data.ACTIONS) if opt.split == "test" else set()
    if annotations:
        tables = [label_io.read_labels(a) for a in annotations]
        labels = pd.concat(tables, ignore_index=True)
        ann = resolve_labels(labels, videos)
        actions = set(labels["behaviour"])
    if opt.behaviours is not None:
        unknown = sorted(set(opt.behaviours) - set(data.ACTIONS))
        if unknown:
            raise MabeError(f"--behaviours: {unknown} are not MABe actions ({', '.join(data.ACTIONS)})")
        missing = sorted(actions - set(opt.behaviours)) if annotations else []
        if missing:
            raise MabeError(f"--behaviours leaves out annotated behaviour(s) {missing}")
        actions = set(opt.behaviours)
    # test videos: the behaviours to predict; train videos: labelled only where the labels name the video
    triples = {v.name: labeled_triples(v, actions) if opt.split == "test" or v.name in ann else None for v in videos}
    taken = {int(i) for m in metas.values() for i in m["video_id"]}
    for v in videos:
        v.video_id = content_id(v, opt.lab, ann.get(v.name), triples[v.name])
        if v.video_id in taken:
            raise MabeDataError(v.source, "video_id", f"a video not in {out} yet",
                                f"the same tracking, settings and labels are there as video_id {v.video_id}")
        taken.add(v.video_id)
    # ----- everything is checked: write
    tdir = within(out, out / f"{opt.split}_tracking" / opt.lab)
    tdir.mkdir(parents=True, exist_ok=True)
    for v in videos:
        with atomic_path(tdir / f"{v.video_id}.parquet") as tmp:
            pq.write_table(_tracking_table(v.xy, v.parts), tmp, **PARQUET_KW)
    if ann:
        adir = within(out, out / "train_annotation" / opt.lab)
        adir.mkdir(parents=True, exist_ok=True)
        for v in videos:
            if v.name in ann:
                df = ann[v.name]
                schema = annotation_schema(int(df["stop_frame"].max()) if len(df) else 0)
                tab = pa.Table.from_pandas(df, schema=schema, preserve_index=False)
                pq.write_table(tab, adir / f"{v.video_id}.parquet", **PARQUET_KW)
    rows = [_metadata_row(v, opt.lab, triples[v.name]) for v in videos]
    new = pd.DataFrame(rows, columns=list(data.METADATA_COLUMNS))
    for split in ("train", "test"):
        if split != opt.split and split in metas:
            continue
        old = metas.get(split)
        table = new if split == opt.split else new.iloc[:0]
        if old is not None and split == opt.split:
            table = pd.concat([old[list(data.METADATA_COLUMNS)], new], ignore_index=True)
        _atomic_csv(table, out / f"{split}.csv")  # an empty other split: every command finds both csvs
    src_rows = pd.DataFrame([{
        "split": opt.split, "lab_id": opt.lab, "video_id": v.video_id, "video_name": v.name, "source": str(v.source),
        "format": v.method, "individuals": json.dumps(v.individuals), "bodyparts": json.dumps(v.bodypart_map),
        "fps": v.fps, "n_frames": v.xy.shape[0]} for v in videos], columns=list(SOURCES_COLUMNS))
    _atomic_csv(pd.concat([sources, src_rows], ignore_index=True) if len(sources) else src_rows, out / SOURCES_FILE)
    return videos


def content_id(v: Video, lab: str, ann: pd.DataFrame | None, triples: list[str] | None) -> int:
    """A 10-digit video_id from everything the feature cache derives from the video (tracking, body parts,
    fps, scale, frame and arena size, labels, labelled triples) and its lab.

    Why not 1, 2, 3: the cache (prepare.py) keys videos by (lab_id, video_id) alone, so two imported
    folders numbering their videos alike would silently share each other's features. With content ids a
    shared cache entry is the same video with the same settings, i.e. correct to reuse."""
    import hashlib

    h = hashlib.sha1()
    h.update(json.dumps([lab, v.parts, v.fps, v.pix_per_cm, list(v.frame_size), list(v.arena_cm), triples]).encode())
    h.update(np.ascontiguousarray(v.xy).tobytes())
    h.update(str(v.xy.shape).encode())
    if ann is not None:
        h.update(ann.to_csv(index=False).encode())
    return 1_000_000_000 + int(h.hexdigest()[:12], 16) % 9_000_000_000


def video_names(root: str | Path) -> dict[tuple[str, int], str]:
    """(lab_id, video_id) -> the video's name, from ``import_sources.csv`` ({} for a Kaggle folder)."""
    path = Path(root) / SOURCES_FILE
    if not path.is_file():
        return {}
    df = pd.read_csv(path)
    return {(str(a), int(b)): str(c) for a, b, c in zip(df["lab_id"], df["video_id"], df["video_name"])}


def _pair(text: str | None, what: str) -> tuple[float, float] | None:
    if text is None:
        return None
    m = re.fullmatch(r"\s*([0-9.]+)\s*[xX,]\s*([0-9.]+)\s*", text)
    if not m or not all(float(g) > 0 for g in m.groups()):
        raise MabeError(f"{what} must be WIDTHxHEIGHT with positive numbers, e.g. 1280x1024, got {text!r}")
    return float(m.group(1)), float(m.group(2))


def main_from_args(args) -> list[Video]:
    """``mabe import POSE... --out DATA [options]``: import, then print one line per video."""
    opt = ImportOptions(
        fmt=args.format, fps=args.fps, pix_per_cm=args.pix_per_cm, lab=args.lab, split=args.split,
        bodyparts=load_bodypart_map(args.bodyparts), min_likelihood=args.min_likelihood,
        frame_size=_pair(args.frame_size, "--frame-size"), arena_cm=_pair(args.arena_cm, "--arena-cm"),
        behaviours=[b.strip() for b in args.behaviours.split(",") if b.strip()] if args.behaviours else None,
    )
    videos = import_videos(args.pose, args.out, opt, args.annotations)
    for v in videos:
        low = f", {v.n_lowconf:,} points below --min-likelihood set missing" if v.n_lowconf else ""
        print(f"{v.source} -> {args.out}/{opt.split}_tracking/{opt.lab}/{v.video_id}.parquet: {v.name}, "
              f"{v.method}, {v.xy.shape[0]:,} frames at {v.fps:g} fps, {len(v.individuals)} animals "
              f"({', '.join(v.individuals)}), {len(v.parts)} body parts{low}")
        if v.ignored:
            print(f"  not imported: {v.ignored}")
    n_lab = sum(1 for _ in (Path(args.out) / "train_annotation" / opt.lab).glob("*.parquet")) if args.annotations else 0
    print(f"{len(videos)} video(s) -> {args.out} ({opt.split}.csv, lab {opt.lab}"
          + (f", {n_lab} annotated" if args.annotations else "") + f"); names in {SOURCES_FILE}")
    return videos
