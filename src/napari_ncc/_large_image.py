"""Registering images too large for memory: a coarse estimate, then full-resolution tiles.

The coarse pair is a pyramid level small enough, or block means read slab by slab (chunk
by chunk for Dask input); its estimate places a few textured full-resolution tiles inside
the overlap, each registered in memory (:mod:`._phase_correlation`), and the median of the
tiles that agree with the coarse estimate is the shift. Only those tiles are ever read at
full resolution besides the block-mean pass. Dask is imported only to read Dask input.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable
from dataclasses import replace

import numpy as np

from ._phase_correlation import Estimate, PhaseCorrelation, check_finite, estimate_translation
from ._validation import is_dask

__all__ = [
    "N_TILES",
    "TILE_ELEMENTS",
    "block_mean",
    "block_mean_slabs",
    "coarse_source",
    "estimate_large",
    "is_large",
    "large_image_steps",
    "read_regions",
]

#: Elements of a full-resolution refinement tile (1024 x 1024 in 2D, ~101^3 in 3D).
TILE_ELEMENTS = 1024**2

#: Number of full-resolution tiles the large-image path refines on.
N_TILES = 4


def is_large(shape, axes, max_size) -> bool:
    """Whether images of `shape` take the large-image path (see :func:`napari_ncc.register`)."""
    # Only the registered axes count: the others are read whole (one joint estimate).
    sides = [shape[ax] for ax in axes]
    return bool(sides) and (max(sides) > max_size or math.prod(sides) > max_size**2)


def _coarse_factors(shape, axes, max_size, chunks=None, isotropic=False) -> tuple[int, ...]:
    factors = [1] * len(shape)
    for ax in axes:
        factors[ax] = max(1, math.ceil(shape[ax] / max_size))
    while math.prod(shape[ax] // factors[ax] for ax in axes) > max_size**2:
        for ax in axes:
            factors[ax] += 1
    if isotropic:
        # One factor for every axis (rotations need square coarse pixels), preferably one
        # that divides all the chunks.
        f = max(factors[ax] for ax in axes)
        if chunks is not None:
            inner = [c for ax in axes for c in (chunks[ax][0], *chunks[ax][:-1])]
            f = next((g for g in range(f, 2 * f + 1) if all(c % g == 0 for c in inner)), f)
        return tuple(f if ax in axes else 1 for ax in range(len(shape)))
    if chunks is not None:
        # Prefer a factor that divides the chunks (no rechunking), if one is close.
        for ax in axes:
            chunk = chunks[ax][0]
            for f in range(factors[ax], 2 * factors[ax] + 1):
                if chunk % f == 0 and all(c % f == 0 for c in chunks[ax][:-1]):
                    factors[ax] = f
                    break
    return tuple(factors)


def block_mean_slabs(image, factors) -> list[tuple[int, int]]:
    """Row ranges ``[a, b)`` of `image` whose block means are computed one at a time.

    Each range is a whole number of blocks along axis 0. For Dask input they also end on
    chunk boundaries (each chunk is read once); for in-memory input they hold at most
    256 MiB of float64 rows.
    """
    n, f = int(image.shape[0]), factors[0]
    stop = (n // f) * f
    if is_dask(image):
        ends = itertools.accumulate(image.chunks[0])
        cuts = [int(e) for e in ends if e % f == 0 and 0 < e < stop] + [stop]
    else:
        row_bytes = math.prod(image.shape[1:]) * f * 8
        rows = max(1, (256 * 2**20) // max(row_bytes, 1)) * f
        cuts = [*range(rows, stop, rows), stop]
    return list(itertools.pairwise([0, *cuts]))


def block_mean(image, factors, on_slab=None) -> np.ndarray:
    """Block-mean downsampling (float32), reading the image slab by slab.

    `on_slab` is called after each slab of :func:`block_mean_slabs`.
    """
    shape = tuple(image.shape)
    out_shape = tuple(n // f for n, f in zip(shape, factors, strict=True))
    out = np.empty(out_shape, dtype=np.float32)
    for a, b in block_mean_slabs(image, factors):
        rows = slice(a // factors[0], b // factors[0])
        if is_dask(image):
            import dask.array as da

            from ._sources import compute_isolated

            coarse = da.coarsen(
                np.mean,
                image[a:b].astype(np.float32),
                {ax: f for ax, f in enumerate(factors) if f > 1},
                trim_excess=True,
                dtype=np.float32,
            )
            (rows_value,) = compute_isolated(coarse)
            out[rows] = np.asarray(rows_value)
        else:
            slab = np.asarray(image[a:b], dtype=np.float64)
            trim = tuple(slice(0, n * f) for n, f in zip(out_shape[1:], factors[1:], strict=True))
            slab = slab[(slice(None), *trim)]
            split = []
            for n, f in zip(((b - a) // factors[0], *out_shape[1:]), factors, strict=True):
                split += [n, f]
            out[rows] = slab.reshape(split).mean(axis=tuple(range(1, 2 * len(shape), 2)))
        if on_slab is not None:
            on_slab()
    return out


def read_regions(regions):
    """Read ``(array, slices)`` regions into NumPy, computing Dask ones in one pass."""
    lazy = [i for i, (x, _) in enumerate(regions) if is_dask(x)]
    out = [None] * len(regions)
    if lazy:
        from ._sources import compute_isolated

        values = compute_isolated(*[regions[i][0][regions[i][1]] for i in lazy])
        for i, v in zip(lazy, values, strict=True):
            out[i] = np.asarray(v)
    for i, (x, sl) in enumerate(regions):
        if out[i] is None:
            out[i] = np.asarray(x[sl])
    return out


def coarse_source(ref_levels, mov_levels, axes, max_size, *, isotropic=False):
    """Where the coarse estimate of a large pair comes from: ``(level, factors)``.

    `level` is the pyramid level read (0: full resolution, no pyramid or none small
    enough), `factors` the block-mean factors applied to it (None: read as it is; with
    `isotropic`, one factor for all `axes`).
    """
    level = 0
    for i in range(1, min(len(ref_levels), len(mov_levels))):
        if tuple(ref_levels[i].shape) != tuple(mov_levels[i].shape):
            raise ValueError(
                f"reference and moving pyramids differ at level {i}: shapes "
                f"{tuple(ref_levels[i].shape)} and {tuple(mov_levels[i].shape)}"
            )
        level = i
        if not is_large(ref_levels[i].shape, axes, max_size):
            return level, None
    coarse = ref_levels[level]
    chunks = getattr(coarse, "chunks", None)
    if chunks is not None and not isinstance(chunks[0], tuple):
        chunks = None  # zarr's chunk shape, not Dask's chunks
    return level, _coarse_factors(coarse.shape, axes, max_size, chunks, isotropic)


def large_image_steps(ref_levels, mov_levels, axes, *, max_size, n_tiles) -> int:
    """Progress steps of :func:`estimate_large`: block-mean slabs (or one read), tiles."""
    level, factors = coarse_source(ref_levels, mov_levels, axes, max_size)
    if factors is None:
        return 1 + n_tiles
    slabs = [block_mean_slabs(x[level], factors) for x in (ref_levels, mov_levels)]
    return sum(map(len, slabs)) + n_tiles


def estimate_large(
    ref_levels,
    mov_levels,
    axes,
    *,
    max_size: int,
    n_tiles: int,
    options: PhaseCorrelation,
    on_step: Callable[[], object],
) -> tuple[Estimate, str]:
    """Register images too large for memory: coarse estimate, then full-resolution tiles.

    Returns the estimate and how it was found; `on_step` is called after each of the
    :func:`large_image_steps` steps (some may be skipped).
    """
    ref0, mov0 = ref_levels[0], mov_levels[0]
    shape = tuple(int(n) for n in ref0.shape)
    ndim = len(shape)
    notes = []

    # 1. The coarse pair: a pyramid level small enough, or block means.
    level, factors = coarse_source(ref_levels, mov_levels, axes, max_size)
    ref_c, mov_c = ref_levels[level], mov_levels[level]
    scale = np.array([a / b for a, b in zip(shape, ref_c.shape, strict=True)])
    method = [f"pyramid level {level}"] if level else []
    if factors is None:
        ref_c, mov_c = read_regions([(ref_c, ()), (mov_c, ())])
        on_step()
    else:
        ref_c = block_mean(ref_c, factors, on_step)
        mov_c = block_mean(mov_c, factors, on_step)
        scale = scale * np.array(factors)
        method.append(f"block-mean x{max(factors)}")
    method = " ".join(method)
    check_finite(np.asarray(ref_c, dtype=np.float32), "reference")
    check_finite(np.asarray(mov_c, dtype=np.float32), "moving")
    coarse = estimate_translation(
        ref_c,
        mov_c,
        axes,
        replace(options, refine=False),  # the full-resolution tiles refine
    )
    guess = coarse.shift * scale
    if np.ptp(ref_c) == 0 or np.ptp(mov_c) == 0:
        return Estimate(guess, 0.0, 0.0, coarse.error, False, coarse.notes), method + " only"

    # 2. Tiles: the most textured cells of a grid, whose shifted copy lies inside moving.
    k = len(axes)
    side = max(16, round(TILE_ELEMENTS ** (1.0 / k)))
    offset = [round(guess[ax]) if ax in axes else 0 for ax in range(ndim)]
    # The overlap, in reference coordinates, is where the tiles go (a grid over it).
    lo = [max(0, min(o, n - 1)) for o, n in zip(offset, shape, strict=True)]
    hi = [max(a + 1, min(n, n + o)) for a, o, n in zip(lo, offset, shape, strict=True)]
    tile = [
        min(side, b - a) if ax in axes else shape[ax]
        for ax, (a, b) in enumerate(zip(lo, hi, strict=True))
    ]
    cells = []
    ranges = [
        range(a, max(b - t, a) + 1, t) if ax in axes else range(1)
        for ax, (a, b, t) in enumerate(zip(lo, hi, tile, strict=True))
    ]
    for origin in itertools.product(*ranges):
        m0 = [o - (offset[ax] if ax in axes else 0) for ax, o in enumerate(origin)]
        if any(m < 0 or m + t > n for m, t, n in zip(m0, tile, shape, strict=True)):
            continue
        coarse_cell = tuple(
            slice(int(o / sc), max(int(o / sc) + 1, int((o + t) / sc)))
            for o, t, sc in zip(origin, tile, scale, strict=True)
        )
        cells.append((float(np.var(ref_c[coarse_cell])), origin, tuple(m0)))
    cells.sort(key=lambda c: -c[0])
    cells = [c for c in cells if c[0] > 0][:n_tiles]
    if not cells:
        notes = [*coarse.notes, "no textured full-resolution tile inside the overlap"]
        return Estimate(
            guess, coarse.quality, coarse.peak_ratio, coarse.error, False, notes
        ), method + " only"
    regions = []
    for _, origin, m0 in cells:
        regions.append((ref0, tuple(slice(o, o + t) for o, t in zip(origin, tile, strict=True))))
        regions.append((mov0, tuple(slice(m, m + t) for m, t in zip(m0, tile, strict=True))))
    # One pass: tiles that share a chunk read it once.
    values = read_regions(regions)
    results = []
    for i, (_, origin, m0) in enumerate(cells):
        ref_t, mov_t = values[2 * i], values[2 * i + 1]
        check_finite(ref_t, "reference")
        check_finite(mov_t, "moving")
        est = estimate_translation(
            ref_t,
            mov_t,
            axes,
            replace(options, disambiguate=False),
        )
        full = est.shift + np.array(origin) - np.array(m0)
        results.append((est, full))
        on_step()
    tolerance = max(2.0, float(scale.max()))
    good = [
        (e, s)
        for e, s in results
        if e.reliable and np.abs(s - guess)[list(axes)].max() <= tolerance
    ]
    if not good:
        notes = [*coarse.notes, "no full-resolution tile agreed with the coarse estimate"]
        return Estimate(
            guess, coarse.quality, coarse.peak_ratio, coarse.error, False, notes
        ), method + " only"
    shifts = np.array([s for _, s in good])
    shift = np.median(shifts, axis=0)
    spread = float(np.abs(shifts - shift).max())
    notes.append(
        f"{len(good)} of {len(results)} full-resolution tiles of {tuple(tile)} used; "
        f"largest deviation from their median {spread:.3f} px"
    )
    if len(good) < len(results):
        notes.append("some tiles disagreed or were unreliable and were left out")
    quality = float(np.median([e.quality for e, _ in good]))
    estimate = Estimate(
        shift,
        quality,
        float(np.median([e.peak_ratio for e, _ in good])),
        float(np.median([e.error for e, _ in good])),
        coarse.reliable or len(good) >= 2,
        notes,
    )
    return estimate, f"{method} + {len(good)} tiles"
