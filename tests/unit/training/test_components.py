"""training components: the schedule, the losses, parameter groups, CPU threads (pure pieces of a run)."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch

from mabe import models
from mabe.config import Config, TrainConfig
from mabe.training import device, losses, optim, schedule
from mabe.windows import TrackSet

torch.set_num_threads(1)


def test_warmup_is_a_pure_function_of_the_step():
    assert [schedule.warmup_lr(s, 4e-4, 4) for s in range(6)] == pytest.approx([1e-4, 2e-4, 3e-4, 4e-4, 4e-4, 4e-4])
    assert schedule.warmup_lr(0, 4e-4, 0) == 4e-4


def test_schedule_warmup_then_plateau():
    p = torch.nn.Parameter(torch.zeros(2))
    opt = torch.optim.AdamW([p], lr=1.0)
    tc = TrainConfig(lr=4e-4, plateau_patience=1, plateau_factor=0.5, min_lr=1.5e-4)
    sched = schedule.LRSchedule(opt, 4e-4, warmup_steps=6, cfg=tc)  # 3 steps per epoch, 2 warmup epochs
    lrs = []
    for step in range(6):
        sched.before_step(step)
        lrs.append(sched.lr)
        if step % 3 == 2:
            sched.after_epoch(0.1, step + 1 if step == 5 else step)  # epoch 1 ends inside warmup
    assert lrs == pytest.approx([4e-4 * k / 6 for k in range(1, 7)])
    assert sched.lr == pytest.approx(4e-4)  # the plateau ignored the warmup epoch
    sched.after_epoch(0.1, 6)  # no improvement: patience 1 used up
    assert sched.lr == pytest.approx(4e-4)
    sched.after_epoch(0.1, 9)
    assert sched.lr == pytest.approx(2e-4)
    sched.after_epoch(0.1, 12)
    sched.after_epoch(0.1, 15)
    assert sched.lr == pytest.approx(1.5e-4)  # min_lr
    state = sched.state_dict()
    opt2 = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(2))], lr=1.0)
    sched2 = schedule.LRSchedule(opt2, 4e-4, 6, tc)
    sched2.load_state_dict(state)
    assert sched2.lr == sched.lr and sched2.plateau.num_bad_epochs == sched.plateau.num_bad_epochs


def test_masked_loss_ignores_unlabelled_triples():
    torch.manual_seed(0)
    logits = torch.randn(2, 5, 3, requires_grad=True)
    y = (torch.rand(2, 5, 3) < 0.5).to(torch.uint8)
    mask = torch.rand(2, 5, 3) < 0.5
    pw = torch.tensor([1.0, 3.0, 5.0])
    loss = losses.pair_loss(logits, y, mask, pw)
    (g1,) = torch.autograd.grad(loss, logits)
    y2 = torch.where(mask, y, 1 - y)  # flip every unlabelled cell
    loss2 = losses.pair_loss(logits, y2, mask, pw)
    (g2,) = torch.autograd.grad(loss2, logits)
    assert loss.item() == loss2.item() and torch.equal(g1, g2)
    assert (g1[~mask] == 0).all() and (g1[mask] != 0).any()
    y3 = torch.where(mask, 1 - y, y)  # flipping labelled cells does change it
    assert losses.pair_loss(logits, y3, mask, pw).item() != loss.item()


def test_scene_loss_ignores_padding_and_weights_classes():
    logits = torch.randn(1, 4, 3)
    y = torch.tensor([[0, 2, -100, -100]])
    w = torch.tensor([1.0, 5.0, 8.0])
    ref = torch.nn.functional.cross_entropy(logits[0, :2], y[0, :2], weight=w)
    assert losses.scene_loss(logits, y, w).item() == pytest.approx(ref.item())


def test_auto_pos_weight_counts_labelled_cells():
    ys = [np.array([[1, 0]] * 2 + [[0, 0]] * 8), np.array([[1, 1]] * 10)]
    ts = TrackSet.from_tracks("pair", ["a", "b"], [np.zeros((10, 1))] * 2, ys, np.array([[1, 1], [0, 1]], bool))
    pw = losses.auto_pos_weight(ts, cap=20.0)
    assert pw[0] == pytest.approx(np.sqrt(8 / 2))  # track 1 does not label a
    assert pw[1] == pytest.approx(np.sqrt(10 / 10))
    ts.Y[:] = 0
    assert losses.auto_pos_weight(ts, cap=20.0).tolist() == [20.0, 20.0]


def test_no_weight_decay_on_norms_and_biases():
    model = models.create("conv1d_bilstm", 6, 2, Config().model)
    decay, no_decay = optim.param_groups(model, 1e-4)
    names = {id(p): n for n, p in model.named_parameters()}
    assert all(p.ndim >= 2 for p in decay["params"])
    assert {names[id(p)] for p in no_decay["params"]} >= {"conv.1.weight", "conv.1.bias", "head.bias"}
    assert no_decay["weight_decay"] == 0.0 and decay["weight_decay"] == 1e-4


def test_one_step_reduces_the_loss_on_a_fixed_batch():
    torch.manual_seed(0)
    cfg = Config().model
    cfg.conv_channels, cfg.lstm_hidden, cfg.dropout = [16], 16, 0.0
    model = models.create("conv1d_bilstm", 6, 3, cfg)
    x = torch.randn(8, 20, 6)
    y = (x[..., :3] > 0).to(torch.uint8)
    mask = torch.ones_like(y, dtype=torch.bool)
    opt = torch.optim.AdamW(optim.param_groups(model, 1e-4), lr=3e-3)
    before = losses.pair_loss(model(x), y, mask).item()
    for _ in range(3):
        loss = losses.pair_loss(model(x), y, mask)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert losses.pair_loss(model(x), y, mask).item() < before


def test_num_threads_is_capped_at_the_cpus(monkeypatch):
    cpus = len(os.sched_getaffinity(0))
    assert device.cpu_threads(1) == 1 and device.cpu_threads(10_000) == cpus
    monkeypatch.setenv("LOCAL_WORLD_SIZE", str(2 * cpus))  # more ranks than CPUs: still one thread each
    assert device.cpu_threads(4) == 1
