"""Reading images lazily: zarr, OME-Zarr, TIFF and small image files as Dask arrays.

:func:`read_image` opens zarr arrays, OME-Zarr multiscale groups, TIFF files (plain, tiled,
pyramidal) and small PNG/JPEG-like images as Dask arrays without loading them, with their
metadata (axis names, pixel size, and the parameters of a map napari-ncc wrote). The
writing side is :mod:`napari_ncc._io`.
"""

from __future__ import annotations

import math
import os
import threading
from collections.abc import Sequence

import dask.array as da
import numpy as np

__all__ = ["is_rgb", "read_image"]

#: Key of the NCC parameters in the attributes of a map napari-ncc writes.
ATTRS_KEY = "napari_ncc"

ZARR_SUFFIXES = (".zarr",)
TIFF_SUFFIXES = (".tif", ".tiff", ".btf", ".tf8", ".tf2")
SMALL_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp")

#: Dask chunks made when reading: native chunks grown to at least this many pixels...
_MIN_CHUNK_PIXELS = 2**20
#: ...and split along the last two axes when longer than this.
_MAX_CHUNK_LENGTH = 4096

#: Names a file's metadata gives a colour-channel axis (OME "c", tifffile's "S" samples).
CHANNEL_AXES = ("c", "s", "rgb", "channel")


def is_rgb(axes: Sequence[str] | None, shape: Sequence[int]) -> bool:
    """Whether an image with these axis names and shape is RGB(A).

    The one rule every front end uses (napari's reader, the command line): the last axis
    is named as a colour channel (:data:`CHANNEL_AXES`, any case) and holds 3 or 4 samples,
    in an image of at least 3 dimensions with one name per axis. Such an image is compared
    by its luminance (:func:`napari_ncc._multiscale.as_luminance`).

    Examples
    --------
    >>> is_rgb(("y", "x", "c"), (480, 640, 3)), is_rgb("YXS", (480, 640, 4))
    (True, True)
    >>> is_rgb(("z", "y", "x"), (10, 480, 3)), is_rgb(None, (480, 640, 3))
    (False, False)
    """
    shape = tuple(shape)
    return bool(
        axes
        and len(axes) == len(shape) >= 3
        and str(axes[-1]).lower() in CHANNEL_AXES
        and shape[-1] in (3, 4)
    )


def dask_chunks(native: Sequence[int], shape: Sequence[int]) -> tuple[int, ...]:
    """Dask chunks for reading: whole native chunks, grown when tiny, split when huge."""
    chunks = [max(1, min(int(c), int(s))) for c, s in zip(native, shape, strict=True)]
    spatial = list(range(max(0, len(shape) - 2), len(shape)))
    for ax in spatial:
        chunks[ax] = min(chunks[ax], _MAX_CHUNK_LENGTH)
    for ax in range(len(shape) - 2):
        if math.prod(chunks) > 4 * _MAX_CHUNK_LENGTH**2:
            chunks[ax] = 1
    while math.prod(chunks) < _MIN_CHUNK_PIXELS:
        growable = [ax for ax in spatial if chunks[ax] < shape[ax]]
        if not growable:
            break
        ax = min(growable, key=lambda a: chunks[a])
        chunks[ax] = min(int(shape[ax]), chunks[ax] * 2)
    return tuple(chunks)


def strip_suffixes(name: str) -> str:
    """A file name without its image suffix (``.ome.zarr``, ``.tif``, ...): the layer name.

    Examples
    --------
    >>> strip_suffixes("map.ome.zarr"), strip_suffixes("slide.OME.TIF"), strip_suffixes("a.png")
    ('map', 'slide', 'a')
    """
    lower = name.lower()
    for suffix in (".ome.zarr", ".ome.tiff", ".ome.tif", *ZARR_SUFFIXES, *TIFF_SUFFIXES):
        if lower.endswith(suffix):
            return name[: -len(suffix)]
    return os.path.splitext(name)[0]


def ncc_attrs(attrs) -> dict | None:
    """The NCC parameters stored in a file's attributes (under :data:`ATTRS_KEY`), or None.

    ``fill_value`` comes back as a float (NaN is stored as the string ``"nan"``).
    """
    params = attrs.get(ATTRS_KEY)
    if not isinstance(params, dict):
        return None
    params = dict(params)
    if isinstance(params.get("fill_value"), str):
        params["fill_value"] = float(params["fill_value"])
    return params


def _zarr_level(array) -> da.Array:
    return da.from_zarr(array, chunks=dask_chunks(array.chunks, array.shape))


def _read_zarr(path: str, name: str) -> tuple[list[da.Array], dict]:
    import zarr

    try:
        node = zarr.open(path, mode="r")
    except Exception as err:
        raise ValueError(f"{path} is not a readable zarr store: {err}") from None
    if not isinstance(node, zarr.Array):
        # An OME-Zarr image, read by the NGFF library (imported here: the OME-Zarr module
        # builds on this one).
        from ._ome_zarr import read_ome_zarr

        try:
            return read_ome_zarr(path)
        except ImportError as err:  # no ome-zarr (Python 3.10): one clear error
            raise ValueError(str(err)) from None
    metadata: dict = {"name": name, "scale": None, "axes": None, "path": path}
    params = ncc_attrs(dict(node.attrs))
    if params is not None:
        metadata[ATTRS_KEY] = params
    return [_zarr_level(node)], metadata


class TiffLevel:
    """One pyramid level of a TIFF series, sliceable and picklable.

    Opens the file through ``tifffile``'s zarr store on first access (in each process), so
    a Dask graph reading it can run on ``dask.distributed`` workers.

    Parameters
    ----------
    path : str
    series, level : int
    shape : tuple of int
    dtype : numpy dtype
    chunks : tuple of int
        Native chunks (tiles or strips) of the level.
    """

    def __init__(self, path: str, series: int, level: int, shape, dtype, chunks) -> None:
        self.path = path
        self.series = series
        self.level = level
        self.shape = tuple(shape)
        self.dtype = np.dtype(dtype)
        self.chunks = tuple(chunks)
        self._array = None
        self._lock = threading.Lock()

    @property
    def ndim(self) -> int:
        return len(self.shape)

    def _open(self):
        if self._array is None:
            with self._lock:
                if self._array is None:
                    import tifffile
                    import zarr

                    store = tifffile.imread(
                        self.path, aszarr=True, series=self.series, level=self.level
                    )
                    self._array = zarr.open(store, mode="r")
        return self._array

    def __getitem__(self, index) -> np.ndarray:
        try:
            return np.asarray(self._open()[index])
        except MemoryError:
            raise
        except Exception as err:
            # Raised while computing, far from the open: the file's name must travel along.
            raise ValueError(f"cannot read {self.path}: {err}") from err

    def __getstate__(self) -> dict:
        return {k: v for k, v in self.__dict__.items() if k not in ("_array", "_lock")}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._array = None
        self._lock = threading.Lock()

    def __dask_tokenize__(self):
        return (
            TiffLevel.__name__,
            self.path,
            os.path.getmtime(self.path),
            self.series,
            self.level,
        )


def _tiff_scale(page, axes: str, ndim: int):
    try:
        xres, yres = page.get_resolution()
    except Exception:
        return None
    if not (xres and yres) or (xres, yres) == (1, 1):
        return None
    if "X" not in axes or "Y" not in axes or len(axes) != ndim:
        return None
    scale = [1.0] * ndim
    scale[axes.index("X")] = 1.0 / float(xres)
    scale[axes.index("Y")] = 1.0 / float(yres)
    return tuple(scale)


def _read_tiff(path: str, name: str) -> tuple[list[da.Array], dict]:
    import tifffile

    try:
        with tifffile.TiffFile(path) as tif:
            if not tif.series:
                raise ValueError("no image series")
            series = tif.series[0]
            axes = series.axes
            infos = []
            for i in range(len(series.levels)):
                store = tifffile.imread(path, aszarr=True, series=0, level=i)
                try:
                    import zarr

                    z = zarr.open(store, mode="r")
                    infos.append((tuple(z.shape), z.dtype, tuple(z.chunks)))
                finally:
                    store.close()
            scale = _tiff_scale(series.pages[0] or tif.pages[0], axes, len(series.shape))
            shaped = tif.shaped_metadata
            params = ncc_attrs(shaped[0]) if shaped else None
    except ValueError as err:
        raise ValueError(f"cannot read TIFF {path}: {err}") from None
    except Exception as err:
        raise ValueError(f"{path} is not a readable TIFF file: {err}") from None
    levels = []
    for i, (shape, dtype, chunks) in enumerate(infos):
        source = TiffLevel(path, 0, i, shape, dtype, chunks)
        levels.append(
            da.from_array(
                source,
                chunks=dask_chunks(chunks, shape),
                asarray=False,
                meta=np.empty((0,) * len(shape), dtype=dtype),
                name=f"tiff-{name}-{i}-" + _token(source),
            )
        )
    metadata = {"name": name, "scale": scale, "axes": tuple(axes), "path": path}
    if params is not None:
        metadata[ATTRS_KEY] = params
    return levels, metadata


def _token(obj) -> str:
    from dask.base import tokenize

    return tokenize(obj)


def _read_small(path: str, name: str) -> tuple[list[da.Array], dict]:
    from skimage import io

    try:
        image = np.asarray(io.imread(path))
    except Exception as err:
        raise ValueError(f"{path} is not a readable image file: {err}") from None
    if image.ndim == 0 or 0 in image.shape or image.dtype.kind not in "biuf":
        raise ValueError(f"{path} holds no image data (shape {image.shape}, {image.dtype})")
    axes = None
    if image.ndim == 2:
        axes = ("y", "x")
    elif image.ndim == 3 and image.shape[-1] in (3, 4):
        axes = ("y", "x", "c")
    level = da.from_array(image, chunks=dask_chunks(image.shape, image.shape))
    return [level], {"name": name, "scale": None, "axes": axes, "path": path}


def read_image(path: str | os.PathLike) -> tuple[list[da.Array], dict]:
    """Open an image lazily as Dask arrays, one per resolution level.

    Never loads the whole image: zarr arrays, OME-Zarr multiscale groups (levels from the
    ``multiscales`` metadata, full resolution first) and TIFF files (plain, tiled,
    pyramidal; through ``tifffile``'s zarr store) are read chunk by chunk when computed.
    Small PNG/JPEG/BMP/GIF/WebP images are read into memory and wrapped.

    Parameters
    ----------
    path : str or os.PathLike
        A ``.zarr`` directory (array or OME-Zarr group), a TIFF file or a small image file.

    Returns
    -------
    levels : list of dask.array.Array
        Full resolution first.
    metadata : dict
        ``"name"`` (file name without suffix), ``"scale"`` (pixel size per axis, or None if
        unknown), ``"axes"`` (axis names, or None), ``"path"``, and ``"napari_ncc"`` (the
        parameters) for a map written by :func:`write_ncc`.

    Raises
    ------
    ValueError
        If `path` does not exist, has an unsupported format or cannot be read.

    Examples
    --------
    >>> import os, tempfile
    >>> import numpy as np
    >>> from napari_ncc._io import read_image, write_zarr
    >>> folder = tempfile.TemporaryDirectory()
    >>> out = write_zarr(np.eye(8), os.path.join(folder.name, "eye.zarr"), progress=False)
    >>> (level,), meta = read_image(out)
    >>> meta["name"], level.shape, float(level.sum().compute())
    ('eye', (8, 8), 8.0)
    >>> folder.cleanup()
    """
    path = os.fspath(path)
    if not os.path.exists(path):
        raise ValueError(f"{path} does not exist")
    base = os.path.basename(os.path.normpath(path))
    name = strip_suffixes(base)
    lower = base.lower()
    if os.path.isdir(path) or lower.endswith(ZARR_SUFFIXES):
        return _read_zarr(path, name)
    if lower.endswith(TIFF_SUFFIXES):
        return _read_tiff(path, name)
    if lower.endswith(SMALL_SUFFIXES):
        return _read_small(path, name)
    raise ValueError(
        f"unsupported file type for {path}; expected a zarr store (.zarr directory), a TIFF "
        f"({', '.join(TIFF_SUFFIXES)}) or an image file ({', '.join(SMALL_SUFFIXES)})"
    )
