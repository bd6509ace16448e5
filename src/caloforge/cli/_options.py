"""Argparse ``type=`` helpers that refuse out-of-range numbers before any work starts.

Each helper turns the command-line text into a number or raises
:class:`argparse.ArgumentTypeError`, so argparse reports ``argument --batch-size: ...``
and exits with status 2 before the command runs.  NaN and infinities are refused
by every float helper.

>>> positive_int("3"), non_negative_int("0"), finite_float("-1.5")
(3, 0, -1.5)
>>> positive_int("0")
Traceback (most recent call last):
argparse.ArgumentTypeError: must be an integer >= 1, got '0'
"""

from __future__ import annotations

import argparse
import math


def _integer(text: str, lowest: int) -> int:
    try:
        value = int(text)
    except ValueError:
        value = None
    if value is None or value < lowest:
        raise argparse.ArgumentTypeError(f"must be an integer >= {lowest}, got {text!r}")
    return value


def positive_int(text: str) -> int:
    """A size or count: an integer >= 1."""
    return _integer(text, 1)


def non_negative_int(text: str) -> int:
    """An integer >= 0 (a seed, or a count where the option documents what 0 means)."""
    return _integer(text, 0)


def finite_float(text: str) -> float:
    """Any real number except NaN and +-inf."""
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"must be a finite number, got {text!r}")
    return value


def non_negative_float(text: str) -> float:
    """A finite number >= 0."""
    value = finite_float(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {text!r}")
    return value


def positive_float(text: str) -> float:
    """A finite number > 0."""
    value = finite_float(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {text!r}")
    return value


__all__ = ["finite_float", "non_negative_float", "non_negative_int", "positive_float",
           "positive_int"]


def add_no_progress(parser: argparse.ArgumentParser) -> None:
    """``--no-progress``, the same on every command that draws progress bars (they are
    also off with ``CALOFORGE_NO_PROGRESS=1``)."""
    parser.add_argument("--no-progress", action="store_true",
                        help="no progress bars (also: CALOFORGE_NO_PROGRESS=1)")


def progress_choice(args: argparse.Namespace) -> bool | None:
    """What ``--no-progress`` asks of a progress bar: off (False), or the default (None:
    on unless ``CALOFORGE_NO_PROGRESS`` says otherwise)."""
    return False if getattr(args, "no_progress", False) else None
