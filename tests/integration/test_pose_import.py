"""`mabe import`: DLC / LightningPose / SLEAP / NWB files built here -> MABe layout; coordinates round-trip
exactly through import -> data.read_tracking; labels (CSV, BORIS); bad input fails naming file and field
and writes nothing."""

from __future__ import annotations

import datetime
import json

import numpy as np
import pandas as pd
import pytest

from mabe import cli, data, importer, pose_io
from mabe.errors import MabeDataError

RNG_SEED = 7
BP = ("snout", "leftear", "rightear", "tailbase")  # DLC-style names; mabe's: nose, ear_left, ear_right, tail_base
MABE_BP = ("nose", "ear_left", "ear_right", "tail_base")


def make_xy(T: int, N: int, K: int, seed: int = RNG_SEED) -> tuple[np.ndarray, np.ndarray]:
    """float32-exact px coordinates (T, N, K, 2) with some NaN, and likelihoods (T, N, K)."""
    rng = np.random.default_rng(seed)
    xy = rng.uniform(0, 600, (T, N, K, 2)).astype(np.float32).astype(np.float64)
    lik = rng.uniform(0, 1, (T, N, K))
    xy[rng.random((T, N, K)) < 0.05] = np.nan
    return xy, lik


def write_dlc_csv(path, xy, lik, individuals=None, bodyparts=BP, scorer="DLC_resnet50_testshuffle1_1000"):
    """A DeepLabCut predictions CSV: 3 header rows, or 4 with individuals (multi-animal)."""
    T, N, K, _ = xy.shape
    cols, vals = [], []
    for n in range(N):
        for k in range(K):
            for c, v in (("x", xy[:, n, k, 0]), ("y", xy[:, n, k, 1]), ("likelihood", lik[:, n, k])):
                cols.append((scorer, individuals[n], bodyparts[k], c) if individuals else (scorer, bodyparts[k], c))
                vals.append(v)
    names = ["scorer", "individuals", "bodyparts", "coords"] if individuals else ["scorer", "bodyparts", "coords"]
    df = pd.DataFrame(np.stack(vals, 1), columns=pd.MultiIndex.from_tuples(cols, names=names))
    if path.suffix == ".h5":
        df.to_hdf(path, key="df_with_missing", format="table", mode="w")
    else:
        df.to_csv(path)
    return df


def write_sleap_analysis(path, xy, lik, names, nodes=BP):
    """A SLEAP analysis .h5 as sleap-convert writes it (matlab layout: tracks (N, 2, K, T))."""
    h5py = pytest.importorskip("h5py")

    with h5py.File(path, "w") as f:
        f["tracks"] = xy.transpose(1, 3, 2, 0)
        f["point_scores"] = lik.transpose(1, 2, 0)
        f["node_names"] = np.array([n.encode() for n in nodes])
        f["track_names"] = np.array([n.encode() for n in names])
        f["track_occupancy"] = np.isfinite(xy[..., 0]).any(-1).astype(np.uint8)


def write_nwb(path, xy, lik, names, nodes=BP, rate=30.0):
    """An NWB file with ndx-pose: one PoseEstimation per animal (pynwb + ndx-pose, the real writer)."""
    pynwb = pytest.importorskip("pynwb")
    ndx_pose = pytest.importorskip("ndx_pose")
    nwb = pynwb.NWBFile(session_description="test", identifier="t",
                        session_start_time=datetime.datetime(2025, 1, 1, tzinfo=datetime.timezone.utc))
    beh = nwb.create_processing_module("behavior", "pose")
    skeletons, estimations = [], []
    for n, ind in enumerate(names):
        sk = ndx_pose.Skeleton(name=f"skeleton_{ind}", nodes=list(nodes), edges=np.array([[0, 1]], dtype="uint8"))
        series = [ndx_pose.PoseEstimationSeries(
            name=b, description="", data=xy[:, n, k], unit="pixels", reference_frame="top left", rate=rate,
            confidence=lik[:, n, k], confidence_definition="likelihood") for k, b in enumerate(nodes)]
        skeletons.append(sk)
        estimations.append(ndx_pose.PoseEstimation(name=ind, pose_estimation_series=series, description="",
                                                   skeleton=sk, dimensions=np.array([[640, 480]], dtype="uint16")))
    beh.add(ndx_pose.Skeletons(skeletons=skeletons))
    for e in estimations:
        beh.add(e)
    with pynwb.NWBHDF5IO(str(path), "w") as io:
        io.write(nwb)


def import_args(out, *pose, **kw):
    argv = ["import", *map(str, pose), "--out", str(out), "--pix-per-cm", str(kw.pop("ppc", 12.5))]
    for k, v in kw.items():
        argv += [f"--{k.replace('_', '-')}", str(v)]
    return argv


def read_back(out, split="train", lab="lab"):
    meta = data.load_metadata(out, split)
    return meta, [data.read_tracking(p, MABE_BP) for p in meta["tracking_path"]]


def assert_roundtrip(trk, xy):
    N = xy.shape[1]
    np.testing.assert_array_equal(trk.xy[:, :N], xy.astype(np.float32))  # exact, NaN where missing
    assert np.isnan(trk.xy[:, N:]).all() and not trk.present[:, N:].any()
    assert trk.mice[:N].all()


# ----------------------------------------------------------------------------- round trips


@pytest.mark.parametrize("multi", [False, True], ids=["single", "multi"])
@pytest.mark.parametrize("suffix", [".csv", ".h5"])
def test_dlc_roundtrip(tmp_path, multi, suffix):
    if suffix == ".h5":
        pytest.importorskip("tables")
    N = 3 if multi else 1
    xy, lik = make_xy(50, N, 4)
    f = tmp_path / f"cage1DLC_resnet50_testshuffle1_1000{suffix}"
    write_dlc_csv(f, xy, lik, individuals=[f"mus{i}" for i in range(N)] if multi else None)
    out = tmp_path / "data"
    assert cli.main(import_args(out, f, fps=30, lab="mylab")) == 0
    meta, (trk,) = read_back(out)
    assert_roundtrip(trk, xy)
    row = meta.iloc[0]
    assert (row["lab_id"], row["frames_per_second"], row["pix_per_cm_approx"]) == ("mylab", 30.0, 12.5)
    assert row["tracking_method"] == "DeepLabCut" and sorted(row["body_parts"]) == sorted(MABE_BP)
    src = pd.read_csv(out / importer.SOURCES_FILE)
    assert src["video_name"].tolist() == ["cage1"]
    assert json.loads(src["individuals"][0]) == ([f"mus{i}" for i in range(N)] if multi else ["animal"])
    assert (out / "test.csv").is_file()  # both metadata files exist, so every command finds its split


def test_lightningpose_csv_is_the_dlc_layout(tmp_path):
    xy, lik = make_xy(20, 1, 4)
    f = tmp_path / "vid.csv"
    write_dlc_csv(f, xy, lik, scorer="heatmap_tracker")
    assert cli.main(import_args(tmp_path / "d", f, fps=25, format="lightningpose")) == 0
    meta, (trk,) = read_back(tmp_path / "d")
    assert_roundtrip(trk, xy)
    assert meta["tracking_method"][0] == "LightningPose"


def test_sleap_analysis_roundtrip_and_min_likelihood(tmp_path):
    xy, lik = make_xy(40, 2, 4)
    f = tmp_path / "session.predictions.analysis.h5"
    write_sleap_analysis(f, xy, lik, ["female", "male"])
    out = tmp_path / "d"
    assert cli.main(import_args(out, f, fps=40, min_likelihood=0.3, split="test")) == 0
    meta, (trk,) = read_back(out, "test")
    expected = np.where((lik < 0.3)[..., None], np.nan, xy)
    assert_roundtrip(trk, expected)
    assert np.isnan(expected).sum() > np.isnan(xy).sum()  # the cut removed points
    assert pd.read_csv(out / importer.SOURCES_FILE)["video_name"][0] == "session"


def test_sleap_io_files(tmp_path):
    sio = pytest.importorskip("sleap_io")
    xy, lik = make_xy(12, 2, 4)
    sk = sio.Skeleton(list(BP))  # sleap-io turns the list it is given into Nodes in place
    video = sio.Video(filename="fake.mp4")
    tracks = [sio.Track("a"), sio.Track("b")]
    frames = []
    for t in range(12):
        inst = [sio.PredictedInstance.from_numpy(xy[t, n], skeleton=sk, track=tracks[n], score=1.0,
                                                 point_scores=lik[t, n]) for n in range(2)]
        frames.append(sio.LabeledFrame(video=video, frame_idx=t, instances=inst))
    labels = sio.Labels(labeled_frames=frames, videos=[video], skeletons=[sk], tracks=tracks)
    sio.save_slp(labels, str(tmp_path / "v1.slp"))
    sio.save_analysis_h5(labels, str(tmp_path / "v2.analysis.h5"))
    ids = []
    for f in ("v1.slp", "v2.analysis.h5"):
        out = tmp_path / ("data_" + f)
        assert cli.main(import_args(out, tmp_path / f, fps=30)) == 0
        meta, (trk,) = read_back(out)
        assert_roundtrip(trk, xy)
        ids.append(int(meta["video_id"][0]))
    assert ids[0] == ids[1]  # both files hold the same pose, so the same content id


@pytest.mark.filterwarnings("ignore:The .dimensions. constructor argument:DeprecationWarning")
def test_nwb_roundtrip_takes_fps_and_frame_size_from_the_file(tmp_path):
    xy, lik = make_xy(30, 2, 4)
    f = tmp_path / "rec.nwb"
    write_nwb(f, xy, lik, ["m2", "m1"], rate=50.0)  # animals come back in name order: m1 = mouse1
    out = tmp_path / "d"
    assert cli.main(import_args(out, f)) == 0
    meta, (trk,) = read_back(out)
    assert_roundtrip(trk, xy[:, ::-1])
    row = meta.iloc[0]
    assert (row["frames_per_second"], row["video_width_pix"], row["video_height_pix"]) == (50.0, 640, 480)


def test_several_videos_and_adding_later(tmp_path):
    out = tmp_path / "d"
    files = []
    for i in range(3):
        xy, lik = make_xy(10 + i, 2, 4, seed=i)
        files.append(tmp_path / f"v{i}.csv")
        write_dlc_csv(files[-1], xy, lik, individuals=["a", "b"])
    assert cli.main(import_args(out, *files[:2], fps=30)) == 0
    assert cli.main(import_args(out, files[2], fps=15)) == 0
    meta = data.load_metadata(out, "train")
    assert meta["frames_per_second"].tolist() == [30, 30, 15]
    assert [data.read_tracking(p).n_frames for p in meta["tracking_path"]] == [10, 11, 12]
    assert cli.main(import_args(out, files[2], fps=15)) == 2  # the same video twice
    # ids come from the content: the same import elsewhere gives the same ids, other settings other ids, so
    # a feature cache shared by several folders (keyed by lab and video id) never mixes two videos up
    ids = meta["video_id"].tolist()
    assert len(set(ids)) == 3 and all(10**9 <= i < 10**10 for i in ids)
    assert cli.main(import_args(tmp_path / "again", files[0], fps=30)) == 0
    assert data.load_metadata(tmp_path / "again", "train")["video_id"].tolist() == ids[:1]
    assert cli.main(import_args(tmp_path / "other", files[0], fps=25)) == 0
    assert data.load_metadata(tmp_path / "other", "train")["video_id"].tolist() != ids[:1]


def test_dlc_unique_bodyparts_are_reported_not_imported(tmp_path, capsys):
    xy, lik = make_xy(10, 3, 4)
    f = tmp_path / "two mice, one feeder DLC_resnet50_x.csv"
    write_dlc_csv(f, xy, lik, individuals=["m1", "m2", "single"])
    df = pd.read_csv(f, header=[0, 1, 2, 3], index_col=0)
    df = df.drop(columns=[c for c in df.columns if c[1] == "single" and c[2] != "snout"])  # one unique part
    df.to_csv(f)
    out = tmp_path / "d"
    assert cli.main(import_args(out, f, fps=30)) == 0
    assert "not imported: unique body parts of 'single' (not an animal): snout" in capsys.readouterr().out
    _, (trk,) = read_back(out)
    assert_roundtrip(trk, xy[:, :2])
    assert pd.read_csv(out / importer.SOURCES_FILE)["video_name"][0] == "two mice, one feeder"


def test_bodypart_map(tmp_path):
    xy, lik = make_xy(10, 1, 4)
    f = tmp_path / "v.csv"
    write_dlc_csv(f, xy, lik, bodyparts=["p0", "p1", "p2", "junk"])
    m = tmp_path / "map.yaml"
    m.write_text("p0: nose\np1: ear_left\np2: ear_right\njunk: null\n")
    assert cli.main(import_args(tmp_path / "d", f, fps=30, bodyparts=m)) == 0
    meta, (trk,) = read_back(tmp_path / "d")
    np.testing.assert_array_equal(trk.xy[:, :1, :3], xy[:, :, :3].astype(np.float32))
    assert meta["body_parts"][0] == ["nose", "ear_left", "ear_right"]


def test_default_names_cover_common_tools():
    for theirs, ours in [("Snout", "nose"), ("left_ear", "ear_left"), ("EarR", "ear_right"), ("TailBase", "tail_base"),
                         ("tail-end", "tail_tip"), ("centroid", "body_center"), ("spine1", "spine_1"),
                         ("hip_l", "hip_left"), ("ear_left", "ear_left")]:
        assert importer.map_bodyparts([theirs], {}, "x") == [ours], theirs


# ----------------------------------------------------------------------------- labels


def _two_videos(tmp_path):
    files = []
    for i, name in enumerate(["cageA", "cageB"]):
        xy, lik = make_xy(100, 2, 4, seed=10 + i)
        files.append(tmp_path / f"{name}DLC_resnet50.csv")
        write_dlc_csv(files[-1], xy, lik, individuals=["resident", "intruder"])
    return files


def test_simple_csv_labels_become_annotations(tmp_path):
    files = _two_videos(tmp_path)
    lab = tmp_path / "labels.csv"
    pd.DataFrame({"video": ["cageA", "cageA", "cageB"], "agent": ["resident", "intruder", "mouse2"],
                  "target": ["intruder", "", "mouse1"], "behaviour": ["attack", "rear", "sniff"],
                  "start_s": [0.5, 1.0, 0.0], "stop_s": [1.0, 2.0, 0.2]}).to_csv(lab, index=False)
    out = tmp_path / "d"
    assert cli.main(import_args(out, *files, fps=20, annotations=lab)) == 0
    meta = data.load_metadata(out, "train")
    a = data.read_annotation(meta["annotation_path"][0])
    assert a.values.tolist() == [[1, 2, "attack", 10, 20], [2, 2, "rear", 20, 40]]
    b = data.read_annotation(meta["annotation_path"][1])
    assert b.values.tolist() == [[2, 1, "sniff", 0, 4]]
    # every action the lab annotates is labelled for every mouse / ordered pair of a labelled video
    assert set(meta["labeled"][0]) == {(1, 2, "attack"), (2, 1, "attack"), (1, 1, "rear"), (2, 2, "rear"),
                                       (1, 2, "sniff"), (2, 1, "sniff")}


def test_boris_aggregated_and_tabular_exports(tmp_path):
    files = _two_videos(tmp_path)
    agg = tmp_path / "boris_agg.tsv"
    pd.DataFrame({"Observation id": ["o1", "o1", "o1"], "Media file name": ["/rec/cageA.mp4", "C:\\rec\\cageA.mp4",
                                                                             "/rec/cageA.mp4"],
                  "FPS": [20] * 3, "Subject": ["resident", "intruder", "resident"],
                  "Behavior": ["chase", "selfgroom", "chase"], "Modifiers": ["intruder", "", ""],
                  "Behavior type": ["STATE", "STATE", "POINT"], "Start (s)": [1.0, 2.5, 3.0],
                  "Stop (s)": [1.5, 3.0, 3.0]}).to_csv(agg, sep="\t", index=False)
    tab = tmp_path / "boris_events.csv"
    tab.write_text("Observation id,o2\nObservation date,2025-01-01\nTime offset (s),0\n\n")  # older BORIS preamble
    pd.DataFrame({"Observation id": ["o2"] * 4, "Media file path": ["cageB.avi"] * 4, "FPS": [20] * 4,
                  "Subject": ["intruder", "intruder", "resident", "resident"],
                  "Behavior": ["attack", "attack", "rear", "rear"], "Modifiers": ["", "", "", ""],
                  "Behavior type": ["START", "STOP", "START", "STOP"], "Time": [0.0, 0.25, 0.1, 0.5]}).to_csv(
        tab, index=False, mode="a")
    out = tmp_path / "d"
    assert cli.main(import_args(out, *files, fps=20, annotations=agg) + ["--annotations", str(tab)]) == 0
    meta = data.load_metadata(out, "train")
    a = data.read_annotation(meta["annotation_path"][0])
    assert a.values.tolist() == [[1, 2, "chase", 20, 30], [2, 2, "selfgroom", 50, 60]]  # the POINT is skipped
    b = data.read_annotation(meta["annotation_path"][1])
    assert b.values.tolist() == [[2, 1, "attack", 0, 5], [1, 1, "rear", 2, 10]]  # no target, 2 mice: the other


# ----------------------------------------------------------------------------- bad input


def _nothing_written(out):
    return not out.exists() or not any(out.rglob("*"))


def _expect_error(capsys, argv, out, *words):
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    for w in words:
        assert w in err, (w, err)
    assert _nothing_written(out), sorted(out.rglob("*"))


def test_unknown_bodyparts_without_a_map(tmp_path, capsys):
    xy, lik = make_xy(10, 1, 4)
    f = tmp_path / "v.csv"
    write_dlc_csv(f, xy, lik, bodyparts=["snout", "wing", "antenna", "tailbase"])
    good = tmp_path / "good.csv"
    write_dlc_csv(good, xy, lik)
    out = tmp_path / "d"
    _expect_error(capsys, import_args(out, good, f, fps=30), out, str(f), "'bodyparts'", "wing", "antenna", "--bodyparts")


def test_two_animals_with_one_name(tmp_path, capsys):
    xy, lik = make_xy(10, 2, 4)
    f = tmp_path / "v.csv"
    write_dlc_csv(f, xy, lik, individuals=["m1", "m1"])
    _expect_error(capsys, import_args(tmp_path / "d", f, fps=30), tmp_path / "d", str(f), "m1", "two animals")
    g = tmp_path / "s.analysis.h5"
    write_sleap_analysis(g, xy, lik, ["m1", "m1"])
    _expect_error(capsys, import_args(tmp_path / "d", g, fps=30), tmp_path / "d", str(g), "'individuals'", "one name")


def test_fps_missing(tmp_path, capsys):
    xy, lik = make_xy(10, 1, 4)
    f = tmp_path / "v.csv"
    write_dlc_csv(f, xy, lik)
    _expect_error(capsys, import_args(tmp_path / "d", f), tmp_path / "d", str(f), "'fps'", "--fps")


def test_nan_only_track(tmp_path, capsys):
    xy, lik = make_xy(10, 2, 4)
    xy[:, 1] = np.nan
    f = tmp_path / "v.csv"
    write_dlc_csv(f, xy, lik, individuals=["a", "ghost"])
    _expect_error(capsys, import_args(tmp_path / "d", f, fps=30), tmp_path / "d", str(f), "'individuals'", "ghost")
    xy, lik = make_xy(10, 1, 4)
    write_dlc_csv(f, xy, np.zeros_like(lik))
    _expect_error(capsys, import_args(tmp_path / "d", f, fps=30, min_likelihood=0.5), tmp_path / "d", str(f),
                  "--min-likelihood")


def test_file_not_what_format_says(tmp_path, capsys):
    xy, lik = make_xy(10, 2, 4)
    g = tmp_path / "s.analysis.h5"
    write_sleap_analysis(g, xy, lik, ["a", "b"])
    _expect_error(capsys, import_args(tmp_path / "d", g, fps=30, format="dlc"), tmp_path / "d", str(g), "'format'",
                  "DeepLabCut", "SLEAP")
    c = tmp_path / "plain.csv"
    pd.DataFrame({"x": [1, 2]}).to_csv(c, index=False)
    _expect_error(capsys, import_args(tmp_path / "d", c, fps=30), tmp_path / "d", str(c), "'header'")
    h = tmp_path / "fake.h5"
    h.write_text("not hdf5")
    _expect_error(capsys, import_args(tmp_path / "d", h, fps=30), tmp_path / "d", str(h), "not an HDF5 file")


def test_bad_labels_write_nothing(tmp_path, capsys):
    files = _two_videos(tmp_path)
    lab = tmp_path / "labels.csv"
    for bad, words in [({"video": "cageC"}, ["'video'", "cageC"]), ({"behaviour": "fighting"}, ["'behaviour'", "fighting"]),
                       ({"agent": "mouse3"}, ["'agent'", "mouse3"]), ({"stop_s": 99.0}, ["'start, stop'"])]:
        row = {"video": "cageA", "agent": "resident", "target": "intruder", "behaviour": "attack",
               "start_s": 0.0, "stop_s": 1.0, **bad}
        pd.DataFrame([row]).to_csv(lab, index=False)
        _expect_error(capsys, import_args(tmp_path / "d", *files, fps=20, annotations=lab), tmp_path / "d",
                      f"{lab} (row 2)", *words)


def test_too_many_animals_and_unsafe_lab(tmp_path, capsys):
    xy, lik = make_xy(5, 5, 4)
    f = tmp_path / "v.csv"
    write_dlc_csv(f, xy, lik, individuals=list("abcde"))
    _expect_error(capsys, import_args(tmp_path / "d", f, fps=30), tmp_path / "d", "at most 4 animals")
    xy, lik = make_xy(5, 1, 4)
    write_dlc_csv(f, xy, lik)
    _expect_error(capsys, import_args(tmp_path / "d", f, fps=30, lab="../evil"), tmp_path / "d", "--lab")


def test_reader_raises_data_error_for_labelled_images(tmp_path):
    xy, lik = make_xy(3, 1, 4)
    f = tmp_path / "CollectedData.csv"
    df = write_dlc_csv(f, xy, lik)
    df.index = ["labeled-data/v/img0.png", "labeled-data/v/img1.png", "labeled-data/v/img2.png"]
    df.to_csv(f)
    with pytest.raises(MabeDataError, match="frame numbers"):
        pose_io.read_pose(f)
