"""napari layers as the library's inputs: their levels, masks, shapes and files.

The napari side of the widget's input handling (a layer in, arrays out); nothing here
computes a map.
"""

import dask.array as da
import numpy as np
from napari.layers import Image, Labels

from . import _multiscale
from ._chunk_cache import COMPUTED_CHUNKS

__all__ = [
    "display_limits",
    "image_shape",
    "is_mask_layer",
    "layer_levels",
    "layer_mask",
    "share_viewer_chunks",
    "source_path",
]


def layer_levels(layer: Image) -> list[da.Array]:
    """The layer's data as lazy levels (level 0 first), RGB reduced to luminance."""
    data = list(layer.data) if layer.multiscale else [layer.data]
    levels = []
    for level in data:
        level = level if isinstance(level, da.Array) else da.asarray(level)
        levels.append(_multiscale.as_luminance(level) if layer.rgb else level)
    return levels


def share_viewer_chunks() -> None:
    """Let the map read the input chunks napari has computed for the input layers.

    napari computes the chunks of the (computed Dask) input layers on screen for itself and
    keeps them in its opportunistic Dask cache; the map's view needs the same chunks (and
    their neighbours, for the halos), so it looks there before computing them again.
    """
    from napari.utils import resize_dask_cache

    COMPUTED_CHUNKS.share(resize_dask_cache().cache.data)


def source_path(layer: Image) -> str | None:
    """The file a single-scale grey layer was read from, or None.

    The pyramid of such a layer is cached on disk by file (the one the reader built when
    it opened the file, or one built here and reused next time); an RGB layer is compared
    by its luminance, which is not the file's image.
    """
    path = getattr(layer.source, "path", None)
    return None if layer.multiscale or layer.rgb or not path else str(path)


def is_mask_layer(layer) -> bool:
    if isinstance(layer, Labels):
        return True
    return isinstance(layer, Image) and not layer.rgb and np.dtype(layer.dtype) == np.bool_


def layer_mask(layer) -> np.ndarray | da.Array:
    """A mask layer's level 0 as a boolean mask (in memory, a copy: painting later changes
    nothing; other data, such as a zarr array, lazily)."""
    data = layer.data[0] if layer.multiscale else layer.data
    if not isinstance(data, np.ndarray | da.Array):
        data = da.asarray(data)
    if isinstance(layer, Labels):
        return data > 0
    return data if isinstance(data, da.Array) else np.array(data, dtype=bool)


def image_shape(layer: Image) -> tuple[int, ...]:
    """Shape of what the widget compares: level 0, without the colour axis of RGB."""
    shape = tuple((layer.data[0] if layer.multiscale else layer.data).shape)
    return shape[:-1] if layer.rgb else shape


def display_limits(layer: Image) -> tuple[float, float]:
    if not layer.rgb:
        return tuple(layer.contrast_limits)
    dtype = np.dtype(layer.dtype)
    return (0.0, float(np.iinfo(dtype).max)) if dtype.kind in "iu" else (0.0, 1.0)
