"""The widget's mask (issue 15): a Labels layer (label > 0) or a boolean Image, in a real viewer.

Run under Xvfb. The map is checked against the brute-force masked Pearson of
``tests/reference.py`` over the painted pixels.
"""

from __future__ import annotations

import numpy as np
import pytest

from napari_ncc import Registration
from reference import brute_force_masked_ncc
from test_widget import _open, _pair, _run

pytest.importorskip("napari")
pytestmark = pytest.mark.gui

from napari.utils.notifications import notification_manager  # noqa: E402


@pytest.fixture
def notifications():
    received = []
    notification_manager.notification_ready.connect(received.append)
    yield received
    notification_manager.notification_ready.disconnect(received.append)


def test_labels_mask_counts_only_the_painted_pixels(make_napari_viewer, qtbot):
    viewer = make_napari_viewer(show=True)
    reference, moving = _pair((64, 80))
    widget = _open(viewer)
    labels = np.zeros(reference.shape, np.int32)
    labels[5:50, 10:70] = 2  # a painted rectangle
    labels[20:30, 30:40] = 0  # with a hole
    labels_layer = viewer.add_labels(labels, name="tissue")
    widget.reset_choices()
    layer = _run(
        qtbot,
        widget,
        reference=viewer.add_image(reference, name="a"),
        moving=viewer.add_image(moving, name="b"),
        register=False,
        radius=3,
        mask=labels_layer,
        min_fraction=0.6,
    )
    expected, _ = brute_force_masked_ncc(reference, moving, labels > 0, 3, min_fraction=0.6)
    np.testing.assert_allclose(np.asarray(layer.data), expected, atol=1e-4)
    assert layer.metadata["napari_ncc"]["mask"] == "tissue"
    assert layer.metadata["napari_ncc"]["min_fraction"] == 0.6
    assert (np.asarray(layer.data)[:, :7] == 0).all()  # far from the painted pixels
    np.testing.assert_array_equal(labels_layer.data, labels)  # the user's layer untouched


def test_boolean_image_mask_with_registration(make_napari_viewer, qtbot):
    viewer = make_napari_viewer(show=True)
    reference, moving = _pair((64, 80))
    widget = _open(viewer)
    mask = np.ones(reference.shape, bool)
    mask[::5, ::3] = False
    mask_layer = viewer.add_image(mask, name="valid")
    widget.reset_choices()
    layer = _run(
        qtbot,
        widget,
        reference=viewer.add_image(reference, name="a"),
        moving=viewer.add_image(moving, name="b"),
        radius=3,
        mask=mask_layer,
    )
    registration = Registration.from_dict(layer.metadata["napari_ncc"]["registration"])
    valid = mask & registration.valid_mask(reference.shape)
    expected, _ = brute_force_masked_ncc(reference, registration.apply(moving), valid, 3)
    np.testing.assert_allclose(np.asarray(layer.data), expected, atol=1e-4)


def test_mask_choices_are_labels_and_boolean_images(make_napari_viewer):
    viewer = make_napari_viewer(show=True)
    widget = _open(viewer)
    viewer.add_image(np.zeros((10, 12), np.float32), name="float")
    viewer.add_image(np.zeros((10, 12), bool), name="bool")
    viewer.add_labels(np.zeros((10, 12), np.uint8), name="labels")
    widget.reset_choices()
    assert [c for c in widget.mask.choices] == [
        None,
        *(viewer.layers[n] for n in ("bool", "labels")),
    ]
    assert widget.mask.value is None


def test_mask_of_another_shape_is_an_error_notification(make_napari_viewer, notifications):
    viewer = make_napari_viewer(show=True)
    widget = _open(viewer)
    reference, moving = _pair((40, 50))
    widget.reference.value = viewer.add_image(reference, name="a")
    widget.moving.value = viewer.add_image(moving, name="b")
    small = viewer.add_labels(np.ones((40, 30), np.uint8), name="small")
    widget.reset_choices()
    widget.mask.value = small
    n_layers = len(viewer.layers)
    assert widget() is None
    assert len(viewer.layers) == n_layers
    errors = [n.message for n in notifications if n.severity == "error"]
    assert errors and "'small'" in errors[-1] and "(40, 50)" in errors[-1]
    assert "(40, 30)" in errors[-1]
