"""accel: the fast step against the reference step, the device-side non-finite skip, DeviceStore.

CPU tests run everywhere; the ``gpu``-marked ones (CUDA graphs, fp16 storage on the device) need CUDA
and are deselected by default (``pytest -m gpu`` on a GPU machine).
"""

from __future__ import annotations

import contextlib
import warnings

import numpy as np
import pytest
import torch

from mabe import models
from mabe.bench import reference_step
from mabe.config import ModelConfig
from mabe.training import batches as tbatches
from mabe.training import device as tdevice
from mabe.training import optim
from mabe.training import step as tstep
from mabe.windows import TrackSet, gather, window_index


@pytest.fixture(autouse=True)
def _one_thread(one_torch_thread):
    """Every test here runs with one intra-op thread (see conftest)."""


W = 20
F = 12
C = 4


def tiny_cfg(dropout: float = 0.3) -> ModelConfig:
    return ModelConfig(conv_channels=[8, 16], lstm_hidden=8, lstm_layers=2, dropout=dropout)


def tiny_ts(seed: int = 0, lengths=(60, 45, 30)) -> TrackSet:
    rng = np.random.default_rng(seed)
    xs = [rng.standard_normal((n, F)).astype(np.float32) for n in lengths]
    ys = [rng.integers(0, C, n) for n in lengths]
    return TrackSet.from_tracks("scene", ["none", "a", "b", "c"], xs, ys)


def loss_fn(logits: torch.Tensor, b: dict) -> torch.Tensor:
    from mabe.training.losses import scene_loss

    return scene_loss(logits, b["y"], torch.tensor([1.0, 5.0, 8.0, 8.0]))


def batches(ts: TrackSet, k: int, B: int = 6, seed: int = 1) -> list[dict]:
    rng = np.random.default_rng(seed)
    windows = window_index(ts.lengths, W, 1)
    out = []
    for _ in range(k):
        b = gather(ts.arrays(), windows[rng.integers(0, len(windows), B)], W, mode="scene")
        out.append({key: torch.from_numpy(np.ascontiguousarray(v)) for key, v in b.items()})
    return out


def make_model(dropout: float = 0.3) -> torch.nn.Module:
    torch.manual_seed(0)
    return models.create("conv1d_bilstm", F, C, tiny_cfg(dropout)).train()


def groups(model: torch.nn.Module) -> list[dict]:
    from mabe.training.optim import param_groups

    return param_groups(model, 1e-4)


@contextlib.contextmanager
def no_host_reads():
    """Make every way of reading a tensor's value on the host raise (the step must not use any)."""
    names = ["item", "tolist", "__bool__", "__float__", "__int__", "__index__", "numpy"]
    saved = {n: getattr(torch.Tensor, n) for n in names}

    def boom(*args, **kwargs):
        raise AssertionError("host read of a tensor value inside the step")

    try:
        for n in names:
            setattr(torch.Tensor, n, boom)
        yield
    finally:
        for n, f in saved.items():
            setattr(torch.Tensor, n, f)


# ----------------------------------------------------------------------------- same losses


@pytest.mark.parametrize("clip", [1.0, 0.0])
def test_fast_step_matches_reference_fp32(clip):
    ts = tiny_ts()
    bs = batches(ts, 6)
    ref_model, fast_model = make_model(), make_model()
    ref_opt = torch.optim.AdamW(groups(ref_model), lr=1e-2)
    opt = optim.make_optimizer(groups(fast_model), 1e-2, fused=True)
    assert opt.param_groups[0]["fused"]
    step = tstep.make_train_step(fast_model, loss_fn, opt, precision="fp32", grad_clip=clip)

    torch.manual_seed(123)  # dropout masks: both paths draw in the same order
    ref = [reference_step(ref_model, loss_fn, ref_opt, b, clip) for b in bs]
    torch.manual_seed(123)
    fast = [step(b).clone() for b in bs]
    fast = torch.stack(fast).tolist()

    np.testing.assert_allclose(fast, ref, rtol=1e-5, atol=1e-7)
    assert ref[-1] != ref[0]  # it did train
    conv_bias = {f"conv.{i}.bias" for i, m in enumerate(fast_model.conv) if isinstance(m, torch.nn.Conv1d)}
    for (name, p), q in zip(ref_model.named_parameters(), fast_model.parameters()):
        if name in conv_bias:
            continue  # BatchNorm follows: its gradient is rounding noise, which Adam's normalisation amplifies
        torch.testing.assert_close(p, q, rtol=1e-4, atol=1e-6, msg=name)
    st = step.stats()
    assert st["steps"] == 6 and st["skipped"] == 0 and st["n_finite"] == 6
    assert st["loss_mean"] == pytest.approx(np.mean(ref), rel=1e-5)


def test_step_accepts_half_storage_batches():
    ts = tiny_ts()
    b = batches(ts, 1)[0]
    b16 = dict(b, x=b["x"].to(torch.float16))
    model = make_model(0.0)
    step = tstep.make_train_step(model, loss_fn, optim.make_optimizer(groups(model), 1e-3), precision="fp32")
    assert torch.isfinite(step(b16))


# ----------------------------------------------------------------------------- non-finite


def _snapshot(model, opt):
    params = [p.detach().clone() for p in model.parameters()]
    bufs = [b.detach().clone() for b in model.buffers()]
    state = {id(p): {k: v.clone() for k, v in s.items()} for p, s in opt.state.items()}
    return params, bufs, state


def _assert_same(model, opt, snap):
    params, bufs, state = snap
    for p, q in zip(model.parameters(), params):
        assert torch.equal(p.detach(), q)
    for b, q in zip(model.buffers(), bufs):
        if b.is_floating_point():
            assert torch.equal(b, q)
    for p, s in opt.state.items():
        for k, v in s.items():
            assert torch.equal(v, state[id(p)][k]), k


@pytest.mark.parametrize("where", ["loss", "grad"])
def test_nonfinite_step_is_skipped_on_device(where):
    ts = tiny_ts()
    good, bad_b, after = batches(ts, 3)
    model = make_model()

    def lossf(logits, b):
        loss = loss_fn(logits, b)
        if where == "grad" and b.get("poison") is not None:
            # finite value (sqrt(0) = 0), NaN gradient (0 * inf)
            loss = loss + torch.sqrt(model.head.bias[0] * b["poison"])
        return loss

    opt = optim.make_optimizer(groups(model), 1e-2)
    step = tstep.make_train_step(model, lossf, opt, precision="fp32", grad_clip=1.0)
    step(good)
    snap = _snapshot(model, opt)
    if where == "loss":
        bad_b = dict(bad_b, x=bad_b["x"].clone())
        bad_b["x"][0, 3, 2] = float("nan")
    else:
        bad_b = dict(bad_b, poison=torch.zeros(()))
    with no_host_reads():
        loss = step(bad_b)
    if where == "grad":
        assert torch.isfinite(loss)
    _assert_same(model, opt, snap)  # parameters, BatchNorm stats and AdamW state untouched
    st = step.stats()
    assert (st["steps"], st["skipped"], st["streak"], st["worst_streak"], st["n_finite"]) == (2, 1, 1, 1, 1)
    assert not hasattr(opt, "found_inf")  # the flag never leaks into a later step

    step(after)  # training goes on; the streak resets, the worst one stays
    assert not torch.equal(next(model.parameters()).detach(), snap[0][0])
    st = step.stats(reset=True)
    assert (st["skipped"], st["streak"], st["worst_streak"]) == (1, 0, 1)
    assert step.stats()["steps"] == 0
    step.set_stats(loss_sum=3.0, n_finite=2, steps=3, skipped=1)
    assert step.stats() | {"streak": 0, "worst_streak": 0} == {
        "loss_sum": 3.0, "n_finite": 2, "loss_mean": 1.5, "steps": 3, "skipped": 1, "streak": 0, "worst_streak": 0}
    state_step = next(iter(opt.state.values()))["step"]
    assert float(state_step) == 2.0  # the skipped step did not advance AdamW's step count


def test_good_step_has_no_host_reads():
    ts = tiny_ts()
    model = make_model()
    step = tstep.make_train_step(model, loss_fn, optim.make_optimizer(groups(model), 1e-3), grad_clip=1.0)
    b1, b2 = batches(ts, 2)
    step(b1)  # lazily creates the optimizer state
    with no_host_reads():
        step(b2)
    assert step.stats()["skipped"] == 0


def test_nonfused_optimizer_still_skips():
    ts = tiny_ts()
    b = batches(ts, 1)[0]
    b["x"][0, 0, 0] = float("inf")
    model = make_model()
    opt = optim.make_optimizer(groups(model), 1e-2, fused=False)
    step = tstep.make_train_step(model, loss_fn, opt, precision="fp32")
    assert "syncs the host" in step.describe()
    before = [p.detach().clone() for p in model.parameters()]
    step(b)
    assert all(torch.equal(p.detach(), q) for p, q in zip(model.parameters(), before))
    assert step.stats()["skipped"] == 1


def test_failed_capture_falls_back_to_eager(monkeypatch):
    """A CUDA-graph capture that raises (an op that cannot be captured, out of memory) warns and
    leaves an eager step that trains on as if graphs had never been asked for: nothing of the failed
    capture ran. CPU stand-in for the graph branch: ``graphs`` forced on, ``_capture`` raising."""
    ts = tiny_ts()
    bs = batches(ts, 4)
    ref_model, model = make_model(0.0), make_model(0.0)
    ref = tstep.make_train_step(ref_model, loss_fn, optim.make_optimizer(groups(ref_model), 1e-2), precision="fp32")
    step = tstep.make_train_step(model, loss_fn, optim.make_optimizer(groups(model), 1e-2), precision="fp32",
                                 warmup=1)
    step.graphs = True
    monkeypatch.setattr(step, "_side_stream_run", step._run)  # no CUDA streams here

    def capture(batch):
        raise RuntimeError("operation not permitted when stream is capturing")

    monkeypatch.setattr(step, "_capture", capture)
    with pytest.warns(UserWarning, match="capture of the training step failed.*eagerly"):
        got = [step(b).clone() for b in bs]
    want = [ref(b).clone() for b in bs]
    assert torch.equal(torch.stack(got), torch.stack(want))
    assert not step.graphs and step.graph is None and "eager" in step.describe()
    assert step.stats()["steps"] == 4
    for p, q in zip(model.parameters(), ref_model.parameters()):
        assert torch.equal(p, q)


# ----------------------------------------------------------------------------- optimizer, backends


def test_make_optimizer_and_lr():
    model = make_model()
    opt = optim.make_optimizer(groups(model), 4e-4, betas=(0.8, 0.99), weight_decay=0.1, capturable=True)
    g = opt.param_groups
    assert g[0]["fused"] and not g[0]["capturable"]  # capturable is CUDA only
    assert g[0]["weight_decay"] == 1e-4 and g[1]["weight_decay"] == 0.0  # the groups' own decay wins
    assert g[0]["betas"] == (0.8, 0.99)
    optim.set_lr(opt, 1e-3)
    assert optim.get_lr(opt) == pytest.approx(1e-3)
    plain = optim.make_optimizer(list(model.parameters()), 1e-3, fused=False)
    assert not plain.param_groups[0]["fused"]


def test_setup_backends_cpu_is_a_noop_and_restorable():
    before = tdevice.backend_flags()
    old = tdevice.setup_backends("cpu")
    assert old == before == tdevice.backend_flags()
    tdevice.restore_backends(old)
    assert tdevice.backend_flags() == before


# ----------------------------------------------------------------------------- DeviceStore


def test_resolve_storage_dtype():
    X = np.ones((4, 3), np.float32)
    assert tbatches.resolve_storage_dtype("auto", X, "cpu") == torch.float32
    assert tbatches.resolve_storage_dtype("bfloat16", X, "cpu") == torch.bfloat16
    # CUDA + bf16 compute: fp16 when the range allows, else bf16 (no CUDA call is made)
    assert tbatches.resolve_storage_dtype("auto", X, torch.device("cuda"), "bf16") == torch.float16
    assert tbatches.resolve_storage_dtype("auto", X * 1e6, torch.device("cuda"), "bf16") == torch.bfloat16
    assert tbatches.resolve_storage_dtype("auto", X, torch.device("cuda"), "fp32") == torch.float32
    with pytest.raises(ValueError):
        tbatches.resolve_storage_dtype("int8", X, "cpu")


@pytest.mark.parametrize("storage,eps", [("float32", 0.0), ("float16", 2.0**-11), ("bfloat16", 2.0**-8)])
def test_device_store_roundtrip(storage, eps):
    ts = tiny_ts(lengths=(300, 200))
    store = tbatches.DeviceStore(ts, "cpu", storage)
    X = store.arrays["X"]
    assert X.dtype == tbatches._STORAGE[storage]
    itemsize = X.element_size()
    assert store.nbytes["X"] == ts.X.size * itemsize
    assert store.nbytes["total"] == store.nbytes["X"] + ts.Y.nbytes + ts.offsets.nbytes + ts.label_mask.nbytes
    assert store.nbytes["fp32_total"] == ts.X.size * 4 + ts.Y.nbytes + ts.offsets.nbytes + ts.label_mask.nbytes
    back = X.float().numpy()
    np.testing.assert_allclose(back, ts.X, rtol=eps, atol=1e-7)
    assert store.max_abs_error == pytest.approx(np.abs(back - ts.X).max(), abs=1e-12)
    assert store.resident and "resident on cpu" in store.message
    if storage == "float32":
        assert np.shares_memory(X.numpy(), ts.X)  # zero copy on CPU
    # batches equal the numpy gather (up to the storage rounding)
    windows = window_index(ts.lengths, W, 7)[:5]
    shift = np.array([-2, 0, 1, 2, 3])
    ref = gather(ts.arrays(), windows, W, shift, mode="scene")
    got = store.batch(torch.from_numpy(windows), W, torch.from_numpy(shift))
    np.testing.assert_allclose(got["x"].float().numpy(), ref["x"], rtol=eps, atol=1e-7)
    np.testing.assert_array_equal(got["y"].numpy(), ref["y"])
    np.testing.assert_array_equal(got["valid"].numpy(), ref["valid"])


def test_device_store_streaming_fallback():
    ts = tiny_ts()
    with pytest.warns(UserWarning, match="streaming batches from pinned host memory"):
        store = tbatches.DeviceStore(ts, "cpu", "float16", max_bytes=1)
    assert not store.resident and "streamed" in store.message
    assert store.max_abs_error > 0
    windows = window_index(ts.lengths, W, 5)[:4]
    got = store.batch(windows, W)
    ref = gather(ts.arrays(), windows, W, mode="scene")
    assert got["x"].dtype == torch.float16
    np.testing.assert_allclose(got["x"].float().numpy(), ref["x"], rtol=2.0**-11, atol=1e-7)


def test_format_bytes():
    assert tbatches.format_bytes(None) == "n/a"
    assert tbatches.format_bytes(512) == "512 B"
    assert tbatches.format_bytes(3 * 1024**3) == "3.00 GiB"



# ----------------------------------------------------------------------------- LSTM precision, loss scale


def test_resolve_lstm_precision():
    assert tdevice.resolve_lstm_precision("auto", "cpu") == "fp32"  # no cuDNN: bf16 would be the slow path
    for p in ("fp32", "bf16", "fp16"):
        assert tdevice.resolve_lstm_precision(p, "cpu") == p
    with pytest.raises(ValueError, match="lstm_precision"):
        tdevice.resolve_lstm_precision("fp8", "cpu")
    assert not tdevice.bf16_lstm_supported("cpu")


def test_static_loss_scale_is_undone_before_the_update():
    """A step with loss scale 1024 moves the weights exactly as an unscaled one (SGD, no clip); forgetting
    to unscale would move them 1024x further."""
    ts = tiny_ts()
    bs = batches(ts, 3)
    out = {}
    for scale in (1.0, 1024.0):
        model = make_model(0.0)
        step = tstep.make_train_step(model, loss_fn, torch.optim.SGD(model.parameters(), lr=1e-2),
                                     precision="fp32", loss_scale=scale)
        assert step.loss_scale == scale
        losses = [float(step(b)) for b in bs]
        out[scale] = (losses, [p.detach().clone() for p in model.parameters()])
    np.testing.assert_allclose(out[1024.0][0], out[1.0][0], rtol=1e-6)  # the loss reported is unscaled
    for p, q in zip(out[1024.0][1], out[1.0][1]):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-7)


def test_fp16_lstm_gets_a_loss_scale_and_trains():
    model = make_model(0.0)
    models.set_lstm_precision(model, "fp16")
    step = tstep.make_train_step(model, loss_fn, optim.make_optimizer(groups(model), 1e-2), precision="fp32",
                                 grad_clip=1.0)
    assert step.loss_scale == tstep.FP16_LOSS_SCALE and "LSTM fp16, loss scale 1024" in step.describe()
    before = [p.detach().clone() for p in model.parameters()]
    for b in batches(tiny_ts(), 3):
        step(b)
    st = step.stats()
    assert st["skipped"] == 0 and st["steps"] == 3
    assert any(not torch.equal(p.detach(), q) for p, q in zip(model.parameters(), before))
    plain = tstep.make_train_step(make_model(0.0), loss_fn, torch.optim.SGD(make_model(0.0).parameters()))
    assert plain.loss_scale == 1.0 and "LSTM fp32/TF32" in plain.describe()


def test_reseed_around_capture(monkeypatch):
    """CPU stand-in for the graph branch: a reseed between warm-up and capture buys one more eager call
    (cuDNN rebuilds its dropout state outside the capture); a reseed after capture is refused."""
    model = make_model(0.3)
    step = tstep.make_train_step(model, loss_fn, optim.make_optimizer(groups(model), 1e-3), precision="fp32",
                                 warmup=2)
    step.graphs = True
    monkeypatch.setattr(step, "_side_stream_run", step._run)
    captured = []

    def capture(batch):
        captured.append(step.calls)
        step.graph = type("G", (), {"replay": lambda self: None})()
        step._static, step._static_loss = dict(batch), torch.zeros(())

    monkeypatch.setattr(step, "_capture", capture)
    b = batches(tiny_ts(), 1)[0]
    step(b)
    step(b)  # the two warm-up calls
    torch.manual_seed(1234)
    step(b)
    assert captured == []  # call 3 would have captured; the reseed made it eager
    step(b)
    assert captured == [4]
    step(b)  # replays
    torch.manual_seed(4321)
    with pytest.raises(RuntimeError, match="reseeded"):
        step(b)


def test_check_reseed_refuses_a_changed_seed():
    tstep.check_reseed(None, 5)  # nothing captured yet
    tstep.check_reseed(7, 7)
    with pytest.raises(RuntimeError, match="reseeded.*7 -> 8"):
        tstep.check_reseed(7, 8)


# ----------------------------------------------------------------------------- CUDA only

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


@pytest.mark.gpu
@cuda
@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_cuda_graph_step_matches_eager(precision):
    dev = torch.device("cuda")
    ts = tiny_ts()
    bs = [{k: v.to(dev) for k, v in b.items()} for b in batches(ts, 8)]
    losses = {}
    for graphs in (False, True):
        model = make_model(0.0).to(dev)
        opt = optim.make_optimizer(groups(model), 1e-2, capturable=graphs)
        step = tstep.make_train_step(model, loss_fn_cuda, opt, precision=precision, grad_clip=1.0,
                                     cuda_graphs=graphs, warmup=3)
        assert step.graphs == graphs
        out = []
        for i, b in enumerate(bs):
            if i == 5:
                optim.set_lr(opt, 5e-3)  # a schedule change after capture must be honoured
            out.append(step(b).clone())
        losses[graphs] = torch.stack(out).tolist()
        assert step.stats()["skipped"] == 0
        if graphs:
            assert step.graph is not None
    tol = 1e-4 if precision == "fp32" else 2e-2
    np.testing.assert_allclose(losses[True], losses[False], rtol=tol)


@pytest.mark.gpu
@cuda
def test_cuda_graph_skips_nonfinite_and_float_lr():
    dev = torch.device("cuda")
    ts = tiny_ts()
    bs = [{k: v.to(dev) for k, v in b.items()} for b in batches(ts, 6)]
    model = make_model(0.0).to(dev)
    opt = optim.make_optimizer(groups(model), 1e-2, capturable=True)
    step = tstep.make_train_step(model, loss_fn_cuda, opt, precision="bf16", cuda_graphs=True, warmup=2)
    for b in bs[:3]:
        step(b)  # 2 eager warm-up calls, then capture + replay
    assert step.graph is not None
    bad = dict(bs[3], x=bs[3]["x"].clone())
    bad["x"][0, 0, 0] = float("nan")
    before = [p.detach().clone() for p in model.parameters()]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        torch.cuda.set_sync_debug_mode("error")
        try:
            step(bad)
        finally:
            torch.cuda.set_sync_debug_mode("default")
    assert all(torch.equal(p.detach(), q) for p, q in zip(model.parameters(), before))
    for g in opt.param_groups:
        g["lr"] = 0.0  # a scheduler that assigns floats: copied into the captured lr tensor
    step(bs[4])
    assert all(torch.equal(p.detach(), q) for p, q in zip(model.parameters(), before))
    st = step.stats()
    assert st["skipped"] == 1 and st["steps"] == 5


_CUDA_WEIGHT: list[torch.Tensor] = []


def loss_fn_cuda(logits, b):
    """Class weights made once on the device: a loss must not copy host data into a captured graph."""
    from mabe.training.losses import scene_loss

    if not _CUDA_WEIGHT:
        _CUDA_WEIGHT.append(torch.tensor([1.0, 5.0, 8.0, 8.0], device=logits.device))
    return scene_loss(logits, b["y"], _CUDA_WEIGHT[0])


def _ref_cuda_model(dropout: float) -> torch.nn.Module:
    torch.manual_seed(0)
    return models.create("conv1d_bilstm", F, C, tiny_cfg(dropout)).cuda().train()


@pytest.mark.gpu
@cuda
def test_cuda_graph_with_lstm_dropout_draws_fresh_masks():
    """Reference dropout (0.3, cuDNN LSTM dropout included) under capture: no fallback, and two replays
    on the same batch with the lr at 0 give different losses (new masks each replay)."""
    b = {k: v.cuda() for k, v in batches(tiny_ts(), 1)[0].items()}
    model = _ref_cuda_model(0.3)
    opt = optim.make_optimizer(groups(model), 0.0, capturable=True)
    step = tstep.make_train_step(model, loss_fn_cuda, opt, precision="bf16", grad_clip=1.0, cuda_graphs=True,
                                 warmup=2)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a capture failure warns and falls back: make that fail the test
        losses = [float(step(b)) for _ in range(5)]
    assert step.graph is not None and step.graphs
    assert losses[3] != losses[4] and len(set(losses[2:])) == 3


@pytest.mark.gpu
@cuda
def test_reseed_after_capture_is_refused_and_before_capture_is_absorbed():
    b = {k: v.cuda() for k, v in batches(tiny_ts(), 1)[0].items()}
    model = _ref_cuda_model(0.3)
    step = tstep.make_train_step(model, loss_fn_cuda, optim.make_optimizer(groups(model), 1e-3, capturable=True),
                                 precision="bf16", cuda_graphs=True, warmup=2)
    step(b)
    step(b)  # the two warm-up calls
    torch.manual_seed(99)  # between warm-up and capture: one more eager call, then the capture
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        step(b)
        assert step.graph is None  # the reseed bought one more eager call
        step(b)
    assert step.graph is not None
    torch.manual_seed(100)
    with pytest.raises(RuntimeError, match="reseeded"):
        step(b)


@pytest.mark.gpu
@cuda
def test_compiled_stem_does_not_recompile_under_capture():
    from torch._dynamo.utils import counters

    b = {k: v.cuda() for k, v in batches(tiny_ts(), 1)[0].items()}
    model = _ref_cuda_model(0.3)
    step = tstep.make_train_step(model, loss_fn_cuda, optim.make_optimizer(groups(model), 1e-3, capturable=True),
                                 precision="bf16", cuda_graphs=True, compile=True, warmup=3)
    assert step.compiled
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for _ in range(3):
            step(b)  # warm-up: compiles here
        frames = sum(counters["stats"].values())
        for _ in range(3):
            step(b)  # capture + replays
    assert step.graph is not None
    assert sum(counters["stats"].values()) == frames


@pytest.mark.gpu
@cuda
@pytest.mark.parametrize("lstm", ["bf16", "fp16"])
def test_low_precision_lstm_steps_follow_fp32(lstm):
    bs = [{k: v.cuda() for k, v in b.items()} for b in batches(tiny_ts(), 6)]
    losses = {}
    for prec in ("fp32", lstm):
        model = _ref_cuda_model(0.0)
        models.set_lstm_precision(model, prec)
        step = tstep.make_train_step(model, loss_fn_cuda, optim.make_optimizer(groups(model), 1e-2,
                                     capturable=True), precision="bf16", grad_clip=1.0, cuda_graphs=True, warmup=2)
        losses[prec] = [float(step(b)) for b in bs]
        assert step.stats()["skipped"] == 0
    np.testing.assert_allclose(losses[lstm], losses["fp32"], rtol=5e-2)


@pytest.mark.gpu
@cuda
def test_device_store_cuda_fp16():
    ts = tiny_ts(lengths=(300, 200))
    store = tbatches.DeviceStore(ts, "cuda", "auto", precision="bf16")
    assert store.resident and store.dtype == torch.float16
    assert store.nbytes["X"] == ts.X.size * 2
    assert 0 < store.max_abs_error <= np.abs(ts.X).max() * 2.0**-11
    windows = torch.from_numpy(window_index(ts.lengths, W, 9)).cuda()
    b = store.batch(windows[:4], W)
    assert b["x"].is_cuda and b["x"].dtype == torch.float16


# ----------------------------------------------------------------------------- clipping that bites


def test_clip_with_norm_scales_gradients_like_clip_grad_norm():
    """A gradient of norm ~31.6 clipped to 1.0 ends at norm 1.0, exactly as ``clip_grad_norm_`` does."""
    a, b = torch.nn.Parameter(torch.zeros(10)), torch.nn.Parameter(torch.zeros(10))
    ref_a, ref_b = torch.nn.Parameter(torch.zeros(10)), torch.nn.Parameter(torch.zeros(10))
    g = torch.full((10,), 10.0)
    for p in (a, b, ref_a, ref_b):
        p.grad = g.clone()
    norm = tstep._total_norm([a.grad, b.grad])
    assert float(norm) > 30.0  # the condition the test names occurs: the clip must bite
    tstep._clip_with_norm([a, b], 1.0, norm)
    torch.nn.utils.clip_grad_norm_([ref_a, ref_b], 1.0)
    torch.testing.assert_close(a.grad, ref_a.grad)
    torch.testing.assert_close(b.grad, ref_b.grad)
    assert float(tstep._total_norm([a.grad, b.grad])) == pytest.approx(1.0, rel=1e-5)


def _first_grad_norm(model: torch.nn.Module, b: dict) -> float:
    model.zero_grad(set_to_none=True)
    torch.manual_seed(123)
    loss_fn(model(b["x"]), b).backward()
    norm = float(torch.nn.utils.get_total_norm([p.grad for p in model.parameters() if p.grad is not None]))
    model.zero_grad(set_to_none=True)
    return norm


def test_engaged_clip_changes_training_and_matches_reference():
    """With a clip far below the gradient norm, the fast step follows the clipped reference step and
    differs from an unclipped run: a no-op clip fails both halves."""
    ts = tiny_ts()
    bs = batches(ts, 4)
    clip = 1e-3
    assert _first_grad_norm(make_model(), bs[0]) > 100 * clip  # the clip engages on every step

    def run_fast(c: float) -> torch.nn.Module:
        model = make_model()
        step = tstep.make_train_step(model, loss_fn, optim.make_optimizer(groups(model), 1e-2, fused=True),
                                     precision="fp32", grad_clip=c)
        torch.manual_seed(123)
        for b in bs:
            step(b)
        return model

    ref_model = make_model()
    # plain SGD without decay: each update is exactly lr times the clipped gradient
    ref_opt = torch.optim.SGD(ref_model.parameters(), lr=1e-2)
    fast_sgd = make_model()
    step = tstep.make_train_step(fast_sgd, loss_fn, torch.optim.SGD(fast_sgd.parameters(), lr=1e-2),
                                 precision="fp32", grad_clip=clip)
    torch.manual_seed(123)
    ref = [reference_step(ref_model, loss_fn, ref_opt, b, clip) for b in bs]
    torch.manual_seed(123)
    fast = torch.stack([step(b).clone() for b in bs]).tolist()
    np.testing.assert_allclose(fast, ref, rtol=1e-5, atol=1e-7)
    for (name, p), q in zip(ref_model.named_parameters(), fast_sgd.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-7, msg=name)
    # each SGD update moved the parameters by lr * clip at most: a no-op clip moves them far more
    start = make_model()
    with torch.no_grad():
        moved = torch.sqrt(sum(((p - q) ** 2).sum() for p, q in zip(fast_sgd.parameters(), start.parameters())))
    assert float(moved) <= len(bs) * 1e-2 * clip * (1 + 1e-4)

    m1, m2 = run_fast(clip), run_fast(0.0)
    assert any(not torch.equal(p, q) for p, q in zip(m1.parameters(), m2.parameters()))
