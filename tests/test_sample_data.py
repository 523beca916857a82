"""Sample pairs (pure NumPy) and the napari sample-data contributions."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage
from skimage import data

from napari_ncc._samples import SAMPLES, sample_pair
from reference import brute_force_ncc


def test_cell_pair_is_displaced_and_deformed_where_it_says():
    reference, moving, info = sample_pair("cell")
    np.testing.assert_array_equal(reference, data.cell())
    assert moving.shape == reference.shape and moving.dtype == np.uint8
    assert info["shift"] == tuple(-d for d in info["displacement"])
    registered = ndimage.shift(moving.astype(np.float64), info["shift"], order=3, mode="nearest")
    (r0, r1), (c0, c1) = info["deformed_region"]
    assert info["deformation"][r0:r1, c0:c1].max() > 4
    # Where the deformation is largest, registration alone cannot align the pair...
    cy, cx = np.unravel_index(np.argmax(info["deformation"]), reference.shape)
    box = np.s_[cy - 30 : cy + 30, cx - 30 : cx + 30]
    deformed = brute_force_ncc(reference[box], registered[box], 3)
    # ...while away from it the registered pair agrees.
    calm = np.s_[40:100, 400:460]
    assert info["deformation"][calm].max() < 0.01
    undeformed = brute_force_ncc(reference[calm], registered[calm], 3)
    assert np.median(undeformed) > 0.75
    assert np.median(deformed) < np.median(undeformed) - 0.2
    # Without registration nothing agrees.
    assert np.median(brute_force_ncc(reference[calm], moving[calm], 3)) < 0.5


def test_cell_pair_is_reproducible_and_seeded():
    a = sample_pair("cell")[1]
    np.testing.assert_array_equal(a, sample_pair("cell")[1])
    assert not np.array_equal(a, sample_pair("cell", seed=1)[1])


def test_motorcycle_pair():
    left, right, info = sample_pair("motorcycle")
    assert left.shape == right.shape == (500, 741, 3) and info["rgb"]
    assert info["disparity"].shape == left.shape[:2]
    gray_left, _, gray_info = sample_pair("motorcycle", grayscale=True)
    assert gray_left.shape == (500, 741) and gray_left.dtype == np.float32
    assert not gray_info["rgb"]
    np.testing.assert_allclose(
        gray_left, left @ np.array([0.2125, 0.7154, 0.0721]), rtol=1e-5, atol=1e-3
    )


def test_unknown_sample_is_refused_with_the_names():
    with pytest.raises(ValueError, match=r"unknown sample 'lena'.*cell, motorcycle"):
        sample_pair("lena")
    assert SAMPLES == ("cell", "motorcycle")


@pytest.mark.gui
@pytest.mark.parametrize("key", SAMPLES)
def test_sample_data_opens_in_napari(make_napari_viewer, key):
    pytest.importorskip("napari")
    viewer = make_napari_viewer()
    viewer.open_sample("napari-ncc", key)
    assert [layer.name for layer in viewer.layers] == [f"{key} reference", f"{key} moving"]
    reference, moving = (layer.data for layer in viewer.layers)
    assert reference.shape == moving.shape
    assert viewer.layers[0].rgb == (key == "motorcycle")
