"""Local normalized cross-correlation (NCC) of two images: the NumPy core.

Nothing here knows of napari or Dask. :func:`plan_ncc` validates arguments once (the lazy
layer uses it too), :func:`ncc_block` computes the map of a block whose border values are
read through index maps, and :func:`local_ncc` is the in-memory entry point.
"""

from __future__ import annotations

import itertools
import math
import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from numbers import Integral, Real

import numpy as np

from . import _kernels
from ._borders import border_index_map, canonical_mode
from ._validation import WINDOWS, check_image, check_same_shape, normalize_axes

# Re-exported for the modules that still import them from here.
_normalize_axes = normalize_axes
__all__ = [
    "WINDOWS",
    "NCCPlan",
    "check_image",
    "check_mask",
    "local_ncc",
    "ncc_block",
    "plan_ncc",
]


#: A window is flat when its standard deviation is at most this fraction of the block's
#: half-range (max |x - centre|) -- below that, float64 running sums cannot resolve it.
FLAT_RTOL = 1e-6

#: A window is used when the fraction of its weight on true mask pixels is at least
#: ``min_fraction - MIN_FRACTION_ATOL``: a fraction equal to `min_fraction` up to the rounding
#: of either (1 of 5 pixels against 0.2) reaches it.
MIN_FRACTION_ATOL = 1e-9

#: Rows per independent strip: bounds the drift of running sums and feeds the threads.
_STRIP_ROWS = 2048


@dataclass(frozen=True)
class NCCPlan:
    """Validated arguments of a local NCC computation.

    Attributes
    ----------
    shape : tuple of int
        Shape of both images.
    axes : tuple of int
        Windowed axes, non-negative and increasing.
    radius : tuple of int
        Window half-width along each of `axes`.
    window : {"box", "gaussian"}
        Window weights.
    mode : str
        Canonical ``scipy.ndimage`` border mode.
    fill_value : float
        Value written where either window is flat (or, with a mask, where too few of its
        pixels are true).
    min_fraction : float
        With a mask: the fraction of a window's weight (of its pixels, for the box window)
        that must lie on true pixels, in (0, 1].
    """

    shape: tuple[int, ...]
    axes: tuple[int, ...]
    radius: tuple[int, ...]
    window: str
    mode: str
    fill_value: float
    min_fraction: float = 0.5

    @property
    def depth(self) -> dict[int, int]:
        """Halo needed on every axis (the radius on windowed axes, else 0)."""
        return {
            ax: self.radius[self.axes.index(ax)] if ax in self.axes else 0
            for ax in range(len(self.shape))
        }


def _normalize_radius(radius, axes: tuple[int, ...]) -> tuple[int, ...]:
    def as_int(r):
        if isinstance(r, bool) or not isinstance(r, Integral):
            raise TypeError(f"radius must be an integer or a sequence of integers, got {radius!r}")
        return int(r)

    if isinstance(radius, np.ndarray) and radius.ndim == 0:
        radius = radius[()]  # a NumPy scalar, like np.int64(3)
    if isinstance(radius, Sequence) or isinstance(radius, np.ndarray):
        values = tuple(as_int(r) for r in radius)
        if len(values) != len(axes):
            raise ValueError(
                f"radius has {len(values)} values but {len(axes)} axes are windowed "
                f"(axes={axes}); give one radius per windowed axis or a single int"
            )
    else:
        values = (as_int(radius),) * len(axes)
    if any(r < 0 for r in values):
        raise ValueError(f"radius must be >= 0, got {radius!r}")
    if not any(values):
        raise ValueError(
            "radius must be >= 1 on at least one axis (a 1-pixel window has no variance)"
        )
    return values


def plan_ncc(
    shape0: Sequence[int],
    shape1: Sequence[int],
    radius=3,
    *,
    window: str = "box",
    mode: str = "reflect",
    fill_value: float = 0.0,
    axes=None,
    min_fraction: float = 0.5,
) -> NCCPlan:
    """Validate the arguments of :func:`local_ncc` for images of the given shapes.

    Returns
    -------
    plan : NCCPlan
        Normalised arguments: windowed axes sorted, a radius per windowed axis, and
        windowed axes with a radius of 0 dropped.

    Raises
    ------
    ValueError, TypeError
        With a message naming the offending argument.
    """
    shape0, shape1 = tuple(shape0), tuple(shape1)
    check_same_shape(shape0, shape1)
    if window not in WINDOWS:
        raise ValueError(f"unknown window {window!r}; expected one of {', '.join(WINDOWS)}")
    mode = canonical_mode(mode)
    if isinstance(fill_value, bool) or not isinstance(fill_value, Real):
        raise TypeError(f"fill_value must be a real number (or nan), got {fill_value!r}")
    if isinstance(min_fraction, bool) or not isinstance(min_fraction, Real):
        raise TypeError(f"min_fraction must be a real number in (0, 1], got {min_fraction!r}")
    if not 0.0 < min_fraction <= 1.0:
        raise ValueError(
            f"min_fraction must be in (0, 1] (the fraction of a window's pixels that must be "
            f"true in the mask), got {min_fraction!r}"
        )
    axes = normalize_axes(axes, len(shape0))
    radius = _normalize_radius(radius, axes)
    for ax, r in zip(axes, radius, strict=True):
        if r >= shape0[ax]:
            raise ValueError(
                f"radius {r} is too large for axis {ax} of length {shape0[ax]}: the window "
                f"({2 * r + 1} pixels) must be centred inside the image, so radius must be "
                f"< {shape0[ax]}"
            )
    kept = sorted((ax, r) for ax, r in zip(axes, radius, strict=True) if r > 0)
    return NCCPlan(
        shape=shape0,
        axes=tuple(ax for ax, _ in kept),
        radius=tuple(r for _, r in kept),
        window=window,
        mode=mode,
        fill_value=float(fill_value),
        min_fraction=float(min_fraction),
    )


def check_mask(mask, shape: Sequence[int]) -> None:
    """Raise unless `mask` is a boolean array of the images' `shape`.

    Only the ``shape`` and ``dtype`` attributes are read, so a Dask array is checked without
    computing it. Integer masks (labels, 0/1 images) are refused rather than guessed at:
    convert them with ``labels > 0`` or ``mask != 0``.
    """
    dtype = getattr(mask, "dtype", None)
    if dtype is None or not hasattr(mask, "shape"):
        raise TypeError(f"mask must be a boolean array, got {type(mask).__name__}")
    if np.dtype(dtype) != np.bool_:
        raise TypeError(
            f"mask must be a boolean array (True where the pixels are data), got dtype "
            f"{np.dtype(dtype)}; convert it, e.g. with mask != 0 or labels > 0"
        )
    if tuple(mask.shape) != tuple(shape):
        raise ValueError(
            f"mask must have the images' shape {tuple(shape)}, got {tuple(mask.shape)}"
        )


def gaussian_weights(radius: int) -> np.ndarray:
    """Normalised 1D Gaussian window of half-width `radius`, with ``sigma = radius / 2``.

    Truncated at the radius (two standard deviations), like
    ``skimage.metrics.structural_similarity(gaussian_weights=True)`` at its default
    7-pixel window (radius 3, sigma 1.5).
    """
    if radius == 0:
        return np.ones(1)
    x = np.arange(-radius, radius + 1, dtype=np.float64)
    w = np.exp(-0.5 * (x / (radius / 2.0)) ** 2)
    return w / w.sum()


def _as_kernel_input(image: np.ndarray) -> np.ndarray:
    # numba has no float16 arithmetic, treats bool as a separate type and compiles only for
    # native byte order: widen, view or swap (a copy) as needed.
    if not image.dtype.isnative:
        image = image.astype(image.dtype.newbyteorder("="))
    if image.dtype == np.float16:
        return image.astype(np.float32)
    if image.dtype == np.bool_:
        return image.view(np.uint8)
    return image


def _as_2d(array: np.ndarray) -> np.ndarray:
    # The range kernels read 2D arrays of any strides; fold other shapes (a view if possible).
    if array.ndim == 1:
        return array[np.newaxis]
    if array.ndim > 2:
        return array.reshape(-1, array.shape[-1])
    return array


def _value_range(
    image: np.ndarray, name: str, n_threads: int, mask: np.ndarray | None = None
) -> tuple[float, float]:
    """Minimum and maximum of `image` (where `mask` is true), raising on NaN or infinity.

    With a mask, values under a false mask are never read; with no true pixel at all the
    range is ``(inf, -inf)``.
    """
    image = _as_2d(image)
    arrays = [image] if mask is None else [image, _as_2d(mask)]
    kernel = _kernels.value_range if mask is None else _kernels.value_range_masked
    if n_threads > 1 and image.ndim and image.shape[0] > 1 and image.size > 1 << 20:
        n_pieces = min(n_threads, image.shape[0])
        pieces = [np.array_split(x, n_pieces, axis=0) for x in arrays]
        parts = list(_pool().map(kernel, *pieces))
    else:
        parts = [kernel(*arrays)]
    lo = min(p[0] for p in parts)
    hi = max(p[1] for p in parts)
    if not np.isfinite(sum(p[2] for p in parts)):
        bad = ~np.isfinite(image) if mask is None else ~np.isfinite(image) & (arrays[1] != 0)
        if np.any(bad):
            where = "" if mask is None else " where the mask is true"
            raise ValueError(
                f"{name} contains {int(np.count_nonzero(bad))} NaN or infinite values{where}; "
                "the NCC needs finite data (replace them, e.g. with np.nan_to_num, or mask "
                "them out)"
            )
    return lo, hi


def _centre_and_floor(
    image: np.ndarray,
    name: str,
    plan: NCCPlan,
    exact: bool,
    n_threads: int = 1,
    mask: np.ndarray | None = None,
):
    """Centre subtracted before accumulating, and the flat-window variance floor.

    With a mask, both come from the true pixels only (and the constant border, which is
    data), so nothing under a false mask moves them.
    """
    if exact:
        # <= 16-bit integers, box window: sums are exact integers, so n**2 * var is computed
        # as the rounding of an integer: exactly 0 for a flat window, >= n - 1 otherwise.
        n = math.prod(2 * r + 1 for r in plan.radius)
        # Halfway between 0 and the smallest non-zero variance, (n - 1) / n**2. With a mask
        # a window of c <= n true pixels compares c**2 * var (>= c - 1 unless flat) with
        # c**2 times this floor (< c / 2): the same split.
        return 0.0, (n - 1) / (2.0 * n**2)
    lo, hi = _value_range(image, name, n_threads, mask)
    if plan.mode == "constant":
        lo, hi = min(lo, 0.0), max(hi, 0.0)
    if lo > hi:  # no true pixel: every window is empty, any centre will do
        lo = hi = 0.0
    centre = 0.5 * (lo + hi)
    if image.dtype.kind in "biu":
        centre = float(round(centre))
    half_range = max(hi - centre, centre - lo)
    return centre, (FLAT_RTOL * half_range) ** 2


def _is_exact(dtype: np.dtype, plan: NCCPlan) -> bool:
    return plan.window == "box" and dtype.kind in "biu" and dtype.itemsize <= 2


_POOL: ThreadPoolExecutor | None = None


def _pool() -> ThreadPoolExecutor:
    global _POOL
    if _POOL is None:
        _POOL = ThreadPoolExecutor(
            max_workers=os.cpu_count() or 1, thread_name_prefix="napari-ncc"
        )
    return _POOL


def ncc_block(
    image0: np.ndarray,
    image1: np.ndarray,
    plan: NCCPlan,
    index_maps: Sequence[np.ndarray],
    *,
    mask: np.ndarray | None = None,
    n_threads: int = 1,
    engine: str = "compiled",
) -> np.ndarray:
    """NCC map of a block whose windows read border values through index maps.

    Parameters
    ----------
    image0, image1 : ndarray
        Source blocks of equal shape.
    plan : NCCPlan
        Validated arguments (see :func:`plan_ncc`).
    index_maps : sequence of 1D int arrays
        One per windowed axis in ``plan.axes``: source indices into the block for each
        padded position, ``-1`` for the constant border (see
        :func:`~napari_ncc._borders.border_index_map`). The output has
        ``len(map) - 2 * radius`` positions along that axis.
    mask : ndarray of bool, optional
        Of the blocks' shape, read through the same index maps: windows count only the
        pixels where it is true (see :func:`local_ncc`); ``plan.min_fraction`` applies.
    n_threads : int
        Threads to split the work over (the kernels release the GIL).
    engine : {"compiled", "numpy"}
        The numba kernels, or the pure NumPy fallback (used for 4+ windowed axes and for
        Gaussian windows over 3 axes).

    Returns
    -------
    ncc : ndarray of float32
    """
    if engine not in ("compiled", "numpy"):
        raise ValueError(f"unknown engine {engine!r}; expected 'compiled' or 'numpy'")
    a = _as_kernel_input(np.asarray(image0))
    b = _as_kernel_input(np.asarray(image1))
    if mask is not None:
        check_mask(mask, a.shape)
        mask = np.asarray(mask).view(np.uint8)
    exact = _is_exact(a.dtype, plan) and _is_exact(b.dtype, plan)
    ca, floor_a = _centre_and_floor(a, "reference", plan, exact, n_threads, mask)
    cb, floor_b = _centre_and_floor(b, "moving", plan, exact, n_threads, mask)
    # Smallest total weight of true pixels a window needs (the box window counts pixels).
    n_window = math.prod(2 * r + 1 for r in plan.radius) if plan.window == "box" else 1.0
    min_weight = (plan.min_fraction - MIN_FRACTION_ATOL) * n_window
    out_shape = list(a.shape)
    maps = [np.ascontiguousarray(m, dtype=np.int64) for m in index_maps]
    for ax, r, m in zip(plan.axes, plan.radius, maps, strict=True):
        out_shape[ax] = len(m) - 2 * r
    out = np.empty(out_shape, dtype=np.float32)
    k = len(plan.axes)
    if engine == "numpy" or k > 3 or (k == 3 and plan.window != "box"):
        out[...] = _ncc_numpy(a, b, plan, maps, (ca, cb), (floor_a, floor_b), mask, min_weight)
        return out

    # Windowed axes last; every other axis is a batch of independent planes or volumes.
    batch_axes = [ax for ax in range(a.ndim) if ax not in plan.axes]
    order = batch_axes + list(plan.axes)
    # The mask (if any) rides along with the images: (a, b) or (a, b, mask).
    sources = [x.transpose(order) for x in ((a, b) if mask is None else (a, b, mask))]
    o_t = out.transpose(order)
    radii = plan.radius
    if k == 1:
        # A 1D window is a 2D plane (rows = every other axis) with no vertical extent.
        rows = math.prod(o_t.shape[:-1])
        sources = [x.reshape(rows, x.shape[-1]) for x in sources]
        o_1d = np.empty((rows, o_t.shape[-1]), dtype=np.float32)
        radii = (0, plan.radius[0])
        maps = [np.arange(rows, dtype=np.int64), maps[0]]
        items = [(*sources, o_1d)]
    else:
        items = [(*(x[idx] for x in sources), o_t[idx]) for idx in np.ndindex(*o_t.shape[:-k])]

    # Split every plane/volume along its first windowed axis into strips, one task each.
    tasks = []
    for *planes, po in items:
        length = po.shape[0]
        n_strips = max(n_threads if len(items) < n_threads else 1, -(-length // _STRIP_ROWS))
        bounds = np.linspace(0, length, min(n_strips, length) + 1).astype(int)
        for y0, y1 in itertools.pairwise(bounds):
            strip_maps = [maps[0][y0 : y1 + 2 * radii[0]], *maps[1:]]
            tasks.append((planes, strip_maps, po[y0:y1]))

    fill = plan.fill_value
    weights = [gaussian_weights(r) for r in radii] if plan.window != "box" else None

    def run(task):
        planes, m, po = task
        if mask is None:
            if k == 3:
                _kernels.ncc3d_box(*planes, *m, *radii, ca, cb, floor_a, floor_b, fill, po)
            elif weights is None:
                _kernels.ncc2d_box(*planes, *m, *radii, ca, cb, floor_a, floor_b, fill, po)
            else:
                _kernels.ncc2d_weighted(*planes, *m, *weights, ca, cb, floor_a, floor_b, fill, po)
            return
        floors = (floor_a, floor_b, min_weight, fill)
        if k == 3:
            _kernels.ncc3d_box_masked(*planes, *m, *radii, ca, cb, *floors, po)
        elif weights is None:
            _kernels.ncc2d_box_masked(*planes, *m, *radii, ca, cb, *floors, po)
        else:
            _kernels.ncc2d_weighted_masked(*planes, *m, *weights, ca, cb, *floors, po)

    if n_threads > 1 and len(tasks) > 1:
        list(_pool().map(run, tasks))
    else:
        for task in tasks:
            run(task)
    if k == 1:
        o_t[...] = o_1d.reshape(o_t.shape)
    return out


def _read_through_maps(x: np.ndarray, plan: NCCPlan, maps, outside: float) -> np.ndarray:
    """`x` padded as the index maps say, `outside` at the constant border (``-1``)."""
    for ax, m in zip(plan.axes, maps, strict=True):
        x = np.take(x, np.where(m < 0, 0, m), axis=ax)
        border = [slice(None)] * x.ndim
        border[ax] = m < 0
        x[tuple(border)] = outside
    return x


def _ncc_numpy(a, b, plan, maps, centres, floors, mask=None, min_weight=0.0) -> np.ndarray:
    """Pure NumPy NCC (any number of windowed axes): padded moments, separable sums.

    With a mask (uint8), masked-off values are replaced by 0 before anything else and a
    sixth sum, the weight of the true pixels (the constant border counts as true), takes
    the place of the window's constant total weight.
    """
    moments = []
    for image, centre in ((a, centres[0]), (b, centres[1])):
        x = image.astype(np.float64) - centre
        if mask is not None:
            x = np.where(mask != 0, x, 0.0)
        moments.append(_read_through_maps(x, plan, maps, -centre))
    xa, xb = moments
    sums = [xa, xb, xa * xa, xb * xb, xa * xb]
    if mask is not None:
        sums.append(_read_through_maps(mask.astype(np.float64), plan, maps, 1.0))
    for ax, r in zip(plan.axes, plan.radius, strict=True):
        n = 2 * r + 1
        if plan.window == "box":
            for i, s in enumerate(sums):
                c = np.cumsum(s, axis=ax)
                head = np.take(c, [n - 1], axis=ax)
                rest = np.take(c, np.arange(n, c.shape[ax]), axis=ax) - np.take(
                    c, np.arange(0, c.shape[ax] - n), axis=ax
                )
                sums[i] = np.concatenate([head, rest], axis=ax)
        else:
            w = gaussian_weights(r)
            length = sums[0].shape[ax] - 2 * r
            for i, s in enumerate(sums):
                sums[i] = sum(
                    w[j] * np.take(s, np.arange(j, j + length), axis=ax) for j in range(n)
                )
    # n**2 times the (co)variances, as in the compiled kernels (exact for integer data).
    if mask is None:
        n = float(math.prod(2 * r + 1 for r in plan.radius)) if plan.window == "box" else 1.0
    else:
        n = sums.pop()
    s0, s1, s2, s3, s4 = sums
    va = n * s2 - s0 * s0
    vb = n * s3 - s1 * s1
    cov = n * s4 - s0 * s1
    with np.errstate(invalid="ignore", divide="ignore"):
        r = np.clip(cov / np.sqrt(np.maximum(va * vb, 1e-300)), -1.0, 1.0)
    flat = (va <= floors[0] * n * n) | (vb <= floors[1] * n * n)
    if mask is not None:
        flat |= n < min_weight
    return np.where(flat, plan.fill_value, r).astype(np.float32)


def local_ncc(
    image0,
    image1,
    radius: int | Sequence[int] = 3,
    *,
    window: str = "box",
    mode: str = "reflect",
    fill_value: float = 0.0,
    axes: int | Sequence[int] | None = None,
    mask: np.ndarray | None = None,
    min_fraction: float = 0.5,
) -> np.ndarray:
    """Local normalized cross-correlation (Pearson correlation of patches) of two images.

    For every pixel, the Pearson correlation coefficient of the two patches of
    ``2 * radius + 1`` pixels per windowed axis centred on it.

    Parameters
    ----------
    image0, image1 : array_like
        Images of the same shape, any real dtype (bool, integer, float). Not modified.
    radius : int or sequence of int, optional
        Window half-width, one for all windowed axes or one per axis in `axes`. A radius
        of 0 along an axis means the window does not extend along it; at least one must
        be >= 1, and each must be smaller than its axis.
    window : {"box", "gaussian"}, optional
        Uniform weights, or Gaussian weights with ``sigma = radius / 2`` truncated at the
        radius (see :func:`gaussian_weights`).
    mode : str, optional
        How windows read beyond the border, as in ``scipy.ndimage`` filters: "reflect"
        (the default, ``numpy.pad(mode="symmetric")``), "mirror", "nearest", "wrap" or
        "constant" (zeros), and their "grid-" aliases.
    fill_value : float, optional
        Written where the correlation is undefined because either patch is flat: its
        standard deviation is zero or below ``FLAT_RTOL`` (1e-6) times the image's
        half-range (of its true pixels, with a mask), or, with a mask, because too few of
        the window's pixels are true (see `min_fraction`). ``np.nan`` works too.
    axes : int or sequence of int, optional
        Axes the window spans (all by default). Other axes are independent: for example
        ``axes=(-2, -1)`` gives a per-plane 2D map through a time series.
    mask : array_like of bool, optional
        Of the images' shape, True where the pixels are data. Each window's correlation is
        then computed over its true pixels only; the values under a false mask never enter
        the result (they may be anything, NaN included). The mask follows `mode` at the border
        like the images, and with ``mode="constant"`` the zeros beyond the border count as
        data, exactly as without a mask, so an all-true mask gives the unmasked map.
        Integer masks are refused: pass ``labels > 0`` or ``mask != 0``.
    min_fraction : float, optional
        With a mask: the fraction of a window's pixels (of its weight, for the Gaussian
        window) that must be true, in (0, 1]; other windows get `fill_value`. A window
        with exactly that fraction, up to rounding, is computed.

    Returns
    -------
    ncc : ndarray of float32
        Same shape as the inputs, values in [-1, 1] (or `fill_value`).

    Notes
    -----
    The moments are accumulated as running sums in float64 after subtracting the
    image's mid-range, so the cost per pixel does not depend on the radius and data with
    a large offset and a small local variance (such as uint16 at 30000 +- 10) keep full
    accuracy; for integer data of up to 16 bits the sums are exact. With a mask, a sixth
    running sum counts the true pixels, and the mid-range and the flat-window floor come
    from the true pixels only.

    Examples
    --------
    >>> import numpy as np
    >>> from napari_ncc import local_ncc
    >>> rng = np.random.default_rng(0)
    >>> a = rng.random((64, 64))
    >>> b = 2 * a + 1
    >>> m = local_ncc(a, b, radius=3)
    >>> bool(np.allclose(m, 1.0, atol=1e-5))
    True

    Pixels that are not data, here a band of garbage, are left out with a mask:

    >>> b[:, :20] = 1e4
    >>> m = local_ncc(a, b, radius=3, mask=b < 1e4, fill_value=np.nan)
    >>> bool(np.allclose(m[:, 23:], 1.0, atol=1e-5)), bool(np.isnan(m[:, :19]).all())
    (True, True)
    """
    image0 = np.asarray(image0)
    image1 = np.asarray(image1)
    check_image(image0, "reference")
    check_image(image1, "moving")
    plan = plan_ncc(
        image0.shape,
        image1.shape,
        radius,
        window=window,
        mode=mode,
        fill_value=fill_value,
        axes=axes,
        min_fraction=min_fraction,
    )
    if mask is not None:
        mask = np.asarray(mask)
        check_mask(mask, plan.shape)
    maps = [
        border_index_map(plan.shape[ax], 0, plan.shape[ax], r, plan.mode)
        for ax, r in zip(plan.axes, plan.radius, strict=True)
    ]
    return ncc_block(image0, image1, plan, maps, mask=mask, n_threads=os.cpu_count() or 1)
