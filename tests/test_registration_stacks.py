"""register / Registration / ncc_confidence with rigid, similarity, affine and deformable
models per plane of a stack: a ROTATING DRIFT with known truth per plane.

The stacks are planes of real pictures seen through known matrices (tests/transform_pairs.py,
made with scipy.ndimage); the true reference -> moving coordinates of each plane come from
the formulas there, never from the code under test.
"""

from __future__ import annotations

import json
import re

import dask.array as da
import numpy as np
import pytest

from napari_ncc import Registration, ncc_confidence, register
from napari_ncc._transform import AffineTransform
from transform_pairs import (
    SmoothWarp,
    drift_stack,
    interior_points,
    linear_matrix,
    picture,
    warped_pair,
)

N = 224
PLANES = 4
NOISE = 0.02


def _drift(t, model):
    """Plane t's reference -> moving matrix: rotating by 0.7 deg and moving 1.5, -1 px per
    plane; growing by 1% per plane (similarity); shearing by 0.01 per plane (affine)."""
    scale = 1.0 + 0.01 * t if model in ("similarity", "affine") else 1.0
    shear = 0.01 * t if model == "affine" else 0.0
    return linear_matrix(0.7 * t, scale, shear, (1.5 * t, -1.0 * t), n=N)


def _stacks(model, seed=0):
    """(reference stack, moving stack, truth matrices): plane t onto plane t."""
    rng = np.random.default_rng(seed)
    big = picture("astronaut")
    matrices = [_drift(t, model) for t in range(PLANES)]
    reference, _ = drift_stack(big, [np.eye(3)] * PLANES, N, NOISE, rng)
    moving, _ = drift_stack(big, matrices, N, NOISE, rng)
    return reference, moving, matrices


def _stack_points(t, points):
    return np.column_stack([np.full(len(points), float(t)), points])


def _truth(matrix, points):
    return points @ matrix[:2, :2].T + matrix[:2, 2]


@pytest.fixture(scope="module")
def rigid_case():
    reference, moving, matrices = _stacks("rigid")
    calls = []
    reg = register(
        reference, moving, model="rigid", per_plane=0, progress=lambda *a: calls.append(a)
    )
    return reference, moving, matrices, reg, calls


@pytest.mark.parametrize("model", ["rigid", "similarity", "affine"])
def test_linear_models_follow_a_rotating_drift_plane_by_plane(model, rigid_case):
    if model == "rigid":
        reference, moving, matrices, reg, _ = rigid_case
    else:
        reference, moving, matrices = _stacks(model)
        reg = register(reference, moving, model=model, per_plane=0)
    assert reg.model == model and reg.per_plane == 0 and reg.reference_plane is None
    assert reg.reliable and reg.transform is None and len(reg.transforms) == PLANES
    points = interior_points(N, count=9)
    centre = np.array([[(N - 1) / 2] * 2])
    for t, matrix in enumerate(matrices):
        mapped = reg.moving_coordinates(_stack_points(t, points))
        assert np.all(mapped[:, 0] == t)  # the plane index is a coordinate, kept
        assert np.abs(mapped[:, 1:] - _truth(matrix, points)).max() <= 0.25
        # matrix[t]: plane t's matrix over the stack's axes, identity along the planes.
        embedded = np.eye(4)
        embedded[1:, 1:] = matrix
        np.testing.assert_allclose(reg.matrix[t], embedded, atol=0.02)
        # shifts[t]: the displacement at the plane's centre, 0 along the plane axis.
        expected = np.insert(centre[0] - _truth(matrix, centre)[0], 0, 0.0)
        np.testing.assert_allclose(reg.shifts[t], expected, atol=0.1)
    assert reg.qualities.shape == (PLANES,) and reg.quality == reg.qualities.min()


def test_points_of_several_planes_in_any_order_and_shape(rigid_case):
    *_, matrices, reg, _ = rigid_case
    points = interior_points(N, count=3)
    stacked = np.concatenate([_stack_points(t, points) for t in (3, 0, 2, 0)])
    mapped = reg.moving_coordinates(stacked.reshape(4, len(points), 3))
    assert mapped.shape == (4, len(points), 3)
    for i, t in enumerate((3, 0, 2, 0)):
        assert np.abs(mapped[i, :, 1:] - _truth(matrices[t], points)).max() <= 0.25
    with pytest.raises(ValueError, match="plane indices"):
        reg.moving_coordinates([[0.5, 10.0, 10.0]])
    with pytest.raises(ValueError, match="plane indices"):
        reg.moving_coordinates([[PLANES, 10.0, 10.0]])


def test_progress_advances_once_per_plane(rigid_case):
    *_, calls = rigid_case
    assert calls == [(t, PLANES) for t in range(PLANES + 1)]


def test_deformable_per_plane_on_a_small_stack(rng):
    n = 256
    big = picture("ihc")
    warps, references, movings = [], [], []
    for t in range(2):
        matrix = linear_matrix(0.5 * t, translation=(1.0 * t, 0.5), n=n)
        warp = SmoothWarp(matrix, amplitude=3.0, wavelengths=(220.0, 260.0), rng=rng)
        reference, moving = warped_pair(big, warp, n, NOISE, rng)
        warps.append(warp)
        references.append(reference)
        movings.append(moving)
    reg = register(np.stack(references), np.stack(movings), model="deformable", per_plane=0)
    assert reg.model == "deformable" and len(reg.transforms) == 2
    points = interior_points(n, count=12)
    for t, warp in enumerate(warps):
        error = reg.moving_coordinates(_stack_points(t, points))[:, 1:]
        error = np.linalg.norm(error - warp.moving_coordinates(points), axis=1)
        assert np.sqrt(np.mean(error**2)) <= 0.3
        assert np.percentile(error, 95) <= 0.6
    # The fields go through JSON and through the lazy warp.
    back = Registration.from_dict(json.loads(json.dumps(reg.to_dict())))
    stacked = np.concatenate([_stack_points(t, points) for t in range(2)])
    np.testing.assert_allclose(back.moving_coordinates(stacked), reg.moving_coordinates(stacked))
    moving = np.stack(movings)
    lazy = reg.apply(da.from_array(moving, chunks=(1, 64, 64)), order=3)
    np.testing.assert_allclose(lazy.compute(), reg.apply(moving, order=3), atol=1e-5)


def test_drift_correction_onto_one_reference_plane():
    # One stack passed twice: plane t of it is the picture through M_t, so registering
    # plane t onto plane k maps a point p of plane k to M_t @ M_k^-1 p.
    rng = np.random.default_rng(3)
    matrices = [_drift(t, "rigid") for t in range(PLANES)]
    stack, _ = drift_stack(picture("astronaut"), matrices, N, NOISE, rng)
    k = 1
    calls = []
    reg = register(
        stack,
        stack,
        model="rigid",
        per_plane=0,
        reference_plane=k,
        progress=lambda *a: calls.append(a),
    )
    assert reg.reference_plane == k and calls[-1] == (PLANES, PLANES)
    points = interior_points(N, count=9)
    for t, matrix in enumerate(matrices):
        truth = matrix @ np.linalg.inv(matrices[k])
        mapped = reg.moving_coordinates(_stack_points(t, points))[:, 1:]
        assert np.abs(mapped - _truth(truth, points)).max() <= 0.25
    np.testing.assert_allclose(reg.transforms[k].matrix, np.eye(3), atol=2e-3)
    # The map compares every registered plane with plane k: as good as plane k with itself
    # up to the noise; the registered planes agree with plane k.
    ncc, _ = ncc_confidence(stack, stack, radius=4, per_plane=0, registration=reg)
    inner = (slice(None), slice(40, -40), slice(40, -40))
    medians = np.median(ncc[inner], axis=(1, 2))
    assert medians.min() >= 0.9 * medians[k]


def test_lazy_apply_equals_numpy_apply_and_reads_only_nearby_blocks(rigid_case):
    from test_warp import CountingArray

    _, moving, _, reg, _ = rigid_case
    numpy_out = reg.apply(moving)
    assert numpy_out.shape == moving.shape and numpy_out.dtype == np.float64
    source = CountingArray(moving)
    lazy = reg.apply(da.from_array(source, chunks=(1, 32, 32), asarray=False))
    assert isinstance(lazy, da.Array) and lazy.chunks[0] == (1,) * PLANES
    np.testing.assert_allclose(lazy.compute(), numpy_out, atol=1e-5)
    source.reads.clear()
    block = lazy[2, 96:128, 96:128].compute()
    np.testing.assert_allclose(block, numpy_out[2, 96:128, 96:128], atol=1e-5)
    assert source.reads and all(read[0] == (2, 3) for read in source.reads)  # plane 2 only
    read_pixels = sum((b1 - a1) * (b2 - a2) for _, (a1, b1), (a2, b2) in source.reads)
    assert read_pixels <= 9 * 32 * 32
    # Each plane is warped by its own transform: plane t of apply is the moving plane
    # sampled at the true coordinates (away from the border).
    grid = np.indices((N, N), dtype=float).reshape(2, -1).T
    from scipy import ndimage as ndi

    for t in (0, 3):
        truth = _truth(_drift(t, "rigid"), grid).T
        expected = ndi.map_coordinates(moving[t], truth, order=1).reshape(N, N)
        inner = (slice(30, -30),) * 2
        assert np.abs(numpy_out[t][inner] - expected[inner]).max() < 0.02


def test_valid_mask_per_plane_matches_the_truth_and_lazily(rigid_case):
    *_, reg, _ = rigid_case
    shape = (PLANES, N, N)
    mask = reg.valid_mask(shape)
    lazy = reg.valid_mask(shape, chunks=(2, 50, 70))
    assert isinstance(lazy, da.Array)
    np.testing.assert_array_equal(lazy.compute(), mask)
    grid = np.indices((N, N), dtype=float).reshape(2, -1).T
    for t in range(PLANES):
        q = _truth(_drift(t, "rigid"), grid)
        inside = np.all((q >= 0.5) & (q <= N - 1.5), axis=1).reshape(N, N)
        outside = np.any((q < -0.5) | (q > N - 0.5), axis=1).reshape(N, N)
        assert mask[t][inside].all() and not mask[t][outside].any()
    with pytest.raises(ValueError, match="valid_mask"):
        reg.valid_region(shape)
    with pytest.raises(ValueError, match="planes along axis 0"):
        reg.valid_mask((PLANES + 1, N, N))
    with pytest.raises(ValueError, match="3 dimensions"):
        reg.apply(np.zeros((N, N)))


def test_to_dict_from_dict_round_trip(rigid_case):
    *_, reg, _ = rigid_case
    d = reg.to_dict()
    assert d["model"] == "rigid" and len(d["transforms"]) == PLANES
    assert d["tiles"]["planes"] == PLANES and d["tiles"]["count"] > 0
    back = Registration.from_dict(json.loads(json.dumps(d)))
    assert back.model == "rigid" and back.per_plane == 0 and len(back.transforms) == PLANES
    points = np.concatenate([_stack_points(t, interior_points(N, count=4)) for t in range(4)])
    np.testing.assert_allclose(back.moving_coordinates(points), reg.moving_coordinates(points))
    np.testing.assert_allclose(back.matrix, reg.matrix)
    np.testing.assert_allclose(back.shifts, reg.shifts)
    np.testing.assert_allclose(back.qualities, reg.qualities)
    np.testing.assert_array_equal(back.valid_mask((PLANES, N, N)), reg.valid_mask((PLANES, N, N)))
    plane = back.plane_registration(2)
    assert plane.model == "rigid" and plane.ndim == 2
    np.testing.assert_allclose(plane.matrix, reg.transforms[2].matrix)


def test_confidence_on_the_stack_matches_a_noise_only_stack(rigid_case):
    reference, moving, _, reg, _ = rigid_case
    ncc, used = ncc_confidence(reference, moving, radius=4, per_plane=0, model="rigid")
    assert used.model == "rigid" and used.transforms is not None
    rng = np.random.default_rng(7)
    noise_only, _ = drift_stack(picture("astronaut"), [np.eye(3)] * PLANES, N, NOISE, rng)
    baseline, _ = ncc_confidence(reference, noise_only, radius=4, per_plane=0, register=False)
    inner = (slice(None), slice(40, -40), slice(40, -40))
    assert np.median(ncc[inner]) >= 0.9 * np.median(baseline[inner])
    translated, _ = ncc_confidence(reference, moving, radius=4, per_plane=0)
    assert np.median(translated[3][inner[1:]]) < 0.8 * np.median(baseline[3][inner[1:]])
    # Uncovered corners of the rotated planes are filled; plane 0 barely moves.
    assert ncc[3, 0, 0] == 0.0 and not used.valid_mask(reference.shape)[3, 0, 0]
    # Dask in, lazy Dask out, same map; with a mask, windows count covered pixels only.
    lazy, _ = ncc_confidence(
        da.from_array(reference, chunks=(1, 112, 112)),
        da.from_array(moving, chunks=(1, 112, 112)),
        radius=4,
        per_plane=0,
        registration=reg,
    )
    assert isinstance(lazy, da.Array)
    np.testing.assert_allclose(lazy.compute(), ncc, atol=1e-4)
    ones = da.ones(reference.shape, dtype=bool, chunks=(1, 112, 112))
    masked, _ = ncc_confidence(
        reference, moving, radius=4, per_plane=0, registration=reg, mask=ones
    )
    masked = np.asarray(masked)
    np.testing.assert_allclose(masked[inner], ncc[inner], atol=1e-4)


def test_pyramid_levels_rescale_each_plane_transform(rigid_case):
    from skimage.transform import downscale_local_mean

    from napari_ncc._multiscale import ncc_levels

    reference, moving, _, reg, _ = rigid_case
    pyramids = [
        [da.from_array(x), da.from_array(downscale_local_mean(x, (1, 2, 2)))]
        for x in (reference, moving)
    ]
    levels = ncc_levels(*pyramids, radius=3, registration=reg, per_plane=0)
    unregistered = ncc_levels(*pyramids, radius=3, per_plane=0)
    inner = (3, slice(20, -20), slice(20, -20))
    level1 = np.asarray(levels[1])[inner]
    assert np.median(level1) > 0.8
    assert np.median(level1) > np.median(np.asarray(unregistered[1])[inner]) + 0.2


def test_summary_prints_the_angle_and_scale_range_per_plane(rigid_case):
    from napari_ncc._summary import describe, describe_registration

    *_, reg, _ = rigid_case
    result = {
        "registration": reg.to_dict(),
        "summary": {"mean": 0.9, "confident": 0.9, "threshold": 0.5, "undefined": 0.1},
        "shape": [PLANES, N, N],
        "radius": 3,
        "window": "box",
    }
    text = "\n".join(describe(result))
    assert f"{PLANES} rigid transforms, one per plane along axis 0" in text
    # The range printed is the drift's: 0 to 0.7 * 3 degrees.
    found = re.search(r"over the planes: angle ([-+][\d.]+) to ([-+][\d.]+) deg", text)
    assert found, text
    np.testing.assert_allclose([float(v) for v in found.groups()], [0.0, 2.1], atol=0.05)
    last = re.search(r"plane 3: angle ([-+][\d.]+) deg", text)
    assert last and abs(float(last.group(1)) - 2.1) < 0.05, text
    widget_text = describe_registration(reg)
    assert "rigid transforms" in widget_text and "(lowest plane)" in widget_text


def test_bad_arguments_raise_clear_errors(rng, rigid_case):
    *_, reg, _ = rigid_case
    image = rng.normal(size=(64, 64))
    with pytest.raises(ValueError, match="per_plane needs 2D planes"):
        register(image, image, model="rigid", per_plane=0)
    stack = rng.normal(size=(3, 64, 64))
    with pytest.raises(ValueError, match="per_plane needs 2D planes"):
        register(stack, stack, model="rigid", per_plane=0, axes=2)
    with pytest.raises(ValueError, match="reference_plane must be an integer"):
        register(stack, stack, model="rigid", per_plane=0, reference_plane=3)
    rigid = AffineTransform.from_rotation(1.0)
    shifts = np.zeros((2, 3))
    with pytest.raises(ValueError, match="shifts"):
        Registration(shift=(0, 0, 0), per_plane=0, transforms=(rigid, rigid))
    with pytest.raises(ValueError, match="transforms has 1 planes"):
        Registration(shift=(0, 0, 0), shifts=shifts, per_plane=0, transforms=(rigid,))
    affine = AffineTransform(np.diag([1.1, 0.9, 1.0]), "affine")
    with pytest.raises(ValueError, match="one model"):
        Registration(shift=(0, 0, 0), shifts=shifts, per_plane=0, transforms=(rigid, affine))
    with pytest.raises(ValueError, match="must have 1 dimensions"):
        Registration(shift=(0, 0), shifts=np.zeros((2, 2)), per_plane=0, transforms=(rigid,) * 2)
    with pytest.raises(ValueError, match="plane must be an integer"):
        reg.plane_registration(PLANES)
    with pytest.raises(ValueError, match="per-plane registration"):
        Registration(shift=(0.0, 0.0)).plane_registration(0)


def test_cli_compare_with_model_per_plane_on_a_tiff_stack(rigid_case, tmp_path):
    import tifffile
    import zarr

    from test_cli import assert_one_line_error, run

    reference, moving, matrices, _, _ = rigid_case
    stack = {"photometric": "minisblack", "metadata": {"axes": "TYX"}}
    tifffile.imwrite(tmp_path / "ref.tif", reference.astype(np.float32), **stack)
    tifffile.imwrite(tmp_path / "mov.tif", moving.astype(np.float32), **stack)
    out = tmp_path / "ncc.zarr"
    args = ("compare", tmp_path / "ref.tif", tmp_path / "mov.tif", "-o", out, "--radius", "4")
    result = run(*args, "--per-plane", "0", "--model", "rigid", "--json", "-q")
    assert result.returncode == 0, result.stderr
    printed = json.loads(result.stdout)
    back = Registration.from_dict(printed["registration"])
    assert back.model == "rigid" and len(back.transforms) == PLANES
    points = interior_points(N, count=9)
    for t, matrix in enumerate(matrices):
        mapped = back.moving_coordinates(_stack_points(t, points))[:, 1:]
        assert np.abs(mapped - _truth(matrix, points)).max() <= 0.25
    assert printed["summary"]["mean"] > 0.5
    figures = printed["transform"]
    assert figures["model"] == "rigid" and figures["per_plane"] == 0
    angles = [plane["angle"] for plane in figures["planes"]]
    np.testing.assert_allclose(angles, [0.7 * t for t in range(PLANES)], atol=0.05)
    stored = zarr.open_array(out, mode="r").attrs.asdict()
    assert json.dumps(stored).count('"model": "rigid"') >= PLANES
    text = run(*args, "--per-plane", "0", "--model", "rigid", "--overwrite")
    assert text.returncode == 0, text.stderr
    assert f"registration: {PLANES} rigid transforms, one per plane along axis 0" in text.stdout
    last = re.search(r"plane 3: angle ([-+][\d.]+) deg", text.stdout)
    assert "over the planes: angle" in text.stdout
    assert last and abs(float(last.group(1)) - 2.1) < 0.05, text.stdout
    tifffile.imwrite(tmp_path / "plane.tif", reference[0].astype(np.float32))
    plane = tmp_path / "plane.tif"
    bad = run(
        "compare", plane, plane, "-o", tmp_path / "bad.zarr", "--per-plane", "0", "--model",
        "rigid", "-q",
    )  # fmt: skip
    assert_one_line_error(bad, 1, "model='rigid' with per_plane needs 2D planes")


def test_widget_transform_choice_on_a_stack(make_napari_viewer, qtbot, rigid_case):
    from test_widget import _open, _run

    reference, moving, matrices, _, _ = rigid_case
    viewer = make_napari_viewer()
    ref_layer = viewer.add_image(reference.astype(np.float32), name="reference")
    mov_layer = viewer.add_image(moving.astype(np.float32), name="moving")
    widget = _open(viewer)
    layer = _run(
        qtbot,
        widget,
        reference=ref_layer,
        moving=mov_layer,
        model="rigid",
        per_plane=0,
        show_shifts=True,
    )
    back = Registration.from_dict(layer.metadata["napari_ncc"]["registration"])
    # The local shifts of every plane, each arrow at its plane index (none along it).
    arrows = [lay for lay in viewer.layers if lay.name.startswith("local shifts")]
    assert arrows, [lay.name for lay in viewer.layers]
    data = np.concatenate([np.asarray(lay.data) for lay in arrows])
    assert data.shape[1:] == (2, 3)
    assert set(np.unique(data[:, 0, 0]).tolist()) == set(range(PLANES))
    assert np.all(data[:, 1, 0] == 0)
    assert back.model == "rigid" and len(back.transforms) == PLANES
    points = interior_points(N, count=5)
    mapped = back.moving_coordinates(_stack_points(3, points))[:, 1:]
    assert np.abs(mapped - _truth(matrices[3], points)).max() <= 0.25
    assert "rigid transforms, one per plane" in widget.result.value
    ncc = np.asarray(layer.data[0] if layer.multiscale else layer.data)
    assert np.median(ncc[:, 40:-40, 40:-40]) > 0.8


def test_write_ncc_with_a_per_plane_registration_stores_it(rigid_case, tmp_path):
    from napari_ncc import read_image, write_ncc

    reference, moving, _, reg, _ = rigid_case
    out = write_ncc(
        reference, moving, tmp_path / "ncc.zarr", radius=4, axes=(1, 2), registration=reg,
        progress=False,
    )  # fmt: skip
    (written,), meta = read_image(out)
    expected, _ = ncc_confidence(reference, moving, radius=4, per_plane=0, registration=reg)
    np.testing.assert_allclose(written.compute(), expected, atol=1e-4)
    back = Registration.from_dict(meta["napari_ncc"]["registration"])
    np.testing.assert_allclose(back.matrix, reg.matrix)


def test_dask_stack_registers_like_numpy_reading_each_chunk_once(rigid_case):
    from test_warp import CountingArray

    reference, moving, _, reg, _ = rigid_case
    source = CountingArray(moving)
    lazy = register(
        da.from_array(reference, chunks=(1, 112, 112)),
        da.from_array(source, chunks=(2, N, N), asarray=False),
        model="rigid",
        per_plane=0,
    )
    np.testing.assert_allclose(lazy.matrix, reg.matrix, atol=1e-9)
    # A chunk of two planes is read once, not once per plane (Dask's empty meta reads
    # aside).
    planes = sorted(read[0] for read in source.reads if read[0][1] > read[0][0])
    assert planes == [(0, 2), (2, 4)]


def test_a_plane_that_does_not_match_makes_the_stack_unreliable(rigid_case):
    from napari_ncc import RegistrationWarning

    reference, moving, _, _, _ = rigid_case
    moving = moving[:3].copy()
    moving[1] = np.random.default_rng(5).random((N, N))  # plane 1: noise, nothing to match
    with pytest.warns(RegistrationWarning, match="1 of 3 planes unreliable"):
        reg = register(reference[:3], moving, model="rigid", per_plane=0)
    assert not reg.reliable and "first: plane 1" in reg.notes[0]
    assert reg.qualities[1] < 0.3 < min(reg.qualities[0], reg.qualities[2])
    assert reg.quality == reg.qualities[1]


def test_the_plane_axis_may_be_any_axis(rigid_case):
    # The same transforms on a (y, x, t) stack: every answer is the (t, y, x) one with the
    # axes moved.
    _, moving, matrices, _, _ = rigid_case
    transforms = tuple(AffineTransform(m, "rigid") for m in matrices)
    shifts = np.zeros((PLANES, 3))
    first = Registration(shift=(0, 0, 0), shifts=shifts, per_plane=0, transforms=transforms)
    last = Registration(shift=(0, 0, 0), shifts=shifts, per_plane=2, transforms=transforms)
    moved = np.moveaxis(moving, 0, -1)
    np.testing.assert_allclose(np.moveaxis(last.apply(moved), -1, 0), first.apply(moving))
    lazy = last.apply(da.from_array(moved, chunks=(64, 64, 1)))
    np.testing.assert_allclose(np.moveaxis(lazy.compute(), -1, 0), first.apply(moving))
    np.testing.assert_array_equal(
        np.moveaxis(last.valid_mask(moved.shape), -1, 0), first.valid_mask(moving.shape)
    )
    points = _stack_points(3, interior_points(N, count=3))
    np.testing.assert_allclose(
        last.moving_coordinates(points[:, [1, 2, 0]])[:, [2, 0, 1]],
        first.moving_coordinates(points),
    )
    order = [2, 0, 1, 3]  # (t, y, x, 1) of first in the axes of last
    np.testing.assert_allclose(last.matrix[:, order][:, :, order], first.matrix)
