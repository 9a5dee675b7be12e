"""Names that become paths, and exclusive locks: the one home for both.

Every name read from a file (lab ids, video ids, action and body-part names, run names, cache
entries) goes through :func:`safe_name` before it is joined into a path, and every folder we write
is checked with :func:`within` to stay under the root the user named. :func:`lock` takes an
exclusive, non-blocking ``fcntl.flock`` on a lock file; the kernel drops it when the process dies,
so a killed run never leaves a stale lock behind.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
from pathlib import Path
from typing import Any

from mabe.errors import MabeDataError, MabeError

__all__ = ["NAME_RULE", "safe_name", "is_safe_name", "within", "make_dir", "lock", "Lock", "LockedError"]

# Real names: lab ids like AdaptableSnail, CalMS21_task1; integer video ids; timestamps as run
# names (20251102-141500). No separators, no leading dot (hidden, "." and ".."), no leading "-"
# (read as an option by shell tools), bounded length (file systems cap a component at 255 bytes).
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.+=@-]{0,127}")
NAME_RULE = ("a plain name: 1-128 letters, digits or _ . + = @ -, starting with a letter or digit "
             "(no '/', '\\', '..' or spaces)")


def is_safe_name(value: Any) -> bool:
    """Whether ``value`` passes :func:`safe_name`."""
    try:
        safe_name(value, "", "")
    except MabeDataError:
        return False
    return True


def safe_name(value: Any, file: object, field: str) -> str:
    """``value`` as a path component, or MabeDataError naming ``file`` and ``field``.

    Integers (video ids) are accepted when non-negative; everything else must match NAME_RULE.
    """
    if isinstance(value, bool):
        raise MabeDataError(file, field, NAME_RULE, repr(value))
    if isinstance(value, int) or (hasattr(value, "dtype") and getattr(value.dtype, "kind", "") in "iu"):
        if int(value) < 0:
            raise MabeDataError(file, field, "a non-negative integer id", repr(int(value)))
        return str(int(value))
    if not isinstance(value, str) or not _NAME.fullmatch(value):
        shown = repr(value) if not isinstance(value, str) or len(value) <= 80 else repr(value[:80] + "...")
        raise MabeDataError(file, field, NAME_RULE, shown)
    return value


def within(root: str | os.PathLike, path: str | os.PathLike) -> Path:
    """``path`` unchanged when it lies under ``root`` (symlinks and '..' resolved), else MabeError.

    The last line of defence behind :func:`safe_name`: a folder we are about to write must stay
    inside the folder the user named.
    """
    root_r = Path(root).resolve()
    path_r = Path(path).resolve()
    if path_r != root_r and root_r not in path_r.parents:
        raise MabeError(f"refusing to write {path}: it resolves to {path_r}, outside {root_r}")
    return Path(path)


def make_dir(path: str | os.PathLike, what: str) -> Path:
    """``mkdir -p path``; an OSError (a file in the way, no permission, read-only, full) becomes one
    MabeError naming ``what`` and the path."""
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise MabeError(f"cannot create {what} {path}: {err.strerror or err} (errno {err.errno}"
                        + (f", at {err.filename}" if err.filename and str(err.filename) != str(path) else "")
                        + ")") from None
    return path


class LockedError(MabeError):
    """Another live process holds the lock."""

    def __init__(self, what: str, lock_path: Path, pid: int | None):
        self.lock_path, self.pid = lock_path, pid
        who = f"process {pid}" if pid else "another process"
        super().__init__(f"{what} is in use by {who} (lock {lock_path}); wait for it to finish or stop it "
                         "(the lock goes away with the process)")


class Lock:
    """An acquired exclusive lock; ``release()`` (or leaving the ``with`` block, or dying) drops it."""

    def __init__(self, path: Path, fd: int):
        self.path, self._fd = path, fd

    def release(self) -> None:
        """Drop the lock (idempotent). The lock file stays: deleting it would race with a new holder."""
        if self._fd is not None:
            fd, self._fd = self._fd, None
            with contextlib.suppress(OSError):
                os.ftruncate(fd, 0)
            os.close(fd)  # closing the only descriptor releases the flock

    def __enter__(self) -> Lock:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()

    def __del__(self) -> None:  # a forgotten lock must not outlive its object
        try:  # noqa: SIM105 - at interpreter exit module globals (contextlib) may be gone
            self.release()
        except Exception:
            pass


class _NoLock(Lock):
    def __init__(self) -> None:
        self.path, self._fd = Path(os.devnull), None


NO_LOCK = _NoLock()  # for processes that own nothing (DDP ranks other than 0)


def lock(lock_path: str | os.PathLike, what: str) -> Lock:
    """Take an exclusive, non-blocking lock on ``lock_path`` (created if needed) and write our pid
    into it; LockedError naming ``what`` and the holder's pid when a live process holds it."""
    import fcntl

    lock_path = Path(lock_path)
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as err:
        os.close(fd)
        if err.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
            raise MabeError(f"cannot lock {lock_path}: {err.strerror} (errno {err.errno})") from None
        raise LockedError(what, lock_path, _holder(lock_path)) from None
    os.ftruncate(fd, 0)
    os.write(fd, f"{os.getpid()}\n".encode())
    return Lock(lock_path, fd)


def _holder(lock_path: Path) -> int | None:
    try:
        text = lock_path.read_text().strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None
