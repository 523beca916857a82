"""napari writers: an image layer to a zarr store, or to OME-Zarr with a pyramid.

Through :func:`napari_ncc._io.write_array`: a path ending in ``.ome.zarr`` gets OME-Zarr
(NGFF, level 0 and a pyramid of block means, which other NGFF tools open as a multiscale
image), any other a zarr array. Chunk by chunk (lazy layers are computed block by block),
atomically (a temporary name, renamed when complete), never over an existing path. A
multiscale layer is saved from its full resolution. An NCC layer keeps its parameters
(``metadata["napari_ncc"]``), scale and translate, so the reader shows it again as it was.

napari calls a writer synchronously from its save action. With a viewer open, the store is
written in a worker thread, with its progress (and a cancel button) in napari's activity
panel, so the viewer never freezes: the path is returned at once and appears, complete,
when the write is done; a notification says when it is (or why it failed). Without a
viewer (a script), the write happens before returning, with a terminal progress bar.
"""

from __future__ import annotations

import json
import os
import sys
from typing import Any

from ._io import ATTRS_KEY, write_array
from ._ome_zarr import is_ome_zarr


def _jsonable(value) -> Any:
    """`value` if it survives a JSON round trip, else None."""
    try:
        return json.loads(json.dumps(value))
    except (TypeError, ValueError):
        return None


def _open_viewer():
    """The napari viewer in use, or None (napari not even imported: no viewer)."""
    napari = sys.modules.get("napari")
    return None if napari is None else napari.current_viewer()


def write_image(path: str, data: Any, attributes: dict) -> list[str]:
    """Save one image layer as a zarr array at `path` (the npe2 writer contribution).

    A `path` ending in ``.ome.zarr`` gets OME-Zarr with a pyramid instead, as
    :func:`write_ome_zarr_image` writes it.

    Returns
    -------
    paths : list of str
        ``[path]`` (with ``.zarr`` appended if missing); with a viewer open, the path the
        store will appear at once the background write is done. Empty when nothing is
        written (`path` exists, with a viewer open: a notification says so).

    Raises
    ------
    FileExistsError
        If `path` exists and no viewer is open: napari-ncc never overwrites unasked.
    ValueError
        If an RGB layer is to be saved as OME-Zarr, which has no colour axis last.
    """
    path = os.fspath(path)
    if not path.lower().endswith(".zarr"):
        path += ".zarr"
    return _write(path, data, attributes)


def write_ome_zarr_image(path: str, data: Any, attributes: dict) -> list[str]:
    """Save one image layer as OME-Zarr with a pyramid at `path` (npe2 writer contribution).

    Level 0 is the layer's (full-resolution) data; each coarser level the 2 x 2 block mean
    of the one before (:func:`napari_ncc._ome_zarr.write_ome_zarr`), so that NGFF viewers
    open it as a multiscale image. `path` gets the suffix ``.ome.zarr`` if it has not
    (``map`` and ``map.zarr`` become ``map.ome.zarr``); the rest is as in
    :func:`write_image`.
    """
    path = os.fspath(path)
    if not is_ome_zarr(path):
        path = path.rstrip("/\\")
        path = (path[: -len(".zarr")] if path.lower().endswith(".zarr") else path) + ".ome.zarr"
    return _write(path, data, attributes)


def _write(path: str, data: Any, attributes: dict) -> list[str]:
    if attributes.get("rgb") and is_ome_zarr(path):
        raise ValueError(
            f"cannot save the RGB layer {attributes.get('name')!r} as OME-Zarr ({path}): "
            "OME-Zarr has no colour axis last; save it as .zarr instead"
        )
    if attributes.get("multiscale"):
        data = data[0]
    attrs = None
    params = (attributes.get("metadata") or {}).get(ATTRS_KEY)
    if isinstance(params, dict):
        params = _jsonable(params) or {}
        params["layer"] = {
            "name": attributes.get("name"),
            "scale": [float(s) for s in attributes.get("scale", ())] or None,
            "translate": [float(t) for t in attributes.get("translate", ())] or None,
        }
        attrs = {ATTRS_KEY: params}
    if _open_viewer() is None:
        return [write_array(data, path, attrs=attrs, overwrite=False, progress=True)]
    return _save_in_background(data, path, attrs, attributes.get("name") or "layer")


def _save_in_background(data, path: str, attrs: dict | None, name: str) -> list[str]:
    from napari.utils.notifications import show_error, show_info, show_warning

    from ._activity import Activity, Cancelled

    if os.path.lexists(path):
        # Raised here, the error would reach the user as a traceback from napari's save
        # action; napari then also reports that nothing was written.
        show_warning(
            f"napari-ncc did not save {name!r}: {path} already exists (napari-ncc never "
            "overwrites a file); choose another name, or remove the old one first"
        )
        return []
    activity = Activity(f"Saving {os.path.basename(path)}")

    def failed(error: Exception) -> None:
        if isinstance(error, Cancelled):
            show_info(f"napari-ncc: saving {name!r} cancelled; nothing was written")
        else:
            show_error(f"napari-ncc could not save {name!r} to {path}: {error}")

    def saved(written: str) -> None:
        show_info(f"napari-ncc saved {name!r} to {written}")

    activity.start(
        write_array,
        data,
        path,
        attrs=attrs,
        overwrite=False,
        progress=activity.callback("writing chunks"),
        connect={"returned": saved, "errored": failed},
    )
    return [path]
