"""Pose files of other tools -> ``Pose`` (dense arrays in the file's own names).

DeepLabCut CSV (single-animal: header rows scorer / bodyparts / coords; multi-animal: scorer /
individuals / bodyparts / coords) and H5 (the same table in a pandas HDFStore), LightningPose CSV (the
DeepLabCut CSV layout), SLEAP analysis ``.h5`` (``tracks``, ``node_names``, ``track_names``), SLEAP
``.slp`` (through sleap-io) and NWB with ndx-pose (``PoseEstimation`` / ``PoseEstimationSeries``, through
pynwb). Readers only read: names stay as the file has them; mapping onto mabe's body parts and mice,
likelihood cut-offs and every check of the content happen in ``mabe.importer``.

Why not `movement` (which reads all of these): ``pip install movement`` pulls ~95 further packages
(opencv, numba/llvmlite, skia, Qt shims, cartopy, ...; 369 MB of wheels) for the few hundred lines of
reading mabe needs; pandas (already a dependency), h5py, PyTables (for DeepLabCut's pandas HDFStore),
pynwb + ndx-pose are the ``pose`` extra instead (measured in README, "Your own tracking").
"""

from __future__ import annotations

import csv
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from mabe.errors import MabeDataError, MabeError

FORMATS: tuple[str, ...] = ("auto", "dlc", "lightningpose", "sleap", "nwb")
METHOD: dict[str, str] = {"dlc": "DeepLabCut", "lightningpose": "LightningPose", "sleap": "SLEAP", "nwb": "NWB"}
SINGLE_ANIMAL = "animal"  # the individual's name in a single-animal file (no individuals in the file)
DLC_UNIQUE = "single"  # DeepLabCut multi-animal: the pseudo-individual of unique (non-animal) body parts


@dataclass
class Pose:
    """One video's pose as the file has it: names untouched, coordinates in px."""

    path: Path
    format: str  # key of FORMATS (never "auto")
    xy: np.ndarray  # float64 (T, N, K, 2) px, NaN where missing; row index == frame number
    likelihood: np.ndarray | None  # float64 (T, N, K) in [0, 1], or None if the file has no scores
    individuals: list[str]  # N names, in the file's order (mouse1 = the first)
    bodyparts: list[str]  # K names, in the file's order
    fps: float | None = None  # from the file, if it says
    frame_size: tuple[float, float] | None = None  # (width, height) px, if the file says
    ignored: str = ""  # what the reader left out on purpose (said in the import summary)

    @property
    def n_frames(self) -> int:
        return int(self.xy.shape[0])


def _need(module: str, path: Path, what: str):
    """Import an optional reader dependency or say which extra installs it."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError:
        pkg = {"tables": "tables", "h5py": "h5py", "pynwb": "pynwb ndx-pose", "ndx_pose": "ndx-pose",
               "sleap_io": "sleap-io"}[module]
        extra = "slp" if module == "sleap_io" else "pose"
        raise MabeError(f"{path}: reading {what} needs {pkg}: pip install 'mabe[{extra}]' (or pip install {pkg})") from None


# ----------------------------------------------------------------------------- format detection


def _csv_head(path: Path, n: int = 5) -> list[list[str]]:
    try:
        with open(path, newline="", encoding="utf-8") as f:
            return [row for _, row in zip(range(n), csv.reader(f))]
    except (OSError, UnicodeDecodeError, csv.Error) as err:
        raise MabeDataError(path, None, "a readable CSV", str(err)) from None


def _dlc_header_rows(path: Path) -> int | None:
    """3 (single-animal) or 4 (multi-animal) if the CSV starts with DeepLabCut's header rows, else None."""
    head = [r[0].strip().lower() if r else "" for r in _csv_head(path)]
    if head[:1] != ["scorer"]:
        return None
    if head[1:3] == ["bodyparts", "coords"]:
        return 3
    if head[1:4] == ["individuals", "bodyparts", "coords"]:
        return 4
    return None


def _h5_kind(path: Path) -> str | None:
    """'sleap' (analysis file), 'dlc' (pandas HDFStore), 'nwb', or None for another HDF5 file."""
    h5py = _need("h5py", path, "HDF5 files")
    try:
        with h5py.File(path, "r") as f:
            if "tracks" in f and "node_names" in f:
                return "sleap"
            if "nwb_version" in f.attrs or "general" in f and "acquisition" in f:
                return "nwb"
            if any("pandas_type" in f[k].attrs for k in f):
                return "dlc"
    except OSError:
        return None
    return None


def detect_format(path: Path) -> str:
    """The FORMATS key of a pose file, from its extension and content; MabeDataError if none fits."""
    suffix = path.suffix.lower()
    if not path.is_file():
        raise MabeDataError(path, None, "an existing pose file", "no such file")
    if suffix == ".csv":
        if _dlc_header_rows(path) is None:
            raise MabeDataError(path, "header", "a DeepLabCut / LightningPose CSV (first column: scorer, "
                                "[individuals,] bodyparts, coords)", f"first cells {_first_cells(path)}")
        return "dlc"
    if suffix == ".slp":
        return "sleap"
    if suffix in (".h5", ".hdf5", ".nwb"):
        kind = _h5_kind(path)
        if kind is None:
            raise MabeDataError(path, "format", "a SLEAP analysis .h5, a DeepLabCut .h5 or an NWB file",
                                "an HDF5 file that is none of these" if _is_hdf5(path) else "not an HDF5 file")
        return kind
    raise MabeDataError(path, "format", "a pose file ending .csv, .h5, .hdf5, .slp or .nwb", repr(path.suffix))


def _first_cells(path: Path) -> list[str]:
    return [r[0] if r else "" for r in _csv_head(path, 4)]


def _is_hdf5(path: Path) -> bool:
    with open(path, "rb") as f:
        return f.read(8) == b"\x89HDF\r\n\x1a\n"


# ----------------------------------------------------------------------------- DeepLabCut / LightningPose


def _dlc_frame(df: pd.DataFrame, path: Path, fmt: str) -> Pose:
    """A DeepLabCut table (columns (scorer, [individuals,] bodyparts, coords), index = frame) -> Pose."""
    cols = df.columns
    if not isinstance(cols, pd.MultiIndex) or cols.nlevels not in (3, 4):
        raise MabeDataError(path, "columns", "DeepLabCut columns (scorer, [individuals,] bodyparts, coords)",
                            f"{getattr(cols, 'nlevels', 1)} header level(s)")
    level = {n: i for i, n in enumerate(cols.names)} if all(cols.names) else {}
    multi = cols.nlevels == 4
    ind_l = level.get("individuals", 1) if multi else None
    bp_l = level.get("bodyparts", 2 if multi else 1)
    co_l = level.get("coords", cols.nlevels - 1)
    coords = {str(c) for c in cols.get_level_values(co_l)}
    if not {"x", "y"} <= coords or coords - {"x", "y", "likelihood"}:
        raise MabeDataError(path, "coords", "x, y (and likelihood) columns per body part", sorted(coords))
    inds_all = [str(i) for i in cols.get_level_values(ind_l)] if multi else [SINGLE_ANIMAL] * len(cols)
    parts_all = [str(b) for b in cols.get_level_values(bp_l)]
    coord_all = [str(c) for c in cols.get_level_values(co_l)]
    individuals = list(dict.fromkeys(i for i in inds_all if i != DLC_UNIQUE))
    ignored = ""
    if DLC_UNIQUE in inds_all:
        uniq = list(dict.fromkeys(b for i, b in zip(inds_all, parts_all) if i == DLC_UNIQUE))
        ignored = f"unique body parts of {DLC_UNIQUE!r} (not an animal): {', '.join(uniq)}"
    bodyparts = list(dict.fromkeys(b for i, b in zip(inds_all, parts_all) if i != DLC_UNIQUE))
    index = pd.to_numeric(pd.Series(df.index), errors="coerce")
    if index.isna().any() or (index % 1 != 0).any():
        bad = df.index[index.isna().to_numpy() | (index % 1 != 0).to_numpy()][:3].tolist()
        raise MabeDataError(path, "index", "frame numbers in the first column (a predictions file, not labelled "
                            "images)", f"{bad}")
    frames = index.to_numpy(np.int64)
    if len(frames) and frames.min() < 0:
        raise MabeDataError(path, "index", "frame numbers >= 0", int(frames.min()))
    if len(np.unique(frames)) != len(frames):
        raise MabeDataError(path, "index", "each frame once", "repeated frame numbers")
    T = int(frames.max()) + 1 if len(frames) else 0
    N, K = len(individuals), len(bodyparts)
    xy = np.full((T, N, K, 2), np.nan)
    has_lik = "likelihood" in coords
    lik = np.full((T, N, K), np.nan) if has_lik else None
    ii = {n: i for i, n in enumerate(individuals)}
    kk = {n: k for k, n in enumerate(bodyparts)}
    seen: set[tuple[str, str, str]] = set()
    values = df.apply(pd.to_numeric, errors="coerce").to_numpy(np.float64)
    for c, (ind, part, co) in enumerate(zip(inds_all, parts_all, coord_all)):  # a loop over columns, not frames
        if ind == DLC_UNIQUE or co not in ("x", "y", "likelihood"):
            continue
        if (ind, part, co) in seen:
            field = f"{ind}/{part}" if multi else part
            raise MabeDataError(path, field, "one column per individual, body part and coordinate",
                                f"{co!r} twice (two animals or body parts with one name)")
        seen.add((ind, part, co))
        if co == "likelihood":
            lik[frames, ii[ind], kk[part]] = values[:, c]
        else:
            xy[frames, ii[ind], kk[part], "xy".index(co)] = values[:, c]
    return Pose(path, fmt, xy, lik, individuals, bodyparts, ignored=ignored)


def read_dlc_csv(path: str | Path, fmt: str = "dlc") -> Pose:
    """DeepLabCut / LightningPose predictions CSV -> Pose."""
    path = Path(path)
    rows = _dlc_header_rows(path)
    if rows is None:
        raise MabeDataError(path, "header", "DeepLabCut CSV header rows (scorer, [individuals,] bodyparts, coords)",
                            f"first cells {_first_cells(path)}")
    # pandas renames repeated header columns ('x' -> 'x.1'), so repeats are looked for in the raw rows
    header = list(zip(*[r[1:] for r in _csv_head(path, rows)]))
    dup = sorted({h for h in header if header.count(h) > 1})
    if dup:
        fld = "individuals" if rows == 4 else "bodyparts"
        names = sorted({h[1] for h in dup})
        raise MabeDataError(path, fld, "one column per individual, body part and coordinate",
                            f"{names} repeated ({'two animals with one name' if rows == 4 else 'a body part twice'})")
    try:
        df = pd.read_csv(path, header=list(range(rows)), index_col=0)
    except (ValueError, pd.errors.ParserError) as err:
        raise MabeDataError(path, None, "a readable DeepLabCut CSV", str(err).strip()) from None
    df.columns = df.columns.set_names(["scorer", "individuals", "bodyparts", "coords"][4 - rows:])
    return _dlc_frame(df, path, fmt)


def read_dlc_h5(path: str | Path) -> Pose:
    """DeepLabCut predictions .h5 (a pandas HDFStore holding the same table as the CSV) -> Pose."""
    path = Path(path)
    _need("tables", path, "DeepLabCut .h5 files (a pandas HDFStore)")
    try:
        df = pd.read_hdf(path)
    except (ValueError, KeyError, OSError, TypeError) as err:
        raise MabeDataError(path, None, "a DeepLabCut .h5 holding one table", str(err).strip()) from None
    if not isinstance(df, pd.DataFrame):
        raise MabeDataError(path, None, "a DeepLabCut .h5 holding one table", type(df).__name__)
    return _dlc_frame(df, path, "dlc")


# ----------------------------------------------------------------------------- SLEAP


def _texts(values) -> list[str]:
    return [v.decode() if isinstance(v, bytes) else str(v) for v in np.asarray(values).ravel()]


def read_sleap_analysis(path: str | Path) -> Pose:
    """SLEAP analysis .h5 (``sleap-convert --format analysis``) -> Pose."""
    path = Path(path)
    h5py = _need("h5py", path, "SLEAP analysis files")
    with h5py.File(path, "r") as f:
        for key in ("tracks", "node_names"):
            if key not in f:
                raise MabeDataError(path, key, "a SLEAP analysis file with datasets tracks and node_names", "missing")
        tracks = f["tracks"][()].astype(np.float64)
        nodes = _texts(f["node_names"][()])
        names = _texts(f["track_names"][()]) if "track_names" in f else []
        scores = f["point_scores"][()].astype(np.float64) if "point_scores" in f else None
        dims = _texts(f["tracks"].attrs["dims"]) if "dims" in f["tracks"].attrs else None
    K = len(nodes)
    # The "matlab" layout (SLEAP's default) is (tracks, xy, nodes, frames); the other is its transpose.
    if tracks.ndim != 4:
        raise MabeDataError(path, "tracks", "a 4-d array (tracks, 2, nodes, frames)", f"shape {tracks.shape}")
    if dims is not None and dims[:2] == ["frames", "nodes"] or tracks.shape[1] != 2 and tracks.shape[2] == 2:
        tracks = tracks.transpose(3, 2, 1, 0)
        scores = scores.transpose(2, 1, 0) if scores is not None else None
    if tracks.shape[1] != 2 or tracks.shape[2] != K:
        raise MabeDataError(path, "tracks", f"shape (tracks, 2, {K} nodes, frames)", f"shape {tracks.shape}")
    N = tracks.shape[0]
    if not names:
        names = [f"track_{i}" for i in range(N)]
    if len(names) != N:
        raise MabeDataError(path, "track_names", f"{N} names (one per track)", len(names))
    xy = tracks.transpose(3, 0, 2, 1)  # (T, N, K, 2)
    lik = scores.transpose(2, 0, 1) if scores is not None and scores.shape == (N, K, xy.shape[0]) else None
    return Pose(path, "sleap", np.ascontiguousarray(xy), lik, names, nodes)


def read_slp(path: str | Path) -> Pose:
    """SLEAP project / predictions .slp (through sleap-io) -> Pose; one video per file."""
    path = Path(path)
    sio = _need("sleap_io", path, "SLEAP .slp files")
    try:
        labels = sio.load_slp(str(path))
    except Exception as err:  # sleap-io raises many types on a file that is not a .slp
        raise MabeDataError(path, None, "a SLEAP .slp file", f"{type(err).__name__}: {err}") from None
    if len(labels.videos) != 1:
        raise MabeDataError(path, "videos", "one video per .slp file", len(labels.videos))
    if len(labels.skeletons) != 1:
        raise MabeDataError(path, "skeletons", "one skeleton", len(labels.skeletons))
    arr = labels.numpy(return_confidence=True).astype(np.float64)  # (T, tracks, nodes, 3)
    names = [t.name for t in labels.tracks] or [f"track_{i}" for i in range(arr.shape[1])]
    fps = None
    return Pose(path, "sleap", np.ascontiguousarray(arr[..., :2]), np.ascontiguousarray(arr[..., 2]), names,
                list(labels.skeletons[0].node_names), fps)


# ----------------------------------------------------------------------------- NWB


def read_nwb(path: str | Path) -> Pose:
    """NWB file with ndx-pose: each PoseEstimation is one animal, its PoseEstimationSeries its body parts."""
    path = Path(path)
    pynwb = _need("pynwb", path, "NWB files")
    _need("ndx_pose", path, "NWB pose (ndx-pose)")
    try:
        io = pynwb.NWBHDF5IO(str(path), "r", load_namespaces=True)
        nwb = io.read()
    except Exception as err:  # hdmf / h5py raise many types on a file that is not NWB
        raise MabeDataError(path, None, "an NWB file", f"{type(err).__name__}: {err}") from None
    try:
        # HDF5 keeps no creation order that pynwb hands back: animals in natural name order (m2 before m10)
        estimations = sorted((o for o in nwb.objects.values() if type(o).__name__ == "PoseEstimation"),
                             key=lambda o: _natural(o.name))
        if not estimations:
            raise MabeDataError(path, "PoseEstimation", "at least one ndx-pose PoseEstimation", "none")
        individuals = [e.name for e in estimations]
        bodyparts = list(dict.fromkeys(s for e in estimations for s in e.pose_estimation_series))
        series = [[e.pose_estimation_series.get(b) for b in bodyparts] for e in estimations]
        T = max(len(s.data) for row in series for s in row if s is not None)
        xy = np.full((T, len(individuals), len(bodyparts), 2), np.nan)
        lik = np.full((T, len(individuals), len(bodyparts)), np.nan)
        rates: set[float] = set()
        for n, row in enumerate(series):
            for k, s in enumerate(row):
                if s is None:
                    continue
                d = np.asarray(s.data[:], dtype=np.float64)
                if d.ndim != 2 or d.shape[1] < 2:
                    raise MabeDataError(path, f"{individuals[n]}/{bodyparts[k]}", "data of shape (frames, 2|3)", d.shape)
                xy[: len(d), n, k] = d[:, :2]
                if s.confidence is not None:
                    lik[: len(d), n, k] = np.asarray(s.confidence[:], dtype=np.float64)
                rates.add(_series_rate(s))
        frame = None
        dims = getattr(estimations[0], "dimensions", None)
        if dims is not None and np.asarray(dims).size >= 2:
            w, h = np.asarray(dims[:], dtype=np.float64).reshape(-1, 2)[0]
            frame = (float(w), float(h))
    finally:
        io.close()
    rates.discard(float("nan"))
    fps = None
    good = [r for r in rates if np.isfinite(r) and r > 0]
    if len(good) > 1 and max(good) - min(good) > 1e-6 * max(good):
        raise MabeDataError(path, "rate", "one frame rate for every PoseEstimationSeries", sorted(good))
    if good:
        fps = good[0]
    return Pose(path, "nwb", xy, lik, individuals, bodyparts, fps, frame)


def _natural(name: str) -> list:
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", name)]


def _series_rate(s) -> float:
    if getattr(s, "rate", None):
        return float(s.rate)
    ts = getattr(s, "timestamps", None)
    if ts is not None and len(ts) > 1:
        d = np.diff(np.asarray(ts[:], dtype=np.float64))
        return float(1.0 / np.median(d)) if np.median(d) > 0 else float("nan")
    return float("nan")


# ----------------------------------------------------------------------------- entry point

_STEM_SUFFIX = re.compile(r"(DLC_.*|\.analysis|\.predictions.*|\.pose)$", re.IGNORECASE)


def video_name(path: Path) -> str:
    """A video's name from its pose file: the stem without the tool's suffix ('m1DLC_resnet50_x' -> 'm1')."""
    stem = path.name[: -len("".join(path.suffixes[-1:]))] if path.suffix else path.name
    for _ in range(3):  # 'v.predictions.analysis.h5' -> 'v'
        new = _STEM_SUFFIX.sub("", stem)
        if new == stem or not new:
            break
        stem = new
    return stem.strip()  # labels match names with their cells stripped


def read_pose(path: str | Path, fmt: str = "auto") -> Pose:
    """Any supported pose file -> Pose; ``fmt`` one of FORMATS. A file that is not ``fmt`` -> MabeDataError."""
    path = Path(path)
    if fmt not in FORMATS:
        raise MabeError(f"--format must be one of {', '.join(FORMATS)}, got {fmt!r}")
    found = detect_format(path)
    want = "dlc" if fmt == "lightningpose" else fmt
    if fmt != "auto" and found != want:
        raise MabeDataError(path, "format", f"a {METHOD[fmt]} file (--format {fmt})", f"a {METHOD[found]} file")
    suffix = path.suffix.lower()
    if found == "dlc":
        pose = read_dlc_csv(path, "lightningpose" if fmt == "lightningpose" else "dlc") if suffix == ".csv" \
            else read_dlc_h5(path)
    elif found == "sleap":
        pose = read_slp(path) if suffix == ".slp" else read_sleap_analysis(path)
    else:
        pose = read_nwb(path)
    return pose
