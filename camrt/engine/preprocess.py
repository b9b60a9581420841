"""From RGB images of any size to the model's preprocessed input, with numpy only.

The resize is the antialiased bilinear one of PIL and torchvision (`antialias=True`): a triangle
filter, widened by the scale factor when shrinking, with the same weights as the dense filter (not
an approximation). It streams: the image is cut into strips of columns, and each strip is read in
short runs of rows straight from its uint8/uint16 pixels, converted (RGBA composited), and added
into the output rows it reaches; then the strip, now h rows high, is resized across its columns.
The image is never copied whole: the extra memory is a strip's two run sums at the output's
height (2 × 2 MB) and a 1 MB block, whatever the image's size (figures in docs/benchmarks.md).

Shrinking uses that the filter's support is then exactly the spacing of the output pixels: an
input pixel at `t` (0 ≤ t < 1) of the way from output centre `o` to output centre `o + 1` has
weight `1 − t` in output `o` and `t` in output `o + 1`, and in no other. So the pixels fall into
runs, one between each two output centres, and each output is two weighted sums over two runs:
about two multiply-adds per input value. Growing (or keeping a size) reads two input pixels per
output pixel, clamped at the borders.

No BLAS call (numpy's `einsum` without `optimize` uses its own loops): BLAS threads keep spinning
after a call and slow the ONNX Runtime run that follows on a small machine.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from camrt.errors import InputError
from camrt.manifest import Preprocessing

# Values (rows × columns × channels) per block of rows read at once: 1 MB as float32.
_BLOCK_VALUES = 1 << 18
# Values of a strip once resized to the output's height (2 MB as float32): sets the strips' width.
_STRIP_VALUES = 1 << 19
# Runs longer than this many pixels (an image over 64× the output's size) are summed in float64:
# float32 sums of n terms carry a relative error up to n·2⁻²⁴.
_FLOAT32_RUN = 64


def _checked(image: np.ndarray) -> tuple[np.ndarray, float]:
    """The image as an H×W×C view (C = 1, 3 or 4) and its full-scale value (255 or 65535)."""
    img = np.asarray(image)
    if img.dtype == np.uint8:
        scale = 255.0
    elif img.dtype == np.uint16:
        scale = 65535.0
    else:
        raise InputError(f"images must be uint8 or uint16 arrays (got {img.dtype}); convert them first "
                         "(e.g. np.clip(x * 255, 0, 255).astype(np.uint8) for [0, 1] floats), or pass a "
                         "preprocessed float32 N×C×H×W batch if you normalised them yourself")
    if img.ndim == 2:
        img = img[:, :, None]
    if img.ndim != 3 or img.shape[2] not in (1, 3, 4):
        raise InputError(f"an image must be H×W (gray), H×W×1, H×W×3 (RGB) or H×W×4 (RGBA); got shape {image.shape}")
    if min(img.shape[:2]) < 1:
        raise InputError(f"an image needs at least one row and one column; got shape {image.shape}")
    return img, scale


def _composite(block: np.ndarray, scale: float) -> np.ndarray:
    """float32 pixels on [0, scale] from an h×w×C block: RGBA composited over white,
    `rgb·a + scale·(1 − a)` with `a = alpha / scale` (the formula of camrt.visual.overlay.read_image);
    gray (C = 1) and RGB unchanged."""
    if block.shape[2] != 4:
        return block.astype(np.float32)
    x = block[:, :, :3].astype(np.float32)
    x -= scale  # as scale + a·(rgb − scale), in place: a quarter of the time of the formula as written
    x *= block[:, :, 3:] / np.float32(scale)  # a = 1 exactly when opaque: the RGB itself, unrounded
    x += scale
    return x


def to_rgb_float(image: np.ndarray) -> np.ndarray:
    """An H×W×3 float32 image in [0, 1], by the one rule for image kinds: uint8 (÷255) or uint16
    (÷65535) RGB; grayscale H×W or H×W×1 replicated to three channels; RGBA composited over white,
    `rgb·a + 1·(1 − a)` with `a` the alpha on [0, 1], as `camrt explain` does when it reads a file.

    Raises:
        InputError: another dtype (bool, float, signed or wider integers), another shape, or an
            image with no rows or columns.
    """
    img, scale = _checked(image)
    rgb = _composite(img, scale) / np.float32(scale)
    return np.repeat(rgb, 3, axis=2) if rgb.shape[2] == 1 else rgb


@dataclass(frozen=True)
class _Runs:
    """A shrinking axis, `n_in` > `n_out`. Input i is in run `g[i]` (−1 … n_out−1: the inputs
    between output centres g and g + 1) at fraction `t[i]` of the way, and adds `(1 − t)·x` to
    output g and `t·x` to output g + 1; `w` is (1 − t, t) as a 2 × n_in array, `starts` the runs'
    first inputs (run g starts at `starts[g + 1]`), `norm` each output's total weight, `dtype` the
    sums' precision."""

    g: np.ndarray
    t: np.ndarray
    w: np.ndarray
    starts: np.ndarray
    norm: np.ndarray
    dtype: type


@dataclass(frozen=True)
class _Taps:
    """A growing (or same-size) axis: output o is `(1 − f[o])·x[i0[o]] + f[o]·x[i1[o]]`."""

    i0: np.ndarray
    i1: np.ndarray
    f: np.ndarray


def _axis(n_in: int, n_out: int) -> _Runs | _Taps:
    """The weights from `n_in` to `n_out` samples along one axis. Positions are exact fractions:
    input i's centre falls at ((2i + 1)·n_out − n_in) / (2·n_in) in output pixel units (output o's
    centre at o), and output o's centre at ((2o + 1)·n_in − n_out) / (2·n_out) in input units."""
    if n_in > n_out:
        num = (2 * np.arange(n_in, dtype=np.int64) + 1) * n_out - n_in
        g = num // (2 * n_in)
        t = (num - g * (2 * n_in)) / (2.0 * n_in)
        starts = np.flatnonzero(np.diff(g, prepend=-2))  # runs −1 … n_out−1, none empty when shrinking
        lo, hi = np.add.reduceat(1.0 - t, starts), np.add.reduceat(t, starts)
        dtype = np.float32 if n_in <= _FLOAT32_RUN * n_out else np.float64
        return _Runs(g, t.astype(dtype), np.stack([1.0 - t, t]).astype(dtype), starts, lo[1:] + hi[:-1], dtype)
    num = (2 * np.arange(n_out, dtype=np.int64) + 1) * n_in - n_out
    i0 = num // (2 * n_out)
    f = (num - i0 * (2 * n_out)) / (2.0 * n_out)
    f[i0 < 0] = 0.0  # before the first pixel's centre: the first pixel alone
    i0 = np.clip(i0, 0, n_in - 1)
    return _Taps(i0, np.minimum(i0 + 1, n_in - 1), f.astype(np.float32))


def _down(strip: np.ndarray, scale: float, rows: _Runs | _Taps, h: int) -> np.ndarray:
    """An H×S×C strip of the image resized to h×S×C' (C' = 1 or 3) down its rows, on [0, scale];
    shrinking leaves the outputs unnormalised (÷ `rows.norm` to do)."""
    if isinstance(rows, _Taps):
        return _composite(strip[rows.i0], scale) * (1.0 - rows.f)[:, None, None] \
            + _composite(strip[rows.i1], scale) * rows.f[:, None, None]
    n_rows, width, n_ch = strip.shape
    sums = np.zeros((2, h + 1, width, min(n_ch, 3)), rows.dtype)  # run g's Σ(1 − t)·x and Σ t·x at g + 1
    block = max(1, _BLOCK_VALUES // (width * n_ch))
    for k, (a, b) in enumerate(zip(rows.starts, [*rows.starts[1:], n_rows], strict=True)):
        if b - a <= block:  # one einsum straight into its place: each numpy call costs, 225 runs a strip
            np.einsum("kl,lsc->ksc", rows.w[:, a:b], _composite(strip[a:b], scale), out=sums[:, k])
            continue
        for r0, r1 in zip(range(a, b, block), [*range(a + block, b, block), b], strict=True):  # a long run
            sums[:, k] += np.einsum("kl,lsc->ksc", rows.w[:, r0:r1], _composite(strip[r0:r1], scale))
    lo, hi = sums[0, 1:], sums[1, :-1]  # output o: Σ(1 − t)·x over run o, Σ t·x over run o − 1
    lo += hi
    return lo


def _across(v: np.ndarray, cols: _Runs | _Taps, c0: int, c1: int, out: np.ndarray) -> None:
    """Add the columns c0 … c1 of the image, resized down to `v` (h×S×C), into `out` (h×(w + 2)×C,
    output column o at o + 1), resized across; shrinking leaves them unnormalised."""
    if isinstance(cols, _Taps):  # one strip: the image is narrower than the output
        out[:, 1:-1] = v[:, cols.i0] * (1.0 - cols.f)[:, None] + v[:, cols.i1] * cols.f[:, None]
        return
    starts = cols.starts[(cols.starts >= c0) & (cols.starts < c1)] - c0  # the strip holds whole runs
    v = v.astype(cols.dtype, copy=False)  # reduceat's own dtype= would cast a whole copy first
    n, width, n_ch = v.shape
    vt = (v.reshape(n, -1) * np.repeat(cols.t[c0:c1], n_ch)).reshape(v.shape)  # flat rows: broadcasting over C is slow
    hi = np.add.reduceat(vt, starts, axis=1)
    lo = np.add.reduceat(v, starts, axis=1) - hi
    g0 = cols.g[c0] + 1  # the strip's runs are g0 − 1, g0, ... in order: slices, not fancy indices
    out[:, g0:g0 + len(starts)] += lo
    out[:, g0 + 1:g0 + 1 + len(starts)] += hi


def _strips(n_cols: int, cols: _Runs | _Taps, h: int, n_ch: int) -> list[int]:
    """Column boundaries of strips of about `_STRIP_VALUES` once h rows high, at run starts."""
    width = max(1, _STRIP_VALUES // (h * n_ch))
    if isinstance(cols, _Taps) or n_cols <= width:
        return [0, n_cols]
    cuts = cols.starts[np.searchsorted(cols.starts, np.arange(width, n_cols, width))]
    return [0, *np.unique(cuts[cuts > 0]).tolist(), n_cols]


def _resize(img: np.ndarray, scale: float, size: tuple[int, int]) -> np.ndarray:
    """An H×W×C uint8/uint16 image (C = 1, 3, 4) resized to h×w×C' (C' = 1 or 3), float64 on [0, scale]."""
    (h, w), (n_rows, n_cols, n_ch) = size, img.shape
    rows, cols = _axis(n_rows, h), _axis(n_cols, w)
    out = np.zeros((h, w + 2, min(n_ch, 3)))
    bounds = _strips(n_cols, cols, h, min(n_ch, 3))
    for c0, c1 in zip(bounds[:-1], bounds[1:], strict=True):
        _across(_down(img[:, c0:c1], scale, rows, h), cols, c0, c1, out)
    out = out[:, 1:-1]
    if isinstance(rows, _Runs):
        out /= rows.norm[:, None, None]
    if isinstance(cols, _Runs):
        out /= cols.norm[:, None]
    return out


def preprocess(images: Sequence[np.ndarray], size: tuple[int, int], prep: Preprocessing) -> np.ndarray:
    """Resize each image to `size` (H, W) and normalise it: a float32 N×3×H×W batch.

    Images follow `to_rgb_float`'s rule for image kinds; the resize is antialiased bilinear (see the
    module docstring) and streams, so the extra memory is a few MB whatever the image's size.

    Raises:
        InputError: an image that `to_rgb_float` refuses; the message names its index.
    """
    mean = np.asarray(prep.mean, np.float64)[:, None, None]
    std = np.asarray(prep.std, np.float64)[:, None, None]
    h, w = size
    out = np.empty((len(images), 3, h, w), np.float32)
    for i, image in enumerate(images):
        try:
            img, scale = _checked(image)
        except InputError as e:
            raise InputError(f"image {i}: {e}") from None
        resized = _resize(img, scale, (h, w)).transpose(2, 0, 1) / scale
        out[i] = (resized - mean) / std  # a gray image's one channel broadcasts to three
    return out


def check_batch(x: np.ndarray, expected_chw: tuple[int, int, int]) -> np.ndarray:
    """`x` itself if it is a usable preprocessed batch: float32 N×C×H×W with C×H×W the model's,
    N ≥ 1 and only finite values.

    Raises:
        InputError: another dtype or shape, an empty batch, or NaN/infinite values (naming the images).
    """
    chw = "×".join(map(str, expected_chw))
    if x.ndim != 4 or tuple(x.shape[1:]) != tuple(expected_chw):
        raise InputError(f"a preprocessed batch must be N×{chw} (the model's input), got shape {x.shape}; "
                         "pass a list of images to have them resized and normalised")
    if x.dtype != np.float32:
        raise InputError(f"a preprocessed batch must be float32, got {x.dtype}; convert it with x.astype(np.float32)")
    if x.shape[0] == 0:
        raise InputError("no images given")
    bad = nonfinite_images(x)
    if bad:
        raise InputError(f"the batch has NaN or infinite values ({images_text(bad)}); "
                         "check the preprocessing that produced it (e.g. a zero std, or a division by zero)")
    return x


def nonfinite_images(*arrays: np.ndarray) -> list[int]:
    """The images (indices along the first axis, shared by `arrays`) where any array holds NaN or an
    infinity. One sum per array, in its own precision, clears the common case without a full-size
    temporary: a finite sum means every value is finite (NaN and infinities propagate); a sum that
    overflows only sends the array to the per-image check, which decides. (float64 sums cost about
    60 µs more per resnet input; docs/benchmarks.md, Peers, second run.)"""
    bad = np.zeros(len(arrays[0]) if arrays else 0, bool)
    # inf + -inf in the sum is NaN, which is what we look for; a sum that overflows goes to the exact check
    with np.errstate(invalid="ignore", over="ignore"):
        for a in arrays:
            if not np.isfinite(_total(a)):
                bad |= ~np.isfinite(a.reshape(len(a), -1)).all(axis=1)
    return np.flatnonzero(bad).tolist()


_ROW = 1024


def _total(a: np.ndarray) -> np.floating:
    """The sum of `a`'s values (NaN and infinities propagate as in ``a.sum()``). A large contiguous
    array is summed as rows of 1024 added column-wise first, which numpy vectorises: 0.41 ms
    against ``a.sum()``'s 0.92 ms for a 4×21×256×256 segmentation output on one core."""
    if not a.flags.c_contiguous or a.size < 16 * _ROW:
        return a.sum()
    flat = a.reshape(-1)
    cut = flat.size - flat.size % _ROW
    return flat[:cut].reshape(-1, _ROW).sum(axis=0).sum() + flat[cut:].sum()


def images_text(indices: list[int]) -> str:
    """'image 3' or 'images 0, 2, ...' (at most five shown), for error messages."""
    shown = ", ".join(map(str, indices[:5])) + (", ..." if len(indices) > 5 else "")
    return f"image{'s' if len(indices) > 1 else ''} {shown}"
