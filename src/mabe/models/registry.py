"""The model registry itself: ``@register("name")`` on a constructor, ``create(name, ...)`` builds one.

Model files import ``register`` from here (not from the package, which imports them).

Every model maps a batch of windows ``(B, W, F)`` to per-frame logits ``(B, W, C)``. A config holds
the plain string ``model.name``; ``tests/unit/test_models.py`` runs forward/backward over ``list_models()``
so a newly registered model is tested without anyone writing a test for it.
"""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

from mabe.config import ModelConfig
from mabe.errors import MabeError

__all__ = ["register", "create", "list_models", "is_model", "set_lstm_precision"]

ModelFactory = Callable[[int, int, ModelConfig], nn.Module]
_REGISTRY: dict[str, ModelFactory] = {}


def register(name: str) -> Callable[[ModelFactory], ModelFactory]:
    """Decorator: make ``fn(in_features, n_outputs, cfg) -> nn.Module`` available as ``name``."""

    def deco(fn: ModelFactory) -> ModelFactory:
        if name in _REGISTRY and _REGISTRY[name] is not fn:
            raise ValueError(f"model {name!r} is already registered")
        _REGISTRY[name] = fn
        return fn

    return deco


def list_models() -> list[str]:
    """Names of every registered model, sorted."""
    return sorted(_REGISTRY)


def is_model(name: str) -> bool:
    return name in _REGISTRY


def create(name: str, in_features: int, n_outputs: int, cfg: ModelConfig | None = None) -> nn.Module:
    """Build the registered model ``name``: (B, W, in_features) -> (B, W, n_outputs) logits."""
    if name not in _REGISTRY:
        raise MabeError(f"unknown model {name!r}; registered models: {', '.join(list_models())}")
    return _REGISTRY[name](in_features, n_outputs, cfg if cfg is not None else ModelConfig(name=name))


def set_lstm_precision(model: nn.Module, precision: str) -> bool:
    """Ask ``model`` to run its recurrent layers in ``precision`` (fp32 | bf16 | fp16); False if it
    has none (a model without ``set_lstm_precision`` runs as it is)."""
    fn = getattr(model, "set_lstm_precision", None)
    if fn is None:
        return precision == "fp32"
    fn(precision)
    return True


def norm_layer(kind: str, channels: int) -> nn.Module:
    """The conv block's normalisation (``model.norm``); sync_batch is a BatchNorm1d that the trainer
    converts to SyncBatchNorm under DDP on CUDA, so every kind has the same state_dict keys as batch
    apart from group (weight, bias only) and none (nothing)."""
    if kind in ("batch", "sync_batch"):
        return nn.BatchNorm1d(channels)
    if kind == "group":
        return nn.GroupNorm(1, channels)
    if kind == "none":
        return nn.Identity()
    raise ValueError(f"model.norm must be batch, sync_batch, group or none, got {kind!r}")
