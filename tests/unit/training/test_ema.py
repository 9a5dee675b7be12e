"""training/ema.py: the weight average against a hand computation, swapping in and out, state_dict."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from mabe.training.ema import EMA, ema_decay_at


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(3, 2), nn.BatchNorm1d(2))


def test_ema_equals_the_hand_computed_average_after_n_steps():
    model = _model()
    ema = EMA(model, 0.9)
    expected = model[0].weight.detach().clone()
    steps = [torch.full((2, 3), float(v)) for v in (1.0, -2.0, 4.0, 0.5, 3.0, 7.0, -1.0, 2.0, 9.0, 0.0, 5.0, 1.0)]
    for n, w in enumerate(steps):
        with torch.no_grad():
            model[0].weight.copy_(w)
        model[1].num_batches_tracked += 1
        ema.update(model)
        d = min(0.9, (1 + n) / (10 + n))
        expected = d * expected + (1 - d) * w
    assert ema.updates == len(steps)
    torch.testing.assert_close(ema.weights["0.weight"], expected, rtol=0, atol=1e-6)
    assert ema.weights["1.num_batches_tracked"].item() == len(steps)  # integer buffers copied
    # past the warm-up rule the configured decay rules
    assert ema_decay_at(0.9, 100) == 0.9 and ema_decay_at(0.999, 0) == pytest.approx(0.1)


def test_applied_swaps_the_average_in_and_the_weights_back():
    model = _model()
    ema = EMA(model, 0.5)
    with torch.no_grad():
        model[0].weight.fill_(10.0)
    ema.update(model)
    with ema.applied(model) as m:
        torch.testing.assert_close(m[0].weight, ema.weights["0.weight"])
        assert not torch.equal(m[0].weight, torch.full((2, 3), 10.0))
    torch.testing.assert_close(model[0].weight, torch.full((2, 3), 10.0))


def test_state_dict_round_trip_continues_the_same_average():
    a_model, b_model = _model(), _model()
    a = EMA(a_model, 0.8)
    for v in (1.0, 2.0, 3.0):
        with torch.no_grad():
            a_model[0].weight.fill_(v)
        a.update(a_model)
    b = EMA(b_model, 0.5)  # another decay: the saved one wins
    b.load_state_dict(a.state_dict())
    assert b.decay == 0.8 and b.updates == 3
    with torch.no_grad():
        a_model[0].weight.fill_(4.0)
        b_model.load_state_dict(a_model.state_dict())
    a.update(a_model)
    b.update(b_model)
    for k in a.weights:
        assert torch.equal(a.weights[k], b.weights[k]), k
    with pytest.raises(ValueError, match="other tensors"):
        EMA(nn.Linear(3, 2), 0.9).load_state_dict(a.state_dict())
    with pytest.raises(ValueError):
        EMA(a_model, 1.0)
