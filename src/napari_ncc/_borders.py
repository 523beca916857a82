"""Border handling: where a window that overhangs the image reads its values.

The NCC kernels never pad arrays. Instead each windowed axis gets an *index map*: for every
position of the padded axis, the source index it reads, or ``-1`` for "outside, use the
constant". This follows ``scipy.ndimage`` filter modes exactly, so the default ``"reflect"``
equals ``numpy.pad(mode="symmetric")``.
"""

from __future__ import annotations

import numpy as np

#: scipy.ndimage filter modes, with their aliases resolved to the canonical name.
MODES = {
    "reflect": "reflect",
    "grid-mirror": "reflect",
    "mirror": "mirror",
    "nearest": "nearest",
    "wrap": "wrap",
    "grid-wrap": "wrap",
    "constant": "constant",
    "grid-constant": "constant",
}


def canonical_mode(mode: str) -> str:
    """Return the canonical name of a ``scipy.ndimage`` border mode.

    Raises
    ------
    ValueError
        If `mode` is not one of the modes in :data:`MODES`.
    """
    try:
        return MODES[mode]
    except (KeyError, TypeError):
        raise ValueError(
            f"unknown mode {mode!r}; expected one of {', '.join(sorted(MODES))}"
        ) from None


def border_index_map(length: int, start: int, stop: int, radius: int, mode: str) -> np.ndarray:
    """Source indices read by the windows of output positions ``start..stop-1``.

    Parameters
    ----------
    length : int
        Length of the axis in the source image.
    start, stop : int
        Output positions along the axis (``0 <= start < stop <= length``).
    radius : int
        Window half-width along the axis.
    mode : str
        A ``scipy.ndimage`` border mode (see :data:`MODES`).

    Returns
    -------
    index : ndarray of int64, shape ``(stop - start + 2 * radius,)``
        ``index[k]`` is the source index read at padded position ``start - radius + k``,
        or ``-1`` where the constant border value is read.
    """
    mode = canonical_mode(mode)
    i = np.arange(start - radius, stop + radius, dtype=np.int64)
    if mode == "constant":
        return np.where((i >= 0) & (i < length), i, -1)
    if mode == "nearest":
        return np.clip(i, 0, length - 1)
    if mode == "wrap":
        return np.mod(i, length)
    if mode == "reflect":
        i = np.mod(i, 2 * length)
        return np.where(i >= length, 2 * length - 1 - i, i)
    # mirror: the edge pixel is not repeated
    if length == 1:
        return np.zeros_like(i)
    period = 2 * length - 2
    i = np.mod(i, period)
    return np.where(i >= length, period - i, i)
