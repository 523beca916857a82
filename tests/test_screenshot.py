"""The NCC layer is actually drawn: render the viewer and look at the pixels."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("napari")
pytestmark = pytest.mark.gui

from napari_ncc._samples import sample_pair  # noqa: E402


def _run(qtbot, widget, reference, moving):
    widget.reference.value = reference
    widget.moving.value = moving
    worker = widget()
    qtbot.waitUntil(lambda: widget.worker is None and not worker.is_running, timeout=60_000)
    return widget.ncc_layer


def test_screenshot_shows_the_ncc_layer(make_napari_viewer, qtbot, tmp_path):
    viewer = make_napari_viewer(show=True)
    viewer.window.resize(1400, 900)
    reference, moving, info = sample_pair("cell")
    ref_layer = viewer.add_image(reference, name="reference")
    mov_layer = viewer.add_image(moving, name="moving")
    _dock, widget = viewer.window.add_plugin_dock_widget("napari-ncc", "NCC confidence")
    layer = _run(qtbot, widget, ref_layer, mov_layer)
    viewer.reset_view()

    shot = viewer.screenshot(canvas_only=True, flash=False)
    from skimage import io

    io.imsave(tmp_path / "ncc.png", shot, check_contrast=False)
    rgb = shot[..., :3].astype(float)
    assert rgb.std() > 10  # not blank

    # The legend: napari's colour bar, drawn in the top right corner of the canvas.
    assert layer.colorbar.visible
    layer.colorbar.visible = False
    no_bar = viewer.screenshot(canvas_only=True, flash=False)[..., :3].astype(float)
    layer.colorbar.visible = True
    rows, cols = np.nonzero(np.abs(rgb - no_bar).sum(axis=-1) > 30)
    assert len(rows) > 500
    assert rows.max() < shot.shape[0] / 2 and cols.min() > shot.shape[1] / 2

    layer.visible = False
    without = viewer.screenshot(canvas_only=True, flash=False)[..., :3].astype(float)
    layer.visible = True
    # The NCC layer changes what is drawn, and draws colour over a grey image.
    assert np.abs(rgb - without).mean() > 10
    saturation = rgb.max(axis=-1) - rgb.min(axis=-1)
    assert np.median(saturation[rgb.sum(axis=-1) > 0]) > 40
    assert np.ptp(without, axis=-1).max() < 2  # the image layers alone are grey

    # Agreement reads dark green; where the NCC drops (the deformed region), the map turns
    # pale (PiYG's white is NCC 0).
    assert np.median(rgb[..., 1] - rgb[..., [0, 2]].mean(axis=-1)) > 30
    brightness = rgb.mean(axis=-1)

    def canvas_pixel(row, col):
        # 2D camera: canvas = (world - centre) * zoom + half the canvas size.
        centre = np.asarray(viewer.camera.center[-2:])
        half = np.asarray(shot.shape[:2]) / 2
        return np.round((np.array([row, col]) - centre) * viewer.camera.zoom + half).astype(int)

    def mean_brightness(row, col, half=12):
        r, c = canvas_pixel(row, col)
        return brightness[r - half : r + half, c - half : c + half].mean()

    deformed = np.unravel_index(np.argmax(info["deformation"]), reference.shape)
    calm = (70, 430)
    assert info["deformation"][calm] < 0.01
    assert mean_brightness(*deformed) > mean_brightness(*calm) + 25
