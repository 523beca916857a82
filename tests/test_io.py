"""Reading images lazily and writing zarr stores (atomically, with progress)."""

from __future__ import annotations

import json
import os
import pickle
import re
import subprocess
import sys
import tempfile

import dask.array as da
import numpy as np
import pytest
import tifffile
import zarr
from scipy import ndimage

from napari_ncc import Registration, ncc_confidence
from napari_ncc._atomic import remove_stale_temporaries, temporary_path
from napari_ncc._io import write_ncc, write_zarr
from napari_ncc._ncc import local_ncc as core_ncc
from napari_ncc._read import TiffLevel, read_image
from napari_ncc._sources import find_source
from napari_ncc._tiff import write_tiff
from reference import brute_force_ncc


@pytest.fixture
def pair(rng):
    a = rng.random((40, 52)).astype(np.float32)
    b = (0.7 * a + 0.3 * rng.random(a.shape)).astype(np.float32)
    return a, b


def leftovers(directory) -> list[str]:
    """Hidden temporary entries left in a directory."""
    return [name for name in os.listdir(directory) if name.startswith(".")]


# --- write_zarr --------------------------------------------------------------------------


def test_write_zarr_round_trip_with_attrs(tmp_path, pair):
    a, _ = pair
    path = tmp_path / "a.zarr"
    out = write_zarr(
        da.from_array(a, chunks=(16, 20)), path, attrs={"k": [1, "x"]}, progress=False
    )
    assert out == str(path)
    z = zarr.open(str(path), mode="r")
    np.testing.assert_array_equal(z[:], a)
    assert z.chunks == (16, 20)
    assert z.attrs["k"] == [1, "x"]
    assert leftovers(tmp_path) == []


def test_write_zarr_numpy_and_irregular_chunks(tmp_path, pair):
    a, _ = pair
    write_zarr(a, tmp_path / "np.zarr", progress=False)
    np.testing.assert_array_equal(zarr.open(str(tmp_path / "np.zarr"), mode="r")[:], a)
    ragged = da.from_array(a, chunks=((5, 20, 15), (30, 22)))
    write_zarr(ragged, tmp_path / "ragged.zarr", progress=False)
    np.testing.assert_array_equal(zarr.open(str(tmp_path / "ragged.zarr"), mode="r")[:], a)


def test_write_zarr_refuses_an_existing_path(tmp_path, pair):
    a, _ = pair
    path = tmp_path / "a.zarr"
    write_zarr(a, path, progress=False)
    with pytest.raises(FileExistsError, match=r"already exists.*overwrite=True"):
        write_zarr(a + 1, path, progress=False)
    np.testing.assert_array_equal(zarr.open(str(path), mode="r")[:], a)
    write_zarr(a + 1, path, overwrite=True, progress=False)
    np.testing.assert_array_equal(zarr.open(str(path), mode="r")[:], a + 1)
    assert leftovers(tmp_path) == []


def failing(block, block_id=None):
    if block_id == (1, 1):
        raise RuntimeError("disk on fire")
    return block


def test_interrupted_write_leaves_nothing_under_the_final_name(tmp_path, pair):
    a, _ = pair
    broken = da.from_array(a, chunks=16).map_blocks(failing, meta=np.empty((0, 0), a.dtype))
    with pytest.raises(RuntimeError, match="disk on fire"):
        write_zarr(broken, tmp_path / "out.zarr", progress=False, scheduler="synchronous")
    assert not (tmp_path / "out.zarr").exists()
    assert leftovers(tmp_path) == []
    # An interrupted overwrite keeps the old store intact.
    write_zarr(a, tmp_path / "out.zarr", progress=False)
    with pytest.raises(RuntimeError, match="disk on fire"):
        write_zarr(broken, tmp_path / "out.zarr", overwrite=True, progress=False)
    np.testing.assert_array_equal(zarr.open(str(tmp_path / "out.zarr"), mode="r")[:], a)
    assert leftovers(tmp_path) == []
    with pytest.raises(RuntimeError, match="disk on fire"):
        write_zarr(broken, tmp_path / "p.zarr", progress=False, scheduler="processes")
    assert not (tmp_path / "p.zarr").exists()
    assert leftovers(tmp_path) == []


@pytest.mark.parametrize("scheduler", [None, "threads", "synchronous", "processes"])
def test_write_zarr_schedulers(tmp_path, pair, scheduler):
    a, _ = pair
    write_zarr(
        da.from_array(a, chunks=16), tmp_path / "a.zarr", progress=False, scheduler=scheduler
    )
    np.testing.assert_array_equal(zarr.open(str(tmp_path / "a.zarr"), mode="r")[:], a)


def test_write_zarr_shows_progress(tmp_path, pair, capsys):
    a, _ = pair
    write_zarr(da.from_array(a, chunks=16), tmp_path / "a.zarr", progress=True)
    assert "writing a.zarr" in capsys.readouterr().err


def test_write_zarr_bad_arguments(tmp_path, pair):
    a, _ = pair
    with pytest.raises(ValueError, match="JSON"):
        write_zarr(a, tmp_path / "a.zarr", attrs={"x": np.nan}, progress=False)
    with pytest.raises(ValueError, match="JSON"):
        write_zarr(a, tmp_path / "a.zarr", attrs={"x": object()}, progress=False)
    with pytest.raises(ValueError, match="unknown scheduler 'fast'"):
        write_zarr(a, tmp_path / "a.zarr", scheduler="fast", progress=False)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        write_zarr(a, tmp_path / "missing" / "a.zarr", progress=False)
    assert not (tmp_path / "a.zarr").exists()
    assert leftovers(tmp_path) == []


# --- write_tiff --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("shape", "chunks"),
    [
        ((1300, 1100), (300, 250)),  # blocks no tile divides: rechunked
        ((1100, 700), ((100, 900, 100), (700,))),  # irregular blocks
        ((600, 800), (96, 160)),  # 32-pixel tiles divide the blocks
        ((3, 700, 513), (2, 200, 200)),  # blocks of several pages
        ((2, 2, 600, 600), (1, 2, 100, 600)),
        ((50, 40), (7, 9)),  # smaller than a tile
    ],
)
def test_write_tiff_streams_every_tile_in_place(tmp_path, rng, shape, chunks):
    data = rng.random(shape).astype(np.float32)
    path = tmp_path / "map.tif"
    out = write_tiff(da.from_array(data, chunks=chunks), path, progress=False)
    assert out == str(path)
    with tifffile.TiffFile(path) as tif:
        assert all(page.is_tiled for page in tif.pages)
        assert len(tif.pages) == int(np.prod(shape[:-2]))
        np.testing.assert_array_equal(tif.asarray(), data)
    assert leftovers(tmp_path) == []


def test_write_tiff_attrs_come_back_from_read_image(tmp_path, pair):
    a, _ = pair
    params = {"radius": [2, 3], "fill_value": "nan"}
    write_tiff(a, tmp_path / "a.tif", attrs={"napari_ncc": params}, progress=False)
    (level,), meta = read_image(tmp_path / "a.tif")
    np.testing.assert_array_equal(level.compute(), a)
    assert meta["napari_ncc"]["radius"] == [2, 3] and np.isnan(meta["napari_ncc"]["fill_value"])


def test_write_tiff_refuses_an_existing_path_and_fails_cleanly(tmp_path, pair):
    a, _ = pair
    path = tmp_path / "a.tif"
    write_tiff(a, path, progress=False)
    with pytest.raises(FileExistsError, match="already exists"):
        write_tiff(a + 1, path, progress=False)
    broken = da.from_array(a, chunks=16).map_blocks(failing, meta=np.empty((0, 0), a.dtype))
    with pytest.raises(RuntimeError, match="disk on fire"):
        write_tiff(broken, path, overwrite=True, progress=False)
    np.testing.assert_array_equal(tifffile.imread(path), a)  # the old file, intact
    write_tiff(a + 1, path, overwrite=True, progress=False, scheduler="synchronous")
    np.testing.assert_array_equal(tifffile.imread(path), a + 1)
    with pytest.raises(ValueError, match="at least 2 dimensions"):
        write_tiff(a[0], tmp_path / "line.tif", progress=False)
    assert leftovers(tmp_path) == []


@pytest.mark.parametrize("scheduler", [None, "threads", "synchronous", "processes"])
def test_write_tiff_schedulers(tmp_path, pair, scheduler):
    a, _ = pair
    path = tmp_path / "a.tif"
    write_tiff(da.from_array(a, chunks=16), path, progress=False, scheduler=scheduler)
    np.testing.assert_array_equal(tifffile.imread(path), a)


def test_write_tiff_shows_progress(tmp_path, pair, capsys):
    a, _ = pair
    write_tiff(a, tmp_path / "a.tif")
    assert "writing a.tif" in capsys.readouterr().err


# --- temporaries -------------------------------------------------------------------------


def dead_pid() -> int:
    """The id of a process that has exited (and been reaped)."""
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def test_only_stale_temporaries_of_the_same_path_are_removed(tmp_path, pair):
    path = tmp_path / "map.zarr"
    ours = os.path.basename(temporary_path(path))  # .map.zarr.tmp-HOST-PID-TOKEN
    prefix, host, pid, token = re.fullmatch(r"(\.map\.zarr\.tmp-)(.+)-(\d+)-(\w+)", ours).groups()
    assert int(pid) == os.getpid()
    gone = dead_pid()
    with subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"]) as alive:
        stale = [f"{prefix}{host}-{gone}-{token}", f"{prefix}{host}-{gone}-{token[::-1]}"]
        kept = [
            f"{prefix}{host}-{alive.pid}-{token}",  # a write under way
            f"{prefix}{host}-{os.getpid()}-{token}",  # this very process
            f"{prefix}elsewhere-{gone}-{token}",  # another machine's
            f".other.zarr.tmp-{host}-{gone}-{token}",  # another output's
            f"{prefix}{gone}",  # not our pattern
            f"map.zarr.tmp-{host}-{gone}-{token}",  # not hidden
        ]
        for name in stale + kept:
            (tmp_path / name).mkdir()
        (tmp_path / stale[1] / "chunk").write_bytes(b"x")
        removed = remove_stale_temporaries(path)
        assert sorted(os.path.basename(p) for p in removed) == sorted(stale)
        assert sorted(os.listdir(tmp_path)) == sorted(kept)
        # Every writer does it before writing.
        for name in stale:
            (tmp_path / name).mkdir()
        write_zarr(pair[0], path, progress=False)
        assert sorted(os.listdir(tmp_path)) == sorted([*kept, "map.zarr"])
        alive.kill()


def test_doctests_leave_no_files_behind(tmp_path, monkeypatch):
    import doctest

    import napari_ncc._atomic
    import napari_ncc._io
    import napari_ncc._read

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    for module in (napari_ncc._io, napari_ncc._read, napari_ncc._atomic):
        assert doctest.testmod(module).failed == 0
    assert os.listdir(tmp_path) == []


# --- write_ncc ---------------------------------------------------------------------------


def make_zarr(path, data, chunks):
    z = zarr.create_array(store=str(path), shape=data.shape, chunks=chunks, dtype=data.dtype)
    z[:] = data
    return str(path)


def test_write_ncc_from_zarr_paths(tmp_path, pair):
    a, b = pair
    p0 = make_zarr(tmp_path / "a.zarr", a, (16, 16))
    p1 = make_zarr(tmp_path / "b.zarr", b, (10, 30))
    out = write_ncc(
        p0, p1, tmp_path / "ncc.zarr", radius=2, mode="wrap", chunks=(16, 26), progress=False
    )
    (ncc,), meta = read_image(out)
    assert zarr.open(out, mode="r").chunks == (16, 26)
    np.testing.assert_allclose(ncc.compute(), brute_force_ncc(a, b, 2, mode="wrap"), atol=1e-5)
    params = meta["napari_ncc"]
    assert params["radius"] == 2 and params["mode"] == "wrap" and params["window"] == "box"
    assert params["inputs"] == [p0, p1]
    # Inputs untouched.
    np.testing.assert_array_equal(zarr.open(p0, mode="r")[:], a)


def test_write_ncc_with_shift_and_parameters(tmp_path, pair):
    a, b = pair
    out = write_ncc(
        da.from_array(a, chunks=8),
        b,
        tmp_path / "ncc.zarr",
        radius=(2, 3),
        window="gaussian",
        fill_value=np.nan,
        registration=Registration(shift=(1.5, -0.25)),
        progress=False,
    )
    (ncc,), meta = read_image(out)
    ncc = ncc.compute()
    shifted = ndimage.shift(b, (1.5, -0.25), order=1, mode="nearest")
    expected = core_ncc(a, shifted, (2, 3), window="gaussian", fill_value=np.nan)
    # The rows and columns whose windows reach pixels shifted in from outside b: filled.
    inside = np.s_[2 + 2 : None, : -1 - 3]
    np.testing.assert_allclose(ncc[inside], expected[inside], atol=1e-5)
    outside = np.ones(ncc.shape, dtype=bool)
    outside[inside] = False
    assert np.isnan(ncc[outside]).all()
    params = meta["napari_ncc"]
    assert params["radius"] == [2, 3] and params["window"] == "gaussian"
    assert np.isnan(params["fill_value"]) and params["registration"]["shift"] == [1.5, -0.25]
    stored = json.loads((tmp_path / "ncc.zarr" / "zarr.json").read_text())
    assert stored["attributes"]["napari_ncc"]["fill_value"] == "nan"  # strict JSON


def test_write_ncc_numpy_inputs_and_existing_path(tmp_path, pair):
    a, b = pair
    out = write_ncc(a, b, tmp_path / "ncc.zarr", radius=3, progress=False)
    (ncc,), _ = read_image(out)
    np.testing.assert_allclose(ncc.compute(), core_ncc(a, b, 3), atol=1e-5)
    with pytest.raises(FileExistsError):
        write_ncc(a, b, out, radius=3, progress=False)
    with pytest.raises(ValueError, match="same shape"):
        write_ncc(a, b[1:], tmp_path / "other.zarr", progress=False)
    assert not (tmp_path / "other.zarr").exists()


def test_write_ncc_can_replace_its_own_input(tmp_path, pair):
    a, b = pair
    p0 = make_zarr(tmp_path / "a.zarr", a, (16, 16))
    write_ncc(p0, b, p0, radius=3, overwrite=True, progress=False)
    (ncc,), _ = read_image(p0)
    np.testing.assert_allclose(ncc.compute(), core_ncc(a, b, 3), atol=1e-5)


# --- read_image --------------------------------------------------------------------------


def test_read_zarr_array_is_lazy_and_sliceable(tmp_path, pair):
    a, _ = pair
    path = make_zarr(tmp_path / "img.zarr", a, (8, 8))
    levels, meta = read_image(path)
    assert len(levels) == 1 and isinstance(levels[0], da.Array)
    assert meta["name"] == "img" and meta["scale"] is None and "napari_ncc" not in meta
    assert find_source(levels[0]) is not None
    np.testing.assert_array_equal(levels[0].compute(), a)


@pytest.mark.parametrize("version", ["0.4", "0.5"])
def test_read_ome_zarr_multiscale(tmp_path, rng, version):
    full = rng.integers(0, 1000, (64, 80)).astype(np.uint16)
    root = zarr.open_group(str(tmp_path / "img.ome.zarr"), mode="w")
    datasets = []
    for i, level in enumerate([full, full[::2, ::2], full[::4, ::4]]):
        z = root.create_array(str(i), shape=level.shape, chunks=(16, 16), dtype=level.dtype)
        z[:] = level
        transforms = [{"type": "scale", "scale": [0.5 * 2**i, 0.25 * 2**i]}]
        datasets.append({"path": str(i), "coordinateTransformations": transforms})
    multiscales = [
        {
            "version": version,
            "name": "cells",
            "axes": [{"name": "y", "type": "space"}, {"name": "x", "type": "space"}],
            "datasets": datasets,
        }
    ]
    if version == "0.5":
        root.attrs["ome"] = {"version": "0.5", "multiscales": multiscales}
    else:
        root.attrs["multiscales"] = multiscales
    levels, meta = read_image(tmp_path / "img.ome.zarr")
    assert [lv.shape for lv in levels] == [(64, 80), (32, 40), (16, 20)]
    np.testing.assert_array_equal(levels[1].compute(), full[::2, ::2])
    assert meta["scale"] == (0.5, 0.25) and meta["axes"] == ("y", "x")
    assert meta["name"] == "cells"


def test_read_zarr_group_without_multiscales(tmp_path):
    zarr.open_group(str(tmp_path / "g.zarr"), mode="w").create_array("a", shape=(4,), dtype="u1")
    with pytest.raises(ValueError, match="without OME-Zarr 'multiscales'"):
        read_image(tmp_path / "g.zarr")


def test_read_plain_tiff(tmp_path, rng):
    data = rng.integers(0, 60000, (3, 70, 90)).astype(np.uint16)
    tifffile.imwrite(
        tmp_path / "stack.tif", data, imagej=True, resolution=(4.0, 2.0), metadata={"axes": "ZYX"}
    )
    levels, meta = read_image(tmp_path / "stack.tif")
    assert len(levels) == 1
    np.testing.assert_array_equal(levels[0].compute(), data)
    assert meta["name"] == "stack" and meta["axes"] == tuple("ZYX")
    assert meta["scale"] == (1.0, 0.5, 0.25)


def test_read_tiled_pyramidal_tiff(tmp_path, rng):
    full = rng.integers(0, 255, (600, 520)).astype(np.uint8)
    with tifffile.TiffWriter(tmp_path / "slide.ome.tif") as tif:
        tif.write(full, tile=(128, 128), subifds=2, metadata=None)
        tif.write(full[::2, ::2], tile=(128, 128), subfiletype=1)
        tif.write(full[::4, ::4], tile=(128, 128), subfiletype=1)
    levels, meta = read_image(tmp_path / "slide.ome.tif")
    assert meta["name"] == "slide"
    assert [lv.shape for lv in levels] == [(600, 520), (300, 260), (150, 130)]
    assert find_source(levels[0]) is not None  # blocks read tiles straight from the file
    np.testing.assert_array_equal(levels[0][100:300, 250:400].compute(), full[100:300, 250:400])
    np.testing.assert_array_equal(levels[2].compute(), full[::4, ::4])


def test_tiff_level_is_picklable(tmp_path, rng):
    data = rng.integers(0, 255, (40, 50)).astype(np.uint8)
    tifffile.imwrite(tmp_path / "a.tif", data, tile=(16, 16))
    (level,), _ = read_image(tmp_path / "a.tif")
    source = find_source(level)[1]
    assert isinstance(source, TiffLevel)
    source[0:1, 0:1]  # opened
    copy = pickle.loads(pickle.dumps(source))
    np.testing.assert_array_equal(copy[5:9, 7:30], data[5:9, 7:30])


@pytest.mark.parametrize("suffix", [".png", ".jpg"])
def test_read_small_images(tmp_path, rng, suffix):
    from skimage import io

    data = rng.integers(0, 255, (30, 40)).astype(np.uint8)
    io.imsave(tmp_path / f"pic{suffix}", data, check_contrast=False)
    (level,), meta = read_image(tmp_path / f"pic{suffix}")
    assert isinstance(level, da.Array) and level.shape == data.shape
    assert meta["name"] == "pic" and meta["axes"] == ("y", "x")
    if suffix == ".png":
        np.testing.assert_array_equal(level.compute(), data)


def test_read_image_errors(tmp_path):
    with pytest.raises(ValueError, match="does not exist"):
        read_image(tmp_path / "nope.tif")
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(ValueError, match="unsupported file type"):
        read_image(tmp_path / "notes.txt")
    (tmp_path / "broken.tif").write_bytes(b"II*\x00garbage" * 10)
    with pytest.raises(ValueError, match=r"broken\.tif"):
        read_image(tmp_path / "broken.tif")
    (tmp_path / "broken.png").write_bytes(b"\x89PNG garbage")
    with pytest.raises(ValueError, match=r"broken\.png"):
        read_image(tmp_path / "broken.png")
    (tmp_path / "empty.zarr").mkdir()
    with pytest.raises(ValueError, match=r"empty\.zarr"):
        read_image(tmp_path / "empty.zarr")


def test_lazy_pipeline_from_files(tmp_path, pair):
    """read -> shift -> NCC -> store, all from files, equals the in-memory pipeline."""
    a, b = pair
    tifffile.imwrite(tmp_path / "ref.tif", a, tile=(16, 16))
    make_zarr(tmp_path / "mov.zarr", b, (16, 32))
    out = write_ncc(
        tmp_path / "ref.tif", tmp_path / "mov.zarr", tmp_path / "ncc.zarr", radius=3,
        registration=Registration(shift=(-2.5, 1.0)), chunks=16, progress=False,
    )  # fmt: skip
    (ncc,), _ = read_image(out)
    expected, _ = ncc_confidence(a, b, radius=3, registration=Registration(shift=(-2.5, 1.0)))
    np.testing.assert_allclose(ncc.compute(), expected, atol=1e-5)
