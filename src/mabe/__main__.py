"""``python -m mabe`` (and ``torchrun -m mabe``) runs the command line."""

from mabe.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
