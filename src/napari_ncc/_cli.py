"""Command line: ``napari-ncc compare`` and ``napari-ncc demo``.

A thin front end. It parses arguments, then calls the reader (``read_image``), the
registration (``register``), the map (``ncc_confidence``) and the atomic zarr writer
(``write_zarr``), and prints what they found. The numbers all come from the floors below;
this module only adds the one-line error messages, the progress display, the summary of a
written map and the demo's preview picture.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import math
import os
import sys
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np

from ._borders import MODES
from ._ncc import WINDOWS
from ._samples import SAMPLES

log = logging.getLogger("napari_ncc.cli")

#: A pixel is "confident" when its NCC exceeds this (``--threshold``).
CONFIDENT = 0.5

#: The largest map a TIFF output may hold (it is computed in memory): 1 GiB of float32.
TIFF_MAX_BYTES = 1 << 30

#: Local Dask schedulers ``--scheduler`` accepts by name (else a distributed address).
LOCAL_SCHEDULERS = ("threads", "processes", "synchronous")

ZARR_SUFFIXES = (".zarr",)
TIFF_SUFFIXES = (".tif", ".tiff")

#: The files ``napari-ncc demo`` writes into its output folder.
DEMO_FILES = ("ncc.zarr", "preview.png", "summary.json")

EPILOG_COMPARE = """\
examples:
  napari-ncc compare before.tif after.tif -o ncc.zarr
  napari-ncc compare a.ome.zarr b.ome.zarr -o ncc.zarr --radius 5 --window gaussian
  napari-ncc compare movie_a.tif movie_b.tif -o ncc.zarr --per-plane 0
  napari-ncc compare movie.tif movie.tif -o drift.zarr --per-plane 0 --reference-plane 0
  napari-ncc compare a.zarr b.zarr -o ncc.zarr --scheduler tcp://10.0.0.5:8786

inputs: anything the napari-ncc reader opens (TIFF incl. pyramidal/OME-TIFF, zarr,
OME-Zarr, PNG/JPEG), lazily; RGB is compared as luminance. REFERENCE and MOVING must
have the same shape. The moving image is registered (subpixel translation; on a pyramid's
coarse level first when there is one) onto the reference, unless --no-register; the map
is the local NCC of the reference and the registered moving image at full resolution:
one value in [-1, 1] per pixel, FILL where a window is flat or reaches pixels the shift
brought in from outside the moving image.

output: a .zarr store (written chunk by chunk, atomically: any size) or a .tif/.tiff
file (computed in memory: maps up to 1 GiB). An existing OUT is never replaced unless
--overwrite. The summary goes to stdout (--json for a machine-readable one); progress
and log lines go to stderr. Exit status: 0 done, 1 error, 2 bad arguments, 130 interrupted.
"""

EPILOG_DEMO = """\
The demo registers and compares a built-in sample pair (no download), writes
DIR/ncc.zarr (the map), DIR/preview.png (reference | moving | NCC side by side) and
DIR/summary.json, and prints the summary. It replaces the files of an earlier demo in
DIR, and refuses to replace anything else unless --overwrite.
"""


class CLIError(Exception):
    """A problem the user can fix, reported as one line on stderr."""


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


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be an integer >= 1, got {text!r}")
    return value


def _positive_or_zero_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be an integer >= 0, got {text!r}")
    return value


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
    if text in LOCAL_SCHEDULERS or "://" in text:
        return text
    raise argparse.ArgumentTypeError(
        f"must be one of {', '.join(LOCAL_SCHEDULERS)} or a dask.distributed scheduler "
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
        help="where to write the map: a .zarr store (any size) or a .tif/.tiff file",
    )
    _add_ncc_options(compare)
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
    demo.set_defaults(register=True, upsample_factor=20, per_plane=None, reference_plane=None)
    return parser


# --------------------------------------------------------------------------- helpers


@contextlib.contextmanager
def _dask_scheduler(scheduler: str | None) -> Iterator[object]:
    """Make `scheduler` the default for every ``compute`` inside the block.

    Yields what to pass on as ``scheduler=``: None, a local scheduler's name, or the
    ``distributed.Client`` connected to the address (one connection for the whole run).
    """
    if scheduler is None:
        yield None
        return
    import dask

    if scheduler in LOCAL_SCHEDULERS:
        with dask.config.set(scheduler=scheduler):
            yield scheduler
        return
    try:
        from distributed import Client
    except ImportError:
        raise CLIError(
            f"--scheduler {scheduler} needs dask.distributed, which is not installed "
            "(pip install distributed)"
        ) from None
    try:
        client = Client(scheduler, timeout="10s")
    except (OSError, TimeoutError) as error:
        raise CLIError(
            f"cannot connect to the Dask scheduler at {scheduler}: {_one_line(error)}"
        ) from None
    with client:
        workers = len(client.scheduler_info().get("workers", {}))
        log.info("connected to the Dask scheduler at %s (%d workers)", scheduler, workers)
        yield client


def _show_progress(args) -> bool:
    return not args.quiet and sys.stderr.isatty()


@contextlib.contextmanager
def _progress(enabled: bool, label: str) -> Iterator[None]:
    """A progress bar on stderr for the local Dask computations inside the block."""
    if not enabled:
        yield
        return
    from ._io import _progress_callback

    with _progress_callback(label):
        yield


def _check_input(path: str, role: str) -> Path:
    p = Path(path)
    if not p.exists():
        raise CLIError(f"{role} {path} does not exist")
    if not os.access(p, os.R_OK):
        raise CLIError(f"{role} {path} is not readable (permission denied)")
    return p


def _read(path: Path, role: str) -> tuple[list, dict]:
    """The resolution levels of an image file (lazy; RGB as luminance) and its metadata."""
    from ._io import read_image
    from ._multiscale import as_luminance

    try:
        levels, metadata = read_image(path)
    except (ValueError, OSError, KeyError) as error:
        message = _one_line(error)
        if str(path) in message:
            raise CLIError(f"{role}: {message}") from None
        raise CLIError(f"cannot read {role} {path}: {message}") from None
    axes = metadata.get("axes") or ()
    if axes and str(axes[-1]).lower() in ("c", "s") and levels[0].shape[-1] in (3, 4):
        log.info("%s %s is RGB: comparing its luminance", role, path)
        levels = [as_luminance(level) for level in levels]
        metadata = {**metadata, "axes": tuple(axes[:-1])}
    return levels, metadata


def _output_kind(path: Path) -> str:
    name = path.name.lower()
    if name.endswith(ZARR_SUFFIXES):
        return "zarr"
    if name.endswith(TIFF_SUFFIXES):
        return "tiff"
    raise CLIError(f"OUT must end in .zarr (any size) or .tif/.tiff (fits in memory), got {path}")


def _check_output(path: Path, overwrite: bool, inputs: Sequence[Path] = ()) -> None:
    for source in inputs:
        if path.resolve() == source.resolve():
            raise CLIError(f"OUT {path} is one of the inputs; choose another output path")
    if path.exists() and not overwrite:
        raise CLIError(f"{path} already exists; pass --overwrite to replace it")
    if not path.parent.exists():
        raise CLIError(f"cannot write {path}: folder {path.parent} does not exist")


def _check_tiff_size(shape: tuple[int, ...], out: Path) -> None:
    nbytes = math.prod(shape) * 4
    if nbytes > TIFF_MAX_BYTES:
        raise CLIError(
            f"the map would take {nbytes / 2**30:.1f} GiB in memory, more than the "
            f"{TIFF_MAX_BYTES / 2**30:.0f} GiB a TIFF output may hold: write a zarr store "
            f"instead (-o {out.with_suffix('.zarr')})"
        )


def _one_line(error: BaseException | str) -> str:
    text = str(error).strip() or type(error).__name__
    return " ".join(text.split())


def _format_shift(shift, axis_names: Sequence[str] | None = None) -> str:
    shift = [float(s) for s in np.ravel(shift)]
    names = [str(n).lower() for n in axis_names] if axis_names else []
    # Single-letter codes other than t, c, z, y, x (tifffile's Q, I, S, ...) say nothing.
    if len(names) != len(shift) or any(len(n) == 1 and n not in "tczyx" for n in names):
        names = list("zyx"[-len(shift) :]) if len(shift) <= 3 else []
    if not names:
        names = [f"axis {i}" for i in range(len(shift))]
    return ", ".join(f"{n} {s:+.2f}" for n, s in zip(names, shift, strict=True)) + " px"


def summarize(ncc, fill_value: float, threshold: float = CONFIDENT) -> dict:
    """Summary figures of an NCC map (NumPy, or Dask reduced chunk by chunk).

    Returns a dict with ``mean`` (mean NCC over the defined pixels), ``confident``
    (fraction of all pixels whose NCC exceeds `threshold`), ``undefined`` (fraction
    holding `fill_value`: flat windows, or windows reaching data the registration shifted
    in from outside), ``min`` and ``max`` (over the defined pixels).
    """
    import dask.array as da

    xp = da if isinstance(ncc, da.Array) else np
    if math.isnan(fill_value):
        undefined = xp.isnan(ncc)
    else:
        undefined = ncc == np.float32(fill_value)
    defined = ~undefined
    parts = (
        xp.where(defined, ncc, 0).astype(np.float64).sum(),
        defined.sum(),
        (ncc > threshold).sum(),
        xp.where(defined, ncc, np.inf).min(),
        xp.where(defined, ncc, -np.inf).max(),
    )
    if xp is da:
        parts = da.compute(*parts)
    total, n_defined, n_confident, lo, hi = (float(p) for p in parts)
    size = float(math.prod(ncc.shape))
    return {
        "mean": total / n_defined if n_defined else None,
        "confident": n_confident / size,
        "threshold": threshold,
        "undefined": 1.0 - n_defined / size,
        "min": lo if n_defined else None,
        "max": hi if n_defined else None,
    }


def _report(result: dict, as_json: bool) -> None:
    if as_json:
        print(json.dumps(result, default=_jsonable))
        return
    sample = result.get("sample_info")
    if sample:
        print(f"sample {sample['name']!r}: {sample['description']}")
        if sample.get("shift") is not None:
            print(f"known shift: {_format_shift(sample['shift'])}")
    reg = result.get("registration")
    names = result.get("axes_names")
    if reg is None:
        print("registration: skipped (--no-register)")
    elif reg.get("shifts") is not None:
        shifts = np.asarray(reg["shifts"], dtype=float)
        qualities = reg.get("qualities") or [None] * len(shifts)
        onto = reg.get("reference_plane")
        onto = "one shift each" if onto is None else f"each onto plane {onto} of REFERENCE"
        print(f"registration: {len(shifts)} planes along axis {reg['per_plane']}, {onto}")
        plane_axis = reg["per_plane"]
        in_plane = [ax for ax in range(shifts.shape[1]) if ax != plane_axis]
        plane_names = None
        if names and len(names) == shifts.shape[1]:
            plane_names = [names[ax] for ax in in_plane]
        for t, (s, q) in enumerate(zip(shifts[:10], qualities, strict=False)):
            quality = "" if q is None else f"  (quality {q:.3f})"
            print(f"  plane {t}: shift {_format_shift(s[in_plane], plane_names)}{quality}")
        if len(shifts) > 10:
            print(f"  ... {len(shifts) - 10} more planes (all in --json and in the output)")
    else:
        quality = reg.get("quality")
        quality = "" if quality is None else f"  (registration quality {quality:.3f})"
        print(f"shift: {_format_shift(reg['shift'], names)}{quality}")
    if reg is not None and not reg.get("reliable", True):
        notes = "; ".join(reg.get("notes") or []) or "check that the images overlap"
        print(f"  the registration is UNRELIABLE: {notes}")
    s = result["summary"]
    shape = " x ".join(str(n) for n in result["shape"])
    mean = "undefined" if s["mean"] is None else f"{s['mean']:.3f}"
    print(
        f"NCC map {shape}, radius {result['radius']} ({result['window']} window): "
        f"mean {mean}, confident (NCC > {s['threshold']:g}) {s['confident']:.1%}, "
        f"undefined (flat, or outside the overlap) {s['undefined']:.1%}"
    )
    for name, path in result["written"].items():
        print(f"{name}: {path}")


def _jsonable(value):
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON serializable: {type(value).__name__}")


def _json_float(value: float):
    return value if math.isfinite(value) else str(value)


def _parameters(args, per_plane, registration, inputs) -> dict:
    """What the map was made from: stored with it and printed with --json."""
    return {
        "radius": args.radius if isinstance(args.radius, int) else list(args.radius),
        "window": args.window,
        "mode": args.mode,
        "fill_value": _json_float(args.fill_value),
        "per_plane": per_plane,
        "registration": None if registration is None else registration.to_dict(),
        "inputs": [str(p) for p in inputs],
    }


# --------------------------------------------------------------------------- commands


def _registration_input(levels: list):
    """What :func:`register` gets: the pyramid when there is one, else the image."""
    return levels if len(levels) > 1 else levels[0]


def _confidence_map(
    reference, moving, args, per_plane, ref_levels=None, mov_levels=None, chunks=None
):
    """Register (unless --no-register), then the lazy NCC map of the registered pair."""
    from ._confidence import ncc_confidence
    from ._ncc import plan_ncc
    from ._registration import register

    axes = None
    if per_plane is not None:
        ndim = len(reference.shape)
        if ndim < 2 or not -ndim <= per_plane < ndim:
            raise CLIError(f"--per-plane axis {per_plane} is out of range for {ndim}-D images")
        axes = tuple(ax for ax in range(ndim) if ax != per_plane % ndim)
    # Check the NCC arguments against the images before the (possibly long) registration.
    plan_ncc(
        reference.shape,
        moving.shape,
        args.radius,
        window=args.window,
        mode=args.mode,
        fill_value=args.fill_value,
        axes=axes,
    )
    if args.reference_plane is not None and per_plane is None:
        raise CLIError("--reference-plane needs --per-plane AXIS (the axis of the planes)")
    registration = None
    if args.register:
        log.info("registering (upsample factor %d)", args.upsample_factor)
        pyramids = ref_levels and mov_levels and len(ref_levels) == len(mov_levels) > 1
        registration = register(
            _registration_input(ref_levels) if pyramids else reference,
            _registration_input(mov_levels) if pyramids else moving,
            upsample_factor=args.upsample_factor,
            per_plane=per_plane,
            reference_plane=args.reference_plane,
        )
        if registration.shifts is None:
            log.info("shift %s", _format_shift(registration.shift))
    ncc, registration = ncc_confidence(
        reference,
        moving,
        radius=args.radius,
        register=False,
        registration=registration,
        window=args.window,
        mode=args.mode,
        fill_value=args.fill_value,
        per_plane=per_plane,
        chunks=chunks,
    )
    return ncc, registration


def compare(args) -> dict:
    """Run ``napari-ncc compare`` with parsed arguments; return the result dict."""
    out = Path(args.output)
    kind = _output_kind(out)
    ref_path = _check_input(args.reference, "REFERENCE")
    mov_path = _check_input(args.moving, "MOVING")
    _check_output(out, args.overwrite, (ref_path, mov_path))
    progress = _show_progress(args)

    with _dask_scheduler(args.scheduler) as scheduler:
        ref_levels, ref_meta = _read(ref_path, "REFERENCE")
        mov_levels, _ = _read(mov_path, "MOVING")
        reference, moving = ref_levels[0], mov_levels[0]
        if reference.shape != moving.shape:
            raise CLIError(
                f"REFERENCE and MOVING must have the same shape, got {reference.shape} "
                f"({ref_path.name}) and {moving.shape} ({mov_path.name})"
            )
        if kind == "tiff":
            _check_tiff_size(reference.shape, out)
        # Blocks computed at the asked size (rechunking finished blocks would hold several).
        ncc, registration = _confidence_map(
            reference, moving, args, args.per_plane, ref_levels, mov_levels, args.chunks or None
        )
        params = _parameters(args, args.per_plane, registration, (ref_path, mov_path))
        if kind == "zarr":
            from ._io import ATTRS_KEY, read_image, write_zarr

            log.info("writing the NCC map to %s", out)
            write_zarr(
                ncc,
                out,
                attrs={ATTRS_KEY: params},
                overwrite=args.overwrite,
                progress=progress,
                scheduler=scheduler,
            )
            (ncc, *_), _ = read_image(out)
        else:
            log.info("computing the NCC map")
            with _progress(progress, "NCC map"):
                ncc = np.asarray(ncc.compute())
            log.info("writing the NCC map to %s", out)
            _write_tiff(out, ncc, params)
        log.info("summarising the map")
        local = scheduler is None or isinstance(scheduler, str)
        with _progress(progress and local, "summary"):
            summary = summarize(ncc, args.fill_value, args.threshold)

    return {
        "reference": str(ref_path),
        "moving": str(mov_path),
        "shape": list(reference.shape),
        "axes_names": list(ref_meta["axes"]) if ref_meta.get("axes") else None,
        **params,
        "summary": summary,
        "written": {"map": str(out)},
    }


def _write_tiff(out: Path, ncc: np.ndarray, params: dict) -> None:
    """Write a map to a TIFF file atomically (temporary name, then rename)."""
    import tifffile

    tmp = out.with_name(f".{out.name}.partial-{os.getpid()}")
    try:
        tifffile.imwrite(tmp, ncc, compression="zlib", metadata={"napari_ncc": json.dumps(params)})
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)


def demo(args) -> dict:
    """Run ``napari-ncc demo`` with parsed arguments; return the result dict."""
    from ._io import ATTRS_KEY, write_zarr
    from ._samples import sample_pair

    out_dir = Path(args.output)
    if out_dir.exists() and not out_dir.is_dir():
        raise CLIError(f"{out_dir} exists and is not a folder")
    ours = _is_demo_output(out_dir)
    for name in DEMO_FILES:
        if (out_dir / name).exists() and not (ours or args.overwrite):
            raise CLIError(
                f"{out_dir / name} already exists and was not written by the demo; "
                "pass --overwrite to replace it, or choose another folder with -o"
            )
    reference, moving, info = sample_pair(args.sample, grayscale=True)
    out_dir.mkdir(parents=True, exist_ok=True)
    log.info("the %r sample pair, %s", args.sample, " x ".join(map(str, reference.shape)))
    ncc, registration = _confidence_map(reference, moving, args, None)
    params = _parameters(args, None, registration, ())
    map_path = out_dir / "ncc.zarr"
    log.info("writing the NCC map to %s", map_path)
    write_zarr(
        ncc, map_path, attrs={ATTRS_KEY: params}, overwrite=True, progress=_show_progress(args)
    )
    preview_path = out_dir / "preview.png"
    log.info("writing the preview to %s", preview_path)
    _write_png(preview_path, preview_image(reference, moving, ncc))
    summary_path = out_dir / "summary.json"
    result = {
        "sample": args.sample,
        "sample_info": {key: info[key] for key in ("name", "description", "shift")},
        "shape": list(reference.shape),
        **params,
        "summary": summarize(ncc, args.fill_value, args.threshold),
        "written": {
            "map": str(map_path),
            "preview": str(preview_path),
            "summary": str(summary_path),
        },
    }
    summary_path.write_text(
        json.dumps({"napari_ncc_demo": True, **result}, indent=2, default=_jsonable) + "\n"
    )
    return result


def _is_demo_output(folder: Path) -> bool:
    try:
        return json.loads((folder / "summary.json").read_text()).get("napari_ncc_demo") is True
    except (OSError, ValueError, AttributeError):
        return False


# --------------------------------------------------------------------------- preview


def colormap_lut(n: int = 256) -> np.ndarray:
    """An ``(n, 3)`` uint8 colour table for NCC values from -1 (row 0) to 1 (row n-1).

    The colormap napari shows NCC layers with (``_multiscale.NCC_COLORMAP``: ColorBrewer's
    colour-blind-safe PiYG, magenta at -1, white at 0, green at +1), its colours evenly
    spaced and linearly interpolated.
    """
    from ._multiscale import NCC_COLORMAP

    anchors = np.array(
        [[int(c[k : k + 2], 16) for k in (1, 3, 5)] for c in NCC_COLORMAP["colors"]],
        dtype=np.float64,
    )
    positions = np.linspace(0.0, 1.0, len(anchors))
    t = np.linspace(0.0, 1.0, n)
    lut = np.stack([np.interp(t, positions, anchors[:, c]) for c in range(3)], axis=1)
    return np.round(lut).astype(np.uint8)


def _to_gray8(image: np.ndarray, lo: float, hi: float) -> np.ndarray:
    scaled = (np.asarray(image, dtype=np.float64) - lo) / max(hi - lo, 1e-12)
    gray = np.round(np.clip(scaled, 0.0, 1.0) * 255).astype(np.uint8)
    return np.repeat(gray[..., None], 3, axis=-1)


def preview_image(reference: np.ndarray, moving: np.ndarray, ncc: np.ndarray) -> np.ndarray:
    """RGB uint8 picture: reference | moving | NCC map (with a colour bar), titled.

    The two images share one grey scale (their joint 1st-99.5th percentiles), so a change
    of intensity shows; the NCC map uses :func:`colormap_lut` from -1 to 1, undefined
    (NaN) pixels in grey.
    """
    from PIL import Image, ImageDraw, ImageFont

    reference = np.asarray(reference)
    moving = np.asarray(moving)
    if reference.ndim != 2:
        raise ValueError(f"the preview needs 2D images, got shape {reference.shape}")
    lo, hi = np.percentile(np.concatenate([reference.ravel(), moving.ravel()]), [1, 99.5])
    lut = colormap_lut()
    index = np.round((np.nan_to_num(ncc, nan=-1.0).clip(-1, 1) + 1) * 127.5).astype(int)
    ncc_rgb = lut[index]
    ncc_rgb[np.isnan(ncc)] = 128
    panels = [_to_gray8(reference, lo, hi), _to_gray8(moving, lo, hi), ncc_rgb]
    titles = ["reference", "moving", "local NCC (-1 to 1)"]

    h, w = reference.shape
    gap, top, bar = 12, 34, 40
    canvas = np.full((top + h + bar, 3 * w + 4 * gap, 3), 255, dtype=np.uint8)
    for k, panel in enumerate(panels):
        x0 = gap + k * (w + gap)
        canvas[top : top + h, x0 : x0 + w] = panel
    # Colour bar under the NCC panel.
    x0 = gap + 2 * (w + gap)
    ramp = lut[np.linspace(0, 255, w).round().astype(int)]
    canvas[top + h + 6 : top + h + 20, x0 : x0 + w] = ramp[None]

    picture = Image.fromarray(canvas)
    draw = ImageDraw.Draw(picture)
    try:
        font = ImageFont.load_default(size=18)
    except TypeError:  # Pillow < 10.1 has one bitmap size only.
        font = ImageFont.load_default()
    for k, title in enumerate(titles):
        draw.text((gap + k * (w + gap), 8), title, fill=(0, 0, 0), font=font)
    for value, frac, anchor in ((-1, 0.0, "la"), (0, 0.5, "ma"), (1, 1.0, "ra")):
        draw.text(
            (x0 + frac * (w - 1), top + h + 21),
            str(value),
            fill=(0, 0, 0),
            font=font,
            anchor=anchor,
        )
    return np.asarray(picture)


def _write_png(path: Path, rgb: np.ndarray) -> None:
    from PIL import Image

    tmp = path.with_name(f".{path.name}.partial-{os.getpid()}")
    try:
        Image.fromarray(rgb).save(tmp, format="PNG", optimize=True)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


# --------------------------------------------------------------------------- main


def _setup_logging(quiet: bool) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("napari-ncc: %(message)s"))
    log.handlers[:] = [handler]
    log.setLevel(logging.WARNING if quiet else logging.INFO)
    log.propagate = False

    def showwarning(message, category, filename, lineno, file=None, line=None):
        print(f"napari-ncc: warning: {_one_line(message)}", file=sys.stderr)

    warnings.showwarning = showwarning
    # Libraries' own log records (tifffile's complaints about a corrupt file, ...) would
    # reach stderr through logging's last-resort handler; the error line says it all.
    root = logging.getLogger()
    if not root.handlers:
        root.addHandler(logging.NullHandler())


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``napari-ncc`` console script; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    showwarning = warnings.showwarning
    _setup_logging(args.quiet)
    try:
        return _run(args)
    finally:
        warnings.showwarning = showwarning


def _run(args) -> int:
    command = {"compare": compare, "demo": demo}[args.command]
    try:
        result = command(args)
    except KeyboardInterrupt:
        print("napari-ncc: interrupted", file=sys.stderr)
        return 130
    except CLIError as error:
        print(f"napari-ncc {args.command}: error: {error}", file=sys.stderr)
        return 1
    except (ValueError, TypeError, OSError) as error:
        if args.debug:
            raise
        print(f"napari-ncc {args.command}: error: {_one_line(error)}", file=sys.stderr)
        return 1
    try:
        _report(result, args.json)
        sys.stdout.flush()
    except BrokenPipeError:  # `napari-ncc ... | head`: the reader has gone, not an error
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    return 0


if __name__ == "__main__":
    sys.exit(main())
