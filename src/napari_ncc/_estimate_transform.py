"""Estimate a rigid, similarity, affine or deformable transform between two 2D images
or 3D volumes.

A prototype of the estimation behind ``register(model=...)``: the coarse Fourier–Mellin
stage (:mod:`napari_ncc._rotation_scale`) finds rotation, scale and translation on a
downsampled copy; then, a few times over, local shifts are measured on textured tiles at
full resolution through the current estimate (:func:`~napari_ncc._local_shifts.measure_tiles`)
and the model is fitted to them robustly (:func:`~napari_ncc._local_shifts.fit_linear`,
:func:`~napari_ncc._local_shifts.fit_deformable`). Each round measures what the previous
one left, so the residual shrinks geometrically (for the deformable field too, whose
measurement a tile averages). The deformable model goes coarse to fine: large tiles first
(robust to the coarse estimate's error), then tiles of half the side, denser and more local.

A :class:`~napari_ncc._registration.RegistrationWarning` says when the data do not support
the model: too few textured tiles, or a fit whose residuals are large.

3D volumes take the same rounds after a coarse translation instead of Fourier–Mellin, with
their own tile size and tile counts (:mod:`napari_ncc._estimate_volume`).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np

from ._estimate_volume import (
    VOLUME_GRID_SPACING,
    VOLUME_MIN_TILES,
    VOLUME_ROUNDS,
    coarse_translation,
    volume_tile_size,
)
from ._local_shifts import (
    MIN_TILES,
    TILE_SIZE,
    TileReport,
    fit_deformable,
    fit_linear,
    measure_tiles,
)
from ._registration import RegistrationWarning
from ._rotation_scale import CoarseEstimate, coarse_similarity
from ._transform import MODELS, AffineTransform, DeformableTransform, Transform
from ._validation import check_image

__all__ = ["TransformEstimate", "estimate_transform", "fit_notes"]

#: The fit is suspect when the median residual of the kept tiles exceeds this (pixels) ...
MAX_MEDIAN_RESIDUAL = 0.5
#: ... or when more than this fraction of the tiles is rejected.
MAX_REJECTED_FRACTION = 0.5

#: Rounds of tile measurement and fit.
DEFAULT_ROUNDS = 3

#: Images with fewer whole tiles than this get overlapping tiles for every model.
SPARSE_TILES = 25

#: "deformable": rounds after the first measure tiles of half the side (not below this),
#: coarse to fine: four times as many, more local measurements sample the field where the
#: large tiles' texture centroids leave gaps (flat regions), and follow its curvature.
MIN_FINE_TILE = 16

#: Stop early when a round moves the transform by less than this at the tiles (pixels).
CONVERGED = 0.005


@dataclass(frozen=True)
class TransformEstimate:
    """The result of :func:`estimate_transform`.

    Attributes
    ----------
    transform : AffineTransform or DeformableTransform
        Reference pixel coordinates -> moving pixel coordinates.
    tiles : TileReport
        The last round's local shifts, residuals and rejected tiles.
    coarse : CoarseEstimate
        The Fourier–Mellin estimate the refinement started from (3D: a translation).
    rounds : int
        Tile rounds run.
    reliable : bool
        False when a :class:`RegistrationWarning` was emitted.
    notes : tuple of str
        Why the estimate is unreliable, if it is.
    """

    transform: Transform
    tiles: TileReport
    coarse: CoarseEstimate
    rounds: int
    reliable: bool
    notes: tuple[str, ...]


def _change(a: Transform, b: Transform, points: np.ndarray) -> float:
    if len(points) == 0:
        return 0.0
    return float(np.abs(a.moving_coordinates(points) - b.moving_coordinates(points)).max())


def _fallback(coarse: AffineTransform, shape, model: str) -> Transform:
    """The coarse transform, projected onto `model` (fitted to it on a grid of points)."""
    ndim = len(shape)
    grid = np.stack(np.meshgrid(*[np.linspace(0, n - 1, 5) for n in shape]), -1)
    grid = grid.reshape(-1, ndim)
    n = len(grid)
    synthetic = TileReport(
        grid,
        coarse.moving_coordinates(grid),
        np.ones(n),
        np.ones(n),
        np.full(n, np.nan),
        np.zeros(n, bool),
        0,
    )
    linear, _ = fit_linear(synthetic, "affine" if model == "deformable" else model)
    if model != "deformable":
        return linear
    return DeformableTransform(
        linear, np.zeros((ndim,) + (2,) * ndim), (0.0,) * ndim, tuple(float(s) for s in shape)
    )


def fit_notes(tiles: TileReport, model: str) -> list[str]:
    """Why a fit of `model` to `tiles` is suspect: a large median residual of the kept
    tiles, or most tiles rejected (empty when neither)."""
    notes = []
    kept = ~tiles.rejected
    median = float(np.median(tiles.residual[kept]))
    if median > MAX_MEDIAN_RESIDUAL:
        notes.append(
            f"the {model!r} fit leaves a median residual of {median:.2f} px on the "
            "tiles: the images may need another model"
        )
    if tiles.rejected.mean() > MAX_REJECTED_FRACTION:
        notes.append(f"{tiles.rejected.sum()} of {len(kept)} tiles were rejected as outliers")
    return notes


def estimate_transform(
    reference: np.ndarray,
    moving: np.ndarray,
    model: str = "affine",
    *,
    tile_size: int | None = None,
    rounds: int | None = None,
    grid_spacing: float | None = None,
) -> TransformEstimate:
    """Estimate the transform that maps `reference` pixels onto `moving` pixels.

    Parameters
    ----------
    reference, moving : ndarray
        2D images or 3D volumes (any real dtype). A 2D moving image may be rotated by any
        angle, scaled by 0.5-2 and shifted; a volume may be rotated by up to about 10°
        about any axis (:data:`~napari_ncc._estimate_volume.MAX_ANGLE`), scaled by a few
        percent and shifted by any amount.
    model : str, optional
        "translation", "rigid", "similarity", "affine" or "deformable".
    tile_size : int, optional
        Side of the refinement tiles (pixels; default 64, for volumes 24 or less for
        small ones: :func:`~napari_ncc._estimate_volume.volume_tile_size`).
    rounds : int, optional
        Tile rounds (default 3); stops early once converged.
    grid_spacing : float, optional
        "deformable": distance between the field's nodes (default 32, 16 for volumes).

    Returns
    -------
    TransformEstimate

    Warns
    -----
    RegistrationWarning
        When fewer textured tiles than the model needs are found, or the fit leaves large
        residuals or rejects most tiles: the transform is then the best available guess.

    Examples
    --------
    >>> from skimage import data
    >>> from napari_ncc._warp import warp
    >>> reference = data.astronaut()[100:356, 150:406, 1].astype(float)
    >>> truth = AffineTransform.from_rotation(5.0, scale=1.03, center=(128, 128))
    >>> moving = warp(reference, truth.inverse(), order=3)
    >>> estimate = estimate_transform(reference, moving, "similarity")
    >>> p = np.array([[60.0, 60.0], [190.0, 170.0]])
    >>> error = estimate.transform.moving_coordinates(p) - truth.moving_coordinates(p)
    >>> bool(np.abs(error).max() < 0.1)
    True
    """
    if model not in MODELS:
        raise ValueError(f"model must be one of {MODELS}, got {model!r}")
    check_image(reference, "reference")
    check_image(moving, "moving")
    reference = np.asarray(reference, dtype=np.float64)
    moving = np.asarray(moving, dtype=np.float64)
    if reference.ndim not in (2, 3) or moving.ndim != reference.ndim:
        raise ValueError(
            f"estimate_transform works on 2D images or 3D volumes of the same dimensions, "
            f"got shapes {reference.shape} and {moving.shape}"
        )
    volume = reference.ndim == 3
    if rounds is None:
        rounds = VOLUME_ROUNDS if volume else DEFAULT_ROUNDS
    if tile_size is None:
        tile_size = volume_tile_size(reference.shape) if volume else TILE_SIZE
    if grid_spacing is None:
        grid_spacing = VOLUME_GRID_SPACING if volume else 32.0
    min_tiles = (VOLUME_MIN_TILES if volume else MIN_TILES)[model]
    coarse = (coarse_translation if volume else coarse_similarity)(reference, moving)
    transform: Transform = coarse.transform
    notes: list[str] = []
    tiles = None
    done = 0
    for done in range(1, rounds + 1):
        # Linear models need few tiles, unless the image is small; the field needs them
        # dense (overlapping).
        few = np.prod([n // tile_size for n in reference.shape]) < SPARSE_TILES
        size = tile_size
        if model == "deformable" and done > 1:
            size = max(tile_size // 2, min(tile_size, MIN_FINE_TILE))
        spacing = size // 2 if model == "deformable" or few else size
        tiles = measure_tiles(
            reference,
            moving,
            transform,
            tile_size=size,
            spacing=spacing,
            search=done == 1,
            local=model == "deformable",
        )
        if len(tiles.centers) < min_tiles:
            what = "volume" if volume else "image"
            notes.append(
                f"only {len(tiles.centers)} textured tiles match (need {min_tiles} "
                f"for {model!r}): the {what}s may not overlap or hold too little texture"
            )
            break
        if model == "deformable":
            new, tiles = fit_deformable(tiles, reference.shape, grid_spacing=grid_spacing)
        else:
            new, tiles = fit_linear(tiles, model)
        change = _change(new, transform, tiles.centers)
        transform = new
        if change < CONVERGED:
            break
    if notes:
        transform = _fallback(coarse.transform, reference.shape, model)
    else:
        notes += fit_notes(tiles, model)
    for note in notes:
        warnings.warn(note, RegistrationWarning, stacklevel=2)
    if tiles is None:  # rounds == 0
        empty = np.empty((0, reference.ndim))
        tiles = TileReport(empty, empty, *(np.empty(0),) * 3, np.empty(0, bool), 0)
    return TransformEstimate(transform, tiles, coarse, done, not notes, tuple(notes))
