"""The method contract (camrt/methods/contract.py): records, options and contexts check themselves."""

from __future__ import annotations

from dataclasses import FrozenInstanceError, dataclass

import numpy as np
import pytest

from camrt.checks import positive_int
from camrt.errors import InputError
from camrt.methods import METHODS, Context, Method, NoOptions, Options, check_options, get_method
from camrt.methods.masking import SSCAMOptions


@dataclass(frozen=True)
class _Opts(Options):
    k: int = 3

    def _checked(self) -> dict:
        return {"k": positive_int(self.k, "option k")}


def test_options_hold_their_defaults_and_check_themselves() -> None:
    assert _Opts.defaults() == {"k": 3} and _Opts.names() == ("k",)
    assert _Opts.build({}, "m") == _Opts() and _Opts.build({"k": np.int64(5)}, "m").k == 5
    assert type(_Opts.build({"k": np.int64(5)}, "m").k) is int  # canonical types after the check
    with pytest.raises(InputError, match="option k must be a positive integer, got 0"):
        _Opts(k=0)
    with pytest.raises(InputError, match="method 'm' has no option.s. z; it takes k"):
        _Opts.build({"z": 1}, "m")
    with pytest.raises(InputError, match="it takes no options"):
        NoOptions.build({"z": 1}, "m")
    with pytest.raises(FrozenInstanceError):
        _Opts().k = 4  # type: ignore[misc]


def test_method_records_declare_what_their_family_needs() -> None:
    with pytest.raises(ValueError, match="must declare map"):
        Method("x", "d", "https://x", "gradient")
    with pytest.raises(ValueError, match="must declare explore, runs"):
        Method("x", "d", "https://x", "input")
    with pytest.raises(ValueError, match="must declare samples"):
        Method("x", "d", "https://x", "sampled", map=lambda a, g: a)
    with pytest.raises(ValueError, match="family 'other'"):
        Method("x", "d", "https://x", "other", map=lambda a, g: a)  # type: ignore[arg-type]


def test_configure_takes_names_or_the_methods_own_options() -> None:
    sscam = get_method("sscam")
    opts = sscam.configure({"n": 2})
    assert opts == SSCAMOptions(n=2) and sscam.configure(opts) is opts
    assert check_options("sscam", {"n": 2}) == opts
    with pytest.raises(InputError, match="takes SSCAMOptions, got RISEOptions"):
        sscam.configure(METHODS["rise"].options())
    with pytest.raises(InputError, match="unknown method 'nope'.*gradcam"):
        get_method("nope")


def test_context_checks_what_the_engine_hands_over() -> None:
    a = np.zeros((4, 2, 3), np.float32)
    ctx = Context(a, np.zeros((3, 8, 8), np.float32), seed=2, chunk=5)
    assert ctx.need("x").shape == (3, 8, 8) and ctx.seed == 2
    with pytest.raises(InputError, match="needs `gradient`"):
        ctx.need("gradient")
    with pytest.raises(InputError, match="needs `base`"):
        ctx.need("base")
    with pytest.raises(InputError, match="chunk must be a positive integer, got 0"):
        Context(a, chunk=0)
    with pytest.raises(InputError, match="one image's activation C×h×w"):
        Context(a[None])
    with pytest.raises(InputError, match="one image C×H×W"):
        Context(a, np.zeros((1, 3, 8, 8), np.float32))
    with pytest.raises(InputError, match="must have the activation's shape"):
        Context(a, gradient=a[:2])


@pytest.mark.parametrize("name", [["gradcam"], {"gradcam": 1}, None, 3])
def test_get_method_refuses_names_that_are_not_strings(name) -> None:
    """Regression (found by tests/test_fuzz_engine.py): a list or a dict raised TypeError (unhashable)."""
    with pytest.raises(InputError, match="unknown method"):
        get_method(name)
