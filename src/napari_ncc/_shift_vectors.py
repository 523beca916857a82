"""A registration's local shifts as arrows: where the images had to be warped.

:func:`local_shift_vectors` turns the tiles a transform was fitted to
(:class:`~napari_ncc._local_shifts.TileReport`) into arrows in napari's Vectors layout,
with their confidence and whether the fit rejected them; :mod:`napari_ncc._shift_layers`
draws them. No napari here.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["ShiftVectors", "local_shift_vectors"]


#: Exaggerations offered for drawing local shifts (the arrows stay readable at any size).
_EXAGGERATIONS = (1, 2, 5, 10, 20, 50, 100)


@dataclass(frozen=True)
class ShiftVectors:
    """The local shifts of a registration's tiles, as arrows (see :func:`local_shift_vectors`).

    Attributes
    ----------
    data : ndarray, shape (n, 2, ndim)
        Per tile: its centre (reference pixels), then its displacement beyond the linear
        part (moving pixels): napari's Vectors layout.
    features : dict of ndarray
        Per tile: ``confidence`` (correlation after alignment, 1 best), ``sigma`` (standard
        error, px), ``residual`` (distance to the fitted transform, px, NaN if unknown),
        ``length`` (of the displacement, px) and ``rejected`` (an outlier of the fit).
    exaggeration : int
        How many times longer than their true length to draw the arrows (1, 2, 5, 10, ...),
        so that the longest kept arrow spans at most about half a tile.
    description : str
        What the arrows show, in a sentence.
    tile_size : int
        Side of the tiles the shifts were measured on (pixels; per plane: the largest).
    """

    data: np.ndarray
    features: dict
    exaggeration: int
    description: str
    tile_size: int = 64

    @property
    def rejected(self) -> np.ndarray:
        return self.features["rejected"]


def local_shift_vectors(registration) -> ShiftVectors | None:
    """Where the images had to be warped: each tile's shift beyond the linear part.

    For every tile the registration measured (:attr:`Registration.tiles`), the arrow starts
    at the tile's centre and points from where the linear (affine) part of the transform
    puts that centre in the moving image to where the tile was actually found there:
    ``position - affine(centre)``. For a deformable transform this is the warp the field
    takes up; for a linear model, what the model could not explain (the fit's residual).

    Parameters
    ----------
    registration : Registration
        From :func:`napari_ncc.register`.

    Returns
    -------
    ShiftVectors or None
        None for a translation, or a registration without measured tiles (such as one
        read back with :meth:`Registration.from_dict`). Per plane, every plane's arrows
        at its plane index (no displacement along the plane axis).

    Examples
    --------
    >>> from napari_ncc import Registration
    >>> from napari_ncc._local_shifts import TileReport
    >>> from napari_ncc._transform import AffineTransform
    >>> tiles = TileReport(
    ...     centers=np.array([[32.0, 32.0], [32.0, 96.0]]),
    ...     positions=np.array([[33.0, 32.0], [32.0, 96.5]]),
    ...     sigma=np.array([0.02, 0.03]), confidence=np.array([0.9, 0.8]),
    ...     residual=np.array([0.0, 0.0]), rejected=np.array([False, True]), tile_size=64)
    >>> reg = Registration((0.0, 0.0), transform=AffineTransform.from_rotation(0.0),
    ...                    tiles=tiles)
    >>> vectors = local_shift_vectors(reg)
    >>> vectors.data[:, 1].tolist(), vectors.rejected.tolist(), vectors.exaggeration
    ([[1.0, 0.0], [0.0, 0.5]], [False, True], 20)
    """
    transforms = getattr(registration, "transforms", None)
    if transforms is not None:  # per plane: each plane's arrows, at its plane index
        axis = registration.per_plane
        planes = []
        for t in range(len(transforms)):
            arrows = _arrows(registration.plane_registration(t))
            if arrows is not None:
                centers, displacement, features = arrows
                centers = np.insert(centers, axis, float(t), axis=1)
                displacement = np.insert(displacement, axis, 0.0, axis=1)
                planes.append((centers, displacement, features))
        if not planes:
            return None
        centers = np.concatenate([p[0] for p in planes])
        displacement = np.concatenate([p[1] for p in planes])
        features = {k: np.concatenate([p[2][k] for p in planes]) for k in planes[0][2]}
        model = transforms[0].model
        tile_size = max(int(r.tile_size) for r in registration.tiles if r is not None)
    else:
        arrows = _arrows(registration)
        if arrows is None:
            return None
        centers, displacement, features = arrows
        model = registration.transform.model
        tile_size = int(registration.tiles.tile_size)
    rejected = features["rejected"]
    kept = features["length"][~rejected]
    longest = float(kept.max()) if kept.size else 0.0
    fitting = [k for k in _EXAGGERATIONS if k * longest <= tile_size / 2]
    exaggeration = fitting[-1] if fitting else 1
    part = "the field" if model == "deformable" else "the fit's residual"
    planes_note = " (per plane)" if transforms is not None else ""
    description = (
        f"local shifts of {len(centers)} tiles ({tile_size} px){planes_note} beyond the "
        f"linear part of the {model} transform ({part}): arrow from the tile centre, "
        f"moving position minus the affine part's, drawn {exaggeration}x its length"
    )
    return ShiftVectors(
        np.stack([centers, displacement], axis=1), features, exaggeration, description, tile_size
    )


def _arrows(registration) -> tuple[np.ndarray, np.ndarray, dict] | None:
    """A single image's (or plane's) tile centres, displacements beyond the affine part
    and features; None without a transform or measured tiles."""
    tiles = getattr(registration, "tiles", None)
    transform = getattr(registration, "transform", None)
    if transform is None or tiles is None or len(tiles.centers) == 0:
        return None
    centers = np.asarray(tiles.centers, dtype=np.float64)
    displacement = np.asarray(tiles.positions, dtype=np.float64) - (
        transform.affine.moving_coordinates(centers)
    )
    features = {
        "confidence": np.asarray(tiles.confidence, dtype=np.float64),
        "sigma": np.asarray(tiles.sigma, dtype=np.float64),
        "residual": np.asarray(tiles.residual, dtype=np.float64),
        "length": np.linalg.norm(displacement, axis=1),
        "rejected": np.asarray(tiles.rejected, dtype=bool),
    }
    return centers, displacement, features
