"""The overview of a multiscale NCC map: the full-resolution map summarised, filled in on disk.

A coarse level of :func:`napari_ncc._multiscale.ncc_levels` (the NCC of the coarsened
inputs) is a quick *preview*. :class:`Overview` computes the full-resolution map block by
block, stores it and its pyramid (level ``k`` = the :data:`SUMMARIES` summary, "mean" by
default, of ``2 x 2`` pixel groups of level ``k - 1``) in a zarr cache, and gives lazy
levels that read the cache where it is filled and the preview elsewhere, so a viewer
converges to the summary of the full-resolution map. See :mod:`napari_ncc._multiscale`.

This module is the lazy floor: Dask in, lazy Dask out; nothing here imports napari.
"""

from __future__ import annotations

import itertools
import math
import os
import shutil
import tempfile
from collections.abc import Generator, Sequence
from functools import partial

import dask.array as da
import numpy as np
from dask.highlevelgraph import HighLevelGraph

from . import _multiscale
from ._sources import compute_isolated

__all__ = [
    "KEPT_OVERVIEWS",
    "OVERVIEW_CHUNK",
    "SUMMARIES",
    "Overview",
    "OverviewCache",
    "fill_steps",
    "overview_of",
]

#: How a coarse level summarises 2 x 2 pixels of the level below: "mean" (the default: the
#: average score of the region) or "min" (its worst score: one bad pixel shows at any zoom).
SUMMARIES = ("mean", "min")

#: Overview caches kept per pair of inputs (each one the size of the map, on disk).
KEPT_OVERVIEWS = 4

#: Side of the blocks (plane axes) in which the full-resolution map is computed and cached.
OVERVIEW_CHUNK = 2048

_counter = itertools.count()


def _halves(before: int, after: int) -> bool | None:
    """Whether an axis goes from `before` to `after` pixels by halving (True, a trailing
    odd pixel dropped or kept alone), stays (False), or neither (None)."""
    if after == before:
        return False
    if after in (before // 2, -(-before // 2)) and after >= 1:
        return True
    return None


def _summarise(block: np.ndarray, halved: Sequence[bool], shape, summary: str) -> np.ndarray:
    """`summary` of 2-pixel groups along the `halved` axes, to `shape` (float32).

    A pixel with no partner (ceil halving of an odd side) is its own group. Pairs are
    combined in float32 (``(a + b) / 2``, or the smaller), one axis after the other: the
    float64 reshape-and-reduce it replaces took most of the overview's time outside Dask.
    """
    out = np.asarray(block, dtype=np.float32)
    for ax, half in enumerate(halved):
        if not half:
            continue
        need = 2 * shape[ax]
        if out.shape[ax] < need:
            pad = [(0, 0)] * out.ndim
            pad[ax] = (0, need - out.shape[ax])
            out = np.pad(out, pad, mode="edge")
        lead = (slice(None),) * ax
        even, odd = out[(*lead, slice(0, need, 2))], out[(*lead, slice(1, need, 2))]
        if summary == "mean":
            out = np.add(even, odd)
            out *= np.float32(0.5)
        else:
            out = np.minimum(even, odd)
    return np.ascontiguousarray(out, dtype=np.float32)


def _store(store, region, block: np.ndarray) -> np.ndarray:
    """Write `block` to `region` of the zarr `store` (a whole chunk of it); return it."""
    store[region] = block
    return block


def _morton(index: tuple[int, ...], plane: tuple[int, ...]) -> tuple:
    """Sort key: other axes first, then the plane block indices with their bits interleaved,
    so that coarse blocks complete early and evenly over the image."""
    code = 0
    for bit in range(32):
        for n, ax in enumerate(plane):
            code |= ((index[ax] >> bit) & 1) << (bit * len(plane) + n)
    return (*(index[ax] for ax in range(len(index)) if ax not in plane), code)


class Overview:
    """The pyramid of a full-resolution NCC map, cached on disk as it is computed.

    Parameters
    ----------
    preview_levels : sequence of dask.array.Array
        The quick levels shown until the cache has the values (level 0 first), e.g.
        :func:`napari_ncc._multiscale.ncc_levels`. Their shapes are the pyramid's: each
        level halves (``n // 2`` or ``ceil(n / 2)``) or keeps every axis of the one before;
        levels after the first that does not are left out.
    full_resolution : dask.array.Array
        The lazy full-resolution map: level 0, exactly. Computed block by block by
        :meth:`iter_fill` (chunks of :data:`OVERVIEW_CHUNK` on the plane axes are best).
    summary : {"mean", "min"}, optional
        How level ``k`` summarises ``2 x 2`` pixels of level ``k - 1`` (so ``2**k x 2**k``
        pixels of the full-resolution map): their mean (default) or their minimum.
    directory : path, optional
        Where the zarr stores go (``level0.zarr``, ...). By default a temporary directory,
        removed by :meth:`remove` or when Python exits.

    Examples
    --------
    >>> import dask.array as da, numpy as np
    >>> full = da.from_array(np.arange(64.0).reshape(8, 8), chunks=4)
    >>> overview = Overview([full, full[::2, ::2]], full, summary="mean")
    >>> for done, total in overview.iter_fill():
    ...     pass
    >>> overview.complete, float(overview.levels()[1][0, 0].compute())
    (True, 4.5)
    >>> overview.remove()
    """

    def __init__(
        self,
        preview_levels: Sequence[da.Array],
        full_resolution: da.Array,
        *,
        summary: str = "mean",
        directory: str | os.PathLike | None = None,
    ):
        import zarr

        if summary not in SUMMARIES:
            raise ValueError(f"summary must be one of {SUMMARIES}, got {summary!r}")
        full_resolution = da.asarray(full_resolution)
        if tuple(full_resolution.shape) != tuple(preview_levels[0].shape):
            raise ValueError(
                "full_resolution must have the shape of preview level 0, got "
                f"{tuple(full_resolution.shape)} and {tuple(preview_levels[0].shape)}"
            )
        self.summary = summary
        shapes = [tuple(int(n) for n in preview_levels[0].shape)]
        self._halved: list[tuple[bool, ...]] = [()]
        for level in preview_levels[1:]:
            halved = [_halves(b, a) for b, a in zip(shapes[-1], level.shape, strict=True)]
            if None in halved:
                break
            shapes.append(tuple(int(n) for n in level.shape))
            self._halved.append(tuple(halved))
        self.shapes = shapes
        self._preview = [da.asarray(level) for level in preview_levels[: len(shapes)]]
        ndim = len(shapes[0])
        self._plane = _multiscale.plane_axes(ndim)
        self._chunk = tuple(OVERVIEW_CHUNK if ax in self._plane else 1 for ax in range(ndim))
        self._full = full_resolution.rechunk(self._chunk)
        self._created = directory is None
        if self._created:
            directory = tempfile.mkdtemp(prefix="napari-ncc-overview-")
            _multiscale._CACHE_DIRS.append(directory)
        os.makedirs(directory, exist_ok=True)
        self.directory = os.fspath(directory)
        self._stores = [
            zarr.open_array(
                os.path.join(self.directory, f"level{k}.zarr"),
                mode="w",
                shape=shape,
                chunks=self._chunk,
                dtype=np.float32,
            )
            for k, shape in enumerate(shapes)
        ]
        self._done = [np.zeros(self._numblocks(shape), dtype=bool) for shape in shapes]
        self._versions = [0] * len(shapes)
        self._id = next(_counter)

    # --- geometry ------------------------------------------------------------------------
    def _numblocks(self, shape) -> tuple[int, ...]:
        return tuple(math.ceil(n / c) for n, c in zip(shape, self._chunk, strict=True))

    def _region(self, k: int, index) -> tuple[slice, ...]:
        return tuple(
            slice(i * c, min((i + 1) * c, n))
            for i, c, n in zip(index, self._chunk, self.shapes[k], strict=True)
        )

    def _children(self, k: int, index) -> list[tuple[int, ...]]:
        """The blocks of level ``k - 1`` that block `index` of level `k` summarises."""
        ranges = []
        for ax, (i, half) in enumerate(zip(index, self._halved[k], strict=True)):
            n = self._done[k - 1].shape[ax]
            ranges.append([j for j in ((2 * i, 2 * i + 1) if half else (i,)) if j < n])
        return list(itertools.product(*ranges))

    def _parent(self, k: int, index) -> tuple[int, ...]:
        """The block of level ``k + 1`` that block `index` of level `k` belongs to."""
        return tuple(
            i // 2 if half else i for i, half in zip(index, self._halved[k + 1], strict=True)
        )

    # --- state ---------------------------------------------------------------------------
    @property
    def total(self) -> int:
        """Number of blocks of all levels (the progress total)."""
        return sum(done.size for done in self._done)

    @property
    def done(self) -> int:
        """Number of blocks computed and cached so far."""
        return int(sum(done.sum() for done in self._done))

    @property
    def complete(self) -> bool:
        """Whether every level is the summary of the full-resolution map."""
        return all(done.all() for done in self._done)

    # --- the lazy levels -----------------------------------------------------------------
    def _read(self, k: int, region: tuple[slice, ...]) -> np.ndarray:
        """Level `k` over `region`: from the cache if all of it is there, else the preview."""
        blocks = tuple(
            slice(r.start // c, -(-r.stop // c)) for r, c in zip(region, self._chunk, strict=True)
        )
        if self._done[k][blocks].all():
            values = np.asarray(self._stores[k][region])
            if self._done[k][blocks].all():  # (not removed meanwhile)
                return values
        # A task computing another graph: the synchronous scheduler keeps it in this thread
        # (and compute_isolated leaves Dask's process-wide callbacks alone).
        (preview,) = compute_isolated(self._preview[k][region], scheduler="synchronous")
        return np.asarray(preview, np.float32)

    def level(self, k: int) -> da.Array:
        """Level `k` as it stands: cached blocks where computed, the preview elsewhere.

        Its Dask name changes whenever level `k` gains blocks, so that a viewer's cache of
        computed chunks (napari keeps one, keyed by name) never serves a stale preview;
        level 0 keeps its name (its preview already is the exact map).
        """
        preview = self._preview[k]
        version = 0 if k == 0 else self._versions[k]
        name = f"napari-ncc-overview-{self._id}-{k}-{version}"
        starts = [np.cumsum((0, *c)) for c in preview.chunks]
        graph = {
            (name, *index): (
                self._read,
                k,
                tuple(slice(int(s[i]), int(s[i + 1])) for s, i in zip(starts, index, strict=True)),
            )
            for index in np.ndindex(*preview.numblocks)
        }
        return da.Array(
            HighLevelGraph.from_collections(name, graph, dependencies=()),
            name,
            preview.chunks,
            dtype=np.float32,
        )

    def levels(self) -> list[da.Array]:
        """Every level as it stands (:meth:`level`), level 0 first."""
        return [self.level(k) for k in range(len(self.shapes))]

    # --- filling -------------------------------------------------------------------------
    def _summarise_up(self, k: int, indices, fresh: dict | None = None) -> None:
        """Compute the blocks of levels above `k` whose blocks below are all cached.

        `fresh`: values of level-`k` blocks just computed (index -> array), used instead
        of reading them back from the store when they hold all of a block's children.
        """
        while k + 1 < len(self.shapes) and indices:
            parents = {self._parent(k, index) for index in indices}
            ready = [
                p
                for p in sorted(parents)
                if not self._done[k + 1][p]
                and all(self._done[k][c] for c in self._children(k + 1, p))
            ]
            computed = {}
            for p in ready:
                region = self._region(k + 1, p)
                source = tuple(
                    slice(2 * r.start, 2 * r.stop) if half else r
                    for r, half in zip(region, self._halved[k + 1], strict=True)
                )
                values = _summarise(
                    self._children_values(k, p, source, fresh or {}),
                    self._halved[k + 1],
                    tuple(r.stop - r.start for r in region),
                    self.summary,
                )
                self._stores[k + 1][region] = values
                self._done[k + 1][p] = True
                computed[p] = values
            if ready:
                self._versions[k + 1] += 1
            k, indices, fresh = k + 1, ready, computed

    def _children_values(self, k: int, parent, source, fresh: dict) -> np.ndarray:
        """Level `k` over `source` (the children of block `parent` of level ``k + 1``):
        from `fresh` when it holds them all, else read from the store."""
        children = self._children(k + 1, parent)
        if not all(c in fresh for c in children):
            return np.asarray(self._stores[k][source])
        grid = np.empty([len({c[ax] for c in children}) for ax in range(len(parent))], object)
        firsts = [min(c[ax] for c in children) for ax in range(len(parent))]
        for c in children:
            grid[tuple(i - f for i, f in zip(c, firsts, strict=True))] = fresh[c]
        return grid.flat[0] if grid.size == 1 else np.block(grid.tolist())

    def _stored_block(self, index) -> da.Array:
        """Block `index` of the full-resolution map, written to the level-0 store by the
        task that computes it (the blocks of a batch are written in parallel)."""
        region = self._region(0, index)
        return self._full.blocks[index].map_blocks(
            partial(_store, self._stores[0], region),
            dtype=np.float32,
            name=f"napari-ncc-overview-store-{self._id}-{'-'.join(map(str, index))}",
        )

    def iter_fill(self, batch: int | None = None) -> Generator[tuple[int, int], None, None]:
        """Compute the missing blocks, `batch` at a time; yields ``(done, total)`` after each.

        Level-0 blocks are computed in Z order (coarse blocks then complete early, evenly
        over the image), each batch in one Dask computation, and the coarse blocks they
        complete right after. Stopping between yields (closing the generator) keeps what
        was cached: a later call continues from there.
        """
        batch = batch or max(2 * (os.cpu_count() or 1), 2)
        for k in range(len(self.shapes) - 1):  # a resumed fill: finish what is ready
            self._summarise_up(k, list(zip(*np.nonzero(self._done[k]), strict=True)))
        todo = sorted(
            (index for index in np.ndindex(*self._done[0].shape) if not self._done[0][index]),
            key=lambda index: _morton(index, self._plane),
        )
        yield self.done, self.total
        for start in range(0, len(todo), batch):
            group = todo[start : start + batch]
            # (a worker thread: compute_isolated leaves Dask's global callbacks alone)
            values = compute_isolated(*(self._stored_block(index) for index in group))
            for index in group:
                self._done[0][index] = True
            self._versions[0] += 1
            self._summarise_up(0, group, dict(zip(group, values, strict=True)))
            yield self.done, self.total

    def remove(self) -> None:
        """Delete the cache (a temporary one): the levels show the preview again."""
        for done in self._done:
            done[...] = False
        if self._created:
            shutil.rmtree(self.directory, ignore_errors=True)
            if self.directory in _multiscale._CACHE_DIRS:
                _multiscale._CACHE_DIRS.remove(self.directory)


def overview_of(
    reference: da.Array,
    moving: da.Array,
    preview_levels: Sequence[da.Array],
    *,
    radius: int = 3,
    registration=None,
    window: str = "box",
    per_plane: int | None = None,
    summary: str = "mean",
    directory: str | os.PathLike | None = None,
) -> Overview:
    """The :class:`Overview` of the full-resolution map of `reference` and `moving`.

    `reference` and `moving` are level 0 of the pyramids `preview_levels` was made from
    (:func:`napari_ncc._multiscale.ncc_levels`, with the same parameters); the map is
    :func:`napari_ncc.ncc_confidence` of them, in blocks of :data:`OVERVIEW_CHUNK`.
    Nothing is computed until :meth:`Overview.iter_fill`.
    """
    from ._confidence import ncc_confidence

    reference, moving = da.asarray(reference), da.asarray(moving)
    plane = _multiscale.plane_axes(reference.ndim)
    full, _ = ncc_confidence(
        reference,
        moving,
        radius=radius,
        register=False,
        registration=registration,
        window=window,
        per_plane=per_plane,
        chunks=tuple(OVERVIEW_CHUNK if ax in plane else 1 for ax in range(reference.ndim)),
    )
    return Overview(preview_levels, full, summary=summary, directory=directory)


class OverviewCache:
    """The overviews of one pair of inputs, reused while the inputs and parameters are the
    same: the newest :data:`KEPT_OVERVIEWS` are kept (their caches removed beyond that, and
    all of them when the inputs change)."""

    def __init__(self) -> None:
        self._inputs = None
        self._kept: dict = {}

    def get(self, inputs, reference, moving, ncc, *, registration, **params) -> Overview:
        """The overview of `ncc` for `params` (as :func:`overview_of` takes them): the one
        kept, or a new one. `inputs` is any key that is equal for the same input images."""
        if self._inputs != inputs:
            for old in self._kept.values():
                old.remove()
            self._kept = {}
        self._inputs = inputs
        key = (
            tuple(sorted(params.items())),
            None if registration is None else repr(registration.to_dict()),
        )
        overview = self._kept.pop(key, None)
        if overview is None:
            overview = overview_of(reference, moving, ncc, registration=registration, **params)
        self._kept[key] = overview  # (now the newest)
        while len(self._kept) > KEPT_OVERVIEWS:
            self._kept.pop(next(iter(self._kept))).remove()
        return overview


def fill_steps(overview: Overview, progress):
    """Fill `overview`'s cache, calling ``progress(done, total)`` and yielding ``(done,
    total)`` after each batch (a worker thread's generator; `progress` may raise to stop)."""
    for done, total in overview.iter_fill():
        progress(done, total)
        yield done, total
