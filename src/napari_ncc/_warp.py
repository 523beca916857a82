"""Resample a moving image onto the reference grid through a transform, in bounded memory.

:func:`warp` evaluates, for each reference pixel, the moving image at the transform's
:meth:`moving_coordinates`. It works block by block: each output block reads only the box of
the moving image that its coordinates reach (from the block's corners for a linear
transform, plus the field's bounds for a deformable one) and the interpolation margin, so a
NumPy image is never copied whole and a Dask image stays lazy, each output block depending
only on the input chunks near it. :func:`covered` says which reference pixels land inside
the moving image.

Dask is imported only inside the functions that handle Dask input.
"""

from __future__ import annotations

import itertools

import numpy as np
from scipy import ndimage as ndi

from ._transform import AffineTransform, DeformableTransform, Transform
from ._validation import check_image, check_order, interpolated_dtype, is_dask

__all__ = ["covered", "covered_block", "sample", "warp"]

#: Output block size (pixels per axis) of the NumPy path: bounds its temporary memory.
NUMPY_BLOCK = 512

#: Border modes whose values outside the image come from the image's edge only, so a block
#: whose coordinates leave the image still needs only the box next to them.
LOCAL_MODES = ("nearest", "constant", "grid-constant")

#: Other scipy.ndimage modes (reflections, wraps): a block that leaves the image reads the
#: whole axis.
MODES = (*LOCAL_MODES, "reflect", "grid-mirror", "mirror", "grid-wrap", "wrap")

#: Extra pixels read around a box for spline orders >= 2, whose prefilter is global: the
#: influence of pixels k away decays like 0.27**k (cubic) to 0.43**k (quintic), below 1e-7
#: of the image's range at this distance.
_SPLINE_MARGIN = 20


def _check_transform(transform) -> None:
    if not isinstance(transform, AffineTransform | DeformableTransform):
        raise TypeError(
            f"transform must be an AffineTransform or DeformableTransform, got {type(transform)}"
        )


def _check_mode(mode) -> str:
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    return mode


def _output_shape(output_shape, moving_shape, ndim: int) -> tuple[int, ...]:
    if output_shape is None:
        output_shape = moving_shape
    output_shape = tuple(int(n) for n in output_shape)
    if len(output_shape) != ndim or min(output_shape) < 1:
        raise ValueError(
            f"output_shape must have {ndim} positive lengths, got {tuple(output_shape)}"
        )
    return output_shape


def _block_corners(start, stop) -> np.ndarray:
    """The 2**ndim corner pixels of the block ``start <= p < stop``."""
    return np.array(list(itertools.product(*zip(start, np.asarray(stop) - 1, strict=True))), float)


def coordinate_bounds(transform: Transform, start, stop) -> tuple[np.ndarray, np.ndarray]:
    """Guaranteed lower and upper moving coordinates reached by the reference block
    ``start <= p < stop`` (integers)."""
    corners = _block_corners(start, stop)
    # A linear map of a box reaches its extremes at the corners.
    mapped = transform.affine.moving_coordinates(corners)
    lower, upper = mapped.min(axis=0), mapped.max(axis=0)
    if isinstance(transform, DeformableTransform):
        field_lower, field_upper = transform.field_bounds(start, np.asarray(stop) - 1)
        lower, upper = lower + field_lower, upper + field_upper
    return lower, upper


def _moving_box(transform, start, stop, moving_shape, order, mode) -> tuple[slice, ...]:
    """The box of the moving image that a reference block needs (never empty)."""
    lower, upper = coordinate_bounds(transform, start, stop)
    return _box_around(lower, upper, moving_shape, order, mode)


def _box_around(lower, upper, moving_shape, order, mode) -> tuple[slice, ...]:
    """The box of the moving image that coordinates within ``[lower, upper]`` need."""
    margin = 0 if order <= 1 else _SPLINE_MARGIN
    box = []
    for lo, hi, n in zip(lower, upper, moving_shape, strict=True):
        a = int(np.floor(lo)) - margin
        b = int(np.floor(hi)) + 2 + margin
        if mode not in LOCAL_MODES and (lo < 0 or hi > n - 1):
            a, b = 0, n
        # Coordinates entirely beyond one edge need that edge's pixels (nearest) only.
        a = min(max(a, 0), n - 1)
        b = max(min(b, n), a + 1)
        box.append(slice(a, b))
    return tuple(box)


def sample(
    moving,
    coordinates,
    *,
    order: int = 3,
    mode: str = "nearest",
    cval: float = 0.0,
    prefiltered: bool = False,
):
    """The moving image interpolated at the given coordinates, reading only the box they span.

    Parameters
    ----------
    moving : array_like
        Anything sliceable with a shape (ndarray, Dask or zarr array): only the box of
        pixels around `coordinates` (plus the interpolation margin) is read.
    coordinates : ndarray, shape (ndim, ...)
        Moving pixel coordinates, as ``scipy.ndimage.map_coordinates`` takes them.
    order, mode, cval
        As in :func:`warp`.
    prefiltered : bool, optional
        `moving` holds spline coefficients already (``scipy.ndimage.spline_filter`` of the
        image, same order): no prefilter, no margin (what repeated sampling of one
        in-memory image wants).

    Returns
    -------
    ndarray of float64, shape ``coordinates.shape[1:]``

    Examples
    --------
    >>> image = np.arange(12.0).reshape(3, 4)
    >>> sample(image, np.array([[1.0, 1.5], [2.0, 2.0]]), order=1).tolist()
    [6.0, 8.0]
    """
    order = check_order(order)
    mode = _check_mode(mode)
    coordinates = np.asarray(coordinates, dtype=np.float64)
    ndim = len(moving.shape)
    if coordinates.shape[0] != ndim:
        raise ValueError(
            f"coordinates must have shape ({ndim}, ...) for a {ndim}D image, "
            f"got {coordinates.shape}"
        )
    flat = coordinates.reshape(ndim, -1)
    margin_order = 1 if prefiltered else order
    box = _box_around(flat.min(axis=1), flat.max(axis=1), moving.shape, margin_order, mode)
    if prefiltered:
        # The spline's support: order // 2 + 1 coefficients beyond the coordinates' cells.
        box = tuple(
            slice(max(b.start - order // 2 - 1, 0), min(b.stop + order // 2 + 1, n))
            for b, n in zip(box, moving.shape, strict=True)
        )
    data = np.asarray(moving[box], dtype=np.float64)
    start = np.array([s.start for s in box], dtype=np.float64)[:, None]
    out = ndi.map_coordinates(
        data, flat - start, order=order, mode=mode, cval=cval, prefilter=not prefiltered
    )
    return out.reshape(coordinates.shape[1:])


def _warp_box(box_data, box, transform, start, shape, order, mode, cval, dtype):
    """The output block ``start + [0, shape)`` from the moving box `box_data`."""
    box_start = np.array([s.start for s in box], dtype=np.float64)
    data = np.asarray(box_data)
    if data.dtype != dtype:
        data = data.astype(dtype)
    if isinstance(transform, AffineTransform):
        linear = transform.linear
        offset = transform.offset + linear @ np.asarray(start, float) - box_start
        return ndi.affine_transform(
            data, linear, offset, output_shape=tuple(shape), order=order, mode=mode, cval=cval
        )
    coordinates = (_block_coordinates(transform, start, shape) - box_start).T
    out = ndi.map_coordinates(data, coordinates, order=order, mode=mode, cval=cval)
    return out.reshape(shape)


def _block_coordinates(transform, start, shape) -> np.ndarray:
    """Moving coordinates of the reference block ``start + [0, shape)``, shape (n, ndim)."""
    grid = np.indices(shape, dtype=np.float64).reshape(len(shape), -1).T + np.asarray(start)
    if isinstance(transform, AffineTransform):
        return transform.moving_coordinates(grid)
    # The field on a block is a grid: evaluated one axis at a time.
    axes = [np.arange(a, a + n, dtype=np.float64) for a, n in zip(start, shape, strict=True)]
    field = transform.field_on_grid(axes).reshape(len(shape), -1).T
    return transform.affine.moving_coordinates(grid) + field


def warp(
    moving,
    transform: Transform,
    *,
    order: int = 1,
    mode: str = "nearest",
    cval: float = 0.0,
    output_shape=None,
    chunks=None,
):
    """The moving image resampled onto the reference grid.

    Output pixel ``p`` is the moving image interpolated at
    ``transform.moving_coordinates(p)``.

    Parameters
    ----------
    moving : ndarray or dask.array.Array
        The moving image (any real dtype). Not modified.
    transform : AffineTransform or DeformableTransform
        Reference pixel coordinates -> moving pixel coordinates.
    order : int, optional
        Spline interpolation order, 0 to 5.
    mode : str, optional
        How values beyond the moving image are filled, as in ``scipy.ndimage``. With
        "nearest" and "constant" a block reads only the moving pixels near its
        coordinates; with the reflecting and wrapping modes, a block whose coordinates
        leave the image reads the whole axis.
    cval : float, optional
        The fill value of the "constant" modes.
    output_shape : sequence of int, optional
        Shape of the reference grid; default the moving image's shape.
    chunks : optional
        Dask input only: chunks of the output (default: the moving image's chunks when the
        shapes agree, else Dask's "auto").

    Returns
    -------
    ndarray or dask.array.Array
        float32 for integer, bool and float16 input, else the input's float dtype. Lazy for
        Dask input: each output block depends only on the input chunks its coordinates reach.

    Examples
    --------
    >>> from napari_ncc._transform import AffineTransform
    >>> image = np.arange(16.0).reshape(4, 4)
    >>> warp(image, AffineTransform.from_shift((1.0, 0.0)))[:, 0]
    array([0., 0., 4., 8.])
    """
    _check_transform(transform)
    order = check_order(order)
    mode = _check_mode(mode)
    check_image(moving, "moving")
    if moving.ndim != transform.ndim:
        raise ValueError(
            f"moving must have {transform.ndim} dimensions like the transform, "
            f"got shape {tuple(moving.shape)}"
        )
    shape = _output_shape(output_shape, moving.shape, transform.ndim)
    dtype = interpolated_dtype(moving.dtype)
    if is_dask(moving):
        return _warp_dask(moving, transform, shape, order, mode, float(cval), dtype, chunks)
    moving = np.asarray(moving)
    out = np.empty(shape, dtype=dtype)
    starts = [range(0, n, NUMPY_BLOCK) for n in shape]
    for start in itertools.product(*starts):
        stop = [min(s + NUMPY_BLOCK, n) for s, n in zip(start, shape, strict=True)]
        box = _moving_box(transform, start, stop, moving.shape, order, mode)
        block = tuple(slice(a, b) for a, b in zip(start, stop, strict=True))
        block_shape = [b - a for a, b in zip(start, stop, strict=True)]
        out[block] = _warp_box(
            moving[box], box, transform, start, block_shape, order, mode, cval, dtype
        )
    return out


def _block_starts(chunks) -> list[list[int]]:
    return [list(np.cumsum((0, *c[:-1]))) for c in chunks]


def _warp_dask(moving, transform, shape, order, mode, cval, dtype, chunks):
    import dask.array as da

    if chunks is None:
        chunks = moving.chunks if tuple(moving.shape) == shape else "auto"
    chunks = da.core.normalize_chunks(chunks, shape, dtype=dtype)
    starts = _block_starts(chunks)
    ndim = len(shape)

    def build(axis: int, prefix: tuple):
        if axis == ndim:
            start = [starts[d][i] for d, i in enumerate(prefix)]
            block_shape = [chunks[d][i] for d, i in enumerate(prefix)]
            stop = [a + n for a, n in zip(start, block_shape, strict=True)]
            box = _moving_box(transform, start, stop, moving.shape, order, mode)
            # moving[box] stays lazy and reads only the chunks under the box; one chunk in,
            # one output block out.
            source = moving[box].rechunk(-1)
            return da.map_blocks(
                _warp_box,
                source,
                box,
                transform,
                start,
                block_shape,
                order,
                mode,
                cval,
                dtype,
                chunks=tuple((n,) for n in block_shape),
                dtype=dtype,
                meta=np.empty((0,) * ndim, dtype=dtype),
            )
        return [build(axis + 1, (*prefix, i)) for i in range(len(chunks[axis]))]

    return da.block(build(0, ()))


def covered_block(transform: Transform, start, shape, moving_shape) -> np.ndarray:
    """:func:`covered` over the reference block ``start + [0, shape)``."""
    mapped = _block_coordinates(transform, start, shape)
    # A tolerance, so that a pixel mapped onto the edge up to rounding counts as inside.
    tolerance = 1e-6
    inside = np.all(
        (mapped >= -tolerance) & (mapped <= np.asarray(moving_shape) - 1 + tolerance), axis=1
    )
    return inside.reshape(shape)


def covered(transform: Transform, shape, moving_shape=None, *, chunks=None):
    """Which reference pixels the transform maps inside the moving image.

    A pixel is covered when its moving coordinates lie within ``[0, n - 1]`` on every axis
    (up to 1e-6), so its interpolated value comes from real data, not the border mode.

    Parameters
    ----------
    transform : AffineTransform or DeformableTransform
        Reference pixel coordinates -> moving pixel coordinates.
    shape : sequence of int
        Shape of the reference grid.
    moving_shape : sequence of int, optional
        Shape of the moving image; default `shape`.
    chunks : optional
        If given, a lazy Dask mask with these chunks, computed per block.

    Returns
    -------
    ndarray or dask.array.Array of bool
        Of shape `shape`.

    Examples
    --------
    >>> from napari_ncc._transform import AffineTransform
    >>> covered(AffineTransform.from_shift((1.0, 0.0)), (3, 2)).astype(int).tolist()
    [[0, 0], [1, 1], [1, 1]]
    """
    _check_transform(transform)
    shape = _output_shape(shape, shape, transform.ndim)
    moving_shape = _output_shape(moving_shape, shape, transform.ndim)
    if chunks is None:
        out = np.empty(shape, dtype=bool)
        for start in itertools.product(*[range(0, n, NUMPY_BLOCK) for n in shape]):
            stop = [min(s + NUMPY_BLOCK, n) for s, n in zip(start, shape, strict=True)]
            block = tuple(slice(a, b) for a, b in zip(start, stop, strict=True))
            block_shape = [b - a for a, b in zip(start, stop, strict=True)]
            out[block] = covered_block(transform, start, block_shape, moving_shape)
        return out
    import dask.array as da

    chunks = da.core.normalize_chunks(chunks, shape)
    # block_id, not block_info: Dask builds block_info for every block up front.
    starts = [np.cumsum((0, *c)) for c in chunks]

    def block(block_id=None):
        start = [int(s[i]) for s, i in zip(starts, block_id, strict=True)]
        block_shape = [c[i] for c, i in zip(chunks, block_id, strict=True)]
        return covered_block(transform, start, block_shape, moving_shape)

    meta = np.empty((0,) * len(shape), dtype=bool)
    return da.map_blocks(block, chunks=chunks, dtype=bool, meta=meta)
