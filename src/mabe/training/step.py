"""The one training step: forward, backward, clip, AdamW, counters; gradient accumulation; CUDA graph.

    step = make_train_step(model, loss_fn, optimizer, precision=..., grad_clip=..., accum=...)
    step(batch)                                   # grad_accum 1: one optimizer step per call
    step(batch, group_size=g, last=j_is_last)     # grad_accum > 1: one micro-batch per call

``mabe train`` and ``mabe bench``'s fast path run this code; ``bench.reference_step`` is the only other
step, kept as the reference it is timed against.

No host sync in a step
----------------------
A step never reads a device value on the host. The loss is checked with ``isfinite`` and the total
gradient norm (computed anyway for clipping) with ``isfinite``; the flag goes to the fused AdamW as
``found_inf`` (the hook ``GradScaler`` uses): the fused kernel leaves parameters and moments untouched
and the step counter is decremented back, all on the device. Float buffers (BatchNorm running stats)
are restored from a copy taken before the forward (of the group's first micro-batch) when the step is
skipped, so a NaN batch cannot poison evaluation. Counters (finite-loss sum, steps, skipped steps,
current and worst non-finite streak) are device tensors updated in place; ``TrainStep.stats()`` reads
them in one sync, once an epoch. Only a non-fused optimizer (fused disabled or unavailable) falls back
to ``if finite: step()``, a host sync, and says so in ``TrainStep.describe()``.

Gradient accumulation
---------------------
With ``accum > 1`` each call is one micro-batch: its loss divided by the group's size is backpropagated
(under DDP's ``no_sync`` except on the group's last micro-batch, so gradients are all-reduced once per
optimizer step); the call with ``last=True`` clips, steps and counts the step. The loss counters count
micro-batches with a finite loss; the skip counters count optimizer steps. Always eager.

CUDA graphs
-----------
With ``cuda_graphs`` (grad_accum 1) the first ``warmup`` calls run eagerly on a side stream
(cuDNN/cuBLAS autotuning, lazy optimizer state, torch.compile), then the whole step - forward, loss,
backward, norm, clip, AdamW, counters - is captured once with static input buffers; every later call
copies the batch into those buffers and replays the graph (one launch). Requirements, checked or
documented: fused + capturable AdamW (``make_optimizer(..., capturable=True)``), learning rates as
device tensors changed in place (``set_lr``; a float assigned by a scheduler is copied into the
captured tensor before each replay, so nothing is silently ignored), autocast with
``cache_enabled=False``, static shapes (a batch of another shape runs eagerly), and everything the
loss reads must be a tensor in the batch dict (a Python float captured in a closure, e.g. a mixup
lambda, would be frozen at capture; a constant such as class weights must be made on the device once,
not by ``torch.tensor(list)`` in the loss, which would copy host memory inside the capture). The graph
replays in the mode the model had when it was captured (train); validation in eval mode in between is
fine, it runs eagerly. If the capture itself fails (an op that cannot be captured, out of memory) a
warning says so and the step runs eagerly from then on. The returned loss tensor is the graph's static
output: it is overwritten by the next replay (clone it to keep it). The tensors of the batch passed in
are only read.
"""

from __future__ import annotations

import contextlib
import sys
import warnings
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from mabe.training.device import autocast_for, resolve_precision

__all__ = ["FP16_LOSS_SCALE", "compile_parts", "check_reseed", "TrainStep", "make_train_step", "accumulation_group"]

# static loss scale for an fp16 LSTM: gradients are unscaled before the norm and the clip; a step
# whose scaled gradients overflow is skipped on the device like any non-finite step
FP16_LOSS_SCALE = 1024.0


def _warn(message: str) -> None:
    """``warnings.warn`` attributed to the first frame outside this module: the line that built or called
    the step, however many calls inside step.py lie between (make_train_step -> TrainStep.__init__ ->
    compile_parts); a fixed ``stacklevel`` named make_train_step's line for a step it built."""
    frame, level = sys._getframe(1), 2
    while frame is not None and frame.f_code.co_filename == __file__:
        frame, level = frame.f_back, level + 1
    warnings.warn(message, stacklevel=level)


def compile_parts(model: nn.Module, **kwargs: Any) -> bool:
    """torch.compile the parts of ``model`` where it helps: the conv stem and the head, through the
    model's ``compile_stem`` (Dynamo graph-breaks at nn.LSTM, which is one cuDNN call anyway).
    Returns whether anything was compiled. ``mode="reduce-overhead"`` is not used: it brings its own
    CUDA graphs, which would nest inside ours."""
    target = getattr(model, "module", model)  # DistributedDataParallel
    if not hasattr(target, "compile_stem"):
        _warn(f"{type(target).__name__} has no compile_stem(): not compiled")
        return False
    target.compile_stem(**kwargs)
    return True


def _total_norm(grads: list[torch.Tensor]) -> torch.Tensor:
    if hasattr(nn.utils, "get_total_norm"):
        return nn.utils.get_total_norm(grads, 2.0)
    return torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads]))  # pragma: no cover


def _clip_with_norm(params: list[torch.Tensor], max_norm: float, norm: torch.Tensor) -> None:
    """Scale the gradients of ``params`` (parameters, not gradients) so their total norm is <= max_norm."""
    if hasattr(nn.utils, "clip_grads_with_norm_"):
        # it reads ``p.grad`` of each entry: handing it the gradients themselves clips nothing
        nn.utils.clip_grads_with_norm_([p for p in params if p.grad is not None], max_norm, norm)
        return
    grads = [p.grad for p in params if p.grad is not None]  # pragma: no cover
    coef = torch.clamp(max_norm / (norm + 1e-6), max=1.0)  # pragma: no cover
    torch._foreach_mul_(grads, coef)  # pragma: no cover


_CAPTURABLE_WARNING = "This instance was constructed with capturable=True"


def check_reseed(captured_seed: int | None, current_seed: int) -> None:
    """Refuse a replay after the CUDA generator was reseeded: the reseed replaced the cuDNN LSTM's
    dropout-state buffer that the captured graph writes, so replays would no longer draw fresh masks."""
    if captured_seed is not None and current_seed != captured_seed:
        raise RuntimeError(
            f"the CUDA generator was reseeded (seed {captured_seed} -> {current_seed}) after the training step "
            "was captured in a CUDA graph; seed before the first step, or build a new step after reseeding")


class TrainStep:
    """``step(batch) -> loss``: one optimizer step on a batch dict (``x`` (B, W, F) plus whatever
    ``loss_fn(logits, batch)`` reads), with no host sync. Build it with ``make_train_step``.

    Device counters (updated inside the step, read by ``stats()``): ``loss_sum`` and ``n_finite``
    (the steps that updated: finite loss and gradient), ``n_steps``, ``skipped`` (non-finite loss or
    gradient: no update), ``streak`` (current run of skipped steps) and ``worst`` (longest run since
    the last reset). With ``accum > 1``, ``loss_sum`` / ``n_finite`` count the micro-batches with a
    finite loss and the others count optimizer steps.
    """

    def __init__(
        self, model: nn.Module, loss_fn: Callable[[torch.Tensor, dict], torch.Tensor],
        optimizer: torch.optim.Optimizer, *, precision: str = "auto", grad_clip: float = 0.0,
        cuda_graphs: bool = False, compile: bool = False, warmup: int = 3, protect_buffers: bool = True,
        accum: int = 1, loss_scale: float | None = None,
    ):
        self.model, self.loss_fn, self.optimizer = model, loss_fn, optimizer
        # None: FP16_LOSS_SCALE when the model runs its LSTM in fp16 (its gradients would underflow)
        if loss_scale is None:
            inner = getattr(model, "module", model)  # DistributedDataParallel
            loss_scale = FP16_LOSS_SCALE if getattr(inner, "lstm_dtype", None) == torch.float16 else 1.0
        self.loss_scale = float(loss_scale)
        self.device = next(model.parameters()).device
        self.precision = resolve_precision(precision, self.device)
        self.grad_clip = float(grad_clip)
        self.params = [p for g in optimizer.param_groups for p in g["params"]]
        groups = optimizer.param_groups
        self.fused = all(bool(g.get("fused")) for g in groups)
        capturable = all(bool(g.get("capturable")) for g in groups)
        self.accum = max(int(accum), 1)
        self.graphs = bool(cuda_graphs) and self.device.type == "cuda"
        if self.graphs and self.accum > 1:
            _warn("cuda_graphs captures one optimizer step per call: not with gradient accumulation; "
                  "running the step eagerly")
            self.graphs = False
        if self.graphs and not (self.fused and capturable):
            _warn("cuda_graphs needs a fused, capturable AdamW (make_optimizer(..., fused=True, "
                  "capturable=True)); running the step eagerly")
            self.graphs = False
        if cuda_graphs and isinstance(model, nn.parallel.DistributedDataParallel):
            _warn("cuda_graphs with DistributedDataParallel is not supported here; running eagerly")
            self.graphs = False
        self.compiled = compile_parts(model) if compile and self.device.type == "cuda" else False
        self.warmup = max(int(warmup), 1)
        self.buffers = [b for b in model.buffers() if b.is_floating_point()] if protect_buffers else []
        self._saved = [torch.empty_like(b) for b in self.buffers]
        z = dict(device=self.device)
        self.loss_sum = torch.zeros((), dtype=torch.float64, **z)
        self.n_finite = torch.zeros((), dtype=torch.int64, **z)
        self.n_steps = torch.zeros((), dtype=torch.int64, **z)
        self.skipped = torch.zeros((), dtype=torch.int64, **z)
        self.streak = torch.zeros((), dtype=torch.int64, **z)
        self.worst = torch.zeros((), dtype=torch.int64, **z)
        self.calls = 0
        self.graph: torch.cuda.CUDAGraph | None = None
        self._static: dict[str, Any] = {}
        self._static_loss: torch.Tensor | None = None
        self._lr_tensors: list[torch.Tensor] = []
        self._side: Any = None
        self._warned_shape = False
        self._seed: int | None = None  # the CUDA generator's seed when the warm-up ran (graphs only)
        self._group_ok: torch.Tensor | None = None  # accumulation: every micro-batch's loss finite so far

    # -- public
    def __call__(self, batch: dict, *, group_size: int = 1, last: bool = True) -> torch.Tensor:
        """One step (``accum`` 1), or one micro-batch of a group of ``group_size`` (``last``: the
        group's final one, which steps the optimizer). Returns the (unscaled) loss, on the device."""
        self.calls += 1
        if self.accum > 1:
            self._normalise_lr()
            return self._micro(batch, group_size, last)
        if not self.graphs:
            self._normalise_lr()
            return self._run(batch)
        if self.graph is None:
            self._normalise_lr()
            seed = self._generator_seed()
            if self.calls <= self.warmup or seed != self._seed:
                # a reseed since the warm-up makes cuDNN rebuild its LSTM dropout state (with a host
                # read) at the next call: let that happen eagerly, never inside the capture
                self._seed = seed
                return self._side_stream_run(batch)
            try:
                self._capture(batch)
            except RuntimeError as err:  # an op that cannot be captured, out of memory, ...
                return self._capture_failed(batch, err)
        check_reseed(self._seed, self._generator_seed())
        if not self._fits(batch):
            if not self._warned_shape:
                _warn("a batch with other shapes than the captured one: running it eagerly")
                self._warned_shape = True
            return self._side_stream_run(batch)
        self._sync_lr()
        for k, v in self._static.items():
            if isinstance(v, torch.Tensor):
                v.copy_(batch[k], non_blocking=True)
        self.graph.replay()
        return self._static_loss

    def stats(self, reset: bool = False) -> dict:
        """The counters as Python numbers (one host sync); ``reset`` zeroes them in place."""
        vals = torch.stack([self.loss_sum.double(), self.n_finite.double(), self.n_steps.double(),
                            self.skipped.double(), self.streak.double(), self.worst.double()]).tolist()
        loss_sum, n_finite, n_steps, skipped, streak, worst = vals
        out = {"loss_sum": loss_sum, "n_finite": int(n_finite), "loss_mean": loss_sum / max(n_finite, 1),
               "steps": int(n_steps), "skipped": int(skipped), "streak": int(streak), "worst_streak": int(worst)}
        if reset:
            self.reset_stats()
        return out

    def reset_stats(self, keep_streak: bool = True) -> None:
        """Zero the counters in place (the captured graph keeps pointing at them)."""
        for t in (self.loss_sum, self.n_finite, self.n_steps, self.skipped, self.worst):
            t.zero_()
        if not keep_streak:
            self.streak.zero_()

    def set_stats(self, *, loss_sum: float = 0.0, n_finite: int = 0, steps: int = 0, skipped: int = 0) -> None:
        """Restore the epoch counters in place (a run resumed in the middle of an epoch)."""
        self.loss_sum.fill_(float(loss_sum))
        self.n_finite.fill_(int(n_finite))
        self.n_steps.fill_(int(steps))
        self.skipped.fill_(int(skipped))

    def describe(self) -> str:
        """One line: what this step does."""
        lstm = {torch.float32: "fp32/TF32", torch.bfloat16: "bf16", torch.float16: "fp16"}.get(
            getattr(getattr(self.model, "module", self.model), "lstm_dtype", None), "as the model runs it")
        parts = [f"precision {self.precision} (LSTM {lstm}"
                 + (f", loss scale {self.loss_scale:g})" if self.loss_scale != 1.0 else ")"),
                 *([f"gradient accumulation over {self.accum} micro-batches"] if self.accum > 1 else []),
                 "fused AdamW (non-finite steps skipped on the device)" if self.fused
                 else "AdamW (non-finite check syncs the host)",
                 f"grad clip {self.grad_clip:g}" if self.grad_clip > 0 else "no grad clip",
                 "CUDA graph of the whole step" if self.graphs else "eager",
                 "compiled stem/head" if self.compiled else "not compiled"]
        return ", ".join(parts)

    # -- internals
    def _forward_loss(self, batch: dict) -> torch.Tensor:
        x = batch["x"]
        if self.precision != "bf16" and x.dtype != torch.float32:
            x = x.float()  # fp16/bf16 storage; under bf16 autocast the conv casts it itself
        # the autocast weight-cast cache must be off under graph capture (torch.cuda.graphs docs)
        with autocast_for(self.device, self.precision, cache_enabled=not self.graphs):
            logits = self.model(x)
        return self.loss_fn(logits, batch)

    def _run(self, batch: dict, capturing: bool = False) -> torch.Tensor:
        """The step itself, eager or under capture. No host reads except the non-fused fallback."""
        opt = self.optimizer
        if not capturing:
            opt.zero_grad(set_to_none=True)  # also detaches a captured graph's static grads
        if self.buffers:
            torch._foreach_copy_(self._saved, self.buffers)
        loss = self._forward_loss(batch)
        (loss * self.loss_scale if self.loss_scale != 1.0 else loss).backward()
        loss = loss.detach()
        finite = torch.isfinite(loss) & self._clipped_norm_finite()
        self._optimizer_step(finite)
        self._count(loss, finite)
        self._restore_buffers(finite)
        if not capturing:
            opt.zero_grad(set_to_none=True)
        return loss

    def _micro(self, batch: dict, group_size: int, last: bool) -> torch.Tensor:
        """One micro-batch of an accumulation group; the group's last one steps the optimizer."""
        if self._group_ok is None:  # the group's first micro-batch
            self.optimizer.zero_grad(set_to_none=True)
            if self.buffers:
                torch._foreach_copy_(self._saved, self.buffers)
            self._group_ok = torch.ones((), dtype=torch.bool, device=self.device)
        ddp = isinstance(self.model, nn.parallel.DistributedDataParallel)
        with self.model.no_sync() if ddp and not last else contextlib.nullcontext():  # all-reduce once a group
            loss = self._forward_loss(batch)
            (loss * (self.loss_scale / group_size)).backward()
        loss = loss.detach()
        ok = torch.isfinite(loss)
        self._group_ok &= ok
        self.loss_sum.add_(torch.where(ok, loss.double(), 0.0))
        self.n_finite.add_(ok.to(torch.int64))
        if not last:
            return loss
        finite = self._group_ok & self._clipped_norm_finite()
        self._group_ok = None
        self._optimizer_step(finite)
        self._count_step(finite)
        self._restore_buffers(finite)
        self.optimizer.zero_grad(set_to_none=True)
        return loss

    def _clipped_norm_finite(self) -> torch.Tensor:
        """Clip the gradients to ``grad_clip`` (if set); whether their total norm is finite (0-d, on the device)."""
        grads = [p.grad for p in self.params if p.grad is not None]
        if self.loss_scale != 1.0 and grads:
            torch._foreach_mul_(grads, 1.0 / self.loss_scale)  # unscaled before the norm and the clip
        norm = _total_norm(grads) if grads else torch.zeros((), device=self.device)
        if self.grad_clip > 0 and grads:
            _clip_with_norm(self.params, self.grad_clip, norm)
        return torch.isfinite(norm)

    def _optimizer_step(self, finite: torch.Tensor) -> None:
        opt = self.optimizer
        if self.fused:
            opt.found_inf = (~finite).float()  # 0-d: the fused kernel skips, the step count is restored
            try:
                with warnings.catch_warnings():
                    warnings.filterwarnings("ignore", message=_CAPTURABLE_WARNING)
                    opt.step()
            finally:
                del opt.found_inf  # never leak the flag into a later step
        elif bool(finite):  # non-fused optimizers: a host sync (CPU: free)
            opt.step()

    def _restore_buffers(self, finite: torch.Tensor) -> None:
        for b, s in zip(self.buffers, self._saved):
            b.copy_(torch.where(finite, b, s))

    def _count(self, loss: torch.Tensor, finite: torch.Tensor) -> None:
        self.loss_sum.add_(torch.where(finite, loss.double(), 0.0))
        self.n_finite.add_(finite.to(torch.int64))
        self._count_step(finite)

    def _count_step(self, finite: torch.Tensor) -> None:
        bad = (~finite).to(torch.int64)
        self.n_steps.add_(1)
        self.skipped.add_(bad)
        self.streak.add_(1).mul_(bad)
        torch.maximum(self.worst, self.streak, out=self.worst)

    def _generator_seed(self) -> int:
        """The seed of the generator dropout draws from (host-side, no sync)."""
        return torch.cuda.initial_seed() if self.device.type == "cuda" else torch.initial_seed()

    def _side_stream_run(self, batch: dict) -> torch.Tensor:
        """Eager step on a side stream (required before capture, and for odd-shaped batches after)."""
        if self._side is None:
            self._side = torch.cuda.Stream(self.device)
        cur = torch.cuda.current_stream(self.device)
        self._side.wait_stream(cur)
        with torch.cuda.stream(self._side):
            loss = self._run(batch)
        cur.wait_stream(self._side)
        return loss

    def _fits(self, batch: dict) -> bool:
        for k, v in self._static.items():
            b = batch.get(k)
            if isinstance(v, torch.Tensor) and not (
                isinstance(b, torch.Tensor) and b.shape == v.shape and b.dtype == v.dtype and b.device == v.device
            ):
                return False
        return set(batch) == set(self._static)

    def _normalise_lr(self) -> None:
        """Before capture: an lr the optimizer cannot take as is (a CPU tensor from a checkpoint loaded
        with map_location="cpu", or any tensor for a non-fused, non-capturable AdamW) becomes a float
        (a CPU tensor reads without a device sync); a tensor on another device moves to ours."""
        for g in self.optimizer.param_groups:
            v = g["lr"]
            if not isinstance(v, torch.Tensor) or (v.device == self.device and (self.fused or g.get("capturable"))):
                continue
            if v.device.type == "cpu" or not (self.fused or g.get("capturable")):
                g["lr"] = float(v)
            else:
                g["lr"] = v.to(self.device)

    def _sync_lr(self) -> None:
        """Keep each group's lr the tensor the graph captured; copy in a value a scheduler assigned."""
        for g, t in zip(self.optimizer.param_groups, self._lr_tensors):
            v = g["lr"]
            if v is t:
                continue
            if isinstance(v, torch.Tensor):
                t.copy_(v.reshape(()), non_blocking=True)
            else:
                t.fill_(float(v))
            g["lr"] = t

    def _capture_failed(self, batch: dict, err: BaseException) -> torch.Tensor:
        """Capture did not work: warn, drop the graph and run this step and every later one eagerly.
        Nothing of the failed capture ran (kernels recorded under capture are not executed), so the
        parameters, optimizer state and counters are as before this call."""
        _warn(f"CUDA graph capture of the training step failed ({type(err).__name__}: "
              f"{str(err).splitlines()[0] if str(err) else ''}); running the step eagerly")
        self.graph, self.graphs = None, False
        self._static, self._static_loss = {}, None
        self.optimizer.zero_grad(set_to_none=True)  # grads allocated in the abandoned graph's pool
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.empty_cache()
        return self._run(batch)

    def _capture(self, batch: dict) -> None:
        torch.cuda.synchronize(self.device)
        torch.cuda.empty_cache()  # hand the warm-up's cached blocks back so the graph's pool can use them
        for g in self.optimizer.param_groups:  # the graph reads the lr from these tensors at replay
            if not (isinstance(g["lr"], torch.Tensor) and g["lr"].device == self.device):
                g["lr"] = torch.tensor(float(g["lr"]), dtype=torch.float32, device=self.device)
        self._lr_tensors = [g["lr"] for g in self.optimizer.param_groups]
        self._static = {k: (v.clone() if isinstance(v, torch.Tensor) else v) for k, v in batch.items()}
        self.optimizer.zero_grad(set_to_none=True)  # backward allocates .grad from the graph's pool
        self.graph = torch.cuda.CUDAGraph()
        # a compiled stem recompiling inside the capture would record the compiler's work: make it
        # an error instead (caught by __call__: eager fallback with a warning)
        no_recompile = (torch._dynamo.config.patch(error_on_recompile=True) if self.compiled
                        else contextlib.nullcontext())
        with no_recompile, torch.cuda.graph(self.graph):
            self._static_loss = self._run(self._static, capturing=True)
        torch.cuda.synchronize(self.device)


def make_train_step(
    model: nn.Module, loss_fn: Callable[[torch.Tensor, dict], torch.Tensor], optimizer: torch.optim.Optimizer,
    *, precision: str = "auto", grad_clip: float = 0.0, cuda_graphs: bool = False, compile: bool = False,
    warmup: int = 3, protect_buffers: bool = True, accum: int = 1, loss_scale: float | None = None,
) -> TrainStep:
    """The whole optimizer step as one callable: ``loss = step(batch)``.

    ``precision``: ``auto`` (bf16 on CUDA, fp32 elsewhere) | ``bf16`` | ``fp32``; bf16 autocasts the
    convolutions and the head; the LSTM runs in the model's own ``lstm_dtype`` (``models.set_lstm_precision``;
    an fp16 LSTM gets a static loss scale, ``loss_scale`` None = automatic). ``grad_clip`` > 0 clips the
    global norm (foreach, no sync). ``cuda_graphs`` (CUDA, fused + capturable optimizer): capture the
    whole step after ``warmup`` eager calls. ``compile``: torch.compile the conv stem and head (CUDA).
    ``accum`` > 1: each call is one micro-batch (see the module docstring).
    See the module docstring for the no-sync design and the CUDA-graph rules.
    """
    return TrainStep(model, loss_fn, optimizer, precision=precision, grad_clip=grad_clip,
                     cuda_graphs=cuda_graphs, compile=compile, warmup=warmup, protect_buffers=protect_buffers,
                     accum=accum, loss_scale=loss_scale)




def accumulation_group(micro: int, n_micro: int, accum: int) -> tuple[int, bool]:
    """Micro-batch ``micro`` of an epoch of ``n_micro`` -> (its group's size, whether it ends the group).
    Groups are ``accum`` consecutive micro-batches; the epoch's last group may be shorter."""
    start = micro - micro % accum
    size = min(accum, n_micro - start)
    return size, micro == start + size - 1
