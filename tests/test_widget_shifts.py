"""The widget's local-shift arrows (issue 16): Vectors layers over the reference, in a real viewer.

Run under Xvfb. The pair is a real picture warped by a KNOWN smooth field
(``tests/transform_pairs.py``): the arrows must start at the measured tiles and end where
the true transform puts them.
"""

from __future__ import annotations

import numpy as np
import pytest

from test_widget import _open, _run
from transform_pairs import SmoothWarp, linear_matrix, picture, warped_pair

pytest.importorskip("napari")
pytestmark = pytest.mark.gui

from napari.layers import Vectors  # noqa: E402

N = 256


def _vectors(viewer):
    return [layer for layer in viewer.layers if isinstance(layer, Vectors)]


def test_deformable_run_adds_local_shift_arrows_over_the_reference(
    make_napari_viewer, qtbot, tmp_path
):
    rng = np.random.default_rng(3)
    warp = SmoothWarp(linear_matrix(0.8, translation=(3.3, -2.1), n=N), 3.0, (250, 200), rng)
    reference, moving = warped_pair(picture("brick"), warp, N, 0.03, rng)
    viewer = make_napari_viewer(show=True)
    scale, translate = (0.5, 0.5), (10.0, -4.0)
    ref_layer = viewer.add_image(reference, name="reference", scale=scale, translate=translate)
    mov_layer = viewer.add_image(moving, name="moving", scale=scale, translate=translate)
    widget = _open(viewer)
    assert widget.show_shifts.value is False  # off unless asked for
    _run(qtbot, widget, reference=ref_layer, moving=mov_layer, model="deformable")
    assert _vectors(viewer) == []

    layer = _run(qtbot, widget, model="deformable", show_shifts=True)
    assert layer.metadata["napari_ncc"]["show_shifts"]
    registration = widget._cache["registrations"][None, "deformable"]
    tiles = registration.tiles
    arrows = _vectors(viewer)
    kept = [a for a in arrows if not a.metadata["napari_ncc"]["rejected"]]
    rejected = [a for a in arrows if a.metadata["napari_ncc"]["rejected"]]
    assert len(kept) == 1 and len(rejected) == int(tiles.rejected.any())
    [kept] = kept
    assert "local shifts" in kept.name and "reference ~ moving" in kept.name
    assert "beyond the linear part" in kept.metadata["napari_ncc"]["local_shifts"]
    # Overlaid on the reference layer: same scale and translate.
    np.testing.assert_allclose(kept.scale, scale)
    np.testing.assert_allclose(kept.translate, translate)
    # Drawn over the (opaque) NCC layer, which stays selected.
    assert viewer.layers.index(kept) > viewer.layers.index(layer)
    assert viewer.layers.selection.active is layer
    # One arrow per tile, starting at the tile centres (reference pixels).
    assert sum(len(a.data) for a in arrows) == len(tiles.centers)
    keep = ~tiles.rejected
    np.testing.assert_allclose(kept.data[:, 0], tiles.centers[keep])
    np.testing.assert_allclose(kept.features["confidence"], tiles.confidence[keep])
    assert not kept.features["rejected"].any()
    # Coloured by confidence through a colormap.
    assert kept._edge.color_properties.name == "confidence"
    # The arrow is the warp beyond the affine part: affine(centre) + arrow is where the
    # TRUE transform puts the centre, up to the tiles' precision.
    affine = registration.matrix
    ends = tiles.centers[keep] @ affine[:2, :2].T + affine[:2, 2] + kept.data[:, 1]
    truth = warp.moving_coordinates(tiles.centers[keep])
    error = np.linalg.norm(ends - truth, axis=1)
    assert np.median(error) < 0.3
    # ... and the warp is a few pixels (the field's amplitude is 3 px).
    assert 1.0 < np.abs(kept.data[:, 1]).max() < 8.0

    # The arrows are drawn: the canvas changes where they are when they are hidden.
    viewer.reset_view()
    shown = viewer.screenshot(str(tmp_path / "shifts.png"), canvas_only=True, flash=False)
    for arrows_layer in arrows:
        arrows_layer.visible = False
    hidden = viewer.screenshot(canvas_only=True, flash=False)
    changed = np.any(shown[..., :3] != hidden[..., :3], axis=-1)
    assert changed.mean() > 0.002

    # A translation run replaces them by none.
    _run(qtbot, widget, model="translation")
    assert _vectors(viewer) == []
