"""What one run of the NCC widget computes, in a worker thread (no Qt, no napari objects).

Pyramids (built, or read from the on-disk cache of a file), the preview registration on a
coarse level, the full registration, and the lazy NCC levels handed back to the widget.
"""

import threading
import time
import warnings
from dataclasses import dataclass

from . import _multiscale
from ._pyramid_cache import cached_pyramid

__all__ = ["PREVIEW_SHOWN_WAIT", "Job", "Result"]

#: Seconds the worker waits, after handing over the preview, for the widget to say it is
#: shown (:attr:`Job.preview_shown`) before the full registration starts: adding a layer
#: and drawing its first frame are Python work in the main thread, which the registration
#: (Python too, in the worker) slowed down by holding the GIL; a bound, in case no one says.
PREVIEW_SHOWN_WAIT = 5.0


@dataclass
class Result:
    """What a run hands back to the main thread (a preview first, for pyramids)."""

    ncc: list
    registered: list | None
    registration: object
    reference: list
    moving: list
    final: bool = True


class Job:
    """What one run computes, in the worker thread (no Qt, no napari objects touched).

    Progress goes through `activity` (one stage at a time: pyramid blocks, registered
    planes or tiles); a cancelled run stops at its next progress report, raising
    :class:`~napari_ncc._activity.Cancelled`.

    With pyramids, a quick registration on a coarse level (:func:`_multiscale.register_level`)
    is shown first, then replaced in place by the full registration (coarse estimate
    refined on full-resolution tiles), which takes longer on gigapixel images; it starts
    once the widget has set :attr:`preview_shown` (or after :data:`PREVIEW_SHOWN_WAIT`).
    """

    def __init__(
        self,
        reference,
        moving,
        params,
        build_pyramids: bool,
        activity,
        registration=None,
        sources=(None, None),
        mask=None,
    ):
        self.mask = mask
        self.reference = reference
        self.moving = moving
        self.params = params
        self.build_pyramids = build_pyramids
        self.activity = activity
        self.registration = registration
        self.sources = sources  # the files of the inputs, when known: cached pyramids
        self.preview_shown = threading.Event()  # set by the widget once the preview is drawn

    def _pyramid(self, image, path: str | None, name: str) -> list:
        progress = self.activity.callback(f"{name} pyramid (blocks)")
        if path is None:
            return _multiscale.build_pyramid(image, progress=progress)
        return cached_pyramid(path, image, progress=progress)

    def _result(self, reference, moving, registration, final: bool) -> Result:
        p = self.params
        ncc = _multiscale.ncc_levels(
            reference,
            moving,
            radius=p["radius"],
            registration=registration,
            window=p["window"],
            per_plane=p["per_plane"],
            mask=self.mask,
            min_fraction=p["min_fraction"],
        )
        registered = None
        if p["show_registered"]:
            registered = (
                moving
                if registration is None
                else _multiscale.registered_levels(moving, registration)
            )
        return Result(ncc, registered, registration, reference, moving, final)

    def _wait_preview_shown(self) -> None:
        """Until the widget has drawn the preview, cancelled, or :data:`PREVIEW_SHOWN_WAIT`."""
        deadline = time.monotonic() + PREVIEW_SHOWN_WAIT
        while not self.preview_shown.wait(0.05) and time.monotonic() < deadline:
            self.activity.check()

    def run(self):
        """Generator for the worker: yields the preview (if any), returns the result."""
        reference, moving, p = self.reference, self.moving, self.params
        activity = self.activity
        if self.build_pyramids:
            reference = self._pyramid(reference[0], self.sources[0], "reference")
            moving = self._pyramid(moving[0], self.sources[1], "moving")
        registration = self.registration
        if p["register"] and registration is None:
            with warnings.catch_warnings():
                # Reported as a napari notification once the layer is shown.
                from ._register import register
                from ._registration import RegistrationWarning

                warnings.simplefilter("ignore", RegistrationWarning)
                level = _multiscale.coarse_level(
                    [r.shape for r in reference], plane_axis=p["per_plane"]
                )
                if level > 0:
                    activity.check()
                    preview = _multiscale.register_level(
                        reference,
                        moving,
                        level,
                        per_plane=p["per_plane"],
                        progress=activity.callback("preview registration"),
                    )
                    yield self._result(reference, moving, preview, final=False)
                    self._wait_preview_shown()
                activity.check()
                stage = "registration" + (" (planes)" if p["per_plane"] is not None else "")
                registration = register(
                    reference,
                    moving,
                    per_plane=p["per_plane"],
                    model=p["model"],
                    progress=activity.callback(stage),
                )
        activity.check()
        return self._result(reference, moving, registration, final=True)
