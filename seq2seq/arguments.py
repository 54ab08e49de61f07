"""What every command's argument parser shares: usage errors as one line, and number types
that say what they refuse. No heavy imports, so that any command can use it."""

import argparse
import math
import unicodedata
from pathlib import Path


class OneLineErrorParser(argparse.ArgumentParser):
    """Usage errors as one line naming the option: what a calling script or a log needs.
    argparse would print the whole usage block above it."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _int_at_least(value: str, minimum: int, kind: str) -> int:
    try:
        number = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a {kind} integer, got {value!r}") from None
    if number < minimum:
        raise argparse.ArgumentTypeError(f"must be at least {minimum}, got {number}")
    return number


def positive_int(value: str) -> int:
    return _int_at_least(value, 1, "positive")


def non_negative_int(value: str) -> int:
    return _int_at_least(value, 0, "non-negative")


def _finite(value: str) -> float:
    try:
        number = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {value!r}") from None
    if not math.isfinite(number):  # float() takes "nan" and "inf"
        raise argparse.ArgumentTypeError(f"must be a finite number, got {value}")
    return number


def positive_float(value: str) -> float:
    number = _finite(value)
    if number <= 0:
        raise argparse.ArgumentTypeError(f"must be greater than 0, got {value}")
    return number


def non_negative_float(value: str) -> float:
    number = _finite(value)
    if number < 0:
        raise argparse.ArgumentTypeError(f"must be at least 0, got {value}")
    return number


def one_line(value: str) -> str:
    """A name printed in a line of output or a model card: not empty, no line breaks or other
    control characters (Unicode categories Cc, Zl, Zp)."""
    if not value.strip():
        raise argparse.ArgumentTypeError("must not be empty")
    for char in value:
        if unicodedata.category(char) in ("Cc", "Zl", "Zp"):
            raise argparse.ArgumentTypeError(
                f"must be one line without control characters, got {value!r}"
            )
    return value


def non_empty(value: str) -> str:
    """A model (checkpoint, folder or hub id) or a file. Not empty: Path("") is the current
    folder, so an empty name (an unset variable in a script) would be read as a model folder,
    or `seq2seq-export --output ""` would write its README.md over the current folder's. Kept
    a str for a model: Path("./org/model") drops the "./" that keeps a name of a hub id's shape
    a local path."""
    if not value:
        raise argparse.ArgumentTypeError("must not be empty (. is the current folder)")
    return value


def non_empty_path(value: str) -> Path:
    return Path(non_empty(value))
