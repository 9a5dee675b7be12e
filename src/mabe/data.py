"""Read and validate the MABe layout: metadata csv, long-format tracking parquet, annotation parquet."""

from __future__ import annotations

import json
import math
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from mabe import paths
from mabe.errors import MabeDataError
from mabe.schema import (  # noqa: F401 - re-exported: data.ACTIONS etc. are public
    ACTION_INDEX,
    ACTIONS,
    ANNOTATION_COLUMNS,
    BODYPART_SYNONYMS,
    BODYPARTS,
    DEFAULT_SLOTS,
    HEADPIECE_PARTS,
    MAX_FRAMES,
    MAX_MICE,
    METADATA_COLUMNS,
    MOUSE_FIELDS,
    NUMERIC_COLUMNS,
    PAIR_ACTIONS,
    POSITIVE_COLUMNS,
    SELF_ACTIONS,
    TRACKING_COLUMNS,
)

# the vocabulary (actions, body parts, slots, columns) lives in mabe.schema; re-exported here


class MabeDataWarning(UserWarning):
    """A known quirk of the data that the reader copes with (counted, never silently dropped)."""


def _warn(message: str) -> None:
    warnings.warn(message, MabeDataWarning, stacklevel=3)


def _some(items, limit: int = 10) -> str:
    """Up to ``limit`` items, comma-joined, with a '(+N more)' tail."""
    items = list(items)
    text = ", ".join(str(i) for i in items[:limit])
    return text + (f" (+{len(items) - limit} more)" if len(items) > limit else "")


# ----------------------------------------------------------------------------- metadata


def _is_blank(text: object) -> bool:
    if text is None:
        return True
    if isinstance(text, float):
        return math.isnan(text)
    return isinstance(text, str) and text.strip() in ("", "[]")


def _mouse(token: str, where: str, item: str) -> int:
    """'mouse3' -> 3, else MabeDataError."""
    if token.startswith("mouse") and token[5:].isdigit() and 1 <= int(token[5:]) <= MAX_MICE:
        return int(token[5:])
    raise MabeDataError(where, "behaviors_labeled", f"mouse ids mouse1..mouse{MAX_MICE}", f"{token!r} in {item!r}")


def parse_behaviors(text: object, where: str = "behaviors_labeled") -> list[tuple[int, int, str]]:
    """JSON list of "mouseA,mouseB,action" / "mouseA,self,action" -> [(agent, target, action)]; self -> target == agent."""
    if _is_blank(text):
        return []
    try:
        items = json.loads(text)  # type: ignore[arg-type]
    except (TypeError, ValueError) as err:
        raise MabeDataError(where, "behaviors_labeled", "a JSON list of strings", f"{str(text)[:60]!r} ({err})") from None
    if not isinstance(items, list) or not all(isinstance(i, str) for i in items):
        raise MabeDataError(where, "behaviors_labeled", "a JSON list of strings", f"{str(text)[:60]!r}")
    out: dict[tuple[int, int, str], None] = {}  # ordered set: the quirk below can repeat a triple
    for item in items:
        # Real quirk (DeliriousFly, ReflectiveManatee): items like "mouse1','mouse2','attack'".
        parts = item.replace("'", "").replace(" ", "").split(",")
        if len(parts) != 3:
            raise MabeDataError(where, "behaviors_labeled", "items 'mouseA,mouseB,action'", repr(item))
        agent = _mouse(parts[0], where, item)
        target = agent if parts[1] == "self" else _mouse(parts[1], where, item)
        if parts[2] not in ACTION_INDEX:
            raise MabeDataError(where, "behaviors_labeled", "one of the 37 MABe actions", f"{parts[2]!r} in {item!r}")
        out[(agent, target, parts[2])] = None
    return list(out)


def _parse_body_parts(text: object, where: str) -> list[str]:
    """JSON list of body-part names -> list[str], each one of BODYPARTS."""
    try:
        parts = json.loads(text)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        parts = None
    if not isinstance(parts, list) or not parts or not all(isinstance(p, str) for p in parts):
        raise MabeDataError(where, "body_parts_tracked", "a non-empty JSON list of body-part names", repr(text))
    unknown = [p for p in parts if p not in BODYPART_SYNONYMS]
    if unknown:
        raise MabeDataError(where, "body_parts_tracked", "names from data.BODYPARTS", f"unknown {unknown}")
    return parts


def _check_columns(df: pd.DataFrame, csv: Path) -> None:
    missing = [c for c in METADATA_COLUMNS if c not in df.columns]
    if missing:
        raise MabeDataError(csv, "columns", f"the {len(METADATA_COLUMNS)} MABe metadata columns", f"missing {missing}")
    if df["lab_id"].isna().any():
        rows = np.flatnonzero(df["lab_id"].isna().to_numpy())
        raise MabeDataError(csv, "lab_id", "a lab id on every row", f"empty on csv rows {_some(rows + 2)}")
    unsafe = ~df["lab_id"].map(paths.is_safe_name).to_numpy(dtype=bool)  # lab ids become folder names
    if unsafe.any():
        rows = np.flatnonzero(unsafe)
        raise MabeDataError(csv, "lab_id", paths.NAME_RULE, f"{_some(repr(v) for v in df['lab_id'].iloc[rows])} "
                            f"on csv rows {_some(rows + 2)}")
    if len(df) and not pd.api.types.is_integer_dtype(df["video_id"]):  # a header-only csv reads as float
        bad = df["video_id"][pd.to_numeric(df["video_id"], errors="coerce").isna()]
        raise MabeDataError(csv, "video_id", "integer video ids", f"{_some(repr(v) for v in bad)}")
    if len(df) and (df["video_id"] < 0).any():
        raise MabeDataError(csv, "video_id", "non-negative video ids",
                            _some(df.loc[df["video_id"] < 0, "video_id"].tolist()))
    dup = df["video_id"][df["video_id"].duplicated()].unique()
    if len(dup):
        raise MabeDataError(csv, "video_id", "unique video ids", f"duplicated {_some(dup)}")


def _check_numbers(df: pd.DataFrame, csv: Path, bad_rows: list[dict] | None = None) -> pd.DataFrame:
    """Numeric columns coerced to numbers; non-numbers and non-positive fps/scale/size name their videos.

    With ``bad_rows`` (a list), the offending rows are dropped and recorded there instead of raising.
    """
    df = df.copy()
    for col in POSITIVE_COLUMNS + NUMERIC_COLUMNS:
        num = pd.to_numeric(df[col], errors="coerce")
        bad = num.isna() & df[col].notna()
        if col in POSITIVE_COLUMNS and not bad.any():
            bad = ~(np.isfinite(num) & (num > 0))
        if bad.any():
            expected = "a finite number > 0" if col in POSITIVE_COLUMNS else "numbers"
            if bad_rows is None:
                found = (f"video_id {v}: {x!r}" for v, x in zip(df.loc[bad, "video_id"], df.loc[bad, col]))
                raise MabeDataError(csv, col, expected, _some(found))
            for i in np.flatnonzero(bad.to_numpy()):
                row = df.iloc[i]
                value = row[col].item() if isinstance(row[col], np.generic) else row[col]
                _bad_row(bad_rows, row, MabeDataError(csv, col, expected, f"video_id {row['video_id']}: {value!r}"))
            keep = ~bad.to_numpy()
            df, num = df[keep], num[keep]
        df[col] = num
    return df


def _bad_row(bad_rows: list[dict], row: pd.Series, err: MabeDataError) -> None:
    bad_rows.append({"lab_id": str(row["lab_id"]), "video_id": row["video_id"].item()
                     if isinstance(row["video_id"], np.generic) else row["video_id"], "error": err})


def _parse_rows(df: pd.DataFrame, where: list[str], bad_rows: list[dict] | None) -> pd.DataFrame:
    """body_parts and labeled parsed per row; a row that does not parse raises, or (``bad_rows``) is
    recorded there and dropped."""
    parts, labeled, keep = [], [], []
    for i, w in enumerate(where):
        row = df.iloc[i]
        try:
            parts.append(_parse_body_parts(row["body_parts_tracked"], w))
            labeled.append(parse_behaviors(row["behaviors_labeled"], w))
            keep.append(True)
        except MabeDataError as err:
            if bad_rows is None:
                raise
            _bad_row(bad_rows, row, err)
            parts = parts[: len(labeled)]
            keep.append(False)
    df = df[np.array(keep, dtype=bool)].copy() if len(df) else df.copy()
    df["body_parts"] = parts
    df["labeled"] = labeled
    return df


def _n_mice(df: pd.DataFrame, labeled: pd.Series) -> np.ndarray:
    """Highest mouse with a non-empty metadata block or named in behaviors_labeled; at least 2."""
    # Highest, not count: ids are positional. Some real rows (AdaptableSnail) label mouse4 with an empty mouse4 block.
    n = np.full(len(df), 2, dtype=np.int64)
    for m in range(1, MAX_MICE + 1):
        filled = df[[f"mouse{m}_{f}" for f in MOUSE_FIELDS]].notna().any(axis=1).to_numpy()
        n[filled] = np.maximum(n[filled], m)
    top = np.array([max((max(a, t) for a, t, _ in trip), default=0) for trip in labeled], dtype=np.int64)
    return np.maximum(n, top)


def _relative_paths(df: pd.DataFrame) -> list[str]:
    """'<lab_id>/<video_id>.parquet' per row: where both tracking and annotation files live below their folder."""
    return (df["lab_id"].astype(str) + "/" + df["video_id"].astype(str) + ".parquet").tolist()


def _files_under(folder: Path) -> set[str]:
    """'<lab>/<video>.parquet' relative paths below ``folder`` (one directory walk, not a stat per row)."""
    return {f"{p.parent.name}/{p.name}" for p in folder.glob("*/*.parquet")}


def _check_files(df: pd.DataFrame, root: Path, split: str, csv: Path, check: bool) -> pd.DataFrame:
    """Add has_tracking / has_annotation; with ``check``, raise on missing tracking and warn on quirks."""
    rel = _relative_paths(df)
    kinds = [("tracking", f"{split}_tracking")] + ([("annotation", "train_annotation")] if split == "train" else [])
    for kind, sub in kinds:
        folder = root / sub
        found = _files_under(folder) if folder.is_dir() else set()
        has = np.array([r in found for r in rel], dtype=bool)
        df[f"has_{kind}"] = has
        if not check:
            continue
        orphans = sorted(found - set(rel))
        if orphans:
            _warn(f"{folder}: {len(orphans)} {kind} file(s) with no row in {csv.name}, ignored: {_some(orphans)}")
        if kind == "tracking" and folder.is_dir() and not has.all():
            raise MabeDataError(csv, "tracking_path", f"a tracking parquet under {folder} for every row",
                                f"{(~has).sum()} missing: {_some(np.array(rel)[~has])}")
        if kind == "annotation":
            lost = ~has & (df["labeled"].map(len).to_numpy() > 0)
            if lost.any() and not folder.is_dir():
                _warn(f"{folder}: no such folder; {lost.sum()} video(s) with behaviors_labeled have no labels")
            elif lost.any():
                _warn(f"{folder}: {lost.sum()} video(s) have behaviors_labeled but no annotation file "
                      f"(has_annotation=False): {_some(np.array(rel)[lost])}")
    if split != "train":
        df["has_annotation"] = False
    return df


def load_metadata(
    root: str | Path, split: str = "train", check_files: bool = True, bad_rows: list[dict] | None = None
) -> pd.DataFrame:
    """``<root>/<split>.csv`` -> one validated row per video, plus body_parts, labeled, n_mice, paths, has_*.

    ``bad_rows``: a list to collect rows with a bad per-video value (fps, pix_per_cm, frame size,
    body_parts_tracked, behaviors_labeled) as ``{"lab_id", "video_id", "error": MabeDataError}``; those
    rows are dropped instead of raising (``mabe prepare --skip-bad``). Whole-file problems (missing
    columns, duplicate or non-integer video ids) always raise.
    """
    root = Path(root)
    csv = root / f"{split}.csv"
    if not csv.is_file():
        raise MabeDataError(csv, None, f"a metadata csv ({split}.csv)", "no such file")
    try:
        df = pd.read_csv(csv)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as err:
        raise MabeDataError(csv, None, "a readable csv", str(err).strip()) from None
    _check_columns(df, csv)
    df = _check_numbers(df, csv, bad_rows)
    where = [f"{csv} (video_id {v})" for v in df["video_id"]]
    quoted = int(df["behaviors_labeled"].astype("string").str.contains("'", regex=False).fillna(False).sum())
    if quoted:
        _warn(f"{csv}: {quoted} row(s) have stray single quotes inside behaviors_labeled items; read without them")
    df = _parse_rows(df, where, bad_rows).reset_index(drop=True)
    df["n_mice"] = _n_mice(df, df["labeled"])
    rel = _relative_paths(df)
    df["tracking_path"] = [str(root / f"{split}_tracking" / r) for r in rel]
    df["annotation_path"] = [str(root / "train_annotation" / r) if split == "train" else None for r in rel]
    return _check_files(df, root, split, csv, check_files)


# ----------------------------------------------------------------------------- tracking


@dataclass
class Tracking:
    """One video's pose, dense: row index == video_frame; NaN and present=False where not tracked."""

    xy: np.ndarray  # float32 (T, n_mice, S, 2) px
    present: np.ndarray  # bool (T, n_mice, S): x and y both finite
    mice: np.ndarray  # bool (n_mice,): mouse id m+1 has rows in the file
    body_parts: list[str]  # raw body-part names seen in the file, sorted
    slots: tuple[str, ...]  # names of the S slots
    path: str = ""

    @property
    def n_frames(self) -> int:
        return int(self.xy.shape[0])


def _open_parquet(path: Path, columns: tuple[str, ...], kind: str, allow_empty: bool = False) -> pq.ParquetFile:
    """Open a parquet (missing / truncated / empty unless allowed -> MabeDataError) and check its columns exist."""
    if not path.is_file():
        raise MabeDataError(path, None, f"an existing {kind} parquet", "no such file")
    try:
        pf = pq.ParquetFile(path)
    except (pa.ArrowException, OSError) as err:
        raise MabeDataError(path, None, f"a readable {kind} parquet", str(err)) from None
    missing = [c for c in columns if c not in pf.schema_arrow.names]
    if missing:
        raise MabeDataError(path, ", ".join(missing), f"columns {list(columns)}", f"missing {missing}")
    if pf.metadata.num_rows == 0 and not allow_empty:
        raise MabeDataError(path, None, f"at least one {kind} row", "an empty table")
    return pf


def _check_type(path: Path, table_or_schema, col: str, ok, expected: str) -> None:
    tp = table_or_schema.field(col).type
    if not ok(tp):
        raise MabeDataError(path, col, expected, str(tp))


def _is_text(tp: pa.DataType) -> bool:
    return pa.types.is_string(tp) or pa.types.is_large_string(tp) or (
        pa.types.is_dictionary(tp) and (pa.types.is_string(tp.value_type) or pa.types.is_large_string(tp.value_type)))


def _is_number(tp: pa.DataType) -> bool:
    return pa.types.is_integer(tp) or pa.types.is_floating(tp)


def _read(path: Path, columns: tuple[str, ...], dictionary: list[str]) -> pa.Table:
    """Read ``columns`` (multithreaded); a truncated body -> MabeDataError."""
    try:
        return pq.read_table(path, columns=list(columns), read_dictionary=dictionary)
    except (pa.ArrowException, OSError) as err:
        raise MabeDataError(path, None, "a readable parquet", str(err)) from None


def _no_nulls(path: Path, table: pa.Table, cols: tuple[str, ...]) -> None:
    for col in cols:
        n = table.column(col).null_count
        if n:
            raise MabeDataError(path, col, "no missing values", f"{n} null(s)")


BATCH_ROWS = 1 << 20  # rows per zero-copy slice: temporaries stay ~8 MB however large the file


@dataclass
class _Batch:
    """One zero-copy slice of a validated tracking table, as numpy views."""

    frame: np.ndarray  # int (n,)
    mouse: np.ndarray  # int (n,), 1-based
    part: np.ndarray  # int (n,): index into _Rows.names
    x: np.ndarray  # float (n,) px
    y: np.ndarray  # float (n,) px

    def cell(self, n_mice: int) -> np.ndarray:
        """Flat (frame, mouse) index: video_frame * n_mice + mouse_id - 1, int64 (n,)."""
        cell = np.multiply(self.frame, n_mice, dtype=np.int64)
        cell += self.mouse
        cell -= 1
        return cell


@dataclass
class _Rows:
    """A validated tracking table: its batches plus what the whole table says."""

    batches: list[_Batch]
    names: list[str]  # body-part names of the file (its dictionary, unified over row groups)
    n_frames: int  # max(video_frame) + 1
    mice: np.ndarray  # bool (n_mice,): mouse id m + 1 has rows
    seen: np.ndarray  # bool (len(names),): that name has rows


def _batches(table: pa.Table) -> list[_Batch]:
    """Table -> numpy views per slice of <= BATCH_ROWS rows (no concatenation copy of the columns)."""
    out = []
    for rb in table.to_batches(max_chunksize=BATCH_ROWS):
        col = dict(zip(rb.schema.names, rb.columns))
        out.append(_Batch(
            col["video_frame"].to_numpy(), col["mouse_id"].to_numpy(), col["bodypart"].indices.to_numpy(),
            col["x"].to_numpy(zero_copy_only=False), col["y"].to_numpy(zero_copy_only=False),  # null -> NaN
        ))
    return out


def _check_unique(path: Path, batches: list[_Batch], names: list[str], n_frames: int, n_mice: int) -> None:
    """One row per (frame, mouse, body part): mark each row's grid cell; fewer marks than rows = duplicates."""
    D = len(names)
    seen = np.zeros(n_frames * n_mice * D, dtype=bool)
    for b in batches:
        key = b.cell(n_mice) * D
        key += b.part
        seen[key] = True
    if np.count_nonzero(seen) == sum(len(b.part) for b in batches):
        return
    # error path only: the exact count and the first duplicate
    key = np.concatenate([b.cell(n_mice) * D + b.part for b in batches])
    uniq, counts = np.unique(key, return_counts=True)
    f, rest = divmod(int(uniq[counts > 1][0]), n_mice * D)
    m, p = divmod(rest, D)
    raise MabeDataError(path, "video_frame, mouse_id, bodypart", "one row per (frame, mouse, body part)",
                        f"{int((counts - 1).sum())} duplicate row(s), first at frame {f}, mouse {m + 1}, {names[p]!r}")


def _min_max(col: pa.ChunkedArray) -> tuple[int, int]:
    mm = pc.min_max(col)
    return int(mm["min"].as_py()), int(mm["max"].as_py())


def _table_rows(path: Path, table: pa.Table, n_mice: int) -> _Rows:
    """Validated table -> _Rows; checks ranges, names and duplicate (frame, mouse, bodypart) rows."""
    lo, hi = _min_max(table.column("video_frame"))
    if lo < 0 or hi >= MAX_FRAMES:
        raise MabeDataError(path, "video_frame", f"frames in 0..{MAX_FRAMES - 1}", f"min {lo}, max {hi}")
    n_frames = hi + 1
    lo, hi = _min_max(table.column("mouse_id"))
    if lo < 1 or hi > n_mice:
        raise MabeDataError(path, "mouse_id", f"mouse ids in 1..{n_mice}", f"min {lo}, max {hi}")
    col = table.column("bodypart")
    names = [str(n) for n in col.chunk(0).dictionary.to_pylist()]
    unknown = [n for n in names if n not in BODYPART_SYNONYMS]
    if unknown:
        raise MabeDataError(path, "bodypart", "names from data.BODYPARTS", f"unknown {unknown}")
    batches = _batches(table)
    _check_unique(path, batches, names, n_frames, n_mice)
    mice = np.zeros(n_mice + 1, dtype=bool)
    seen = np.zeros(len(names), dtype=bool)
    for b in batches:
        mice |= np.bincount(b.mouse, minlength=n_mice + 1) > 0
        seen |= np.bincount(b.part, minlength=len(names)) > 0
    return _Rows(batches, names, n_frames, mice[1:], seen)


def _read_rows(path: str | Path, n_mice: int) -> tuple[pa.Table, _Rows]:
    path = Path(path)
    pf = _open_parquet(path, TRACKING_COLUMNS, "tracking")
    schema = pf.schema_arrow
    _check_type(path, schema, "video_frame", pa.types.is_integer, "integer frame numbers")
    _check_type(path, schema, "mouse_id", pa.types.is_integer, "integer mouse ids")
    _check_type(path, schema, "bodypart", _is_text, "body-part names (string)")
    _check_type(path, schema, "x", _is_number, "numeric x (px)")
    _check_type(path, schema, "y", _is_number, "numeric y (px)")
    table = _read(path, TRACKING_COLUMNS, ["bodypart"])
    _no_nulls(path, table, ("video_frame", "mouse_id", "bodypart"))
    if not pa.types.is_dictionary(table.schema.field("bodypart").type):  # large_string is not auto-encoded
        table = table.set_column(2, "bodypart", pc.dictionary_encode(table.column("bodypart")))
    table = table.unify_dictionaries()  # row groups may each carry their own dictionary
    return table, _table_rows(path, table, n_mice)


def read_tracking_table(path: str | Path, n_mice: int = MAX_MICE) -> pa.Table:
    """Long-format tracking parquet -> validated pyarrow table (video_frame, mouse_id, bodypart[dictionary], x, y)."""
    return _read_rows(path, n_mice)[0]


def _point_xy(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray, int]:
    """Row x, y with a point missing as a whole (either coordinate NaN or inf -> both NaN); count of infs."""
    ok = np.isfinite(x) & np.isfinite(y)
    if ok.all():  # the common case: no extra pass
        return x, y, 0
    n_inf = int(np.count_nonzero(np.isinf(x) | np.isinf(y)))
    return np.where(ok, x, np.nan), np.where(ok, y, np.nan), n_inf


def read_tracking(
    path: str | Path, slots: tuple[str, ...] | list[str] = DEFAULT_SLOTS, n_mice: int = MAX_MICE,
    n_frames: int | None = None,
) -> Tracking:
    """Long-format tracking parquet -> Tracking: xy float32 (T, n_mice, S, 2) px, present (T, n_mice, S)."""
    slots = tuple(slots)
    known = set(BODYPART_SYNONYMS.values())
    if any(s not in known for s in slots) or len(set(slots)) != len(slots):
        raise ValueError(f"slots must be distinct names from {sorted(known)}, got {list(slots)}")
    _, rows = _read_rows(path, n_mice)
    T, S = max(rows.n_frames, n_frames or 0), len(slots)
    col = {s: i for i, s in enumerate(slots)}
    head = col.get("headpiece")
    syn = [BODYPART_SYNONYMS[n] for n in rows.names]
    is_head = np.array([s == "headpiece" for s in syn], dtype=bool)  # (D,) code -> headpiece marker
    # Column each code is written to. Rows not copied straight (headpiece markers, parts outside `slots`)
    # land in a scratch column: the headpiece slot itself (overwritten by the mean below) or an extra one.
    target = np.array([col.get(s, -1) if s != "headpiece" else -1 for s in syn], dtype=np.int64)
    scratch = head if head is not None else S
    width = S + 1 if head is None and (target < 0).any() else S
    target[target < 0] = scratch
    grid = np.full((T, n_mice, width, 2), np.nan, dtype=np.float32)
    flat = grid.reshape(-1, 2)
    n_inf, markers = 0, []
    for b in rows.batches:  # a loop over ~1 M-row slices; inside, whole-array ops only
        x, y, k = _point_xy(b.x, b.y)
        n_inf += k
        cell = b.cell(n_mice)
        idx = cell * width
        idx += target[b.part]
        flat[idx, 0] = x  # fancy-index scatter: row -> (frame, mouse, slot)
        flat[idx, 1] = y
        if head is not None and is_head.any():
            i = np.flatnonzero(is_head[b.part])
            markers.append((cell.take(i), x.take(i), y.take(i)))
    if n_inf:
        _warn(f"{path}: {n_inf} row(s) with infinite x/y read as missing (NaN)")
    xy = grid if width == S else np.ascontiguousarray(grid[:, :, :S])
    if markers:
        cell, x, y = (np.concatenate(m) for m in zip(*markers))
        xy[:, :, head] = _headpiece_mean(cell, x, y, T * n_mice).reshape(T, n_mice, 2)
    elif head is not None:
        xy[:, :, head] = np.nan  # only scratch writes from parts outside `slots`: no marker to average
    present = ~np.isnan(xy[..., 0])
    body_parts = sorted(n for n, s in zip(rows.names, rows.seen) if s)
    return Tracking(xy, present, rows.mice, body_parts, slots, str(path))


def _headpiece_mean(cell: np.ndarray, x: np.ndarray, y: np.ndarray, n_cells: int) -> np.ndarray:
    """Mean (x, y) of the headpiece markers seen per (frame, mouse) cell -> (n_cells, 2), NaN where none."""
    ok = ~np.isnan(x)  # x is NaN exactly where y is (_point_xy)
    if not ok.all():
        cell, x, y = cell[ok], x[ok], y[ok]
    count = np.bincount(cell, minlength=n_cells)
    out = np.empty((n_cells, 2), dtype=np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):  # 0 / 0 -> NaN: no marker in that cell
        np.divide(np.bincount(cell, weights=x, minlength=n_cells), count, out=out[:, 0])
        np.divide(np.bincount(cell, weights=y, minlength=n_cells), count, out=out[:, 1])
    return out


# ----------------------------------------------------------------------------- annotation


def read_annotation(path: str | Path) -> pd.DataFrame:
    """Annotation parquet -> validated DataFrame agent_id int8, target_id int8, action str, start/stop_frame int32."""
    path = Path(path)
    pf = _open_parquet(path, ANNOTATION_COLUMNS, "annotation", allow_empty=True)  # a video with no behaviour
    for col in ("agent_id", "target_id", "start_frame", "stop_frame"):
        _check_type(path, pf.schema_arrow, col, pa.types.is_integer, "integers")
    _check_type(path, pf.schema_arrow, "action", _is_text, "action names (string)")
    table = _read(path, ANNOTATION_COLUMNS, [])
    _no_nulls(path, table, ANNOTATION_COLUMNS)
    cols = {c: table.column(c).to_numpy(zero_copy_only=False) for c in ANNOTATION_COLUMNS}
    for col in ("agent_id", "target_id"):
        bad = np.flatnonzero((cols[col] < 1) | (cols[col] > MAX_MICE))
        if len(bad):
            found = f"{cols[col][bad[0]]} at row {bad[0]} ({len(bad)} rows)"
            raise MabeDataError(path, col, f"mouse ids in 1..{MAX_MICE}", found)
    action = table.column("action").cast(pa.string())
    unknown = sorted(set(pc.unique(action).to_pylist()) - set(ACTIONS))
    if unknown:
        raise MabeDataError(path, "action", "one of the 37 MABe actions", f"unknown {unknown}")
    start, stop = cols["start_frame"].astype(np.int64), cols["stop_frame"].astype(np.int64)
    bad = np.flatnonzero(start < 0)
    if len(bad):
        raise MabeDataError(path, "start_frame", "frames >= 0", f"{start[bad[0]]} at row {bad[0]} ({len(bad)} rows)")
    bad = np.flatnonzero(start > stop)
    if len(bad):
        i = bad[0]
        raise MabeDataError(path, "start_frame, stop_frame", "start_frame <= stop_frame",
                            f"row {i}: start_frame {start[i]} > stop_frame {stop[i]} ({len(bad)} rows)")
    if len(stop) and stop.max() > np.iinfo(np.int32).max:
        raise MabeDataError(path, "stop_frame", "frames that fit int32", int(stop.max()))
    n_empty = int(np.count_nonzero(start == stop))
    if n_empty:
        _warn(f"{path}: {n_empty} empty interval(s) (start_frame == stop_frame) kept; they cover no frame")
    df = pd.DataFrame({
        "agent_id": cols["agent_id"].astype(np.int8), "target_id": cols["target_id"].astype(np.int8),
        "action": pd.Series(action.to_numpy(zero_copy_only=False), dtype=str),
        "start_frame": start.astype(np.int32), "stop_frame": stop.astype(np.int32),
    })
    df.attrs["path"] = str(path)
    return df


def intervals_to_frames(
    ann: pd.DataFrame, n_frames: int, pairs: list[tuple[int, int]], actions: tuple[str, ...] | list[str] = ACTIONS,
    where: str | None = None,
) -> np.ndarray:
    """Intervals -> uint8 (n_pairs, n_frames, A): 1 on frames start..stop-1 of each (agent, target, action)."""
    where = where or ann.attrs.get("path", "annotation")
    out_shape = (len(pairs), n_frames, len(actions))
    if len(ann) == 0 or not pairs or not actions:
        return np.zeros(out_shape, dtype=np.uint8)
    lut = np.full((MAX_MICE + 1, MAX_MICE + 1), -1, dtype=np.int64)  # (agent, target) -> pair index
    for i, (a, t) in enumerate(pairs):
        lut[a, t] = i
    agent, target = ann["agent_id"].to_numpy(np.int64), ann["target_id"].to_numpy(np.int64)
    valid = (agent >= 1) & (agent <= MAX_MICE) & (target >= 1) & (target <= MAX_MICE)
    p = np.where(valid, lut[np.clip(agent, 0, MAX_MICE), np.clip(target, 0, MAX_MICE)], -1)
    a = ann["action"].map({name: i for i, name in enumerate(actions)}).fillna(-1).to_numpy(np.int64)
    start = np.clip(ann["start_frame"].to_numpy(np.int64), 0, n_frames)
    stop_raw = ann["stop_frame"].to_numpy(np.int64)
    stop = np.clip(stop_raw, 0, n_frames)
    lost = p < 0
    if lost.any():
        gone = sorted({(int(x), int(y)) for x, y in zip(agent[lost], target[lost])})
        _warn(f"{where}: {int(lost.sum())} interval(s) for pair(s) {gone} not among the video's pairs, ignored")
    n_clip = int(np.count_nonzero(stop_raw > n_frames))
    if n_clip:
        _warn(f"{where}: {n_clip} interval(s) run past the video's {n_frames} frames, clipped")
    keep = (p >= 0) & (a >= 0) & (start < stop)  # actions outside `actions` are not asked for
    out = np.zeros(out_shape, dtype=np.uint8)
    if not keep.any():
        return out
    # Only the (pair, action) columns that have intervals: a video has few, and (P, T, 37) int temporaries
    # would cost more than the answer. Difference array per column: +1 at start, -1 at stop (exclusive);
    # a running sum > 0 marks covered frames, so overlapping intervals simply add up.
    used, col = np.unique(p[keep] * len(actions) + a[keep], return_inverse=True)
    diff = np.zeros((n_frames + 1, len(used)), dtype=np.int32)
    np.add.at(diff, (start[keep], col), 1)
    np.add.at(diff, (stop[keep], col), -1)
    covered = np.cumsum(diff[:n_frames], axis=0, dtype=np.int32) > 0  # (T, K)
    out[used // len(actions), :, used % len(actions)] = covered.T
    return out


# ----------------------------------------------------------------------------- summary


def _span(values) -> str:
    """[2, 4, 2] -> '2-4'; [2, 2] -> '2'."""
    lo, hi = min(values), max(values)
    return f"{lo}" if lo == hi else f"{lo}-{hi}"


def _fps_text(values) -> str:
    """Unique fps values, or their range when there are many (real labs have 24.36 ... 25)."""
    uniq = sorted({round(float(v), 2) for v in values})
    if len(uniq) <= 3:
        return ", ".join(f"{v:g}" for v in uniq)
    return f"{uniq[0]:g}-{uniq[-1]:g} ({len(uniq)} values)"


def _annotation_totals(paths) -> tuple[int, int]:
    """(intervals, labelled frames = sum of stop - start) over annotation files; reads the two frame columns only."""
    n = frames = 0
    for p in paths:
        t = _read(Path(p), ("start_frame", "stop_frame"), [])
        n += t.num_rows
        span = pc.subtract(t.column("stop_frame").cast(pa.int64()), t.column("start_frame").cast(pa.int64()))
        frames += int(pc.sum(span).as_py() or 0)
    return n, frames


def lab_summary(meta: pd.DataFrame) -> pd.DataFrame:
    """Metadata from load_metadata -> one row per lab: videos, mice, fps, body parts, actions, intervals, frames."""
    rows = []
    for lab, g in meta.groupby("lab_id", sort=True):
        ann = g.loc[g["has_annotation"], "annotation_path"]
        n_int, n_frames = _annotation_totals(ann) if len(ann) else (0, 0)
        rows.append({
            "lab": lab, "videos": len(g), "mice": _span(g["n_mice"].tolist()), "fps": _fps_text(g["frames_per_second"]),
            "body_parts": _span([len(b) for b in g["body_parts"]]),
            "actions": len({act for trip in g["labeled"] for _, _, act in trip}),
            "annotated": len(ann), "intervals": n_int, "frames": n_frames,
            "tracking": "yes" if g["has_tracking"].all() else ("no" if not g["has_tracking"].any()
                                                                else f"{int(g['has_tracking'].sum())}/{len(g)}"),
        })
    return pd.DataFrame(rows)


def print_info(root: str | Path, split: str = "train") -> pd.DataFrame:
    """Print a per-lab table of a MABe-layout directory (works without tracking); return it as a DataFrame."""
    from rich.console import Console
    from rich.table import Table

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", MabeDataWarning)
        meta = load_metadata(root, split)
    summary = lab_summary(meta)
    console = Console()
    if not console.is_terminal:  # a pipe or log file: do not squeeze the table into 80 columns
        console = Console(width=160)
    table = Table(title=f"{Path(root) / f'{split}.csv'}: {len(meta)} videos, {len(summary)} labs")
    heads = [("lab", "left"), ("videos", "right"), ("mice", "right"), ("fps", "right"), ("body parts", "right"),
             ("actions", "right"), ("annotated", "right"), ("intervals", "right"), ("labelled frames", "right"),
             ("tracking", "center")]
    for name, justify in heads:
        table.add_column(name, justify=justify, no_wrap=name == "lab")
    train = split == "train"  # only train has annotation files

    def counts(annotated: int, intervals: int, frames: int) -> list[str]:
        return [f"{annotated}", f"{intervals:,}", f"{frames:,}"] if train else ["-", "-", "-"]

    for r in summary.itertuples(index=False):
        table.add_row(r.lab, str(r.videos), r.mice, r.fps, r.body_parts, str(r.actions),
                      *counts(r.annotated, r.intervals, r.frames), r.tracking)
    if len(summary):
        table.add_section()
        table.add_row("total", str(len(meta)), _span(meta["n_mice"].tolist()), "", "",
                      str(len({act for trip in meta["labeled"] for _, _, act in trip})),
                      *counts(*(int(summary[c].sum()) for c in ("annotated", "intervals", "frames"))), "")
    console.print(table)
    for w in caught:
        console.print(f"warning: {w.message}", markup=False, highlight=False, soft_wrap=True)
    return summary
