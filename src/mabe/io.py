"""Writing files so that a reader never sees half of one: a temporary file in the same folder, then
``os.replace``. The one home of atomic writes (bytes, text, JSON, or any writer given a path).

A kill mid-write leaves the previous file intact and an orphaned hidden temporary
(``.<name>.<pid>-<hex>.tmp``) that no reader picks up; ``clean_partial`` removes those.
"""

from __future__ import annotations

import contextlib
import json
import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["TMP_SUFFIX", "atomic_path", "write_bytes", "write_text", "write_json", "json_ready", "clean_partial"]

TMP_SUFFIX = ".tmp"


def _tmp_for(path: Path) -> Path:
    return path.with_name(f".{path.name}.{os.getpid()}-{uuid.uuid4().hex[:8]}{TMP_SUFFIX}")


def _fsync_dir(folder: Path) -> None:
    """Make a rename in ``folder`` durable (best effort: not every filesystem allows it)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError:
        pass


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """``with atomic_path(p) as tmp: writer(tmp)``: on success ``tmp`` replaces ``p``; on any error
    it is removed and ``p`` is untouched. For writers that take a path (pandas, pyarrow)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _tmp_for(path)
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _write(f: Any, data: bytes | memoryview) -> None:
    """The one raw write of every atomic write (a crash test slows it down from outside the package)."""
    f.write(data)


def write_bytes(path: str | Path, data: bytes | memoryview, *, durable: bool = False) -> Path:
    """Write ``data`` to ``path`` atomically; ``durable`` also fsyncs the file and the folder (checkpoints).

    A failing disk shows up as a plain ``OSError`` (ENOSPC, EROFS, EACCES...) from ``open`` / ``write``
    / ``os.replace``, after which nothing of the new file remains."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _tmp_for(path)
    try:
        with open(tmp, "xb") as f:  # normal permissions (umask), unlike mkstemp's 0600
            _write(f, data)
            f.flush()
            if durable:
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    if durable:
        _fsync_dir(path.parent)
    return path


def write_text(path: str | Path, text: str) -> Path:
    """``write_bytes`` of UTF-8 text."""
    return write_bytes(path, text.encode("utf-8"))


def json_ready(obj: Any) -> Any:
    """Numpy scalars and arrays -> Python numbers and lists, recursively (dict keys -> str)."""
    if isinstance(obj, dict):
        return {str(k): json_ready(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_ready(v) for v in obj]
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    return obj


def write_json(path: str | Path, obj: Any, *, indent: int = 1, sort_keys: bool = False, default: Any = None) -> Path:
    """``obj`` (numpy values allowed) as JSON with a trailing newline, atomically."""
    text = json.dumps(json_ready(obj), indent=indent, sort_keys=sort_keys, default=default)
    return write_text(path, text + "\n")


def clean_partial(folder: str | Path) -> list[Path]:
    """Delete the temporaries that writes killed mid-way left in ``folder``; returns them."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    stale = [p for p in folder.glob(f".*{TMP_SUFFIX}") if p.is_file()]
    for p in stale:
        p.unlink(missing_ok=True)
    return stale
