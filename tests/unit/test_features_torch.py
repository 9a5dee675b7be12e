"""mabe.features_torch equals mabe.features: whole tracks, windows with a halo, resampling, NaN handling."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mabe import data
from mabe import features as F
from mabe import features_torch as FT
from mabe.config import FeatureConfig

SLOTS = list(data.DEFAULT_SLOTS)
MARS = ["nose", "ear_left", "ear_right", "neck", "hip_left", "hip_right", "tail_base"]
FOUR = ["nose", "neck", "body_center", "tail_base"]  # some labs track 4 parts
LYRICAL = ["ear_left", "ear_right", "nose", "tail_base", "tail_tip"]  # 5 parts, no body centre: the midpoint fallback
PPC, CENTRE = 11.5, (320.0, 240.0)


def _tracks(rng: np.random.Generator, T: int, slots: list[str], n_mice: int = 4, absent: tuple[int, ...] = (2,),
            untracked: tuple[str, ...] = ("tail_tip",)) -> np.ndarray:
    """(T, n_mice, S, 2) px random-walking mice with every kind of missing value the features must handle."""
    S = len(slots)
    heading = np.cumsum(rng.normal(0, 0.15, (T, n_mice)), axis=0)
    body = np.cumsum(rng.normal(0, 0.8, (T, n_mice, 2)), axis=0) * PPC / 10 + np.array(CENTRE)
    along = np.linspace(4.0, -4.0, S) * PPC / 2  # parts spread nose -> tail along the heading
    side = rng.normal(0, 0.6, S) * PPC / 2
    c, s = np.cos(heading)[..., None], np.sin(heading)[..., None]
    xy = np.stack([body[..., :1] + c * along - s * side, body[..., 1:] + s * along + c * side], axis=-1)
    xy = xy + rng.normal(0, 0.3, xy.shape)
    drop = rng.random((T, n_mice, S)) < 0.04  # scattered single misses
    for _ in range(6 * n_mice):  # runs of 1..15 frames: shorter and longer than max_gap
        m, p = rng.integers(n_mice), rng.integers(S)
        t0, n = rng.integers(0, T), rng.integers(1, 16)
        drop[t0 : t0 + n, m, p] = True
    drop[:3, 0, 0] = True  # edge runs at a track's start and end
    drop[-4:, 1, 1] = True
    drop[T // 3 : T // 3 + 5, 1, :] = True  # a whole mouse lost for a few frames (fallbacks exhausted)
    xy[drop] = np.nan
    for m in absent:
        if m < n_mice:
            xy[:, m] = np.nan
    for name in untracked:
        if name in slots:
            xy[:, :, slots.index(name)] = np.nan
    return xy


def _close(ours: torch.Tensor, ref: np.ndarray, rtol: float, atol: float) -> float:
    """Same NaN pattern and values within tolerance; returns the largest absolute difference."""
    ours = ours.detach().cpu().double().numpy()
    ref = np.asarray(ref, dtype=np.float64)
    assert ours.shape == ref.shape
    np.testing.assert_array_equal(np.isnan(ours), np.isnan(ref))
    np.testing.assert_allclose(ours, ref, rtol=rtol, atol=atol, equal_nan=True)
    both = np.isfinite(ours) & np.isfinite(ref)
    return float(np.abs(ours - ref)[both].max(initial=0.0))


# float64 torch vs numpy float64 (cast to float32 at its end): float32 rounding of the output only.
# float32 both sides, different operation order: derivatives amplify position rounding by fps (per
# derivative), hence the loose absolute tolerance on the (large) acceleration columns.
TOL = {torch.float64: (1e-6, 1e-5), torch.float32: (1e-4, 2e-2)}


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("smooth", [1, 5])
def test_scene_whole_track_equals_numpy(rng, dtype, smooth):
    xy = _tracks(rng, 300, SLOTS)
    fcfg = FeatureConfig(smooth_window=smooth, max_gap=6)
    ref = F.scene_features(xy.astype(np.float64 if dtype == torch.float64 else np.float32), 30.0, PPC, CENTRE, fcfg)
    ours = FT.scene_features(torch.from_numpy(xy[None]).to(dtype), 30.0, PPC, CENTRE, fcfg)[0]
    assert ours.dtype == dtype
    _close(ours, ref, *TOL[dtype])
    assert np.isnan(ref).any() and np.isfinite(ref).any()  # the data did exercise both


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("slots", [SLOTS, MARS, FOUR, LYRICAL], ids=["18", "mars7", "four", "lyrical5"])
def test_pairs_whole_track_equal_numpy_with_fallbacks_and_self(rng, dtype, slots):
    xy = _tracks(rng, 250, slots, n_mice=3, absent=())
    np_dtype = np.float64 if dtype == torch.float64 else np.float32
    cm = F.clean_positions(xy.astype(np_dtype), PPC, CENTRE, 8)
    pairs = [(a, t) for a in range(3) for t in range(3)]  # self pairs included
    ref = F.all_pair_features(cm, 25.0, pairs, slots, smooth_window=3)
    t_cm = FT.clean_positions(torch.from_numpy(xy.astype(np_dtype)[None]).to(dtype), PPC, CENTRE, 8)
    _close(t_cm[0], cm, 1e-6, 1e-5)
    B = len(pairs)
    batch = t_cm.expand(B, *t_cm.shape[1:])
    ours = FT.pair_features(batch, 25.0, [a for a, _ in pairs], [t for _, t in pairs], slots, smooth_window=3)
    _close(ours, ref, *TOL[dtype])
    is_self = ours[:, :, -1].numpy()[:, 0]
    assert list(is_self) == [float(a == t) for a, t in pairs]


def test_fps_per_window_and_nan_edges(rng):
    """Each window its own fps and pix_per_cm; NaN in, NaN out at every step."""
    xy = np.stack([_tracks(rng, 120, FOUR) for _ in range(3)])
    fps, ppc = [30.0, 25.0, 10.0], [11.5, 8.0, 20.0]
    fcfg = FeatureConfig(max_gap=4)
    ours = FT.scene_features(torch.from_numpy(xy), torch.tensor(fps), torch.tensor(ppc), None,
                             FeatureConfig(max_gap=4, arena_centre=False))
    for b in range(3):
        ref = F.scene_features(xy[b], fps[b], ppc[b], None, FeatureConfig(max_gap=4, arena_centre=False))
        _close(ours[b], ref, *TOL[torch.float64])
    assert fcfg.max_gap == 4


def test_gap_rules_hand_checked():
    x = np.array([0.0, np.nan, 2.0, np.nan, np.nan, np.nan, 6.0, np.nan, 8.0, np.nan])[None, :, None]
    got = FT.interpolate_gaps(torch.from_numpy(x), max_gap=2)[0, :, 0].numpy()
    want = np.array([0.0, 1.0, 2.0, np.nan, np.nan, np.nan, 6.0, 7.0, 8.0, np.nan])  # 3-run too long, edge kept
    np.testing.assert_array_equal(np.isnan(got), np.isnan(want))
    np.testing.assert_allclose(got[~np.isnan(want)], want[~np.isnan(want)])
    d = FT.time_derivative(torch.tensor([[1.0, 3.0, np.nan, 4.0, 8.0]]), 2.0)[0].numpy()
    np.testing.assert_allclose(d, [4.0, 4.0, np.nan, 8.0, 8.0])  # one-sided at the ends and by the gap


def _store(xy_px: list[np.ndarray], ppc: list[float], dtype=torch.float64):
    """Per-video px tracks -> the flat arena-centred cm store (NaN kept, not interpolated) and offsets."""
    cm = [F.to_cm(x, p, CENTRE) for x, p in zip(xy_px, ppc)]
    offsets = torch.tensor(np.concatenate([[0], np.cumsum([len(c) for c in cm])]), dtype=torch.long)
    return torch.from_numpy(np.concatenate(cm)).to(dtype), offsets


@pytest.mark.parametrize("mode", ["scene", "pair"])
@pytest.mark.parametrize("fcfg", [FeatureConfig(max_gap=10), FeatureConfig(max_gap=3, smooth_window=5)],
                         ids=["gap10", "gap3-smooth5"])
def test_windows_with_halo_equal_whole_track(rng, mode, fcfg):
    """Windows anywhere (at a track's start, its end, past its end) get the whole-track features."""
    lengths, fps, ppc = [230, 97, 160], [30.0, 25.0, 30.0], [11.5, 8.0, 11.5]
    tracks = [_tracks(rng, n, SLOTS) for n in lengths]
    store, offsets = _store(tracks, ppc)
    W = 40
    video, start, agent, target, refs = [], [], [], [], []
    for v, (xy, n) in enumerate(zip(tracks, lengths)):
        cm = F.clean_positions(xy, ppc[v], CENTRE, fcfg.max_gap)
        for a, t in [(0, 1), (1, 0), (3, 3)]:
            ref = (F.scene_from_cm(F.pad_mice(cm, fcfg.n_mice), fps[v], fcfg.smooth_window) if mode == "scene" else
                   F.all_pair_features(cm, fps[v], [(a, t)], SLOTS, fcfg.smooth_window)[0])
            for s in (0, 1, 7, n // 2, n - W, n - W + 3, n - 5):
                video.append(v), start.append(s), agent.append(a), target.append(t)
                refs.append(ref[s : s + W])
            if mode == "scene":
                break
    out, valid = FT.window_features(
        store, offsets, torch.tensor(video), torch.tensor(start), W, torch.tensor(fps, dtype=torch.float64), fcfg,
        SLOTS, mode=mode, agent=torch.tensor(agent), target=torch.tensor(target), dtype=torch.float64)
    for i, ref in enumerate(refs):
        n_valid = len(ref)
        assert valid[i].sum().item() == n_valid and bool(valid[i, :n_valid].all())
        _close(out[i, :n_valid], ref, *TOL[torch.float64])


@pytest.mark.parametrize("mode", ["scene", "pair"])
def test_windows_resampled_equal_numpy_resample(rng, mode):
    """features.target_fps: features at each video's own fps, then resampled; per window, each its own ratio."""
    lengths, fps, ppc, target_fps = [300, 181], [30.0, 25.0], [11.5, 8.0], 12.0
    fcfg = FeatureConfig(max_gap=5, target_fps=target_fps)
    tracks = [_tracks(rng, n, MARS) for n in lengths]
    store, offsets = _store(tracks, ppc)
    ratio = torch.tensor(fps, dtype=torch.float64) / target_fps
    W = 30
    video, start, refs = [], [], []
    for v, xy in enumerate(tracks):
        cm = F.clean_positions(xy, ppc[v], CENTRE, fcfg.max_gap)
        full = (F.scene_from_cm(F.pad_mice(cm, 4), fps[v]) if mode == "scene" else
                F.all_pair_features(cm, fps[v], [(1, 0)], MARS)[0])
        ref = F.resample(full, fps[v], target_fps)
        assert FT.n_resampled_rows(torch.tensor([lengths[v]]), ratio[v : v + 1]).item() == len(ref)
        for s in (0, 3, len(ref) // 2, len(ref) - W, len(ref) - 4):
            video.append(v), start.append(s), refs.append(ref[s : s + W])
    B = len(video)
    out, valid = FT.window_features(
        store, offsets, torch.tensor(video), torch.tensor(start), W, torch.tensor(fps, dtype=torch.float64), fcfg,
        MARS, mode=mode, agent=torch.ones(B, dtype=torch.long), target=torch.zeros(B, dtype=torch.long),
        ratio=ratio, max_ratio=float(ratio.max()), dtype=torch.float64)
    for i, ref in enumerate(refs):
        assert valid[i].sum().item() == len(ref)
        _close(out[i, : len(ref)], ref, *TOL[torch.float64])


def test_synth_tiny_videos_equal_the_numpy_cache(tiny_data):
    """Real reader output (3 labs: 18 parts with headpiece, MARS 7, SLEAP 7; 2-3 mice) through both paths."""
    meta = data.load_metadata(tiny_data, "train")
    fcfg = FeatureConfig()
    for row in meta.drop_duplicates("lab_id").itertuples():
        trk = data.read_tracking(row.tracking_path, SLOTS, data.MAX_MICE)
        centre = (row.video_width_pix / 2, row.video_height_pix / 2)
        cm = F.clean_positions(trk.xy, row.pix_per_cm_approx, centre, fcfg.max_gap)
        ref_scene = F.scene_from_cm(F.pad_mice(cm, 4), row.frames_per_second)
        ref_pair = F.all_pair_features(cm, row.frames_per_second, [(0, 1), (1, 1)], SLOTS)
        x = torch.from_numpy(trk.xy[None])
        got = FT.scene_features(x, row.frames_per_second, row.pix_per_cm_approx, centre, fcfg)[0]
        _close(got, ref_scene, *TOL[torch.float32])
        t_cm = FT.clean_positions(x, row.pix_per_cm_approx, centre, fcfg.max_gap).expand(2, -1, -1, -1, -1)
        got = FT.pair_features(t_cm, row.frames_per_second, [0, 1], [1, 1], SLOTS)
        _close(got, ref_pair, *TOL[torch.float32])


def test_resampling_path_at_ratio_one_equals_the_crop(rng):
    tracks = [_tracks(rng, n, FOUR) for n in (120, 90)]
    store, offsets = _store(tracks, [11.5, 8.0])
    fcfg, fps = FeatureConfig(max_gap=4), torch.tensor([30.0, 25.0], dtype=torch.float64)
    args = (store, offsets, torch.tensor([0, 0, 1]), torch.tensor([0, 100, 60]), 32, fps, fcfg, FOUR)
    kw = dict(agent=torch.tensor([0, 1, 1]), target=torch.tensor([1, 1, 0]), dtype=torch.float64)
    crop, v1 = FT.window_features(*args, **kw)
    same, v2 = FT.window_features(*args, ratio=torch.ones(2, dtype=torch.float64), **kw)
    assert torch.equal(v1, v2) and not v1.all()
    torch.testing.assert_close(same[v2], crop[v1], equal_nan=True, rtol=0, atol=0)


@pytest.mark.gpu
@pytest.mark.parametrize("mode", ["scene", "pair"])
def test_windows_on_cuda_equal_cpu(rng, mode):
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    tracks = [_tracks(rng, n, SLOTS) for n in (200, 150)]
    store, offsets = _store(tracks, [11.5, 8.0], dtype=torch.float16)
    fcfg = FeatureConfig(max_gap=10)
    args = dict(video=torch.tensor([0, 0, 1, 1]), start_row=torch.tensor([0, 150, 5, 120]),
                fps=torch.tensor([30.0, 25.0], dtype=torch.float64))
    kw = dict(mode=mode, agent=torch.tensor([0, 1, 0, 1]), target=torch.tensor([1, 1, 1, 0]))
    cpu, v_cpu = FT.window_features(store, offsets, args["video"], args["start_row"], 64, args["fps"], fcfg, SLOTS,
                                    **kw)
    dev = torch.device("cuda")
    gpu, v_gpu = FT.window_features(store.to(dev), offsets.to(dev), args["video"].to(dev), args["start_row"].to(dev),
                                    64, args["fps"].to(dev), fcfg, SLOTS, **{k: (v.to(dev) if torch.is_tensor(v) else v)
                                                                              for k, v in kw.items()})
    assert torch.equal(v_cpu, v_gpu.cpu())
    _close(gpu.cpu(), cpu.numpy(), *TOL[torch.float32])
