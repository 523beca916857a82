"""``napari-ncc compare --mask PATH --min-fraction F`` (issue 15), run as the console script.

The mask is a real file (a TIFF of labels: non-zero is data); the written map is checked
against the brute-force masked Pearson of the reference and the registered moving image
over the mask and the region the registered image covers.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import tifffile
from scipy import ndimage
from skimage import data

from napari_ncc import Registration
from reference import brute_force_masked_ncc
from test_cli import assert_one_line_error, read_map, run

SHAPE = (64, 72)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("mask")
    reference = data.camera()[120 : 120 + SHAPE[0], 220 : 220 + SHAPE[1]].astype(np.float32)
    moving = ndimage.shift(reference, (1.6, -2.4), order=3, mode="nearest").astype(np.float32)
    labels = np.ones(SHAPE, np.uint16) * 3
    labels[20:40, 25:50] = 0  # an excluded rectangle
    labels[::7, ::5] = 0  # dead pixels
    paths = {name: folder / f"{name}.tif" for name in ("reference", "moving", "mask")}
    for name, image in (("reference", reference), ("moving", moving), ("mask", labels)):
        tifffile.imwrite(paths[name], image)
    return paths, reference, moving, labels != 0


@pytest.mark.parametrize("output", ["ncc.zarr", "ncc.tif"])
def test_compare_with_a_mask_matches_brute_force(files, tmp_path, output):
    paths, reference, moving, mask = files
    out = tmp_path / output
    result = run(
        "compare", paths["reference"], paths["moving"], "-o", out, "--mask", paths["mask"],
        "--min-fraction", "0.4", "--fill-value", "nan", "--json", "--quiet",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["mask"] == str(paths["mask"]) and report["min_fraction"] == 0.4
    registration = Registration.from_dict(report["registration"])
    valid = mask & registration.valid_mask(SHAPE)
    expected, _ = brute_force_masked_ncc(
        reference, registration.apply(moving), valid, 3, min_fraction=0.4, fill_value=np.nan
    )
    written = read_map(out)
    np.testing.assert_array_equal(np.isnan(written), np.isnan(expected))
    np.testing.assert_allclose(written, expected, atol=1e-4)
    assert np.isnan(written[28:32, 33:42]).all()  # inside the excluded rectangle


def test_mask_of_another_shape_is_one_line(files, tmp_path):
    paths, *_ = files
    small = tmp_path / "small.tif"
    tifffile.imwrite(small, np.ones((10, 10), np.uint8))
    result = run(
        "compare", paths["reference"], paths["moving"], "-o", tmp_path / "o.zarr", "--mask", small
    )
    assert_one_line_error(result, 1, "MASK (small.tif)", "(64, 72)", "(10, 10)")
    assert not (tmp_path / "o.zarr").exists()


def test_missing_mask_is_one_line(files, tmp_path):
    paths, *_ = files
    result = run(
        "compare", paths["reference"], paths["moving"], "-o", tmp_path / "o.zarr",
        "--mask", tmp_path / "nope.tif",
    )  # fmt: skip
    assert_one_line_error(result, 1, "MASK", "nope.tif", "does not exist")


@pytest.mark.parametrize(
    "fraction, status, needle",
    [("0", 1, "min_fraction must be in (0, 1]"), ("1.5", 1, "(0, 1]"), ("abc", 2, "'abc'")],
)
def test_bad_min_fraction_is_one_line(files, tmp_path, fraction, status, needle):
    paths, *_ = files
    result = run(
        "compare", paths["reference"], paths["moving"], "-o", tmp_path / "o.zarr",
        "--mask", paths["mask"], "--min-fraction", fraction,
    )  # fmt: skip
    assert_one_line_error(result, status, needle)


def test_help_lists_the_mask_options():
    result = run("compare", "--help")
    assert "--mask" in result.stdout and "--min-fraction" in result.stdout
