"""Masked local NCC on Dask arrays (issue 15, lazy): the mask is read like the images.

The lazy masked map is checked against the in-memory masked core (itself checked against
the brute-force masked Pearson in ``test_ncc_mask.py``) and, for a few cases, against the
brute force directly: any chunking, either path (read from the source, or
``dask.array.overlap`` for computed inputs), any mix of NumPy and Dask inputs.
"""

from __future__ import annotations

import dask.array as da
import numpy as np
import pytest
import zarr

from napari_ncc import _lazy
from napari_ncc._lazy import local_ncc
from napari_ncc._ncc import local_ncc as core_ncc
from reference import brute_force_masked_ncc
from test_lazy import computed, from_zarr, no_query_planning
from test_ncc_mask import holes_and_dropouts

MODES = ["reflect", "mirror", "nearest", "wrap", "constant"]


@pytest.fixture
def tiny_blocks(monkeypatch):
    """Output blocks as small as the input chunks (no merging), to exercise every seam."""
    monkeypatch.setattr(_lazy, "BLOCK_PIXELS", 1)


@pytest.fixture
def masked_pair(rng):
    """Two correlated images, a mask with a hole, a band and dropouts, garbage under it."""
    a = rng.random((23, 31))
    b = 0.6 * a + 0.4 * rng.random(a.shape)
    mask = holes_and_dropouts(rng, a.shape)
    a, b = a.copy(), b.copy()
    a[~mask] = 1e4
    b[~mask] = np.nan
    return a, b, mask


def as_input(x, kind, chunks):
    if kind == "numpy":
        return x
    if kind == "source":
        return da.from_array(x, chunks=chunks)
    return computed(x, chunks)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("radius", [1, 3, (2, 4)])
@pytest.mark.parametrize(
    "chunks",
    [(3, 5, 7), ((5, 7), 4, 1), ((((3, 10, 1, 9), (20, 11)), 6, (7, (9, 13, 9))))],
)
@pytest.mark.parametrize("path", ["source", "overlap"])
def test_chunking_never_changes_the_masked_numbers(
    masked_pair, tiny_blocks, mode, radius, chunks, path
):
    a, b, mask = masked_pair
    expected = core_ncc(a, b, radius, mode=mode, mask=mask, fill_value=-2.0)
    inputs = [as_input(x, path, c) for x, c in zip((a, b, mask), chunks, strict=True)]
    out = local_ncc(inputs[0], inputs[1], radius=radius, mode=mode, mask=inputs[2], fill_value=-2)
    assert isinstance(out, da.Array)
    out = out.compute()
    np.testing.assert_array_equal(out == -2, expected == -2)
    np.testing.assert_allclose(out, expected, atol=1e-5, rtol=0)


@pytest.mark.parametrize("mode", ["reflect", "constant", "wrap"])
@pytest.mark.parametrize("min_fraction", [0.3, 1.0])
def test_lazy_masked_map_matches_brute_force(masked_pair, tiny_blocks, mode, min_fraction):
    a, b, mask = masked_pair
    out = local_ncc(
        da.from_array(a, chunks=6),
        da.from_array(b, chunks=(7, 9)),
        radius=2,
        mode=mode,
        mask=da.from_array(mask, chunks=5),
        min_fraction=min_fraction,
        fill_value=np.nan,
    ).compute()
    expected, _ = brute_force_masked_ncc(
        a, b, mask, 2, mode=mode, min_fraction=min_fraction, fill_value=np.nan
    )
    np.testing.assert_array_equal(np.isnan(out), np.isnan(expected))
    np.testing.assert_allclose(out, expected, atol=1e-4, rtol=0)


@pytest.mark.parametrize(
    "kinds",
    [
        ("numpy", "numpy", "source"),  # Dask mask, NumPy images
        ("numpy", "numpy", "overlap"),
        ("source", "source", "numpy"),  # NumPy mask, Dask images
        ("numpy", "source", "numpy"),
        ("source", "overlap", "source"),  # one computed input: the overlap path
        ("source", "source", "overlap"),
    ],
)
def test_any_mix_of_numpy_and_dask_inputs(masked_pair, tiny_blocks, kinds):
    a, b, mask = masked_pair
    expected = core_ncc(a, b, 3, mask=mask)
    inputs = [as_input(x, k, 8) for x, k in zip((a, b, mask), kinds, strict=True)]
    out = local_ncc(inputs[0], inputs[1], radius=3, mask=inputs[2])
    assert isinstance(out, da.Array)
    np.testing.assert_allclose(out.compute(), expected, atol=1e-5, rtol=0)


def test_numpy_in_numpy_out(masked_pair):
    a, b, mask = masked_pair
    out = local_ncc(a, b, radius=3, mask=mask, min_fraction=0.7)
    assert isinstance(out, np.ndarray)
    np.testing.assert_array_equal(out, core_ncc(a, b, 3, mask=mask, min_fraction=0.7))


@pytest.mark.parametrize("path", ["source", "overlap"])
def test_garbage_under_the_mask_changes_nothing(masked_pair, tiny_blocks, path):
    a, b, mask = masked_pair
    maps = []
    for garbage in (0.0, 1e4):
        a2, b2 = a.copy(), b.copy()
        a2[~mask] = garbage
        b2[~mask] = -garbage
        inputs = [as_input(x, path, (4, 7)) for x in (a2, b2, mask)]
        maps.append(local_ncc(inputs[0], inputs[1], radius=2, mask=inputs[2]).compute())
    np.testing.assert_allclose(maps[0], maps[1], atol=1e-5, rtol=0)


@pytest.mark.parametrize("path", ["source", "overlap"])
@pytest.mark.parametrize("window", ["box", "gaussian"])
def test_all_true_mask_is_the_unmasked_map(rng, tiny_blocks, path, window):
    a = rng.random((19, 26))
    b = 0.5 * a + 0.5 * rng.random(a.shape)
    x0, x1, m = (as_input(x, path, 6) for x in (a, b, np.ones(a.shape, bool)))
    masked = local_ncc(x0, x1, radius=3, window=window, mask=m).compute()
    plain = local_ncc(x0, x1, radius=3, window=window).compute()
    np.testing.assert_allclose(masked, plain, atol=1e-5, rtol=0)


def test_zarr_mask_with_its_own_chunks(tmp_path, masked_pair, monkeypatch):
    """Storage chunks of the mask differ from the images': its halo strips are its own."""
    monkeypatch.setattr(_lazy, "BLOCK_PIXELS", 64)
    a, b, mask = masked_pair
    stores = []
    for name, x, chunks in (("a", a, (6, 8)), ("b", b, (5, 9)), ("m", mask, (7, 4))):
        z = zarr.open_array(
            str(tmp_path / f"{name}.zarr"), mode="w", shape=x.shape, chunks=chunks, dtype=x.dtype
        )
        z[...] = x
        stores.append(from_zarr(z))
    for mode in ("reflect", "wrap"):
        out = local_ncc(*stores[:2], radius=3, mode=mode, mask=stores[2])
        expected = core_ncc(a, b, 3, mode=mode, mask=mask)
        np.testing.assert_allclose(out.compute(), expected, atol=1e-5, rtol=0)


@pytest.mark.parametrize("path", ["source", "overlap"])
def test_the_mask_stays_in_the_reference_frame_under_a_moving_shift(rng, tiny_blocks, path):
    from scipy import ndimage

    a = rng.random((24, 30))
    b = 0.5 * a + 0.5 * rng.random(a.shape)
    mask = holes_and_dropouts(rng, a.shape)
    shift = (1.5, -2.25)
    expected = core_ncc(a, ndimage.shift(b, shift, order=1, mode="nearest"), 2, mask=mask)
    x0, x1, m = (as_input(x, path, (7, 9)) for x in (a, b, mask))
    out = local_ncc(x0, x1, radius=2, mask=m, moving_shift=shift)
    np.testing.assert_allclose(out.compute(), expected, atol=1e-5, rtol=0)


def test_3d_per_plane_axes(rng, tiny_blocks):
    a = rng.random((4, 15, 17))
    b = 0.5 * a + 0.5 * rng.random(a.shape)
    mask = holes_and_dropouts(rng, a.shape)
    expected = core_ncc(a, b, 2, axes=(1, 2), mask=mask)
    out = local_ncc(
        da.from_array(a, chunks=(1, 5, 6)),
        da.from_array(b, chunks=(2, 7, 4)),
        radius=2,
        axes=(1, 2),
        mask=da.from_array(mask, chunks=(3, 4, 9)),
    )
    np.testing.assert_allclose(out.compute(), expected, atol=1e-5, rtol=0)


# --- errors, raised when building the graph ------------------------------------------------


@pytest.mark.parametrize("lazy", [False, True])
def test_mask_errors(masked_pair, lazy):
    a, b, mask = masked_pair
    wrap = (lambda x: da.from_array(x, chunks=8)) if lazy else (lambda x: x)
    with pytest.raises(ValueError, match=r"mask must have the images' shape \(23, 31\)"):
        local_ncc(wrap(a), b, mask=wrap(mask[:, :-1]))
    with pytest.raises(TypeError, match=r"mask must be a boolean array.*labels > 0"):
        local_ncc(a, wrap(b), mask=wrap(mask.astype(np.uint8)))
    for bad in (0, 1.5, -0.1):
        with pytest.raises(ValueError, match=r"min_fraction must be in \(0, 1\]"):
            local_ncc(wrap(a), b, mask=mask, min_fraction=bad)


@no_query_planning  # (boolean indexing of a Dask array)
def test_mask_of_unknown_chunk_sizes_is_refused(rng):
    a, b = rng.random(40), rng.random(40)
    x = da.from_array(a, chunks=8)
    unknown = (x > 0.5)[x > 0.5]
    with pytest.raises(ValueError, match="mask has unknown chunk sizes"):
        local_ncc(a, b, mask=unknown)
