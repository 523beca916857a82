"""The lazy NCC graph runs on dask.distributed: a real LocalCluster with 2 worker processes."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile
import zarr
from scipy import ndimage

import napari_ncc
from napari_ncc._io import read_image, write_ncc
from napari_ncc._ncc import local_ncc as core_ncc

distributed = pytest.importorskip("distributed")


@pytest.fixture(scope="module")
def client():
    cluster = distributed.LocalCluster(
        n_workers=2,
        threads_per_worker=1,
        processes=True,
        host="127.0.0.1",
        dashboard_address=None,
    )
    with distributed.Client(cluster) as client:
        yield client
    cluster.close()


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    rng = np.random.default_rng(7)
    a = rng.integers(0, 4000, (150, 170)).astype(np.uint16)
    b = (a * 0.5 + rng.integers(0, 500, a.shape)).astype(np.uint16)
    root = tmp_path_factory.mktemp("distributed")
    z = zarr.create_array(store=str(root / "a.zarr"), shape=a.shape, chunks=(40, 40), dtype="u2")
    z[:] = a
    tifffile.imwrite(root / "b.tif", b, tile=(32, 32))
    return root, a, b


def test_lazy_ncc_on_a_cluster_equals_in_memory(client, inputs):
    root, a, b = inputs
    (x0,), _ = read_image(root / "a.zarr")
    (x1,), _ = read_image(root / "b.tif")
    shift = (1.5, -2.25)
    lazy = napari_ncc.local_ncc(x0.rechunk(32), x1, radius=3, moving_shift=shift)
    result = client.compute(lazy).result()
    expected = core_ncc(a, ndimage.shift(b.astype(np.float32), shift, order=1, mode="nearest"), 3)
    np.testing.assert_allclose(result, expected, atol=1e-5, rtol=0)


def test_computed_inputs_on_a_cluster(client, inputs):
    _, a, b = inputs
    import dask.array as da

    x0 = da.from_array(a, chunks=(37, 50)).map_blocks(np.copy, meta=np.empty((0, 0), a.dtype))
    lazy = napari_ncc.local_ncc(x0, da.from_array(b, chunks=20) + 0, radius=(2, 4), mode="wrap")
    result = client.compute(lazy).result()
    np.testing.assert_allclose(result, core_ncc(a, b, (2, 4), mode="wrap"), atol=1e-5, rtol=0)


def test_write_ncc_to_a_cluster_by_address(client, inputs, tmp_path):
    root, a, b = inputs
    address = client.scheduler.address
    assert address.startswith("tcp://127.0.0.1")
    out = write_ncc(
        root / "a.zarr",
        root / "b.tif",
        tmp_path / "ncc.zarr",
        radius=2,
        window="gaussian",
        chunks=64,
        scheduler=address,
        progress=False,
    )
    (ncc,), meta = read_image(out)
    expected = core_ncc(a, b, 2, window="gaussian")
    np.testing.assert_allclose(ncc.compute(), expected, atol=1e-5, rtol=0)
    assert meta["napari_ncc"]["window"] == "gaussian"


def test_write_ncc_with_a_client(client, inputs, tmp_path):
    _, a, b = inputs
    out = write_ncc(a, b, tmp_path / "ncc.zarr", radius=3, scheduler=client, progress=True)
    (ncc,), _ = read_image(out)
    np.testing.assert_allclose(ncc.compute(), core_ncc(a, b, 3), atol=1e-5, rtol=0)
