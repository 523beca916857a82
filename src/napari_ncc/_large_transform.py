"""Rigid, similarity, affine and deformable registration of 2D images too large for memory.

The coarse pair is a pyramid level small enough, or block means read slab by slab
(:func:`~napari_ncc._large_image.block_mean`, one factor for both axes); the in-memory
estimator (:func:`~napari_ncc._estimate_transform.estimate_transform`: Fourier–Mellin, then
tile rounds) registers it, and its transform is scaled to full resolution. Then a sparse
grid of candidate tiles over the overlap is read at full resolution, batch by batch: each
reference tile and the box of the moving image its coarse transform reaches (with a margin
for the coarse error), once, kept for every round. Rounds of
:func:`~napari_ncc._local_shifts.measure_tiles` on the textured ones and a robust fit
take the transform to subpixel accuracy. The deformable field's grid spacing follows the
tile spacing, so its size stays small at any image size.

Only the block-mean pass and the tiles' boxes are ever read at full resolution. Dask is
imported only to read Dask input.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable

import numpy as np

from ._estimate_transform import (
    CONVERGED,
    DEFAULT_ROUNDS,
    estimate_transform,
    fit_notes,
)
from ._large_image import block_mean, block_mean_slabs, coarse_source, read_regions
from ._local_shifts import (
    MIN_TEXTURE,
    MIN_TILES,
    TILE_SIZE,
    TileReport,
    fit_deformable,
    fit_linear,
    measure_tiles,
    texture_scores,
)
from ._phase_correlation import RELIABLE_QUALITY, check_finite
from ._registration import Registration, RegistrationWarning
from ._transform import LINEAR_MODELS, AffineTransform, DeformableTransform, Transform
from ._validation import is_dask

__all__ = ["estimate_large_transform", "large_transform_steps", "tile_grid"]

#: Linear models: at most this many candidate tiles per axis, at least
#: LINEAR_SPACING tile sides apart (a few hundred tiles at most, spread over the image).
MAX_LINEAR_GRID = 12
LINEAR_SPACING = 4

#: Deformable: at most this many candidate tiles per axis, at least a tile side apart: the
#: field is resolved down to wavelengths of a few tile spacings.
MAX_DEFORMABLE_GRID = 32

#: The field's nodes lie this many per tile spacing (and at least MIN_GRID_SPACING apart).
NODES_PER_SPACING = 2
MIN_GRID_SPACING = 32.0

#: Tiles read (and measured) per progress step.
BATCH = 64

#: Pixels read around each reference tile (measure_tiles reads a margin of 4).
REFERENCE_MARGIN = 8

#: Pixels read around the moving box a tile reaches through the coarse transform: the
#: coarse error and the first round's search (BOX_MARGIN plus two coarse pixels), and the
#: spline prefilter's margin (sample reads 20 pixels beyond the coordinates). A tile that
#: needs more reads it from the image (counted in the method's text).
BOX_MARGIN = 12
SPLINE_MARGIN = 22


def _to_full(ratio) -> np.ndarray:
    """Homogeneous map from coarse to full-resolution pixel coordinates: a coarse pixel
    averages `ratio` full pixels, so its centre is ``ratio * c + (ratio - 1) / 2``."""
    ratio = np.asarray(ratio, dtype=np.float64)
    matrix = np.eye(3)
    matrix[:2, :2] = np.diag(ratio)
    matrix[:2, 2] = (ratio - 1) / 2
    return matrix


def _level_ratio(full_shape, level_shape) -> np.ndarray:
    ratio = np.asarray(full_shape, float) / np.asarray(level_shape, float)
    near = np.round(ratio)
    # A pyramid level of a size that is not a multiple of its factor (trimmed or padded).
    return np.where(np.abs(ratio - near) < 0.02 * ratio, near, ratio)


def _rounds(model: str) -> int:
    return DEFAULT_ROUNDS


def tile_grid(shape, model: str, tile_size: int = TILE_SIZE) -> tuple[list, float]:
    """Candidate tile origins over a reference of `shape` (before the overlap and texture
    are known), and their spacing (pixels)."""
    per_axis, spacings = [], []
    for n in shape:
        lo, hi = REFERENCE_MARGIN, n - tile_size - REFERENCE_MARGIN
        if hi < lo:
            return [], 0.0
        extent = hi - lo
        if model == "deformable":
            count = min(MAX_DEFORMABLE_GRID, extent // tile_size + 1)
        else:
            count = min(MAX_LINEAR_GRID, extent // (LINEAR_SPACING * tile_size) + 1)
            count = max(count, min(4, extent // tile_size + 1))
        per_axis.append(np.unique(np.linspace(lo, hi, count).round().astype(int)).tolist())
        spacings.append(extent / max(count - 1, 1))
    starts = [(a, b) for a in per_axis[0] for b in per_axis[1]]
    return starts, float(min(spacings))


def large_transform_steps(ref_levels, mov_levels, model: str, *, max_size: int) -> int:
    """Progress steps of :func:`estimate_large_transform`: block-mean slabs (or one read),
    the coarse estimate, then per batch of tiles its read and each round's measurement."""
    level, factors = coarse_source(ref_levels, mov_levels, (0, 1), max_size, isotropic=True)
    if factors is None:
        slabs = 1
    else:
        slabs = sum(len(block_mean_slabs(x[level], factors)) for x in (ref_levels, mov_levels))
    starts, _ = tile_grid(ref_levels[0].shape, model)
    return slabs + 1 + math.ceil(len(starts) / BATCH) * (1 + _rounds(model))


class _Boxes:
    """Boxes of an image read once, serving every slice that falls inside one of them.

    A slice that falls inside none is read from the image (counted in `misses`).
    """

    def __init__(self, image, name: str):
        self.image, self.name = image, name
        self.shape = tuple(int(n) for n in image.shape)
        self.ndim = len(self.shape)
        self.dtype = np.dtype(np.float32)
        self.lower = np.empty((0, self.ndim), dtype=np.int64)
        self.upper = np.empty((0, self.ndim), dtype=np.int64)
        self.data: list[np.ndarray] = []
        self.misses = 0

    def add(self, boxes) -> None:
        values = _read_boxes(self.image, boxes)
        for value in values:
            check_finite(value, self.name)
        # Copies: a box read from one chunk is a view that would keep the chunk alive.
        self.data += [np.array(v, dtype=np.float32) for v in values]
        self.lower = np.vstack([self.lower, [[s.start for s in box] for box in boxes]])
        self.upper = np.vstack([self.upper, [[s.stop for s in box] for box in boxes]])

    def __getitem__(self, index):
        start = [s.start for s in index]
        stop = [s.stop for s in index]
        inside = np.all(self.lower <= start, axis=1) & np.all(self.upper >= stop, axis=1)
        hits = np.flatnonzero(inside)
        if len(hits) == 0:
            self.misses += 1
            return _read_boxes(self.image, [tuple(index)])[0]
        i = int(hits[0])
        local = tuple(
            slice(a - lo, b - lo) for a, b, lo in zip(start, stop, self.lower[i], strict=True)
        )
        return self.data[i][local]


def _read_boxes(image, boxes) -> list[np.ndarray]:
    """The boxes of `image`: a Dask array's computed through its source (only the chunks
    each box touches, kept a while for the neighbouring boxes), else in one pass."""
    if is_dask(image):
        from ._sources import as_source

        found = as_source(image)
        if found is None:
            return read_regions([(image, box) for box in boxes])
        source = found[1]
        return [np.asarray(source[box]) for box in boxes]
    return [np.asarray(image[box]) for box in boxes]


def _moving_box(transform: AffineTransform, start, tile_size, margin, moving_shape):
    """The box of the moving image a reference tile (and its margin) reaches, or None."""
    lo = np.asarray(start, float) - REFERENCE_MARGIN
    hi = lo + tile_size + 2 * REFERENCE_MARGIN - 1
    corners = np.array([[lo[0], lo[1]], [lo[0], hi[1]], [hi[0], lo[1]], [hi[0], hi[1]]])
    mapped = transform.moving_coordinates(corners)
    a = np.floor(mapped.min(axis=0)).astype(int) - margin
    b = np.ceil(mapped.max(axis=0)).astype(int) + 1 + margin
    a = np.maximum(a, 0)
    b = np.minimum(b, moving_shape)
    if np.any(b - a < tile_size // 2):
        return None
    return tuple(slice(int(x), int(y)) for x, y in zip(a, b, strict=True))


def _concatenate(parts: list[TileReport], tile_size: int) -> TileReport:
    if not parts:
        return TileReport(
            np.empty((0, 2)), np.empty((0, 2)), *(np.empty(0),) * 3, np.empty(0, bool), tile_size
        )
    return TileReport(
        *(np.concatenate([getattr(p, f) for p in parts]) for f in ("centers", "positions")),
        *(np.concatenate([getattr(p, f) for p in parts]) for f in ("sigma", "confidence")),
        np.concatenate([p.residual for p in parts]),
        np.concatenate([p.rejected for p in parts]),
        tile_size,
    )


def _coarse(ref_levels, mov_levels, model, max_size, on_step):
    """The coarse transform at full resolution, its notes, how it was found and the size
    of a coarse pixel (full-resolution pixels)."""
    shape = tuple(int(n) for n in ref_levels[0].shape)
    level, factors = coarse_source(ref_levels, mov_levels, (0, 1), max_size, isotropic=True)
    ref_c, mov_c = ref_levels[level], mov_levels[level]
    ratio = _level_ratio(shape, ref_c.shape)
    method = [f"pyramid level {level}"] if level else []
    if factors is None:
        ref_c, mov_c = read_regions([(ref_c, ()), (mov_c, ())])
        on_step()
    else:
        ref_c = block_mean(ref_c, factors, on_step)
        mov_c = block_mean(mov_c, factors, on_step)
        ratio = ratio * np.asarray(factors)
        method.append(f"block-mean x{max(factors)}")
    ref_c = np.asarray(ref_c, dtype=np.float64)
    mov_c = np.asarray(mov_c, dtype=np.float64)
    check_finite(ref_c, "reference")
    check_finite(mov_c, "moving")
    coarse_model = model if model in LINEAR_MODELS else "affine"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", RegistrationWarning)
        est = estimate_transform(ref_c, mov_c, coarse_model)
    notes = [
        f"coarse level: {w.message}" for w in caught if issubclass(w.category, RegistrationWarning)
    ]
    to_full = _to_full(ratio)
    matrix = to_full @ est.transform.matrix @ np.linalg.inv(to_full)
    on_step()
    return AffineTransform(matrix, coarse_model), notes, " ".join(method), float(ratio.max())


def estimate_large_transform(
    ref_levels,
    mov_levels,
    model: str,
    *,
    max_size: int,
    on_step: Callable[..., object],
    tile_size: int = TILE_SIZE,
) -> Registration:
    """Register 2D images too large for memory with `model` (not "translation").

    Parameters
    ----------
    ref_levels, mov_levels : list of array_like
        Pyramid levels, full resolution first (one level: block means are computed).
    model : str
        "rigid", "similarity", "affine" or "deformable".
    max_size : int
        The coarse pair has at most ``max_size**2`` pixels.
    on_step : callable
        ``on_step(n=1)`` after each of :func:`large_transform_steps` steps (`n` at once
        where steps turn out unnecessary).
    tile_size : int, optional
        Side of the full-resolution tiles.

    Returns
    -------
    Registration
        Its `notes` say why it is unreliable, if it is (`register` warns).
    """
    shape = tuple(int(n) for n in ref_levels[0].shape)
    ref0, mov0 = ref_levels[0], mov_levels[0]
    coarse, coarse_notes, method, ratio = _coarse(ref_levels, mov_levels, model, max_size, on_step)
    rounds = _rounds(model)

    # Candidate tiles inside the overlap, read once: reference tile and moving box.
    candidates, spacing = tile_grid(shape, model, tile_size)
    n_batches = math.ceil(len(candidates) / BATCH)
    centre = tile_size / 2
    inside = []
    for start in candidates:
        q = coarse.moving_coordinates(np.array([start], float) + centre)[0]
        if np.all(q >= centre / 2) and np.all(q <= np.asarray(shape) - 1 - centre / 2):
            inside.append(start)
    ref_boxes, mov_boxes = _Boxes(ref0, "reference"), _Boxes(mov0, "moving")
    margin = BOX_MARGIN + 2 * math.ceil(ratio) + SPLINE_MARGIN
    starts, scores = [], []
    for b in range(n_batches):
        batch = inside[b * BATCH : (b + 1) * BATCH]
        boxes = [(start, _moving_box(coarse, start, tile_size, margin, shape)) for start in batch]
        boxes = [(s, m) for s, m in boxes if m is not None]
        if boxes:
            pad = REFERENCE_MARGIN
            ref_boxes.add(
                [tuple(slice(s - pad, s + tile_size + pad) for s in st) for st, _ in boxes]
            )
            mov_boxes.add([m for _, m in boxes])
            starts += [s for s, _ in boxes]
            scores.append(texture_scores(ref_boxes, [s for s, _ in boxes], tile_size))
        on_step()
    scores = np.concatenate(scores) if scores else np.empty(0)
    threshold = MIN_TEXTURE * float(np.median(scores)) if len(scores) else 0.0
    textured = [s for s, score in zip(starts, scores, strict=True) if score > threshold]

    # Rounds: measure the textured tiles through the current transform, fit the model.
    transform: Transform = coarse
    notes: list[str] = []
    tiles = _concatenate([], tile_size)
    done = 0
    grid_spacing = max(MIN_GRID_SPACING, spacing / NODES_PER_SPACING)
    for done in range(1, rounds + 1):
        parts = []
        for b in range(0, len(textured), BATCH):
            parts.append(
                measure_tiles(
                    ref_boxes,
                    mov_boxes,
                    transform,
                    tile_size=tile_size,
                    search=done == 1,
                    local=model == "deformable",
                    starts=textured[b : b + BATCH],
                    min_texture=threshold,
                )
            )
            on_step()
        on_step(n_batches - len(parts))
        tiles = _concatenate(parts, tile_size)
        if len(tiles.centers) < MIN_TILES[model]:
            notes.append(
                f"only {len(tiles.centers)} textured full-resolution tiles match (need "
                f"{MIN_TILES[model]} for {model!r}): the images may not overlap or hold "
                "too little texture"
            )
            break
        if model == "deformable":
            new, tiles = fit_deformable(tiles, shape, grid_spacing=grid_spacing)
        else:
            new, tiles = fit_linear(tiles, model)
        change = float(
            np.abs(
                new.moving_coordinates(tiles.centers) - transform.moving_coordinates(tiles.centers)
            ).max()
        )
        transform = new
        if change < CONVERGED:
            break
    on_step((rounds - done) * n_batches)

    if notes:
        notes = coarse_notes + notes
        transform = coarse
        if model == "deformable":
            transform = DeformableTransform(
                coarse, np.zeros((2, 2, 2)), (0.0, 0.0), tuple(float(n) for n in shape)
            )
        quality = 0.0
    else:
        quality = float(np.median(tiles.confidence[~tiles.rejected]))
        notes += fit_notes(tiles, model)
        if abs(quality) < RELIABLE_QUALITY:
            notes.append(f"low correlation of the tiles after alignment ({quality:.3f})")
    misses = ref_boxes.misses + mov_boxes.misses
    if misses:
        method += f" ({misses} reads beyond the tiles' boxes)"
    centre_point = (np.array(shape, dtype=np.float64) - 1) / 2
    return Registration(
        shift=tuple(centre_point - transform.moving_coordinates(centre_point[None])[0]),
        quality=quality,
        reliable=not notes,
        method=(
            f"{method} + fourier-mellin + {len(tiles.centers)} full-resolution tiles x "
            f"{done} rounds"
        ),
        notes=tuple(notes),
        transform=transform,
        tiles=tiles,
    )
