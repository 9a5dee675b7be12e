"""Packaging: configs are package data (identical to the repository's configs/), `mabe configs`, a wheel
installed into a fresh venv runs from any folder, `mabe score --json` keeps full precision."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import sysconfig
from pathlib import Path

import pandas as pd
import pytest

from mabe import cli, config, metric

REPO = Path(__file__).resolve().parents[2]


def test_shipped_configs_are_the_repository_configs():
    top = {p.name: p.read_bytes() for p in (REPO / "configs").glob("*.yaml")}
    shipped = {p.name: p.read_bytes() for p in config.packaged_configs().values()}
    assert shipped, "no config shipped inside the package"
    assert top == shipped, "configs/ and src/mabe/configs/ differ: edit one, then cp configs/*.yaml src/mabe/configs/"


def test_config_by_name_from_any_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for name in ("demo", "demo.yaml", "configs/demo.yaml"):
        assert config.resolve_config(name) == config.PACKAGED_CONFIGS / "demo.yaml"
        assert config.load_config(name).model.conv_channels
    (tmp_path / "demo.yaml").write_text("train:\n  epochs: 3\n")  # a local file wins over the shipped one
    assert config.load_config("demo.yaml").train.epochs == 3
    with pytest.raises(config.ConfigError, match="shipped configs: cpu_net, demo, h100"):
        config.load_config("nonesuch.yaml")


def test_mabe_configs_lists_and_copies(tmp_path, capsys):
    assert cli.main(["configs"]) == 0
    out = capsys.readouterr().out
    assert "demo" in out and "h100" in out
    assert cli.main(["configs", "h100", "--copy", str(tmp_path)]) == 0
    assert (tmp_path / "h100.yaml").read_bytes() == (config.PACKAGED_CONFIGS / "h100.yaml").read_bytes()
    assert not (tmp_path / "demo.yaml").exists()
    assert cli.main(["configs", "h100", "--copy", str(tmp_path)]) == 2  # no silent overwrite
    assert "--force" in capsys.readouterr().err
    assert cli.main(["configs", "h100", "--copy", str(tmp_path), "--force"]) == 0
    assert cli.main(["configs", "bogus", "--copy", str(tmp_path)]) == 2


def test_score_json_full_precision(tmp_path, capsys):
    sol = pd.DataFrame({
        "row_id": [0, 1, 2], "video_id": [1, 1, 1], "agent_id": ["mouse1"] * 3, "target_id": ["mouse2"] * 3,
        "action": ["sniff", "attack", "sniff"], "start_frame": [0, 10, 40], "stop_frame": [7, 13, 50],
        "lab_id": ["L"] * 3, "behaviors_labeled": ['["mouse1,mouse2,sniff","mouse1,mouse2,attack"]'] * 3,
    })
    sub = sol.iloc[[0, 1]].copy()
    sub.loc[0, "stop_frame"] = 6  # a partial hit: the score is not a round number
    sol.to_csv(tmp_path / "sol.csv", index=False)
    sub.drop(columns=["lab_id", "behaviors_labeled"]).to_csv(tmp_path / "sub.csv", index=False)
    out = tmp_path / "score.json"
    assert cli.main(["score", str(tmp_path / "sol.csv"), str(tmp_path / "sub.csv"), "--json", str(out)]) == 0
    got = json.loads(out.read_text())
    expected = metric.score(metric.load_solution(tmp_path / "sol.csv"), metric.read_submission(tmp_path / "sub.csv"))
    assert got["score"] == float(expected.final)  # bit-exact, not the 6 printed digits
    assert 0 < got["score"] < 1
    assert [r["f1"] for r in got["per_action"]] == [float(f) for f in expected.per_action["f1"]]
    assert got["per_lab"][0]["lab_id"] == "L"


# ----------------------------------------------------------------------------- the wheel


def _build_wheel(dest: Path) -> Path:
    from mabe import bundle

    assert bundle.source_tree() == REPO
    return bundle.build_wheel(dest)


def fresh_venv_with_wheel(tmp: Path) -> tuple[Path, dict]:
    """A new venv holding only mabe's wheel; its dependencies come from this interpreter's site-packages
    (a .pth file), so nothing is downloaded. Returns (venv bin dir, env for subprocesses)."""
    wheel = _build_wheel(tmp / "dist")
    venv = tmp / "venv"
    vbin = venv / "bin"
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}  # no source tree
    env["PATH"] = f"{vbin}{os.pathsep}{env.get('PATH', '')}"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, capture_output=True, env=env)
    subprocess.run([str(vbin / "python"), "-m", "pip", "install", "--no-deps", "--no-index", "-q", str(wheel)],
                   check=True, capture_output=True, text=True, env=env)
    site = subprocess.run([str(vbin / "python"), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          check=True, capture_output=True, text=True, env=env).stdout.strip()
    # Paths named in a .pth are appended after the venv's own site-packages, and their own .pth files (the
    # shared venv's editable mabe) are not processed: the wheel's mabe is the one imported.
    Path(site, "zz_shared_deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    return vbin, env


def test_wheel_in_fresh_venv_finds_its_configs(tmp_path):
    had_build = (REPO / "build").exists()
    vbin, env = fresh_venv_with_wheel(tmp_path)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    where = subprocess.run([str(vbin / "python"), "-c", "import mabe, mabe.config as c; print(mabe.__file__); "
                            "print(c.load_config('demo').train.epochs)"],
                           cwd=elsewhere, env=env, capture_output=True, text=True)
    assert where.returncode == 0, where.stderr
    where = where.stdout.split()
    assert where[0].startswith(str(tmp_path / "venv")), where  # the installed copy, not the source tree
    listed = subprocess.run([str(vbin / "mabe"), "configs"], cwd=elsewhere, env=env, check=True,
                            capture_output=True, text=True).stdout
    assert "demo" in listed and "h100" in listed and str(tmp_path / "venv") in listed
    assert (REPO / "build").exists() == had_build  # the wheel is built from a copy: nothing left in the checkout


@pytest.mark.slow
def test_wheel_runs_mabe_demo_from_any_folder(tmp_path):
    vbin, env = fresh_venv_with_wheel(tmp_path)
    work = tmp_path / "elsewhere"
    work.mkdir()
    run = subprocess.run([str(vbin / "mabe"), "demo", "--workdir", "w"], cwd=work, env=env,
                         capture_output=True, text=True)
    assert run.returncode == 0, run.stderr[-2000:]
    assert (work / "w" / "out" / "submission.csv").is_file()
