"""Masked ncc_confidence and write_ncc (issue 15): the user's mask and the covered region.

With a mask, a window at the edge of the band shifted in from outside the moving image is
computed over its covered (and true) pixels, as the brute-force masked Pearson of the
reference and the registered moving image over ``mask & registration.valid_mask(shape)``.
"""

from __future__ import annotations

import dask.array as da
import numpy as np
import pytest
from scipy import ndimage

from napari_ncc import Registration, ncc_confidence
from napari_ncc._io import read_image, write_ncc
from reference import brute_force_masked_ncc
from test_ncc_mask import holes_and_dropouts

SHIFT = (2.5, -3.0)


@pytest.fixture
def shifted_pair(rng):
    reference = ndimage.gaussian_filter(rng.random((36, 40)), 1.0)
    reference += 0.05 * rng.random(reference.shape)
    moving = ndimage.shift(reference, [-s for s in SHIFT], order=1, mode="nearest")
    moving += 0.05 * rng.random(reference.shape)
    mask = holes_and_dropouts(rng, reference.shape, dropout=0.1)
    mask[:10] = True  # keep the user mask true near the shifted-in band (top, right)
    mask[:, -10:] = True
    return reference, moving, mask


def expected_map(reference, moving, mask, registration, **kwargs):
    registered = registration.apply(moving)
    valid = mask & registration.valid_mask(reference.shape)
    expected, _ = brute_force_masked_ncc(reference, registered, valid, **kwargs)
    return expected


def assert_same(out, expected):
    out = np.asarray(out)
    np.testing.assert_array_equal(np.isnan(out), np.isnan(expected))
    np.testing.assert_allclose(out, expected, atol=1e-4, rtol=0)


@pytest.mark.parametrize("min_fraction", [0.3, 0.6])
@pytest.mark.parametrize("kinds", [("numpy", "numpy"), ("dask", "dask"), ("dask", "numpy")])
def test_edge_windows_use_the_covered_part(shifted_pair, min_fraction, kinds):
    reference, moving, mask = shifted_pair
    registration = Registration(shift=SHIFT)
    images = (
        (reference, moving)
        if kinds[0] == "numpy"
        else tuple(da.from_array(x, chunks=(9, 11)) for x in (reference, moving))
    )
    user = mask if kinds[1] == "numpy" else da.from_array(mask, chunks=(7, 13))
    out, _ = ncc_confidence(
        *images,
        radius=3,
        registration=registration,
        mask=user,
        min_fraction=min_fraction,
        fill_value=np.nan,
    )
    if kinds != ("numpy", "numpy"):
        assert isinstance(out, da.Array)
        out = out.compute()
    expected = expected_map(
        reference,
        moving,
        mask,
        registration,
        radius=3,
        min_fraction=min_fraction,
        fill_value=np.nan,
    )
    assert_same(out, expected)
    # Windows that reach the shifted-in band (rows < 3, columns >= 37) but are mostly
    # covered now hold a correlation; without a mask they are filled whole.
    plain, _ = ncc_confidence(
        reference, moving, radius=3, registration=registration, fill_value=np.nan
    )
    edge = np.s_[4:6, 10:30]
    assert np.isnan(plain[edge]).all()
    assert np.isfinite(out[edge]).all()


@pytest.mark.parametrize("lazy", [False, True])
def test_per_plane_registration_masks_each_plane(rng, lazy):
    drifts = [(0.0, 0.0), (1.5, -2.0), (-2.0, 3.0)]
    reference = ndimage.gaussian_filter(rng.random((3, 28, 30)), (0, 1, 1))
    moving = np.stack(
        [
            ndimage.shift(reference[t], [-d for d in drift], order=1)
            for t, drift in enumerate(drifts)
        ]
    ) + 0.05 * rng.random(reference.shape)
    registration = Registration(shift=(0, 0, 0), shifts=[(0, *d) for d in drifts], per_plane=0)
    mask = holes_and_dropouts(rng, reference.shape, dropout=0.1)
    images = [reference, moving]
    user = mask
    if lazy:
        images = [da.from_array(x, chunks=(2, 9, 8)) for x in images]
        user = da.from_array(mask, chunks=(1, 10, 30))
    out, _ = ncc_confidence(
        *images, radius=2, per_plane=0, registration=registration, mask=user, fill_value=np.nan
    )
    expected = expected_map(
        reference, moving, mask, registration, radius=2, axes=(1, 2), fill_value=np.nan
    )
    assert_same(out.compute() if lazy else out, expected)


def test_mask_without_registration(shifted_pair):
    reference, moving, mask = shifted_pair
    out, registration = ncc_confidence(reference, moving, register=False, mask=mask, radius=2)
    assert registration is None
    expected, _ = brute_force_masked_ncc(reference, moving, mask, 2)
    assert_same(out, expected)


def test_mask_errors_before_registering(shifted_pair):
    reference, moving, mask = shifted_pair
    with pytest.raises(ValueError, match="mask must have the images' shape"):
        ncc_confidence(reference, moving, mask=mask[:-1])
    with pytest.raises(TypeError, match="mask must be a boolean array"):
        ncc_confidence(reference, moving, mask=mask.astype(np.uint8))
    with pytest.raises(ValueError, match=r"min_fraction must be in \(0, 1\]"):
        ncc_confidence(reference, moving, mask=mask, min_fraction=0)


def test_write_ncc_with_a_mask_file(tmp_path, shifted_pair):
    import tifffile

    reference, moving, mask = shifted_pair
    registration = Registration(shift=SHIFT)
    labels = np.where(mask, 7, 0).astype(np.uint16)  # labels: non-zero is data
    tifffile.imwrite(tmp_path / "mask.tif", labels)
    out = write_ncc(
        reference,
        moving,
        tmp_path / "ncc.zarr",
        radius=3,
        registration=registration,
        mask=tmp_path / "mask.tif",
        min_fraction=0.4,
        fill_value=np.nan,
        progress=False,
    )
    (ncc,), meta = read_image(out)
    expected = expected_map(
        reference, moving, mask, registration, radius=3, min_fraction=0.4, fill_value=np.nan
    )
    assert_same(ncc.compute(), expected)
    assert meta["napari_ncc"]["mask"] == str(tmp_path / "mask.tif")
    assert meta["napari_ncc"]["min_fraction"] == 0.4


def test_pyramid_levels_use_the_mask_sampled_at_their_centres(shifted_pair):
    from napari_ncc._multiscale import mask_level, ncc_levels

    reference, moving, mask = shifted_pair
    pyramids = [
        [da.from_array(x), da.from_array(np.ascontiguousarray(x[::2, ::2]))]
        for x in (reference, moving)
    ]
    levels = ncc_levels(*pyramids, radius=2, mask=mask, min_fraction=0.4, fill_value=np.nan)
    assert len(levels) == 2
    expected0, _ = brute_force_masked_ncc(
        reference, moving, mask, 2, min_fraction=0.4, fill_value=np.nan
    )
    assert_same(levels[0].compute(), expected0)
    # Each coarse centre lies between 2 x 2 pixels: the tie goes to the last of them.
    coarse = mask[1::2, 1::2]
    np.testing.assert_array_equal(np.asarray(mask_level(mask, coarse.shape)), coarse)
    expected1, _ = brute_force_masked_ncc(
        reference[::2, ::2], moving[::2, ::2], coarse, 2, min_fraction=0.4, fill_value=np.nan
    )
    assert_same(levels[1].compute(), expected1)
