"""warp and covered: against brute-force map_coordinates; lazy equals NumPy; reads stay local."""

from __future__ import annotations

import threading

import dask.array as da
import numpy as np
import pytest
from scipy import ndimage as ndi

from napari_ncc._transform import AffineTransform, DeformableTransform
from napari_ncc._warp import covered, warp


def _affine():
    matrix = np.eye(3)
    matrix[:2, :2] = [[1.03, 0.04], [-0.06, 0.98]]
    matrix[:2, 2] = [-6.3, 9.1]
    return AffineTransform(matrix)


def _deformable(rng):
    rigid = AffineTransform.from_rotation(-4.0, center=(80, 60), translation=(2.5, -1.0))
    return DeformableTransform(rigid, 3 * rng.normal(size=(2, 5, 6)), (-20, -15), (50, 40))


def _brute_force(moving, transform, shape, order, mode="nearest"):
    grid = np.indices(shape, dtype=float).reshape(len(shape), -1).T
    q = transform.moving_coordinates(grid).T
    return ndi.map_coordinates(moving.astype(float), q, order=order, mode=mode).reshape(shape)


@pytest.mark.parametrize("order", [0, 1, 3])
@pytest.mark.parametrize("kind", ["affine", "deformable"])
def test_numpy_warp_equals_brute_force(rng, order, kind, monkeypatch):
    from napari_ncc import _warp

    monkeypatch.setattr(_warp, "NUMPY_BLOCK", 48)  # several blocks, each reading a box
    moving = rng.random((170, 130))
    transform = _affine() if kind == "affine" else _deformable(rng)
    out = warp(moving, transform, order=order, output_shape=(150, 140))
    expected = _brute_force(moving, transform, (150, 140), order)
    if order == 0:
        # Nearest neighbour: pixels whose coordinates are a half-integer up to rounding may
        # round either way; compare the others.
        grid = np.indices((150, 140), dtype=float).reshape(2, -1).T
        fraction = np.mod(transform.moving_coordinates(grid), 1.0)
        clear = np.all(np.abs(fraction - 0.5) > 1e-6, axis=1).reshape(150, 140)
        out, expected = out[clear], expected[clear]
    np.testing.assert_allclose(out, expected, atol=1e-6)
    assert out.dtype == np.float64


@pytest.mark.parametrize("mode", ["constant", "reflect", "wrap"])
def test_other_modes_equal_brute_force(rng, mode, monkeypatch):
    from napari_ncc import _warp

    monkeypatch.setattr(_warp, "NUMPY_BLOCK", 40)
    moving = rng.random((90, 100))
    transform = AffineTransform.from_rotation(20.0, center=(45, 50), translation=(30, -20))
    out = warp(moving, transform, order=1, mode=mode)
    np.testing.assert_allclose(out, _brute_force(moving, transform, (90, 100), 1, mode), atol=1e-9)


@pytest.mark.parametrize("order", [1, 3])
def test_lazy_equals_numpy_on_odd_chunks(rng, order):
    moving = (rng.random((161, 143)) * 1000).astype(np.uint16)
    transform = _deformable(rng)
    lazy = warp(da.from_array(moving, chunks=(37, 29)), transform, order=order)
    assert isinstance(lazy, da.Array) and lazy.dtype == np.float32
    assert lazy.chunks == ((37, 37, 37, 37, 13), (29, 29, 29, 29, 27))
    np.testing.assert_allclose(
        lazy.compute(), warp(moving, transform, order=order), atol=1e-5 * 1000
    )


class CountingArray:
    """A sliceable source that records the boxes read from it, as (start, stop) per axis
    (an integer index i as (i, i + 1))."""

    def __init__(self, data):
        self.data, self.shape, self.dtype, self.ndim = data, data.shape, data.dtype, data.ndim
        self.reads = []
        self._lock = threading.Lock()

    def __getitem__(self, index):
        index = index if isinstance(index, tuple) else (index,)
        box = [
            i.indices(n)[:2] if isinstance(i, slice) else (int(i), int(i) + 1)
            for i, n in zip(index, self.shape, strict=False)
        ]
        with self._lock:
            self.reads.append(tuple(box))
        return self.data[index]


@pytest.mark.parametrize("kind", ["affine", "deformable"])
def test_one_output_block_reads_only_nearby_blocks(rng, kind):
    data = rng.random((320, 320))
    source = CountingArray(data)
    moving = da.from_array(source, chunks=32, asarray=False)
    if kind == "affine":
        transform = AffineTransform.from_rotation(5.0, center=(160, 160), translation=(7, -4))
    else:
        rigid = AffineTransform.from_rotation(1.0, center=(160, 160), translation=(7, -4))
        transform = DeformableTransform(rigid, 3 * rng.normal(size=(2, 6, 6)), (0, 0), (64, 64))
    out = warp(moving, transform, order=1)
    source.reads.clear()
    block = out[128:160, 192:224].compute()
    corners = np.array([[128, 192], [128, 223], [159, 192], [159, 223]], float)
    np.testing.assert_allclose(block, warp(data, transform)[128:160, 192:224], atol=1e-12)
    q = transform.moving_coordinates(corners)
    lower, upper = q.min(0) - 12, q.max(0) + 12  # the corners, the field's bounds, a pixel
    assert source.reads
    for read in source.reads:
        for (a, b), lo, hi in zip(read, lower, upper, strict=True):
            assert lo - 32 < a and b < hi + 32, (read, lower, upper)  # nearby chunks only
    read_pixels = sum((b0 - a0) * (b1 - a1) for (a0, b0), (a1, b1) in source.reads)
    assert read_pixels <= 9 * 32 * 32


def test_covered_against_brute_force(rng):
    transform = _deformable(rng)
    shape, moving_shape = (120, 110), (100, 130)
    grid = np.indices(shape, dtype=float).reshape(2, -1).T
    q = transform.moving_coordinates(grid)
    expected = np.all((q >= 0) & (q <= np.array(moving_shape) - 1), axis=1).reshape(shape)
    mask = covered(transform, shape, moving_shape)
    assert 0.3 < expected.mean() < 0.95
    np.testing.assert_array_equal(mask, expected)
    lazy = covered(transform, shape, moving_shape, chunks=(33, 41))
    assert isinstance(lazy, da.Array) and lazy.chunks[0] == (33, 33, 33, 21)
    np.testing.assert_array_equal(lazy.compute(), expected)


def test_bad_arguments(rng):
    image = rng.random((10, 10))
    t = AffineTransform.from_shift((1, 1))
    with pytest.raises(TypeError, match="transform must be"):
        warp(image, np.eye(3))
    with pytest.raises(ValueError, match="order must be"):
        warp(image, t, order=7)
    with pytest.raises(ValueError, match="mode must be one of"):
        warp(image, t, mode="edge")
    with pytest.raises(ValueError, match="moving must have 2 dimensions"):
        warp(rng.random((4, 4, 4)), t)
    with pytest.raises(ValueError, match="output_shape must have 2 positive"):
        warp(image, t, output_shape=(0, 3))
