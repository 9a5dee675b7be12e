"""models/: the registry, and every registered model's forward/backward (parametrised over list_models)."""

from __future__ import annotations

import pytest
import torch

from mabe import models
from mabe.config import ModelConfig
from mabe.errors import MabeError

torch.set_num_threads(1)

SMALL = ModelConfig(conv_channels=[8, 16], lstm_hidden=8, lstm_layers=2, dropout=0.1)


@pytest.mark.parametrize("name", models.list_models())
def test_forward_backward(name):
    torch.manual_seed(0)
    model = models.create(name, in_features=10, n_outputs=3, cfg=SMALL)
    x = torch.randn(4, 24, 10)
    out = model(x)
    assert out.shape == (4, 24, 3)
    assert torch.isfinite(out).all()
    out.square().mean().backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert any(g.abs().sum() > 0 for g in grads)
    model.eval()
    assert model(torch.randn(1, 7, 10)).shape == (1, 7, 3)  # any window length at inference


def test_reference_size_parameter_count():
    model = models.create("conv1d_bilstm", 288, 4, ModelConfig())
    assert sum(p.numel() for p in model.parameters()) == 2_811_204
    assert len(model.state_dict()) == 39  # no duplicated keys from the compile hooks


def test_lstm_runs_in_fp32_under_autocast():
    model = models.create("conv1d_bilstm", 10, 3, SMALL).eval()
    seen = {}
    model.lstm.register_forward_hook(lambda m, inp, out: seen.update(dtype=inp[0].dtype, out=out[0].dtype))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(torch.randn(2, 12, 10))
    assert seen == {"dtype": torch.float32, "out": torch.float32}
    assert out.dtype == torch.bfloat16  # the head ran under autocast


def test_unknown_model_lists_valid_names():
    with pytest.raises(MabeError, match="conv1d_bilstm"):
        models.create("transformer9000", 10, 3, SMALL)


def test_register_rejects_duplicates():
    with pytest.raises(ValueError, match="already registered"):
        models.register("conv1d_bilstm")(lambda f, c, cfg: torch.nn.Linear(f, c))
    assert models.is_model("conv1d_bilstm") and not models.is_model("nope")


@pytest.mark.parametrize("precision,dtype", [("bf16", torch.bfloat16), ("fp16", torch.float16)])
def test_lstm_precision_runs_the_lstm_in_that_dtype_with_fp32_master_weights(precision, dtype):
    torch.manual_seed(0)
    model = models.create("conv1d_bilstm", 10, 3, ModelConfig(conv_channels=[8, 16], lstm_hidden=8, lstm_layers=2,
                                                               dropout=0.0)).eval()
    x = torch.randn(2, 12, 10)
    ref = model(x)
    assert models.set_lstm_precision(model, precision)
    seen = {}
    model.lstm.register_forward_hook(lambda m, inp, out: seen.update(dtype=inp[0].dtype, out=out[0].dtype))
    out = model(x)
    assert seen == {"dtype": dtype, "out": dtype}
    assert out.dtype == torch.float32  # cast back for the head
    assert not torch.equal(out, ref)  # it really ran in low precision ...
    torch.testing.assert_close(out, ref, rtol=0, atol=5e-2)  # ... and still computes the same function
    out.square().mean().backward()
    assert all(p.dtype == torch.float32 and p.grad is not None and p.grad.dtype == torch.float32
               and p.grad.abs().sum() > 0 for p in model.lstm.parameters())
    fresh = models.create("conv1d_bilstm", 10, 3, ModelConfig(conv_channels=[8, 16], lstm_hidden=8, lstm_layers=2))
    assert model.state_dict().keys() == fresh.state_dict().keys()  # checkpoints are unchanged
    assert all(v.dtype != dtype for v in model.state_dict().values())


def test_lstm_precision_rejects_unknown_and_models_without_an_lstm():
    model = models.create("conv1d_bilstm", 10, 3, SMALL)
    with pytest.raises(ValueError, match="fp64"):
        model.set_lstm_precision("fp64")
    linear = torch.nn.Linear(3, 3)
    assert models.set_lstm_precision(linear, "fp32") and not models.set_lstm_precision(linear, "bf16")


def test_dilated_tcn_sees_exactly_its_multi_scale_receptive_field():
    """Block l reaches offsets {0, +-d_l, +-d_(L-1-l)} (k=3, residual): with dilations 1, 2, 4 the blocks
    pair (1, 4), (2, 2), (4, 1), so a change at frame 20 moves exactly 20 + {a + b + c}, reach 10 each side.
    A block that dropped its long branch (reach 7) or its short one would move other frames."""
    import itertools

    torch.manual_seed(0)
    cfg = ModelConfig(name="dilated_tcn", tcn_channels=6, tcn_dilations=[1, 2, 4], kernel_size=3, dropout=0.0,
                      norm="none")
    model = models.create("dilated_tcn", 5, 2, cfg).eval()
    x = torch.randn(1, 60, 5)
    y = x.clone()
    y[0, 20] += 1.0
    with torch.no_grad():
        moved = (model(x) - model(y)).abs().sum(-1)[0] > 0
    reach = {a + b + c for a, b, c in itertools.product((0, 1, -1, 4, -4), (0, 2, -2), (0, 4, -4, 1, -1))}
    assert max(reach) == 10
    assert torch.nonzero(moved).flatten().tolist() == sorted(20 + r for r in reach)
