"""The example sessions of docs/cli.md, made by running the command line on made-up inputs.

Writes, in a temporary folder, the inputs the page talks about and runs the page's commands
in it with the installed ``napari-ncc``, printing each command and what it printed (stderr
first: the ``napari-ncc:`` log lines; then stdout, the result):

* ``before.tif``: ``skimage.data.camera()``, float32; ``after.tif``: the same displaced by
  (3.3, -6.1) pixels (cubic spline, ``mode="nearest"``);
* ``movie.tif``: 4 planes of 200 x 200 pixels cut from the camera image, plane ``t``
  displaced by ``t * (0.7, -1.3)`` pixels (a steady drift), stored as a TYX stack.

Run: ``.venv/bin/python tools/cli_examples.py`` (``--keep DIR`` to keep the files there).
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import tifffile
from scipy import ndimage
from skimage import data

NAPARI_NCC = str(Path(sys.executable).with_name("napari-ncc"))
COMMANDS = [
    ["demo", "-o", "demo-output"],
    ["compare", "before.tif", "after.tif", "-o", "ncc.zarr"],
    ["compare", "movie.tif", "movie.tif", "-o", "drift.zarr", "--per-plane", "0",
     "--reference-plane", "0"],
]  # fmt: skip


def make_inputs(folder: Path) -> None:
    camera = data.camera().astype(np.float32)
    tifffile.imwrite(folder / "before.tif", camera)
    after = ndimage.shift(camera, (3.3, -6.1), order=3, mode="nearest")
    tifffile.imwrite(folder / "after.tif", after.astype(np.float32))
    planes = [
        ndimage.shift(camera, (0.7 * t, -1.3 * t), order=3, mode="nearest")[150:350, 150:350]
        for t in range(4)
    ]
    tifffile.imwrite(
        folder / "movie.tif",
        np.stack(planes).astype(np.float32),
        photometric="minisblack",
        metadata={"axes": "TYX"},
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--keep", type=Path, help="make the files in this folder and keep them")
    args = parser.parse_args(argv)
    folder = args.keep or Path(tempfile.mkdtemp(prefix="napari-ncc-cli-examples-"))
    folder.mkdir(parents=True, exist_ok=True)
    try:
        make_inputs(folder)
        for command in COMMANDS:
            print(f"$ napari-ncc {' '.join(command)}")
            result = subprocess.run(
                [NAPARI_NCC, *command], cwd=folder, capture_output=True, text=True
            )
            print(result.stderr + result.stdout, end="")
            if result.returncode:
                print(f"(exit status {result.returncode})")
            print()
    finally:
        if args.keep is None:
            shutil.rmtree(folder)
    return 0


if __name__ == "__main__":
    sys.exit(main())
