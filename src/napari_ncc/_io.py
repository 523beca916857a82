"""Reading images lazily and writing (lazy) arrays to zarr: the file side of the lazy layer.

:func:`read_image` opens zarr arrays, OME-Zarr multiscale groups, TIFF files (plain, tiled,
pyramidal) and small PNG/JPEG-like images as Dask arrays without loading them.
:func:`write_zarr` streams a Dask array into a zarr store chunk by chunk, atomically, and
:func:`write_ncc` writes the local NCC map of two images of any size that way.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import threading
import uuid
from collections.abc import Sequence

import dask.array as da
import numpy as np

from ._confidence import ncc_confidence
from ._lazy import local_ncc
from ._registration import Registration

__all__ = ["read_image", "write_ncc", "write_zarr"]

#: Key of the NCC parameters in the attributes of a store written by :func:`write_ncc`.
ATTRS_KEY = "napari_ncc"

ZARR_SUFFIXES = (".zarr",)
TIFF_SUFFIXES = (".tif", ".tiff", ".btf", ".tf8", ".tf2")
SMALL_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp")

#: Dask chunks made when reading: native chunks grown to at least this many pixels...
_MIN_CHUNK_PIXELS = 2**20
#: ...and split along the last two axes when longer than this.
_MAX_CHUNK_LENGTH = 4096

LOCAL_SCHEDULERS = ("threads", "processes", "synchronous", "sync", "single-threaded")


# ---------------------------------------------------------------------------------------
# Writing
# ---------------------------------------------------------------------------------------


def _check_free(path: str, overwrite: bool) -> None:
    if os.path.lexists(path) and not overwrite:
        raise FileExistsError(
            f"{path} already exists; choose another path or pass overwrite=True to replace it"
        )


def _check_attrs(attrs) -> dict:
    if attrs is None:
        return {}
    if not isinstance(attrs, dict):
        raise TypeError(f"attrs must be a dict, got {type(attrs).__name__}")
    try:
        json.dumps(attrs, allow_nan=False)
    except (TypeError, ValueError) as err:
        raise ValueError(
            f"attrs must be JSON-serialisable (no NaN or infinity, plain types): {err}"
        ) from None
    return attrs


def _regular_chunks(array: da.Array) -> da.Array:
    """Rechunk so that every chunk but the last along each axis has the same length."""
    regular = all(len(set(c[:-1])) <= 1 and c[-1] <= c[0] for c in array.chunks)
    if regular:
        return array
    return array.rechunk(tuple(max(c) for c in array.chunks))


def _check_scheduler(scheduler) -> None:
    if scheduler is None or scheduler in LOCAL_SCHEDULERS:
        return
    if isinstance(scheduler, str) and "://" in scheduler:
        return
    if type(scheduler).__name__ == "Client" and hasattr(scheduler, "compute"):
        return
    raise ValueError(
        f"unknown scheduler {scheduler!r}; expected None, one of "
        f"{', '.join(map(repr, LOCAL_SCHEDULERS))}, a dask.distributed address such as "
        "'tcp://127.0.0.1:8786', or a distributed Client"
    )


def _progress_callback(total_hint: str):
    from dask.callbacks import Callback
    from tqdm.auto import tqdm

    class TqdmCallback(Callback):
        def _start_state(self, dsk, state):
            total = sum(len(state[k]) for k in ("ready", "waiting", "running", "finished"))
            self._bar = tqdm(total=total, desc=total_hint, unit="task")

        def _posttask(self, key, result, dsk, state, worker_id):
            self._bar.update(1)

        def _finish(self, dsk, state, errored):
            self._bar.close()

    return TqdmCallback()


def _compute(delayed, scheduler, progress: bool, desc: str) -> None:
    """Compute `delayed`; if a task fails, return only once no task can still write."""
    if (isinstance(scheduler, str) and "://" in scheduler) or type(scheduler).__name__ == "Client":
        from distributed import Client
        from distributed import progress as distributed_progress

        client = Client(scheduler) if isinstance(scheduler, str) else scheduler
        future = None
        try:
            future = client.compute(delayed)
            if progress:
                distributed_progress(future)
            future.result()
        except BaseException:
            if future is not None:
                client.cancel(future)
            raise
        finally:
            if isinstance(scheduler, str):
                client.close()
        return
    import dask
    from dask.base import get_scheduler

    kwargs: dict = {"scheduler": scheduler}
    pool = None
    if scheduler == "threads" or (
        scheduler is None and get_scheduler() in (None, dask.threaded.get)
    ):
        # Our own pool, so that after a failure we can wait for the tasks still running
        # (dask's shared pool would let them write into a store we are deleting).
        from concurrent.futures import ThreadPoolExecutor

        workers = dask.config.get("num_workers", None) or os.cpu_count() or 1
        pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="napari-ncc-write")
        kwargs = {"scheduler": "threads", "pool": pool}
    elif scheduler == "processes":
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor

        context = multiprocessing.get_context(dask.config.get("multiprocessing.context", "spawn"))
        workers = dask.config.get("num_workers", None) or os.cpu_count() or 1
        pool = ProcessPoolExecutor(max_workers=workers, mp_context=context)
        kwargs = {"scheduler": "processes", "pool": pool}
    try:
        if progress:
            with _progress_callback(desc):
                delayed.compute(**kwargs)
        else:
            delayed.compute(**kwargs)
    finally:
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)


def write_zarr(
    array,
    path: str | os.PathLike,
    *,
    attrs: dict | None = None,
    overwrite: bool = False,
    progress: bool = True,
    scheduler=None,
) -> str:
    """Stream a (lazy) array into a zarr store, chunk by chunk, atomically.

    The store is written to a hidden temporary sibling of `path` and renamed to `path`
    only once complete, so an interrupted run never leaves a half-written store under the
    final name. Only a few chunks are in memory at a time when `array` is a Dask array.

    Parameters
    ----------
    array : array_like or dask.array.Array
        What to write. Dask chunks become the zarr chunks (rechunked to regular ones if
        they are not).
    path : str or os.PathLike
        Destination directory of the zarr store.
    attrs : dict, optional
        JSON-serialisable attributes stored with the array.
    overwrite : bool, optional
        Replace an existing `path` (only after the new store is complete).
    progress : bool, optional
        Show a progress bar (tqdm locally; distributed's progress bar on a cluster).
    scheduler : str or distributed.Client, optional
        None (Dask's default or the active distributed client), "threads", "processes",
        "synchronous", a ``dask.distributed`` scheduler address such as
        ``"tcp://10.0.0.1:8786"``, or a ``distributed.Client``. On a cluster, `path` must
        be on a file system every worker sees.

    Returns
    -------
    path : str

    Raises
    ------
    FileExistsError
        If `path` exists and `overwrite` is False.

    Examples
    --------
    >>> import tempfile, os
    >>> import dask.array as da
    >>> import zarr
    >>> from napari_ncc._io import write_zarr
    >>> out = os.path.join(tempfile.mkdtemp(), "ones.zarr")
    >>> _ = write_zarr(da.ones((64, 64), chunks=32), out, attrs={"note": "ones"}, progress=False)
    >>> z = zarr.open(out, mode="r")
    >>> z.shape, z.attrs["note"]
    ((64, 64), 'ones')
    """
    import zarr

    path = os.fspath(path)
    _check_free(path, overwrite)
    attrs = _check_attrs(attrs)
    _check_scheduler(scheduler)
    if not isinstance(array, da.Array):
        array = np.asarray(array)
        array = da.from_array(array, chunks="auto")
    if array.ndim == 0 or 0 in array.shape:
        raise ValueError(f"cannot write an empty or 0-d array (shape {array.shape})")
    array = _regular_chunks(array)
    parent, base = os.path.split(os.path.abspath(path))
    if not os.path.isdir(parent):
        raise FileNotFoundError(f"cannot write {path}: directory {parent} does not exist")
    tmp = os.path.join(parent, f".{base}.tmp-{uuid.uuid4().hex[:12]}")
    try:
        chunks = tuple(c[0] for c in array.chunks)
        if hasattr(zarr, "create_array"):
            target = zarr.create_array(
                store=tmp, shape=array.shape, chunks=chunks, dtype=array.dtype, attributes=attrs
            )
        else:  # zarr 2
            target = zarr.open_array(
                tmp, mode="w", shape=array.shape, chunks=chunks, dtype=array.dtype
            )
            target.attrs.update(attrs)
        delayed = da.store(array, target, lock=False, compute=False)
        _compute(delayed, scheduler, progress, f"writing {base}")
        if os.path.lexists(path):
            trash = os.path.join(parent, f".{base}.old-{uuid.uuid4().hex[:12]}")
            os.replace(path, trash)
            os.replace(tmp, path)
            _remove(trash)
        else:
            os.replace(tmp, path)
    except BaseException:
        _remove(tmp)
        raise
    return path


def _remove(path: str) -> None:
    if os.path.isdir(path) and not os.path.islink(path):
        shutil.rmtree(path, ignore_errors=True)
    elif os.path.lexists(path):
        os.remove(path)


def _as_input(image, name: str):
    if isinstance(image, str | os.PathLike):
        levels, _ = read_image(image)
        return levels[0]
    if isinstance(image, da.Array):
        return image
    return np.asarray(image)


def _json_ints(value):
    """An int, or a list of ints (numpy integers and 0-d arrays included)."""
    if np.ndim(value) == 0:
        return int(value)
    return [int(v) for v in value]


def _json_float(value: float):
    return value if math.isfinite(value) else str(value)


def write_ncc(
    reference,
    moving,
    path: str | os.PathLike,
    *,
    radius: int | Sequence[int] = 3,
    window: str = "box",
    mode: str = "reflect",
    fill_value: float = 0.0,
    axes: int | Sequence[int] | None = None,
    registration: Registration | None = None,
    chunks=None,
    overwrite: bool = False,
    progress: bool = True,
    scheduler=None,
) -> str:
    """Write the local NCC map of two images of any size to a zarr store.

    The map is computed block by block (see :func:`napari_ncc.local_ncc`) and streamed
    to disk with :func:`write_zarr`: bounded memory, a progress bar, written to a
    temporary location and renamed at the end. The parameters are stored in the
    attributes under ``"napari_ncc"``, so :func:`read_image` gives them back.

    Parameters
    ----------
    reference, moving : str, os.PathLike, array_like or dask.array.Array
        The two images: paths that :func:`read_image` opens (level 0 is used), Dask
        arrays or NumPy arrays. Not modified.
    path : str or os.PathLike
        Destination zarr store.
    radius, window, mode, fill_value, axes
        As in :func:`napari_ncc.local_ncc`.
    registration : Registration, optional
        Apply this registration (from :func:`napari_ncc.register`) to `moving` first:
        the map is then :func:`napari_ncc.ncc_confidence`'s, with `fill_value` where a
        window reaches pixels shifted in from outside `moving`. By default the images
        are compared as they are.
    chunks : int, tuple or str, optional
        Chunks of the map (and of the store), as in :func:`napari_ncc.local_ncc`; by
        default the input chunks merged to blocks of about four million pixels.
    overwrite, progress, scheduler
        As in :func:`write_zarr`.

    Returns
    -------
    path : str

    Examples
    --------
    >>> import os, tempfile
    >>> import numpy as np
    >>> from napari_ncc import Registration
    >>> from napari_ncc._io import read_image, write_ncc
    >>> rng = np.random.default_rng(0)
    >>> a = rng.random((64, 64)).astype(np.float32)
    >>> out = write_ncc(a, 2 * a, os.path.join(tempfile.mkdtemp(), "ncc.zarr"), progress=False)
    >>> (ncc,), meta = read_image(out)
    >>> meta["napari_ncc"]["radius"], bool(np.allclose(ncc.compute(), 1, atol=1e-5))
    (3, True)

    With a known shift, the band it brings in from outside the moving image is filled:

    >>> moved = np.roll(a, 2, axis=1)
    >>> out = write_ncc(
    ...     a, moved, os.path.join(tempfile.mkdtemp(), "ncc.zarr"), fill_value=-1,
    ...     registration=Registration(shift=(0, -2)), progress=False,
    ... )
    >>> (ncc,), _ = read_image(out)
    >>> ncc = ncc.compute()
    >>> bool((ncc[:, -5:] == -1).all()), bool(np.allclose(ncc[:, :-5], 1, atol=1e-5))
    (True, True)
    """
    path = os.fspath(path)
    _check_free(path, overwrite)
    _check_scheduler(scheduler)
    sources = [
        os.fspath(x) if isinstance(x, str | os.PathLike) else None for x in (reference, moving)
    ]
    reference, moving = _as_input(reference, "reference"), _as_input(moving, "moving")
    if not isinstance(reference, da.Array) and not isinstance(moving, da.Array):
        reference = da.from_array(reference, chunks="auto")
    options = dict(radius=radius, window=window, mode=mode, fill_value=fill_value, axes=axes)
    if registration is None:
        ncc = local_ncc(reference, moving, chunks=chunks, **options)
    else:
        ncc, _ = ncc_confidence(
            reference, moving, registration=registration, chunks=chunks, **options
        )
    params = {
        "radius": _json_ints(radius),
        "window": window,
        "mode": mode,
        "fill_value": _json_float(float(fill_value)),
        "axes": None if axes is None else _json_ints(axes),
        "registration": None if registration is None else registration.to_dict(),
        "shape": list(ncc.shape),
        "inputs": sources,
    }
    return write_zarr(
        ncc,
        path,
        attrs={ATTRS_KEY: params},
        overwrite=overwrite,
        progress=progress,
        scheduler=scheduler,
    )


# ---------------------------------------------------------------------------------------
# Reading
# ---------------------------------------------------------------------------------------


def _dask_chunks(native: Sequence[int], shape: Sequence[int]) -> tuple[int, ...]:
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


def _strip_suffixes(name: str) -> str:
    lower = name.lower()
    for suffix in (".ome.zarr", ".ome.tiff", ".ome.tif", *ZARR_SUFFIXES, *TIFF_SUFFIXES):
        if lower.endswith(suffix):
            return name[: -len(suffix)]
    return os.path.splitext(name)[0]


def _ncc_attrs(attrs) -> dict | None:
    params = attrs.get(ATTRS_KEY)
    if not isinstance(params, dict):
        return None
    params = dict(params)
    if isinstance(params.get("fill_value"), str):
        params["fill_value"] = float(params["fill_value"])
    return params


def _zarr_level(array) -> da.Array:
    return da.from_zarr(array, chunks=_dask_chunks(array.chunks, array.shape))


def _read_zarr(path: str, name: str) -> tuple[list[da.Array], dict]:
    import zarr

    try:
        node = zarr.open(path, mode="r")
    except Exception as err:
        raise ValueError(f"{path} is not a readable zarr store: {err}") from None
    attrs = dict(node.attrs)
    metadata: dict = {"name": name, "scale": None, "axes": None, "path": path}
    if isinstance(node, zarr.Array):
        levels = [_zarr_level(node)]
    else:
        multiscales = attrs.get("multiscales") or attrs.get("ome", {}).get("multiscales")
        if not multiscales:
            raise ValueError(
                f"{path} is a zarr group without OME-Zarr 'multiscales' metadata; open one "
                "of its arrays instead (for example {path}/0)"
            )
        image = multiscales[0]
        try:
            levels = [_zarr_level(node[d["path"]]) for d in image["datasets"]]
        except Exception as err:
            raise ValueError(f"{path}: broken OME-Zarr multiscales metadata: {err}") from None
        if not levels:
            raise ValueError(f"{path}: OME-Zarr multiscales metadata lists no datasets")
        axes = image.get("axes")
        if axes:
            metadata["axes"] = tuple(a["name"] if isinstance(a, dict) else str(a) for a in axes)
        scale = np.ones(levels[0].ndim)
        known = False
        for transforms in (
            image["datasets"][0].get("coordinateTransformations", []),
            image.get("coordinateTransformations", []),
        ):
            for t in transforms:
                if t.get("type") == "scale" and len(t.get("scale", ())) == levels[0].ndim:
                    scale = scale * np.asarray(t["scale"], dtype=float)
                    known = True
        if known:
            metadata["scale"] = tuple(float(s) for s in scale)
        if image.get("name"):
            metadata["name"] = str(image["name"])
    params = _ncc_attrs(attrs)
    if params is not None:
        metadata[ATTRS_KEY] = params
    return levels, metadata


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
        return np.asarray(self._open()[index])

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
                chunks=_dask_chunks(chunks, shape),
                asarray=False,
                meta=np.empty((0,) * len(shape), dtype=dtype),
                name=f"tiff-{name}-{i}-" + _token(source),
            )
        )
    metadata = {"name": name, "scale": scale, "axes": tuple(axes), "path": path}
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
    level = da.from_array(image, chunks=_dask_chunks(image.shape, image.shape))
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
    >>> out = write_zarr(np.eye(8), os.path.join(tempfile.mkdtemp(), "eye.zarr"), progress=False)
    >>> (level,), meta = read_image(out)
    >>> meta["name"], level.shape, float(level.sum().compute())
    ('eye', (8, 8), 8.0)
    """
    path = os.fspath(path)
    if not os.path.exists(path):
        raise ValueError(f"{path} does not exist")
    base = os.path.basename(os.path.normpath(path))
    name = _strip_suffixes(base)
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
