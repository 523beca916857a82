"""Subpixel shifts of images, in memory and lazily: :func:`shift_lazy` and its block math.

``output[x] = image[x - shift]``, as ``scipy.ndimage.shift`` computes it in floating
point. The registration applies its shifts with :func:`shift_lazy` directly, and the lazy
NCC (:mod:`napari_ncc._lazy`) shifts each block of the moving image as it reads it, with
the same read boxes (:func:`shift_read_box`) and the same arithmetic (:func:`shift_region`).
A shifted block reads only its own box moved by the shift, from the image's source when
there is one (:mod:`napari_ncc._sources`: a file, an array, or a computed Dask array whose
chunks each need a few others), else through ``dask.array.overlap``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from functools import partial

import dask.array as da
import numpy as np
from dask.base import tokenize
from scipy import ndimage

from ._blocks import BlockReads, ReadInput, assemble, overlap_chunks
from ._borders import border_index_map, canonical_mode
from ._sources import as_dask_array, find_source, storage_chunks
from ._validation import check_finite_shift, check_image, check_order, interpolated_dtype

__all__ = [
    "SHIFT_MODES",
    "check_shift_mode",
    "shift_array",
    "shift_lazy",
    "shift_margin",
    "shift_read_box",
    "shift_region",
    "shift_transform",
]

#: Shift modes that only read pixels near the output position (so a block plus a margin
#: holds everything its shifted values need).
SHIFT_MODES = ("nearest", "constant", "grid-constant", "reflect", "mirror", "grid-mirror")

#: Extra margin for spline orders > 1, whose prefilter is an IIR filter over the whole axis:
#: its influence decays by a factor of at least ~0.43 (order 5) per pixel, ~1e-12 at 32.
SPLINE_MARGIN = 32


def shift_margin(s: float, order: int) -> int:
    """Pixels a shift by `s` may read beyond an output range, on either side."""
    if s == 0:
        return 0
    return math.ceil(abs(s)) + 1 + (SPLINE_MARGIN if order > 1 else 0)


def _shift_reach(length: int, start: int, stop: int, s: float, order: int, mode: str):
    """Source range ``(lo, hi)`` read by outputs ``start..stop-1`` of a shift by `s`.

    ``output[i] = input[i - s]`` interpolates between ``floor(i - s)`` and the next
    pixel, so the range is the output range *moved* by the shift, ``[start - ceil(s) - 1,
    stop - floor(s) + 1)`` (a spare pixel on each side), plus ``SPLINE_MARGIN`` for
    orders above 1. Positions beyond the image fold back by `mode`; on a side where they
    do, the range reaches the image edge, so that the region's edge is the image's and a
    shift of the region alone folds exactly like a shift of the whole image.
    """
    if s == 0:
        return start, stop
    extra = SPLINE_MARGIN if order > 1 else 0
    raw_lo = start - math.ceil(s) - 1 - extra
    raw_hi = stop - math.floor(s) + 1 + extra
    if canonical_mode(mode) in ("reflect", "mirror") and (
        raw_lo < 1 - length or raw_hi > 2 * length - 1
    ):
        return 0, length  # folded more than once: only the whole axis folds the same
    index = border_index_map(length, raw_lo, raw_hi, 0, mode)
    index = index[index >= 0]  # "constant" reads nothing outside
    lo = int(index.min()) if index.size else length
    hi = int(index.max()) + 1 if index.size else 0
    lo = 0 if raw_lo < 0 else lo
    hi = length if raw_hi > length else hi
    if hi <= lo:  # only constant values: keep the edge pixel the border is defined by
        lo, hi = (0, 1) if raw_hi <= 0 else (length - 1, length)
    return lo, hi


def shift_read_box(box, shape, shift, order, mode) -> tuple:
    """Source box read by the output `box` of a shift (see :func:`_shift_reach`)."""
    return tuple(
        _shift_reach(n, a, b, s, order, mode)
        for (a, b), n, s in zip(box, shape, shift, strict=True)
    )


def _linear_shift_nearest(image: np.ndarray, shift, offsets, out_shape) -> np.ndarray:
    """``ndimage.shift(image, shift, order=1, mode="nearest")``, separably, in float64,
    evaluated at ``offsets + (0..out_shape - 1)``.

    The shift is the same for every pixel, so linear interpolation along an axis is one
    weighted sum of two shifted copies: about twice as fast as scipy's general spline
    code, and equal to it to rounding (the sums are float64 like scipy's).
    """
    out = image
    for ax, (s, offset, m) in enumerate(zip(shift, offsets, out_shape, strict=True)):
        n = out.shape[ax]
        if s == 0:
            if offset or m != n:
                out = out[(slice(None),) * ax + (slice(offset, offset + m),)]
            continue
        whole = math.floor(-s)
        frac = -s - whole
        index = np.arange(m) + (whole + offset)
        lower = np.take(out, np.clip(index, 0, n - 1), axis=ax).astype(np.float64, copy=False)
        if frac == 0:
            out = lower
            continue
        upper = np.take(out, np.clip(index + 1, 0, n - 1), axis=ax).astype(np.float64, copy=False)
        upper -= lower
        upper *= frac
        upper += lower
        out = upper
    return out


def shift_array(
    image: np.ndarray, shift, order: int, mode: str, offsets=None, out_shape=None
) -> np.ndarray:
    """``ndimage.shift`` with a floating-point output (see :func:`shift_lazy`).

    With `offsets` and `out_shape`, only the part of the shifted image starting at
    `offsets` (``output[u] = image[u + offsets - shift]``) is computed.
    """
    out_dtype = interpolated_dtype(image.dtype)
    if image.dtype == np.float16:
        image = image.astype(np.float32)
    offsets = (0,) * image.ndim if offsets is None else tuple(offsets)
    out_shape = image.shape if out_shape is None else tuple(out_shape)
    if order == 1 and mode == "nearest":
        shifted = _linear_shift_nearest(image, shift, offsets, out_shape)
        return shifted.astype(out_dtype, copy=False)
    if not any(offsets) and out_shape == image.shape:
        return ndimage.shift(
            image, shift, order=order, mode=mode, output=out_dtype, prefilter=order > 1
        )
    # A diagonal affine transform is scipy's shift with an output window of its own.
    return ndimage.affine_transform(
        image,
        np.ones(image.ndim),
        offset=[o - s for o, s in zip(offsets, shift, strict=True)],
        output_shape=out_shape,
        order=order,
        mode=mode,
        output=out_dtype,
        prefilter=order > 1,
    )


def shift_region(region, inner, outer, shift, order, mode) -> np.ndarray:
    """The shifted values of the `inner` box, from a `region` read over the `outer` box."""
    offsets = [a - lo for (a, _), (lo, _) in zip(inner, outer, strict=True)]
    return shift_array(region, shift, order, mode, offsets, [b - a for a, b in inner])


def shift_source_block(source, layout, strips, shift, order, mode) -> np.ndarray:
    """One block of ``ndimage.shift(source, shift)``, read with a margin from the source."""
    return assemble(source, layout, strips, shift_transform(shift, order, mode))


def _box_runs(box) -> list:
    return [[ab] for ab in box]


def _shift_task(key, shift, order, mode, box, layouts, cells) -> tuple:
    return (shift_source_block, key, layouts[0], cells[0], shift, order, mode)


def shift_transform(shift, order: int = 1, mode: str = "nearest"):
    """The ``transform`` of :func:`napari_ncc._blocks.assemble` that shifts each box."""
    return partial(shift_region, shift=shift, order=order, mode=mode)


def shift_overlap_block(block, shape, chunks, shift, order, mode, block_id=None) -> np.ndarray:
    """One block of a shift of a computed Dask array, from its overlapped block."""
    offsets, out_shape = [], []
    for ax, s in enumerate(shift):
        starts = np.cumsum((0, *chunks[ax]))
        start, stop = int(starts[block_id[ax]]), int(starts[block_id[ax] + 1])
        lo = max(0, start - shift_margin(s, order))
        offsets.append(start - lo)
        out_shape.append(stop - start)
    return shift_array(block, shift, order, mode, offsets, out_shape)


def check_shift_mode(mode) -> str:
    """`mode` if a block can be shifted on its own with it (see :data:`SHIFT_MODES`)."""
    if mode not in SHIFT_MODES:
        raise ValueError(
            f"unsupported shift mode {mode!r}; expected one of {', '.join(SHIFT_MODES)} "
            "(modes that read only near the edge, so each block can be shifted on its own)"
        )
    return mode


def shift_lazy(image, shift: Sequence[float], *, order: int = 1, mode: str = "nearest"):
    """Shift an image by a (subpixel) amount, lazily for Dask arrays.

    The result equals ``scipy.ndimage.shift(image, shift, order=order, mode=mode)``
    computed in floating point: ``output[x] = image[x - shift]``.

    Parameters
    ----------
    image : array_like or dask.array.Array
        Image to shift. Not modified.
    shift : sequence of float
        Shift along each axis.
    order : int, optional
        Spline interpolation order, 0 to 5 (1: linear, the default).
    mode : str, optional
        Border mode: "nearest" (the default), "constant", "grid-constant", "reflect",
        "mirror" or "grid-mirror" (see ``scipy.ndimage.shift``).

    Returns
    -------
    shifted : ndarray or dask.array.Array
        float64 for float64 input, float32 otherwise (integers are not rounded back).
        A Dask array, chunked like `image`, when `image` is one.

    Notes
    -----
    When the Dask array is backed by something sliceable (see
    :func:`napari_ncc._sources.find_source`), each output chunk reads from the source only
    its own box moved by the shift,
    ``[start - ceil(shift) - 1, stop - floor(shift) + 1)`` per axis (reaching the image
    edge where the shifted positions fold back across it); so does a computed array whose
    chunks each need only a few others, computing just the chunks under that box. Others
    (a reduction over the image) go through ``dask.array.overlap`` with a margin of
    ``ceil(|shift|) + 1`` pixels. Orders above 1
    prefilter with a margin of 32 more pixels, which differs from the whole-image
    prefilter by less than about 1e-10 relative.

    Examples
    --------
    >>> import numpy as np
    >>> import dask.array as da
    >>> from napari_ncc import shift_lazy
    >>> image = np.arange(12.0).reshape(3, 4)
    >>> shift_lazy(image, (0, 0.5))[0]
    array([0. , 0.5, 1.5, 2.5])
    >>> shift_lazy(da.from_array(image, chunks=2), (0, 0.5)).compute()[0]
    array([0. , 0.5, 1.5, 2.5])
    """
    lazy = isinstance(image, da.Array)
    if not lazy:
        image = np.asarray(image)
    check_image(image, "image")
    shift = check_finite_shift(shift, image.ndim, "shift")
    order = check_order(order)
    mode = check_shift_mode(mode)
    out_dtype = interpolated_dtype(image.dtype)
    if not lazy:
        return shift_array(image, shift, order, mode)
    token = tokenize("napari-ncc-shift", image.name, shift, order, mode)
    name = f"shift-{token}"
    if not any(shift) and order <= 1:
        return image.astype(out_dtype)
    found = find_source(image)
    if found is not None:
        key, source = found
        margins = tuple(shift_margin(s, order) for s in shift)
        reach = partial(shift_read_box, shape=image.shape, shift=shift, order=order, mode=mode)
        native = storage_chunks(source, image.ndim)
        spec = ReadInput(key, source, f"shift-strips-{token}", native, reach, margins)
        task = partial(_shift_task, key, shift, order, mode)
        reads = BlockReads(name, image.chunks, image.shape, (spec,), _box_runs, task)
        return as_dask_array(name, reads, image.chunks, out_dtype)
    depth = {ax: shift_margin(s, order) for ax, s in enumerate(shift)}
    chunks = list(overlap_chunks(image.chunks, depth))
    for ax, n in enumerate(image.shape):
        if depth[ax] >= n:  # the margin spans the axis: one chunk, nothing to overlap
            chunks[ax], depth[ax] = (n,), 0
    chunks = tuple(chunks)
    image = image.rechunk(chunks)
    extended = da.overlap.overlap(image, depth=depth, boundary="none")
    shifted = da.map_blocks(
        partial(
            shift_overlap_block,
            shape=image.shape,
            chunks=chunks,
            shift=shift,
            order=order,
            mode=mode,
        ),
        extended,
        chunks=chunks,
        dtype=out_dtype,
        meta=np.empty((0,) * image.ndim, dtype=out_dtype),
        name=name,
    )
    # Dask's array query planning may not take the dtype given above: say it again (the
    # blocks already have it, so this costs nothing).
    return shifted if shifted.dtype == out_dtype else shifted.astype(out_dtype)
