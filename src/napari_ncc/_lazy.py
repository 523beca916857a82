"""Lazy, chunked local NCC on Dask arrays: builds the graph of :func:`local_ncc`.

Every output block is computed by the core :func:`~napari_ncc._ncc.ncc_block` from a block
of the inputs plus a halo as wide as the window radius, with border index maps from
:func:`~napari_ncc._borders.border_index_map` converted from global to local indices, so
border modes and chunk seams are handled exactly as in memory. A mask, if given, is a third
input read exactly like the reference (same halo, same index maps, never shifted).

Where an input is backed by something that can be sliced (found by
:mod:`napari_ncc._sources`), each output block reads its own region straight from it
(:mod:`napari_ncc._blocks`: layouts and halo strips): no input chunk is shared between
tasks, so storing the map with plain Dask keeps a bounded number of blocks in memory
whatever the image size. A subpixel shift of the moving image is applied inside the same
per-block read (:mod:`napari_ncc._shift`), so read -> shift -> NCC -> store stays bounded
too. A computed Dask input (``map_blocks`` of a reader or generator, a filter) is read the
same way, each read computing just the chunks it touches (``_sources.DaskSource``); the
graph's tasks are made on demand (``_blocks.BlockReads``), so a napari view of a gigapixel
map costs its blocks on screen, whatever the image size. Only inputs whose chunks each need
many others (a reduction over the image) go through ``dask.array.overlap``.

All task functions are module-level and their arguments picklable, so the graphs run on
``dask.distributed``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from functools import partial

import dask.array as da
import numpy as np
from dask.base import tokenize

from ._blocks import (
    BlockReads,
    ReadInput,
    assemble,
    borrowed_contiguous,
    merge_chunks,
    overlap_chunks,
)
from ._borders import border_index_map
from ._ncc import NCCPlan, check_image, check_mask, ncc_block, plan_ncc
from ._ncc import local_ncc as _local_ncc_numpy
from ._shift import shift_lazy, shift_margin, shift_read_box, shift_transform
from ._sources import DaskSource, as_dask_array, as_source, storage_chunks
from ._validation import check_finite_shift

__all__ = ["local_ncc"]

#: Output blocks read straight from a source are grown (by merging whole input chunks
#: along the windowed axes) to about this many pixels: tiny chunks waste time on task
#: overhead and halo re-reads, while the peak memory per thread stays ~ 20 bytes/pixel.
BLOCK_PIXELS = 2**22

#: Blocks read from a computed Dask array (:class:`~napari_ncc._sources.DaskSource`) are
#: about this many pixels (its chunks merged, or split into at most twice this side):
#: computing a chunk costs more than decoding one, and what a view computes is every chunk
#: under the blocks that cover the screen plus those their halos reach. Small blocks hug
#: the screen, so their halos rarely leave the chunks under it (napari computes those for
#: the input layers anyway): on 1024 x 1024 chunks, a 1:1 view generated 23 input chunks
#: with blocks of one chunk, 16 with 512 x 512 blocks and 11.5 with 256 x 256 ones (for
#: 40% less CPU time); smaller blocks save little more and add task overhead.
COMPUTED_BLOCK_PIXELS = 2**14


def _runs(indices: np.ndarray) -> list[tuple[int, int]]:
    """Contiguous ``(start, stop)`` runs of sorted unique indices."""
    breaks = np.flatnonzero(np.diff(indices) != 1) + 1
    first = np.concatenate(([0], breaks))
    last = np.concatenate((breaks - 1, [len(indices) - 1]))
    return [(int(indices[f]), int(indices[e]) + 1) for f, e in zip(first, last, strict=True)]


def _block_reads(plan: NCCPlan, box) -> tuple[list, list]:
    """Runs to read per axis and the local index maps of the windowed axes."""
    runs, maps = [], []
    for ax, (start, stop) in enumerate(box):
        if ax not in plan.axes:
            runs.append([(start, stop)])
            continue
        r = plan.radius[plan.axes.index(ax)]
        index = border_index_map(plan.shape[ax], start, stop, r, plan.mode)
        inside = index >= 0
        lo = int(index[inside].min())
        read = np.zeros(int(index.max()) - lo + 1, dtype=bool)
        read[index[inside] - lo] = True
        # Local index of a source index: its rank among the indices read.
        rank = np.arange(len(read)) if read.all() else np.cumsum(read) - 1
        runs.append(_runs(np.flatnonzero(read) + lo))
        maps.append(np.where(inside, rank[np.where(inside, index - lo, 0)], -1))
    return runs, maps


def _block_runs(plan: NCCPlan, box) -> list:
    return _block_reads(plan, box)[0]


def _ncc_task(keys, plan: NCCPlan, shift, box, layouts, cells) -> tuple:
    task = (ncc_source_block, keys[0], keys[1], plan, box, *layouts[:2], *cells[:2], shift)
    if len(keys) > 2:  # the mask
        task = (*task, keys[2], layouts[2], cells[2])
    return task


def ncc_source_block(
    source0,
    source1,
    plan: NCCPlan,
    box,
    layout0,
    layout1,
    strips0,
    strips1,
    shift=None,
    mask_source=None,
    mask_layout=None,
    mask_strips=(),
) -> np.ndarray:
    """NCC map of one output block, reading it and its halo straight from the sources.

    Parameters
    ----------
    source0, source1 : sliceable
        Full-size images (zarr arrays, memory maps, ...), sliced with tuples of slices.
    plan : NCCPlan
    box : sequence of (start, stop)
        The output block, per axis, in global coordinates.
    layout0, layout1 : tuple
        How to read each image (see :func:`napari_ncc._blocks.read_layout`).
    strips0, strips1 : list of dict
        Results of the strip tasks the layouts refer to.
    shift : sequence of float, optional
        Subpixel shift applied to `source1` (``scipy.ndimage.shift`` convention, linear,
        ``mode="nearest"``) as it is read.
    mask_source, mask_layout, mask_strips : optional
        The boolean mask, read like `source0` (it is in the reference frame, never shifted).
    """
    _, maps = _block_reads(plan, box)
    regions = [assemble(source0, layout0, strips0)]
    transform = None if shift is None else shift_transform(shift, 1, "nearest")
    regions.append(assemble(source1, layout1, strips1, transform))
    if mask_source is not None:
        regions.append(assemble(mask_source, mask_layout, mask_strips))
    with borrowed_contiguous(*regions) as (block0, block1, *mask):
        return ncc_block(block0, block1, plan, maps, mask=mask[0] if mask else None, n_threads=1)


# ---------------------------------------------------------------------------------------
# Fallback for computed inputs: dask overlap, then global -> local index maps
# ---------------------------------------------------------------------------------------


def _overlap_boundary(plan: NCCPlan) -> dict[int, str]:
    # Only "wrap" reads across the image; every other mode reads within radius of the edge,
    # which the un-padded ("none") overlap already holds.
    kind = "periodic" if plan.mode == "wrap" else "none"
    return {ax: (kind if ax in plan.axes else "none") for ax in range(len(plan.shape))}


def ncc_overlap_block(
    block0, block1, mask=None, *, plan: NCCPlan, chunks, block_id=None
) -> np.ndarray:
    """NCC map of one block of ``dask.array.overlap`` output (see :func:`local_ncc`).

    `mask`, if given, is the block of the overlapped boolean mask, read like the images.
    """
    maps = []
    for ax, r in zip(plan.axes, plan.radius, strict=True):
        starts = np.cumsum((0, *chunks[ax]))
        start, stop = int(starts[block_id[ax]]), int(starts[block_id[ax] + 1])
        index = border_index_map(plan.shape[ax], start, stop, r, plan.mode)
        if plan.mode == "wrap":
            local = np.arange(len(index), dtype=np.int64)
        else:
            local = np.where(index >= 0, index - max(0, start - r), -1)
        maps.append(local)
    return ncc_block(block0, block1, plan, maps, mask=mask, n_threads=1)


# ---------------------------------------------------------------------------------------
# Chunk planning
# ---------------------------------------------------------------------------------------


def _split_chunks(chunks: tuple[int, ...], max_len: int) -> tuple[int, ...]:
    """Split chunks longer than `max_len` into equal pieces and a shorter last one."""
    out: list[int] = []
    for c in chunks:
        if c <= max_len:
            out.append(c)
            continue
        piece = -(-c // -(-c // max_len))
        out.extend([piece] * (c // piece) + ([c % piece] if c % piece else []))
    return tuple(out)


def _source_chunks(chunks: tuple, plan: NCCPlan, block_pixels: int) -> tuple:
    """Output chunks of the direct-read path: input chunks merged (or split) to blocks of
    about `block_pixels`, so that seams follow the input chunks where they can."""
    other = math.prod(max(chunks[ax]) for ax in range(len(chunks)) if ax not in plan.axes)
    k = len(plan.axes)
    target = max(1, math.ceil((block_pixels / max(other, 1)) ** (1.0 / k)))
    out = list(chunks)
    for ax in plan.axes:
        out[ax] = _split_chunks(merge_chunks(chunks[ax], target, 1), 2 * target)
    return tuple(out)


def _normalize_output_chunks(chunks, shape) -> tuple:
    return da.core.normalize_chunks(chunks, shape=shape)


# ---------------------------------------------------------------------------------------
# Graph building
# ---------------------------------------------------------------------------------------


def _lazy_ncc(reference, moving, plan: NCCPlan, shift, chunks=None, mask=None) -> da.Array:
    # The mask, if any, is a third input read exactly like the reference (same halo, same
    # border index maps, never shifted), so masked maps are chunk-invariant too.
    inputs = (reference, moving) if mask is None else (reference, moving, mask)
    srcs = [as_source(x) for x in inputs]
    dask_inputs = [x for x in inputs if isinstance(x, da.Array)]
    base_chunks = dask_inputs[0].chunks
    token = tokenize(
        "napari-ncc",
        plan,
        shift,
        chunks,
        *[
            x.name if isinstance(x, da.Array) else (src[0] if src else None)
            for x, src in zip(inputs, srcs, strict=True)
        ],
    )
    if all(src is not None for src in srcs):
        ndim = len(plan.shape)
        keys = [key for key, _ in srcs]
        native = [storage_chunks(source, ndim) for _, source in srcs]
        if chunks is not None:
            out_chunks = _normalize_output_chunks(chunks, plan.shape)
        else:
            # Blocks made of whole storage chunks, so that no chunk is decoded by two blocks.
            grid = next((c for c in native if c is not None), None)
            if grid is not None:
                base_chunks = _normalize_output_chunks(grid, plan.shape)
            computed = any(isinstance(source, DaskSource) for _, source in srcs)
            block_pixels = COMPUTED_BLOCK_PIXELS if computed else BLOCK_PIXELS
            out_chunks = _source_chunks(base_chunks, plan, min(block_pixels, BLOCK_PIXELS))
        halo = [plan.depth[ax] for ax in range(ndim)]
        if shift is None:
            reach, margins = None, [0] * ndim
        else:
            reach = partial(shift_read_box, shape=plan.shape, shift=shift, order=1, mode="nearest")
            margins = [shift_margin(s, 1) for s in shift]
        settings = [
            (None, tuple(halo)),
            (reach, tuple(h + m for h, m in zip(halo, margins, strict=True))),
            (None, tuple(halo)),  # the mask: read like the reference, never shifted
        ]
        read_inputs = tuple(
            ReadInput(key, source, f"local-ncc-strips{i}-{token}", native[i], *settings[i])
            for i, (key, source) in enumerate(srcs)
        )
        reads = BlockReads(
            f"local-ncc-{token}",
            out_chunks,
            plan.shape,
            read_inputs,
            partial(_block_runs, plan),
            partial(_ncc_task, tuple(keys), plan, shift),
        )
        return as_dask_array(reads.name, reads, out_chunks, np.float32)
    # Computed input(s): dask overlap with un-padded (or periodic) borders.
    arrays = [
        x if isinstance(x, da.Array) else da.from_array(x, chunks=base_chunks) for x in inputs
    ]
    if shift is not None:
        arrays[1] = shift_lazy(arrays[1], shift, order=1, mode="nearest")
    depth = plan.depth
    target = chunks if chunks is not None else base_chunks
    target = _normalize_output_chunks(target, plan.shape)
    out_chunks = overlap_chunks(target, depth)
    arrays = [x.rechunk(out_chunks) for x in arrays]
    boundary = _overlap_boundary(plan)
    extended = [da.overlap.overlap(x, depth=depth, boundary=boundary) for x in arrays]
    return da.map_blocks(
        partial(ncc_overlap_block, plan=plan, chunks=out_chunks),
        *extended,
        chunks=out_chunks,
        dtype=np.float32,
        meta=np.empty((0,) * len(plan.shape), dtype=np.float32),
        name=f"local-ncc-overlap-{token}",
    )


def local_ncc(
    reference,
    moving,
    *,
    radius: int | Sequence[int] = 3,
    window: str = "box",
    mode: str = "reflect",
    fill_value: float = 0.0,
    axes: int | Sequence[int] | None = None,
    moving_shift: Sequence[float] | None = None,
    mask=None,
    min_fraction: float = 0.5,
    chunks=None,
):
    """Local normalized cross-correlation (Pearson correlation of patches) of two images.

    For every pixel, the Pearson correlation coefficient of the two patches of
    ``2 * radius + 1`` pixels per windowed axis centred on it (with a `mask`: of their
    pixels where the mask is true). NumPy in, NumPy out; a Dask array in (either image or
    the mask) gives a lazy Dask array out, computed chunk by chunk.

    Parameters
    ----------
    reference, moving : array_like or dask.array.Array
        Images of the same shape, any real dtype (bool, integer, float). Not modified.
        The map is symmetric in the two, except that `moving_shift` moves `moving`.
    radius : int or sequence of int, optional
        Window half-width, one for all windowed axes or one per axis in `axes`. A radius
        of 0 along an axis means the window does not extend along it; at least one must
        be >= 1, and each must be smaller than its axis.
    window : {"box", "gaussian"}, optional
        Uniform weights, or Gaussian weights with ``sigma = radius / 2`` truncated at the
        radius (see :func:`~napari_ncc._ncc.gaussian_weights`).
    mode : str, optional
        How windows read beyond the border, as in ``scipy.ndimage`` filters: "reflect"
        (the default, ``numpy.pad(mode="symmetric")``), "mirror", "nearest", "wrap" or
        "constant" (zeros), and their "grid-" aliases.
    fill_value : float, optional
        Written where the correlation is undefined because either patch is flat: its
        standard deviation is zero or below ``FLAT_RTOL`` (1e-6) times the half-range of
        the values (of the image in memory; of the block and its halo when lazy; of the
        true pixels only, with a mask), or, with a mask, because too few of the window's
        pixels are true (see `min_fraction`). ``np.nan`` works too.
    axes : int or sequence of int, optional
        Axes the window spans (all by default). Other axes are independent: for example
        ``axes=(-2, -1)`` gives a per-plane 2D map through a time series.
    moving_shift : sequence of float, optional
        Shift `moving` by this much per axis before correlating, with linear
        interpolation and ``mode="nearest"``, as ``scipy.ndimage.shift(moving,
        moving_shift, order=1, mode="nearest")`` (so that the shifted moving image matches
        the reference). Lazily, each block is shifted as it is read. To also mark the
        pixels shifted in from outside `moving`, use :func:`napari_ncc.ncc_confidence`
        with a :class:`napari_ncc.Registration`.
    mask : array_like or dask.array.Array of bool, optional
        Of the images' shape, True where the pixels are data. Each window's correlation is
        then computed over its true pixels only; the values under a false mask never enter
        the result (they may be anything, NaN included). The mask is in the reference's
        frame (`moving_shift` does not move it). It follows `mode` at the border like the
        images, and with ``mode="constant"`` the zeros beyond the border count as data, so
        an all-true mask gives the unmasked map. Integer masks are refused: pass
        ``labels > 0`` or ``mask != 0``. See "Masks" in the documentation.
    min_fraction : float, optional
        With a mask: the fraction of a window's pixels (of its weight, for the Gaussian
        window) that must be true, in (0, 1]; other windows get `fill_value`.
    chunks : int, tuple or str, optional
        Blocks of the lazy map, in any form ``dask.array.rechunk`` accepts (``16``,
        ``(256, 512)``, ``"auto"``): each block is computed at that size, which is cheaper
        than rechunking the finished map (that holds several blocks at once). By default
        the input chunks, merged to about ``BLOCK_PIXELS`` pixels when read from a source.
        Only for Dask input: NumPy images give a NumPy map, computed in one piece.

    Returns
    -------
    ncc : ndarray or dask.array.Array of float32
        Same shape as the inputs, values in [-1, 1] (or `fill_value`). A Dask array when
        either input is one: nothing is computed until asked.

    Notes
    -----
    The moments are accumulated as running sums in float64 after subtracting the
    mid-range of the values, so the cost per pixel does not depend on the radius and data
    with a large offset and a small local variance (such as uint16 at 30000 +- 10) keep
    full accuracy; for integer data of up to 16 bits the sums are exact.

    Lazily, every output block is computed from the input block plus a halo of `radius`
    pixels on each windowed axis, with the image-border modes applied exactly as in
    memory, so seams and borders give the in-memory values (to float32 rounding: the
    moments are centred on each block's mid-range). One thing does depend on the
    chunking: for data whose sums are not exact (floats, Gaussian windows, integers of
    more than 16 bits), the flat-window threshold is ``FLAT_RTOL`` times the half-range of
    the block and its halo, not of the whole image, so a window whose standard deviation
    lies between the two thresholds (about 1e-6 of the value range: flat up to rounding)
    can be `fill_value` with one chunking and a correlation with another. With a mask the
    same holds, the half-range being that of the block's true pixels; the mask itself is
    read with the same halo and border handling as the images, so which pixels count, and
    the `min_fraction` test, never depend on the chunking. Building the graph reads no
    pixel.
    When the inputs are backed by something sliceable (``da.from_zarr``, a TIFF zarr
    store, ``da.from_array`` of a NumPy array or memory map), each block reads its own
    halo from the source, so storing the map (``to_zarr``, ``da.store``,
    :func:`napari_ncc._io.write_ncc`) holds only a few blocks in memory whatever the
    image size; output blocks are input chunks merged to about ``BLOCK_PIXELS`` pixels.
    A computed Dask input (``map_blocks`` of a reader or a generator, a filter) is read
    the same way, each read computing only the input chunks it touches (once, while
    they stay in a cache of recently computed chunks), and blocks of about 256 x 256
    pixels, so a slice of the map (a napari view) costs
    the blocks it covers whatever the image size; inputs whose chunks each need many
    others (a reduction) are correlated through ``dask.array.overlap``. The graph is
    picklable and runs on ``dask.distributed`` (``Client("tcp://host:port")``).

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

    Lazily, with Dask:

    >>> import dask.array as da
    >>> lazy = local_ncc(da.from_array(a, chunks=16), da.from_array(b, chunks=32), radius=3)
    >>> lazy.dtype, lazy.shape
    (dtype('float32'), (64, 64))
    >>> bool(np.allclose(lazy.compute(), m, atol=1e-5))
    True

    Pixels that are not data, here a band of garbage, are left out with a mask:

    >>> b[:, :20] = 1e4
    >>> m = local_ncc(a, b, radius=3, mask=b < 1e4, fill_value=np.nan)
    >>> bool(np.allclose(m[:, 23:], 1.0, atol=1e-5)), bool(np.isnan(m[:, :19]).all())
    (True, True)
    """
    lazy = any(isinstance(x, da.Array) for x in (reference, moving, mask))
    if mask is not None and not isinstance(mask, da.Array):
        mask = np.asarray(mask)
    if not lazy:
        if chunks is not None:
            raise ValueError(
                f"chunks={chunks!r} is for the lazy map of Dask input, but both images are "
                "in memory; wrap one with dask.array.from_array to build a lazy map"
            )
        reference, moving = np.asarray(reference), np.asarray(moving)
    for image, name in ((reference, "reference"), (moving, "moving"), (mask, "mask")):
        if isinstance(image, da.Array) and any(math.isnan(n) for n in image.shape):
            raise ValueError(
                f"{name} has unknown chunk sizes (shape {image.shape}); call "
                "compute_chunk_sizes() on it first"
            )
        if image is not mask:
            check_image(image, name)
    plan = plan_ncc(
        reference.shape,
        moving.shape,
        radius,
        window=window,
        mode=mode,
        fill_value=fill_value,
        axes=axes,
        min_fraction=min_fraction,
    )
    if mask is not None:
        check_mask(mask, plan.shape)
    shift = (
        None
        if moving_shift is None
        else check_finite_shift(moving_shift, reference.ndim, "moving_shift")
    )
    if shift is not None and not any(shift):
        shift = None
    if not lazy:
        if shift is not None:
            moving = shift_lazy(moving, shift)
        return _local_ncc_numpy(
            reference,
            moving,
            radius=radius,
            window=window,
            mode=mode,
            fill_value=fill_value,
            axes=axes,
            mask=mask,
            min_fraction=min_fraction,
        )
    return _lazy_ncc(reference, moving, plan, shift, chunks, mask)
