"""training.step: the CUDA-graph call path on CPU, with a stand-in for ``torch.cuda``'s graph and stream API.

The stand-in keeps the two properties the step relies on: kernels recorded under capture do not run
(the capture's effects are rolled back when it ends) and a replay reruns the captured step on the
static buffers. So warm-up, capture, replay, the lr copied into the captured tensors, odd-shaped
batches run eagerly, the reseed check and the side-stream ordering run here as they would on a GPU,
and the step must train exactly like the eager one. Real graphs are checked by the ``gpu`` tests in
test_step.py.
"""

from __future__ import annotations

import contextlib
import warnings

import pytest
import torch
from torch import nn

from mabe.training import step as tstep
from mabe.training.optim import make_optimizer, param_groups, set_lr


@pytest.fixture(autouse=True)
def _one_thread(one_torch_thread):
    """One intra-op thread (see conftest)."""


class Net(nn.Module):
    def __init__(self, seed: int = 0) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.lin = nn.Linear(5, 3, bias=False)  # a bias before BatchNorm gets rounding noise as its gradient
        self.bn = nn.BatchNorm1d(3)
        self.cache_seen: list[bool] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.cache_seen.append(torch.is_autocast_cache_enabled())
        return self.bn(self.lin(x).transpose(1, 2)).transpose(1, 2)


def mse(logits: torch.Tensor, b: dict) -> torch.Tensor:
    return (logits.float() - b["y"]).pow(2).mean()


def batch(seed: int, n: int = 4) -> dict:
    g = torch.Generator().manual_seed(seed)
    return {"x": torch.randn(n, 6, 5, generator=g), "y": torch.randn(n, 6, 3, generator=g)}


class FakeCuda:
    """What ``_capture`` / ``_side_stream_run`` use of ``torch.cuda``, on CPU, with a log."""

    def __init__(self, step: tstep.TrainStep) -> None:
        self.step = step
        self.log: list[str] = []
        self.replays = 0
        self.recompile_flag: list[bool] = []
        fake = self

        class Stream:
            def __init__(self, name: str) -> None:
                self.name = name

            def wait_stream(self, other) -> None:
                fake.log.append(f"{self.name} waits for {other.name}")

        self.main = Stream("main")
        self.Stream = lambda device: (fake.log.append(f"new stream on {device}"), Stream("side"))[1]
        self.current_stream = lambda device: (fake.log.append(f"current stream of {device}"), fake.main)[1]

        class Graph:
            def replay(self) -> None:
                fake.replays += 1
                s = fake.step
                s.optimizer.zero_grad(set_to_none=True)  # a replay's backward writes the static grads afresh
                groups = s.optimizer.param_groups
                now = [g["lr"] for g in groups]
                for g, t in zip(groups, fake.lr_at_capture):  # the graph reads the tensors it captured
                    g["lr"] = t
                try:
                    s._static_loss.copy_(s._run(s._static, capturing=True))
                finally:
                    for g, v in zip(groups, now):
                        g["lr"] = v

        self.CUDAGraph = Graph

    @contextlib.contextmanager
    def stream(self, s):
        self.log.append(f"run on {s.name}")
        yield

    @contextlib.contextmanager
    def graph(self, g):
        """Capture: what runs inside is rolled back at the end (recorded kernels never ran)."""
        assert isinstance(g, self.CUDAGraph)
        s = self.step
        self.recompile_flag.append(bool(torch._dynamo.config.error_on_recompile))
        self.lr_at_capture = [grp["lr"] for grp in s.optimizer.param_groups]
        tensors = [*s.model.parameters(), *s.model.buffers(), s.loss_sum, s.n_finite, s.n_steps, s.skipped,
                   s.streak, s.worst, *[v for st in s.optimizer.state.values() for v in st.values()
                                        if isinstance(v, torch.Tensor)]]
        saved = [t.detach().clone() for t in tensors]
        self.log.append("capture")
        yield
        with torch.no_grad():
            for t, v in zip(tensors, saved):
                t.copy_(v)

    def synchronize(self, device) -> None:
        self.log.append(f"synchronize {device}")

    def empty_cache(self) -> None:
        self.log.append("empty_cache")

    def initial_seed(self) -> int:
        return torch.initial_seed()


def graph_step(monkeypatch, net, opt, **kw) -> tuple[tstep.TrainStep, FakeCuda]:
    s = tstep.make_train_step(net, mse, opt, precision=kw.pop("precision", "fp32"), **kw)
    s.graphs = True  # what make_train_step decides on CUDA with a fused, capturable AdamW
    fake = FakeCuda(s)
    for name in ("Stream", "current_stream", "stream", "graph", "CUDAGraph", "synchronize", "empty_cache"):
        monkeypatch.setattr(torch.cuda, name, getattr(fake, name))
    return s, fake


def params_of(model):
    return [p.detach().clone() for p in model.parameters()]


def test_the_graph_path_trains_like_the_eager_step_and_honours_lr_changes_after_capture(monkeypatch):
    ref_net, net = Net(), Net()
    ref = tstep.make_train_step(ref_net, mse, make_optimizer(param_groups(ref_net, 1e-4), 1e-2), precision="fp32",
                                grad_clip=0.5)
    opt = make_optimizer(param_groups(net, 1e-4), 1e-2)
    s, fake = graph_step(monkeypatch, net, opt, warmup=2, grad_clip=0.5)
    got, want = [], []
    for i in range(8):
        if i == 4:  # after the capture: a float assigned by a scheduler, in the second group only
            for o in (opt, ref.optimizer):
                o.param_groups[1]["lr"] = 3e-3
        if i == 6:  # a new tensor assigned, and set_lr, which fills the captured tensors in place
            opt.param_groups[0]["lr"] = torch.tensor([5e-3])
            ref.optimizer.param_groups[0]["lr"] = 5e-3
            set_lr(opt, 4e-3)
            set_lr(ref.optimizer, 4e-3)
        got.append(float(s(batch(i))))
        want.append(float(ref(batch(i))))
    assert got == pytest.approx(want, rel=1e-6)
    for p, q in zip(net.parameters(), ref_net.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-7)
    for b, c in zip(net.buffers(), ref_net.buffers()):
        torch.testing.assert_close(b, c, rtol=1e-5, atol=1e-7)
    assert fake.replays == 6 and s.graph is not None  # calls 3..8
    assert all(g["lr"] is t for g, t in zip(opt.param_groups, fake.lr_at_capture))  # still the captured tensors
    assert all(t is u for t, u in zip(s._lr_tensors, fake.lr_at_capture)) and len(fake.lr_at_capture) == 2
    assert all(isinstance(t, torch.Tensor) and t.dtype == torch.float32 and t.shape == () for t in fake.lr_at_capture)
    assert [float(t) for t in fake.lr_at_capture] == pytest.approx([4e-3, 4e-3])
    assert s.stats()["steps"] == 8 and s.stats()["n_finite"] == 8
    # warm-up on the side stream (ordered both ways with the main stream), then one synchronised capture
    assert fake.log[:5] == ["new stream on cpu", "current stream of cpu", "side waits for main", "run on side",
                            "main waits for side"]
    i = fake.log.index("capture")
    assert fake.log[i - 2:i] == ["synchronize cpu", "empty_cache"] and fake.log[i + 1] == "synchronize cpu"
    assert fake.log.count("new stream on cpu") == 1  # one side stream, reused
    assert fake.recompile_flag == [False]


def test_the_capture_takes_copies_of_the_batch_and_keeps_other_values(monkeypatch):
    net = Net()
    s, fake = graph_step(monkeypatch, net, make_optimizer(net.parameters(), 1e-2), warmup=1)
    s(dict(batch(0), tag="scene"))
    b = dict(batch(1), tag="scene")
    s(b)  # capture + replay
    assert s._static["tag"] == "scene"
    assert all(s._static[k] is not b[k] and torch.equal(s._static[k], b[k]) for k in ("x", "y"))
    s(dict(batch(2), tag="scene"))  # a non-tensor entry does not stop the replay
    assert fake.replays == 2


def test_a_batch_of_another_shape_dtype_or_keys_runs_eagerly_with_one_warning(monkeypatch):
    ref_net, net = Net(), Net()
    ref = tstep.make_train_step(ref_net, mse, make_optimizer(ref_net.parameters(), 1e-2), precision="fp32")
    s, fake = graph_step(monkeypatch, net, make_optimizer(net.parameters(), 1e-2), warmup=1)
    odd = [batch(10, n=3), dict(batch(11), extra=torch.zeros(1)), {"x": batch(12)["x"].double(), "y": batch(12)["y"]},
           {"x": batch(13)["x"]}]  # fewer rows; an extra key; another dtype; a missing key (loss reads y: fails)
    plan = [batch(0), batch(1), odd[0], batch(2), odd[1], odd[2], batch(3)]
    with pytest.warns(UserWarning) as rec:
        for b in plan:
            s(b)
            ref(b)
    assert [str(w.message) for w in rec] == ["a batch with other shapes than the captured one: running it eagerly"]
    assert rec[0].filename == __file__  # attributed to the caller of step(), not to step.py
    assert fake.replays == 3  # batch(1) (the capture call), batch(2), batch(3)
    for p, q in zip(net.parameters(), ref_net.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-7)
    with pytest.raises(KeyError):
        s(odd[3])  # runs eagerly too: the loss's own error, not a failed copy into the graph
    assert fake.replays == 3


def test_a_failed_capture_says_why_in_one_line_and_attributes_it_to_the_caller(monkeypatch):
    for err, text in [(RuntimeError("op not allowed\nwhile capturing"), "RuntimeError: op not allowed"),
                      (RuntimeError(""), "RuntimeError: ")]:
        net = Net()
        s, fake = graph_step(monkeypatch, net, make_optimizer(net.parameters(), 1e-2), warmup=1)

        def capture(batch, err=err):
            raise err

        monkeypatch.setattr(s, "_capture", capture)
        s(batch(0))
        with pytest.warns(UserWarning) as rec:
            s(batch(1))
        assert [str(w.message) for w in rec] == [
            f"CUDA graph capture of the training step failed ({text}); running the step eagerly"]
        assert rec[0].filename == __file__  # the caller of step(), not step.py
        assert not s.graphs and s.stats()["steps"] == 2


def test_autocast_weight_cache_is_off_in_graph_steps_and_on_in_eager_ones(monkeypatch):
    net = Net()
    s, fake = graph_step(monkeypatch, net, make_optimizer(net.parameters(), 1e-2), warmup=1, precision="bf16")
    s(batch(0))
    eager = tstep.make_train_step(net, mse, make_optimizer(net.parameters(), 1e-2), precision="bf16")
    net.cache_seen.clear()
    eager(batch(1))
    s(batch(2))
    assert net.cache_seen[0] is True and set(net.cache_seen[1:]) == {False}


def test_a_compiled_step_is_captured_with_recompiles_made_errors(monkeypatch):
    net = Net()
    s, fake = graph_step(monkeypatch, net, make_optimizer(net.parameters(), 1e-2), warmup=1)
    s.compiled = True  # compile_parts ran (CUDA); under capture a recompile must raise, not be recorded
    s(batch(0))
    s(batch(1))
    assert fake.recompile_flag == [True] and not torch._dynamo.config.error_on_recompile


def test_a_reseed_after_capture_is_refused_on_the_graph_path(monkeypatch):
    net = Net()
    s, fake = graph_step(monkeypatch, net, make_optimizer(net.parameters(), 1e-2), warmup=1)
    torch.manual_seed(5)
    s(batch(0))
    s(batch(1))
    assert s.graph is not None
    torch.manual_seed(6)
    with pytest.raises(RuntimeError, match=r"reseeded \(seed 5 -> 6\)"):
        s(batch(2))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        torch.manual_seed(5)
        s(batch(2))  # back to the captured seed: replays again
    assert fake.replays == 2


def test_an_lr_tensor_already_on_the_device_is_captured_as_it_is(monkeypatch):
    net = Net()
    opt = make_optimizer(net.parameters(), 1e-2)
    lr = torch.tensor(1e-2)
    opt.param_groups[0]["lr"] = lr
    s, fake = graph_step(monkeypatch, net, opt, warmup=1)
    s(batch(0))
    s(batch(1))
    assert fake.lr_at_capture[0] is lr and opt.param_groups[0]["lr"] is lr
    lr.fill_(0.0)  # set_lr's way: in place, so the captured graph sees it
    before = params_of(net)
    s(batch(2))
    assert all(torch.equal(p, q) for p, q in zip(params_of(net), before))
