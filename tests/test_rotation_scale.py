"""Coarse Fourier–Mellin rotation, scale and translation against known transforms."""

from __future__ import annotations

import numpy as np
import pytest

from lazy_pairs import NoiseTexture
from napari_ncc._rotation_scale import coarse_similarity, rotation_scale
from transform_pairs import interior_points, linear_matrix, linear_pair, picture


@pytest.mark.parametrize(
    ("name", "angle", "scale"),
    [
        ("astronaut", 37.0, 1.0),
        ("camera", -120.0, 0.7),
        ("brick", 180.0, 1.0),
        ("ihc", 5.0, 1.6),
    ],
)
def test_coarse_similarity_finds_any_angle_and_scale(rng, name, angle, scale):
    n = 256
    matrix = linear_matrix(angle, scale, translation=(6.3, -9.1), n=n)
    reference, moving = linear_pair(picture(name), matrix, n, 0.03, rng)
    estimate = coarse_similarity(reference, moving)
    assert abs((estimate.angle - angle + 180) % 360 - 180) < 1.0
    assert abs(np.log(estimate.scale / scale)) < 0.02
    # The 180° ambiguity is resolved by the real-space correlation, clearly.
    assert estimate.correlation > estimate.other_correlation + 0.2
    p = interior_points(n, margin=0.3)
    error = np.linalg.norm(
        estimate.transform.moving_coordinates(p) - p @ matrix[:2, :2].T - matrix[:2, 2], axis=1
    )
    assert error.max() < 3.0  # coarse: the tiles take it to subpixel


def test_rotation_scale_is_modulo_180(rng):
    n = 256
    matrix = linear_matrix(-150.0, 0.9, n=n)
    reference, moving = linear_pair(picture("coins"), matrix, n, 0.03, rng)
    angle, scale = rotation_scale(reference, moving)
    assert -90 <= angle < 90
    assert abs(angle - 30.0) < 1.0
    assert abs(scale - 0.9) < 0.02


def _texture_pair(n, angle, scale, shift, seed=0):
    """Value noise (exact at any coordinate) and the same texture seen through the known
    reference -> moving map ``q = c + scale R(angle) (p - c) + shift``; returns the pair
    and the map's matrix."""
    texture = NoiseTexture(seed)
    c = (n - 1) / 2
    a = np.radians(angle)
    linear = scale * np.array([[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]])
    matrix = np.eye(3)
    matrix[:2, :2] = linear
    matrix[:2, 2] = c - linear @ [c, c] + np.asarray(shift, float)
    region = (slice(0, n), slice(0, n))
    rng = np.random.default_rng(seed)
    reference = texture.block(region) + rng.normal(0, 0.5, (n, n))
    moving = texture.block(region, np.linalg.inv(matrix)) + rng.normal(0, 0.5, (n, n))
    return reference, moving, matrix


def _overlap_error(estimate, matrix, n):
    """Largest distance between the estimated and true moving coordinates of grid points
    of the reference that the moving image covers."""
    grid = np.stack(np.meshgrid(*2 * [np.linspace(0, n - 1, 20)]), -1).reshape(-1, 2)
    truth = grid @ matrix[:2, :2].T + matrix[:2, 2]
    seen = ((truth >= 0) & (truth <= n - 1)).all(axis=1)
    found = estimate.transform.moving_coordinates(grid[seen])
    return np.linalg.norm(found - truth[seen], axis=1).max()


@pytest.mark.parametrize(
    ("angle", "scale", "fraction"),
    [(1.0, 1.0, 0.25), (5.0, 0.9, 0.3), (179.0, 1.1, 0.3), (185.0, 1.0, 0.25), (-12.0, 1.0, 0.3)],
)
def test_coarse_similarity_with_a_large_shift(angle, scale, fraction):
    # Shifts of 25-30% of the side (and 20% more across): the central squares share about
    # half their content, the 180° candidates correlate only over the overlap.
    n = 384
    shift = (fraction * n, -1.2 * fraction * n)
    reference, moving, matrix = _texture_pair(n, angle, scale, shift)
    estimate = coarse_similarity(reference, moving)
    assert abs((estimate.angle - angle + 180) % 360 - 180) < 1.0
    assert abs(np.log(estimate.scale / scale)) < 0.02
    assert estimate.correlation > estimate.other_correlation + 0.1
    assert _overlap_error(estimate, matrix, n) < 3.0


def test_coarse_similarity_large_shift_on_a_coarsened_image():
    # The reported case at a smaller size: 1° and a shift of (25%, -30%) of the side, the
    # image block-averaged (factor 2) to the coarse level.
    n = 1024
    reference, moving, matrix = _texture_pair(n, 1.0, 1.0, (0.247 * n, -0.3 * n), seed=3)
    estimate = coarse_similarity(reference, moving, max_size=512)
    assert abs(estimate.angle - 1.0) < 1.0
    assert abs(np.log(estimate.scale)) < 0.02
    assert _overlap_error(estimate, matrix, n) < 6.0  # 3 coarse pixels


@pytest.mark.parametrize(("angle", "fraction"), [(-5.0, 0.3), (183.0, 0.25)])
def test_coarse_similarity_large_shift_real_pictures(rng, angle, fraction):
    # A mosaic of four pictures, so that both images hold real content to their edges.
    tiles = [picture(name)[:512, :512] for name in ("astronaut", "brick", "camera", "ihc")]
    big = np.block([[tiles[0], tiles[1]], [tiles[2], tiles[3]]])
    n = 320
    matrix = linear_matrix(angle, 1.05, translation=(fraction * n, -1.2 * fraction * n), n=n)
    reference, moving = linear_pair(big, matrix, n, 0.03, rng)
    estimate = coarse_similarity(reference, moving)
    assert abs((estimate.angle - angle + 180) % 360 - 180) < 1.0
    assert abs(np.log(estimate.scale / 1.05)) < 0.02
    assert _overlap_error(estimate, matrix, n) < 3.0
