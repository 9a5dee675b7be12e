"""Run directories: start detached, follow logs, list, stop. Files and signals only, no server.

A run directory (``runs/<name>/``, layout in docs/design.md) is the whole interface: the trainer
writes ``status.json`` (state, pid, epoch, best F1, device, times), ``metrics.csv`` and ``log.txt``;
this module reads them, and signals the pid in ``status.json``. ``detach`` starts
``python -m mabe train ...`` in a new session with its output going to ``log.txt``.
"""

from __future__ import annotations

import codecs
import contextlib
import csv
import json
import os
import signal
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path
from typing import Any

from mabe import paths
from mabe.config import Config
from mabe.errors import MabeError
from mabe.io import write_json

__all__ = [
    "RUNS_ROOT",
    "STATES",
    "LOCK_FILE",
    "CV_FILE",
    "cv_fold_dirs",
    "run_dir_for",
    "lock_run",
    "resolve_run",
    "read_status",
    "write_status",
    "pid_alive",
    "run_state",
    "detach",
    "logs",
    "list_runs",
    "print_status",
    "stop",
]

RUNS_ROOT: str = Config.runs  # the default runs root: config.py's, nowhere else
STATES = ("running", "finished", "failed", "stopped")  # what the trainer writes; "died" is derived
POLL_S = 0.5  # logs --follow polling interval
STOP_TIMEOUT_S = 120.0  # how long stop() waits for the run to finish its step and exit
_RUN_MARKERS = ("status.json", "config.yaml", "metrics.csv", "log.txt")
LOCK_FILE = ".lock"  # flock'ed by the training process that owns the run (rank 0 under DDP)
CV_FILE = "cv.json"  # marks a cv directory (`mabe cv`): its fold run directories, the fold of every video

# Children started by detach() in this process: poll() them so an exited child (a zombie until
# reaped) is not mistaken for a live one. Only matters when the caller lives on (tests, notebooks).
_children: dict[int, subprocess.Popen] = {}


# ----------------------------------------------------------------------------- run directories


def _is_run_dir(path: Path) -> bool:
    return path.is_dir() and any((path / m).exists() for m in _RUN_MARKERS)


def _available(runs_root: Path) -> list[str]:
    if not runs_root.is_dir():
        return []
    return sorted(p.name for p in runs_root.iterdir() if _is_run_dir(p))


def run_dir_for(runs_root: str | os.PathLike, name: str) -> Path:
    """``runs_root/name`` for a new run; ``name`` must be one plain path component (MabeDataError)."""
    name = paths.safe_name(name, "run name (--name or the config's name)", "name")
    return paths.within(runs_root, Path(runs_root) / name)


def lock_run(run_dir: str | os.PathLike, resume: bool = False) -> paths.Lock:
    """Take the run directory's exclusive lock (created with the folder); MabeError when another live
    process trains into it. A fresh run (not ``resume``) is also refused once it holds a checkpoint:
    two runs started at once with one name both pass the earlier check, only one gets the lock, and
    the loser must not start over a run that finished meanwhile. Release with ``.release()``; the
    kernel releases it when the process dies."""
    run_dir = paths.make_dir(run_dir, "the run directory")
    held = paths.lock(run_dir / LOCK_FILE, f"run {run_dir}")
    if not resume and (run_dir / "checkpoints" / "last.pt").is_file():
        held.release()
        raise MabeError(f"run {run_dir} already exists; continue it with `mabe train --resume {run_dir}` "
                        "or pick another --name")
    return held


def lock_holder(run_dir: str | os.PathLike) -> int | None:
    """The pid of the live process holding ``run_dir``'s lock, or None when nobody holds it."""
    lock_path = Path(run_dir) / LOCK_FILE
    if not lock_path.is_file():
        return None
    try:
        paths.lock(lock_path, "").release()
    except paths.LockedError as err:
        return err.pid or -1
    except MabeError:
        return None
    return None


def resolve_run(run: str | os.PathLike, runs_root: str | os.PathLike = RUNS_ROOT) -> Path:
    """A run directory path, or a run name under ``runs_root`` -> the run directory.

    Raises MabeError naming the available runs when neither exists.
    """
    path = Path(run)
    if path.is_dir():
        return path
    root = Path(runs_root)
    if (root / path).is_dir():
        return root / path
    names = _available(root)
    listing = ", ".join(names[-20:]) if names else "none"
    more = f" (last 20 of {len(names)})" if len(names) > 20 else ""
    raise MabeError(f"run {str(run)!r} not found as a directory or under {root}/; available runs{more}: {listing}")


def cv_fold_dirs(path: str | os.PathLike) -> list[Path] | None:
    """A cv directory (``mabe cv``: ``cv.json`` + one run directory per fold) -> its fold run directories in
    fold order; None when ``path`` is not one."""
    path = Path(path)
    meta_path = path / CV_FILE
    if not meta_path.is_file():
        return None
    try:
        names = json.loads(meta_path.read_text())["runs"]
    except (ValueError, KeyError, TypeError) as err:
        raise MabeError(f"{meta_path}: not a cv file ({type(err).__name__}: {err})") from None
    # a name from a file is untrusted: one plain component, under the cv directory
    return [paths.within(path, path / paths.safe_name(n, meta_path, "runs")) for n in names]


def _now() -> str:
    return datetime.now().isoformat(timespec="seconds")


def read_status(run_dir: str | os.PathLike) -> dict[str, Any]:
    """``status.json`` as a dict; {} when absent. Retries briefly over a half-written file."""
    path = Path(run_dir) / "status.json"
    for attempt in range(5):
        try:
            data = json.loads(path.read_text())
            return data if isinstance(data, dict) else {}
        except FileNotFoundError:
            return {}
        except (json.JSONDecodeError, UnicodeDecodeError):
            if attempt == 4:
                return {"state": "unknown", "message": f"{path} is not valid JSON"}
            time.sleep(0.05)
    return {}  # pragma: no cover


def write_status(run_dir: str | os.PathLike, **updates: Any) -> dict[str, Any]:
    """Merge ``updates`` into ``status.json`` atomically (temp file + rename); stamps ``updated``."""
    run_dir = Path(run_dir)
    status = read_status(run_dir)
    status.update(updates)
    if "updated" not in updates:
        status["updated"] = _now()
    write_json(run_dir / "status.json", status, indent=2, default=str)
    return status


# ----------------------------------------------------------------------------- processes


def _proc_state(pid: int) -> str | None:
    """The one-letter state from /proc/<pid>/stat (Z = zombie), or None where unavailable."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # "pid (comm) S ...": comm may hold spaces and parentheses, so split after the last ")"
    rest = text[text.rfind(")") + 1:].split()
    return rest[0] if rest else None


def pid_alive(pid: int | None, expect: str | None = "mabe") -> bool:
    """True when process ``pid`` exists, is not a zombie and (where /proc exists) its command line
    mentions ``expect`` (guards against a reused pid). ``expect=None`` skips the command-line check."""
    if not pid or int(pid) <= 0:
        return False
    pid = int(pid)
    child = _children.get(pid)
    if child is not None and child.poll() is not None:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # exists, owned by someone else
    except OSError:
        return False
    if Path("/proc").is_dir():
        if _proc_state(pid) == "Z":
            with contextlib.suppress(ChildProcessError, OSError):
                os.waitpid(pid, os.WNOHANG)  # reap it if it is ours
            return False
        if expect is not None:
            try:
                cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
            except FileNotFoundError:
                return False
            except OSError:
                return True  # cannot read it: trust os.kill
            # empty: mid-exec (a vfork parent resumes before the new argv is in place); trust os.kill
            if cmdline and expect.encode().lower() not in cmdline.replace(b"\0", b" ").lower():
                return False
    return True


def run_state(status: dict[str, Any]) -> str:
    """The state to show: the trainer's, except ``running`` whose pid is gone -> ``died``."""
    state = str(status.get("state") or "unknown")
    if state == "running" and status.get("pid") and not pid_alive(status.get("pid")):
        return "died"
    return state


# ----------------------------------------------------------------------------- detach


def _child_argv(argv: list[str], run_dir: Path) -> list[str]:
    """``mabe`` argv -> the detached child's argv: no --detach, and pinned to ``run_dir``.

    ``argv`` may start with ``train`` or not. ``--name`` is replaced by the run directory's name and
    ``--set runs=<parent>`` added, so the child writes exactly to ``run_dir``; a ``--resume`` run
    already names its directory and is left as is.
    """
    args = list(argv)
    if args and args[0] == "train":
        args = args[1:]
    out: list[str] = []
    skip = False
    for a in args:
        if skip:
            skip = False
            continue
        if a == "--detach":
            continue
        if a == "--name":
            skip = True
            continue
        if a.startswith("--name="):
            continue
        out.append(a)
    resume = any(a == "--resume" or a.startswith("--resume=") for a in out)
    if not resume:
        out += ["--name", run_dir.name, "--set", f"runs={run_dir.parent}"]
    return [sys.executable, "-m", "mabe", "train", *out]


def detach(argv: list[str], run_dir: str | os.PathLike, command: list[str] | None = None) -> int:
    """Start a training run in the background, writing to ``run_dir``; print how to follow it.

    ``argv``: the ``mabe`` arguments (``--detach`` is dropped, the run name pinned to ``run_dir``).
    ``command``: run this instead of ``python -m mabe train ...`` (tests). The child runs in a new
    session (it survives the terminal), stdin from /dev/null, stdout+stderr appended to
    ``run_dir/log.txt``, with ``MABE_DETACHED=1`` in its environment (its output already goes to
    log.txt). ``status.json`` gets state ``running`` and the pid at once; the trainer updates it.
    """
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    status = read_status(run_dir)
    if status.get("state") == "running" and pid_alive(status.get("pid")):
        raise MabeError(f"run {run_dir} is already running (pid {status['pid']}); `mabe stop {run_dir}` first")
    holder = lock_holder(run_dir)
    if holder:
        raise MabeError(f"run {run_dir} is in use by process {holder}; wait for it or `mabe stop {run_dir}` first")
    cmd = list(command) if command is not None else _child_argv(argv, run_dir)
    env = dict(os.environ, PYTHONUNBUFFERED="1", MABE_DETACHED="1")
    log_path = run_dir / "log.txt"
    with open(log_path, "ab") as log:
        log.write(f"[{_now()}] detached: {' '.join(cmd)}\n".encode())
        log.flush()
        proc = subprocess.Popen(
            cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, env=env,
            start_new_session=True, close_fds=True,
        )
    _children[proc.pid] = proc
    # the child may already have written its own status; do not clobber it
    if read_status(run_dir).get("pid") != proc.pid:
        now = _now()
        write_status(run_dir, state="running", pid=proc.pid, started=now, updated=now,
                     message="started (detached)")
    name = run_dir.name
    root = run_dir.parent
    runs_opt = "" if root == Path("runs") else f" --runs {root}"
    print(f"run {name} started in the background (pid {proc.pid})")
    print(f"  directory: {run_dir}")
    print(f"  follow:    mabe logs {name} --follow{runs_opt}")
    print(f"  status:    mabe status{runs_opt}")
    print(f"  stop:      mabe stop {name}{runs_opt}   (graceful: finishes the step, writes checkpoints/last.pt)")
    return 0


# ----------------------------------------------------------------------------- logs


def logs(run: str | os.PathLike, follow: bool = False, runs_root: str | os.PathLike = RUNS_ROOT) -> int:
    """Print ``log.txt``; with ``follow``, stream new output until the run stops running.

    Returns 0, or with ``follow`` 1 when the run ended ``failed`` or ``died``. Ctrl-C stops following
    (the run goes on) and returns 0.
    """
    run_dir = resolve_run(run, runs_root)
    log_path = run_dir / "log.txt"
    out = sys.stdout
    decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
    pos = 0

    def pump() -> None:
        nonlocal pos
        try:
            with open(log_path, "rb") as f:
                size = os.fstat(f.fileno()).st_size
                if size < pos:  # truncated / rewritten: start over
                    pos = 0
                f.seek(pos)
                while chunk := f.read(1 << 20):
                    pos += len(chunk)
                    out.write(decoder.decode(chunk))
        except FileNotFoundError:
            return
        out.flush()

    if not follow:
        if not log_path.is_file():
            print(f"run {run_dir.name}: no log.txt yet ({log_path})", file=sys.stderr)
            return 1
        pump()
        return 0

    try:
        while True:
            status = read_status(run_dir)
            state = run_state(status)
            pump()
            if state != "running":
                break
            time.sleep(POLL_S)
        pump()  # whatever was written between the last read and the state change
        tail = decoder.decode(b"", final=True)
        if tail:
            out.write(tail)
    except KeyboardInterrupt:
        print(f"\n(stopped following; run {run_dir.name} goes on)", file=sys.stderr)
        return 0
    msg = status.get("message")
    print(f"--- run {run_dir.name}: {state}" + (f" ({msg})" if msg else ""), file=sys.stderr)
    return 1 if state in ("failed", "died") else 0


# ----------------------------------------------------------------------------- status


def _last_val_score(run_dir: Path) -> tuple[float | None, int | None]:
    """The last non-empty ``val_score`` in metrics.csv and the number of epoch rows."""
    path = run_dir / "metrics.csv"
    score, rows = None, 0
    try:
        with open(path, newline="") as f:
            for row in csv.DictReader(f):
                rows += 1
                v = (row.get("val_score") or "").strip()
                if v and v.lower() != "nan":
                    with contextlib.suppress(ValueError):
                        score = float(v)
    except OSError:
        return None, None
    return score, rows


def _parse_time(value: Any) -> datetime | None:
    if value is None or value == "":
        return None
    if isinstance(value, (int, float)):
        return datetime.fromtimestamp(float(value))
    try:
        t = datetime.fromisoformat(str(value))
    except ValueError:
        return None
    return t.astimezone().replace(tzinfo=None) if t.tzinfo else t


def list_runs(runs_root: str | os.PathLike = RUNS_ROOT) -> list[dict[str, Any]]:
    """One dict per run directory under ``runs_root``, oldest first.

    Keys: name, path, state (running | finished | failed | stopped | died | unknown), pid, epoch,
    epochs, best_f1, best_epoch, last_val_score, device, started, updated, message.
    """
    root = Path(runs_root)
    out = []
    for name in _available(root):
        run_dir = root / name
        status = read_status(run_dir)
        score, rows = _last_val_score(run_dir)
        epoch = status.get("epoch")
        if epoch is None and rows:
            epoch = rows
        updated = status.get("updated")
        if updated is None:
            mtimes = [(run_dir / m).stat().st_mtime for m in _RUN_MARKERS if (run_dir / m).exists()]
            updated = max(mtimes) if mtimes else None
        out.append({
            "name": name,
            "path": str(run_dir),
            "state": run_state(status) if status else "unknown",
            "pid": status.get("pid"),
            "epoch": epoch,
            "epochs": status.get("epochs"),
            "best_f1": status.get("best_f1"),
            "best_epoch": status.get("best_epoch"),
            "last_val_score": score,
            "device": status.get("device"),
            "started": status.get("started"),
            "updated": updated,
            "message": status.get("message"),
        })

    def key(r: dict[str, Any]) -> tuple[float, str]:
        t = _parse_time(r["started"]) or _parse_time(r["updated"])
        return (t.timestamp() if t else 0.0, r["name"])

    return sorted(out, key=key)


def _ago(value: Any) -> str:
    t = _parse_time(value)
    if t is None:
        return "-" if value in (None, "") else str(value)
    s = (datetime.now() - t).total_seconds()
    if s < 0:
        rel = "just now"
    elif s < 60:
        rel = f"{s:.0f}s ago"
    elif s < 3600:
        rel = f"{s / 60:.0f}m ago"
    elif s < 86400:
        rel = f"{s / 3600:.1f}h ago"
    else:
        rel = f"{s / 86400:.1f}d ago"
    return f"{t:%Y-%m-%d %H:%M:%S} ({rel})"


def _fmt(x: Any, spec: str = ".4f") -> str:
    if x is None or x == "":
        return "-"
    try:
        return format(float(x), spec)
    except (TypeError, ValueError):
        return str(x)


_STATE_STYLE = {
    "running": "bold cyan", "finished": "green", "stopped": "yellow", "failed": "bold red",
    "died": "bold red", "unknown": "dim",
}


def print_status(runs_root: str | os.PathLike = RUNS_ROOT) -> None:
    """A table of every run under ``runs_root``: state, progress, best F1, last score, device, time."""
    from rich.console import Console
    from rich.table import Table

    console = Console()
    if not console.is_terminal:  # piped / captured: do not squeeze the table into 80 columns
        console = Console(width=160)
    rows = list_runs(runs_root)
    if not rows:
        console.print(f"no runs under {runs_root}/")
        return
    table = Table(title=f"runs in {runs_root}/", header_style="bold")
    for col, justify in [("run", "left"), ("state", "left"), ("epoch", "right"), ("best F1 (epoch)", "right"),
                         ("last val score", "right"), ("device", "left"), ("updated", "left")]:
        table.add_column(col, justify=justify, no_wrap=col in ("run", "updated"))
    for r in rows:
        state = r["state"]
        style = _STATE_STYLE.get(state, "")
        epoch = "-" if r["epoch"] is None else str(r["epoch"])
        if r["epochs"] is not None:
            epoch += f"/{r['epochs']}"
        best = _fmt(r["best_f1"])
        if r["best_epoch"] is not None and r["best_f1"] is not None:
            best += f" ({r['best_epoch']})"
        label = f"[{style}]{state}[/]" if style else state
        if state == "died":
            label += f" [dim](pid {r['pid']} gone)[/]"
        table.add_row(r["name"], label, epoch, best, _fmt(r["last_val_score"]), str(r["device"] or "-"),
                      _ago(r["updated"]))
    console.print(table)


# ----------------------------------------------------------------------------- stop


def stop(run: str | os.PathLike, runs_root: str | os.PathLike = RUNS_ROOT, wait: bool = True,
         timeout: float = STOP_TIMEOUT_S) -> int:
    """Ask a running run to stop: SIGTERM to its pid (the trainer finishes the step, writes
    checkpoints/last.pt and marks itself ``stopped``). With ``wait``, wait up to ``timeout`` s.

    Returns 0 once it has stopped (or, without ``wait``, once signalled); 1 when it was not running
    or did not exit in time.
    """
    run_dir = resolve_run(run, runs_root)
    status = read_status(run_dir)
    state = run_state(status) if status else "unknown"
    pid = status.get("pid")
    if state != "running":
        why = f"its pid {pid} is gone" if state == "died" else f"state: {state}"
        print(f"run {run_dir.name} is not running ({why}); nothing to stop")
        return 1
    if not pid_alive(pid):  # state running without a pid
        print(f"run {run_dir.name} says running but records no live pid ({pid}); nothing to stop")
        return 1
    pid = int(pid)
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        print(f"run {run_dir.name}: pid {pid} exited before it could be signalled")
        return 1
    print(f"run {run_dir.name}: sent SIGTERM to pid {pid}; it finishes the current step and writes a checkpoint")
    if not wait:
        return 0
    deadline = time.monotonic() + timeout
    while pid_alive(pid):
        if time.monotonic() > deadline:
            print(f"run {run_dir.name}: still running after {timeout:.0f} s (pid {pid}); "
                  f"wait longer, or force it with `kill -9 {pid}` (loses the current epoch)")
            return 1
        time.sleep(0.2)
    final = read_status(run_dir)
    if final.get("state") == "running" and final.get("pid") == pid:
        # exited on the signal without writing its own status (e.g. before the handler was installed)
        final = write_status(run_dir, state="stopped", message="stopped by SIGTERM (status written by mabe stop)")
    state = final.get("state", "unknown")
    last = run_dir / "checkpoints" / "last.pt"
    ckpt = f"; checkpoint {last}" if last.is_file() else ""
    print(f"run {run_dir.name}: {state}" + (f" at epoch {final['epoch']}" if final.get("epoch") is not None else "")
          + ckpt)
    return 0 if state in ("stopped", "finished") else 1
