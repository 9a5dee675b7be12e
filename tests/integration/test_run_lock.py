"""One process per run directory: a second ``mabe train`` with the same name, while the first runs, is
refused; the lock goes away with its process (SIGKILL included)."""

from __future__ import annotations

import json
import subprocess
import sys
import warnings

import pytest
import yaml
from test_crash import _env, _kill, _mabe, _raw, _wait_for

from helpers import make_fake_cache
from mabe import cli, paths, runs

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_second_run_with_the_same_name_is_refused_while_the_first_runs(tmp_path, capsys):
    make_fake_cache(tmp_path / "cache")
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(yaml.safe_dump(_raw(tmp_path, epochs=500)))
    run = tmp_path / "runs" / "same"
    first = subprocess.Popen(_mabe("train", "--config", str(cfg), "--name", "same"), env=_env(),
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        def training() -> bool:  # past setup: it logs epochs now
            try:
                return (run / "metrics.csv").read_text().count("\n") >= 2
            except OSError:
                return False

        _wait_for(training, first, timeout=120)
        rows_before = (run / "metrics.csv").read_text().splitlines()[0]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            rc = cli.main(["train", "--config", str(cfg), "--name", "same", "--set", "train.epochs=1"])
        err = capsys.readouterr().err
        assert rc == 2, err
        assert "Traceback" not in err
        assert str(run) in err and f"process {first.pid}" in err, err
        assert (run / "metrics.csv").read_text().splitlines()[0] == rows_before  # header not rewritten
        status = json.loads((run / "status.json").read_text())
        assert status["pid"] == first.pid and status["state"] == "running"  # not clobbered by the loser
        assert runs.lock_holder(run) == first.pid
        with pytest.raises(Exception, match=f"already running \\(pid {first.pid}\\)"):
            runs.detach(["train", "--config", str(cfg), "--name", "same"], run, command=[sys.executable, "-c", ""])
    finally:
        _kill(first)
    assert runs.lock_holder(run) is None  # the kernel dropped it with the process


def test_lock_is_released_when_its_process_is_killed(tmp_path):
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys; from mabe import paths; l = paths.lock(sys.argv[1], 'x'); "
         "print('held', flush=True); sys.stdin.read()", str(tmp_path / "l.lock")],
        env=_env(), stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(paths.LockedError) as err:
            paths.lock(tmp_path / "l.lock", "the thing")
        assert err.value.pid == holder.pid and "the thing" in str(err.value)
    finally:
        _kill(holder)
    with paths.lock(tmp_path / "l.lock", "the thing"), pytest.raises(paths.LockedError):
        paths.lock(tmp_path / "l.lock", "the thing")  # flock: a second descriptor conflicts even in one process
    paths.lock(tmp_path / "l.lock", "the thing").release()  # released by the with block


def test_fresh_run_is_refused_after_the_lock_when_a_checkpoint_appeared(tmp_path):
    """Two starts at once: the loser waits for nothing, but when it gets the lock after the winner
    finished it must not start over the finished run."""
    run = tmp_path / "runs" / "r"
    (run / "checkpoints").mkdir(parents=True)
    (run / "checkpoints" / "last.pt").write_bytes(b"x")
    with pytest.raises(Exception, match="already exists"):
        runs.lock_run(run)
    runs.lock_run(run, resume=True).release()


def test_a_live_run_with_a_checkpoint_is_reported_as_running_not_as_finished(tmp_path, capsys):
    """The moment after the first checkpoint: a second `mabe train --name same` must name the live
    process holding the run, not advise `--resume` on a run that is still training."""
    make_fake_cache(tmp_path / "cache")
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(yaml.safe_dump(_raw(tmp_path, epochs=1)))
    run = tmp_path / "runs" / "same"
    (run / "checkpoints").mkdir(parents=True)
    (run / "checkpoints" / "last.pt").write_bytes(b"a checkpoint being trained on")
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys; from mabe import paths; l = paths.lock(sys.argv[1], 'x'); "
         "print('held', flush=True); sys.stdin.read()", str(run / runs.LOCK_FILE)],
        env=_env(), stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        rc = cli.main(["train", "--config", str(cfg), "--name", "same"])
        err = capsys.readouterr().err
        assert rc == 2 and f"in use by process {holder.pid}" in err and "--resume" not in err, err
    finally:
        holder.kill()
        holder.wait()
