"""Geometric transforms between a reference and a moving image: the one interface.

Every transform maps **reference pixel coordinates to moving pixel coordinates**, in array
index order (row, column[, plane]): :meth:`moving_coordinates` says where a reference pixel
lies in the moving image, and resampling the moving image there (:func:`napari_ncc._warp.warp`)
brings it onto the reference grid. :class:`AffineTransform` holds the linear models
(translation, rigid, similarity, affine) as one homogeneous matrix; :class:`DeformableTransform`
adds a smooth displacement field, given on a coarse grid of nodes and interpolated by cubic
B-splines. Both round-trip through JSON-able dicts (:func:`transform_from_dict`).

For a translation, ``moving_coordinates(p) == p - shift``: the convention of
``scipy.ndimage.shift(moving, shift) ~ reference`` (and of ``Registration.shift``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Union

import numpy as np
from scipy import ndimage as ndi

__all__ = [
    "LINEAR_MODELS",
    "MODELS",
    "AffineTransform",
    "DeformableTransform",
    "Transform",
    "transform_from_dict",
]

#: Linear transform models, from the most to the least constrained.
LINEAR_MODELS = ("translation", "rigid", "similarity", "affine")

#: Every transform model.
MODELS = (*LINEAR_MODELS, "deformable")

#: Nodes added on each side of a field's grid, by point reflection (which continues a linear
#: field linearly), before the B-spline prefilter: the prefilter's boundary error then decays
#: (like 0.27 ** 8) before it reaches the real nodes, so linear fields are reproduced.
_FIELD_PAD = 8

#: How far (relative) a matrix may be from its model's form (rigid: orthonormal, ...).
_MODEL_TOLERANCE = 1e-6


def _check_points(points, ndim: int) -> np.ndarray:
    points = np.asarray(points, dtype=np.float64)
    if points.ndim != 2 or points.shape[1] != ndim:
        raise ValueError(f"points must have shape (n, {ndim}), got {points.shape}")
    return points


def _axial_vector(rotation: np.ndarray) -> np.ndarray:
    """``sin(angle) * axis`` of a 3D rotation matrix (its antisymmetric part)."""
    r = rotation
    return np.array([r[2, 1] - r[1, 2], r[0, 2] - r[2, 0], r[1, 0] - r[0, 1]]) / 2


def _cubic_bspline_weights(x: np.ndarray, n: int) -> np.ndarray:
    """(len(x), n) weights of the cubic B-spline coefficients 0..n-1 at positions `x` (as
    ``scipy.ndimage.map_coordinates(order=3, prefilter=False)``; beyond the ends, the edge
    coefficients repeat)."""
    base = np.floor(x)
    t = x - base
    taps = [
        (1 - t) ** 3 / 6,
        (3 * t**3 - 6 * t**2 + 4) / 6,
        (-3 * t**3 + 3 * t**2 + 3 * t + 1) / 6,
        t**3 / 6,
    ]
    weights = np.zeros((len(x), n))
    rows = np.arange(len(x))
    for k, tap in enumerate(taps):
        np.add.at(weights, (rows, np.clip(base.astype(int) - 1 + k, 0, n - 1)), tap)
    return weights


def _model_of_linear(linear: np.ndarray) -> str:
    """The most constrained linear model that `linear` (ndim x ndim) belongs to."""
    ndim = len(linear)
    identity = np.eye(ndim)
    if np.allclose(linear, identity, rtol=0, atol=_MODEL_TOLERANCE):
        return "translation"
    gram = linear.T @ linear
    scale2 = np.trace(gram) / ndim
    if np.allclose(gram, scale2 * identity, rtol=0, atol=_MODEL_TOLERANCE * scale2):
        if np.linalg.det(linear) > 0:
            if abs(scale2 - 1) < _MODEL_TOLERANCE:
                return "rigid"
            return "similarity"
    return "affine"


_MODEL_RANK = {name: i for i, name in enumerate(LINEAR_MODELS)}


@dataclass(frozen=True, eq=False)
class AffineTransform:
    """A linear transform: ``moving = linear @ reference + offset`` in pixel coordinates.

    Parameters
    ----------
    matrix : array_like, shape (ndim + 1, ndim + 1)
        Homogeneous matrix mapping reference pixel coordinates (array index order) to moving
        pixel coordinates; the last row is ``(0, ..., 0, 1)``.
    model : str, optional
        "translation", "rigid" (rotation + shift), "similarity" (+ isotropic scale) or
        "affine". The matrix must be of that form (within 1e-6); a matrix of a more
        constrained form is accepted (a translation is a valid "affine").

    Examples
    --------
    >>> t = AffineTransform.from_shift((2.0, -1.0))
    >>> t.model, t.moving_coordinates([[10.0, 10.0]]).tolist()
    ('translation', [[8.0, 11.0]])
    >>> r = AffineTransform.from_rotation(90.0, center=(1.0, 1.0))
    >>> np.round(r.moving_coordinates([[1.0, 2.0]]), 12).tolist()
    [[0.0, 1.0]]
    """

    matrix: np.ndarray
    model: str = "affine"

    def __post_init__(self):
        matrix = np.array(self.matrix, dtype=np.float64)
        if matrix.ndim != 2 or matrix.shape[0] != matrix.shape[1] or matrix.shape[0] < 2:
            raise ValueError(
                f"matrix must be a square (ndim + 1, ndim + 1) array, got shape {matrix.shape}"
            )
        if not np.all(np.isfinite(matrix)):
            raise ValueError("matrix must be finite")
        ndim = matrix.shape[0] - 1
        last = np.zeros(ndim + 1)
        last[-1] = 1.0
        if not np.array_equal(matrix[-1], last):
            raise ValueError(f"matrix's last row must be {last.tolist()}, got {matrix[-1]}")
        if self.model not in LINEAR_MODELS:
            raise ValueError(f"model must be one of {LINEAR_MODELS}, got {self.model!r}")
        if abs(np.linalg.det(matrix[:ndim, :ndim])) < 1e-12:
            raise ValueError("matrix is singular: the transform must be invertible")
        actual = _model_of_linear(matrix[:ndim, :ndim])
        if _MODEL_RANK[actual] > _MODEL_RANK[self.model]:
            raise ValueError(f"matrix is {actual!r}, not of model {self.model!r}")
        matrix.setflags(write=False)
        object.__setattr__(self, "matrix", matrix)

    # -- constructors -------------------------------------------------------------------

    @classmethod
    def from_shift(cls, shift) -> AffineTransform:
        """The translation of ``scipy.ndimage.shift(moving, shift) ~ reference``."""
        shift = np.asarray(shift, dtype=np.float64).ravel()
        matrix = np.eye(len(shift) + 1)
        matrix[:-1, -1] = -shift
        return cls(matrix, "translation")

    @classmethod
    def from_rotation(
        cls, angle: float, *, scale: float = 1.0, center=(0.0, 0.0), translation=(0.0, 0.0)
    ) -> AffineTransform:
        """A 2D rigid or similarity transform about `center`.

        ``moving = center + scale * R(angle) @ (reference - center) + translation``, with
        ``R(a) = [[cos a, -sin a], [sin a, cos a]]`` in (row, column) coordinates and `angle`
        in degrees.
        """
        a = math.radians(angle)
        linear = scale * np.array([[math.cos(a), -math.sin(a)], [math.sin(a), math.cos(a)]])
        center = np.asarray(center, dtype=np.float64)
        matrix = np.eye(3)
        matrix[:2, :2] = linear
        matrix[:2, 2] = center - linear @ center + np.asarray(translation, dtype=np.float64)
        return cls(matrix, "rigid" if scale == 1.0 else "similarity")

    # -- properties ---------------------------------------------------------------------

    @property
    def ndim(self) -> int:
        """Number of spatial axes."""
        return self.matrix.shape[0] - 1

    @property
    def linear(self) -> np.ndarray:
        """The (ndim, ndim) linear part."""
        return self.matrix[:-1, :-1]

    @property
    def offset(self) -> np.ndarray:
        """The (ndim,) translation part: where reference pixel 0 lies in the moving image."""
        return self.matrix[:-1, -1]

    @property
    def affine(self) -> AffineTransform:
        """The linear part of the transform (itself)."""
        return self

    @property
    def rotation(self) -> np.ndarray:
        """The rotation of the linear part's polar decomposition, ``linear = rotation @ S``
        with ``S`` symmetric positive definite: the rotation left once scale and shear are
        taken out."""
        u, _, vt = np.linalg.svd(self.linear)
        return u @ vt

    @property
    def angle(self) -> float:
        """The rotation angle in degrees (of :attr:`rotation`).

        2D: signed, as :meth:`from_rotation`'s `angle`. 3D: the angle (``>= 0``) of the
        rotation about :attr:`rotation_axis`. Other dimensions raise ValueError.
        """
        rotation = self.rotation
        if self.ndim == 3:
            sine = np.linalg.norm(_axial_vector(rotation))
            return math.degrees(math.atan2(sine, (np.trace(rotation) - 1) / 2))
        if self.ndim != 2:
            raise ValueError(
                f"angle is defined for 2D and 3D transforms, this one is {self.ndim}D"
            )
        return math.degrees(math.atan2(rotation[1, 0], rotation[0, 0]))

    @property
    def rotation_axis(self) -> np.ndarray:
        """3D: the unit axis of :attr:`rotation`, (plane, row, column) order; the rotation
        is by :attr:`angle` about it, counterclockwise seen from its tip (right-hand rule in
        index coordinates). Zeros for no rotation.
        """
        if self.ndim != 3:
            raise ValueError(
                f"rotation_axis is defined for 3D transforms, this one is {self.ndim}D"
            )
        vector = _axial_vector(self.rotation)
        norm = np.linalg.norm(vector)
        if norm < 1e-12:
            # Exactly 0 or 180 degrees: 0 has no axis; 180 has the eigenvector of eigenvalue 1.
            if np.trace(self.rotation) > 0:
                return np.zeros(3)
            values, vectors = np.linalg.eigh((self.rotation + self.rotation.T) / 2)
            return vectors[:, np.argmax(values)]
        return vector / norm

    @property
    def scale(self) -> float:
        """The mean isotropic scale, ``|det(linear)| ** (1 / ndim)``."""
        return float(abs(np.linalg.det(self.linear)) ** (1.0 / self.ndim))

    # -- mapping ------------------------------------------------------------------------

    def moving_coordinates(self, points) -> np.ndarray:
        """Where reference points lie in the moving image.

        Parameters
        ----------
        points : array_like, shape (n, ndim)
            Reference pixel coordinates, array index order.

        Returns
        -------
        ndarray, shape (n, ndim)
            Moving pixel coordinates (float64).
        """
        points = _check_points(points, self.ndim)
        return points @ self.linear.T + self.offset

    def inverse(self) -> AffineTransform:
        """The transform from moving to reference coordinates."""
        return AffineTransform(np.linalg.inv(self.matrix), self.model)

    def to_dict(self) -> dict:
        """A JSON-able description (see :func:`transform_from_dict`)."""
        return {"model": self.model, "matrix": self.matrix.tolist()}


@dataclass(frozen=True, eq=False)
class DeformableTransform:
    """A linear transform plus a smooth displacement field.

    ``moving = affine(reference) + field(reference)``, where the field is given at the nodes
    ``origin + spacing * index`` of a coarse grid in reference coordinates and interpolated
    between them by a cubic B-spline (through the node values). Beyond the grid, the spline
    continues about linearly for a few nodes, then levels off: keep the grid over the whole
    reference image.

    Parameters
    ----------
    affine : AffineTransform
        The linear part.
    displacement : array_like, shape (ndim, *grid_shape)
        Displacement (moving pixels) of each node, per axis.
    origin : sequence of float
        Reference coordinates of node 0.
    spacing : sequence of float
        Distance between nodes (reference pixels), per axis.

    Examples
    --------
    >>> field = np.zeros((2, 3, 3))
    >>> field[0] = 1.5  # a uniform field is a translation
    >>> t = DeformableTransform(AffineTransform(np.eye(3)), field, (0, 0), (50, 50))
    >>> t.moving_coordinates([[20.0, 30.0]]).round(6).tolist()
    [[21.5, 30.0]]
    """

    affine: AffineTransform
    displacement: np.ndarray
    origin: tuple[float, ...]
    spacing: tuple[float, ...]
    _coefficients: np.ndarray = field(init=False, repr=False)

    def __post_init__(self):
        if not isinstance(self.affine, AffineTransform):
            raise TypeError(f"affine must be an AffineTransform, got {type(self.affine)}")
        ndim = self.affine.ndim
        displacement = np.array(self.displacement, dtype=np.float64)
        if displacement.ndim != ndim + 1 or displacement.shape[0] != ndim:
            raise ValueError(
                f"displacement must have shape ({ndim}, *grid_shape) with {ndim} grid axes, "
                f"got {displacement.shape}"
            )
        if min(displacement.shape[1:]) < 1 or not np.all(np.isfinite(displacement)):
            raise ValueError("displacement must be finite with at least one node per axis")
        origin = tuple(float(v) for v in np.ravel(self.origin))
        spacing = tuple(float(v) for v in np.ravel(self.spacing))
        if len(origin) != ndim or len(spacing) != ndim:
            raise ValueError(f"origin and spacing must have {ndim} values each")
        if not all(math.isfinite(v) for v in origin) or not all(
            math.isfinite(s) and s > 0 for s in spacing
        ):
            raise ValueError(
                f"origin must be finite and spacing positive, got {origin}, {spacing}"
            )
        displacement.setflags(write=False)
        # B-spline coefficients through the node values: the field is their weighted sum
        # with weights >= 0 summing to 1, so its range over a region is bounded by the
        # coefficients around it (field_bounds).
        padded = np.pad(
            displacement,
            [(0, 0)] + [(_FIELD_PAD, _FIELD_PAD)] * ndim,
            mode="reflect",
            reflect_type="odd",
        )
        coefficients = np.stack([ndi.spline_filter(d, order=3, mode="mirror") for d in padded])
        object.__setattr__(self, "displacement", displacement)
        object.__setattr__(self, "origin", origin)
        object.__setattr__(self, "spacing", spacing)
        object.__setattr__(self, "_coefficients", coefficients)

    model = "deformable"

    @property
    def ndim(self) -> int:
        """Number of spatial axes."""
        return self.affine.ndim

    @property
    def matrix(self) -> np.ndarray:
        """The homogeneous matrix of the linear part."""
        return self.affine.matrix

    def _grid_coordinates(self, points: np.ndarray) -> np.ndarray:
        """Coordinates in the (padded) coefficient grid, shape (ndim, n)."""
        return ((points - np.asarray(self.origin)) / np.asarray(self.spacing)).T + _FIELD_PAD

    def field(self, points) -> np.ndarray:
        """The displacement field at reference points, shape (n, ndim)."""
        points = _check_points(points, self.ndim)
        grid = self._grid_coordinates(points)
        return np.stack(
            [
                ndi.map_coordinates(c, grid, order=3, mode="nearest", prefilter=False)
                for c in self._coefficients
            ],
            axis=1,
        )

    def field_on_grid(self, axes) -> np.ndarray:
        """The displacement field on the grid of reference points spanned by `axes`.

        Equal to :meth:`field` at ``itertools.product(*axes)`` (up to rounding), but the
        cubic B-spline is evaluated one axis at a time (4 taps per axis instead of ``4 **
        ndim`` per point): what a tile or block of a volume wants.

        Parameters
        ----------
        axes : sequence of 1D array_like
            Reference coordinates along each axis.

        Returns
        -------
        ndarray, shape (ndim, len(axes[0]), len(axes[1]), ...)

        Examples
        --------
        >>> field = np.zeros((2, 3, 3))
        >>> field[1, :, 2] = 3.0
        >>> t = DeformableTransform(AffineTransform(np.eye(3)), field, (0, 0), (10, 10))
        >>> grid = t.field_on_grid([[0.0, 5.0], [10.0, 15.0, 20.0]])
        >>> points = np.array([[r, c] for r in (0.0, 5.0) for c in (10.0, 15.0, 20.0)])
        >>> bool(np.allclose(grid.reshape(2, -1).T, t.field(points)))
        True
        """
        if len(axes) != self.ndim:
            raise ValueError(f"axes must hold {self.ndim} coordinate arrays, got {len(axes)}")
        box, matrices = [], []
        for d, values in enumerate(axes):
            x = (np.asarray(values, np.float64).ravel() - self.origin[d]) / self.spacing[d]
            weights = _cubic_bspline_weights(x + _FIELD_PAD, self._coefficients.shape[1 + d])
            used = np.flatnonzero(weights.any(axis=0))
            box.append(slice(used[0], used[-1] + 1))
            matrices.append(weights[:, box[-1]])
        out = self._coefficients[(slice(None), *box)]
        for weights in matrices:
            # Contracting axis 1 puts the new axis last: after every axis, the order is
            # (component, axis 0, axis 1, ...) again.
            out = np.tensordot(out, weights, axes=([1], [1]))
        return out

    def moving_coordinates(self, points) -> np.ndarray:
        """Where reference points lie in the moving image, field included.

        Parameters
        ----------
        points : array_like, shape (n, ndim)
            Reference pixel coordinates, array index order.

        Returns
        -------
        ndarray, shape (n, ndim)
            Moving pixel coordinates (float64).
        """
        points = _check_points(points, self.ndim)
        return self.affine.moving_coordinates(points) + self.field(points)

    def field_bounds(self, lower, upper) -> tuple[np.ndarray, np.ndarray]:
        """Lower and upper bounds of the field, per axis, over the reference box
        ``lower <= p <= upper`` (guaranteed, from the B-spline coefficients)."""
        lo = np.floor(self._grid_coordinates(np.asarray([lower], float))[:, 0]).astype(int) - 1
        hi = np.floor(self._grid_coordinates(np.asarray([upper], float))[:, 0]).astype(int) + 3
        grid_shape = np.asarray(self._coefficients.shape[1:])
        lo = np.clip(lo, 0, grid_shape - 1)
        hi = np.clip(hi, lo + 1, grid_shape)
        box = (slice(None), *(slice(a, b) for a, b in zip(lo, hi, strict=True)))
        local = self._coefficients[box].reshape(self.ndim, -1)
        return local.min(axis=1), local.max(axis=1)

    def to_dict(self) -> dict:
        """A JSON-able description, the field included (see :func:`transform_from_dict`)."""
        return {
            "model": "deformable",
            "matrix": self.affine.matrix.tolist(),
            "affine_model": self.affine.model,
            "field": {
                "origin": list(self.origin),
                "spacing": list(self.spacing),
                "displacement": self.displacement.tolist(),
            },
        }


Transform = Union[AffineTransform, DeformableTransform]  # noqa: UP007 (runtime alias, py3.10)


def transform_from_dict(d: dict) -> Transform:
    """The transform described by ``to_dict()``.

    Examples
    --------
    >>> t = AffineTransform.from_rotation(3.0, scale=1.02, center=(10, 10))
    >>> u = transform_from_dict(t.to_dict())
    >>> u.model, bool(np.allclose(u.matrix, t.matrix))
    ('similarity', True)
    """
    if not isinstance(d, dict) or "model" not in d or "matrix" not in d:
        raise ValueError("a transform dict needs 'model' and 'matrix' keys")
    model = d["model"]
    if model == "deformable":
        affine = AffineTransform(d["matrix"], d.get("affine_model", "affine"))
        f = d["field"]
        return DeformableTransform(affine, f["displacement"], f["origin"], f["spacing"])
    return AffineTransform(d["matrix"], model)
