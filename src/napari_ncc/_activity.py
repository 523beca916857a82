"""Long work in a napari worker thread, its progress in napari's activity panel.

Shared by the napari front ends (the widget's runs, the writer's saves). The library
reports progress through ``progress(done, total)`` callbacks, called inside blocking calls
(``register``, ``build_pyramid``, ``write_zarr``) from whatever thread runs them;
:meth:`Activity.callback` makes such a callback. It carries each step to the main thread
as a queued Qt signal, the only place the napari progress bar (a Qt widget in the activity
panel) is touched, and raises :class:`Cancelled` once the user has cancelled, which stops
the library call where it is.
"""

from __future__ import annotations

import inspect
import itertools
import math
import threading
import time
from collections.abc import Callable
from typing import NamedTuple

from napari.qt.threading import create_worker
from napari.utils.progress import cancelable_progress
from qtpy.QtCore import QObject, Signal

#: Seconds between the steps a progress callback passes on (the first and last of a stage
#: always pass): napari's progress bar processes Qt events as it draws, which redraws the
#: canvas, so a hundred steps in a few seconds kept the main thread busy (and the worker
#: waiting for the GIL) for a second or more.
PROGRESS_INTERVAL = 0.25


class Cancelled(Exception):
    """Raised inside a job (by its progress callback) once the user has cancelled it."""


class Step(NamedTuple):
    """Progress of one stage of a job: `done` of `total` units (`total` 0: unknown)."""

    desc: str
    done: int
    total: int
    number: int  # steps are numbered as reported, across stages


def _generator(func: Callable, args: tuple, kwargs: dict):
    """``func(*args, **kwargs)`` as a generator (yielding what `func` yields, if anything).

    napari keeps every worker (its task status holds it) for the life of the viewer; a
    worker keeps its generator, which lets go of `func`, its arguments and everything the
    job computed once it has finished. (A function worker would keep them all.)
    """
    result = func(*args, **kwargs)
    if inspect.isgenerator(result):
        result = yield from result
    return result


class _Relay(QObject):
    # Created in the main thread: emitting from a worker thread queues the call there.
    step = Signal(object)


class Activity:
    """One job in a napari worker thread, with a progress bar and a cancel flag.

    Parameters
    ----------
    desc : str
        What the activity panel calls the job ("NCC confidence", "Saving map.zarr").

    Examples
    --------
    In napari (a Qt application running)::

        activity = Activity("Saving map.zarr")
        activity.start(
            write_zarr, data, path, progress=activity.callback("writing"),
            connect={"returned": saved, "errored": failed},
        )

    :meth:`cancel` (or the progress bar's cancel button) makes the next callback, or
    :meth:`check`, raise :class:`Cancelled`, which the worker reports through ``errored``.
    """

    def __init__(self, desc: str):
        self.desc = desc
        self._cancelled = threading.Event()
        self._relay = _Relay()
        self._relay.step.connect(self._show)
        self._bar = None
        self._stage = None
        self._numbers = itertools.count()
        self._latest = Step("", 0, 0, -1)
        self._drawn = self._latest
        self._drawing = False
        self._closed = False
        self.worker = None

    @property
    def cancelled(self) -> bool:
        """Whether :meth:`cancel` was called, or the progress bar's cancel button pressed."""
        return self._cancelled.is_set() or bool(getattr(self._bar, "is_canceled", False))

    def cancel(self) -> None:
        """Ask the job to stop at its next progress callback (or :meth:`check`)."""
        self._cancelled.set()

    def check(self) -> None:
        """Raise :class:`Cancelled` if the job was cancelled (call it between stages)."""
        if self.cancelled:
            raise Cancelled(f"{self.desc}: cancelled")

    def callback(self, stage: str) -> Callable[[int, int], None]:
        """A ``progress(done, total)`` callback for a library call, for the given stage.

        Callable from any thread; raises :class:`Cancelled` once cancelled. Passes on a
        step when the percentage changes, at most every :data:`PROGRESS_INTERVAL`
        seconds (thousands of blocks make a few steps a second), and always the last.
        """
        shown = {"percent": None, "time": -math.inf}

        def report(done: int, total: int) -> None:
            self.check()
            percent = 100 * done // total if total else done
            now = time.monotonic()
            if done != total and (
                percent == shown["percent"] or now - shown["time"] < PROGRESS_INTERVAL
            ):
                return
            shown["percent"], shown["time"] = percent, now
            self._relay.step.emit(Step(stage, int(done), int(total), next(self._numbers)))

        return report

    def start(self, func: Callable, *args, connect: dict | None = None, **kwargs):
        """Run ``func(*args, **kwargs)`` (a function or a generator function) in a napari
        worker and show its progress bar; returns the started worker.

        `connect` maps worker signal names ("yielded", "returned", "errored",
        "finished") to callbacks, connected before the worker starts (a quick job could
        otherwise finish before they are).
        """
        # The bar appears in the activity panel as soon as it exists (main thread).
        self._bar = cancelable_progress(total=0, desc=self.desc)
        self.worker = create_worker(
            _generator,
            func,
            args,
            kwargs,
            _start_thread=False,
            _ignore_errors=True,
            _connect=connect,
        )
        self.worker.finished.connect(self._close)
        self.worker.start()
        return self.worker

    def _show(self, step: Step) -> None:
        if self._closed or self.cancelled or step.number <= self._latest.number:
            return
        self._latest = step
        if self._drawing:
            # napari's bar processes Qt events while it draws, which brings later steps
            # here: the draw under way shows the latest when it is done, so the calls
            # never nest deeper than one.
            return
        self._drawing = True
        try:
            drawn = None
            while self._latest is not drawn and not self._closed:
                drawn = self._latest
                self._draw(drawn)
        finally:
            self._drawing = False

    def _draw(self, step: Step) -> None:
        self._drawn = step
        bar = self._bar
        if (step.desc, step.total) != self._stage:
            self._stage = (step.desc, step.total)
            bar.n = 0
            bar.total = step.total
            bar.set_description(f"{self.desc}: {step.desc}")
        bar.update(step.done - bar.n)

    def _close(self) -> None:
        if not self._closed:
            self._closed = True
            if self._drawn is not self._latest:
                # The last step came while a draw was under way (its Qt events bring the
                # job's end here before that draw could show it): show it now.
                self._draw(self._latest)
            self._bar.close()
            # Qt's connections hold their slots, which hold this activity: let go of the
            # worker and its job (a cycle through Qt that Python's gc cannot see).
            self._relay.step.disconnect()
            self.worker = None
