"""mabe.tabular: per-frame tabular features for the gradient-boosted family."""

from __future__ import annotations

import numpy as np
import pytest

from mabe import data, features, tabular


def _brute(x: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    mean = np.full(x.shape, np.nan)
    std = np.full(x.shape, np.nan)
    for t in range(len(x)):
        for c in range(x.shape[1]):
            w = x[max(lo[t], 0):min(hi[t], len(x)), c]
            w = w[np.isfinite(w)]
            if len(w):
                mean[t, c], std[t, c] = w.mean(), w.std()
    return mean, std


@pytest.mark.parametrize("kind", ["centre", "past", "future"])
@pytest.mark.parametrize("window", [1, 4, 7])
def test_rolling_matches_a_loop_with_missing_frames(kind, window):
    rng = np.random.default_rng(window)
    x = rng.normal(size=(40, 3))
    x[rng.random(x.shape) < 0.2] = np.nan
    x[10:25, 1] = np.nan  # a long gap: windows inside it have no frame
    t = np.arange(len(x))
    lo, hi = {
        "centre": (t - (window - 1) // 2, t + window // 2 + 1),
        "past": (t - window + 1, t + 1),
        "future": (t, t + window),
    }[kind]
    mean, std = tabular.rolling(x, window, kind)
    want_mean, want_std = _brute(x, lo, hi)
    np.testing.assert_allclose(mean, want_mean, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(std, want_std, rtol=1e-4, atol=1e-4)


def _two_mice(T: int, fps: float, gap_cm: np.ndarray) -> np.ndarray:
    """Two straight mice (nose, body_center, tail_base) facing each other, centres ``gap_cm`` apart."""
    slots = list(data.DEFAULT_SLOTS)
    xy = np.full((T, 2, len(slots), 2), np.nan, dtype=np.float32)
    for m, (x0, sign) in enumerate(((0.0, 1.0), (None, -1.0))):
        cx = np.zeros(T) if x0 is not None else gap_cm
        for part, off in (("nose", 4.0), ("body_center", 0.0), ("tail_base", -4.0)):
            xy[:, m, slots.index(part), 0] = cx + sign * off
            xy[:, m, slots.index(part), 1] = 0.0
    return features.all_pair_features(xy, fps, [(0, 1), (0, 0)], slots)


def test_distances_are_in_body_lengths_and_windows_in_seconds():
    slots = list(data.DEFAULT_SLOTS)
    names = tabular.feature_names()
    for fps in (10.0, 120.0):
        T = int(6 * fps)
        gap = np.where(np.arange(T) < T // 2, 24.0, 12.0)  # 3 then 1.5 body lengths (nose-tail 8 cm)
        pair = _two_mice(T, fps, gap)
        X = tabular.track_features(pair[0], fps, slots)
        assert X.shape == (T, len(names))
        bb = X[:, names.index("d_body_body_bl")]
        np.testing.assert_allclose(bb[: T // 2], 3.0, rtol=1e-4)
        np.testing.assert_allclose(bb[T // 2:], 1.5, rtol=1e-4)
        # a 1 s centred mean changes over 1 s around the step, whatever the fps
        m1 = X[:, names.index("d_body_body_bl.mean1s")]
        moving = np.flatnonzero((m1 < 2.999) & (m1 > 1.501))  # w - 1 frames strictly between the levels
        assert (len(moving) + 1) / fps == pytest.approx(1.0, abs=1e-9)
        # the future-only mean sees the step coming, the past-only does not
        fut = X[:, names.index("d_body_body_bl.future1s")]
        past = X[:, names.index("d_body_body_bl.past1s")]
        before = slice(T // 2 - int(0.5 * fps), T // 2 - 1)
        assert (fut[before] < -0.1).all() and np.allclose(past[before], 0.0, atol=1e-5)


def test_missing_parts_stay_missing_and_self_tracks_are_marked():
    slots = list(data.DEFAULT_SLOTS)
    pair = _two_mice(60, 30.0, np.full(60, 20.0))
    pair[0, 10:20] = np.nan  # a stretch without tracking (the pair track only)
    names = tabular.feature_names()
    X = tabular.track_features(pair[0], 30.0, slots)
    assert np.isnan(X[10:20, names.index("d_body_body_bl")]).all()
    assert np.isfinite(X[10:20, names.index("d_body_body_bl.mean2s")]).all()  # the window reaches past the gap
    Xs = tabular.track_features(pair[1], 30.0, slots)
    assert (Xs[:, names.index("is_self")] == 1).all() and (np.delete(X[:, names.index("is_self")], np.s_[10:20]) == 0).all()


def test_bad_pair_vector_shape_is_refused():
    with pytest.raises(ValueError, match="pair vector"):
        tabular.track_features(np.zeros((10, 7), np.float32), 30.0, list(data.DEFAULT_SLOTS))
