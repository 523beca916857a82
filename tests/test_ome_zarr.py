"""Maps saved as OME-Zarr with a pyramid: read back by ome-zarr's own reader, atomically."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading

import dask.array as da
import numpy as np
import pytest
import zarr

pytest.importorskip("ome_zarr")

from ome_zarr.io import parse_url
from ome_zarr.reader import Multiscales, Reader

import napari_ncc
from napari_ncc._ome_zarr import is_ome_zarr, read_ome_zarr, write_ome_zarr
from reference import brute_force_ncc


def leftovers(directory) -> list[str]:
    """Hidden temporary entries left in a directory."""
    return [name for name in os.listdir(directory) if name.startswith(".")]


def library_read(path):
    """Levels and metadata of the multiscale image at `path`, as ome-zarr's reader sees it."""
    nodes = [node for node in Reader(parse_url(str(path)))() if node.load(Multiscales)]
    assert len(nodes) == 1
    return nodes[0].data, nodes[0].metadata


def block_mean(image: np.ndarray, factor: int) -> np.ndarray:
    """Mean of `factor` x `factor` blocks over the last two axes (trailing rest dropped)."""
    *lead, h, w = image.shape
    h, w = h // factor, w // factor
    blocks = image[..., : h * factor, : w * factor].astype(np.float64)
    return blocks.reshape(*lead, h, factor, w, factor).mean(axis=(-3, -1))


@pytest.fixture
def pair_on_disk(tmp_path, rng):
    """A correlated float32 pair saved as zarr arrays, opened lazily (real files)."""
    a = rng.random((1100, 1300)).astype(np.float32)
    b = (0.6 * a + 0.4 * rng.random(a.shape)).astype(np.float32)
    b[300:400, 500:700] = rng.random((100, 200))  # a patch where they disagree
    for name, image in (("a", a), ("b", b)):
        zarr.create_array(str(tmp_path / f"{name}.zarr"), data=image, chunks=(256, 256))
    lazy = [da.from_zarr(str(tmp_path / f"{name}.zarr")) for name in ("a", "b")]
    return a, b, lazy


def test_is_ome_zarr():
    assert is_ome_zarr("x/map.ome.zarr") and is_ome_zarr("MAP.OME.ZARR/")
    assert not is_ome_zarr("map.zarr") and not is_ome_zarr("ome.zarr.tif")


@pytest.mark.parametrize("ngff_version", ["0.5", "0.4"])
def test_lazy_map_reads_back_with_the_librarys_reader(tmp_path, pair_on_disk, ngff_version):
    a, b, (lazy_a, lazy_b) = pair_on_disk
    ncc = napari_ncc.local_ncc(lazy_a, lazy_b, radius=3)
    assert isinstance(ncc, da.Array)
    out = tmp_path / "map.ome.zarr"
    params = {"radius": 3, "window": "box"}
    assert write_ome_zarr(
        ncc, out, attrs={"napari_ncc": params}, ngff_version=ngff_version, progress=False
    ) == str(out)
    assert leftovers(tmp_path) == []
    levels, metadata = library_read(out)
    assert [level.shape for level in levels] == [(1100, 1300), (550, 650), (275, 325)]
    # Level 0 is the map: local_ncc of a tile (with a halo) and the brute-force reference.
    tile = (slice(280, 340), slice(480, 560))
    halo = (slice(270, 350), slice(470, 570))
    expected = napari_ncc.local_ncc(a[halo], b[halo], radius=3)[10:-10, 10:-10]
    np.testing.assert_allclose(levels[0][tile].compute(), expected, atol=1e-5)
    brute = brute_force_ncc(a[halo], b[halo], 3)[10:-10, 10:-10]
    np.testing.assert_allclose(levels[0][tile].compute(), brute, atol=1e-4)
    # Coarse levels summarise the full-resolution map: 2^k x 2^k block means of level 0,
    # and each the 2 x 2 block mean of the level before.
    full = levels[0].compute()
    for k in (1, 2):
        np.testing.assert_allclose(levels[k].compute(), block_mean(full, 2**k), atol=1e-5)
        previous = levels[k - 1].compute()
        np.testing.assert_allclose(levels[k].compute(), block_mean(previous, 2), atol=1e-5)
    # The disagreeing patch stays visible at the coarsest level.
    coarsest = levels[2].compute()
    assert coarsest[80:95, 130:170].mean() < coarsest[200:, :100].mean() - 0.3
    assert [axis["name"] for axis in metadata["axes"]] == ["y", "x"]
    assert zarr.open_group(str(out), mode="r").attrs["napari_ncc"] == params


def test_metadata_round_trips(tmp_path, rng):
    image = da.from_array(rng.random((2, 700, 1030)).astype(np.float32), chunks=(1, 256, 512))
    params = {"radius": [2, 3], "fill_value": "nan", "inputs": ["a.zarr", None]}
    out = tmp_path / "movie.ome.zarr"
    write_ome_zarr(
        image,
        out,
        attrs={"napari_ncc": params},
        axis_names=("t", "y", "x"),
        scale=(1.0, 0.5, 0.25),
        translate=(0.0, 10.0, -4.0),
        name="drift",
        progress=False,
    )
    levels, metadata = library_read(out)
    # Only the plane axes are coarsened; the time axis keeps its planes.
    assert [level.shape for level in levels] == [(2, 700, 1030), (2, 350, 515), (2, 175, 257)]
    np.testing.assert_allclose(levels[2].compute(), block_mean(image.compute(), 4), atol=1e-5)
    assert [axis["name"] for axis in metadata["axes"]] == ["t", "y", "x"]
    assert [axis["type"] for axis in metadata["axes"]] == ["time", "space", "space"]
    assert metadata["name"] == "drift"
    transforms = metadata["coordinateTransformations"]
    assert transforms[0][0] == {"type": "scale", "scale": [1.0, 0.5, 0.25]}
    assert transforms[0][1] == {"type": "translation", "translation": [0.0, 10.0, -4.0]}
    assert transforms[2][0]["scale"] == [1.0, 2.0, 1.0]
    # A level-2 pixel averages 4 x 4 level-0 pixels: its centre is 1.5 level-0 pixels in.
    assert transforms[2][1]["translation"] == [0.0, 10.0 + 1.5 * 0.5, -4.0 + 1.5 * 0.25]
    # The same through our reader, in the shape read_image gives.
    ours, meta = read_ome_zarr(out)
    assert [level.shape for level in ours] == [level.shape for level in levels]
    np.testing.assert_array_equal(ours[1].compute(), levels[1].compute())
    assert meta["name"] == "drift" and meta["axes"] == ("t", "y", "x")
    assert meta["scale"] == (1.0, 0.5, 0.25) and meta["path"] == str(out)
    assert meta["napari_ncc"]["radius"] == [2, 3] and meta["napari_ncc"]["inputs"] == [
        "a.zarr",
        None,
    ]
    assert np.isnan(meta["napari_ncc"]["fill_value"])  # stored as "nan" (JSON has no NaN)
    # A validator independent of the writer accepts the store as an NGFF 0.5 image.
    models = pytest.importorskip("ome_zarr_models")
    from ome_zarr_models.v05.image import Image

    assert isinstance(models.open_ome_zarr(zarr.open_group(str(out), mode="r")), Image)


def test_map_is_computed_once_levels_come_from_the_store(tmp_path, rng):
    image = rng.random((1200, 1100)).astype(np.float32)
    computed = []
    lock = threading.Lock()

    def counted(block, block_info=None):
        with lock:
            computed.append(tuple(block_info[0]["chunk-location"]))
        return block

    lazy = da.from_array(image, chunks=300).map_blocks(counted, dtype=np.float32)
    write_ome_zarr(lazy, tmp_path / "m.ome.zarr", progress=False)
    assert sorted(computed) == sorted(np.ndindex(4, 4))  # each block once, pyramid included
    levels, _ = read_ome_zarr(tmp_path / "m.ome.zarr")
    assert [level.shape for level in levels] == [(1200, 1100), (600, 550), (300, 275)]
    np.testing.assert_array_equal(levels[0].compute(), image)


def failing(block, block_id=None):
    if block_id == (1, 1):
        raise RuntimeError("disk on fire")
    return block


@pytest.mark.parametrize("scheduler", ["synchronous", "threads"])
def test_interrupted_write_leaves_nothing(tmp_path, rng, scheduler):
    image = rng.random((600, 700)).astype(np.float32)
    broken = da.from_array(image, chunks=256).map_blocks(failing, dtype=np.float32)
    out = tmp_path / "out.ome.zarr"
    with pytest.raises(RuntimeError, match="disk on fire"):
        write_ome_zarr(broken, out, progress=False, scheduler=scheduler)
    assert not out.exists()
    assert leftovers(tmp_path) == []
    # An interrupted overwrite keeps the old store intact.
    write_ome_zarr(image, out, progress=False)
    with pytest.raises(RuntimeError, match="disk on fire"):
        write_ome_zarr(broken, out, overwrite=True, progress=False, scheduler=scheduler)
    levels, _ = read_ome_zarr(out)
    np.testing.assert_array_equal(levels[0].compute(), image)
    assert leftovers(tmp_path) == []


def test_refuses_to_overwrite_unless_asked(tmp_path, rng):
    image = rng.random((40, 50)).astype(np.float32)
    out = tmp_path / "small.ome.zarr"
    write_ome_zarr(image, out, progress=False)
    with pytest.raises(FileExistsError, match=r"already exists.*overwrite=True"):
        write_ome_zarr(image + 1, out, progress=False)
    levels, _ = library_read(out)
    assert len(levels) == 1  # already small: a single level
    np.testing.assert_array_equal(np.asarray(levels[0]), image)
    write_ome_zarr(image + 1, out, overwrite=True, progress=False)
    np.testing.assert_array_equal(np.asarray(library_read(out)[0][0]), image + 1)
    assert leftovers(tmp_path) == []


def test_shows_progress_per_level(tmp_path, rng, capsys):
    write_ome_zarr(rng.random((600, 600)).astype(np.float32), tmp_path / "p.ome.zarr")
    err = capsys.readouterr().err
    assert "writing p.ome.zarr level 0/1" in err and "level 1/1" in err


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"array": np.zeros((1,) * 6)}, ValueError, "2 to 5 axes"),
        ({"array": np.zeros((0, 4))}, ValueError, "empty"),
        ({"array": np.zeros((4, 4), complex)}, ValueError, "dtype complex128"),
        ({"axis_names": ("x", "t")}, ValueError, "not valid NGFF axes"),
        ({"axis_names": ("y",)}, ValueError, "must name all 2 axes"),
        ({"scale": (1.0, 0.0)}, ValueError, "scale must be positive finite"),
        ({"translate": (1.0,)}, ValueError, "translate must have one value per axis"),
        ({"attrs": {"ome": {}}}, ValueError, "NGFF keys"),
        ({"attrs": {"x": float("nan")}}, ValueError, "JSON-serialisable"),
        ({"ngff_version": "0.3"}, ValueError, "ngff_version"),
        ({"scheduler": "gpu"}, ValueError, "unknown scheduler"),
    ],
)
def test_bad_arguments_say_what_is_wrong(tmp_path, kwargs, error, match):
    kwargs = {"array": np.zeros((8, 8), np.float32), **kwargs}
    with pytest.raises(error, match=match):
        write_ome_zarr(path=tmp_path / "bad.ome.zarr", progress=False, **kwargs)
    assert os.listdir(tmp_path) == []


def test_read_refuses_what_is_not_an_ome_zarr_image(tmp_path):
    zarr.create_array(str(tmp_path / "plain.zarr"), shape=(4, 4), dtype="u1")
    zarr.open_group(str(tmp_path / "group.zarr"), mode="w")
    for name in ("plain.zarr", "group.zarr", "missing.zarr"):
        with pytest.raises(ValueError, match=r"zarr group|no OME-Zarr multiscale"):
            read_ome_zarr(tmp_path / name)


@pytest.mark.parametrize("damage", ["missing-level", "no-datasets"])
def test_read_refuses_broken_metadata(tmp_path, rng, damage):
    out = tmp_path / "broken.ome.zarr"
    write_ome_zarr(rng.random((600, 600)).astype(np.float32), out, progress=False)
    group = zarr.open_group(str(out), mode="r+")
    ome = group.attrs["ome"]
    if damage == "missing-level":
        ome["multiscales"][0]["datasets"][1]["path"] = "9"
    else:
        ome["multiscales"][0]["datasets"] = []
    group.attrs["ome"] = ome
    with pytest.raises(ValueError, match=r"broken OME-Zarr metadata|no OME-Zarr multiscale"):
        read_ome_zarr(out)


def _assert_map_with_pyramid(path, a, b, radius, shapes):
    """The OME-Zarr at `path`, read by ome-zarr's reader: level 0 the NCC map of a and b
    (brute force, and local_ncc, on a tile with a halo), coarser levels its block means."""
    levels, metadata = library_read(path)
    assert [level.shape for level in levels] == shapes
    tile = (slice(280, 340), slice(480, 560))
    halo = (slice(270, 350), slice(470, 570))
    inner = (slice(10, -10), slice(10, -10))
    np.testing.assert_allclose(
        levels[0][tile].compute(), brute_force_ncc(a[halo], b[halo], radius)[inner], atol=1e-4
    )
    np.testing.assert_allclose(
        levels[0][tile].compute(),
        napari_ncc.local_ncc(a[halo], b[halo], radius=radius)[inner],
        atol=1e-5,
    )
    full = levels[0].compute()
    np.testing.assert_allclose(levels[2].compute(), block_mean(full, 4), atol=1e-5)
    assert [axis["name"] for axis in metadata["axes"]] == ["y", "x"]
    return zarr.open_group(str(path), mode="r").attrs["napari_ncc"]


def test_write_ncc_to_ome_zarr_writes_the_map_with_its_pyramid(tmp_path, pair_on_disk):
    a, b, _ = pair_on_disk
    out = tmp_path / "map.ome.zarr"
    inputs = [str(tmp_path / "a.zarr"), str(tmp_path / "b.zarr")]
    assert napari_ncc.write_ncc(*inputs, out, radius=2, progress=False) == str(out)
    assert leftovers(tmp_path) == []
    params = _assert_map_with_pyramid(out, a, b, 2, [(1100, 1300), (550, 650), (275, 325)])
    assert params["radius"] == 2 and params["inputs"] == inputs
    # read_image (napari-ncc's reader, through ome-zarr) gives the pyramid and parameters.
    levels, meta = napari_ncc.read_image(out)
    assert len(levels) == 3 and meta["napari_ncc"]["radius"] == 2


def test_cli_compare_writes_ome_zarr_with_its_pyramid(tmp_path, pair_on_disk):
    a, b, _ = pair_on_disk
    out = tmp_path / "map.ome.zarr"
    script = os.path.join(os.path.dirname(sys.executable), "napari-ncc")
    if not os.path.exists(script):
        pytest.skip("the napari-ncc console script is not installed")
    options = ["--no-register", "--radius", "3", "-q", "--json"]
    result = subprocess.run(
        [script, "compare", tmp_path / "a.zarr", tmp_path / "b.zarr", "-o", out, *options],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["written"] == {"map": str(out)}
    params = _assert_map_with_pyramid(out, a, b, 3, [(1100, 1300), (550, 650), (275, 325)])
    assert params["radius"] == 3 and params["registration"] is None
    assert leftovers(tmp_path) == []
