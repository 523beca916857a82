"""What the transform estimation does differently for 3D volumes (plane, row, column).

There is no Fourier–Mellin stage in 3D (a rotation about an arbitrary axis does not become
a shift of a log-polar spectrum): the coarse stage is a translation, by phase correlation
(:func:`napari_ncc._phase_correlation.estimate_translation`) on a block-mean downsampled
copy. The rotation, scale, shear and deformation are then found by the same tile rounds as
in 2D (:func:`napari_ncc._local_shifts.measure_tiles` works on 3D tiles: an integer start
by cross-correlation, then least squares): the first round's integer search finds the
displacement a rotation of a few degrees adds at each tile, so rotations up to about
:data:`MAX_ANGLE` degrees about any axis are found, larger ones are not. The settings here
(smaller tiles, more of them needed per model) are those of a 3D problem.
"""

from __future__ import annotations

import math

import numpy as np
from skimage.transform import downscale_local_mean

from ._phase_correlation import PhaseCorrelation, estimate_translation
from ._rotation_scale import CoarseEstimate
from ._transform import AffineTransform

__all__ = [
    "MAX_ANGLE",
    "VOLUME_GRID_SPACING",
    "VOLUME_MIN_TILES",
    "VOLUME_ROUNDS",
    "VOLUME_TILE_SIZE",
    "coarse_translation",
    "volume_tile_size",
]

#: Side of the refinement tiles of a volume (voxels): 24**3 voxels hold as many as a 118**2
#: tile, and a 64-voxel volume shifted by 20 still holds a few dozen of them. Smaller
#: volumes get smaller tiles, down to MIN_VOLUME_TILE_SIZE (see volume_tile_size).
VOLUME_TILE_SIZE = 24
MIN_VOLUME_TILE_SIZE = 16

#: Textured tiles needed per model in 3D (about two per parameter: 6 for rigid, 7 for
#: similarity, 12 for affine; the field needs a grid of them).
VOLUME_MIN_TILES = {"translation": 3, "rigid": 8, "similarity": 9, "affine": 16, "deformable": 27}

#: Tile rounds for every model: a 3D field measured on overlapping tiles converges in two
#: or three rounds (its 2D counterpart needs five).
VOLUME_ROUNDS = 3

#: Default distance between the nodes of a 3D deformable field (voxels).
VOLUME_GRID_SPACING = 16.0

#: The coarse translation is estimated on a copy downsampled to at most this many voxels a
#: side.
COARSE_VOLUME_SIZE = 48

#: Rotations (degrees, about any axis) that are found on 64-96 voxel volumes (measured up
#: to 12; at 20 some axes fail).
MAX_ANGLE = 10.0


def volume_tile_size(shape) -> int:
    """The default tile side for a volume of this shape: :data:`VOLUME_TILE_SIZE`, or less
    for small volumes, so that three overlapping tiles (half a tile apart, 4 voxels from
    the faces) fit along the shortest axis.

    Examples
    --------
    >>> volume_tile_size((64, 96, 96)), volume_tile_size((48, 64, 64))
    (24, 20)
    """
    fitting = (min(shape) - 8) // 2
    return int(min(VOLUME_TILE_SIZE, max(MIN_VOLUME_TILE_SIZE, fitting)))


def coarse_translation(reference: np.ndarray, moving: np.ndarray) -> CoarseEstimate:
    """The translation between two volumes, by phase correlation on a downsampled copy.

    Parameters
    ----------
    reference, moving : ndarray
        Float volumes of the same shape.

    Returns
    -------
    CoarseEstimate
        Its `transform` a translation (full resolution), `angle` 0 and `scale` 1;
        `correlation` that of the aligned downsampled volumes.

    Examples
    --------
    >>> from scipy import ndimage as ndi
    >>> rng = np.random.default_rng(0)
    >>> reference = ndi.gaussian_filter(rng.normal(size=(64, 64, 64)), 2.0)
    >>> moving = ndi.shift(reference, (-10.0, 4.0, 12.0), mode="wrap")
    >>> coarse = coarse_translation(reference, moving)
    >>> coarse.transform.offset.round().tolist()
    [-10.0, 4.0, 12.0]
    """
    factor = max(1, math.ceil(max(reference.shape) / COARSE_VOLUME_SIZE))
    factors = (factor,) * reference.ndim
    small_reference = downscale_local_mean(reference, factors)
    small_moving = downscale_local_mean(moving, factors)
    options = PhaseCorrelation(upsample_factor=10, refine=False)
    estimate = estimate_translation(
        small_reference, small_moving, tuple(range(reference.ndim)), options
    )
    # A block mean's centre lies (factor - 1) / 2 voxels from its first voxel on both
    # volumes alike: the shift scales by the factor.
    shift = np.asarray(estimate.shift) * factor
    transform = AffineTransform.from_shift(shift)
    return CoarseEstimate(transform, 0.0, 1.0, float(estimate.quality), float("nan"))
