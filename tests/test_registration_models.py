"""register / Registration / ncc_confidence with rigid, similarity, affine and deformable models.

Against KNOWN transforms (tests/transform_pairs.py: the moving images are made with
scipy.ndimage from real pictures, the true coordinates from formulas).
"""

from __future__ import annotations

import json

import dask.array as da
import numpy as np
import pytest

from napari_ncc import Registration, ncc_confidence, register
from napari_ncc._transform import AffineTransform
from transform_pairs import interior_points, linear_matrix, linear_pair, picture

N = 256


def _pair(rng, angle=5.0, scale=1.0, shear=0.0, translation=(3.0, -2.0), noise=0.03):
    matrix = linear_matrix(angle, scale, shear, translation, n=N)
    reference, moving = linear_pair(picture("astronaut"), matrix, N, noise, rng)
    return reference, moving, matrix


def _truth(matrix, points):
    return points @ matrix[:2, :2].T + matrix[:2, 2]


@pytest.mark.parametrize(
    ("model", "angle", "scale", "shear"),
    [("rigid", 6.0, 1.0, 0.0), ("similarity", -4.0, 1.05, 0.0), ("affine", 3.0, 1.02, 0.03)],
)
def test_register_model_maps_points_to_the_truth(rng, model, angle, scale, shear):
    reference, moving, matrix = _pair(rng, angle, scale, shear)
    reg = register(reference, moving, model=model)
    assert reg.model == model
    assert reg.reliable
    points = interior_points(N)
    error = np.abs(reg.moving_coordinates(points) - _truth(matrix, points)).max()
    assert error < 0.25
    np.testing.assert_allclose(reg.matrix, matrix, atol=0.02)


def test_apply_numpy_equals_apply_dask_and_mask_matches_the_truth(rng):
    _, moving, matrix = _pair(rng)
    reg = Registration(shift=(0.0, 0.0), transform=AffineTransform(matrix, "rigid"))
    numpy_out = reg.apply(moving)
    lazy = reg.apply(da.from_array(moving, chunks=64))
    assert isinstance(lazy, da.Array)
    np.testing.assert_allclose(lazy.compute(), numpy_out, atol=1e-5)
    # Covered iff the true moving coordinates are inside [0, N - 1] (away from the edge).
    grid = np.indices((N, N), dtype=float).reshape(2, -1).T
    q = _truth(matrix, grid)
    inside = np.all((q >= 1e-3) & (q <= N - 1 - 1e-3), axis=1).reshape(N, N)
    outside = np.all((q < -1e-3) | (q > N - 1 + 1e-3), axis=1).reshape(N, N)
    mask = reg.valid_mask((N, N))
    assert mask[inside].all() and not mask[outside].any()
    with pytest.raises(ValueError, match="valid_mask"):
        reg.valid_region((N, N))


def test_to_dict_round_trips_the_transform(rng):
    reference, moving, _ = _pair(rng, angle=2.0, translation=(1.0, 1.0))
    for model in ("similarity", "deformable"):
        reg = register(reference, moving, model=model)
        back = Registration.from_dict(json.loads(json.dumps(reg.to_dict())))
        assert back.model == model
        points = interior_points(N)
        np.testing.assert_allclose(
            back.moving_coordinates(points), reg.moving_coordinates(points), atol=1e-9
        )


def test_translation_registration_is_unchanged_by_the_model_argument(rng):
    reference, moving, _ = _pair(rng, angle=0.0, translation=(2.5, -1.25))
    reg = register(reference, moving, model="translation")
    assert reg.transform is None and reg.model == "translation"
    np.testing.assert_allclose(reg.shift, (-2.5, 1.25), atol=0.05)


def test_bad_model_and_unsupported_inputs_raise_clear_errors(rng):
    image = rng.normal(size=(32, 32))
    with pytest.raises(ValueError, match="model must be one of 'translation', 'rigid'"):
        register(image, image, model="projective")
    with pytest.raises(ValueError, match="2D images and 3D volumes"):
        register(rng.normal(size=(2, 4, 32, 32)), rng.normal(size=(2, 4, 32, 32)), model="rigid")
    stack = rng.normal(size=(2, 3, 32, 32))  # per plane: 3D planes
    with pytest.raises(ValueError, match="per_plane needs 2D planes"):
        register(stack, stack, model="affine", per_plane=0)
    with pytest.raises(ValueError, match="needs a transform"):
        Registration(shift=(0.0, 0.0), model="rigid")


def test_a_model_that_would_be_ignored_is_an_error(rng):
    image = rng.normal(size=(32, 32))
    with pytest.raises(ValueError, match="register=False compares the images as they are"):
        ncc_confidence(image, image, register=False, model="rigid")
    given = Registration(shift=(0.0, 0.0))
    with pytest.raises(ValueError, match="the given registration is a 'translation' one"):
        ncc_confidence(image, image, registration=given, model="affine")
    # The registration's own model (or none asked) is fine.
    ncc, reg = ncc_confidence(image, image, registration=given, model="translation")
    assert reg is given and ncc.shape == image.shape


def test_rigid_confidence_on_a_rotated_picture_matches_a_noise_only_pair(rng):
    reference, moving, _ = _pair(rng, angle=5.0)
    ncc, reg = ncc_confidence(reference, moving, radius=4, model="rigid")
    assert reg.model == "rigid"
    inner = (slice(40, -40),) * 2
    ref0, mov0, _ = _pair(np.random.default_rng(1), angle=0.0, translation=(0.0, 0.0))
    baseline, _ = ncc_confidence(ref0, mov0, radius=4, register=False)
    assert np.median(ncc[inner]) >= 0.9 * np.median(baseline[inner])
    translated, _ = ncc_confidence(reference, moving, radius=4)
    assert np.median(translated[inner]) < 0.6 * np.median(baseline[inner])
    # Windows touching uncovered pixels are filled; the corners are uncovered.
    mask = reg.valid_mask(reference.shape)
    assert not mask[0, 0] and ncc[0, 0] == 0.0
    # Dask in, lazy Dask out, same values.
    lazy, _ = ncc_confidence(
        da.from_array(reference, chunks=128),
        da.from_array(moving, chunks=128),
        radius=4,
        registration=reg,
    )
    assert isinstance(lazy, da.Array)
    np.testing.assert_allclose(lazy.compute(), ncc, atol=1e-4)


def test_cli_compare_with_model_rigid_on_real_files(rng, tmp_path):
    import tifffile

    from test_cli import run

    reference, moving, matrix = _pair(rng, angle=5.0)
    tifffile.imwrite(tmp_path / "ref.tif", reference.astype(np.float32))
    tifffile.imwrite(tmp_path / "mov.tif", moving.astype(np.float32))
    out = tmp_path / "ncc.zarr"
    args = ("compare", tmp_path / "ref.tif", tmp_path / "mov.tif", "-o", out, "--radius", "4")
    result = run(*args, "--model", "rigid", "--json")
    assert result.returncode == 0, result.stderr
    printed = json.loads(result.stdout)
    back = Registration.from_dict(printed["registration"])
    assert back.model == "rigid"
    points = interior_points(N)
    error = np.abs(back.moving_coordinates(points) - _truth(matrix, points)).max()
    assert error < 0.25
    assert printed["summary"]["mean"] > 0.5
    text = run(*args, "--model", "rigid", "--overwrite")
    assert text.returncode == 0, text.stderr
    assert "transform: rigid, angle" in text.stdout
    bad = run(*args, "--model", "projective", "--overwrite")
    assert bad.returncode == 2 and "--model" in bad.stderr


def test_pyramid_levels_rescale_the_transform(rng):
    from skimage.transform import downscale_local_mean

    from napari_ncc._multiscale import ncc_levels

    reference, moving, matrix = _pair(rng, angle=5.0)
    reg = Registration(shift=(0.0, 0.0), transform=AffineTransform(matrix, "rigid"))
    pyramids = [
        [da.from_array(x), da.from_array(downscale_local_mean(x, (2, 2)))]
        for x in (reference, moving)
    ]
    levels = ncc_levels(*pyramids, radius=3, registration=reg)
    unregistered = ncc_levels(*pyramids, radius=3)
    inner = (slice(20, -20),) * 2
    level1 = np.asarray(levels[1])[inner]
    assert np.median(level1) > 0.9
    assert np.median(level1) > np.median(np.asarray(unregistered[1])[inner]) + 0.2
