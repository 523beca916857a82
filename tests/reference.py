"""Independent brute-force reference for the local NCC, used by the tests.

Import it from any test module as::

    from reference import brute_force_ncc

``tests/conftest.py`` puts the ``tests/`` directory on ``sys.path`` (whatever pytest's
import mode), so this works from every module under ``tests/``.

Nothing here shares code with ``napari_ncc``: the borders come from ``numpy.pad`` (scipy's
"reflect" is NumPy's "symmetric", and so on, see :data:`PAD_MODES`), every window is
materialised with ``sliding_window_view``, and the weighted Pearson correlation is computed
per window in float64 with two passes (mean first, then centred moments) after a shift by
the mid-range, which is exact enough for any data the tests use (even integers at an offset
of 1e15). It is slow and memory hungry by design: keep the arrays to a few thousand pixels.
"""

from __future__ import annotations

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

#: scipy.ndimage border mode -> numpy.pad mode (constant pads with zeros).
PAD_MODES = {
    "reflect": "symmetric",
    "grid-mirror": "symmetric",
    "mirror": "reflect",
    "nearest": "edge",
    "wrap": "wrap",
    "grid-wrap": "wrap",
    "constant": "constant",
    "grid-constant": "constant",
}


def gaussian_window_1d(radius: int) -> np.ndarray:
    """Gaussian weights with ``sigma = radius / 2``, truncated at the radius, summing to 1."""
    if radius == 0:
        return np.ones(1)
    offsets = np.arange(-radius, radius + 1, dtype=np.float64)
    sigma = radius / 2.0
    weights = np.exp(-(offsets**2) / (2.0 * sigma**2))
    return weights / weights.sum()


def window_weights(radii, window: str) -> np.ndarray:
    """Normalised nD window weights (outer product of the 1D ones), shape ``2*r+1`` per axis."""
    weights = np.ones(())
    for r in radii:
        if window == "box":
            w1 = np.full(2 * r + 1, 1.0 / (2 * r + 1))
        elif window == "gaussian":
            w1 = gaussian_window_1d(r)
        else:
            raise ValueError(f"reference: unknown window {window!r}")
        weights = np.multiply.outer(weights, w1)
    return weights / weights.sum()


def _axes_and_radii(ndim: int, radius, axes) -> tuple[tuple[int, ...], tuple[int, ...]]:
    if axes is None:
        axes = tuple(range(ndim))
    elif np.ndim(axes) == 0:
        axes = (int(axes),)
    axes = tuple(int(ax) % ndim for ax in axes)
    radii = (int(radius),) * len(axes) if np.ndim(radius) == 0 else tuple(int(r) for r in radius)
    assert len(radii) == len(axes)
    return axes, radii


def _window_geometry(ndim: int, radius, axes):
    """Windowed axes (sorted) with their radii, ``np.pad`` widths and the window shape."""
    axes, radii = _axes_and_radii(ndim, radius, axes)
    order = sorted(range(len(axes)), key=lambda i: axes[i])
    axes = tuple(axes[i] for i in order)
    radii = tuple(radii[i] for i in order)
    pad_width = [(0, 0)] * ndim
    for ax, r in zip(axes, radii, strict=True):
        pad_width[ax] = (r, r)
    return axes, radii, pad_width, tuple(2 * r + 1 for r in radii)


def brute_force_ncc(
    image0,
    image1,
    radius=3,
    *,
    window: str = "box",
    mode: str = "reflect",
    fill_value: float = 0.0,
    axes=None,
    flat_rtol: float = 0.0,
) -> np.ndarray:
    """Per-window weighted Pearson correlation of two images, in float64.

    Parameters
    ----------
    image0, image1 : array_like
        Images of the same shape (any real dtype; converted to float64).
    radius : int or sequence of int
        Half-width per windowed axis (one int for all of them).
    window : {"box", "gaussian"}
        Uniform weights, or separable Gaussian weights (``sigma = radius / 2``, truncated
        at the radius, normalised).
    mode : str
        scipy.ndimage border mode, mapped to ``numpy.pad`` by :data:`PAD_MODES`.
    fill_value : float
        Written where either window is flat.
    axes : int or sequence of int, optional
        Windowed axes (all by default); a window has extent 1 along the others.
    flat_rtol : float
        A window is flat when all its values are equal, or (if ``flat_rtol > 0``) when its
        weighted standard deviation is at most ``flat_rtol`` times the image's half-range
        (max ``|x - midrange|``, the constant border value included in mode "constant").

    Returns
    -------
    ncc : ndarray of float64
        Same shape as the inputs, values in [-1, 1] or `fill_value`.
    """
    a = np.asarray(image0).astype(np.float64)
    b = np.asarray(image1).astype(np.float64)
    assert a.shape == b.shape
    axes, radii, pad_width, window_shape = _window_geometry(a.ndim, radius, axes)
    pad_mode = PAD_MODES[mode]
    weights = window_weights(radii, window).ravel()

    results = []
    stds = []
    flats = []
    for image in (a, b):
        padded = np.pad(image, pad_width, mode=pad_mode)
        view = sliding_window_view(padded, window_shape, axis=axes)
        view = view.reshape(*a.shape, -1)  # every window as a flat vector of its values
        # Shift by the padded data's mid-range first (exact for the data the tests use:
        # Sterbenz), so that products with the weights keep full precision even at an
        # offset of 1e15; then a two-pass mean with one refinement step.
        shift = 0.5 * (padded.min() + padded.max())
        shifted = view - shift
        mean = shifted @ weights
        mean += (shifted - mean[..., None]) @ weights
        centred = shifted - mean[..., None]
        var = (centred * centred) @ weights
        results.append(centred)
        stds.append(np.sqrt(var))
        flat = view.max(axis=-1) == view.min(axis=-1)
        if flat_rtol > 0:
            values = image if pad_mode != "constant" else np.append(image.ravel(), 0.0)
            lo, hi = values.min(), values.max()
            half_range = (hi - lo) / 2.0
            flat |= np.sqrt(var) <= flat_rtol * half_range
        flats.append(flat)
    cov = (results[0] * results[1]) @ weights
    flat = flats[0] | flats[1]
    with np.errstate(invalid="ignore", divide="ignore"):
        ncc = np.clip(cov / (stds[0] * stds[1]), -1.0, 1.0)
    return np.where(flat, fill_value, ncc)


def brute_force_masked_ncc(
    image0,
    image1,
    mask,
    radius=3,
    *,
    window: str = "box",
    mode: str = "reflect",
    fill_value: float = 0.0,
    axes=None,
    min_fraction: float = 0.5,
    fraction_atol: float = 1e-9,
):
    """Per-window weighted Pearson correlation over the pixels where `mask` is true.

    Parameters
    ----------
    image0, image1 : array_like
        Images of the same shape; values under a false mask are never used (NaN is fine).
    mask : array_like of bool
        True where the pixels are data. Padded like the images; with mode "constant" the
        pixels beyond the border are data (value 0), as in the unmasked map.
    radius, window, mode, fill_value, axes
        As in :func:`brute_force_ncc`.
    min_fraction : float
        A window whose true pixels carry less than ``min_fraction - fraction_atol`` of its
        (normalised) weight gets `fill_value`.

    Returns
    -------
    ncc : ndarray of float64
        Same shape as the inputs; `fill_value` where a window has too few true pixels or
        its true values of either image are all equal.
    count : ndarray of int
        Number of true pixels in each window (the constant border included).
    """
    mask = np.asarray(mask, dtype=bool)
    a = np.where(mask, np.asarray(image0, dtype=np.float64), 0.0)
    b = np.where(mask, np.asarray(image1, dtype=np.float64), 0.0)
    assert a.shape == b.shape == mask.shape
    axes, radii, pad_width, window_shape = _window_geometry(a.ndim, radius, axes)
    pad_mode = PAD_MODES[mode]

    def windows(x, **kw):
        padded = np.pad(x, pad_width, mode=pad_mode, **kw)
        return sliding_window_view(padded, window_shape, axis=axes).reshape(*a.shape, -1)

    inside = windows(mask, constant_values=True) if pad_mode == "constant" else windows(mask)
    weights = window_weights(radii, window).ravel() * inside  # zero on masked-off pixels
    total = weights.sum(axis=-1)
    count = inside.sum(axis=-1)
    with np.errstate(invalid="ignore", divide="ignore"):
        normalised = weights / total[..., None]

    centred = []
    flat = count == 0
    for image in (a, b):
        view = windows(image)
        values = view[inside]
        shift = 0.5 * (values.min() + values.max()) if values.size else 0.0
        shifted = np.where(inside, view - shift, 0.0)
        mean = np.nansum(shifted * normalised, axis=-1)
        deviation = np.where(inside, shifted - mean[..., None], 0.0)
        centred.append(deviation)
        lo = np.where(inside, view, np.inf).min(axis=-1)
        hi = np.where(inside, view, -np.inf).max(axis=-1)
        flat |= lo == hi
    da, db = centred
    with np.errstate(invalid="ignore", divide="ignore"):
        cov = np.nansum(da * db * normalised, axis=-1)
        var_a = np.nansum(da * da * normalised, axis=-1)
        var_b = np.nansum(db * db * normalised, axis=-1)
        ncc = np.clip(cov / np.sqrt(var_a * var_b), -1.0, 1.0)
    too_few = total < min_fraction - fraction_atol
    return np.where(flat | too_few, fill_value, ncc), count


def flat_mask(image0, image1, radius=3, *, mode: str = "reflect", axes=None) -> np.ndarray:
    """True where either window contains a single distinct value."""
    a = np.asarray(image0).astype(np.float64)
    b = np.asarray(image1).astype(np.float64)
    axes, _, pad_width, window_shape = _window_geometry(a.ndim, radius, axes)
    mask = np.zeros(a.shape, dtype=bool)
    for image in (a, b):
        padded = np.pad(image, pad_width, mode=PAD_MODES[mode])
        view = sliding_window_view(padded, window_shape, axis=axes).reshape(*a.shape, -1)
        mask |= view.max(axis=-1) == view.min(axis=-1)
    return mask


def correlated_pair(rng: np.random.Generator, shape, dtype=np.float64, *, lo=None, hi=None):
    """Two random images of `shape` and `dtype` whose local correlation varies in [-1, 1].

    Values are drawn in ``[lo, hi]`` (defaults depend on the dtype, within its limits):
    ``image1`` mixes a smooth, position-dependent multiple of ``image0`` (positive in some
    places, negative in others) with independent noise, so the map covers the whole range.
    """
    dtype = np.dtype(dtype)
    if dtype == np.bool_:
        a = rng.random(shape) < 0.5
        flip = rng.random(shape) < np.linspace(0.05, 0.95, int(np.prod(shape))).reshape(shape)
        return a, a ^ flip
    if lo is None or hi is None:
        if dtype.kind == "f":
            lo, hi = -50.0, 50.0
        else:
            info = np.iinfo(dtype)
            lo, hi = max(info.min, -1000), min(info.max, 1000)
            if dtype.itemsize == 1:
                lo, hi = info.min, info.max
    size = int(np.prod(shape))
    base = rng.random(shape)
    # A coefficient in [-1, 1] that drifts along the flattened index.
    coef = np.cos(np.linspace(0.0, 3.0 * np.pi, size)).reshape(shape)
    other = coef * base + (1.0 - np.abs(coef)) * rng.random(shape) + 0.3 * rng.random(shape)
    other = (other - other.min()) / max(other.max() - other.min(), 1e-12)
    out = []
    for x in (base, other):
        x = lo + (hi - lo) * x
        if dtype.kind in "iu":
            x = np.clip(np.rint(x), lo, hi)
        out.append(x.astype(dtype))
    return out[0], out[1]
