"""Local shifts on a grid of textured tiles, and the transforms fitted to them.

:func:`measure_tiles` takes a current estimate of the transform, resamples the moving image
through it tile by tile (reading only each tile's box) and measures the residual shift of
every textured reference tile: an integer start by cross-correlation, then Lucas–Kanade
least squares (shift plus a gain and offset of the intensities, on lightly smoothed tiles)
to a few hundredths of a pixel, with the standard error of each shift and the tile's
correlation after alignment (its confidence). The result is where each tile centre lies in
the moving image. Tiles are measured in batches: each Lucas–Kanade iteration samples all
the batch's moving tiles at once (one ``map_coordinates`` call on an in-memory image) and
solves their normal equations together.

:func:`fit_linear` fits a translation, rigid, similarity or affine transform to those
correspondences by weighted least squares, rejecting outliers iteratively (a tile is
rejected when its residual exceeds several robust standard deviations);
:func:`fit_deformable` fits an affine part plus a smooth displacement field (thin-plate
spline smoothing weighted by the tiles' precision, outliers rejected the same way) sampled
onto the coarse grid of a :class:`~napari_ncc._transform.DeformableTransform`.
"""

from __future__ import annotations

import contextlib
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
#: Pixels of the tiles measured together (bounds the memory of the batched least squares:
#: a few tens of MB, whatever the tile size and dimension).
_BATCH_PIXELS = 2**19


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


def _sample_tiles(moving, coordinates: np.ndarray, order: int, prefiltered: bool) -> np.ndarray:
    """The moving image at a stack of tiles' coordinates, shape (m, ndim, *tile_shape): one
    ``map_coordinates`` call for an in-memory image (spline-filtered already, or order <= 1),
    else tile by tile, reading only each tile's box."""
    ndim = coordinates.shape[1]
    if isinstance(moving, np.ndarray) and (prefiltered or order <= 1):
        flat = np.moveaxis(coordinates, 1, 0).reshape(ndim, -1)
        out = ndi.map_coordinates(moving, flat, order=order, mode="mirror", prefilter=False)
        return out.reshape(coordinates.shape[:1] + coordinates.shape[2:])
    options = {"order": order, "mode": "mirror", "prefiltered": prefiltered}
    return np.stack([sample(moving, c, **options) for c in coordinates])


def _inner_gradients(tiles: np.ndarray, inner: tuple) -> np.ndarray:
    """Gradients of a stack of tiles (m, *tile_shape) along the tile axes, at the inner
    pixels: shape (m, inner pixels, ndim)."""
    axes = tuple(range(1, tiles.ndim))
    gradients = np.gradient(tiles, axis=axes)
    if len(axes) == 1:
        gradients = [gradients]
    return np.stack([g[inner].reshape(len(tiles), -1) for g in gradients], axis=2)


def _solve(normal: np.ndarray, rhs: np.ndarray) -> np.ndarray:
    """Batched ``solve(normal[i], rhs[i])``; NaN rows where a system is singular."""
    try:
        return np.linalg.solve(normal, rhs[..., None])[..., 0]
    except np.linalg.LinAlgError:
        out = np.full(rhs.shape, np.nan)
        for i, (a, b) in enumerate(zip(normal, rhs, strict=True)):
            with contextlib.suppress(np.linalg.LinAlgError):
                out[i] = np.linalg.solve(a, b)
        return out


def _tile_coordinates(linear, offset, offsets, origins, shift, jacobian, point) -> np.ndarray:
    """``A(p - shift - jacobian (p - point))`` at the pixels ``p = origin + offset`` of each
    tile, for the affine map ``A(x) = linear x + offset``: shape (tiles, pixels, ndim). One
    affine map per tile, applied to the shared offsets axis by axis (a matmul of many short
    rows is slow)."""
    ndim = len(offset)
    tile_linear = linear @ (np.eye(ndim) - jacobian)
    correction = np.einsum("kij,kj->ki", jacobian, point - origins) - shift
    tile_offset = offset + (origins + correction) @ linear.T
    q = np.repeat(tile_offset[:, None, :], len(offsets), axis=1)
    for j in range(ndim):
        q += offsets[None, :, j, None] * tile_linear[:, None, :, j]
    return q


def _measure_batch(reference, moving, transform, starts, tile_size, options):
    """Where each tile's measurement point lies in the moving image, for tiles at `starts`
    measured together (the Lucas–Kanade normal equations of all tiles in batched NumPy):
    arrays (point, position, sigma, confidence), sigma NaN for a tile whose moving tile
    leaves the image or whose fit diverges."""
    order, search, prefiltered, local = options
    ndim = reference.ndim
    m = len(starts)
    side = tile_size + 2 * _MARGIN
    shape = (side,) * ndim
    inner = (slice(None),) + (slice(_MARGIN, -_MARGIN),) * ndim
    origins = np.asarray(starts, dtype=np.int64).reshape(m, ndim) - _MARGIN
    pixels = np.indices(shape, dtype=np.float64).reshape(ndim, -1).T
    grid = origins[:, None, :] + pixels
    reference_tiles = np.stack(
        [
            np.asarray(reference[tuple(slice(o, o + side) for o in origin)], dtype=np.float64)
            for origin in origins
        ]
    )
    moving_shape = np.asarray(moving.shape)
    smoothing = (0.0,) + (SMOOTHING,) * ndim
    erosion = ndi.generate_binary_structure(ndim, 1)[None]  # tile by tile

    # The moving tile is sampled at T(p - shift - jacobian (p - point)): a local affine
    # correction (used for local tiles only), so that a deformation varying across the tile
    # is measured at `point` without bias.
    shift = np.zeros((m, ndim))
    jacobian = np.zeros((m, ndim, ndim))
    point = np.zeros((m, ndim))
    frozen_field = None
    deformable = isinstance(transform, DeformableTransform)
    affine = transform.affine if deformable else transform

    def moving_tiles(index):
        """The moving tiles `index`, which of their inner pixels are real data (inside the
        moving image, also after the smoothing: tiles at the border count with those only),
        and whether enough are."""
        # A deformable transform's field is evaluated once per tile (at the search's start):
        # the tile's own small shifts change it by less than its gradient times the shift,
        # which the next round measures; the position returned uses the exact transform.
        per_tile = (pixels, origins[index], shift[index], jacobian[index], point[index])
        q = _tile_coordinates(affine.linear, affine.offset, *per_tile)
        if frozen_field is not None:
            q += frozen_field[index]
        elif deformable:
            p = _tile_coordinates(np.eye(ndim), np.zeros(ndim), *per_tile)
            q += transform.field(p.reshape(-1, ndim)).reshape(q.shape)
        inside = np.all((q >= 0) & (q <= moving_shape - 1), axis=2).reshape(-1, *shape)
        if not inside.all():
            inside = ndi.binary_erosion(inside, erosion, iterations=3, border_value=1)
        inside = inside[inner].reshape(len(index), -1)
        q = np.clip(q, 0, moving_shape - 1)  # outside pixels are masked: read nothing there
        coordinates = np.moveaxis(q, 2, 1).reshape(len(index), ndim, *shape)
        tiles = _sample_tiles(moving, coordinates, order, prefiltered)
        return tiles, inside, inside.mean(axis=1) >= MIN_INSIDE

    if deformable and not search:
        # The search's start is the first sample: one field evaluation serves both.
        frozen_field = transform.field(grid.reshape(-1, ndim)).reshape(m, -1, ndim)
    tiles, inside, alive = moving_tiles(np.arange(m))
    if search:
        for i in np.flatnonzero(alive):
            first = tiles[i][inner[1:]]
            masked = np.where(inside[i].reshape(first.shape), first, first.mean())
            shift[i] = _integer_shift(reference_tiles[i][inner[1:]], masked)
    if deformable and search:
        frozen_field = transform.field((grid - shift[:, None]).reshape(-1, ndim))
        frozen_field = frozen_field.reshape(m, -1, ndim)
    smooth_reference = ndi.gaussian_filter(reference_tiles, smoothing)
    reference_gradient = _inner_gradients(smooth_reference, inner)
    target = smooth_reference[inner].reshape(m, -1)
    points = grid.reshape(m, *shape, ndim)[inner].reshape(m, -1, ndim)
    if local:
        # A Gaussian window makes the tile local (a deformation is averaged over less).
        sigma_window = tile_size / LOCAL_WINDOW
        offsets = points - points.mean(axis=1, keepdims=True)
        base_weights = np.exp(-0.5 * (offsets**2).sum(axis=2) / sigma_window**2)
    else:
        base_weights = np.ones(points.shape[:2])
    # The shift measured is that of the textured parts: attribute it to their centroid
    # (weighted by gradient energy), not the tile's centre, so that a varying displacement
    # is sampled at the right place.
    energy = base_weights * inside * (reference_gradient**2).sum(axis=2)
    with np.errstate(invalid="ignore", divide="ignore"):
        point = np.einsum("kp,kpi->ki", energy, points) / energy.sum(axis=1)[:, None]
    relative = points - point[:, None]
    gain = np.ones(m)
    sigma = np.full(m, np.nan)
    confidence = np.full(m, np.nan)
    # Without a search step, the first sample is the first iteration's.
    stale = np.any(shift != 0, axis=1)
    active = alive.copy()
    for iteration in range(_LK_ITERATIONS):
        resample = np.flatnonzero(active & stale)
        if len(resample):
            tiles[resample], inside[resample], enough = moving_tiles(resample)
            active[resample[~enough]] = False
        index = np.flatnonzero(active)
        if not len(index):
            break
        weights = base_weights[index] * inside[index]
        smooth = ndi.gaussian_filter(tiles[index], smoothing)
        observed = smooth[inner].reshape(len(index), -1)
        # The tile at p - shift - delta is the tile at p - shift minus gradient . delta, and
        # should be gain * reference + offset: observed = gain * ref + offset + gradient . delta.
        # The gradient is the mean of both tiles' (ESM), which cancels the first-order bias.
        gradient = (gain[index, None, None] * reference_gradient[index]) + _inner_gradients(
            smooth, inner
        )
        gradient /= 2
        columns = [target[index], np.ones_like(observed), *np.moveaxis(gradient, 2, 0)]
        if local:
            rel = relative[index]
            columns += [gradient[..., a] * rel[..., b] for a in range(ndim) for b in range(ndim)]
        design = np.stack(columns, axis=2)
        weighted = design * weights[..., None]
        normal = np.matmul(weighted.transpose(0, 2, 1), design)
        solution = _solve(normal, np.einsum("kpi,kp->ki", weighted, observed))
        failed = ~np.isfinite(solution).all(axis=1)
        gain[index] = solution[:, 0]
        shift[index] += solution[:, 2 : 2 + ndim]
        if local:
            jacobian[index] += solution[:, 2 + ndim :].reshape(-1, ndim, ndim)
            failed |= np.abs(jacobian[index]).reshape(len(index), -1).max(axis=1) > 0.5
        # A negligible last update: its tile and fit are the final ones.
        converged = ~failed & (np.abs(solution[:, 2:]).max(axis=1) < _LK_TOLERANCE)
        failed |= ~converged & (np.abs(shift[index]).max(axis=1) > tile_size / 2)
        finished = ~failed & (converged | (iteration == _LK_ITERATIONS - 1))
        done = index[finished]
        if len(done):
            design, weights, solution = design[finished], weights[finished], solution[finished]
            residual = (observed[finished] - np.einsum("kpi,ki->kp", design, solution)) * inside[
                done
            ]
            # Weighted least squares: cov = N^-1 (X' W^2 X) N^-1 * residual variance.
            inverse = np.linalg.inv(normal[finished])
            meat = np.matmul((design * weights[..., None] ** 2).transpose(0, 2, 1), design)
            dof = np.maximum(weights.sum(axis=1) - design.shape[2], 1)
            variance = (weights * residual * residual).sum(axis=1) / dof
            covariance = (inverse @ meat @ inverse)[:, 2 : 2 + ndim, 2 : 2 + ndim]
            trace = np.trace(covariance, axis1=1, axis2=2) * variance
            sigma[done] = np.sqrt(np.maximum(trace / ndim, 0.0))
            for i, values in zip(done, observed[finished], strict=True):
                confidence[i] = pearson(target[i][inside[i]], values[inside[i]])
        active[index[failed | finished]] = False
        stale[:] = True
    measured = np.isfinite(sigma)
    position = np.full((m, ndim), np.nan)
    if measured.any():
        position[measured] = transform.moving_coordinates(point[measured] - shift[measured])
    return point, position, sigma, confidence


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
    if min_texture is not None:
        threshold = float(min_texture)
    else:
        threshold = MIN_TEXTURE * np.median(scores) if len(scores) else 0.0
    textured = [start for start, score in zip(starts, scores, strict=True) if score > threshold]
    options = (order, search, prefiltered, local)
    measured = [[], [], [], []]
    batch_size = max(1, _BATCH_PIXELS // (tile_size + 2 * _MARGIN) ** reference.ndim)
    for first in range(0, len(textured), batch_size):
        batch = textured[first : first + batch_size]
        values = _measure_batch(reference, moving, transform, batch, tile_size, options)
        keep = np.isfinite(values[2]) & (values[3] >= MIN_CONFIDENCE)
        for out, value in zip(measured, values, strict=True):
            out.append(value[keep])
    centers, positions, sigmas, confidences = (
        np.concatenate(v) if v else np.empty(0) for v in measured
    )
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
