"""Property tests of local_ncc (hypothesis): symmetries and invariances of a correlation.

The data are quantised (integers, or multiples of 0.01) in a bounded range. That is what makes
the invariance checks exact rather than approximate: a window either holds a single value
(flat, exactly ``fill_value``) or its standard deviation is at least ``0.01 / sqrt(n)``
-- orders of magnitude above the core's relative flat floor (``FLAT_RTOL = 1e-6`` of the
image's half-range) -- and both stay true after ``a * s + t``, which scales every standard
deviation and the half-range alike. So the set of flat windows is the same before and after
any transform, and each property is checked on all positions, flat ones included.
"""

from __future__ import annotations

import math
import os

import hypothesis.extra.numpy as hnp
import hypothesis.strategies as st
import numpy as np
from hypothesis import HealthCheck, given, settings

from napari_ncc import local_ncc
from napari_ncc._borders import border_index_map
from napari_ncc._ncc import ncc_block, plan_ncc
from reference import brute_force_ncc, flat_mask

MODES = ("reflect", "mirror", "nearest", "wrap", "constant", "grid-wrap", "grid-mirror")
#: Examples per property; raise it for a longer hunt, e.g. NCC_HYPOTHESIS_EXAMPLES=2000.
MAX_EXAMPLES = int(os.environ.get("NCC_HYPOTHESIS_EXAMPLES", "50"))
SETTINGS = settings(
    max_examples=MAX_EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
ATOL = 1e-4


@st.composite
def ncc_cases(draw, max_ndim: int = 3, max_size: int = 400):
    """Two quantised float64 images plus radius, axes, window and mode for local_ncc."""
    ndim = draw(st.integers(1, max_ndim))
    shape = tuple(
        draw(st.lists(st.integers(1, 14 if ndim <= 2 else 7), min_size=ndim, max_size=ndim))
    )
    while np.prod(shape) > max_size:
        shape = tuple(max(1, s - 1) for s in shape)
    if all(s == 1 for s in shape):
        shape = (*shape[:-1], draw(st.integers(2, 9)))
    candidates = [ax for ax in range(ndim) if shape[ax] >= 2]
    # A non-empty subset of axes, in any order, possibly negative; None means all of them.
    if draw(st.booleans()):
        axes = None
        windowed = list(range(ndim))
    else:
        windowed = draw(st.permutations(range(ndim)))[: draw(st.integers(1, ndim))]
        if not any(ax in candidates for ax in windowed):
            windowed = [*windowed, candidates[0]] if candidates[0] not in windowed else windowed
        axes = tuple(ax - ndim if draw(st.booleans()) else ax for ax in windowed)
    radius = [draw(st.integers(0, min(3, shape[ax] - 1))) for ax in windowed]
    if not any(radius):
        i = next(i for i, ax in enumerate(windowed) if shape[ax] >= 2)
        radius[i] = draw(st.integers(1, min(3, shape[windowed[i]] - 1)))
    if len(set(radius)) == 1 and draw(st.booleans()):
        radius = radius[0]
    else:
        radius = tuple(radius)

    step = draw(st.sampled_from([1.0, 0.01]))
    span = draw(st.sampled_from([1, 3, 20]))
    elements = st.integers(-span, span)
    # fill=nothing() draws every element (hypothesis otherwise favours constant arrays,
    # whose windows are all flat); the default still yields flat patches now and then.
    fill = draw(st.sampled_from([st.nothing(), None]))
    a = draw(hnp.arrays(np.int64, shape, elements=elements, fill=fill)) * step
    if draw(st.booleans()):
        b = draw(hnp.arrays(np.int64, shape, elements=elements, fill=fill)) * step
    else:  # correlated with a, up to a few quantised changes
        b = a * draw(st.sampled_from([1, -1, 2])) + draw(
            hnp.arrays(np.int64, shape, elements=st.integers(-1, 1))
        ) * step * draw(st.sampled_from([0, 1, 5]))
    kwargs = {
        "radius": radius,
        "axes": axes,
        "window": draw(st.sampled_from(["box", "gaussian"])),
        "mode": draw(st.sampled_from(MODES)),
    }
    return a, b, kwargs


def assert_same_map(got, expected, fill_value=0.0):
    """Equal to ATOL, with fill_value at exactly the same positions."""
    if np.isnan(fill_value):
        np.testing.assert_array_equal(np.isnan(got), np.isnan(expected))
    np.testing.assert_allclose(got, expected, atol=ATOL, rtol=0)


@SETTINGS
@given(ncc_cases(max_ndim=4))
def test_matches_brute_force(case):
    a, b, kwargs = case
    radius = kwargs.pop("radius")
    got = local_ncc(a, b, radius=radius, fill_value=np.nan, **kwargs)
    expected = brute_force_ncc(a, b, radius, fill_value=np.nan, **kwargs)
    assert_same_map(got, expected, np.nan)


@SETTINGS
@given(ncc_cases())
def test_symmetric_in_the_two_images(case):
    a, b, kwargs = case
    assert_same_map(local_ncc(a, b, **kwargs), local_ncc(b, a, **kwargs))


@SETTINGS
@given(
    ncc_cases(),
    st.sampled_from([0.001, 0.37, 1.0, 3.0, 250.0, 1e4]),
    st.sampled_from([0.0, -7.25, 100.0, 3e4, -1e6]),
    st.booleans(),
)
def test_invariant_to_positive_affine_maps(case, scale, shift, on_first):
    """ncc(a * s + t, b) = ncc(a, b) for s > 0 (and on b alike).

    Mode "constant" reads zeros beyond the border, which a shift does not move: there only
    the scale is invariant.
    """
    a, b, kwargs = case
    if kwargs["mode"] == "constant":
        shift = 0.0
    # Keep the transformed data representable: in float64, a * s + t rounds each value by
    # about 1e-16 * |t|, which must stay far below the smallest window std (~1e-4 * s).
    shift = math.copysign(min(abs(shift), 1e5 * scale), shift)
    expected = local_ncc(a, b, fill_value=np.nan, **kwargs)
    if on_first:
        got = local_ncc(a * scale + shift, b, fill_value=np.nan, **kwargs)
    else:
        got = local_ncc(a, b * scale + shift, fill_value=np.nan, **kwargs)
    assert_same_map(got, expected, np.nan)


@SETTINGS
@given(ncc_cases(), st.sampled_from([0.0, np.nan, -3.0]))
def test_self_correlation_is_one_where_not_flat(case, fill_value):
    a, _, kwargs = case
    got = local_ncc(a, a, fill_value=fill_value, **kwargs)
    flat = flat_mask(a, a, kwargs["radius"], mode=kwargs["mode"], axes=kwargs["axes"])
    np.testing.assert_allclose(got[~flat], 1.0, atol=1e-6, rtol=0)
    np.testing.assert_array_equal(got[flat], np.full(flat.sum(), fill_value, np.float32))


@SETTINGS
@given(ncc_cases())
def test_negating_one_image_negates_the_map(case):
    a, b, kwargs = case
    expected = -local_ncc(a, b, fill_value=np.nan, **kwargs)
    assert_same_map(local_ncc(a, -b, fill_value=np.nan, **kwargs), expected, np.nan)
    assert_same_map(local_ncc(-a, b, fill_value=np.nan, **kwargs), expected, np.nan)


@SETTINGS
@given(ncc_cases(), st.sampled_from([0.0, np.nan, 2.0, -1.5]))
def test_output_in_range_or_fill_value(case, fill_value):
    a, b, kwargs = case
    got = local_ncc(a, b, fill_value=fill_value, **kwargs)
    assert got.dtype == np.float32
    assert got.shape == a.shape
    if np.isnan(fill_value):
        in_range = np.isnan(got) | (np.abs(got) <= 1.0)
    else:
        assert not np.isnan(got).any()
        assert np.isfinite(got).all()
        in_range = (np.abs(got) <= 1.0) | (got == np.float32(fill_value))
    assert in_range.all()
    flat = flat_mask(a, b, kwargs["radius"], mode=kwargs["mode"], axes=kwargs["axes"])
    np.testing.assert_array_equal(got[flat], np.full(flat.sum(), fill_value, np.float32))


@SETTINGS
@given(ncc_cases(max_ndim=2, max_size=120), st.integers(1, 4))
def test_unwindowed_axes_are_independent(case, depth):
    """Windowing only the image's axes of a stack = the map of each plane on its own."""
    a, b, kwargs = case
    if kwargs["axes"] is None:
        kwargs["axes"] = tuple(range(a.ndim))
    kwargs["axes"] = tuple(ax % a.ndim + 1 for ax in np.atleast_1d(kwargs["axes"]))
    rng = np.random.default_rng(depth)
    stack_a = np.stack([a] + [np.round(rng.integers(-9, 9) * a + k, 2) for k in range(depth)])
    stack_b = np.stack([b] + [np.round(b - 3 * k, 2) for k in range(depth)])
    got = local_ncc(stack_a, stack_b, fill_value=np.nan, **kwargs)
    plane_kwargs = dict(kwargs, axes=tuple(ax - 1 for ax in kwargs["axes"]))
    for i in range(depth + 1):
        expected = local_ncc(stack_a[i], stack_b[i], fill_value=np.nan, **plane_kwargs)
        assert_same_map(got[i], expected, np.nan)


@SETTINGS
@given(ncc_cases(max_ndim=4), st.data())
def test_block_of_index_maps_equals_slice_of_the_full_map(case, data):
    """ncc_block over output positions start..stop (per windowed axis) of the whole image
    equals that slice of local_ncc, with either engine."""
    a, b, kwargs = case
    radius = kwargs.pop("radius")
    plan = plan_ncc(a.shape, b.shape, radius, fill_value=np.nan, **kwargs)
    maps = []
    region = [slice(None)] * a.ndim
    for ax, r in zip(plan.axes, plan.radius, strict=True):
        start = data.draw(st.integers(0, a.shape[ax] - 1))
        stop = data.draw(st.integers(start + 1, a.shape[ax]))
        maps.append(border_index_map(a.shape[ax], start, stop, r, plan.mode))
        region[ax] = slice(start, stop)
    engine = data.draw(st.sampled_from(["compiled", "numpy"]))
    n_threads = data.draw(st.sampled_from([1, 3]))
    got = ncc_block(a, b, plan, maps, engine=engine, n_threads=n_threads)
    expected = local_ncc(a, b, radius=radius, fill_value=np.nan, **kwargs)[tuple(region)]
    assert_same_map(got, expected, np.nan)
