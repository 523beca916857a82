"""Coarse Fourier–Mellin rotation, scale and translation against known transforms."""

from __future__ import annotations

import numpy as np
import pytest

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
