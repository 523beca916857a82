"""Image pairs related by KNOWN transforms, for the transform-estimation tests.

Independent of ``napari_ncc``: the moving images are made with ``scipy.ndimage`` from a
larger real picture (so that both images hold real content to their edges), and the true
reference -> moving coordinates come from the formulas here.

Import from any test module as ``from transform_pairs import linear_pair`` (``tests/`` is on
``sys.path``, see ``conftest.py``).
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi
from skimage import color, data


def picture(name: str) -> np.ndarray:
    """A real picture from ``skimage.data`` as float64 luminance in [0, 1]."""
    images = {
        "camera": data.camera,
        "astronaut": data.astronaut,
        "brick": data.brick,
        "coins": data.coins,
        "ihc": data.immunohistochemistry,
    }
    image = images[name]()
    if image.ndim == 3:
        image = color.rgb2gray(image)
    image = image.astype(np.float64)
    return image / image.max()


def linear_matrix(angle=0.0, scale=1.0, shear=0.0, translation=(0.0, 0.0), n=256):
    """Homogeneous reference -> moving matrix: about the centre of an n x n image,
    ``q = c + scale * R(angle) @ [[1, shear], [0, 1]] @ (p - c) + translation``."""
    c = (n - 1) / 2
    a = np.radians(angle)
    rotation = np.array([[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]])
    linear = scale * rotation @ np.array([[1.0, shear], [0.0, 1.0]])
    matrix = np.eye(3)
    matrix[:2, :2] = linear
    matrix[:2, 2] = c - linear @ [c, c] + np.asarray(translation, dtype=np.float64)
    return matrix


def _crop_origin(big, n):
    return (np.array(big.shape) - n) // 2


def _noisy(image, noise, rng, scale):
    return image + noise * scale * rng.normal(size=image.shape)


def linear_pair(big, matrix, n, noise, rng):
    """(reference, moving): the central n x n crop of `big`, and `big` seen through
    `matrix` (moving(q) = reference(matrix^-1 q)), each with Gaussian noise."""
    origin = _crop_origin(big, n)
    inverse = np.linalg.inv(matrix)
    moving = ndi.affine_transform(
        big, inverse[:2, :2], inverse[:2, 2] + origin, output_shape=(n, n), order=3, mode="reflect"
    )
    reference = big[origin[0] : origin[0] + n, origin[1] : origin[1] + n]
    spread = big.std()
    return _noisy(reference, noise, rng, spread), _noisy(moving, noise, rng, spread)


class SmoothWarp:
    """A rotation plus a smooth sinusoidal field, defined moving -> reference:
    ``G(q) = matrix^-1 q + field(q)``; the true reference -> moving map is ``G^-1``."""

    def __init__(self, matrix, amplitude, wavelengths, rng):
        self.matrix = np.asarray(matrix, dtype=np.float64)
        self.inverse = np.linalg.inv(self.matrix)
        self.amplitude = amplitude
        self.k = [2 * np.pi / w for w in wavelengths]
        self.phases = rng.uniform(0, 2 * np.pi, 4)
        self.directions = rng.uniform(0, np.pi, 2)

    def field(self, q):
        out = np.empty_like(q)
        for d in range(2):
            s, c = np.sin(self.directions[d]), np.cos(self.directions[d])
            u = q[:, 0] * s + q[:, 1] * c
            v = q[:, 0] * c - q[:, 1] * s
            out[:, d] = (
                self.amplitude
                * np.sin(self.k[d] * u + self.phases[d])
                * np.cos(0.5 * self.k[d] * v + self.phases[2 + d])
            )
        return out

    def to_reference(self, q):
        return q @ self.inverse[:2, :2].T + self.inverse[:2, 2] + self.field(q)

    def moving_coordinates(self, p):
        """The true reference -> moving map, by Newton iterations on ``G(q) = p``."""
        p = np.asarray(p, dtype=np.float64)
        q = p @ self.matrix[:2, :2].T + self.matrix[:2, 2]
        for _ in range(100):
            q = q - (self.to_reference(q) - p) @ self.matrix[:2, :2].T
        assert np.abs(self.to_reference(q) - p).max() < 1e-9
        return q


def warped_pair(big, warp: SmoothWarp, n, noise, rng):
    """(reference, moving) for a :class:`SmoothWarp`, as :func:`linear_pair`."""
    origin = _crop_origin(big, n)
    q = np.indices((n, n), dtype=np.float64).reshape(2, -1).T
    coordinates = (warp.to_reference(q) + origin).T
    moving = ndi.map_coordinates(big, coordinates, order=3, mode="reflect").reshape(n, n)
    reference = big[origin[0] : origin[0] + n, origin[1] : origin[1] + n]
    spread = big.std()
    return _noisy(reference, noise, rng, spread), _noisy(moving, noise, rng, spread)


def interior_points(n, margin=0.15, count=15):
    """A grid of points away from the image border."""
    g = np.linspace(margin * (n - 1), (1 - margin) * (n - 1), count)
    return np.stack(np.meshgrid(g, g, indexing="ij"), -1).reshape(-1, 2)


def drift_stack(big, matrices, n, noise, rng):
    """A stack of planes of `big` seen through `matrices` (plane t: moving(q) =
    reference(matrices[t]^-1 q), as :func:`linear_pair`'s moving image), each with its own
    Gaussian noise, and the noise-free central crop of `big` (the reference plane)."""
    origin = _crop_origin(big, n)
    spread = big.std()
    planes = []
    for matrix in matrices:
        inverse = np.linalg.inv(matrix)
        plane = ndi.affine_transform(
            big,
            inverse[:2, :2],
            inverse[:2, 2] + origin,
            output_shape=(n, n),
            order=3,
            mode="reflect",
        )
        planes.append(_noisy(plane, noise, rng, spread))
    return np.stack(planes), big[origin[0] : origin[0] + n, origin[1] : origin[1] + n]
