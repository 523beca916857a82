"""Registering two images: :func:`register`, its plan, and the per-plane strategy.

:func:`register` validates its arguments once into a :class:`RegistrationPlan`, then
estimates one translation for the whole image, or one per plane of a stack (read a slab
of chunks at a time for Dask stacks); or another model's transform for a 2D image, or
one per 2D plane of a stack. Each image or plane is registered in memory
(:mod:`._phase_correlation`) or, when too large, by a coarse estimate refined on a few
full-resolution tiles (:mod:`._large_image`). The result is a :class:`Registration`.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from numbers import Integral

import numpy as np

from ._estimate_transform import estimate_transform
from ._large_image import N_TILES, estimate_large, is_large, large_image_steps, read_regions
from ._large_transform import estimate_large_transform, large_transform_steps
from ._local_shifts import pearson
from ._phase_correlation import (
    RELIABLE_QUALITY,
    Estimate,
    PhaseCorrelation,
    check_finite,
    check_normalization,
    estimate_translation,
)
from ._regions import plane_index
from ._registration import Registration, RegistrationWarning
from ._transform import MODELS
from ._validation import (
    check_image,
    check_per_plane,
    check_same_shape,
    is_dask,
    normalize_axes,
)
from ._warp import covered, warp

__all__ = ["RegistrationPlan", "is_pyramid", "plan_registration", "register"]

#: Bytes of planes read at once by the per-plane registration of a Dask stack.
PLANE_BATCH_BYTES = 256 * 2**20


@dataclass(frozen=True)
class RegistrationPlan:
    """Validated arguments of :func:`register` (see there for their meaning).

    Attributes
    ----------
    shape : tuple of int
        Shape of both images (full resolution).
    axes : tuple of int
        Registered axes, non-negative and increasing (never `per_plane`).
    per_plane : int or None
        Axis of the planes registered separately.
    reference_plane : int or None
        With `per_plane`: the plane of the reference every plane is registered to.
    max_size : int
        Images (planes) larger than this along the registered axes take the large-image
        path.
    n_tiles : int
        Full-resolution tiles of the large-image path.
    estimator : PhaseCorrelation
        Options of the in-memory estimator.
    """

    shape: tuple[int, ...]
    axes: tuple[int, ...]
    per_plane: int | None
    reference_plane: int | None
    max_size: int
    n_tiles: int
    estimator: PhaseCorrelation

    @property
    def plane_axes(self) -> tuple[int, ...]:
        """The registered axes within a plane (`axes` with `per_plane` removed)."""
        if self.per_plane is None:
            return self.axes
        return tuple(ax - (ax > self.per_plane) for ax in self.axes)


def plan_registration(
    shape0: Sequence[int],
    shape1: Sequence[int],
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
) -> RegistrationPlan:
    """Validate the arguments of :func:`register` for images of the given shapes.

    Raises
    ------
    ValueError, TypeError
        The first argument that is wrong, by name, with what would be right.

    Examples
    --------
    >>> plan = plan_registration((5, 64, 64), (5, 64, 64), per_plane=0, reference_plane=-1)
    >>> plan.axes, plan.plane_axes, plan.reference_plane
    ((1, 2), (0, 1), 4)
    """
    check_same_shape(shape0, shape1)
    shape = tuple(int(n) for n in shape0)
    ndim = len(shape)
    upsample_factor = _check_int(upsample_factor, "upsample_factor", 1)
    max_size = _check_int(max_size, "max_size", 16)
    n_tiles = _check_int(n_tiles, "n_tiles", 1)
    normalization = check_normalization(normalization)
    per_plane = check_per_plane(per_plane, ndim)
    if axes is None:
        axes = tuple(ax for ax in range(ndim) if ax != per_plane)
    else:
        axes = normalize_axes(axes, ndim)
        if per_plane in axes:
            raise ValueError(
                f"axes {axes} contains the per_plane axis {per_plane}: planes along it are "
                "registered separately, so it cannot be registered too; leave it out of axes"
            )
    if reference_plane is not None:
        if per_plane is None:
            raise ValueError("reference_plane needs per_plane (the axis of the planes)")
        n = shape[per_plane]
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
    estimator = PhaseCorrelation(upsample_factor, normalization, bool(disambiguate), bool(refine))
    return RegistrationPlan(
        shape, tuple(sorted(axes)), per_plane, reference_plane, max_size, n_tiles, estimator
    )


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
    model: str = "translation",
) -> Registration:
    """Subpixel transform (by default a translation) that registers `moving` onto `reference`.

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
        after every step, last ``(total, total)``. A step is an image or plane
        registered in memory, and on the large-image path (per image or plane) a slab of
        the block-mean pass or one full-resolution tile. `total` is fixed from the first
        call; steps that turn out unnecessary are skipped at once (`done` jumps). Its
        return value is ignored; an exception it raises stops the registration (a way to
        cancel it). Called in the thread that runs :func:`register`.
    model : {"translation", "rigid", "similarity", "affine", "deformable"}, optional
        The transform estimated. Other models than "translation" are estimated for 2D
        images and 3D volumes, whole (no `axes`): in memory by
        :func:`napari_ncc._estimate_transform.estimate_transform` up to ``max_size**2``
        pixels (Dask input is computed); larger 2D images and pyramids without loading
        them (:mod:`napari_ncc._large_transform`: the coarse level, then a sparse grid of
        full-resolution tiles; `progress` steps are the block-mean slabs, the coarse
        estimate, and batches of 64 tiles read or measured); the result's ``transform``
        maps reference to moving pixel coordinates, (row, col) order. With `per_plane`,
        for each 2D plane (in memory) of a 3D stack (read one plane at a time): the
        result's ``transforms`` holds one per plane (see :class:`Registration`).

    Returns
    -------
    registration : Registration
        ``scipy.ndimage.shift(moving, registration.shift)`` ~ `reference`; see
        :meth:`Registration.apply` and :meth:`Registration.valid_region`.

    Raises
    ------
    ValueError, TypeError
        Shapes or dimensions that differ, NaN or infinite values, bad `axes`,
        `per_plane`, `reference_plane`, `upsample_factor`, `normalization`, `max_size`,
        `n_tiles`, `progress` or `model` (also: a model other than "translation" for
        input it does not support yet).

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

    Per plane, with a rotating drift (plane ``t`` rotated by ``t`` degrees):

    >>> from napari_ncc._transform import AffineTransform
    >>> from napari_ncc._warp import warp
    >>> plane = data.astronaut()[100:356, 150:406, 1].astype(float)
    >>> drift = [AffineTransform.from_rotation(t, center=(128, 128)) for t in range(3)]
    >>> stack = np.stack([warp(plane, d.inverse(), order=3) for d in drift])
    >>> reg = register(np.stack([plane] * 3), stack, model="rigid", per_plane=0)
    >>> np.round([t.angle for t in reg.transforms], 1) + 0.0  # + 0.0: never -0.0
    array([0., 1., 2.])
    """
    ref_levels = _as_levels(reference, "reference")
    mov_levels = _as_levels(moving, "moving")
    plan = plan_registration(
        ref_levels[0].shape,
        mov_levels[0].shape,
        upsample_factor=upsample_factor,
        axes=axes,
        per_plane=per_plane,
        reference_plane=reference_plane,
        normalization=normalization,
        disambiguate=disambiguate,
        refine=refine,
        max_size=max_size,
        n_tiles=n_tiles,
    )
    if progress is not None and not callable(progress):
        raise TypeError(
            f"progress must be a callable progress(done, total) or None, got {progress!r}"
        )
    model = _check_model(model)
    if model != "translation":
        _check_model_support(model, plan)
        if plan.per_plane is not None:
            reg = _register_planes_model(ref_levels[0], mov_levels[0], model, plan, progress)
        elif len(plan.shape) == 2 and (
            len(ref_levels) > 1 or is_large(plan.shape, plan.axes, plan.max_size)
        ):
            reg = _register_model_large(ref_levels, mov_levels, model, plan, progress)
        else:
            reg = _register_model(ref_levels[0], mov_levels[0], model, progress)
    elif plan.per_plane is None:
        reg = _register_whole(ref_levels, mov_levels, plan, progress)
    else:
        reg = _register_planes(ref_levels, mov_levels, plan, progress)
    if not reg.reliable:
        warnings.warn(
            "registration is unreliable: " + "; ".join(reg.notes),
            RegistrationWarning,
            stacklevel=2,
        )
    return reg


def _check_model(model) -> str:
    if model not in MODELS:
        raise ValueError(f"model must be one of {', '.join(map(repr, MODELS))}, got {model!r}")
    return model


def _check_model_support(model: str, plan: RegistrationPlan) -> None:
    """Raise unless the images are ones a non-translation `model` is estimated on now."""
    if plan.per_plane is not None:
        # Per plane: every plane must be an image the model is estimated on.
        plane_shape = tuple(n for ax, n in enumerate(plan.shape) if ax != plan.per_plane)
        if len(plane_shape) != 2 or plan.plane_axes != (0, 1):
            raise ValueError(
                f"model={model!r} with per_plane needs 2D planes, all of whose axes are "
                f"registered (a 3D stack), got planes of shape {plane_shape} along axis "
                f"{plan.per_plane} of images of shape {plan.shape}, registered axes "
                f"{plan.axes}; use model='translation'"
            )
        if is_large(plane_shape, (0, 1), plan.max_size):
            raise ValueError(
                f"model={model!r} with per_plane is supported for planes of up to "
                f"max_size**2 = {plan.max_size**2} pixels, got planes of shape "
                f"{plane_shape}; use model='translation' or a larger max_size"
            )
        plan = replace(plan, shape=plane_shape, axes=(0, 1), per_plane=None, reference_plane=None)
    if plan.axes != tuple(range(len(plan.shape))):
        raise ValueError(
            f"model={model!r} is supported for 2D images (any size, pyramids and Dask "
            "arrays included), 3D volumes and per-plane stacks, registered whole (all "
            f"axes), got axes {plan.axes}; use model='translation'"
        )
    if len(plan.shape) not in (2, 3):
        raise ValueError(
            f"model={model!r} is supported for 2D images and 3D volumes (plane, row, "
            f"column), got {len(plan.shape)}D images of shape {plan.shape}; use "
            "model='translation'"
        )
    if len(plan.shape) == 3 and is_large(plan.shape, plan.axes, plan.max_size):
        raise ValueError(
            f"model={model!r} on 3D volumes is supported up to max_size**2 = "
            f"{plan.max_size**2} voxels, got volumes of shape {plan.shape}; use "
            "model='translation' or a larger max_size"
        )
    # Larger images (and pyramids) take the large-image path: _register_model_large.


def _register_model_large(ref_levels, mov_levels, model, plan, progress) -> Registration:
    """A non-translation `model` for a 2D image too large for memory (or a pyramid)."""
    steps = large_transform_steps(ref_levels, mov_levels, model, max_size=plan.max_size)
    tracker = _Progress(progress, steps)
    reg = estimate_large_transform(
        ref_levels,
        mov_levels,
        model,
        max_size=plan.max_size,
        on_step=lambda n=1: tracker.reach(tracker.done + n),
    )
    tracker.reach(steps)
    return reg


def _register_model(reference, moving, model: str, progress) -> Registration:
    """A rigid, similarity, affine or deformable transform for a whole 2D image or 3D volume."""
    tracker = _Progress(progress, 1)
    reference = np.asarray(reference, dtype=np.float64)
    moving = np.asarray(moving, dtype=np.float64)
    check_finite(reference, "reference")
    check_finite(moving, "moving")
    with warnings.catch_warnings(record=True) as caught:
        # Its warnings become the result's notes: register warns once, below.
        warnings.simplefilter("always", RegistrationWarning)
        est = estimate_transform(reference, moving, model)
    notes = [str(w.message) for w in caught if issubclass(w.category, RegistrationWarning)]
    for w in caught:
        if not issubclass(w.category, RegistrationWarning):
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    transform = est.transform
    # (volumes: no Fourier–Mellin in 3D, a phase-correlation translation starts the tiles)
    coarse = "fourier-mellin" if reference.ndim == 2 else "phase correlation"
    warped = warp(moving, transform, order=3)
    mask = covered(transform, reference.shape)
    quality = pearson(reference[mask], warped[mask]) if mask.sum() > 1 else 0.0
    if abs(quality) < RELIABLE_QUALITY:
        notes.append(f"low correlation after alignment ({quality:.3f})")
    centre = (np.array(reference.shape, dtype=np.float64) - 1) / 2
    tracker.reach(1)
    return Registration(
        # The displacement at the image centre, in the convention of a translation.
        shift=tuple(centre - transform.moving_coordinates(centre[None])[0]),
        quality=quality,
        reliable=not notes,
        method=f"{coarse} + {len(est.tiles.centers)} tiles x {est.rounds} rounds",
        notes=tuple(notes),
        transform=transform,
        tiles=est.tiles,
    )


def _register_planes_model(reference, moving, model: str, plan, progress) -> Registration:
    """A rigid, similarity, affine or deformable transform per 2D plane of a stack."""
    axis = plan.per_plane
    tracker = _Progress(progress, plan.shape[axis])
    planes = []
    for t, ref_t, mov_t in _plane_pairs(reference, moving, plan):
        planes.append(_register_model(ref_t, mov_t, model, None))
        tracker.reach(t + 1)
    shifts = np.array([np.insert(p.shift, axis, 0.0) for p in planes])
    qualities = np.array([p.quality for p in planes])
    methods = sorted({p.method for p in planes})
    return Registration(
        shift=tuple(np.median(shifts, axis=0)),
        shifts=shifts,
        per_plane=axis,
        reference_plane=plan.reference_plane,
        quality=float(qualities.min()),
        qualities=qualities,
        reliable=all(p.reliable for p in planes),
        method="per plane: " + (methods[0] if len(methods) == 1 else f"{methods[0]}, ..."),
        notes=_plane_notes([(p.reliable, p.notes) for p in planes]),
        transforms=tuple(p.transform for p in planes),
        tiles=tuple(p.tiles for p in planes),
    )


def _plane_notes(planes) -> tuple[str, ...]:
    """The note of a per-plane registration: ``planes`` is ``(reliable, notes)`` per plane."""
    unreliable = [t for t, (reliable, _) in enumerate(planes) if not reliable]
    if not unreliable:
        return ()
    first = "; ".join(planes[unreliable[0]][1])
    return (
        f"{len(unreliable)} of {len(planes)} planes unreliable (first: plane "
        f"{unreliable[0]}: {first})",
    )


def is_pyramid(image) -> bool:
    """Whether `image` is a pyramid: a non-empty list or tuple of arrays (full resolution
    first, as napari's multiscale data)."""
    return (
        isinstance(image, (list, tuple))
        and bool(image)
        and all(hasattr(x, "shape") for x in image)
    )


def _register_whole(ref_levels, mov_levels, plan: RegistrationPlan, progress) -> Registration:
    """One translation for the whole image."""
    steps = _steps(ref_levels, mov_levels, plan.axes, plan)
    tracker = _Progress(progress, steps)
    est, method = _register_one(ref_levels, mov_levels, plan.axes, plan, tracker)
    tracker.reach(steps)
    return Registration(
        shift=tuple(est.shift),
        quality=est.quality,
        reliable=est.reliable,
        error=est.error,
        peak_ratio=est.peak_ratio,
        method=method,
        notes=tuple(est.notes),
    )


def _register_planes(ref_levels, mov_levels, plan: RegistrationPlan, progress) -> Registration:
    """One translation per plane along ``plan.per_plane``."""
    per_plane, reference_plane, shape0 = plan.per_plane, plan.reference_plane, plan.shape
    ref0, mov0 = ref_levels[0], mov_levels[0]
    plane_axes = plan.plane_axes
    n_planes = shape0[per_plane]
    ests = []
    methods = set()
    plane_shape = tuple(n for ax, n in enumerate(shape0) if ax != per_plane)
    batched = (
        len(ref_levels) == len(mov_levels) == 1
        and (is_dask(ref0) or is_dask(mov0))
        and not is_large(plane_shape, plane_axes, plan.max_size)
    )
    plane_levels = (
        [_take(level, per_plane, 0, shape0) for level in ref_levels],
        [_take(level, per_plane, 0, shape0) for level in mov_levels],
    )
    steps = 1 if batched else _steps(*plane_levels, plane_axes, plan)
    tracker = _Progress(progress, n_planes * steps)
    if batched:
        for t, ref_t, mov_t in _plane_pairs(ref0, mov0, plan):
            est, method = _register_one([ref_t], [mov_t], plane_axes, plan, tracker)
            ests.append(est)
            methods.add(method)
            tracker.reach((t + 1) * steps)
    for t in range(n_planes if not batched else 0):
        source = t if reference_plane is None else reference_plane
        ref_t = [_take(level, per_plane, source, shape0) for level in ref_levels]
        mov_t = [_take(level, per_plane, t, shape0) for level in mov_levels]
        est, method = _register_one(ref_t, mov_t, plane_axes, plan, tracker)
        ests.append(est)
        methods.add(method)
        tracker.reach((t + 1) * steps)
    shifts = np.array([np.insert(e.shift, per_plane, 0.0) for e in ests])
    qualities = np.array([e.quality for e in ests])
    return Registration(
        shift=tuple(np.median(shifts, axis=0)),
        shifts=shifts,
        per_plane=per_plane,
        reference_plane=reference_plane,
        quality=float(qualities.min()),
        qualities=qualities,
        reliable=all(e.reliable for e in ests),
        error=float(np.nanmax([e.error for e in ests])) if ests else float("nan"),
        peak_ratio=float(min(e.peak_ratio for e in ests)),
        method="per plane: " + ", ".join(sorted(methods)),
        notes=_plane_notes([(e.reliable, e.notes) for e in ests]),
    )


def _plane_pairs(reference, moving, plan: RegistrationPlan):
    """``(t, reference plane, moving plane)`` in memory, for every plane t in order.

    Dask stacks are read a slab of chunks at a time, so that a chunk holding several
    planes is read once, not once per plane; the reference plane is read once.
    """
    axis, ndim = plan.per_plane, len(plan.shape)
    fixed = None
    if plan.reference_plane is not None:
        (fixed,) = read_regions([(reference, plane_index(ndim, axis, plan.reference_plane))])
    chunked = moving if is_dask(moving) else reference
    if is_dask(chunked):
        plane_bytes = math.prod(n for ax, n in enumerate(plan.shape) if ax != axis) * 8
        batches = _plane_batches(chunked, axis, plane_bytes)
    else:
        batches = [(t, t + 1) for t in range(plan.shape[axis])]
    for t0, t1 in batches:
        slab = plane_index(ndim, axis, slice(t0, t1))
        if fixed is None:
            ref_slab, mov_slab = read_regions([(reference, slab), (moving, slab)])
        else:
            (mov_slab,) = read_regions([(moving, slab)])
        for t in range(t0, t1):
            local = plane_index(ndim, axis, t - t0)
            yield t, fixed if fixed is not None else ref_slab[local], mov_slab[local]


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
    return level[plane_index(len(level.shape), axis, i)]


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


def _steps(ref_levels, mov_levels, axes, plan: RegistrationPlan) -> int:
    """Progress steps of :func:`_register_one` on these levels."""
    if is_large(ref_levels[0].shape, axes, plan.max_size):
        return large_image_steps(
            ref_levels, mov_levels, axes, max_size=plan.max_size, n_tiles=plan.n_tiles
        )
    return 1


def _register_one(
    ref_levels, mov_levels, axes, plan: RegistrationPlan, progress: _Progress
) -> tuple[Estimate, str]:
    """Register one image (or plane) pair, given as pyramid levels, along `axes`."""
    ref0, mov0 = ref_levels[0], mov_levels[0]
    if is_large(ref0.shape, axes, plan.max_size):
        return estimate_large(
            ref_levels,
            mov_levels,
            axes,
            max_size=plan.max_size,
            n_tiles=plan.n_tiles,
            options=plan.estimator,
            on_step=progress.advance,
        )
    ref, mov = read_regions([(ref0, ()), (mov0, ())])
    check_finite(ref, "reference")
    check_finite(mov, "moving")
    return estimate_translation(ref, mov, axes, plan.estimator), plan.estimator.method


def _as_levels(image, name: str) -> list:
    """The image's resolution levels (full resolution first); one level if not a pyramid."""
    if is_pyramid(image):
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


def _check_int(value, name: str, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, Integral):
        raise TypeError(f"{name} must be an integer, got {value!r}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return int(value)
