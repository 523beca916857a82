"""The result of a registration: :class:`Registration`.

A :class:`Registration` holds the transform that brings a moving image onto a reference
(a translation, or a rigid, similarity, affine or deformable :mod:`~napari_ncc._transform`;
one for the image or one per plane of a stack), applies it (NumPy in,
NumPy out; Dask in, lazy Dask out), maps points from the reference grid into the moving
image, says which pixels of the registered image are real data, and round-trips through
JSON. :func:`napari_ncc.register` (module ``_register``) estimates it.

This module imports Dask only inside the method that shifts Dask input (the other models
warp through :mod:`napari_ncc._warp`, lazily for Dask input).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from numbers import Integral

import numpy as np
from scipy import ndimage as ndi

from ._regions import inside_box, plane_index, valid_slices
from ._transform import MODELS, AffineTransform, DeformableTransform, transform_from_dict
from ._validation import check_image, check_order, interpolated_dtype, is_dask, snap_shift

__all__ = ["MODELS", "Registration", "RegistrationWarning", "plane_index"]


class RegistrationWarning(UserWarning):
    """The registration estimate is unreliable (flat images, no clear correlation peak)."""


@dataclass(eq=False)
class Registration:
    """A transform that registers a moving image onto a reference.

    A translation is held by `shift` (or `shifts`, per plane) alone; any other model by
    `transform` (reference pixel coordinates -> moving pixel coordinates, (row, col)
    order), or per plane by `transforms` (one transform of a plane's axes per plane), with
    `shift` (`shifts`) then the displacement at the image's (each plane's) centre, a
    summary. Every method answers whatever the model, so callers need not branch on it;
    :meth:`plane_registration` gives one plane's registration alone.

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
        Per-plane registration: the shift of each plane (0 along the plane axis); with
        `transforms`, the displacement at each plane's centre (a summary).
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
        How the shift was found ("phase correlation + gauss-newton", "block-mean x4 +
        4 tiles", "given", ...).
    notes : tuple of str
        Anything worth knowing about the estimate (why it is unreliable, tile spread).
    qualities : ndarray or None
        Per-plane registration: the quality of each plane.
    model : {"translation", "rigid", "similarity", "affine", "deformable"}
        The transform model (see :data:`MODELS`): ``transform.model``, or "translation"
        without a `transform`.
    transform : AffineTransform or DeformableTransform or None
        The non-translation transform of a whole image (None for a translation and per
        plane).
    transforms : tuple of AffineTransform or DeformableTransform, or None
        Per-plane registration with a model other than translation: plane ``t``'s
        transform, over the plane's axes (the plane axis left out), all of one model.
        Needs `per_plane` and `shifts`.
    tiles : TileReport or tuple of TileReport or None
        The local shifts the transform was fitted to (per plane: one report per plane;
        :meth:`to_dict` saves only their count and how many were rejected).
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
    model: str = "translation"
    transform: AffineTransform | DeformableTransform | None = None
    tiles: object = field(default=None, repr=False)
    transforms: tuple[AffineTransform | DeformableTransform, ...] | None = field(
        default=None, repr=False
    )

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
        if self.transform is not None:
            if not isinstance(self.transform, (AffineTransform, DeformableTransform)):
                raise TypeError(
                    "transform must be an AffineTransform or DeformableTransform, "
                    f"got {type(self.transform).__name__}"
                )
            if self.transform.model == "translation":
                raise ValueError("a translation is given by shift, not by transform")
            if self.transform.ndim != len(self.shift):
                raise ValueError(
                    f"transform has {self.transform.ndim} dimensions, shift has {len(self.shift)}"
                )
            if self.shifts is not None:
                raise ValueError(
                    "a per-plane registration holds its planes' transforms in transforms, "
                    "not transform"
                )
            self.model = self.transform.model
        elif self.transforms is not None:
            self._check_transforms()
        elif self.model != "translation":
            if self.model in MODELS:
                raise ValueError(f"model {self.model!r} needs a transform")
        if self.model not in MODELS:
            raise ValueError(
                f"unknown model {self.model!r}; expected one of {', '.join(map(repr, MODELS))}"
            )

    def _check_transforms(self) -> None:
        self.transforms = tuple(self.transforms)
        if self.shifts is None:
            raise ValueError(
                "transforms is given, so shifts (each plane's displacement at its centre) "
                "and per_plane (the plane axis) must be too"
            )
        if len(self.transforms) != len(self.shifts):
            raise ValueError(
                f"transforms has {len(self.transforms)} planes, shifts {len(self.shifts)}"
            )
        models = set()
        for t in self.transforms:
            if not isinstance(t, (AffineTransform, DeformableTransform)):
                raise TypeError(
                    "transforms must hold AffineTransform or DeformableTransform, "
                    f"got {type(t).__name__}"
                )
            if t.ndim != self.ndim - 1:
                raise ValueError(
                    f"transforms of the planes of {self.ndim}D images must have "
                    f"{self.ndim - 1} dimensions, got {t.ndim}"
                )
            models.add(t.model)
        if len(models) != 1 or "translation" in models:
            raise ValueError(
                "transforms must all be of one model other than translation (a translation "
                f"per plane is given by shifts), got {sorted(models)}"
            )
        (self.model,) = models

    @property
    def ndim(self) -> int:
        """Number of axes of the registered images."""
        return len(self.shift)

    @property
    def plane_axes(self) -> tuple[int, ...]:
        """Per plane: the axes within a plane (all but `per_plane`), as stack axes."""
        return tuple(ax for ax in range(self.ndim) if ax != self.per_plane)

    def plane_registration(self, t: int) -> Registration:
        """Plane `t` of a per-plane registration, as the registration of that plane alone.

        It has ``ndim - 1`` axes (the plane axis left out): a translation, or the plane's
        transform with its displacement at the centre as `shift`. Its `quality` and
        `tiles` are the plane's; `reliable` and `method` the stack's.

        Examples
        --------
        >>> import numpy as np
        >>> from napari_ncc import Registration
        >>> reg = Registration(shift=(0, 1, 0), shifts=np.array([[0, 1, 0], [0, 2, -1]]),
        ...                    per_plane=0)
        >>> reg.plane_registration(1).shift
        (2.0, -1.0)
        """
        if self.shifts is None:
            raise ValueError("plane_registration needs a per-plane registration (per_plane)")
        n = len(self.shifts)
        if isinstance(t, bool) or not isinstance(t, Integral) or not -n <= t < n:
            raise ValueError(f"plane must be an integer in [{-n}, {n}), got {t!r}")
        quality = self.quality if self.qualities is None else self.qualities[t]
        tiles = self.tiles[t] if isinstance(self.tiles, tuple) else None
        return Registration(
            shift=tuple(np.delete(self.shifts[t], self.per_plane)),
            quality=float(quality),
            reliable=self.reliable,
            method=self.method,
            transform=None if self.transforms is None else self.transforms[t],
            tiles=tiles,
        )

    @property
    def matrix(self) -> np.ndarray:
        """Homogeneous matrix from reference-grid to moving-image coordinates.

        ``moving = matrix @ [*reference, 1]`` (the convention of
        ``scipy.ndimage.affine_transform``): for a translation, the identity with
        ``-shift`` in the last column; for a deformable transform, its linear part (the
        field comes on top). Per plane: one matrix per plane, shape
        ``(n_planes, ndim + 1, ndim + 1)``, over the stack's axes (the identity along the
        plane axis): ``matrix[t]`` maps the points of plane ``t``.

        Examples
        --------
        >>> from napari_ncc import Registration
        >>> Registration(shift=(2.0, -0.5)).matrix
        array([[ 1. ,  0. , -2. ],
               [ 0. ,  1. ,  0.5],
               [ 0. ,  0. ,  1. ]])
        """
        if self.transform is not None:
            # Deformable: its affine part (the field comes on top).
            return np.array(self.transform.matrix)
        shifts = np.array([self.shift]) if self.shifts is None else self.shifts
        matrices = np.tile(np.eye(self.ndim + 1), (len(shifts), 1, 1))
        matrices[:, : self.ndim, self.ndim] = -shifts
        if self.transforms is not None:
            rows = [*self.plane_axes, self.ndim]
            for t, transform in enumerate(self.transforms):
                matrices[t][np.ix_(rows, rows)] = transform.matrix
        matrices += 0.0  # -0.0 -> 0.0
        return matrices[0] if self.shifts is None else matrices

    def moving_coordinates(self, points) -> np.ndarray:
        """Where points of the reference grid are in the moving image.

        A pixel at `points` of :meth:`apply`'s output interpolates the moving image at
        the returned coordinates.

        Parameters
        ----------
        points : array_like, shape (..., ndim)
            Coordinates on the reference grid (pixels, any real values). Per plane: the
            coordinate along the plane axis must be a plane index (an integer); each
            point goes through its plane's shift or transform, and keeps its plane index.

        Returns
        -------
        ndarray of float64, same shape
            Coordinates in the moving image (``points - shift``; per plane, each point's
            plane's shift; other models: ``transform.moving_coordinates(points)``).

        Examples
        --------
        >>> from napari_ncc import Registration
        >>> Registration(shift=(2.0, -0.5)).moving_coordinates([[10, 10], [0, 3.5]])
        array([[ 8. , 10.5],
               [-2. ,  4. ]])
        """
        points = np.asarray(points, dtype=np.float64)
        if points.ndim == 0 or points.shape[-1] != self.ndim:
            raise ValueError(
                f"points must have shape (..., {self.ndim}) (one coordinate per axis), "
                f"got shape {points.shape}"
            )
        if self.transform is not None:
            return self.transform.moving_coordinates(points)
        if self.shifts is None:
            return points - np.asarray(self.shift)
        planes = points[..., self.per_plane]
        n = len(self.shifts)
        index = np.rint(planes)
        if not np.all((index == planes) & (index >= 0) & (index < n)):
            raise ValueError(
                f"points along the plane axis {self.per_plane} must be plane indices "
                f"(integers in [0, {n}))"
            )
        index = index.astype(np.intp)
        if self.transforms is None:
            return points - self.shifts[index]
        flat, index = points.reshape(-1, self.ndim), index.ravel()
        out = flat.copy()
        axes = list(self.plane_axes)
        for t in np.unique(index):
            at = index == t
            out[np.ix_(at, axes)] = self.transforms[t].moving_coordinates(flat[np.ix_(at, axes)])
        return out.reshape(points.shape)

    def check_shape(self, shape, name: str = "image") -> tuple[int, ...]:
        """`shape` as a tuple of ints; raise if it cannot be a shape of registered images.

        It must have :attr:`ndim` axes and, per plane, as many planes as :attr:`shifts`.
        `name` is the argument named in the error.
        """
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
        """The moving image resampled onto the reference grid.

        A translation shifts it (``scipy.ndimage.shift``); other models warp it
        (:func:`napari_ncc._warp.warp`: output pixel ``p`` is the moving image at
        ``moving_coordinates(p)``).

        Parameters
        ----------
        image : ndarray or dask.array.Array
            The moving image (or any image on its grid: another channel, a label image
            with ``order=0``). Not modified.
        order : int, optional
            Spline interpolation order (0-5), as in ``scipy.ndimage.shift``.
        mode : str, optional
            How values beyond the moving image are filled, as in ``scipy.ndimage.shift``.
            Those pixels are outside :meth:`valid_mask`.

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
        order = check_order(order)
        if not is_dask(image):
            image = np.asarray(image)
        check_image(image, "image")
        shape = self.check_shape(image.shape)
        if self.shifts is not None:
            return self._apply_planes(image, shape, order=order, mode=mode)
        if self.transform is not None:
            from ._warp import warp

            return warp(image, self.transform, order=order, mode=mode)
        if is_dask(image):
            # No astype here: shift_lazy already gives floats (float32 for integer, bool and
            # float16 input, as interpolated_dtype), and a cast would hide the source it
            # reads each block from.
            return _shift_lazy(image, self.shift, order=order, mode=mode)
        dtype = interpolated_dtype(image.dtype)
        return ndi.shift(image.astype(dtype, copy=False), self.shift, order=order, mode=mode)

    def _apply_planes(self, image, shape, *, order, mode):
        """:meth:`apply`, plane by plane (each plane lazily for Dask input)."""
        planes = (
            self.plane_registration(t).apply(
                image[plane_index(self.ndim, self.per_plane, t)], order=order, mode=mode
            )
            for t in range(len(self.shifts))
        )
        if is_dask(image):
            import dask.array as da

            return da.stack(list(planes), axis=self.per_plane)
        out = np.empty(shape, dtype=interpolated_dtype(image.dtype))
        for t, plane in enumerate(planes):
            out[plane_index(self.ndim, self.per_plane, t)] = plane
        return out

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

        Raises
        ------
        ValueError
            For a model other than translation: its valid pixels are not a box (a rotated
            rectangle, ...); use :meth:`valid_mask`.

        Examples
        --------
        >>> from napari_ncc import Registration
        >>> Registration(shift=(2.5, -3.0)).valid_region((10, 10))
        (slice(3, 10, None), slice(0, 7, None))
        """
        shape = self.check_shape(shape, "shape")
        if self.model != "translation":
            raise ValueError(
                f"valid_region is a box of a translation; the valid pixels of a "
                f"{self.model!r} registration are given by valid_mask(shape)"
            )
        if self.shifts is None:
            if plane is not None:
                raise ValueError("plane is only meaningful for a per-plane registration")
            return valid_slices(shape, self.shift)
        if plane is not None:
            n = len(self.shifts)
            if isinstance(plane, bool) or not isinstance(plane, Integral) or not -n <= plane < n:
                raise ValueError(f"plane must be an integer in [{-n}, {n}), got {plane!r}")
            return valid_slices(shape, self.shifts[plane], skip=self.per_plane)
        lo = [0] * len(shape)
        hi = list(shape)
        for plane_shift in self.shifts:
            for ax, sl in enumerate(valid_slices(shape, plane_shift, skip=self.per_plane)):
                lo[ax] = max(lo[ax], sl.start)
                hi[ax] = min(hi[ax], sl.stop)
        return tuple(slice(a, max(a, b)) for a, b in zip(lo, hi, strict=True))

    def valid_mask(self, shape, *, chunks=None):
        """Which pixels of the registered image come from inside the moving image.

        Translation: :meth:`valid_region` as a mask (per plane for a per-plane
        registration). Other models: the pixels whose :meth:`moving_coordinates` lie
        inside the moving image (:func:`napari_ncc._warp.covered`), per plane with
        `transforms`.

        Parameters
        ----------
        shape : tuple of int
            Shape of the registered images.
        chunks : optional
            If given, a lazy Dask mask with these chunks, each block computed alone.

        Returns
        -------
        ndarray or dask.array.Array of bool, of shape `shape`

        Examples
        --------
        >>> from napari_ncc import Registration
        >>> Registration(shift=(1.0, 0.0)).valid_mask((3, 2)).astype(int).tolist()
        [[0, 0], [1, 1], [1, 1]]
        """
        shape = self.check_shape(shape, "shape")
        if chunks is not None:
            import dask.array as da

            chunks = da.core.normalize_chunks(chunks, shape)
            # block_id, not block_info: Dask builds block_info for every block up front.
            starts = [np.cumsum((0, *c)) for c in chunks]

            def block(block_id=None):
                start = [int(s[i]) for s, i in zip(starts, block_id, strict=True)]
                block_shape = [c[i] for c, i in zip(chunks, block_id, strict=True)]
                return self._valid_block(shape, start, block_shape)

            meta = np.empty((0,) * len(shape), dtype=bool)
            return da.map_blocks(block, chunks=chunks, dtype=bool, meta=meta)
        if self.shifts is not None:
            mask = np.empty(shape, dtype=bool)
            plane_shape = np.delete(shape, self.per_plane)
            for t in range(len(self.shifts)):
                index = plane_index(self.ndim, self.per_plane, t)
                mask[index] = self.plane_registration(t).valid_mask(plane_shape)
            return mask
        if self.transform is not None:
            from ._warp import covered

            return covered(self.transform, shape)
        mask = np.zeros(shape, dtype=bool)
        mask[self.valid_region(shape)] = True
        return mask

    def _valid_block(self, shape, start, block_shape) -> np.ndarray:
        """:meth:`valid_mask` over the block ``start + [0, block_shape)``."""
        if self.shifts is not None:
            axis = self.per_plane
            plane_shape, plane_start, plane_block = (
                np.delete(x, axis) for x in (shape, start, block_shape)
            )
            mask = np.empty(block_shape, dtype=bool)
            for local in range(block_shape[axis]):
                plane = self.plane_registration(start[axis] + local)
                mask[plane_index(self.ndim, axis, local)] = plane._valid_block(
                    tuple(plane_shape), plane_start, plane_block
                )
            return mask
        if self.transform is not None:
            from ._warp import covered_block

            return covered_block(self.transform, start, block_shape, shape)
        region = self.valid_region(shape)
        lo, hi = [sl.start for sl in region], [sl.stop for sl in region]
        return inside_box(block_shape, start, lo, hi)

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
            "model": self.model,
            "transform": None if self.transform is None else self.transform.to_dict(),
            "transforms": None
            if self.transforms is None
            else [t.to_dict() for t in self.transforms],
            "tiles": _tile_counts(self.tiles),
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
            model=d.get("model", "translation"),
            transform=None if d.get("transform") is None else transform_from_dict(d["transform"]),
            transforms=None
            if d.get("transforms") is None
            else tuple(transform_from_dict(t) for t in d["transforms"]),
        )


def _tile_counts(tiles) -> dict | None:
    """How many tiles a fit used and rejected (summed over the planes' reports)."""
    if tiles is None:
        return None
    reports = tiles if isinstance(tiles, tuple) else (tiles,)
    counts = {
        "count": sum(len(r.centers) for r in reports),
        "rejected": sum(int(r.rejected.sum()) for r in reports),
    }
    if isinstance(tiles, tuple):
        counts["planes"] = len(reports)
    return counts


def _shift_lazy(image, shift, *, order, mode):
    from ._shift import shift_lazy

    return shift_lazy(image, tuple(float(s) for s in shift), order=order, mode=mode)
