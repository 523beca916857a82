"""Writing (lazy) arrays to files, atomically: the file side of the lazy layer.

:func:`write_zarr` streams a Dask array into a zarr store chunk by chunk, :func:`write_tiff`
into the tiles of a tiled TIFF file block by block, :func:`write_array` to either, or to
OME-Zarr with a pyramid (:func:`napari_ncc._ome_zarr.write_ome_zarr`), by the path's suffix,
and :func:`write_ncc` writes the local NCC map of two images of any size that way;
:func:`write_png` writes small pictures. All of them write to a hidden temporary name and
rename it at the end (:mod:`napari_ncc._atomic`).
Reading is :func:`napari_ncc._read.read_image`.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
from collections.abc import Callable, Iterator, Sequence

import dask.array as da
import numpy as np

from ._atomic import check_free, remove, staged, temporary_path, to_completion
from ._confidence import ncc_confidence
from ._lazy import local_ncc
from ._read import ATTRS_KEY, TIFF_SUFFIXES, read_image
from ._registration import Registration
from ._validation import json_float

__all__ = [
    "dask_scheduler",
    "progress_bar",
    "progress_callback",
    "write_array",
    "write_ncc",
    "write_png",
    "write_zarr",
]

log = logging.getLogger(__name__)

LOCAL_SCHEDULERS = ("threads", "processes", "synchronous", "sync", "single-threaded")

# ---------------------------------------------------------------------------------------
# Writing
# ---------------------------------------------------------------------------------------


def check_attrs(attrs) -> dict:
    """`attrs` as a dict ({} for None), or a TypeError/ValueError if JSON cannot hold it."""
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


def regular_chunks(array: da.Array) -> da.Array:
    """Rechunk so that every chunk but the last along each axis has the same length."""
    regular = all(len(set(c[:-1])) <= 1 and c[-1] <= c[0] for c in array.chunks)
    if regular:
        return array
    return array.rechunk(tuple(max(c) for c in array.chunks))


def check_scheduler(scheduler) -> None:
    """Raise ValueError unless `scheduler` is one the writers accept (see :func:`write_zarr`)."""
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


def progress_bar(total: int, desc: str, unit: str):
    """A progress bar on stderr (tqdm) for `total` steps of `unit`, labelled `desc`."""
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit=unit)


def progress_callback(desc: str):
    """A Dask callback showing the tasks of the local computations it is active for.

    Use it as a context manager around ``compute`` calls (threads, processes or
    synchronous schedulers; a distributed cluster has its own progress display).
    """
    from dask.callbacks import Callback

    class TqdmCallback(Callback):
        def _start_state(self, dsk, state):
            total = sum(len(state[k]) for k in ("ready", "waiting", "running", "finished"))
            self._bar = progress_bar(total, desc, "task")

        def _posttask(self, key, result, dsk, state, worker_id):
            self._bar.update(1)

        def _finish(self, dsk, state, errored):
            self._bar.close()

    return TqdmCallback()


@contextlib.contextmanager
def dask_scheduler(scheduler: str | None) -> Iterator[object]:
    """Make `scheduler` the default for every ``compute`` inside the block.

    `scheduler` is None (Dask's default), a local scheduler's name, or the address of a
    running ``dask.distributed`` scheduler. Yields what to pass on as ``scheduler=`` to
    the writers: None, the name, or a ``distributed.Client`` connected to the address
    (one connection for the whole block).

    Raises
    ------
    ImportError
        For an address, when ``distributed`` is not installed.
    OSError
        When the scheduler at the address cannot be reached.
    """
    if scheduler is None:
        yield None
        return
    import dask

    if scheduler in LOCAL_SCHEDULERS:
        with dask.config.set(scheduler=scheduler):
            yield scheduler
        return
    try:
        from distributed import Client
    except ImportError:
        raise ImportError(
            f"the Dask scheduler {scheduler} needs dask.distributed, which is not installed "
            "(pip install distributed)"
        ) from None
    try:
        client = Client(scheduler, timeout="10s")
    except (OSError, TimeoutError) as error:
        message = " ".join(str(error).split()) or type(error).__name__
        raise OSError(f"cannot connect to the Dask scheduler at {scheduler}: {message}") from None
    with client:
        workers = len(client.scheduler_info().get("workers", {}))
        log.info("connected to the Dask scheduler at %s (%d workers)", scheduler, workers)
        yield client


def _reporting_callbacks(report: Callable[[int, int], object]) -> tuple:
    """Dask scheduler callbacks (the documented 5-tuple) calling ``report(done, total)``
    after every task, local to one computation (a ``Callback`` context is process-wide)."""
    count = {"done": 0, "total": 0}

    def start_state(dsk, state):
        count["total"] = sum(len(state[k]) for k in ("ready", "waiting", "running", "finished"))
        report(0, count["total"])

    def posttask(key, result, dsk, state, worker_id):
        count["done"] += 1
        report(count["done"], count["total"])

    return (None, start_state, None, posttask, None)


def store_blocks(array: da.Array, target, *, scheduler, progress, desc: str) -> None:
    """Store the blocks of `array` into `target` (any ``da.store`` target), in parallel.

    The writers' one way to compute: on `scheduler` (as in :func:`write_zarr`), with
    `progress` (a bool, or a ``progress(done, total)`` callable) and `desc` labelling the
    progress bar. If a task fails (or `progress` raises), returns only once no task can
    still write, so that the caller can remove what was written.
    """
    delayed = da.store(array, target, lock=False, compute=False)
    if (isinstance(scheduler, str) and "://" in scheduler) or type(scheduler).__name__ == "Client":
        from distributed import Client
        from distributed import progress as distributed_progress

        client = Client(scheduler) if isinstance(scheduler, str) else scheduler
        future = None
        try:
            future = client.compute(delayed)
            if progress is True:
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
        if callable(progress):
            delayed.compute(**kwargs, callbacks=[_reporting_callbacks(progress)])
        elif progress:
            with progress_callback(desc):
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
    progress: bool | Callable[[int, int], object] = True,
    scheduler=None,
) -> str:
    """Stream a (lazy) array into a zarr store, chunk by chunk, atomically.

    The store is written to a hidden temporary sibling of `path` (see
    :func:`temporary_path`) and renamed to `path` only once complete, so an interrupted
    run never leaves a half-written store under the final name; temporaries that killed
    runs left for `path` are removed first. Only a few chunks are in memory at a time
    when `array` is a Dask array.

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
    progress : bool or callable, optional
        Show a progress bar (tqdm locally; distributed's progress bar on a cluster), or
        call ``progress(done, total)`` (in tasks) after every task of a local scheduler,
        in the calling thread (napari's writer feeds its activity panel this way). An
        exception it raises stops the write, which leaves nothing behind.
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
    >>> import os, tempfile
    >>> import dask.array as da
    >>> import zarr
    >>> from napari_ncc._io import write_zarr
    >>> folder = tempfile.TemporaryDirectory()
    >>> out = os.path.join(folder.name, "ones.zarr")
    >>> _ = write_zarr(da.ones((64, 64), chunks=32), out, attrs={"note": "ones"}, progress=False)
    >>> z = zarr.open(out, mode="r")
    >>> z.shape, z.attrs["note"]
    ((64, 64), 'ones')
    >>> folder.cleanup()
    """
    import zarr

    attrs = check_attrs(attrs)
    check_scheduler(scheduler)
    if not isinstance(array, da.Array):
        array = np.asarray(array)
        array = da.from_array(array, chunks="auto")
    if array.ndim == 0 or 0 in array.shape:
        raise ValueError(f"cannot write an empty or 0-d array (shape {array.shape})")
    array = regular_chunks(array)
    with staged(path, overwrite) as tmp:
        chunks = tuple(c[0] for c in array.chunks)
        if hasattr(zarr, "create_array"):
            target = to_completion(
                zarr.create_array,
                store=tmp,
                shape=array.shape,
                chunks=chunks,
                dtype=array.dtype,
                attributes=attrs,
            )
        else:  # zarr 2
            target = zarr.open_array(
                tmp, mode="w", shape=array.shape, chunks=chunks, dtype=array.dtype
            )
            target.attrs.update(attrs)
        desc = f"writing {os.path.basename(path)}"
        store_blocks(array, target, scheduler=scheduler, progress=progress, desc=desc)
    return os.fspath(path)


def write_png(path: str | os.PathLike, rgb: np.ndarray) -> str:
    """Write an RGB uint8 picture (such as a preview) to a PNG file, atomically."""
    from PIL import Image

    path = os.fspath(path)
    tmp = temporary_path(path)
    try:
        Image.fromarray(np.asarray(rgb)).save(tmp, format="PNG", optimize=True)
        os.replace(tmp, path)
    finally:
        remove(tmp)
    return path


def write_array(
    array,
    path: str | os.PathLike,
    *,
    attrs: dict | None = None,
    overwrite: bool = False,
    progress: bool | Callable[[int, int], object] = True,
    scheduler=None,
) -> str:
    """Stream a (lazy) array to a file whose format the path's suffix names, atomically.

    ``.ome.zarr``: OME-Zarr with a pyramid (:func:`napari_ncc._ome_zarr.write_ome_zarr`,
    `attrs` beside the NGFF metadata); ``.tif``, ``.tiff``, ...: a tiled TIFF file
    (:func:`napari_ncc.write_tiff`); anything else: a zarr store (:func:`write_zarr`).
    The one place that maps an output path to its writer, for :func:`write_ncc`, the
    command line and the napari writer.

    Parameters
    ----------
    array, path, attrs, overwrite, progress, scheduler
        As in :func:`write_zarr`.

    Returns
    -------
    path : str

    Examples
    --------
    >>> import os, tempfile
    >>> import numpy as np
    >>> from napari_ncc._io import read_image, write_array
    >>> folder = tempfile.TemporaryDirectory()
    >>> image = np.ones((1200, 700), np.float32)
    >>> for name in ("a.zarr", "a.tif", "a.ome.zarr"):
    ...     levels, _ = read_image(write_array(image, os.path.join(folder.name, name),
    ...                                        progress=False))
    ...     print(name, [level.shape for level in levels])
    a.zarr [(1200, 700)]
    a.tif [(1200, 700)]
    a.ome.zarr [(1200, 700), (600, 350), (300, 175)]
    >>> folder.cleanup()
    """
    # (imported here: the OME-Zarr and TIFF writers build on this module's helpers)
    from ._ome_zarr import is_ome_zarr, write_ome_zarr
    from ._tiff import write_tiff

    if is_ome_zarr(path):
        write = write_ome_zarr
    elif os.fspath(path).lower().endswith(TIFF_SUFFIXES):
        write = write_tiff
    else:
        write = write_zarr
    return write(
        array, path, attrs=attrs, overwrite=overwrite, progress=progress, scheduler=scheduler
    )


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
    mask=None,
    min_fraction: float = 0.5,
    chunks=None,
    overwrite: bool = False,
    progress: bool = True,
    scheduler=None,
) -> str:
    """Write the local NCC map of two images of any size to a zarr store, OME-Zarr or TIFF.

    The map is computed block by block (see :func:`napari_ncc.local_ncc`) and streamed
    to disk with :func:`write_array`: bounded memory, a progress bar, written to a
    temporary location and renamed at the end. The parameters are stored in the
    attributes under ``"napari_ncc"``, so :func:`read_image` gives them back. A path
    ending in ``.ome.zarr`` gets OME-Zarr (NGFF) with a pyramid of block means, which
    other NGFF tools open as a multiscale image.

    Parameters
    ----------
    reference, moving : str, os.PathLike, array_like or dask.array.Array
        The two images: paths that :func:`read_image` opens (level 0 is used), Dask
        arrays or NumPy arrays. Not modified.
    path : str or os.PathLike
        Destination: ``.ome.zarr`` (OME-Zarr with a pyramid), ``.tif``/``.tiff`` (a
        tiled TIFF file), or a zarr store (any other name, usually ``.zarr``).
    radius, window, mode, fill_value, axes
        As in :func:`napari_ncc.local_ncc`.
    registration : Registration, optional
        Apply this registration (from :func:`napari_ncc.register`) to `moving` first:
        the map is then :func:`napari_ncc.ncc_confidence`'s, with `fill_value` where a
        window reaches pixels shifted in from outside `moving`. By default the images
        are compared as they are.
    mask : str, os.PathLike, array_like or dask.array.Array, optional
        True where the reference's pixels are data (see :func:`napari_ncc.local_ncc`): a
        boolean array, or a path that :func:`read_image` opens, whose non-zero pixels are
        data. With a `registration`, it is combined with the region the registered image
        covers (see :func:`napari_ncc.ncc_confidence`).
    min_fraction : float, optional
        With a mask: the fraction of a window's pixels that must be data, in (0, 1].
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
    >>> folder = tempfile.TemporaryDirectory()
    >>> out = write_ncc(a, 2 * a, os.path.join(folder.name, "ncc.zarr"), progress=False)
    >>> (ncc,), meta = read_image(out)
    >>> meta["napari_ncc"]["radius"], bool(np.allclose(ncc.compute(), 1, atol=1e-5))
    (3, True)

    With a known shift, the band it brings in from outside the moving image is filled:

    >>> moved = np.roll(a, 2, axis=1)
    >>> out = write_ncc(
    ...     a, moved, os.path.join(folder.name, "moved.zarr"), fill_value=-1,
    ...     registration=Registration(shift=(0, -2)), progress=False,
    ... )
    >>> (ncc,), _ = read_image(out)
    >>> ncc = ncc.compute()
    >>> bool((ncc[:, -5:] == -1).all()), bool(np.allclose(ncc[:, :-5], 1, atol=1e-5))
    (True, True)
    >>> folder.cleanup()
    """
    path = os.fspath(path)
    check_free(path, overwrite)
    check_scheduler(scheduler)
    sources = [
        os.fspath(x) if isinstance(x, str | os.PathLike) else None
        for x in (reference, moving, mask)
    ]
    reference, moving = _as_input(reference, "reference"), _as_input(moving, "moving")
    if mask is not None:
        # A mask file holds labels or 0/1 values: its non-zero pixels are data.
        mask = _as_input(mask, "mask") != 0 if sources[2] is not None else mask
    if not isinstance(reference, da.Array) and not isinstance(moving, da.Array):
        reference = da.from_array(reference, chunks="auto")
    options = dict(radius=radius, window=window, mode=mode, fill_value=fill_value, axes=axes)
    options.update(mask=mask, min_fraction=min_fraction)
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
        "fill_value": json_float(fill_value),
        "axes": None if axes is None else _json_ints(axes),
        "registration": None if registration is None else registration.to_dict(),
        "min_fraction": float(min_fraction) if mask is not None else None,
        "shape": list(ncc.shape),
        "inputs": sources[:2],
        # The mask's path, or "array" for one given in memory.
        "mask": sources[2] or (None if mask is None else "array"),
    }
    return write_array(
        ncc,
        path,
        attrs={ATTRS_KEY: params},
        overwrite=overwrite,
        progress=progress,
        scheduler=scheduler,
    )
