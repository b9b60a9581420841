"""Property-based tests of `camrt explain`'s option values (hypothesis), through click's CliRunner.

Fuzzed: the method, `-O NAME=VALUE` strings (valid, out of range, non-finite, of the wrong type,
malformed), `--topk`, `--alpha`, `--class-idx`, `--chunk-size`, `--seed`, `--layer` and
`--save-npy`. The contract: exit code 0 with the overlay (and .npy) written and the top-k line
printed, when every value is valid; otherwise exit code 2 with exactly one line on stderr, starting
with "camrt: error:", and no traceback. Exit code 1 (an internal error) is never right.

The values given to click's typed options (`--topk`, `--class-idx`, ... are `type=int`) are ones
click parses; text it cannot parse must be one line too (`test_unparseable_values_are_one_line_errors`).

The model is the one tests/test_fuzz_engine.py exports (shared per session).
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import click
import cv2
import numpy as np
import pytest
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from camrt.cli import main, parse_options
from camrt.errors import CamrtError
from camrt.methods import METHODS
from tests.cli_checks import assert_one_line_error
from tests.test_fuzz_engine import LABELS, LAYERS, SIZE, fuzz_model

K = len(LABELS)
FUZZ = settings(max_examples=100, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> tuple[Path, Path, Path]:
    """The model, one RGB image (13×20, an odd size) and a folder for the outputs of every example."""
    folder = tmp_path_factory.mktemp("fuzz_cli")
    image = folder / "img.png"
    assert cv2.imwrite(str(image), np.random.default_rng(0).integers(0, 256, (13, 20, 3), dtype=np.uint8))
    return fuzz_model(tmp_path_factory), image, folder


def invoke(*args: object):
    return CliRunner().invoke(main, [str(a) for a in args])


# --- option strings ---------------------------------------------------------------------------------------

# Methods and the options that bound their runs, always given with a small value (their defaults take
# thousands of runs); `-O` may override them with another drawn value, which is then checked too.
CAPPED = {"n": ["1", "2", "3"], "steps": ["2", "3"]}
CAPPED_WRONG = ["0", "-1", "1.5", "nan", "inf", "2", "x", ""]
VALUE_TEXT = st.one_of(
    st.integers(-2, 40).map(str),
    st.sampled_from(["0", "1", "0.5", "1.5", "2.0", "1e-30", "1e30", "1e400", "nan", "inf", "-inf", "-0.0",
                     "true", "false", "True", "onehot", "gaussian", "mask", "input", "", " 3", "abc", "0x10",
                     "1_0", "3 ", "٣"]),
)


@st.composite
def option_items(draw: st.DrawFn, method: str) -> list[str]:
    """-O items for `method`: its capped options first, then some of its options with drawn values,
    and now and then a malformed item or a name it does not take."""
    names = METHODS[method].options.names() if method in METHODS else ()
    items = [f"{o}={draw(st.sampled_from(CAPPED[o]))}" for o in names if o in CAPPED]
    for o in names:
        if draw(st.integers(0, 2)) == 0:
            items.append(f"{o}={draw(st.sampled_from(CAPPED_WRONG) if o in CAPPED else VALUE_TEXT)}")
    if draw(st.integers(0, 7)) == 0:
        items.append(draw(st.sampled_from(["n", "=3", "bogus=1", " =1", "n==2", "sigma=0.1", "kernel=onehot"])))
    return items


def expected_options(method: str, items: list[str]) -> bool:
    """Whether the -O items are valid for `method`: parsed as the CLI documents them (integers, floats,
    true/false, else text) and accepted by the method's options class."""
    try:
        METHODS[method].configure(parse_options(tuple(items)))
    except (click.BadParameter, CamrtError):
        return False
    return True


@st.composite
def cli_calls(draw: st.DrawFn) -> tuple[str, list[str], dict[str, object]]:
    """A method, its -O items and values for the other options (None: not given, the default)."""
    method = draw(st.sampled_from([*METHODS, "bogus", "Grad-CAM"]))
    values = {
        "topk": draw(st.none() | st.integers(-2, 8)),
        "alpha": draw(st.none() | st.floats(-0.5, 1.5) | st.sampled_from([0.0, 1.0, float("nan"), float("inf")])),
        "class-idx": draw(st.none() | st.integers(-3, K + 2)),
        "chunk-size": draw(st.none() | st.integers(-1, 6)),
        "seed": draw(st.none() | st.integers(-2, 2**40)),
        "layer": draw(st.none() | st.sampled_from([*LAYERS, "conv1"])),
        "save-npy": draw(st.booleans()),
    }
    return method, draw(option_items(method)), values


def valid_values(values: dict[str, object]) -> bool:
    """Whether the option values other than -O are valid, as README and `--help` give them."""
    def given_or(name: str, default: object) -> object:
        return default if values[name] is None else values[name]

    alpha = given_or("alpha", 0.5)
    return (given_or("topk", 5) >= 1 and 0.0 <= alpha <= 1.0 and -1 <= given_or("class-idx", -1) < K
            and given_or("chunk-size", 16) >= 1 and given_or("seed", 0) >= 0
            and given_or("layer", LAYERS[-1]) in LAYERS)


@FUZZ
@given(call=cli_calls())
def test_explain_option_values(files, call) -> None:
    model, image, folder = files
    method, items, values = call
    out = Path(tempfile.mkdtemp(dir=folder))
    args = ["explain", model, image, "-m", method, "-o", out, "--device", "cpu"]
    for item in items:
        args += ["-O", item]
    for name, value in values.items():
        if name == "save-npy":
            args += ["--save-npy"] if value else []
        elif value is not None:
            args += [f"--{name}", repr(value) if isinstance(value, float) else value]
    result = invoke(*args)
    valid = method in METHODS and expected_options(method, items) and valid_values(values)
    written = sorted(p.name for p in out.glob("*")) if out.is_dir() else []
    if not valid:
        assert_one_line_error(result)
        assert not any(name.endswith((".png", ".npy")) for name in written), written
        return
    if result.exit_code == 2:
        # Valid values can still meet a method that does not apply to the layer (CAM on layer1) or to
        # this CNN (ViT-ReciproCAM; the model's own map or relevance, which it has none of), or copies that
        # overflow float32 (an error that says so).
        line = assert_one_line_error(result)
        not_applicable = ((method == "cam" and values["layer"] == "layer1")
                          or (method == "vitreciprocam" and "first layer norm of a transformer block" in line)
                          or (method == "model-map" and "reads the model's own map output" in line)
                          or (method == "relevancecam" and "reads the layer-wise relevance" in line))
        assert not_applicable or "overflowed" in line, line
        return
    assert result.exit_code == 0, (result.exit_code, result.stdout, result.stderr)
    assert result.stderr == "" and "Traceback" not in result.output
    expected = [f"img.{method}.png"] + ([f"img.{method}.npy"] if values["save-npy"] else [])
    assert written == sorted(expected), written
    if values["save-npy"]:
        saliency = np.load(out / f"img.{method}.npy")
        assert saliency.shape == SIZE and saliency.dtype == np.float32
        assert np.isfinite(saliency).all() and saliency.min() >= 0.0 and saliency.max() <= 1.0
    (top,) = [line for line in result.stdout.splitlines() if line.startswith(f"{image}: ")]
    topk = 5 if values["topk"] is None else values["topk"]
    assert len(top.split(": ", 1)[1].split(", ")) == min(topk, K), top


# --- what click parses itself -----------------------------------------------------------------------------


@pytest.mark.parametrize("args", [["--topk", "1.5"], ["--class-idx", "abc"], ["--alpha", "half"],
                                  ["--chunk-size", ""], ["--seed", "1e3"]])
def test_unparseable_values_are_one_line_errors(files, args) -> None:
    model, image, folder = files
    assert_one_line_error(invoke("explain", model, image, "-o", folder / "unparsed", "--device", "cpu", *args))
