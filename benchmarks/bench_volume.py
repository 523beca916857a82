"""Accuracy and time of the 3D volume registration (rigid, affine, deformable) against
baselines, on volumes seen through KNOWN transforms.

The volumes are a smooth random texture with 2% noise (``tests/volume_pairs.py``,
independent of napari_ncc); accuracy is the distance between ``moving_coordinates(p)`` and
the true position at interior points (15-85% of each side; 20-80% for deformable pairs,
within the reach of the tiles). In the same run, on the same pairs:

* ``napari_ncc``: ``register(reference, moving, model=...)``;
* ``translation``: ``register(reference, moving)`` (phase correlation with a tapered
  border, then Gauss-Newton), what a translation registration gives on such pairs
  (scikit-image's untapered ``phase_cross_correlation`` finds no shift at all on them);
* ``shift+ilk``: that translation, then ``skimage.registration.optical_flow_ilk`` (dense
  optical flow, works in 3D) between the reference and the shifted moving volume: a
  throw-away pipeline for the deformation (ILK alone misses shifts of tens of voxels).

Run: ``.venv/bin/python benchmarks/bench_volume.py [--size 64] [--quick]``
"""

from __future__ import annotations

import argparse
import sys
import time
import warnings
from pathlib import Path

import numpy as np
from scipy import ndimage as ndi

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from volume_pairs import (
    SmoothWarp3D,
    about_centre,
    affine_pair,
    interior_points,
    rotation,
    truth,
    warped_pair,
)

SHEAR = np.array([[1.02, 0.01, 0.0], [0.0, 0.99, 0.015], [0.01, 0.0, 1.01]])
LINEAR_CASES = [
    # model, axis, angle (degrees), with the mild scale and shear SHEAR
    ("rigid", (0.3, -1.0, 0.6), -4.0, False),
    ("rigid", (1.0, 1.0, 1.0), 10.0, False),
    ("affine", (1.0, 2.0, 2.0), 3.0, True),
    ("affine", (0.0, 1.0, 0.0), 5.0, True),
]
DEFORMABLE_CASES = [
    # axis, angle, amplitude (voxels), wavelength (voxels)
    ((1.0, 1.0, 1.0), 2.0, 2.0, 128.0),
    ((0.3, -1.0, 0.6), 1.0, 2.0, 96.0),
]
SHIFT = (12.3, -20.7, 7.2)


class Points:
    """A reference -> moving map from a function, for the baselines."""

    def __init__(self, function):
        self.moving_coordinates = function


def ours(reference, moving, model):
    from napari_ncc import register

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return register(reference, moving, model=model)


def translation(reference, moving, model):
    return ours(reference, moving, "translation")


def shift_ilk(reference, moving, model):
    from skimage.registration import optical_flow_ilk

    shift = np.asarray(translation(reference, moving, model).shift)
    flow = optical_flow_ilk(reference, ndi.shift(moving, shift, order=3), radius=7)

    def moving_coordinates(p):
        p = np.asarray(p)
        return (
            p
            - shift
            + np.stack(
                [ndi.map_coordinates(f, p.T, order=1, mode="nearest") for f in flow], axis=1
            )
        )

    return Points(moving_coordinates)


def run(method, reference, moving, model, expected, points):
    start = time.perf_counter()
    try:
        transform = method(reference, moving, model)
        seconds = time.perf_counter() - start
        error = np.linalg.norm(transform.moving_coordinates(points) - expected, axis=1)
    except Exception as exc:  # a baseline that fails is a result, not a crash
        return f"failed: {type(exc).__name__}: {str(exc)[:50]}", time.perf_counter() - start
    return error, seconds


def report(label, method_name, outcome, our_seconds):
    result, seconds = outcome
    ratio = f"{seconds / our_seconds:6.2f}x" if our_seconds else ""
    if isinstance(result, str):
        print(f"{label:40s} {method_name:12s} {result}")
        return
    rms = np.sqrt(np.mean(result**2))
    print(
        f"{label:40s} {method_name:12s} max {result.max():7.3f}  rms {rms:7.3f}  "
        f"p95 {np.percentile(result, 95):7.3f}  {seconds:6.2f} s  {ratio}",
        flush=True,
    )


def compare(label, reference, moving, model, expected, points):
    mine = run(ours, reference, moving, model, expected, points)
    report(label, "napari_ncc", mine, 0)
    for name, method in {"translation": translation, "shift+ilk": shift_ilk}.items():
        report(label, name, run(method, reference, moving, model, expected, points), mine[1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=64, help="side of the volumes (voxels)")
    parser.add_argument("--quick", action="store_true", help="one pair of each kind")
    args = parser.parse_args()
    n = args.size
    rng = np.random.default_rng(0)
    print(f"volumes {n}^3, shift {SHIFT}, 2% noise; time ratio = baseline / napari_ncc")
    for model, axis, angle, sheared in LINEAR_CASES[::2] if args.quick else LINEAR_CASES:
        linear = rotation(axis, angle) @ (SHEAR if sheared else np.eye(3))
        matrix = about_centre(linear, SHIFT, n)
        reference, moving = affine_pair(rng, matrix, n)
        points = interior_points(n)
        axis_text = ",".join(f"{a:g}" for a in axis)
        label = f"{n}^3 {model} {angle:+.0f}deg ({axis_text}){' shear' if sheared else ''}"
        compare(label, reference, moving, model, truth(matrix, points), points)
    for axis, angle, amplitude, wavelength in (
        DEFORMABLE_CASES[:1] if args.quick else (DEFORMABLE_CASES)
    ):
        matrix = about_centre(rotation(axis, angle), (5.3, -8.1, 3.7), n)
        warp = SmoothWarp3D(matrix, amplitude, wavelength, rng)
        reference, moving = warped_pair(rng, warp, n)
        points = interior_points(n, margin=0.2, count=9)
        label = f"{n}^3 deformable {angle:+.0f}deg {amplitude:g}vx/{wavelength:g}"
        compare(label, reference, moving, "deformable", warp.moving_coordinates(points), points)


if __name__ == "__main__":
    main()
