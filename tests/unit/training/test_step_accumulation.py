"""training.step: gradient accumulation is the same step as one big batch; a NaN micro-batch skips the group."""

from __future__ import annotations

import torch
from torch import nn

from mabe.training.optim import make_optimizer
from mabe.training.step import accumulation_group, make_train_step


class _Net(nn.Module):
    """(B, W, F) -> (B, W, C) with a BatchNorm buffer, so buffer restoring is visible."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(5, 3)
        self.bn = nn.BatchNorm1d(3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn(self.lin(x).transpose(1, 2)).transpose(1, 2)


def _loss(logits: torch.Tensor, b: dict) -> torch.Tensor:
    return (logits - b["y"]).pow(2).mean()


def _pair(seed: int = 0) -> tuple[nn.Module, nn.Module]:
    torch.manual_seed(seed)
    a = _Net()
    b = _Net()
    b.load_state_dict(a.state_dict())
    return a, b


def test_accumulation_group_sizes_and_ends():
    assert [accumulation_group(j, 5, 2) for j in range(5)] == [(2, False), (2, True), (2, False), (2, True), (1, True)]
    assert [accumulation_group(j, 3, 1) for j in range(3)] == [(1, True)] * 3


def test_two_micro_batches_step_like_their_mean(rng):
    big, acc = _pair()
    big.bn.momentum = acc.bn.momentum = 0.0  # batch statistics differ per micro-batch; keep running stats fixed
    x = torch.from_numpy(rng.standard_normal((8, 4, 5)).astype("float32"))
    y = torch.from_numpy(rng.standard_normal((8, 4, 3)).astype("float32"))
    s_acc = make_train_step(acc, _loss, make_optimizer(acc.parameters(), 1e-2), precision="fp32", grad_clip=0.5, accum=2)
    ref_opt = make_optimizer(big.parameters(), 1e-2)
    # the reference: the mean of the two micro-batch losses, one backward (BatchNorm per half as in accumulation)
    for _ in range(3):
        for half in (slice(0, 4), slice(4, 8)):
            size, last = accumulation_group(half.start // 4, 2, 2)
            s_acc({"x": x[half], "y": y[half]}, group_size=size, last=last)
        ref_opt.zero_grad(set_to_none=True)
        loss = (_loss(big(x[:4]), {"y": y[:4]}) + _loss(big(x[4:]), {"y": y[4:]})) / 2
        loss.backward()
        nn.utils.clip_grad_norm_(list(big.parameters()), 0.5)
        ref_opt.step()
    for p, q in zip(acc.parameters(), big.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6)
    st = s_acc.stats()
    assert st["steps"] == 3 and st["skipped"] == 0 and st["n_finite"] == 6  # loss counted per micro-batch


def test_a_nan_micro_batch_skips_the_whole_group_and_restores_buffers(rng):
    net, _ = _pair(1)
    step = make_train_step(net, _loss, make_optimizer(net.parameters(), 1e-2, fused=True), precision="fp32", accum=2)
    x = torch.from_numpy(rng.standard_normal((4, 4, 5)).astype("float32"))
    y = torch.zeros(4, 4, 3)
    before = {k: v.clone() for k, v in net.state_dict().items()}
    bad = x.clone()
    bad[0, 0, 0] = float("nan")
    step({"x": bad, "y": y}, group_size=2, last=False)  # the group's first micro-batch is non-finite
    step({"x": x, "y": y}, group_size=2, last=True)
    for k, v in net.state_dict().items():
        if v.is_floating_point():  # (num_batches_tracked, an integer, only counts)
            assert torch.equal(v, before[k]), k  # weights and BatchNorm running stats untouched
    st = step.stats()
    assert st["skipped"] == 1 and st["worst_streak"] == 1 and st["n_finite"] == 1
    step({"x": x, "y": y}, group_size=2, last=False)
    step({"x": x, "y": y}, group_size=2, last=True)
    assert step.stats()["streak"] == 0
    assert any(not torch.equal(v, before[k]) for k, v in net.state_dict().items())


def test_accumulating_step_is_eager_and_says_so():
    net, _ = _pair()
    step = make_train_step(net, _loss, make_optimizer(net.parameters(), 1e-2), cuda_graphs=True, accum=2)
    assert not step.graphs and "gradient accumulation over 2" in step.describe() and "eager" in step.describe()


def test_accumulation_with_a_loss_scale_updates_like_no_scale(rng):
    """fp16 LSTMs train with a static loss scale; with accumulation the scale must be undone once per group
    before the clip and the update (SGD makes a forgotten unscale a 1024x larger step)."""
    x = torch.from_numpy(rng.standard_normal((8, 4, 5)).astype("float32"))
    y = torch.from_numpy(rng.standard_normal((8, 4, 3)).astype("float32"))
    out = {}
    for scale in (1.0, 1024.0):
        net, _ = _pair(2)
        net.bn.momentum = 0.0
        step = make_train_step(net, _loss, torch.optim.SGD(net.parameters(), lr=1e-2), precision="fp32",
                               accum=2, loss_scale=scale)
        assert step.loss_scale == scale
        for _ in range(2):
            for j, half in enumerate((slice(0, 4), slice(4, 8))):
                size, last = accumulation_group(j, 2, 2)
                step({"x": x[half], "y": y[half]}, group_size=size, last=last)
        out[scale] = [p.detach().clone() for p in net.parameters()]
        assert step.stats()["skipped"] == 0
    for p, q in zip(out[1024.0], out[1.0]):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-7)
