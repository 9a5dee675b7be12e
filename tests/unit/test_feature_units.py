"""Feature units: a target accelerating at a known rate reads that rate in cm/s^2 (pair and scene
features), its speed in cm/s, at any frame rate (docs/testing.md)."""

from __future__ import annotations

import numpy as np
import pytest

# every mabe name these tests use, in one place
from mabe import features as F
from mabe.data import DEFAULT_SLOTS

SLOTS = list(DEFAULT_SLOTS)


def _still_mouse(T: int, centre, length: float = 4.0) -> np.ndarray:
    """(T, S, 2) cm: a straight mouse facing +x, its parts spread along its body."""
    along = np.linspace(-0.5, 0.5, len(SLOTS)) * length
    pts = np.zeros((T, len(SLOTS), 2))
    pts[..., 0] = along
    pts[..., 1] = np.linspace(-0.3, 0.3, len(SLOTS)) ** 2  # not colinear
    idx = {s: i for i, s in enumerate(SLOTS)}
    pts[:, idx["nose"]] = [length / 2, 0.0]
    pts[:, idx["tail_base"]] = [-length / 2, 0.0]
    pts[:, idx["body_center"]] = [0.0, 0.0]
    return pts + np.asarray(centre, dtype=float).reshape(-1, 1, 2)


@pytest.mark.parametrize("fps", [30.0, 12.5])
def test_a_known_acceleration_reads_in_cm_per_s2(fps):
    T, a = 40, 12.0  # cm/s^2
    t = np.arange(T) / fps
    agent = _still_mouse(T, [[0.0, 0.0]])
    target = _still_mouse(T, np.stack([20 + 0.5 * a * t**2, np.full(T, 5.0)], -1))
    xy = np.stack([agent, target], axis=1)  # (T, 2, S, 2)
    f = F.pair_features(xy, fps, 0, 1, SLOTS)
    col = F.pair_feature_names(SLOTS).index
    inner = slice(2, T - 2)  # central differences of a quadratic are exact away from the ends
    np.testing.assert_allclose(f[inner, col("target.acc")], a, rtol=1e-4)
    np.testing.assert_allclose(f[:, col("agent.acc")], 0.0, atol=1e-4)
    np.testing.assert_allclose(f[1:-1, col("target.speed")], a * t[1:-1], rtol=1e-4)
    scene = F.scene_from_cm(xy, fps)  # positions, speeds, accelerations per (mouse, slot)
    M, S = 2, len(SLOTS)
    acc = scene[:, M * S * 2 + M * S:].reshape(T, M, S)
    np.testing.assert_allclose(acc[inner, 1], a, rtol=1e-4)
    np.testing.assert_allclose(acc[:, 0], 0.0, atol=1e-4)
