"""Subpixel translation registration: the NumPy core.

:func:`register` estimates the translation that brings a moving image onto a reference, in
2D, 3D, per plane through a stack, and on images too large to hold in memory (Dask arrays,
zarr arrays, pyramids): those are registered on a downsampled version first, then refined at
full resolution on a few textured tiles, so only those tiles are ever read at full
resolution. :class:`Registration` holds the result, applies it (NumPy in, NumPy out; Dask
in, lazy Dask out) and says which pixels of the registered image are real data.

The estimate has two stages:

1. Phase correlation (as ``skimage.registration.phase_cross_correlation``, with a tapered
   border and a Gaussian low-pass on the whitened cross-power spectrum, which removes most
   of the subpixel bias that interpolated or noisy high frequencies give it), refined by an
   upsampled DFT around the peak; the modulo-image-size ambiguity is resolved in real space.
2. Gauss-Newton least squares in real space on the overlap (translation plus an affine
   intensity change, ``reference ~ a * shifted(moving) + b``), which reaches a few
   hundredths of a pixel where the data allow.

The quality reported is the Pearson correlation of the overlap after alignment, and the
estimate is flagged unreliable (with a :class:`RegistrationWarning`) when the images are
flat, the correlation peak does not stand out of the correlation noise, or the aligned
overlap hardly correlates.

Dask is imported only inside the functions that handle Dask input.
"""

from __future__ import annotations

import itertools
import math
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from numbers import Integral

import numpy as np
import scipy.fft as sfft
from scipy import ndimage as ndi

from ._ncc import _normalize_axes, check_image
from ._validation import snap_shift

__all__ = ["NORMALIZATIONS", "Registration", "RegistrationWarning", "register"]

#: Accepted values of ``normalization`` (``None`` is an alias of ``"none"``).
NORMALIZATIONS = ("phase", "none")

#: An estimate is reliable only if the aligned overlap correlates at least this much
#: (absolute Pearson correlation).
RELIABLE_QUALITY = 0.05

#: ... and if the correlation peak stands this many robust standard deviations above the
#: median of the correlation surface, beyond what the largest of as many noise samples
#: would reach (``sqrt(2 ln N)``).
RELIABLE_PSR_MARGIN = 4.0

#: Standard deviation, in cycles per pixel, of the Gaussian low-pass applied to the whitened
#: cross-power spectrum ("phase" normalization).
LOWPASS_SIGMA = 0.15

#: Fraction of each registered axis tapered by a cosine at both ends (Tukey window).
TAPER_FRACTION = 0.25

#: Elements of a full-resolution refinement tile (1024 x 1024 in 2D, ~101^3 in 3D).
TILE_ELEMENTS = 1024**2

#: Number of full-resolution tiles the large-image path refines on.
N_TILES = 4

#: Relative noise level (noise standard deviation over the image's) above which the
#: real-space refinement works on smoothed images, and the smoothing (pixels).
NOISE_FOR_SMOOTHING = 0.03
GN_SMOOTHING = 1.0

_GN_ITERATIONS = 8
_GN_TOLERANCE = 1e-3
_GN_MARGIN = 2
_SPLINE_PAD = 6


class RegistrationWarning(UserWarning):
    """The registration estimate is unreliable (flat images, no clear correlation peak)."""


# --------------------------------------------------------------------------------------
# The result
# --------------------------------------------------------------------------------------


@dataclass(eq=False)
class Registration:
    """A translation that registers a moving image onto a reference.

    Same convention as ``skimage.registration.phase_cross_correlation``:
    ``scipy.ndimage.shift(moving, reg.shift)`` is (approximately) the reference.
    Shifts within ``SHIFT_TOLERANCE`` (1e-6 px) of an integer are stored as that integer
    (``-0.0`` as ``0.0``), so a shift that is zero up to rounding is exactly zero.

    Attributes
    ----------
    shift : tuple of float
        Shift per axis of the moving image. With per-plane registration, the per-axis
        median of `shifts` (a summary; :meth:`apply` uses `shifts`).
    shifts : ndarray of float, shape (n_planes, ndim), or None
        Per-plane registration: the shift of each plane (0 along the plane axis).
    per_plane : int or None
        The axis along which planes were registered separately.
    reference_plane : int or None
        Per-plane registration to a single plane of the reference (drift correction):
        that plane's index; None when plane ``t`` was registered to plane ``t``.
    quality : float
        Pearson correlation of reference and registered moving image over their overlap
        (1: identical up to brightness and contrast; near 0: no match; negative: inverted
        contrast). Per plane: the lowest of `qualities`.
    reliable : bool
        False when the images were flat, the correlation peak was no better than noise, or
        ``abs(quality) < RELIABLE_QUALITY``.
    error : float
        The translation-invariant normalized RMS error of
        ``skimage.registration.phase_cross_correlation``, computed from the unnormalized
        cross-correlation at the estimated shift (per plane: the largest).
    peak_ratio : float
        Height of the phase-correlation peak in robust standard deviations of the
        correlation surface (per plane: the lowest).
    method : str
        How the shift was found ("phase+gauss-newton", "coarse+tiles", "given", ...).
    notes : tuple of str
        Anything worth knowing about the estimate (why it is unreliable, tile spread).
    qualities : ndarray or None
        Per-plane registration: the quality of each plane.
    """

    shift: tuple[float, ...]
    shifts: np.ndarray | None = None
    per_plane: int | None = None
    reference_plane: int | None = None
    quality: float = float("nan")
    reliable: bool = True
    error: float = float("nan")
    peak_ratio: float = float("nan")
    method: str = "given"
    notes: tuple[str, ...] = ()
    qualities: np.ndarray | None = field(default=None, repr=False)

    def __post_init__(self):
        # Snapped, so that a shift that is an integer up to rounding (-6e-18 for a plane
        # registered onto itself) is that integer on every machine: valid regions, fill
        # bands and "shifted or not" never depend on rounding noise.
        self.shift = tuple(float(s) for s in snap_shift(np.ravel(self.shift)))
        if self.shifts is not None:
            self.shifts = snap_shift(self.shifts)
            if self.shifts.ndim != 2 or self.shifts.shape[1] != len(self.shift):
                raise ValueError(
                    f"shifts must have shape (n_planes, {len(self.shift)}), "
                    f"got {self.shifts.shape}"
                )
            if self.per_plane is None:
                raise ValueError("shifts is given, so per_plane (the plane axis) must be too")
        if self.qualities is not None:
            self.qualities = np.asarray(self.qualities, dtype=np.float64)
        self.notes = tuple(self.notes)

    @property
    def ndim(self) -> int:
        """Number of axes of the registered images."""
        return len(self.shift)

    def _check_shape(self, shape, name="image") -> tuple[int, ...]:
        shape = tuple(int(n) for n in shape)
        if len(shape) != self.ndim:
            raise ValueError(
                f"{name} must have {self.ndim} dimensions like the registered images, "
                f"got shape {shape}"
            )
        if self.shifts is not None and shape[self.per_plane] != len(self.shifts):
            raise ValueError(
                f"{name} has {shape[self.per_plane]} planes along axis {self.per_plane}, "
                f"but the registration has {len(self.shifts)}"
            )
        return shape

    def apply(self, image, *, order: int = 1, mode: str = "nearest"):
        """The moving image shifted onto the reference grid.

        Parameters
        ----------
        image : ndarray or dask.array.Array
            The moving image (or any image on its grid: another channel, a label image
            with ``order=0``). Not modified.
        order : int, optional
            Spline interpolation order (0-5), as in ``scipy.ndimage.shift``.
        mode : str, optional
            How values beyond the moving image are filled, as in ``scipy.ndimage.shift``.
            Those pixels are outside :meth:`valid_region`.

        Returns
        -------
        shifted : ndarray or dask.array.Array
            Same shape; float32 for integer, bool and float16 input, else the input dtype.
            Lazy (nothing computed) for Dask input.

        Examples
        --------
        >>> import numpy as np
        >>> from napari_ncc import Registration
        >>> image = np.arange(16.0).reshape(4, 4)
        >>> Registration(shift=(1.0, 0.0)).apply(image)[:, 0]
        array([0., 0., 4., 8.])
        """
        if isinstance(order, bool) or not isinstance(order, Integral) or not 0 <= order <= 5:
            raise ValueError(f"order must be an integer from 0 to 5, got {order!r}")
        if _is_dask(image):
            return self._apply_dask(image, order=order, mode=mode)
        image = np.asarray(image)
        check_image(image, "image")
        shape = self._check_shape(image.shape)
        dtype = _output_dtype(image.dtype)
        if self.shifts is None:
            return ndi.shift(image.astype(dtype, copy=False), self.shift, order=order, mode=mode)
        out = np.empty(shape, dtype=dtype)
        for t, plane_shift in enumerate(self.shifts):
            index = _plane_index(self.ndim, self.per_plane, t)
            plane_shift = np.delete(plane_shift, self.per_plane)
            out[index] = ndi.shift(
                image[index].astype(dtype, copy=False), plane_shift, order=order, mode=mode
            )
        return out

    def _apply_dask(self, image, *, order, mode):
        import dask.array as da

        check_image(image, "image")
        self._check_shape(image.shape)
        # No astype here: shift_lazy already gives floats (float32 for integer, bool and
        # float16 input, as _output_dtype), and a cast would hide the source it reads
        # each plane's blocks from.
        if self.shifts is None:
            return _shift_lazy(image, self.shift, order=order, mode=mode)
        planes = []
        for t, plane_shift in enumerate(self.shifts):
            plane = image[_plane_index(self.ndim, self.per_plane, t)]
            plane_shift = tuple(np.delete(plane_shift, self.per_plane))
            planes.append(_shift_lazy(plane, plane_shift, order=order, mode=mode))
        return da.stack(planes, axis=self.per_plane)

    def valid_region(self, shape, *, plane: int | None = None) -> tuple[slice, ...]:
        """Slices of the pixels of the registered image that come from inside the moving image.

        A pixel ``x`` of ``apply(moving)`` interpolates the moving image at ``x - shift``;
        it is valid when that position lies inside the moving image along every axis
        (``0 <= x - shift <= n - 1``). Elsewhere the value was made up by ``mode``.

        Parameters
        ----------
        shape : tuple of int
            Shape of the registered images.
        plane : int, optional
            Per-plane registration: the region of this plane (a full slice along the plane
            axis). By default the intersection of the regions of all planes.

        Returns
        -------
        region : tuple of slice
            One slice per axis; empty slices when nothing overlaps.

        Examples
        --------
        >>> from napari_ncc import Registration
        >>> Registration(shift=(2.5, -3.0)).valid_region((10, 10))
        (slice(3, 10, None), slice(0, 7, None))
        """
        shape = self._check_shape(shape, "shape")
        if self.shifts is None:
            if plane is not None:
                raise ValueError("plane is only meaningful for a per-plane registration")
            return _valid_slices(shape, self.shift)
        if plane is not None:
            n = len(self.shifts)
            if isinstance(plane, bool) or not isinstance(plane, Integral) or not -n <= plane < n:
                raise ValueError(f"plane must be an integer in [{-n}, {n}), got {plane!r}")
            return _valid_slices(shape, self.shifts[plane], skip=self.per_plane)
        lo = [0] * len(shape)
        hi = list(shape)
        for plane_shift in self.shifts:
            for ax, sl in enumerate(_valid_slices(shape, plane_shift, skip=self.per_plane)):
                lo[ax] = max(lo[ax], sl.start)
                hi[ax] = min(hi[ax], sl.stop)
        return tuple(slice(a, max(a, b)) for a, b in zip(lo, hi, strict=True))

    def valid_mask(self, shape) -> np.ndarray:
        """Boolean mask of :meth:`valid_region` (per plane for a per-plane registration)."""
        shape = self._check_shape(shape, "shape")
        mask = np.zeros(shape, dtype=bool)
        if self.shifts is None:
            mask[self.valid_region(shape)] = True
            return mask
        for t in range(len(self.shifts)):
            region = list(self.valid_region(shape, plane=t))
            region[self.per_plane] = t
            mask[tuple(region)] = True
        return mask

    def to_dict(self) -> dict:
        """A JSON-able description (for layer metadata or zarr attributes).

        Examples
        --------
        >>> import json
        >>> from napari_ncc import Registration
        >>> d = Registration(shift=(1.5, -2.0)).to_dict()
        >>> d["shift"]
        [1.5, -2.0]
        >>> Registration.from_dict(json.loads(json.dumps(d))).shift
        (1.5, -2.0)
        """

        def num(x):
            x = float(x)
            return x if math.isfinite(x) else None

        return {
            "shift": [float(s) for s in self.shift],
            "shifts": None if self.shifts is None else self.shifts.tolist(),
            "per_plane": self.per_plane,
            "reference_plane": self.reference_plane,
            "quality": num(self.quality),
            "qualities": None if self.qualities is None else [num(q) for q in self.qualities],
            "reliable": bool(self.reliable),
            "error": num(self.error),
            "peak_ratio": num(self.peak_ratio),
            "method": self.method,
            "notes": list(self.notes),
            "convention": "scipy.ndimage.shift(moving, shift) ~ reference",
        }

    @classmethod
    def from_dict(cls, d: dict) -> Registration:
        """Rebuild a :class:`Registration` from :meth:`to_dict`'s output."""

        def num(x):
            return float("nan") if x is None else float(x)

        return cls(
            shift=tuple(d["shift"]),
            shifts=None if d.get("shifts") is None else np.asarray(d["shifts"], float),
            per_plane=d.get("per_plane"),
            reference_plane=d.get("reference_plane"),
            quality=num(d.get("quality")),
            qualities=None
            if d.get("qualities") is None
            else np.array([num(q) for q in d["qualities"]]),
            reliable=bool(d.get("reliable", True)),
            error=num(d.get("error")),
            peak_ratio=num(d.get("peak_ratio")),
            method=d.get("method", "given"),
            notes=tuple(d.get("notes", ())),
        )


def _output_dtype(dtype) -> np.dtype:
    dtype = np.dtype(dtype)
    if dtype.kind == "f" and dtype.itemsize >= 4:
        return dtype
    return np.dtype(np.float32)


def _plane_index(ndim: int, axis: int, t: int) -> tuple:
    index = [slice(None)] * ndim
    index[axis] = t
    return tuple(index)


def _valid_slices(shape, shift, skip=None) -> tuple[slice, ...]:
    out = []
    for ax, (n, s) in enumerate(zip(shape, snap_shift(shift).tolist(), strict=True)):
        if ax == skip:
            out.append(slice(0, n))
            continue
        # x - s must lie in [0, n - 1]; s is snapped, so an integer up to rounding counts
        # as that integer.
        lo = min(max(math.ceil(s), 0), n)
        hi = min(max(math.floor(n - 1 + s) + 1, lo), n)
        out.append(slice(lo, hi))
    return tuple(out)


def _is_dask(x) -> bool:
    return hasattr(x, "__dask_graph__") and hasattr(x, "chunks")


def _shift_lazy(image, shift, *, order, mode):
    from ._lazy import shift_lazy

    return shift_lazy(image, tuple(float(s) for s in shift), order=order, mode=mode)


# --------------------------------------------------------------------------------------
# Argument checks
# --------------------------------------------------------------------------------------


def _as_levels(image, name: str) -> list:
    """The image's resolution levels (full resolution first); one level if not a pyramid."""
    if isinstance(image, (list, tuple)) and image and all(hasattr(x, "shape") for x in image):
        levels = list(image)
        for i, level in enumerate(levels):
            check_image(level, f"{name}[{i}]")
            if len(level.shape) != len(levels[0].shape):
                raise ValueError(
                    f"{name} is a pyramid whose levels must all have the same number of "
                    f"dimensions, got shapes {[tuple(x.shape) for x in levels]}"
                )
            if i and any(a > b for a, b in zip(level.shape, levels[i - 1].shape, strict=True)):
                raise ValueError(
                    f"{name} is a pyramid whose levels must shrink from full resolution, "
                    f"got shapes {[tuple(x.shape) for x in levels]}"
                )
        return levels
    if not hasattr(image, "shape") or not hasattr(image, "dtype"):
        try:
            image = np.asarray(image)
        except Exception as exc:
            raise TypeError(f"{name} must be an array, got {type(image).__name__}") from exc
        if image.dtype == object:
            raise TypeError(f"{name} must be a numeric array, got {type(image).__name__}")
    check_image(image, name)
    return [image]


def _check_finite(image: np.ndarray, name: str) -> None:
    if image.dtype.kind == "f" and not np.isfinite(image).all():
        bad = int(np.size(image) - np.count_nonzero(np.isfinite(image)))
        raise ValueError(
            f"{name} contains {bad} NaN or infinite values; registration needs finite "
            "data (replace them, e.g. with np.nan_to_num or the image's median)"
        )


def _check_int(value, name: str, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, Integral):
        raise TypeError(f"{name} must be an integer, got {value!r}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return int(value)


def _normalization(normalization) -> str:
    if normalization is None:
        return "none"
    if normalization not in NORMALIZATIONS:
        raise ValueError(
            f"unknown normalization {normalization!r}; expected one of "
            f"{', '.join(map(repr, NORMALIZATIONS))} (or None)"
        )
    return normalization


# --------------------------------------------------------------------------------------
# The estimator on in-memory arrays
# --------------------------------------------------------------------------------------


def _taper(shape, axes) -> np.ndarray:
    window = np.ones(())
    for ax in range(len(shape)):
        n = shape[ax]
        w = np.ones(n)
        if ax in axes and n >= 8:
            m = max(1, int(TAPER_FRACTION * n / 2))
            ramp = 0.5 - 0.5 * np.cos(np.pi * (np.arange(m) + 0.5) / m)
            w[:m] = ramp
            w[n - m :] = ramp[::-1]
        window = np.multiply.outer(window, w) if window.ndim else w
    return window


def _upsampled_dft(data, region_size, upsample_factor, offsets):
    """DFT of `data` evaluated on an upsampled grid around `offsets` (skimage's method)."""
    shape = data.shape
    for ax in range(data.ndim - 1, -1, -1):
        k = (np.arange(region_size) - offsets[ax])[:, None] * sfft.fftfreq(
            shape[ax], upsample_factor
        )
        data = np.tensordot(np.exp(-2j * np.pi * k), data, axes=(1, -1))
    return data


def _pearson(a: np.ndarray, b: np.ndarray) -> float:
    a = a.astype(np.float64, copy=False).ravel()
    b = b.astype(np.float64, copy=False).ravel()
    if a.size < 3:
        return 0.0
    a = a - a.mean()
    b = b - b.mean()
    den = math.sqrt(float(a @ a) * float(b @ b))
    return float(a @ b) / den if den > 0 else 0.0


def _integer_overlap(ref, mov, shift):
    """Reference and moving pixels that overlap for an integer shift (views)."""
    rs, ms = [], []
    for n, s in zip(ref.shape, shift, strict=True):
        s = round(s)
        rs.append(slice(max(s, 0), min(n, n + s)))
        ms.append(slice(max(-s, 0), min(n, n - s)))
    return ref[tuple(rs)], mov[tuple(ms)]


def _aligned_overlap(ref, mov, shift, *, margin=0, order=3):
    """Reference and moving image shifted by `shift` (spline order), on their overlap.

    Returns None when the overlap is too small. The moving image is only interpolated on
    the overlap (plus a pad for the spline prefilter).
    """
    shape = ref.shape
    # Snap shifts within rounding of an integer, so that floor and ceil agree with them.
    shift = snap_shift(shift).tolist()
    lo, hi, crop, local = [], [], [], []
    integer = [math.floor(s) for s in shift]
    for n, s, si in zip(shape, shift, integer, strict=True):
        a = min(max(math.ceil(s), 0) + (margin if s else 0), n)
        b = max(min(math.floor(n - 1 + s) + 1, n) - (margin if s else 0), a)
        if b - a < 2 and n > 1:
            return None
        c0 = max(a - si - _SPLINE_PAD, 0)
        c1 = min(b - si + _SPLINE_PAD, n)
        lo.append(a)
        hi.append(b)
        crop.append(slice(c0, c1))
        local.append(slice(a - si - c0, b - si - c0))
    fraction = [s - si for s, si in zip(shift, integer, strict=True)]
    moved = mov[tuple(crop)]
    if any(fraction):
        moved = ndi.shift(moved, fraction, order=order, mode="nearest")
    region = tuple(slice(a, b) for a, b in zip(lo, hi, strict=True))
    return ref[region], moved[tuple(local)]


def _noise_level(image: np.ndarray, axes) -> float:
    """Standard deviation of white noise in `image`, relative to the image's own.

    Immerkaer's estimator made robust to edges: the median absolute response to the
    separable second difference ``[1, -2, 1]`` along every registered axis.
    """
    response = image
    for ax in axes:
        response = np.diff(response, n=2, axis=ax)
    sigma = 1.4826 * float(np.median(np.abs(response))) / math.sqrt(6.0 ** len(axes))
    spread = float(image.std())
    return sigma / spread if spread > 0 else 0.0


def _gauss_newton(ref, mov, shift, axes):
    """Least-squares refinement of `shift` along `axes`, intensity model a * moved + b.

    Noisy images are smoothed first (a Gaussian of ``GN_SMOOTHING`` pixels): the noise in
    the gradients would otherwise shrink every step, and interpolating noise biases the
    optimum toward integer and half-pixel shifts.

    Returns the refined shift, or None if it did not converge near the start.
    """
    if max(_noise_level(ref, axes), _noise_level(mov, axes)) > NOISE_FOR_SMOOTHING:
        sigma = [GN_SMOOTHING if ax in axes else 0.0 for ax in range(ref.ndim)]
        ref = ndi.gaussian_filter(ref, sigma, mode="nearest")
        mov = ndi.gaussian_filter(mov, sigma, mode="nearest")
    start = np.array(shift, dtype=np.float64)
    shift = start.copy()
    for _ in range(_GN_ITERATIONS):
        pair = _aligned_overlap(ref, mov, shift, margin=_GN_MARGIN)
        if pair is None:
            return None
        r, w = pair
        grads = np.gradient(w, axis=axes) if len(axes) > 1 else [np.gradient(w, axis=axes[0])]
        # Centre every column so the normal equations stay well conditioned.
        cols = [w.ravel() - w.mean()] + [-(g.ravel() - g.mean()) for g in grads]
        y = r.ravel() - r.mean()
        m = np.array([[float(u @ v) for v in cols] for u in cols])
        rhs = np.array([float(u @ y) for u in cols])
        try:
            coef = np.linalg.solve(m, rhs)
        except np.linalg.LinAlgError:
            return None
        if not np.isfinite(coef).all() or abs(coef[0]) < 1e-12:
            return None
        step = np.clip(coef[1:] / coef[0], -1.0, 1.0)
        shift[list(axes)] += step
        if np.abs(shift - start).max() > 2.0:
            return None
        if np.abs(step).max() < _GN_TOLERANCE:
            break
    return shift


def _psr_threshold(n: int) -> float:
    return math.sqrt(2.0 * math.log(max(n, 2))) + RELIABLE_PSR_MARGIN


@dataclass
class _Estimate:
    shift: np.ndarray
    quality: float
    peak_ratio: float
    error: float
    reliable: bool
    notes: list

    def __post_init__(self):
        # Every estimate is snapped (see Registration), so that strategies built on
        # estimates (tiles, planes) never carry rounding noise either.
        self.shift = snap_shift(self.shift)


def _estimate(ref, mov, axes, *, upsample_factor, normalization, disambiguate, refine):
    """Register two in-memory arrays of equal shape along `axes` (one joint shift)."""
    ndim = ref.ndim
    shift = np.zeros(ndim)
    ref = np.asarray(ref, dtype=np.float64)
    mov = np.asarray(mov, dtype=np.float64)
    axes = tuple(ax for ax in axes if ref.shape[ax] > 1)
    notes = []
    flat = [name for name, x in (("reference", ref), ("moving", mov)) if np.ptp(x) == 0]
    if flat or not axes:
        notes.append(
            f"{' and '.join(flat)} {'is' if len(flat) == 1 else 'are'} flat: no shift can "
            "be measured"
            if flat
            else "every registered axis has length 1"
        )
        return _Estimate(shift, 0.0, 0.0, float("nan"), not flat, notes)

    other = tuple(ax for ax in range(ndim) if ax not in axes)
    mean_r = ref.mean(axis=axes, keepdims=True)
    mean_m = mov.mean(axis=axes, keepdims=True)
    window = _taper(ref.shape, axes)
    f_ref = sfft.fftn((ref - mean_r) * window, axes=axes, workers=-1)
    f_mov = sfft.fftn((mov - mean_m) * window, axes=axes, workers=-1)
    product = f_ref * f_mov.conj()
    power_r = float(np.sum(np.abs(f_ref) ** 2))
    power_m = float(np.sum(np.abs(f_mov) ** 2))
    del f_ref, f_mov
    if other:
        product = product.sum(axis=other)
    raw = product
    kshape = product.shape
    if normalization == "phase":
        freq2 = sum(
            np.meshgrid(*[sfft.fftfreq(n) ** 2 for n in kshape], indexing="ij", sparse=True)
        )
        amplitude = np.abs(product)
        product = product / np.maximum(amplitude, 100 * np.finfo(float).eps * amplitude.max())
        product *= np.exp(-freq2 / (2 * LOWPASS_SIGMA**2))
    surface = np.abs(sfft.ifftn(product, workers=-1))
    peak = np.unravel_index(int(np.argmax(surface)), kshape)
    median = float(np.median(surface))
    spread = 1.4826 * float(np.median(np.abs(surface - median)))
    peak_ratio = (float(surface[peak]) - median) / spread if spread > 0 else math.inf
    k_shift = np.array(peak, dtype=np.float64)
    sizes = np.array(kshape)
    wrap = k_shift > sizes // 2
    k_shift[wrap] -= sizes[wrap]
    del surface

    if upsample_factor > 1:
        k_shift = np.round(k_shift * upsample_factor) / upsample_factor
        region = math.ceil(upsample_factor * 1.5)
        centre = region // 2
        up = _upsampled_dft(
            product.conj(), region, upsample_factor, centre - k_shift * upsample_factor
        ).conj()
        best = np.unravel_index(int(np.argmax(np.abs(up))), up.shape)
        k_shift += (np.array(best) - centre) / upsample_factor
    shift[list(axes)] = k_shift

    if disambiguate:
        shift = _disambiguate(ref, mov, shift, axes)
    if refine:
        refined = _gauss_newton(ref, mov, shift, axes)
        if refined is not None:
            shift = refined
        else:
            notes.append("real-space refinement did not converge; phase correlation kept")

    pair = _aligned_overlap(ref, mov, shift, margin=0)
    quality = _pearson(*pair) if pair is not None else 0.0
    # skimage's error, from the unnormalized cross-correlation at the estimated shift.
    cc_max = _upsampled_dft(raw.conj(), 1, 1, -shift[list(axes)]).ravel()[0]
    error = math.sqrt(abs(1.0 - abs(cc_max) ** 2 / max(power_r * power_m, 1e-300)))
    reliable = True
    n_samples = math.prod(kshape)
    if peak_ratio < _psr_threshold(n_samples):
        reliable = False
        notes.append(
            f"the correlation peak ({peak_ratio:.1f} robust standard deviations) is no "
            f"better than noise (needs >= {_psr_threshold(n_samples):.1f})"
        )
    if abs(quality) < RELIABLE_QUALITY:
        reliable = False
        notes.append(
            f"the aligned images hardly correlate (Pearson {quality:.2f}, needs "
            f"|r| >= {RELIABLE_QUALITY})"
        )
    return _Estimate(shift, quality, peak_ratio, error, reliable, notes)


def _disambiguate(ref, mov, shift, axes):
    """Pick, among the shifts equal modulo the image size, the best supported one.

    The score of a candidate is ``|r| * sqrt(n)`` (the significance of the Pearson
    correlation ``r`` of its ``n`` overlapping pixels), so that a sliver of overlap does not
    win by chance.
    """
    options = []
    for ax in axes:
        s, n = shift[ax], ref.shape[ax]
        options.append((s,) if round(s) == 0 else (s, s - math.copysign(n, s)))
    if all(len(o) == 1 for o in options):
        return shift
    best, best_score = shift, -math.inf
    total = ref.size
    for combo in itertools.product(*options):
        candidate = shift.copy()
        candidate[list(axes)] = combo
        a, b = _integer_overlap(ref, mov, candidate)
        if a.size < max(16, 0.02 * total):
            continue
        score = abs(_pearson(a, b)) * math.sqrt(a.size)
        if score > best_score:
            best, best_score = candidate, score
    return best


# --------------------------------------------------------------------------------------
# Large images: coarse estimate, full-resolution tiles
# --------------------------------------------------------------------------------------


def _is_large(shape, axes, max_size) -> bool:
    # Only the registered axes count: the others are read whole (one joint estimate).
    sides = [shape[ax] for ax in axes]
    return bool(sides) and (max(sides) > max_size or math.prod(sides) > max_size**2)


def _coarse_factors(shape, axes, max_size, chunks=None) -> tuple[int, ...]:
    factors = [1] * len(shape)
    for ax in axes:
        factors[ax] = max(1, math.ceil(shape[ax] / max_size))
    while math.prod(shape[ax] // factors[ax] for ax in axes) > max_size**2:
        for ax in axes:
            factors[ax] += 1
    if chunks is not None:
        # Prefer a factor that divides the chunks (no rechunking), if one is close.
        for ax in axes:
            chunk = chunks[ax][0]
            for f in range(factors[ax], 2 * factors[ax] + 1):
                if chunk % f == 0 and all(c % f == 0 for c in chunks[ax][:-1]):
                    factors[ax] = f
                    break
    return tuple(factors)


def _block_mean_slabs(image, factors) -> list[tuple[int, int]]:
    """Row ranges ``[a, b)`` of `image` whose block means are computed one at a time.

    Each range is a whole number of blocks along axis 0. For Dask input they also end on
    chunk boundaries (each chunk is read once); for in-memory input they hold at most
    256 MiB of float64 rows.
    """
    n, f = int(image.shape[0]), factors[0]
    stop = (n // f) * f
    if _is_dask(image):
        ends = itertools.accumulate(image.chunks[0])
        cuts = [int(e) for e in ends if e % f == 0 and 0 < e < stop] + [stop]
    else:
        row_bytes = math.prod(image.shape[1:]) * f * 8
        rows = max(1, (256 * 2**20) // max(row_bytes, 1)) * f
        cuts = [*range(rows, stop, rows), stop]
    return list(itertools.pairwise([0, *cuts]))


def _block_mean(image, factors, on_slab=None) -> np.ndarray:
    """Block-mean downsampling (float32), reading the image slab by slab.

    `on_slab` is called after each slab of :func:`_block_mean_slabs`.
    """
    shape = tuple(image.shape)
    out_shape = tuple(n // f for n, f in zip(shape, factors, strict=True))
    out = np.empty(out_shape, dtype=np.float32)
    for a, b in _block_mean_slabs(image, factors):
        rows = slice(a // factors[0], b // factors[0])
        if _is_dask(image):
            import dask.array as da

            coarse = da.coarsen(
                np.mean,
                image[a:b].astype(np.float32),
                {ax: f for ax, f in enumerate(factors) if f > 1},
                trim_excess=True,
                dtype=np.float32,
            )
            out[rows] = np.asarray(coarse.compute())
        else:
            slab = np.asarray(image[a:b], dtype=np.float64)
            trim = tuple(slice(0, n * f) for n, f in zip(out_shape[1:], factors[1:], strict=True))
            slab = slab[(slice(None), *trim)]
            split = []
            for n, f in zip(((b - a) // factors[0], *out_shape[1:]), factors, strict=True):
                split += [n, f]
            out[rows] = slab.reshape(split).mean(axis=tuple(range(1, 2 * len(shape), 2)))
        if on_slab is not None:
            on_slab()
    return out


def _read(regions):
    """Read ``(array, slices)`` regions into NumPy, computing Dask ones in one pass."""
    lazy = [i for i, (x, _) in enumerate(regions) if _is_dask(x)]
    out = [None] * len(regions)
    if lazy:
        import dask

        values = dask.compute(*[regions[i][0][regions[i][1]] for i in lazy])
        for i, v in zip(lazy, values, strict=True):
            out[i] = np.asarray(v)
    for i, (x, sl) in enumerate(regions):
        if out[i] is None:
            out[i] = np.asarray(x[sl])
    return out


def _coarse_source(ref_levels, mov_levels, axes, max_size):
    """Where the coarse estimate of a large pair comes from: ``(level, factors)``.

    `level` is the pyramid level read (0: full resolution, no pyramid or none small
    enough), `factors` the block-mean factors applied to it (None: read as it is).
    """
    level = 0
    for i in range(1, min(len(ref_levels), len(mov_levels))):
        if tuple(ref_levels[i].shape) != tuple(mov_levels[i].shape):
            raise ValueError(
                f"reference and moving pyramids differ at level {i}: shapes "
                f"{tuple(ref_levels[i].shape)} and {tuple(mov_levels[i].shape)}"
            )
        level = i
        if not _is_large(ref_levels[i].shape, axes, max_size):
            return level, None
    coarse = ref_levels[level]
    return level, _coarse_factors(coarse.shape, axes, max_size, getattr(coarse, "chunks", None))


def _large_steps(ref_levels, mov_levels, axes, max_size, n_tiles) -> int:
    """Progress steps of :func:`_estimate_large`: block-mean slabs (or one read), tiles."""
    level, factors = _coarse_source(ref_levels, mov_levels, axes, max_size)
    if factors is None:
        return 1 + n_tiles
    slabs = [_block_mean_slabs(x[level], factors) for x in (ref_levels, mov_levels)]
    return sum(map(len, slabs)) + n_tiles


def _estimate_large(ref_levels, mov_levels, axes, *, max_size, options, progress):
    """Register images too large for memory: coarse estimate, then full-resolution tiles."""
    ref0, mov0 = ref_levels[0], mov_levels[0]
    shape = tuple(int(n) for n in ref0.shape)
    ndim = len(shape)
    notes = []

    # 1. The coarse pair: a pyramid level small enough, or block means.
    level, factors = _coarse_source(ref_levels, mov_levels, axes, max_size)
    ref_c, mov_c = ref_levels[level], mov_levels[level]
    scale = np.array([a / b for a, b in zip(shape, ref_c.shape, strict=True)])
    method = [f"pyramid level {level}"] if level else []
    if factors is None:
        ref_c, mov_c = _read([(ref_c, ()), (mov_c, ())])
        progress.advance()
    else:
        ref_c = _block_mean(ref_c, factors, progress.advance)
        mov_c = _block_mean(mov_c, factors, progress.advance)
        scale = scale * np.array(factors)
        method.append(f"block-mean x{max(factors)}")
    method = " ".join(method)
    _check_finite(np.asarray(ref_c, dtype=np.float32), "reference")
    _check_finite(np.asarray(mov_c, dtype=np.float32), "moving")
    coarse = _estimate(
        ref_c,
        mov_c,
        axes,
        upsample_factor=options["upsample_factor"],
        normalization=options["normalization"],
        disambiguate=options["disambiguate"],
        refine=False,  # the full-resolution tiles refine
    )
    guess = coarse.shift * scale
    if np.ptp(ref_c) == 0 or np.ptp(mov_c) == 0:
        return _Estimate(guess, 0.0, 0.0, coarse.error, False, coarse.notes), method + " only"

    # 2. Tiles: the most textured cells of a grid, whose shifted copy lies inside moving.
    k = len(axes)
    side = max(16, round(TILE_ELEMENTS ** (1.0 / k)))
    offset = [round(guess[ax]) if ax in axes else 0 for ax in range(ndim)]
    # The overlap, in reference coordinates, is where the tiles go (a grid over it).
    lo = [max(0, min(o, n - 1)) for o, n in zip(offset, shape, strict=True)]
    hi = [max(a + 1, min(n, n + o)) for a, o, n in zip(lo, offset, shape, strict=True)]
    tile = [
        min(side, b - a) if ax in axes else shape[ax]
        for ax, (a, b) in enumerate(zip(lo, hi, strict=True))
    ]
    cells = []
    ranges = [
        range(a, max(b - t, a) + 1, t) if ax in axes else range(1)
        for ax, (a, b, t) in enumerate(zip(lo, hi, tile, strict=True))
    ]
    for origin in itertools.product(*ranges):
        m0 = [o - (offset[ax] if ax in axes else 0) for ax, o in enumerate(origin)]
        if any(m < 0 or m + t > n for m, t, n in zip(m0, tile, shape, strict=True)):
            continue
        coarse_cell = tuple(
            slice(int(o / sc), max(int(o / sc) + 1, int((o + t) / sc)))
            for o, t, sc in zip(origin, tile, scale, strict=True)
        )
        cells.append((float(np.var(ref_c[coarse_cell])), origin, tuple(m0)))
    cells.sort(key=lambda c: -c[0])
    cells = [c for c in cells if c[0] > 0][: options["n_tiles"]]
    if not cells:
        notes = [*coarse.notes, "no textured full-resolution tile inside the overlap"]
        return _Estimate(
            guess, coarse.quality, coarse.peak_ratio, coarse.error, False, notes
        ), method + " only"
    regions = []
    for _, origin, m0 in cells:
        regions.append((ref0, tuple(slice(o, o + t) for o, t in zip(origin, tile, strict=True))))
        regions.append((mov0, tuple(slice(m, m + t) for m, t in zip(m0, tile, strict=True))))
    # One pass: tiles that share a chunk read it once.
    values = _read(regions)
    results = []
    for i, (_, origin, m0) in enumerate(cells):
        ref_t, mov_t = values[2 * i], values[2 * i + 1]
        _check_finite(ref_t, "reference")
        _check_finite(mov_t, "moving")
        est = _estimate(
            ref_t,
            mov_t,
            axes,
            upsample_factor=options["upsample_factor"],
            normalization=options["normalization"],
            disambiguate=False,
            refine=options["refine"],
        )
        full = est.shift + np.array(origin) - np.array(m0)
        results.append((est, full))
        progress.advance()
    tolerance = max(2.0, float(scale.max()))
    good = [
        (e, s)
        for e, s in results
        if e.reliable and np.abs(s - guess)[list(axes)].max() <= tolerance
    ]
    if not good:
        notes = [*coarse.notes, "no full-resolution tile agreed with the coarse estimate"]
        return _Estimate(
            guess, coarse.quality, coarse.peak_ratio, coarse.error, False, notes
        ), method + " only"
    shifts = np.array([s for _, s in good])
    shift = np.median(shifts, axis=0)
    spread = float(np.abs(shifts - shift).max())
    notes.append(
        f"{len(good)} of {len(results)} full-resolution tiles of {tuple(tile)} used; "
        f"largest deviation from their median {spread:.3f} px"
    )
    if len(good) < len(results):
        notes.append("some tiles disagreed or were unreliable and were left out")
    quality = float(np.median([e.quality for e, _ in good]))
    estimate = _Estimate(
        shift,
        quality,
        float(np.median([e.peak_ratio for e, _ in good])),
        float(np.median([e.error for e, _ in good])),
        coarse.reliable or len(good) >= 2,
        notes,
    )
    return estimate, f"{method} + {len(good)} tiles"


# --------------------------------------------------------------------------------------
# The public function
# --------------------------------------------------------------------------------------


def register(
    reference,
    moving,
    *,
    upsample_factor: int = 20,
    axes: int | Sequence[int] | None = None,
    per_plane: int | None = None,
    reference_plane: int | None = None,
    normalization: str | None = "phase",
    disambiguate: bool = True,
    refine: bool = True,
    max_size: int = 2048,
    n_tiles: int = N_TILES,
    progress: Callable[[int, int], object] | None = None,
) -> Registration:
    """Subpixel translation that registers `moving` onto `reference`.

    Parameters
    ----------
    reference, moving : array_like, dask.array.Array, or list of arrays
        Images of the same shape (any real dtype, 2D, 3D, ...; not modified). A list of
        arrays is a pyramid, full resolution first (as napari's multiscale data): its
        coarser levels are used for the coarse estimate instead of downsampling.
    upsample_factor : int, optional
        Phase correlation locates the peak to ``1 / upsample_factor`` pixel (the
        real-space refinement then goes further).
    axes : int or sequence of int, optional
        Axes to register (all by default); the shift is 0 along the others, and one
        shift is estimated for all of their positions together.
    per_plane : int, optional
        Register every plane along this axis separately (a stack or time series): the
        result has one shift per plane in ``shifts`` (0 along this axis).
    reference_plane : int, optional
        With `per_plane`: register every plane of `moving` to this plane of `reference`
        (drift correction; pass the same stack twice). By default plane ``t`` of
        `moving` is registered to plane ``t`` of `reference`.
    normalization : {"phase", "none"}, optional
        "phase" whitens the cross-power spectrum (phase correlation: robust to
        brightness, contrast and gamma differences between the images); "none" (or
        ``None``) keeps it (plain cross-correlation: can do better on very noisy images).
    disambiguate : bool, optional
        Resolve the modulo-image-size ambiguity of the Fourier estimate in real space
        (shifts of more than half the image).
    refine : bool, optional
        Refine the estimate by least squares in real space (translation plus an affine
        intensity change) on the overlap.
    max_size : int, optional
        Images with a registered side longer than this, or more than ``max_size**2``
        elements along the registered axes, are registered without being loaded: a
        coarse estimate on a downsampled copy (block means, read chunk by chunk) or
        pyramid level, then refinement on `n_tiles` textured full-resolution tiles (the
        only full-resolution data read besides the downsampling pass).
    n_tiles : int, optional
        Full-resolution tiles used by the large-image path; the shift is their median.
    progress : callable, optional
        Called as ``progress(done, total)`` as the work goes: first ``(0, total)``, then
        after every step, last ``(total, total)``. A step is a plane (per-plane
        registration of in-memory planes), and on the large-image path a slab of the
        block-mean pass or one full-resolution tile. `total` is fixed from the first
        call; steps that turn out unnecessary are skipped at once (`done` jumps). Its
        return value is ignored; an exception it raises stops the registration (a way to
        cancel it). Called in the thread that runs :func:`register`.

    Returns
    -------
    registration : Registration
        ``scipy.ndimage.shift(moving, registration.shift)`` ~ `reference`; see
        :meth:`Registration.apply` and :meth:`Registration.valid_region`.

    Raises
    ------
    ValueError, TypeError
        Shapes or dimensions that differ, NaN or infinite values, bad `axes`,
        `per_plane`, `reference_plane`, `upsample_factor`, `normalization` or `max_size`.

    Warns
    -----
    RegistrationWarning
        When the estimate is unreliable (see :attr:`Registration.reliable`).

    Notes
    -----
    Dask input smaller than `max_size` is computed (plane by plane with `per_plane`);
    larger input is read chunk by chunk and never held whole. Axes that are not
    registered (and not `per_plane`) are read whole: one shift is estimated for all of
    their positions together.

    The estimate is phase correlation with a tapered border and a Gaussian low-pass on
    the whitened cross-power spectrum (which removes most of the subpixel bias of plain
    phase correlation), an upsampled DFT around the peak as in
    ``skimage.registration.phase_cross_correlation``, then (``refine=True``) Gauss-Newton
    least squares on the overlap with the model ``reference ~ a * shifted(moving) + b``
    (cubic-spline interpolation). On large images the coarse estimate places
    `n_tiles` full-resolution tiles on the most textured part of the coarse reference
    whose shifted copy lies inside `moving`; each tile is registered the same way and the
    median of the tiles that agree with the coarse estimate is returned.

    ``quality`` is the Pearson correlation of the overlap after alignment, not phase
    correlation's ``error`` (which is close to 1 for most real pairs and is kept in
    ``error`` for completeness).

    Examples
    --------
    >>> import numpy as np
    >>> from scipy import ndimage
    >>> from skimage import data
    >>> from napari_ncc import register
    >>> reference = data.camera()[100:400, 100:400].astype(float)
    >>> moving = ndimage.shift(data.camera().astype(float), (-3.4, 5.2))[100:400, 100:400]
    >>> reg = register(reference, moving)
    >>> np.round(reg.shift, 1)
    array([ 3.4, -5.2])
    >>> reg.reliable
    True
    """
    ref_levels = _as_levels(reference, "reference")
    mov_levels = _as_levels(moving, "moving")
    ref0, mov0 = ref_levels[0], mov_levels[0]
    shape0, shape1 = tuple(ref0.shape), tuple(mov0.shape)
    if len(shape0) != len(shape1):
        raise ValueError(
            "reference and moving must have the same number of dimensions, got "
            f"{len(shape0)} and {len(shape1)} (shapes {shape0} and {shape1})"
        )
    if shape0 != shape1:
        raise ValueError(
            f"reference and moving must have the same shape, got {shape0} and {shape1}"
        )
    ndim = len(shape0)
    upsample_factor = _check_int(upsample_factor, "upsample_factor", 1)
    max_size = _check_int(max_size, "max_size", 16)
    n_tiles = _check_int(n_tiles, "n_tiles", 1)
    normalization = _normalization(normalization)
    if per_plane is not None:
        if isinstance(per_plane, bool) or not isinstance(per_plane, Integral):
            raise TypeError(f"per_plane must be an axis index (int) or None, got {per_plane!r}")
        if not -ndim <= per_plane < ndim:
            raise ValueError(f"per_plane axis {per_plane} is out of range for {ndim}-D images")
        per_plane = int(per_plane) % ndim
        if ndim < 2:
            raise ValueError("per_plane needs images of at least 2 dimensions")
    if axes is None:
        axes = tuple(ax for ax in range(ndim) if ax != per_plane)
    else:
        axes = _normalize_axes(axes, ndim)
        if per_plane in axes:
            raise ValueError(
                f"axes {axes} contains the per_plane axis {per_plane}: planes along it are "
                "registered separately, so it cannot be registered too; leave it out of axes"
            )
    axes = tuple(sorted(axes))
    if reference_plane is not None:
        if per_plane is None:
            raise ValueError("reference_plane needs per_plane (the axis of the planes)")
        n = shape0[per_plane]
        if (
            isinstance(reference_plane, bool)
            or not isinstance(reference_plane, Integral)
            or not -n <= reference_plane < n
        ):
            raise ValueError(
                f"reference_plane must be an integer in [{-n}, {n}) (planes along axis "
                f"{per_plane}), got {reference_plane!r}"
            )
        reference_plane = int(reference_plane) % n
    if progress is not None and not callable(progress):
        raise TypeError(
            f"progress must be a callable progress(done, total) or None, got {progress!r}"
        )
    options = {
        "upsample_factor": upsample_factor,
        "normalization": normalization,
        "disambiguate": bool(disambiguate),
        "refine": bool(refine),
        "n_tiles": n_tiles,
    }

    if per_plane is None:
        steps = _steps(ref_levels, mov_levels, axes, max_size, n_tiles)
        tracker = _Progress(progress, steps)
        est, method = _register_one(ref_levels, mov_levels, axes, max_size, options, tracker)
        tracker.reach(steps)
        reg = Registration(
            shift=tuple(est.shift),
            quality=est.quality,
            reliable=est.reliable,
            error=est.error,
            peak_ratio=est.peak_ratio,
            method=method,
            notes=tuple(est.notes),
        )
        if not reg.reliable:
            warnings.warn(
                "registration is unreliable: " + "; ".join(reg.notes),
                RegistrationWarning,
                stacklevel=2,
            )
        return reg

    # Per plane: axes within a plane are the registered axes with per_plane removed.
    plane_axes = tuple(ax - (ax > per_plane) for ax in axes)
    n_planes = shape0[per_plane]
    ests = []
    methods = set()
    plane_shape = tuple(n for ax, n in enumerate(shape0) if ax != per_plane)
    batched = (
        len(ref_levels) == len(mov_levels) == 1
        and (_is_dask(ref0) or _is_dask(mov0))
        and not _is_large(plane_shape, plane_axes, max_size)
    )
    plane_levels = (
        [_take(level, per_plane, 0, shape0) for level in ref_levels],
        [_take(level, per_plane, 0, shape0) for level in mov_levels],
    )
    steps = 1 if batched else _steps(*plane_levels, plane_axes, max_size, n_tiles)
    tracker = _Progress(progress, n_planes * steps)
    if batched:
        # Small planes of a Dask stack: read them a slab of chunks at a time, so that a
        # chunk holding several planes is read once, not once per plane.
        ref_fixed = None
        if reference_plane is not None:
            (ref_fixed,) = _read([(ref0, _plane_index(ndim, per_plane, reference_plane))])
        chunked = mov0 if _is_dask(mov0) else ref0
        for t0, t1 in _plane_batches(chunked, per_plane, math.prod(plane_shape) * 8):
            slab = _plane_index(ndim, per_plane, slice(t0, t1))
            if ref_fixed is None:
                ref_slab, mov_slab = _read([(ref0, slab), (mov0, slab)])
            else:
                (mov_slab,) = _read([(mov0, slab)])
            for t in range(t0, t1):
                local = _plane_index(ndim, per_plane, t - t0)
                ref_t = ref_fixed if ref_fixed is not None else ref_slab[local]
                est, method = _register_one(
                    [ref_t], [mov_slab[local]], plane_axes, max_size, options, tracker
                )
                ests.append(est)
                methods.add(method)
                tracker.reach((t + 1) * steps)
    for t in range(n_planes if not batched else 0):
        source = t if reference_plane is None else reference_plane
        ref_t = [_take(level, per_plane, source, shape0) for level in ref_levels]
        mov_t = [_take(level, per_plane, t, shape0) for level in mov_levels]
        est, method = _register_one(ref_t, mov_t, plane_axes, max_size, options, tracker)
        ests.append(est)
        methods.add(method)
        tracker.reach((t + 1) * steps)
    shifts = np.array([np.insert(e.shift, per_plane, 0.0) for e in ests])
    qualities = np.array([e.quality for e in ests])
    unreliable = [t for t, e in enumerate(ests) if not e.reliable]
    notes = []
    if unreliable:
        first = ests[unreliable[0]]
        notes.append(
            f"{len(unreliable)} of {n_planes} planes unreliable (first: plane "
            f"{unreliable[0]}: {'; '.join(first.notes)})"
        )
    reg = Registration(
        shift=tuple(np.median(shifts, axis=0)),
        shifts=shifts,
        per_plane=per_plane,
        reference_plane=reference_plane,
        quality=float(qualities.min()),
        qualities=qualities,
        reliable=not unreliable,
        error=float(np.nanmax([e.error for e in ests])) if ests else float("nan"),
        peak_ratio=float(min(e.peak_ratio for e in ests)),
        method="per plane: " + ", ".join(sorted(methods)),
        notes=tuple(notes),
    )
    if not reg.reliable:
        warnings.warn(
            "registration is unreliable: " + "; ".join(reg.notes),
            RegistrationWarning,
            stacklevel=2,
        )
    return reg


#: Bytes of planes read at once by the per-plane registration of a Dask stack.
PLANE_BATCH_BYTES = 256 * 2**20


def _plane_batches(image, axis, plane_bytes):
    """Ranges of planes along `axis`: whole chunks, within ``PLANE_BATCH_BYTES``."""
    per_batch = max(1, PLANE_BATCH_BYTES // max(plane_bytes, 1))
    batches = []
    start = 0
    for size in image.chunks[axis]:
        stop = start + size
        for a in range(start, stop, per_batch):
            batches.append((a, min(a + per_batch, stop)))
        start = stop
    return batches


def _take(level, axis, index, full_shape):
    """Plane `index` (at full resolution) of a pyramid level along `axis`."""
    n = level.shape[axis]
    i = min(int(index * n / full_shape[axis]), n - 1) if n != full_shape[axis] else index
    return level[_plane_index(len(level.shape), axis, i)]


class _Progress:
    """Counts the finished steps of a registration and reports them to a callback."""

    def __init__(self, callback, total: int):
        self.callback, self.total, self.done = callback, max(int(total), 1), 0
        if callback is not None:
            callback(0, self.total)

    def advance(self) -> None:
        self.reach(self.done + 1)

    def reach(self, done: int) -> None:
        done = min(max(int(done), self.done), self.total)
        if done != self.done:
            self.done = done
            if self.callback is not None:
                self.callback(done, self.total)


def _steps(ref_levels, mov_levels, axes, max_size, n_tiles) -> int:
    """Progress steps of :func:`_register_one` on these levels."""
    if _is_large(ref_levels[0].shape, axes, max_size):
        return _large_steps(ref_levels, mov_levels, axes, max_size, n_tiles)
    return 1


def _register_one(ref_levels, mov_levels, axes, max_size, options, progress):
    ref0, mov0 = ref_levels[0], mov_levels[0]
    if _is_large(ref0.shape, axes, max_size):
        return _estimate_large(
            ref_levels, mov_levels, axes, max_size=max_size, options=options, progress=progress
        )
    ref, mov = _read([(ref0, ()), (mov0, ())])
    _check_finite(ref, "reference")
    _check_finite(mov, "moving")
    est = _estimate(
        ref,
        mov,
        axes,
        upsample_factor=options["upsample_factor"],
        normalization=options["normalization"],
        disambiguate=options["disambiguate"],
        refine=options["refine"],
    )
    method = "phase correlation" + (" + gauss-newton" if options["refine"] else "")
    return est, method
