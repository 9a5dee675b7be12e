"""The training recipe, top to bottom: setup -> epochs -> validate -> save -> cleanup.

    mabe train --config configs/h100.yaml --data DATA --name NAME      # one process
    mabe train --config configs/h100.yaml --nproc 8                    # DDP under torchrun
    mabe train --resume NAME                                           # continue exactly

``train(cfg, run_dir, resume)`` sets the run directory up and runs a ``Recipe``; ``Recipe.__init__``
is the setup (data, model, optimizer, schedule, counters, the step), ``run`` the epochs, ``epoch`` one
pass over the batches, ``validate`` and ``save`` what their names say. The components (``mabe.training``)
know nothing of this file; the launcher (torchrun relaunch, detach, resume) is ``mabe.launch``.

Exactness on resume: the windows an epoch visits, their jitter, the augmentation noise, the
mixup draws and the geometric (position) draws are pure functions of (seed, epoch, micro-batch); the global RNGs (dropout), the
optimizer, the schedule and every counter come from the checkpoint. On CPU a resumed run ends with
exactly the metrics of an uninterrupted one.

The step never waits for the device: losses and skip counters accumulate in device tensors and are
read once per epoch (and the non-finite streak once every ``max_nonfinite_steps`` steps).
"""

from __future__ import annotations

import contextlib
import math
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
from tqdm.auto import tqdm

from mabe import checkpoint as ckpt
from mabe import launch, models, prepare, runs
from mabe.config import Config, config_to_dict
from mabe.errors import TrainingError
from mabe.evaluate import competition_score, predict_tracks, trackset_metrics, write_validation
from mabe.training.augment import augment, batch_rng
from mabe.training.batches import Batches
from mabe.training.data import load_tracksets
from mabe.training.device import (
    cpu_threads,
    pick_device,
    resolve_lstm_precision,
    resolve_precision,
    seed_everything,
    setup_backends,
)
from mabe.training.distributed import (
    all_reduce_sum,
    broadcast_floats,
    gather_rng_states,
    init_distributed,
    wrap_model,
)
from mabe.training.ema import EMA
from mabe.training.losses import loss_weights, mixed_loss, prob_loss
from mabe.training.optim import load_optimizer_state, make_optimizer, param_groups
from mabe.training.progress import (
    Progress,
    adapt_resume,
    checkpoint_state,
    last_checkpoint_note,
    save_checkpoint,
)
from mabe.training.runlog import RunLog, StopRequest, epoch_line, nonfinite_message, now
from mabe.training.schedule import LRSchedule, lr_factor
from mabe.training.step import accumulation_group, make_train_step
from mabe.windows import (
    window_index,
    window_weights,
)

__all__ = ["train", "Recipe", "main_from_args"]


class Recipe:
    """One training run; ``__init__`` is the setup, ``run()`` the epochs (see the module docstring)."""

    def __init__(self, cfg: Config, run_dir: Path, state: dict | None, log: RunLog, rank: int, world: int,
                 device: torch.device):
        self.cfg, self.run_dir, self.log, self.rank, self.world, self.device = cfg, run_dir, log, rank, world, device
        self.master = rank == 0
        self.precision = resolve_precision(cfg.train.precision, device)
        tc = self.tc = cfg.train
        setup_backends(device, deterministic=tc.deterministic)  # CUDA: TF32, cudnn.benchmark unless deterministic
        if tc.deterministic:
            torch.use_deterministic_algorithms(True, warn_only=True)
        if tc.num_threads is not None:
            torch.set_num_threads(cpu_threads(tc.num_threads))  # train() puts the old value back
        seed_everything(tc.seed + rank)

        # ---- data
        if world > 1:  # rank 0 prepares a missing cache alone (shared filesystem); the others wait, then read it
            if self.master:
                prepare.ensure_cache(cfg, Path(cfg.data), ["train"])
            torch.distributed.barrier()
        saved_stats = {k: v.numpy() for k, v in state[ckpt.NORM_KEY].items()} if state else None
        saved_labs = state.get(ckpt.LABS_KEY) if state else None
        self.train_ts, self.val_ts, self.stats = load_tracksets(cfg, saved_stats, log.print, device, saved_labs)
        if state is not None and list(state[ckpt.OUTPUTS_KEY]) != self.train_ts.names:
            raise TrainingError(f"the checkpoint predicts {state[ckpt.OUTPUTS_KEY]}, the data gives {self.train_ts.names}")
        W, B, accum = cfg.windows.sequence_length, tc.batch_size, tc.grad_accum
        windows = window_index(self.train_ts.lengths, W, cfg.windows.frame_gap)
        weights = window_weights(self.train_ts, windows, W, cfg.windows.rare_oversample)
        n_draw = (tc.steps_per_epoch * B * accum * world if tc.steps_per_epoch
                  else min(len(windows), cfg.windows.max_windows_per_epoch or len(windows)))
        path = "resident" if tc.data_path in ("auto", "gpu") else tc.data_path  # CPU: the same gather in-process
        self.batches = Batches(self.train_ts, windows, weights, cfg, device, path, n_draw, rank, world)
        if path == "resident":
            log.print(self.batches.store.message)
        self.val_arrays = self.val_ts.tensors(device)

        # ---- model, loss weights, optimizer, schedule
        torch.manual_seed(tc.seed)  # the same initial weights on every rank
        model = models.create(cfg.model.name, self.train_ts.n_features, self.train_ts.n_outputs, cfg.model)
        lstm_precision = resolve_lstm_precision(tc.lstm_precision, device)
        if not models.set_lstm_precision(model, lstm_precision):
            log.print(f"train.lstm_precision={lstm_precision}: model {cfg.model.name} has no LSTM precision to set")
        self.raw_model, self.model = wrap_model(model.to(device), cfg.model, world, device, log.print)
        self.ema = EMA(self.raw_model, tc.ema_decay) if tc.ema_decay > 0 else None  # validation's weights
        n_params = sum(p.numel() for p in self.raw_model.parameters())
        self.class_weight, self.pos_weight = loss_weights(cfg.task, self.train_ts, device)
        scale = lr_factor(tc.lr_scaling, accum * world)  # global batch B * world * accum, relative to B
        # one CUDA graph per step: static shapes and one process; mixup's lambda is a Python float
        use_graphs = (tc.cuda_graphs and device.type == "cuda" and world == 1 and accum == 1
                      and cfg.augment.mixup_alpha == 0)
        self.optimizer = make_optimizer(param_groups(self.raw_model, tc.weight_decay), tc.lr * scale, betas=tc.betas,
                                        fused=tc.fused_adamw, capturable=use_graphs)
        n_micro = self.batches.n_micro(0)
        steps_per_epoch = math.ceil(n_micro / accum)
        self.schedule = LRSchedule(self.optimizer, tc.lr * scale, round(tc.warmup_epochs * steps_per_epoch), tc)

        # ---- counters (fresh or from the checkpoint)
        self.progress = Progress()
        if state is not None:
            self.resume_from(state, steps_per_epoch)
        log.print(f"model: {cfg.model.name}, {n_params:,} parameters | device {device}, {self.precision}, "
                  f"data path {path} | batch {B} x accum {accum} x {world} process(es), lr {tc.lr:g} x {scale:g} "
                  f"({tc.lr_scaling} scaling) | {len(windows):,} windows, {n_micro} micro-batches "
                  f"({steps_per_epoch} steps) per epoch, warmup {self.schedule.warmup_steps} steps")

        # ---- the step (after the checkpoint was loaded: a CUDA graph captures the optimizer's state)
        self.step = make_train_step(self.model, self.loss, self.optimizer, precision=self.precision,
                                    grad_clip=tc.grad_clip, cuda_graphs=use_graphs, compile=tc.compile, accum=accum)
        log.print(f"step: {self.step.describe()}")
        if tc.cuda_graphs and device.type == "cuda" and not use_graphs:
            log.print("train.cuda_graphs needs one process, grad_accum 1 and augment.mixup_alpha 0: running eagerly")
        self.gen = torch.Generator(device=device)

    def resume_from(self, state: dict, steps_per_epoch: int) -> None:
        """Weights, optimizer, schedule, counters and RNGs of a checkpoint (converted to this global batch)."""
        p = self.progress = Progress.from_state_dict(state)
        self.raw_model.load_state_dict(state[ckpt.MODEL_KEY])
        if self.ema is not None:
            if state.get(ckpt.EMA_KEY):
                self.ema.load_state_dict(state[ckpt.EMA_KEY])
            else:  # a run without EMA continued with one: the average starts at the resumed weights
                self.ema = EMA(self.raw_model, self.tc.ema_decay)
                self.log.print("train.ema_decay: the checkpoint has no weight average; starting one here")
        load_optimizer_state(self.optimizer, state[ckpt.OPTIMIZER_KEY])
        self.schedule.load_state_dict(state[ckpt.SCHEDULER_KEY])
        if self.rank > 0:  # the saved window count is every rank's: rank 0 carries it on (loss sums are per step)
            p.epoch_state = dict(p.epoch_state, windows=0)
        rank_rngs = state.get(ckpt.RANK_RNG_KEY)
        if rank_rngs is not None and len(rank_rngs) == self.world:  # DDP with as many ranks: each its own RNGs
            ckpt.set_rng_state(rank_rngs[self.rank])
        else:
            ckpt.set_rng_state(state[ckpt.RNG_KEY])
            if self.rank > 0:  # more ranks than the checkpoint had: not rank 0's dropout draws
                seed_everything(self.tc.seed + self.rank + 7919 * (p.step + 1))
        p.step, p.micro = adapt_resume(state, self.cfg, self.world, self.schedule, p.step, p.micro, steps_per_epoch,
                                       self.log)
        self.log.print(f"resumed {self.run_dir} at epoch {p.epoch}" + (f", micro-batch {p.micro}" if p.micro else "")
                       + f", step {p.step}, best F1 {p.best_f1:.4f} (epoch {p.best_epoch})")

    def loss(self, logits: torch.Tensor, b: dict) -> torch.Tensor:
        """The batch's loss as the step calls it; a mixup draw travels in the batch (eager only)."""
        mix = (b["mix_lam"], b["mix_perm"]) if "mix_perm" in b else None
        return mixed_loss(self.cfg.task.mode, logits, b, mix, class_weight=self.class_weight,
                          pos_weight=self.pos_weight, label_smoothing=self.cfg.task.label_smoothing)

    def run(self) -> dict:
        """The epochs: train, validate, schedule, checkpoints, early stopping; the summary dict."""
        tc, p, log = self.tc, self.progress, self.log
        stop = StopRequest(log, self.world, self.device)
        outcome, epoch = "finished", p.epoch
        log.status(message="training")
        try:
            for epoch in range(p.epoch, tc.epochs):
                row = self.epoch(epoch, stop)
                if row is None:  # stopped mid-epoch: last.pt written
                    outcome = "stopped"
                    break
                val = None
                if (epoch + 1) % tc.val_every == 0 or epoch + 1 == tc.epochs:
                    val = self.validate()
                    row.update(val_loss=val["loss"], val_f1=val["f1_macro"], val_acc=val["accuracy"],
                               val_score=val["score"])
                    p.record(val["f1_macro"], epoch + 1)
                self.schedule.after_epoch(val["f1_macro"] if val else None, p.step)
                row["lr"] = self.schedule.lr
                row["epoch_time_s"] = time.perf_counter() - row.pop("t0")
                log.epoch(row)
                log.print(epoch_line(row, tc.epochs))
                early = tc.early_stopping_patience > 0 and p.since_best >= tc.early_stopping_patience
                stopping = stop.agree()  # DDP: a collective, so every rank takes the same branch below
                p.epoch, p.micro, p.epoch_state = epoch + 1, 0, {}
                done = epoch + 1 == tc.epochs or early or stopping
                rank_rngs = gather_rng_states(self.world)
                metrics = dict(row)
                if val is not None and p.best_epoch == epoch + 1:
                    self.save("best.pt", metrics, rank_rngs)
                if (epoch + 1) % tc.save_freq == 0 or done:
                    self.save("last.pt", metrics, rank_rngs)
                log.status(epoch=epoch + 1, best_f1=p.best_f1, best_epoch=p.best_epoch,
                           message=f"epoch {epoch + 1} done")
                if stopping:
                    outcome = "stopped"
                    break
                if early:
                    log.print(f"early stopping: no better validation F1 for {p.since_best} epochs "
                              f"(best {p.best_f1:.4f} at epoch {p.best_epoch})")
                    outcome = "early_stopped"
                    break
        finally:
            stop.restore()
        return self.finish(outcome, epoch)

    def epoch(self, epoch: int, stop: StopRequest) -> dict | None:
        """One pass over the epoch's micro-batches; its metrics row, or None when a stop saved it mid-way."""
        tc, p, step = self.tc, self.progress, self.step
        t0 = time.perf_counter()
        self.model.train()
        n_micro = self.batches.n_micro(epoch)
        first, part = p.micro, p.epoch_state
        # the epoch's counters live in the step (device tensors, filled in place)
        step.set_stats(loss_sum=float(part.get("loss_sum", 0.0)), n_finite=int(part.get("n_loss", 0)),
                       steps=first, skipped=int(part.get("skipped", 0)))
        n_windows, t_train = int(part.get("windows", 0)), float(part.get("train_s", 0.0))
        phase = part.get("phase") or ("warmup" if self.schedule.in_warmup(p.step) else "train")
        bar = tqdm(total=n_micro, initial=first, desc=f"epoch {epoch + 1}/{tc.epochs}", leave=False,
                   disable=not self.master or not sys.stderr.isatty(), file=sys.stderr, dynamic_ncols=True)
        stopped_at = None
        for j, b in self.batches.epoch(epoch, first):
            rng = batch_rng(tc.seed, self.rank, epoch, j)
            self.gen.manual_seed(int(rng.integers(2**62)))
            b, mix = augment(b, self.cfg.augment, self.gen, rng)
            if mix is not None:
                b["mix_lam"], b["mix_perm"] = mix
            group_size, last = accumulation_group(j, n_micro, tc.grad_accum)
            self.schedule.before_step(p.step)
            step(b, group_size=group_size, last=last)  # forward, backward, (clip, AdamW, counters); no host sync
            n_windows += b["x"].shape[0]
            bar.update(1)
            if not last:
                continue
            p.step += 1
            if self.ema is not None:
                self.ema.update(self.raw_model)
            if p.step % tc.max_nonfinite_steps == 0 and int(step.worst) >= tc.max_nonfinite_steps:
                raise TrainingError(nonfinite_message(int(step.worst), p.step))
            if stop.check(p.step):  # DDP: every rank leaves after the same step
                stopped_at = j + 1
                break
        bar.close()
        t_train += time.perf_counter() - t0
        st = step.stats(reset=True)  # the epoch's one sync
        if st["worst_streak"] >= tc.max_nonfinite_steps:
            raise TrainingError(nonfinite_message(st["worst_streak"], p.step))
        # DDP: loss sums per step (the mean over ranks, as one process with the global batch would count
        # them) and the windows of every rank, so a resume with any number of processes adds up
        ep_loss, ep_n, n_windows = all_reduce_sum([st["loss_sum"] / self.world, st["n_finite"] / self.world,
                                                   n_windows], self.device, self.world)
        if stopped_at is not None and stopped_at < n_micro:  # mid-epoch: save and leave
            p.micro = stopped_at
            p.epoch_state = {"loss_sum": ep_loss, "n_loss": ep_n, "skipped": st["skipped"], "windows": int(n_windows),
                             "train_s": t_train, "phase": phase}
            self.save("last.pt", None, gather_rng_states(self.world))
            return None
        p.micro, p.epoch_state = 0, {}
        return {"epoch": epoch + 1, "phase": phase, "loss": ep_loss / max(ep_n, 1.0), "skipped_steps": st["skipped"],
                "windows_per_s": n_windows / max(t_train, 1e-9), "t0": t0}

    def validate(self) -> dict:
        """Validation metrics (F1, accuracy, loss, competition score) and probabilities of the current
        weights (their moving average with ``train.ema_decay``)."""
        cfg, val_ts = self.cfg, self.val_ts
        with self.ema.applied(self.raw_model) if self.ema is not None else contextlib.nullcontext():
            probs = predict_tracks(self.raw_model, val_ts, batch=self.tc.batch_size, stride=cfg.windows.eval_stride,
                                   length=cfg.windows.sequence_length, device=self.device, precision=self.precision,
                                   arrays=self.val_arrays)
        m = trackset_metrics(val_ts, probs)
        cw = np.asarray(cfg.task.class_weights) if cfg.task.class_weights else None
        pw = self.pos_weight.cpu().numpy() if self.pos_weight is not None else None
        m["loss"] = prob_loss(val_ts, probs, cw, pw)
        # every rank validates the same weights on the same videos; rank 0's numbers decide for all
        m["f1_macro"], m["accuracy"], m["loss"] = broadcast_floats([m["f1_macro"], m["accuracy"], m["loss"]],
                                                                   self.device, self.world)
        m["score"] = competition_score(val_ts, probs, cfg.data, cfg.postprocess) if self.master else None
        return m | {"probs": probs}

    def save(self, name: str, metrics: dict | None, rank_rngs: list | None) -> None:
        """checkpoints/<name>: everything needed to resume or to predict (rank 0 only)."""
        if not self.master:
            return
        save_checkpoint(self.run_dir / "checkpoints" / name, checkpoint_state(
            self.raw_model, self.optimizer, self.schedule, self.progress, self.cfg, self.stats, self.train_ts,
            world=self.world, rank_rngs=rank_rngs, metrics=metrics,
            ema=self.ema.state_dict() if self.ema is not None else None))

    def finish(self, outcome: str, epoch: int) -> dict:
        """Final evaluation of the best checkpoint, status, report; the summary."""
        p, log, run_dir = self.progress, self.log, self.run_dir
        summary = {"state": outcome, "best_f1": p.best_f1, "best_epoch": p.best_epoch, "run_dir": str(run_dir)}
        if outcome == "stopped":
            log.status(state="stopped", message="stopped by signal; checkpoints/last.pt written")
            log.print(f"stopped; resume with: mabe train --resume {run_dir}")
        else:
            if self.master:  # the best checkpoint -> eval/val_metrics.json + eval/val_predictions.npz
                write_validation(self.cfg, run_dir, self.raw_model, self.val_ts, self.device, self.precision,
                                 self.val_arrays, log.print)
            log.status(state="finished", message=f"{outcome.replace('_', ' ')}: best F1 {p.best_f1:.4f} "
                                                  f"at epoch {p.best_epoch}")
            log.print(f"done: best validation F1 {p.best_f1:.4f} at epoch {p.best_epoch}; run directory {run_dir}")
            summary["epochs"] = epoch + 1
        if self.master:
            write_run_report(self.cfg, run_dir, log)
        return summary

def write_run_report(cfg: Config, run_dir: Path, log: RunLog) -> None:
    """report.html at the end of a run; a figure that fails must not fail a finished run."""
    if not cfg.train.report:
        return
    from mabe import report  # matplotlib: imported only when a report is written

    try:
        log.print(f"report: {report.write_report(run_dir)}")
    except Exception as err:  # noqa: BLE001 - the checkpoints are written; the report is a view of them
        log.print(f"report: not written ({type(err).__name__}: {err}); retry with `mabe report {run_dir}`")


def train(cfg: Config, run_dir: str | Path, resume: bool = False) -> dict:
    """Train ``cfg`` into ``run_dir``; ``resume`` continues from ``run_dir/checkpoints/last.pt``.

    Returns a summary dict: state (finished | stopped | early_stopped), best_f1, best_epoch, epochs.
    """
    run_dir = Path(run_dir)
    rank, local_rank, world = init_distributed()
    master = rank == 0
    device = pick_device(cfg.train.device, local_rank)
    stale: list[Path] = []
    held = runs.lock_run(run_dir, resume) if master else None  # one trainer per run dir; dies with us
    if master:
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "config.yaml").write_text(yaml.safe_dump(config_to_dict(cfg), sort_keys=False))
        stale = ckpt.clean_partial(run_dir / "checkpoints")  # writes a kill interrupted; never read
    state = ckpt.load(run_dir / "checkpoints" / "last.pt") if resume else None
    log = RunLog(run_dir, cfg, master, resume_epoch=state[ckpt.EPOCH_KEY] if state else None)
    if stale:
        log.print(f"removed {len(stale)} partial checkpoint file(s) left by an interrupted write: "
                  + ", ".join(p.name for p in stale))
    log.status(state="running", pid=os.getpid(), epoch=state[ckpt.EPOCH_KEY] if state else 0,
               epochs=cfg.train.epochs, device=str(device), started=now(), message="preparing data")
    threads = torch.get_num_threads()  # train.num_threads changes it for the run only
    try:
        return Recipe(cfg, run_dir, state, log, rank, world, device).run()
    except TrainingError as err:  # say what is left to resume from
        err = TrainingError(f"{err}; {last_checkpoint_note(run_dir)}")
        log.status(state="failed", message=f"TrainingError: {err}"[:500])
        raise err from None
    except BaseException as err:
        log.status(state="failed", message=f"{type(err).__name__}: {err}"[:500])
        raise
    finally:
        log.close()
        if held is not None:
            held.release()
        torch.set_num_threads(threads)
        if world > 1 and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()


def main_from_args(args: Any) -> int:
    """``mabe train``: resolve the config and run directory, then relaunch under torchrun, detach or train here."""
    if launch.needs_relaunch(args):
        return launch.relaunch(args)
    cfg, run_dir, resume = launch.resolve(args)
    if getattr(args, "detach", False):
        return launch.detach(args, run_dir)
    summary = train(cfg, run_dir, resume=resume)
    return 0 if summary["state"] in ("finished", "early_stopped", "stopped") else 1
