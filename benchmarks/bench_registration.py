"""Accuracy, time and memory of ``napari_ncc.register`` on a huge virtual image.

A 40000 x 40000 float32 pair (1.6 gigapixels each, 6.4 GB each if it were loaded) is
generated lazily, block by block, from a procedural texture (``SeparableTexture`` of
``tests/test_registration.py``: exact at any real coordinate, so the moving image is the
texture at ``pixel + shift`` for a known fractional shift). Each scenario runs in a fresh
process so that its peak RSS is its own:

* ``pyramid``: the caller passes a coarse level (napari multiscale style): only the
  refinement tiles are read at full resolution;
* ``coarsen``: a plain Dask array: block means are computed chunk by chunk (every chunk
  read once), then the tiles;
* ``baseline``: ``skimage.registration.phase_cross_correlation(upsample_factor=20)`` on
  the largest crop it handles comfortably (4096 x 4096 in memory; the full image would
  need ~26 GB per complex FFT array), next to ``register`` on the same crop, with the
  time ratio.

Prints the error against the true shift, wall time, full-resolution chunks read and
peak RSS. Then, on small images in memory (``samples``, a few seconds): the worst error of
``register`` and of skimage's ``phase_cross_correlation(upsample_factor=20)`` over 8 known
fractional shifts of up to 20 % of the image, on skimage's ``cell`` and ``camera`` and on
``cell`` with Gaussian noise of sigma 5 grey levels added to both images.

Then (``models``) the accuracy and time of ``register(model=...)`` for every model
(translation, rigid, similarity, affine, deformable) on real pictures through known
transforms, against elastix (``itk-elastix``, the ``bench`` extra: ``pip install
napari-ncc[bench]``) and scikit-image on the same pairs in the same run: the comparison of
``benchmarks/bench_transforms.py`` (imported, not repeated here), ending with a table per
model with each method's time over ours.

With ``--model rigid`` or ``--model deformable`` it runs the transform scenarios instead,
on a 20000 x 20000 pair (``--size``) generated lazily from ``tests/lazy_pairs.py``'s
``NoiseTexture`` (value noise over octaves, exact at any coordinate): the moving image is the
texture at ``G(q)``, a rotation by about a degree and a shift of over a thousand pixels
(deformable: plus a smooth sinusoidal field of 3 px amplitude, 3000 px wavelength), with
noise. Printed: the largest and RMS distance between ``moving_coordinates(p)`` and the
truth on a 41 x 41 grid of interior points (those whose true position lies inside the
moving image), wall time, peak RSS (each scenario in a fresh process), the blocks read,
and the time to compute one 1024 x 1024 tile of ``apply(moving)`` alone (a fresh moving
array, nothing cached). The baseline, in the same run: the in-memory path
(``register(..., model=...)`` on the largest crop it holds comfortably, 4096 x 4096 for
"rigid", 1024 x 1024 for "deformable", with ``max_size`` the crop's side)
and scikit-image's ``phase_cross_correlation`` (translation only) on that crop, with the
time per pixel ratio.

Run: ``.venv/bin/python benchmarks/bench_registration.py [--size 40000]
[--only huge|samples|models] [--models-size 384] [--quick]``
or ``.venv/bin/python benchmarks/bench_registration.py --model rigid [--size 20000]``
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np

TESTS = Path(__file__).resolve().parent.parent / "tests"
SHIFT = (3123.37, -5210.62)  # moving(y) = texture(y + SHIFT): register must return SHIFT


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def virtual_pair(size: int, chunk: int):
    import dask.array as da

    sys.path.insert(0, str(TESTS))
    from test_registration import SeparableTexture

    texture = SeparableTexture((size, size), seed=7, flat_border=0.1)
    calls = {"reference": 0, "moving": 0}
    lock = threading.Lock()

    def source(name, shift):
        def block(block_info=None):
            with lock:
                calls[name] += 1
            location = block_info[None]["array-location"]
            return texture.block(tuple(slice(a, b) for a, b in location), shift)

        return da.map_blocks(
            block,
            chunks=da.core.normalize_chunks(chunk, (size, size)),
            dtype=np.float32,
            meta=np.empty((0, 0), np.float32),
        )

    return texture, source("reference", (0.0, 0.0)), source("moving", SHIFT), calls


def run_scenario(name: str, size: int, chunk: int) -> dict:
    import dask

    from napari_ncc import register

    dask.config.set(scheduler="threads", num_workers=2)
    texture, reference, moving, calls = virtual_pair(size, chunk)
    result: dict = {"scenario": name, "size": size, "chunk": chunk}
    if name == "baseline":
        from skimage.registration import phase_cross_correlation

        crop = 4096
        region = (slice(size // 2 - crop // 2, size // 2 + crop // 2),) * 2
        ref = texture.block(region)
        mov = texture.block(region, SHIFT)
        # The crop is far smaller than the shift: make the crop pair overlap by taking the
        # moving crop where the reference content went (offset by the integer part).
        offset = np.floor(SHIFT).astype(int)
        mov = texture.block(
            tuple(slice(r.start - o, r.stop - o) for r, o in zip(region, offset, strict=True)),
            SHIFT,
        )
        expected = np.array(SHIFT) - offset
        t0 = time.perf_counter()
        sk_shift, _, _ = phase_cross_correlation(ref, mov, upsample_factor=20)
        result["skimage_s"] = time.perf_counter() - t0
        result["skimage_err_px"] = float(np.abs(sk_shift - expected).max())
        t0 = time.perf_counter()
        reg = register(ref, mov)
        result["register_s"] = time.perf_counter() - t0
        result["register_err_px"] = float(np.abs(np.array(reg.shift) - expected).max())
        result["crop"] = crop
    else:
        if name == "pyramid":
            factor = 32
            coarse = (slice(0, size // factor),) * 2
            ref_in = [reference, texture.block(coarse, factor=factor)]
            mov_in = [moving, texture.block(coarse, SHIFT, factor=factor)]
        else:
            ref_in, mov_in = reference, moving
        t0 = time.perf_counter()
        reg = register(ref_in, mov_in)
        result["register_s"] = time.perf_counter() - t0
        result["register_err_px"] = float(np.abs(np.array(reg.shift) - SHIFT).max())
        result["quality"] = reg.quality
        result["reliable"] = reg.reliable
        result["method"] = reg.method
        result["notes"] = list(reg.notes)
        result["chunks_read"] = dict(calls)
        result["chunks_total"] = int(np.prod(reference.numblocks))
    result["peak_rss_mb"] = peak_rss_mb()
    return result


def known_shifts_on_samples(n_shifts: int = 8, seed: int = 0) -> None:
    """Worst error of register and of skimage over known shifts on small sample images."""
    import warnings

    from skimage import data
    from skimage.registration import phase_cross_correlation

    from napari_ncc import RegistrationWarning, register

    sys.path.insert(0, str(TESTS))
    from test_registration import shifted_pair  # crop of image and of image(y + shift)

    rng = np.random.default_rng(seed)
    cases = [
        ("cell", data.cell(), 0.0),
        ("cell, noise sigma 5", data.cell(), 5.0),
        ("camera", data.camera(), 0.0),
    ]
    print(
        f"known shifts on sample images: worst |error| over {n_shifts} shifts of up to 20% "
        "of the crop (px); skimage = phase_cross_correlation(upsample_factor=20)"
    )
    for name, image, noise in cases:
        crop = np.array([int(0.7 * n) for n in image.shape])
        ours, theirs = [], []
        for _ in range(n_shifts):
            shift = rng.uniform(-0.2, 0.2, 2) * crop
            reference, moving = shifted_pair(image, shift)
            if noise:
                reference = reference + rng.normal(0, noise, reference.shape)
                moving = moving + rng.normal(0, noise, moving.shape)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", RegistrationWarning)
                found = register(reference, moving).shift
            sk_shift, _, _ = phase_cross_correlation(reference, moving, upsample_factor=20)
            ours.append(np.abs(np.asarray(found) - shift).max())
            theirs.append(np.abs(sk_shift - shift).max())
        print(
            f"  {name:<20} register {max(ours):7.3f}   skimage {max(theirs):7.3f}"
            f"   (skimage median {np.median(theirs):.3f})"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=40000)
    parser.add_argument("--chunk", type=int, default=4096)
    parser.add_argument("--only", choices=["huge", "samples", "models"], help="run one part alone")
    parser.add_argument(
        "--models-size", type=int, default=384, help="side of the pairs of the models part"
    )
    parser.add_argument("--quick", action="store_true", help="models: fewer pairs")
    parser.add_argument(
        "--model", choices=["rigid", "deformable"], help="the transform scenarios instead"
    )
    parser.add_argument("--scenario", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.scenario and args.model:
        print(json.dumps(run_model_scenario(args.scenario, args.model, args.size)))
        return
    if args.scenario:
        print(json.dumps(run_scenario(args.scenario, args.size, args.chunk)))
        return
    if args.model:
        model_pair(args.model, 20000 if args.size == 40000 else args.size)
        return
    if args.only in (None, "huge"):
        huge_pair(args.size, args.chunk)
    if args.only in (None, "samples"):
        known_shifts_on_samples()
    if args.only in (None, "models"):
        per_model(args.models_size, args.quick)


def per_model(size: int, quick: bool) -> None:
    """Every model against elastix and scikit-image (bench_transforms' comparison)."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import bench_transforms

    print(f"\nper model: register(model=...) vs elastix and scikit-image, {size}^2 pairs")
    rows = bench_transforms.compare(size, quick)
    print()
    print("\n".join(bench_transforms.model_table(rows)))


def huge_pair(size: int, chunk: int) -> None:
    """The three scenarios on the virtual pair, each in a fresh process."""
    gigabytes = size**2 * 4 / 1e9
    print(
        f"virtual pair {size} x {size} float32 ({gigabytes:.1f} GB each), "
        f"chunks {chunk}, true shift {SHIFT}"
    )
    results = {}
    for name in ("pyramid", "coarsen", "baseline"):
        out = subprocess.run(
            [
                sys.executable,
                __file__,
                "--scenario",
                name,
                "--size",
                str(size),
                "--chunk",
                str(chunk),
            ],
            capture_output=True,
            text=True,
            check=True,
        )
        results[name] = json.loads(out.stdout.strip().splitlines()[-1])
    for name in ("pyramid", "coarsen"):
        r = results[name]
        reads = r["chunks_read"]
        print(
            f"{name:8s} register: {r['register_s']:6.1f} s, error {r['register_err_px']:.4f} px, "
            f"quality {r['quality']:.4f}, reliable {r['reliable']}, full-res chunks read "
            f"{reads['reference']}+{reads['moving']} of {r['chunks_total']}+{r['chunks_total']}, "
            f"peak RSS {r['peak_rss_mb']:.0f} MB  [{r['method']}]"
        )
    b = results["baseline"]
    print(
        f"baseline {b['crop']}x{b['crop']} in memory: skimage phase_cross_correlation "
        f"{b['skimage_s']:.2f} s (error {b['skimage_err_px']:.4f} px), register "
        f"{b['register_s']:.2f} s (error {b['register_err_px']:.4f} px), "
        f"time ratio register/skimage {b['register_s'] / b['skimage_s']:.2f}, "
        f"peak RSS {b['peak_rss_mb']:.0f} MB"
    )
    full = results["coarsen"]
    print(
        f"full image vs skimage crop: register reads {size**2 / b['crop'] ** 2:.0f}x "
        f"more pixels in {full['register_s'] / b['skimage_s']:.1f}x skimage's crop time"
    )


# --------------------------------------------------------------------------------------
# Transform models on a huge lazy pair
# --------------------------------------------------------------------------------------

MODEL_CHUNK = 1024
MODEL_SHIFT = (1234.56, -1502.3)  # G(q) = R (q - c) + c + shift, at 20000 x 20000
MODEL_ANGLE = 1.05
#: The largest crop the in-memory path holds comfortably: its deformable fit interpolates
#: a tile every 32 px with a dense thin-plate spline (O(tiles^3)), so a smaller one there.
CROP = {"rigid": 4096, "deformable": 1024}


def model_lazy_pair(model: str, size: int):
    sys.path.insert(0, str(TESTS))
    from lazy_pairs import LazyPair, SineField, rotation_matrix

    field = SineField(3.0, 3000.0, seed=5) if model == "deformable" else None
    # Smaller sizes (quick checks) get a proportional shift.
    shift = np.asarray(MODEL_SHIFT) * min(1.0, size / 20000)
    matrix = rotation_matrix(MODEL_ANGLE, shift, ((size - 1) / 2,) * 2)
    return LazyPair((size, size), MODEL_CHUNK, matrix, field, noise=0.5, seed=11)


def _model_errors(reg_coordinates, truth_coordinates, size, count=41) -> tuple[float, float]:
    g = np.linspace(0.05 * (size - 1), 0.95 * (size - 1), count)
    points = np.stack(np.meshgrid(g, g, indexing="ij"), -1).reshape(-1, 2)
    truth = truth_coordinates(points)
    inside = np.all((truth > 0.02 * size) & (truth < 0.98 * size), axis=1)
    errors = np.linalg.norm(reg_coordinates(points[inside]) - truth[inside], axis=1)
    return float(errors.max()), float(np.sqrt(np.mean(errors**2)))


def run_model_scenario(name: str, model: str, size: int) -> dict:
    import dask

    from napari_ncc import register

    dask.config.set(scheduler="threads", num_workers=2)
    pair = model_lazy_pair(model, size)
    result: dict = {"scenario": name, "model": model, "size": size, "chunk": MODEL_CHUNK}
    if name == "baseline":
        from skimage.registration import phase_cross_correlation

        # The central crop of the reference, and the crop of moving where it went.
        crop = CROP[model]
        c0 = size // 2 - crop // 2
        region = (slice(c0, c0 + crop),) * 2
        centre = np.array([[c0 + crop / 2, c0 + crop / 2]])
        o = np.round(pair.moving_coordinates(centre)[0] - crop / 2).astype(int)
        moving_region = tuple(slice(int(a), int(a) + crop) for a in o)
        reference = pair.texture.block(region)
        moving = pair.texture.block(moving_region, pair.matrix, pair.field)

        def truth(p):
            return pair.moving_coordinates(p + c0) - o

        t0 = time.perf_counter()
        reg = register(reference, moving, model=model, max_size=crop)
        result["register_s"] = time.perf_counter() - t0
        result["register_max_px"], result["register_rms_px"] = _model_errors(
            reg.moving_coordinates, truth, crop
        )
        t0 = time.perf_counter()
        shift, _, _ = phase_cross_correlation(reference, moving, upsample_factor=20)
        result["skimage_s"] = time.perf_counter() - t0
        result["skimage_max_px"], result["skimage_rms_px"] = _model_errors(
            lambda p: p - shift, truth, crop
        )
        result["crop"] = crop
    else:
        t0 = time.perf_counter()
        reg = register(pair.reference, pair.moving, model=model)
        result["register_s"] = time.perf_counter() - t0
        result["register_max_px"], result["register_rms_px"] = _model_errors(
            reg.moving_coordinates, pair.moving_coordinates, size
        )
        result["reliable"] = reg.reliable
        result["method"] = reg.method
        result["notes"] = list(reg.notes)
        result["tiles"] = len(reg.tiles.centers)
        result["rejected"] = int(reg.tiles.rejected.sum())
        result["blocks_read"] = {k: len(v) for k, v in pair.reads.items()}
        result["blocks_total"] = int(np.prod(pair.reference.numblocks))
        result["register_rss_mb"] = peak_rss_mb()
        # One 1024 x 1024 tile of the registered moving image, from a fresh (uncached) pair.
        fresh = model_lazy_pair(model, size)
        out = reg.apply(fresh.moving)
        a = size // 2 - 512
        t0 = time.perf_counter()
        tile = out[a : a + 1024, a : a + 1024].compute()
        result["apply_tile_s"] = time.perf_counter() - t0
        result["apply_tile_blocks"] = len(fresh.reads["moving"])
        expected = pair.texture.at(np.indices(tile.shape).reshape(2, -1).T + a)
        result["apply_tile_max_grey"] = float(np.abs(tile.ravel() - expected).max())
    result["peak_rss_mb"] = peak_rss_mb()
    return result


def model_pair(model: str, size: int) -> None:
    """The transform scenario and its in-memory baselines, each in a fresh process."""
    print(
        f"{model}: virtual pair {size} x {size} float32 ({size**2 * 4 / 1e9:.1f} GB each), "
        f"chunks {MODEL_CHUNK}, rotation {MODEL_ANGLE} deg, shift {MODEL_SHIFT}"
        + (", field 3 px / 3000 px" if model == "deformable" else "")
    )
    results = {}

    def run(name):
        command = [sys.executable, __file__, "--scenario", name, "--model", model]
        out = subprocess.run(
            [*command, "--size", str(size)], capture_output=True, text=True, check=True
        )
        results[name] = json.loads(out.stdout.strip().splitlines()[-1])

    run("huge")
    r = results["huge"]
    reads = r["blocks_read"]
    print(
        f"huge     register: {r['register_s']:6.1f} s, error max {r['register_max_px']:.3f} px "
        f"RMS {r['register_rms_px']:.3f} px, reliable {r['reliable']}, {r['tiles']} tiles "
        f"({r['rejected']} rejected), blocks read {reads['reference']}+{reads['moving']} of "
        f"{r['blocks_total']}+{r['blocks_total']}, peak RSS {r['register_rss_mb']:.0f} MB "
        f"[{r['method']}]"
    )
    print(
        f"huge     apply: one 1024x1024 tile in {r['apply_tile_s']:.2f} s "
        f"({r['apply_tile_blocks']} moving blocks computed, largest difference from the "
        f"texture {r['apply_tile_max_grey']:.2f} grey levels of 20), peak RSS "
        f"{r['peak_rss_mb']:.0f} MB"
    )
    run("baseline")
    b = results["baseline"]
    print(
        f"baseline {b['crop']}x{b['crop']} in memory: register {b['register_s']:.1f} s "
        f"(max {b['register_max_px']:.3f} px, RMS {b['register_rms_px']:.3f} px); skimage "
        f"phase_cross_correlation {b['skimage_s']:.1f} s (translation only: max "
        f"{b['skimage_max_px']:.2f} px, RMS {b['skimage_rms_px']:.2f} px); "
        f"peak RSS {b['peak_rss_mb']:.0f} MB"
    )
    per_pixel = (r["register_s"] / size**2) / (b["register_s"] / b["crop"] ** 2)
    print(
        f"huge vs in-memory crop: {size**2 / b['crop'] ** 2:.0f}x the pixels in "
        f"{r['register_s'] / b['register_s']:.1f}x the time (time per pixel ratio "
        f"{per_pixel:.3f})"
    )


if __name__ == "__main__":
    main()
