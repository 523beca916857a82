"""Local shifts on a grid of textured tiles, and the transforms fitted to them.

:func:`measure_tiles` takes a current estimate of the transform, resamples the moving image
through it tile by tile (reading only each tile's box) and measures the residual shift of
every textured reference tile: an integer start by cross-correlation, then Lucas–Kanade
least squares (shift plus a gain and offset of the intensities, on lightly smoothed tiles)
to a few hundredths of a pixel, with the standard error of each shift and the tile's
correlation after alignment (its confidence). The result is where each tile centre lies in
the moving image.

:func:`fit_linear` fits a translation, rigid, similarity or affine transform to those
correspondences by weighted least squares, rejecting outliers iteratively (a tile is
rejected when its residual exceeds several robust standard deviations);
:func:`fit_deformable` fits an affine part plus a smooth displacement field (thin-plate
spline smoothing weighted by the tiles' precision, outliers rejected the same way) sampled
onto the coarse grid of a :class:`~napari_ncc._transform.DeformableTransform`.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass

import numpy as np
from scipy import ndimage as ndi
from scipy.interpolate import RBFInterpolator
from scipy.spatial import cKDTree
from skimage.filters import window
from skimage.registration import phase_cross_correlation

from ._transform import LINEAR_MODELS, AffineTransform, DeformableTransform, Transform
from ._warp import sample

__all__ = [
    "TileReport",
    "fit_deformable",
    "fit_linear",
    "measure_tiles",
    "pearson",
    "texture_scores",
]

#: Default tile side (pixels) and spacing of the tile grid.
TILE_SIZE = 64

#: Lightly smoothing both tiles (same Gaussian) before the least squares reduces the noise
#: in the gradients without biasing the shift.
SMOOTHING = 1.0

#: A tile counts as textured when its weakest gradient direction carries at least this
#: fraction of the median over candidate tiles (Shi–Tomasi), and correlates at least
#: MIN_CONFIDENCE with the moving tile after alignment.
MIN_TEXTURE = 0.1
MIN_CONFIDENCE = 0.2

#: Outlier rejection: residuals beyond this many robust standard deviations, and beyond
#: MIN_REJECTION pixels (so that precise fits do not reject good tiles), are rejected.
REJECTION_SIGMAS = 4.0
MIN_REJECTION = 0.3

#: A tile whose moving tile has less than this fraction inside the moving image is skipped.
MIN_INSIDE = 0.6

#: Local tiles (deformable): Gaussian window of standard deviation tile_size / LOCAL_WINDOW.
LOCAL_WINDOW = 4.0

#: Outliers of a deformable fit are found against this smooth a thin-plate field (distances
#: in tile spacings), rejected beyond REJECTION_SIGMAS and MIN_FIELD_REJECTION pixels.
REJECTION_SMOOTHING = 1.0
MIN_FIELD_REJECTION = 0.75

_LK_ITERATIONS = 8
_LK_TOLERANCE = 1e-3
_MARGIN = 4


@dataclass
class TileReport:
    """Local shifts measured on tiles, and how a fitted transform explains them.

    Attributes
    ----------
    centers : ndarray, shape (n, ndim)
        Reference coordinates of each tile's measurement point: the centroid of its
        texture (gradient energy), near the tile's centre.
    positions : ndarray, shape (n, ndim)
        Where each of those points was found in the moving image.
    shifts : ndarray, shape (n, ndim)
        ``centers - positions``: each tile's own translation, in the convention of
        ``scipy.ndimage.shift(moving, shift) ~ reference``.
    sigma : ndarray, shape (n,)
        Standard error of each position (pixels), from the least-squares fit of its tile.
    confidence : ndarray, shape (n,)
        Correlation of the reference tile and the aligned moving tile (1: identical).
    residual : ndarray, shape (n,)
        Distance (moving pixels) between each position and the fitted transform's
        (NaN before a fit).
    rejected : ndarray of bool, shape (n,)
        Tiles left out of the fit as outliers.
    tile_size : int
        Side of the tiles (pixels).
    """

    centers: np.ndarray
    positions: np.ndarray
    sigma: np.ndarray
    confidence: np.ndarray
    residual: np.ndarray
    rejected: np.ndarray
    tile_size: int

    @property
    def shifts(self) -> np.ndarray:
        return self.centers - self.positions

    @property
    def weights(self) -> np.ndarray:
        """Least-squares weight of each tile, ``1 / sigma**2`` (floored at 0.01 px)."""
        return 1.0 / np.maximum(self.sigma, 0.01) ** 2

    def with_fit(self, residual: np.ndarray, rejected: np.ndarray) -> TileReport:
        return TileReport(
            self.centers,
            self.positions,
            self.sigma,
            self.confidence,
            np.asarray(residual, float),
            np.asarray(rejected, bool),
            self.tile_size,
        )

    def to_dict(self) -> dict:
        """A JSON-able copy (lists)."""
        return {
            "tile_size": self.tile_size,
            "centers": self.centers.tolist(),
            "shifts": self.shifts.tolist(),
            "sigma": self.sigma.tolist(),
            "confidence": self.confidence.tolist(),
            "residual": [None if math.isnan(r) else r for r in self.residual.tolist()],
            "rejected": self.rejected.tolist(),
        }


def _tile_starts(shape, tile_size: int, spacing: int) -> list[tuple[int, ...]]:
    """Tile origins covering the image (less a margin), tiles fully inside."""
    axes = []
    for n in shape:
        last = n - tile_size - _MARGIN
        if last < _MARGIN:
            return []
        count = max(1, round((last - _MARGIN) / spacing) + 1)
        axes.append(np.unique(np.linspace(_MARGIN, last, count).round().astype(int)).tolist())
    return list(itertools.product(*axes))


def _structure_min_eigenvalue(tile: np.ndarray) -> float:
    gradients = np.gradient(ndi.gaussian_filter(tile, SMOOTHING))
    tensor = np.array([[np.mean(a * b) for b in gradients] for a in gradients])
    return float(np.linalg.eigvalsh(tensor)[0])


def texture_scores(reference, starts, tile_size: int) -> np.ndarray:
    """Texture of each tile ``start + [0, tile_size)`` of `reference` (anything sliceable):
    the smaller eigenvalue of its structure tensor (Shi–Tomasi)."""
    scores = []
    for start in starts:
        box = tuple(slice(s, s + tile_size) for s in start)
        scores.append(_structure_min_eigenvalue(np.asarray(reference[box], dtype=np.float64)))
    return np.asarray(scores, dtype=np.float64)


def _integer_shift(reference_tile: np.ndarray, moving_tile: np.ndarray) -> np.ndarray:
    taper = window("hann", reference_tile.shape)
    shift, _, _ = phase_cross_correlation(
        (reference_tile - reference_tile.mean()) * taper,
        (moving_tile - moving_tile.mean()) * taper,
        normalization=None,
    )
    return shift


def pearson(a: np.ndarray, b: np.ndarray) -> float:
    """Pearson correlation of two arrays (0 when either is constant)."""
    a = a - a.mean()
    b = b - b.mean()
    denominator = math.sqrt(float((a * a).sum() * (b * b).sum()))
    return float((a * b).sum() / denominator) if denominator > 0 else 0.0


def _measure_tile(reference, moving, transform, start, tile_size, options):
    """Where the tile's measurement point lies in the moving image: (point, position, sigma,
    confidence), or None when the moving tile leaves the image."""
    order, search, prefiltered, local = options
    ndim = reference.ndim
    outer = tuple(slice(s - _MARGIN, s + tile_size + _MARGIN) for s in start)
    inner = (slice(_MARGIN, -_MARGIN),) * ndim
    reference_tile = np.asarray(reference[outer], dtype=np.float64)
    grid = np.indices(reference_tile.shape, dtype=np.float64).reshape(ndim, -1).T
    grid += np.array([s.start for s in outer])
    moving_shape = np.asarray(moving.shape)

    # The moving tile is sampled at T(p - shift - jacobian (p - point)): a local affine
    # correction (used for local tiles only), so that a deformation varying across the tile
    # is measured at `point` without bias.
    jacobian = np.zeros((ndim, ndim))
    point = np.zeros(ndim)
    frozen_field = None

    def moving_coordinates(points):
        # A deformable transform's field is evaluated once per tile (at the search's start):
        # the tile's own small shifts change it by less than its gradient times the shift,
        # which the next round measures; the position returned uses the exact transform.
        if frozen_field is None:
            return transform.moving_coordinates(points)
        return transform.affine.moving_coordinates(points) + frozen_field

    def moving_tile(shift):
        """The moving tile, and which of its inner pixels are real data (inside the moving
        image, also after the smoothing): tiles at the border count with those only."""
        q = moving_coordinates(grid - shift - (grid - point) @ jacobian.T)
        inside = np.all((q >= 0) & (q <= moving_shape - 1), axis=1).reshape(reference_tile.shape)
        if not inside.all():
            inside = ndi.binary_erosion(inside, iterations=3, border_value=1)
        inside = inside[inner].ravel()
        if inside.mean() < MIN_INSIDE:
            return None, inside
        q = np.clip(q, 0, moving_shape - 1)  # outside pixels are masked: read nothing there
        coordinates = q.T.reshape(ndim, *reference_tile.shape)
        tile = sample(moving, coordinates, order=order, mode="mirror", prefiltered=prefiltered)
        return tile, inside

    shift = np.zeros(ndim)
    first, inside = moving_tile(shift)
    if first is None:
        return None
    if search:
        masked = np.where(inside.reshape(first[inner].shape), first[inner], first[inner].mean())
        shift = _integer_shift(reference_tile[inner], masked)
    if isinstance(transform, DeformableTransform):
        frozen_field = transform.field(grid - shift)
    smooth_reference = ndi.gaussian_filter(reference_tile, SMOOTHING)
    reference_gradient = [g[inner].ravel() for g in np.gradient(smooth_reference)]
    target = smooth_reference[inner].ravel()
    points = grid.reshape(*reference_tile.shape, ndim)[inner].reshape(-1, ndim)
    if local:
        # A Gaussian window makes the tile local (a deformation is averaged over less).
        sigma_window = tile_size / LOCAL_WINDOW
        offsets = points - points.mean(axis=0)
        weights = np.exp(-0.5 * (offsets**2).sum(axis=1) / sigma_window**2)
    else:
        weights = np.ones(len(points))
    # The shift measured is that of the textured parts: attribute it to their centroid
    # (weighted by gradient energy), not the tile's centre, so that a varying displacement
    # is sampled at the right place.
    energy = weights * inside * sum(g * g for g in reference_gradient)
    point = energy @ points / energy.sum()
    relative = points - point
    gain = 1.0
    base_weights = weights
    # Without a search step, the first sample is the first iteration's.
    tile = first if not np.any(shift) else None
    for _ in range(_LK_ITERATIONS):
        if tile is None:
            tile, inside = moving_tile(shift)
            if tile is None:
                return None
        weights = base_weights * inside
        tile = ndi.gaussian_filter(tile, SMOOTHING)
        observed = tile[inner].ravel()
        # The tile at p - shift - delta is the tile at p - shift minus gradient . delta, and
        # should be gain * reference + offset: observed = gain * ref + offset + gradient . delta.
        # The gradient is the mean of both tiles' (ESM), which cancels the first-order bias.
        tile_gradient = [g[inner].ravel() for g in np.gradient(tile)]
        pairs = zip(reference_gradient, tile_gradient, strict=True)
        gradient = [(gain * a + b) / 2 for a, b in pairs]
        columns = [target, np.ones_like(target), *gradient]
        if local:
            columns += [g * x for g in gradient for x in relative.T]
        design = np.column_stack(columns)
        weighted = design * weights[:, None]
        normal = weighted.T @ design
        solution = np.linalg.solve(normal, weighted.T @ observed)
        gain, delta = solution[0], solution[2 : 2 + ndim]
        shift = shift + delta
        if local:
            jacobian = jacobian + solution[2 + ndim :].reshape(ndim, ndim)
            if np.abs(jacobian).max() > 0.5:
                return None
        if np.abs(solution[2:]).max() < _LK_TOLERANCE:
            break  # the last update is negligible: its tile and fit are the final ones
        if np.abs(shift).max() > tile_size / 2:
            return None
        tile = None
    residual = (observed - design @ solution) * inside
    # Weighted least squares: cov = N^-1 (X' W^2 X) N^-1 * residual variance.
    inverse = np.linalg.inv(normal)
    meat = (design * weights[:, None] ** 2).T @ design
    variance = (weights * residual * residual).sum() / max(weights.sum() - design.shape[1], 1)
    covariance = (inverse @ meat @ inverse)[2 : 2 + ndim, 2 : 2 + ndim] * variance
    sigma = math.sqrt(max(np.trace(covariance) / ndim, 0.0))
    position = transform.moving_coordinates((point - shift)[None])[0]
    return point, position, sigma, pearson(target[inside], observed[inside])


def measure_tiles(
    reference: np.ndarray,
    moving,
    transform: Transform,
    *,
    tile_size: int = TILE_SIZE,
    spacing: int | None = None,
    order: int = 3,
    search: bool = True,
    local: bool = False,
    starts=None,
    min_texture: float | None = None,
) -> TileReport:
    """Measure local shifts of textured tiles of `reference` in `moving`, given a current
    estimate of the transform.

    Parameters
    ----------
    reference : array_like
        The reference image: an ndarray, or with `starts` anything sliceable with a
        shape and ``ndim`` (only each tile's box, plus a margin of 4 pixels, is read).
    moving : array_like
        The moving image; anything sliceable (only each tile's box is read).
    transform : AffineTransform or DeformableTransform
        Current estimate, reference pixel -> moving pixel. Residual shifts up to about a
        quarter of a tile are found.
    tile_size : int, optional
        Side of the tiles.
    spacing : int, optional
        Distance between tile origins (default ``tile_size // 2``).
    order : int, optional
        Interpolation order used to resample the moving tiles.
    search : bool, optional
        Start each tile from the integer shift of its cross-correlation peak (needed when
        `transform` may be off by more than a pixel or two); else from no shift.
    local : bool, optional
        Weight each tile by a Gaussian window (standard deviation ``tile_size /
        LOCAL_WINDOW``): more local measurements, for a deformation.
    starts : sequence of tuple of int, optional
        The tiles' origins (default: a grid of `spacing` over the whole image). Each tile
        and its margin must lie inside `reference`.
    min_texture : float, optional
        Tiles whose :func:`texture_scores` is at most this are skipped (default:
        :data:`MIN_TEXTURE` times the median score of the tiles).

    Returns
    -------
    TileReport
        The textured tiles whose moving tile lies inside the moving image and correlates at
        least :data:`MIN_CONFIDENCE` after alignment (residual NaN, none rejected yet).
    """
    spacing = tile_size // 2 if spacing is None else int(spacing)
    if starts is None:
        starts = _tile_starts(reference.shape, tile_size, spacing)
    starts = [tuple(int(s) for s in start) for start in starts]
    scores = texture_scores(reference, starts, tile_size)
    # An in-memory image is spline-filtered once rather than each tile's box every time.
    prefiltered = isinstance(moving, np.ndarray) and order > 1
    if prefiltered:
        moving = ndi.spline_filter(moving.astype(np.float64), order=order, mode="mirror")
    centers, positions, sigmas, confidences = [], [], [], []
    if min_texture is not None:
        threshold = float(min_texture)
    else:
        threshold = MIN_TEXTURE * np.median(scores) if len(scores) else 0.0
    for start, score in zip(starts, scores, strict=True):
        if score <= threshold:
            continue
        options = (order, search, prefiltered, local)
        measured = _measure_tile(reference, moving, transform, start, tile_size, options)
        if measured is None or measured[3] < MIN_CONFIDENCE:
            continue
        for values, value in zip((centers, positions, sigmas, confidences), measured, strict=True):
            values.append(value)
    n, ndim = len(centers), reference.ndim
    return TileReport(
        np.reshape(centers, (n, ndim)),
        np.reshape(positions, (n, ndim)),
        np.asarray(sigmas, dtype=np.float64),
        np.asarray(confidences, dtype=np.float64),
        np.full(n, np.nan),
        np.zeros(n, dtype=bool),
        int(tile_size),
    )


# --------------------------------------------------------------------------------------
# Fits
# --------------------------------------------------------------------------------------

#: Tiles needed to fit each model (a few per parameter).
MIN_TILES = {"translation": 3, "rigid": 4, "similarity": 5, "affine": 8, "deformable": 16}


def _weighted_linear(centers, positions, weights, model: str) -> AffineTransform:
    """Weighted least-squares fit of `model` (closed forms: mean, Umeyama, normal equations)."""
    ndim = centers.shape[1]
    w = weights / weights.sum()
    matrix = np.eye(ndim + 1)
    if model == "translation":
        matrix[:ndim, ndim] = w @ (positions - centers)
        return AffineTransform(matrix, model)
    if model == "affine":
        design = np.column_stack([centers, np.ones(len(centers))]) * np.sqrt(w)[:, None]
        solution, _, _, _ = np.linalg.lstsq(design, positions * np.sqrt(w)[:, None], rcond=None)
        matrix[:ndim] = solution.T
        return AffineTransform(matrix, model)
    # Umeyama: the rotation (and scale) best mapping the centred centres onto the positions.
    mean_c, mean_q = w @ centers, w @ positions
    c, q = centers - mean_c, positions - mean_q
    covariance = (q * w[:, None]).T @ c
    u, s, vt = np.linalg.svd(covariance)
    d = np.ones(ndim)
    d[-1] = np.sign(np.linalg.det(u) * np.linalg.det(vt))
    rotation = u @ np.diag(d) @ vt
    scale = 1.0
    if model == "similarity":
        scale = float((s * d).sum() / (w @ (c * c).sum(axis=1)))
    matrix[:ndim, :ndim] = scale * rotation
    matrix[:ndim, ndim] = mean_q - scale * rotation @ mean_c
    return AffineTransform(matrix, model)


def _robust_sigma(residual: np.ndarray) -> float:
    """Robust standard deviation of residual distances (MAD, for Rayleigh-like norms)."""
    return 1.4826 * float(np.median(residual)) if len(residual) else 0.0


def _reject(residual: np.ndarray, keep: np.ndarray) -> np.ndarray:
    limit = max(REJECTION_SIGMAS * _robust_sigma(residual[keep]), MIN_REJECTION)
    return residual > limit


def fit_linear(tiles: TileReport, model: str) -> tuple[AffineTransform, TileReport]:
    """Fit a linear model to the tiles' correspondences, rejecting outliers.

    Parameters
    ----------
    tiles : TileReport
        From :func:`measure_tiles`.
    model : str
        "translation", "rigid", "similarity" or "affine".

    Returns
    -------
    transform : AffineTransform
    tiles : TileReport
        The same tiles with `residual` and `rejected` filled in.

    Raises
    ------
    ValueError
        If fewer tiles than the model has parameters can be used.
    """
    if model not in LINEAR_MODELS:
        raise ValueError(f"model must be one of {LINEAR_MODELS}, got {model!r}")
    ndim = tiles.centers.shape[1]
    needed = {"translation": 1, "rigid": 2, "similarity": 2, "affine": ndim + 1}[model]
    if len(tiles.centers) < needed:
        raise ValueError(
            f"{model!r} needs at least {needed} textured tiles, found {len(tiles.centers)}"
        )
    keep = np.ones(len(tiles.centers), dtype=bool)
    for _ in range(10):
        transform = _weighted_linear(
            tiles.centers[keep], tiles.positions[keep], tiles.weights[keep], model
        )
        residual = np.linalg.norm(
            transform.moving_coordinates(tiles.centers) - tiles.positions, axis=1
        )
        new_keep = ~_reject(residual, keep)
        if new_keep.sum() < needed or np.array_equal(new_keep, keep):
            break
        keep = new_keep
    return transform, tiles.with_fit(residual, ~keep)


class _SmoothField:
    """Thin-plate smoothing spline through tile displacements, in units of the tile spacing
    (so that `smoothing` means the same at any scale); less confident tiles count less."""

    def __init__(self, centers, values, confidence, smoothing: float):
        distances, _ = cKDTree(centers).query(centers, k=2)
        self.scale = max(float(np.median(distances[:, 1])), 1.0)
        self.rbf = RBFInterpolator(
            centers / self.scale,
            values,
            kernel="thin_plate_spline",
            smoothing=smoothing / np.maximum(confidence, MIN_CONFIDENCE) ** 2,
            degree=1,
        )

    def __call__(self, points):
        return self.rbf(points / self.scale)


def fit_deformable(
    tiles: TileReport,
    shape,
    *,
    grid_spacing: float = 32.0,
    smoothing: float = 0.02,
) -> tuple[DeformableTransform, TileReport]:
    """Fit an affine part plus a smooth displacement field to the tiles' correspondences.

    Parameters
    ----------
    tiles : TileReport
        From :func:`measure_tiles`.
    shape : sequence of int
        The reference image's shape: the field's grid covers it.
    grid_spacing : float, optional
        Distance between the field's nodes (pixels).
    smoothing : float, optional
        Thin-plate smoothing of the final field, with distances in tile spacings (0:
        interpolate the tiles exactly). Outliers are found with a much smoother field
        (:data:`REJECTION_SMOOTHING`), from which a wrong tile stands out.

    Returns
    -------
    transform : DeformableTransform
    tiles : TileReport
        With `residual` (to the full transform) and `rejected` filled in.
    """
    ndim = tiles.centers.shape[1]
    needed = ndim + 2
    if len(tiles.centers) < needed:
        raise ValueError(
            f"'deformable' needs at least {needed} textured tiles, found {len(tiles.centers)}"
        )
    affine, _ = fit_linear(tiles, "affine")
    displacement = tiles.positions - affine.moving_coordinates(tiles.centers)
    keep = np.ones(len(tiles.centers), dtype=bool)
    for _ in range(5):
        smooth = _SmoothField(
            tiles.centers[keep], displacement[keep], tiles.confidence[keep], REJECTION_SMOOTHING
        )
        residual = np.linalg.norm(smooth(tiles.centers) - displacement, axis=1)
        limit = max(REJECTION_SIGMAS * _robust_sigma(residual[keep]), MIN_FIELD_REJECTION)
        new_keep = residual <= limit
        if new_keep.sum() < needed or np.array_equal(new_keep, keep):
            break
        keep = new_keep
    field = _SmoothField(
        tiles.centers[keep], displacement[keep], tiles.confidence[keep], smoothing
    )
    # The grid covers the image with whole cells; nodes are sampled from the smooth field.
    nodes_per_axis = [math.ceil((n - 1) / grid_spacing) + 1 for n in shape]
    nodes = np.indices(nodes_per_axis, dtype=np.float64).reshape(ndim, -1).T * grid_spacing
    values = field(nodes).T.reshape(ndim, *nodes_per_axis)
    transform = DeformableTransform(affine, values, (0.0,) * ndim, (float(grid_spacing),) * ndim)
    residual = np.linalg.norm(
        transform.moving_coordinates(tiles.centers) - tiles.positions, axis=1
    )
    return transform, tiles.with_fit(residual, ~keep)
