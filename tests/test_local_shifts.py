"""Local tile shifts and the robust fits, against known transforms and planted outliers."""

from __future__ import annotations

import numpy as np
import pytest

from napari_ncc._local_shifts import TileReport, fit_deformable, fit_linear, measure_tiles
from napari_ncc._transform import AffineTransform
from transform_pairs import SmoothWarp, linear_matrix, linear_pair, picture


def _report(centers, positions, confidence=None):
    n = len(centers)
    confidence = np.full(n, 0.9) if confidence is None else confidence
    return TileReport(
        centers, positions, np.full(n, 0.02), confidence, np.full(n, np.nan), np.zeros(n, bool), 64
    )


def test_tiles_measure_a_known_translation(rng):
    n = 256
    matrix = linear_matrix(translation=(2.3, -1.6), n=n)
    reference, moving = linear_pair(picture("astronaut"), matrix, n, 0.03, rng)
    tiles = measure_tiles(reference, moving, AffineTransform(np.eye(3)))
    assert len(tiles.centers) >= 10
    np.testing.assert_allclose(
        tiles.positions - tiles.centers, [[2.3, -1.6]] * len(tiles.centers), atol=0.06
    )
    np.testing.assert_allclose(tiles.shifts, [[-2.3, 1.6]] * len(tiles.centers), atol=0.06)
    assert np.all(tiles.confidence > 0.9)
    assert np.all(np.isnan(tiles.residual)) and not tiles.rejected.any()


def test_flat_image_has_no_tiles(rng):
    flat = np.full((200, 200), 0.5)
    tiles = measure_tiles(
        flat, flat + 0.01 * rng.normal(size=flat.shape), AffineTransform(np.eye(3))
    )
    assert len(tiles.centers) == 0


@pytest.mark.parametrize("model", ["translation", "rigid", "similarity", "affine"])
def test_fit_linear_recovers_the_model_and_rejects_outliers(rng, model):
    parameters = {
        "translation": {},
        "rigid": {"angle": 7.0},
        "similarity": {"angle": -4.0, "scale": 1.05},
        "affine": {"angle": 3.0, "scale": 0.97, "shear": 0.04},
    }[model]
    matrix = linear_matrix(translation=(5.0, -3.0), n=500, **parameters)
    centers = rng.uniform(0, 500, size=(60, 2))
    positions = centers @ matrix[:2, :2].T + matrix[:2, 2] + 0.01 * rng.normal(size=(60, 2))
    outliers = np.zeros(60, bool)
    outliers[rng.choice(60, 6, replace=False)] = True
    positions[outliers] += rng.choice([-1, 1], size=(6, 2)) * rng.uniform(3, 8, size=(6, 2))
    transform, report = fit_linear(_report(centers, positions), model)
    assert transform.model == model
    np.testing.assert_array_equal(report.rejected, outliers)
    grid = np.stack(np.meshgrid(*[np.linspace(0, 500, 11)] * 2), -1).reshape(-1, 2)
    true = grid @ matrix[:2, :2].T + matrix[:2, 2]
    assert np.abs(transform.moving_coordinates(grid) - true).max() < 0.02
    assert np.all(report.residual[~outliers] < 0.05)


def test_fit_linear_needs_enough_tiles():
    with pytest.raises(ValueError, match="'affine' needs at least 3 textured tiles, found 2"):
        fit_linear(_report(np.zeros((2, 2)), np.zeros((2, 2))), "affine")


def test_fit_deformable_interpolates_a_smooth_field_and_rejects_outliers(rng):
    warp = SmoothWarp(linear_matrix(0.8, translation=(2.0, 1.0), n=400), 3.0, (250, 300), rng)
    g = np.arange(30.0, 380.0, 25.0)
    centers = np.stack(np.meshgrid(g, g, indexing="ij"), -1).reshape(-1, 2)
    centers += rng.uniform(-5, 5, size=centers.shape)
    positions = warp.moving_coordinates(centers) + 0.02 * rng.normal(size=centers.shape)
    outliers = np.zeros(len(centers), bool)
    outliers[rng.choice(len(centers), 8, replace=False)] = True
    positions[outliers] += 4.0
    transform, report = fit_deformable(_report(centers, positions), (400, 400))
    np.testing.assert_array_equal(report.rejected, outliers)
    p = rng.uniform(40, 360, size=(500, 2))
    error = np.linalg.norm(transform.moving_coordinates(p) - warp.moving_coordinates(p), axis=1)
    assert np.sqrt(np.mean(error**2)) < 0.1
    assert error.max() < 0.3
