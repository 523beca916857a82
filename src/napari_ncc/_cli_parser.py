"""The ``napari-ncc`` command line's arguments: the parser, its option types and help.

:func:`build_parser` is all :mod:`napari_ncc._cli` needs; every option's type turns a bad
value into one line (``argparse``'s usage error) before anything is read.
"""

from __future__ import annotations

import argparse

from ._borders import MODES
from ._io import LOCAL_SCHEDULERS
from ._samples import SAMPLES
from ._summary import CONFIDENT
from ._transform import MODELS
from ._validation import WINDOWS

__all__ = ["build_parser"]

EPILOG_COMPARE = """\
examples:
  napari-ncc compare before.tif after.tif -o ncc.zarr
  napari-ncc compare a.ome.zarr b.ome.zarr -o ncc.ome.zarr --radius 5 --window gaussian
  napari-ncc compare movie_a.tif movie_b.tif -o ncc.zarr --per-plane 0
  napari-ncc compare movie.tif movie.tif -o drift.zarr --per-plane 0 --reference-plane 0
  napari-ncc compare stack_a.tif stack_b.tif -o ncc.zarr --per-plane 0 --model rigid
  napari-ncc compare a.zarr b.zarr -o ncc.zarr --scheduler tcp://10.0.0.5:8786

inputs: anything the napari-ncc reader opens (TIFF incl. pyramidal/OME-TIFF, zarr,
OME-Zarr, PNG/JPEG), lazily; RGB is compared as luminance. REFERENCE and MOVING must
have the same shape. The moving image is registered (subpixel translation; on a pyramid's
coarse level first when there is one) onto the reference, unless --no-register; the map
is the local NCC of the reference and the registered moving image at full resolution:
one value in [-1, 1] per pixel, FILL where a window is flat or reaches pixels the shift
brought in from outside the moving image.

output: a .zarr store, an .ome.zarr (OME-Zarr, NGFF 0.5, with a pyramid of block means:
other NGFF tools open it as a multiscale image) or a tiled .tif/.tiff file, all written
block by block (any size, bounded memory) to a hidden temporary name renamed at the end.
An existing OUT is never replaced unless --overwrite. The summary goes to stdout (--json
for a machine-readable one); progress and log lines go to stderr.

exit status: 0 done, 1 error, 2 bad arguments, 130 interrupted (Ctrl-C), 143 terminated
(SIGTERM), 129 hung up (SIGHUP). A stopped run removes its temporary output; a later run
removes the temporary outputs of runs that were killed outright (SIGKILL, power loss).
"""

EPILOG_DEMO = """\
The demo registers and compares a built-in sample pair (no download), writes
DIR/ncc.zarr (the map), DIR/preview.png (reference | moving | NCC side by side) and
DIR/summary.json, and prints the summary. It replaces the files of an earlier demo in
DIR, and refuses to replace anything else unless --overwrite.
"""


class _Parser(argparse.ArgumentParser):
    """ArgumentParser whose usage errors are one line, with a pointer to --help."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see '{self.prog} --help')\n")


# --------------------------------------------------------------------------- arguments


def _radius(text: str) -> int | tuple[int, ...]:
    """An int >= 1, or comma-separated ints >= 0 (one per windowed axis)."""
    parts = text.split(",")
    try:
        values = tuple(int(p) for p in parts)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"must be an integer >= 1 (or one integer per axis, like 3,3,1), got {text!r}"
        ) from None
    if len(values) == 1:
        if values[0] < 1:
            raise argparse.ArgumentTypeError(f"must be an integer >= 1, got {text!r}")
        return values[0]
    if any(v < 0 for v in values) or not any(values):
        raise argparse.ArgumentTypeError(
            f"per-axis radii must be >= 0 with at least one >= 1, got {text!r}"
        )
    return values


def _int_at_least(minimum: int):
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = minimum - 1
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be an integer >= {minimum}, got {text!r}")
        return value

    return parse


_positive_int, _positive_or_zero_int = _int_at_least(1), _int_at_least(0)


def _axis(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"must be an axis number (0 for the first axis, -3 for the third from last), "
            f"got {text!r}"
        ) from None


def _real(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number or nan, got {text!r}") from None


def _threshold(text: str) -> float:
    value = _real(text)
    if not -1.0 <= value < 1.0:
        raise argparse.ArgumentTypeError(f"must be in [-1, 1), got {text!r}")
    return value


def _scheduler(text: str) -> str:
    if text in LOCAL_SCHEDULERS[:3] or "://" in text:
        return text
    raise argparse.ArgumentTypeError(
        f"must be one of {', '.join(LOCAL_SCHEDULERS[:3])} or a dask.distributed scheduler "
        f"address such as tcp://host:8786, got {text!r}"
    )


def _add_ncc_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("NCC map")
    group.add_argument(
        "-r",
        "--radius",
        type=_radius,
        default=3,
        metavar="R",
        help="window half-width in pixels: the window spans 2R+1 pixels per axis "
        "(default 3, a 7x7 window in 2D); or one value per windowed axis, like 3,3,1",
    )
    group.add_argument(
        "--window",
        choices=WINDOWS,
        default="box",
        help="window weights: box (uniform, the default) or gaussian (sigma = R/2, "
        "truncated at R)",
    )
    group.add_argument(
        "--mode",
        choices=sorted(MODES),
        default="reflect",
        metavar="MODE",
        help="how windows read beyond the image border, as scipy.ndimage: reflect (the "
        "default), mirror, nearest, wrap, constant (zeros), or a grid-* alias",
    )
    group.add_argument(
        "--fill-value",
        type=_real,
        default=0.0,
        metavar="FILL",
        help="value written where a window is flat and the correlation undefined "
        "(default 0; nan works)",
    )
    group.add_argument(
        "--threshold",
        type=_threshold,
        default=CONFIDENT,
        metavar="T",
        help=f"NCC above which the summary counts a pixel as confident (default {CONFIDENT})",
    )


def _add_run_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("running")
    group.add_argument(
        "--overwrite", action="store_true", help="replace existing output (default: refuse)"
    )
    group.add_argument(
        "-q",
        "--quiet",
        action="store_true",
        help="no progress bar and no log lines on stderr (warnings and errors still show)",
    )
    group.add_argument(
        "--json",
        action="store_true",
        help="print the summary as one JSON object on stdout instead of text",
    )
    group.add_argument("--debug", action="store_true", help="show the full traceback of an error")


def build_parser() -> argparse.ArgumentParser:
    """The ``napari-ncc`` argument parser (with its ``compare`` and ``demo`` commands)."""
    from . import __version__

    parser = _Parser(
        prog="napari-ncc",
        description="Register two images, then map where they agree: the local normalized "
        "cross-correlation (NCC) of the two patches around every pixel.",
        epilog="Run 'napari-ncc COMMAND --help' for the options of a command. "
        "Documentation: https://napari-ncc.readthedocs.io",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    compare = commands.add_parser(
        "compare",
        help="register MOVING onto REFERENCE and write their NCC confidence map to OUT",
        description="Register MOVING onto REFERENCE (subpixel translation), then write the\n"
        "local NCC map of the pair to OUT and print the shift and a summary.",
        epilog=EPILOG_COMPARE,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    compare.add_argument("reference", metavar="REFERENCE", help="the reference image file")
    compare.add_argument("moving", metavar="MOVING", help="the image to compare with it")
    compare.add_argument(
        "-o",
        "--output",
        required=True,
        metavar="OUT",
        help="where to write the map: a .zarr store, an .ome.zarr (OME-Zarr with a "
        "pyramid) or a tiled .tif/.tiff file",
    )
    _add_ncc_options(compare)
    group = compare.add_argument_group("mask")
    group.add_argument(
        "--mask",
        metavar="PATH",
        help="an image of REFERENCE's shape whose non-zero pixels are data (a labels image, "
        "a 0/1 TIFF): every window counts only those pixels (and only those the registered "
        "MOVING covers)",
    )
    group.add_argument(
        "--min-fraction",
        type=_real,
        default=0.5,
        metavar="F",
        help="with --mask: the fraction of a window's pixels that must be data, in (0, 1] "
        "(default 0.5); other windows get FILL",
    )
    group = compare.add_argument_group("registration")
    group.add_argument(
        "--no-register",
        dest="register",
        action="store_false",
        help="compare the images as they are (they are already aligned)",
    )
    group.add_argument(
        "--per-plane",
        type=_axis,
        metavar="AXIS",
        help="treat the images as stacks of planes along AXIS (e.g. 0 for time): plane t "
        "of MOVING is registered to plane t of REFERENCE and the window spans the other "
        "axes only",
    )
    group.add_argument(
        "--reference-plane",
        type=_positive_or_zero_int,
        metavar="T",
        help="with --per-plane: register every plane of MOVING onto plane T of REFERENCE "
        "instead (drift correction: pass the same stack twice) and compare with that plane",
    )
    group.add_argument(
        "--model",
        choices=MODELS,
        default="translation",
        help="transform registered (default translation); the others for 2D images and "
        "3D volumes that fit in memory, or with --per-plane for each 2D plane of a 3D stack",
    )
    group.add_argument(
        "--upsample-factor",
        type=_positive_int,
        default=20,
        metavar="N",
        help="registration precision: 1/N pixel (default 20)",
    )
    _add_run_options(compare)
    run = compare.add_argument_group("dask")
    run.add_argument(
        "--chunks",
        type=_positive_int,
        metavar="N",
        help="chunk size of the written map along every axis (default: the inputs' chunks)",
    )
    run.add_argument(
        "--scheduler",
        type=_scheduler,
        metavar="SCHEDULER",
        help="threads (the default), processes, synchronous, or the address of a running "
        "dask.distributed scheduler, like tcp://host:8786 (its workers must see the "
        "input and output paths)",
    )

    demo = commands.add_parser(
        "demo",
        help="run the whole job on a built-in sample pair and write a PNG preview",
        description="Register and compare a built-in sample pair, write the map and a PNG\n"
        "preview (reference | moving | NCC side by side) to DIR, and print the summary.",
        epilog=EPILOG_DEMO,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    demo.add_argument(
        "-o",
        "--output",
        default="demo-output",
        metavar="DIR",
        help="folder to write into (default: demo-output)",
    )
    demo.add_argument(
        "--sample",
        default="cell",
        choices=SAMPLES,
        help="which sample pair: cell (a cell image and a displaced, locally deformed, noisy "
        "copy; the default) or motorcycle (a stereo pair, as luminance)",
    )
    _add_ncc_options(demo)
    _add_run_options(demo)
    demo.set_defaults(
        register=True,
        upsample_factor=20,
        per_plane=None,
        reference_plane=None,
        mask=None,
        min_fraction=0.5,
    )
    return parser


# --------------------------------------------------------------------------- helpers
