"""Lazily generated pairs of any size with a known transform, block by block.

:class:`NoiseTexture` is value noise over several octaves (random values hashed from
lattice indices, interpolated smoothly): exact at any real coordinate, nothing periodic.
:class:`LazyPair` builds a reference (the texture) and a moving image (the texture at
``G(q) = A q + b + field(q)``, a known map from moving to reference pixels) as Dask
arrays whose blocks are computed on demand, counting the blocks each one computes.
"""

from __future__ import annotations

import threading

import dask.array as da
import numpy as np


class NoiseTexture:
    """Value noise summed over octaves: random values on lattices of spacing 3 to 243 px
    (hashed from the lattice indices, nothing stored per pixel and nothing periodic),
    interpolated with a C2 quintic, amplitudes growing with the spacing as in natural
    images; exact at any real coordinate."""

    SPACINGS = (3.0, 9.0, 27.0, 81.0, 243.0)

    def __init__(self, seed=0, table_bits=18):
        rng = np.random.default_rng(seed)
        self.tables = rng.normal(size=(len(self.SPACINGS), 2**table_bits))
        self.mask = np.uint64(2**table_bits - 1)
        amplitude = np.sqrt(np.asarray(self.SPACINGS))
        self.amplitude = amplitude / np.sqrt((amplitude**2).sum())

    def _hash(self, octave, i, j):
        with np.errstate(over="ignore"):
            h = i.astype(np.uint64) * np.uint64(0x9E3779B97F4A7C15)
            h ^= j.astype(np.uint64) * np.uint64(0xC2B2AE3D27D4EB4F)
            h ^= h >> np.uint64(29)
            h *= np.uint64(0xBF58476D1CE4E5B9)
            h ^= h >> np.uint64(32)
        return self.tables[octave][h & self.mask]

    def values(self, rows, cols) -> np.ndarray:
        """The texture at the points ``(rows, cols)`` (arrays of one shape)."""
        out = np.zeros(np.broadcast(rows, cols).shape)
        for octave, spacing in enumerate(self.SPACINGS):
            u, v = rows / spacing, cols / spacing
            i, j = np.floor(u), np.floor(v)
            fu, fv = u - i, v - j
            wu = fu**3 * (fu * (6 * fu - 15) + 10)
            wv = fv**3 * (fv * (6 * fv - 15) + 10)
            i, j = i.astype(np.int64), j.astype(np.int64)
            corners = [self._hash(octave, i + a, j + b) for a in (0, 1) for b in (0, 1)]
            top = corners[0] * (1 - wv) + corners[1] * wv
            bottom = corners[2] * (1 - wv) + corners[3] * wv
            out += self.amplitude[octave] * (top * (1 - wu) + bottom * wu)
        return 100 + 20 * out

    def at(self, points) -> np.ndarray:
        """The texture at reference points, shape (n, 2)."""
        points = np.asarray(points, float)
        return self.values(points[:, 0], points[:, 1])

    def block(self, region, matrix=None, field=None) -> np.ndarray:
        """The texture at ``G(q)`` for the pixels q of `region` (a tuple of slices), with
        ``G(q) = matrix[:2, :2] q + matrix[:2, 2] + field(q)`` (identity by default)."""
        rows = np.arange(region[0].start, region[0].stop, dtype=np.float64)[:, None]
        cols = np.arange(region[1].start, region[1].stop, dtype=np.float64)[None, :]
        if matrix is None and field is None:
            rows, cols = np.broadcast_arrays(rows, cols)
        else:
            matrix = np.eye(3) if matrix is None else np.asarray(matrix, float)
            r = matrix[0, 0] * rows + matrix[0, 1] * cols + matrix[0, 2]
            c = matrix[1, 0] * rows + matrix[1, 1] * cols + matrix[1, 2]
            if field is not None:
                q = np.stack(np.broadcast_arrays(rows, cols), -1).reshape(-1, 2)
                extra = field(q).reshape(*r.shape, 2)
                r, c = r + extra[..., 0], c + extra[..., 1]
            rows, cols = r, c
        # Strips of rows: the temporaries of the evaluation stay small (a chunk reader's).
        out = np.empty(np.broadcast(rows, cols).shape, dtype=np.float32)
        for a in range(0, out.shape[0], 128):
            strip = slice(a, a + 128)
            r = rows[strip] if rows.shape[0] > 1 else rows
            c = cols[strip] if cols.shape[0] > 1 else cols
            out[strip] = self.values(r, c)
        return out


class SineField:
    """A smooth displacement field (pixels): ``amplitude * sin(k u + a) * cos(k v + b)`` per
    axis, with u, v rotated coordinates."""

    def __init__(self, amplitude, wavelength, seed=0):
        rng = np.random.default_rng(seed)
        self.amplitude, self.k = float(amplitude), 2 * np.pi / float(wavelength)
        self.phases = rng.uniform(0, 2 * np.pi, 4)
        self.directions = rng.uniform(0, np.pi, 2)

    def __call__(self, q) -> np.ndarray:
        q = np.asarray(q, float)
        out = np.empty_like(q)
        for d in range(2):
            s, c = np.sin(self.directions[d]), np.cos(self.directions[d])
            u = q[:, 0] * s + q[:, 1] * c
            v = q[:, 0] * c - q[:, 1] * s
            out[:, d] = (
                self.amplitude
                * np.sin(self.k * u + self.phases[d])
                * np.cos(0.7 * self.k * v + self.phases[2 + d])
            )
        return out


def rotation_matrix(angle_degrees, shift, center) -> np.ndarray:
    """``G(q) = R (q - center) + center + shift``: moving pixel -> reference pixel."""
    a = np.deg2rad(angle_degrees)
    rotation = np.array([[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]])
    matrix = np.eye(3)
    matrix[:2, :2] = rotation
    matrix[:2, 2] = np.asarray(center, float) + np.asarray(shift, float) - rotation @ center
    return matrix


class LazyPair:
    """Reference and moving Dask arrays of the texture, ``moving(q) = texture(G(q))``.

    Attributes
    ----------
    reference, moving : dask.array.Array
        Computed block by block (float32), each with noise of `noise` grey levels.
    reads : dict
        Blocks computed, per image name, as a list of block indices (in order).
    """

    def __init__(self, shape, chunks, matrix, field=None, noise=0.5, seed=0):
        self.texture = NoiseTexture(seed)
        self.matrix = np.asarray(matrix, float)
        self.inverse = np.linalg.inv(self.matrix)
        self.field = field
        self.reads = {"reference": [], "moving": []}
        self._lock = threading.Lock()
        self.reference = self._image("reference", shape, chunks, None, None, noise, seed + 1)
        self.moving = self._image("moving", shape, chunks, self.matrix, field, noise, seed + 2)
        self.images = (self.reference, self.moving)

    def _image(self, name, shape, chunks, matrix, field, noise, seed):
        def block(block_info=None):
            info = block_info[None]
            with self._lock:
                self.reads[name].append(tuple(info["chunk-location"]))
            region = tuple(slice(a, b) for a, b in info["array-location"])
            out = self.texture.block(region, matrix, field)
            rng = np.random.default_rng([seed, *info["chunk-location"]])
            return out + rng.normal(0, noise, out.shape).astype(np.float32)

        return da.map_blocks(
            block,
            chunks=da.core.normalize_chunks(chunks, shape),
            dtype=np.float32,
            meta=np.empty((0, 0), np.float32),
        )

    def to_reference(self, q) -> np.ndarray:
        """G: moving pixel -> reference pixel."""
        q = np.asarray(q, float)
        out = q @ self.matrix[:2, :2].T + self.matrix[:2, 2]
        return out if self.field is None else out + self.field(q)

    def moving_coordinates(self, p) -> np.ndarray:
        """The true reference -> moving map ``G^-1``, by fixed-point iterations."""
        p = np.asarray(p, float)
        q = p @ self.inverse[:2, :2].T + self.inverse[:2, 2]
        for _ in range(100):
            q = q - (self.to_reference(q) - p) @ self.inverse[:2, :2].T
        assert np.abs(self.to_reference(q) - p).max() < 1e-8
        return q
