"""Model registry: ``@register("name")`` on a constructor, ``create(name, ...)`` builds one.

Every model maps a batch of windows ``(B, W, F)`` to per-frame logits ``(B, W, C)``. A config holds
the plain string ``model.name``; ``tests/unit/test_models.py`` runs forward/backward over ``list_models()``
so a newly registered model is tested without anyone writing a test for it. The registry itself is
``models/registry.py`` (model files import ``register`` from there).
"""

from __future__ import annotations

from mabe.models.registry import ModelFactory, create, is_model, list_models, register, set_lstm_precision

__all__ = ["register", "create", "list_models", "is_model", "set_lstm_precision", "ModelFactory"]

# Importing a model module registers it; add new model files here.
from mabe.models import conv1d_bilstm, dilated_tcn  # noqa: E402,F401
