"""How a block task reads its region from a source: layouts, halo strips, read buffers.

Shared by the two graph builders of the lazy layer, :func:`napari_ncc.local_ncc`
(:mod:`napari_ncc._lazy`) and :func:`napari_ncc.shift_lazy` (:mod:`napari_ncc._shift`).
A block's region (its box plus a halo, or its box moved by a shift) is read straight from
a sliceable source (see :mod:`napari_ncc._sources`). For sources stored in compressed
chunks, the thin halo strips a block needs from its neighbours' chunks come from one
small "strip" task per chunk, so each chunk is decompressed about twice rather than once
per neighbouring block. Everything here is plain Python and NumPy on boxes (``(start,
stop)`` per axis, global coordinates) and task tuples; nothing reads Dask internals.

A block's *layout* says how its task reads what it needs: one entry per box (a
combination of runs; usually just one), read with the shift margin as `outer`, made of
`direct` pieces sliced from the source by the task itself and thin `stripped` pieces
(halo strips of neighbouring storage chunks) handed over by the strip task of the chunk
that holds them. A strip task decompresses its chunk once for all the blocks around it,
so what strip tasks keep in memory is a few thin strips, not whole chunks.

:class:`BlockReads` makes these tasks on demand, block by block: a view of a gigapixel map
asks for the few blocks on screen, and only their tasks (and the strip tasks of the chunks
around them) are ever made, so a view costs the same whatever the image size.
"""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
import threading
from collections.abc import Callable, Iterable, Iterator

import numpy as np

__all__ = [
    "BUFFER_BYTES",
    "BUFFER_POOL_BYTES",
    "BlockReads",
    "ReadInput",
    "add_strip_tasks",
    "assemble",
    "block_boxes",
    "borrowed_contiguous",
    "box_slices",
    "merge_chunks",
    "merge_requests",
    "overlap_chunks",
    "read_layout",
    "read_strips",
]


def box_slices(box) -> tuple[slice, ...]:
    """A box (``(start, stop)`` per axis) as a tuple of slices."""
    return tuple(slice(a, b) for a, b in box)


def block_boxes(chunks: tuple) -> Iterator[tuple[tuple[int, ...], tuple]]:
    """Block index and global ``(start, stop)`` box of every block of Dask `chunks`."""
    starts = [np.cumsum((0, *c)) for c in chunks]
    for idx in itertools.product(*(range(len(c)) for c in chunks)):
        yield idx, tuple((int(s[i]), int(s[i + 1])) for s, i in zip(starts, idx, strict=True))


def merge_chunks(chunks: tuple[int, ...], min_len: int, tail_min: int | None = None) -> tuple:
    """Merge consecutive chunks so that each is at least `min_len` (or the whole axis).

    A shorter last group is kept on its own if it has at least `tail_min` (default:
    `min_len`) pixels, so regular chunks stay regular, and joins the previous one otherwise.

    Examples
    --------
    >>> merge_chunks((2, 2, 2, 2, 1), 4)
    (4, 5)
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


def overlap_chunks(chunks: tuple, depth: dict[int, int]) -> tuple:
    """Chunks at least as long as the overlap depth (``dask.array.overlap`` needs it)."""
    return tuple(
        merge_chunks(c, depth.get(ax, 0)) if depth.get(ax, 0) else c for ax, c in enumerate(chunks)
    )


def read_layout(runs, shape, reach, native, halo) -> tuple[tuple, tuple, dict]:
    """How a block reads the boxes given by `runs` (see the module notes).

    Parameters
    ----------
    runs : list of list of (start, stop)
        Per axis, the runs of source indices the block reads (one run, except where a
        border mode reads a few pixels far away, such as "wrap").
    shape : tuple of int
        Shape of the source.
    reach : callable or None
        Maps a box to the box read for it (a shifted read), or None (the box itself).
    native : tuple of int or None
        Storage chunks of the source (see :func:`napari_ncc._sources.storage_chunks`).
    halo : sequence of int
        A piece no wider than this along an axis (and narrower than its chunk) comes
        from a strip task.

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


def merge_requests(total: dict, requests: dict) -> list:
    """Add a block's strip `requests` to the `total`; the chunk cells it needs, sorted."""
    for cell, pieces in requests.items():
        total.setdefault(cell, set()).update(pieces)
    return sorted(requests)


def add_strip_tasks(dsk: dict, name: str, key: str, requests: dict) -> None:
    """One strip task per storage chunk that neighbouring blocks want halo strips from."""
    for cell, pieces in requests.items():
        dsk[(name, *cell)] = (read_strips, key, tuple(sorted(pieces)))


def read_strips(source, pieces) -> dict:
    """Strip task: read the thin `pieces` (global boxes inside one storage chunk)."""
    bbox = tuple(
        (min(p[ax][0] for p in pieces), max(p[ax][1] for p in pieces))
        for ax in range(len(pieces[0]))
    )
    region = np.asarray(source[box_slices(bbox)])
    return {
        p: region[
            tuple(slice(a - o, b - o) for (a, b), (o, _) in zip(p, bbox, strict=True))
        ].copy()
        for p in pieces
    }


def assemble(source, layout, strips, transform: Callable | None = None) -> np.ndarray:
    """Read a block as its `layout` says (see :func:`read_layout`).

    `strips` are the results of the strip tasks the layout refers to. `transform`, if
    given, maps ``(region, inner, outer)`` to the values of the `inner` box from a
    `region` read over the `outer` box (a shift); by default the region is the box.
    """
    grid, entries = layout
    found: dict = {}
    for part in strips:
        found.update(part)
    pieces = np.empty(grid, dtype=object)
    for combo, inner, outer, direct, stripped in entries:
        if not stripped and len(direct) == 1:
            region = np.asarray(source[box_slices(direct[0])])
        else:
            parts = [(d, np.asarray(source[box_slices(d)])) for d in direct]
            parts += [(p, found[p]) for p in stripped]
            region = np.empty([b - a for a, b in outer], dtype=parts[0][1].dtype)
            for box, data in parts:
                region[
                    tuple(slice(a - o, b - o) for (a, b), (o, _) in zip(box, outer, strict=True))
                ] = data
        if transform is not None:
            region = transform(region, inner, outer)
        pieces[combo] = region
    if pieces.size == 1:
        return pieces.flat[0]
    return np.block(pieces.tolist())


@dataclasses.dataclass(frozen=True)
class ReadInput:
    """One image a :class:`BlockReads` graph reads (the arguments of :func:`read_layout`).

    `key` holds `source` in the graph; `strips` names its strip tasks; `halo` is the
    widest thin piece per axis (window halo plus shift margin), which also bounds how far
    beyond its runs a block reads.
    """

    key: str
    source: object
    strips: str
    native: tuple[int, ...] | None
    reach: Callable | None
    halo: tuple[int, ...]


class BlockReads:
    """The tasks of a graph whose blocks read their regions from sources, made on demand.

    Parameters
    ----------
    name : str
        Name of the output blocks (keys ``(name, *block_index)``).
    chunks : tuple of tuple of int
        Output chunks.
    shape : tuple of int
        Shape of the sources.
    inputs : sequence of ReadInput
    runs : callable
        ``runs(box)``: per axis, the ``(start, stop)`` runs of source indices the block
        `box` reads (the same for every input; along each axis it depends only on the
        box's extent on that axis, as each input's `reach` maps each axis on its own).
    make_task : callable
        ``make_task(box, layouts, cells)``: the block's task, given one layout and one
        list of strip keys per input.

    Notes
    -----
    A strip task serves every block that wants halo strips from its chunk: the blocks
    that can want them are found per axis (those whose runs, grown by the halo, reach
    the chunk), and their layouts are made (and kept) to collect their requests.
    """

    def __init__(self, name, chunks, shape, inputs, runs, make_task) -> None:
        self.name = name
        self.chunks = tuple(tuple(int(c) for c in ax) for ax in chunks)
        self.shape = tuple(shape)
        self.inputs = tuple(inputs)
        self.runs = runs
        self.make_task = make_task
        self._starts = [np.cumsum((0, *c)) for c in self.chunks]
        self._layouts: dict = {}
        self._reach_cache: dict = {}

    def __getstate__(self) -> dict:
        # What was made on demand is made again where the graph is unpickled.
        return {**self.__dict__, "_layouts": {}, "_reach_cache": {}}

    def block_keys(self) -> Iterator[tuple]:
        """Keys of all output blocks."""
        for idx in itertools.product(*(range(len(c)) for c in self.chunks)):
            yield (self.name, *idx)

    def source_keys(self) -> dict:
        """Graph key -> source."""
        return {i.key: i.source for i in self.inputs}

    def owns(self, key) -> bool:
        """Whether `key` is a block, strip or source key of this graph."""
        if isinstance(key, str):
            return any(key == i.key for i in self.inputs)
        if not isinstance(key, tuple) or not key:
            return False
        if key[0] == self.name:
            return len(key) == len(self.chunks) + 1 and all(
                isinstance(k, int) and 0 <= k < len(c)
                for k, c in zip(key[1:], self.chunks, strict=True)
            )
        for n, i in enumerate(self.inputs):
            if key[0] == i.strips and i.native is not None:
                return self._strip_pieces(n, key[1:]) != ()
        return False

    def _box(self, idx) -> tuple:
        return tuple((int(s[i]), int(s[i + 1])) for s, i in zip(self._starts, idx, strict=True))

    def _layout(self, n: int, idx) -> tuple[tuple, dict]:
        """``(layout, requests)`` of block `idx` reading input `n` (kept)."""
        found = self._layouts.get((n, idx))
        if found is None:
            spec = self.inputs[n]
            runs = self.runs(self._box(idx))
            grid, entries, requests = read_layout(
                runs, self.shape, spec.reach, spec.native, spec.halo
            )
            found = self._layouts[(n, idx)] = ((grid, entries), requests)
        return found

    def _readers(self, n: int, ax: int, cell: int) -> list[int]:
        """Block indices along `ax` whose reads of input `n` can reach storage chunk `cell`."""
        reach = self._reach_cache.get((n, ax))
        if reach is None:
            spec, reach = self.inputs[n], []
            for j in range(len(self.chunks[ax])):
                runs = self.runs(
                    self._box(tuple(j if a == ax else 0 for a in range(len(self.chunks))))
                )
                ranges = []
                for run in runs[ax]:
                    # (a reach maps each axis on its own: the other axes' runs do not matter)
                    inner = tuple(run if a == ax else r[0] for a, r in enumerate(runs))
                    lo, hi = (inner if spec.reach is None else spec.reach(inner))[ax]
                    ranges.append((lo - spec.halo[ax], hi + spec.halo[ax]))
                reach.append(ranges)
            self._reach_cache[(n, ax)] = reach
        size = self.inputs[n].native[ax]
        lo, hi = cell * size, (cell + 1) * size
        return [j for j, runs in enumerate(reach) if any(a < hi and lo < b for a, b in runs)]

    def _strip_pieces(self, n: int, cell) -> tuple:
        """Sorted pieces all blocks want from storage chunk `cell` of input `n`."""
        if len(cell) != len(self.chunks):
            return ()
        pieces: set = set()
        readers = [self._readers(n, ax, c) for ax, c in enumerate(cell)]
        for idx in itertools.product(*readers):
            pieces.update(self._layout(n, idx)[1].get(tuple(cell), ()))
        return tuple(sorted(pieces))

    def tasks(self, keys: Iterable) -> tuple[dict, dict]:
        """The tasks `keys` need (blocks first, then strips, then sources) and, per task,
        the keys it refers to."""
        blocks, strips, sources = {}, {}, {}
        wanted = []
        for key in keys:
            if isinstance(key, str):
                sources[key] = set()
            elif key[0] == self.name:
                idx = tuple(key[1:])
                layouts, cells = [], []
                for n, spec in enumerate(self.inputs):
                    layout, requests = self._layout(n, idx)
                    layouts.append(layout)
                    cells.append([(spec.strips, *c) for c in sorted(requests)])
                    wanted.extend((n, c) for c in requests)
                    sources[spec.key] = set()
                task = self.make_task(self._box(idx), layouts, cells)
                blocks[key] = (task, {self.inputs[n].key for n in range(len(self.inputs))})
                blocks[key][1].update(k for c in cells for k in c)
            else:
                n = next(n for n, i in enumerate(self.inputs) if i.strips == key[0])
                wanted.append((n, tuple(key[1:])))
        for n, cell in wanted:
            spec = self.inputs[n]
            key = (spec.strips, *cell)
            if key not in strips:
                pieces = self._strip_pieces(n, cell)
                strips[key] = ((read_strips, spec.key, pieces), {spec.key})
                sources[spec.key] = set()
        sourced = {key: (self.source_keys()[key], deps) for key, deps in sources.items()}
        out = {**blocks, **strips, **sourced}
        return {k: v[0] for k, v in out.items()}, {k: v[1] for k, v in out.items()}

    def all_keys(self) -> list:
        """Every key of the graph (makes every block's layout)."""
        return list(self.tasks(list(self.block_keys()))[0])


# ---------------------------------------------------------------------------------------
# Reused read buffers
# ---------------------------------------------------------------------------------------

#: Largest read buffer kept for reuse, in bytes; larger reads get a fresh array.
BUFFER_BYTES = 2**26

#: Most bytes the pool keeps between reads, all threads together.
BUFFER_POOL_BYTES = 2**28


class _BufferPool:
    """Byte buffers lent to one block task at a time, kept up to a total size.

    Why a shared, bounded pool: copying a strided block into memory that was used before
    avoids the page faults of freshly mapped memory, a large part of the cost of the copy.
    Buffers kept per thread (as before) stayed for the life of the process, 2 x 64 MiB for
    every thread Dask ever ran a block on, however long ago. Here a task borrows buffers
    while it runs and gives them back; the pool keeps at most :data:`BUFFER_POOL_BYTES`
    (the largest ones) for the next tasks and drops the rest, so the memory held between
    computations is bounded whatever the number of threads, and :meth:`clear` frees it.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._free: list[np.ndarray] = []

    def take(self, nbytes: int) -> np.ndarray:
        """The smallest free buffer of at least `nbytes`, or a new one."""
        with self._lock:
            fits = [b for b in self._free if b.nbytes >= nbytes]
            if fits:
                buffer = min(fits, key=lambda b: b.nbytes)
                self._free = [b for b in self._free if b is not buffer]
                return buffer
        return np.empty(nbytes, dtype=np.uint8)

    def give(self, buffer: np.ndarray) -> None:
        """Keep `buffer` for reuse if the pool has room (dropping smaller ones for it)."""
        with self._lock:
            kept = sorted([*self._free, buffer], key=lambda b: b.nbytes, reverse=True)
            total, self._free = 0, []
            for b in kept:
                if total + b.nbytes <= BUFFER_POOL_BYTES:
                    self._free.append(b)
                    total += b.nbytes

    def held_bytes(self) -> int:
        """Bytes kept for reuse now."""
        with self._lock:
            return sum(b.nbytes for b in self._free)

    def clear(self) -> None:
        """Free every kept buffer."""
        with self._lock:
            self._free = []


#: The read buffers of the lazy layer (see :class:`_BufferPool`).
BUFFERS = _BufferPool()


@contextlib.contextmanager
def borrowed_contiguous(*regions: np.ndarray) -> Iterator[list[np.ndarray]]:
    """`regions` as C-contiguous arrays, copied into buffers borrowed from :data:`BUFFERS`.

    A block read from an in-memory source is a strided view; the kernels want it
    contiguous (their flat min/max pass would copy a strided array again). Regions that
    are already contiguous, or larger than :data:`BUFFER_BYTES`, are used as they are or
    copied into a fresh array. The arrays are valid only inside the ``with`` block: the
    buffers go back to the pool when it ends.

    Examples
    --------
    >>> image = np.arange(12.0).reshape(3, 4)
    >>> with borrowed_contiguous(image[:, ::2], image) as (a, b):
    ...     bool(a.flags.c_contiguous), b is image
    (True, True)
    """
    out, borrowed = [], []
    try:
        for region in regions:
            if region.flags.c_contiguous or region.nbytes > BUFFER_BYTES:
                out.append(np.ascontiguousarray(region))
                continue
            buffer = BUFFERS.take(region.nbytes)
            borrowed.append(buffer)
            view = buffer[: region.nbytes].view(region.dtype).reshape(region.shape)
            np.copyto(view, region)
            out.append(view)
        yield out
    finally:
        for buffer in borrowed:
            BUFFERS.give(buffer)
