"""Accuracy and time of the transform estimation (issue 16 core) against baselines.

Pairs are real pictures from ``skimage.data`` seen through KNOWN transforms (the generators
of ``tests/transform_pairs.py``, independent of napari_ncc) with 3% noise. Accuracy is the
distance between ``moving_coordinates(p)`` and the true position at interior points. In
the same run, on the same pairs:

* ``napari_ncc``: ``register(reference, moving, model=model)`` (the public API; its
  ``moving_coordinates`` is evaluated after the clock stops);
* ``skimage-orb``: ORB keypoints + RANSAC fit of the same model
  (``skimage.feature.ORB``, ``skimage.measure.ransac``), the usual scikit-image route;
* ``skimage-pcc``: ``phase_cross_correlation`` (translation only), what a translation
  registration gives on such pairs;
* ``skimage-ilk`` / ``skimage-tvl1`` (deformable pairs): dense optical flow;
* ``elastix`` (if ``import itk`` works: ``pip install napari-ncc[bench]``): default
  translation / rigid / affine / B-spline parameter maps (its deformation field is computed
  by transformix after the clock stops).

Each pair prints a line per method; then a table per model (:func:`model_table`): the worst
error and median time of each method over that model's pairs, and its time over ours.
``benchmarks/bench_registration.py --only models`` runs the same comparison.

Run: ``.venv/bin/python benchmarks/bench_transforms.py [--size 384] [--quick]``
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from transform_pairs import (
    SmoothWarp,
    interior_points,
    linear_matrix,
    linear_pair,
    picture,
    warped_pair,
)

TRANSLATION_CASES = [
    # picture, shift (rows, columns) of the content
    ("camera", (7.3, -4.1)),
    ("ihc", (-12.6, 9.45)),
]
LINEAR_CASES = [
    # picture, model, angle, scale, shear
    ("camera", "rigid", 12.0, 1.0, 0.0),
    ("astronaut", "rigid", -9.0, 1.0, 0.0),
    ("ihc", "similarity", 6.0, 0.93, 0.0),
    ("brick", "similarity", -4.0, 1.06, 0.0),
    ("astronaut", "affine", 3.0, 1.02, 0.03),
    ("coins", "rigid", 180.0, 1.0, 0.0),
]
DEFORMABLE_CASES = [
    # picture, angle, amplitude, wavelengths
    ("brick", 0.8, 3.0, (250, 200)),
    ("ihc", -0.7, 3.5, (300, 200)),
    ("astronaut", 1.0, 3.0, (200, 250)),
    ("camera", 1.0, 4.0, (150, 220)),
]


class Points:
    """A reference -> moving map from a function, for the baselines."""

    def __init__(self, function):
        self.moving_coordinates = function


def ours(reference, moving, model):
    from napari_ncc import register

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return register(reference, moving, model=model)


def skimage_orb(reference, moving, model):
    from skimage.feature import ORB, match_descriptors
    from skimage.measure import ransac
    from skimage.transform import AffineTransform, EuclideanTransform, SimilarityTransform

    classes = {
        "rigid": EuclideanTransform,
        "similarity": SimilarityTransform,
        "affine": AffineTransform,
    }
    keypoints, descriptors = [], []
    for image in (reference, moving):
        orb = ORB(n_keypoints=800, fast_threshold=0.05)
        orb.detect_and_extract((image - image.min()) / np.ptp(image))
        keypoints.append(orb.keypoints)
        descriptors.append(orb.descriptors)
    matches = match_descriptors(*descriptors, cross_check=True)
    src, dst = keypoints[0][matches[:, 0]], keypoints[1][matches[:, 1]]
    # skimage transforms work in (x, y) = (col, row)
    model_robust, _ = ransac(
        (src[:, ::-1], dst[:, ::-1]),
        classes[model],
        min_samples=3,
        residual_threshold=1.5,
        max_trials=2000,
        rng=0,
    )
    return Points(lambda p: model_robust(np.asarray(p)[:, ::-1])[:, ::-1])


def skimage_pcc(reference, moving, model):
    from skimage.registration import phase_cross_correlation

    shift, _, _ = phase_cross_correlation(reference, moving, upsample_factor=20)
    return Points(lambda p: np.asarray(p) - shift)


def _flow_map(flow):
    from scipy import ndimage as ndi

    def moving_coordinates(p):
        p = np.asarray(p)
        return p + np.stack(
            [ndi.map_coordinates(f, p.T, order=1, mode="nearest") for f in flow], axis=1
        )

    return Points(moving_coordinates)


def skimage_ilk(reference, moving, model):
    from skimage.registration import optical_flow_ilk

    return _flow_map(optical_flow_ilk(reference, moving, radius=15))


def skimage_tvl1(reference, moving, model):
    from skimage.registration import optical_flow_tvl1

    return _flow_map(optical_flow_tvl1(reference, moving))


def elastix(reference, moving, model):
    import itk

    kind = {
        "translation": "translation",
        "rigid": "rigid",
        "similarity": "affine",
        "affine": "affine",
    }.get(model, "bspline")
    parameters = itk.ParameterObject.New()
    parameters.AddParameterMap(parameters.GetDefaultParameterMap(kind))
    fixed = itk.image_view_from_array(reference.astype(np.float32))
    moving_image = itk.image_view_from_array(moving.astype(np.float32))
    _, result = itk.elastix_registration_method(
        fixed, moving_image, parameter_object=parameters, log_to_console=False
    )

    def moving_coordinates(p):
        # elastix maps fixed (reference) points to moving points; the field is in (x, y).
        # transformix writes deformationField.nii into the working directory: use a
        # scratch one. (Called after the clock stops: the registration is timed alone.)
        with tempfile.TemporaryDirectory() as scratch:
            here = os.getcwd()
            os.chdir(scratch)
            try:
                field = np.asarray(itk.transformix_deformation_field(moving_image, result))
            finally:
                os.chdir(here)
        flow = np.stack([field[..., 1], field[..., 0]])
        return _flow_map(flow).moving_coordinates(p)

    return Points(moving_coordinates)


def _available_elastix() -> bool:
    try:
        import itk  # noqa: F401
    except ImportError:
        return False
    return True


def run(method, reference, moving, model, truth, points):
    start = time.perf_counter()
    try:
        transform = method(reference, moving, model)
        seconds = time.perf_counter() - start
        error = np.linalg.norm(transform.moving_coordinates(points) - truth, axis=1)
    except Exception as exc:  # a baseline that fails is a result, not a crash
        return f"failed: {type(exc).__name__}: {str(exc)[:50]}", time.perf_counter() - start
    return error, seconds


def report(label, method_name, outcome, our_seconds):
    result, seconds = outcome
    ratio = f"{seconds / our_seconds:6.2f}x" if our_seconds else ""
    if isinstance(result, str):
        print(f"{label:38s} {method_name:13s} {result}")
        return
    rms = np.sqrt(np.mean(result**2))
    print(
        f"{label:38s} {method_name:13s} max {result.max():8.3f}  rms {rms:7.3f}  "
        f"p95 {np.percentile(result, 95):7.3f}  {seconds:6.2f} s  {ratio}",
        flush=True,
    )


def _size(big, size):
    return min(size, (min(big.shape) - 40) // 32 * 32)


def cases(size: int, quick: bool, rng):
    """The pairs, as (label, model, reference, moving, points, truth), one at a time."""
    translation = TRANSLATION_CASES[:1] if quick else TRANSLATION_CASES
    for name, shift in translation:
        big = picture(name)
        n = _size(big, size)
        matrix = linear_matrix(translation=shift, n=n)
        reference, moving = linear_pair(big, matrix, n, 0.03, rng)
        points = interior_points(n)
        label = f"{name} {n} translation ({shift[0]:+.2f}, {shift[1]:+.2f})"
        yield label, "translation", reference, moving, points, points + matrix[:2, 2]
    linear = LINEAR_CASES[:2] if quick else LINEAR_CASES
    for name, model, angle, scale, shear in linear:
        big = picture(name)
        n = _size(big, size)
        matrix = linear_matrix(angle, scale, shear, translation=(7.3, -4.1), n=n)
        reference, moving = linear_pair(big, matrix, n, 0.03, rng)
        points = interior_points(n)
        truth = points @ matrix[:2, :2].T + matrix[:2, 2]
        label = f"{name} {n} {model} {angle:+.0f}deg x{scale:.2f} sh{shear:.2f}"
        yield label, model, reference, moving, points, truth
    deformable = DEFORMABLE_CASES[:2] if quick else DEFORMABLE_CASES
    for name, angle, amplitude, wavelengths in deformable:
        big = picture(name)
        n = _size(big, size)
        warp = SmoothWarp(
            linear_matrix(angle, translation=(3.3, -2.1), n=n), amplitude, wavelengths, rng
        )
        reference, moving = warped_pair(big, warp, n, 0.03, rng)
        points = interior_points(n, margin=0.1, count=40)
        label = f"{name} {n} deformable {angle:+.1f}deg {amplitude}px {wavelengths}"
        yield label, "deformable", reference, moving, points, warp.moving_coordinates(points)


def baselines(model: str, with_elastix: bool) -> dict:
    """The methods compared with ours on a pair of `model`."""
    if model == "translation":
        methods = {"skimage-pcc": skimage_pcc}
    elif model == "deformable":
        methods = {"skimage-ilk": skimage_ilk, "skimage-tvl1": skimage_tvl1}
    else:
        methods = {"skimage-orb": skimage_orb, "skimage-pcc": skimage_pcc}
    if with_elastix:
        methods["elastix"] = elastix
    return methods


def compare(size: int = 384, quick: bool = False, seed: int = 0) -> list[dict]:
    """Every pair, every method: prints a line each; returns the rows for model_table."""
    rng = np.random.default_rng(seed)
    with_elastix = _available_elastix()
    print(f"pairs {size}^2, 3% noise; time ratio = baseline / napari_ncc")
    if not with_elastix:
        print("(elastix not installed: pip install napari-ncc[bench] to compare with it)")
    # First calls load libraries and compile kernels (numba, ITK's lazy modules): not timed.
    warm = picture("camera")[:160, :160]
    for model in ("translation", "rigid", "deformable"):
        ours(warm, warm, model)
        if with_elastix:
            elastix(warm, warm, model)
    rows = []
    for label, model, reference, moving, points, truth in cases(size, quick, rng):
        mine = run(ours, reference, moving, model, truth, points)
        report(label, "napari_ncc", mine, 0)
        rows.append({"model": model, "method": "napari_ncc", "outcome": mine})
        for method_name, method in baselines(model, with_elastix).items():
            outcome = run(method, reference, moving, model, truth, points)
            report(label, method_name, outcome, mine[1])
            rows.append({"model": model, "method": method_name, "outcome": outcome})
    return rows


def model_table(rows: list[dict]) -> list[str]:
    """Per model and method: pairs, worst max error, worst RMS error, median time, and the
    median time over ours (Markdown table lines; a failed pair counts as failed)."""
    lines = [
        "| model | method | pairs | max error (px) | RMS error (px) | median time (s) | "
        "time / napari_ncc |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    models = list(dict.fromkeys(row["model"] for row in rows))
    for model in models:
        ours_time = np.median(
            [r["outcome"][1] for r in rows if r["model"] == model and r["method"] == "napari_ncc"]
        )
        methods = list(dict.fromkeys(r["method"] for r in rows if r["model"] == model))
        for method in methods:
            outcomes = [
                r["outcome"] for r in rows if r["model"] == model and r["method"] == method
            ]
            errors = [e for e, _ in outcomes if not isinstance(e, str)]
            failed = len(outcomes) - len(errors)
            seconds = float(np.median([s for _, s in outcomes]))
            if errors:
                worst = f"{max(e.max() for e in errors):.3f}"
                rms = f"{max(np.sqrt(np.mean(e**2)) for e in errors):.3f}"
            else:
                worst = rms = "-"
            if failed:
                worst += f" ({failed} failed)"
            lines.append(
                f"| {model} | {method} | {len(outcomes)} | {worst} | {rms} | {seconds:.2f} | "
                f"{seconds / ours_time:.2f}x |"
            )
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=384)
    parser.add_argument("--quick", action="store_true", help="fewer pairs of each kind")
    args = parser.parse_args()
    rows = compare(args.size, args.quick)
    print()
    print("\n".join(model_table(rows)))


if __name__ == "__main__":
    main()
