"""Command line: ``napari-ncc compare`` and ``napari-ncc demo``.

A thin front end. It parses arguments, calls the reader (``read_image``), the whole job
(``ncc_confidence``: registration, then the map) and the atomic writers (``write_array``:
zarr, OME-Zarr or TIFF by the output's suffix), and prints what they found with the shared
summary (``_summary``). It adds only the one-line error messages, the progress display and
the handling of signals.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import logging
import os
import signal
import sys
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path

from ._cli_parser import build_parser
from ._io import (
    dask_scheduler,
    progress_callback,
    write_array,
    write_png,
    write_zarr,
)
from ._read import ATTRS_KEY, TIFF_SUFFIXES, ZARR_SUFFIXES, is_rgb, read_image
from ._summary import (
    describe,
    format_shift,
    summarize,
    to_json,
    transform_summary,
    window_spans_stack,
)
from ._validation import check_per_plane, check_same_shape, json_float

log = logging.getLogger("napari_ncc.cli")

#: Signals handled like Ctrl-C: what batch schedulers, ``kill`` and a closed terminal send.
STOP_SIGNALS = tuple(
    getattr(signal, name) for name in ("SIGTERM", "SIGHUP") if hasattr(signal, name)
)

#: The files ``napari-ncc demo`` writes into its output folder.
DEMO_FILES = ("ncc.zarr", "preview.png", "summary.json")


class CLIError(Exception):
    """A problem the user can fix, reported as one line on stderr."""


class Stopped(BaseException):
    """SIGTERM or SIGHUP, raised in the main thread: like KeyboardInterrupt, only clean-up
    code (``finally``, ``except BaseException``) and :func:`main` see it."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


@contextlib.contextmanager
def _stop_on_signals() -> Iterator[None]:
    """Inside the block, SIGTERM and SIGHUP raise :class:`Stopped` (once: later ones are
    ignored, so that the clean-up they started runs to its end)."""

    def stop(signum, frame):
        for number in STOP_SIGNALS:
            signal.signal(number, signal.SIG_IGN)
        raise Stopped(signum)

    try:
        previous = {number: signal.signal(number, stop) for number in STOP_SIGNALS}
    except ValueError:  # not the main thread (main() called from a thread): leave them
        yield
        return
    try:
        yield
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler)


def _show_progress(args) -> bool:
    return not args.quiet and sys.stderr.isatty()


def _check_input(path: str, role: str) -> Path:
    p = Path(path)
    if not p.exists():
        raise CLIError(f"{role} {path} does not exist")
    if not os.access(p, os.R_OK):
        raise CLIError(f"{role} {path} is not readable (permission denied)")
    return p


def _read(path: Path, role: str) -> tuple[list, dict]:
    """The resolution levels of an image file (lazy; RGB as luminance) and its metadata."""
    from ._multiscale import as_luminance

    try:
        levels, metadata = read_image(path)
    except (ValueError, OSError, KeyError) as error:
        message = _one_line(error)
        if str(path) in message:
            raise CLIError(f"{role}: {message}") from None
        raise CLIError(f"cannot read {role} {path}: {message}") from None
    if is_rgb(metadata.get("axes"), levels[0].shape):
        log.info("%s %s is RGB: comparing its luminance", role, path)
        levels = [as_luminance(level) for level in levels]
        metadata = {**metadata, "axes": tuple(metadata["axes"][:-1])}
    return levels, metadata


def _read_mask(path: Path, shape: Sequence[int], ref_path: Path):
    """The --mask image as a lazy boolean mask: its non-zero pixels are data."""
    levels, _ = _read(path, "MASK")
    try:
        check_same_shape(
            shape, levels[0].shape, names=(f"REFERENCE ({ref_path.name})", f"MASK ({path.name})")
        )
    except ValueError as error:
        raise CLIError(str(error)) from None
    return levels[0] != 0


def _check_output_format(path: Path) -> None:
    if not path.name.lower().endswith(ZARR_SUFFIXES + TIFF_SUFFIXES):
        raise CLIError(
            "OUT must end in .zarr (a zarr store), .ome.zarr (OME-Zarr with a pyramid) or "
            f".tif/.tiff (a TIFF file), got {path}"
        )


def _check_output(path: Path, overwrite: bool, inputs: Sequence[Path] = ()) -> None:
    for source in inputs:
        if path.resolve() == source.resolve():
            raise CLIError(f"OUT {path} is one of the inputs; choose another output path")
    if path.exists() and not overwrite:
        raise CLIError(f"{path} already exists; pass --overwrite to replace it")
    if not path.parent.exists():
        raise CLIError(f"cannot write {path}: folder {path.parent} does not exist")


def _one_line(error: BaseException | str) -> str:
    text = str(error).strip() or type(error).__name__
    return " ".join(text.split())


def _stack_hint(shape: Sequence[int], radius, per_plane: int | None) -> str | None:
    """What to say when the window spans most of a stack axis: a forgotten --per-plane?"""
    found = window_spans_stack(shape, radius, per_plane)
    if found is None:
        return None
    ax, window = found
    radii = [radius] * len(shape) if isinstance(radius, int) else list(radius)
    example = ",".join("0" if i == ax else str(r) for i, r in enumerate(radii))
    return (
        f"the {window}-pixel window spans most of axis {ax}, which has only {shape[ax]} "
        f"planes: if the images are stacks of planes along axis {ax}, pass --per-plane "
        f"{ax} (or a radius of 0 along it: --radius {example})"
    )


def _report(result: dict, as_json: bool) -> None:
    print(to_json(result) if as_json else "\n".join(describe(result)))


def _parameters(args, registration, inputs) -> dict:
    """What the map was made from: stored with it and printed with --json."""
    registration = None if registration is None else registration.to_dict()
    return {
        "radius": args.radius if isinstance(args.radius, int) else list(args.radius),
        "window": args.window,
        "mode": args.mode,
        "fill_value": json_float(args.fill_value),
        "per_plane": args.per_plane,
        "mask": args.mask,
        "min_fraction": args.min_fraction if args.mask is not None else None,
        "registration": registration,
        # The transform's figures (angle, scale, field), None for a translation.
        "transform": None if registration is None else transform_summary(registration),
        "inputs": [str(p) for p in inputs],
    }


# --------------------------------------------------------------------------- commands


def _confidence_map(ref_levels: list, mov_levels: list, args, mask=None):
    """``ncc_confidence`` of the pair (registered unless --no-register): a lazy map."""
    from ._confidence import ncc_confidence
    from ._ncc import plan_ncc

    if args.reference_plane is not None and args.per_plane is None:
        raise CLIError("--reference-plane needs --per-plane AXIS (the axis of the planes)")
    # Pyramids speed up the registration of huge images (the map is at full resolution).
    pyramids = len(ref_levels) == len(mov_levels) > 1
    reference, moving = (ref_levels, mov_levels) if pyramids else (ref_levels[0], mov_levels[0])
    shape = ref_levels[0].shape
    hint = _stack_hint(shape, args.radius, args.per_plane)
    model = getattr(args, "model", "translation")
    if not args.register and model != "translation":
        raise CLIError(f"--model {model} registers the images: it cannot go with --no-register")
    try:
        # Arguments that do not fit the images fail now, not after a long registration.
        per_plane = check_per_plane(args.per_plane, len(shape))
        axes = None if per_plane is None else [ax for ax in range(len(shape)) if ax != per_plane]
        options = dict(window=args.window, mode=args.mode, fill_value=args.fill_value)
        plan_ncc(shape, shape, args.radius, axes=axes, min_fraction=args.min_fraction, **options)
    except ValueError as error:
        message = _one_line(error) if hint is None else f"{_one_line(error)}; {hint}"
        raise CLIError(message) from None
    if hint is not None:
        log.warning("warning: %s", hint)
    if args.register:
        log.info("registering (upsample factor %d)", args.upsample_factor)
    # The map's blocks are computed at the asked size (rechunking finished blocks would
    # hold several of them in memory).
    ncc, registration = ncc_confidence(
        reference,
        moving,
        radius=args.radius,
        register=args.register,
        per_plane=per_plane,
        reference_plane=args.reference_plane,
        upsample_factor=args.upsample_factor,
        model=model,
        chunks=getattr(args, "chunks", None) or None,
        mask=mask,
        min_fraction=args.min_fraction,
        **options,
    )
    if registration is not None and registration.shifts is None:
        log.info("shift %s", format_shift(registration.shift))
    return ncc, registration


def compare(args) -> dict:
    """Run ``napari-ncc compare`` with parsed arguments; return the result dict."""
    out = Path(args.output)
    _check_output_format(out)
    ref_path = _check_input(args.reference, "REFERENCE")
    mov_path = _check_input(args.moving, "MOVING")
    mask_path = None if args.mask is None else _check_input(args.mask, "MASK")
    _check_output(out, args.overwrite, (ref_path, mov_path, *([mask_path] if mask_path else [])))
    progress = _show_progress(args)

    with dask_scheduler(args.scheduler) as scheduler:
        ref_levels, ref_meta = _read(ref_path, "REFERENCE")
        mov_levels, _ = _read(mov_path, "MOVING")
        try:
            check_same_shape(
                ref_levels[0].shape,
                mov_levels[0].shape,
                names=(f"REFERENCE ({ref_path.name})", f"MOVING ({mov_path.name})"),
            )
        except ValueError as error:
            raise CLIError(str(error)) from None
        mask = None if mask_path is None else _read_mask(mask_path, ref_levels[0].shape, ref_path)
        ncc, registration = _confidence_map(ref_levels, mov_levels, args, mask)
        params = _parameters(args, registration, (ref_path, mov_path))
        log.info("writing the NCC map to %s", out)
        write_array(
            ncc,
            out,
            attrs={ATTRS_KEY: params},
            overwrite=args.overwrite,
            progress=progress,
            scheduler=scheduler,
        )
        # Summarise what was written (read back lazily) rather than compute the map twice.
        (ncc, *_), _ = read_image(out)
        log.info("summarising the map")
        local = scheduler is None or isinstance(scheduler, str)
        with progress_callback("summary") if progress and local else contextlib.nullcontext():
            summary = summarize(ncc, args.fill_value, args.threshold)

    return {
        "reference": str(ref_path),
        "moving": str(mov_path),
        "shape": list(ncc.shape),
        "axes_names": list(ref_meta["axes"]) if ref_meta.get("axes") else None,
        **params,
        "summary": summary,
        "written": {"map": str(out)},
    }


def demo(args) -> dict:
    """Run ``napari-ncc demo`` with parsed arguments; return the result dict."""
    from ._samples import sample_pair
    from ._summary import preview_image

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
    ncc, registration = _confidence_map([reference], [moving], args)
    params = _parameters(args, registration, ())
    map_path = out_dir / "ncc.zarr"
    log.info("writing the NCC map to %s", map_path)
    write_zarr(
        ncc, map_path, attrs={ATTRS_KEY: params}, overwrite=True, progress=_show_progress(args)
    )
    preview_path = out_dir / "preview.png"
    log.info("writing the preview to %s", preview_path)
    write_png(preview_path, preview_image(reference, moving, ncc))
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
    summary_path.write_text(to_json({"napari_ncc_demo": True, **result}, indent=2) + "\n")
    return result


def _is_demo_output(folder: Path) -> bool:
    try:
        return json.loads((folder / "summary.json").read_text()).get("napari_ncc_demo") is True
    except (OSError, ValueError, AttributeError):
        return False


# --------------------------------------------------------------------------- main


def _setup_logging(quiet: bool) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("napari-ncc: %(message)s"))
    # The package's logger: the library's own lines (a removed leftover) show too.
    package = logging.getLogger("napari_ncc")
    package.handlers[:] = [handler]
    package.setLevel(logging.WARNING if quiet else logging.INFO)
    package.propagate = False

    def showwarning(message, category, filename, lineno, file=None, line=None):
        print(f"napari-ncc: warning: {_one_line(message)}", file=sys.stderr)

    warnings.showwarning = showwarning
    # Libraries' own log records (tifffile's complaints about a corrupt file, ...) would
    # reach stderr through logging's last-resort handler; the error line says it all.
    root = logging.getLogger()
    if not root.handlers:
        root.addHandler(logging.NullHandler())


def _no_colour_reset_at_exit() -> None:
    """Keep colorama (initialised by numba) from writing ``\\x1b[0m`` to a terminal at
    exit: a stray escape code after the last line of the output."""
    colorama = sys.modules.get("colorama.initialise")
    if colorama is not None and hasattr(colorama, "reset_all"):
        atexit.unregister(colorama.reset_all)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``napari-ncc`` console script; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    showwarning = warnings.showwarning
    _setup_logging(args.quiet)
    try:
        with _stop_on_signals():
            return _run(args)
    finally:
        warnings.showwarning = showwarning
        _no_colour_reset_at_exit()


def _run(args) -> int:
    command = {"compare": compare, "demo": demo}[args.command]
    try:
        result = command(args)
    except KeyboardInterrupt:
        print("napari-ncc: interrupted", file=sys.stderr)
        return 130
    except Stopped as stopped:
        name = signal.Signals(stopped.signum).name
        print(f"napari-ncc: stopped by {name}, temporary output removed", file=sys.stderr)
        return 128 + stopped.signum
    except CLIError as error:
        print(f"napari-ncc {args.command}: error: {error}", file=sys.stderr)
        return 1
    except (ValueError, TypeError, OSError, ImportError) as error:
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
