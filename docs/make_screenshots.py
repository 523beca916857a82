"""Render the documentation's pictures into ``docs/images/``.

Real napari, real plugin: the script opens the "cell" sample pair through the plugin's
sample-data contribution, docks the NCC widget, runs it the way a user would and takes
screenshots of the viewer. It also writes the command-line demo's preview picture.

Run it under a virtual display (napari's canvas needs OpenGL, which Xvfb provides)::

    xvfb-run -a -s "-screen 0 1400x1000x24" .venv/bin/python docs/make_screenshots.py

Each PNG is kept under 300 KB (lossless when it fits, else a 256-colour palette);
commit them with the docs.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

IMAGES = Path(__file__).resolve().parent / "images"
WINDOW_SIZE = (1280, 760)
MAX_BYTES = 300_000


def save_png(rgba: np.ndarray, path: Path, shrink: float = 1) -> None:
    """Save a picture as a PNG under MAX_BYTES: lossless if it fits, else a 256-colour palette."""
    image = Image.fromarray(np.ascontiguousarray(rgba[..., :3]))
    if shrink != 1:
        size = (round(image.width / shrink), round(image.height / shrink))
        image = image.resize(size, Image.LANCZOS)
    image.save(path, format="PNG", optimize=True)
    if path.stat().st_size > MAX_BYTES:
        to_palette(image).save(path, format="PNG", optimize=True)
    size = path.stat().st_size
    print(f"wrote {path.relative_to(IMAGES.parent.parent)} ({size / 1000:.0f} KB)")
    if size > MAX_BYTES:
        print(f"  warning: {path.name} is over {MAX_BYTES / 1000:.0f} KB", file=sys.stderr)


def to_palette(image: Image.Image, greys: int = 96) -> Image.Image:
    """256 colours: an even ramp of `greys` grey levels (grey images stay smooth and grey)
    plus the most common other colours (median cut), each pixel mapped to the nearest."""
    rgb = np.asarray(image, dtype=np.int16)
    coloured = np.ptp(rgb, axis=-1) > 6
    ramp = np.linspace(0, 255, greys).round().astype(np.uint8)
    colours = [np.repeat(ramp[:, None], 3, axis=1)]
    if coloured.any():
        pixels = np.asarray(image)[coloured][None]
        adaptive = Image.fromarray(pixels).quantize(256 - greys, method=Image.Quantize.MEDIANCUT)
        found = np.asarray(adaptive.getpalette()[: 3 * (256 - greys)], dtype=np.uint8)
        colours.append(found.reshape(-1, 3))
    table = np.concatenate(colours)[:256]
    table = np.concatenate([table, np.zeros((256 - len(table), 3), np.uint8)])
    palette = Image.new("P", (1, 1))
    palette.putpalette(table.ravel().tolist())
    return image.quantize(palette=palette, dither=Image.Dither.NONE)


def demo_preview() -> None:
    """The picture ``napari-ncc demo`` writes, made by the demo itself."""
    from napari_ncc._cli import main

    with tempfile.TemporaryDirectory() as tmp:
        status = main(["demo", "-o", tmp, "--quiet"])
        if status:
            raise SystemExit(f"napari-ncc demo failed with status {status}")
        rgb = np.asarray(Image.open(Path(tmp) / "preview.png").convert("RGB"))
    save_png(rgb, IMAGES / "demo-preview.png", shrink=2.4)


def maps_figure(maps, titles, path: Path, shrink: float = 1.0) -> None:
    """NCC maps side by side, coloured as napari shows them, each with a title."""
    from PIL import ImageDraw, ImageFont

    from napari_ncc._summary import colormap_lut

    lut = colormap_lut()
    h, w = maps[0].shape
    gap, top = 12, 34
    canvas = np.full((top + h + gap, len(maps) * (w + gap) + gap, 3), 255, dtype=np.uint8)
    for k, ncc in enumerate(maps):
        x0 = gap + k * (w + gap)
        canvas[top : top + h, x0 : x0 + w] = lut[
            np.round((ncc.clip(-1, 1) + 1) * 127.5).astype(int)
        ]
    picture = Image.fromarray(canvas)
    draw = ImageDraw.Draw(picture)
    font = ImageFont.load_default(size=18)
    for k, title in enumerate(titles):
        draw.text((gap + k * (w + gap), 8), title, fill=(0, 0, 0), font=font)
    save_png(np.asarray(picture), path, shrink=shrink)


def registration_effect() -> None:
    """The NCC map of the cell pair as it is, and after registration, side by side.

    The means in the titles count the pixels where the NCC is defined: fill pixels (flat
    windows, and the strip the shift brought in from outside the moving image) are left out,
    as in the summary of ``napari-ncc demo`` for the same pair. The fill pixels are drawn as
    napari draws the default fill value, 0.
    """
    from napari_ncc import ncc_confidence, sample_pair

    reference, moving, _ = sample_pair("cell")
    raw, _ = ncc_confidence(reference, moving, radius=3, register=False, fill_value=np.nan)
    registered, registration = ncc_confidence(reference, moving, radius=3, fill_value=np.nan)
    dy, dx = registration.shift
    for name, ncc in (("without registration", raw), ("registered", registered)):
        print(
            f"  {name}: mean NCC {np.nanmean(ncc):.3f} over the {np.mean(~np.isnan(ncc)):.1%} "
            "of pixels where it is defined"
        )
    titles = [
        f"without registration: mean NCC {np.nanmean(raw):.2f}",
        f"registered (shift {dy:+.2f}, {dx:+.2f} px): mean NCC {np.nanmean(registered):.2f}",
    ]
    maps = [np.nan_to_num(ncc, nan=0.0) for ncc in (raw, registered)]
    maps_figure(maps, titles, IMAGES / "registration-effect.png", shrink=1.6)


def registration_models() -> None:
    """Maps of a rotated pair and of a warped pair: translation only, then the right model.

    The pairs are real pictures seen through known transforms (``tests/transform_pairs.py``)
    with 1% noise; the medians in the titles count the pixels where the NCC is defined
    (fill pixels, outside the overlap, are drawn as napari draws the fill value 0).
    """
    sys.path.insert(0, str(IMAGES.parent.parent / "tests"))
    from napari_ncc import ncc_confidence
    from transform_pairs import SmoothWarp, linear_matrix, linear_pair, picture, warped_pair

    n, rng = 384, np.random.default_rng(0)
    rotated = linear_pair(
        picture("ihc"), linear_matrix(3.0, translation=(7.0, -4.0), n=n), n, 0.01, rng
    )
    warp = SmoothWarp(linear_matrix(0.8, translation=(3.3, -2.1), n=n), 3.5, (250, 200), rng)
    warped = warped_pair(picture("brick"), warp, n, 0.01, rng)
    cases = [
        ("rotated 3 deg", rotated, "translation"),
        ("rotated 3 deg", rotated, "rigid"),
        ("warped", warped, "translation"),
        ("warped", warped, "deformable"),
    ]
    maps, titles = [], []
    for name, (reference, moving), model in cases:
        ncc, _ = ncc_confidence(reference, moving, radius=3, model=model, fill_value=np.nan)
        median = np.nanmedian(ncc)
        print(f"  {name}, {model}: median NCC {median:.3f}")
        maps.append(np.nan_to_num(ncc, nan=0.0))
        titles.append(f"{name}, {model}: {median:.2f}")
    maps_figure(maps, titles, IMAGES / "registration-models.png", shrink=1.5)


def radius_and_window() -> None:
    """The registered cell pair's map around the deformed region, for a few windows."""
    from napari_ncc import ncc_confidence, register, sample_pair

    reference, moving, info = sample_pair("cell")
    registration = register(reference, moving)
    (r0, r1), (c0, c1) = info["deformed_region"]
    pad = 60
    crop = (slice(max(r0 - pad, 0), r1 + pad), slice(max(c0 - pad, 0), c1 + pad))
    cases = [(1, "box"), (3, "box"), (7, "box"), (3, "gaussian")]
    maps, titles = [], []
    for radius, window in cases:
        ncc, _ = ncc_confidence(
            reference, moving, radius=radius, window=window, registration=registration
        )
        maps.append(ncc[crop])
        titles.append(f"{window}, radius {radius}")
    maps_figure(maps, titles, IMAGES / "radius-and-window.png", shrink=1.3)


def wait_for(condition, app, timeout: float = 120.0) -> None:
    """Let Qt process events until `condition()` holds (the widget works in a thread)."""
    start = time.monotonic()
    while not condition():
        app.processEvents()
        time.sleep(0.02)
        if time.monotonic() - start > timeout:
            raise TimeoutError("the NCC layer did not appear in time")
    for _ in range(20):  # let the canvas draw the new layer
        app.processEvents()
        time.sleep(0.02)
    close_toasts(app)


def close_toasts(app) -> None:
    """Close napari's notification pop-ups (startup warnings) that would cover the canvas."""
    try:
        from napari._qt.dialogs.qt_notification import NapariQtNotification
    except ImportError:  # a napari that moved it: the pictures just show the toast
        return
    for widget in app.allWidgets():
        if isinstance(widget, NapariQtNotification):
            widget.close()
    for _ in range(10):
        app.processEvents()
        time.sleep(0.02)


def find_widget(dock):
    """The magicgui widget inside what ``add_plugin_dock_widget`` returned."""
    for candidate in (dock, getattr(dock, "widget", None)):
        if candidate is not None and hasattr(candidate, "reference"):
            return candidate
    raise RuntimeError(f"cannot find the NCC widget in {dock!r}")


def napari_screenshots() -> None:
    import warnings

    import napari
    from qtpy.QtWidgets import QApplication

    # napari shows warnings (such as a deprecated Qt binding's) as toasts over the canvas.
    warnings.simplefilter("ignore")
    viewer = napari.Viewer(title="napari-ncc")
    app = QApplication.instance()
    viewer.window._qt_window.resize(*WINDOW_SIZE)
    viewer.open_sample("napari-ncc", "cell")
    reference = viewer.layers["cell reference"]
    moving = viewer.layers["cell moving"]
    # Reference in green, moving in magenta, added: white where they agree.
    moving.visible = True
    moving.colormap = "magenta"
    reference.colormap = "green"
    moving.blending = "additive"
    reference.blending = "additive"
    viewer.reset_view()
    wait_for(lambda: True, app)
    save_png(viewer.screenshot(canvas_only=False, flash=False), IMAGES / "tutorial-sample.png")

    try:
        dock, widget = viewer.window.add_plugin_dock_widget("napari-ncc", "NCC confidence")
        widget = find_widget(widget)
    except Exception as error:  # the plugin widget is missing: fall back to the public API
        print(f"no plugin widget ({error}); adding the NCC layer directly", file=sys.stderr)
        dock = widget = None

    moving.visible = False
    moving.colormap = "gray"
    moving.blending = "translucent"
    reference.colormap = "gray"
    reference.blending = "translucent"
    viewer.reset_view()  # the dock took room from the canvas
    if widget is not None:
        widget.reference.value = reference
        widget.moving.value = moving
        widget.radius.value = 3
        wait_for(lambda: True, app)
        save_png(viewer.screenshot(canvas_only=False, flash=False), IMAGES / "tutorial-widget.png")
        before = {layer.name for layer in viewer.layers}
        widget()
        wait_for(lambda: len(viewer.layers) > len(before), app)
        ncc_layer = next(layer for layer in viewer.layers if layer.name not in before)
    else:
        from napari_ncc import ncc_confidence

        confidence, registration = ncc_confidence(reference.data, moving.data, radius=3)
        ncc_layer = viewer.add_image(
            confidence,
            name="NCC (radius 3)",
            colormap="viridis",
            contrast_limits=(-1, 1),
            metadata={"shift": registration.shift},
        )
    for layer in viewer.layers:
        if layer is not ncc_layer and layer is not reference:
            layer.visible = False
    ncc_layer.visible = True
    viewer.layers.selection.active = ncc_layer
    wait_for(lambda: True, app)
    save_png(viewer.screenshot(canvas_only=False, flash=False), IMAGES / "napari-ncc-layer.png")

    # Side by side: the reference and the map in a grid, to compare them at a glance.
    if dock is not None:
        viewer.window.remove_dock_widget(dock)
    grid = viewer.canvas.grid if hasattr(viewer, "canvas") else viewer.grid
    grid.enabled = True
    grid.shape = (1, 2)
    for layer in viewer.layers:
        layer.visible = layer is reference or layer is ncc_layer
    wait_for(lambda: True, app)
    viewer.reset_view()
    wait_for(lambda: True, app)
    save_png(viewer.screenshot(canvas_only=True, flash=False), IMAGES / "tutorial-grid.png")
    viewer.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--no-napari", action="store_true", help="only the pictures made without a viewer"
    )
    parser.add_argument(
        "--only",
        choices=[
            "demo-preview",
            "registration-effect",
            "registration-models",
            "radius-and-window",
            "napari",
        ],
        help="make this picture (or, for napari, the viewer screenshots) alone",
    )
    args = parser.parse_args(argv)
    IMAGES.mkdir(exist_ok=True)
    makers = {
        "demo-preview": demo_preview,
        "registration-effect": registration_effect,
        "registration-models": registration_models,
        "radius-and-window": radius_and_window,
        "napari": napari_screenshots,
    }
    if args.no_napari:
        del makers["napari"]
    for name, make in makers.items():
        if args.only in (None, name):
            make()
    return 0


if __name__ == "__main__":
    sys.exit(main())
