"""Opening and validating the input rasters, and cheap whole-scene statistics for unit detection.

Every check that can fail on a user's file happens here, before any output is created, and raises
:class:`~engine.errors.InputError` naming the file and the problem in one line. Statistics (SAR units, optical
scale, all-nodata check) are computed on a sample of at most about ``SAMPLE_SIZE²`` pixels (the whole raster when
small, else a grid of block-aligned windows, see :func:`read_sample`) so that they cost the same on a 300-pixel
chip and a 30 000-pixel scene; the all-nodata verdict is confirmed by a full block-by-block scan before an error is
raised, because a sample can miss a sparse valid area.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import rasterio
from rasterio._err import CPLE_BaseError
from rasterio.crs import CRS
from rasterio.enums import Resampling
from rasterio.errors import RasterioError, RasterioIOError
from rasterio.transform import Affine
from rasterio.windows import Window

from engine.config import is_gdal_name
from engine.errors import InputError, one_line

SAMPLE_SIZE = 1024
SAMPLE_GRID = 16
SAMPLE_WINDOW = 64
DEFAULT_OPTICAL_DESCRIPTIONS = ("blue", "green", "red", "nir")

# how an input on another grid is resampled onto the optical one (``--sar-resampling``; masks always nearest)
RESAMPLING = {"nearest": Resampling.nearest, "bilinear": Resampling.bilinear}


@dataclass(frozen=True)
class RasterInfo:
    """What the engine needs to know about a raster file, without its pixels."""

    path: Path
    crs: CRS | None
    transform: Affine
    width: int
    height: int
    count: int
    dtypes: tuple[str, ...]
    nodata: float | None
    descriptions: tuple[str | None, ...]
    block_shapes: tuple[tuple[int, int], ...] = field(default=())

    @property
    def res(self) -> tuple[float, float]:
        return (abs(self.transform.a), abs(self.transform.e))

    @property
    def bounds(self) -> tuple[float, float, float, float]:
        """(left, bottom, right, top) in the raster's CRS (north-up assumed, as GDAL's ``bounds``)."""
        left, top = self.transform * (0, 0)
        right, bottom = self.transform * (self.width, self.height)
        return (min(left, right), min(bottom, top), max(left, right), max(bottom, top))

    def as_dict(self) -> dict[str, Any]:
        return {
            "path": str(self.path),
            "crs": self.crs.to_string() if self.crs else None,
            "resolution": list(self.res),
            "width": self.width,
            "height": self.height,
            "bands": self.count,
            "dtypes": list(self.dtypes),
            "nodata": _json_number(self.nodata),
            "descriptions": list(self.descriptions),
            "bounds": list(self.bounds),
        }


def _json_number(value: float | None) -> float | str | None:
    if value is None:
        return None
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return value


def open_raster(path: Path | str, role: str) -> rasterio.io.DatasetReader:
    """Open ``path`` for reading or raise :class:`InputError` saying which input (``role``) is the problem.

    The file is read far enough to fail *now* rather than half-way through a run (issue 15: a truncated optical,
    SAR or reference GeoTIFF gave a traceback, after the output had been written): a GeoTIFF's block layout is
    checked against the file's length (:func:`block_layout_problem`, no pixel decoded) and its first and last
    blocks are read."""
    if is_gdal_name(path):  # /vsizip/…, DRIVER:… subdatasets, in-memory VRTs: GDAL says whether it opens
        path = os.fspath(path)
    elif not (path := Path(path)).exists():
        raise InputError(f"{role} file not found: {path}")
    elif path.is_dir():
        raise InputError(f"{role} path is a folder, not a raster file: {path}")
    elif not path.is_file():
        raise InputError(f"{role} path is not a regular file (a device, FIFO or socket): {path}")
    try:
        ds = rasterio.open(path)
    except (RasterioIOError, CPLE_BaseError):
        what = "GDAL dataset" if isinstance(path, str) else "file"
        raise InputError(f"{role} {what} is not a readable raster: {path}") from None
    if ds.count == 0:  # a container (NetCDF, HDF5, GPKG with several tables): its rasters are subdatasets
        subdatasets = list(ds.subdatasets)
        ds.close()
        hint = f"; give one of its {len(subdatasets)} subdatasets, e.g. {subdatasets[0]}" if subdatasets else ""
        raise InputError(f"{role} file holds no raster band{hint}: {path}")
    complex_bands = sorted({d for d in ds.dtypes if d.startswith("complex")})  # complex_int16: no numpy type
    if complex_bands:  # no input of the engine is complex (issue 25: complex64 optical became DN as reflectance)
        ds.close()
        raise InputError(f"{role} raster holds complex values ({', '.join(complex_bands)}): the engine reads real "
                         f"values only (convert to amplitude or intensity first): {path}")  # fmt: skip
    try:
        problem = block_layout_problem(ds)
        if problem is None:
            for window in corner_windows(ds):
                ds.read(1, window=window)
    except (RasterioError, CPLE_BaseError) as exc:
        problem = f"a block cannot be read ({one_line(exc)})"
    if problem is not None:
        ds.close()
        raise InputError(f"{role} file is damaged: {problem}: {path}")
    return ds


@contextmanager
def input_read_errors(what: str = "an input raster") -> Iterator[None]:
    """Turn GDAL read failures inside the block (a corrupt block, a file truncated after it was opened, an I/O
    error on a network share) into one :class:`InputError` line; GDAL's message names the file."""
    try:
        yield
    except (RasterioError, CPLE_BaseError) as exc:
        raise InputError(f"cannot read {what} (corrupt or truncated file?): {one_line(exc)}") from None


def block_layout_problem(ds: rasterio.io.DatasetReader, *, allow_sparse: bool = True) -> str | None:
    """What is wrong with a GeoTIFF's block layout — a block that ends past the end of the file (a truncated
    file), or, with ``allow_sparse=False``, a block that was never written — or None when nothing is (also for
    formats and files this cannot tell: not a GeoTIFF, not a plain file). Reads tags only, no pixel."""
    if ds.driver not in ("GTiff", "COG"):
        return None
    try:
        size = os.stat(ds.name).st_size
    except (OSError, ValueError):
        return None
    bands = range(1, ds.count + 1) if ds.tags(ns="IMAGE_STRUCTURE").get("INTERLEAVE") == "BAND" else (1,)
    block_h, block_w = ds.block_shapes[0]
    rows, cols = -(-ds.height // block_h), -(-ds.width // block_w)
    for b in bands:
        for y in range(rows):
            for x in range(cols):
                offset = ds.get_tag_item(f"BLOCK_OFFSET_{x}_{y}", "TIFF", bidx=b)
                length = ds.get_tag_item(f"BLOCK_SIZE_{x}_{y}", "TIFF", bidx=b)
                if offset is None or length is None:
                    return None  # this GDAL cannot tell
                offset, length = int(offset), int(length)
                if offset == 0 or length == 0:
                    if allow_sparse:
                        continue
                    return f"block ({x}, {y}) of band {b} was never written"
                if offset + length > size:
                    return (f"block ({x}, {y}) of band {b} ends at byte {offset + length}, past the end of the file "
                            f"({size} bytes): the file is truncated")  # fmt: skip
    return None


def corner_windows(ds: rasterio.io.DatasetReader) -> list[Window]:
    """The first and the last block of a raster, as windows."""
    block_h, block_w = ds.block_shapes[0]
    first = Window(0, 0, min(block_w, ds.width), min(block_h, ds.height))
    y0, x0 = (ds.height - 1) // block_h * block_h, (ds.width - 1) // block_w * block_w
    last = Window(x0, y0, ds.width - x0, ds.height - y0)
    return [first] if (x0, y0) == (0, 0) else [first, last]


def describe(ds: rasterio.io.DatasetReader) -> RasterInfo:
    return RasterInfo(
        path=Path(ds.name),
        crs=ds.crs,
        transform=ds.transform,
        width=ds.width,
        height=ds.height,
        count=ds.count,
        dtypes=tuple(ds.dtypes),
        nodata=ds.nodata,
        descriptions=tuple(ds.descriptions),
        block_shapes=tuple(ds.block_shapes),
    )


def require_georeferenced(ds: rasterio.io.DatasetReader, role: str) -> None:
    """The engine aligns inputs by their coordinates: a raster without CRS or geotransform cannot take part."""
    if ds.crs is None:
        raise InputError(f"{role} has no coordinate reference system (CRS); georeference it first: {ds.name}")
    if ds.transform == Affine.identity():
        raise InputError(f"{role} has no geotransform (pixel size / position); georeference it first: {ds.name}")
    if ds.transform.b != 0 or ds.transform.d != 0:
        raise InputError(f"{role} is rotated; warp it to a north-up grid first: {ds.name}")


def check_bands(ds: rasterio.io.DatasetReader, role: str, bands: tuple[int, ...], *, exact: int | None = None) -> None:
    """``bands`` (1-based) must exist in ``ds``; with ``exact`` the file must have exactly that many bands."""
    if exact is not None and ds.count != exact:
        raise InputError(f"{role} must have exactly {exact} bands, this one has {ds.count}: {ds.name}")
    missing = [b for b in bands if b > ds.count]
    if missing:
        raise InputError(
            f"{role} has {ds.count} band(s) but band(s) {','.join(map(str, missing))} were asked for: {ds.name}"
        )


def sample_shape(height: int, width: int, size: int = SAMPLE_SIZE) -> tuple[int, int]:
    """Decimated (rows, cols) with the longest side at most ``size``, keeping the aspect ratio."""
    factor = max(1.0, max(height, width) / size)
    return (max(1, round(height / factor)), max(1, round(width / factor)))


def valid_mask(data: np.ndarray, nodata: float | None) -> np.ndarray:
    """(bands, H, W) → (H, W) True where the pixel is data: finite in some band and not nodata in every band.

    A pixel is nodata only when *all* bands equal the nodata value, as GDAL's per-dataset mask: a genuine 0 in
    one band (deep water in NIR) must not knock out a PlanetScope pixel whose nodata value is 0.
    """
    finite = np.isfinite(data) if data.dtype.kind == "f" else np.ones(data.shape, dtype=bool)
    if nodata is None:
        return finite.all(axis=0)
    if isinstance(nodata, float) and math.isnan(nodata):
        return finite.all(axis=0)
    return (finite & (data != nodata)).any(axis=0) & finite.all(axis=0)


def _sample_origins(size: int, block: int, n: int, win: int) -> list[int]:
    """``n`` window origins spread over ``size``: at block origins when there are enough blocks (one block
    decompressed per window), else evenly (strip-organised files, whose one block spans the width)."""
    n_blocks = -(-size // block)
    if n_blocks >= n:
        picks = sorted({int(round(i)) for i in np.linspace(0, n_blocks - 1, n)})
        return [max(0, min(p * block, size - win)) for p in picks]
    return sorted({int(round(i)) for i in np.linspace(0, size - win, n)})


def read_sample(ds: rasterio.io.DatasetReader, bands: tuple[int, ...], size: int = SAMPLE_SIZE) -> np.ndarray:
    """Pixels of ``bands`` for statistics, as (bands, h, w); memory and I/O are O(size²) whatever the scene size.

    A raster of at most ``size²`` pixels is read whole. A larger one is sampled with a grid of ``SAMPLE_GRID²``
    small windows placed at block origins and mosaicked: each window decompresses one block, so the cost is
    bounded by ``SAMPLE_GRID²`` blocks. (A decimated ``out_shape`` read would decompress *every* block of a tiled,
    compressed scene — once per sampled row when a row of blocks exceeds GDAL's cache: minutes on a 16k² scene.)
    """
    if ds.height * ds.width <= size * size:
        return ds.read(list(bands))
    block_h, block_w = ds.block_shapes[0]
    win_h, win_w = min(SAMPLE_WINDOW, ds.height), min(SAMPLE_WINDOW, ds.width)
    rows = _sample_origins(ds.height, block_h, SAMPLE_GRID, win_h)
    cols = _sample_origins(ds.width, block_w, SAMPLE_GRID, win_w)
    out = np.empty((len(bands), len(rows) * win_h, len(cols) * win_w), dtype=np.result_type(*ds.dtypes))
    for i, r in enumerate(rows):
        for j, c in enumerate(cols):
            data = ds.read(list(bands), window=Window(c, r, win_w, win_h))
            out[:, i * win_h : (i + 1) * win_h, j * win_w : (j + 1) * win_w] = data
    return out


def has_any_valid(ds: rasterio.io.DatasetReader, bands: tuple[int, ...]) -> bool:
    """True if any pixel of ``bands`` is valid; decimated first, then an exact scan over blocks if needed."""
    if valid_mask(read_sample(ds, bands), ds.nodata).any():
        return True
    step = 1024
    for row in range(0, ds.height, step):
        for col in range(0, ds.width, step):
            win = Window(col, row, min(step, ds.width - col), min(step, ds.height - row))
            if valid_mask(ds.read(list(bands), window=win), ds.nodata).any():
                return True
    return False
