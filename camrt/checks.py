"""The one set of argument validators: every public function that takes a count, a number in a
range, a choice, a flag, a colormap or a blending weight checks it here, so that the rule and the
message are written once. Each returns the value in its canonical type or raises `InputError`
naming the argument (``name`` is the name as the user typed it: ``"batch"``, ``"option n"``,
``"--alpha"``). Pure Python and numpy; no other dependency."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from camrt.errors import InputError

# The colormaps camrt draws with (OpenCV's names, lower case); `camrt.visual.overlay` maps each to
# its OpenCV constant. Kept here so that a colormap can be checked without importing cv2.
COLORMAP_NAMES = ("jet", "turbo", "inferno", "viridis", "magma", "hot", "plasma", "bone")


def positive_int(value: object, name: str) -> int:
    """`value` as a positive int (bools, floats and strings refused), or an InputError naming it."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)) or value < 1:
        raise InputError(f"{name} must be a positive integer, got {value!r}")
    return int(value)


def non_negative_int(value: object, name: str) -> int:
    """`value` as an int ≥ 0 (bools, floats and strings refused), or an InputError naming it."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)) or value < 0:
        raise InputError(f"{name} must be a non-negative integer, got {value!r}")
    return int(value)


def number(value: object, name: str, low: float = 0.0, high: float | None = None, *, positive: bool = False,
           high_open: bool = False, note: str = "") -> float:
    """`value` as a finite float in [low, high] (or [low, high) with `high_open`; > 0 with
    `positive`), or an InputError naming it. NaN and infinities are refused; `note` is appended
    to the message."""
    ok = not isinstance(value, (bool, np.bool_)) and isinstance(value, (int, float, np.integer, np.floating))
    ok = ok and bool(np.isfinite(value))
    if ok:
        above = high is not None and (value >= high if high_open else value > high)
        ok = bool(value >= low) and not above
    if not ok:
        close = ")" if high_open else "]"
        bound = f"in [{low:g}, {high:g}{close}" if high is not None else f"≥ {low:g}"
        raise InputError(f"{name} must be a number {bound}{note}, got {value!r}")
    if positive and value == 0:
        raise InputError(f"{name} must be positive, got {value!r}")
    return float(value)


def choice(value: object, name: str, choices: Sequence[str]) -> str:
    """`value` if it is one of `choices`, or an InputError listing them."""
    if not isinstance(value, str) or value not in choices:
        raise InputError(f"{name} must be one of {', '.join(choices)}, got {value!r}")
    return value


def flag(value: object, name: str) -> bool:
    """`value` as a bool (True/False only, not 0/1 or strings), or an InputError."""
    if not isinstance(value, (bool, np.bool_)):
        raise InputError(f"{name} must be true or false, got {value!r}")
    return bool(value)


def colormap(value: object) -> str:
    """`value` if it names a colormap of `COLORMAP_NAMES`, or an InputError listing them."""
    if value not in COLORMAP_NAMES:
        raise InputError(f"unknown colormap '{value}'; choose one of {', '.join(COLORMAP_NAMES)}")
    return str(value)


def alpha(value: object, name: str = "alpha") -> float:
    """A blending weight in [0, 1], or an InputError."""
    ok = not isinstance(value, (bool, np.bool_)) and isinstance(value, (int, float, np.integer, np.floating))
    if not ok or not 0.0 <= value <= 1.0:
        raise InputError(f"{name} must be in [0, 1], got {value!r}")
    return float(value)
