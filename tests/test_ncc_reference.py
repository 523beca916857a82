"""local_ncc and ncc_block against the brute-force float64 reference (tests/reference.py).

Every comparison is on random correlated data, to 1e-4; positions where a window is flat
(all its values equal) must hold exactly ``fill_value``, every other position a finite value.
"""

from __future__ import annotations

import numpy as np
import pytest
import scipy.ndimage as ndi

from napari_ncc import local_ncc
from napari_ncc._borders import border_index_map
from napari_ncc._ncc import ncc_block, plan_ncc
from reference import (
    PAD_MODES,
    brute_force_ncc,
    correlated_pair,
    flat_mask,
    gaussian_window_1d,
)

ATOL = 1e-4
MODES = tuple(PAD_MODES)  # the five scipy.ndimage modes and their grid-* aliases
WINDOWS = ("box", "gaussian")
DTYPES = (
    np.bool_,
    np.uint8,
    np.uint16,
    np.uint32,
    np.uint64,
    np.int8,
    np.int16,
    np.int32,
    np.int64,
    np.float16,
    np.float32,
    np.float64,
)


def assert_matches_reference(result, image0, image1, radius, **kwargs):
    """`result` equals the brute force to ATOL, and exactly fill_value on flat windows."""
    fill_value = kwargs.get("fill_value", 0.0)
    image0, image1 = np.asarray(image0), np.asarray(image1)
    assert isinstance(result, np.ndarray)
    assert result.dtype == np.float32
    assert result.shape == image0.shape
    expected = brute_force_ncc(image0, image1, radius, **kwargs)
    flat = flat_mask(
        image0, image1, radius, mode=kwargs.get("mode", "reflect"), axes=kwargs.get("axes")
    )
    if np.isnan(fill_value):
        np.testing.assert_array_equal(np.isnan(result), flat, err_msg="NaN exactly where flat")
    else:
        assert np.all(result[flat] == fill_value), (
            f"flat windows must hold exactly {fill_value}, got {np.unique(result[flat])}"
        )
    values = result[~flat]
    assert np.all(np.isfinite(values)), "non-flat windows must give finite values"
    assert np.all(np.abs(values) <= 1.0)
    error = np.abs(values.astype(np.float64) - expected[~flat])
    max_error = error.max(initial=0.0)
    assert max_error <= ATOL, (
        f"max |ncc - reference| = {max_error:.3g} at "
        f"{np.argwhere(~flat)[error.argmax()] if error.size else None} "
        f"(shape {image0.shape}, dtypes {image0.dtype}/{image1.dtype}, radius {radius}, {kwargs})"
    )


def full_maps(plan):
    return [
        border_index_map(plan.shape[ax], 0, plan.shape[ax], r, plan.mode)
        for ax, r in zip(plan.axes, plan.radius, strict=True)
    ]


# --- the reference itself, checked against scipy.ndimage's filters -------------------------


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("window", WINDOWS)
def test_reference_agrees_with_scipy_moment_filters(rng, mode, window):
    """The reference's np.pad mode mapping and weights match scipy.ndimage's own filters."""
    a, b = correlated_pair(rng, (13, 17))
    radius = (2, 3)
    ndi_mode = {"grid-mirror": "reflect", "grid-wrap": "grid-wrap"}.get(mode, mode)

    def smooth(x):
        for ax, r in zip((0, 1), radius, strict=True):
            w = np.full(2 * r + 1, 1 / (2 * r + 1)) if window == "box" else gaussian_window_1d(r)
            x = ndi.correlate1d(x, w, axis=ax, mode=ndi_mode, cval=0.0)
        return x

    ma, mb = smooth(a), smooth(b)
    cov = smooth(a * b) - ma * mb
    va = smooth(a * a) - ma * ma
    vb = smooth(b * b) - mb * mb
    expected = cov / np.sqrt(va * vb)
    got = brute_force_ncc(a, b, radius, window=window, mode=mode)
    np.testing.assert_allclose(got, expected, atol=1e-9)


def test_reference_gaussian_weights_follow_the_documented_sigma():
    w = gaussian_window_1d(4)
    assert w.shape == (9,)
    assert w.sum() == pytest.approx(1.0)
    # sigma = radius / 2 = 2: the weight two sigmas out is exp(-2) of the centre weight
    assert w[0] / w[4] == pytest.approx(np.exp(-2.0))
    assert w[2] / w[4] == pytest.approx(np.exp(-0.5))


# --- shapes, radii and axes -------------------------------------------------------------

SHAPE_CASES = [
    # (shape, radius, axes)
    ((7,), 1, None),
    ((29,), 6, None),
    ((2, 2), 1, None),
    ((2, 3), 1, None),
    ((3, 2), (2, 1), None),
    ((1, 9), (0, 3), None),
    ((1, 9), 3, (1,)),
    ((9, 1), 4, (0,)),
    ((9, 1), (4, 0), None),
    ((11, 1, 7), (2, 0, 3), None),
    ((17, 23), 1, None),
    ((17, 23), 4, None),
    ((16, 16), (1, 5), None),
    ((15, 31), (6, 2), None),
    ((5, 31), (4, 0), None),
    ((12, 10), 3, (0,)),
    ((12, 10), 3, (-1,)),
    ((6, 7, 8), 1, None),
    ((6, 7, 8), (1, 2, 3), None),
    ((5, 9, 11), 3, (-2, -1)),
    ((5, 9, 11), (2, 4), (0, 2)),
    ((8, 5, 6), 2, (0,)),
    ((5, 9, 11), (4, 2), (2, 1)),  # radii follow the order of `axes`
    ((3, 4, 5, 6), 1, None),
    ((3, 4, 5, 6), (1, 1, 2, 2), None),
    ((2, 3, 9, 10), (2, 4), (-2, -1)),
    ((3, 5, 4, 7), (2, 3), (1, 3)),
    ((4, 3, 3, 8), 2, (0,)),
]


@pytest.mark.parametrize("mode", ["reflect", "mirror", "nearest", "wrap", "constant"])
@pytest.mark.parametrize("window", WINDOWS)
@pytest.mark.parametrize(("shape", "radius", "axes"), SHAPE_CASES)
def test_shapes_radii_axes(rng, shape, radius, axes, window, mode):
    a, b = correlated_pair(rng, shape)
    result = local_ncc(a, b, radius=radius, window=window, mode=mode, axes=axes)
    assert_matches_reference(result, a, b, radius, window=window, mode=mode, axes=axes)


@pytest.mark.parametrize("radius", range(1, 8))
@pytest.mark.parametrize("window", WINDOWS)
@pytest.mark.parametrize("mode", ["reflect", "mirror", "wrap"])
def test_radii_1_to_7(rng, radius, window, mode):
    a, b = correlated_pair(rng, (19, 26))
    result = local_ncc(a, b, radius=radius, window=window, mode=mode)
    assert_matches_reference(result, a, b, radius, window=window, mode=mode)


@pytest.mark.parametrize("radius", [(1, 7), (7, 1), (3, 6), (0, 5), (5, 0), (7, 7)])
@pytest.mark.parametrize("window", WINDOWS)
def test_anisotropic_radii(rng, radius, window):
    a, b = correlated_pair(rng, (8, 15))
    a, b = np.tile(a, (2, 1)), np.tile(b, (2, 1))  # 16 x 15: room for r=7 on both axes
    result = local_ncc(a, b, radius=radius, window=window, mode="nearest")
    assert_matches_reference(result, a, b, radius, window=window, mode="nearest")


@pytest.mark.parametrize("radius", [1, 2, 4])
def test_radius_equal_to_axis_length_minus_one(rng, radius):
    """The largest allowed radius: every window overhangs both borders."""
    shape = (radius + 1, radius + 2)
    for mode in MODES:
        a, b = correlated_pair(rng, shape)
        result = local_ncc(a, b, radius=radius, mode=mode)
        assert_matches_reference(result, a, b, radius, mode=mode)


# --- modes, aliases and fill values -----------------------------------------------------


@pytest.mark.parametrize("fill_value", [0.0, np.nan, -2.0])
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("window", WINDOWS)
def test_every_mode_and_fill_value(rng, mode, window, fill_value):
    # Small integers make some windows flat, so the fill value is exercised too.
    a, b = correlated_pair(rng, (21, 18), np.uint8, lo=0, hi=2)
    a[:6, :7] = 1  # a flat corner
    result = local_ncc(a, b, radius=2, window=window, mode=mode, fill_value=fill_value)
    assert flat_mask(a, b, 2, mode=mode).any()
    assert_matches_reference(result, a, b, 2, window=window, mode=mode, fill_value=fill_value)


@pytest.mark.parametrize("mode", MODES)
def test_every_mode_3d(rng, mode):
    a, b = correlated_pair(rng, (6, 9, 7))
    result = local_ncc(a, b, radius=(1, 3, 2), mode=mode, fill_value=np.nan)
    assert_matches_reference(result, a, b, (1, 3, 2), mode=mode, fill_value=np.nan)


def test_constant_mode_pads_with_zero_not_the_data_range(rng):
    """Mode "constant" reads 0 beyond the border, even for data far away from 0."""
    a, b = correlated_pair(rng, (15, 14), lo=500.0, hi=510.0)
    result = local_ncc(a, b, radius=3, mode="constant")
    assert_matches_reference(result, a, b, 3, mode="constant")
    # Near the border, the zero padding dominates both windows: correlation close to 1.
    assert result[0, 0] > 0.99


# --- dtypes -----------------------------------------------------------------------------


@pytest.mark.parametrize("window", WINDOWS)
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
def test_dtypes(rng, dtype, window):
    a, b = correlated_pair(rng, (23, 19), dtype)
    result = local_ncc(a, b, radius=2, window=window, fill_value=np.nan)
    assert_matches_reference(result, a, b, 2, window=window, fill_value=np.nan)


@pytest.mark.parametrize(
    ("dtype", "lo", "hi"),
    [
        (np.uint32, 4_000_000_000, 4_000_000_500),
        (np.int32, -2_000_000_000, -1_999_999_000),
        (np.int64, 10**12, 10**12 + 1000),
        (np.int64, -(10**15), -(10**15) + 50),
        (np.uint64, 2**52, 2**52 + 100),
        (np.int16, -32768, 32767),
        (np.uint16, 0, 65535),
        (np.float64, 1e9, 1e9 + 1),
    ],
)
def test_large_integer_offsets(rng, dtype, lo, hi):
    a, b = correlated_pair(rng, (17, 21), dtype, lo=lo, hi=hi)
    for window in WINDOWS:
        result = local_ncc(a, b, radius=3, window=window)
        assert_matches_reference(result, a, b, 3, window=window)


@pytest.mark.parametrize(
    ("dtype0", "dtype1"),
    [(np.uint8, np.float32), (np.bool_, np.int16), (np.uint16, np.float64), (np.int8, np.uint8)],
)
def test_mixed_dtypes(rng, dtype0, dtype1):
    a, _ = correlated_pair(rng, (16, 20), dtype0)
    _, b = correlated_pair(rng, (16, 20), dtype1)
    for window in WINDOWS:
        result = local_ncc(a, b, radius=2, window=window)
        assert_matches_reference(result, a, b, 2, window=window)


@pytest.mark.parametrize("dtype", [">f4", ">f8", ">u2", ">i4", "<f4"])
@pytest.mark.parametrize("window", WINDOWS)
def test_non_native_byte_order(rng, dtype, window):
    """Big-endian data (FITS files, some TIFFs) is a real numeric dtype like any other."""
    a, b = correlated_pair(rng, (14, 13), np.dtype(dtype).newbyteorder("="))
    a, b = a.astype(dtype), b.astype(dtype)
    result = local_ncc(a, b, radius=2, window=window)
    assert_matches_reference(result, a, b, 2, window=window)


def test_python_lists_are_accepted(rng):
    a, b = correlated_pair(rng, (9, 8))
    result = local_ncc(a.tolist(), b.tolist(), radius=2)
    assert_matches_reference(result, a, b, 2)


# --- the compiled engine and the NumPy fallback ----------------------------------------

ENGINE_CASES = [
    ((31,), 3, None),
    ((18, 21), 2, None),
    ((18, 21), (4, 1), None),
    ((6, 13, 12), 2, (-2, -1)),
    ((6, 13, 12), 3, (1,)),
    ((5, 6, 7), (1, 2, 3), None),
    ((3, 4, 5, 6), (1, 2, 1, 2), None),
]


@pytest.mark.parametrize("engine", ["compiled", "numpy"])
@pytest.mark.parametrize("mode", ["reflect", "mirror", "nearest", "wrap", "constant"])
@pytest.mark.parametrize("window", WINDOWS)
@pytest.mark.parametrize(("shape", "radius", "axes"), ENGINE_CASES)
def test_engines(rng, shape, radius, axes, window, mode, engine):
    a, b = correlated_pair(rng, shape)
    a[(slice(0, 2),) * a.ndim] = 3.0  # a flat corner in image0
    plan = plan_ncc(a.shape, b.shape, radius, window=window, mode=mode, axes=axes, fill_value=7)
    result = ncc_block(a, b, plan, full_maps(plan), engine=engine)
    assert_matches_reference(
        result, a, b, radius, window=window, mode=mode, axes=axes, fill_value=7.0
    )


@pytest.mark.parametrize("engine", ["compiled", "numpy"])
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
def test_engines_dtypes(rng, dtype, engine):
    a, b = correlated_pair(rng, (14, 15), dtype)
    for window in WINDOWS:
        plan = plan_ncc(a.shape, b.shape, 2, window=window, fill_value=np.nan)
        result = ncc_block(a, b, plan, full_maps(plan), engine=engine)
        assert_matches_reference(result, a, b, 2, window=window, fill_value=np.nan)


@pytest.mark.parametrize("engine", ["compiled", "numpy"])
@pytest.mark.parametrize("mode", ["reflect", "wrap", "constant"])
def test_ncc_block_of_a_sub_block(rng, engine, mode):
    """Index maps that cover output rows/cols start..stop of the whole image."""
    a, b = correlated_pair(rng, (30, 27))
    plan = plan_ncc(a.shape, b.shape, (3, 2), mode=mode)
    maps = [
        border_index_map(30, 5, 17, 3, plan.mode),
        border_index_map(27, 20, 27, 2, plan.mode),
    ]
    result = ncc_block(a, b, plan, maps, engine=engine)
    expected = brute_force_ncc(a, b, (3, 2), mode=mode)[5:17, 20:27]
    assert result.shape == (12, 7)
    np.testing.assert_allclose(result, expected, atol=ATOL)


@pytest.mark.parametrize("n_threads", [2, 3, 7])
@pytest.mark.parametrize("window", WINDOWS)
def test_ncc_block_threads(rng, n_threads, window):
    """Several strips (one per thread) of a single plane and of a stack of planes."""
    a, b = correlated_pair(rng, (45, 23))
    plan = plan_ncc(a.shape, b.shape, 4, window=window)
    result = ncc_block(a, b, plan, full_maps(plan), n_threads=n_threads)
    assert_matches_reference(result, a, b, 4, window=window)

    a, b = correlated_pair(rng, (2, 20, 9))
    plan = plan_ncc(a.shape, b.shape, 3, window=window, axes=(1, 2))
    result = ncc_block(a, b, plan, full_maps(plan), n_threads=n_threads)
    assert_matches_reference(result, a, b, 3, window=window, axes=(1, 2))

    a, b = correlated_pair(rng, (11, 8, 7))
    plan = plan_ncc(a.shape, b.shape, (2, 1, 3), window=window)
    result = ncc_block(a, b, plan, full_maps(plan), n_threads=n_threads)
    assert_matches_reference(result, a, b, (2, 1, 3), window=window)

    a, b = correlated_pair(rng, (2, 9, 3, 6))
    plan = plan_ncc(a.shape, b.shape, 1, window=window, axes=(1, 2, 3))
    result = ncc_block(a, b, plan, full_maps(plan), n_threads=n_threads)
    assert_matches_reference(result, a, b, 1, window=window, axes=(1, 2, 3))


# --- precision --------------------------------------------------------------------------


@pytest.mark.parametrize(("offset", "spread"), [(30000, 10), (60000, 3), (65530, 5)])
@pytest.mark.parametrize("dtype", [np.uint16, np.float32, np.float64, np.int32])
@pytest.mark.parametrize("window", WINDOWS)
def test_large_offset_small_variance(rng, offset, spread, dtype, window):
    """Microscopy-like data: naive float32 moments fail here by orders of magnitude."""
    a, b = correlated_pair(rng, (40, 37), dtype, lo=offset - spread, hi=offset + spread)
    for radius in (1, 3, 7):
        result = local_ncc(a, b, radius=radius, window=window)
        assert_matches_reference(result, a, b, radius, window=window)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_large_offset_non_integer_float(rng, dtype):
    """Float data with an offset and a sub-unit local variance (not integer valued)."""
    for offset, spread in ((30000.0, 10.0), (60000.0, 3.0), (1e4, 0.05)):
        a, b = correlated_pair(rng, (33, 29), np.float64, lo=-spread, hi=spread)
        a, b = (a + offset).astype(dtype), (b + offset).astype(dtype)
        for window in WINDOWS:
            result = local_ncc(a, b, radius=3, window=window)
            assert_matches_reference(result, a, b, 3, window=window)


@pytest.mark.parametrize("fill_value", [0.0, np.nan])
@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.uint16, np.int32])
@pytest.mark.parametrize("window", WINDOWS)
def test_flat_background_next_to_bright_texture(rng, dtype, window, fill_value):
    """Windows inside a flat zero background hold exactly fill_value, never NaN or inf."""
    shape = (40, 50)
    texture0, texture1 = correlated_pair(rng, shape, np.float64, lo=800.0, hi=4000.0)
    a = np.zeros(shape)
    b = np.zeros(shape)
    a[:, 25:] = texture0[:, 25:]
    b[:, 20:] = texture1[:, 20:]
    b[30:, :] = 0.0
    a, b = a.astype(dtype), b.astype(dtype)
    for radius in (1, 4, (2, 7)):
        for mode in ("reflect", "constant", "wrap"):
            result = local_ncc(
                a, b, radius=radius, window=window, mode=mode, fill_value=fill_value
            )
            flat = flat_mask(a, b, radius, mode=mode)
            assert flat[:, 8:12].all()  # deep in the background, whatever the mode
            assert_matches_reference(
                result, a, b, radius, window=window, mode=mode, fill_value=fill_value
            )


@pytest.mark.parametrize("window", WINDOWS)
@pytest.mark.parametrize("mode", ["reflect", "constant"])
def test_near_flat_windows_relative_to_the_range(rng, window, mode):
    """Documented floor: a window whose std is below 1e-6 of the image's half-range is flat.

    A texture of amplitude 1e-7 next to one of amplitude 1000 is flat (fill_value); one of
    amplitude 0.1 is not, and is exact.
    """
    a = np.zeros((30, 40))
    a[:, 20:] = rng.random((30, 20)) * 1000
    a[:, :20] += rng.random((30, 20)) * 1e-7
    b = rng.random((30, 40))
    kwargs = {"window": window, "mode": mode, "fill_value": np.nan}
    result = local_ncc(a, b, radius=2, **kwargs)
    assert np.isnan(result[:, :17]).all()
    expected = brute_force_ncc(a, b, 2, flat_rtol=1e-6, **kwargs)
    np.testing.assert_allclose(result, expected, atol=ATOL)

    a[:, :20] = rng.random((30, 20)) * 0.1
    assert_matches_reference(local_ncc(a, b, radius=2, **kwargs), a, b, 2, **kwargs)


@pytest.mark.parametrize("radius", [1, 2, (1, 3)])
@pytest.mark.parametrize("dtype", [np.uint16, np.float32, np.float64])
@pytest.mark.parametrize("window", WINDOWS)
def test_dim_binary_noise_next_to_a_hot_pixel(rng, dtype, window, radius):
    """Worst realistic case for the accuracy: photon-counting-like noise (100 or 101) in an
    image whose range is set by one hot pixel at 65535, so the local std is only ~3 to 300
    times the flat floor. Still within 1e-4, and no window wrongly flat."""
    a = 100 + rng.integers(0, 2, (240, 150))
    b = 100 + rng.integers(0, 2, (240, 150))
    keep = rng.random(a.shape) < 0.5
    b[keep] = a[keep]
    a[0, 0] = b[-1, -1] = 65535
    a, b = a.astype(dtype), b.astype(dtype)
    result = local_ncc(a, b, radius=radius, window=window, fill_value=np.nan)
    assert_matches_reference(result, a, b, radius, window=window, fill_value=np.nan)


@pytest.mark.parametrize("dtype", [np.uint16, np.float32])
@pytest.mark.parametrize("level", [0, 1, 30000, 65535])
def test_flat_level_with_large_windows(rng, dtype, level):
    """Flat windows at any level, also where exact integer sums get large (r=15, 3D r=4)."""
    a = np.full((40, 70), level, dtype=dtype)
    a[:, 50:] = rng.integers(0, 65536, (40, 20))
    b = a.copy()
    b[:, 55:] = rng.integers(0, 65536, (40, 15))
    for radius in (1, 7, (15, 11)):
        result = local_ncc(a, b, radius=radius, fill_value=np.nan)
        assert np.isnan(result[:, : 50 - 2 * 15 - 1]).all()
        assert_matches_reference(result, a, b, radius, fill_value=np.nan)
    a3 = np.full((10, 12, 14), level, dtype=dtype)
    a3[..., 12:] = rng.integers(0, 65536, (10, 12, 2))
    result = local_ncc(a3, a3, radius=4, fill_value=np.nan)
    assert np.isnan(result[..., :3]).all()
    assert_matches_reference(result, a3, a3, 4, fill_value=np.nan)


@pytest.mark.parametrize("engine", ["compiled", "numpy"])
@pytest.mark.parametrize(
    ("shape", "radius", "level"),
    [
        ((30, 46), (13, 13), 50001),
        ((22, 46), (9, 21), 49999),
        ((30, 34), (13, 15), 60001),
        ((30, 30), (14, 14), 50001),
        ((10, 10, 10), 4, 50001),
        ((62, 62), (30, 30), 31047),
        ((62, 62), (30, 30), 21083),
    ],
)
def test_flat_uint16_windows_at_any_level_and_window_size(rng, shape, radius, level, engine):
    """A flat uint16 window is flat whatever its level: exactly fill_value, not a number.

    These levels and radii are ones where the core's flat test (variance from float64 sums
    of 16-bit integers against an absolute floor of 0.5 / n**2) misses flat windows.
    """
    a = np.full(shape, level, dtype=np.uint16)
    b = a.copy()
    b[(0,) * len(shape)] = level - 1  # image1 is not constant (windows touching the corner)
    plan = plan_ncc(a.shape, b.shape, radius, fill_value=np.nan)
    result = ncc_block(a, b, plan, full_maps(plan), engine=engine)
    assert np.isnan(result).all(), (
        f"{np.count_nonzero(~np.isnan(result))} flat windows got a value, e.g. "
        f"{result[~np.isnan(result)][:3]} (level {level}, radius {radius})"
    )
    a[(-1,) * len(shape)] = level + 1
    result = local_ncc(a, b, radius=radius, fill_value=np.nan)
    assert_matches_reference(result, a, b, radius, fill_value=np.nan)


# --- multithreaded strips of a tall image ------------------------------------------------


@pytest.mark.parametrize("window", WINDOWS)
@pytest.mark.parametrize("mode", ["reflect", "constant"])
def test_tall_image_split_into_strips(rng, window, mode):
    """A 4100-row image is computed in several strips (and threads); check around every
    possible strip boundary and both ends against the reference on crops."""
    height, width, radius = 4100, 37, (5, 3)
    ry = radius[0]
    a, b = correlated_pair(rng, (height, width), np.float32, lo=1000.0, hi=1200.0)
    result = local_ncc(a, b, radius=radius, window=window, mode=mode)
    assert result.shape == (height, width)
    assert np.isfinite(result).all()
    # Rows around any strip boundary a split into 2..8 strips (or 2048-row strips) could make,
    # and both ends of the image.
    centres = {0, height - 1, 2048, 4096}
    centres |= {round(height * k / n) for n in range(2, 9) for k in range(1, n)}
    for c in sorted(centres):
        lo, hi = max(c - 12, 0), min(c + 12, height)  # rows compared
        clo, chi = max(lo - ry, 0), min(hi + ry, height)  # rows their windows read
        expected = brute_force_ncc(a[clo:chi], b[clo:chi], radius, window=window, mode=mode)
        expected = expected[lo - clo : hi - clo]
        error = np.abs(result[lo:hi] - expected).max()
        assert error <= ATOL, f"rows {lo}:{hi}: max error {error:.3g}"


@pytest.mark.parametrize("window", WINDOWS)
def test_long_volume_split_into_strips(rng, window):
    """A volume with more than 2048 planes along its first windowed axis."""
    depth, radius = 4100, (2, 1, 1)
    a, b = correlated_pair(rng, (depth, 3, 4), np.uint16, lo=100, hi=160)
    result = local_ncc(a, b, radius=radius, window=window, fill_value=np.nan)
    for c in (0, 1367, 2048, 2050, 2733, 3075, depth - 1):
        lo, hi = max(c - 6, 0), min(c + 6, depth)
        clo, chi = max(lo - 2, 0), min(hi + 2, depth)
        expected = brute_force_ncc(
            a[clo:chi], b[clo:chi], radius, window=window, fill_value=np.nan
        )
        np.testing.assert_allclose(
            result[lo:hi], expected[lo - clo : hi - clo], atol=ATOL, err_msg=f"planes {lo}:{hi}"
        )


@pytest.mark.parametrize("mode", ["reflect", "wrap", "constant"])
def test_long_1d_signal(rng, mode):
    a, b = correlated_pair(rng, (5000,), np.int16)
    for window in WINDOWS:
        result = local_ncc(a, b, radius=7, window=window, mode=mode)
        assert_matches_reference(result, a, b, 7, window=window, mode=mode)


# --- inputs are never modified; any memory layout works ---------------------------------


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
def test_inputs_not_modified(rng, dtype):
    a, b = correlated_pair(rng, (12, 13), dtype)
    a0, b0 = a.copy(), b.copy()
    for window in WINDOWS:
        for mode in ("reflect", "constant"):
            local_ncc(a, b, radius=2, window=window, mode=mode)
            plan = plan_ncc(a.shape, b.shape, 2, window=window, mode=mode)
            ncc_block(a, b, plan, full_maps(plan), engine="numpy")
    np.testing.assert_array_equal(a, a0)
    np.testing.assert_array_equal(b, b0)
    assert a.dtype == a0.dtype and b.dtype == b0.dtype


def test_read_only_inputs(rng):
    a, b = correlated_pair(rng, (12, 13), np.uint16)
    a.setflags(write=False)
    b.setflags(write=False)
    for window in WINDOWS:
        assert_matches_reference(local_ncc(a, b, radius=2, window=window), a, b, 2, window=window)


LAYOUTS = {
    "strided": lambda x: x[::2, 1::3],
    "transposed": lambda x: x.T,
    "fortran": np.asfortranarray,
    "reversed": lambda x: x[::-1, ::-1],
    "column": lambda x: x[:, 3],
    "broadcast": lambda x: np.broadcast_to(x[:1] * 0 + x[:, :1], x.shape),
}


@pytest.mark.parametrize("layout", list(LAYOUTS))
@pytest.mark.parametrize("dtype", [np.float32, np.uint16, np.bool_, np.float16])
def test_views_and_memory_layouts(rng, layout, dtype):
    base0, base1 = correlated_pair(rng, (40, 33), dtype)
    a, b = LAYOUTS[layout](base0), LAYOUTS[layout](base1)
    copies = (base0.copy(), base1.copy())
    radius = 2 if a.ndim == 1 else (2, 3)
    for window in WINDOWS:
        result = local_ncc(a, b, radius=radius, window=window, fill_value=np.nan)
        assert_matches_reference(
            result,
            np.ascontiguousarray(a),
            np.ascontiguousarray(b),
            radius,
            window=window,
            fill_value=np.nan,
        )
    np.testing.assert_array_equal(base0, copies[0])
    np.testing.assert_array_equal(base1, copies[1])


def test_3d_views_through_windowed_axes(rng):
    base0, base1 = correlated_pair(rng, (7, 12, 10))
    a = base0.transpose(2, 0, 1)[:, ::2]
    b = np.asfortranarray(base1).transpose(2, 0, 1)[:, ::2]
    for axes in (None, (-2, -1), (0,)):
        result = local_ncc(a, b, radius=1, axes=axes)
        assert_matches_reference(result, np.ascontiguousarray(a), b.copy(), 1, axes=axes)
