"""register with rigid, affine and deformable models on 3D volumes (plane, row, column).

Against KNOWN transforms (tests/volume_pairs.py: a smooth random texture, the moving volume
made with scipy.ndimage, independently of napari_ncc's warp; the true coordinates from
formulas).
"""

from __future__ import annotations

import json

import dask.array as da
import numpy as np
import pytest
from scipy import ndimage as ndi

from napari_ncc import Registration, RegistrationWarning, register
from napari_ncc._summary import describe_transform
from napari_ncc._transform import AffineTransform, DeformableTransform
from napari_ncc._warp import warp
from volume_pairs import (
    SmoothWarp3D,
    about_centre,
    affine_pair,
    interior_points,
    noisy,
    rotation,
    truth,
    warped_pair,
)

N = 64
SHIFT = (12.3, -20.7, 7.2)


@pytest.fixture(scope="module")
def deformed():
    """(reference, moving, truth, registration) of a deformed pair, registered once."""
    rng = np.random.default_rng(2)
    matrix = about_centre(rotation([1.0, 1.0, 1.0], 2.0), (5.3, -8.1, 3.7), N)
    warp = SmoothWarp3D(matrix, 2.0, 128.0, rng)
    reference, moving = warped_pair(rng, warp, N)
    return reference, moving, warp, register(reference, moving, model="deformable")


def test_affine_volume_maps_points_to_the_truth_and_covers_the_right_voxels(rng):
    # 3 degrees about an oblique axis, mild anisotropic scale and shear, tens of voxels.
    linear = rotation([1.0, 2.0, 2.0], 3.0) @ [[1.02, 0.01, 0], [0, 0.99, 0.015], [0.01, 0, 1.01]]
    matrix = about_centre(linear, SHIFT, N)
    reference, moving = affine_pair(rng, matrix, N)
    reg = register(reference, moving, model="affine")
    assert reg.model == "affine" and reg.reliable
    points = interior_points(N)
    assert np.abs(reg.moving_coordinates(points) - truth(matrix, points)).max() <= 0.25
    # Covered iff the true moving coordinates are inside the volume (away from its faces).
    grid = np.indices((N,) * 3, dtype=np.float64).reshape(3, -1).T
    q = truth(matrix, grid)
    inside = np.all((q >= 0.3) & (q <= N - 1.3), axis=1).reshape((N,) * 3)
    outside = np.any((q < -0.3) | (q > N - 1 + 0.3), axis=1).reshape((N,) * 3)
    mask = reg.valid_mask((N,) * 3)
    assert mask[inside].all() and not mask[outside].any()


@pytest.mark.parametrize(("axis", "angle"), [((0.3, -1.0, 0.6), -4.0), ((1.0, 0.0, 0.0), 5.0)])
def test_rigid_volume_recovers_the_rotation_and_its_axis(rng, axis, angle):
    matrix = about_centre(rotation(axis, angle), SHIFT, N)
    reference, moving = affine_pair(rng, matrix, N)
    reg = register(reference, moving, model="rigid")
    assert reg.model == "rigid" and reg.reliable
    points = interior_points(N)
    assert np.abs(reg.moving_coordinates(points) - truth(matrix, points)).max() <= 0.25
    # A negative angle is the positive angle about the opposite axis.
    expected_axis = np.sign(angle) * np.asarray(axis) / np.linalg.norm(axis)
    assert reg.transform.angle == pytest.approx(abs(angle), abs=0.05)
    np.testing.assert_allclose(reg.transform.rotation_axis, expected_axis, atol=0.02)
    line = describe_transform(reg.to_dict())[0]
    assert line.startswith("transform: rigid, angle") and "about (z, y, x)" in line


def test_deformable_volume_follows_a_smooth_field(deformed):
    _, _, warp, reg = deformed
    assert reg.model == "deformable" and reg.reliable
    # Within the reach of the tiles (the field is extrapolated linearly beyond them).
    points = interior_points(N, margin=0.2, count=9)
    expected = warp.moving_coordinates(points)
    error = np.linalg.norm(reg.moving_coordinates(points) - expected, axis=1)
    assert np.sqrt(np.mean(error**2)) <= 0.3
    assert np.percentile(error, 95) <= 0.6
    # The field is needed: the affine part alone is off by more than a voxel somewhere.
    affine_error = reg.transform.affine.moving_coordinates(points) - expected
    assert np.abs(affine_error).max() > 1.0


def test_lazy_apply_equals_numpy_apply_on_a_volume(deformed):
    _, moving, _, reg = deformed
    numpy_out = reg.apply(moving, order=3)
    lazy = reg.apply(da.from_array(moving, chunks=24), order=3)
    assert isinstance(lazy, da.Array)
    np.testing.assert_allclose(lazy.compute(), numpy_out, atol=1e-5)


def test_to_dict_round_trips_a_volume_registration(deformed):
    _, moving, _, reg = deformed
    back = Registration.from_dict(json.loads(json.dumps(reg.to_dict())))
    assert back.model == "deformable" and back.transform.ndim == 3
    assert back.transform.displacement.shape[0] == 3
    points = interior_points(N)
    np.testing.assert_allclose(
        back.moving_coordinates(points), reg.moving_coordinates(points), atol=1e-9
    )
    np.testing.assert_allclose(back.apply(moving), reg.apply(moving), atol=1e-6)


@pytest.mark.parametrize("model", ["affine", "deformable"])
def test_a_volume_without_texture_warns_instead_of_returning_noise(rng, model):
    reference = noisy(np.ones((N,) * 3), rng, noise=0.01)
    moving = noisy(np.ones((N,) * 3), rng, noise=0.01)
    with pytest.warns(RegistrationWarning, match="textured tiles match .* the volumes"):
        reg = register(reference, moving, model=model)
    assert not reg.reliable
    assert reg.model == model and reg.transform.ndim == 3


def test_rotation_summary_of_a_3d_transform():
    matrix = np.eye(4)
    matrix[:3, :3] = 1.03 * rotation([0.0, 0.0, 2.0], 7.0)
    t = AffineTransform(matrix, "similarity")
    assert t.angle == pytest.approx(7.0)
    np.testing.assert_allclose(t.rotation_axis, [0.0, 0.0, 1.0], atol=1e-12)
    assert t.scale == pytest.approx(1.03)
    # About the plane axis, the rotation of every plane is the 2D angle.
    matrix[:3, :3] = rotation([1.0, 0.0, 0.0], -7.0)
    plane = AffineTransform(matrix[1:, 1:])
    assert plane.angle == pytest.approx(-7.0)
    assert AffineTransform(np.eye(4)).angle == 0.0
    np.testing.assert_allclose(AffineTransform(np.eye(4)).rotation_axis, 0.0)
    matrix[:3, :3] = rotation([0.0, 1.0, 1.0], 180.0)
    half_turn = AffineTransform(matrix, "rigid")
    assert half_turn.angle == pytest.approx(180.0)
    axis = half_turn.rotation_axis
    np.testing.assert_allclose(np.abs(axis), [0.0, np.sqrt(0.5), np.sqrt(0.5)], atol=1e-9)
    with pytest.raises(ValueError, match="2D and 3D"):
        _ = AffineTransform(np.eye(5)).angle
    with pytest.raises(ValueError, match="3D transforms"):
        _ = AffineTransform(np.eye(3)).rotation_axis
    displacement = np.zeros((3, 2, 2, 2))
    displacement[2, 1, 1, 1] = 1.5
    field = DeformableTransform(AffineTransform(matrix), displacement, (0,) * 3, (9,) * 3)
    lines = describe_transform({"shift": [0.0] * 3, "transform": field.to_dict()})
    assert "angle 180.00 deg about (z, y, x)" in lines[0]
    assert lines[1].startswith("  field: largest displacement 1.50 px")


class _CountingVolume:
    """A sliceable source that records the boxes read from it."""

    def __init__(self, data):
        self.data, self.shape, self.dtype, self.ndim = data, data.shape, data.dtype, data.ndim
        self.reads = []

    def __getitem__(self, index):
        self.reads.append(tuple((s.start, s.stop) for s in index))
        return self.data[index]


def test_a_warped_volume_block_equals_brute_force_and_reads_only_nearby_chunks(rng):
    data = rng.random((96, 96, 96))
    rigid = AffineTransform(about_centre(rotation([1.0, -1.0, 2.0], 3.0), (4.0, -3.0, 2.0), 96))
    # A smooth field of 2 voxels amplitude on nodes 24 voxels apart.
    nodes = np.indices((5, 5, 5)) * 24.0
    phases = rng.uniform(0, 2 * np.pi, size=3)
    field = np.stack([2 * np.sin(nodes.sum(axis=0) / (40 + 5 * d) + phases[d]) for d in range(3)])
    transform = DeformableTransform(rigid, field, (0,) * 3, (24,) * 3)
    source = _CountingVolume(data)
    lazy = warp(da.from_array(source, chunks=16, asarray=False), transform, order=1)
    source.reads.clear()
    box = (slice(48, 64), slice(32, 48), slice(64, 80))
    block = lazy[box].compute()
    # Brute force: the pointwise transform, then map_coordinates on the whole volume.
    grid = np.stack(np.meshgrid(*[np.arange(s.start, s.stop) for s in box], indexing="ij"), -1)
    q = transform.moving_coordinates(grid.reshape(-1, 3))
    expected = ndi.map_coordinates(data, q.T, order=1, mode="nearest").reshape(block.shape)
    np.testing.assert_allclose(block, expected, atol=1e-9)
    np.testing.assert_allclose(warp(data, transform, order=1)[box], expected, atol=1e-9)
    lower, upper = q.min(axis=0), q.max(axis=0)
    assert source.reads
    for read in source.reads:
        for (a, b), lo, hi in zip(read, lower, upper, strict=True):
            assert lo - 32 < a and b < hi + 32, (read, lower, upper)  # nearby chunks only
