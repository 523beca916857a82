"""napari writer: an image layer to a zarr store, through :func:`napari_ncc._io.write_zarr`.

Chunk by chunk (lazy layers are computed block by block, with a progress bar), atomically
(a temporary name, renamed when complete), never over an existing path. A multiscale layer
is saved at full resolution. An NCC layer keeps its parameters (``metadata["napari_ncc"]``),
scale and translate, so the reader shows it again as it was.
"""

from __future__ import annotations

import json
import os
from typing import Any

from ._io import ATTRS_KEY, write_zarr


def _jsonable(value) -> Any:
    """`value` if it survives a JSON round trip, else None."""
    try:
        return json.loads(json.dumps(value))
    except (TypeError, ValueError):
        return None


def write_image(path: str, data: Any, attributes: dict) -> list[str]:
    """Save one image layer as a zarr array at `path` (the npe2 writer contribution).

    Raises
    ------
    FileExistsError
        If `path` exists: napari-ncc never overwrites unasked.
    """
    path = os.fspath(path)
    if not path.lower().endswith(".zarr"):
        path += ".zarr"
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
    return [write_zarr(data, path, attrs=attrs, overwrite=False, progress=True)]
