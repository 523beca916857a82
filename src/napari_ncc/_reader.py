"""napari reader: zarr, OME-Zarr and TIFF files, opened lazily through :mod:`napari_ncc._read`.

Multiscale files (OME-Zarr, pyramidal TIFF) give multiscale layers; so do big single-scale
zarr arrays and TIFF files, with a pyramid built once and cached on disk
(:func:`napari_ncc._pyramid_cache.open_image_pyramid`): napari then reads only the tiles on
screen instead of loading the whole image. NCC maps written by napari-ncc come back with
their parameters, colormap and contrast limits. Anything this reader cannot open (wrong
type, corrupt file) gets ``None``, so napari tries another reader instead of failing.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Callable, Iterator

from ._multiscale import NCC_COLORMAP, NCC_CONTRAST_LIMITS
from ._pyramid_cache import open_image_pyramid
from ._read import ATTRS_KEY, SMALL_SUFFIXES, TIFF_SUFFIXES, ZARR_SUFFIXES, is_rgb, read_image


def _layer_data(levels: list, meta: dict, path: str) -> list[tuple]:
    kwargs: dict = {"name": meta.get("name") or os.path.basename(path)}
    scale = meta.get("scale")
    rgb = is_rgb(meta.get("axes"), levels[0].shape)
    kwargs["rgb"] = rgb
    if scale is not None:
        kwargs["scale"] = tuple(scale)[:-1] if rgb else tuple(scale)
    params = meta.get(ATTRS_KEY)
    if params is not None:
        layer = params.get("layer") or {}
        kwargs.update(
            colormap=NCC_COLORMAP,
            contrast_limits=NCC_CONTRAST_LIMITS,
            metadata={ATTRS_KEY: params},
        )
        for key in ("scale", "translate"):
            if layer.get(key) is not None and len(layer[key]) == levels[0].ndim:
                kwargs[key] = tuple(layer[key])
    if len(levels) > 1:
        kwargs["multiscale"] = True
        data = levels
    else:
        data = levels[0]
    return [(data, kwargs, "image")]


@contextlib.contextmanager
def _pyramid_progress(path: str) -> Iterator[Callable[[int, int], None] | None]:
    """A ``progress(done, total)`` callback showing a napari progress bar while a pyramid
    is built, when a viewer is open; None otherwise (a script, a test: no bar). The bar
    appears with the first block built: none when the pyramid comes from the cache."""
    napari = sys.modules.get("napari")
    if napari is None or napari.current_viewer() is None:
        yield None
        return
    from napari.utils import progress

    bar = None

    def report(done: int, total: int) -> None:
        nonlocal bar
        if bar is None:
            bar = progress(total=total, desc=f"Building the pyramid of {os.path.basename(path)}")
        bar.update(done - bar.n)

    try:
        yield report
    finally:
        if bar is not None:
            bar.close()


def napari_get_reader(path: str | list[str]) -> Callable | None:
    """The reader for `path`, or None if napari-ncc cannot open it.

    Opening is lazy (only metadata is read), so trying it here is cheap and lets a corrupt
    or unsupported file fall through to another reader instead of raising in the viewer.
    The pyramid of a big single-scale file (a pass over the file the first time, then
    read from the cache) is made by the returned function, when napari opens the file.
    """
    if isinstance(path, list):
        if len(path) != 1:
            return None
        path = path[0]
    path = os.fspath(path)
    lower = os.path.basename(os.path.normpath(path)).lower()
    if not lower.endswith(ZARR_SUFFIXES + TIFF_SUFFIXES + SMALL_SUFFIXES):
        return None
    try:
        read_image(path)
    except (ValueError, OSError):
        return None

    def read(_path) -> list[tuple]:
        with _pyramid_progress(path) as progress:
            levels, meta = open_image_pyramid(path, progress=progress)
        return _layer_data(levels, meta, path)

    return read
