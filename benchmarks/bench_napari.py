"""How quickly the NCC layer appears in napari on gigapixel images (a real viewer, under Xvfb).

Three cases, timed with a real napari viewer and ``viewer.screenshot`` (which forces a
render, so napari has computed every chunk on screen when it returns):

1. **Multiscale inputs**: a virtual pair (``--size``, 40000 x 40000 for the figures of issue
   14) given as 7-level pyramids (1024 x 1024 chunks), in two kinds: *sliceable* levels, as
   an OME-Zarr or pyramidal TIFF gives them (``da.from_array`` of an object read by
   slicing), and *computed* levels, as readers such as bioio, dask-image pipelines or an
   upstream processing step give them (``da.map_blocks`` of a generator: no source to
   slice, every chunk is computed through the Dask graph). Every block of every level is
   generated directly from its pixel coordinates (a band-limited sum of separable waves:
   level k keeps the waves longer than 4 * 2**k pixels), so nothing is precomputed; the
   moving image is the same texture displaced by a known subpixel shift. Timed: Run ->
   registration (worker) -> first rendered frame at the default (whole image) view, then
   the view zoomed to 1:1 in the middle, then panning at 1:1 to 5 new places (each view
   all new chunks). **Targets: first frame <= 1.5 s, each new 1:1 view <= 1 s.**
   Baseline, in the same run: the same views of a fresh pair of input pyramids with no NCC
   layer (what napari alone costs), and the ratio. Peak RSS of the process after each kind.
2. **A single-scale gigapixel input**: a 16384 x 16384 uint16 zarr pair on disk. The widget
   builds and caches a pyramid first (reading the full-resolution image once, with a
   progress bar); timed: Run -> first frame, split into pyramid / registration / render,
   and the pyramid cost per gigapixel.

3. **The overview** (:func:`bench_overview`): on a single-scale 16384 x 16384 uint16 zarr
   pair, Run -> the overview final (the full-resolution map computed in the background and
   its summary pyramid replacing the preview), the longest the main thread was busy
   meanwhile, and as the baseline the same map stored by plain Dask. **Target: < 180 s.**

Run: ``xvfb-run -a -s "-screen 0 1600x1000x24" .venv/bin/python benchmarks/bench_napari.py``
(``--size`` (default 16384: a few minutes on a loaded machine), ``--kinds``,
``--single-size``, ``--skip-single``, ``--repeat``, ``--overview-size``,
``--skip-overview``, ``--only-overview``).
"""

from __future__ import annotations

import argparse
import math
import os
import resource
import shutil
import tempfile
import time

import dask.array as da
import numpy as np

CHUNK = 1024
N_WAVES = 24


class WaveTexture:
    """A band-limited texture ``sum_i a_i sin(ky_i y + p_i) sin(kx_i x + q_i)``.

    Evaluated for any region as one small matrix product, at any pyramid level: level ``k``
    samples the level-0 coordinates of its pixel centres and keeps only the waves longer
    than 4 pixels of that level (so no level aliases).
    """

    def __init__(self, size: int, seed: int = 0):
        rng = np.random.default_rng(seed)
        self.wavelength = np.exp(rng.uniform(np.log(6.0), np.log(size / 4), N_WAVES))
        angle = rng.uniform(0, np.pi / 2, N_WAVES)
        k = 2 * np.pi / self.wavelength
        self.ky, self.kx = k * np.sin(angle) + k / 4, k * np.cos(angle) + k / 4
        self.phase = rng.uniform(0, 2 * np.pi, (N_WAVES, 2))
        self.amplitude = (self.wavelength / self.wavelength.max()) ** 0.25
        self.size = size
        self.seed = seed

    def region(self, level: int, displacement, rows: range, cols: range) -> np.ndarray:
        f = 2**level
        keep = self.wavelength >= 4 * f
        y = (np.asarray(rows) + 0.5) * f - 0.5 - displacement[0]
        x = (np.asarray(cols) + 0.5) * f - 0.5 - displacement[1]
        sy = np.sin(np.outer(y, self.ky[keep]) + self.phase[keep, 0]) * self.amplitude[keep]
        sx = np.sin(np.outer(x, self.kx[keep]) + self.phase[keep, 1])
        return (sy @ sx.T).astype(np.float32)

    def pyramid(
        self, displacement=(0.0, 0.0), n_levels: int = 7, computed: bool = False
    ) -> list[da.Array]:
        """Levels as a stored pyramid gives them (``da.from_array`` of sliceable levels), or
        as computed Dask arrays (``da.map_blocks`` of a generator) when `computed`."""
        if computed:
            return [self._computed_level(level, displacement) for level in range(n_levels)]
        return [
            da.from_array(
                WaveLevel(self, level, displacement),
                chunks=(CHUNK, CHUNK),
                asarray=False,
                name=f"wave-{self.seed}-{level}-{displacement}",
            )
            for level in range(n_levels)
        ]

    def _computed_level(self, level: int, displacement) -> da.Array:
        n = math.ceil(self.size / 2**level)
        chunks = tuple((CHUNK,) * (n // CHUNK) + ((n % CHUNK,) if n % CHUNK else ()) for _ in "yx")

        def generate(block_info=None):
            (y0, y1), (x0, x1) = block_info[None]["array-location"]
            return self.region(level, displacement, range(y0, y1), range(x0, x1))

        return da.map_blocks(
            generate,
            chunks=chunks,
            dtype=np.float32,
            meta=np.empty((0, 0), np.float32),
            name=f"wave-computed-{self.seed}-{level}-{displacement}",
        )


class WaveLevel:
    """One pyramid level of a :class:`WaveTexture`, sliceable like a zarr array."""

    dtype = np.dtype(np.float32)
    ndim = 2

    def __init__(self, texture: WaveTexture, level: int, displacement):
        self.texture, self.level, self.displacement = texture, level, tuple(displacement)
        n = math.ceil(texture.size / 2**level)
        self.shape = (n, n)

    def __getitem__(self, index) -> np.ndarray:
        rows, cols = (range(*sl.indices(n)) for sl, n in zip(index, self.shape, strict=True))
        return self.texture.region(self.level, self.displacement, rows, cols)


def _timed_screenshot(viewer) -> float:
    t0 = time.perf_counter()
    shot = viewer.screenshot(canvas_only=True, flash=False)
    elapsed = time.perf_counter() - t0
    assert shot[..., :3].std() > 0, "blank frame"
    return elapsed


def _run_widget(app, widget, reference, moving, wait_final=False, **values):
    """Run; return the seconds until the NCC layer shows (a preview, for pyramids) and it."""
    widget.reference.value = reference
    widget.moving.value = moving
    for name, value in values.items():
        getattr(widget, name).value = value
    before = widget.ncc_layer
    before_data = None if before is None else before.data
    t0 = time.perf_counter()
    widget()

    def shown():
        layer = widget.ncc_layer
        return layer is not None and (layer is not before or layer.data is not before_data)

    while not shown() or (wait_final and widget.worker is not None):
        app.processEvents()
        time.sleep(0.002)
    return time.perf_counter() - t0, widget.ncc_layer


def _wait_final(app, widget) -> None:
    while widget.worker is not None:
        app.processEvents()
        time.sleep(0.002)


def _zoom_one_to_one(viewer, centre) -> None:
    viewer.camera.center = centre
    viewer.camera.zoom = 1.0


def _pan(viewer, centre, steps: int = 5) -> list[float]:
    """Seconds per frame while panning at 1:1 to `steps` new places (all chunks new)."""
    times = []
    for k in range(1, steps + 1):
        viewer.camera.center = (centre[0] + 1100.0 * k, centre[1] + 1500.0 * k)
        times.append(_timed_screenshot(viewer))
    return times


def _peak_rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def bench_multiscale(size: int, seed: int = 0, computed: bool = False) -> dict:
    import napari
    from qtpy.QtWidgets import QApplication

    displacement = (12.35, -7.6)
    middle = (size / 4 + 123.0, size / 2 - 321.0)  # room to pan 5 views down-right
    out = {}

    viewer = napari.Viewer(show=True)
    app = QApplication.instance()
    viewer.window.resize(1400, 900)
    _dock, widget = viewer.window.add_plugin_dock_widget("napari-ncc", "NCC confidence")

    # Baseline: napari alone on a pair of fresh input pyramids (another texture).
    base = WaveTexture(size, seed=1000 + seed)
    viewer.add_image(
        base.pyramid(computed=computed), multiscale=True, name="a", contrast_limits=(-3, 3)
    )
    viewer.add_image(
        base.pyramid(displacement, computed=computed),
        multiscale=True,
        name="b",
        contrast_limits=(-3, 3),
    )
    out["baseline_default"] = _timed_screenshot(viewer)
    _zoom_one_to_one(viewer, middle)
    out["baseline_1to1"] = _timed_screenshot(viewer)
    out["baseline_pan"] = float(np.median(_pan(viewer, middle)))
    viewer.layers.clear()

    texture = WaveTexture(size, seed=seed)
    ref = viewer.add_image(
        texture.pyramid(computed=computed),
        multiscale=True,
        name="reference",
        contrast_limits=(-3, 3),
    )
    mov = viewer.add_image(
        texture.pyramid(displacement, computed=computed),
        multiscale=True,
        name="moving",
        contrast_limits=(-3, 3),
    )
    viewer.reset_view()
    out["inputs_default"] = _timed_screenshot(viewer)  # what the user sees before Run

    t0 = time.perf_counter()
    out["run_to_layer"], layer = _run_widget(app, widget, ref, mov, radius=3)
    out["first_frame_render"] = _timed_screenshot(viewer)
    out["run_to_first_frame"] = out["run_to_layer"] + out["first_frame_render"]
    out["levels"] = len(layer.data)
    out["chunks"] = sum(math.prod(level.numblocks) for level in layer.data)
    out["data_level_default"] = layer.data_level
    meta = layer.metadata["napari_ncc"]
    out["preview"] = float(meta["preview"])
    out["preview_shift_error"] = float(
        np.max(np.abs(np.add(meta["registration"]["shift"], displacement)))
    )
    # The full registration (coarse + full-resolution tiles) replaces the preview in place.
    _wait_final(app, widget)
    out["run_to_final"] = time.perf_counter() - t0
    out["final_frame_render"] = _timed_screenshot(viewer)
    shift = layer.metadata["napari_ncc"]["registration"]["shift"]
    out["shift_error"] = float(np.max(np.abs(np.add(shift, displacement))))

    _zoom_one_to_one(viewer, middle)
    out["zoom_1to1"] = _timed_screenshot(viewer)
    out["data_level_1to1"] = layer.data_level
    pan = _pan(viewer, middle)
    out["pan_median"], out["pan_max"] = float(np.median(pan)), float(np.max(pan))
    _zoom_one_to_one(viewer, middle)
    out["ncc_1to1_median"] = float(
        np.median(
            np.asarray(
                layer.data[0][
                    int(middle[0]) : int(middle[0]) + 256, int(middle[1]) : int(middle[1]) + 256
                ]
            )
        )
    )

    # A new radius: registration reused, only the chunks on screen are recomputed.
    elapsed, _ = _run_widget(app, widget, ref, mov, wait_final=True, radius=7)
    out["rerun_radius_1to1"] = elapsed + _timed_screenshot(viewer)
    viewer.close()
    out["peak_rss_gb"] = _peak_rss_gb()
    return out


def _zarr_texture(path: str, size: int, seed: int, displacement) -> da.Array:
    """A uint16 single-scale zarr image of the wave texture, written block by block."""
    import zarr

    [lazy] = WaveTexture(size, seed=seed).pyramid(displacement, n_levels=1)
    z = zarr.open_array(path, mode="w", shape=lazy.shape, chunks=(CHUNK, CHUNK), dtype=np.uint16)
    scaled = da.clip(lazy * 4000 + 30000, 0, 65535).astype(np.uint16)
    da.store(scaled, z, lock=False)
    return da.from_zarr(z)


def bench_single_scale(size: int) -> dict:
    import napari
    from qtpy.QtWidgets import QApplication

    from napari_ncc import _multiscale

    tmp = tempfile.mkdtemp(prefix="bench-napari-")
    out = {"gigapixels": size * size / 1e9}
    try:
        displacement = (5.25, -3.5)
        t0 = time.perf_counter()
        reference = _zarr_texture(os.path.join(tmp, "ref.zarr"), size, 3, (0.0, 0.0))
        moving = _zarr_texture(os.path.join(tmp, "mov.zarr"), size, 3, displacement)
        out["write_inputs"] = time.perf_counter() - t0

        # The pyramid alone (what the widget does first), per gigapixel.
        t0 = time.perf_counter()
        levels = _multiscale.build_pyramid(reference)
        out["pyramid_one_image"] = time.perf_counter() - t0
        out["pyramid_s_per_gigapixel"] = out["pyramid_one_image"] / out["gigapixels"]
        out["pyramid_levels"] = len(levels)

        viewer = napari.Viewer(show=True)
        app = QApplication.instance()
        viewer.window.resize(1400, 900)
        _dock, widget = viewer.window.add_plugin_dock_widget("napari-ncc", "NCC confidence")
        # Hidden: napari would load a visible single-scale image whole to display it.
        ref = viewer.add_image(reference, name="reference", visible=False)
        mov = viewer.add_image(moving, name="moving", visible=False)
        t0 = time.perf_counter()
        out["run_to_layer"], layer = _run_widget(app, widget, ref, mov)
        out["first_frame_render"] = _timed_screenshot(viewer)
        out["run_to_first_frame"] = time.perf_counter() - t0
        _wait_final(app, widget)
        out["run_to_final"] = time.perf_counter() - t0
        out["ncc_levels"] = len(layer.data)
        shift = layer.metadata["napari_ncc"]["registration"]["shift"]
        out["shift_error"] = float(np.max(np.abs(np.add(shift, displacement))))
        viewer.close()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def _hidden_pair_in_napari(reference, moving):
    """A viewer with the widget docked and the pair as hidden layers (napari would load a
    visible single-scale image whole): the viewer, the app, the widget, the two layers."""
    import napari
    from qtpy.QtWidgets import QApplication

    viewer = napari.Viewer(show=True)
    viewer.window.resize(1400, 900)
    _dock, widget = viewer.window.add_plugin_dock_widget("napari-ncc", "NCC confidence")
    layers = tuple(
        viewer.add_image(image, name=name, visible=False)
        for image, name in ((reference, "reference"), (moving, "moving"))
    )
    return viewer, QApplication.instance(), widget, layers


def bench_overview(size: int) -> dict:
    """Time until the overview is final: Run on a single-scale `size`² zarr pair, then the
    background job that computes the full-resolution map and its summary pyramid.

    Also: the longest the main thread was busy in one go meanwhile (the viewer's
    responsiveness), and, as the baseline, the same full-resolution map computed and stored
    with plain Dask (``da.to_zarr``) with nothing else going on.
    """
    import zarr

    from napari_ncc import Registration, ncc_confidence
    from napari_ncc import _overview as overview_module

    tmp = tempfile.mkdtemp(prefix="bench-overview-")
    out = {"gigapixels": size * size / 1e9}
    try:
        displacement = (5.25, -3.5)
        reference = _zarr_texture(os.path.join(tmp, "ref.zarr"), size, 5, (0.0, 0.0))
        moving = _zarr_texture(os.path.join(tmp, "mov.zarr"), size, 5, displacement)
        viewer, app, widget, pair = _hidden_pair_in_napari(reference, moving)
        t0 = time.perf_counter()
        out["run_to_first_frame"], layer = _run_widget(app, widget, *pair, wait_final=True)
        _timed_screenshot(viewer)
        out["run_to_registered"] = time.perf_counter() - t0
        longest = 0.0
        frames = 0
        while layer.metadata["napari_ncc"].get("overview", {}).get("state") != "final":
            t1 = time.perf_counter()
            app.processEvents()
            longest = max(longest, time.perf_counter() - t1)
            if frames % 50 == 0:  # draw now and then, as a user looking at it would
                longest = max(longest, _timed_screenshot(viewer))
            frames += 1
            time.sleep(0.01)
        out["run_to_overview_final"] = time.perf_counter() - t0
        out["longest_main_thread_block"] = longest
        info = layer.metadata["napari_ncc"]
        out["overview_blocks"] = info["overview"]["total"]
        viewer.close()

        # Baseline: the same map, computed and stored by plain Dask.
        registration = Registration.from_dict(info["registration"])
        chunk = overview_module.OVERVIEW_CHUNK
        ncc, _ = ncc_confidence(
            reference,
            moving,
            radius=info["radius"],
            register=False,
            registration=registration,
            chunks=chunk,
        )
        store = zarr.open_array(
            os.path.join(tmp, "map.zarr"),
            mode="w",
            shape=ncc.shape,
            chunks=(chunk, chunk),
            dtype=np.float32,
        )
        t0 = time.perf_counter()
        da.store(ncc, store, lock=False)
        out["baseline_map_to_zarr"] = time.perf_counter() - t0
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def _line(label: str, value: float, note: str = "") -> None:
    print(f"   {label:<46}: {value:6.2f} s  {note}")


def _report_multiscale(args, kind: str, runs: list[dict]) -> None:
    # The machine is shared: report the median of every figure over the runs (and the
    # spread of the two targets).
    ms = {key: float(np.median([run[key] for run in runs])) for key in runs[0]}
    for key in ("run_to_first_frame", "zoom_1to1", "pan_median"):
        values = ", ".join(f"{run[key]:.2f}" for run in runs)
        print(f"   {key}: {values} s over {args.repeat} runs")
    print(
        f"\n1. multiscale {args.size} x {args.size} pair, {kind} levels: {ms['levels']:.0f} "
        f"NCC levels, {ms['chunks']:.0f} chunks in all (lazy); medians of {args.repeat} runs"
    )
    _line("inputs alone, default view (before Run)", ms["inputs_default"])
    _line(
        "Run -> layer added (preview registration)",
        ms["run_to_layer"],
        f"(shift error {ms['preview_shift_error']:.3f} px at full resolution)",
    )
    _line(
        "Run -> first frame, default view",
        ms["run_to_first_frame"],
        f"(level {ms['data_level_default']:.0f})  target <= 1.5 s",
    )
    _line(
        "Run -> full registration, layer updated",
        ms["run_to_final"],
        f"(shift error {ms['shift_error']:.4f} px; frame {ms['final_frame_render']:.2f} s)",
    )
    _line(
        "zoom to 1:1 -> frame",
        ms["zoom_1to1"],
        f"(level {ms['data_level_1to1']:.0f}, median NCC {ms['ncc_1to1_median']:.3f})  "
        "target <= 1 s",
    )
    _line(
        "pan at 1:1 to 5 new places, per frame",
        ms["pan_median"],
        f"(median; max {ms['pan_max']:.2f} s)  target <= 1 s",
    )
    _line("re-run with radius 7 at 1:1 -> frame", ms["rerun_radius_1to1"])
    _line("baseline: napari alone, default view", ms["baseline_default"])
    _line(
        "baseline: napari alone, 1:1",
        ms["baseline_1to1"],
        f"ratio NCC / alone at 1:1: {ms['zoom_1to1'] / ms['baseline_1to1']:.2f}",
    )
    _line(
        "baseline: napari alone, panning per frame",
        ms["baseline_pan"],
        f"ratio NCC / alone: {ms['pan_median'] / ms['baseline_pan']:.2f}",
    )
    print(f"   {'peak RSS of the process so far':<46}: {ms['peak_rss_gb']:6.2f} GB")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, default=16384)
    parser.add_argument(
        "--kinds", default="sliceable,computed", help="input pyramids: sliceable, computed"
    )
    parser.add_argument("--single-size", type=int, default=16384)
    parser.add_argument("--skip-single", action="store_true")
    parser.add_argument("--overview-size", type=int, default=16384)
    parser.add_argument("--skip-overview", action="store_true")
    parser.add_argument("--only-overview", action="store_true")
    parser.add_argument(
        "--repeat", type=int, default=1, help="multiscale runs (fresh data each); median shown"
    )
    args = parser.parse_args()

    print(f"napari-ncc napari benchmark ({os.cpu_count()} cores)")
    if args.only_overview:
        _print_overview(args.overview_size)
        return
    for kind in args.kinds.split(","):
        runs = [
            bench_multiscale(args.size, seed, computed=kind == "computed")
            for seed in range(args.repeat)
        ]
        _report_multiscale(args, kind, runs)
    if not args.skip_single:
        ss = bench_single_scale(args.single_size)
        print(
            f"\n2. single-scale {args.single_size} x {args.single_size} uint16 zarr pair "
            f"({ss['gigapixels']:.2f} Gpx each)"
        )
        _line(
            f"pyramid of one image ({ss['pyramid_levels']} levels)",
            ss["pyramid_one_image"],
            f"= {ss['pyramid_s_per_gigapixel']:.1f} s per gigapixel",
        )
        _line(
            "Run -> first frame (2 pyramids + preview)",
            ss["run_to_first_frame"],
            f"({ss['ncc_levels']} NCC levels)",
        )
        _line(
            "Run -> full registration",
            ss["run_to_final"],
            f"(shift error {ss['shift_error']:.4f} px)",
        )
    if not args.skip_overview:
        _print_overview(args.overview_size)


def _print_overview(size: int) -> None:
    ov = bench_overview(size)
    print(f"\n3. overview of a single-scale {size} x {size} uint16 zarr pair")
    _line("Run -> first frame (preview)", ov["run_to_first_frame"])
    _line("Run -> full registration shown", ov["run_to_registered"])
    _line(
        "Run -> overview final",
        ov["run_to_overview_final"],
        f"({ov['overview_blocks']} blocks)  target < 180 s",
    )
    _line("longest main-thread block (redraws incl.)", ov["longest_main_thread_block"])
    background = ov["run_to_overview_final"] - ov["run_to_registered"]
    _line(
        "baseline: the same map, plain Dask to zarr",
        ov["baseline_map_to_zarr"],
        f"ratio (overview final - registered) / baseline: "
        f"{background / ov['baseline_map_to_zarr']:.2f}",
    )


if __name__ == "__main__":
    main()
