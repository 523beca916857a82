"""The overview of a multiscale NCC map converges to the summary of the full-resolution map.

The library part (:class:`napari_ncc._overview.Overview`) on plain Dask arrays, then the
widget in a real viewer (run under Xvfb). Expected coarse levels are NumPy block means (or
minima) of the full-resolution map, computed here by reshaping, independently of the code.
"""

from __future__ import annotations

import collections
import contextlib

import dask.array as da
import numpy as np
import pytest
from scipy import ndimage

from napari_ncc import _multiscale, _overview, local_ncc


def _block_summary(image, factor, shape, summary="mean"):
    """`summary` of `factor` x `factor` pixel blocks (trailing pixels dropped), to `shape`."""
    h, w = shape
    blocks = image[: h * factor, : w * factor].astype(np.float64)
    blocks = blocks.reshape(h, factor, w, factor)
    return blocks.mean(axis=(1, 3)) if summary == "mean" else blocks.min(axis=(1, 3))


def _previews(full, n_levels):
    """Stand-in coarse previews (any values of the right shapes: strided samples)."""
    levels = [full]
    for _ in range(n_levels - 1):
        levels.append(levels[-1][::2, ::2][: levels[-1].shape[0] // 2, : levels[-1].shape[1] // 2])
    return levels


@pytest.mark.parametrize("summary", ["mean", "min"])
def test_overview_levels_are_block_summaries_of_level_0(rng, monkeypatch, summary):
    monkeypatch.setattr(_overview, "OVERVIEW_CHUNK", 16)
    full_np = rng.random((200, 150)).astype(np.float32) * 2 - 1
    full = da.from_array(full_np, chunks=37)
    previews = _previews(full, 4)
    overview = _overview.Overview(previews, full, summary=summary)
    try:
        steps = list(overview.iter_fill(batch=5))
        assert steps[-1] == (overview.total, overview.total) and overview.complete
        assert [s[0] for s in steps] == sorted(s[0] for s in steps)
        levels = overview.levels()
        assert [lv.shape for lv in levels] == [(200, 150), (100, 75), (50, 37), (25, 18)]
        np.testing.assert_array_equal(np.asarray(levels[0]), full_np)
        for k in range(1, 4):
            expected = _block_summary(full_np, 2**k, levels[k].shape, summary)
            np.testing.assert_allclose(np.asarray(levels[k]), expected, atol=1e-6)
    finally:
        overview.remove()


def test_an_unfinished_overview_shows_the_preview_and_resumes(rng, monkeypatch):
    monkeypatch.setattr(_overview, "OVERVIEW_CHUNK", 16)
    full_np = rng.random((128, 128)).astype(np.float32)
    full = da.from_array(full_np, chunks=64)
    previews = [full, da.full((64, 64), 7.0, dtype=np.float32, chunks=32)]
    overview = _overview.Overview(previews, full)
    try:
        # All of level 1 is the preview until its blocks below are cached.
        np.testing.assert_array_equal(np.asarray(overview.level(1)), 7.0)
        with contextlib.closing(overview.iter_fill(batch=4)) as steps:
            for done, _total in steps:
                if 0 < done:
                    break  # stopped after the first batch
        assert 0 < overview.done < overview.total and not overview.complete
        level1 = np.asarray(overview.level(1))
        expected = _block_summary(full_np, 2, (64, 64))
        # Each 32x32 block of the (preview-chunked) level: cached summary, or the preview.
        for i in range(2):
            for j in range(2):
                block = level1[32 * i : 32 * (i + 1), 32 * j : 32 * (j + 1)]
                want = expected[32 * i : 32 * (i + 1), 32 * j : 32 * (j + 1)]
                assert np.all(block == 7.0) or np.allclose(block, want, atol=1e-6)
        for _ in overview.iter_fill(batch=4):  # a later call continues where it stopped
            pass
        assert overview.complete
        np.testing.assert_allclose(np.asarray(overview.level(1)), expected, atol=1e-6)
    finally:
        overview.remove()
    # Removed: the levels show the preview again.
    np.testing.assert_array_equal(np.asarray(overview.level(1)), 7.0)


def test_odd_sides_halved_up_or_down_and_other_shapes():
    full = da.zeros((9, 9), dtype=np.float32, chunks=9)
    up = da.ones((5, 4), dtype=np.float32)  # ceil(9 / 2) rows, 9 // 2 columns
    odd = da.ones((3, 3), dtype=np.float32)  # not a halving of (5, 4): left out
    overview = _overview.Overview([full, up, odd], full)
    try:
        assert overview.shapes == [(9, 9), (5, 4)]
        for _ in overview.iter_fill():
            pass
        np.testing.assert_array_equal(np.asarray(overview.level(1)), 0.0)
    finally:
        overview.remove()
    with pytest.raises(ValueError, match="summary must be one of"):
        _overview.Overview([full], full, summary="median")


# --- in the widget -------------------------------------------------------------------------

WIDGET = ("napari-ncc", "NCC confidence")

#: The disagreeing patch of the pair (rows, columns), in full-resolution pixels.
PATCH = (slice(640, 1280), slice(896, 1536))


def _textured_pair(rng, side=2048):
    """A smooth random texture and a noisy copy of it, with an unrelated texture in PATCH."""
    reference = ndimage.gaussian_filter(rng.standard_normal((side, side)), 2)
    moving = reference + 0.1 * reference.std() * rng.standard_normal((side, side))
    other = ndimage.gaussian_filter(rng.standard_normal((side, side)), 2)
    moving[PATCH] = other[PATCH]
    return reference.astype(np.float32), moving.astype(np.float32)


@pytest.fixture
def small_gigapixel(monkeypatch):
    """Thresholds lowered so that a 2048^2 pair takes the gigapixel path in seconds."""
    monkeypatch.setattr(_multiscale, "MULTISCALE_MIN_SIDE", 1024)
    monkeypatch.setattr(_multiscale, "PYRAMID_MIN_SIDE", 128)
    monkeypatch.setattr(_multiscale, "PYRAMID_CHUNK", 256)
    monkeypatch.setattr(_multiscale, "PREVIEW_MAX_SIDE", 256)
    monkeypatch.setattr(_overview, "OVERVIEW_CHUNK", 256)


def _open(viewer):
    _dock, widget = viewer.window.add_plugin_dock_widget(*WIDGET)
    return widget


def _run(qtbot, widget, **values):
    for name, value in values.items():
        getattr(widget, name).value = value
    worker = widget()
    assert worker is not None
    qtbot.waitUntil(lambda: widget.worker is None and not worker.is_running, timeout=120_000)
    # The overview starts from the event loop once the run is over.
    layer = widget.ncc_layer
    qtbot.waitUntil(lambda: "overview" in layer.metadata["napari_ncc"], timeout=60_000)
    return layer


def _wait_final(qtbot, widget, layer):
    qtbot.waitUntil(
        lambda: (
            layer.metadata["napari_ncc"].get("overview", {}).get("state") == "final"
            and widget.overview_worker is None
        ),
        timeout=180_000,
    )


def _record_states(layer):
    """The overview state the metadata gave at every change of the layer's data, by
    (radius, summary) of the map shown."""
    states = collections.defaultdict(list)

    def record(_event):
        info = layer.metadata["napari_ncc"]
        states[info["radius"], info["summary"]].append(info["overview"]["state"])

    layer.events.data.connect(record)
    return states


def _assert_summarises(layer, expected_full, summary="mean"):
    np.testing.assert_allclose(np.asarray(layer.data[0]), expected_full, atol=1e-4)
    for k in range(1, len(layer.data)):
        level = np.asarray(layer.data[k])
        expected = _block_summary(expected_full, 2**k, level.shape, summary)
        np.testing.assert_allclose(level, expected, atol=1e-4)


@pytest.mark.gui
def test_overview_converges_to_the_block_mean_of_the_full_map(
    make_napari_viewer, qtbot, rng, small_gigapixel
):
    pytest.importorskip("napari")
    viewer = make_napari_viewer(show=True)
    reference, moving = _textured_pair(rng)
    widget = _open(viewer)
    layer = _run(
        qtbot,
        widget,
        reference=viewer.add_image(reference, name="ref"),
        moving=viewer.add_image(moving, name="mov"),
        register=False,
        radius=3,
    )
    assert layer.multiscale and len(layer.data) == 5
    states = _record_states(layer)
    _wait_final(qtbot, widget, layer)
    meta = layer.metadata["napari_ncc"]
    assert meta["overview"]["summary"] == "mean"
    assert meta["overview"]["done"] == meta["overview"]["total"]
    assert meta["coarse_levels"].startswith("final")
    assert (
        widget.result.value.splitlines()[-1] == "overview: final (mean of the full-resolution map)"
    )
    # The levels were replaced as they filled in, the metadata saying "preview" until done.
    assert states[(3, "mean")][0] == "preview" and len(states[(3, "mean")]) > 1
    expected = local_ncc(reference, moving, radius=3)
    _assert_summarises(layer, expected)
    # The disagreeing patch stays visible at the coarsest level (1/16 of the pixels a side).
    coarsest = np.asarray(layer.data[-1])
    f = 2 ** (len(layer.data) - 1)
    inside = coarsest[
        PATCH[0].start // f + 2 : PATCH[0].stop // f - 2,
        PATCH[1].start // f + 2 : PATCH[1].stop // f - 2,
    ]
    outside = coarsest[: PATCH[0].start // f - 2]
    assert abs(inside.mean()) < 0.2 and outside.min() > 0.8
    assert inside.max() < outside.min()

    # A new radius restarts the overview, from nothing, for the new map.
    again = _run(qtbot, widget, radius=5)
    assert again is layer
    _wait_final(qtbot, widget, layer)
    assert layer.metadata["napari_ncc"]["radius"] == 5
    assert states[(5, "mean")][0] == "preview"
    _assert_summarises(layer, local_ncc(reference, moving, radius=5))

    # Back to radius 3: the cached map is reused, final at once.
    states.clear()
    _run(qtbot, widget, radius=3)
    _wait_final(qtbot, widget, layer)
    assert set(states[(3, "mean")]) == {"final"}
    _assert_summarises(layer, expected)

    # "min": the worst score of each block.
    _run(qtbot, widget, summary="min")
    _wait_final(qtbot, widget, layer)
    _assert_summarises(layer, expected, summary="min")


@pytest.mark.gui
def test_cancel_and_closing_stop_the_overview(
    make_napari_viewer, qtbot, rng, small_gigapixel, monkeypatch
):
    monkeypatch.setattr(_overview, "OVERVIEW_CHUNK", 128)  # more blocks: a longer job
    viewer = make_napari_viewer(show=True)
    reference, moving = _textured_pair(rng)
    widget = _open(viewer)
    layer = _run(
        qtbot,
        widget,
        reference=viewer.add_image(reference, name="ref"),
        moving=viewer.add_image(moving, name="mov"),
        register=False,
    )
    worker = widget.overview_worker
    widget.cancel()
    assert widget.overview_worker is None
    qtbot.waitUntil(
        lambda: (
            (worker is None or not worker.is_running)
            and layer.metadata["napari_ncc"]["overview"]["state"] != "preview"
        ),
        timeout=60_000,
    )
    state = layer.metadata["napari_ncc"]["overview"]
    assert state["state"] == ("final" if state["done"] == state["total"] else "stopped")
    # Run again: the cache is continued, and the overview ends as the block means.
    _run(qtbot, widget)
    _wait_final(qtbot, widget, layer)
    _assert_summarises(layer, local_ncc(reference, moving, radius=3))

    # Removing the layer or closing the widget stops a running overview.
    _run(qtbot, widget, radius=4)
    worker = widget.overview_worker
    viewer.layers.remove(layer)
    if worker is not None:
        qtbot.waitUntil(lambda: not worker.is_running, timeout=60_000)
    _run(qtbot, widget, radius=6)
    worker = widget.overview_worker
    viewer.window.remove_dock_widget("all")
    if worker is not None:
        qtbot.waitUntil(lambda: not worker.is_running, timeout=60_000)
