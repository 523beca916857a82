"""The "NCC confidence" widget, driven the way a user (or a script) drives it, in a real viewer.

Run under Xvfb: ``xvfb-run -a python -m pytest tests/test_widget.py``.
Expected maps come from the brute-force reference in ``tests/reference.py`` applied to the
moving image shifted with ``scipy.ndimage.shift`` by the shift the widget recorded.
"""

from __future__ import annotations

import gc
import inspect
import os
import re

import dask.array as da
import numpy as np
import pytest
import zarr
from scipy import ndimage
from skimage import data

from reference import brute_force_ncc

pytest.importorskip("napari")
pytestmark = pytest.mark.gui

from napari.utils.notifications import notification_manager  # noqa: E402
from napari.utils.progress import progress  # noqa: E402
from qtpy.QtCore import Qt  # noqa: E402

from napari_ncc import _multiscale  # noqa: E402
from napari_ncc._register import register  # noqa: E402
from napari_ncc._run_job import Job as _Job  # noqa: E402

WIDGET = ("napari-ncc", "NCC confidence")

#: A shift within this of an integer is that integer (rounding noise, e.g. -6e-18 for a
#: plane registered onto itself): nothing expected may depend on the noise's sign.
ZERO = 1e-6

#: How the content of the moving image moved (rows, columns); registering undoes it.
DISPLACEMENT = (3.4, -2.2)


def _pair(shape=(120, 140), displacement=DISPLACEMENT):
    full = data.camera().astype(np.float32)
    reference = full[100 : 100 + shape[0], 150 : 150 + shape[1]].copy()
    moving = ndimage.shift(full, displacement, order=3, mode="nearest")[
        100 : 100 + shape[0], 150 : 150 + shape[1]
    ].astype(np.float32)
    return reference, moving


def _registered(moving, shift):
    # What the widget correlates: moving shifted by the recorded shift (linear, nearest).
    return ndimage.shift(moving.astype(np.float64), shift, order=1, mode="nearest")


def _assert_registered_ncc(actual, reference, moving, shift, radius, **kwargs):
    """`actual` is the NCC of reference and moving shifted by `shift`, where the windows see
    only pixels that came from inside the moving image, and the fill value 0 where the
    pixel itself came from outside it."""
    actual = np.asarray(actual)
    expected = brute_force_ncc(reference, _registered(moving, shift), radius, **kwargs)
    inside, outside = [], []
    for n, s in zip(reference.shape, shift, strict=True):
        x = np.arange(n)
        # registered[x] = moving[x - s] is an interpolation of moving for 0 <= x - s <= n - 1
        # (to ZERO: a shift that is an integer up to rounding noise is that integer)
        valid = (x - s >= -ZERO) & (x - s <= n - 1 + ZERO)
        lo, hi = np.flatnonzero(valid)[[0, -1]]
        inside.append(
            (x >= (lo + radius if lo > 0 else 0)) & (x <= (hi - radius if hi < n - 1 else n))
        )
        outside.append(~valid)
    inside = np.logical_and.outer(*inside)
    outside = np.logical_or.outer(*outside)
    assert inside.mean() > 0.5
    np.testing.assert_allclose(actual[inside], expected[inside], atol=1e-4)
    # Any shift that is not zero up to rounding brings pixels in from outside.
    assert outside.any() == (np.abs(shift).max() > ZERO)
    assert np.all(actual[outside] == 0)


def _open(viewer):
    viewer.window.resize(1200, 800)
    _dock, widget = viewer.window.add_plugin_dock_widget(*WIDGET)
    return widget


def _run(qtbot, widget, **values):
    """Set fields, click Run (by calling the widget), wait for the layer."""
    for name, value in values.items():
        getattr(widget, name).value = value
    worker = widget()
    assert worker is not None
    # (not waitSignal(worker.finished): a quick run may finish before it connects)
    qtbot.waitUntil(lambda: widget.worker is None and not worker.is_running, timeout=60_000)
    # Multiscale maps: also until the overview of the full-resolution map is final.
    layer = widget.ncc_layer
    if layer is not None and layer.multiscale and not widget.result.value == "cancelled":
        qtbot.waitUntil(
            lambda: (
                layer.metadata["napari_ncc"].get("overview", {}).get("state") == "final"
                and widget.overview_worker is None
            ),
            timeout=60_000,
        )
    return layer


def _block_mean(image, factor):
    h, w = image.shape[0] // factor, image.shape[1] // factor
    blocks = np.asarray(image, dtype=np.float64)[: h * factor, : w * factor]
    return blocks.reshape(h, factor, w, factor).mean(axis=(1, 3))


def _click(qtbot, widget):
    """Press the Run/Cancel button, as a user does."""
    qtbot.mouseClick(widget.call_button.native, Qt.MouseButton.LeftButton)


@pytest.fixture
def progress_steps():
    """Every (description, done, total) the activity panel's progress bars showed."""
    steps = []

    def recorder(bar):
        def record(event):
            steps.append((bar.desc, event.value, bar.total))

        return record

    def watch(event):
        for bar in event.added:
            bar.events.value.connect(recorder(bar))

    progress._all_instances.events.changed.connect(watch)
    yield steps
    progress._all_instances.events.changed.disconnect(watch)


@pytest.fixture
def notifications():
    received = []
    notification_manager.notification_ready.connect(received.append)
    yield received
    notification_manager.notification_ready.disconnect(received.append)


def test_widget_registers_then_adds_a_lazy_ncc_layer(make_napari_viewer, qtbot):
    viewer = make_napari_viewer(show=True)
    reference, moving = _pair()
    ref_layer = viewer.add_image(reference, name="reference", scale=(0.5, 0.5), translate=(3, 4))
    mov_layer = viewer.add_image(moving, name="moving")
    before = (reference.copy(), moving.copy())
    widget = _open(viewer)
    assert [w.name for w in widget][:9] == [
        "reference",
        "moving",
        "radius",
        "window",
        "register",
        "model",
        "per_plane",
        "show_registered",
        "new_layer",
    ]
    widget.radius.value = 4
    assert "9x9" in widget.radius.label

    layer = _run(qtbot, widget, reference=ref_layer, moving=mov_layer, show_registered=True)
    assert layer is not None and isinstance(layer.data, da.Array)
    assert tuple(layer.contrast_limits) == (-1.0, 1.0)
    assert layer.colormap.name == _multiscale.NCC_COLORMAP["name"]
    assert layer.colorbar.visible  # the legend: what -1, 0 and +1 look like
    np.testing.assert_allclose(layer.scale, (0.5, 0.5))
    np.testing.assert_allclose(layer.translate, (3, 4))

    meta = layer.metadata["napari_ncc"]
    assert meta["radius"] == 4 and meta["window"] == "box" and meta["register"]
    shift = meta["registration"]["shift"]
    # register undoes the displacement (skimage's convention), to a small fraction of a pixel
    np.testing.assert_allclose(shift, [-d for d in DISPLACEMENT], atol=0.2)
    assert meta["registration"]["reliable"]
    # The widget says what it found: the shift (to 0.01 px) and the registration quality.
    text = widget.result.value
    found = re.search(r"shift: y ([-+]\d+\.\d\d), x ([-+]\d+\.\d\d) px", text)
    assert found, text
    np.testing.assert_allclose([float(v) for v in found.groups()], shift, atol=0.0051)
    quality = re.search(r"registration quality: (\d\.\d\d)", text)
    assert quality and abs(float(quality[1]) - meta["registration"]["quality"]) <= 0.0051
    assert "unreliable" not in text

    # Values: the NCC of reference and the moving image registered by that shift.
    _assert_registered_ncc(layer.data, reference, moving, shift, 4)
    expected = brute_force_ncc(reference, _registered(moving, shift), 4)
    # Registration matters: the registered pair agrees far better than the raw one.
    raw = brute_force_ncc(reference, moving, 4)
    assert np.median(expected) > 0.9 > np.median(raw)

    registered = viewer.layers["moving registered"]
    assert isinstance(registered.data, da.Array) and not registered.visible
    np.testing.assert_allclose(
        np.asarray(registered.data), _registered(moving, shift), rtol=1e-5, atol=1e-3
    )

    # The user's layers are untouched.
    np.testing.assert_array_equal(ref_layer.data, before[0])
    np.testing.assert_array_equal(mov_layer.data, before[1])

    # Running again with another radius and window updates the same layer in place
    # (keeping the name the user gave it).
    assert layer.name == "NCC reference ~ moving"
    layer.name = "my map"
    n_layers = len(viewer.layers)
    again = _run(qtbot, widget, radius=2, window="gaussian", show_registered=False)
    assert again is layer and len(viewer.layers) == n_layers and layer.name == "my map"
    assert layer.metadata["napari_ncc"]["radius"] == 2
    # ...however many times it runs.
    assert _run(qtbot, widget, radius=5) is layer and layer.name == "my map"
    assert _run(qtbot, widget, radius=2) is layer and layer.name == "my map"
    shift = layer.metadata["napari_ncc"]["registration"]["shift"]
    _assert_registered_ncc(layer.data, reference, moving, shift, 2, window="gaussian")
    assert tuple(layer.contrast_limits) == (-1.0, 1.0)

    # ...unless a new layer is asked for.
    extra = _run(qtbot, widget, new_layer=True)
    assert extra is not layer and len(viewer.layers) == n_layers + 1


def test_widget_without_registration_correlates_the_raw_pair(make_napari_viewer, qtbot):
    viewer = make_napari_viewer(show=True)
    reference, moving = _pair((64, 80))
    widget = _open(viewer)
    layer = _run(
        qtbot,
        widget,
        reference=viewer.add_image(reference, name="a"),
        moving=viewer.add_image(moving, name="b"),
        register=False,
        radius=3,
    )
    assert layer.metadata["napari_ncc"]["registration"] is None
    np.testing.assert_allclose(
        np.asarray(layer.data), brute_force_ncc(reference, moving, 3), atol=1e-4
    )
    # No registration, so no transform to choose: the choice is greyed out, and back.
    assert not widget.model.enabled and not widget.show_shifts.enabled
    widget.register.value = True
    assert widget.model.enabled and widget.show_shifts.enabled


def test_rgb_layers_are_compared_by_luminance(make_napari_viewer, qtbot):
    viewer = make_napari_viewer(show=True)
    left, right, _ = data.stereo_motorcycle()
    left, right = left[200:260, 300:380], right[200:260, 300:380]
    widget = _open(viewer)
    ref_layer = viewer.add_image(left, name="left", rgb=True)
    mov_layer = viewer.add_image(right, name="right", rgb=True)
    layer = _run(qtbot, widget, reference=ref_layer, moving=mov_layer, register=False)
    assert layer.data.shape == left.shape[:2] and not layer.rgb
    weights = np.array([0.2125, 0.7154, 0.0721])
    expected = brute_force_ncc(left @ weights, right @ weights, 3)
    np.testing.assert_allclose(np.asarray(layer.data), expected, atol=1e-4)
    np.testing.assert_array_equal(ref_layer.data, data.stereo_motorcycle()[0][200:260, 300:380])


def test_bad_layer_choices_give_a_notification_not_a_traceback(
    make_napari_viewer, qtbot, notifications
):
    viewer = make_napari_viewer(show=True)
    widget = _open(viewer)
    widget.reference.value = viewer.add_image(np.zeros((40, 50), np.float32), name="small")
    widget.moving.value = viewer.add_image(np.zeros((40, 60), np.float32), name="wide")
    n_layers = len(viewer.layers)
    assert widget() is None
    assert len(viewer.layers) == n_layers
    errors = [n for n in notifications if n.severity == "error"]
    assert errors and "same shape" in errors[-1].message
    assert "(40, 50)" in errors[-1].message and "(40, 60)" in errors[-1].message


def test_stack_per_plane(make_napari_viewer, qtbot):
    viewer = make_napari_viewer(show=True)
    full = data.camera().astype(np.float32)
    displacements = [(0.0, 0.0), (1.5, -2.0), (-2.5, 1.0)]
    reference = np.stack([full[200:264, 200:272] for _ in displacements])
    moving = np.stack(
        [ndimage.shift(full, d, order=3, mode="nearest")[200:264, 200:272] for d in displacements]
    )
    widget = _open(viewer)
    ref_layer = viewer.add_image(reference, name="stack")
    widget.reference.value = ref_layer
    assert widget.per_plane.choices == (None, 0)
    layer = _run(qtbot, widget, reference=ref_layer, moving=viewer.add_image(moving), per_plane=0)
    meta = layer.metadata["napari_ncc"]
    shifts = np.asarray(meta["registration"]["shifts"])
    np.testing.assert_allclose(shifts[:, 1:], -np.asarray(displacements), atol=0.25)
    result = np.asarray(layer.data)
    # Every plane, the one registered onto itself too (its shift is zero up to rounding:
    # no band expected, whatever the sign of the rounding).
    for i in range(len(displacements)):
        _assert_registered_ncc(result[i], reference[i], moving[i], shifts[i, 1:], 3)


def _pyramid(image, n_levels):
    levels = [da.from_array(image, chunks=64)]
    for _ in range(n_levels - 1):
        levels.append(da.coarsen(np.mean, levels[-1], {0: 2, 1: 2}, trim_excess=True))
    return levels


def test_multiscale_inputs_give_a_multiscale_ncc_layer(make_napari_viewer, qtbot, monkeypatch):
    # Levels above 64 pixels a side count as "large": the quick preview registration on
    # level 2 is shown first, then replaced in place by the full registration.
    monkeypatch.setattr(_multiscale, "PREVIEW_MAX_SIDE", 64)
    viewer = make_napari_viewer(show=True)
    reference, moving = _pair((256, 256), displacement=(4.0, -6.0))
    ref_pyramid, mov_pyramid = _pyramid(reference, 3), _pyramid(moving, 3)
    widget = _open(viewer)
    inserted = []
    viewer.layers.events.inserted.connect(
        lambda event: inserted.append(dict(event.value.metadata.get("napari_ncc", {})))
    )
    layer = _run(
        qtbot,
        widget,
        reference=viewer.add_image(ref_pyramid, multiscale=True, name="ref"),
        moving=viewer.add_image(mov_pyramid, multiscale=True, name="mov"),
        radius=2,
    )
    assert layer.multiscale and len(layer.data) == 3
    assert all(isinstance(level, da.Array) for level in layer.data)
    assert tuple(layer.contrast_limits) == (-1.0, 1.0)
    meta = layer.metadata["napari_ncc"]
    # The preview (registered on a coarse level) was replaced by the full registration.
    [first] = [m for m in inserted if m]
    assert first["preview"] and "level 2 (preview)" in first["registration"]["method"]
    np.testing.assert_allclose(first["registration"]["shift"], (-4.0, 6.0), atol=0.5)
    assert not meta["preview"] and "preview" not in meta["registration"]["method"]
    shift = np.asarray(meta["registration"]["shift"])
    np.testing.assert_allclose(shift, (-4.0, 6.0), atol=0.25)
    # Level 0: the NCC of the registered pair; level k, once the overview is final: the
    # mean of its 2^k x 2^k blocks.
    _assert_registered_ncc(
        layer.data[0], np.asarray(ref_pyramid[0]), np.asarray(mov_pyramid[0]), shift, 2
    )
    assert layer.metadata["napari_ncc"]["overview"]["state"] == "final"
    level0 = np.asarray(layer.data[0])
    for k in (1, 2):
        np.testing.assert_allclose(layer.data[k], _block_mean(level0, 2**k), atol=1e-5)


def test_large_single_scale_input_gets_a_cached_pyramid(make_napari_viewer, qtbot, monkeypatch):
    # The threshold is lowered so that a small image takes the gigapixel path.
    monkeypatch.setattr(_multiscale, "MULTISCALE_MIN_SIDE", 200)
    monkeypatch.setattr(_multiscale, "PYRAMID_MIN_SIDE", 100)
    viewer = make_napari_viewer(show=True)
    reference, moving = _pair((300, 260), displacement=(2.0, 3.0))
    widget = _open(viewer)
    layer = _run(
        qtbot,
        widget,
        reference=viewer.add_image(reference, name="ref"),
        moving=viewer.add_image(moving, name="mov"),
        register=False,
    )
    assert layer.multiscale
    assert [tuple(level.shape) for level in layer.data] == [(300, 260), (150, 130), (75, 65)]
    np.testing.assert_allclose(
        np.asarray(layer.data[0]), brute_force_ncc(reference, moving, 3), atol=1e-4
    )
    # Once the overview is final, level 1 is the block mean of the full-resolution map.
    np.testing.assert_allclose(
        np.asarray(layer.data[1]), _block_mean(brute_force_ncc(reference, moving, 3), 2), atol=1e-4
    )

    # A new radius reuses the cached pyramids (no new cache directory) and updates in place.
    def pyramids():
        return [path for path in _multiscale._CACHE_DIRS if "pyramid" in path]

    n_caches = len(pyramids())
    again = _run(qtbot, widget, radius=5)
    assert again is layer and len(pyramids()) == n_caches
    np.testing.assert_allclose(
        np.asarray(layer.data[1]), _block_mean(brute_force_ncc(reference, moving, 5), 2), atol=1e-4
    )


def test_failures_and_doubts_are_notifications(make_napari_viewer, qtbot, notifications, rng):
    viewer = make_napari_viewer(show=True)
    widget = _open(viewer)
    # A NaN makes the registration fail in the worker: an error notification, no layer.
    broken = rng.random((48, 48)).astype(np.float32)
    broken[10, 10] = np.nan
    worker = widget(
        reference=viewer.add_image(broken, name="broken"),
        moving=viewer.add_image(rng.random((48, 48)).astype(np.float32), name="noise"),
    )
    qtbot.waitUntil(lambda: widget.worker is None and not worker.is_running, timeout=60_000)
    assert widget.ncc_layer is None
    errors = [n.message for n in notifications if n.severity == "error"]
    assert errors and errors[-1].startswith("NCC confidence failed:") and "NaN" in errors[-1]

    # Two unrelated noise images: the layer is made, with a warning that the
    # registration cannot be trusted.
    layer = _run(
        qtbot,
        widget,
        reference=viewer.add_image(rng.random((64, 64)), name="a"),
        moving=viewer.add_image(rng.random((64, 64)), name="b"),
    )
    assert not layer.metadata["napari_ncc"]["registration"]["reliable"]
    warnings = [n.message for n in notifications if n.severity == "warning"]
    assert any("unreliable" in message for message in warnings)


def test_moving_defaults_to_another_image_of_the_same_shape(
    make_napari_viewer, qtbot, notifications
):
    viewer = make_napari_viewer(show=True)
    reference, moving = _pair((64, 80))
    ref_layer = viewer.add_image(reference, name="cell reference")
    mov_layer = viewer.add_image(moving, name="cell moving")
    widget = _open(viewer)
    assert widget.reference.value is ref_layer or widget.reference.value.name == "cell reference"
    assert widget.moving.value.name == "cell moving"

    # Pressing Run as it opens compares the two images, with no warning.
    _click(qtbot, widget)
    qtbot.waitUntil(lambda: widget.worker is None and widget.ncc_layer is not None, timeout=60_000)
    layer = widget.ncc_layer
    assert layer.name == "NCC cell reference ~ cell moving"
    assert np.median(np.asarray(layer.data)) < 0.99  # not a layer against itself
    assert not [n for n in notifications if n.severity == "warning"]

    # Layers of another shape, and the map itself, are never picked; when the moving
    # layer goes, another image of the reference's shape takes its place.
    viewer.add_image(np.zeros((10, 10), np.float32), name="small")
    other = viewer.add_image(moving[::-1].copy(), name="other")
    assert widget.moving.value.name == "cell moving"
    viewer.layers.remove(mov_layer)
    assert widget.moving.value.name == "other"
    viewer.layers.remove(other)
    assert widget.moving.value.name == "cell reference"  # nothing else of that shape
    # A new reference: moving follows when it was the reference itself.
    viewer.add_image(moving, name="again")
    widget.reference.value = viewer.layers["cell reference"]
    assert widget.moving.value.name == "again"


def test_a_layer_against_itself_gets_a_warning(make_napari_viewer, qtbot, notifications):
    viewer = make_napari_viewer(show=True)
    reference, _ = _pair((64, 80))
    widget = _open(viewer)
    only = viewer.add_image(reference, name="only")
    layer = _run(qtbot, widget, reference=only, moving=only)
    np.testing.assert_allclose(np.asarray(layer.data), 1, atol=1e-5)
    warned = [n.message for n in notifications if n.severity == "warning"]
    assert any("same layer" in message and "'only'" in message for message in warned)
    assert "same layer" in widget.result.value


def test_result_area_never_prints_a_negative_zero(make_napari_viewer, qtbot):
    # Two copies of one image: the shift is zero up to rounding, whatever its sign.
    viewer = make_napari_viewer(show=True)
    reference, _ = _pair((96, 112))
    widget = _open(viewer)
    layer = _run(
        qtbot,
        widget,
        reference=viewer.add_image(reference, name="a"),
        moving=viewer.add_image(reference.copy(), name="b"),
    )
    np.testing.assert_allclose(layer.metadata["napari_ncc"]["registration"]["shift"], 0, atol=1e-3)
    text = widget.result.value
    assert "shift: y +0.00, x +0.00 px" in text and "-0.00" not in text


def test_unreliable_registration_is_said_in_the_widget(make_napari_viewer, qtbot, rng):
    viewer = make_napari_viewer(show=True)
    widget = _open(viewer)
    _run(
        qtbot,
        widget,
        reference=viewer.add_image(rng.random((64, 64)), name="a"),
        moving=viewer.add_image(rng.random((64, 64)), name="b"),
    )
    assert "WARNING: the registration is unreliable" in widget.result.value


def _stack(n_planes, side=256):
    full = data.camera().astype(np.float32)
    reference = np.stack([np.roll(full, 7 * t, axis=1)[:side, :side] for t in range(n_planes)])
    moving = np.stack([ndimage.shift(plane, (1.5, -2.0), mode="nearest") for plane in reference])
    return reference, moving


def test_cancel_stops_the_run_and_adds_nothing(make_napari_viewer, qtbot, notifications):
    viewer = make_napari_viewer(show=True)
    reference, moving = _stack(12)
    viewer.add_image(reference, name="stack")
    viewer.add_image(moving, name="moved")
    widget = _open(viewer)
    widget.per_plane.value = 0
    names = [layer.name for layer in viewer.layers]

    _click(qtbot, widget)
    worker = widget.worker
    assert worker is not None and widget.call_button.text == "Cancel"
    _click(qtbot, widget)
    # Whatever the worker had done by then, nothing of it is shown.
    assert widget.call_button.text == "Cancelling..." and not widget.call_button.enabled
    qtbot.waitUntil(lambda: not worker.is_running and widget.worker is None, timeout=120_000)
    assert [layer.name for layer in viewer.layers] == names
    assert widget.ncc_layer is None
    assert widget.call_button.text == "Run" and widget.call_button.enabled
    assert widget.result.value == "cancelled"
    assert not [n for n in notifications if n.severity == "error"]
    worker = None  # (the test holds no reference either)
    gc.collect()
    jobs = [obj for obj in gc.get_objects() if isinstance(obj, _Job)]
    assert not jobs

    # The next Run works as usual...
    widget.per_plane.value = None
    widget.reference.value = viewer.layers["stack"]
    widget.moving.value = viewer.layers["moved"]
    layer = _run(qtbot, widget, register=False)
    assert layer is not None and layer.name == "NCC stack ~ moved"
    # ...and a cancelled run leaves the map it would have updated as it was.
    data, metadata = layer.data, dict(layer.metadata["napari_ncc"])
    widget.register.value, widget.per_plane.value = True, 0
    _click(qtbot, widget)
    worker = widget.worker
    _click(qtbot, widget)
    qtbot.waitUntil(lambda: not worker.is_running and widget.worker is None, timeout=120_000)
    assert widget.ncc_layer is layer and layer.data is data
    assert layer.metadata["napari_ncc"] == metadata


def test_cancel_after_the_preview_takes_it_back(make_napari_viewer, qtbot, monkeypatch):
    monkeypatch.setattr(_multiscale, "PREVIEW_MAX_SIDE", 64)
    viewer = make_napari_viewer(show=True)
    reference, moving = _pair((256, 256), displacement=(4.0, -6.0))
    widget = _open(viewer)
    ref = viewer.add_image(_pyramid(reference, 3), multiscale=True, name="ref")
    mov = viewer.add_image(_pyramid(moving, 3), multiscale=True, name="mov")
    names = [layer.name for layer in viewer.layers]

    def cancel_on_preview(event):
        if event.value.metadata.get("napari_ncc", {}).get("preview"):
            widget.cancel()

    viewer.layers.events.inserted.connect(cancel_on_preview)
    worker = widget(reference=ref, moving=mov)
    qtbot.waitUntil(lambda: not worker.is_running and widget.worker is None, timeout=60_000)
    assert [layer.name for layer in viewer.layers] == names
    assert widget.ncc_layer is None and widget.call_button.text == "Run"


def test_progress_reports_every_pyramid_block(
    make_napari_viewer, qtbot, monkeypatch, progress_steps
):
    monkeypatch.setattr(_multiscale, "MULTISCALE_MIN_SIDE", 200)
    monkeypatch.setattr(_multiscale, "PYRAMID_MIN_SIDE", 100)
    monkeypatch.setattr(_multiscale, "PYRAMID_CHUNK", 32)
    viewer = make_napari_viewer(show=True)
    reference, moving = _pair((300, 260))
    widget = _open(viewer)
    _run(
        qtbot,
        widget,
        reference=viewer.add_image(reference, name="ref"),
        moving=viewer.add_image(moving, name="mov"),
        register=False,
    )
    # Levels (150, 130) and (75, 65) in 32-pixel blocks: 5 x 5 + 3 x 3.
    blocks = 5 * 5 + 3 * 3
    # The bar counts blocks, up to the last. (It may skip drawing steps that came while it
    # drew, so which values it showed in between is up to Qt.)
    pyramid = [(desc, done, total) for desc, done, total in progress_steps if "pyramid" in desc]
    assert pyramid and {total for _, _, total in pyramid} == {blocks}
    assert "moving pyramid (blocks)" in pyramid[-1][0] and pyramid[-1][1] == blocks


@pytest.mark.skipif(
    "progress" not in inspect.signature(register).parameters,
    reason="register(progress=) comes with the registration helper's branch",
)
def test_progress_reports_every_registered_plane(make_napari_viewer, qtbot, progress_steps):
    viewer = make_napari_viewer(show=True)
    reference, moving = _stack(5, side=96)
    widget = _open(viewer)
    _run(
        qtbot,
        widget,
        reference=viewer.add_image(reference, name="stack"),
        moving=viewer.add_image(moving, name="moved"),
        per_plane=0,
    )
    seen = [(done, total) for desc, done, total in progress_steps if "registration" in desc]
    assert seen and seen[-1] == (5, 5) and {total for _, total in seen} == {5}


def _cached_files(folder) -> dict:
    return {
        os.path.join(root, name): os.stat(os.path.join(root, name)).st_mtime_ns
        for root, _, names in os.walk(folder)
        for name in names
    }


def test_layers_from_files_share_the_pyramids_cached_for_their_files(
    make_napari_viewer, qtbot, monkeypatch, tmp_path, pyramid_cache
):
    reference, moving = _pair((300, 260), displacement=(2.0, 3.0))
    paths = []
    for name, image in (("ref", reference), ("mov", moving)):
        paths.append(str(tmp_path / f"{name}.zarr"))
        zarr.create_array(paths[-1], data=image, chunks=(128, 128))
    viewer = make_napari_viewer(show=True)
    # Opened while they count as small: single-scale layers that know their file.
    [ref_layer] = viewer.open(paths[0], plugin="napari-ncc")
    [mov_layer] = viewer.open(paths[1], plugin="napari-ncc")
    assert not ref_layer.multiscale and ref_layer.source.path == paths[0]
    assert not os.path.exists(pyramid_cache)
    # Now large: the widget builds their pyramids into the cache, one entry per file.
    monkeypatch.setattr(_multiscale, "MULTISCALE_MIN_SIDE", 200)
    monkeypatch.setattr(_multiscale, "PYRAMID_MIN_SIDE", 100)
    widget = _open(viewer)
    layer = _run(qtbot, widget, reference=ref_layer, moving=mov_layer, register=False)
    assert [tuple(level.shape) for level in layer.data] == [(300, 260), (150, 130), (75, 65)]
    coarse_ref = reference.reshape(150, 2, 130, 2).mean(axis=(1, 3))
    # Once the overview is final, level 1 is the block mean of the full-resolution map.
    full = brute_force_ncc(reference, moving, 3)
    np.testing.assert_allclose(np.asarray(layer.data[0]), full, atol=1e-4)
    np.testing.assert_allclose(
        np.asarray(layer.data[1]), full.reshape(150, 2, 130, 2).mean(axis=(1, 3)), atol=1e-4
    )
    assert len(os.listdir(pyramid_cache)) == 2
    cached = _cached_files(pyramid_cache)
    # The reader opens the files again as pyramids from that cache: nothing is rebuilt.
    [again] = viewer.open(paths[0], plugin="napari-ncc")
    assert again.multiscale and [tuple(level.shape) for level in again.data] == [
        (300, 260),
        (150, 130),
        (75, 65),
    ]
    np.testing.assert_allclose(np.asarray(again.data[1]), coarse_ref, atol=1e-5)
    assert _cached_files(pyramid_cache) == cached


def test_widget_registers_a_rotated_pair_with_the_rigid_model(make_napari_viewer, qtbot):
    from transform_pairs import linear_matrix, linear_pair, picture

    viewer = make_napari_viewer()
    matrix = linear_matrix(5.0, translation=(2.0, -1.0), n=256)
    reference, moving = linear_pair(
        picture("astronaut"), matrix, 256, 0.03, np.random.default_rng(0)
    )
    ref_layer = viewer.add_image(reference, name="reference")
    mov_layer = viewer.add_image(moving, name="moving")
    widget = _open(viewer)
    layer = _run(qtbot, widget, reference=ref_layer, moving=mov_layer, model="rigid")
    registration = layer.metadata["napari_ncc"]["registration"]
    assert registration["model"] == "rigid"
    assert "transform: rigid, angle" in widget.result.value
    ncc = np.asarray(layer.data[0] if layer.multiscale else layer.data)
    assert np.median(ncc[40:-40, 40:-40]) > 0.8
