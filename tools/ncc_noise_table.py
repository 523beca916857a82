"""The chance-correlation table of docs/ncc.md ("Choosing the radius").

The NCC of two *independent* white-noise images is chance alone: its spread says how far
from 0 an unrelated pair strays for a given window. For 1024 x 1024 pairs of independent
Gaussian noise, and each radius, prints the standard deviation of the NCC (box and Gaussian
windows), the fraction of pixels whose box NCC exceeds 0.5 (what the command line's
summary would count as confident), and the theory next to it: ``1 / sqrt(n - 1)`` for a box
of ``n`` pixels, ``sqrt(sum(w**2))`` for the Gaussian weights ``w``.

Every pixel of the map counts, the border ones included (the default ``reflect`` border
repeats data there, which changes the spread little); no pixel is undefined (noise is never
flat).

Run: ``.venv/bin/python tools/ncc_noise_table.py [--size 1024] [--seed 0]``
"""

from __future__ import annotations

import argparse

import numpy as np

from napari_ncc import local_ncc

RADII = (1, 2, 3, 5, 7)


def gaussian_window(radius: int) -> np.ndarray:
    """The 2D Gaussian weights docs/ncc.md describes: sigma = radius / 2, truncated at the
    radius, normalised to sum 1 (written out here, not taken from the package)."""
    x = np.arange(-radius, radius + 1, dtype=np.float64)
    w = np.exp(-0.5 * (x / (radius / 2.0)) ** 2)
    w2 = np.outer(w, w)
    return w2 / w2.sum()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=1024)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    rng = np.random.default_rng(args.seed)
    shape = (args.size, args.size)
    a = rng.standard_normal(shape).astype(np.float32)
    b = rng.standard_normal(shape).astype(np.float32)
    print(
        f"NCC of two independent {args.size}x{args.size} Gaussian-noise images (seed {args.seed})"
    )
    print("| radius | box window | std of NCC (box) | 1/sqrt(n - 1) | unrelated pixels with "
          "NCC > 0.5 (box) | std of NCC (gaussian) | sqrt(sum w^2) |")  # fmt: skip
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for radius in RADII:
        box = local_ncc(a, b, radius=radius)
        gauss = local_ncc(a, b, radius=radius, window="gaussian")
        n = (2 * radius + 1) ** 2
        weights = gaussian_window(radius)
        above = np.mean(box > 0.5)
        print(
            f"| {radius} | {2 * radius + 1} \u00d7 {2 * radius + 1} | {box.std():.3f} "
            f"| {1 / np.sqrt(n - 1):.3f} | {above:.2%} | {gauss.std():.3f} "
            f"| {np.sqrt((weights**2).sum()):.3f} |"
        )


if __name__ == "__main__":
    main()
