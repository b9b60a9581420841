"""Property-based tests of `Engine.explain`'s inputs (hypothesis): images of any shape, dtype,
channel count and value, preprocessed batches with NaN and infinities, class indices of every
kind, method names and option values.

The contract: `explain` returns a `Result` whose saliency is N×H×W float32 in [0, 1] and whose
low-resolution map is finite and non-negative, or it raises a `CamrtError`; never another
exception, and never a NaN in a map from a finite input. Where README says an input is valid
(uint8/uint16 gray, RGB or RGBA images; a finite float32 N×C×H×W batch; a class in [-1, K)), the
test also asserts that it gives a Result.

The model is TinyNet at 16×16 with the input gradient (so that Opti-CAM runs too), exported once
per session (`fuzz_model`, shared with tests/test_fuzz_cli.py); perturbation methods get small
option values to stay cheap. Examples are derandomized, so CI runs the same ones every time.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import camrt
from camrt.engine import Engine
from camrt.engine.engine import Result
from camrt.errors import CamrtError
from camrt.methods import METHODS
from tests.tiny import TinyNet, make

SIZE = (16, 16)
K = 5  # TinyNet's classes
LABELS = ["cat", "dog", "bird", "fish", "frog"]
LAYERS = ["layer1", "layer2"]
FUZZ = settings(max_examples=60, deadline=None, derandomize=True,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


def fuzz_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """TinyNet at 16×16 with layers layer1 and layer2, labels and the input gradient (for Opti-CAM),
    exported once per test session: this module and tests/test_fuzz_cli.py share the file, since the
    export takes most of their run time."""
    path = tmp_path_factory.getbasetemp() / "fuzz_model" / "tiny.cam.onnx"
    if not path.is_file():
        path.parent.mkdir(exist_ok=True)
        camrt.export(make(TinyNet, seed=5), layers=LAYERS, path=path, input_shape=(1, 3, *SIZE), labels=LABELS,
                     input_gradient=True)
    return path


@pytest.fixture(scope="module")
def engine(tmp_path_factory) -> Engine:
    return Engine(fuzz_model(tmp_path_factory), device="cpu", chunk_size=4)


def assert_result(r: object, n: int, classes: np.ndarray | None = None) -> None:
    """`r` is a Result for `n` images at the model's input size, every number finite and in range."""
    assert isinstance(r, Result), f"{type(r).__name__}: {r}"
    assert r.saliency.shape == (n, *SIZE) and r.saliency.dtype == np.float32
    assert np.isfinite(r.saliency).all(), "NaN or inf in the saliency of a finite input"
    assert r.saliency.min() >= 0.0 and r.saliency.max() <= 1.0
    assert r.low_res.ndim == 3 and len(r.low_res) == n and r.low_res.dtype == np.float32
    assert np.isfinite(r.low_res).all() and (r.low_res >= 0).all()
    assert r.class_idx.shape == (n,) and ((r.class_idx >= 0) & (r.class_idx < K)).all()
    if classes is not None:
        np.testing.assert_array_equal(r.class_idx, np.where(classes == -1, r.logits.argmax(1), classes))
    assert r.logits.shape == (n, K) and np.isfinite(r.logits).all()
    assert r.scores.shape == (n,) and ((r.scores >= 0) & (r.scores <= 1)).all()


def outcome(call) -> Result | CamrtError:
    """The Result of `call()`, or the CamrtError it raised; any other exception fails the test."""
    try:
        return call()
    except CamrtError as e:
        assert str(e), "a CamrtError without a message"
        return e


# --- images -----------------------------------------------------------------------------------------------

DTYPES = (np.uint8, np.uint16, np.float32, np.float64, np.bool_, np.int32)
CHANNELS = (None, 1, 2, 3, 4, 5)  # None: a gray H×W image


@st.composite
def images(draw: st.DrawFn) -> tuple[tuple, bool]:
    """An image, as the arguments of `make_image` (short to print when a case fails), and whether
    README says the engine takes it (uint8 or uint16, gray, gray×1, RGB or RGBA, at least 1×1)."""
    h = draw(st.one_of(st.integers(1, 3), st.integers(1, 70), st.just(0)))
    w = draw(st.one_of(st.integers(1, 3), st.integers(1, 70), st.sampled_from([0, 257])))
    dtype = np.dtype(draw(st.sampled_from(DTYPES))).name
    c = draw(st.sampled_from(CHANNELS))
    shape = (h, w) if c is None else (h, w, c)
    fill = draw(st.sampled_from(["zero", "max", "random", "nan"]))
    valid = dtype in ("uint8", "uint16") and c in (None, 1, 3, 4) and h > 0 and w > 0
    return (shape, dtype, fill, draw(st.integers(0, 2**16))), valid


def make_image(shape: tuple[int, ...], dtype: str, fill: str, seed: int) -> np.ndarray:
    """All zeros, all the dtype's largest value, or random values (for floats with one NaN or
    infinity when `fill` is "nan")."""
    dt, rng = np.dtype(dtype), np.random.default_rng(seed)
    if fill == "zero":
        return np.zeros(shape, dt)
    if fill == "max":
        top = True if dt == np.bool_ else np.iinfo(dt).max if dt.kind in "iu" else np.finfo(dt).max
        return np.full(shape, top, dt)
    if dt.kind == "f":
        img = rng.normal(0, 100, shape).astype(dt)
        if fill == "nan" and img.size:
            img.flat[rng.integers(img.size)] = rng.choice([np.nan, np.inf, -np.inf])
        return img
    if dt == np.bool_:
        return rng.random(shape) < 0.5
    return rng.integers(np.iinfo(dt).min, np.iinfo(dt).max, shape, dtype=dt, endpoint=True)


@FUZZ
@given(st.lists(images(), min_size=1, max_size=3), st.sampled_from(["gradcam", "eigencam", "layercam"]))
def test_lists_of_images(engine, drawn, method) -> None:
    batch = [make_image(*spec) for spec, _ in drawn]
    got = outcome(lambda: engine.explain(batch, method, layer="layer1"))
    if all(valid for _, valid in drawn):
        assert_result(got, len(batch))
    else:
        assert isinstance(got, CamrtError), f"images README refuses gave a Result: {drawn}"


# --- preprocessed batches ---------------------------------------------------------------------------------


@st.composite
def batches(draw: st.DrawFn) -> tuple[tuple, bool]:
    """A 4-D float batch near the model's input, as the arguments of `make_batch`, and whether it is
    valid (float32, N×3×16×16, N ≥ 1, finite)."""
    n = draw(st.integers(0, 3))
    chw = draw(st.sampled_from([(3, *SIZE), (3, *SIZE), (1, *SIZE), (3, 16, 15), (4, *SIZE)]))
    dtype = draw(st.sampled_from(["float32", "float32", "float64", "float16"]))
    fill = draw(st.sampled_from(["zero", "normal", "large", "huge", "nan", "inf"]))
    valid = dtype == "float32" and chw == (3, *SIZE) and n > 0 and fill not in ("nan", "inf")
    return ((n, *chw), dtype, fill, draw(st.integers(0, 2**16))), valid


def make_batch(shape: tuple[int, ...], dtype: str, fill: str, seed: int) -> np.ndarray:
    """Zeros, N(0, 1), N(0, 1e4), ±float32's largest value, or N(0, 1) with one NaN or -inf."""
    rng = np.random.default_rng(seed)
    x = {"zero": lambda: np.zeros(shape),
         "large": lambda: rng.normal(0, 1e4, shape),
         "huge": lambda: np.finfo(np.float32).max * rng.choice([-1.0, 1.0], shape),
         }.get(fill, lambda: rng.normal(0, 1, shape))()
    with np.errstate(over="ignore"):  # float32's largest value is inf in float16
        x = x.astype(dtype)
    if fill in ("nan", "inf") and x.size:
        x.flat[rng.integers(x.size)] = np.nan if fill == "nan" else -np.inf
    return x


@FUZZ
@given(batches(), st.sampled_from(["gradcam", "gradcam++", "xgradcam", "eigengradcam", "scorecam"]),
       st.sampled_from(LAYERS))
def test_preprocessed_batches(engine, drawn, method, layer) -> None:
    spec, valid = drawn
    x = make_batch(*spec)
    got = outcome(lambda: engine.explain(x, method, layer=layer))
    if valid and spec[2] != "huge":
        assert_result(got, len(x))
    elif valid:  # finite, but the model's float32 arithmetic may overflow: a Result, or an error saying so
        assert isinstance(got, CamrtError) or assert_result(got, len(x)) is None
    else:
        assert isinstance(got, CamrtError), f"a batch README refuses gave a Result: {spec}"


# --- class indices ----------------------------------------------------------------------------------------

N_IMAGES = 3
INT_DTYPES = (np.int8, np.int16, np.int32, np.int64, np.uint8, np.uint32, np.uint64)


def class_values() -> st.SearchStrategy:
    """Single class indices of every kind: Python and numpy integers in and out of range, floats,
    strings, bools, None."""
    ints = st.integers(-3, K + 2) | st.sampled_from([2**31, 2**63 - 1, -(2**63), 2**64 - 1, 2**70])
    np_ints = st.builds(lambda v, t: np.array(v).astype(t)[()], st.integers(0, 2**64 - 1), st.sampled_from(INT_DTYPES))
    return st.one_of(ints, np_ints, st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=3),
                     st.booleans(), st.none(), st.just(np.float32(1.0)))


def expected_classes(class_idx: object) -> np.ndarray | None:
    """The classes README promises for `class_idx` and N_IMAGES images, or None if it must be refused:
    None → all -1; an integer (not a bool) in [-1, K) → that class for all; a list of 1 or N such
    integers."""
    def one(v: object) -> int | None:
        if isinstance(v, (bool, np.bool_)) or not isinstance(v, (int, np.integer)):
            return None
        return int(v) if -1 <= int(v) < K else None

    if class_idx is None:
        return np.full(N_IMAGES, -1)
    if isinstance(class_idx, (list, tuple, np.ndarray)):
        values = [one(v) for v in class_idx]
        if len(values) not in (1, N_IMAGES) or None in values:
            return None
        return np.array(values * (N_IMAGES // len(values)))
    v = one(class_idx)
    return None if v is None else np.full(N_IMAGES, v)


@FUZZ
@given(st.one_of(class_values(), st.lists(class_values(), max_size=5),
                 st.lists(st.integers(-1, K - 1), min_size=0, max_size=5),
                 st.lists(st.integers(-1, K - 1), min_size=N_IMAGES, max_size=N_IMAGES).map(np.array)))
def test_class_indices(engine, class_idx) -> None:
    x = np.random.default_rng(0).normal(size=(N_IMAGES, 3, *SIZE)).astype(np.float32)
    got = outcome(lambda: engine.explain(x, "gradcam", class_idx=class_idx))
    want = expected_classes(class_idx)
    if want is None:
        assert isinstance(got, CamrtError), f"class_idx={class_idx!r} was taken as {got.class_idx}"
    else:
        assert_result(got, N_IMAGES, want)


@FUZZ
@given(st.lists(st.lists(st.integers(-2, K), max_size=3), min_size=1, max_size=3))
def test_nested_class_indices(engine, class_idx) -> None:
    """Nested lists: ragged ones are refused; regular ones are read flat (an N×1 array is one class per
    image), so they give the classes of the flat list or an error, never another exception."""
    x = np.random.default_rng(0).normal(size=(N_IMAGES, 3, *SIZE)).astype(np.float32)
    got = outcome(lambda: engine.explain(x, "gradcam", class_idx=class_idx))
    flat = [v for row in class_idx for v in row]
    want = expected_classes(flat) if len({len(row) for row in class_idx}) == 1 else None
    if want is None:
        assert isinstance(got, CamrtError), f"class_idx={class_idx!r} was taken as {got.class_idx}"
    else:
        assert_result(got, N_IMAGES, want)


# --- methods and their options ----------------------------------------------------------------------------

# The largest value an option may take in the fuzz, to keep the runs cheap on a 16×16 input with 6 and 8
# channels (rise's n masks, opticam's steps, ...); other integer options range up to 64.
CHEAP = {"n": 3, "steps": 3}
WORDS = st.sampled_from(["onehot", "gaussian", "mask", "input", "true", "", "3", "nan"])


def option_values(method: str, name: str) -> st.SearchStrategy:
    """Values for one option, two in three of its default's type (integers from 1, numbers around
    [0, 1] and far outside it, choice words, bools), the rest wrong in some way (zero and negative
    integers, non-finite numbers, other types, numpy scalars)."""
    default = METHODS[method].options.defaults()[name]
    like = {bool: st.booleans(), int: st.integers(1, CHEAP.get(name, 64)), str: WORDS,
            float: st.floats(0.0, 1.0) | st.sampled_from([1e-30, 2.0, 50.0, 1e30])}[type(default)]
    wrong = st.one_of(st.integers(-2, 0), st.floats(allow_nan=True, allow_infinity=True), st.booleans(), WORDS,
                      st.none(), st.just(np.int64(2)), st.just(np.float32(0.25)), st.just([1]))
    return st.one_of(like, like, wrong)


@st.composite
def method_options(draw: st.DrawFn, method: str) -> dict[str, object]:
    """Options for `method` by name: the costly ones always (their defaults take thousands of runs),
    the others sometimes; now and then a name it does not take."""
    options = {opt: draw(option_values(method, opt)) for opt in METHODS[method].options.names()
               if opt in CHEAP or draw(st.booleans())}
    if draw(st.integers(0, 9)) == 0:
        options[draw(st.sampled_from(["bogus", "n", "sigma", "seed_", "chunk"]))] = 1
    return options


@settings(FUZZ, max_examples=12)
@pytest.mark.parametrize("method", list(METHODS))
@given(data=st.data(), layer=st.sampled_from([None, "layer1", "layer2", LAYERS]), seed=st.integers(0, 2**64))
def test_method_options(engine, method, data, layer, seed) -> None:
    """Every method, with options `configure` accepts or refuses: refused ones are refused by `explain`
    too; accepted ones give a Result, or an error that the method does not apply (CAM on layer1,
    ViT-ReciproCAM on this CNN, the model's own map or relevance where it has none) or that float32 overflowed
    (never a NaN map)."""
    options = data.draw(method_options(method), label="options")
    x = np.random.default_rng(1).normal(size=(2, 3, *SIZE)).astype(np.float32)
    configured = outcome(lambda: METHODS[method].configure(options))
    got = outcome(lambda: engine.explain(x, method, layer=layer, seed=seed, **options))
    if isinstance(configured, CamrtError):
        assert isinstance(got, CamrtError), f"{method} {options}: refused by configure, taken by explain"
    elif isinstance(got, CamrtError):
        applies = not (method == "cam" and layer not in (None, "layer2")) and not (
            method == "vitreciprocam" and "first layer norm of a transformer block" in str(got)) and not (
            method == "model-map" and "reads the model's own map output" in str(got)) and not (
            method == "relevancecam" and "reads the layer-wise relevance" in str(got))
        assert not applies or "overflowed" in str(got), (options, got)
    else:
        assert_result(got, len(x))


LAYER_VALUES = st.one_of(st.sampled_from([None, "layer1", "layer2", LAYERS, ("layer2", "layer1")]),
                         st.sampled_from(["", "conv1", "layer3", [], ["layer1", None], ["layer1", 5], 5, b"layer1",
                                          {"layer1": 1}]))
SEEDS = st.one_of(st.integers(0, 2**64), st.sampled_from([-1, -(2**40), 1.5, "1", None, True, np.uint32(7)]))
NAMES = st.one_of(st.sampled_from(["gradcam", "smoothgradcam++", "rise", "ablationcam"]),
                  st.sampled_from(["", "GradCAM", "grad cam", "all", "gradcam,", None, 3, ["gradcam"],
                                   {"gradcam": 1}, b"gradcam"]))


@FUZZ
@given(NAMES, LAYER_VALUES, SEEDS)
def test_method_names_layers_and_seeds(engine, name, layer, seed) -> None:
    """A method name, layer and seed of any type: a Result when all three are valid (a method of
    METHODS; None, an exported layer or a non-empty list of them; a non-negative integer seed), else
    a CamrtError."""
    x = np.random.default_rng(1).normal(size=(2, 3, *SIZE)).astype(np.float32)
    options = {"n": 2} if name in ("smoothgradcam++", "rise") else {}
    got = outcome(lambda: engine.explain(x, name, layer=layer, seed=seed, **options))
    name_ok = isinstance(name, str) and name in METHODS
    listed = isinstance(layer, (list, tuple)) and len(layer) > 0 and all(la in LAYERS for la in layer)
    layer_ok = layer is None or (isinstance(layer, str) and layer in LAYERS) or listed
    seed_ok = isinstance(seed, (int, np.integer)) and not isinstance(seed, bool) and seed >= 0
    if name_ok and layer_ok and seed_ok:
        assert_result(got, len(x))
    else:
        assert isinstance(got, CamrtError), f"{name!r} layer={layer!r} seed={seed!r} gave a Result"
