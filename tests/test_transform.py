"""Transforms: the reference -> moving coordinate convention, validation and dict round trip."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from scipy import ndimage as ndi

from napari_ncc._transform import AffineTransform, DeformableTransform, transform_from_dict


def test_translation_follows_ndimage_shift(rng):
    """``moving_coordinates(p) == p - shift`` where ``ndimage.shift(moving, shift) ~ ref``."""
    shift = (3.25, -1.5)
    t = AffineTransform.from_shift(shift)
    points = rng.uniform(0, 50, size=(10, 2))
    np.testing.assert_allclose(t.moving_coordinates(points), points - shift, atol=1e-12)
    moving = rng.random((40, 40))
    shifted = ndi.shift(moving, shift, order=1)
    # the shifted image at p is the moving image at p - shift
    p = np.array([[20.0, 20.0]])
    expected = ndi.map_coordinates(moving, t.moving_coordinates(p).T, order=1)
    assert shifted[20, 20] == pytest.approx(expected[0])


def test_rotation_about_center_by_hand():
    t = AffineTransform.from_rotation(30.0, scale=2.0, center=(5.0, 5.0), translation=(1, 0))
    q = t.moving_coordinates([[5.0, 6.0]])[0]
    a = math.radians(30.0)
    # (0, 1) relative to the centre -> 2 * R(30°) (0, 1) = 2 * (-sin, cos)
    np.testing.assert_allclose(q, [5 - 2 * math.sin(a) + 1, 5 + 2 * math.cos(a)], atol=1e-12)
    assert t.model == "similarity"
    assert t.angle == pytest.approx(30.0)
    assert t.scale == pytest.approx(2.0)


def test_inverse_round_trip(rng):
    matrix = np.eye(3)
    matrix[:2, :2] = [[1.02, 0.05], [-0.03, 0.97]]
    matrix[:2, 2] = [4.0, -7.0]
    t = AffineTransform(matrix)
    p = rng.uniform(0, 100, size=(5, 2))
    np.testing.assert_allclose(t.inverse().moving_coordinates(t.moving_coordinates(p)), p)


@pytest.mark.parametrize(
    ("linear", "model"),
    [
        ([[1.0, 0.1], [0.0, 1.0]], "similarity"),
        ([[1.1, 0.0], [0.0, 1.1]], "rigid"),
        ([[1.0, 0.001], [0.0, 1.0]], "translation"),
    ],
)
def test_matrix_must_match_its_model(linear, model):
    matrix = np.eye(3)
    matrix[:2, :2] = linear
    with pytest.raises(ValueError, match=f"not of model '{model}'"):
        AffineTransform(matrix, model)


@pytest.mark.parametrize(
    ("matrix", "message"),
    [
        (np.eye(3)[:2], "square"),
        (np.diag([1.0, 1.0, 2.0]), "last row"),
        (np.diag([0.0, 1.0, 1.0]), "singular"),
        (np.full((3, 3), np.nan), "finite"),
    ],
)
def test_bad_matrix(matrix, message):
    with pytest.raises(ValueError, match=message):
        AffineTransform(matrix)


def test_bad_model():
    with pytest.raises(ValueError, match="model must be one of"):
        AffineTransform(np.eye(3), "projective")


def test_points_shape_is_checked():
    with pytest.raises(ValueError, match=r"points must have shape \(n, 2\)"):
        AffineTransform(np.eye(3)).moving_coordinates([1.0, 2.0])


def _deformable(rng):
    affine = AffineTransform.from_rotation(1.0, center=(50, 50), translation=(2, 3))
    return DeformableTransform(affine, rng.normal(size=(2, 6, 5)), (-10.0, -5.0), (25.0, 30.0))


def test_field_interpolates_the_nodes(rng):
    t = _deformable(rng)
    nodes = np.indices((6, 5)).reshape(2, -1).T * np.array([25.0, 30.0]) + [-10.0, -5.0]
    expected = t.displacement.reshape(2, -1).T
    np.testing.assert_allclose(t.field(nodes), expected, atol=1e-6)
    np.testing.assert_allclose(
        t.moving_coordinates(nodes), t.affine.moving_coordinates(nodes) + expected, atol=1e-6
    )


def test_field_is_smooth_between_nodes():
    """A linear field on the nodes is reproduced exactly between them (cubic B-spline)."""
    rows, cols = np.meshgrid(np.arange(8.0), np.arange(7.0), indexing="ij")
    displacement = np.stack([0.1 * rows + 0.2 * cols, -0.3 * rows])
    t = DeformableTransform(AffineTransform(np.eye(3)), displacement, (0, 0), (10, 10))
    p = np.array([[23.0, 37.0], [41.5, 12.25]])
    g = p / 10
    np.testing.assert_allclose(
        t.field(p), np.stack([0.1 * g[:, 0] + 0.2 * g[:, 1], -0.3 * g[:, 0]], 1), atol=1e-5
    )


def test_field_bounds_hold(rng):
    t = _deformable(rng)
    for _ in range(20):
        lower = rng.uniform(-30, 150, size=2)
        upper = lower + rng.uniform(0, 60, size=2)
        points = rng.uniform(lower, upper, size=(500, 2))
        f = t.field(points)
        lo, hi = t.field_bounds(lower, upper)
        assert np.all(f >= lo - 1e-9) and np.all(f <= hi + 1e-9)


def test_dict_round_trip_through_json(rng):
    for t in (AffineTransform.from_shift((1.5, -2.0)), _deformable(rng)):
        u = transform_from_dict(json.loads(json.dumps(t.to_dict())))
        assert type(u) is type(t) and u.model == t.model
        p = rng.uniform(0, 100, size=(7, 2))
        np.testing.assert_allclose(u.moving_coordinates(p), t.moving_coordinates(p), atol=1e-12)


def test_deformable_validation():
    affine = AffineTransform(np.eye(3))
    with pytest.raises(ValueError, match="displacement must have shape"):
        DeformableTransform(affine, np.zeros((3, 4, 4)), (0, 0), (1, 1))
    with pytest.raises(ValueError, match="spacing positive"):
        DeformableTransform(affine, np.zeros((2, 4, 4)), (0, 0), (0, 1))


@pytest.mark.parametrize("ndim", [2, 3])
def test_field_on_grid_equals_the_field_at_each_point(rng, ndim):
    """The separable evaluation against the pointwise B-spline, also far beyond the grid."""
    displacement = rng.normal(size=(ndim,) + (4,) * ndim)
    t = DeformableTransform(
        AffineTransform(np.eye(ndim + 1)), displacement, (3.0,) * ndim, (10.0,) * ndim
    )
    axes = [np.sort(rng.uniform(-300, 340, size=5 + d)) for d in range(ndim)]
    axes[0][0] = 13.0  # exactly on a node
    points = np.stack(np.meshgrid(*axes, indexing="ij"), -1).reshape(-1, ndim)
    on_grid = t.field_on_grid(axes)
    assert on_grid.shape == (ndim, *(len(a) for a in axes))
    np.testing.assert_allclose(on_grid.reshape(ndim, -1).T, t.field(points), atol=1e-9)
