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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import rasterio
from rasterio.crs import CRS
from rasterio.errors import RasterioIOError
from rasterio.transform import Affine
from rasterio.windows import Window

from engine.errors import InputError

SAMPLE_SIZE = 1024
SAMPLE_GRID = 16
SAMPLE_WINDOW = 64
DEFAULT_OPTICAL_DESCRIPTIONS = ("blue", "green", "red", "nir")


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


def open_raster(path: Path, role: str) -> rasterio.io.DatasetReader:
    """Open ``path`` for reading or raise :class:`InputError` saying which input (``role``) is the problem."""
    path = Path(path)
    if not path.exists():
        raise InputError(f"{role} file not found: {path}")
    if path.is_dir():
        raise InputError(f"{role} path is a folder, not a raster file: {path}")
    try:
        return rasterio.open(path)
    except RasterioIOError:
        raise InputError(f"{role} file is not a readable raster: {path}") from None


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
