"""register / Registration: known shifts recovered, laziness, the large-image path, bad input.

Every expected shift here is the one the test data were built with (never a value copied
from the code's output): a sample image shifted by a spline (``moving(y) = image(y +
shift)``, so ``scipy.ndimage.shift(moving, shift) ~ reference``), then cropped so that
content enters and leaves at the borders as in a real acquisition.
"""

from __future__ import annotations

import json
import threading
import warnings

import dask.array as da
import numpy as np
import pytest
from scipy import ndimage as ndi
from skimage import data
from skimage.registration import phase_cross_correlation

from napari_ncc import Registration, RegistrationWarning, register

# --------------------------------------------------------------------------------------
# Test data
# --------------------------------------------------------------------------------------


def shifted_pair(image, shift, crop=0.7):
    """Reference = central crop of `image`; moving = the same crop of `image(y + shift)`."""
    image = np.asarray(image, dtype=np.float64)
    moved = ndi.shift(image, -np.asarray(shift, float), order=3, mode="reflect")
    region = tuple(
        slice((n - int(crop * n)) // 2, (n - int(crop * n)) // 2 + int(crop * n))
        for n in image.shape
    )
    return image[region], moved[region]


def smooth_volume(shape, seed=0, sigma=2.0):
    rng = np.random.default_rng(seed)
    return ndi.gaussian_filter(rng.random(shape), sigma)


class SeparableTexture:
    """A procedural texture ``100 + 20 * sum_k a_k(y) b_k(x)``, computable anywhere.

    Each profile is a Catmull-Rom interpolation of random values on a lattice of its own
    spacing (3 to 400 pixels: texture at every scale, nothing periodic), evaluated at any
    real coordinate, so a block of the image, of a copy shifted by a fractional amount,
    or of its exact block means (a pyramid level: the mean of a separable sum is the
    product of the profiles' means) costs one small matrix product. The texture fades to
    flat (100) in a border band of `flat_border` of each axis, where no tile should go.
    """

    def __init__(self, shape, seed=0, n_terms=16, flat_border=0.2):
        rng = np.random.default_rng(seed)
        self.shape = shape
        self.spacings = np.geomspace(3, 400, n_terms)
        self.flat_border = flat_border
        self.lattices = [[rng.normal(0, 1, int(n / d) + 16) for n in shape] for d in self.spacings]

    def profile(self, k, axis, coords):
        lattice = self.lattices[k][axis]
        t = coords / self.spacings[k] + 4
        i = np.clip(np.floor(t).astype(int), 1, len(lattice) - 3)
        u = t - i
        p0, p1, p2, p3 = lattice[i - 1], lattice[i], lattice[i + 1], lattice[i + 2]
        value = 0.5 * (
            2 * p1
            + (p2 - p0) * u
            + (2 * p0 - 5 * p1 + 4 * p2 - p3) * u**2
            + (3 * p1 - p0 - 3 * p2 + p3) * u**3
        )
        n = self.shape[axis]
        lo, hi, ramp = self.flat_border * n, (1 - self.flat_border) * n, 0.05 * n
        envelope = np.clip((coords - lo) / ramp, 0, 1) * np.clip((hi - coords) / ramp, 0, 1)
        return value * envelope

    def block(self, region, shift=(0.0, 0.0), factor=1):
        """Block means over `factor` pixels of the texture at ``pixel + shift``."""
        factors = []
        for axis, (sl, s) in enumerate(zip(region, shift, strict=True)):
            coords = np.arange(sl.start * factor, sl.stop * factor) + s
            factors.append(
                np.stack(
                    [
                        self.profile(k, axis, coords).reshape(-1, factor).mean(axis=1)
                        for k in range(len(self.spacings))
                    ],
                    axis=1,
                )
            )
        return (100 + 20 * factors[0] @ factors[1].T).astype(np.float32)


class CountingSource:
    """A Dask array computed block by block from a function, counting the blocks read."""

    def __init__(self, shape, chunks, make_block):
        self.calls = 0
        self._lock = threading.Lock()

        def block(block_info=None):
            with self._lock:
                self.calls += 1
            location = block_info[None]["array-location"]
            return make_block(tuple(slice(a, b) for a, b in location))

        self.array = da.map_blocks(
            block,
            chunks=da.core.normalize_chunks(chunks, shape),
            dtype=np.float32,
            meta=np.empty((0,) * len(shape), np.float32),  # else dask calls it to find out
        )


# --------------------------------------------------------------------------------------
# Known shifts
# --------------------------------------------------------------------------------------

SHIFTS_2D = [
    (25.0, -35.0),  # integer
    (0.37, -0.61),  # subpixel only
    (12.3, -7.8),  # fractional
    (-0.19, 0.2),  # fractions of the image size (~20%), fractional pixels: see below
]


@pytest.mark.parametrize("name", ["cell", "camera"])
@pytest.mark.parametrize("shift", SHIFTS_2D)
def test_recovers_known_2d_shift_within_0_15_px(name, shift):
    image = getattr(data, name)()
    crop_shape = np.array([int(0.7 * n) for n in image.shape])
    if abs(shift[0]) < 1:  # a fraction of the image size
        shift = tuple(np.round(np.array(shift) * crop_shape, 0) + np.array([0.43, -0.71]))
    reference, moving = shifted_pair(image, shift)
    reg = register(reference, moving)
    np.testing.assert_allclose(reg.shift, shift, atol=0.15)
    assert reg.reliable
    assert reg.quality > 0.95
    assert reg.shifts is None


def test_shift_convention_is_skimage_phase_cross_correlation():
    reference, moving = shifted_pair(data.camera(), (7.0, -11.0))
    reg = register(reference, moving)
    expected, _, _ = phase_cross_correlation(reference, moving, upsample_factor=20)
    np.testing.assert_allclose(reg.shift, expected, atol=0.1)
    np.testing.assert_allclose(reg.shift, (7.0, -11.0), atol=0.05)


def test_apply_puts_moving_on_the_reference_grid():
    reference, moving = shifted_pair(data.camera(), (4.6, -9.3))
    reg = register(reference, moving)
    registered = reg.apply(moving, order=3)
    region = reg.valid_region(reference.shape)
    inner = tuple(slice(sl.start + 2, sl.stop - 2) for sl in region)
    # Mean absolute difference in grey levels (of 255): interpolating twice blurs edges.
    assert np.abs(registered[inner] - reference[inner]).mean() < 2.5
    assert np.abs(moving[inner] - reference[inner]).mean() > 20.0


def test_recovers_known_3d_shift_within_0_2_px():
    volume = smooth_volume((92, 92, 92), seed=3)
    shift = (3.3, -4.6, 7.25)
    reference, moving = shifted_pair(volume, shift)
    assert reference.shape == (64, 64, 64)
    reg = register(reference, moving)
    np.testing.assert_allclose(reg.shift, shift, atol=0.2)
    assert reg.reliable


def test_axes_registers_only_those_axes_jointly_over_the_others():
    image = data.camera().astype(float)
    shift = (5.4, -3.7)
    planes = [shifted_pair(image * (1 + 0.1 * t), shift) for t in range(3)]
    reference = np.stack([p[0] for p in planes])
    moving = np.stack([p[1] for p in planes])
    reg = register(reference, moving, axes=(-2, -1))
    assert reg.shift[0] == 0.0
    np.testing.assert_allclose(reg.shift[1:], shift, atol=0.15)


def test_disambiguates_shifts_larger_than_half_the_image():
    image = data.camera().astype(float)
    reference = image[100:228, 50:306]
    moving = image[100:228, 50 + 150 : 306 + 150]  # moving(y) = reference(y + 150)
    reg = register(reference, moving)
    np.testing.assert_allclose(reg.shift, (0.0, 150.0), atol=0.05)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RegistrationWarning)
        wrapped = register(reference, moving, disambiguate=False, refine=False)
    np.testing.assert_allclose(wrapped.shift, (0.0, 150.0 - 256.0), atol=0.05)


# --------------------------------------------------------------------------------------
# Intensity differences
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("transform", "tolerance"),
    [
        (lambda x: 0.3 * x + 50.0, 0.15),  # exposure and offset
        (lambda x: 255.0 * (x / 255.0) ** 0.5, 0.2),  # gamma
        (lambda x: 300.0 - x, 0.15),  # inverted contrast (another channel)
    ],
    ids=["affine", "gamma", "inverted"],
)
@pytest.mark.parametrize("name", ["cell", "camera"])
def test_intensity_differences_still_register(name, transform, tolerance):
    shift = (-8.35, 14.6)
    reference, moving = shifted_pair(getattr(data, name)(), shift)
    moving = transform(np.clip(moving, 0, 255))
    reg = register(reference, moving)
    np.testing.assert_allclose(reg.shift, shift, atol=tolerance)
    assert reg.reliable
    assert abs(reg.quality) > 0.9


@pytest.mark.parametrize("name", ["cell", "camera"])
def test_noisy_pairs_register_within_0_15_px(name):
    rng = np.random.default_rng(11)
    shift = (10.6, -17.35)
    reference, moving = shifted_pair(getattr(data, name)(), shift)
    # Independent noise of 5 grey levels (a fifth of cell's contrast) in both images.
    reference = reference + rng.normal(0, 5.0, reference.shape)
    moving = moving + rng.normal(0, 5.0, moving.shape)
    reg = register(reference, moving)
    np.testing.assert_allclose(reg.shift, shift, atol=0.15)
    assert reg.reliable


def test_normalization_none_registers_a_textured_image():
    shift = (6.25, -3.5)
    reference, moving = shifted_pair(data.camera(), shift)
    reg = register(reference, moving, normalization="none")
    np.testing.assert_allclose(reg.shift, shift, atol=0.15)
    np.testing.assert_allclose(
        register(reference, moving, normalization=None).shift, reg.shift, atol=1e-6
    )


def test_upsample_factor_without_refinement_bounds_the_grid():
    shift = (3.37, -2.81)
    reference, moving = shifted_pair(data.camera(), shift)
    coarse = register(reference, moving, upsample_factor=1, refine=False)
    assert all(float(s).is_integer() for s in coarse.shift)
    np.testing.assert_allclose(coarse.shift, shift, atol=0.5 + 0.15)
    fine = register(reference, moving, upsample_factor=10, refine=False)
    np.testing.assert_allclose(np.array(fine.shift) * 10, np.round(np.array(fine.shift) * 10))
    np.testing.assert_allclose(fine.shift, shift, atol=0.05 + 0.15)


# --------------------------------------------------------------------------------------
# Per plane
# --------------------------------------------------------------------------------------


def drifting_stack(drifts, image=None):
    """Plane t = crop of ``image(y + drift_t)``: registering t onto 0 gives drift_t - drift_0."""
    image = data.camera() if image is None else image
    return np.stack([shifted_pair(image, d)[1] for d in drifts])


DRIFTS = [(0.0, 0.0), (1.3, -0.6), (2.7, -1.45), (4.15, -2.2), (-3.6, 5.3)]


def test_drift_correction_registers_every_plane_to_the_reference_plane():
    stack = drifting_stack(DRIFTS)
    reg = register(stack, stack, per_plane=0, reference_plane=0)
    assert reg.shifts.shape == (len(DRIFTS), 3)
    assert (reg.shifts[:, 0] == 0).all()
    np.testing.assert_allclose(reg.shifts[:, 1:], DRIFTS, atol=0.15)
    assert reg.per_plane == 0 and reg.reference_plane == 0
    assert reg.qualities.shape == (len(DRIFTS),)
    assert reg.reliable
    np.testing.assert_allclose(reg.shift, np.median(reg.shifts, axis=0))

    to_last = register(stack, stack, per_plane=0, reference_plane=-1)
    expected = np.array(DRIFTS) - np.array(DRIFTS[-1])
    np.testing.assert_allclose(to_last.shifts[:, 1:], expected, atol=0.15)


def test_per_plane_registers_plane_t_to_plane_t_along_any_axis():
    shifts = [(2.2, -1.7), (-6.4, 3.15), (0.55, 8.0)]
    pairs = [shifted_pair(data.camera()[::2, ::2], s) for s in shifts]
    reference = np.stack([p[0] for p in pairs], axis=-1)  # planes along the last axis
    moving = np.stack([p[1] for p in pairs], axis=-1)
    reg = register(reference, moving, per_plane=-1)
    assert reg.per_plane == 2
    assert (reg.shifts[:, 2] == 0).all()
    np.testing.assert_allclose(reg.shifts[:, :2], shifts, atol=0.15)


def test_per_plane_apply_shifts_each_plane_numpy_and_lazily():
    stack = drifting_stack(DRIFTS[:3])
    reg = register(stack, stack, per_plane=0, reference_plane=0)
    expected = np.stack(
        [
            ndi.shift(plane, s[1:], order=1, mode="nearest")
            for plane, s in zip(stack, reg.shifts, strict=True)
        ]
    )
    np.testing.assert_allclose(reg.apply(stack), expected, rtol=1e-6, atol=1e-6)
    lazy = reg.apply(da.from_array(stack, chunks=(1, 100, 100)))
    assert isinstance(lazy, da.Array)
    np.testing.assert_allclose(lazy.compute(), expected, rtol=1e-6, atol=1e-4)


def test_per_plane_on_a_dask_stack_reads_each_chunk_once():
    stack = drifting_stack(DRIFTS).astype(np.float32)
    reference = CountingSource(stack.shape, (2, 400, 400), lambda r: stack[r])
    moving = CountingSource(stack.shape, (2, 400, 400), lambda r: stack[r])
    reg = register(reference.array, moving.array, per_plane=0, reference_plane=0)
    np.testing.assert_allclose(reg.shifts[:, 1:], DRIFTS, atol=0.15)
    assert reference.calls == 1  # the reference plane's chunk
    assert moving.calls == 3  # planes (0, 1), (2, 3), (4,)
    per_pair = register(reference.array, moving.array, per_plane=0)
    np.testing.assert_allclose(per_pair.shifts, 0.0, atol=1e-6)  # each plane onto itself
    assert reference.calls == 1 + 3 and moving.calls == 3 + 3


# --------------------------------------------------------------------------------------
# Registration: apply, valid region, serialisation
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("shift", [(2.5, -3.0), (-0.25, 7.75), (0.0, 0.0), (40.0, -3.2)])
def test_valid_region_is_where_the_shift_reads_inside_moving(shift):
    shape = (30, 20)
    reg = Registration(shift=shift)
    # Independently: scipy's "constant" mode fills exactly the positions that fall outside.
    inside = np.isfinite(ndi.shift(np.ones(shape), shift, order=1, mode="constant", cval=np.nan))
    mask = np.zeros(shape, bool)
    mask[reg.valid_region(shape)] = True
    np.testing.assert_array_equal(mask, inside)
    np.testing.assert_array_equal(reg.valid_mask(shape), inside)


def test_per_plane_valid_region_is_the_intersection_or_one_plane():
    shifts = np.array([[0, 1.5, -2.0], [0, -3.0, 0.5], [0, 0.0, 4.0]])
    reg = Registration(shift=(0, 0, 0), shifts=shifts, per_plane=0)
    shape = (3, 20, 20)
    region = reg.valid_region(shape)
    assert region == (slice(0, 3), slice(2, 17), slice(4, 18))
    for t in range(3):
        inside = np.isfinite(
            ndi.shift(np.ones(shape[1:]), shifts[t, 1:], order=1, mode="constant", cval=np.nan)
        )
        plane = reg.valid_region(shape, plane=t)
        mask = np.zeros(shape[1:], bool)
        mask[plane[1:]] = True
        np.testing.assert_array_equal(mask, inside)
        np.testing.assert_array_equal(reg.valid_mask(shape)[t], inside)


NOISY_SHIFTS = [
    ((0.0, 0.0), (-6e-18, 1e-17)),
    ((0.0, 3.0), (3e-9, 2.9999999999)),
    ((-2.0, 0.0), (-2.0 - 3e-9, -1e-17)),
    ((5.0, -1.25), (5.0 + 9e-7, -1.25)),
]


@pytest.mark.parametrize(("exact", "noisy"), NOISY_SHIFTS)
def test_shifts_that_are_integers_up_to_rounding_are_those_integers(exact, noisy):
    """Issue 12: a plane registered onto itself came back with a shift of -6e-18 on another
    machine, and its sign decided the valid region. Zero (or an integer) up to rounding is
    stored as exactly that, so everything downstream is the exact-integer case."""
    reg, ref = Registration(shift=noisy), Registration(shift=exact)
    assert reg.shift == exact
    assert "-0.0" not in repr(reg.shift) and "-0.0" not in json.dumps(reg.to_dict())
    shape = (30, 20)
    assert reg.valid_region(shape) == ref.valid_region(shape)
    np.testing.assert_array_equal(reg.valid_mask(shape), ref.valid_mask(shape))
    image = np.random.default_rng(3).random(shape)
    np.testing.assert_array_equal(reg.apply(image), ref.apply(image))
    lazy = reg.apply(da.from_array(image, chunks=8))
    np.testing.assert_allclose(lazy.compute(), ref.apply(image), atol=1e-12)
    # Per plane: every plane's shift is snapped the same way.
    stacked = Registration(shift=(0, 0, 0), shifts=[(0, *noisy), (0, *exact)], per_plane=0)
    assert stacked.shifts.tolist() == [[0.0, *exact], [0.0, *exact]]
    np.testing.assert_array_equal(
        stacked.valid_mask((2, *shape)), np.stack([ref.valid_mask(shape)] * 2)
    )


def test_plane_registered_onto_itself_has_a_shift_of_exactly_zero():
    stack = drifting_stack(DRIFTS[:2])
    reg = register(stack, stack, per_plane=0, reference_plane=0)
    assert reg.shifts[0].tolist() == [0.0, 0.0, 0.0]
    assert not np.signbit(reg.shifts[0]).any()
    itself = register(stack[0], stack[0])
    assert itself.shift == (0.0, 0.0) and not np.signbit(itself.shift).any()


def test_moving_coordinates_are_where_apply_reads_the_moving_image():
    rng = np.random.default_rng(4)
    moving = ndi.gaussian_filter(rng.random((40, 50)), 2)
    reg = Registration(shift=(3.25, -1.5))
    registered = reg.apply(moving, order=1)
    points = np.array([[10, 10], [20.0, 30.0], [35, 5]])
    inside = reg.moving_coordinates(points)
    np.testing.assert_allclose(inside, points - (3.25, -1.5))
    # Independently of the shift convention: interpolate moving there.
    values = ndi.map_coordinates(moving, inside.T, order=1)
    np.testing.assert_allclose(values, registered[tuple(points.astype(int).T)], atol=1e-12)
    # The homogeneous matrix maps the same way.
    homogeneous = np.c_[points, np.ones(len(points))]
    np.testing.assert_allclose((reg.matrix @ homogeneous.T).T[:, :2], inside)
    assert reg.model == "translation" and reg.matrix.shape == (3, 3)


def test_per_plane_moving_coordinates_use_each_plane_shift():
    shifts = np.array([[0, 1.5, -2.0], [0, -3.0, 0.5]])
    reg = Registration(shift=(0, 0, 0), shifts=shifts, per_plane=0)
    stack = ndi.gaussian_filter(np.random.default_rng(5).random((2, 30, 30)), (0, 2, 2))
    registered = reg.apply(stack)
    points = np.array([[0, 10, 12], [1, 10, 12], [1, 20.0, 7.0]])
    inside = reg.moving_coordinates(points)
    np.testing.assert_allclose(inside, points - shifts[[0, 1, 1]])
    values = ndi.map_coordinates(stack, inside.T, order=1)
    np.testing.assert_allclose(values, registered[tuple(points.astype(int).T)], atol=1e-6)
    assert reg.matrix.shape == (2, 4, 4)
    np.testing.assert_allclose(reg.matrix[1, :3, 3], -shifts[1])
    with pytest.raises(ValueError, match="must be plane indices"):
        reg.moving_coordinates([[0.5, 1, 1]])
    with pytest.raises(ValueError, match=r"points must have shape \(\.\.\., 3\)"):
        reg.moving_coordinates([[1, 1]])
    with pytest.raises(ValueError, match="unknown model 'projective'"):
        Registration(shift=(0, 0), model="projective")
    with pytest.raises(ValueError, match="model 'affine' needs a transform"):
        Registration(shift=(0, 0), model="affine")


def test_apply_matches_scipy_and_keeps_float_dtypes():
    rng = np.random.default_rng(1)
    image = rng.random((40, 50))
    reg = Registration(shift=(3.25, -1.5))
    out = reg.apply(image)
    assert out.dtype == np.float64
    np.testing.assert_array_equal(out, ndi.shift(image, (3.25, -1.5), order=1, mode="nearest"))
    as_uint8 = reg.apply((image * 255).astype(np.uint8), order=0)
    assert as_uint8.dtype == np.float32
    assert reg.apply(image.astype(np.float32)).dtype == np.float32


def test_apply_on_dask_stays_lazy_and_matches_numpy():
    rng = np.random.default_rng(2)
    image = rng.random((96, 80)).astype(np.float32)
    source = CountingSource(image.shape, 32, lambda region: image[region])
    reg = Registration(shift=(5.5, -12.25))
    lazy = reg.apply(source.array)
    assert isinstance(lazy, da.Array)
    assert source.calls == 0
    np.testing.assert_allclose(lazy.compute(), reg.apply(image), atol=1e-5)
    assert source.calls > 0


def test_to_dict_is_json_and_round_trips():
    reg = Registration(
        shift=(0.0, 1.5, -2.0),
        shifts=np.array([[0, 1.0, -2.0], [0, 2.0, -2.0]]),
        per_plane=0,
        reference_plane=1,
        quality=0.9,
        qualities=np.array([0.9, float("nan")]),
        method="test",
        notes=("a note",),
    )
    d = json.loads(json.dumps(reg.to_dict(), allow_nan=False))
    back = Registration.from_dict(d)
    assert back.shift == reg.shift
    np.testing.assert_array_equal(back.shifts, reg.shifts)
    assert back.per_plane == 0 and back.reference_plane == 1
    assert d["qualities"] == [0.9, None] and d["error"] is None
    assert back.notes == ("a note",)
    assert d["model"] == "translation" and back.model == "translation"


# --------------------------------------------------------------------------------------
# Unreliable estimates warn
# --------------------------------------------------------------------------------------


def test_flat_image_warns_and_is_unreliable():
    reference = data.camera()[:128, :128]
    with pytest.warns(RegistrationWarning, match="moving is flat"):
        reg = register(reference, np.full((128, 128), 7.0))
    assert not reg.reliable
    assert reg.shift == (0.0, 0.0)
    assert reg.quality == 0.0


def test_unrelated_images_warn_that_the_peak_is_noise():
    rng = np.random.default_rng(5)
    with pytest.warns(RegistrationWarning, match="no better than noise"):
        reg = register(rng.random((128, 128)), rng.random((128, 128)))
    assert not reg.reliable
    assert abs(reg.quality) < 0.2


def test_per_plane_warns_with_the_unreliable_plane():
    stack = drifting_stack(DRIFTS[:3]).copy()
    stack[2] = 5.0
    with pytest.warns(RegistrationWarning, match="1 of 3 planes unreliable .first: plane 2"):
        reg = register(stack, stack, per_plane=0, reference_plane=0)
    assert not reg.reliable
    np.testing.assert_allclose(reg.shifts[1, 1:], DRIFTS[1], atol=0.15)


# --------------------------------------------------------------------------------------
# Large images: coarse estimate + full-resolution tiles, bounded reads
# --------------------------------------------------------------------------------------


def test_gigapixel_pyramid_reads_only_a_few_full_resolution_chunks():
    n, chunk = 20000, 2048
    texture = SeparableTexture((n, n), seed=1)
    shift = (1234.37, -2101.62)  # moving(y) = texture(y + shift)
    reference = CountingSource((n, n), chunk, lambda r: texture.block(r))
    moving = CountingSource((n, n), chunk, lambda r: texture.block(r, shift))
    factor = 16
    coarse = (slice(0, n // factor),) * 2
    reg = register(
        [reference.array, texture.block(coarse, factor=factor)],
        [moving.array, texture.block(coarse, shift, factor=factor)],
    )
    np.testing.assert_allclose(reg.shift, shift, atol=0.05)
    assert reg.reliable and reg.quality > 0.99
    assert "pyramid level 1" in reg.method and "tiles" in reg.method
    # N_TILES tiles of 1024^2, each within at most 4 chunks per image: never the image.
    assert 1 <= reference.calls <= 4 * 4
    assert 1 <= moving.calls <= 4 * 4


def test_large_dask_without_pyramid_reads_each_chunk_once_plus_tiles():
    n, chunk = 6144, 1024
    texture = SeparableTexture((n, n), seed=2)
    shift = (-401.71, 655.28)
    reference = CountingSource((n, n), chunk, lambda r: texture.block(r))
    moving = CountingSource((n, n), chunk, lambda r: texture.block(r, shift))
    calls = []
    reg = register(
        reference.array, moving.array, max_size=1024, progress=lambda *c: calls.append(c)
    )
    np.testing.assert_allclose(reg.shift, shift, atol=0.05)
    assert reg.reliable
    assert "block-mean" in reg.method and "tiles" in reg.method
    n_chunks = (n // chunk) ** 2
    assert reference.calls <= n_chunks + 4 * 4
    assert moving.calls <= n_chunks + 4 * 4
    # Progress: the block-mean pass in slabs of chunk rows, then the tiles.
    assert_progress(calls)
    assert len(calls) > 2 * 3 + 4


def test_large_numpy_takes_the_coarse_and_tiles_path():
    image = smooth_volume((1400, 1300), seed=4, sigma=1.5)
    shift = (37.45, -81.3)
    reference, moving = shifted_pair(image, shift, crop=0.9)
    reg = register(reference, moving, max_size=256)
    assert "block-mean" in reg.method
    np.testing.assert_allclose(reg.shift, shift, atol=0.1)


def test_large_path_with_unregistered_axes_keeps_them_whole():
    rng = np.random.default_rng(8)
    volume = ndi.gaussian_filter(rng.random((40, 100, 100)), (0, 2, 2))
    shift = (0.0, 2.3, -1.6)
    moving = ndi.shift(volume, np.negative(shift), order=3, mode="wrap")
    reg = register(volume, moving, axes=(1, 2), max_size=64)
    assert "block-mean" in reg.method and "tiles" in reg.method
    np.testing.assert_allclose(reg.shift, shift, atol=0.05)


def test_small_dask_input_is_registered_like_numpy():
    reference, moving = shifted_pair(data.camera(), (3.3, -2.6))
    lazy = register(da.from_array(reference, chunks=100), da.from_array(moving, chunks=100))
    # (1e-6: a shift that is an integer up to 1e-6 is snapped to it, on either side)
    np.testing.assert_allclose(lazy.shift, register(reference, moving).shift, atol=1e-6)


# --------------------------------------------------------------------------------------
# Progress
# --------------------------------------------------------------------------------------


def assert_progress(calls):
    """(0, total) first, (total, total) last, `done` strictly increasing, total fixed."""
    total = calls[0][1]
    assert calls[0] == (0, total) and calls[-1] == (total, total)
    assert all(t == total for _, t in calls)
    done = [d for d, _ in calls]
    assert done == sorted(set(done))


def test_progress_counts_planes():
    stack = drifting_stack(DRIFTS)
    calls = []
    register(stack, stack, per_plane=0, reference_plane=0, progress=lambda *c: calls.append(c))
    assert calls == [(t, len(DRIFTS)) for t in range(len(DRIFTS) + 1)]
    calls.clear()
    lazy = da.from_array(stack, chunks=(2, 200, 200))
    register(lazy, lazy, per_plane=0, progress=lambda *c: calls.append(c))
    assert calls == [(t, len(DRIFTS)) for t in range(len(DRIFTS) + 1)]
    calls.clear()
    register(stack[1], stack[2], progress=lambda *c: calls.append(c))
    assert calls == [(0, 1), (1, 1)]


def test_progress_counts_block_mean_slabs_and_tiles_of_a_large_image():
    image = smooth_volume((1400, 1300), seed=4, sigma=1.5)
    reference, moving = shifted_pair(image, (37.45, -81.3), crop=0.9)
    calls = []
    reg = register(reference, moving, max_size=256, n_tiles=3, progress=lambda *c: calls.append(c))
    assert "block-mean" in reg.method
    assert_progress(calls)
    assert len(calls) >= 1 + 2 + 1  # a slab per image at least, and a tile
    calls.clear()
    stack = np.stack([reference, moving])
    register(stack, stack[::-1], per_plane=0, max_size=256, progress=lambda *c: calls.append(c))
    assert_progress(calls)
    assert len(calls) >= 1 + 2 * (2 + 1)


def test_an_exception_raised_by_progress_stops_the_registration():
    class Cancelled(Exception):
        pass

    seen = []

    def cancel_at_two(done, total):
        seen.append(done)
        if done == 2:
            raise Cancelled

    stack = drifting_stack(DRIFTS)
    with pytest.raises(Cancelled):
        register(stack, stack, per_plane=0, reference_plane=0, progress=cancel_at_two)
    assert seen == [0, 1, 2]


# --------------------------------------------------------------------------------------
# Bad input
# --------------------------------------------------------------------------------------

A = np.zeros((32, 32))


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        (
            dict(moving=np.zeros((32, 31))),
            ValueError,
            r"same shape, got \(32, 32\) and \(32, 31\)",
        ),
        (dict(moving=np.zeros((32, 32, 2))), ValueError, "same number of dimensions, got 2 and 3"),
        (dict(axes=2), ValueError, "axis 2 is out of range for a 2-D image"),
        (dict(axes=(0, 0)), ValueError, "axes contains axis 0 more than once"),
        (dict(axes=()), ValueError, "axes must name at least one axis"),
        (dict(axes=1.5), TypeError, "axes must be an int or a sequence of ints"),
        (dict(per_plane=2), ValueError, "per_plane axis 2 is out of range for 2-D images"),
        (dict(per_plane=0.5), TypeError, "per_plane must be an axis index"),
        (dict(per_plane=0, axes=(0, 1)), ValueError, "contains the per_plane axis 0"),
        (dict(reference_plane=0), ValueError, "reference_plane needs per_plane"),
        (
            dict(per_plane=0, reference_plane=32),
            ValueError,
            r"reference_plane must be .* \[-32, 32\)",
        ),
        (dict(upsample_factor=0), ValueError, "upsample_factor must be >= 1, got 0"),
        (dict(upsample_factor=2.5), TypeError, "upsample_factor must be an integer"),
        (dict(normalization="phasee"), ValueError, "unknown normalization 'phasee'"),
        (dict(max_size=4), ValueError, "max_size must be >= 16"),
        (dict(progress=True), TypeError, "progress must be a callable progress"),
        (dict(moving=np.zeros((32, 32), complex)), TypeError, "moving has unsupported dtype"),
        (dict(reference="image"), TypeError, "reference has unsupported dtype"),
        (
            dict(reference=np.zeros((0, 32)), moving=np.zeros((0, 32))),
            ValueError,
            "reference is empty",
        ),
    ],
)
def test_bad_arguments_raise_naming_the_argument(kwargs, error, match):
    args = dict(reference=A, moving=A) | kwargs
    with pytest.raises(error, match=match):
        register(args.pop("reference"), args.pop("moving"), **args)


@pytest.mark.parametrize("which", ["reference", "moving"])
@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_non_finite_values_are_refused_naming_the_image(which, bad):
    images = {
        "reference": data.camera()[:64, :64].astype(float),
        "moving": data.camera()[:64, :64].astype(float),
    }
    images[which][10, 10] = bad
    with pytest.raises(ValueError, match=f"{which} contains 1 NaN or infinite values"):
        register(images["reference"], images["moving"])


def test_nan_in_a_large_dask_image_is_refused_without_loading_it():
    reference = smooth_volume((512, 512), seed=6).astype(np.float32)
    moving = reference.copy()
    moving[300, 200] = np.nan
    with pytest.raises(ValueError, match=r"moving contains .* NaN"):
        register(
            da.from_array(reference, chunks=128),
            da.from_array(moving, chunks=128),
            max_size=128,
        )


def test_bad_pyramids_are_refused():
    with pytest.raises(ValueError, match="levels must shrink"):
        register([A, np.zeros((64, 64))], A)
    with pytest.raises(ValueError, match="same number of dimensions"):
        register([A, np.zeros((16,))], A)
    big = np.zeros((64, 64))
    with pytest.raises(ValueError, match="pyramids differ at level 1"):
        register([big, np.zeros((32, 32))], [big, np.zeros((16, 16))], max_size=16)


def test_registration_methods_check_their_arguments():
    reg = Registration(shift=(1.0, 2.0))
    with pytest.raises(ValueError, match="image must have 2 dimensions"):
        reg.apply(np.zeros((4, 4, 4)))
    with pytest.raises(ValueError, match="order must be an integer from 0 to 5"):
        reg.apply(np.zeros((4, 4)), order=7)
    with pytest.raises(ValueError, match="shape must have 2 dimensions"):
        reg.valid_region((4,))
    with pytest.raises(ValueError, match="plane is only meaningful"):
        reg.valid_region((4, 4), plane=0)
    stacked = Registration(shift=(0, 0, 0), shifts=np.zeros((3, 3)), per_plane=0)
    with pytest.raises(ValueError, match="has 4 planes along axis 0, but the registration has 3"):
        stacked.apply(np.zeros((4, 8, 8)))
    with pytest.raises(ValueError, match=r"plane must be an integer in \[-3, 3\)"):
        stacked.valid_region((3, 8, 8), plane=3)
    with pytest.raises(ValueError, match="per_plane"):
        Registration(shift=(0, 0), shifts=np.zeros((3, 2)))


def test_inputs_are_not_modified():
    reference, moving = shifted_pair(data.camera(), (2.5, 1.5))
    before = reference.copy(), moving.copy()
    reg = register(reference, moving)
    reg.apply(moving)
    np.testing.assert_array_equal(reference, before[0])
    np.testing.assert_array_equal(moving, before[1])
