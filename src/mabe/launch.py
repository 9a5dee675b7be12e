"""The launcher of ``mabe train``: config and run directory, torchrun relaunch, detach, resume.

``resolve(args)`` turns the command line into what the recipe needs; ``relaunch`` restarts the
command under torchrun (``--nproc N``) with SIGTERM forwarded. Nothing here trains: ``mabe.train``
calls these, then ``train(cfg, run_dir, resume)``.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import warnings
from datetime import datetime
from pathlib import Path
from typing import Any

from mabe import checkpoint as ckpt
from mabe import paths, runs
from mabe.config import Config, ConfigError, config_from_dict, load_config, parse_overrides
from mabe.config import _merge as merge  # the config loader's own override merge
from mabe.errors import MabeError
from mabe.training.runlog import threading_main

__all__ = ["RESUMABLE_KEYS", "resume_config", "argv_from_args", "needs_relaunch", "relaunch", "resolve"]

# keys a resumed run may change; anything under model/features/task/windows must match the checkpoint
RESUMABLE_KEYS = {
    "data", "cache", "runs", "name", "train.epochs", "train.early_stopping_patience", "train.save_freq",
    "train.device", "train.data_path", "train.num_workers", "train.tensorboard", "train.val_every",
    "train.max_nonfinite_steps", "train.compile", "train.num_threads", "train.cuda_graphs",
}


def _flatten(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict) and k not in ("classes",):
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def resume_config(run_dir: Path, overrides: list[str] | None, data: Path | None) -> Config:
    """The checkpoint's config plus the overrides a resume may change (e.g. train.epochs)."""
    state = ckpt.load(run_dir / "checkpoints" / "last.pt")
    raw = state[ckpt.CONFIG_KEY]
    extra = parse_overrides(overrides)
    if data is not None:
        extra["data"] = str(data)
    changed = _flatten(extra)
    base = _flatten(raw)
    fixed = [k for k in changed if k not in RESUMABLE_KEYS and base.get(k, object()) != changed[k]]
    if fixed:
        frozen = [k for k in fixed if k.split(".")[0] in ("model", "features", "task", "windows")]
        if frozen:
            raise ConfigError(f"--resume {run_dir}: cannot change {', '.join(frozen)} (fixed by the checkpoint)")
        warnings.warn(f"--resume {run_dir}: changing {', '.join(fixed)}; the run will not match an "
                      "uninterrupted one", stacklevel=2)
    return config_from_dict(merge(raw, extra), where=f"{run_dir}/checkpoints/last.pt (with overrides)")


def argv_from_args(args: Any) -> list[str]:
    """The ``mabe train`` arguments of ``args`` (for a torchrun relaunch or a detached child)."""
    argv = ["train"]
    if getattr(args, "config", None):
        argv += ["--config", str(args.config)]
    for o in getattr(args, "overrides", None) or []:
        argv += ["--set", o]
    if getattr(args, "data", None):
        argv += ["--data", str(args.data)]
    if getattr(args, "name", None):
        argv += ["--name", args.name]
    if getattr(args, "resume", None):
        argv += ["--resume", str(args.resume)]
    return argv


def _run_forwarding_signals(cmd: list[str]) -> int:
    """Run torchrun; pass a SIGTERM on to it (it forwards it to every rank, which stop gracefully), so
    ``kill`` on this wrapper leaves no orphaned training behind. A terminal's Ctrl-C already reaches
    torchrun (same process group): the wrapper only waits, since a second SIGINT would make torchrun
    abandon its graceful shutdown."""
    proc = subprocess.Popen(cmd)

    def forward(signum: int, frame: Any) -> None:
        if signum == signal.SIGTERM and proc.poll() is None:
            proc.send_signal(signum)

    old = {sig: signal.signal(sig, forward) for sig in (signal.SIGTERM, signal.SIGINT)} if threading_main() else {}
    try:
        return proc.wait()
    finally:
        for sig, handler in old.items():
            signal.signal(sig, handler)


def needs_relaunch(args: Any) -> bool:
    """``--nproc N`` (N > 1) outside torchrun: the command must restart under torchrun."""
    nproc = getattr(args, "nproc", None)
    return bool(nproc and nproc > 1 and "WORLD_SIZE" not in os.environ)


def relaunch(args: Any) -> int:
    """Run this ``mabe train`` under ``torchrun --standalone --nproc_per_node N``; its exit code."""
    argv = argv_from_args(args)
    if not getattr(args, "name", None) and not getattr(args, "resume", None):
        argv += ["--name", datetime.now().strftime("%Y%m%d-%H%M%S")]  # every rank must agree
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={args.nproc}",
           "-m", "mabe", *argv]
    print("launching:", " ".join(cmd))
    return _run_forwarding_signals(cmd)


def resolve(args: Any) -> tuple[Config, Path, bool]:
    """``mabe train`` arguments -> (config, run directory, resume?); a clear error for a missing
    checkpoint to resume or an existing run to overwrite."""
    if getattr(args, "resume", None):
        base = load_config(args.config, None) if getattr(args, "config", None) else Config()
        run_dir = runs.resolve_run(str(args.resume), base.runs)
        if not (run_dir / "checkpoints" / "last.pt").is_file():
            raise MabeError(f"--resume {args.resume}: no checkpoints/last.pt in {run_dir}")
        return resume_config(run_dir, args.overrides, args.data), run_dir, True
    cfg = load_config(args.config, args.overrides)
    if getattr(args, "data", None):
        cfg.data = str(args.data)
    if getattr(args, "name", None):
        cfg.name = args.name
    name = cfg.name or datetime.now().strftime("%Y%m%d-%H%M%S")
    run_dir = runs.run_dir_for(cfg.runs, name)  # a plain name, under cfg.runs
    holder = runs.lock_holder(run_dir)
    if holder is not None:  # a live run says so first, whether or not it has written a checkpoint yet
        raise paths.LockedError(f"run {run_dir}", run_dir / runs.LOCK_FILE, holder if holder > 0 else None)
    if (run_dir / "checkpoints" / "last.pt").is_file():
        raise MabeError(f"run {run_dir} already exists; continue it with `mabe train --resume {run_dir}` "
                        "or pick another --name")
    return cfg, run_dir, False


def detach(args: Any, run_dir: Path) -> int:
    """Start the run in the background (``--detach``), writing to ``run_dir``."""
    return runs.detach(argv_from_args(args) + (["--name", run_dir.name] if not args.resume else []), run_dir)
