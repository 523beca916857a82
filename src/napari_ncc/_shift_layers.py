"""The local shifts of a registration as napari Vectors layers, over the reference layer.

The napari side of :func:`napari_ncc._shift_vectors.local_shift_vectors` (which computes the
arrows): one layer of the tiles the fit kept, coloured by their confidence, and one of the
tiles it rejected as outliers, in one colour, each named for what it shows.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ._read import ATTRS_KEY
from ._shift_vectors import local_shift_vectors

if TYPE_CHECKING:
    import napari

__all__ = [
    "CONFIDENCE_COLORMAP",
    "REJECTED_COLOR",
    "add_local_shift_layers",
    "replace_shift_layers",
]

#: Kept tiles: confidence 0 to 1 through this colormap (dark purple to yellow: distinct
#: from the NCC layer's magenta-white-green).
CONFIDENCE_COLORMAP = "viridis"

#: Tiles the fit rejected as outliers.
REJECTED_COLOR = "orangered"


def add_local_shift_layers(
    viewer: napari.viewer.Viewer, registration, *, scale, translate, name: str
) -> list:
    """Add the registration's local shifts as Vectors layers; return them (maybe none).

    Nothing is added for a translation or a registration without tiles. `scale` and
    `translate` are the reference layer's, so that the arrows start at the tile centres
    over it; `name` says which pair they belong to.
    """
    vectors = local_shift_vectors(registration)
    if vectors is None:
        return []
    tile = vectors.tile_size
    common = {
        "scale": scale,
        "translate": translate,
        "length": vectors.exaggeration,
        "edge_width": max(1.0, tile / 24),
        "vector_style": "arrow",
    }
    info = {
        "local_shifts": vectors.description,
        "exaggeration": vectors.exaggeration,
        "model": registration.model,
    }
    label = f"local shifts x{vectors.exaggeration} {name}"
    layers = []
    for rejected in (False, True):
        chosen = vectors.rejected == rejected
        if not chosen.any():
            continue
        features = {key: value[chosen] for key, value in vectors.features.items()}
        colour = (
            {"edge_color": REJECTED_COLOR}
            if rejected
            else {
                "edge_color": "confidence",
                "edge_colormap": CONFIDENCE_COLORMAP,
                "edge_contrast_limits": (0.0, 1.0),
            }
        )
        layers.append(
            viewer.add_vectors(
                vectors.data[chosen],
                features=features,
                name=f"{label} (rejected)" if rejected else label,
                metadata={ATTRS_KEY: {**info, "rejected": rejected}},
                **colour,
                **common,
            )
        )
    return layers


def replace_shift_layers(viewer, old, registration, display: dict, names) -> list:
    """The widget's step: remove the `old` layers still in the viewer, then add those of
    `registration` (None: none) over the reference (`display`: its scale and translate;
    `names`: of the reference and moving layers)."""
    for layer in old:
        if layer is not None and layer in viewer.layers:
            viewer.layers.remove(layer)
    if registration is None:
        return []
    return add_local_shift_layers(
        viewer,
        registration,
        scale=display["scale"],
        translate=display["translate"],
        name=f"{names[0]} ~ {names[1]}",
    )
