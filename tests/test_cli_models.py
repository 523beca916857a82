"""``napari-ncc compare --model``: the transform in the printed summary, the JSON and the map.

Real TIFF files on disk, made from real pictures through KNOWN transforms
(``tests/transform_pairs.py``); the console script is run as a user runs it.
"""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
import tifffile
import zarr

from napari_ncc import Registration
from test_cli import assert_one_line_error, run
from transform_pairs import (
    SmoothWarp,
    interior_points,
    linear_matrix,
    linear_pair,
    picture,
    warped_pair,
)

N = 256
ANGLE, TRANSLATION = 5.0, (2.0, -1.0)


@pytest.fixture(scope="module")
def rotated_pair(tmp_path_factory):
    """Moving = the reference's picture rotated by ANGLE about the centre and moved."""
    matrix = linear_matrix(ANGLE, translation=TRANSLATION, n=N)
    images = linear_pair(picture("astronaut"), matrix, N, 0.03, np.random.default_rng(0))
    return _write(tmp_path_factory.mktemp("rotated"), images)


@pytest.fixture(scope="module")
def warped(tmp_path_factory):
    """(paths, warp): a rotation of 0.8 degrees plus a smooth 3 px field."""
    rng = np.random.default_rng(3)
    warp = SmoothWarp(linear_matrix(0.8, translation=(3.3, -2.1), n=N), 3.0, (250, 200), rng)
    images = warped_pair(picture("brick"), warp, N, 0.03, rng)
    return _write(tmp_path_factory.mktemp("warped"), images), warp


def _write(folder, images):
    paths = folder / "reference.tif", folder / "moving.tif"
    for path, image in zip(paths, images, strict=True):
        tifffile.imwrite(path, image.astype(np.float32))
    return paths


def _stored(path) -> dict:
    return dict(zarr.open_array(path, mode="r").attrs)["napari_ncc"]


def test_rigid_prints_the_angle_and_shift_and_stores_them_with_the_map(rotated_pair, tmp_path):
    out = tmp_path / "ncc.zarr"
    result = run("compare", *rotated_pair, "-o", out, "--model", "rigid")
    assert result.returncode == 0, result.stderr
    match = re.search(
        r"^transform: rigid, angle ([-+][\d.]+) deg, scale ([\d.]+), shift at the centre "
        r"y ([-+][\d.]+), x ([-+][\d.]+) px  \(registration quality",
        result.stdout,
        re.M,
    )
    assert match, result.stdout
    assert abs(float(match[1]) - ANGLE) < 0.02
    assert float(match[2]) == 1.0
    # The centre moves by TRANSLATION, so the shift that brings it back is minus that.
    np.testing.assert_allclose(
        [float(match[3]), float(match[4])], [-t for t in TRANSLATION], atol=0.05
    )
    assert re.search(r"^  tiles: \d+, \d+ rejected as outliers$", result.stdout, re.M)

    printed = json.loads(
        run(
            "compare", *rotated_pair, "-o", out, "--model", "rigid", "--overwrite", "--json"
        ).stdout
    )
    summary = printed["transform"]
    assert summary["model"] == printed["registration"]["model"] == "rigid"
    assert abs(summary["angle"] - ANGLE) < 0.02 and abs(summary["scale"] - 1) < 1e-9
    np.testing.assert_allclose(summary["shift"], [-t for t in TRANSLATION], atol=0.05)
    assert summary["field"] is None and summary["tiles"]["count"] >= 4
    # The map records the same figures, and the transform itself (reusable).
    stored = _stored(out)
    assert stored["transform"] == summary
    registration = Registration.from_dict(stored["registration"])
    p = interior_points(N)
    truth = p @ linear_matrix(ANGLE, translation=TRANSLATION, n=N)[:2, :2].T
    truth += linear_matrix(ANGLE, translation=TRANSLATION, n=N)[:2, 2]
    assert np.abs(registration.moving_coordinates(p) - truth).max() < 0.25


def test_deformable_prints_the_field_and_stores_it_with_the_map(warped, tmp_path):
    paths, warp = warped
    out = tmp_path / "ncc.zarr"
    result = run("compare", *paths, "-o", out, "--model", "deformable")
    assert result.returncode == 0, result.stderr
    assert re.search(r"^transform: deformable, angle [-+][\d.]+ deg, scale", result.stdout, re.M)
    field = re.search(
        r"^  field: largest displacement ([\d.]+) px, median ([\d.]+) px \((\d+) nodes\)$",
        result.stdout,
        re.M,
    )
    assert field, result.stdout
    tiles = re.search(r"^  tiles: (\d+), (\d+) rejected as outliers$", result.stdout, re.M)
    assert tiles, result.stdout

    printed = json.loads(
        run("compare", *paths, "-o", out, "--model", "deformable", "--overwrite", "--json").stdout
    )
    summary = printed["transform"]
    assert summary["model"] == "deformable"
    # The text rounds the JSON's figures.
    assert f"{summary['field']['largest']:.2f}" == field[1]
    assert f"{summary['field']['median']:.2f}" == field[2]
    assert summary["field"]["nodes"] == int(field[3])
    assert summary["tiles"] == {"count": int(tiles[1]), "rejected": int(tiles[2])}
    # A field of 3 px per axis: a few pixels at most beyond the linear part, not zero.
    assert 1.0 < summary["field"]["largest"] < 8.0
    assert summary["field"]["median"] <= summary["field"]["largest"]
    # The map records the whole transform: reloaded, it maps points where the true warp does.
    stored = _stored(out)
    assert stored["transform"] == summary
    registration = Registration.from_dict(stored["registration"])
    p = interior_points(N, margin=0.1, count=30)
    error = np.linalg.norm(registration.moving_coordinates(p) - warp.moving_coordinates(p), axis=1)
    assert np.sqrt(np.mean(error**2)) < 0.3


def test_translation_has_no_transform_figures(rotated_pair, tmp_path):
    printed = json.loads(
        run("compare", *rotated_pair, "-o", tmp_path / "ncc.zarr", "--json").stdout
    )
    assert printed["transform"] is None
    assert printed["registration"]["model"] == "translation"


def test_model_with_no_register_is_a_one_line_error(rotated_pair, tmp_path):
    out = tmp_path / "ncc.zarr"
    result = run("compare", *rotated_pair, "-o", out, "--no-register", "--model", "rigid")
    assert_one_line_error(result, 1, "--model rigid", "--no-register")
    assert not out.exists()
