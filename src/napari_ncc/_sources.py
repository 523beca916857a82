"""What a Dask array reads from: the only module that looks inside Dask graphs.

The lazy engine (:mod:`napari_ncc._lazy`, :mod:`napari_ncc._shift`) runs fastest and in
bounded memory when each output block can slice its own region (halo included) straight
from the object a Dask array reads: a zarr array, a TIFF file's zarr store, a memory map,
a NumPy array. :func:`find_source` recognises the graphs that are a plain read of such an
object, and :func:`as_dask_array` turns the engine's tasks (a dictionary, or a
:class:`~napari_ncc._blocks.BlockReads` that makes them on demand) back into a Dask
array. Both need Dask's graph internals (``HighLevelGraph`` layers and culling,
``Blockwise.io_deps``, ``dask._task_spec``'s ``Alias`` and ``DataNode``,
``__dask_graph__``, ``dask.core.get``), which change between Dask releases, so they live
here alone.

A computed Dask array (``map_blocks`` of a reader or a generator, a dask-image filter, any
graph in which each chunk needs only a few others) is a source too: :class:`DaskSource`
computes just the chunks a box touches, so a view of the NCC map costs the tiles on screen
plus their halos whatever the image size, instead of culling an overlap graph that grows
with the image. Graphs where one chunk needs many (a reduction over the whole image) are
not wrapped: each read would redo the reduction.

Recognition is an optimisation, never a requirement: when a graph is not recognised
(another form, or a Dask release that builds it differently), :func:`find_source` returns
None, logs why at debug level on the ``napari_ncc`` logger, and the caller takes the
public path (``dask.array.overlap``), which gives the same numbers. ``tests/test_sources.py``
pins every recognised form, so a Dask upgrade that breaks one fails loudly.
"""

from __future__ import annotations

import itertools
import logging
import math
import operator
import uuid

import dask.array as da
import numpy as np
from dask.base import tokenize
from dask.highlevelgraph import HighLevelGraph, Layer, MaterializedLayer

from ._chunk_cache import COMPUTED_CHUNKS

__all__ = [
    "STORAGE_CHUNK_PIXELS",
    "ChunkedSource",
    "DaskSource",
    "SlicedSource",
    "as_dask_array",
    "as_source",
    "compute_isolated",
    "find_source",
    "storage_chunks",
]

log = logging.getLogger(__name__)


def compute_isolated(*collections, **kwargs):
    """``dask.compute``, safe in any thread and inside a running task.

    With ``callbacks=None`` Dask's local schedulers *swap* the process-wide set of active
    callbacks (``dask.callbacks.Callback.active``) out and back in (``local_callbacks``), so
    that only the outermost scheduler runs them. From a worker thread that swap races the
    main thread's computations: napari's opportunistic cache, a global callback, then runs
    in two computations at once or is lost (seen as a ``KeyError`` in ``dask.cache``). An
    explicit empty set leaves the global one alone. Other schedulers (a ``distributed``
    client) do not swap and get the call unchanged.
    """
    import dask
    from dask.base import get_scheduler

    scheduler = get_scheduler(scheduler=kwargs.get("scheduler"), collections=collections)
    local = ("dask.local", "dask.threaded", "dask.multiprocessing")
    if getattr(scheduler, "__module__", "").startswith(local):
        kwargs.setdefault("callbacks", ())
    return dask.compute(*collections, **kwargs)


#: Storage chunks larger than this many pixels (such as a TIFF stored as one strip) are not
#: treated as chunks: halo strip tasks would have to decode and hold them whole.
STORAGE_CHUNK_PIXELS = 2**26


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


class DaskSource:
    """A computed Dask array seen as a sliceable source.

    Slicing computes the chunks the box touches, with the synchronous scheduler, in the
    thread (or ``dask.distributed`` worker) that asks: the graph is culled to those
    chunks' keys and run, without the slicing and optimisation passes of
    ``array[box].compute()``, whose cost grows with the number of chunks. Chunks just
    computed are kept a while (:data:`COMPUTED_CHUNKS`), for the neighbours and the next
    view that read them again; a chunk that several threads need at once is computed by
    one of them while the others wait. :attr:`chunks`
    are the array's chunks when they are regular, so that the lazy engine's strip tasks
    (:mod:`napari_ncc._blocks`) hand halos to neighbouring blocks and each chunk is
    computed about twice, not once per block whose halo reaches into it.

    Parameters
    ----------
    array : dask.array.Array
        A graph in which each chunk needs only a few others (see :func:`find_source`).

    Examples
    --------
    >>> import dask.array as da, numpy as np
    >>> source = DaskSource(da.arange(12, chunks=4).reshape(3, 4).rechunk((3, 2)) * 2)
    >>> source[1:, 1:3], source.chunks
    (array([[10, 12],
           [18, 20]]), (3, 2))
    """

    def __init__(self, array: da.Array) -> None:
        self.array = array
        self.shape = tuple(array.shape)
        self.dtype = array.dtype
        self._starts = [np.cumsum((0, *c)) for c in array.chunks]

    @property
    def chunks(self) -> tuple[int, ...] | None:
        """The chunk shape when all chunks but the last of each axis have it, else None."""
        regular = []
        for c in self.array.chunks:
            if len(c) > 1 and (len(set(c[:-1])) > 1 or c[-1] > c[0]):
                return None
            regular.append(int(c[0]))
        return tuple(regular)

    def __getitem__(self, index: tuple[slice, ...]) -> np.ndarray:
        from dask.core import get

        cells = []
        for sl, starts, n in zip(index, self._starts, self.shape, strict=True):
            start, stop, _ = sl.indices(n)
            first = int(np.searchsorted(starts, start, side="right")) - 1
            last = int(np.searchsorted(starts, max(stop, start + 1), side="left")) - 1
            cells.append(range(max(first, 0), max(first, last) + 1))
        keys = [(self.array.name, *idx) for idx in itertools.product(*cells)]
        found = {key: COMPUTED_CHUNKS.get(key) for key in keys}
        missing = [key for key, chunk in found.items() if chunk is None]
        while missing:
            mine, theirs = COMPUTED_CHUNKS.claim(missing)
            computed: dict = {}
            try:
                if mine:
                    graph = self.array.__dask_graph__().cull(set(mine))
                    for key, chunk in zip(mine, get(dict(graph), mine), strict=True):
                        computed[key] = np.asarray(chunk).view()  # (its own flags)
            finally:
                COMPUTED_CHUNKS.finish(computed, mine)
            found.update(computed)
            for key, pending in theirs.items():
                found[key] = COMPUTED_CHUNKS.wait(pending)
            missing = [key for key in theirs if found[key] is None]  # (theirs failed)
        blocks = {key[1:]: chunk for key, chunk in found.items()}
        return ChunkedSource(blocks, self.array.chunks, self.dtype)[tuple(index)]


def _is_local(array: da.Array, graph: HighLevelGraph) -> tuple[bool, str]:
    """Whether a chunk of `array` needs only a neighbourhood of chunks from every layer."""
    middle = (array.name, *(n // 2 for n in array.numblocks))
    bound = 4**array.ndim
    for name, layer in graph.cull({middle}).layers.items():
        if len(layer) > bound:
            return False, f"one chunk needs {len(layer)} tasks of layer {name} (a reduction?)"
    return True, ""


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
    arrays held in the graph (``da.from_array`` of a NumPy array, ``persist``). Any other
    array whose chunks each need only a few tasks (``map_blocks`` of a generator, a
    filter) is read through :class:`DaskSource`.

    Returns
    -------
    (key, source) or None
        A graph key to hold the source under, and the source (sliced with tuples of
        slices, returning NumPy arrays); None for a computed array whose chunks need many
        others (a reduction), or a graph this Dask release builds in a form not
        recognised (logged at debug level: the caller then takes the public path, with
        the same numbers).

    Examples
    --------
    >>> import dask.array as da, numpy as np
    >>> key, source = find_source(da.from_array(np.arange(6.0).reshape(2, 3), chunks=1))
    >>> source[1:, :2]
    array([[3., 4.]])
    >>> type(find_source(da.ones((2, 3), chunks=1) + 1)[1]).__name__
    'DaskSource'
    >>> x = da.ones((16, 16), chunks=2)
    >>> find_source(x - x.mean()) is None
    True
    """
    if not isinstance(array, da.Array):
        return None
    try:
        found, reason = _recognise(array)
        if found is None:
            found, reason = _computed(array, reason)
    except Exception as err:  # a Dask release whose graphs look different: fall back
        found, reason = None, f"{type(err).__name__}: {err}"
    if found is None:
        log.debug(
            "no sliceable source recognised behind dask array %s (%s); its blocks are "
            "computed through dask and overlapped instead",
            array.name,
            reason,
        )
    return found


def _recognise(array) -> tuple[tuple[str, object] | None, str]:
    """``(found, reason)``: the source of :func:`find_source`, or None and why not."""
    graph = array.__dask_graph__()
    layers = getattr(graph, "layers", None)
    if layers is None or array.name not in layers:
        return None, f"its graph is a {type(graph).__name__} without a layer of that name"
    layer = layers[array.name]
    found = _getter_source(layers, array.name)
    if found is not None:
        key, source, chunks = found
        if len(layers) > 2 or chunks != array.chunks:
            return None, "a read followed by other operations"
        if np.dtype(getattr(source, "dtype", object)) != array.dtype:
            return None, "a read with a dtype conversion"
        return (key, source), ""
    if not isinstance(layer, MaterializedLayer):
        return None, f"a computed array (last layer: {type(layer).__name__})"
    if len(layers) == 1:
        blocks = {}
        for idx in itertools.product(*(range(n) for n in array.numblocks)):
            value = _unwrap(layer.get((array.name, *idx)))
            expected = tuple(c[i] for c, i in zip(array.chunks, idx, strict=True))
            if not isinstance(value, np.ndarray) or value.shape != expected:
                return None, "a graph whose blocks are not all NumPy arrays"
            if value.dtype != array.dtype:
                return None, "NumPy blocks of another dtype"
            blocks[idx] = value
        source = _whole_array(blocks, array.chunks)
        if source is None:
            source = ChunkedSource(blocks, array.chunks, array.dtype)
        return (f"napari-ncc-source-{tokenize(array.name)}", source), ""
    deps = getattr(graph, "dependencies", {}).get(array.name, set())
    if len(deps) != 1 or len(layers) > 3:
        return None, "a computed array (more than a read and a slicing)"
    (inner,) = deps
    found = _getter_source(layers, inner)
    if found is None:
        return None, "a computed array (not a slicing of a read)"
    _, source, inner_chunks = found
    if np.dtype(getattr(source, "dtype", object)) != array.dtype:
        return None, "a read with a dtype conversion"
    mapping = _plain_slicing(array, layer, inner, inner_chunks)
    if mapping is None:
        return None, "slicing other than unit steps and integer indices"
    sliced = SlicedSource(source, mapping, array.shape, array.dtype)
    return (f"napari-ncc-source-{tokenize(array.name)}", sliced), ""


def _computed(array: da.Array, reason: str) -> tuple[tuple[str, object] | None, str]:
    """A :class:`DaskSource` for a computed array whose chunks each need a few tasks."""
    graph = array.__dask_graph__()
    if not isinstance(graph, HighLevelGraph) or array.size == 0:
        return None, reason
    local, why = _is_local(array, graph)
    if not local:
        return None, f"{reason}; {why}"
    return (f"napari-ncc-source-{tokenize(array.name)}", DaskSource(array)), ""


def storage_chunks(source, ndim: int) -> tuple[int, ...] | None:
    """Shape of the chunks a source decompresses as a whole (zarr chunks, TIFF tiles).

    None for in-memory sources (NumPy arrays, :class:`ChunkedSource`), where any slice
    is cheap, and for chunks of more than :data:`STORAGE_CHUNK_PIXELS` pixels (such as a
    TIFF stored as one strip), which strip tasks would have to hold whole.
    """
    if isinstance(source, np.ndarray | ChunkedSource):
        return None
    chunks = getattr(source, "chunks", None)
    if (
        isinstance(chunks, tuple)
        and len(chunks) == ndim
        and all(isinstance(c, int | np.integer) and c > 0 for c in chunks)
        and math.prod(int(c) for c in chunks) <= STORAGE_CHUNK_PIXELS
    ):
        return tuple(int(c) for c in chunks)
    return None


def as_source(image) -> tuple[str, object] | None:
    """``(key, source)`` for an engine input: a NumPy array is its own source; a Dask
    array's source is found by :func:`find_source` (None: take the public path)."""
    if isinstance(image, da.Array):
        return find_source(image)
    return f"napari-ncc-source-{uuid.uuid4().hex}", image


class _OnDemandLayer(Layer):
    """A graph layer whose tasks are made when culling asks for them.

    Culling (what every ``compute`` of a slice does first) costs the blocks asked for,
    not the whole layer; iterating over the layer makes every task.
    """

    def __init__(self, maker) -> None:
        super().__init__()
        self.maker = maker
        self._all: dict | None = None

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_all": None}

    @property
    def has_legacy_tasks(self) -> bool:  # tuple tasks, but found without materializing
        return True

    def is_materialized(self) -> bool:
        return False

    def get_output_keys(self):
        return set(self.maker.block_keys())

    def _materialize(self) -> dict:
        if self._all is None:
            self._all = self.maker.tasks(list(self.maker.block_keys()))[0]
        return self._all

    def __contains__(self, key) -> bool:
        return self.maker.owns(key)

    def __getitem__(self, key):
        if not self.maker.owns(key):
            raise KeyError(key)
        return self.maker.tasks([key])[0][key]

    def __iter__(self):
        return iter(self._materialize())

    def __len__(self) -> int:
        return len(self._materialize())

    def cull(self, keys, all_hlg_keys):
        tasks, deps = self.maker.tasks([k for k in keys if self.maker.owns(k)])
        return MaterializedLayer(tasks, annotations=self.annotations), deps


def as_dask_array(name: str, tasks, chunks: tuple, dtype) -> da.Array:
    """A Dask array from tasks with keys ``(name, *block_index)``.

    `tasks` is a dictionary, or an object that makes them on demand
    (:class:`~napari_ncc._blocks.BlockReads`: its ``block_keys``, ``owns`` and ``tasks``).
    The tasks may refer to each other's keys only (sources, strip tasks), so the graph is
    one self-contained layer.
    """
    layer = tasks if isinstance(tasks, dict) else _OnDemandLayer(tasks)
    graph = HighLevelGraph.from_collections(name, layer, dependencies=[])
    dtype = np.dtype(dtype)
    meta = np.empty((0,) * len(chunks), dtype=dtype)
    return da.Array(graph, name, chunks, dtype=dtype, meta=meta)
