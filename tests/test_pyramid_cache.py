"""Big single-scale files open as pyramids, built once (reading each chunk once) and cached."""

from __future__ import annotations

import logging
import os

import dask.array as da
import numpy as np
import pytest
import tifffile
import zarr
from zarr.storage import LocalStore, LoggingStore

from napari_ncc._multiscale import MULTISCALE_MIN_SIDE
from napari_ncc._pyramid_cache import cached_pyramid, default_cache_dir, open_image_pyramid

#: Taller than MULTISCALE_MIN_SIDE, narrow so that the files stay small.
SHAPE = (MULTISCALE_MIN_SIDE + 4, 700)
LEVEL_SHAPES = [(4100, 700), (2050, 350), (1025, 175), (512, 87)]


def rounded_block_means(image: np.ndarray, levels: int) -> list[np.ndarray]:
    """Brute-force pyramid of an integer image: 2x2 means of the level before, rounded."""
    out = [image]
    for _ in range(levels - 1):
        prev = out[-1].astype(np.float64)
        h, w = prev.shape[0] // 2, prev.shape[1] // 2
        mean = prev[: 2 * h, : 2 * w].reshape(h, 2, w, 2).mean(axis=(1, 3))
        out.append(np.round(mean).astype(image.dtype))
    return out


def files_and_times(folder) -> dict[str, int]:
    return {
        os.path.join(root, name): os.stat(os.path.join(root, name)).st_mtime_ns
        for root, _, names in os.walk(folder)
        for name in names
    }


@pytest.fixture
def big_zarr(tmp_path, rng):
    image = rng.integers(0, 60000, SHAPE, dtype=np.uint16)
    path = str(tmp_path / "big.zarr")
    zarr.create_array(path, data=image, chunks=(512, 512))
    return image, path


def test_big_single_scale_zarr_opens_as_a_cached_pyramid(tmp_path, big_zarr):
    image, path = big_zarr
    cache = tmp_path / "cache"
    calls = []
    levels, meta = open_image_pyramid(
        path, cache_dir=cache, progress=lambda done, total: calls.append((done, total))
    )
    assert [level.shape for level in levels] == LEVEL_SHAPES
    assert meta["pyramid"] == "cached" and meta["name"] == "big"
    assert calls and calls[-1][0] == calls[-1][1]  # progress up to the total
    for level, expected in zip(levels, rounded_block_means(image, 4), strict=True):
        assert level.dtype == np.uint16
        # exact sums of four integers: at most a tie rounded the other way
        assert np.abs(level.compute().astype(int) - expected).max() <= 1


def test_second_open_reuses_the_cache_without_reading_the_file(tmp_path, big_zarr):
    _, path = big_zarr
    cache = tmp_path / "cache"
    first, _ = open_image_pyramid(path, cache_dir=cache)
    stored = files_and_times(cache)
    assert any(name.endswith("source.json") for name in stored)
    calls = []
    again, _ = open_image_pyramid(path, cache_dir=cache, progress=lambda *c: calls.append(c))
    assert calls == []  # nothing rebuilt
    assert files_and_times(cache) == stored  # nothing rewritten
    for a, b in zip(first[1:], again[1:], strict=True):
        np.testing.assert_array_equal(a.compute(), b.compute())


def test_a_modified_file_gets_a_new_pyramid_and_the_old_one_goes(tmp_path, big_zarr):
    image, path = big_zarr
    cache = tmp_path / "cache"
    open_image_pyramid(path, cache_dir=cache)
    (folder,) = os.listdir(cache)
    (old_entry,) = os.listdir(cache / folder)
    z = zarr.open_array(path, mode="r+")
    z[:512, :512] = 7  # zarr replaces the chunk's file (a new one, renamed into place)
    levels, _ = open_image_pyramid(path, cache_dir=cache)
    assert os.listdir(cache / folder) != [old_entry] and len(os.listdir(cache / folder)) == 1
    changed = image.copy()
    changed[:512, :512] = 7
    expected = rounded_block_means(changed, 4)
    assert np.abs(levels[3].compute().astype(int) - expected[3]).max() <= 1


def test_build_reads_each_chunk_of_a_zarr_source_once(tmp_path, big_zarr):
    _, path = big_zarr
    reads = []

    class Reads(logging.Handler):
        def emit(self, record):
            message = record.getMessage()
            if "Calling" in message and ".get(c/" in message:
                reads.append(message)

    store = LoggingStore(LocalStore(path, read_only=True))
    store.logger.addHandler(Reads())  # (it adds none of its own where pytest has handlers)
    source = da.from_zarr(zarr.open_array(store=store, mode="r"))
    assert source.chunksize == (512, 512)
    levels = cached_pyramid(path, source, cache_dir=tmp_path / "cache")
    assert [level.shape for level in levels] == LEVEL_SHAPES
    chunks = 9 * 2  # ceil(4100 / 512) x ceil(700 / 512)
    assert len(reads) == chunks and len(set(reads)) == chunks  # each once
    # Reopening reads nothing of the source.
    reads.clear()
    cached_pyramid(path, source, cache_dir=tmp_path / "cache")
    assert reads == []


def test_big_tiff_opens_as_pyramid_and_small_or_pyramidal_files_stay_as_they_are(tmp_path, rng):
    cache = tmp_path / "cache"
    tiff = str(tmp_path / "big.tif")
    tifffile.imwrite(tiff, rng.integers(0, 255, SHAPE, dtype=np.uint8), tile=(256, 256))
    levels, meta = open_image_pyramid(tiff, cache_dir=cache)
    assert [level.shape for level in levels] == LEVEL_SHAPES and meta["pyramid"] == "cached"
    small = str(tmp_path / "small.zarr")
    zarr.create_array(small, data=np.ones((600, 600), np.uint8))
    levels, meta = open_image_pyramid(small, cache_dir=cache)
    assert len(levels) == 1 and "pyramid" not in meta
    rgb = str(tmp_path / "rgb.zarr")
    zarr.create_array(rgb, shape=(SHAPE[0], 8, 3), dtype=np.uint8)
    levels, _ = open_image_pyramid(rgb, cache_dir=cache)
    assert len(levels) == 1  # channels are not averaged together
    assert len(os.listdir(cache)) == 1  # only the big TIFF's pyramid


def test_default_cache_dir_follows_xdg(monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert default_cache_dir() == os.path.join(str(tmp_path), "napari-ncc", "pyramids")


def test_a_failed_build_leaves_no_entry(tmp_path, big_zarr):
    _, path = big_zarr

    def failing(block, block_id=None):
        if block_id == (3, 1):
            raise RuntimeError("disk on fire")
        return block

    source = da.from_zarr(path).map_blocks(failing, dtype=np.uint16)
    cache = tmp_path / "cache"
    with pytest.raises(RuntimeError, match="disk on fire"):
        cached_pyramid(path, source, cache_dir=cache)
    assert [entries for _, entries, _ in os.walk(cache)][1:] == [[]]  # the path's folder only
    levels = cached_pyramid(path, cache_dir=cache)  # and a later build succeeds
    assert len(levels) == 4


class Cancelled(Exception):
    pass


def test_a_cancelled_build_leaves_nothing(tmp_path, big_zarr):
    _, path = big_zarr

    def cancel(done, total):
        if done == 3:
            raise Cancelled  # what a napari progress bar's cancel button does

    cache = tmp_path / "cache"
    with pytest.raises(Cancelled):
        cached_pyramid(path, cache_dir=cache, progress=cancel)
    assert [entries for _, entries, _ in os.walk(cache)][1:] == [[]]
