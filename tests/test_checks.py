"""camrt/checks.py: the one set of argument validators."""

from __future__ import annotations

import math

import numpy as np
import pytest

from camrt import checks
from camrt.errors import InputError


def test_positive_int() -> None:
    assert checks.positive_int(np.int32(3), "batch") == 3 and type(checks.positive_int(np.int32(3), "b")) is int
    for bad in (0, -1, 2.0, True, "3", None):
        with pytest.raises(InputError, match=f"batch must be a positive integer, got {bad!r}"):
            checks.positive_int(bad, "batch")


def test_number() -> None:
    assert checks.number(np.float32(0.5), "p", 0, 1) == 0.5
    assert checks.number(1, "p", 0, 1) == 1.0
    with pytest.raises(InputError, match=r"smoothing must be a number in \[0, 1\), got 1"):
        checks.number(1, "smoothing", 0, 1, high_open=True)
    with pytest.raises(InputError, match="sigma must be a number ≥ 0, got -1"):
        checks.number(-1, "sigma")
    with pytest.raises(InputError, match="p must be positive"):
        checks.number(0.0, "p", 0, 1, positive=True)
    for bad in (math.nan, math.inf, -math.inf, np.float32("inf"), True, "x", None):
        with pytest.raises(InputError, match="must be a number"):
            checks.number(bad, "x", 0, 1)
    with pytest.raises(InputError, match="sigma must be a number ≥ 0, got inf"):
        checks.number(math.inf, "sigma")  # no upper bound given, and still finite only
    assert checks.number(1e9, "timeout", positive=True) == 1e9


def test_non_negative_int() -> None:
    assert checks.non_negative_int(0, "seed") == 0 and checks.non_negative_int(np.uint8(3), "seed") == 3
    for bad in (-1, 1.0, True, "1", None):
        with pytest.raises(InputError, match=f"--seed must be a non-negative integer, got {bad!r}"):
            checks.non_negative_int(bad, "--seed")


def test_choice_flag_colormap_alpha() -> None:
    assert checks.choice("mask", "noise", ("mask", "input")) == "mask"
    with pytest.raises(InputError, match="noise must be one of mask, input, got 'both'"):
        checks.choice("both", "noise", ("mask", "input"))
    assert checks.flag(np.bool_(True), "f") is True
    with pytest.raises(InputError, match="f must be true or false, got 1"):
        checks.flag(1, "f")
    assert checks.colormap("jet") == "jet"
    with pytest.raises(InputError, match="unknown colormap 'rainbow'; choose one of jet, turbo"):
        checks.colormap("rainbow")
    assert checks.alpha(0) == 0.0
    for bad in (1.5, -0.1, "a", True, math.nan):
        with pytest.raises(InputError, match=r"--alpha must be in \[0, 1\]"):
            checks.alpha(bad, "--alpha")
