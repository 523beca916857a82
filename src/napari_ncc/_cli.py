"""Command line: ``napari-ncc``. (Placeholder until the full CLI lands.)"""

from __future__ import annotations

import argparse

import numpy as np


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="napari-ncc")
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo", help="run on the built-in sample pair")
    demo.add_argument("-o", "--output", default="demo-output")
    args = parser.parse_args(argv)
    if args.command == "demo":
        from scipy import ndimage
        from skimage import data

        from ._ncc import local_ncc

        reference = data.cell().astype(np.float32)
        moving = ndimage.shift(reference, (3.5, -2.25), mode="nearest")
        ncc = local_ncc(reference, moving, radius=3)
        print(
            f"NCC map {ncc.shape}: mean {ncc.mean():.3f}, "
            f"confident (>0.8) {np.mean(ncc > 0.8):.1%}"
        )
    return 0
