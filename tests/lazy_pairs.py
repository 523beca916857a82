"""Lazily generated pairs of any size with a known transform, block by block.

:class:`WaveTexture` is a sum of cosines (random directions, wavelengths 5 to 500 pixels,
amplitudes growing with the wavelength as in natural images): exact at any real
coordinate, nothing periodic at the scale of a tile. :func:`lazy_pair` builds a reference
(the texture) and a moving image (the texture at ``G(q) = A q + b + field(q)``, a known map
from moving to reference pixels) as Dask arrays whose blocks are computed on demand,
counting the blocks each one computes. A linear part of ``G`` keeps every cosine
separable (an outer sum of row and column phases), so a block costs a few operations per
pixel and cosine; a field adds its phase per pixel.
"""

from __future__ import annotations

import threading

import dask.array as da
import numpy as np


class WaveTexture:
    """``100 + 20 * sum_j a_j cos(k_j . p + phi_j)``, normalised to unit variance of the sum."""

    def __init__(self, seed=0, n_waves=24, wavelengths=(5.0, 500.0)):
        rng = np.random.default_rng(seed)
        wavelength = np.geomspace(*wavelengths, n_waves)
        angle = rng.uniform(0, np.pi, n_waves)
        self.k = (2 * np.pi / wavelength)[:, None] * np.stack([np.sin(angle), np.cos(angle)], 1)
        self.phase = rng.uniform(0, 2 * np.pi, n_waves)
        amplitude = np.sqrt(wavelength)
        self.amplitude = amplitude / np.sqrt((amplitude**2).sum() / 2)

    def at(self, points) -> np.ndarray:
        """The texture at reference points, shape (n, 2)."""
        phases = np.asarray(points, float) @ self.k.T + self.phase
        return 100 + 20 * (np.cos(phases) @ self.amplitude)

    def block(self, region, matrix=None, field=None) -> np.ndarray:
        """The texture at ``G(q)`` for the pixels q of `region` (a tuple of slices), with
        ``G(q) = matrix[:2, :2] q + matrix[:2, 2] + field(q)`` (identity by default)."""
        matrix = np.eye(3) if matrix is None else np.asarray(matrix, float)
        rows = np.arange(region[0].start, region[0].stop, dtype=np.float64)
        cols = np.arange(region[1].start, region[1].stop, dtype=np.float64)
        k = self.k @ matrix[:2, :2]  # k . (L q) = (L^T k) . q
        offset = self.k @ matrix[:2, 2] + self.phase
        extra = None
        if field is not None:
            q = np.stack(np.meshgrid(rows, cols, indexing="ij"), -1).reshape(-1, 2)
            extra = field(q).reshape(len(rows), len(cols), 2)
        out = np.zeros((len(rows), len(cols)))
        for j in range(len(self.k)):
            phase = (k[j, 0] * rows + offset[j])[:, None] + (k[j, 1] * cols)[None, :]
            if extra is not None:
                phase += extra @ self.k[j]
            out += self.amplitude[j] * np.cos(phase)
        return (100 + 20 * out).astype(np.float32)


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
        self.texture = WaveTexture(seed)
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
