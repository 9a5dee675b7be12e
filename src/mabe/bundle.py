"""``mabe bundle RUN... --out DIR``: everything an internet-off Kaggle notebook needs, as one dataset folder.

    DIR/wheels/mabe-<version>-py3-none-any.whl   mabe itself (its dependencies are on Kaggle's image)
    DIR/models/<name>.mabe                       exported models (mabe export), an ensemble if several
    DIR/thresholds.json                          fitted per-(lab, action) thresholds (optional)
    DIR/config.yaml                              the post-processing config the submission uses
    DIR/predict_and_submit.py                    pip install --no-index from wheels/, predict, submit

In the notebook: ``!python /kaggle/input/<dataset>/predict_and_submit.py`` writes ``submission.csv``
(arguments: the competition folder and the output path, defaults Kaggle's). Exported models get a
relative feature cache (``mabe_cache`` under the working folder), so prediction writes nowhere else.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

from mabe import checkpoint, postprocess
from mabe.errors import MabeError

BUNDLE_CACHE = "mabe_cache"  # relative: the notebook's working folder, never the read-only input
KAGGLE_DATA = "/kaggle/input/MABe-mouse-behavior-detection"
SCRIPT_NAME = "predict_and_submit.py"
_SAFE = re.compile(r"[^A-Za-z0-9_.-]+")

SCRIPT = '''\
"""Offline Kaggle submission with mabe (written by `mabe bundle`).

    python predict_and_submit.py [DATA] [SUBMISSION]

DATA: the competition folder with test.csv and test_tracking/ (default {data});
SUBMISSION: where to write the CSV (default submission.csv in the current folder). Installs mabe from
wheels/ next to this file with pip --no-index --no-deps (no internet needed), then runs `mabe predict` with every
model in models/ and `mabe submit` with thresholds.json (if bundled) and config.yaml.
"""

import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent


def run(*argv):
    print("$", " ".join(map(str, argv)), flush=True)
    subprocess.run([str(a) for a in argv], check=True)


def main():
    data = Path(sys.argv[1] if len(sys.argv) > 1 else "{data}")
    out = Path(sys.argv[2] if len(sys.argv) > 2 else "submission.csv").resolve()
    # --no-deps: Kaggle's image already has mabe's dependencies, and an offline resolver would fail on any
    # of *their* pins it cannot see a wheel for; what is really missing is named just below instead
    wheel = sorted((HERE / "wheels").glob("mabe-*.whl"))[-1]
    run(sys.executable, "-m", "pip", "install", "--no-index", "--no-deps", "--force-reinstall", wheel)
    missing = []
    for module in ("torch", "numpy", "pandas", "pyarrow", "yaml", "tqdm", "rich", "matplotlib"):
        try:
            __import__(module)
        except ImportError:
            missing.append(module)
    if missing:
        sys.exit(f"mabe needs {{', '.join(missing)}}, which this environment lacks; add their wheels to the "
                 "dataset and pip install them with --no-index --find-links too")
    models = sorted((HERE / "models").glob("*.mabe"))
    preds = Path("test_predictions.npz").resolve()
    run(sys.executable, "-m", "mabe", "predict", *models, "--data", data, "--split", "test", "--out", preds)
    submit = [sys.executable, "-m", "mabe", "submit", preds, "--out", out, "-c", HERE / "config.yaml"]
    if (HERE / "thresholds.json").is_file():
        submit += ["--thresholds", HERE / "thresholds.json"]
    run(*submit)
    print(f"submission: {{out}}")


if __name__ == "__main__":
    main()
'''


def source_tree() -> Path | None:
    """The repository mabe runs from (pyproject.toml naming mabe two levels above the package), if any."""
    root = Path(__file__).resolve().parents[2]
    pp = root / "pyproject.toml"
    if pp.is_file() and re.search(r'^name\s*=\s*"mabe"', pp.read_text(), re.MULTILINE):
        return root
    return None


def build_wheel(dest: Path, wheel: str | Path | None = None) -> Path:
    """mabe's wheel into ``dest``: a given wheel file, or built from the source tree (pip wheel, no deps)."""
    dest.mkdir(parents=True, exist_ok=True)
    if wheel is not None:
        wheel = Path(wheel)
        if not (wheel.is_file() and wheel.name.startswith("mabe-") and wheel.suffix == ".whl"):
            raise MabeError(f"--wheel {wheel}: expected an existing mabe-*.whl file")
        return Path(shutil.copy2(wheel, dest / wheel.name))
    root = source_tree()
    if root is None:
        raise MabeError("mabe is installed without its source tree, so its wheel cannot be built here: "
                        "pass --wheel mabe-<version>-py3-none-any.whl")
    import tempfile

    # Built from a clean copy: setuptools' in-tree build/ keeps files deleted since the last build and
    # would ship them, and the user's checkout gets no build/ or egg-info from us.
    with tempfile.TemporaryDirectory(prefix="mabe-wheel-") as tmp:
        copy = Path(tmp) / "src-copy"
        shutil.copytree(root / "src", copy / "src", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info", "*.pyc"))
        for name in ("pyproject.toml", "README.md"):
            shutil.copy2(root / name, copy / name)
        res = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                              "-w", str(Path(tmp) / "dist"), str(copy)], capture_output=True, text=True)
        wheels = sorted((Path(tmp) / "dist").glob("mabe-*.whl"))
        if res.returncode != 0 or len(wheels) != 1:
            raise MabeError(f"building mabe's wheel from {root} failed: {(res.stderr or res.stdout).strip()[-800:]}")
        target = dest / wheels[0].name
        shutil.move(str(wheels[0]), target)
    return target


def export_models(runs: list[str], dest: Path) -> list[Path]:
    """Each run / checkpoint / exported file -> ``dest/<name>.mabe`` with a relative feature cache."""
    dest.mkdir(parents=True, exist_ok=True)
    out: list[Path] = []
    for i, run in enumerate(runs):
        src = checkpoint.resolve(run)
        state = checkpoint.load(src)
        if state.get(checkpoint.MODE_KEY) != "pair":
            raise MabeError(f"{src}: a scene-mode model cannot name agents and targets; a submission needs "
                            "a pair-mode model (task.mode=pair)")
        name = Path(run).name if Path(run).is_dir() else Path(run).stem
        if name in ("best", "last"):  # runs/<name>/checkpoints/best.pt
            name = src.parents[1].name
        name = f"{i:02d}_{_SAFE.sub('_', name) or 'model'}"
        target = checkpoint.export(src, dest / f"{name}.mabe")
        state = checkpoint.load(target)
        # the training machine's cache path means nothing on Kaggle (and its input folder is read-only)
        state[checkpoint.CONFIG_KEY]["cache"] = BUNDLE_CACHE
        out.append(checkpoint.save(target, state))
    return out


def write_bundle(runs: list[str], out: str | Path, thresholds: str | Path | None = None,
                 wheel: str | Path | None = None, data_default: str = KAGGLE_DATA) -> dict[str, object]:
    """Write the Kaggle dataset folder (see the module docstring); returns what went where."""
    if not runs:
        raise MabeError("give at least one run, checkpoint or exported model")
    out = Path(out)
    if out.exists() and any(out.iterdir()) and not (out / SCRIPT_NAME).is_file():
        raise MabeError(f"{out} exists, is not empty and is not a mabe bundle: not writing into it")
    thr = postprocess.load_thresholds(thresholds) if thresholds is not None else None  # check before writing
    states = [checkpoint.load(checkpoint.resolve(r)) for r in runs]
    for sub in ("models", "wheels"):
        shutil.rmtree(out / sub, ignore_errors=True)
    (out / "thresholds.json").unlink(missing_ok=True)
    models = export_models(runs, out / "models")
    whl = build_wheel(out / "wheels", wheel)
    if thr is not None:
        postprocess.save_thresholds(out / "thresholds.json", thr)
    cfg = {"postprocess": states[0][checkpoint.CONFIG_KEY]["postprocess"]}
    (out / "config.yaml").write_text("# post-processing used by `mabe submit` (from the first model's run)\n"
                                     + yaml.safe_dump(cfg, sort_keys=False))
    (out / SCRIPT_NAME).write_text(SCRIPT.format(data=data_default))
    return {"wheel": whl, "models": models, "thresholds": out / "thresholds.json" if thr is not None else None,
            "config": out / "config.yaml", "script": out / SCRIPT_NAME}


def main_from_args(args) -> dict[str, object]:
    """``mabe bundle RUN... --out DIR [--thresholds JSON] [--wheel WHL]``."""
    made = write_bundle(args.runs, args.out, args.thresholds, args.wheel)
    size = sum(p.stat().st_size for p in Path(args.out).rglob("*") if p.is_file()) / 1e6
    print(f"bundle: {args.out} ({size:.1f} MB): {len(made['models'])} model(s), {Path(made['wheel']).name}"
          + (", thresholds.json" if made["thresholds"] else ", no thresholds (config's default)"))
    print(f"upload {args.out} as one Kaggle dataset; in the notebook (internet off):\n"
          f"  !python /kaggle/input/<dataset>/{SCRIPT_NAME}")
    return made
