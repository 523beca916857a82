"""napari reader: zarr, OME-Zarr and TIFF files, opened lazily through :mod:`napari_ncc._io`.

Multiscale files (OME-Zarr, pyramidal TIFF) give multiscale layers; NCC maps written by
napari-ncc come back with their parameters, colormap and contrast limits. Anything this
reader cannot open (wrong type, corrupt file) gets ``None``, so napari tries another reader
instead of failing.
"""

from __future__ import annotations

import os
from collections.abc import Callable

from ._multiscale import NCC_COLORMAP, NCC_CONTRAST_LIMITS
from ._read import ATTRS_KEY, SMALL_SUFFIXES, TIFF_SUFFIXES, ZARR_SUFFIXES, is_rgb, read_image


def _layer_data(path: str) -> list[tuple]:
    levels, meta = read_image(path)
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


def napari_get_reader(path: str | list[str]) -> Callable | None:
    """The reader for `path`, or None if napari-ncc cannot open it.

    Opening is lazy (only metadata is read), so trying it here is cheap and lets a corrupt
    or unsupported file fall through to another reader instead of raising in the viewer.
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
        layers = _layer_data(path)
    except (ValueError, OSError):
        return None

    def read(_path) -> list[tuple]:
        return layers

    return read
