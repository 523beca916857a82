"""The "NCC confidence" dock widget: pick two image layers, get a lazy confidence layer.

A thin front end: the run (pyramids, registration, lazy levels) happens in a napari worker
(:mod:`napari_ncc._run_job`, with progress and Cancel through :mod:`napari_ncc._activity`),
and for multiscale maps the full-resolution overview is filled in the background
(:mod:`napari_ncc._overview`). The NCC layer uses the diverging
:data:`~napari_ncc._multiscale.NCC_COLORMAP` over (-1, 1) with a colour bar; its
``metadata["napari_ncc"]`` records the parameters, the registration, the preview or
overview state. What the user sees and why is in docs/tutorial.md and docs/huge-images.md.
"""

import contextlib
import weakref
from typing import TYPE_CHECKING

from magicgui.widgets import FunctionGui, Label
from napari.layers import Image
from napari.utils.notifications import show_error, show_warning
from qtpy.QtCore import Qt, QTimer

from . import _multiscale, _overview
from ._activity import Activity, Cancelled
from ._layers import (
    display_limits,
    image_shape,
    is_mask_layer,
    layer_levels,
    layer_mask,
    share_viewer_chunks,
    source_path,
)
from ._ncc import check_mask
from ._read import ATTRS_KEY
from ._run_job import Job, Result
from ._shift_layers import replace_shift_layers
from ._summary import describe_registration, transform_summary
from ._transform import MODELS
from ._validation import WINDOWS

if TYPE_CHECKING:
    import napari

RADIUS_TOOLTIP = (
    "Window half-width r in pixels: the NCC of each pixel compares the two (2r+1)-pixel "
    "wide patches centred on it. Larger: smoother, more robust to noise, less detail."
)

RUN, CANCEL, CANCELLING = "Run", "Cancel", "Cancelling..."

RESULT_HINT = "not run yet"

PREVIEW_LEVELS = "preview: NCC of the coarsened inputs at the same radius"


def _radius_label(radius: int) -> str:
    side = 2 * int(radius) + 1
    return f"radius ({side}x{side} window)"


def _plane_choices(layer: Image | None) -> list[tuple[str, int | None]]:
    ndim = 2 if layer is None else layer.ndim
    choices: list[tuple[str, int | None]] = [("no: one window over all axes", None)]
    choices += [(f"yes: each plane along axis {ax}", ax) for ax in range(max(ndim - 2, 0))]
    return choices


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
    notification saying why). While a run is going, the Run button reads Cancel
    (:meth:`cancel`); a call from code instead supersedes the run in progress.
    """

    # napari passes the viewer to a parameter annotated with this string (or the class).
    def __init__(self, viewer: "napari.viewer.Viewer"):
        self._viewer = viewer
        self._activity: Activity | None = None
        self._ncc_ref = None
        self._registered_ref = None
        self._shift_refs: list = []  # the local-shift layers of the last run
        self._cache: dict = {}
        self._cache_key = None
        self._previewed = None
        self._undo: list = []  # how to take back what a run's preview changed
        # Overview caches of the current inputs, by parameters (oldest first), and the
        # background job filling one in.
        self._overviews = _overview.OverviewCache()
        self._overview_activity: Activity | None = None
        self._showing = weakref.WeakKeyDictionary()  # layer -> the overview it shows
        self._pending_overview = None  # (layer, result, params) of a run finishing
        self._result_text = ""
        self._auto_names: dict[int, str] = {}
        super().__init__(
            self._run,
            call_button=RUN,
            param_options={
                "reference": {
                    "tooltip": "The image the moving one is compared with (kept fixed)."
                },
                "moving": {
                    "tooltip": "The image registered onto the reference, then compared with "
                    "it. Defaults to another image layer of the reference's shape."
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
                "model": {
                    "label": "transform",
                    "choices": MODELS,
                    "tooltip": "What the registration corrects: translation; rigid (+ rotation);"
                    " similarity (+ scale); affine (+ shear); deformable (+ a smooth field). "
                    "The others than translation: 2D images and 3D volumes that fit in "
                    "memory, or per plane the 2D planes of a 3D stack.",
                },
                "per_plane": {
                    "label": "per plane",
                    "widget_type": "ComboBox",
                    "nullable": False,
                    "choices": self._plane_choices,
                    "tooltip": "For stacks: register and correlate each plane along an axis on "
                    "its own (windows over the other axes), instead of one nD window.",
                },
                "mask": {
                    "widget_type": "ComboBox",
                    "nullable": False,
                    "choices": self._mask_choices,
                    "tooltip": "Optional: a Labels layer (label > 0 is data) or a boolean "
                    "image of the reference's shape. Windows then count only those pixels "
                    "(and only those the registered moving image covers).",
                },
                "min_fraction": {
                    "label": "min fraction",
                    "min": 0.01,
                    "max": 1.0,
                    "step": 0.05,
                    "tooltip": "With a mask: the fraction of a window's pixels that must be "
                    "data; other windows get the fill value 0.",
                },
                "show_registered": {
                    "label": "add registered moving",
                    "tooltip": "Also add the registered moving image as a (lazy) layer.",
                },
                "new_layer": {
                    "label": "new layer",
                    "tooltip": "Add a new NCC layer instead of updating the last one in place.",
                },
                "show_shifts": {
                    "label": "add local shifts",
                    "tooltip": "Transforms other than translation: also add the shifts measured"
                    " on tiles, beyond the linear part (deformable: where the images had to be"
                    " warped), as arrows coloured by confidence; rejected tiles in orange-red.",
                },
                "summary": {
                    "label": "overview summary",
                    "choices": _overview.SUMMARIES,
                    "tooltip": "Multiscale maps: what a zoomed-out pixel shows of the "
                    "full-resolution map it covers, once computed: its mean, or its minimum "
                    "(the worst score: a small disagreeing spot stays visible).",
                },
            },
        )
        # What the last run found (the shift, the registration quality, any doubt).
        self.result = Label(value=RESULT_HINT, name="result", gui_only=True)
        self.result.native.setWordWrap(True)
        self.result.native.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.append(self.result)
        # The button runs, or cancels the run in progress (magicgui's own handler would
        # only ever call the function).
        self.call_button.changed.disconnect()
        self.call_button.changed.connect(self._on_button)
        self.radius.changed.connect(self._update_radius_label)
        self.reference.changed.connect(self.per_plane.reset_choices)
        self.reference.changed.connect(self._choose_moving)
        self._choose_moving()
        # Without registration there is no transform to choose (nor its local shifts).
        self.register.changed.connect(self._follow_register)

    def _follow_register(self, register: bool) -> None:
        self.model.enabled = self.show_shifts.enabled = bool(register)

    def _update_radius_label(self, radius: int) -> None:
        self.radius.label = _radius_label(radius)

    def _plane_choices(self, _widget=None) -> list[tuple[str, int | None]]:
        # Called by magicgui whenever the choices are reset (layers added or removed, a new
        # reference picked); the reference widget does not exist yet on the first call.
        reference = self.get_widget("reference") if self._initialized else None
        return _plane_choices(None if reference is None else reference.value)

    def _mask_choices(self, _widget=None) -> list[tuple[str, object]]:
        masks = [layer for layer in self._viewer.layers if is_mask_layer(layer)]
        return [("none", None)] + [(layer.name, layer) for layer in masks]

    # --- layer choices -----------------------------------------------------------------
    def reset_choices(self, *args) -> None:
        """Refresh the layer lists (napari calls this when layers change)."""
        super().reset_choices(*args)
        if self._initialized:
            self._choose_moving()

    def _choose_moving(self, *_) -> None:
        """Point `moving` at another image of the reference's shape, when it is unset or
        the reference itself and there is one (layers made by this widget excluded)."""
        reference, moving = self.reference.value, self.moving.value
        if reference is None or (moving is not None and _unwrap(moving) is not _unwrap(reference)):
            return
        shape = image_shape(reference)
        for candidate in self.moving.choices:
            if (
                candidate is not None
                and _unwrap(candidate) is not _unwrap(reference)
                and ATTRS_KEY not in candidate.metadata
                and image_shape(candidate) == shape
            ):
                self.moving.value = candidate
                return

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
        return None if self._activity is None else self._activity.worker

    def _put_layer(self, ref, data, multiscale: bool, new: bool, **kwargs):
        """Update the tracked layer in place, or add a new one.

        Returns the layer, and a function that takes the change back.
        """
        layer = None if new else self._tracked(ref)
        ndim = (data[0] if multiscale else data).ndim
        layers = self._viewer.layers
        if layer is not None and layer.multiscale == multiscale and layer.ndim == ndim:
            before = {key: getattr(layer, key) for key in ("data", *kwargs) if key != "visible"}
            layer.data = data
            for key, value in kwargs.items():
                if key == "name":
                    # A name the user gave is theirs: only a name this widget set changes.
                    if layer.name == self._auto_names.get(id(layer)):
                        layer.name = value
                        self._auto_names[id(layer)] = layer.name  # (napari may add " [1]")
                elif key != "visible":
                    setattr(layer, key, value)

            def undo():
                for key, value in before.items():
                    setattr(layer, key, value)

            return layer, undo
        added = _unwrap(self._viewer.add_image(data, multiscale=multiscale, **kwargs))
        self._auto_names[id(added)] = added.name
        if layer is None:
            return added, lambda: added in layers and layers.remove(added)
        # An incompatible old layer: the new one takes its place.
        index = layers.index(layer)
        layers.remove(layer)
        layers.move(layers.index(added), index)

        def put_back():
            if added in layers:
                layers.remove(added)
            layers.insert(min(index, len(layers)), layer)

        return added, put_back

    # --- run ---------------------------------------------------------------------------
    def _on_button(self, *_) -> None:
        if self._activity is not None:
            self.cancel()
        else:
            self()

    def cancel(self) -> None:
        """Cancel the run in progress: the worker stops at its next progress step, and
        whatever its preview added or changed is taken back. Also stops the overview being
        computed (the layer keeps what it has)."""
        self._stop_overview()
        if self._activity is None:
            return
        self._activity.cancel()
        self.call_button.text = CANCELLING
        self.call_button.enabled = False

    def _run(
        self,
        reference: Image,
        moving: Image,
        radius: int = 3,
        window: str = "box",
        register: bool = True,
        model: str = "translation",
        per_plane=None,  # (label, value) choices, None: one window over all axes
        show_registered: bool = False,
        new_layer: bool = False,
        show_shifts: bool = False,
        mask=None,  # a Labels or boolean Image layer, None: every pixel is data
        min_fraction: float = 0.5,
        summary: str = "mean",
    ):
        if reference is None or moving is None:
            show_error("NCC confidence: choose a reference and a moving image layer")
            return None
        ref_levels, mov_levels = layer_levels(reference), layer_levels(moving)
        share_viewer_chunks()  # (computed inputs: the chunks napari computed for its view)
        if ref_levels[0].shape != mov_levels[0].shape:
            show_error(
                "NCC confidence: reference and moving must have the same shape, got "
                f"{ref_levels[0].shape} ({reference.name!r}) and {mov_levels[0].shape} "
                f"({moving.name!r})"
            )
            return None
        same_layer = _unwrap(reference) is _unwrap(moving)
        if same_layer:
            show_warning(
                f"NCC confidence: reference and moving are the same layer ({reference.name!r}),"
                " so the map is 1 everywhere; choose another image as moving"
            )
        if len(ref_levels) != len(mov_levels) or any(
            a.shape != b.shape for a, b in zip(ref_levels, mov_levels, strict=False)
        ):
            # Pyramids that do not match: start again from full resolution.
            ref_levels, mov_levels = ref_levels[:1], mov_levels[:1]
        if per_plane is not None and per_plane >= ref_levels[0].ndim - 1:
            per_plane = None
        mask_data = None if mask is None else layer_mask(mask)
        if mask_data is not None:
            try:
                check_mask(mask_data, ref_levels[0].shape)
            except (TypeError, ValueError) as exc:
                show_error(f"NCC confidence: mask layer {mask.name!r}: {exc}")
                return None
        params = {
            "radius": int(radius),
            "window": window,
            "register": bool(register),
            "model": model,
            "per_plane": per_plane,
            "mask": None if mask is None else mask.name,
            "min_fraction": float(min_fraction),
            "show_registered": bool(show_registered),
            "show_shifts": bool(show_shifts),
            "summary": summary,
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
        registration = (
            cached.get("registrations", {}).get((per_plane, model)) if register else None
        )
        if self._activity is not None:  # a call from code while a run is going
            self._activity.cancel()
        self._stop_overview()
        activity = Activity("NCC confidence")
        sources = (source_path(reference), source_path(moving))
        job = Job(
            ref_levels, mov_levels, params, build, activity, registration, sources, mask_data
        )
        self._cache_key = (key, (_weak(reference), _weak(moving)))
        names = (reference.name, moving.name)
        display = {
            "scale": tuple(reference.scale),
            "translate": tuple(reference.translate),
            "moving_colormap": "gray" if moving.rgb else moving.colormap,
            "moving_limits": display_limits(moving),
        }

        preview_shown = job.preview_shown  # (not the job: the connections outlive it)

        def show(result):
            if isinstance(result, Result):
                self._show(activity, result, params, names, display, new_layer, same_layer)
                if not result.final:  # (after the events queued now: the first frame)
                    QTimer.singleShot(0, preview_shown.set)

        self._activity = activity
        self._undo = []
        self.call_button.text = CANCEL
        self.result.value = "running..."
        return activity.start(
            job.run,
            connect={
                "yielded": show,
                "returned": show,
                "errored": lambda exc: self._failed(activity, exc),
                "finished": lambda: self._finished(activity),
            },
        )

    def _failed(self, activity: Activity, exc: Exception) -> None:
        if activity is not self._activity or isinstance(exc, Cancelled):
            return
        show_error(f"NCC confidence failed: {exc}")
        self.result.value = f"failed: {exc}"
        self._take_back()

    def _finished(self, activity: Activity) -> None:
        if activity is not self._activity:  # superseded by a later run
            return
        if activity.cancelled:
            self._take_back()
            self.result.value = "cancelled"
        self._undo = []
        self._activity = self._previewed = None
        self.call_button.text = RUN
        self.call_button.enabled = True
        pending = self._pending_overview
        if pending is not None and not activity.cancelled:
            # From the event loop, after the run's progress bar has closed: napari's
            # activity panel crashed when a new bar was made while the old one went.
            QTimer.singleShot(0, lambda: self._start_pending(pending))

    def _start_pending(self, pending) -> None:
        if pending is not self._pending_overview:  # cancelled, or a new run meanwhile
            return
        self._pending_overview = None
        layer_ref, result, params = pending
        layer = layer_ref()
        if self._activity is None and layer is not None and layer is self.ncc_layer:
            self._start_overview(layer, result, params)

    def _take_back(self) -> None:
        """Undo what the preview of an unfinished run added or changed."""
        for undo in reversed(self._undo):
            undo()
        self._undo = []

    def _show(
        self, activity, result: Result, params, names, display, new_layer, same_layer
    ) -> None:
        if activity is not self._activity or activity.cancelled:
            return  # superseded by a later run, or cancelled
        if result.final:
            key, layers = self._cache_key
            registrations = dict(self._cache.get("registrations", {}))
            if self._cache.get("key") != key:
                registrations = {}
            if result.registration is not None:
                registrations[params["per_plane"], params["model"]] = result.registration
            self._cache = {
                "key": key,
                "layers": layers,
                "reference": result.reference,
                "moving": result.moving,
                "registrations": registrations,
            }
        # The final result of a run replaces its own preview, even with "new layer".
        new_layer = new_layer and self._previewed is not activity
        self._previewed = None if result.final else activity
        ncc, registered, registration = result.ncc, result.registered, result.registration
        saved = None if registration is None else registration.to_dict()
        metadata = {
            ATTRS_KEY: {
                **params,
                "reference": names[0],
                "moving": names[1],
                "levels": len(ncc),
                "coarse_levels": PREVIEW_LEVELS,
                "registration": saved,
                "transform": None if saved is None else transform_summary(saved),
                "preview": not result.final,
            }
        }
        if result.final and registration is not None and not registration.reliable:
            show_warning(
                "NCC confidence: the registration is unreliable "
                f"(quality {registration.quality:.2f}); the map may show misalignment"
            )
        multiscale = len(ncc) > 1
        layer, undo = self._put_layer(
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
        undos = [undo]
        self._showing.pop(layer, None)  # (until its own overview starts)
        # A legend on the canvas: what -1, 0 and +1 look like.
        layer.colorbar.visible = True
        previous_ref, self._ncc_ref = self._ncc_ref, _weak(layer)
        undos.append(lambda: setattr(self, "_ncc_ref", previous_ref))
        if registered is not None:
            registered_layer, undo = self._put_layer(
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
            undos.append(undo)
            self._registered_ref = _weak(registered_layer)
        if not result.final and not self._undo:
            self._undo = undos  # the state before the run, if it is cancelled
        if result.final:
            self._undo = []
        text = describe_registration(registration, same_layer)
        self._result_text = text if result.final else "preview (coarse level):\n" + text
        self.result.value = self._result_text
        if multiscale and result.final:
            # Started once this run's worker and progress bar are gone (see _finished).
            self._pending_overview = (_weak(layer), result, params)
        # The NCC layer goes on top, selected.
        self._viewer.layers.move(self._viewer.layers.index(layer), len(self._viewer.layers))
        if result.final:
            # The last run's arrows go (unless kept with "new layer"); this run's go on top.
            old = [] if new_layer else [self._tracked(ref) for ref in self._shift_refs]
            shown = registration if params["show_shifts"] else None
            arrows = replace_shift_layers(self._viewer, old, shown, display, names)
            self._shift_refs = [_weak(arrow) for arrow in arrows]
        self._viewer.layers.selection.active = layer

    # --- overview ------------------------------------------------------------------------
    def _start_overview(self, layer: Image, result: Result, params) -> None:
        """Fill in the full-resolution map's summary under the preview, in the background."""
        overview = self._overviews.get(
            self._cache_key[0],
            result.reference[0],
            result.moving[0],
            result.ncc,
            registration=result.registration,
            **{k: params[k] for k in ("radius", "window", "per_plane", "summary")},
        )
        activity = Activity("NCC overview")
        self._overview_activity = activity
        layer_ref = _weak(layer)
        self._showing[layer] = overview
        self._set_overview_state(layer, overview, "final" if overview.complete else "preview")

        shown = {"done": None, "busy": False}

        def show(layer):
            if shown["busy"] or shown["done"] == overview.done:
                return  # (re-entered from Qt events processed while napari redraws)
            shown["busy"] = True
            try:
                shown["done"] = overview.done
                state = "final" if overview.complete else "preview"
                self._set_overview_state(layer, overview, state)
                # New Dask names where blocks were filled in: napari redraws from them.
                layer.data = overview.levels()
            finally:
                shown["busy"] = False

        def step(_progress):
            layer = layer_ref()
            if activity is not self._overview_activity or layer is None:
                return
            if layer not in self._viewer.layers:
                activity.cancel()
                return
            show(layer)

        def finished():
            with contextlib.suppress(RuntimeError, TypeError):  # (widget already deleted)
                self.native.destroyed.disconnect(activity.cancel)
            if activity is self._overview_activity:
                self._overview_activity = None
            layer = layer_ref()
            if layer is not None and self._showing.get(layer) is overview:
                if overview.complete and layer in self._viewer.layers:
                    show(layer)  # (in case the last step came while a redraw was going)
                self._set_overview_state(
                    layer, overview, "final" if overview.complete else "stopped"
                )

        # Closing the viewer (or the widget) stops it too.
        self.native.destroyed.connect(activity.cancel)
        activity.start(
            _overview.fill_steps,
            overview,
            activity.callback("full-resolution map (blocks)"),
            connect={"yielded": step, "finished": finished},
        )

    def _set_overview_state(self, layer: Image, overview, state: str) -> None:
        """Say in the layer's metadata and the result area what the coarse levels show."""
        info = layer.metadata.get(ATTRS_KEY)
        if info is None:
            return
        summary = overview.summary
        info["overview"] = {
            "state": state,
            "summary": summary,
            "done": overview.done,
            "total": overview.total,
        }
        if state == "final":
            info["coarse_levels"] = (
                f"final: {summary} of 2x2 pixels of the level below (level k: the {summary} "
                "of 2^k x 2^k pixels of the full-resolution map)"
            )
        percent = 100 * overview.done // max(overview.total, 1)
        line = {
            "final": f"overview: final ({summary} of the full-resolution map)",
            "preview": f"overview: preview, full-resolution map {percent}% done",
            "stopped": f"overview: preview (stopped at {percent}%)",
        }[state]
        if layer is self.ncc_layer:
            self.result.value = f"{self._result_text}\n{line}".strip()

    @property
    def overview_worker(self):
        """The worker computing the overview in the background, or None."""
        activity = self._overview_activity
        return None if activity is None else activity.worker

    def _stop_overview(self) -> None:
        """Stop the overview job, if one is running (its cache is kept)."""
        self._pending_overview = None
        if self._overview_activity is not None:
            self._overview_activity.cancel()
            self._overview_activity = None
