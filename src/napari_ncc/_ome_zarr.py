"""OME-Zarr (NGFF) with a pyramid: how maps are saved for other tools, and read back.

:func:`write_ome_zarr` streams a (lazy) array into an NGFF multiscale image: level 0 as
it is, then each coarser level the 2x2 block mean (over the last two axes) of the level
before, read back from the store, so memory stays bounded by a few chunks whatever the
size. Everything is written to a hidden temporary sibling and renamed at the end, like
every writer (:func:`napari_ncc._atomic.staged`). :func:`read_ome_zarr` opens such a store
(or any OME-Zarr image) lazily; :func:`napari_ncc._read.read_image` reads OME-Zarr through
it. The NGFF metadata is written and parsed by ``ome-zarr``
(ome-zarr-py); napari-ncc's own parameters sit beside it in the group attributes under
``"napari_ncc"``.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable, Sequence

import dask.array as da
import numpy as np

from ._atomic import check_free, staged, to_completion
from ._io import check_attrs, check_scheduler, regular_chunks, store_blocks
from ._multiscale import PYRAMID_FACTOR, coarsen, plane_axes, pyramid_shapes
from ._read import ATTRS_KEY, dask_chunks, ncc_attrs, strip_suffixes

__all__ = ["is_ome_zarr", "read_ome_zarr", "write_ome_zarr"]

#: NGFF versions :func:`write_ome_zarr` writes: 0.4 (zarr v2), 0.5 (zarr v3).
NGFF_VERSIONS = ("0.4", "0.5")

#: Axis names used when none are given, by number of dimensions.
DEFAULT_AXIS_NAMES = {
    2: ("y", "x"),
    3: ("z", "y", "x"),
    4: ("t", "z", "y", "x"),
    5: ("t", "c", "z", "y", "x"),
}

#: Group attributes the NGFF metadata owns; `attrs` may not set them.
_RESERVED_ATTRS = ("ome", "multiscales", "omero", "labels", "version")

#: How the coarse levels were made (the NGFF ``multiscales[0]["metadata"]``).
_DOWNSCALING = {
    "description": "mean of 2x2 pixel blocks over the last two axes, level k from level k-1 "
    "(a trailing odd row or column dropped)",
    "method": "napari_ncc._multiscale.coarsen",
}


def _ome_zarr():
    """The ``ome_zarr`` modules used here, or a clear error where it is missing."""
    try:
        with warnings.catch_warnings():
            # ome_zarr.writer builds a deprecated Scaler as a default argument on import
            warnings.simplefilter("ignore", DeprecationWarning)
            from ome_zarr import format as ome_format
            from ome_zarr import io as ome_io
            from ome_zarr import reader as ome_reader
            from ome_zarr import writer as ome_writer
            from ome_zarr.axes import Axes
    except ImportError as err:  # Python 3.10 (zarr 2) or a trimmed install
        raise ImportError(
            "reading and writing OME-Zarr needs the 'ome-zarr' package (Python >= 3.11): "
            f"pip install ome-zarr ({err})"
        ) from None
    return ome_format, ome_io, ome_reader, ome_writer, Axes


def is_ome_zarr(path: str | os.PathLike) -> bool:
    """Whether `path` names an OME-Zarr store (ends in ``.ome.zarr``).

    Examples
    --------
    >>> is_ome_zarr("map.ome.zarr"), is_ome_zarr("MAP.OME.ZARR/"), is_ome_zarr("map.zarr")
    (True, True, False)
    """
    return os.fspath(path).rstrip("/\\").lower().endswith(".ome.zarr")


def _axis_names(names, ndim: int, fmt, axes_type) -> tuple[str, ...]:
    if names is None:
        if ndim not in DEFAULT_AXIS_NAMES:
            raise ValueError(f"OME-Zarr images have 2 to 5 axes; got an array with {ndim} (shape)")
        return DEFAULT_AXIS_NAMES[ndim]
    if isinstance(names, str):
        names = tuple(names)
    names = tuple(str(n) for n in names)
    if len(names) != ndim:
        raise ValueError(f"axis_names must name all {ndim} axes, got {len(names)}: {names}")
    try:
        axes_type(list(names), fmt=fmt)  # the library's NGFF rules (order, types)
    except ValueError as err:
        raise ValueError(f"axis_names {names} are not valid NGFF axes: {err}") from None
    return names


def _per_axis(value, ndim: int, name: str, default: float, positive: bool) -> tuple:
    if value is None:
        return (default,) * ndim
    values = np.asarray(value, dtype=np.float64).ravel()
    if values.size != ndim:
        raise ValueError(f"{name} must have one value per axis ({ndim}), got {list(values)}")
    if not np.all(np.isfinite(values)) or (positive and np.any(values <= 0)):
        kind = "positive finite" if positive else "finite"
        raise ValueError(f"{name} must be {kind} numbers, got {list(values)}")
    return tuple(float(v) for v in values)


def _transformations(shapes, scale, translate) -> list[list[dict]]:
    """NGFF scale + translation of every level (pixel centres of a block-mean pyramid)."""
    ndim = len(shapes[0])
    transforms = []
    for k in range(len(shapes)):
        factors = [PYRAMID_FACTOR**k if ax in plane_axes(ndim) else 1 for ax in range(ndim)]
        transforms.append(
            [
                {"type": "scale", "scale": [s * f for s, f in zip(scale, factors, strict=True)]},
                {
                    # a level-k pixel averages f level-0 pixels: its centre is (f - 1) / 2 in
                    "type": "translation",
                    "translation": [
                        t + s * (f - 1) / 2
                        for t, s, f in zip(translate, scale, factors, strict=True)
                    ],
                },
            ]
        )
    return transforms


def write_ome_zarr(
    array,
    path: str | os.PathLike,
    *,
    attrs: dict | None = None,
    axis_names: Sequence[str] | None = None,
    scale: Sequence[float] | None = None,
    translate: Sequence[float] | None = None,
    name: str | None = None,
    ngff_version: str = "0.5",
    overwrite: bool = False,
    progress: bool | Callable[[int, int], object] = True,
    scheduler=None,
) -> str:
    """Stream a (lazy) array into an OME-Zarr multiscale image with a pyramid, atomically.

    Level 0 is `array` (its Dask chunks become the zarr chunks). Level ``k`` is the mean of
    ``2 x 2`` pixel blocks of level ``k - 1`` over the last two axes, computed chunk by
    chunk from level ``k - 1`` as stored, down to the first level at most
    :data:`napari_ncc._multiscale.PYRAMID_MIN_SIDE` pixels a side. The group is written to
    a hidden temporary sibling of `path` and renamed to `path` only once complete.

    Parameters
    ----------
    array : array_like or dask.array.Array
        Level 0, with 2 to 5 axes.
    path : str or os.PathLike
        Destination directory (conventionally ending in ``.ome.zarr``).
    attrs : dict, optional
        JSON-serialisable group attributes stored beside the NGFF metadata, such as
        ``{"napari_ncc": parameters}``; may not use the NGFF keys (``"ome"``,
        ``"multiscales"``, ...).
    axis_names : sequence of str, optional
        NGFF axis names (``"t"``, ``"c"``, ``"z"``, ``"y"``, ``"x"``, ...); by default
        :data:`DEFAULT_AXIS_NAMES` for the number of axes.
    scale, translate : sequence of float, optional
        Pixel size and position of the first pixel of level 0, per axis (default 1 and 0).
    name : str, optional
        Name of the image; by default the file name without its suffix.
    ngff_version : {"0.5", "0.4"}, optional
        0.5 writes zarr v3, 0.4 zarr v2 (read by older NGFF tools).
    overwrite, progress, scheduler
        As in :func:`napari_ncc._io.write_zarr`.

    Returns
    -------
    path : str

    Raises
    ------
    FileExistsError
        If `path` exists and `overwrite` is False.
    ValueError
        If the array, the axis names, `scale`, `translate` or `attrs` do not fit.

    Examples
    --------
    >>> import os, tempfile
    >>> import dask.array as da
    >>> folder = tempfile.TemporaryDirectory()
    >>> out = os.path.join(folder.name, "ramp.ome.zarr")
    >>> image = da.arange(1200 * 1100, dtype="float32").reshape(1200, 1100).rechunk(512)
    >>> _ = write_ome_zarr(image, out, attrs={"napari_ncc": {"radius": 3}}, progress=False)
    >>> levels, meta = read_ome_zarr(out)
    >>> [level.shape for level in levels], meta["axes"], meta["napari_ncc"]
    ([(1200, 1100), (600, 550), (300, 275)], ('y', 'x'), {'radius': 3})
    >>> folder.cleanup()
    """
    ome_format, _, _, ome_writer, axes_type = _ome_zarr()
    import zarr

    path = os.fspath(path)
    check_free(path, overwrite)
    attrs = check_attrs(attrs)
    reserved = sorted(set(attrs) & set(_RESERVED_ATTRS))
    if reserved:
        raise ValueError(f"attrs may not set the NGFF keys {reserved}; they are written here")
    check_scheduler(scheduler)
    if str(ngff_version) not in NGFF_VERSIONS:
        raise ValueError(f"ngff_version must be one of {NGFF_VERSIONS}, got {ngff_version!r}")
    fmt = ome_format.format_from_version(str(ngff_version))
    if not isinstance(array, da.Array):
        array = da.from_array(np.asarray(array), chunks="auto")
    if 0 in array.shape:
        raise ValueError(f"cannot write an empty array (shape {array.shape})")
    if array.dtype.kind not in "biuf":
        raise ValueError(f"OME-Zarr holds numbers; got an array of dtype {array.dtype}")
    names = _axis_names(axis_names, array.ndim, fmt, axes_type)
    scale = _per_axis(scale, array.ndim, "scale", 1.0, positive=True)
    translate = _per_axis(translate, array.ndim, "translate", 0.0, positive=False)
    if name is None:
        name = strip_suffixes(os.path.basename(os.path.abspath(path)))
    array = regular_chunks(array)
    chunks0 = tuple(c[0] for c in array.chunks)
    shapes = pyramid_shapes(array.shape)
    base = os.path.basename(os.path.abspath(path))
    array_options: dict = {"chunk_key_encoding": fmt.chunk_key_encoding}
    if fmt.zarr_format == 3:
        array_options["dimension_names"] = list(names)
    with staged(path, overwrite) as tmp:
        # (main-thread zarr writes run to completion: see to_completion)
        group = to_completion(zarr.open_group, tmp, mode="w", zarr_format=fmt.zarr_format)
        to_completion(group.attrs.update, attrs)
        level, previous = array, None
        for k, shape in enumerate(shapes):
            chunks = tuple(min(c, n) for c, n in zip(chunks0, shape, strict=True))
            if k:
                level = coarsen(previous).rechunk(chunks)
            assert level.shape == shape, (level.shape, shape)
            target = to_completion(
                group.create_array,
                str(k),
                shape=shape,
                chunks=chunks,
                dtype=level.dtype,
                **array_options,
            )
            desc = f"writing {base} level {k}/{len(shapes) - 1}"
            store_blocks(level, target, scheduler=scheduler, progress=progress, desc=desc)
            previous = da.from_zarr(target)
        datasets = [
            {"path": str(k), "coordinateTransformations": transforms}
            for k, transforms in enumerate(_transformations(shapes, scale, translate))
        ]
        to_completion(
            ome_writer.write_multiscales_metadata,
            group,
            datasets,
            fmt=fmt,
            axes=list(names),
            name=name,
            metadata=_DOWNSCALING,
        )
    return path


def read_ome_zarr(path: str | os.PathLike) -> tuple[list[da.Array], dict]:
    """Open an OME-Zarr multiscale image lazily through ``ome-zarr``'s reader.

    Parameters
    ----------
    path : str or os.PathLike
        An OME-Zarr group (NGFF 0.4 or 0.5) holding a multiscale image.

    Returns
    -------
    levels : list of dask.array.Array
        Full resolution first, nothing loaded.
    metadata : dict
        As :func:`napari_ncc._io.read_image` gives it: ``"name"``, ``"scale"`` (level-0
        pixel size per axis), ``"axes"`` (axis names), ``"path"``, and ``"napari_ncc"``
        (the parameters) for a map written by napari-ncc.

    Raises
    ------
    ValueError
        If `path` is not an OME-Zarr multiscale image.

    Examples
    --------
    See :func:`write_ome_zarr`.
    """
    ome_format, ome_io, ome_reader, _, _ = _ome_zarr()
    import zarr

    path = os.fspath(path)
    try:
        group = zarr.open_group(path, mode="r")
    except Exception as err:
        raise ValueError(f"{path} is not a readable zarr group: {err}") from None
    # The version the metadata declares (the library's own detection), so that the reader
    # does not log a "version mismatch" for 0.4 stores.
    default = ome_format.FormatV04() if group.metadata.zarr_format == 2 else ome_format.FormatV05()
    fmt = ome_format.detect_format(dict(group.attrs), default)
    node = None
    try:
        location = ome_io.parse_url(path, fmt=fmt)
        if location is not None:
            for candidate in ome_reader.Reader(location)():
                if candidate.load(ome_reader.Multiscales) is not None:
                    node = candidate
                    break
    except Exception as err:  # the reader raises whatever zarr or its validation raise
        raise ValueError(f"{path}: broken OME-Zarr metadata: {err}") from None
    if node is None:
        raise ValueError(
            f"{path} is a zarr group without OME-Zarr 'multiscales' metadata (no multiscale "
            f"image); open one of its arrays instead (for example {path}/0)"
        )
    if not node.data:
        raise ValueError(f"{path}: broken OME-Zarr metadata: the multiscale image lists no levels")
    levels = []
    for level in node.data:
        wanted = dask_chunks(level.chunksize, level.shape)
        levels.append(level if wanted == level.chunksize else level.rechunk(wanted))
    ndim = levels[0].ndim
    metadata: dict = {
        "name": node.metadata.get("name")
        or strip_suffixes(os.path.basename(os.path.normpath(path))),
        "scale": None,
        "axes": None,
        "path": path,
    }
    axes = node.metadata.get("axes")
    if axes:
        metadata["axes"] = tuple(a["name"] if isinstance(a, dict) else str(a) for a in axes)
    scale = np.ones(ndim)
    known = False
    multiscale = location.root_attrs["multiscales"][0]
    transforms = node.metadata.get("coordinateTransformations") or [[]]
    for group_of_transforms in (
        transforms[0] or [],
        multiscale.get("coordinateTransformations", []),
    ):
        for t in group_of_transforms:
            if t.get("type") == "scale" and len(t.get("scale", ())) == ndim:
                scale = scale * np.asarray(t["scale"], dtype=float)
                known = True
    if known:
        metadata["scale"] = tuple(float(s) for s in scale)
    params = ncc_attrs(dict(group.attrs))
    if params is not None:
        metadata[ATTRS_KEY] = params
    return levels, metadata
