"""The whole job in one call: register, then map the local NCC on the registered image.

:func:`ncc_confidence` registers the moving image onto the reference (or takes a
registration it is given), computes the local normalized cross-correlation of the reference
and the *registered* moving image, and writes `fill_value` wherever a window reaches pixels
that were shifted in from outside the moving image, so that made-up data never looks
confident. NumPy in, NumPy out; Dask in, lazy Dask out.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy import ndimage as ndi

from ._lazy import local_ncc
from ._ncc import check_mask, plan_ncc
from ._regions import inside_box
from ._register import is_pyramid
from ._register import register as _register
from ._registration import Registration
from ._validation import check_image, check_per_plane, check_same_shape, is_dask, normalize_axes

__all__ = ["ncc_confidence"]


def ncc_confidence(
    reference,
    moving,
    *,
    radius: int | Sequence[int] = 3,
    register: bool = True,
    window: str = "box",
    mode: str = "reflect",
    fill_value: float = 0.0,
    axes: int | Sequence[int] | None = None,
    per_plane: int | None = None,
    reference_plane: int | None = None,
    upsample_factor: int = 20,
    registration: Registration | None = None,
    mask=None,
    min_fraction: float = 0.5,
    chunks=None,
    model: str = "translation",
):
    """Register `moving` onto `reference`, then map their local NCC.

    Parameters
    ----------
    reference, moving : array_like or dask.array.Array, or list of arrays
        Images of the same shape (any real dtype). Not modified. A list is a pyramid
        (full resolution first): its levels speed up the registration of huge images
        (see :func:`napari_ncc.register`); the map is computed at full resolution.
    radius : int or sequence of int, optional
        NCC window half-width (see :func:`napari_ncc.local_ncc`).
    register : bool, optional
        Register first (the default). False compares the images as they are.
    window, mode : str, optional
        NCC window ("box" or "gaussian") and image-border mode, as in
        :func:`napari_ncc.local_ncc`.
    fill_value : float, optional
        Written where a window is flat and where it reaches pixels of the registered
        image that did not come from inside the moving image.
    axes : int or sequence of int, optional
        Axes of the NCC window, and the axes registered (without `per_plane`). By default
        all axes, except `per_plane` when it is given.
    per_plane : int, optional
        Register every plane along this axis separately (see
        :func:`napari_ncc.register`); each plane is shifted (or, with `model`,
        transformed) by its own shift (transform).
    reference_plane : int, optional
        With `per_plane`: register every plane to this plane of `reference` (drift
        correction) and correlate every registered plane with it.
    upsample_factor : int, optional
        Passed to :func:`napari_ncc.register`.
    registration : Registration, optional
        Use this registration instead of estimating one (`register` is then ignored).
    mask : array_like or dask.array.Array of bool, optional
        True where the reference's pixels are data (see :func:`napari_ncc.local_ncc`). It
        is combined with the region the registered moving image covers, and every window
        is computed over its pixels that are both (see Notes). Not used by the
        registration.
    min_fraction : float, optional
        With a mask: the fraction of a window's pixels that must be data, in (0, 1].
    chunks : int, tuple or str, optional
        Blocks of the lazy map (Dask input only), as in :func:`napari_ncc.local_ncc`.
    model : {"translation", "rigid", "similarity", "affine", "deformable"}, optional
        The transform registered (see :func:`napari_ncc.register` for the images each
        model supports). Only with ``register=True`` (an error with ``register=False``,
        or with a `registration` of another model).

    Returns
    -------
    ncc : ndarray or dask.array.Array of float32
        The local NCC of `reference` and the registered `moving` image: values in
        [-1, 1], `fill_value` where undefined. Lazy for Dask input.
    registration : Registration or None
        The registration used (None when ``register=False`` and none was given).

    Notes
    -----
    A pixel of the registered image is valid when it interpolates the moving image
    inside its bounds (:meth:`Registration.valid_region`). Along every windowed axis on
    which the shift cuts the valid region, it is shrunk by the radius, so a window that
    touches invalid pixels gets `fill_value`. Along a side the shift does not cut, the
    image border is handled by `mode` as in :func:`napari_ncc.local_ncc`. For the other
    models the valid pixels are :meth:`Registration.valid_mask` (not a box; per plane
    with `per_plane`): a pixel gets `fill_value` when its window holds any pixel outside
    it (the mask eroded by the window).

    With a `mask`, the valid region is instead combined with it (``mask &
    registration.valid_mask(shape)``, per plane for a per-plane registration; built block
    by block for a Dask mask), so a window at the edge of the shifted-in band is computed
    over its valid pixels when at least `min_fraction` of them are valid, rather than
    filled whole. ``mask=np.ones(shape, bool)`` asks for that alone. Without a mask the
    band is filled whole, as before: the map then never rests on a part of a window.

    For Dask input, the registration reads the images as :func:`napari_ncc.register`
    does (bounded memory), and the map is built lazily: each block of the moving image
    is shifted as it is read (per plane: plane by plane), so storing the map holds only a
    few blocks in memory.

    Examples
    --------
    >>> import numpy as np
    >>> from scipy import ndimage
    >>> from skimage import data
    >>> from napari_ncc import ncc_confidence
    >>> reference = data.camera()[100:356, 100:356].astype(float)
    >>> moving = ndimage.shift(data.camera().astype(float), (2, -3))[100:356, 100:356]
    >>> ncc, reg = ncc_confidence(reference, moving, radius=3)
    >>> np.round(reg.shift, 2)
    array([-2.,  3.])
    >>> float(np.median(ncc[10:-10, 10:-10])) > 0.99
    True
    >>> float(ncc[:, :4].max())  # shifted in from outside moving: fill_value
    0.0
    """
    # Pyramids (lists of levels, full resolution first) help the registration; the map
    # is computed at full resolution.
    pyramids = reference, moving
    reference, moving = (_full_resolution(x) for x in pyramids)
    lazy = is_dask(reference) or is_dask(moving)
    if not lazy:
        reference = np.asarray(reference)
        moving = np.asarray(moving)
    check_image(reference, "reference")
    check_image(moving, "moving")
    check_same_shape(reference.shape, moving.shape)
    ndim = len(reference.shape)
    per_plane = check_per_plane(per_plane, ndim)
    if axes is None and per_plane is not None:
        axes = tuple(ax for ax in range(ndim) if ax != per_plane)
    # Validate the NCC arguments before the (possibly long) registration.
    plan = plan_ncc(
        reference.shape,
        moving.shape,
        radius,
        window=window,
        mode=mode,
        fill_value=fill_value,
        axes=axes,
        min_fraction=min_fraction,
    )
    if mask is not None:
        mask = mask if is_dask(mask) else np.asarray(mask)
        check_mask(mask, plan.shape)

    if registration is not None:
        if not isinstance(registration, Registration):
            raise TypeError(
                f"registration must be a Registration (from register), got "
                f"{type(registration).__name__}"
            )
        registration.check_shape(reference.shape, "reference")
        if model != "translation" and model != registration.model:
            raise ValueError(
                f"model={model!r} asks for a registration to be estimated, but the given "
                f"registration is a {registration.model!r} one: pass one or the other"
            )
    elif not register and model != "translation":
        raise ValueError(
            f"model={model!r} asks for a registration, but register=False compares the "
            "images as they are: pass register=True, or leave model out"
        )
    elif register:
        registered_axes = tuple(ax for ax in normalize_axes(axes, ndim) if ax != per_plane) or None
        registration = _register(
            *pyramids,
            axes=registered_axes,
            per_plane=per_plane,
            reference_plane=reference_plane,
            upsample_factor=upsample_factor,
            model=model,
        )

    options = dict(radius=radius, window=window, mode=mode, fill_value=fill_value, axes=axes)
    options.update(min_fraction=min_fraction, chunks=chunks)
    if registration is None:
        return local_ncc(reference, moving, mask=mask, **options), None
    if mask is not None:
        # The covered region is part of the mask: no band to fill afterwards.
        options["mask"] = _and_covered(mask, registration, plan.shape)

    compared = reference
    if registration.reference_plane is not None:
        compared = _broadcast_plane(
            reference, registration.per_plane, registration.reference_plane, lazy
        )
    if registration.model != "translation":
        ncc = local_ncc(compared, registration.apply(moving), **options)
        if mask is not None:  # the covered region is already part of the mask
            return ncc, registration
        return _fill_uncovered(ncc, registration, plan, fill_value), registration

    if lazy and registration.shifts is None:
        # Each block of the moving image is shifted as it is read.
        shift = registration.shift
        ncc = local_ncc(compared, moving, moving_shift=shift, **options)
    else:
        ncc = local_ncc(compared, registration.apply(moving), **options)
    if mask is not None:
        return ncc, registration
    return _fill_invalid(ncc, registration, plan, fill_value), registration


def _full_resolution(image):
    return image[0] if is_pyramid(image) else image


def _broadcast_plane(image, axis, index, lazy):
    """`image`'s plane `index` along `axis`, repeated over the axis (no copy)."""
    plane = [slice(None)] * len(image.shape)
    plane[axis] = slice(index, index + 1)
    plane = image[tuple(plane)]
    if lazy:
        import dask.array as da

        return da.broadcast_to(plane, image.shape, chunks=_plane_chunks(image, axis))
    return np.broadcast_to(plane, image.shape)


def _plane_chunks(image, axis):
    chunks = getattr(image, "chunks", None)
    if chunks is None:
        return None
    chunks = list(chunks)
    chunks[axis] = (1,) * image.shape[axis]
    return tuple(chunks)


def _valid_bounds(registration: Registration, shape, plan) -> tuple[np.ndarray, np.ndarray]:
    """Per plane (or one row), the [lo, hi) of the pixels whose windows see only valid data."""
    radius = dict(zip(plan.axes, plan.radius, strict=True))
    if registration.shifts is None:
        regions = [registration.valid_region(shape)]
    else:
        regions = [
            registration.valid_region(shape, plane=t) for t in range(shape[registration.per_plane])
        ]
    lo = np.zeros((len(regions), len(shape)), dtype=np.int64)
    hi = np.tile(np.array(shape, dtype=np.int64), (len(regions), 1))
    for t, region in enumerate(regions):
        for ax, (sl, n) in enumerate(zip(region, shape, strict=True)):
            r = radius.get(ax, 0)
            # Shrink only the sides the shift cuts: an image border stays a border (but
            # "wrap" reads across to the other side).
            cut = (sl.start > 0, sl.stop < n)
            if plan.mode == "wrap" and any(cut):
                cut = (True, True)
            lo[t, ax] = sl.start + r if cut[0] else 0
            hi[t, ax] = sl.stop - r if cut[1] else n
    depth = radius.get(registration.per_plane, 0) if registration.shifts is not None else 0
    if depth:
        # Windows that span planes see the valid regions of their neighbours too.
        n = len(regions)
        lo = np.array([lo[max(t - depth, 0) : t + depth + 1].max(axis=0) for t in range(n)])
        hi = np.array([hi[max(t - depth, 0) : t + depth + 1].min(axis=0) for t in range(n)])
    return lo, np.maximum(hi, lo)


def _and_covered(mask, registration: Registration, shape):
    """`mask` and the region the registered moving image covers; lazily for a Dask mask."""
    chunks = mask.chunks if is_dask(mask) else None
    return mask & registration.valid_mask(shape, chunks=chunks)


def _fill_block(block, lo, hi, per_plane, fill_value, location):
    """`block` (at `location`: start offsets) with `fill_value` outside the valid bounds."""
    if per_plane is None:
        inside = inside_box(block.shape, location, lo[0], hi[0])
    else:
        inside = np.zeros(block.shape, dtype=bool)
        plane_shape = np.delete(block.shape, per_plane)
        plane_location = np.delete(location, per_plane)
        for local in range(block.shape[per_plane]):
            t = location[per_plane] + local
            index = [slice(None)] * block.ndim
            index[per_plane] = local
            inside[tuple(index)] = inside_box(
                plane_shape,
                plane_location,
                np.delete(lo[t], per_plane),
                np.delete(hi[t], per_plane),
            )
    return np.where(inside, block, np.asarray(fill_value, dtype=block.dtype))


def _fill_invalid(ncc, registration: Registration, plan, fill_value):
    lo, hi = _valid_bounds(registration, tuple(ncc.shape), plan)
    per_plane = registration.per_plane if registration.shifts is not None else None
    full = (lo == 0).all() and (hi == np.array(ncc.shape)).all()
    if full:
        return ncc
    if not is_dask(ncc):
        return _fill_block(ncc, lo, hi, per_plane, fill_value, (0,) * ncc.ndim)

    # (block_id, not block_info: Dask builds block_info for every block up front, a second
    # for the 33000 small blocks of a 40000² map's levels)
    starts = [np.cumsum((0, *c)) for c in ncc.chunks]

    def fill(block, block_id=None):
        location = [int(s[i]) for s, i in zip(starts, block_id, strict=True)]
        return _fill_block(block, lo, hi, per_plane, fill_value, location)

    return ncc.map_blocks(fill, dtype=ncc.dtype, meta=np.empty((0,) * ncc.ndim, ncc.dtype))


def _fill_uncovered(ncc, registration: Registration, plan, fill_value):
    """`ncc` with `fill_value` where the window holds a pixel outside ``valid_mask``."""
    shape = tuple(ncc.shape)
    radius = dict(zip(plan.axes, plan.radius, strict=True))
    size = tuple(2 * radius.get(ax, 0) + 1 for ax in range(len(shape)))

    def erode(mask):
        # "nearest": an image border stays a border (handled by the NCC's mode).
        return ndi.minimum_filter(mask, size=size, mode="nearest")

    if not is_dask(ncc):
        valid = erode(registration.valid_mask(shape))
        return np.where(valid, ncc, np.asarray(fill_value, dtype=ncc.dtype))
    import dask.array as da

    mask = registration.valid_mask(shape, chunks=ncc.chunks)
    depth = {ax: radius.get(ax, 0) for ax in range(len(shape))}
    valid = mask.map_overlap(erode, depth=depth, boundary="nearest", dtype=bool)
    return da.where(valid, ncc, np.asarray(fill_value, dtype=ncc.dtype))
