"""``python tests/slow_save.py SECONDS <mabe args>``: ``mabe`` with each checkpoint write stretched over
SECONDS (8 chunks), so a crash test can land a SIGKILL in the middle of one. Test-only: the production
code has no such hook; this wraps ``mabe.io``'s one raw write from outside."""

from __future__ import annotations

import sys
import time

from mabe import io
from mabe.cli import main


def _slow_write(delay: float):
    real = io._write

    def write(f, data) -> None:
        if ".pt." not in str(getattr(f, "name", "")):  # only checkpoints (.<name>.pt.<pid>-<hex>.tmp)
            real(f, data)
            return
        n = len(data)
        for i in range(8):
            f.write(data[i * n // 8 : (i + 1) * n // 8])
            f.flush()
            time.sleep(delay / 8)

    return write


if __name__ == "__main__":
    io._write = _slow_write(float(sys.argv[1]))
    sys.exit(main(sys.argv[2:]))
