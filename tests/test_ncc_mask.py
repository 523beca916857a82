"""Masked local NCC (issue 15, core): windows count only the pixels where the mask is true.

Every map is checked against the brute-force masked Pearson correlation of
``tests/reference.py`` (per window, only its true pixels, in float64); windows with too few
true pixels, or whose true values are all equal, must hold exactly ``fill_value``.
"""

from __future__ import annotations

import math

import hypothesis.extra.numpy as hnp
import hypothesis.strategies as st
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings

from napari_ncc._borders import border_index_map
from napari_ncc._ncc import check_mask, local_ncc, ncc_block, plan_ncc
from reference import brute_force_masked_ncc, correlated_pair

ATOL = 1e-4
MODES = ("reflect", "mirror", "nearest", "wrap", "constant", "grid-wrap", "grid-mirror")
ENGINES = ("compiled", "numpy")


def holes_and_dropouts(rng, shape, dropout=0.2):
    """A mask with a rectangular hole, a masked-off band along the first axis, and dropouts."""
    mask = rng.random(shape) >= dropout
    hole = tuple(slice(n // 3, n // 3 + max(1, n // 4)) for n in shape)
    mask[hole] = False
    mask[(slice(0, max(1, shape[0] // 6)),)] = False
    return mask


def full_maps(plan):
    return [
        border_index_map(plan.shape[ax], 0, plan.shape[ax], r, plan.mode)
        for ax, r in zip(plan.axes, plan.radius, strict=True)
    ]


def assert_matches_masked_reference(result, image0, image1, mask, radius, **kwargs):
    """`result` equals the masked brute force to ATOL, and exactly fill_value where it fills."""
    fill_value = kwargs.get("fill_value", 0.0)
    assert result.dtype == np.float32
    assert result.shape == np.shape(image0)
    expected, _ = brute_force_masked_ncc(image0, image1, mask, radius, **kwargs)
    filled = np.isnan(expected) if np.isnan(fill_value) else expected == fill_value
    # Where the reference computes a value, it is not fill_value (the data are random).
    if np.isnan(fill_value):
        np.testing.assert_array_equal(np.isnan(result), filled, err_msg="fill exactly there")
    else:
        got = result[filled]
        assert np.all(got == fill_value), f"fill windows hold {np.unique(got)}"
        assert not np.any((result == fill_value) & ~filled & (np.abs(expected) < 1.0 - ATOL))
    values = result[~filled].astype(np.float64)
    assert np.all(np.isfinite(values))
    error = np.abs(values - expected[~filled])
    assert error.max(initial=0.0) <= ATOL, (
        f"max |ncc - reference| = {error.max():.3g} at {np.argwhere(~filled)[error.argmax()]} "
        f"(shape {np.shape(image0)}, radius {radius}, {kwargs})"
    )


# --- against the reference ----------------------------------------------------------------

CASES = [
    # (shape, radius, axes)
    ((41,), 3, None),
    ((23, 29), 1, None),
    ((23, 29), 3, None),
    ((23, 29), (1, 4), None),
    ((23, 29), (4, 0), None),
    ((5, 17, 19), 2, (-2, -1)),
    ((9, 10, 11), (1, 2, 3), None),
    ((6, 13, 12), 3, (1,)),
    ((3, 4, 5, 6), 1, None),
]


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize("window", ["box", "gaussian"])
@pytest.mark.parametrize(("shape", "radius", "axes"), CASES)
def test_matches_reference(rng, shape, radius, axes, window, engine):
    a, b = correlated_pair(rng, shape)
    mask = holes_and_dropouts(rng, shape)
    plan = plan_ncc(shape, shape, radius, window=window, axes=axes, fill_value=7.0)
    result = ncc_block(a, b, plan, full_maps(plan), mask=mask, engine=engine)
    assert_matches_masked_reference(
        result, a, b, mask, radius, window=window, axes=axes, fill_value=7.0
    )


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize(("shape", "radius"), [((19, 22), (3, 2)), ((7, 8, 9), 2)])
def test_border_modes_read_the_mask_like_the_images(rng, shape, radius, mode, engine):
    a, b = correlated_pair(rng, shape)
    mask = rng.random(shape) > 0.3
    mask[..., :2] = False  # windows at the left edge see the reflected/wrapped/... mask
    plan = plan_ncc(shape, shape, radius, mode=mode, fill_value=np.nan)
    result = ncc_block(a, b, plan, full_maps(plan), mask=mask, engine=engine)
    assert_matches_masked_reference(result, a, b, mask, radius, mode=mode, fill_value=np.nan)


@pytest.mark.parametrize("min_fraction", [0.1, 0.2, 0.5, 0.7, 1.0])
@pytest.mark.parametrize("window", ["box", "gaussian"])
def test_min_fraction(rng, min_fraction, window):
    a, b = correlated_pair(rng, (30, 31))
    mask = rng.random(a.shape) > np.linspace(0.0, 1.0, a.shape[1])  # fewer true to the right
    result = local_ncc(
        a, b, 2, window=window, mask=mask, min_fraction=min_fraction, fill_value=np.nan
    )
    kwargs = {"window": window, "min_fraction": min_fraction, "fill_value": np.nan}
    assert_matches_masked_reference(result, a, b, mask, 2, **kwargs)
    if window == "box":
        # 5x5 windows with just enough true pixels (3, 5, 13, 18 or 25) are computed.
        _, count = brute_force_masked_ncc(a, b, mask, 2, **kwargs)
        least = math.ceil(min_fraction * 25 - 1e-9)
        assert np.isfinite(result[count == least]).any()
        assert np.isnan(result[count < least]).all()


@pytest.mark.parametrize(
    "dtype", [np.bool_, np.uint8, np.int16, np.uint16, np.int32, np.float16, np.float32]
)
@pytest.mark.parametrize("engine", ENGINES)
def test_dtypes(rng, dtype, engine):
    a, b = correlated_pair(rng, (21, 24), dtype)
    mask = holes_and_dropouts(rng, a.shape)
    plan = plan_ncc(a.shape, b.shape, 2, fill_value=np.nan)
    result = ncc_block(a, b, plan, full_maps(plan), mask=mask, engine=engine)
    assert_matches_masked_reference(result, a, b, mask, 2, fill_value=np.nan)


@pytest.mark.parametrize("dtype", [np.uint16, np.int16])
def test_integers_with_an_offset_are_exact(rng, dtype):
    """16-bit data far from 0 with small local changes: flat true pixels are exactly flat."""
    base = 30000 if dtype == np.uint16 else -30000
    a = (base + rng.integers(-3, 4, (40, 40))).astype(dtype)
    b = (a.astype(np.int64) + rng.integers(-1, 2, a.shape)).astype(dtype)
    a[10:20, 10:20] = base + 1  # flat where true; garbage in the masked-off pixels
    mask = rng.random(a.shape) > 0.3
    a[10:20, 10:20][~mask[10:20, 10:20]] = 60000 if dtype == np.uint16 else 30000
    result = local_ncc(a, b, 3, mask=mask, fill_value=np.nan)
    assert np.isnan(result[13:17, 13:17]).all()
    assert_matches_masked_reference(result, a, b, mask, 3, fill_value=np.nan)


# --- masked-off pixels change nothing -----------------------------------------------------


@pytest.mark.parametrize("garbage", [1e4, 1e12, -1e12, np.nan, np.inf])
@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize(
    ("shape", "radius", "window"),
    [((30, 33), 3, "box"), ((30, 33), 2, "gaussian"), ((8, 9, 10), 2, "box"), ((50,), 4, "box")],
)
def test_garbage_under_the_mask_changes_nothing(rng, garbage, engine, shape, radius, window):
    a, b = correlated_pair(rng, shape, np.float32)
    a[(slice(0, 6),) * a.ndim] = 3.0  # a flat patch: its floor must not grow with garbage
    b *= 1e-3  # small values: the centring must not come from the garbage either
    mask = holes_and_dropouts(rng, shape)
    plan = plan_ncc(shape, shape, radius, window=window, fill_value=np.nan)
    clean = ncc_block(a, b, plan, full_maps(plan), mask=mask, engine=engine)
    dirty_a, dirty_b = a.copy(), b.copy()
    dirty_a[~mask] = garbage
    dirty_b[~mask] = -garbage
    dirty = ncc_block(dirty_a, dirty_b, plan, full_maps(plan), mask=mask, engine=engine)
    # Masked-off pixels are replaced by 0 before any arithmetic: bit for bit the same map.
    np.testing.assert_array_equal(dirty, clean)
    assert_matches_masked_reference(dirty, a, b, mask, radius, window=window, fill_value=np.nan)


def test_garbage_under_the_mask_of_a_large_image(rng):
    """Over 2**20 pixels the value range is read in threaded pieces: masked-off NaN still
    changes nothing, and a NaN where the mask is true is still found."""
    a, b = correlated_pair(rng, (1100, 1000), np.float32)
    mask = holes_and_dropouts(rng, a.shape)
    plan = plan_ncc(a.shape, b.shape, 3, fill_value=np.nan)
    clean = ncc_block(a, b, plan, full_maps(plan), mask=mask, n_threads=3)
    a[~mask] = np.nan
    b[~mask] = 1e12
    dirty = ncc_block(a, b, plan, full_maps(plan), mask=mask, n_threads=3)
    np.testing.assert_array_equal(dirty, clean)
    assert np.isfinite(dirty[600:, 600:]).mean() > 0.9
    mask[~np.isfinite(a)] = True
    with pytest.raises(ValueError, match=r"reference contains \d+ NaN or infinite values where"):
        ncc_block(a, b, plan, full_maps(plan), mask=mask, n_threads=3)


def test_nan_where_the_mask_is_true_is_an_error(rng):
    a, b = correlated_pair(rng, (12, 12))
    mask = np.ones(a.shape, bool)
    a[3, 4] = np.nan
    mask[5, 5] = False
    a[5, 5] = np.inf  # masked off: not counted
    with pytest.raises(ValueError, match="reference contains 1 NaN or infinite values where the"):
        local_ncc(a, b, 2, mask=mask)
    mask[3, 4] = False
    assert np.isfinite(local_ncc(a, b, 2, mask=mask)).all()


def test_flat_floor_comes_from_the_true_pixels(rng):
    """A window of small variance stays a correlation however large the masked-off values."""
    a, b = correlated_pair(rng, (24, 24))
    # std ~3e-4, above the floor of the true pixels (1e-6 of a's half-range of 50)
    a[8:16, 8:16] = 5.0 + 1e-3 * rng.random((8, 8))
    b[8:16, 8:16] = a[8:16, 8:16] * 2
    mask = np.ones(a.shape, bool)
    mask[:, :4] = False
    a[:, :4] = 1e9  # would put the floor (1e-6 of the half-range) at ~500 if it were counted
    result = local_ncc(a, b, 2, mask=mask, fill_value=np.nan)
    np.testing.assert_allclose(result[10:14, 10:14], 1.0, atol=1e-3)


def test_empty_and_all_false_masks(rng):
    a, b = correlated_pair(rng, (15, 16))
    none = np.zeros(a.shape, bool)
    assert np.isnan(local_ncc(a, b, 2, mask=none, fill_value=np.nan)).all()
    # mode="constant": the border is data (zeros), but one value is flat: fill everywhere.
    result = local_ncc(a, b, 2, mask=none, mode="constant", fill_value=np.nan, min_fraction=0.1)
    assert np.isnan(result).all()


# --- an all-true mask is the unmasked map --------------------------------------------------


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize("mode", ["reflect", "mirror", "nearest", "wrap", "constant"])
@pytest.mark.parametrize("window", ["box", "gaussian"])
@pytest.mark.parametrize(
    ("shape", "radius", "axes", "dtype"),
    [
        ((37,), 4, None, np.float64),
        ((20, 21), (2, 3), None, np.float32),
        ((20, 21), 2, None, np.uint16),
        ((4, 11, 12), 2, (1, 2), np.int32),
        ((7, 8, 9), (1, 2, 1), None, np.float64),
    ],
)
def test_all_true_mask_is_the_unmasked_map(rng, shape, radius, axes, dtype, window, mode, engine):
    a, b = correlated_pair(rng, shape, dtype)
    a[(slice(0, 3),) * a.ndim] = 3  # flat windows: the same fill in both
    plan = plan_ncc(shape, shape, radius, window=window, mode=mode, axes=axes, fill_value=9.0)
    unmasked = ncc_block(a, b, plan, full_maps(plan), engine=engine)
    masked = ncc_block(a, b, plan, full_maps(plan), mask=np.ones(shape, bool), engine=engine)
    np.testing.assert_array_equal(masked == 9.0, unmasked == 9.0)
    np.testing.assert_allclose(masked, unmasked, atol=1e-6)


# --- blocks and threads (what the lazy layer relies on) -----------------------------------


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize("mode", ["reflect", "wrap", "constant"])
def test_ncc_block_of_a_sub_block(rng, engine, mode):
    """A block and its halo, read through index maps, give that part of the whole map."""
    a, b = correlated_pair(rng, (30, 27))
    mask = holes_and_dropouts(rng, a.shape)
    plan = plan_ncc(a.shape, b.shape, (3, 2), mode=mode, fill_value=np.nan)
    maps = [border_index_map(30, 5, 17, 3, plan.mode), border_index_map(27, 20, 27, 2, plan.mode)]
    result = ncc_block(a, b, plan, maps, mask=mask, engine=engine)
    expected, _ = brute_force_masked_ncc(a, b, mask, (3, 2), mode=mode, fill_value=np.nan)
    np.testing.assert_allclose(result, expected[5:17, 20:27], atol=ATOL)


@pytest.mark.parametrize("n_threads", [2, 5])
@pytest.mark.parametrize(
    ("shape", "radius", "axes"),
    [
        ((45, 23), 4, None),
        ((3, 20, 9), 3, (1, 2)),
        ((11, 8, 7), (2, 1, 3), None),
        ((4, 30), 2, (1,)),
    ],
)
def test_threads(rng, n_threads, shape, radius, axes):
    """Strips of a plane, of a stack of planes, of a volume and of rows, one per thread."""
    a, b = correlated_pair(rng, shape)
    mask = holes_and_dropouts(rng, shape)
    plan = plan_ncc(shape, shape, radius, axes=axes, fill_value=np.nan)
    result = ncc_block(a, b, plan, full_maps(plan), mask=mask, n_threads=n_threads)
    assert_matches_masked_reference(result, a, b, mask, radius, axes=axes, fill_value=np.nan)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    data=st.data(),
    shape=st.sampled_from([(9,), (6, 7), (12, 5), (4, 5, 6)]),
    mode=st.sampled_from(MODES),
    min_fraction=st.sampled_from([0.05, 0.3, 0.5, 0.9, 1.0]),
)
def test_random_masks_match_reference(data, shape, mode, min_fraction):
    """Quantised data (so flat means equal), any mask, against the reference."""
    radius = data.draw(st.integers(1, min(shape) - 1))
    a = data.draw(hnp.arrays(np.int64, shape, elements=st.integers(-3, 3))) * 0.5
    b = data.draw(hnp.arrays(np.int64, shape, elements=st.integers(-3, 3))) * 0.5
    mask = data.draw(hnp.arrays(np.bool_, shape))
    result = local_ncc(
        a, b, radius, mode=mode, mask=mask, min_fraction=min_fraction, fill_value=np.nan
    )
    kwargs = {"mode": mode, "min_fraction": min_fraction, "fill_value": np.nan}
    assert_matches_masked_reference(result, a, b, mask, radius, **kwargs)


# --- bad input ----------------------------------------------------------------------------


@pytest.mark.parametrize("min_fraction", [0, 0.0, -0.1, 1.5, np.nan, np.inf])
def test_min_fraction_out_of_range(min_fraction):
    with pytest.raises(ValueError, match=r"min_fraction must be in \(0, 1\]"):
        plan_ncc((8, 8), (8, 8), 1, min_fraction=min_fraction)


@pytest.mark.parametrize("min_fraction", [True, "0.5", None])
def test_min_fraction_not_a_number(min_fraction):
    with pytest.raises(TypeError, match="min_fraction must be a real number"):
        local_ncc(np.ones((8, 8)), np.ones((8, 8)), 1, min_fraction=min_fraction)


def test_mask_of_the_wrong_shape():
    image = np.ones((8, 9))
    with pytest.raises(
        ValueError, match=r"mask must have the images' shape \(8, 9\), got \(9, 8\)"
    ):
        local_ncc(image, image, 1, mask=np.ones((9, 8), bool))
    plan = plan_ncc(image.shape, image.shape, 1)
    with pytest.raises(ValueError, match="mask must have the images' shape"):
        ncc_block(image, image, plan, full_maps(plan), mask=np.ones((8, 8), bool))


@pytest.mark.parametrize("dtype", [np.uint8, np.int64, np.float32])
def test_mask_that_is_not_boolean(dtype):
    image = np.ones((8, 9))
    with pytest.raises(
        TypeError, match=f"mask must be a boolean array .*got dtype {np.dtype(dtype)}; convert"
    ):
        local_ncc(image, image, 1, mask=np.ones((8, 9), dtype))


def test_check_mask_reads_only_shape_and_dtype():
    da = pytest.importorskip("dask.array")
    check_mask(da.ones((8, 9), dtype=bool, chunks=4), (8, 9))
    with pytest.raises(TypeError, match="mask must be a boolean array, got int"):
        check_mask(3, (8, 9))


def test_inputs_are_not_modified(rng):
    a, b = correlated_pair(rng, (12, 13))
    mask = holes_and_dropouts(rng, a.shape)
    a[~mask] = np.nan
    copies = [x.copy() for x in (a, b, mask)]
    local_ncc(a, b, 2, mask=mask)
    for x, y in zip((a, b, mask), copies, strict=True):
        np.testing.assert_array_equal(x, y)
