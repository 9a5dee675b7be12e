"""training.step: what the step promises besides the update itself (found by mutation testing of step.py).

The one-line description, the defaults, the counters and their reset / restore, the warnings and their
text, the learning-rate normalisation, the fallbacks for older torch, stale and left-over gradients, a
step in which no parameter gets a gradient, a non-finite loss whose gradient is finite (accumulation),
DDP's ``no_sync`` per micro-batch, and ``compile_parts``. The update itself is pinned against the
reference step in test_step.py; the CUDA-graph call path (CPU stand-in) is in test_step_graph_cpu.py.
"""

from __future__ import annotations

import inspect
import warnings

import pytest
import torch
from torch import nn

from mabe.training import step as tstep
from mabe.training.optim import make_optimizer, param_groups


@pytest.fixture(autouse=True)
def _one_thread(one_torch_thread):
    """One intra-op thread (see conftest)."""


class Net(nn.Module):
    """(B, W, 5) -> (B, W, 3): a linear layer and a BatchNorm (a float buffer to protect)."""

    def __init__(self, seed: int = 0) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.lin = nn.Linear(5, 3)
        self.bn = nn.BatchNorm1d(3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn(self.lin(x).transpose(1, 2)).transpose(1, 2)


class Wrapped(nn.Module):
    """Stands in for DistributedDataParallel's ``.module`` attribute (without a process group)."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.module = inner

    def forward(self, x):
        return self.module(x)


def mse(logits: torch.Tensor, b: dict) -> torch.Tensor:
    return (logits - b["y"]).pow(2).mean()


def batch(seed: int = 0, n: int = 4) -> dict:
    g = torch.Generator().manual_seed(seed)
    return {"x": torch.randn(n, 6, 5, generator=g), "y": torch.randn(n, 6, 3, generator=g)}


def params_of(model: nn.Module) -> list[torch.Tensor]:
    return [p.detach().clone() for p in model.parameters()]


def assert_params_equal(a: list[torch.Tensor], b: list[torch.Tensor]) -> None:
    for p, q in zip(a, b):
        torch.testing.assert_close(p, q, rtol=0, atol=0)


# ----------------------------------------------------------------------------- describe, defaults


def test_describe_names_every_setting_word_for_word():
    net = Net()
    s = tstep.make_train_step(net, mse, make_optimizer(net.parameters(), 1e-2), precision="fp32")
    assert s.describe() == ("precision fp32 (LSTM as the model runs it), fused AdamW (non-finite steps skipped on "
                            "the device), no grad clip, eager, not compiled")
    net = Net()
    net.lstm_dtype = torch.bfloat16
    s = tstep.make_train_step(net, mse, torch.optim.SGD(net.parameters(), lr=0.1), precision="bf16",
                              grad_clip=0.5, accum=3, loss_scale=2.0)
    assert s.describe() == ("precision bf16 (LSTM bf16, loss scale 2), gradient accumulation over 3 micro-batches, "
                            "AdamW (non-finite check syncs the host), grad clip 0.5, eager, not compiled")
    # the flags as a graph-capturing, compiled step would have them (CUDA sets them; describe only reads them)
    s.graphs, s.compiled, s.accum, s.grad_clip = True, True, 1, 1.0
    assert s.describe() == ("precision bf16 (LSTM bf16, loss scale 2), AdamW (non-finite check syncs the host), "
                            "grad clip 1, CUDA graph of the whole step, compiled stem/head")


def test_a_wrapped_fp16_lstm_model_gets_the_loss_scale_and_is_described_through_the_wrapper():
    inner = Net()
    inner.lstm_dtype = torch.float16
    s = tstep.make_train_step(Wrapped(inner), mse, make_optimizer(inner.parameters(), 1e-2), precision="fp32")
    assert s.loss_scale == tstep.FP16_LOSS_SCALE
    assert s.describe().startswith("precision fp32 (LSTM fp16, loss scale 1024), ")
    inner.lstm_dtype = torch.float32
    s = tstep.make_train_step(Wrapped(inner), mse, make_optimizer(inner.parameters(), 1e-2), precision="fp32")
    assert s.loss_scale == 1.0 and s.describe().startswith("precision fp32 (LSTM fp32/TF32), ")


def test_trainstep_defaults_are_the_documented_ones():
    net = Net()
    s = tstep.TrainStep(net, mse, make_optimizer(net.parameters(), 1e-2))
    assert (s.precision, s.grad_clip, s.graphs, s.compiled, s.warmup, s.accum, s.loss_scale) == (
        "fp32", 0.0, False, False, 3, 1, 1.0)  # "auto" is fp32 off CUDA
    assert len(s.buffers) == 2  # protect_buffers: BatchNorm's running mean and variance
    assert tstep.TrainStep(net, mse, make_optimizer(net.parameters(), 1e-2), protect_buffers=False).buffers == []


def test_graphs_and_accumulation_on_cpu_run_eagerly_without_a_warning():
    net = Net()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        s = tstep.make_train_step(net, mse, make_optimizer(net.parameters(), 1e-2), cuda_graphs=True)
        assert not s.graphs
        s = tstep.make_train_step(net, mse, make_optimizer(net.parameters(), 1e-2), accum=2)
        assert not s.graphs and s.accum == 2


def test_graphs_with_a_ddp_model_warn_and_run_eagerly():
    class FakeDDP(nn.parallel.DistributedDataParallel):
        def __init__(self, inner):  # no process group: only the type matters here
            nn.Module.__init__(self)
            self.module = inner

    net = Net()
    with pytest.warns(UserWarning) as rec:
        s = tstep.make_train_step(FakeDDP(net), mse, make_optimizer(net.parameters(), 1e-2), cuda_graphs=True)
    assert [str(w.message) for w in rec] == [
        "cuda_graphs with DistributedDataParallel is not supported here; running eagerly"]
    assert not s.graphs


def test_the_step_s_construction_warnings_name_the_callers_line():
    """Through make_train_step or TrainStep directly, the warning points at the line that built the step
    (it pointed at make_train_step inside step.py)."""
    class FakeDDP(nn.parallel.DistributedDataParallel):
        def __init__(self, inner):
            nn.Module.__init__(self)
            self.module = inner

    net = Net()
    for build in (tstep.make_train_step, tstep.TrainStep):
        with pytest.warns(UserWarning, match="DistributedDataParallel") as rec:
            line = inspect.currentframe().f_lineno + 1
            build(FakeDDP(net), mse, make_optimizer(net.parameters(), 1e-2), cuda_graphs=True)
        assert (rec[0].filename, rec[0].lineno) == (__file__, line), build.__name__


# ----------------------------------------------------------------------------- counters


def test_counters_reset_keep_the_skip_streak_unless_told_and_restore_to_zero_by_default():
    net = Net()
    s = tstep.make_train_step(net, mse, make_optimizer(net.parameters(), 1e-2), precision="fp32")
    s(batch(0))
    bad = batch(1)
    bad["y"][0, 0, 0] = float("inf")  # non-finite loss
    s(bad)
    s(bad)
    st = s.stats(reset=True)
    assert (st["steps"], st["skipped"], st["streak"], st["worst_streak"]) == (3, 2, 2, 2)
    st = s.stats()
    # an epoch boundary keeps the current run of skipped steps: it is still going on
    assert (st["steps"], st["skipped"], st["streak"], st["worst_streak"], st["loss_sum"]) == (0, 0, 2, 0, 0.0)
    s.reset_stats(keep_streak=False)
    assert s.stats()["streak"] == 0
    s.set_stats(loss_sum=3.0, n_finite=1, steps=4, skipped=2)
    assert s.stats() == {"loss_sum": 3.0, "n_finite": 1, "loss_mean": 3.0, "steps": 4, "skipped": 2,
                         "streak": 0, "worst_streak": 0}
    s.set_stats()
    assert s.stats() == {"loss_sum": 0.0, "n_finite": 0, "loss_mean": 0.0, "steps": 0, "skipped": 0,
                         "streak": 0, "worst_streak": 0}


def test_a_skipped_step_adds_nothing_to_the_loss_sum():
    net = Net()
    s = tstep.make_train_step(net, mse, make_optimizer(net.parameters(), 1e-2), precision="fp32")
    good = float(s(batch(0)))
    bad = batch(1)
    bad["x"][0, 0, 0] = float("nan")
    s(bad)
    st = s.stats()
    assert st["loss_sum"] == pytest.approx(good, rel=1e-12) and st["n_finite"] == 1 and st["skipped"] == 1


def test_check_reseed_message_word_for_word():
    with pytest.raises(RuntimeError) as e:
        tstep.check_reseed(3, 4)
    assert str(e.value) == (
        "the CUDA generator was reseeded (seed 3 -> 4) after the training step was captured in a CUDA graph; "
        "seed before the first step, or build a new step after reseeding")


# ----------------------------------------------------------------------------- gradients around the step


def test_stale_gradients_are_not_added_and_none_are_left_behind():
    """Gradients a caller left on the parameters do not leak into the step, and the step frees its own."""
    ref, net = Net(), Net()
    s_ref = tstep.make_train_step(ref, mse, torch.optim.SGD(ref.parameters(), lr=0.1), precision="fp32")
    s = tstep.make_train_step(net, mse, torch.optim.SGD(net.parameters(), lr=0.1), precision="fp32")
    for p in net.parameters():
        p.grad = torch.full_like(p, 100.0)
    s(batch(0))
    s_ref(batch(0))
    assert_params_equal(params_of(net), params_of(ref))
    assert all(p.grad is None for p in net.parameters())


def test_accumulation_leaves_no_gradients_after_the_group():
    net = Net()
    s = tstep.make_train_step(net, mse, torch.optim.SGD(net.parameters(), lr=0.1), precision="fp32", accum=2)
    s(batch(0), group_size=2, last=False)
    assert all(p.grad is not None for p in net.parameters())  # accumulating
    s(batch(1), group_size=2, last=True)
    assert all(p.grad is None for p in net.parameters())


def test_a_step_where_no_parameter_gets_a_gradient_counts_as_finite_and_changes_nothing():
    net = Net()
    s = tstep.make_train_step(net, lambda logits, b: (b["w"] ** 2).sum(), make_optimizer(net.parameters(), 1e-2),
                              precision="fp32", grad_clip=1.0)
    before = params_of(net)
    b = dict(batch(0), w=torch.ones(3, requires_grad=True))
    assert float(s(b)) == 3.0
    st = s.stats()
    assert (st["steps"], st["skipped"], st["n_finite"]) == (1, 0, 1)
    assert_params_equal(params_of(net), before)


@pytest.mark.parametrize("scale", [2.0, 1024.0])
def test_any_loss_scale_is_undone_before_the_update(scale):
    out = {}
    for sc in (1.0, scale):
        net = Net()
        s = tstep.make_train_step(net, mse, torch.optim.SGD(net.parameters(), lr=0.1), precision="fp32",
                                  loss_scale=sc)
        for i in range(3):
            s(batch(i))
        out[sc] = params_of(net)
    for p, q in zip(out[scale], out[1.0]):
        torch.testing.assert_close(p, q, rtol=1e-6, atol=1e-7)


def test_bf16_precision_autocasts_the_forward_on_cpu():
    seen = []

    def lossf(logits, b):
        seen.append(logits.dtype)
        return mse(logits.float(), b)

    net = Net()
    s = tstep.make_train_step(net, lossf, make_optimizer(net.parameters(), 1e-2), precision="bf16")
    s(batch(0))
    s32 = tstep.make_train_step(Net(), lossf, make_optimizer(net.parameters(), 1e-2), precision="fp32")
    s32(batch(0))
    assert seen == [torch.bfloat16, torch.float32]


def test_a_warning_from_the_optimizer_reaches_the_caller_and_only_the_capturable_note_is_silenced():
    class Loud(torch.optim.SGD):
        def step(self, closure=None):
            warnings.warn(tstep._CAPTURABLE_WARNING + ", but the tensors are on the CPU", stacklevel=2)
            warnings.warn("something else the caller must see", stacklevel=2)
            return super().step(closure)

    net = Net()
    opt = Loud(net.parameters(), lr=0.1)
    opt.param_groups[0]["fused"] = True  # the device-side skip path (found_inf), as a fused AdamW takes it
    s = tstep.make_train_step(net, mse, opt, precision="fp32")
    assert s.fused
    with pytest.warns(UserWarning) as rec:
        s(batch(0))
    assert [str(w.message) for w in rec] == ["something else the caller must see"]
    assert not hasattr(opt, "found_inf")


# ----------------------------------------------------------------------------- learning rates


def test_tensor_learning_rates_become_floats_only_where_the_optimizer_cannot_take_them():
    # non-fused, not capturable: a tensor lr (e.g. from a checkpoint) becomes a float in every group
    net = Net()
    groups = param_groups(net, 0.0)
    opt = torch.optim.SGD(groups, lr=0.1)
    opt.param_groups[0]["lr"] = 0.05
    opt.param_groups[1]["lr"] = torch.tensor(0.02)
    s = tstep.make_train_step(net, mse, opt, precision="fp32")
    s(batch(0))
    assert [type(g["lr"]) for g in opt.param_groups] == [float, float]
    assert [g["lr"] for g in opt.param_groups] == [0.05, pytest.approx(0.02)]
    # fused, on this device: the tensor stays (the same object; set_lr fills it in place)
    net = Net()
    opt = make_optimizer(net.parameters(), 1e-2)
    lr = torch.tensor(0.01)
    opt.param_groups[0]["lr"] = lr
    tstep.make_train_step(net, mse, opt, precision="fp32")(batch(0))
    assert opt.param_groups[0]["lr"] is lr
    # a capturable group keeps its tensor too, even when the optimizer is not fused
    net = Net()
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    lr = torch.tensor(0.1)
    opt.param_groups[0].update(lr=lr, capturable=True)
    tstep.make_train_step(net, mse, opt, precision="fp32")(batch(0))
    assert opt.param_groups[0]["lr"] is lr


# ----------------------------------------------------------------------------- accumulation details


def test_a_lone_call_with_accumulation_is_a_whole_group_of_one():
    ref, net = Net(), Net()
    s_ref = tstep.make_train_step(ref, mse, torch.optim.SGD(ref.parameters(), lr=0.1), precision="fp32")
    s = tstep.make_train_step(net, mse, torch.optim.SGD(net.parameters(), lr=0.1), precision="fp32", accum=2)
    for i in range(2):
        s(batch(i))  # no group_size / last: one micro-batch that ends its group
        s_ref(batch(i))
    assert_params_equal(params_of(net), params_of(ref))
    assert s.stats()["steps"] == 2


def test_a_non_finite_loss_with_a_finite_gradient_skips_its_group():
    """A loss made infinite by a term without a gradient: only the loss check can catch it."""
    def lossf(logits, b):
        return mse(logits, b) + b["penalty"]

    for order in ("bad first", "bad last"):
        net = Net()
        net.bn.momentum = 0.0
        s = tstep.make_train_step(net, lossf, torch.optim.SGD(net.parameters(), lr=0.1), precision="fp32",
                                  accum=2, grad_clip=1.0)
        before = params_of(net)
        good, bad = dict(batch(0), penalty=torch.tensor(0.0)), dict(batch(1), penalty=torch.tensor(float("inf")))
        first, second = (bad, good) if order == "bad first" else (good, bad)
        s(first, group_size=2, last=False)
        s(second, group_size=2, last=True)
        assert_params_equal(params_of(net), before)
        st = s.stats()
        assert (st["steps"], st["skipped"], st["n_finite"]) == (1, 1, 1), order
        assert st["loss_sum"] == pytest.approx(float(mse(Net()(good["x"]), good).detach()), rel=1e-5)


def test_ddp_all_reduces_once_a_group():
    """Micro-batches before the group's last run under ``no_sync``; the last one all-reduces."""
    class FakeDDP(nn.parallel.DistributedDataParallel):
        def __init__(self, inner):
            nn.Module.__init__(self)
            self.module = inner
            self.synced = []

        def forward(self, x):
            self.synced.append(not self.in_no_sync)
            return self.module(x)

        def no_sync(self):
            ddp = self

            class Ctx:
                def __enter__(self):
                    ddp.in_no_sync = True

                def __exit__(self, *exc):
                    ddp.in_no_sync = False

            return Ctx()

    net = Net()
    ddp = FakeDDP(net)
    ddp.in_no_sync = False
    s = tstep.make_train_step(ddp, mse, torch.optim.SGD(net.parameters(), lr=0.1), precision="fp32", accum=3)
    for j in range(3):
        s(batch(j), group_size=3, last=j == 2)
    assert ddp.synced == [False, False, True]


# ----------------------------------------------------------------------------- fallbacks, compile_parts


def test_the_norm_and_clip_fallbacks_for_older_torch_match_the_library(monkeypatch):
    g = [torch.full((4,), 1e-6, dtype=torch.float64), torch.full((3,), -2e-6, dtype=torch.float64)]
    want_norm = float(nn.utils.get_total_norm(g, 2.0))
    monkeypatch.delattr(nn.utils, "get_total_norm")
    assert float(tstep._total_norm(g)) == pytest.approx(want_norm, rel=1e-12)
    monkeypatch.undo()
    for max_norm in (2e-6, 1.0):  # engaged: the 1e-6 guard matters at this scale; and not engaged
        ps, ref = [nn.Parameter(torch.zeros_like(x)) for x in g], [nn.Parameter(torch.zeros_like(x)) for x in g]
        for p, q, x in zip(ps, ref, g):
            p.grad, q.grad = x.clone(), x.clone()
        nn.utils.clip_grad_norm_(ref, max_norm)
        with monkeypatch.context() as m:
            m.delattr(nn.utils, "clip_grads_with_norm_")
            tstep._clip_with_norm(ps + [nn.Parameter(torch.zeros(2))], max_norm, torch.tensor(want_norm, dtype=torch.float64))
        for p, q in zip(ps, ref):
            torch.testing.assert_close(p.grad, q.grad, rtol=1e-12, atol=0)


def test_compile_parts_compiles_through_a_wrapper_and_warns_without_compile_stem():
    calls = []

    class Compilable(Net):
        def compile_stem(self, **kwargs):
            calls.append(kwargs)

    assert tstep.compile_parts(Wrapped(Compilable()), dynamic=False) is True
    assert tstep.compile_parts(Compilable()) is True  # no wrapper: the model itself
    assert calls == [{"dynamic": False}, {}]
    with pytest.warns(UserWarning) as rec:
        assert tstep.compile_parts(Wrapped(Net())) is False
    assert [str(w.message) for w in rec] == ["Net has no compile_stem(): not compiled"]
    assert rec[0].filename == __file__  # attributed to the caller, not to step.py


def test_make_train_step_defaults_and_what_it_passes_on():
    net = Net()
    s = tstep.make_train_step(net, mse, make_optimizer(net.parameters(), 1e-2))
    assert s.describe().startswith("precision fp32 (") and s.warmup == 3 and len(s.buffers) == 2
    assert tstep.make_train_step(net, mse, make_optimizer(net.parameters(), 1e-2), protect_buffers=False).buffers == []
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # compile is CUDA only: on CPU nothing is compiled and nothing warns
        s = tstep.make_train_step(net, mse, make_optimizer(net.parameters(), 1e-2), compile=True)
    assert not s.compiled


def test_trainstep_without_graphs_asked_never_warns_about_ddp():
    class FakeDDP(nn.parallel.DistributedDataParallel):
        def __init__(self, inner):
            nn.Module.__init__(self)
            self.module = inner

    net = Net()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        s = tstep.TrainStep(FakeDDP(net), mse, make_optimizer(net.parameters(), 1e-2))
    assert not s.graphs


def test_the_counters_are_exact_int64_and_float64():
    net = Net()
    s = tstep.make_train_step(net, mse, make_optimizer(net.parameters(), 1e-2))
    big = 2**24 + 1  # not a float32
    s.set_stats(loss_sum=0.1, n_finite=big, steps=big, skipped=big)
    st = s.stats()
    assert (st["loss_sum"], st["n_finite"], st["steps"], st["skipped"]) == (0.1, big, big, big)
    assert s.loss_sum.dtype == torch.float64
    assert {t.dtype for t in (s.n_finite, s.n_steps, s.skipped, s.streak, s.worst)} == {torch.int64}
