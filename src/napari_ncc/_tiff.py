"""Writing a (lazy) array to a tiled TIFF file, block by block, atomically.

The file is laid out first (uncompressed tiles, BigTIFF when large), then every Dask block
is stored straight into the tiles it covers, so memory stays that of a few blocks, as for
zarr (:func:`napari_ncc._io.write_zarr`).
"""

from __future__ import annotations

import os

import dask.array as da
import numpy as np

from ._atomic import staged
from ._io import check_attrs, check_scheduler, store_blocks

__all__ = ["TIFF_TILE", "write_tiff"]


#: Largest tile edge of the TIFF files :func:`write_tiff` writes (rows and columns).
TIFF_TILE = 512


def write_tiff(
    array,
    path: str | os.PathLike,
    *,
    attrs: dict | None = None,
    overwrite: bool = False,
    progress: bool = True,
    scheduler=None,
) -> str:
    """Stream a (lazy) array into a tiled TIFF file, block by block, atomically.

    The file is laid out first (uncompressed tiles, one page per plane of the leading
    axes), then every Dask block is computed and written straight into its tiles, in any
    order and in parallel, as :func:`write_zarr` writes chunks: memory holds a few blocks
    whatever the size. Like :func:`write_zarr`, it writes to a hidden temporary sibling
    and renames it at the end.

    Parameters
    ----------
    array : array_like or dask.array.Array
        What to write, at least 2D (planes along the last two axes).
    path : str or os.PathLike
        Destination file (``.tif``, ``.tiff``). BigTIFF when it needs more than 2 GiB.
    attrs : dict, optional
        JSON-serialisable attributes, stored as JSON in the image description (and
        returned by :func:`read_image` under ``"napari_ncc"`` when they have that key).
    overwrite, progress, scheduler
        As in :func:`write_zarr`.

    Returns
    -------
    path : str

    Raises
    ------
    FileExistsError
        If `path` exists and `overwrite` is False.

    Notes
    -----
    Tiles are :data:`TIFF_TILE` pixels a side, or the largest of 256, 128, ..., 16 that
    divides the blocks, so that no tile is shared by two blocks (blocks that no such tile
    divides are rechunked to multiples of :data:`TIFF_TILE` first). The tiles are not
    compressed: their size must be known before they are computed, and NCC maps hardly
    compress anyway (about 15 % with zlib, which would be the slowest step by far).

    Examples
    --------
    >>> import os, tempfile
    >>> import dask.array as da
    >>> import tifffile
    >>> from napari_ncc import write_tiff
    >>> folder = tempfile.TemporaryDirectory()
    >>> out = os.path.join(folder.name, "ramp.tif")
    >>> ramp = da.arange(700 * 900, dtype="f4", chunks=300 * 900).reshape(700, 900)
    >>> _ = write_tiff(ramp, out, progress=False)
    >>> bool((tifffile.imread(out) == ramp.compute()).all())
    True
    >>> folder.cleanup()
    """
    import tifffile

    attrs = check_attrs(attrs)
    check_scheduler(scheduler)
    if not isinstance(array, da.Array):
        array = da.from_array(np.asarray(array), chunks="auto")
    if array.ndim < 2 or 0 in array.shape:
        raise ValueError(
            f"a TIFF file holds arrays of at least 2 dimensions with no empty axis, got "
            f"shape {array.shape}"
        )
    array, tile = _tile_aligned(array)
    with staged(path, overwrite) as tmp:
        # Lay out the file: the header, then every tile (zeros) at its final place.
        tifffile.imwrite(
            tmp,
            shape=array.shape,
            dtype=array.dtype,
            tile=tile,
            photometric="minisblack",
            bigtiff=array.nbytes > 2**31,
            metadata=attrs,
        )
        target = TiffTiles.of(tmp, array.shape, tile)
        desc = f"writing {os.path.basename(path)}"
        store_blocks(array, target, scheduler=scheduler, progress=progress, desc=desc)
    return os.fspath(path)


def _tile_aligned(array: da.Array) -> tuple[da.Array, tuple[int, int]]:
    """`array` with blocks made of whole tiles (rechunked if it must be), and the tile."""
    tile, rechunk = [], {}
    for ax in (array.ndim - 2, array.ndim - 1):
        inner = array.chunks[ax][:-1]  # the last block may end anywhere: the image does
        edges = (t for t in (512, 256, 128, 64, 32, 16) if all(c % t == 0 for c in inner))
        edge = next(edges, None)
        if edge is None:
            edge = TIFF_TILE
            rechunk[ax] = TIFF_TILE * max(1, round(max(inner) / TIFF_TILE))
        tile.append(edge if inner else TIFF_TILE)
    return (array.rechunk(rechunk) if rechunk else array), (tile[0], tile[1])


class TiffTiles:
    """Write-only array over the tiles of an uncompressed tiled TIFF file laid out by
    tifffile: ``tiles[region] = values`` writes the tiles of `region` in place.

    A target for ``dask.array.store`` whose blocks are made of whole tiles (the last
    block along an axis may end with the image). Picklable, and opens the file only while
    writing, so the workers of a cluster (which must see the file) can write too.

    Parameters
    ----------
    path : str
    shape : tuple of int
    dtype : numpy dtype
        Including the file's byte order.
    tile : (int, int)
    offsets : ndarray of int, shape (pages, tile rows, tile columns)
        Where every tile starts in the file.
    """

    def __init__(self, path: str, shape, dtype, tile, offsets) -> None:
        self.path = path
        self.shape = tuple(shape)
        self.dtype = np.dtype(dtype)
        self.ndim = len(self.shape)
        self.tile = tuple(tile)
        self.offsets = np.asarray(offsets)

    @classmethod
    def of(cls, path: str, shape, tile) -> TiffTiles:
        """The tiles of the file tifffile just wrote at `path` (uncompressed, tiled)."""
        import tifffile

        with tifffile.TiffFile(path) as tif:
            pages = list(tif.pages)
            dtype = pages[0].dtype.newbyteorder(tif.byteorder)
            offsets = np.array([page.dataoffsets for page in pages], dtype=np.int64)
            counts = {n for page in pages for n in page.databytecounts}
        if counts != {tile[0] * tile[1] * dtype.itemsize}:
            raise RuntimeError(f"unexpected tile layout in {path}: byte counts {counts}")
        grid = (len(pages), -(-shape[-2] // tile[0]), -(-shape[-1] // tile[1]))
        return cls(path, shape, dtype, tile, offsets.reshape(grid))

    def __setitem__(self, index, values) -> None:
        starts = [s.indices(n)[0] for s, n in zip(index, self.shape, strict=True)]
        values = np.asarray(values, dtype=self.dtype)
        lead_shape, lead_start = self.shape[:-2], starts[:-2]
        (y0, x0), (h, w) = starts[-2:], values.shape[-2:]
        th, tw = self.tile
        if y0 % th or x0 % tw:
            raise ValueError(f"a block at ({y0}, {x0}) does not start a tile of {self.tile}")
        padded = np.zeros(self.tile, self.dtype)
        with open(self.path, "r+b") as file:
            for k, plane in enumerate(values.reshape(-1, h, w)):
                local = np.unravel_index(k, values.shape[:-2]) if lead_shape else ()
                page = (
                    int(np.ravel_multi_index(tuple(np.add(local, lead_start)), lead_shape))
                    if lead_shape
                    else 0
                )
                for y in range(0, h, th):
                    for x in range(0, w, tw):
                        part = plane[y : y + th, x : x + tw]
                        if part.shape != self.tile:  # at the image's edge: zero-padded
                            padded[...] = 0
                            padded[: part.shape[0], : part.shape[1]] = part
                            part = padded
                        file.seek(int(self.offsets[page, (y0 + y) // th, (x0 + x) // tw]))
                        file.write(np.ascontiguousarray(part).tobytes())
