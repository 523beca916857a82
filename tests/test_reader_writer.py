"""The napari reader and writer contributions, on real files in tmp_path."""

from __future__ import annotations

import os
import warnings

import dask.array as da
import numpy as np
import pytest
import tifffile
import zarr

from napari_ncc import _multiscale
from napari_ncc._io import write_zarr
from napari_ncc._reader import napari_get_reader
from napari_ncc._writer import write_image


def _read(path):
    reader = napari_get_reader(str(path))
    assert reader is not None, f"no reader for {path}"
    return reader(str(path))


@pytest.fixture
def image(rng):
    return rng.random((90, 70)).astype(np.float32)


def test_writer_then_reader_round_trip_a_zarr_lazily(tmp_path, image):
    out = write_image(str(tmp_path / "plain"), image, {"name": "plain", "metadata": {}})
    assert out == [str(tmp_path / "plain.zarr")]
    [(data, kwargs, layer_type)] = _read(out[0])
    assert layer_type == "image" and isinstance(data, da.Array)
    assert kwargs["name"] == "plain" and not kwargs.get("multiscale")
    assert "colormap" not in kwargs  # not an NCC map
    np.testing.assert_array_equal(data.compute(), image)


def test_writer_never_overwrites(tmp_path, image):
    path = str(tmp_path / "once.zarr")
    write_image(path, image, {"name": "once"})
    with pytest.raises(FileExistsError):
        write_image(path, image + 1, {"name": "once"})
    np.testing.assert_array_equal(zarr.open(path, mode="r")[...], image)


def test_ncc_map_comes_back_with_its_metadata_and_display(tmp_path, image):
    ncc = da.from_array(np.clip(image * 2 - 1, -1, 1), chunks=32)
    params = {"radius": 4, "window": "gaussian", "registration": {"shift": [1.5, -2.0]}}
    attributes = {
        "name": "NCC a ~ b",
        "metadata": {"napari_ncc": params, "not json": object()},
        "scale": (0.5, 0.25),
        "translate": (10.0, -3.0),
        "multiscale": False,
    }
    [path] = write_image(str(tmp_path / "ncc.zarr"), ncc, attributes)
    [(data, kwargs, _)] = _read(path)
    np.testing.assert_array_equal(data.compute(), ncc.compute())
    assert kwargs["colormap"] == _multiscale.NCC_COLORMAP
    assert kwargs["contrast_limits"] == (-1.0, 1.0)
    read_params = kwargs["metadata"]["napari_ncc"]
    assert read_params["radius"] == 4 and read_params["window"] == "gaussian"
    assert read_params["registration"]["shift"] == [1.5, -2.0]
    assert kwargs["scale"] == (0.5, 0.25) and kwargs["translate"] == (10.0, -3.0)


def test_multiscale_layer_is_written_at_full_resolution(tmp_path, image):
    levels = [da.from_array(image), da.from_array(image[::2, ::2])]
    [path] = write_image(str(tmp_path / "ms.zarr"), levels, {"name": "ms", "multiscale": True})
    [(data, _, _)] = _read(path)
    np.testing.assert_array_equal(data.compute(), image)


def test_reader_tiff_plain_and_pyramidal(tmp_path, rng):
    plain = (rng.random((64, 48)) * 60000).astype(np.uint16)
    tifffile.imwrite(tmp_path / "plain.tif", plain)
    [(data, kwargs, _)] = _read(tmp_path / "plain.tif")
    assert isinstance(data, da.Array) and not kwargs.get("multiscale")
    np.testing.assert_array_equal(data.compute(), plain)

    base = (rng.random((256, 192)) * 255).astype(np.uint8)
    path = tmp_path / "pyramid.ome.tif"
    with tifffile.TiffWriter(path) as tif:
        tif.write(base, tile=(64, 64), subifds=2, metadata={"axes": "YX"})
        tif.write(base[::2, ::2], tile=(64, 64), subfiletype=1)
        tif.write(base[::4, ::4], tile=(64, 64), subfiletype=1)
    [(levels, kwargs, _)] = _read(path)
    assert kwargs["multiscale"] is True
    assert [level.shape for level in levels] == [(256, 192), (128, 96), (64, 48)]
    assert all(isinstance(level, da.Array) for level in levels)
    np.testing.assert_array_equal(levels[1].compute(), base[::2, ::2])


def test_reader_rgb_tiff(tmp_path, rng):
    rgb = (rng.random((32, 40, 3)) * 255).astype(np.uint8)
    tifffile.imwrite(tmp_path / "rgb.tif", rgb, photometric="rgb")
    [(data, kwargs, _)] = _read(tmp_path / "rgb.tif")
    assert kwargs["rgb"] is True
    np.testing.assert_array_equal(data.compute(), rgb)


def test_reader_ome_zarr_multiscale(tmp_path, rng):
    base = rng.random((128, 96)).astype(np.float32)
    path = tmp_path / "image.ome.zarr"
    group = zarr.open_group(str(path), mode="w")
    for i, level in enumerate([base, base[::2, ::2], base[::4, ::4]]):
        group.create_array(str(i), shape=level.shape, chunks=(32, 32), dtype=level.dtype)[...] = (
            level
        )
    group.attrs["multiscales"] = [
        {
            "version": "0.4",
            "name": "sample",
            "axes": [{"name": "y", "type": "space"}, {"name": "x", "type": "space"}],
            "datasets": [
                {
                    "path": str(i),
                    "coordinateTransformations": [{"type": "scale", "scale": [2.0**i] * 2}],
                }
                for i in range(3)
            ],
        }
    ]
    [(levels, kwargs, _)] = _read(path)
    assert kwargs["multiscale"] is True and kwargs["name"] == "sample"
    assert [level.shape for level in levels] == [(128, 96), (64, 48), (32, 24)]
    np.testing.assert_array_equal(levels[2].compute(), base[::4, ::4])


def test_reader_declines_unsupported_and_corrupt_files(tmp_path):
    (tmp_path / "notes.txt").write_text("not an image")
    (tmp_path / "broken.tif").write_bytes(b"II*\x00garbage that is not a TIFF")
    (tmp_path / "empty.zarr").mkdir()
    group = zarr.open_group(str(tmp_path / "group.zarr"), mode="w")
    group.attrs["note"] = "a group without multiscales metadata"
    for name in ("notes.txt", "broken.tif", "empty.zarr", "group.zarr", "missing.tif"):
        assert napari_get_reader(str(tmp_path / name)) is None, name
    assert napari_get_reader([str(tmp_path / "a.tif"), str(tmp_path / "b.tif")]) is None


@pytest.fixture
def notifications():
    pytest.importorskip("napari")
    from napari.utils.notifications import notification_manager

    received = []
    notification_manager.notification_ready.connect(received.append)
    yield received
    notification_manager.notification_ready.disconnect(received.append)


@pytest.fixture
def progress_bars():
    """The description and totals of every napari progress bar (the activity panel's)."""
    pytest.importorskip("napari")
    from napari.utils.progress import progress

    bars = []

    def watch(event):
        bars.extend(event.added)

    progress._all_instances.events.changed.connect(watch)
    yield bars
    progress._all_instances.events.changed.disconnect(watch)


def _ncc_layer(viewer):
    ncc = np.linspace(-1, 1, 40 * 30, dtype=np.float32).reshape(40, 30)
    layer = viewer.add_image(
        da.from_array(ncc, chunks=16),
        name="NCC",
        metadata={"napari_ncc": {"radius": 3}},
        colormap=_multiscale.NCC_COLORMAP,
        contrast_limits=(-1, 1),
        scale=(2, 2),
    )
    viewer.layers.selection = {layer}
    return ncc, layer


@pytest.mark.gui
def test_viewer_saves_in_the_background_and_opens_an_ncc_layer(
    make_napari_viewer, qtbot, tmp_path, notifications, progress_bars
):
    viewer = make_napari_viewer()
    ncc, _ = _ncc_layer(viewer)
    path = str(tmp_path / "saved.zarr")
    assert viewer.layers.save(path, selected=True, plugin="napari-ncc") == [path]
    # Written in a worker thread, with a progress bar in the activity panel; the store
    # appears under its name only once complete.
    qtbot.waitUntil(
        lambda: any(n.message.startswith("napari-ncc saved") for n in notifications),
        timeout=120_000,
    )
    assert os.path.isdir(path)
    [bar] = [bar for bar in progress_bars if "Saving saved.zarr" in str(bar.desc)]
    # Counted in Dask tasks, to the last one (the bar's updates reach the main thread as
    # queued signals, possibly after the notification: wait for them, never race them).
    assert bar.total > 0
    qtbot.waitUntil(lambda: bar.n == bar.total, timeout=60_000)
    assert not [n for n in notifications if n.severity == "error"]

    [opened] = viewer.open(path, plugin="napari-ncc")
    np.testing.assert_array_equal(np.asarray(opened.data), ncc)
    assert tuple(opened.contrast_limits) == (-1.0, 1.0)
    assert opened.colormap.name == _multiscale.NCC_COLORMAP["name"]
    assert opened.metadata["napari_ncc"]["radius"] == 3
    np.testing.assert_allclose(opened.scale, (2, 2))


@pytest.mark.gui
def test_saving_onto_an_existing_path_is_a_notification_not_a_traceback(
    make_napari_viewer, tmp_path, notifications, image
):
    viewer = make_napari_viewer()
    _ncc_layer(viewer)
    path = str(tmp_path / "taken.zarr")
    write_zarr(image, path, progress=False)
    with pytest.warns(UserWarning, match="did not return any written paths"):
        assert viewer.layers.save(path, selected=True, plugin="napari-ncc") == []
    [warning] = [n for n in notifications if n.severity == "warning"]
    assert "already exists" in warning.message and path in warning.message
    np.testing.assert_array_equal(zarr.open(path, mode="r")[...], image)  # untouched


@pytest.mark.gui
def test_save_dialog_names_the_format_once():
    pytest.importorskip("napari")
    from napari.layers import Image
    from napari.plugins._npe2 import file_extensions_string_for_layers

    # What napari's save dialog lists: "<plugin display name> <writer display name> (*.ext)"
    filters, _ = file_extensions_string_for_layers([Image(np.zeros((4, 4)))])
    ours = [f for f in filters.split(";;") if f.startswith("napari-ncc")]
    assert ours == [
        "napari-ncc chunked zarr (*.zarr)",
        "napari-ncc OME-Zarr with pyramid (*.ome.zarr)",
    ]


@pytest.mark.gui
def test_two_saves_to_one_path_keep_the_first(
    make_napari_viewer, qtbot, tmp_path, notifications, rng
):
    viewer = make_napari_viewer()
    first = rng.random((64, 48)).astype(np.float32)
    second = first + 1
    path = str(tmp_path / "once.zarr")
    for name, data in (("first", first), ("second", second)):
        viewer.layers.selection = {viewer.add_image(data, name=name)}
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # napari: "did not return any paths"
            viewer.layers.save(path, selected=True, plugin="napari-ncc")
    # The second save is refused, whether the first had finished (a warning at once) or
    # not (an error when the second is about to rename its complete store into place).
    qtbot.waitUntil(
        lambda: (
            sum(n.message.startswith("napari-ncc saved") for n in notifications) == 1
            and any("already exists" in n.message for n in notifications)
        ),
        timeout=120_000,
    )
    np.testing.assert_array_equal(zarr.open(path, mode="r")[...], first)
    assert [p.name for p in tmp_path.iterdir()] == ["once.zarr"]  # no temporary left


# ------------------------------------------------------------------- OME-Zarr, pyramids


def library_levels(path) -> list:
    """The levels of the OME-Zarr image at `path`, as ome-zarr's own reader gives them."""
    pytest.importorskip("ome_zarr")
    from ome_zarr.io import parse_url
    from ome_zarr.reader import Multiscales, Reader

    [node] = [node for node in Reader(parse_url(str(path)))() if node.load(Multiscales)]
    return node.data


def block_mean(image: np.ndarray, factor: int) -> np.ndarray:
    h, w = image.shape[0] // factor, image.shape[1] // factor
    blocks = image[: h * factor, : w * factor].astype(np.float64)
    return blocks.reshape(h, factor, w, factor).mean(axis=(1, 3))


def test_writer_writes_ome_zarr_with_a_pyramid_that_opens_multiscale(tmp_path, rng):
    pytest.importorskip("ome_zarr")
    ncc = rng.uniform(-1, 1, (1100, 600)).astype(np.float32)
    params = {"radius": 4, "window": "box"}
    attributes = {"name": "NCC", "metadata": {"napari_ncc": params}, "scale": (0.5, 0.5)}
    [path] = write_image(
        str(tmp_path / "map.ome.zarr"), da.from_array(ncc, chunks=256), attributes
    )
    assert path == str(tmp_path / "map.ome.zarr")
    levels = library_levels(path)
    assert [level.shape for level in levels] == [(1100, 600), (550, 300), (275, 150)]
    np.testing.assert_array_equal(np.asarray(levels[0]), ncc)
    np.testing.assert_allclose(np.asarray(levels[2]), block_mean(ncc, 4), atol=1e-5)
    [(data, kwargs, _)] = _read(path)
    assert kwargs["multiscale"] is True and len(data) == 3
    assert kwargs["colormap"] == _multiscale.NCC_COLORMAP
    assert kwargs["metadata"]["napari_ncc"]["radius"] == 4 and kwargs["scale"] == (0.5, 0.5)
    # The OME-Zarr writer names its files so, whatever name it was given.
    from napari_ncc._writer import write_ome_zarr_image

    [other] = write_ome_zarr_image(str(tmp_path / "other.zarr"), ncc, {"name": "x"})
    assert other == str(tmp_path / "other.ome.zarr") and len(library_levels(other)) == 3
    with pytest.raises(ValueError, match="RGB layer 'rgb' as OME-Zarr"):
        write_image(
            str(tmp_path / "rgb.ome.zarr"), np.zeros((8, 8, 3)), {"rgb": True, "name": "rgb"}
        )
    assert not (tmp_path / "rgb.ome.zarr").exists()


@pytest.mark.gui
def test_viewer_saves_ome_zarr_in_the_background_and_reopens_it_multiscale(
    make_napari_viewer, qtbot, tmp_path, notifications
):
    pytest.importorskip("ome_zarr")
    viewer = make_napari_viewer()
    ncc = np.linspace(-1, 1, 1100 * 600, dtype=np.float32).reshape(1100, 600)
    viewer.layers.selection = {viewer.add_image(da.from_array(ncc, chunks=256), name="big")}
    path = str(tmp_path / "saved.ome.zarr")
    assert viewer.layers.save(path, selected=True, plugin="napari-ncc") == [path]
    qtbot.waitUntil(
        lambda: any(n.message.startswith("napari-ncc saved") for n in notifications),
        timeout=120_000,
    )
    assert not [n for n in notifications if n.severity == "error"]
    assert [level.shape for level in library_levels(path)] == [(1100, 600), (550, 300), (275, 150)]
    [opened] = viewer.open(path, plugin="napari-ncc")
    assert opened.multiscale and len(opened.data) == 3
    np.testing.assert_array_equal(np.asarray(opened.data[0]), ncc)


@pytest.fixture
def big_zarr(tmp_path, rng):
    """A single-scale zarr array larger than MULTISCALE_MIN_SIDE (narrow: cheap)."""
    image = rng.integers(0, 255, (_multiscale.MULTISCALE_MIN_SIDE * 2, 600), dtype=np.uint8)
    path = str(tmp_path / "big.zarr")
    zarr.create_array(path, data=image, chunks=(2048, 600))
    return image, path


def _files(folder) -> dict:
    return {
        os.path.join(root, name): os.stat(os.path.join(root, name)).st_mtime_ns
        for root, _, names in os.walk(folder)
        for name in names
    }


@pytest.mark.gui
def test_big_single_scale_zarr_opens_as_multiscale_and_reopens_from_the_cache(
    make_napari_viewer, big_zarr, pyramid_cache, progress_bars
):
    image, path = big_zarr
    # Choosing the reader is cheap: no pyramid yet.
    assert napari_get_reader(path) is not None and not os.path.exists(pyramid_cache)
    viewer = make_napari_viewer()
    [layer] = viewer.open(path, plugin="napari-ncc")
    assert layer.multiscale
    shapes = [tuple(level.shape) for level in layer.data]
    assert shapes == _multiscale.pyramid_shapes(image.shape) and len(shapes) > 2
    np.testing.assert_array_equal(np.asarray(layer.data[0][:100]), image[:100])
    np.testing.assert_allclose(np.asarray(layer.data[1]), block_mean(image, 2), atol=0.51)
    # Built once, with a progress bar in the viewer.
    [bar] = [bar for bar in progress_bars if "pyramid of big.zarr" in str(bar.desc)]
    assert bar.total > 0
    cached = _files(pyramid_cache)
    assert cached
    # Opened again: the pyramid comes from the cache, nothing is built or rewritten.
    [again] = viewer.open(path, plugin="napari-ncc")
    assert again.multiscale and [tuple(level.shape) for level in again.data] == shapes
    assert len([bar for bar in progress_bars if "pyramid" in str(bar.desc)]) == 1
    assert _files(pyramid_cache) == cached
