"""ncc_confidence: the NCC of the reference and the *registered* moving image.

The expected maps come from the independent brute-force reference (per-window Pearson in
float64 with ``np.pad``) applied to the reference and ``scipy.ndimage.shift(moving,
true_shift, order=1, mode="nearest")``; the invalid band is computed here from the shift
and the radius, independently of ``Registration.valid_region``.
"""

from __future__ import annotations

import math
import threading

import dask.array as da
import numpy as np
import pytest
from scipy import ndimage as ndi
from skimage import data

from napari_ncc import Registration, local_ncc, ncc_confidence
from reference import brute_force_ncc

FILL = -7.0

#: A shift within this of an integer is that integer (rounding noise, e.g. -6e-18 for a
#: plane registered onto itself): no expected band may depend on the noise's sign.
ZERO = 1e-6


def shifted_pair(image, shift, region):
    """Crop `region` of `image` (reference) and of ``image(y + shift)`` (moving)."""
    image = np.asarray(image, dtype=np.float64)
    moved = ndi.shift(image, -np.asarray(shift, float), order=3, mode="reflect")
    return image[region], moved[region]


def expected_map(reference, moving, shift, radius, fill=FILL, **kwargs):
    """Brute-force map of the registered pair, `fill` where a window sees shifted-in data."""
    registered = ndi.shift(moving, shift, order=1, mode="nearest")
    expected = brute_force_ncc(
        reference, registered, radius, fill_value=fill, flat_rtol=1e-6, **kwargs
    )
    valid = np.ones(reference.shape, bool)
    for ax, (n, s) in enumerate(zip(reference.shape, shift, strict=True)):
        x = np.arange(n)
        # Positions whose window [x - r, x + r] reads only x' with 0 <= x' - s <= n - 1;
        # a side the shift does not cut is an ordinary image border (mode applies).
        lo = x - radius if s > ZERO else x
        hi = x + radius if s < -ZERO else x
        ok = (lo - s >= -ZERO) & (hi - s <= n - 1 + ZERO)
        shape = [1] * reference.ndim
        shape[ax] = n
        valid &= ok.reshape(shape)
    return np.where(valid, expected, fill), valid


CAMERA = (slice(150, 230), slice(200, 290))


@pytest.mark.parametrize("shift", [(3.25, -5.5), (-2.0, 4.75), (0.0, -1.4)])
@pytest.mark.parametrize("radius", [1, 3])
def test_map_with_a_given_registration_equals_brute_force(shift, radius):
    reference, moving = shifted_pair(data.camera(), shift, CAMERA)
    ncc, reg = ncc_confidence(
        reference, moving, radius=radius, fill_value=FILL, registration=Registration(shift=shift)
    )
    expected, valid = expected_map(reference, moving, shift, radius)
    assert reg.shift == shift
    assert ncc.dtype == np.float32
    np.testing.assert_allclose(ncc[valid], expected[valid], atol=2e-5)
    assert (ncc[~valid] == FILL).all()
    # The band has the expected width: ceil(|s|) + radius on each cut side.
    for ax, s in enumerate(shift):
        if abs(s) > ZERO:
            band = math.ceil(abs(s) - ZERO) + radius
            profile = valid.any(axis=1 - ax)
            assert profile.sum() == reference.shape[ax] - band


def test_estimated_registration_gives_the_true_map():
    shift = (4.6, -6.3)
    reference, moving = shifted_pair(data.camera(), shift, (slice(100, 260), slice(180, 340)))
    ncc, reg = ncc_confidence(reference, moving, radius=3, fill_value=FILL)
    np.testing.assert_allclose(reg.shift, shift, atol=0.15)
    assert reg.reliable
    expected, valid = expected_map(reference, moving, shift, 3)
    assert (ncc[~valid] == FILL).all()
    assert np.abs(ncc[valid] - expected[valid]).max() < 0.05
    # Without registration the same pair hardly correlates anywhere.
    unregistered, none = ncc_confidence(reference, moving, radius=3, register=False)
    assert none is None
    assert np.median(unregistered) < 0.5 < np.median(ncc[valid])


def test_wrap_mode_windows_reading_across_to_a_cut_side_are_filled():
    shift = (3.5, 0.0)  # rows 0-3 are shifted in; the bottom border wraps onto them
    reference, moving = shifted_pair(data.camera(), shift, CAMERA)
    ncc, _ = ncc_confidence(
        reference, moving, radius=2, mode="wrap", fill_value=FILL, registration=Registration(shift)
    )
    expected = brute_force_ncc(
        reference,
        ndi.shift(moving, shift, order=1, mode="nearest"),
        2,
        mode="wrap",
        fill_value=FILL,
        flat_rtol=1e-6,
    )
    assert (ncc[: 4 + 2] == FILL).all()
    assert (ncc[-2:] == FILL).all()  # their windows wrap onto the shifted-in rows
    np.testing.assert_allclose(ncc[6:-2], expected[6:-2], atol=2e-5)


def test_register_false_is_plain_local_ncc():
    reference, moving = shifted_pair(data.camera(), (2.0, 1.0), CAMERA)
    ncc, reg = ncc_confidence(reference, moving, radius=2, register=False, mode="nearest")
    assert reg is None
    np.testing.assert_allclose(
        ncc, local_ncc(reference, moving, radius=2, mode="nearest"), atol=1e-6
    )


def test_gaussian_window_and_nan_fill():
    shift = (-3.5, 2.25)
    reference, moving = shifted_pair(data.camera(), shift, CAMERA)
    ncc, _ = ncc_confidence(
        reference,
        moving,
        radius=2,
        window="gaussian",
        fill_value=np.nan,
        registration=Registration(shift=shift),
    )
    expected, valid = expected_map(reference, moving, shift, 2, fill=np.nan, window="gaussian")
    np.testing.assert_allclose(ncc[valid], expected[valid], atol=2e-5)
    assert np.isnan(ncc[~valid]).all()


class CountingSource:
    """A Dask array served block by block from a NumPy array, counting the blocks read."""

    def __init__(self, image, chunks):
        self.calls = 0
        lock = threading.Lock()

        def block(block_info=None):
            nonlocal lock
            with lock:
                self.calls += 1
            location = block_info[None]["array-location"]
            return image[tuple(slice(a, b) for a, b in location)]

        self.array = da.map_blocks(
            block,
            chunks=da.core.normalize_chunks(chunks, image.shape),
            dtype=image.dtype,
            meta=np.empty((0,) * image.ndim, image.dtype),
        )


def test_dask_input_gives_a_lazy_map_equal_to_numpy():
    shift = (3.75, -2.5)
    reference, moving = shifted_pair(data.camera(), shift, CAMERA)
    ref_source = CountingSource(reference, 32)
    mov_source = CountingSource(moving, 32)
    reg = Registration(shift=shift)
    lazy, _ = ncc_confidence(
        ref_source.array, mov_source.array, radius=3, fill_value=FILL, registration=reg
    )
    assert isinstance(lazy, da.Array)
    assert ref_source.calls == mov_source.calls == 0  # nothing read to build the graph
    in_memory, _ = ncc_confidence(reference, moving, radius=3, fill_value=FILL, registration=reg)
    np.testing.assert_allclose(lazy.compute(), in_memory, atol=1e-5)
    expected, valid = expected_map(reference, moving, shift, 3)
    np.testing.assert_allclose(lazy.compute()[valid], expected[valid], atol=2e-5)


def test_dask_input_registers_then_maps_lazily():
    shift = (-5.2, 3.4)
    reference, moving = shifted_pair(data.camera(), shift, (slice(100, 260), slice(180, 340)))
    lazy, reg = ncc_confidence(
        da.from_array(reference, chunks=64), da.from_array(moving, chunks=64), radius=3
    )
    assert isinstance(lazy, da.Array)
    np.testing.assert_allclose(reg.shift, shift, atol=0.15)
    in_memory, _ = ncc_confidence(reference, moving, radius=3, registration=reg)
    np.testing.assert_allclose(lazy.compute(), in_memory, atol=1e-5)


DRIFTS = [(0.0, 0.0), (2.3, -1.6), (-3.45, 4.2)]


def drifting_stack():
    image = data.camera().astype(np.float64)
    return np.stack([shifted_pair(image, d, CAMERA)[1] for d in DRIFTS])


@pytest.mark.parametrize("lazy", [False, True], ids=["numpy", "dask"])
def test_per_plane_each_plane_shifted_by_its_own_shift(lazy):
    stack = drifting_stack()
    reference = np.repeat(stack[:1], len(DRIFTS), axis=0)  # every plane: plane 0
    reg = Registration(shift=(0, 0, 0), shifts=[(0, *d) for d in DRIFTS], per_plane=0)
    inputs = (reference, stack)
    if lazy:
        inputs = tuple(da.from_array(x, chunks=(1, 40, 45)) for x in inputs)
    ncc, used = ncc_confidence(*inputs, radius=2, fill_value=FILL, per_plane=0, registration=reg)
    assert used is reg
    if lazy:
        assert isinstance(ncc, da.Array)
        ncc = ncc.compute()
    for t, drift in enumerate(DRIFTS):
        expected, valid = expected_map(stack[0], stack[t], drift, 2)
        np.testing.assert_allclose(ncc[t][valid], expected[valid], atol=2e-5)
        assert (ncc[t][~valid] == FILL).all()


def test_windows_spanning_planes_see_the_neighbours_valid_regions():
    stack = drifting_stack()
    reference = np.repeat(stack[:1], len(DRIFTS), axis=0)
    reg = Registration(shift=(0, 0, 0), shifts=[(0, *d) for d in DRIFTS], per_plane=0)
    ncc, _ = ncc_confidence(
        reference, stack, radius=(1, 2, 2), fill_value=FILL, axes=(0, 1, 2), registration=reg
    )
    registered = np.stack(
        [ndi.shift(p, d, order=1, mode="nearest") for p, d in zip(stack, DRIFTS, strict=True)]
    )
    expected = brute_force_ncc(
        reference, registered, (1, 2, 2), fill_value=FILL, flat_rtol=1e-6, axes=(0, 1, 2)
    )
    # Independently: a window is valid if the windows of plane t and of its neighbours
    # (clipped at the stack's ends, where "reflect" reads the same planes) are valid in
    # their own planes (expected_map's band for each plane's drift).
    per_plane = [expected_map(stack[0], stack[t], d, 2)[1] for t, d in enumerate(DRIFTS)]
    valid = np.stack(
        [np.logical_and.reduce(per_plane[max(t - 1, 0) : t + 2]) for t in range(len(DRIFTS))]
    )
    np.testing.assert_allclose(ncc[valid], expected[valid], atol=2e-5)
    assert (ncc[~valid] == FILL).all()


def test_drift_correction_compares_every_plane_with_the_reference_plane():
    stack = drifting_stack()
    ncc, reg = ncc_confidence(
        stack, stack, radius=2, fill_value=FILL, per_plane=0, reference_plane=0
    )
    assert reg.reference_plane == 0
    np.testing.assert_allclose(reg.shifts[:, 1:], DRIFTS, atol=0.15)
    # Plane 0 onto itself: zero up to rounding is stored as exactly 0 (not -6e-18), so
    # no fill band depends on the sign of rounding noise.
    assert reg.shifts[0].tolist() == [0.0, 0.0, 0.0]
    assert not np.signbit(reg.shifts[0]).any()
    for t, drift in enumerate(DRIFTS):
        expected, valid = expected_map(stack[0], stack[t], reg.shifts[t, 1:], 2)
        np.testing.assert_allclose(ncc[t][valid], expected[valid], atol=2e-5)
        assert (ncc[t][~valid] == FILL).all()
        np.testing.assert_allclose(reg.shifts[t, 1:], drift, atol=0.15)
    lazy, _ = ncc_confidence(
        da.from_array(stack, chunks=(1, 40, 40)),
        da.from_array(stack, chunks=(1, 40, 40)),
        radius=2,
        fill_value=FILL,
        per_plane=0,
        registration=reg,
    )
    np.testing.assert_allclose(lazy.compute(), ncc, atol=1e-5)


@pytest.mark.parametrize("lazy", [False, True], ids=["numpy", "dask"])
@pytest.mark.parametrize(
    ("exact", "noisy"),
    [
        ((0.0, 0.0), (-6e-18, 1e-17)),
        ((0.0, -2.0), (3e-9, -2.0 - 3e-9)),
        ((3.0, 0.0), (2.9999999999, -1e-17)),
        ((-4.0, 1.5), (-4.0 + 4e-7, 1.5)),
    ],
)
def test_fill_band_ignores_rounding_noise_in_the_shift(exact, noisy, lazy):
    """A shift that is an integer up to rounding gives the band of that integer, whatever
    the sign of the noise (issue 12: -6e-18 made a band appear on another machine)."""
    reference, moving = shifted_pair(data.camera(), exact, CAMERA)
    inputs = (reference, moving)
    if lazy:
        inputs = tuple(da.from_array(x, chunks=40) for x in inputs)
    maps = []
    for shift in (exact, noisy):
        ncc, reg = ncc_confidence(
            *inputs, radius=2, fill_value=FILL, registration=Registration(shift)
        )
        maps.append(np.asarray(ncc))
    assert reg.shift == exact
    np.testing.assert_array_equal(maps[1] == FILL, maps[0] == FILL)
    np.testing.assert_allclose(maps[1], maps[0], atol=1e-6)
    expected, valid = expected_map(reference, moving, exact, 2)
    assert ((maps[1] == FILL) == ~valid).all()
    np.testing.assert_allclose(maps[1][valid], expected[valid], atol=2e-5)


def test_bad_input_raises_naming_the_problem():
    a = np.zeros((16, 16))
    with pytest.raises(ValueError, match=r"same shape, got \(16, 16\) and \(16, 15\)"):
        ncc_confidence(a, np.zeros((16, 15)))
    with pytest.raises(ValueError, match="same number of dimensions, got 2 and 3"):
        ncc_confidence(a, np.zeros((16, 16, 1)))
    with pytest.raises(TypeError, match="registration must be a Registration"):
        ncc_confidence(a, a, registration=(1.0, 2.0))
    with pytest.raises(ValueError, match="reference must have 3 dimensions"):
        ncc_confidence(a, a, registration=Registration(shift=(0, 0, 0)))
    with pytest.raises(ValueError, match="radius 16 is too large"):
        ncc_confidence(a, a, radius=16)
    with pytest.raises(ValueError, match="per_plane axis 2 is out of range"):
        ncc_confidence(a, a, per_plane=2)
    with pytest.raises(TypeError, match="moving has unsupported dtype"):
        ncc_confidence(a, a.astype(complex))


class ProceduralArray:
    """A read-only, sliceable array computed on demand (like a zarr array), counting reads."""

    def __init__(self, texture, shift=(0.0, 0.0)):
        self.texture, self.shift = texture, shift
        self.shape, self.dtype, self.ndim = texture.shape, np.dtype(np.float32), 2
        self.pixels_read = 0

    def __getitem__(self, key):
        region = tuple(slice(*sl.indices(n)[:2]) for sl, n in zip(key, self.shape, strict=True))
        block = self.texture.block(region, self.shift)
        self.pixels_read += block.size
        return block


def test_huge_dask_pair_reads_only_what_the_registration_and_the_map_need():
    from test_registration import SeparableTexture

    n, chunk, factor = 8192, 1024, 16
    texture = SeparableTexture((n, n), seed=3)
    shift = (-401.71, 655.28)  # moving(y) = texture(y + shift)
    reference = ProceduralArray(texture)
    moving = ProceduralArray(texture, shift)
    coarse = (slice(0, n // factor),) * 2
    ncc, reg = ncc_confidence(
        [da.from_array(reference, chunks=chunk), texture.block(coarse, factor=factor)],
        [da.from_array(moving, chunks=chunk), texture.block(coarse, shift, factor=factor)],
        radius=3,
        fill_value=FILL,
    )
    assert isinstance(ncc, da.Array) and ncc.shape == (n, n)
    np.testing.assert_allclose(reg.shift, shift, atol=0.05)
    read = reference.pixels_read, moving.pixels_read
    assert max(read) <= 16 * chunk**2  # the registration's tiles only, of 64 chunks

    values = ncc[4000:4096, 3000:3096].compute()
    # One block of the map (chunks merged to a few megapixels) and its halo; for moving,
    # the region the shift brings there (the lazy layer currently reads a margin of
    # |shift| on both sides, hence the looser bound): a few chunks, not the image's 64.
    assert reference.pixels_read - read[0] <= 5 * chunk**2
    assert moving.pixels_read - read[1] <= 12 * chunk**2
    # The registered moving image there is the texture itself, up to the estimate error
    # and the blur of linear interpolation.
    assert values.min() > 0.95 and np.median(values) > 0.999
    # The band shifted in from outside the moving image (rows at the bottom: shift < 0;
    # columns on the left: shift > 0) is filled.
    assert (ncc[-8:, 4000:4008].compute() == FILL).all()
    assert (ncc[4000:4008, :8].compute() == FILL).all()
