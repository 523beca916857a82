"""One home for the argument rules every floor shares (like scikit-image's ``_shared/utils``).

Pure Python and NumPy: no napari, no Dask import. Each check raises early with the
argument's name in the message and says what would be right.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from numbers import Integral, Real

import numpy as np

__all__ = [
    "SHIFT_TOLERANCE",
    "WINDOWS",
    "check_finite_shift",
    "check_image",
    "check_order",
    "check_per_plane",
    "check_same_shape",
    "interpolated_dtype",
    "is_dask",
    "json_float",
    "normalize_axes",
    "snap_shift",
]

#: NCC window weights (:func:`napari_ncc.local_ncc`'s ``window``).
WINDOWS = ("box", "gaussian")

#: Shifts (and transform offsets) closer than this to an integer number of pixels are that
#: integer. Registration results are rounded to it (see :func:`snap_shift`), so that a
#: shift that is zero up to FFT/BLAS rounding (``-6e-18``) is exactly 0 on every machine:
#: no valid region, fill band or "registered or not" decision can depend on its sign.
SHIFT_TOLERANCE = 1e-6


def is_dask(x) -> bool:
    """Whether `x` is a Dask collection with chunks (duck-typed: Dask is not imported)."""
    return hasattr(x, "__dask_graph__") and hasattr(x, "chunks")


def check_image(image, name: str) -> None:
    """Raise a clear error if `image` cannot be an input image.

    Checks that it has a real numeric dtype (bool, integer or float), at least one
    dimension and no empty axis.

    Examples
    --------
    >>> check_image(np.zeros((2, 2), complex), "moving")
    Traceback (most recent call last):
    ...
    TypeError: moving has unsupported dtype complex128; expected a real numeric dtype (bool, integer or float of at most 64 bits)
    """  # noqa: E501
    dtype = getattr(image, "dtype", None)
    dtype = np.asarray(image).dtype if dtype is None else np.dtype(dtype)
    if dtype.kind not in "biuf" or dtype.itemsize > 8:
        raise TypeError(
            f"{name} has unsupported dtype {dtype}; expected a real numeric dtype "
            "(bool, integer or float of at most 64 bits)"
        )
    shape = tuple(image.shape)
    if len(shape) == 0:
        raise ValueError(f"{name} must have at least 1 dimension, got a 0-d array")
    if 0 in shape:
        raise ValueError(f"{name} is empty (shape {shape})")


def check_same_shape(shape0, shape1, names: tuple[str, str] = ("reference", "moving")) -> None:
    """Raise if two images differ in number of dimensions or shape.

    Examples
    --------
    >>> check_same_shape((512, 512), (512, 500))
    Traceback (most recent call last):
    ...
    ValueError: reference and moving must have the same shape, got (512, 512) and (512, 500)
    """
    shape0 = tuple(int(n) for n in shape0)
    shape1 = tuple(int(n) for n in shape1)
    a, b = names
    if len(shape0) != len(shape1):
        raise ValueError(
            f"{a} and {b} must have the same number of dimensions, got {len(shape0)} and "
            f"{len(shape1)} (shapes {shape0} and {shape1})"
        )
    if shape0 != shape1:
        raise ValueError(f"{a} and {b} must have the same shape, got {shape0} and {shape1}")


def normalize_axes(axes, ndim: int) -> tuple[int, ...]:
    """Axes as non-negative ints, in the given order (all axes for None).

    Examples
    --------
    >>> normalize_axes(-1, 3), normalize_axes(None, 2)
    ((2,), (0, 1))
    """
    if axes is None:
        return tuple(range(ndim))
    if isinstance(axes, Integral) and not isinstance(axes, bool):
        axes = (axes,)
    try:
        axes = tuple(axes)
    except TypeError:
        raise TypeError(f"axes must be an int or a sequence of ints, got {axes!r}") from None
    if not axes:
        raise ValueError("axes must name at least one axis")
    normalized = []
    for ax in axes:
        if isinstance(ax, bool) or not isinstance(ax, Integral):
            raise TypeError(f"axes must contain integers, got {ax!r}")
        if not -ndim <= ax < ndim:
            raise ValueError(f"axis {ax} is out of range for a {ndim}-D image")
        ax = int(ax) % ndim
        if ax in normalized:
            raise ValueError(f"axes contains axis {ax} more than once: {axes}")
        normalized.append(ax)
    return tuple(normalized)


def check_per_plane(per_plane, ndim: int) -> int | None:
    """The plane axis of a stack as a non-negative int (None stays None).

    Examples
    --------
    >>> check_per_plane(-3, 3)
    0
    >>> check_per_plane(3, 3)
    Traceback (most recent call last):
    ...
    ValueError: per_plane axis 3 is out of range for 3-D images
    """
    if per_plane is None:
        return None
    if isinstance(per_plane, bool) or not isinstance(per_plane, Integral):
        raise TypeError(f"per_plane must be an axis index (int) or None, got {per_plane!r}")
    if not -ndim <= per_plane < ndim:
        raise ValueError(f"per_plane axis {per_plane} is out of range for {ndim}-D images")
    if ndim < 2:
        raise ValueError("per_plane needs images of at least 2 dimensions")
    return int(per_plane) % ndim


def check_order(order) -> int:
    """A spline interpolation order, 0 to 5."""
    if isinstance(order, bool) or not isinstance(order, Integral) or not 0 <= order <= 5:
        raise ValueError(f"order must be an integer from 0 to 5, got {order!r}")
    return int(order)


def interpolated_dtype(dtype) -> np.dtype:
    """Dtype of an interpolated (shifted, warped) image: float64 and float32 stay,
    anything else (integers, bool, float16) becomes float32."""
    dtype = np.dtype(dtype)
    if dtype.kind == "f" and dtype.itemsize >= 4:
        return dtype
    return np.dtype(np.float32)


def check_finite_shift(shift, ndim: int, name: str = "shift") -> tuple[float, ...]:
    """A shift as a tuple of `ndim` finite floats."""
    try:
        values = tuple(shift)
    except TypeError:
        raise TypeError(
            f"{name} must be a sequence of {ndim} numbers (one per axis), got {shift!r}"
        ) from None
    if len(values) != ndim:
        raise ValueError(
            f"{name} must have one value per axis ({ndim}), got {len(values)}: {shift!r}"
        )
    out = []
    for s in values:
        if isinstance(s, bool) or not isinstance(s, Real | np.integer | np.floating):
            raise TypeError(f"{name} must contain real numbers, got {s!r}")
        if not math.isfinite(float(s)):
            raise ValueError(f"{name} must be finite, got {shift!r}")
        out.append(float(s))
    return tuple(out)


def snap_shift(values: Sequence[float] | np.ndarray) -> np.ndarray:
    """Values within :data:`SHIFT_TOLERANCE` of an integer replaced by that integer.

    Also turns ``-0.0`` into ``0.0``, so nothing prints a signed zero.

    Examples
    --------
    >>> snap_shift([-6e-18, 2.9999999999, 0.25]).tolist()
    [0.0, 3.0, 0.25]
    """
    values = np.array(values, dtype=np.float64)
    nearest = np.round(values)
    close = np.abs(values - nearest) < SHIFT_TOLERANCE
    values[close] = nearest[close]
    values += 0.0  # -0.0 -> 0.0
    return values


def json_float(value: float):
    """A float for JSON: itself when finite, else its string ("nan", "inf")."""
    value = float(value)
    return value if math.isfinite(value) else str(value)
