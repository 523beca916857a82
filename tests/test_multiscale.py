"""Multiscale NCC levels and the pyramid cache (pure Dask, no viewer)."""

from __future__ import annotations

import dask.array as da
import numpy as np
import pytest
import zarr
from scipy import ndimage
from skimage import data

from napari_ncc import Registration
from napari_ncc import _multiscale as ms
from reference import brute_force_ncc


def _mean_2x2(image):
    h, w = image.shape[-2] // 2 * 2, image.shape[-1] // 2 * 2
    image = image[..., :h, :w].astype(np.float64)
    return image.reshape(*image.shape[:-2], h // 2, 2, w // 2, 2).mean(axis=(-3, -1))


@pytest.mark.parametrize("dtype", [np.uint16, np.float32])
def test_build_pyramid_reads_once_and_stores_2x2_means(tmp_path, rng, dtype, monkeypatch):
    monkeypatch.setattr(ms, "PYRAMID_MIN_SIDE", 100)
    monkeypatch.setattr(ms, "PYRAMID_CHUNK", 128)
    image = (rng.random((301, 450)) * 1000).astype(dtype)
    progress = []
    levels = ms.build_pyramid(
        da.from_array(image, chunks=100),
        tmp_path / "cache",
        progress=lambda done, total: progress.append((done, total)),
    )
    assert [level.shape for level in levels] == [(301, 450), (150, 225), (75, 112), (37, 56)]
    assert progress[-1][0] == progress[-1][1] == ms.pyramid_blocks(image.shape)
    expected = image.astype(np.float64)
    for level in levels[1:]:
        expected = _mean_2x2(expected if dtype == np.float32 else np.round(expected))
        if dtype == np.uint16:
            expected = np.round(expected)
        np.testing.assert_allclose(level.compute(), expected, rtol=1e-6)
        assert level.dtype == dtype
    # Stored as zarr arrays under the directory, read back lazily.
    assert zarr.open_array(str(tmp_path / "cache" / "level1.zarr"), mode="r").shape == (150, 225)
    np.testing.assert_array_equal(image, np.asarray(levels[0]))


def test_ncc_levels_are_the_ncc_of_each_level_with_the_shift_scaled():
    full = data.camera().astype(np.float64)[100:356, 100:356]
    moving = ndimage.shift(data.camera().astype(np.float64), (4, -6), order=3)[100:356, 100:356]
    ref_levels = [da.from_array(full, chunks=64), da.from_array(_mean_2x2(full), chunks=64)]
    mov_levels = [da.from_array(moving, chunks=64), da.from_array(_mean_2x2(moving), chunks=64)]
    registration = Registration(shift=(-4.0, 6.0))
    levels = ms.ncc_levels(ref_levels, mov_levels, radius=2, registration=registration)
    assert all(isinstance(level, da.Array) for level in levels)
    for k, (ref, mov) in enumerate(zip(ref_levels, mov_levels, strict=True)):
        shift = np.array([-4.0, 6.0]) / 2**k
        registered = ndimage.shift(np.asarray(mov), shift, order=1, mode="nearest")
        expected = brute_force_ncc(np.asarray(ref), registered, 2)
        m = 8 // 2**k + 3  # away from the fill band
        np.testing.assert_allclose(
            np.asarray(levels[k])[m:-m, m:-m], expected[m:-m, m:-m], atol=1e-4
        )
    # Where the shift brought in pixels from outside moving (the first 6 columns, the last
    # 4 rows at level 0): the fill value, at every level.
    assert np.all(np.asarray(levels[0])[:, :6] == 0) and np.all(np.asarray(levels[0])[-4:] == 0)
    assert np.all(np.asarray(levels[1])[:, :3] == 0) and np.all(np.asarray(levels[1])[-2:] == 0)


def test_levels_too_small_for_the_window_are_dropped():
    image = da.from_array(np.random.default_rng(0).random((64, 64)), chunks=32)
    pyramid = [image, image[::4, ::4], image[::16, ::16], image[::32, ::32]]
    assert [lv.shape for lv in ms.ncc_levels(pyramid, pyramid, radius=3)] == [
        (64, 64),
        (16, 16),
        (4, 4),
    ]


def test_helpers():
    assert ms.rescaled(Registration(shift=(8.0, -4.0)), (4, 2)).shift == (2.0, -2.0)
    assert ms.rescaled(None, (2, 2)) is None
    assert ms.coarse_level([(8000, 8000), (4000, 4000), (1000, 1000)], max_side=1024) == 2
    assert ms.coarse_level([(8000, 8000), (4000, 4000)], max_side=1024) == 1
    assert ms.coarse_level([(50, 3000, 900)], max_side=1024, plane_axis=1) == 0
    assert ms.needs_pyramid((3, 5000, 100)) and not ms.needs_pyramid((5000, 100, 100))
    rgb = np.random.default_rng(1).integers(0, 255, (6, 5, 4), dtype=np.uint8)
    gray = ms.as_luminance(da.from_array(rgb, chunks=(3, 3, 4)))
    np.testing.assert_allclose(gray.compute(), rgb[..., :3] @ [0.2125, 0.7154, 0.0721], rtol=1e-5)
    with pytest.raises(ValueError, match="3 or 4 channels"):
        ms.as_luminance(da.zeros((4, 4, 2)))
