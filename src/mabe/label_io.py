"""Behaviour labels of other tools -> one long table of intervals in the files' own names.

Two inputs: a simple CSV (``video, agent, target, behaviour, start_frame, stop_frame`` or
``start_s, stop_s``; ``behavior`` / ``action`` and ``subject`` are accepted too) and BORIS exports
(the "aggregated events" table with ``Start (s)`` / ``Stop (s)``, or the "tabular events" table whose
START / STOP rows are paired here). Names are resolved to mabe's mice, actions and frames in
``mabe.importer``, which knows the videos.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from mabe.errors import MabeDataError

# the table every reader returns; start/stop are in `unit` (frames: stop exclusive; seconds)
LABEL_COLUMNS: tuple[str, ...] = ("video", "agent", "target", "behaviour", "start", "stop", "unit", "source", "row")

_ALIASES = {  # lower-cased header -> our column
    "video": "video", "video_id": "video", "video_name": "video", "media": "video",
    "agent": "agent", "agent_id": "agent", "subject": "agent",
    "target": "target", "target_id": "target",
    "behaviour": "behaviour", "behavior": "behaviour", "action": "behaviour",
    "start_frame": "start_frame", "stop_frame": "stop_frame", "start_s": "start_s", "stop_s": "stop_s",
}


def _read_table(path: Path) -> pd.DataFrame:
    if not path.is_file():
        raise MabeDataError(path, None, "an annotation file", "no such file")
    sep = "\t" if path.suffix.lower() in (".tsv", ".txt") else None  # None: sniff , or ;
    try:
        with open(path, encoding="utf-8-sig") as f:
            head = [next(f, "") for _ in range(40)]
        # older BORIS exports put observation details above the table: start at its header line
        skip = next((i for i, line in enumerate(head) if "Behavior" in line and ("Time" in line or "Start (s)" in line)), 0)
        return pd.read_csv(path, sep=sep, engine="python", dtype=str, keep_default_na=False, skiprows=skip,
                           encoding="utf-8-sig")
    except (ValueError, pd.errors.ParserError, UnicodeDecodeError) as err:
        raise MabeDataError(path, None, "a readable CSV / TSV", str(err).strip()) from None


def is_boris(df: pd.DataFrame) -> bool:
    cols = set(df.columns)
    return "Behavior" in cols and ("Start (s)" in cols or "Time" in cols)


def read_labels(path: str | Path) -> pd.DataFrame:
    """A simple-CSV or BORIS annotation file -> LABEL_COLUMNS (one row per interval)."""
    path = Path(path)
    df = _read_table(path)
    return read_boris(path, df) if is_boris(df) else read_simple(path, df)


def _numbers(path: Path, df: pd.DataFrame, col: str, header: str) -> np.ndarray:
    num = pd.to_numeric(df[col].str.strip(), errors="coerce")
    bad = num.isna() | ~np.isfinite(num)
    if bad.any():
        i = int(np.flatnonzero(bad.to_numpy())[0])
        raise MabeDataError(path, header, "numbers", f"{df[col].iloc[i]!r} on row {i + 2} ({int(bad.sum())} rows)")
    return num.to_numpy(np.float64)


def read_simple(path: str | Path, df: pd.DataFrame | None = None) -> pd.DataFrame:
    """``video, agent, [target,] behaviour, start_frame, stop_frame | start_s, stop_s`` -> LABEL_COLUMNS."""
    path = Path(path)
    df = _read_table(path) if df is None else df
    cols = {_ALIASES[c.strip().lower()]: c for c in df.columns if c.strip().lower() in _ALIASES}
    missing = [c for c in ("video", "agent", "behaviour") if c not in cols]
    if missing:
        raise MabeDataError(path, ", ".join(missing), "columns video, agent, [target,] behaviour, start_frame, "
                            "stop_frame (or start_s, stop_s), or a BORIS export", f"columns {list(df.columns)}")
    if {"start_frame", "stop_frame"} <= cols.keys():
        unit, start, stop = "frames", cols["start_frame"], cols["stop_frame"]
    elif {"start_s", "stop_s"} <= cols.keys():
        unit, start, stop = "seconds", cols["start_s"], cols["stop_s"]
    else:
        raise MabeDataError(path, "start_frame, stop_frame", "start_frame and stop_frame, or start_s and stop_s",
                            f"columns {list(df.columns)}")
    out = pd.DataFrame({
        "video": df[cols["video"]].str.strip(), "agent": df[cols["agent"]].str.strip(),
        "target": df[cols["target"]].str.strip() if "target" in cols else "",
        "behaviour": df[cols["behaviour"]].str.strip(),
        "start": _numbers(path, df, start, start), "stop": _numbers(path, df, stop, stop),
        "unit": unit, "source": str(path), "row": np.arange(len(df)) + 2,  # csv line numbers
    })
    return out[list(LABEL_COLUMNS)]


def _boris_video(media: pd.Series) -> pd.Series:
    """BORIS media path (either slash) -> the video's name (file stem)."""
    name = media.str.replace("\\", "/", regex=False).str.rsplit("/", n=1).str[-1]
    return name.str.replace(r"\.[A-Za-z0-9]{2,5}$", "", regex=True)


def _boris_common(path: Path, df: pd.DataFrame) -> tuple[pd.Series, pd.Series, pd.Series]:
    media_col = next((c for c in ("Media file name", "Media file", "Media file path", "Observation id")
                      if c in df.columns), None)
    if media_col is None:
        raise MabeDataError(path, "Media file name", "a BORIS export with the media file or observation id", "none")
    video = _boris_video(df[media_col].str.strip()) if media_col != "Observation id" else df[media_col].str.strip()
    agent = df["Subject"].str.strip() if "Subject" in df.columns else pd.Series([""] * len(df))
    # BORIS has one subject per event; a target, if any, is a modifier naming the other animal
    target = df["Modifiers"].str.strip() if "Modifiers" in df.columns else pd.Series([""] * len(df))
    return video, agent.replace("No focal subject", ""), target


def read_boris(path: str | Path, df: pd.DataFrame | None = None) -> pd.DataFrame:
    """BORIS aggregated-events or tabular-events export -> LABEL_COLUMNS (seconds; POINT events are skipped
    with a count in ``attrs['points']``, since an interval F1 has nothing to match them with)."""
    path = Path(path)
    df = _read_table(path) if df is None else df
    video, agent, target = _boris_common(path, df)
    kind = df["Behavior type"] if "Behavior type" in df.columns else df.get("Status", pd.Series([""] * len(df)))
    kind = kind.str.strip().str.upper()
    behaviour = df["Behavior"].str.strip()
    if "Start (s)" in df.columns:  # aggregated events: one row per interval
        point = (kind == "POINT").to_numpy()
        start = _numbers(path, df, "Start (s)", "Start (s)")
        stop = _numbers(path, df, "Stop (s)", "Stop (s)") if "Stop (s)" in df.columns else start
        keep = ~point
        rows = np.arange(len(df)) + 2
        out = pd.DataFrame({"video": video[keep].to_numpy(), "agent": agent[keep].to_numpy(),
                            "target": target[keep].to_numpy(), "behaviour": behaviour[keep].to_numpy(),
                            "start": start[keep], "stop": stop[keep], "unit": "seconds", "source": str(path),
                            "row": rows[keep]})
        out.attrs["points"] = int(point.sum())
        return out[list(LABEL_COLUMNS)]
    time = _numbers(path, df, "Time", "Time")
    if not kind.isin(["START", "STOP", "POINT"]).all():
        bad = kind[~kind.isin(["START", "STOP", "POINT"])].iloc[0]
        raise MabeDataError(path, "Behavior type", "START, STOP or POINT on every event", repr(bad))
    out_rows: list[tuple] = []
    open_: dict[tuple, tuple[float, int]] = {}
    for i in np.argsort(time, kind="stable"):  # a loop over events (hundreds), not frames
        key = (video.iloc[i], agent.iloc[i], target.iloc[i], behaviour.iloc[i])
        if kind.iloc[i] == "START":
            if key in open_:
                raise MabeDataError(path, "Behavior type", "a STOP before the next START of the same behaviour",
                                    f"two STARTs of {key[3]!r} for {key[1] or 'no subject'!r} (rows {open_[key][1] + 2}, {i + 2})")
            open_[key] = (time[i], int(i))
        elif kind.iloc[i] == "STOP":
            if key not in open_:
                raise MabeDataError(path, "Behavior type", "a START before each STOP", f"row {i + 2}: STOP of {key[3]!r}")
            t0, r = open_.pop(key)
            out_rows.append((*key, t0, time[i], "seconds", str(path), r + 2))
    if open_:
        key, (_, r) = next(iter(open_.items()))
        raise MabeDataError(path, "Behavior type", "a STOP for every START", f"row {r + 2}: {key[3]!r} never stops")
    out = pd.DataFrame(out_rows, columns=list(LABEL_COLUMNS))
    out.attrs["points"] = int((kind == "POINT").sum())
    return out
