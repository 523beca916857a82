"""Coarse rotation, scale and translation between two 2D images (Fourier–Mellin).

The magnitude of an image's Fourier transform does not change when the image is shifted,
and it rotates and scales (inversely) with the image. In log-polar coordinates that
rotation and scaling become a shift, found by correlation
(``skimage.transform.warp_polar(..., scaling="log")``). The magnitude is symmetric, so the
angle is known modulo 180°: both candidates are tried, each followed by a translation
estimate, and the one whose aligned images correlate better in real space wins.

Large shifts (a quarter to a third of the side) leave the central squares sharing about
half their content, so several candidates are tried: the best peaks of the central
squares' log-polar correlation and of all pairs of half-side windows. The translation is
the best of several peaks of a whitened, mildly tapered phase correlation (with their
circular aliases), scored by the Pearson correlation over the overlap, and the winner's
rotation and scale are re-estimated on squares around the overlap.

This is the coarse stage of :func:`napari_ncc._estimate_transform.estimate_transform`: it
works on a downsampled copy (at most :data:`COARSE_SIZE` pixels a side) and is accurate to
a fraction of a degree and about a percent of scale, which the tile refinement
(:mod:`napari_ncc._local_shifts`) takes to subpixel accuracy.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from skimage.filters import window
from skimage.transform import downscale_local_mean, warp_polar

from ._local_shifts import pearson
from ._transform import AffineTransform
from ._warp import warp

__all__ = ["COARSE_SIZE", "CoarseEstimate", "coarse_similarity", "rotation_scale"]

#: The coarse stage works on images downsampled to at most this many pixels a side.
COARSE_SIZE = 512

#: Angular samples of the log-polar spectrum over 360° (0.5° each, refined by upsampling).
N_ANGLES = 720

#: Radial band of the spectrum used, as fractions of the Nyquist radius: the lowest
#: frequencies hold the window's own spectrum, the highest mostly noise and aliasing.
RADIAL_BAND = (0.03, 0.6)

#: Scales searched (the moving image's pixel scale relative to the reference's).
SCALE_RANGE = (0.5, 2.0)

#: Peaks of the log-polar correlation tried (each at its angle and the angle + 180°).
ROTATION_PEAKS = 3

#: Best peaks of the half-side windows' log-polar correlations tried (large shifts).
WINDOW_PEAKS = 3

#: Peaks of the translation's phase correlation tried (each with its circular aliases).
TRANSLATION_PEAKS = 5

#: Tukey taper's tapered fraction for the translation: mild, so that large shifts keep
#: their overlap.
TAPER = 0.2

#: Overlap squares smaller than this (pixels a side) are not used to refine the estimate.
MIN_REFINE_SIDE = 64

#: The aligned images must overlap over at least this fraction of the reference.
MIN_OVERLAP = 0.1


@dataclass(frozen=True)
class CoarseEstimate:
    """The result of :func:`coarse_similarity`.

    Attributes
    ----------
    transform : AffineTransform
        Similarity transform, reference pixel -> moving pixel (full resolution).
    angle : float
        Rotation in degrees (as :meth:`AffineTransform.from_rotation`).
    scale : float
        Scale of the moving coordinates relative to the reference's.
    correlation : float
        Pearson correlation of the reference and the aligned moving image (coarse level)
        over the pixels the moving image covers.
    other_correlation : float
        The same for the rejected 180° candidate.
    """

    transform: AffineTransform
    angle: float
    scale: float
    correlation: float
    other_correlation: float


def _log_polar_spectrum(image: np.ndarray) -> tuple[np.ndarray, float]:
    """Band of the log-polar, high-pass emphasised log magnitude spectrum of a square image;
    standardised per radius, so the isotropic parts (noise floor, window) do not pull the
    scale estimate to 1."""
    n = image.shape[0]
    image = (image - image.mean()) * window(("tukey", 0.5), image.shape)
    magnitude = np.abs(np.fft.fftshift(np.fft.fft2(image)))
    f = np.fft.fftshift(np.fft.fftfreq(n))
    # Reddy & Chatterji's high-pass emphasis: (1 - X)(2 - X), X = cos(pi fy) cos(pi fx).
    x = np.cos(np.pi * f)[:, None] * np.cos(np.pi * f)[None, :]
    spectrum = np.log1p(magnitude * (1 - x) * (2 - x))
    radius = n // 2
    polar = warp_polar(
        spectrum, radius=radius, output_shape=(N_ANGLES, 2 * radius), scaling="log", order=1
    )
    klog = polar.shape[1] / math.log(radius)
    radii = np.exp(np.arange(polar.shape[1]) / klog)
    band = (radii > RADIAL_BAND[0] * radius) & (radii < RADIAL_BAND[1] * radius)
    # The spectrum of a real image is point-symmetric: half the angles hold everything.
    polar = polar[: N_ANGLES // 2, band]
    polar = (polar - polar.mean(axis=0)) / (polar.std(axis=0) + 1e-12)
    return polar, klog


def _center_square(image: np.ndarray) -> np.ndarray:
    n = min(image.shape)
    r0, c0 = (image.shape[0] - n) // 2, (image.shape[1] - n) // 2
    return image[r0 : r0 + n, c0 : c0 + n]


def _peaks(correlation: np.ndarray, count: int, radius: int) -> list[np.ndarray]:
    """The `count` highest local maxima of a circular correlation (at least `radius`
    samples apart), each refined to subpixel by a parabola per axis."""
    work = correlation.copy()
    peaks = []
    for _ in range(count):
        k = np.unravel_index(int(np.argmax(work)), work.shape)
        if not np.isfinite(work[k]):
            break
        refined = np.asarray(k, dtype=np.float64)
        for axis, size in enumerate(work.shape):
            around = [list(k) for _ in range(3)]
            for d, index in zip((-1, 0, 1), around, strict=True):
                index[axis] = (k[axis] + d) % size
            left, center, right = (correlation[tuple(i)] for i in around)
            curvature = left - 2 * center + right
            if curvature < 0:
                refined[axis] += float(np.clip(0.5 * (left - right) / curvature, -0.5, 0.5))
        peaks.append(refined)
        windows = [np.arange(k[a] - radius, k[a] + radius + 1) % work.shape[a] for a in (0, 1)]
        work[np.ix_(*windows)] = -np.inf
    return peaks


def _wrapped(shift: np.ndarray, shape) -> np.ndarray:
    """A circular shift in ``[-n/2, n/2)`` per axis."""
    size = np.asarray(shape, dtype=np.float64)
    return (shift + size / 2) % size - size / 2


def _log_polar_peaks(a, b, klog: float, count: int) -> list[tuple[float, float, float]]:
    """The `count` best (height, angle modulo 180, scale) of two log-polar spectra's
    correlation; the height is a Pearson-like correlation (spectra are standardised)."""
    correlation = np.fft.ifft2(np.fft.fft2(a) * np.fft.fft2(b).conj()).real / a.size
    peaks = []
    for peak in _peaks(correlation, count, radius=2):
        height = float(correlation[tuple(np.round(peak).astype(int) % correlation.shape)])
        shift = _wrapped(peak, correlation.shape)
        angle = (shift[0] * 360.0 / N_ANGLES + 90.0) % 180.0 - 90.0
        scale = min(max(math.exp(shift[1] / klog), SCALE_RANGE[0]), SCALE_RANGE[1])
        peaks.append((height, float(angle), float(scale)))
    return peaks


def _rotation_scale_candidates(reference, moving, count: int) -> list[tuple[float, float]]:
    """The `count` best (angle modulo 180, scale) pairs of the log-polar correlation."""
    a, klog = _log_polar_spectrum(_center_square(reference))
    b, _ = _log_polar_spectrum(_center_square(moving))
    return [(angle, scale) for _, angle, scale in _log_polar_peaks(a, b, klog, count)]


def _windows(image: np.ndarray) -> list[np.ndarray]:
    """Half-side squares of the central square: at its corners, edge midpoints and centre."""
    square = _center_square(image)
    n = square.shape[0]
    m = n // 2
    starts = (0, (n - m) // 2, n - m)
    return [square[r : r + m, c : c + m] for r in starts for c in starts]


def _window_candidates(reference, moving, count: int) -> list[tuple[float, float]]:
    """The `count` best (angle modulo 180, scale) pairs over all pairs of half-side windows
    of the two images: when the shift is large, some pair holds the same content."""
    spectra_a = [_log_polar_spectrum(w) for w in _windows(reference)]
    spectra_b = [_log_polar_spectrum(w)[0] for w in _windows(moving)]
    peaks = [
        peak
        for a, klog in spectra_a
        for b in spectra_b
        for peak in _log_polar_peaks(a, b, klog, 1)
    ]
    peaks.sort(reverse=True)
    return _distinct([(angle, scale) for _, angle, scale in peaks], count)


def _distinct(candidates, count: int) -> list[tuple[float, float]]:
    """The first `count` candidates that differ from the earlier ones by more than a
    degree (modulo 180) or two percent of scale."""
    kept: list[tuple[float, float]] = []
    for angle, scale in candidates:
        if len(kept) == count:
            break
        if all(
            abs((angle - a + 90) % 180 - 90) > 1.0 or abs(math.log(scale / s)) > 0.02
            for a, s in kept
        ):
            kept.append((angle, scale))
    return kept


def rotation_scale(reference: np.ndarray, moving: np.ndarray) -> tuple[float, float]:
    """Rotation (degrees, modulo 180) and scale of `moving` relative to `reference`.

    Parameters
    ----------
    reference, moving : ndarray
        2D float images of the same shape, preferably a few hundred pixels a side.

    Returns
    -------
    angle : float
        In ``[-90, 90)``; the true angle is this or this + 180.
    scale : float
        Moving pixel coordinates scale relative to the reference's, in :data:`SCALE_RANGE`.

    Notes
    -----
    Only the central square of the images is used (its spectrum is isotropic in units).
    The images should overlap over most of that square: :func:`coarse_similarity` tries
    several peaks and re-estimates on the overlap when the shift is large.

    References
    ----------
    B. S. Reddy and B. N. Chatterji, "An FFT-based technique for translation, rotation, and
    scale-invariant image registration", IEEE Trans. Image Process. 5(8), 1996.

    Examples
    --------
    >>> from skimage import data
    >>> from napari_ncc._warp import warp
    >>> reference = data.camera()[100:356, 100:356].astype(float)
    >>> truth = AffineTransform.from_rotation(-150.0, center=(127.5, 127.5))
    >>> angle, scale = rotation_scale(reference, warp(reference, truth.inverse(), order=3))
    >>> abs(angle - 30.0) < 0.5, abs(scale - 1) < 0.01
    (True, True)
    """
    return _rotation_scale_candidates(reference, moving, 1)[0]


def _overlap_pearson(reference, resampled, mask, shift, min_pixels: int) -> float:
    """Pearson correlation of ``reference[p]`` and ``resampled[p - shift]`` (integer
    `shift`) over the pixels where both exist; -1 if fewer than `min_pixels`."""
    slices_ref, slices_mov = [], []
    for s, n in zip(shift, reference.shape, strict=True):
        s = int(s)
        slices_ref.append(slice(max(s, 0), min(n + s, n)))
        slices_mov.append(slice(max(-s, 0), min(n - s, n)))
    inside = mask[tuple(slices_mov)]
    if inside.sum() < min_pixels:
        return -1.0
    return pearson(reference[tuple(slices_ref)][inside], resampled[tuple(slices_mov)][inside])


def _with_translation(reference, moving, linear_transform: AffineTransform):
    """Add the translation that best aligns `moving` resampled by `linear_transform`; return
    the transform and the aligned images' correlation over the covered pixels (at the
    nearest whole-pixel shift; 0 if negative or the overlap is too small).

    The candidates are the highest peaks of the phase correlation (whitened, so that
    neither the images' low frequencies nor the mild taper pull it towards zero shift),
    each with its circular aliases; the one whose overlap correlates best wins."""
    resampled = warp(moving, linear_transform, order=1, output_shape=reference.shape)
    mask = _covered_affine(linear_transform, reference.shape, moving.shape)
    if not mask.any():
        return linear_transform, 0.0
    taper = window(("tukey", TAPER), reference.shape)
    cross = (
        np.fft.fft2((reference - reference.mean()) * taper)
        * np.fft.fft2(np.where(mask, resampled - resampled[mask].mean(), 0.0) * taper).conj()
    )
    magnitude = np.abs(cross)
    cross /= magnitude + 1e-3 * magnitude.max()
    correlation = np.fft.ifft2(cross).real
    min_pixels = int(MIN_OVERLAP * reference.size)
    best, best_shift = -np.inf, np.zeros(2)
    for peak in _peaks(correlation, TRANSLATION_PEAKS, radius=3):
        base = np.round(peak).astype(int)
        fraction = peak - base
        for dr in (0, -reference.shape[0], reference.shape[0]):
            for dc in (0, -reference.shape[1], reference.shape[1]):
                shift = base + np.array((dr, dc))
                if np.any(np.abs(shift) >= reference.shape):
                    continue
                score = _overlap_pearson(reference, resampled, mask, shift, min_pixels)
                if score > best:
                    best, best_shift = score, shift + fraction
    # resampled shifted by `shift` ~ reference: reference p <- resampled p - shift.
    translation = np.eye(3)
    translation[:2, 2] = -best_shift
    transform = AffineTransform(linear_transform.matrix @ translation, "similarity")
    return transform, max(best, 0.0)


def _covered_affine(transform: AffineTransform, shape, moving_shape) -> np.ndarray:
    """:func:`napari_ncc._warp.covered` for a 2D affine transform, by broadcasting (a few
    times faster: the coarse stage calls it a dozen times)."""
    rows = np.arange(shape[0], dtype=np.float64)[:, None]
    cols = np.arange(shape[1], dtype=np.float64)[None, :]
    inside = np.ones(shape, dtype=bool)
    for axis, n in enumerate(moving_shape):
        m = transform.matrix[axis]
        q = m[0] * rows + m[1] * cols + m[2]
        inside &= (q >= -1e-6) & (q <= n - 1 + 1e-6)
    return inside


def _refine_on_overlap(reference, moving, transform, angle, scale):
    """Rotation and scale re-estimated on squares of the two images around the overlap
    that `transform` finds (when the shift is large, the central squares share little);
    None when the overlap is the whole image, too small, or the new estimate is far off."""
    inside = _covered_affine(transform, reference.shape, moving.shape)
    if inside.mean() > 0.95 or not inside.any():
        return None
    rows, cols = np.nonzero(inside)
    p0 = np.array([rows.mean(), cols.mean()])
    q0 = transform.moving_coordinates(p0[None])[0]
    side = min(np.ptp(rows), np.ptp(cols)) + 1
    for image, c in ((reference, p0), (moving, q0)):
        side = min(side, 2 * min(c.min(), (np.asarray(image.shape) - 1 - c).min()))
    side = int(side)
    if side < MIN_REFINE_SIDE:
        return None
    squares = []
    for image, c in ((reference, p0), (moving, q0)):
        r, k = (np.round(c - side / 2).astype(int)).clip(0)
        squares.append(image[r : r + side, k : k + side])
    if squares[0].shape != squares[1].shape:
        return None
    new_angle, new_scale = rotation_scale(*squares)
    new_angle += 180.0 * round((angle - new_angle) / 180.0)
    if abs(new_angle - angle) > 2.0 or abs(math.log(new_scale / scale)) > 0.05:
        return None
    return new_angle, new_scale


def _downsampling_factor(shape, max_size: int) -> int:
    return max(1, math.ceil(max(shape) / max_size))


def coarse_similarity(
    reference: np.ndarray, moving: np.ndarray, *, max_size: int = COARSE_SIZE
) -> CoarseEstimate:
    """Rotation, scale and translation of `moving` relative to `reference`, coarsely.

    Parameters
    ----------
    reference, moving : ndarray
        2D images (any real dtype), same shape.
    max_size : int, optional
        Both images are block-averaged to at most this many pixels a side first.

    Returns
    -------
    CoarseEstimate
        Its `transform` maps full-resolution reference pixels to moving pixels.

    Examples
    --------
    >>> from skimage import data
    >>> from napari_ncc._warp import warp
    >>> reference = data.camera()[100:356, 100:356].astype(float)
    >>> truth = AffineTransform.from_rotation(20.0, center=(128, 128), translation=(3, -2))
    >>> moving = warp(reference, truth.inverse(), order=3)
    >>> estimate = coarse_similarity(reference, moving)
    >>> abs(estimate.angle - 20.0) < 0.5, abs(estimate.scale - 1) < 0.01
    (True, True)
    """
    reference = np.asarray(reference, dtype=np.float64)
    moving = np.asarray(moving, dtype=np.float64)
    factor = _downsampling_factor(reference.shape, max_size)
    if factor > 1:
        reference = downscale_local_mean(reference, factor)
        moving = downscale_local_mean(moving, factor)
    center = (np.asarray(reference.shape, dtype=np.float64) - 1) / 2
    candidates = []
    rotations = _rotation_scale_candidates(reference, moving, ROTATION_PEAKS)
    rotations += _window_candidates(reference, moving, WINDOW_PEAKS)
    for angle, scale in _distinct(rotations, len(rotations)):
        pair = []
        for a in (angle, angle + 180.0):
            linear = AffineTransform.from_rotation(a, scale=scale, center=center)
            linear = AffineTransform(linear.matrix, "similarity")
            transform, correlation = _with_translation(reference, moving, linear)
            pair.append((correlation, a, scale, transform))
        pair.sort(key=lambda c: c[0], reverse=True)
        candidates.append((*pair[0], pair[1][0]))
    best, a, scale, transform, other = max(candidates, key=lambda c: c[0])
    refined = _refine_on_overlap(reference, moving, transform, a, scale)
    if refined is not None:
        linear = AffineTransform.from_rotation(refined[0], scale=refined[1], center=center)
        linear = AffineTransform(linear.matrix, "similarity")
        new_transform, correlation = _with_translation(reference, moving, linear)
        if correlation > best:
            best, (a, scale), transform = correlation, refined, new_transform
    # Coarse pixel i covers full pixels factor*i ... factor*i + factor - 1: its centre is
    # factor * i + (factor - 1) / 2 on both images.
    to_coarse = np.eye(3)
    to_coarse[:2, :2] /= factor
    to_coarse[:2, 2] = -(factor - 1) / 2 / factor
    full = np.linalg.inv(to_coarse) @ transform.matrix @ to_coarse
    a = float((a + 180.0) % 360.0 - 180.0)
    return CoarseEstimate(
        AffineTransform(full, "similarity"), a, float(scale), float(best), float(other)
    )
