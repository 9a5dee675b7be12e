"""Everything a run writes besides checkpoints (log.txt, metrics.csv, status.json, tb/), and the
graceful stop on SIGTERM / SIGINT. Only rank 0 writes; elsewhere every method is a no-op.
"""

from __future__ import annotations

import csv
import os
import signal
import sys
import threading
from datetime import datetime
from pathlib import Path
from typing import Any

import torch

from mabe import runs
from mabe.config import Config

__all__ = ["METRICS_COLUMNS", "RunLog", "StopRequest", "STOP_CHECK_STEPS", "epoch_line", "nonfinite_message"]

METRICS_COLUMNS = (
    "epoch", "phase", "lr", "loss", "val_loss", "val_f1", "val_acc", "val_score", "epoch_time_s",
    "windows_per_s", "skipped_steps",
)


class _Tee:
    """Write to the terminal and to log.txt."""

    def __init__(self, stream: Any, path: Path):
        self.stream = stream
        self.file = open(path, "a", buffering=1)  # noqa: SIM115 - closed by RunLog.close

    def write(self, text: str) -> int:
        self.file.write(text)
        return self.stream.write(text)

    def flush(self) -> None:
        self.stream.flush()
        self.file.flush()

    def isatty(self) -> bool:
        return self.stream.isatty()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.stream, name)


class RunLog:
    """Everything a run writes besides checkpoints: log.txt, metrics.csv, status.json, tb/.

    Only rank 0 writes; elsewhere every method is a no-op.
    """

    def __init__(self, run_dir: Path, cfg: Config, enabled: bool, resume_epoch: int | None = None):
        self.run_dir, self.enabled = run_dir, enabled
        self.tee = None
        self.tb = None
        if not enabled:
            return
        if not os.environ.get("MABE_DETACHED"):  # a detached run's stdout already goes to log.txt
            self.tee = _Tee(sys.stdout, run_dir / "log.txt")
            sys.stdout = self.tee
        self.csv_path = run_dir / "metrics.csv"
        if resume_epoch is None or not self.csv_path.is_file():
            with open(self.csv_path, "w", newline="") as f:
                csv.writer(f).writerow(METRICS_COLUMNS)
        else:  # drop rows past the checkpoint: they will be recomputed
            with open(self.csv_path, newline="") as f:
                rows = [r for r in csv.DictReader(f) if int(r["epoch"]) <= resume_epoch]
            with open(self.csv_path, "w", newline="") as f:
                w = csv.DictWriter(f, METRICS_COLUMNS)
                w.writeheader()
                w.writerows(rows)
        if cfg.train.tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.tb = SummaryWriter(str(run_dir / "tb"))
            except ImportError:
                print("tensorboard is not installed: no tb/ logs (pip install tensorboard)")

    def print(self, *args: Any) -> None:
        if self.enabled:
            print(*args, flush=True)

    def status(self, **fields: Any) -> None:
        if self.enabled:
            runs.write_status(self.run_dir, **fields)

    def epoch(self, row: dict) -> None:
        if not self.enabled:
            return
        with open(self.csv_path, "a", newline="") as f:
            csv.writer(f).writerow([_csv_value(row.get(c)) for c in METRICS_COLUMNS])
        if self.tb is not None:
            for key in ("lr", "loss", "val_loss", "val_f1", "val_acc", "val_score", "windows_per_s"):
                if row.get(key) is not None:
                    self.tb.add_scalar(key, row[key], row["epoch"])
            self.tb.flush()

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()
        if self.tee is not None:
            sys.stdout = self.tee.stream
            self.tee.file.close()
            self.tee = None


def _csv_value(v: Any) -> str:
    if v is None:
        return ""
    if isinstance(v, float):
        return f"{v:.8g}"
    return str(v)


def now() -> str:
    """The local time, to the second, as status.json records it."""
    return datetime.now().isoformat(timespec="seconds")


STOP_CHECK_STEPS = 10  # DDP: the ranks agree on a stop request every this many optimizer steps


class StopRequest:
    """SIGTERM / SIGINT -> finish the current step, write last.pt, exit as ``stopped``.

    A second Ctrl-C interrupts at once. Under DDP a signal may reach one rank only (``mabe stop``
    signals rank 0, the pid in status.json) or reach the ranks at different steps (torchrun forwards
    its SIGTERM to every rank): ``check(step)`` all-reduces the flag (MAX) every ``STOP_CHECK_STEPS``
    optimizer steps, a step number every rank shares, so all ranks leave the loop after the same
    step and rank 0 writes the one checkpoint. One process reads its own flag every step, for free.
    """

    def __init__(self, log: RunLog, world: int = 1, device: torch.device | None = None,
                 every: int = STOP_CHECK_STEPS):
        self.requested = False
        self.signal_name: str | None = None
        self.announced = False
        self.log = log
        self.world, self.device, self.every = world, device, max(int(every), 1)
        self._old: dict[int, Any] = {}
        if threading_main():
            for sig in (signal.SIGTERM, signal.SIGINT):
                self._old[sig] = signal.signal(sig, self._handle)

    def check(self, step: int) -> bool:
        """Stop after optimizer step ``step``? The same answer on every rank (a collective every
        ``every`` steps under DDP, so every rank must call it after every step)."""
        if self.world == 1:
            return self.requested and self._announce()
        return step % self.every == 0 and self.agree()

    def agree(self) -> bool:
        """Whether any rank was asked to stop (every rank must call it at the same point)."""
        if self.world == 1:
            return self.requested and self._announce()
        flag = torch.tensor([1.0 if self.requested else 0.0], device=self.device)
        torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX)
        # answer what was reduced, never the local flag read again: a signal that lands during the
        # collective would make this rank leave alone (the others reduced a 0); it counts next check
        if flag.item() == 0:
            return False
        self.requested = True
        return self._announce()

    def _handle(self, signum: int, frame: Any) -> None:
        if self.requested and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.requested = True
        # no print here: a handler that writes while the interrupted code is inside a write to the same
        # stream raises "reentrant call" (and under DDP that one rank's error aborts the others)
        self.signal_name = signal.Signals(signum).name

    def _announce(self) -> bool:
        """Say once, from the training loop, that the run is stopping; returns True."""
        if not self.announced:
            self.announced = True
            why = self.signal_name or "stop requested on another rank"
            self.log.print(f"\n{why}: finishing the current step, then saving checkpoints/last.pt")
        return True

    def restore(self) -> None:
        for sig, old in self._old.items():
            signal.signal(sig, old)
        self._old = {}


def threading_main() -> bool:
    """Whether this is the main thread (the only one that may install signal handlers)."""
    return threading.current_thread() is threading.main_thread()


def nonfinite_message(worst: int, step: int) -> str:
    return (f"{worst} optimizer steps in a row had a non-finite loss or gradient (at step {step}); "
            "try a lower train.lr or longer train.warmup_epochs")


def epoch_line(row: dict, epochs: int) -> str:
    """``Epoch 3/100 (warmup) lr=4.0e-04 loss=0.2512 val_loss=0.3011 F1=0.3912 acc=0.9809 score=0.4102 time=51s``."""
    parts = [f"Epoch {row['epoch']}/{epochs}" + (" (warmup)" if row["phase"] == "warmup" else ""),
             f"lr={row['lr']:.1e}", f"loss={row['loss']:.4f}"]
    if row.get("val_f1") is not None:
        parts += [f"val_loss={row['val_loss']:.4f}", f"F1={row['val_f1']:.4f}", f"acc={row['val_acc']:.4f}"]
    if row.get("val_score") is not None:
        parts.append(f"score={row['val_score']:.4f}")
    parts.append(f"time={row['epoch_time_s']:.0f}s")
    if row.get("skipped_steps"):
        parts.append(f"skipped={row['skipped_steps']}")
    return " ".join(parts)
