"""Lazy, chunked local NCC and subpixel shift on Dask arrays: the lazy layer.

Every output block of :func:`local_ncc` is computed by the core
:func:`~napari_ncc._ncc.ncc_block` from a block of the inputs plus a halo as wide as the
window radius, with border index maps from
:func:`~napari_ncc._borders.border_index_map` converted from global to local indices, so
border modes and chunk seams give exactly the numbers of the in-memory path.

Where an input is backed by something that can be sliced (a zarr array, a TIFF file's zarr
store, a memory map, a NumPy array), each output block reads its own region straight from
that source: no input chunk is shared between tasks, so storing the map with plain Dask keeps
a bounded number of blocks in memory whatever the image size. For sources stored in
compressed chunks, the thin halo strips a block needs from its neighbours' chunks come from
one small "strip" task per chunk, so each chunk is decompressed about twice rather than once
per neighbouring block. Computed Dask inputs go through ``dask.array.overlap`` instead. A
subpixel shift of the moving image is applied inside the same per-block read, so
read -> shift -> NCC -> store stays bounded too.

All task functions are module-level and their arguments picklable, so the graphs run on
``dask.distributed``.
"""

from __future__ import annotations

import contextlib
import contextvars
import itertools
import math
import operator
import threading
import uuid
from collections.abc import Sequence
from functools import partial
from numbers import Real

import dask.array as da
import numpy as np
from dask.base import tokenize
from dask.highlevelgraph import HighLevelGraph, MaterializedLayer
from scipy import ndimage

from ._borders import border_index_map, canonical_mode
from ._ncc import NCCPlan, check_image, ncc_block, plan_ncc
from ._ncc import local_ncc as _local_ncc_numpy

__all__ = ["local_ncc", "shift_lazy"]

#: Output blocks read straight from a source are grown (by merging whole input chunks
#: along the windowed axes) to about this many pixels: tiny chunks waste time on task
#: overhead and halo re-reads, while the peak memory per thread stays ~ 20 bytes/pixel.
BLOCK_PIXELS = 2**22

#: Shift modes that only read pixels near the output position (so a block plus a margin
#: holds everything its shifted values need).
SHIFT_MODES = ("nearest", "constant", "grid-constant", "reflect", "mirror", "grid-mirror")

#: Extra margin for spline orders > 1, whose prefilter is an IIR filter over the whole axis:
#: its influence decays by a factor of at least ~0.43 (order 5) per pixel, ~1e-12 at 32.
_SPLINE_MARGIN = 32


# ---------------------------------------------------------------------------------------
# Sources: what can be sliced directly
# ---------------------------------------------------------------------------------------


class ChunkedSource:
    """A sliceable view over in-memory chunks (a Dask array of NumPy blocks).

    ``da.from_array(numpy_array)`` and persisted arrays hold their chunks as NumPy arrays in
    the graph; this reassembles any box from them without copying the whole array.

    Parameters
    ----------
    blocks : dict
        Block index (tuple of int) -> ndarray.
    chunks : tuple of tuple of int
        Dask chunks of the array.
    dtype : numpy dtype
    """

    def __init__(self, blocks: dict, chunks: tuple, dtype) -> None:
        self.blocks = blocks
        self.chunks = chunks
        self.dtype = np.dtype(dtype)
        self.shape = tuple(sum(c) for c in chunks)
        self._starts = [np.cumsum((0, *c)) for c in chunks]

    def __getitem__(self, index: tuple[slice, ...]) -> np.ndarray:
        ranges = []
        for ax, sl in enumerate(index):
            start, stop, _ = sl.indices(self.shape[ax])
            starts = self._starts[ax]
            first = int(np.searchsorted(starts, start, side="right")) - 1
            last = int(np.searchsorted(starts, stop, side="left")) - 1
            ranges.append(
                [
                    (i, max(start, starts[i]) - starts[i], min(stop, starts[i + 1]) - starts[i])
                    for i in range(first, max(first, last) + 1)
                ]
            )
        if all(len(r) == 1 for r in ranges):
            block = self.blocks[tuple(r[0][0] for r in ranges)]
            return np.asarray(block[tuple(slice(r[0][1], r[0][2]) for r in ranges)])
        # One copy into the result (np.block would concatenate axis by axis).
        out = np.empty([sum(p[2] - p[1] for p in r) for r in ranges], dtype=self.dtype)
        offsets = [np.cumsum([0] + [p[2] - p[1] for p in r]) for r in ranges]
        for combo in itertools.product(*(range(len(r)) for r in ranges)):
            parts = [ranges[ax][c] for ax, c in enumerate(combo)]
            block = self.blocks[tuple(p[0] for p in parts)]
            target = tuple(
                slice(int(o[c]), int(o[c + 1])) for o, c in zip(offsets, combo, strict=True)
            )
            out[target] = block[tuple(slice(p[1], p[2]) for p in parts)]
        return out


def _memory_span(array: np.ndarray) -> tuple[int, int]:
    """First and one-past-last byte addresses an array's elements occupy."""
    low = high = array.__array_interface__["data"][0]
    for n, stride in zip(array.shape, array.strides, strict=True):
        reach = (n - 1) * stride
        low, high = (low + reach, high) if reach < 0 else (low, high + reach)
    return low, high + array.itemsize


def _root(array: np.ndarray) -> np.ndarray:
    while isinstance(array.base, np.ndarray):
        array = array.base
    return array


def _whole_array(blocks: dict, chunks: tuple) -> np.ndarray | None:
    """The NumPy array that all `blocks` are views of, as one read-only view, or None.

    ``da.from_array(numpy_array)`` holds its chunks as views of one array (its copy of
    the user's array): seeing the whole array again lets a block read its halo as a
    plain slice (no reassembly). Checked, not assumed: every block must sit in the same
    buffer exactly where its position in the whole array puts it.
    """
    ndim = len(chunks)
    first = blocks[(0,) * ndim]
    if any(block.size == 0 for block in blocks.values()):
        return None
    root = _root(first)
    strides = list(first.strides)
    for block in blocks.values():  # strides along axes where some block is > 1 long
        for ax in range(ndim):
            if block.shape[ax] > 1:
                strides[ax] = block.strides[ax]
    starts = [np.cumsum((0, *c)) for c in chunks]
    origin = first.__array_interface__["data"][0]
    for idx, block in blocks.items():
        if _root(block) is not root:
            return None
        where = origin + sum(int(s[i]) * st for s, i, st in zip(starts, idx, strides, strict=True))
        if block.__array_interface__["data"][0] != where or any(
            n > 1 and st != expected
            for n, st, expected in zip(block.shape, block.strides, strides, strict=True)
        ):
            return None
    shape = tuple(int(s[-1]) for s in starts)
    whole = np.lib.stride_tricks.as_strided(first, shape, tuple(strides), writeable=False)
    low, high = _memory_span(whole)
    root_low, root_high = _memory_span(root)
    if low < root_low or high > root_high:
        return None
    return whole


def _getters() -> tuple:
    from dask.array import core

    return tuple(
        getattr(core, n) for n in ("getter", "getter_nofancy", "getter_inline") if hasattr(core, n)
    )


def _unwrap(value):
    # dask may wrap literal data in a DataNode.
    return getattr(value, "value", value) if type(value).__name__ == "DataNode" else value


class SlicedSource:
    """A source seen through plain slicing (unit steps, integer indices dropping axes).

    Parameters
    ----------
    source : sliceable
        The full source.
    mapping : tuple
        Per source axis, ``("fixed", index)`` or ``("offset", start)``.
    shape : tuple of int
        Shape of the sliced view.
    dtype : numpy dtype
    """

    def __init__(self, source, mapping: tuple, shape: tuple, dtype) -> None:
        self.source = source
        self.mapping = mapping
        self.shape = tuple(shape)
        self.dtype = np.dtype(dtype)

    @property
    def chunks(self) -> tuple[int, ...] | None:
        """Storage chunks, when the slicing starts on chunk boundaries."""
        native = storage_chunks(self.source, len(self.mapping))
        if native is None:
            return None
        kept = [
            (v, c) for (kind, v), c in zip(self.mapping, native, strict=True) if kind != "fixed"
        ]
        if any(v % c for v, c in kept):
            return None
        return tuple(c for _, c in kept)

    def __getitem__(self, index: tuple[slice, ...]) -> np.ndarray:
        full, j = [], 0
        for kind, value in self.mapping:
            if kind == "fixed":
                full.append(value)
                continue
            start, stop, _ = index[j].indices(self.shape[j])
            full.append(slice(start + value, stop + value))
            j += 1
        return np.asarray(self.source[tuple(full)])


def _getter_source(layers, name: str):
    """``(key, source, chunks)`` of a layer that reads a sliceable source, else None."""
    try:
        from dask.blockwise import Blockwise
    except ImportError:  # pragma: no cover
        return None
    layer = layers.get(name)
    if not isinstance(layer, Blockwise):
        return None
    task = getattr(layer, "task", None)
    if getattr(task, "func", None) not in _getters() or len(task.args) != 2:
        return None
    # A lock means the source is not safe to read from several threads: fall back.
    if task.kwargs.get("lock") or set(task.kwargs) - {"asarray", "lock"}:
        return None
    if len(layer.indices) != 2 or layer.indices[0][1] is not None:
        return None
    ref = layer.indices[0][0]
    dep = layer.io_deps.get(layer.indices[1][0]) if layer.io_deps else None
    chunks = tuple(map(tuple, getattr(dep, "chunks", ()))) if dep is not None else ()
    if not chunks:
        return None
    key = getattr(ref, "key", None)
    if key is not None:
        other = layers.get(key)
        if other is None or key not in other:
            return None
        source = _unwrap(other[key])
    else:
        source, key = ref, f"napari-ncc-source-{tokenize(name)}"
    if not hasattr(source, "__getitem__") or tuple(getattr(source, "shape", ())) != tuple(
        sum(c) for c in chunks
    ):
        return None
    return key, source, chunks


def _plain_slicing(array, layer, inner: str, inner_chunks: tuple) -> tuple | None:
    """The slicing a getitem layer applies to the array `inner`, if it is plain."""
    from dask._task_spec import Alias
    from dask.array import chunk

    getitems = (operator.getitem, getattr(chunk, "getitem", operator.getitem))
    starts = [np.cumsum((0, *c)) for c in inner_chunks]
    out_starts = [np.cumsum((0, *c)) for c in array.chunks]
    mapping = None
    for idx in itertools.product(*(range(n) for n in array.numblocks)):
        task = layer.get((array.name, *idx))
        deps = getattr(task, "dependencies", None)
        if not deps or len(deps) != 1:
            return None
        (dep,) = deps
        if not isinstance(dep, tuple) or dep[0] != inner or len(dep) != len(inner_chunks) + 1:
            return None
        in_idx = dep[1:]
        if isinstance(task, Alias):
            index = (slice(None),) * len(inner_chunks)
        elif getattr(task, "func", None) in getitems and len(task.args) == 2:
            index = task.args[1]
        else:
            return None
        if not isinstance(index, tuple) or len(index) != len(inner_chunks):
            return None
        entry, j = [], 0
        for ax, ix in enumerate(index):
            n, base = inner_chunks[ax][in_idx[ax]], int(starts[ax][in_idx[ax]])
            if isinstance(ix, int | np.integer) and not isinstance(ix, bool):
                entry.append(("fixed", base + int(ix) % n))
            elif isinstance(ix, slice) and j < array.ndim:
                a, b, step = ix.indices(n)
                if step != 1 or b - a != array.chunks[j][idx[j]]:
                    return None
                entry.append(("offset", base + a - int(out_starts[j][idx[j]])))
                j += 1
            else:
                return None
        if j != array.ndim or (mapping is not None and tuple(entry) != mapping):
            return None
        mapping = tuple(entry)
    return mapping


def find_source(array) -> tuple[str, object] | None:
    """The sliceable object behind a Dask array, if its graph is a plain read of one.

    Recognises ``da.from_zarr`` and ``da.from_array`` of a zarr array, a TIFF zarr store, a
    memory map or any array-like (a single getter layer), plain slicing of those (unit
    steps, integer indices: a crop, a plane of a stack), and arrays whose chunks are NumPy
    arrays held in the graph (``da.from_array`` of a NumPy array, ``persist``).

    Returns
    -------
    (key, source) or None
        A graph key to hold the source under, and the source (sliced with tuples of
        slices, returning NumPy arrays); None for a computed array.
    """
    if not isinstance(array, da.Array):
        return None
    graph = array.__dask_graph__()
    layers = getattr(graph, "layers", None)
    if layers is None or array.name not in layers:
        return None
    layer = layers[array.name]
    found = _getter_source(layers, array.name)
    if found is not None:
        key, source, chunks = found
        if len(layers) > 2 or chunks != array.chunks:
            return None
        if np.dtype(getattr(source, "dtype", object)) != array.dtype:
            return None
        return key, source
    if not isinstance(layer, MaterializedLayer):
        return None
    if len(layers) == 1:
        blocks = {}
        for idx in itertools.product(*(range(n) for n in array.numblocks)):
            value = _unwrap(layer.get((array.name, *idx)))
            expected = tuple(c[i] for c, i in zip(array.chunks, idx, strict=True))
            if not isinstance(value, np.ndarray) or value.shape != expected:
                return None
            if value.dtype != array.dtype:
                return None
            blocks[idx] = value
        source = _whole_array(blocks, array.chunks)
        if source is None:
            source = ChunkedSource(blocks, array.chunks, array.dtype)
        return f"napari-ncc-source-{tokenize(array.name)}", source
    deps = getattr(graph, "dependencies", {}).get(array.name, set())
    if len(deps) != 1 or len(layers) > 3:
        return None
    (inner,) = deps
    found = _getter_source(layers, inner)
    if found is None:
        return None
    _, source, inner_chunks = found
    if np.dtype(getattr(source, "dtype", object)) != array.dtype:
        return None
    mapping = _plain_slicing(array, layer, inner, inner_chunks)
    if mapping is None:
        return None
    sliced = SlicedSource(source, mapping, array.shape, array.dtype)
    return f"napari-ncc-source-{tokenize(array.name)}", sliced


# ---------------------------------------------------------------------------------------
# Reading a region (with an optional subpixel shift) from a source
# ---------------------------------------------------------------------------------------


def _shift_dtype(dtype) -> np.dtype:
    """Interpolated values are floats: float64 stays, anything else becomes float32."""
    return np.dtype(np.float64) if np.dtype(dtype) == np.float64 else np.dtype(np.float32)


def _shift_margin(s: float, order: int) -> int:
    """Pixels a shift by `s` may read beyond an output range, on either side."""
    if s == 0:
        return 0
    return math.ceil(abs(s)) + 1 + (_SPLINE_MARGIN if order > 1 else 0)


def _shift_reach(length: int, start: int, stop: int, s: float, order: int, mode: str):
    """Source range ``(lo, hi)`` read by outputs ``start..stop-1`` of a shift by `s`.

    ``output[i] = input[i - s]`` interpolates between ``floor(i - s)`` and the next
    pixel, so the range is the output range *moved* by the shift, ``[start - ceil(s) - 1,
    stop - floor(s) + 1)`` (a spare pixel on each side), plus ``_SPLINE_MARGIN`` for
    orders above 1. Positions beyond the image fold back by `mode`; on a side where they
    do, the range reaches the image edge, so that the region's edge is the image's and a
    shift of the region alone folds exactly like a shift of the whole image.
    """
    if s == 0:
        return start, stop
    extra = _SPLINE_MARGIN if order > 1 else 0
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


def _shift_read_box(box, shape, shift, order, mode) -> tuple:
    """Source box read by the output `box` of a shift (see :func:`_shift_reach`)."""
    return tuple(
        _shift_reach(n, a, b, s, order, mode)
        for (a, b), n, s in zip(box, shape, shift, strict=True)
    )


def _slices(box) -> tuple[slice, ...]:
    return tuple(slice(a, b) for a, b in box)


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


def _shift_array(
    image: np.ndarray, shift, order: int, mode: str, offsets=None, out_shape=None
) -> np.ndarray:
    """``ndimage.shift`` with a floating-point output (see :func:`shift_lazy`).

    With `offsets` and `out_shape`, only the part of the shifted image starting at
    `offsets` (``output[u] = image[u + offsets - shift]``) is computed.
    """
    out_dtype = _shift_dtype(image.dtype)
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


def _shift_region(region, inner, outer, shift, order, mode) -> np.ndarray:
    """The shifted values of the `inner` box, from a `region` read over the `outer` box."""
    offsets = [a - lo for (a, _), (lo, _) in zip(inner, outer, strict=True)]
    return _shift_array(region, shift, order, mode, offsets, [b - a for a, b in inner])


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


# A block's *layout* says how its task reads what it needs: one entry per box (a
# combination of runs; usually just one), read with the shift margin as `outer`, made of
# `direct` pieces sliced from the source by the task itself and thin `stripped` pieces
# (halo strips of neighbouring storage chunks) handed over by the strip task of the chunk
# that holds them. A strip task decompresses its chunk once for all the blocks around it,
# so each storage chunk is decompressed about twice (once for its own block, once for its
# neighbours' halos) instead of once per block whose halo touches it, and what strip tasks
# keep in memory is a few thin strips, not whole chunks.


def storage_chunks(source, ndim: int) -> tuple[int, ...] | None:
    """Shape of the chunks a source decompresses as a whole (zarr chunks, TIFF tiles).

    None for in-memory sources (NumPy arrays, :class:`ChunkedSource`), where any slice
    is cheap, and for chunks of more than ``16 * BLOCK_PIXELS`` pixels (such as a TIFF
    stored as one strip), which strip tasks would have to hold whole.
    """
    if isinstance(source, np.ndarray | ChunkedSource):
        return None
    chunks = getattr(source, "chunks", None)
    if (
        isinstance(chunks, tuple)
        and len(chunks) == ndim
        and all(isinstance(c, int | np.integer) and c > 0 for c in chunks)
        and math.prod(int(c) for c in chunks) <= 16 * BLOCK_PIXELS
    ):
        return tuple(int(c) for c in chunks)
    return None


def _layout(runs, shape, reach, native, halo) -> tuple[tuple, tuple, dict]:
    """How a block reads the boxes given by `runs` (see the comment above).

    `reach` maps a box to the box read for it (a shifted read), or is None (the box
    itself); a piece narrower than `halo` along an axis comes from a strip task.

    Returns
    -------
    grid : tuple of int
        Number of runs per axis.
    entries : tuple
        ``(combo, inner, outer, direct, stripped)`` per combination of runs.
    requests : dict
        Storage chunk index -> set of thin piece boxes wanted from it.
    """
    entries, requests = [], {}
    for combo in itertools.product(*(range(len(r)) for r in runs)):
        inner = tuple(runs[ax][c] for ax, c in enumerate(combo))
        outer = inner if reach is None else reach(inner)
        direct, stripped = [], []
        if native is None:
            direct.append(outer)
        else:
            cells = [
                range(a // c, (b - 1) // c + 1) for (a, b), c in zip(outer, native, strict=True)
            ]
            for cell in itertools.product(*cells):
                cbox = [
                    (k * c, min(n, (k + 1) * c))
                    for k, c, n in zip(cell, native, shape, strict=True)
                ]
                piece = tuple(
                    (max(a, ca), min(b, cb)) for (a, b), (ca, cb) in zip(outer, cbox, strict=True)
                )
                thin = any(
                    pb - pa < cb - ca and pb - pa <= h
                    for (pa, pb), (ca, cb), h in zip(piece, cbox, halo, strict=True)
                )
                if thin:
                    stripped.append(piece)
                    requests.setdefault(cell, set()).add(piece)
                else:
                    direct.append(piece)
            direct = _merge_direct(direct, stripped)
        entries.append((combo, inner, outer, tuple(direct), tuple(stripped)))
    return tuple(len(r) for r in runs), tuple(entries), requests


def _merge_direct(direct: list, stripped: list) -> list:
    """The direct pieces as one box (one read) when their bounding box holds no strip."""
    if len(direct) <= 1:
        return direct
    bbox = tuple(
        (min(p[ax][0] for p in direct), max(p[ax][1] for p in direct))
        for ax in range(len(direct[0]))
    )

    def overlaps(p) -> bool:
        return all(a < bb and ba < b for (a, b), (ba, bb) in zip(p, bbox, strict=True))

    return direct if any(overlaps(p) for p in stripped) else [bbox]


def read_strips(source, pieces) -> dict:
    """Strip task: read the thin `pieces` (global boxes inside one storage chunk)."""
    bbox = tuple(
        (min(p[ax][0] for p in pieces), max(p[ax][1] for p in pieces))
        for ax in range(len(pieces[0]))
    )
    region = np.asarray(source[_slices(bbox)])
    return {
        p: region[
            tuple(slice(a - o, b - o) for (a, b), (o, _) in zip(p, bbox, strict=True))
        ].copy()
        for p in pieces
    }


def _assemble(source, layout, strips, shift=None, order=1, mode="nearest") -> np.ndarray:
    """Read a block as its layout says, shifting each box if asked."""
    grid, entries = layout
    found: dict = {}
    for part in strips:
        found.update(part)
    pieces = np.empty(grid, dtype=object)
    for combo, inner, outer, direct, stripped in entries:
        if not stripped and len(direct) == 1:
            region = np.asarray(source[_slices(direct[0])])
        else:
            parts = [(d, np.asarray(source[_slices(d)])) for d in direct]
            parts += [(p, found[p]) for p in stripped]
            region = np.empty([b - a for a, b in outer], dtype=parts[0][1].dtype)
            for box, data in parts:
                region[
                    tuple(slice(a - o, b - o) for (a, b), (o, _) in zip(box, outer, strict=True))
                ] = data
        if shift is not None:
            region = _shift_region(region, inner, outer, shift, order, mode)
        pieces[combo] = region
    if pieces.size == 1:
        return pieces.flat[0]
    return np.block(pieces.tolist())


#: Per-thread read buffers reused from block to block (see :func:`_contiguous`).
_BUFFERS = threading.local()

#: Largest read buffer kept for reuse, in bytes; larger reads get a fresh array.
BUFFER_BYTES = 2**26


def _contiguous(region: np.ndarray, slot: int) -> np.ndarray:
    """`region` as a C-contiguous array, copied into a reused per-thread buffer if needed.

    A block read from an in-memory source is a strided view; the kernels want it
    contiguous (their flat min/max pass would copy a strided array again). Copying it
    into a buffer this thread already owns, rather than a fresh array, avoids the page
    faults of freshly mapped memory, a large part of the cost of the copy itself. The
    result is only valid until the same thread asks for `slot` again.
    """
    if region.flags.c_contiguous or region.nbytes > BUFFER_BYTES:
        return np.ascontiguousarray(region)
    pool = getattr(_BUFFERS, "pool", None)
    if pool is None:
        pool = _BUFFERS.pool = {}
    buffer = pool.get(slot)
    if buffer is None or buffer.nbytes < region.nbytes:
        buffer = pool[slot] = np.empty(region.nbytes, dtype=np.uint8)
    out = buffer[: region.nbytes].view(region.dtype).reshape(region.shape)
    np.copyto(out, region)
    return out


def ncc_source_block(
    source0, source1, plan: NCCPlan, box, layout0, layout1, strips0, strips1, shift=None
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
        How to read each image (see :func:`_layout`).
    strips0, strips1 : list of dict
        Results of the strip tasks the layouts refer to.
    shift : sequence of float, optional
        Subpixel shift applied to `source1` (``scipy.ndimage.shift`` convention, linear,
        ``mode="nearest"``) as it is read.
    """
    _, maps = _block_reads(plan, box)
    block0 = _contiguous(_assemble(source0, layout0, strips0), 0)
    block1 = _contiguous(_assemble(source1, layout1, strips1, shift, 1, "nearest"), 1)
    return ncc_block(block0, block1, plan, maps, n_threads=1)


def shift_source_block(source, layout, strips, shift, order, mode) -> np.ndarray:
    """One block of ``ndimage.shift(source, shift)``, read with a margin from the source."""
    return _assemble(source, layout, strips, shift, order, mode)


def _add_strip_tasks(dsk: dict, name: str, key: str, requests: dict) -> None:
    """One strip task per storage chunk that neighbouring blocks want halo strips from."""
    for cell, pieces in requests.items():
        dsk[(name, *cell)] = (read_strips, key, tuple(sorted(pieces)))


def _merge_requests(total: dict, requests: dict) -> list:
    for cell, pieces in requests.items():
        total.setdefault(cell, set()).update(pieces)
    return sorted(requests)


# ---------------------------------------------------------------------------------------
# Fallback for computed inputs: dask overlap, then global -> local index maps
# ---------------------------------------------------------------------------------------


def _overlap_boundary(plan: NCCPlan) -> dict[int, str]:
    # Only "wrap" reads across the image; every other mode reads within radius of the edge,
    # which the un-padded ("none") overlap already holds.
    kind = "periodic" if plan.mode == "wrap" else "none"
    return {ax: (kind if ax in plan.axes else "none") for ax in range(len(plan.shape))}


def ncc_overlap_block(block0, block1, plan: NCCPlan, chunks, block_id=None) -> np.ndarray:
    """NCC map of one block of ``dask.array.overlap`` output (see :func:`local_ncc`)."""
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
    return ncc_block(block0, block1, plan, maps, n_threads=1)


def shift_overlap_block(block, shape, chunks, shift, order, mode, block_id=None) -> np.ndarray:
    """One block of a shift of a computed Dask array, from its overlapped block."""
    offsets, out_shape = [], []
    for ax, s in enumerate(shift):
        starts = np.cumsum((0, *chunks[ax]))
        start, stop = int(starts[block_id[ax]]), int(starts[block_id[ax] + 1])
        lo = max(0, start - _shift_margin(s, order))
        offsets.append(start - lo)
        out_shape.append(stop - start)
    return _shift_array(block, shift, order, mode, offsets, out_shape)


# ---------------------------------------------------------------------------------------
# Chunk planning
# ---------------------------------------------------------------------------------------


def _merge_chunks(chunks: tuple[int, ...], min_len: int, tail_min: int | None = None) -> tuple:
    """Merge consecutive chunks so that each is at least `min_len` (or the whole axis).

    A shorter last group is kept on its own if it has at least `tail_min` (default:
    `min_len`) pixels, so regular chunks stay regular, and joins the previous one otherwise.
    """
    tail_min = min_len if tail_min is None else tail_min
    merged: list[int] = []
    current = 0
    for c in chunks:
        current += c
        if current >= min_len:
            merged.append(current)
            current = 0
    if current:
        if merged and current < tail_min:
            merged[-1] += current
        else:
            merged.append(current)
    return tuple(merged)


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


def _source_chunks(chunks: tuple, plan: NCCPlan) -> tuple:
    """Output chunks of the direct-read path: input chunks merged (or split) to blocks of
    about BLOCK_PIXELS, so that seams follow the input chunks where they can."""
    other = math.prod(max(chunks[ax]) for ax in range(len(chunks)) if ax not in plan.axes)
    k = len(plan.axes)
    target = max(1, math.ceil((BLOCK_PIXELS / max(other, 1)) ** (1.0 / k)))
    out = list(chunks)
    for ax in plan.axes:
        out[ax] = _split_chunks(_merge_chunks(chunks[ax], target, 1), 2 * target)
    return tuple(out)


def _overlap_chunks(chunks: tuple, depth: dict[int, int]) -> tuple:
    """Chunks at least as long as the overlap depth (dask's overlap needs it)."""
    return tuple(
        _merge_chunks(c, depth.get(ax, 0)) if depth.get(ax, 0) else c
        for ax, c in enumerate(chunks)
    )


def _normalize_output_chunks(chunks, shape) -> tuple:
    return da.core.normalize_chunks(chunks, shape=shape)


# ---------------------------------------------------------------------------------------
# Graph building
# ---------------------------------------------------------------------------------------


def _boxes(chunks: tuple):
    """Block index and global ``(start, stop)`` box of every block."""
    starts = [np.cumsum((0, *c)) for c in chunks]
    for idx in itertools.product(*(range(len(c)) for c in chunks)):
        yield idx, tuple((int(s[i]), int(s[i + 1])) for s, i in zip(starts, idx, strict=True))


def _as_source(image) -> tuple[str, object] | None:
    if isinstance(image, da.Array):
        return find_source(image)
    return f"napari-ncc-source-{uuid.uuid4().hex}", image


def _check_shift(shift, ndim: int, name: str = "moving_shift") -> tuple[float, ...]:
    try:
        values = tuple(shift)
    except TypeError:
        raise TypeError(
            f"{name} must be a sequence of {ndim} numbers (one per axis), got {shift!r}"
        ) from None
    if len(values) != ndim:
        raise ValueError(
            f"{name} must have one value per axis ({ndim}), got {len(values)}: {shift!r}"
        )
    out = []
    for s in values:
        if isinstance(s, bool) or not isinstance(s, Real | np.integer | np.floating):
            raise TypeError(f"{name} must contain real numbers, got {s!r}")
        if not math.isfinite(float(s)):
            raise ValueError(f"{name} must be finite, got {shift!r}")
        out.append(float(s))
    return tuple(out)


def _check_order(order) -> int:
    if isinstance(order, bool) or not isinstance(order, int | np.integer) or not 0 <= order <= 5:
        raise ValueError(f"order must be an integer from 0 to 5, got {order!r}")
    return int(order)


def _check_shift_mode(mode) -> str:
    if mode not in SHIFT_MODES:
        raise ValueError(
            f"unsupported shift mode {mode!r}; expected one of {', '.join(SHIFT_MODES)} "
            "(modes that read only near the edge, so each block can be shifted on its own)"
        )
    return mode


#: Output chunks for lazy maps built inside :func:`output_chunks` (None: the default).
_OUTPUT_CHUNKS: contextvars.ContextVar = contextvars.ContextVar(
    "napari_ncc_output_chunks", default=None
)


@contextlib.contextmanager
def output_chunks(chunks):
    """Build lazy NCC maps with these output chunks inside the ``with`` block.

    For callers that build a map through layers that do not pass chunks on (the command
    line's ``--chunks`` through ``ncc_confidence``): the blocks are then computed at the
    wanted size, instead of finished blocks being rechunked (which holds several of them
    in memory at once).

    Examples
    --------
    >>> import dask.array as da
    >>> from napari_ncc._lazy import local_ncc, output_chunks
    >>> x = da.ones((64, 64), chunks=32)
    >>> with output_chunks(16):
    ...     ncc = local_ncc(x, x, 3)
    >>> ncc.chunksize
    (16, 16)
    """
    token = _OUTPUT_CHUNKS.set(chunks)
    try:
        yield
    finally:
        _OUTPUT_CHUNKS.reset(token)


def _lazy_ncc(image0, image1, plan: NCCPlan, shift, chunks=None) -> da.Array:
    if chunks is None:
        chunks = _OUTPUT_CHUNKS.get()
    src0, src1 = _as_source(image0), _as_source(image1)
    dask_inputs = [x for x in (image0, image1) if isinstance(x, da.Array)]
    base_chunks = dask_inputs[0].chunks
    token = tokenize(
        "napari-ncc",
        plan,
        shift,
        chunks,
        *[
            x.name if isinstance(x, da.Array) else (src[0] if src else None)
            for x, src in ((image0, src0), (image1, src1))
        ],
    )
    if src0 is not None and src1 is not None:
        ndim = len(plan.shape)
        (key0, source0), (key1, source1) = src0, src1
        native = (storage_chunks(source0, ndim), storage_chunks(source1, ndim))
        if chunks is not None:
            out_chunks = _normalize_output_chunks(chunks, plan.shape)
        else:
            # Blocks made of whole storage chunks, so that no chunk is decoded by two blocks.
            grid = next((c for c in native if c is not None), None)
            if grid is not None:
                base_chunks = _normalize_output_chunks(grid, plan.shape)
            out_chunks = _source_chunks(base_chunks, plan)
        name = f"local-ncc-{token}"
        strips = (f"local-ncc-strips0-{token}", f"local-ncc-strips1-{token}")
        halo = [plan.depth[ax] for ax in range(ndim)]
        if shift is None:
            reach, margins = None, [0] * ndim
        else:
            reach = partial(
                _shift_read_box, shape=plan.shape, shift=shift, order=1, mode="nearest"
            )
            margins = [_shift_margin(s, 1) for s in shift]
        settings = (
            (None, halo),
            (reach, [h + m for h, m in zip(halo, margins, strict=True)]),
        )
        dsk: dict = {key0: source0, key1: source1}
        requests: tuple[dict, dict] = ({}, {})
        for idx, box in _boxes(out_chunks):
            runs, _ = _block_reads(plan, box)
            layouts, cells = [], []
            for i in range(2):
                grid, entries, wanted = _layout(
                    runs, plan.shape, settings[i][0], native[i], settings[i][1]
                )
                layouts.append((grid, entries))
                cells.append([(strips[i], *c) for c in _merge_requests(requests[i], wanted)])
            dsk[(name, *idx)] = (ncc_source_block, key0, key1, plan, box, *layouts, *cells, shift)
        _add_strip_tasks(dsk, strips[0], key0, requests[0])
        _add_strip_tasks(dsk, strips[1], key1, requests[1])
        graph = HighLevelGraph.from_collections(name, dsk, dependencies=[])
        meta = np.empty((0,) * len(plan.shape), dtype=np.float32)
        return da.Array(graph, name, out_chunks, dtype=np.float32, meta=meta)
    # Computed input(s): dask overlap with un-padded (or periodic) borders.
    arrays = [
        x if isinstance(x, da.Array) else da.from_array(x, chunks=base_chunks)
        for x in (image0, image1)
    ]
    if shift is not None:
        arrays[1] = shift_lazy(arrays[1], shift, order=1, mode="nearest")
    depth = plan.depth
    target = chunks if chunks is not None else base_chunks
    target = _normalize_output_chunks(target, plan.shape)
    out_chunks = _overlap_chunks(target, depth)
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
    image0,
    image1,
    radius: int | Sequence[int] = 3,
    *,
    window: str = "box",
    mode: str = "reflect",
    fill_value: float = 0.0,
    axes: int | Sequence[int] | None = None,
    moving_shift: Sequence[float] | None = None,
):
    """Local normalized cross-correlation (Pearson correlation of patches) of two images.

    For every pixel, the Pearson correlation coefficient of the two patches of
    ``2 * radius + 1`` pixels per windowed axis centred on it. NumPy in, NumPy out; a Dask
    array in (either input) gives a lazy Dask array out, computed chunk by chunk.

    Parameters
    ----------
    image0, image1 : array_like or dask.array.Array
        Images of the same shape, any real dtype (bool, integer, float). Not modified.
        `image0` is the reference, `image1` the moving image.
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
        the values (of the image in memory; of the block and its halo when lazy).
        ``np.nan`` works too.
    axes : int or sequence of int, optional
        Axes the window spans (all by default). Other axes are independent: for example
        ``axes=(-2, -1)`` gives a per-plane 2D map through a time series.
    moving_shift : sequence of float, optional
        Shift `image1` by this much per axis before correlating, with linear
        interpolation and ``mode="nearest"``, as ``scipy.ndimage.shift(image1,
        moving_shift, order=1, mode="nearest")`` (so that the shifted moving image matches
        the reference). Lazily, each block is shifted as it is read.

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
    memory, so the chunking never changes the result. Building the graph reads no pixel.
    When the inputs are backed by something sliceable (``da.from_zarr``, a TIFF zarr
    store, ``da.from_array`` of a NumPy array or memory map), each block reads its own
    halo from the source, so storing the map (``to_zarr``, ``da.store``,
    :func:`napari_ncc._io.write_ncc`) holds only a few blocks in memory whatever the
    image size; output blocks are input chunks merged to about ``BLOCK_PIXELS`` pixels.
    Computed Dask inputs are correlated through ``dask.array.overlap``. The graph is
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
    """
    return _local_ncc(
        image0,
        image1,
        radius,
        window=window,
        mode=mode,
        fill_value=fill_value,
        axes=axes,
        moving_shift=moving_shift,
    )


def _local_ncc(
    image0,
    image1,
    radius=3,
    *,
    window="box",
    mode="reflect",
    fill_value=0.0,
    axes=None,
    moving_shift=None,
    chunks=None,
):
    """:func:`local_ncc`, with the output chunks of the lazy path optionally given."""
    lazy = isinstance(image0, da.Array) or isinstance(image1, da.Array)
    if not lazy:
        image0, image1 = np.asarray(image0), np.asarray(image1)
    for image, name in ((image0, "image0"), (image1, "image1")):
        if isinstance(image, da.Array) and any(math.isnan(n) for n in image.shape):
            raise ValueError(
                f"{name} has unknown chunk sizes (shape {image.shape}); call "
                "compute_chunk_sizes() on it first"
            )
        check_image(image, name)
    plan = plan_ncc(
        image0.shape,
        image1.shape,
        radius,
        window=window,
        mode=mode,
        fill_value=fill_value,
        axes=axes,
    )
    shift = None if moving_shift is None else _check_shift(moving_shift, image0.ndim)
    if shift is not None and not any(shift):
        shift = None
    if not lazy:
        if shift is not None:
            image1 = shift_lazy(image1, shift)
        return _local_ncc_numpy(
            image0, image1, radius, window=window, mode=mode, fill_value=fill_value, axes=axes
        )
    return _lazy_ncc(image0, image1, plan, shift, chunks)


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
    When the Dask array is backed by something sliceable (see :func:`find_source`), each
    output chunk reads from the source only its own box moved by the shift,
    ``[start - ceil(shift) - 1, stop - floor(shift) + 1)`` per axis (reaching the image
    edge where the shifted positions fold back across it); computed arrays go through
    ``dask.array.overlap`` with a margin of ``ceil(|shift|) + 1`` pixels. Orders above 1
    prefilter with a margin of 32 more pixels, which differs from the whole-image
    prefilter by less than about 1e-10 relative.

    Examples
    --------
    >>> import numpy as np
    >>> import dask.array as da
    >>> from napari_ncc._lazy import shift_lazy
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
    shift = _check_shift(shift, image.ndim, "shift")
    order = _check_order(order)
    mode = _check_shift_mode(mode)
    out_dtype = _shift_dtype(image.dtype)
    if not lazy:
        return _shift_array(image, shift, order, mode)
    token = tokenize("napari-ncc-shift", image.name, shift, order, mode)
    name = f"shift-{token}"
    meta = np.empty((0,) * image.ndim, dtype=out_dtype)
    if not any(shift) and order <= 1:
        return image.astype(out_dtype)
    found = find_source(image)
    if found is not None:
        key, source = found
        strips = f"shift-strips-{token}"
        native = storage_chunks(source, image.ndim)
        margins = [_shift_margin(s, order) for s in shift]
        reach = partial(_shift_read_box, shape=image.shape, shift=shift, order=order, mode=mode)
        dsk: dict = {key: source}
        requests: dict = {}
        for idx, box in _boxes(image.chunks):
            runs = [[ab] for ab in box]
            grid, entries, wanted = _layout(runs, image.shape, reach, native, margins)
            cells = [(strips, *c) for c in _merge_requests(requests, wanted)]
            layout = (grid, entries)
            dsk[(name, *idx)] = (shift_source_block, key, layout, cells, shift, order, mode)
        _add_strip_tasks(dsk, strips, key, requests)
        graph = HighLevelGraph.from_collections(name, dsk, dependencies=[])
        return da.Array(graph, name, image.chunks, dtype=out_dtype, meta=meta)
    depth = {ax: _shift_margin(s, order) for ax, s in enumerate(shift)}
    chunks = list(_overlap_chunks(image.chunks, depth))
    for ax, n in enumerate(image.shape):
        if depth[ax] >= n:  # the margin spans the axis: one chunk, nothing to overlap
            chunks[ax], depth[ax] = (n,), 0
    chunks = tuple(chunks)
    image = image.rechunk(chunks)
    extended = da.overlap.overlap(image, depth=depth, boundary="none")
    return da.map_blocks(
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
        meta=meta,
        name=name,
    )
