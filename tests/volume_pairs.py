"""3D volume pairs related by KNOWN transforms, for the volume registration tests and
``benchmarks/bench_volume.py``.

Independent of ``napari_ncc``: the volumes are a smooth random texture (Gaussian-filtered
noise), the moving volume is made from a larger copy with ``scipy.ndimage`` (so that it
holds real content to its faces), and the true reference -> moving coordinates come from
the formulas here.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi

#: The volumes are cut from a texture this much larger on every side.
PAD = 20


def rotation(axis, degrees) -> np.ndarray:
    """Rodrigues: the rotation by `degrees` about `axis` (right-hand rule, index order)."""
    a = np.asarray(axis, dtype=np.float64)
    a = a / np.linalg.norm(a)
    k = np.array([[0, -a[2], a[1]], [a[2], 0, -a[0]], [-a[1], a[0], 0]])
    t = np.radians(degrees)
    return np.eye(3) + np.sin(t) * k + (1 - np.cos(t)) * k @ k


def about_centre(linear, shift, n) -> np.ndarray:
    """Homogeneous reference -> moving matrix: `linear` about the centre of an n**3 volume,
    then `shift`."""
    centre = np.full(3, (n - 1) / 2)
    matrix = np.eye(4)
    matrix[:3, :3] = linear
    matrix[:3, 3] = centre - linear @ centre + np.asarray(shift, dtype=np.float64)
    return matrix


def texture(rng, n) -> np.ndarray:
    """Gaussian-filtered noise (sigma 2 voxels), unit variance, ``n + 2 * PAD`` a side."""
    volume = ndi.gaussian_filter(rng.standard_normal((n + 2 * PAD,) * 3), 2.0)
    return volume / volume.std()


def noisy(volume, rng, noise=0.02):
    return volume + noise * rng.standard_normal(volume.shape)


def truth(matrix, points) -> np.ndarray:
    return np.asarray(points) @ matrix[:3, :3].T + matrix[:3, 3]


def affine_pair(rng, matrix, n, noise=0.02):
    """(reference, moving): ``moving(q) = reference(matrix^-1 q)``, each with noise."""
    big = texture(rng, n)
    inverse = np.linalg.inv(matrix)
    moving = ndi.affine_transform(
        big,
        inverse[:3, :3],
        inverse[:3, 3] + PAD,
        output_shape=(n,) * 3,
        order=3,
        mode="reflect",
    )
    reference = big[PAD:-PAD, PAD:-PAD, PAD:-PAD]
    return noisy(reference, rng, noise), noisy(moving, rng, noise)


class SmoothWarp3D:
    """A linear map plus a smooth field, defined moving -> reference:
    ``G(q) = matrix^-1 q + field(q)``, the field three plane waves of `amplitude` (one per
    axis, random directions); the true reference -> moving map is ``G^-1``."""

    def __init__(self, matrix, amplitude, wavelength, rng):
        self.matrix = np.asarray(matrix, dtype=np.float64)
        self.inverse = np.linalg.inv(self.matrix)
        self.amplitude, self.k = amplitude, 2 * np.pi / wavelength
        directions = rng.normal(size=(3, 3))
        self.directions = directions / np.linalg.norm(directions, axis=1)[:, None]
        self.phases = rng.uniform(0, 2 * np.pi, 3)

    def field(self, q):
        return self.amplitude * np.sin(self.k * q @ self.directions.T + self.phases)

    def to_reference(self, q):
        return truth(self.inverse, q) + self.field(q)

    def moving_coordinates(self, p):
        """The true reference -> moving map, by Newton iterations on ``G(q) = p``."""
        p = np.asarray(p, dtype=np.float64)
        q = truth(self.matrix, p)
        for _ in range(100):
            q = q - (self.to_reference(q) - p) @ self.matrix[:3, :3].T
        assert np.abs(self.to_reference(q) - p).max() < 1e-9
        return q


def warped_pair(rng, warp: SmoothWarp3D, n, noise=0.02):
    """(reference, moving) for a :class:`SmoothWarp3D`, as :func:`affine_pair`."""
    big = texture(rng, n)
    q = np.indices((n,) * 3, dtype=np.float64).reshape(3, -1).T
    coordinates = (warp.to_reference(q) + PAD).T
    moving = ndi.map_coordinates(big, coordinates, order=3, mode="reflect").reshape((n,) * 3)
    reference = big[PAD:-PAD, PAD:-PAD, PAD:-PAD]
    return noisy(reference, rng, noise), noisy(moving, rng, noise)


def interior_points(n, margin=0.15, count=7) -> np.ndarray:
    """A grid of points away from the faces."""
    g = np.linspace(margin * (n - 1), (1 - margin) * (n - 1), count)
    return np.stack(np.meshgrid(g, g, g, indexing="ij"), -1).reshape(-1, 3)
