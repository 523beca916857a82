"""Multiscale NCC maps: the lazy levels napari shows for gigapixel and pyramidal images.

What a coarse level is
----------------------
:func:`ncc_levels` gives the quick *preview*: level ``k`` is the local NCC of level ``k``
of the two inputs at the same radius (in that level's pixels), the registration shift
divided by the level's downsampling factor. It costs only the pixels on screen, so it
appears at once, but it is not the map the user asked for: coarsening changes what the
windows see (fine texture averaged away, each window spanning ``2**k`` times more of the
image), so its values drift from the full-resolution ones (on a textured 20000² pair, a mean
of 0.98 at level 3 and 0.65 at level 5 where the full-resolution map's is 0.997).
What a zoomed-out view must show is a summary of the full-resolution map:
:class:`napari_ncc._overview.Overview` computes that map block by block in the background,
caches it and its pyramid on disk (level ``k``: the mean, or the minimum, of ``2 x 2``
pixels of level ``k - 1``) and replaces the preview with it as it fills in.
Level 0 is exactly ``local_ncc`` (:func:`napari_ncc.ncc_confidence`) of the
full-resolution pair in both. See ``docs/huge-images.md`` ("What the overview shows").

Inputs with their own pyramid (OME-Zarr, pyramidal TIFF, napari multiscale layers) are used
as they are. A single-scale input larger than :data:`MULTISCALE_MIN_SIDE` pixels a side gets
a pyramid built once (:func:`build_pyramid`): its coarse levels need every full-resolution
chunk once, so they are computed ahead, level ``k`` from level ``k - 1``, and cached
(on disk, in a temporary zarr store), with progress.

This module is the lazy floor: Dask in, lazy Dask out; nothing here imports napari.
"""

from __future__ import annotations

import atexit
import contextlib
import dataclasses
import math
import os
import shutil
import tempfile
from collections.abc import Callable, Generator, Sequence

import dask.array as da
import numpy as np

from ._samples import LUMINANCE_WEIGHTS
from ._sources import compute_isolated

#: A single-scale input whose largest plane side exceeds this gets a multiscale NCC map.
MULTISCALE_MIN_SIDE = 4096

#: Each pyramid level halves the plane axes of the one before.
PYRAMID_FACTOR = 2

#: Pyramids stop at the first level whose largest plane side is at most this.
PYRAMID_MIN_SIDE = 512

#: Chunk side of the pyramid levels :func:`build_pyramid` writes.
PYRAMID_CHUNK = 1024

#: Pyramids are registered first on their first level at most this many pixels a side (a
#: preview, shown at once), then on full-resolution tiles. 256: a few tenths of a second
#: (1024 took over a second, most of the first frame's budget); the preview's error, a
#: tenth of that level's pixel, is still below a pixel of the level shown first, and the
#: full registration replaces it seconds later.
PREVIEW_MAX_SIDE = 256

#: How napari shows an NCC map: ColorBrewer's colour-blind-safe PiYG (11 classes), from
#: -1 (magenta) through 0 (white: no correlation, or a flat window) to +1 (green).
#: A plain dict (napari builds its Colormap from it), so nothing here imports napari.
NCC_COLORMAP = {
    "name": "NCC PiYG",
    "colors": [
        "#8e0152",
        "#c51b7d",
        "#de77ae",
        "#f1b6da",
        "#fde0ef",
        "#f7f7f7",
        "#e6f5d0",
        "#b8e186",
        "#7fbc41",
        "#4d9221",
        "#276419",
    ],
}

#: The NCC is a correlation coefficient: always show its whole range.
NCC_CONTRAST_LIMITS = (-1.0, 1.0)


def as_luminance(image: da.Array) -> da.Array:
    """Lazy luminance (float32) of an RGB(A) Dask array with channels on the last axis.

    Uses the ITU-R BT.709 weights of ``skimage.color.rgb2gray``; alpha is ignored.

    Examples
    --------
    >>> import dask.array as da
    >>> rgb = da.ones((4, 4, 3), dtype="uint8", chunks=2)
    >>> gray = as_luminance(rgb)
    >>> gray.shape, gray.dtype.name
    ((4, 4), 'float32')
    """
    image = da.asarray(image)
    if image.ndim < 3 or image.shape[-1] not in (3, 4):
        raise ValueError(
            f"an RGB(A) image needs 3 or 4 channels on its last axis, got shape {image.shape}"
        )
    weights = np.asarray(LUMINANCE_WEIGHTS, dtype=np.float32)
    channels = image[..., :3].rechunk({image.ndim - 1: 3})
    return da.tensordot(channels.astype(np.float32), weights, axes=([image.ndim - 1], [0]))


def level_factors(shapes: Sequence[Sequence[int]]) -> list[tuple[float, ...]]:
    """Downsampling factor of every level relative to level 0, per axis.

    Examples
    --------
    >>> level_factors([(100, 80), (50, 40), (25, 20)])
    [(1.0, 1.0), (2.0, 2.0), (4.0, 4.0)]
    """
    base = tuple(shapes[0])
    return [tuple(b / s for b, s in zip(base, shape, strict=True)) for shape in shapes]


def plane_axes(ndim: int) -> tuple[int, ...]:
    """The axes a pyramid coarsens: the last two (the displayed plane), or the only one."""
    return tuple(range(max(ndim - 2, 0), ndim))


def needs_pyramid(shape: Sequence[int]) -> bool:
    """Whether a single-scale image is large enough to deserve a multiscale NCC map."""
    return max(shape[ax] for ax in plane_axes(len(shape))) > MULTISCALE_MIN_SIDE


def pyramid_shapes(shape: Sequence[int]) -> list[tuple[int, ...]]:
    """Shapes of the levels :func:`build_pyramid` makes for an image of `shape`.

    Examples
    --------
    >>> pyramid_shapes((3000, 2000))
    [(3000, 2000), (1500, 1000), (750, 500), (375, 250)]
    """
    shapes = [tuple(int(n) for n in shape)]
    axes = plane_axes(len(shape))
    while max(shapes[-1][ax] for ax in axes) > PYRAMID_MIN_SIDE:
        nxt = list(shapes[-1])
        for ax in axes:
            nxt[ax] = max(nxt[ax] // PYRAMID_FACTOR, 1)
        if any(nxt[ax] < PYRAMID_FACTOR for ax in axes):
            break
        shapes.append(tuple(nxt))
    return shapes


def _mean_2x2(block: np.ndarray, axes: tuple[int, ...], dtype) -> np.ndarray:
    """Mean of 2 x 2 pixel groups over `axes` (a trailing odd pixel dropped), as `dtype`."""
    out = block.astype(np.promote_types(block.dtype, np.float32))
    for ax in axes:
        n = out.shape[ax] // 2 * 2
        even = out.take(np.arange(0, n, 2), axis=ax)
        odd = out.take(np.arange(1, n, 2), axis=ax)
        out = (even + odd) * out.dtype.type(0.5)
    dtype = np.dtype(dtype)
    if dtype.kind in "biu":
        np.round(out, out=out)
        if dtype.kind != "b":
            info = np.iinfo(dtype)
            np.clip(out, info.min, info.max, out=out)
    return out.astype(dtype)


def coarsen(level: da.Array) -> da.Array:
    """One pyramid step: the mean of 2x2 pixel blocks of the plane axes, input dtype kept.

    Floats become at least float32; a trailing odd row or column is dropped (the next
    level has ``n // 2`` pixels).
    """
    axes = plane_axes(level.ndim)
    level = level.rechunk({ax: PYRAMID_CHUNK for ax in axes})  # even chunks but the last
    dtype = level.dtype if level.dtype.kind in "biu" else np.promote_types(level.dtype, "f4")
    chunks = tuple(
        tuple(c // 2 for c in level.chunks[ax]) if ax in axes else level.chunks[ax]
        for ax in range(level.ndim)
    )
    # (an odd last chunk of length 1 gives an empty block, which dask handles)
    return da.map_blocks(_mean_2x2, level, axes, dtype, chunks=chunks, dtype=dtype)


def pyramid_blocks(shape: Sequence[int]) -> int:
    """Number of blocks :func:`build_pyramid` writes for an image of `shape` (its progress
    total)."""
    total = 0
    for level_shape in pyramid_shapes(shape)[1:]:
        n = 1
        for ax, length in enumerate(level_shape):
            if ax in plane_axes(len(level_shape)):
                n *= math.ceil(length / PYRAMID_CHUNK)
            else:
                n *= length
        total += n
    return total


_CACHE_DIRS: list[str] = []


@atexit.register
def _remove_cache_dirs() -> None:
    for path in _CACHE_DIRS:
        shutil.rmtree(path, ignore_errors=True)


def iter_pyramid(
    image: da.Array, directory: str | os.PathLike | None = None
) -> Generator[tuple[int, int], None, list[da.Array]]:
    """:func:`build_pyramid` as a generator: yields ``(done, total)`` after each block.

    Its return value (``levels = yield from iter_pyramid(image)``) is the list of levels.
    A napari worker thread forwards the yields to its progress bar. Closed before the end
    (or failing), it removes the temporary directory it made.
    """
    image = da.asarray(image)
    created = directory is None
    if created:
        directory = tempfile.mkdtemp(prefix="napari-ncc-pyramid-")
        _CACHE_DIRS.append(directory)
    os.makedirs(directory, exist_ok=True)
    try:
        levels = yield from _write_levels(image, directory)
    except BaseException:
        # Abandoned (closed while paused at a yield: a cancelled napari run) or failed:
        # a pyramid of our own making is incomplete, so nothing of it is kept.
        if created:
            shutil.rmtree(directory, ignore_errors=True)
            _CACHE_DIRS.remove(directory)
        raise
    return levels


def _write_levels(image: da.Array, directory) -> Generator[tuple[int, int], None, list]:
    import zarr

    total = pyramid_blocks(image.shape)
    done = 0
    levels = [image]
    batch = max(2 * (os.cpu_count() or 1), 2)
    for k in range(1, len(pyramid_shapes(image.shape))):
        coarse = coarsen(levels[-1])
        chunks = tuple(
            PYRAMID_CHUNK if ax in plane_axes(coarse.ndim) else 1 for ax in range(coarse.ndim)
        )
        coarse = coarse.rechunk(chunks)
        store = zarr.open_array(
            os.path.join(directory, f"level{k}.zarr"),
            mode="w",
            shape=coarse.shape,
            chunks=chunks,
            dtype=coarse.dtype,
        )
        indices = list(np.ndindex(*coarse.numblocks))
        for start in range(0, len(indices), batch):
            group = indices[start : start + batch]
            # (often a worker thread: compute_isolated leaves Dask's global callbacks alone)
            values = compute_isolated(*(coarse.blocks[idx] for idx in group))
            for idx, value in zip(group, values, strict=True):
                region = tuple(
                    slice(i * c, i * c + n)
                    for i, c, n in zip(idx, chunks, value.shape, strict=True)
                )
                store[region] = value
                done += 1
                yield done, total
        levels.append(da.from_zarr(store))
    return levels


def build_pyramid(
    image: da.Array,
    directory: str | os.PathLike | None = None,
    *,
    progress: Callable[[int, int], object] | None = None,
) -> list[da.Array]:
    """Compute and cache the coarse levels of a single-scale image, reading it once.

    Level ``k`` is the mean of ``2 x 2`` pixel blocks of level ``k - 1`` over the plane (last
    two) axes, integer dtypes rounded back to their dtype, stopping at the first level whose
    plane is at most :data:`PYRAMID_MIN_SIDE` pixels a side. Each level is written to a zarr
    store (chunks of :data:`PYRAMID_CHUNK` per plane axis, one plane deep) and the next is
    computed from it, so the full-resolution image is read exactly once, in blocks: memory
    stays bounded by a few chunks whatever the image size.

    Parameters
    ----------
    image : dask.array.Array or array_like
        Level 0. Not copied: it stays the first level as it is.
    directory : path, optional
        Where the levels are stored (``level1.zarr``, ...). By default a temporary directory
        removed when the Python process ends.
    progress : callable, optional
        Called as ``progress(done, total)`` after each block written (``total`` is
        :func:`pyramid_blocks`). An exception it raises stops the build and removes the
        temporary directory (when `directory` was not given).

    Returns
    -------
    levels : list of dask.array.Array
        ``[image, level1, level2, ...]``, the coarse ones backed by the stores.

    Examples
    --------
    >>> import dask.array as da
    >>> levels = build_pyramid(da.ones((1200, 1000), dtype="uint8", chunks=512))
    >>> [level.shape for level in levels]
    [(1200, 1000), (600, 500), (300, 250)]
    """
    return run_steps(iter_pyramid(image, directory), progress)


def run_steps(
    steps: Generator[tuple[int, int], None, object],
    progress: Callable[[int, int], object] | None = None,
):
    """Run a generator of ``(done, total)`` steps to its end; return its return value.

    How the blocking functions (:func:`build_pyramid`, ``cached_pyramid``) drive their
    generator versions: each step goes to ``progress(done, total)``, which may raise to
    stop (a cancelled napari run); the generator is then closed, so that it removes what it
    left unfinished.

    Examples
    --------
    >>> def counting():
    ...     yield 1, 2
    ...     yield 2, 2
    ...     return "done"
    >>> run_steps(counting(), lambda done, total: print(f"{done}/{total}"))
    1/2
    2/2
    'done'
    """
    with contextlib.closing(steps):
        while True:
            try:
                done, total = next(steps)
            except StopIteration as stop:
                return stop.value
            if progress is not None:
                progress(done, total)


def rescaled(registration, factors):
    """A registration in pixels `factors` times larger (per axis): the shifts divided by them.

    A transform is conjugated by the block-mean map (:func:`_rescaled_transform`); per
    plane, each plane's transform by the factors of the plane's axes.

    Level ``k`` of a pyramid sees the level-0 shift divided by its downsampling factor;
    ``rescaled(registration, 1 / factors)`` goes the other way. None stays None.

    Examples
    --------
    >>> from napari_ncc import Registration
    >>> rescaled(Registration(shift=(8.0, -4.0)), (4.0, 4.0)).shift
    (2.0, -1.0)
    """
    if registration is None:
        return None
    factors = np.asarray(factors, dtype=np.float64)
    if np.all(factors == 1):
        return registration
    return dataclasses.replace(
        registration,
        shift=tuple(np.asarray(registration.shift) / factors),
        shifts=None if registration.shifts is None else registration.shifts / factors,
        transform=_rescaled_transform(registration.transform, factors),
        transforms=None
        if registration.transforms is None
        else tuple(
            _rescaled_transform(t, np.delete(factors, registration.per_plane))
            for t in registration.transforms
        ),
    )


def _rescaled_transform(transform, factors):
    """`transform` (level-0 pixels) on a level downsampled by `factors` (block means).

    Level-``k`` pixel ``p`` is the mean of level-0 pixels around ``factors * p + c``, with
    ``c = (factors - 1) / 2``, in both images; so ``M_k = T^-1 M_0 T`` with ``T`` that map.
    """
    if transform is None:
        return None
    from ._transform import AffineTransform, DeformableTransform

    ndim = len(factors)
    centre = (factors - 1) / 2
    to_level0 = np.eye(ndim + 1)
    to_level0[:ndim, :ndim] = np.diag(factors)
    to_level0[:ndim, ndim] = centre
    matrix = np.linalg.inv(to_level0) @ transform.affine.matrix @ to_level0
    try:
        affine = AffineTransform(matrix, transform.affine.model)
    except ValueError:  # anisotropic factors: no longer rigid or similar
        affine = AffineTransform(matrix, "affine")
    if not isinstance(transform, DeformableTransform):
        return affine
    shape = (ndim,) + (1,) * (np.ndim(transform.displacement) - 1)
    return DeformableTransform(
        affine,
        np.asarray(transform.displacement) / factors.reshape(shape),
        tuple((np.asarray(transform.origin) - centre) / factors),
        tuple(np.asarray(transform.spacing) / factors),
    )


def ncc_levels(
    reference_levels: Sequence[da.Array],
    moving_levels: Sequence[da.Array],
    *,
    radius: int = 3,
    registration=None,
    window: str = "box",
    mode: str = "reflect",
    fill_value: float = 0.0,
    axes=None,
    per_plane: int | None = None,
    mask=None,
    min_fraction: float = 0.5,
) -> list[da.Array]:
    """Lazy NCC map of every level of two pyramids: the quick preview (see the module notes).

    Level ``k`` is :func:`napari_ncc.ncc_confidence` of level ``k`` of the inputs with the
    registration rescaled to that level (:func:`rescaled`), so every level follows the same
    rules as the full-resolution map, the fill band where the shift brought in pixels from
    outside the moving image included.

    Parameters
    ----------
    reference_levels, moving_levels : sequence of dask.array.Array
        The two pyramids, level 0 first, with the same level shapes.
    radius, window, mode, fill_value, axes, per_plane, min_fraction
        As in :func:`napari_ncc.ncc_confidence`, the same at every level.
    mask : array_like or dask.array.Array of bool, optional
        Of level 0's shape, True where the pixels are data (see
        :func:`napari_ncc.ncc_confidence`). A coarse level uses :func:`mask_level`.
    registration : Registration, optional
        In level-0 pixels (from :func:`napari_ncc.register`); None compares the images as
        they are.

    Returns
    -------
    levels : list of dask.array.Array
        Float32, one per input level, computing nothing until sliced. Levels too small for
        the window (an axis not longer than `radius`) are dropped from the end.

    Examples
    --------
    >>> import dask.array as da, numpy as np
    >>> rng = np.random.default_rng(0)
    >>> image = da.from_array(rng.random((64, 64)), chunks=32)
    >>> pyramid = [image, image[::2, ::2]]
    >>> levels = ncc_levels(pyramid, pyramid, radius=2)
    >>> [level.shape for level in levels], bool(np.allclose(levels[1].compute(), 1, atol=1e-5))
    ([(64, 64), (32, 32)], True)
    """
    from ._confidence import ncc_confidence

    if len(reference_levels) != len(moving_levels):
        raise ValueError(
            "reference and moving must have the same number of pyramid levels, got "
            f"{len(reference_levels)} and {len(moving_levels)}"
        )
    shapes = [tuple(level.shape) for level in reference_levels]
    for k, (ref, mov) in enumerate(zip(reference_levels, moving_levels, strict=True)):
        if tuple(ref.shape) != tuple(mov.shape):
            raise ValueError(
                f"reference and moving must have the same shape at every level, got "
                f"{tuple(ref.shape)} and {tuple(mov.shape)} at level {k}"
            )
    ndim = len(shapes[0])
    if axes is None:
        windowed = [ax for ax in range(ndim) if per_plane is None or ax != per_plane % ndim]
    else:
        windowed = [int(ax) % ndim for ax in np.atleast_1d(axes)]
    radii = np.broadcast_to(np.asarray(radius), (len(windowed),))
    levels = []
    for ref, mov, factors in zip(
        reference_levels, moving_levels, level_factors(shapes), strict=True
    ):
        if levels and any(ref.shape[ax] <= r for ax, r in zip(windowed, radii, strict=True)):
            break
        if (
            levels
            and registration is not None
            and registration.shifts is not None
            and ref.shape[registration.per_plane] != len(registration.shifts)
        ):
            break  # a pyramid that also merges planes: one shift per plane no longer fits
        ncc, _ = ncc_confidence(
            da.asarray(ref),
            da.asarray(mov),
            radius=radius,
            register=False,
            registration=rescaled(registration, factors),
            window=window,
            mode=mode,
            fill_value=fill_value,
            axes=axes,
            per_plane=per_plane,
            mask=None if mask is None else mask_level(mask, ref.shape),
            min_fraction=min_fraction,
        )
        levels.append(ncc)
    return levels


def mask_level(mask, shape: Sequence[int]):
    """A level-0 `mask` on the grid of a coarser level of `shape`, lazily.

    Each coarse pixel takes the value of the level-0 pixel nearest its centre (of two
    equally near, the later one): a sample,
    not an average, so the level stays boolean and a thin excluded line may disappear at
    coarse levels (which only serve the overview).

    Examples
    --------
    >>> mask = np.array([[True, True, False, False]] * 2)
    >>> mask_level(mask, (1, 2)).compute()
    array([[ True, False]])
    """
    if tuple(mask.shape) == tuple(shape):
        return mask
    level = da.asarray(mask)
    for ax, (n0, n) in enumerate(zip(mask.shape, shape, strict=True)):
        if n0 != n:
            centres = np.minimum(((np.arange(n) + 0.5) * (n0 / n)).astype(np.int64), n0 - 1)
            level = da.take(level, centres, axis=ax)
    return level


def registered_levels(moving_levels: Sequence[da.Array], registration) -> list[da.Array]:
    """The moving pyramid shifted onto the reference grid, lazily, level by level.

    `registration` is in level-0 pixels and is rescaled to every level
    (:meth:`Registration.apply`: linear interpolation, nearest-value borders).
    """
    shapes = [tuple(level.shape) for level in moving_levels]
    return [
        rescaled(registration, factors).apply(da.asarray(level))
        for level, factors in zip(moving_levels, level_factors(shapes), strict=True)
    ]


def coarse_level(
    shapes: Sequence[Sequence[int]], max_side: int | None = None, plane_axis=None
) -> int:
    """The first level small enough to register in memory (all registered axes <= max_side).

    0 when level 0 already is; the last level when none is. `max_side` defaults to
    :data:`PREVIEW_MAX_SIDE`.

    Examples
    --------
    >>> coarse_level([(40000, 40000), (20000, 20000), (10000, 10000), (1250, 1250)])
    3
    """
    max_side = PREVIEW_MAX_SIDE if max_side is None else max_side
    for k, shape in enumerate(shapes):
        sides = [n for ax, n in enumerate(shape) if ax != plane_axis]
        if max(sides) <= max_side:
            return k
    return len(shapes) - 1


def register_level(reference_levels, moving_levels, level: int, **kwargs):
    """Register two pyramids on one coarse level; the result is in level-0 pixels.

    A quick estimate for what the viewer shows first: at level ``k`` an error of a tenth
    of that level's pixel is invisible, and the estimate costs only that level's pixels.
    ``kwargs`` go to :func:`napari_ncc.register`.
    """
    from ._register import register

    registration = register(list(reference_levels[level:]), list(moving_levels[level:]), **kwargs)
    if level == 0:
        return registration
    factors = np.asarray(level_factors([r.shape for r in reference_levels])[level])
    return dataclasses.replace(
        rescaled(registration, 1 / factors),
        method=f"{registration.method} on pyramid level {level} (preview)",
    )
