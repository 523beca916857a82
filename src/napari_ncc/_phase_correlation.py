"""Translation between two in-memory arrays: phase correlation, then Gauss-Newton.

The estimator behind :func:`napari_ncc.register`, on NumPy arrays of equal shape:

1. Phase correlation (as ``skimage.registration.phase_cross_correlation``, with a tapered
   border and a Gaussian low-pass on the whitened cross-power spectrum, which removes most
   of the subpixel bias that interpolated or noisy high frequencies give it), refined by an
   upsampled DFT around the peak; the modulo-image-size ambiguity is resolved in real space.
2. Gauss-Newton least squares in real space on the overlap (translation plus an affine
   intensity change, ``reference ~ a * shifted(moving) + b``), which reaches a few
   hundredths of a pixel where the data allow.

The quality reported is the Pearson correlation of the overlap after alignment, and the
estimate is unreliable when the images are flat, the correlation peak does not stand out
of the correlation noise, or the aligned overlap hardly correlates.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, field

import numpy as np
import scipy.fft as sfft
from scipy import ndimage as ndi

from ._validation import snap_shift

__all__ = [
    "NORMALIZATIONS",
    "Estimate",
    "PhaseCorrelation",
    "check_finite",
    "check_normalization",
    "estimate_translation",
]

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

#: Relative noise level (noise standard deviation over the image's) above which the
#: real-space refinement works on smoothed images, and the smoothing (pixels).
NOISE_FOR_SMOOTHING = 0.03
GN_SMOOTHING = 1.0

_GN_ITERATIONS = 8
_GN_TOLERANCE = 1e-3
_GN_MARGIN = 2
_SPLINE_PAD = 6


@dataclass(frozen=True)
class PhaseCorrelation:
    """Validated options of :func:`estimate_translation`.

    Attributes
    ----------
    upsample_factor : int
        The peak is located to ``1 / upsample_factor`` pixel by an upsampled DFT.
    normalization : {"phase", "none"}
        Whiten the cross-power spectrum (phase correlation) or not.
    disambiguate : bool
        Resolve the modulo-image-size ambiguity in real space.
    refine : bool
        Refine by Gauss-Newton least squares in real space.
    """

    upsample_factor: int = 20
    normalization: str = "phase"
    disambiguate: bool = True
    refine: bool = True

    @property
    def method(self) -> str:
        """How a shift found with these options is described."""
        return "phase correlation" + (" + gauss-newton" if self.refine else "")


@dataclass
class Estimate:
    """A translation estimate and how far to trust it (see :class:`Registration`)."""

    shift: np.ndarray
    quality: float
    peak_ratio: float
    error: float
    reliable: bool
    notes: list = field(default_factory=list)

    def __post_init__(self):
        # Every estimate is snapped (see Registration), so that strategies built on
        # estimates (tiles, planes) never carry rounding noise either.
        self.shift = snap_shift(self.shift)


def check_finite(image: np.ndarray, name: str) -> None:
    """Raise if a float `image` holds NaN or infinite values (registration needs finite data)."""
    if image.dtype.kind == "f" and not np.isfinite(image).all():
        bad = int(np.size(image) - np.count_nonzero(np.isfinite(image)))
        raise ValueError(
            f"{name} contains {bad} NaN or infinite values; registration needs finite "
            "data (replace them, e.g. with np.nan_to_num or the image's median)"
        )


def check_normalization(normalization) -> str:
    """`normalization` as one of :data:`NORMALIZATIONS` (``None`` is ``"none"``)."""
    if normalization is None:
        return "none"
    if normalization not in NORMALIZATIONS:
        raise ValueError(
            f"unknown normalization {normalization!r}; expected one of "
            f"{', '.join(map(repr, NORMALIZATIONS))} (or None)"
        )
    return normalization


def estimate_translation(ref, mov, axes, options: PhaseCorrelation) -> Estimate:
    """The shift that registers `mov` onto `ref` along `axes` (one joint shift).

    Parameters
    ----------
    ref, mov : ndarray
        In-memory arrays of equal shape, finite (see :func:`check_finite`).
    axes : tuple of int
        Registered axes; the shift is 0 along the others, estimated over all of their
        positions together.
    options : PhaseCorrelation
        How to estimate it.

    Returns
    -------
    Estimate
        ``scipy.ndimage.shift(mov, estimate.shift)`` ~ `ref`.
    """
    upsample_factor, normalization = options.upsample_factor, options.normalization
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
        return Estimate(shift, 0.0, 0.0, float("nan"), not flat, notes)

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

    if options.disambiguate:
        shift = _disambiguate(ref, mov, shift, axes)
    if options.refine:
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
    return Estimate(shift, quality, peak_ratio, error, reliable, notes)


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
