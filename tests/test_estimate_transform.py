"""estimate_transform against known transforms on real pictures (skimage.data) with noise.

Accuracy = distance between ``moving_coordinates(p)`` and the true position at interior
points; the issue's targets are 0.25 px (linear models) and 0.3 px RMS / 0.6 px p95
(deformable).
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from napari_ncc._estimate_transform import estimate_transform
from napari_ncc._registration import RegistrationWarning
from transform_pairs import (
    SmoothWarp,
    interior_points,
    linear_matrix,
    linear_pair,
    picture,
    warped_pair,
)


def _linear_error(transform, matrix, n):
    p = interior_points(n)
    return np.linalg.norm(
        transform.moving_coordinates(p) - (p @ matrix[:2, :2].T + matrix[:2, 2]), axis=1
    )


@pytest.mark.parametrize(
    ("name", "model", "angle", "scale", "shear"),
    [
        ("camera", "rigid", 12.0, 1.0, 0.0),
        ("astronaut", "rigid", -9.0, 1.0, 0.0),
        ("ihc", "similarity", 6.0, 0.93, 0.0),
        ("brick", "similarity", -4.0, 1.06, 0.0),
        ("astronaut", "affine", 3.0, 1.02, 0.03),
        ("ihc", "rigid", 180.0, 1.0, 0.0),
        ("camera", "translation", 0.0, 1.0, 0.0),
    ],
)
def test_linear_models_reach_subpixel_accuracy(rng, name, model, angle, scale, shear):
    n = 320
    matrix = linear_matrix(angle, scale, shear, translation=(7.3, -4.1), n=n)
    reference, moving = linear_pair(picture(name), matrix, n, 0.03, rng)
    with warnings.catch_warnings():
        warnings.simplefilter("error", RegistrationWarning)
        estimate = estimate_transform(reference, moving, model)
    assert estimate.transform.model == model
    assert estimate.reliable
    error = _linear_error(estimate.transform, matrix, n)
    assert error.max() < 0.1  # the issue asks 0.25, aims 0.05


@pytest.mark.slow
def test_deformable_reaches_the_target_on_a_textured_picture(rng):
    n = 256
    warp = SmoothWarp(linear_matrix(0.8, translation=(3.3, -2.1), n=n), 3.0, (250, 200), rng)
    reference, moving = warped_pair(picture("brick"), warp, n, 0.03, rng)
    estimate = estimate_transform(reference, moving, "deformable")
    assert estimate.transform.model == "deformable"
    p = interior_points(n, margin=0.1, count=40)
    error = np.linalg.norm(
        estimate.transform.moving_coordinates(p) - warp.moving_coordinates(p), axis=1
    )
    # The targets (0.15 px RMS is its aim; 384^2 pairs reach ~0.1 in the benchmark).
    assert np.sqrt(np.mean(error**2)) <= 0.3
    assert np.percentile(error, 95) <= 0.6
    assert len(estimate.tiles.centers) >= 30


def test_a_linear_model_on_a_deformed_pair_warns(rng):
    n = 256
    warp = SmoothWarp(linear_matrix(0.5, n=n), 4.0, (150, 150), rng)
    reference, moving = warped_pair(picture("ihc"), warp, n, 0.03, rng)
    with pytest.warns(RegistrationWarning, match="may need another model"):
        estimate = estimate_transform(reference, moving, "rigid")
    assert not estimate.reliable


def test_unrelated_images_warn_instead_of_returning_noise(rng):
    reference = rng.normal(size=(256, 256))
    moving = rng.normal(size=(256, 256))
    with pytest.warns(RegistrationWarning, match="textured tiles"):
        estimate = estimate_transform(reference, moving, "affine")
    assert not estimate.reliable
    assert estimate.transform.model == "affine"


def test_bad_arguments(rng):
    image = rng.random((64, 64))
    with pytest.raises(ValueError, match="model must be one of"):
        estimate_transform(image, image, "projective")
    with pytest.raises(ValueError, match="2D images or 3D volumes"):
        estimate_transform(rng.random((2, 8, 64, 64)), rng.random((2, 8, 64, 64)), "rigid")
    with pytest.raises(ValueError, match="2D images or 3D volumes"):
        estimate_transform(rng.random((8, 64, 64)), rng.random((64, 64)), "rigid")
