"""Bad input to local_ncc (and plan_ncc / check_image / ncc_block) gets a clear error.

Every case matches the message, so that a message that stops naming the problem fails.
"""

from __future__ import annotations

import re

import numpy as np
import pytest

from napari_ncc import local_ncc
from napari_ncc._ncc import check_image, ncc_block, plan_ncc

IMAGE = np.arange(80, dtype=np.float32).reshape(8, 10) % 7


def call(radius=2, *, reference=IMAGE, moving=IMAGE, **kwargs):
    return local_ncc(reference, moving, radius=radius, **kwargs)


# --- the two images -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("shape0", "shape1"),
    [((8, 10), (8, 9)), ((8, 10), (10, 8)), ((5,), (6,)), ((2, 3, 4), (2, 3, 5))],
)
def test_shapes_differ(shape0, shape1):
    match = re.escape(f"must have the same shape, got {shape0} and {shape1}")
    with pytest.raises(ValueError, match=match):
        local_ncc(np.zeros(shape0), np.zeros(shape1), radius=1)
    with pytest.raises(ValueError, match=match):
        plan_ncc(shape0, shape1, 1)


@pytest.mark.parametrize(("shape0", "shape1"), [((8, 10), (8, 10, 1)), ((4, 4, 4), (4, 16))])
def test_ndim_differs(shape0, shape1):
    match = f"same number of dimensions, got {len(shape0)} and {len(shape1)}"
    with pytest.raises(ValueError, match=match):
        local_ncc(np.zeros(shape0), np.zeros(shape1), radius=1)


@pytest.mark.parametrize(
    "dtype", [np.complex64, np.complex128, object, "U3", "S2", "M8[s]", "m8[ms]", "V4"]
)
@pytest.mark.parametrize("which", [0, 1])
def test_unsupported_dtype(dtype, which):
    bad = np.zeros((8, 10), dtype=dtype)
    images = [IMAGE, IMAGE]
    images[which] = bad
    name = ("reference", "moving")[which]
    match = rf"{name} has unsupported dtype .*expected a real numeric dtype"
    with pytest.raises(TypeError, match=match):
        local_ncc(images[0], images[1], radius=1)
    with pytest.raises(TypeError, match=match):
        check_image(bad, name)


def test_unsupported_dtype_names_the_dtype():
    with pytest.raises(TypeError, match=r"unsupported dtype complex128"):
        local_ncc(IMAGE.astype(np.complex128), IMAGE, radius=1)
    with pytest.raises(TypeError, match=r"unsupported dtype object"):
        local_ncc([[1, None], [2, 3]], [[1, 2], [3, 4]], radius=1)
    with pytest.raises(TypeError, match=r"unsupported dtype <U1"):
        local_ncc([["a", "b"], ["c", "d"]], [[1, 2], [3, 4]], radius=1)


@pytest.mark.skipif(
    np.dtype(np.longdouble).itemsize <= 8, reason="longdouble is float64 on this platform"
)
def test_extended_precision_float_is_rejected_clearly():
    with pytest.raises(TypeError, match=r"reference has unsupported dtype float\d+"):
        local_ncc(IMAGE.astype(np.longdouble), IMAGE, radius=1)


@pytest.mark.parametrize("shape", [(0,), (0, 5), (5, 0), (3, 0, 4)])
def test_empty_arrays(shape):
    match = re.escape(f"reference is empty (shape {shape})")
    with pytest.raises(ValueError, match=match):
        local_ncc(np.zeros(shape), np.zeros(shape), radius=1)
    with pytest.raises(ValueError, match=re.escape(f"moving is empty (shape {shape})")):
        check_image(np.zeros(shape, dtype=np.uint8), "moving")


@pytest.mark.parametrize("value", [np.float64(3.0), 3, np.array(3.0)])
def test_zero_dimensional_arrays(value):
    with pytest.raises(ValueError, match="reference must have at least 1 dimension, got a 0-d"):
        local_ncc(value, value, radius=1)


@pytest.mark.parametrize(("value", "which"), [(np.nan, 0), (np.inf, 1), (-np.inf, 0)])
@pytest.mark.parametrize("window", ["box", "gaussian"])
def test_non_finite_values(value, which, window):
    images = [IMAGE.copy(), IMAGE.copy()]
    images[which][3, 4] = value
    name = ("reference", "moving")[which]
    with pytest.raises(ValueError, match=f"{name} contains 1 NaN or infinite value"):
        local_ncc(images[0], images[1], radius=1, window=window)


# --- radius -----------------------------------------------------------------------------


@pytest.mark.parametrize("radius", [-1, (2, -1), (-3, 0)])
def test_radius_negative(radius):
    with pytest.raises(ValueError, match=re.escape(f"radius must be >= 0, got {radius!r}")):
        call(radius)


@pytest.mark.parametrize(
    "radius", [2.5, 2.0, "3", "2", None, (1, 2.0), [1.5, 1], np.array([1.0, 2])]
)
def test_radius_not_an_integer(radius):
    match = r"radius must be an integer or a sequence of integers, got " + re.escape(repr(radius))
    with pytest.raises(TypeError, match=match):
        call(radius)


@pytest.mark.parametrize("radius", [True, False, (True, 1), np.bool_(True)])
def test_radius_bool(radius):
    with pytest.raises(TypeError, match="radius must be an integer or a sequence of integers"):
        call(radius)


@pytest.mark.parametrize(
    ("radius", "axes", "n_values", "n_axes"),
    [((1, 2, 3), None, 3, 2), ((1,), None, 1, 2), ((), None, 0, 2), ((1, 2), (0,), 2, 1)],
)
def test_radius_wrong_length(radius, axes, n_values, n_axes):
    match = rf"radius has {n_values} values but {n_axes} axes are windowed"
    with pytest.raises(ValueError, match=match):
        call(radius, axes=axes)


@pytest.mark.parametrize("radius", [0, (0, 0), np.array([0, 0])])
def test_radius_all_zero(radius):
    with pytest.raises(ValueError, match="radius must be >= 1 on at least one axis"):
        call(radius)


@pytest.mark.parametrize(
    ("shape", "radius", "axis", "length"),
    [((8, 10), 8, 0, 8), ((8, 10), (2, 10), 1, 10), ((1, 9), 1, 0, 1), ((4,), 7, 0, 4)],
)
def test_radius_too_large_for_an_axis(shape, radius, axis, length):
    match = rf"radius \d+ is too large for axis {axis} of length {length}"
    with pytest.raises(ValueError, match=match):
        local_ncc(np.zeros(shape), np.zeros(shape), radius=radius)


def test_numpy_integer_radii_are_accepted():
    """Not errors: NumPy integers, 0-d and 1-D integer arrays are valid radii."""
    expected = call(2)
    for radius in (np.int64(2), np.uint8(2), np.array(2), np.array([2, 2]), [2, 2]):
        np.testing.assert_array_equal(call(radius), expected)


# --- axes -------------------------------------------------------------------------------


@pytest.mark.parametrize(("axes", "bad"), [(2, 2), (-3, -3), ((0, 5), 5), ((-1, 2), 2)])
def test_axes_out_of_range(axes, bad):
    with pytest.raises(ValueError, match=rf"axis {bad} is out of range for a 2-D image"):
        call(1, axes=axes)


@pytest.mark.parametrize("axes", [(0, 0), (1, -1), (-2, 0), [1, 1]])
def test_axes_repeated(axes):
    with pytest.raises(ValueError, match=r"axes contains axis \d more than once"):
        call(1, axes=axes)


@pytest.mark.parametrize("axes", [(0, 1.0), ("0",), (True,), [np.float64(1)], ((0, 1),)])
def test_axes_non_integer(axes):
    with pytest.raises(TypeError, match="axes must contain integers, got"):
        call(1, axes=axes)


@pytest.mark.parametrize("axes", [1.0, True, object()])
def test_axes_not_int_or_sequence(axes):
    with pytest.raises(TypeError, match="axes must be an int or a sequence of ints, got"):
        call(1, axes=axes)


def test_axes_empty():
    with pytest.raises(ValueError, match="axes must name at least one axis"):
        call(1, axes=())


# --- window, mode, fill_value -----------------------------------------------------------


@pytest.mark.parametrize("window", ["Box", "gauss", "uniform", "", None, ["box"]])
def test_unknown_window(window):
    match = re.escape(f"unknown window {window!r}; expected one of box, gaussian")
    with pytest.raises(ValueError, match=match):
        call(1, window=window)


@pytest.mark.parametrize("mode", ["symmetric", "Reflect", "edge", "", None, ["wrap"], 0])
def test_unknown_mode(mode):
    match = re.escape(f"unknown mode {mode!r}; expected one of ") + r".*reflect.*wrap"
    with pytest.raises(ValueError, match=match):
        call(1, mode=mode)


@pytest.mark.parametrize("fill_value", ["0", None, 1j, True, [0.0], np.array([0.0])])
def test_bad_fill_value(fill_value):
    match = "fill_value must be a real number"
    with pytest.raises(TypeError, match=match):
        call(1, fill_value=fill_value)


# --- ncc_block --------------------------------------------------------------------------


@pytest.mark.parametrize("shape", [(9,), (8, 10), (4, 5, 6)])
def test_ncc_block_unknown_engine(shape):
    image = np.random.default_rng(0).random(shape)
    plan = plan_ncc(shape, shape, 1)
    maps = [np.clip(np.arange(-1, n + 1), 0, n - 1) for n in shape]
    with pytest.raises(ValueError, match="unknown engine 'gpu'"):
        ncc_block(image, image, plan, maps, engine="gpu")


# --- a failed call changes nothing ------------------------------------------------------


def test_bad_arguments_leave_inputs_untouched():
    a, b = IMAGE.copy(), IMAGE.copy() + 1
    for kwargs in ({"radius": -1}, {"window": "x"}, {"mode": "x"}, {"axes": 5}):
        with pytest.raises((TypeError, ValueError)):
            local_ncc(a, b, **kwargs)
    np.testing.assert_array_equal(a, IMAGE)
    np.testing.assert_array_equal(b, IMAGE + 1)
