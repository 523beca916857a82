"""Sample image pairs that show what a local NCC confidence map is for.

Pure NumPy (plus the images shipped with scikit-image: nothing is downloaded). The napari
sample-data contributions (``_sample_data.py``) and the command-line demo both use
:func:`sample_pair`.
"""

from __future__ import annotations

import numpy as np

#: Names accepted by :func:`sample_pair`.
SAMPLES = ("cell", "motorcycle")

#: How the content of the "cell" moving image is displaced from the reference, in pixels
#: (rows, columns): a global, sub-pixel translation.
CELL_DISPLACEMENT = (4.6, -7.3)

#: Peak of the smooth local (elastic) displacement added on top, in pixels.
CELL_DEFORMATION_PEAK = 5.0

#: Standard deviation of the Gaussian noise added to the "cell" moving image (grey levels).
CELL_NOISE = 1.0

#: ITU-R BT.709 luminance weights, as ``skimage.color.rgb2gray`` uses.
LUMINANCE_WEIGHTS = (0.2125, 0.7154, 0.0721)


def _cell_pair(seed: int):
    from scipy import ndimage
    from skimage import data

    reference = data.cell()
    height, width = reference.shape
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float64)

    # A smooth bump of displacement in one region (lower left), as a local elastic
    # deformation of the specimen between the two acquisitions would give.
    cy, cx = 0.65 * height, 0.35 * width
    sigma = 0.08 * min(height, width)
    bump = np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * sigma**2))
    local_y = CELL_DEFORMATION_PEAK * bump * 0.6
    local_x = CELL_DEFORMATION_PEAK * bump * 0.8
    dy, dx = CELL_DISPLACEMENT
    # moving[p] = reference[p - displacement(p)]: the content moves by +displacement.
    coords = np.stack([yy - dy - local_y, xx - dx - local_x])
    moving = ndimage.map_coordinates(reference.astype(np.float64), coords, order=3, mode="nearest")
    rng = np.random.default_rng(seed)
    moving += rng.normal(0.0, CELL_NOISE, moving.shape)
    moving = np.clip(np.round(moving), 0, 255).astype(np.uint8)

    deformation = np.hypot(local_y, local_x).astype(np.float32)
    rows = np.flatnonzero(deformation.max(axis=1) > 0.5)
    cols = np.flatnonzero(deformation.max(axis=0) > 0.5)
    info = {
        "name": "cell",
        "description": (
            "skimage.data.cell() and a copy displaced by "
            f"{CELL_DISPLACEMENT} px, locally deformed by up to {CELL_DEFORMATION_PEAK} px "
            f"in one region, with Gaussian noise (sigma {CELL_NOISE} grey levels)"
        ),
        "displacement": CELL_DISPLACEMENT,
        "shift": (-dy, -dx),
        "deformation": deformation,
        "deformed_region": (
            (int(rows[0]), int(rows[-1]) + 1),
            (int(cols[0]), int(cols[-1]) + 1),
        ),
        "rgb": False,
    }
    return reference, moving, info


def _motorcycle_pair():
    from skimage import data

    left, right, disparity = data.stereo_motorcycle()
    disparity = np.where(np.isfinite(disparity), disparity, np.nan).astype(np.float32)
    info = {
        "name": "motorcycle",
        "description": (
            "Middlebury 2014 'Motorcycle' stereo pair (left = reference, right = moving), "
            "shipped with scikit-image. The views differ by a depth-dependent horizontal "
            "disparity, so one global shift aligns only the parts at one depth: the NCC map "
            "shows which."
        ),
        "displacement": None,
        "shift": None,
        "disparity": disparity,
        "rgb": True,
    }
    return left, right, info


def luminance(rgb: np.ndarray) -> np.ndarray:
    """Luminance (float32) of an RGB or RGBA image whose channels are on the last axis.

    Examples
    --------
    >>> import numpy as np
    >>> gray = luminance(np.full((2, 2, 3), 200, dtype=np.uint8))
    >>> gray.dtype, bool(np.allclose(gray, 200))
    (dtype('float32'), True)
    """
    rgb = np.asarray(rgb)
    if rgb.ndim < 3 or rgb.shape[-1] not in (3, 4):
        raise ValueError(
            f"an RGB(A) image needs 3 or 4 channels on its last axis, got shape {rgb.shape}"
        )
    weights = np.asarray(LUMINANCE_WEIGHTS, dtype=np.float32)
    return (rgb[..., :3].astype(np.float32) @ weights).astype(np.float32)


def sample_pair(
    name: str = "cell", *, grayscale: bool = False, seed: int = 0
) -> tuple[np.ndarray, np.ndarray, dict]:
    """A reference image, a moving image to compare with it, and what is known about them.

    Parameters
    ----------
    name : {"cell", "motorcycle"}
        ``"cell"``: ``skimage.data.cell()`` (660 x 550, uint8) and a copy whose content is
        displaced by :data:`CELL_DISPLACEMENT` (sub-pixel), deformed smoothly by up to
        :data:`CELL_DEFORMATION_PEAK` pixels in one region (a Gaussian bump of displacement)
        and given Gaussian noise. After registration the two agree everywhere except in the
        deformed region (and where the shift brought in border pixels).
        ``"motorcycle"``: the Middlebury stereo pair from
        ``skimage.data.stereo_motorcycle()`` (500 x 741 RGB): a global shift aligns only
        the objects at one depth.
    grayscale : bool
        Convert RGB images to luminance (float32).
    seed : int
        Seed of the noise added to the "cell" moving image.

    Returns
    -------
    reference, moving : ndarray
        Images of the same shape.
    info : dict
        ``"name"``, ``"description"``, ``"rgb"`` and, for "cell": ``"displacement"`` (how
        the content moved from reference to moving), ``"shift"`` (the shift that registers
        moving onto reference, ``scipy.ndimage.shift(moving, shift) ~ reference``: the
        convention of ``skimage.registration.phase_cross_correlation``), ``"deformation"``
        (magnitude of the local displacement per pixel, float32) and ``"deformed_region"``
        (``((row0, row1), (col0, col1))`` where it exceeds half a pixel); for "motorcycle":
        ``"disparity"`` (the ground-truth disparity of the left view, NaN where unknown).

    Examples
    --------
    >>> reference, moving, info = sample_pair("cell")
    >>> reference.shape == moving.shape, info["shift"]
    (True, (-4.6, 7.3))
    """
    if name == "cell":
        reference, moving, info = _cell_pair(seed)
    elif name == "motorcycle":
        reference, moving, info = _motorcycle_pair()
    else:
        raise ValueError(f"unknown sample {name!r}; expected one of {', '.join(SAMPLES)}")
    if grayscale and info["rgb"]:
        reference, moving = luminance(reference), luminance(moving)
        info["rgb"] = False
    return reference, moving, info
