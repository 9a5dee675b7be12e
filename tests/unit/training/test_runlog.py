"""StopRequest under DDP: every rank must get the same answer from one agree() call."""
import signal
from pathlib import Path

import torch

from mabe.training import runlog


def _stop(world: int) -> runlog.StopRequest:
    stop = runlog.StopRequest.__new__(runlog.StopRequest)  # no signal handlers: the flag logic alone
    stop.requested, stop.world, stop.every, stop.announced, stop.device = False, world, 1, False, None
    stop.signal_name, stop.log, stop._old = None, runlog.RunLog(Path("."), None, enabled=False), {}
    return stop


def test_a_signal_during_the_collective_waits_for_the_next_agreement(monkeypatch):
    """SIGTERM lands on this rank while its all-reduce runs: the other rank reduced a 0, so it goes on
    training; this rank must answer what was reduced (go on too), not its newer local flag, or it
    leaves the loop alone and the other rank dies in its next collective (seen in CI)."""
    stop = _stop(world=2)

    def reduce_while_signalled(flag, op=None):  # the other rank sent 0; the signal arrives meanwhile
        stop._handle(signal.SIGTERM, None)

    monkeypatch.setattr(torch.distributed, "all_reduce", reduce_while_signalled)
    assert stop.agree() is False  # what both ranks reduced: nobody had asked yet
    assert stop.requested and stop.signal_name == "SIGTERM"  # kept for the next check

    def reduce_max(flag, op=None):  # now this rank sends 1: both ranks see 1
        assert flag.item() == 1.0

    monkeypatch.setattr(torch.distributed, "all_reduce", reduce_max)
    assert stop.agree() is True and stop.check(7) is True


def test_a_stop_asked_on_another_rank_reaches_this_one(monkeypatch):
    stop = _stop(world=2)

    sent = []

    def other_rank_asked(flag, op=None):
        sent.append(flag.item())
        flag.fill_(1.0)

    monkeypatch.setattr(torch.distributed, "all_reduce", other_rank_asked)
    assert stop.agree() is True and stop.requested
    assert stop.check(4) is True  # every=1: a check every step
    assert sent == [0.0, 1.0]  # this rank had not been signalled; from then on it sends its stop too


def test_no_signal_no_stop(monkeypatch):
    stop = _stop(world=2)
    stop.every = 5
    calls = []
    monkeypatch.setattr(torch.distributed, "all_reduce", lambda flag, op=None: calls.append(op))
    assert stop.check(3) is False and calls == []  # not a check step: no collective
    assert stop.check(5) is False and calls == [torch.distributed.ReduceOp.MAX]
