"""mabe.blend: aligning families' predictions, the weight grid, fitting only on the labelled files."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest

from helpers import make_predictions, run_cli
from mabe import blend, postprocess, predictions
from mabe.config import PostprocessConfig
from mabe.errors import MabeError
from mabe.predictions import Predictions

ACTIONS = ("attack", "sniff")


def make(tracks, actions=ACTIONS, with_labels=True) -> Predictions:
    """tracks: list of (lab, video, agent, target, probs (T, A), labels (T, A), labeled (A,))."""
    return make_predictions(tracks, actions, with_labels)


def families(rng, videos=range(6), T=300, good_noise=0.45):
    """A good family (p ~ labels + noise) and a random one on the same tracks: two labs, two actions."""
    good, rand = [], []
    for v in videos:
        lab = "labA" if v % 2 else "labB"
        y = np.zeros((T, 2), np.uint8)
        for a in range(2):
            for s in rng.choice(T - 30, 3, replace=False):
                y[s:s + int(rng.integers(10, 30)), a] = 1
        on = np.ones(2, bool)
        p_good = np.clip((1 - good_noise) * y + good_noise * rng.random((T, 2)), 0, 1)
        good.append((lab, v, 1, 2, p_good, y, on))
        rand.append((lab, v, 1, 2, rng.random((T, 2)), y, on))
    return make(good), make(rand)


def test_simplex_grid_sums_to_one_and_counts():
    g = blend.simplex_grid(3, 0.25)
    assert g.shape == (15, 3)  # C(4 + 2, 2)
    np.testing.assert_allclose(g.sum(1), 1.0)
    assert len({tuple(r) for r in g.tolist()}) == 15
    with pytest.raises(ValueError):
        blend.simplex_grid(2, 0.3)


def test_blend_score_averages_per_lab_then_over_labs():
    f1 = {("a", "x"): 1.0, ("a", "y"): 0.0, ("a", "z"): None, ("b", "x"): 0.2}
    assert blend.blend_score(f1) == pytest.approx((0.5 + 0.2) / 2)


def test_align_and_combine_with_missing_tracks_frames_and_columns():
    on = np.ones(2, bool)
    pa1 = np.full((10, 2), 0.2)
    pa2 = np.full((8, 2), 0.4)
    pb1 = np.full((7, 1), 0.8)  # shorter track, one column only
    pb3 = np.full((6, 1), 0.6)
    a = make([("L", 1, 1, 2, pa1, np.zeros((10, 2)), on), ("L", 2, 1, 2, pa2, np.zeros((8, 2)), on)])
    b = make([("L", 1, 1, 2, pb1, np.zeros((7, 1)), on[:1]), ("L", 3, 1, 1, pb3, np.zeros((6, 1)), on[:1])],
             actions=("sniff",))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        al = blend.align([a, b], ["A", "B"])
    msgs = [str(w.message) for w in caught]
    # A lacks track 3 (1 cell); B lacks track 2 (2 cells) and attack on track 1 (1 cell), and 3 frames of sniff
    assert any("A lacks 1 of the 5" in m for m in msgs), msgs
    assert any("B lacks 3 of the 5" in m and "3 frame-cells" in m for m in msgs), msgs
    assert list(al.base.actions) == ["attack", "sniff"]
    assert al.base.offsets.tolist() == [0, 10, 18, 24]
    out = blend.combine(al, [0.5, 0.5])
    p = out.probs.astype(np.float32)
    np.testing.assert_allclose(p[0:7, 1], 0.5, atol=1e-3)  # both: the mean
    np.testing.assert_allclose(p[7:10, 1], 0.2, atol=1e-3)  # B's track is shorter: A alone
    np.testing.assert_allclose(p[0:10, 0], 0.2, atol=1e-3)  # B has no attack column: A alone
    np.testing.assert_allclose(p[10:18], 0.4, atol=1e-3)  # B has no track 2
    np.testing.assert_allclose(p[18:24, 1], 0.6, atol=1e-3)  # A has no track 3
    assert not out.labeled[2, 0] and out.labeled[2, 1]
    # weight 1 on a member that lacks the cell: the others still fill it
    only_b = blend.combine(al, [0.0, 1.0]).probs.astype(np.float32)
    np.testing.assert_allclose(only_b[0:7, 1], 0.8, atol=1e-3)
    np.testing.assert_allclose(only_b[10:18], 0.4, atol=1e-3)


def test_align_common_only_keeps_tracks_every_member_has():
    on = np.ones(2, bool)
    a = make([("L", 1, 1, 2, np.zeros((5, 2)), np.zeros((5, 2)), on), ("L", 2, 1, 2, np.zeros((5, 2)), np.zeros((5, 2)), on)])
    b = make([("L", 2, 1, 2, np.zeros((5, 2)), np.zeros((5, 2)), on)])
    with pytest.warns(UserWarning, match="1 track"):
        al = blend.align([a, b], common_only=True)
    assert al.base.video_id.tolist() == [2]


def test_good_and_random_family_weight_goes_to_the_good_one(rng):
    good, rand = families(rng)
    fitted = blend.fit_blend(blend.align([rand, good]), PostprocessConfig(), step=0.1)
    assert fitted["weights"][1] >= 0.9, fitted["weights"]
    # and the thresholds are those of the chosen blend
    thr, _ = postprocess.fit_thresholds_f1(blend.combine(blend.align([rand, good]), fitted["weights"]))
    assert thr == fitted["thresholds"]


def test_complementary_families_blend_beats_each(rng):
    """Each family sees one action well and the other at chance: the blend must beat both."""
    good, rand = families(rng)
    mix1 = good.probs.copy()
    mix1[:, 1] = rand.probs[:, 1]
    mix2 = rand.probs.copy()
    mix2[:, 1] = good.probs[:, 1]
    f1_, f2_ = (Predictions(**{**good.__dict__, "probs": m}) for m in (mix1, mix2))
    fitted = blend.fit_blend(blend.align([f1_, f2_]), step=0.1)
    parts = [r[-1] for r in fitted["grid"] if r[0] in (0.0, 1.0)]
    assert fitted["score"] > max(parts)
    assert 0.0 < fitted["weights"][0] < 1.0


def _write(tmp_path, name, p):
    return str(p.save(tmp_path / name))


def test_cli_fits_on_fit_files_only_and_refuses_shared_videos(tmp_path, rng, capsys):
    good, rand = families(rng, videos=range(6))
    tgood, trand = families(rng, videos=range(100, 104))
    # on the test videos the random family is the one that matches the labels: if the fit looked at
    # them (labels or probabilities) it would move weight onto it
    trand = Predictions(**{**trand.__dict__, "probs": tgood.labels.astype(np.float16)})
    fit = [_write(tmp_path, "fit_good.npz", good), _write(tmp_path, "fit_rand.npz", rand)]
    app = [_write(tmp_path, "test_good.npz", tgood), _write(tmp_path, "test_rand.npz", trand)]
    rc, out, err, _ = run_cli(["blend", "--fit", *fit, "--apply", *app, "--out", str(tmp_path / "b" / "test.npz")], capsys)
    assert rc == 0, err
    saved = json.loads((tmp_path / "b" / "blend.json").read_text())
    expected = blend.fit_blend(blend.align([good, rand], common_only=True), PostprocessConfig(), 0.1)
    assert saved["weights"] == expected["weights"] and saved["weights"][0] >= 0.9
    assert postprocess.load_thresholds(tmp_path / "b" / "thresholds.json") == expected["thresholds"]
    blended = predictions.load(tmp_path / "b" / "test.npz")
    assert blended.video_id.tolist() == [100, 101, 102, 103]
    rc, out, err, _ = run_cli(["submit", str(tmp_path / "b" / "test.npz"), "--thresholds",
                               str(tmp_path / "b" / "thresholds.json"), "--out", str(tmp_path / "b" / "sub.csv")], capsys)
    assert rc == 0, err
    # the same videos on both sides: refused
    rc, out, err, _ = run_cli(["blend", "--fit", *fit, "--apply", *fit, "--out", str(tmp_path / "c.npz")], capsys)
    assert rc == 2 and "share 6 video" in err
    rc, out, err, _ = run_cli(["blend", "--fit", *fit, "--apply", app[0], "--out", str(tmp_path / "c.npz")], capsys)
    assert rc == 2 and "same order" in err


def test_fit_needs_labels(rng):
    good, rand = families(rng, videos=range(2))
    al = blend.align([Predictions(**{**good.__dict__, "labels": None}), Predictions(**{**rand.__dict__, "labels": None})])
    with pytest.raises(MabeError, match="labels"):
        blend.fit_blend(al)


def test_tracks_without_a_labelled_action_are_left_out_without_a_warning():
    """`mabe gbdt` writes every pair, the network only pairs with a labelled action: the recipe's blend fit
    warned about 44 such tracks on every run, though they hold nothing to fit or submit."""
    on, off = np.ones(2, bool), np.zeros(2, bool)
    z = np.zeros((5, 2))
    a = make([("L", 1, 1, 2, z, z, on), ("L", 1, 2, 1, z, z, off)])
    b = make([("L", 1, 1, 2, z, z, on)])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        al = blend.align([a, b], common_only=True)
    assert al.base.agent_id.tolist() == [1]
    c = make([("L", 1, 1, 2, z, z, on), ("L", 1, 2, 1, z, z, on)])  # the same track labelled: still named
    with pytest.warns(UserWarning, match="1 track"):
        blend.align([c, b], common_only=True)
