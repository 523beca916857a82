"""Computed chunks kept between reads, shared by the threads that read them.

:class:`~napari_ncc._sources.DaskSource` computes only the chunks of a computed Dask array
that a box touches; those chunks are soon read again (by the strip tasks of neighbouring
blocks, by the next napari view), so they are kept here, by graph key, up to a byte
budget. A chunk two threads need at once is computed by one of them while the other waits
(:meth:`ChunkCache.claim`). A viewer's own chunk store can be looked up too
(:meth:`ChunkCache.share`): napari computes the input layers' chunks for its view, and the
NCC map then reads those instead of computing them again. No Dask here.
"""

from __future__ import annotations

import threading
from collections import OrderedDict

import numpy as np

__all__ = ["COMPUTED_CACHE_BYTES", "COMPUTED_CHUNKS", "ChunkCache"]

#: Bytes of computed chunks that :class:`DaskSource` keeps for the next reads (all sources
#: of the process together, least recently used dropped first): a chunk read by a block
#: is soon read again by the strip tasks of its neighbours, and by the next napari view.
COMPUTED_CACHE_BYTES = 2**28


class _Pending:
    """A chunk one thread is computing; the others that need it wait for it."""

    def __init__(self) -> None:
        self.done = threading.Event()
        self.chunk: np.ndarray | None = None  # None once done: the computation failed


class ChunkCache:
    """Computed chunks by graph key, read-only, at most :data:`COMPUTED_CACHE_BYTES`.

    Also the chunks being computed: :meth:`claim` gives a thread the missing keys no other
    thread is computing, and those that another is, to :meth:`wait` for. So a chunk
    that two blocks (or a block and a strip task) read at the same time, in two threads,
    is computed once.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._chunks: OrderedDict = OrderedDict()
        self._bytes = 0
        self._pending: dict = {}
        self._shared = None

    def share(self, chunks) -> None:
        """Also look chunks up in `chunks` (a mapping, key -> computed chunk, only read),
        or stop (None).

        A viewer that computes the same input chunks for its own layers keeps them in such
        a mapping: napari's opportunistic Dask cache
        (``napari.utils.resize_dask_cache().cache.data``) holds the chunks of the input
        layers on screen, so the map's view reads them instead of computing them again.
        """
        self._shared = chunks

    def get(self, key):
        with self._lock:
            chunk = self._chunks.get(key)
            if chunk is not None:
                self._chunks.move_to_end(key)
                return chunk
        shared = self._shared
        chunk = None if shared is None else shared.get(key)
        if not isinstance(chunk, np.ndarray):
            return None
        chunk = chunk.view()  # (its own flags: the viewer's array stays as it is)
        self.put(key, chunk)
        return chunk

    def claim(self, keys) -> tuple[list, dict]:
        """``(mine, theirs)``: keys this thread must compute (then :meth:`finish`), and
        key -> pending computation of another thread for the rest."""
        mine, theirs = [], {}
        with self._lock:
            for key in keys:
                pending = self._pending.get(key)
                if pending is None:
                    self._pending[key] = _Pending()
                    mine.append(key)
                else:
                    theirs[key] = pending
        return mine, theirs

    def finish(self, computed: dict, claimed) -> None:
        """Keep the `computed` chunks (key -> chunk) and wake the threads waiting for
        any `claimed` key (those missing from `computed` failed: the waiters compute them)."""
        for key, chunk in computed.items():
            self.put(key, chunk)
        with self._lock:
            pending = [(key, self._pending.pop(key)) for key in claimed]
        for key, p in pending:
            p.chunk = computed.get(key)
            p.done.set()

    @staticmethod
    def wait(pending: _Pending) -> np.ndarray | None:
        """The chunk another thread computed, or None if its computation failed."""
        pending.done.wait()
        return pending.chunk

    def put(self, key, chunk: np.ndarray) -> None:
        chunk.setflags(write=False)  # shared by every read of it
        with self._lock:
            if key in self._chunks or chunk.nbytes > COMPUTED_CACHE_BYTES:
                return
            self._chunks[key] = chunk
            self._bytes += chunk.nbytes
            while self._bytes > COMPUTED_CACHE_BYTES:
                _, dropped = self._chunks.popitem(last=False)
                self._bytes -= dropped.nbytes

    def clear(self) -> None:
        with self._lock:
            self._chunks.clear()
            self._bytes = 0


#: The computed chunks :class:`DaskSource` reads keep (see :class:`ChunkCache`).
COMPUTED_CHUNKS = ChunkCache()
