"""training.schedule: the first warmup rate, plateau on a rising F1, the "none" scheduler, state
round trips and lr scaling (edge cases found by mutation testing, docs/testing.md). The warmup ramp
and the plateau after warmup are in test_components.py."""

from __future__ import annotations

import math

import pytest
import torch

# every mabe name these tests use, in one place
from mabe.config import TrainConfig
from mabe.training import schedule


def _opt():
    return torch.optim.AdamW([torch.nn.Parameter(torch.zeros(2))], lr=1.0)


def test_the_first_step_runs_at_the_first_warmup_rate_from_construction():
    opt = _opt()
    sched = schedule.LRSchedule(opt, 4e-4, warmup_steps=4, cfg=TrainConfig(lr=4e-4))
    assert sched.lr == pytest.approx(1e-4) and opt.param_groups[0]["lr"] == pytest.approx(1e-4)


def test_a_rising_validation_f1_never_lowers_the_lr():
    """The plateau maximises F1: a better F1 every epoch is progress, even with patience 0."""
    sched = schedule.LRSchedule(_opt(), 4e-4, 0, TrainConfig(lr=4e-4, plateau_patience=0, plateau_factor=0.5))
    for epoch, f1 in enumerate([0.1, 0.2, 0.3, 0.4]):
        sched.after_epoch(f1, 10 * (epoch + 1))
    assert sched.lr == pytest.approx(4e-4)
    sched.after_epoch(0.3, 50)  # a worse epoch with patience 0 halves it
    assert sched.lr == pytest.approx(2e-4)


def test_scheduler_none_keeps_the_lr_and_round_trips_without_a_plateau():
    cfg = TrainConfig(lr=4e-4, scheduler="none")
    sched = schedule.LRSchedule(_opt(), 4e-4, 2, cfg)
    assert sched.plateau is None
    for step in range(2):
        sched.before_step(step)
    for epoch in range(5):
        sched.after_epoch(0.1, 2 + epoch)  # a flat F1 would lower a plateau's lr
    assert sched.lr == pytest.approx(4e-4)
    state = sched.state_dict()
    assert state == {"base_lr": 4e-4, "warmup_steps": 2, "lr": pytest.approx(4e-4), "plateau": None}
    again = schedule.LRSchedule(_opt(), 1e-3, 9, cfg)
    again.load_state_dict(state)
    assert (again.base_lr, again.warmup_steps, again.lr) == (4e-4, 2, pytest.approx(4e-4))


def test_plateau_state_survives_a_round_trip_mid_patience():
    cfg = TrainConfig(lr=4e-4, plateau_patience=3, plateau_factor=0.5)
    sched = schedule.LRSchedule(_opt(), 4e-4, 0, cfg)
    for f1 in (0.5, 0.4, 0.4):
        sched.after_epoch(f1, 10)
    assert sched.plateau.num_bad_epochs == 2
    state = sched.state_dict()
    assert state["plateau"]["num_bad_epochs"] == 2 and state["plateau"]["best"] == 0.5
    again = schedule.LRSchedule(_opt(), 4e-4, 0, cfg)
    again.load_state_dict(state)
    assert again.plateau.num_bad_epochs == 2 and again.plateau.best == 0.5
    again.after_epoch(0.4, 10)
    again.after_epoch(0.4, 10)  # the 4th bad epoch in all: patience 3 used up
    assert again.lr == pytest.approx(2e-4)


def test_a_plateau_state_loaded_into_a_schedule_without_one_only_sets_the_lr():
    with_plateau = schedule.LRSchedule(_opt(), 4e-4, 0, TrainConfig(lr=4e-4))
    state = with_plateau.state_dict()
    state["lr"] = 3e-4
    plain = schedule.LRSchedule(_opt(), 4e-4, 0, TrainConfig(lr=4e-4, scheduler="none"))
    plain.load_state_dict(state)
    assert plain.plateau is None and plain.lr == pytest.approx(3e-4)


def test_a_plateau_schedule_keeps_its_plateau_when_the_saved_run_had_none():
    cfg = TrainConfig(lr=4e-4, plateau_patience=0)
    sched = schedule.LRSchedule(_opt(), 4e-4, 0, cfg)
    sched.after_epoch(0.5, 10)
    state = schedule.LRSchedule(_opt(), 4e-4, 0, TrainConfig(lr=4e-4, scheduler="none")).state_dict()
    sched.load_state_dict(state)
    assert sched.plateau.best == 0.5  # untouched: there was nothing to restore


@pytest.mark.parametrize("kind, n, factor", [("none", 8, 1.0), ("linear", 8, 8.0), ("sqrt", 8, math.sqrt(8)),
                                             ("linear", 1, 1.0), ("sqrt", 1, 1.0)])
def test_lr_factor_scales_with_the_global_batch(kind, n, factor):
    assert schedule.lr_factor(kind, n) == pytest.approx(factor)
    assert isinstance(schedule.lr_factor(kind, n), float)


def test_lr_factor_rejects_an_unknown_kind():
    with pytest.raises(KeyError):
        schedule.lr_factor("cubic", 8)
