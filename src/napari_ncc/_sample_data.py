"""napari sample data: the pairs of :func:`napari_ncc._samples.sample_pair` as layers."""

from __future__ import annotations

from ._samples import sample_pair


def _layers(name: str) -> list[tuple]:
    reference, moving, info = sample_pair(name)
    rgb = info["rgb"]
    shift = info["shift"]
    truth = f"true registration shift {shift}" if shift is not None else "no single true shift"
    meta = {"napari_ncc_sample": name, "description": info["description"]}
    return [
        (reference, {"name": f"{name} reference", "rgb": rgb, "metadata": meta}, "image"),
        (
            moving,
            {
                "name": f"{name} moving",
                "rgb": rgb,
                "metadata": {**meta, "note": truth},
                "visible": False,
            },
            "image",
        ),
    ]


def cell_pair() -> list[tuple]:
    """``skimage.data.cell()`` and a shifted, locally deformed, noisy copy."""
    return _layers("cell")


def motorcycle_pair() -> list[tuple]:
    """The Middlebury 'Motorcycle' stereo pair (left = reference, right = moving)."""
    return _layers("motorcycle")
