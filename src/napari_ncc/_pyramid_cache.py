"""Pyramids of big single-scale files, built once and cached on disk, so they open as multiscale.

A plain 20000² zarr array or TIFF has no coarse levels: shown as it is, napari loads the
whole image to draw the overview. :func:`cached_pyramid` gives such a file the coarse
levels :func:`napari_ncc._multiscale.build_pyramid` makes (2x2 block means, reading the
file once, chunk by chunk), stored under a cache directory and keyed by the file's path,
modification time, shape and dtype, so reopening the same file reuses them at once and a
changed file gets a new pyramid (the old one is removed). :func:`open_image_pyramid` is
:func:`napari_ncc._io.read_image` with that pyramid added where one is needed.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Generator

import dask.array as da

from ._atomic import remove, remove_stale_temporaries, temporary_path
from ._multiscale import (
    PYRAMID_CHUNK,
    PYRAMID_FACTOR,
    PYRAMID_MIN_SIDE,
    iter_pyramid,
    needs_pyramid,
    pyramid_shapes,
    run_steps,
)
from ._read import read_image

__all__ = ["cached_pyramid", "default_cache_dir", "iter_cached_pyramid", "open_image_pyramid"]

#: Bumped when the pyramid rule changes, so that old caches are not reused.
_CACHE_FORMAT = 1

#: The file in a cache entry that says what it was built from (for people and checks).
_SOURCE_FILE = "source.json"


def default_cache_dir() -> str:
    """Where pyramids are cached by default: ``$XDG_CACHE_HOME/napari-ncc/pyramids``.

    (``~/.cache/napari-ncc/pyramids`` where ``XDG_CACHE_HOME`` is not set.)
    """
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "napari-ncc", "pyramids")


def _modified_ns(path: str) -> int:
    """Latest modification time of a file, or of a directory store and its folders.

    Writing a chunk of a zarr store creates or replaces a file in some folder, which
    changes that folder's time; folders are few (one per chunk row at most), files many.
    """
    if not os.path.isdir(path):
        return os.stat(path).st_mtime_ns
    latest = os.stat(path).st_mtime_ns
    for root, _, files in os.walk(path):
        latest = max(latest, os.stat(root).st_mtime_ns)
        for name in files:
            if name in ("zarr.json", ".zarray", ".zattrs"):
                latest = max(latest, os.stat(os.path.join(root, name)).st_mtime_ns)
    return latest


def _source(path: str | os.PathLike, image: da.Array) -> dict:
    """What a cache entry is valid for: the file as it is now and the pyramid rule."""
    return {
        "path": os.path.realpath(os.fspath(path)),
        "modified_ns": _modified_ns(os.fspath(path)),
        "shape": [int(n) for n in image.shape],
        "dtype": str(image.dtype),
        "pyramid": [PYRAMID_FACTOR, PYRAMID_MIN_SIDE, PYRAMID_CHUNK, _CACHE_FORMAT],
    }


def _digest(value) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True).encode()).hexdigest()[:20]


def _entry(cache_dir: str, source: dict) -> tuple[str, str]:
    """The folder of every pyramid of this path, and of the one for this exact source."""
    folder = os.path.join(cache_dir, _digest(source["path"]))
    return folder, os.path.join(folder, _digest(source))


def _open_entry(entry: str, image: da.Array, source: dict) -> list[da.Array] | None:
    """The levels stored in `entry`, or None when it is missing or not what it should be."""
    try:
        with open(os.path.join(entry, _SOURCE_FILE)) as f:
            if json.load(f) != source:
                return None
        levels = [image]
        for k, shape in enumerate(pyramid_shapes(image.shape)[1:], start=1):
            level = da.from_zarr(os.path.join(entry, f"level{k}.zarr"))
            if level.shape != shape:
                return None
            levels.append(level)
    except (OSError, ValueError, KeyError):
        return None
    return levels


def _input(path, image) -> da.Array:
    if image is None:
        levels, _ = read_image(path)
        return levels[0]
    return da.asarray(image)


def iter_cached_pyramid(
    path: str | os.PathLike,
    image: da.Array | None = None,
    *,
    cache_dir: str | os.PathLike | None = None,
) -> Generator[tuple[int, int], None, list[da.Array]]:
    """:func:`cached_pyramid` as a generator: yields ``(done, total)`` while it builds.

    Yields nothing when the pyramid is already cached. Its return value
    (``levels = yield from iter_cached_pyramid(path)``) is the list of levels; a napari
    worker thread forwards the yields to its progress bar.
    """
    image = _input(path, image)
    cache_dir = os.fspath(cache_dir) if cache_dir is not None else default_cache_dir()
    source = _source(path, image)
    folder, entry = _entry(cache_dir, source)
    levels = _open_entry(entry, image, source)
    if levels is not None:
        return levels
    os.makedirs(folder, exist_ok=True)
    remove_stale_temporaries(entry)
    tmp = temporary_path(entry)
    try:
        yield from iter_pyramid(image, tmp)
        with open(os.path.join(tmp, _SOURCE_FILE), "w") as f:
            json.dump(source, f)
        try:
            os.rename(tmp, entry)  # the rename marks the entry complete
        except OSError:
            if _open_entry(entry, image, source) is None:  # a broken entry: replace it
                remove(entry)
                os.rename(tmp, entry)
            else:  # another process finished the same pyramid first: use theirs
                remove(tmp)
    except BaseException:
        remove(tmp)
        raise
    # Pyramids of earlier versions of this file are stale now.
    for name in os.listdir(folder):
        if os.path.join(folder, name) != entry and not name.startswith("."):  # (temporaries)
            remove(os.path.join(folder, name))
    levels = _open_entry(entry, image, source)
    if levels is None:
        raise OSError(f"the pyramid cached for {path} in {entry} could not be read back")
    return levels


def cached_pyramid(
    path: str | os.PathLike,
    image: da.Array | None = None,
    *,
    cache_dir: str | os.PathLike | None = None,
    progress: Callable[[int, int], object] | None = None,
) -> list[da.Array]:
    """The pyramid of a single-scale file, from the cache or built once and cached.

    Level 0 is the file's image as it is; level ``k`` the 2x2 block mean of level
    ``k - 1`` (see :func:`napari_ncc._multiscale.build_pyramid`), built reading the file
    once, chunk by chunk (memory bounded by a few chunks), and stored in `cache_dir`. The
    entry is keyed by the file's real path, modification time, shape and dtype: opening
    the same file again reuses it without reading the file; a modified file gets a new
    pyramid, replacing the old one.

    Parameters
    ----------
    path : str or os.PathLike
        The file (zarr array, TIFF, ...) the pyramid belongs to.
    image : dask.array.Array, optional
        Its full-resolution image, lazily; read with :func:`napari_ncc._io.read_image`
        when not given.
    cache_dir : path, optional
        Where pyramids are kept; :func:`default_cache_dir` by default.
    progress : callable, optional
        Called as ``progress(done, total)`` after each block written while building.

    Returns
    -------
    levels : list of dask.array.Array
        ``[image, level1, ...]``, the coarse levels read from the cache.

    Notes
    -----
    A zarr store's modification time is that of its folders and metadata files: a chunk
    rewritten in place through the file system without creating a file is not noticed.

    Examples
    --------
    >>> import os, tempfile
    >>> import numpy as np, zarr
    >>> folder = tempfile.TemporaryDirectory()
    >>> path = os.path.join(folder.name, "tall.zarr")
    >>> _ = zarr.create_array(path, data=np.ones((1200, 600), "uint8"), chunks=(512, 512))
    >>> cache = os.path.join(folder.name, "cache")
    >>> levels = cached_pyramid(path, cache_dir=cache)
    >>> [level.shape for level in levels]
    [(1200, 600), (600, 300), (300, 150)]
    >>> calls = []
    >>> again = cached_pyramid(path, cache_dir=cache, progress=lambda *done: calls.append(done))
    >>> calls, [level.shape for level in again] == [level.shape for level in levels]
    ([], True)
    >>> folder.cleanup()
    """
    return run_steps(iter_cached_pyramid(path, image, cache_dir=cache_dir), progress)


def open_image_pyramid(
    path: str | os.PathLike,
    *,
    cache_dir: str | os.PathLike | None = None,
    progress: Callable[[int, int], object] | None = None,
) -> tuple[list[da.Array], dict]:
    """:func:`napari_ncc._io.read_image`, with a cached pyramid for big single-scale files.

    A file that has no pyramid of its own and whose image plane is larger than
    :data:`napari_ncc._multiscale.MULTISCALE_MIN_SIDE` pixels a side gets one from
    :func:`cached_pyramid` (built on first open, then reused). Files with their own
    pyramid (OME-Zarr, pyramidal TIFF), small ones, and colour images (channels on the
    last axis) come back as :func:`read_image` gives them.

    Returns
    -------
    levels, metadata
        As :func:`napari_ncc._io.read_image`; ``metadata["pyramid"]`` is ``"cached"``
        when the coarse levels come from the cache.
    """
    levels, metadata = read_image(path)
    image = levels[0]
    colour = image.ndim >= 3 and image.shape[-1] in (3, 4)
    if len(levels) > 1 or colour or not needs_pyramid(image.shape):
        return levels, metadata
    levels = cached_pyramid(path, image, cache_dir=cache_dir, progress=progress)
    return levels, {**metadata, "pyramid": "cached"}
