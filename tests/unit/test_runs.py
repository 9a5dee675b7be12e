"""runs.py: run directories, status table, detach + logs --follow + stop with a tiny fake trainer."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from mabe import runs
from mabe.errors import MabeError

# A stand-in for `mabe train`: prints epochs, keeps status.json current, stops cleanly on SIGTERM.
# Its file name contains "mabe" so the pid-reuse guard (command line mentions mabe) accepts it.
FAKE_TRAINER = textwrap.dedent('''
    import json, os, signal, sys, time
    from pathlib import Path

    run_dir, epochs, end = Path(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
    stop = False

    def on_term(signum, frame):
        global stop
        stop = True

    signal.signal(signal.SIGTERM, on_term)

    def status(**kw):
        path = run_dir / "status.json"
        st = json.loads(path.read_text()) if path.exists() else {}
        st.update(kw, pid=os.getpid(), updated=time.time())
        tmp = run_dir / "status.tmp"
        tmp.write_text(json.dumps(st))
        os.replace(tmp, path)

    status(state="running", epochs=epochs, device="cpu")
    for epoch in range(1, epochs + 1):
        print(f"Epoch {epoch}/{epochs}: loss 0.5", flush=True)
        status(epoch=epoch, best_f1=0.1 * epoch, best_epoch=epoch)
        for _ in range(5):
            time.sleep(0.02)
            if stop:
                break
        if stop:
            print("caught SIGTERM: wrote checkpoints/last.pt", flush=True)
            (run_dir / "checkpoints").mkdir(exist_ok=True)
            (run_dir / "checkpoints" / "last.pt").write_bytes(b"x")
            status(state="stopped", message="stopped by signal")
            sys.exit(0)
    if end == "crash":
        print("Traceback: boom", flush=True)
        os._exit(3)  # dies without touching status.json
    if end == "failed":
        status(state="failed", message="non-finite loss")
        sys.exit(1)
    print("done", flush=True)
    status(state="finished", message="done")
''')


@pytest.fixture
def fake_trainer(tmp_path: Path) -> Path:
    path = tmp_path / "fake_mabe_trainer.py"
    path.write_text(FAKE_TRAINER)
    return path


def _write_run(root: Path, name: str, **status) -> Path:
    d = root / name
    d.mkdir(parents=True)
    (d / "status.json").write_text(json.dumps(status))
    return d


def _spawn(cmd: list[str]) -> subprocess.Popen:
    return subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def _cmdline(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError as err:
        return repr(err).encode()


def _wait_for(pred, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not pred():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


# ----------------------------------------------------------------------------- resolve


def test_resolve_run_by_name_path_and_unknown(tmp_path):
    root = tmp_path / "runs"
    d = _write_run(root, "alpha", state="finished")
    _write_run(root, "beta", state="finished")
    assert runs.resolve_run("alpha", root) == d
    assert runs.resolve_run(d) == d
    with pytest.raises(MabeError, match=r"'gamma'.*available runs.*alpha, beta"):
        runs.resolve_run("gamma", root)
    with pytest.raises(MabeError, match="available runs: none"):
        runs.resolve_run("x", tmp_path / "nowhere")


def test_cv_fold_dirs_reads_cv_json_and_refuses_unsafe_names(tmp_path):
    assert runs.cv_fold_dirs(tmp_path) is None  # not a cv directory
    (tmp_path / runs.CV_FILE).write_text(json.dumps({"runs": ["fold0", "fold1"]}))
    assert runs.cv_fold_dirs(tmp_path) == [tmp_path / "fold0", tmp_path / "fold1"]
    for bad in ("../elsewhere", "nested/fold1", 7.5):  # a name from a file: one plain component, under the cv dir
        (tmp_path / runs.CV_FILE).write_text(json.dumps({"runs": ["fold0", bad]}))
        with pytest.raises(MabeError):
            runs.cv_fold_dirs(tmp_path)
    (tmp_path / runs.CV_FILE).write_text("[1, 2]")
    with pytest.raises(MabeError, match="not a cv file"):
        runs.cv_fold_dirs(tmp_path)


def test_write_status_merges_and_stamps(tmp_path):
    runs.write_status(tmp_path, state="running", pid=123)
    st = runs.write_status(tmp_path, epoch=2)
    assert st["state"] == "running" and st["pid"] == 123 and st["epoch"] == 2 and st["updated"]
    assert json.loads((tmp_path / "status.json").read_text()) == st
    assert not list(tmp_path.glob("*.tmp"))


# ----------------------------------------------------------------------------- liveness, list, status


def test_pid_alive_checks_existence_and_command_line():
    dead = _spawn([sys.executable, "-c", "pass"])
    dead.wait()
    assert not runs.pid_alive(dead.pid)
    assert not runs.pid_alive(None) and not runs.pid_alive(0)
    mabe_like = _spawn([sys.executable, "-c", "import time; time.sleep(60)", "mabe-train"])
    other = _spawn(["sleep", "60"])  # a live pid that is not a mabe process: pid reuse
    try:
        assert runs.pid_alive(mabe_like.pid), _cmdline(mabe_like.pid)
        if Path("/proc").is_dir():
            _wait_for(lambda: _cmdline(other.pid))  # empty while exec is under way: counted alive
            assert not runs.pid_alive(other.pid), _cmdline(other.pid)
        assert runs.pid_alive(other.pid, expect=None)
    finally:
        for p in (mabe_like, other):
            p.kill()
            p.wait()
    assert not runs.pid_alive(mabe_like.pid)


def test_zombie_child_is_not_alive():
    child = _spawn([sys.executable, "-c", "pass", "mabe"])
    _wait_for(lambda: runs._proc_state(child.pid) in ("Z", None))
    assert not runs.pid_alive(child.pid)


def test_list_runs_and_print_status_every_state(tmp_path, capsys):
    root = tmp_path / "runs"
    dead = _spawn([sys.executable, "-c", "pass"])
    dead.wait()
    live = _spawn([sys.executable, "-c", "import time; time.sleep(60)", "mabe-train"])
    try:
        _write_run(root, "r1-finished", state="finished", pid=dead.pid, epoch=10, epochs=10, best_f1=0.4389,
                   best_epoch=7, device="cuda:0 (NVIDIA H100)", started="2025-01-01T10:00:00",
                   updated="2025-01-01T11:00:00")
        _write_run(root, "r2-failed", state="failed", pid=dead.pid, epoch=3, epochs=10, device="cpu",
                   started="2025-01-02T10:00:00", updated="2025-01-02T10:05:00", message="non-finite loss")
        _write_run(root, "r3-stopped", state="stopped", pid=dead.pid, epoch=4, epochs=10, device="cpu",
                   started="2025-01-03T10:00:00", updated=time.time())
        _write_run(root, "r4-died", state="running", pid=dead.pid, epoch=2, epochs=10, device="cpu",
                   started="2025-01-04T10:00:00")
        d5 = _write_run(root, "r5-running", state="running", pid=live.pid, epoch=5, epochs=100, best_f1=0.3,
                        best_epoch=4, device="cpu", started="2025-01-05T10:00:00", updated=time.time())
        (d5 / "metrics.csv").write_text(
            "epoch,phase,lr,loss,val_loss,val_f1,val_acc,val_score,epoch_time_s,windows_per_s,skipped_steps\n"
            "1,warmup,1e-4,0.9,0.8,0.2,0.9,0.15,10,100,0\n"
            "2,train,4e-4,0.7,0.6,0.3,0.9,0.25,10,100,0\n"
            "3,train,4e-4,0.6,0.6,0.3,0.9,,10,100,0\n"
        )
        (root / "not-a-run").mkdir()

        rows = runs.list_runs(root)
        assert [r["name"] for r in rows] == ["r1-finished", "r2-failed", "r3-stopped", "r4-died", "r5-running"]
        by = {r["name"]: r for r in rows}
        assert {n: r["state"] for n, r in by.items()} == {
            "r1-finished": "finished", "r2-failed": "failed", "r3-stopped": "stopped", "r4-died": "died",
            "r5-running": "running",
        }
        assert by["r5-running"]["last_val_score"] == pytest.approx(0.25)  # last non-empty
        assert by["r1-finished"]["best_f1"] == pytest.approx(0.4389) and by["r1-finished"]["best_epoch"] == 7

        capsys.readouterr()
        runs.print_status(root)
        out = capsys.readouterr().out
        for text in ["r1-finished", "finished", "failed", "stopped", "died", "running", "10/10", "5/100",
                     "0.4389 (7)", "0.2500", "H100", "2025-01-01 11:00:00"]:
            assert text in out, text
        assert "not-a-run" not in out
    finally:
        live.kill()
        live.wait()


def test_print_status_no_runs(tmp_path, capsys):
    runs.print_status(tmp_path / "runs")
    assert "no runs" in capsys.readouterr().out


# ----------------------------------------------------------------------------- detach, logs, stop


def test_child_argv_pins_run_dir(tmp_path):
    run_dir = tmp_path / "runs" / "exp1"
    argv = runs._child_argv(["train", "--detach", "-c", "configs/h100.yaml", "--name", "old", "--set", "train.lr=1"],
                            run_dir)
    assert argv[:4] == [sys.executable, "-m", "mabe", "train"]
    assert "--detach" not in argv and "old" not in argv
    assert argv[4:] == ["-c", "configs/h100.yaml", "--set", "train.lr=1", "--name", "exp1",
                        "--set", f"runs={run_dir.parent}"]
    assert runs._child_argv(["--name=x", "--detach"], run_dir)[4:] == [
        "--name", "exp1", "--set", f"runs={run_dir.parent}"]
    resumed = runs._child_argv(["--resume", "exp1", "--detach"], run_dir)
    assert resumed[4:] == ["--resume", "exp1"]


def test_detach_then_follow_until_finished(tmp_path, fake_trainer, capsys):
    root = tmp_path / "runs"
    run_dir = root / "exp"
    rc = runs.detach([], run_dir, command=[sys.executable, str(fake_trainer), str(run_dir), "4", "finish"])
    assert rc == 0
    out = capsys.readouterr().out
    assert "exp" in out and "mabe logs exp --follow" in out and "mabe stop exp" in out
    st = runs.read_status(run_dir)
    assert st["state"] in ("running", "finished") and st["pid"]

    t0 = time.monotonic()
    assert runs.logs("exp", follow=True, runs_root=root) == 0
    assert time.monotonic() - t0 < 30
    out = capsys.readouterr().out
    assert all(f"Epoch {e}/4" in out for e in range(1, 5)) and "done" in out
    assert runs.read_status(run_dir)["state"] == "finished"

    # a second, non-following read prints the same log
    assert runs.logs(run_dir, follow=False) == 0
    assert "Epoch 4/4" in capsys.readouterr().out
    # and detach refuses nothing now: the run is over; stop says it is not running
    assert runs.stop(run_dir) == 1
    assert "not running" in capsys.readouterr().out


@pytest.mark.parametrize("end", ["failed", "crash"])
def test_follow_returns_1_when_run_fails_or_dies(tmp_path, fake_trainer, capsys, end):
    run_dir = tmp_path / "runs" / f"exp-{end}"
    runs.detach([], run_dir, command=[sys.executable, str(fake_trainer), str(run_dir), "2", end])
    assert runs.logs(run_dir, follow=True) == 1
    captured = capsys.readouterr()
    assert "Epoch 2/2" in captured.out
    expected = "failed" if end == "failed" else "died"
    assert expected in captured.err
    assert runs.list_runs(run_dir.parent)[0]["state"] == expected


def test_detach_stop_graceful(tmp_path, fake_trainer, capsys):
    root = tmp_path / "runs"
    run_dir = root / "long"
    runs.detach([], run_dir, command=[sys.executable, str(fake_trainer), str(run_dir), "100000", "finish"])
    _wait_for(lambda: "Epoch 2/" in (run_dir / "log.txt").read_text())
    pid = runs.read_status(run_dir)["pid"]
    assert runs.list_runs(root)[0]["state"] == "running"
    with pytest.raises(MabeError, match="already running"):
        runs.detach([], run_dir, command=[sys.executable, str(fake_trainer), str(run_dir), "1", "finish"])

    assert runs.stop("long", runs_root=root, wait=True, timeout=30) == 0
    assert not runs.pid_alive(pid)
    st = runs.read_status(run_dir)
    assert st["state"] == "stopped" and st["message"] == "stopped by signal"
    assert (run_dir / "checkpoints" / "last.pt").is_file()
    out = capsys.readouterr().out
    assert "SIGTERM" in out and "stopped" in out
    assert "caught SIGTERM" in (run_dir / "log.txt").read_text()
    # following a stopped run prints the log and returns 0 at once
    assert runs.logs(run_dir, follow=True) == 0


def test_stop_marks_stopped_when_child_ignores_status(tmp_path, capsys):
    """A process killed by SIGTERM before it could write its status is recorded as stopped."""
    run_dir = tmp_path / "runs" / "plain"
    script = tmp_path / "mabe_sleeper.py"
    script.write_text("import time\nprint('sleeping', flush=True)\ntime.sleep(60)\n")
    runs.detach([], run_dir, command=[sys.executable, str(script)])
    rc = runs.stop(run_dir, wait=True, timeout=30)
    assert rc == 0, (capsys.readouterr().out, runs.read_status(run_dir), _cmdline(runs.read_status(run_dir)["pid"]))
    st = runs.read_status(run_dir)
    assert st["state"] == "stopped" and "mabe stop" in st["message"]


def test_stop_and_logs_on_missing_pieces(tmp_path, capsys):
    root = tmp_path / "runs"
    dead = _spawn([sys.executable, "-c", "pass"])
    dead.wait()
    _write_run(root, "gone", state="running", pid=dead.pid)
    assert runs.stop("gone", runs_root=root) == 1
    out = capsys.readouterr().out
    assert "not running" in out and f"pid {dead.pid} is gone" in out
    assert runs.logs("gone", runs_root=root) == 1  # no log.txt yet
    assert "no log.txt" in capsys.readouterr().err


def test_cli_status_logs_stop(tmp_path, fake_trainer, capsys):
    from mabe import cli

    root = tmp_path / "runs"
    run_dir = root / "viacli"
    runs.detach([], run_dir, command=[sys.executable, str(fake_trainer), str(run_dir), "100000", "finish"])
    _wait_for(lambda: "Epoch 1/" in (run_dir / "log.txt").read_text())
    assert cli.main(["status", "--runs", str(root)]) == 0
    assert "viacli" in capsys.readouterr().out
    assert cli.main(["stop", "viacli", "--runs", str(root)]) == 0
    assert cli.main(["logs", "viacli", "--runs", str(root), "--follow"]) == 0
    assert "caught SIGTERM" in capsys.readouterr().out
    assert cli.main(["logs", "nope", "--runs", str(root)]) == 2
    assert "available runs: viacli" in capsys.readouterr().err
