"""Error types that the command line turns into one clear line instead of a traceback."""

from __future__ import annotations


class MabeError(Exception):
    """Any expected failure: bad input, missing file, unusable checkpoint."""


class MabeDataError(MabeError, ValueError):
    """Bad input data; the message names the file, the field, what was expected and what was found."""

    def __init__(self, file: object, field: str | None, expected: str, got: object = None):
        self.file, self.field, self.expected, self.got = str(file), field, expected, got
        where = f"{self.file}" + (f", field {field!r}" if field else "")
        msg = f"{where}: expected {expected}"
        if got is not None:
            msg += f", got {got}"
        super().__init__(msg)


class TrainingError(MabeError, RuntimeError):
    """Training could not go on (non-finite loss streak, unwritable checkpoint directory...)."""
