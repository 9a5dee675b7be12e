"""Run ``mabe train`` on a Modal cloud GPU, with data, cache and runs on a Modal volume.

Optional and thin: nothing in mabe imports this file. It calls the same entry point as a local run.

    modal volume create mabe                       # once
    modal volume put mabe path/to/data /data       # the MABe-layout directory
    modal run --detach scripts/modal_launch.py --args "-c configs/h100.yaml --name h100-a"
    modal app logs mabe                            # follow the log
    modal app stop mabe                            # stop (the trainer gets SIGTERM, writes last.pt)
    modal volume get mabe /runs/h100-a/checkpoints/best.pt .

The run directory is ``/vol/runs/<name>`` on the volume; it is committed every COMMIT_EVERY_S seconds
while training runs (an interruption loses at most that much) and once more at the end.
"""

from __future__ import annotations

import contextlib
import shlex
import signal
import subprocess
import sys
import threading
from pathlib import Path

try:
    import modal
except ImportError:  # pragma: no cover
    sys.exit("scripts/modal_launch.py needs the Modal client: pip install modal, then `modal setup`.")

REPO = Path(__file__).resolve().parents[1]
VOLUME = "mabe"
GPU = "H100"
COMMIT_EVERY_S = 300
TIMEOUT_S = 24 * 3600

app = modal.App("mabe")
volume = modal.Volume.from_name(VOLUME, create_if_missing=True)
image = (
    modal.Image.debian_slim(python_version="3.11")
    .add_local_dir(REPO, "/root/mabe", copy=True,
                   ignore=[".venv", ".git", "runs", "cache", "demo", "**/__pycache__"])
    .run_commands("pip install /root/mabe")
)


@app.function(image=image, gpu=GPU, volumes={"/vol": volume}, timeout=TIMEOUT_S)
def train(args: list[str]) -> int:
    """``mabe train ARGS`` with data, cache and runs on the volume; commits it periodically."""
    cmd = [sys.executable, "-m", "mabe", "train", "--set", "data=/vol/data", "--set", "cache=/vol/cache",
           "--set", "runs=/vol/runs", *args]
    print("running:", shlex.join(cmd), flush=True)
    done = threading.Event()

    def committer() -> None:
        while not done.wait(COMMIT_EVERY_S):
            volume.commit()

    thread = threading.Thread(target=committer, daemon=True)
    thread.start()
    proc = subprocess.Popen(cmd)
    # pass a stop on to the trainer: it finishes the step and writes checkpoints/last.pt
    with contextlib.suppress(ValueError):  # ValueError: not the main thread
        signal.signal(signal.SIGTERM, lambda *_: proc.send_signal(signal.SIGTERM))
    try:
        rc = proc.wait()
    finally:
        done.set()
        thread.join()
        volume.commit()
    return rc


@app.local_entrypoint()
def main(args: str = "") -> None:
    rc = train.remote(shlex.split(args))
    print(f"mabe train exited with {rc}")
    if rc:
        raise SystemExit(rc)
