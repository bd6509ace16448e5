"""The argparse number types shared by the commands."""

import argparse

import pytest

from caloforge.cli._options import (
    finite_float,
    non_negative_float,
    non_negative_int,
    positive_float,
    positive_int,
)


@pytest.mark.parametrize("fn, good, bad", [
    (positive_int, {"1": 1, "42": 42}, ["0", "-1", "1.5", "nan", "inf", "", "1e3", "x"]),
    (non_negative_int, {"0": 0, "7": 7}, ["-1", "0.0", "nan", "two"]),
    (finite_float, {"-1.5": -1.5, "0": 0.0, "1e3": 1000.0}, ["nan", "inf", "-inf", "x", ""]),
    (non_negative_float, {"0": 0.0, "2.5": 2.5}, ["-0.1", "nan", "inf"]),
    (positive_float, {"1e-9": 1e-9, "3": 3.0}, ["0", "-2", "nan", "-inf"]),
])
def test_number_types(fn, good, bad):
    for text, value in good.items():
        assert fn(text) == value
    for text in bad:
        with pytest.raises(argparse.ArgumentTypeError, match=f"got {text!r}"):
            fn(text)
