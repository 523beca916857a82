"""Rigid, similarity and deformable registration of lazy pairs larger than ``max_size``.

The pairs (:mod:`lazy_pairs`) are Dask arrays computed block by block from a procedural
texture, the moving one through a known transform; the accuracy is the distance between
``moving_coordinates(p)`` and the true position at interior points, and the blocks each
image computes are counted: after the block-mean pass only blocks near the tiles are read.
"""

from __future__ import annotations

import dask
import dask.array as da
import numpy as np
import pytest

from lazy_pairs import LazyPair, SineField, rotation_matrix
from napari_ncc import register
from napari_ncc._large_transform import tile_grid
from napari_ncc._transform import AffineTransform, DeformableTransform
from transform_pairs import interior_points

N = 1500
CHUNK = 50
CENTER = ((N - 1) / 2, (N - 1) / 2)


@pytest.fixture(autouse=True)
def synchronous():
    # Block reads counted in order: the block-mean pass ends before the tiles start.
    with dask.config.set(scheduler="synchronous"):
        yield


def _errors(reg, pair, n=N):
    points = interior_points(n, margin=0.1, count=19)
    truth = pair.moving_coordinates(points)
    inside = np.all((truth > 3) & (truth < n - 4), axis=1)
    assert inside.sum() > 200
    return np.linalg.norm(reg.moving_coordinates(points[inside]) - truth[inside], axis=1)


def _distance_to_boxes(chunk, centres, reach):
    """Chebyshev distance (pixels) from the block `chunk` (block index) to the nearest
    of `centres`, minus `reach`."""
    lo = np.asarray(chunk) * CHUNK
    hi = lo + CHUNK - 1
    gap = np.maximum(np.maximum(lo - centres, centres - hi), 0).max(axis=1)
    return gap.min() - reach


@pytest.mark.parametrize(
    ("model", "angle", "shift"),
    [("rigid", 1.1, (230.4, -170.7)), ("rigid", -0.8, (-310.25, 95.6))],
)
def test_rigid_on_a_lazy_pair_larger_than_max_size_reads_only_tiles_after_block_means(
    model, angle, shift
):
    pair = LazyPair((N, N), CHUNK, rotation_matrix(angle, shift, CENTER))
    calls = []
    reg = register(
        pair.reference,
        pair.moving,
        model=model,
        max_size=512,
        progress=lambda *c: calls.append(c),
    )
    assert reg.reliable and reg.model == model
    assert "block-mean" in reg.method
    errors = _errors(reg, pair)
    assert errors.max() <= 0.25

    # The block-mean pass reads every block once; then only blocks near the tiles, once.
    n_blocks = (N // CHUNK) ** 2
    for name, points in (
        ("reference", reg.tiles.centers),
        ("moving", pair.moving_coordinates(reg.tiles.centers)),
    ):
        reads = pair.reads[name]
        assert len(set(reads[:n_blocks])) == n_blocks
        after = reads[n_blocks:]
        assert len(after) == len(set(after)) and 0 < len(after) < 0.7 * n_blocks
        # A tile is 64 px, its box a margin of at most ~60 px more (with the spline's).
        assert max(_distance_to_boxes(c, points, 32 + 60) for c in after) <= 0

    total = calls[0][1]
    assert calls[0] == (0, total) and calls[-1] == (total, total)
    done = [d for d, _ in calls]
    assert done == sorted(set(done)) and len(calls) > 5


def test_apply_on_dask_reads_only_the_blocks_near_an_output_block():
    pair = LazyPair((N, N), CHUNK, rotation_matrix(1.1, (230.4, -170.7), CENTER))
    transform = AffineTransform(np.linalg.inv(pair.matrix), "rigid")
    from napari_ncc import Registration

    reg = Registration(shift=(0.0, 0.0), transform=transform)
    out = reg.apply(pair.moving, order=3)
    assert isinstance(out, da.Array)
    pair.reads["moving"].clear()
    block = np.asarray(out.blocks[10, 12].compute())
    reads = pair.reads["moving"]
    assert 1 <= len(reads) <= 16
    corner = np.array([[10 * CHUNK, 12 * CHUNK]], float)
    target = transform.moving_coordinates(corner + CHUNK / 2)
    assert max(_distance_to_boxes(c, target, CHUNK + 25) for c in reads) <= 0
    # The values are the texture where the true transform sends the pixels (noise 0.5).
    pixels = np.indices(block.shape).reshape(2, -1).T + corner
    expected = pair.texture.at(pixels).reshape(block.shape)
    assert np.abs(block - expected).max() < 4


def test_similarity_from_a_given_pyramid_level_reads_only_tiles():
    n, factor = 1200, 4
    matrix = rotation_matrix(-1.5, (140.3, 201.8), ((n - 1) / 2,) * 2)
    matrix[:2, :2] *= 1.015
    pair = LazyPair((n, n), CHUNK, matrix)
    # Block means of factor 4 (a pyramid level), computed here, before counting.
    levels = [da.coarsen(np.mean, x, {0: factor, 1: factor}).compute() for x in pair.images]
    for reads in pair.reads.values():
        reads.clear()
    reg = register(
        [pair.reference, levels[0]],
        [pair.moving, levels[1]],
        model="similarity",
        max_size=400,
    )
    assert reg.reliable and "pyramid level 1" in reg.method
    assert _errors(reg, pair, n).max() <= 0.25
    n_blocks = (n // CHUNK) ** 2
    for name in ("reference", "moving"):
        reads = pair.reads[name]
        assert len(reads) == len(set(reads)) and len(reads) < 0.7 * n_blocks


def test_deformable_on_a_lazy_pair_larger_than_max_size():
    n = 1200
    field = SineField(3.0, 450.0, seed=3)
    pair = LazyPair((n, n), 100, rotation_matrix(0.9, (-120.6, 180.2), ((n - 1) / 2,) * 2), field)
    reg = register(pair.reference, pair.moving, model="deformable", max_size=400)
    assert reg.reliable and isinstance(reg.transform, DeformableTransform)
    errors = _errors(reg, pair, n)
    assert np.sqrt(np.mean(errors**2)) <= 0.3
    assert np.percentile(errors, 95) <= 0.6
    # The field's grid follows the tiles' spacing: small at any image size.
    _, spacing = tile_grid((20000, 20000), "deformable")
    assert spacing > 400


def test_a_flat_pair_larger_than_max_size_warns_instead_of_returning_noise():
    flat = da.full((900, 900), 7.0, chunks=300)
    with pytest.warns(UserWarning, match="unreliable"):
        reg = register(flat, flat, model="rigid", max_size=256)
    assert not reg.reliable
