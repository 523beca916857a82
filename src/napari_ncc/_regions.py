"""Index arithmetic of registered images: a plane of a stack, the box of pixels a shift
keeps inside the image, and which pixels of a block lie inside a box.

Pure NumPy, shared by :class:`~napari_ncc._registration.Registration` and the modules that
work on its planes and blocks.
"""

from __future__ import annotations

import functools
import math

import numpy as np

from ._validation import snap_shift

__all__ = ["inside_box", "plane_index", "valid_slices"]


def plane_index(ndim: int, axis: int, t) -> tuple:
    """Index of plane (or slice of planes) `t` along `axis` of an `ndim`-D array."""
    index = [slice(None)] * ndim
    index[axis] = t
    return tuple(index)


def inside_box(shape, location, lo, hi) -> np.ndarray:
    """True where ``lo <= position < hi`` on every axis, for a block of `shape` at `location`.

    Examples
    --------
    >>> inside_box((2, 3), (1, 0), (2, 1), (5, 5)).astype(int).tolist()
    [[0, 0, 0], [0, 1, 1]]
    """
    vecs = [
        (np.arange(start, start + n) >= a) & (np.arange(start, start + n) < b)
        for n, start, a, b in zip(shape, location, lo, hi, strict=True)
    ]
    ndim = len(vecs)
    open_mesh = [
        v.reshape([-1 if i == ax else 1 for i in range(ndim)]) for ax, v in enumerate(vecs)
    ]
    return functools.reduce(np.logical_and, open_mesh, np.ones((1,) * ndim, dtype=bool))


def valid_slices(shape, shift, skip=None) -> tuple[slice, ...]:
    """The box of pixels ``x`` whose ``x - shift`` lies inside an image of `shape`
    (every axis but `skip`, which is kept whole).

    Examples
    --------
    >>> valid_slices((10, 10), (2.5, -3.0))
    (slice(3, 10, None), slice(0, 7, None))
    """
    out = []
    for ax, (n, s) in enumerate(zip(shape, snap_shift(shift).tolist(), strict=True)):
        if ax == skip:
            out.append(slice(0, n))
            continue
        # x - s must lie in [0, n - 1]; s is snapped, so an integer up to rounding counts
        # as that integer.
        lo = min(max(math.ceil(s), 0), n)
        hi = min(max(math.floor(n - 1 + s) + 1, lo), n)
        out.append(slice(lo, hi))
    return tuple(out)
