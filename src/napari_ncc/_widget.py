"""The "NCC confidence" widget: pick two image layers, get a lazy confidence layer.

A thin front end. Registration (:func:`napari_ncc._registration.register`) runs in a napari
worker thread with a progress bar, so the viewer never freezes; the NCC layer it then adds
is lazy (:func:`napari_ncc._multiscale.ncc_levels`): napari computes only the chunks on
screen, at the zoom level in use.

The layer
---------
- Data: the local NCC of the reference and the *registered* moving image, as a Dask array,
  or a list of them (a multiscale layer) when the inputs are multiscale or larger than
  :data:`~napari_ncc._multiscale.MULTISCALE_MIN_SIDE` pixels a side (see
  :mod:`napari_ncc._multiscale` for what a coarse level is).
- ``contrast_limits=(-1, 1)``, set explicitly so napari never scans the data, and a
  diverging colormap (:data:`~napari_ncc._multiscale.NCC_COLORMAP`, ColorBrewer's
  colour-blind-safe PiYG):
  green where the images agree (NCC -> 1), white where the NCC is ~0 (no correlation, and
  flat windows, which get the fill value 0), magenta where they are anti-correlated.
  A diverging map keeps the sign visible: contrast inversion is information too.
- The reference layer's scale and translate; ``metadata["napari_ncc"]`` records the
  parameters, the shift and the registration quality.
- Running again updates that layer in place (unless "new layer" is ticked). The pyramids
  built and the registration found are reused while the two layers and their data are the
  same, and the map is lazy: a new radius or window costs only the chunks on screen.

Gigapixel images
----------------
Pyramids (multiscale layers, or the pyramid cached for a single-scale input larger than
:data:`~napari_ncc._multiscale.MULTISCALE_MIN_SIDE`) are first registered on a coarse level
(:data:`~napari_ncc._multiscale.PREVIEW_MAX_SIDE` pixels a side at most): that preview map
appears within a second or two and is right for the overview, where a screen pixel spans
many image pixels. The full registration (refined on full-resolution tiles) then replaces
it in place; ``metadata["napari_ncc"]["preview"]`` says which one is shown.
"""

import warnings
import weakref
from dataclasses import dataclass

import dask.array as da
import numpy as np
from magicgui.widgets import FunctionGui
from napari.layers import Image
from napari.qt.threading import create_worker
from napari.utils.notifications import show_error, show_warning

from . import _multiscale

WINDOWS = ("box", "gaussian")

RADIUS_TOOLTIP = (
    "Window half-width r in pixels: the NCC of each pixel compares the two (2r+1)-pixel "
    "wide patches centred on it. Larger: smoother, more robust to noise, less detail."
)


def _radius_label(radius: int) -> str:
    side = 2 * int(radius) + 1
    return f"radius ({side}x{side} window)"


def _plane_choices(layer: Image | None) -> list[tuple[str, int | None]]:
    ndim = 2 if layer is None else layer.ndim
    choices: list[tuple[str, int | None]] = [("no: one window over all axes", None)]
    choices += [(f"yes: each plane along axis {ax}", ax) for ax in range(max(ndim - 2, 0))]
    return choices


def _levels(layer: Image) -> list[da.Array]:
    """The layer's data as lazy levels (level 0 first), RGB reduced to luminance."""
    data = list(layer.data) if layer.multiscale else [layer.data]
    levels = []
    for level in data:
        level = level if isinstance(level, da.Array) else da.asarray(level)
        levels.append(_multiscale.as_luminance(level) if layer.rgb else level)
    return levels


def _display_limits(layer: Image) -> tuple[float, float]:
    if not layer.rgb:
        return tuple(layer.contrast_limits)
    dtype = np.dtype(layer.dtype)
    return (0.0, float(np.iinfo(dtype).max)) if dtype.kind in "iu" else (0.0, 1.0)


@dataclass
class _Result:
    """What a run hands back to the main thread (a preview first, for pyramids)."""

    ncc: list
    registered: list | None
    registration: object
    reference: list
    moving: list
    final: bool = True


class _Job:
    """What one run computes, in the worker thread (no Qt, no napari objects touched).

    With pyramids, a quick registration on a coarse level (:func:`_multiscale.register_level`)
    is shown first, then replaced in place by the full registration (coarse estimate
    refined on full-resolution tiles), which takes longer on gigapixel images.
    """

    def __init__(self, reference, moving, params, build_pyramids: bool, registration=None):
        self.reference = reference
        self.moving = moving
        self.params = params
        self.build_pyramids = build_pyramids
        self.registration = registration

    @property
    def steps(self) -> int:
        n = 3  # preview, registration, map
        if self.build_pyramids:
            n += 2 * _multiscale.pyramid_blocks(self.reference[0].shape)
        return n

    def _result(self, reference, moving, registration, final: bool) -> _Result:
        p = self.params
        ncc = _multiscale.ncc_levels(
            reference,
            moving,
            radius=p["radius"],
            registration=registration,
            window=p["window"],
            per_plane=p["per_plane"],
        )
        registered = None
        if p["show_registered"]:
            registered = (
                moving
                if registration is None
                else _multiscale.registered_levels(moving, registration)
            )
        return _Result(ncc, registered, registration, reference, moving, final)

    def run(self):
        """Generator for ``create_worker``: yields progress steps and the preview."""
        reference, moving, p = self.reference, self.moving, self.params
        if self.build_pyramids:
            reference = yield from _multiscale.iter_pyramid(reference[0])
            moving = yield from _multiscale.iter_pyramid(moving[0])
        registration = self.registration
        if p["register"] and registration is None:
            with warnings.catch_warnings():
                # Reported as a napari notification once the layer is shown.
                from ._registration import RegistrationWarning, register

                warnings.simplefilter("ignore", RegistrationWarning)
                level = _multiscale.coarse_level(
                    [r.shape for r in reference], plane_axis=p["per_plane"]
                )
                if level > 0:
                    preview = _multiscale.register_level(
                        reference, moving, level, per_plane=p["per_plane"]
                    )
                    yield self._result(reference, moving, preview, final=False)
                registration = register(reference, moving, per_plane=p["per_plane"])
        yield
        return self._result(reference, moving, registration, final=True)


def _unwrap(layer: Image) -> Image:
    # napari hands plugins a proxy of the viewer whose layers are proxies too: a weak
    # reference to a proxy dies at once, so refer to the layer itself.
    return getattr(layer, "__wrapped__", layer)


def _weak(layer: Image) -> weakref.ref:
    return weakref.ref(_unwrap(layer))


class NCCConfidenceWidget(FunctionGui):
    """The "NCC confidence" dock widget (the npe2 widget contribution).

    Every field can be set from code, then the widget called::

        widget = NCCConfidenceWidget(viewer)
        widget.reference.value = viewer.layers["reference"]
        widget.moving.value = viewer.layers["moving"]
        widget.radius.value = 5
        worker = widget()  # starts the worker; the layer appears when it is done

    Calling it returns the napari worker (None when the inputs were refused, with a
    notification saying why).
    """

    # napari passes the viewer to a parameter annotated with this string (or the class).
    def __init__(self, viewer: "napari.viewer.Viewer"):  # noqa: F821
        self._viewer = viewer
        self._worker = None
        self._ncc_ref = None
        self._registered_ref = None
        self._cache: dict = {}
        self._cache_key = None
        self._previewed = None
        self._auto_names: dict[int, str] = {}
        super().__init__(
            self._run,
            call_button="Run",
            param_options={
                "reference": {
                    "tooltip": "The image the moving one is compared with (kept fixed)."
                },
                "moving": {
                    "tooltip": "The image registered onto the reference, then compared with it."
                },
                "radius": {
                    "min": 1,
                    "max": 100,
                    "label": _radius_label(3),
                    "tooltip": RADIUS_TOOLTIP,
                },
                "window": {
                    "choices": WINDOWS,
                    "tooltip": "box: uniform weights; gaussian: sigma = radius / 2, truncated "
                    "at the radius (smoother, more local).",
                },
                "register": {
                    "label": "register first",
                    "tooltip": "Estimate the subpixel translation that aligns moving onto "
                    "reference, and correlate the registered moving image (recommended).",
                },
                "per_plane": {
                    "label": "per plane",
                    "widget_type": "ComboBox",
                    "nullable": False,
                    "choices": self._plane_choices,
                    "tooltip": "For stacks: register and correlate each plane along an axis on "
                    "its own (windows over the other axes), instead of one nD window.",
                },
                "show_registered": {
                    "label": "add registered moving",
                    "tooltip": "Also add the registered moving image as a (lazy) layer.",
                },
                "new_layer": {
                    "label": "new layer",
                    "tooltip": "Add a new NCC layer instead of updating the last one in place.",
                },
            },
        )
        self.radius.changed.connect(self._update_radius_label)
        self.reference.changed.connect(self.per_plane.reset_choices)

    def _update_radius_label(self, radius: int) -> None:
        self.radius.label = _radius_label(radius)

    def _plane_choices(self, _widget=None) -> list[tuple[str, int | None]]:
        # Called by magicgui whenever the choices are reset (layers added or removed, a new
        # reference picked); the reference widget does not exist yet on the first call.
        reference = self.get_widget("reference") if self._initialized else None
        return _plane_choices(None if reference is None else reference.value)

    # --- layer bookkeeping -------------------------------------------------------------
    def _tracked(self, ref) -> Image | None:
        layer = ref() if ref is not None else None
        return layer if layer is not None and layer in self._viewer.layers else None

    @property
    def ncc_layer(self) -> Image | None:
        """The NCC layer this widget last wrote (None if it is not in the viewer)."""
        return self._tracked(self._ncc_ref)

    @property
    def worker(self):
        """The worker of the run in progress, or None."""
        return self._worker

    def _put_layer(self, ref, data, multiscale: bool, new: bool, **kwargs) -> Image:
        """Update the tracked layer in place, or add a new one."""
        layer = None if new else self._tracked(ref)
        ndim = (data[0] if multiscale else data).ndim
        if layer is not None and layer.multiscale == multiscale and layer.ndim == ndim:
            layer.data = data
            for key, value in kwargs.items():
                if key == "name" and layer.name != self._auto_names.get(id(layer)):
                    continue  # renamed by the user: keep their name
                if key != "visible":
                    setattr(layer, key, value)
            self._auto_names[id(layer)] = layer.name
            return layer
        added = _unwrap(self._viewer.add_image(data, multiscale=multiscale, **kwargs))
        self._auto_names[id(added)] = added.name
        if layer is not None:  # an incompatible old layer: the new one takes its place
            index = self._viewer.layers.index(layer)
            self._viewer.layers.remove(layer)
            self._viewer.layers.move(self._viewer.layers.index(added), index)
        return added

    # --- run ---------------------------------------------------------------------------
    def _run(
        self,
        reference: Image,
        moving: Image,
        radius: int = 3,
        window: str = "box",
        register: bool = True,
        per_plane=None,  # (label, value) choices, None: one window over all axes
        show_registered: bool = False,
        new_layer: bool = False,
    ):
        if reference is None or moving is None:
            show_error("NCC confidence: choose a reference and a moving image layer")
            return None
        ref_levels, mov_levels = _levels(reference), _levels(moving)
        if ref_levels[0].shape != mov_levels[0].shape:
            show_error(
                "NCC confidence: reference and moving must have the same shape, got "
                f"{ref_levels[0].shape} ({reference.name!r}) and {mov_levels[0].shape} "
                f"({moving.name!r})"
            )
            return None
        if len(ref_levels) != len(mov_levels) or any(
            a.shape != b.shape for a, b in zip(ref_levels, mov_levels, strict=False)
        ):
            # Pyramids that do not match: start again from full resolution.
            ref_levels, mov_levels = ref_levels[:1], mov_levels[:1]
        if per_plane is not None and per_plane >= ref_levels[0].ndim - 1:
            per_plane = None
        params = {
            "radius": int(radius),
            "window": window,
            "register": bool(register),
            "per_plane": per_plane,
            "show_registered": bool(show_registered),
        }
        # Same layers, same data: reuse the pyramids built and the registration found by
        # the last run, so that a new radius or window costs only the chunks on screen.
        key = (id(reference.data), id(moving.data))
        cached = self._cache if self._cache.get("key") == key else {}
        if cached and not (
            cached["layers"][0]() is _unwrap(reference)
            and cached["layers"][1]() is _unwrap(moving)
        ):
            cached = {}
        if cached:
            ref_levels, mov_levels = cached["reference"], cached["moving"]
        build = len(ref_levels) == 1 and _multiscale.needs_pyramid(ref_levels[0].shape)
        registration = cached.get("registrations", {}).get(per_plane) if register else None
        job = _Job(ref_levels, mov_levels, params, build, registration)
        if self._worker is not None:
            self._worker.quit()
        worker = create_worker(
            job.run,
            _progress={"total": job.steps, "desc": "NCC confidence"},
            _ignore_errors=True,
        )
        self._cache_key = (key, (_weak(reference), _weak(moving)))
        names = (reference.name, moving.name)
        display = {
            "scale": tuple(reference.scale),
            "translate": tuple(reference.translate),
            "moving_colormap": "gray" if moving.rgb else moving.colormap,
            "moving_limits": _display_limits(moving),
        }

        def show(result):
            if isinstance(result, _Result):
                self._show(worker, result, params, names, display, new_layer)

        worker.yielded.connect(show)
        worker.returned.connect(show)
        worker.errored.connect(lambda exc: self._failed(worker, exc))
        self._worker = worker
        worker.start()
        return worker

    def _failed(self, worker, exc: Exception) -> None:
        if worker is self._worker:
            self._worker = None
        show_error(f"NCC confidence failed: {exc}")

    def _show(self, worker, result: _Result, params, names, display, new_layer: bool) -> None:
        if worker is not self._worker:  # superseded by a later run
            return
        if result.final:
            self._worker = None
            key, layers = self._cache_key
            registrations = dict(self._cache.get("registrations", {}))
            if self._cache.get("key") != key:
                registrations = {}
            if result.registration is not None:
                registrations[params["per_plane"]] = result.registration
            self._cache = {
                "key": key,
                "layers": layers,
                "reference": result.reference,
                "moving": result.moving,
                "registrations": registrations,
            }
        # The final result of a run replaces its own preview, even with "new layer".
        new_layer = new_layer and self._previewed is not worker
        self._previewed = None if result.final else worker
        ncc, registered, registration = result.ncc, result.registered, result.registration
        metadata = {
            "napari_ncc": {
                **params,
                "reference": names[0],
                "moving": names[1],
                "levels": len(ncc),
                "coarse_levels": "NCC of the coarsened inputs at the same radius",
                "registration": None if registration is None else registration.to_dict(),
                "preview": not result.final,
            }
        }
        if result.final and registration is not None and not registration.reliable:
            show_warning(
                "NCC confidence: the registration is unreliable "
                f"(quality {registration.quality:.2f}); the map may show misalignment"
            )
        multiscale = len(ncc) > 1
        layer = self._put_layer(
            self._ncc_ref,
            ncc if multiscale else ncc[0],
            multiscale,
            new_layer,
            name=f"NCC {names[0]} ~ {names[1]}",
            colormap=_multiscale.NCC_COLORMAP,
            contrast_limits=_multiscale.NCC_CONTRAST_LIMITS,
            scale=display["scale"],
            translate=display["translate"],
            metadata=metadata,
        )
        self._ncc_ref = _weak(layer)
        if registered is not None:
            registered_layer = self._put_layer(
                self._registered_ref,
                registered if multiscale else registered[0],
                multiscale,
                new_layer,
                name=f"{names[1]} registered",
                colormap=display["moving_colormap"],
                contrast_limits=display["moving_limits"],
                scale=display["scale"],
                translate=display["translate"],
                metadata=metadata,
                visible=False,
            )
            self._registered_ref = _weak(registered_layer)
        # The NCC layer goes on top, selected.
        self._viewer.layers.move(self._viewer.layers.index(layer), len(self._viewer.layers))
        self._viewer.layers.selection.active = layer
