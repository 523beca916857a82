"""Benchmark of writing a lazy NCC map to .zarr and to .tif (issue 12, item 4). Prints
figures; asserts nothing.

The same lazy map, the local NCC (radius 3) of two uint16 zarr images made on disk by this
script, the moving one shifted by a subpixel amount as the command line does after a
registration, is written in a fresh child process by

- ``zarr``: :func:`napari_ncc.write_zarr` (the baseline: chunk by chunk),
- ``tiff``: :func:`napari_ncc.write_tiff` (block by block into the tiles of a laid-out file),
- ``tiff-in-memory`` (with ``--in-memory``): what ``napari-ncc compare -o map.tif`` did
  before, the whole map computed into memory, then written zlib-compressed.

For each: wall time and the child's peak resident memory (VmHWM, read in the child: unlike
``getrusage``, it does not inherit the parent's peak), and the tif/zarr ratios. Each kind
runs ``--repeat`` times, alternating, and the fastest run is reported (the machine is
noisy); memory is the largest peak.

Targets (issue 12): at 12000 x 12000 the TIFF peaks under 1 GB and takes at most ~1.5x
the zarr time.

Usage::

    python benchmarks/bench_output.py               # 4096^2, about a minute
    python benchmarks/bench_output.py --size 12000  # the issue's figure
    python benchmarks/bench_output.py --size 12000 --in-memory

Inputs and outputs go to a temporary folder under ``--data`` (default: the system's
temporary folder), removed at the end: about ``6 * size**2`` bytes at the peak.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time

import numpy as np

CHUNK = 2048
RADIUS = 3
SHIFT = (2.3, -1.7)
KINDS = ("zarr", "tiff")


def peak_rss_mb() -> float:
    """Peak resident memory of this process, in MB."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def make_input(path: str, n: int, seed: int) -> None:
    """A uint16 zarr image with smooth structure and noise, written chunk by chunk."""
    import dask.array as da

    def block(block_info=None):
        (y0, y1), (x0, x1) = block_info[None]["array-location"]
        rng = np.random.default_rng([seed, y0, x0])
        y = np.arange(y0, y1, dtype=np.float32)[:, None]
        x = np.arange(x0, x1, dtype=np.float32)[None, :]
        smooth = 3000 * np.sin(y / 37 + seed) * np.cos(x / 53)
        noise = rng.integers(0, 400, (y1 - y0, x1 - x0))
        return (20000 + smooth + noise).astype(np.uint16)

    axis = (CHUNK,) * (n // CHUNK) + ((n % CHUNK,) if n % CHUNK else ())
    image = da.map_blocks(
        block, chunks=(axis, axis), dtype=np.uint16, meta=np.empty((0, 0), np.uint16)
    )
    image.to_zarr(path, overwrite=True)


def child(kind: str, data: str) -> None:
    """Runs in a fresh process: write the lazy map as `kind`, print JSON figures."""
    import tifffile

    from napari_ncc import local_ncc, read_image, write_tiff, write_zarr
    from napari_ncc._ncc import ncc_block, plan_ncc

    # Load the compiled kernels before timing.
    tiny = np.zeros((8, 8), np.uint16)
    maps = [np.clip(np.arange(-RADIUS, 8 + RADIUS), 0, 7)] * 2
    ncc_block(tiny, tiny.astype(np.float32), plan_ncc(tiny.shape, tiny.shape, RADIUS), maps)
    (a,), _ = read_image(os.path.join(data, "a.zarr"))
    (b,), _ = read_image(os.path.join(data, "b.zarr"))
    ncc = local_ncc(a, b, radius=RADIUS, moving_shift=SHIFT)
    out = os.path.join(data, f"out-{kind}" + (".zarr" if kind == "zarr" else ".tif"))
    t0 = time.perf_counter()
    if kind == "zarr":
        write_zarr(ncc, out, progress=False)
    elif kind == "tiff":
        write_tiff(ncc, out, progress=False)
    elif kind == "tiff-in-memory":
        tifffile.imwrite(out, np.asarray(ncc.compute()), compression="zlib")
    else:
        raise ValueError(kind)
    wall = time.perf_counter() - t0
    size = sum(
        os.path.getsize(os.path.join(root, f)) for root, _, files in os.walk(out) for f in files
    ) or os.path.getsize(out)
    shutil.rmtree(out) if os.path.isdir(out) else os.remove(out)
    print(json.dumps({"wall": wall, "peak_rss_mb": peak_rss_mb(), "file_mb": size / 1e6}))


def run_child(kind: str, data: str) -> dict:
    cmd = [sys.executable, os.path.abspath(__file__), "--child", kind, "--data", data]
    done = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, default=4096, help="image side (default 4096)")
    parser.add_argument("--repeat", type=int, default=2, help="runs per kind (default 2)")
    parser.add_argument("--in-memory", action="store_true", help="also the old TIFF path")
    parser.add_argument("--data", default=None, help="folder for the temporary files")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        child(args.child, args.data)
        return 0

    kinds = (*KINDS, "tiff-in-memory") if args.in_memory else KINDS
    n = args.size
    with tempfile.TemporaryDirectory(prefix="bench-output-", dir=args.data) as data:
        t0 = time.perf_counter()
        make_input(os.path.join(data, "a.zarr"), n, 0)
        make_input(os.path.join(data, "b.zarr"), n, 1)
        print(f"inputs: two {n} x {n} uint16 zarr images, {CHUNK}^2 chunks, made in "
              f"{time.perf_counter() - t0:.1f} s; map: local NCC, radius {RADIUS}, moving "
              f"shifted by {SHIFT}; {os.cpu_count()} CPUs")  # fmt: skip
        runs: dict[str, list[dict]] = {kind: [] for kind in kinds}
        for _ in range(args.repeat):
            for kind in kinds:
                runs[kind].append(run_child(kind, data))
    best = {
        kind: {
            "wall": min(r["wall"] for r in results),
            "peak_rss_mb": max(r["peak_rss_mb"] for r in results),
            "file_mb": results[0]["file_mb"],
        }
        for kind, results in runs.items()
    }
    print(f"{'output':<16}{'time (s)':>10}{'peak RSS (MB)':>15}{'file (MB)':>11}")
    for kind, figures in best.items():
        print(
            f"{kind:<16}{figures['wall']:>10.2f}{figures['peak_rss_mb']:>15.0f}"
            f"{figures['file_mb']:>11.0f}"
        )
    for kind in kinds[1:]:
        time_ratio = best[kind]["wall"] / best["zarr"]["wall"]
        rss_ratio = best[kind]["peak_rss_mb"] / best["zarr"]["peak_rss_mb"]
        print(f"{kind}/zarr: time {time_ratio:.2f}x, peak RSS {rss_ratio:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
