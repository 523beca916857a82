"""local_shift_vectors: a registration's tiles as arrows (what the widget draws), no napari."""

from __future__ import annotations

import json

import numpy as np

from napari_ncc import Registration
from napari_ncc._local_shifts import TileReport
from napari_ncc._shift_vectors import local_shift_vectors
from napari_ncc._transform import AffineTransform


def _tiles(centers, positions, rejected, tile_size=64):
    n = len(centers)
    return TileReport(
        np.asarray(centers, float),
        np.asarray(positions, float),
        np.full(n, 0.02),
        np.linspace(0.5, 0.9, n),
        np.zeros(n),
        np.asarray(rejected, bool),
        tile_size,
    )


def test_arrows_are_the_tile_positions_minus_the_linear_part():
    # moving = 1.01 * R(3 deg) @ reference + (2, -1): the tiles found 0.5 px further along x,
    # one of them (rejected) 9 px off.
    a = np.radians(3.0)
    matrix = np.eye(3)
    matrix[:2, :2] = 1.01 * np.array([[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]])
    matrix[:2, 2] = (2.0, -1.0)
    centers = np.array([[40.0, 40.0], [40.0, 120.0], [120.0, 40.0], [120.0, 120.0]])
    linear = centers @ matrix[:2, :2].T + matrix[:2, 2]
    offsets = np.array([[0.0, 0.5], [0.0, 0.5], [0.0, 0.5], [9.0, 0.0]])
    tiles = _tiles(centers, linear + offsets, [False, False, False, True])
    registration = Registration((0.0, 0.0), transform=AffineTransform(matrix), tiles=tiles)

    vectors = local_shift_vectors(registration)
    assert vectors.data.shape == (4, 2, 2)
    np.testing.assert_allclose(vectors.data[:, 0], centers)
    np.testing.assert_allclose(vectors.data[:, 1], offsets, atol=1e-9)
    np.testing.assert_allclose(vectors.features["length"], [0.5, 0.5, 0.5, 9.0], atol=1e-9)
    np.testing.assert_array_equal(vectors.rejected, [False, False, False, True])
    np.testing.assert_allclose(vectors.features["confidence"], tiles.confidence)
    # Drawn so that the longest KEPT arrow spans at most half a tile: 0.5 px x 50 = 25 px.
    assert vectors.exaggeration == 50
    assert "affine" in vectors.description


def test_no_arrows_for_a_translation_or_without_tiles():
    assert local_shift_vectors(Registration((1.0, 2.0))) is None
    tiles = _tiles([[40.0, 40.0]], [[41.0, 40.0]], [False])
    registration = Registration(
        (0.0, 0.0), transform=AffineTransform.from_rotation(2.0), tiles=tiles
    )
    assert local_shift_vectors(registration) is not None
    # Saved and read back, a registration keeps its transform but not its tiles.
    back = Registration.from_dict(json.loads(json.dumps(registration.to_dict())))
    assert local_shift_vectors(back) is None


def test_per_plane_arrows_sit_at_their_plane_index():
    # Two planes of a (t, y, x) stack, each with its own rotation; plane 1's tiles are found
    # (0.4, -0.2) px beyond the linear part, plane 0's exactly on it.
    transforms = (AffineTransform.from_rotation(1.0), AffineTransform.from_rotation(-2.0))
    centers = np.array([[40.0, 40.0], [40.0, 120.0], [120.0, 80.0]])
    offset = np.array([0.4, -0.2])
    tiles = tuple(
        _tiles(centers, t.moving_coordinates(centers) + k * offset, [False] * 3)
        for k, t in enumerate(transforms)
    )
    registration = Registration(
        (0.0, 0.0, 0.0),
        shifts=np.zeros((2, 3)),
        per_plane=0,
        transforms=transforms,
        tiles=tiles,
    )
    vectors = local_shift_vectors(registration)
    assert vectors.data.shape == (6, 2, 3)
    np.testing.assert_allclose(vectors.data[:, 0, 0], [0, 0, 0, 1, 1, 1])
    np.testing.assert_allclose(vectors.data[:, 0, 1:], np.concatenate([centers, centers]))
    expected = np.zeros((6, 3))
    expected[3:, 1:] = offset
    np.testing.assert_allclose(vectors.data[:, 1], expected, atol=1e-9)
    assert "per plane" in vectors.description
