"""NDVI = (NIR − Red) / (NIR + Red), its five classes (Align-CR paper §V-D, after its ref. [58]) and a GeoTIFF writer.

Classes, left-closed: 0 ``< −0.1`` (cloud, water, snow), 1 ``−0.1…0.1`` (rock, soil), 2 ``0.1…0.4`` (sparse
vegetation), 3 ``0.4…0.8`` (dense vegetation), 4 ``≥ 0.8`` (very dense vegetation).

Invalid pixels get :data:`NDVI_NODATA` (−9999): non-finite inputs, red + NIR = 0, pixels the caller marks invalid
(source nodata), and |NDVI| > 1, which only negative reflectances (noise in dark surface-reflectance products)
can produce. NDVI is a ratio, so :func:`write_ndvi` computes it on the file's own units (DN or reflectance) — no
scaling needed; the report computes it on the [0, 1]-clipped bands its metrics use, which differs only for
saturated pixels.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from rasterio.windows import Window

from engine.config import is_gdal_name
from engine.errors import InputError
from engine.outputs.guard import check_output_path
from engine.outputs.metrics import ndvi_classes
from engine.outputs.provenance import RasterMetadata, read_metadata
from engine.outputs.writer import AtomicGeoTIFFWriter, layer_spec
from engine.progress import Progress
from engine.sources.footprint import input_footprint
from engine.sources.raster import input_read_errors, open_raster

NDVI_NODATA = -9999.0
NDVI_CLASS_EDGES: tuple[float, ...] = (-0.1, 0.1, 0.4, 0.8)
NDVI_CLASS_NAMES: tuple[str, ...] = (
    "< -0.1 (water, cloud, snow)",
    "-0.1 to 0.1 (rock, soil)",
    "0.1 to 0.4 (sparse vegetation)",
    "0.4 to 0.8 (dense vegetation)",
    ">= 0.8 (very dense vegetation)",
)
NDVI_CLASS_NODATA = 255
WINDOW = 1024


def ndvi(red: np.ndarray, nir: np.ndarray, valid: np.ndarray | None = None) -> np.ndarray:
    """NDVI as float32, :data:`NDVI_NODATA` where invalid (see module docstring)."""
    red = np.asarray(red, dtype=np.float64)
    nir = np.asarray(nir, dtype=np.float64)
    den = red + nir
    ok = np.isfinite(red) & np.isfinite(nir) & (den != 0)
    if valid is not None:
        ok &= np.asarray(valid, dtype=bool)
    out = np.full(red.shape, NDVI_NODATA, dtype=np.float32)
    with np.errstate(invalid="ignore", divide="ignore"):
        v = (nir[ok] - red[ok]) / den[ok]
    bad = np.abs(v) > 1.0
    v[bad] = NDVI_NODATA
    out[ok] = v
    return out


def ndvi_class(values: np.ndarray) -> np.ndarray:
    """uint8 class 0…4 of NDVI values, :data:`NDVI_CLASS_NODATA` where the NDVI is nodata."""
    values = np.asarray(values)
    out = ndvi_classes(values, NDVI_CLASS_EDGES).astype(np.uint8)
    out[(values == NDVI_NODATA) | ~np.isfinite(values)] = NDVI_CLASS_NODATA
    return out


def _windows(width: int, height: int, size: int = WINDOW) -> list[Window]:
    return [
        Window(x, y, min(size, width - x), min(size, height - y))
        for y in range(0, height, size)
        for x in range(0, width, size)
    ]


def write_ndvi(
    src_path: Path | str,
    out_path: Path | str,
    red_band: int,
    nir_band: int,
    progress: Progress | None = None,
    clobber: bool = True,
) -> Path:
    """Write the NDVI of ``src_path`` (1-based ``red_band``/``nir_band``) as a float32 GeoTIFF on the same grid.

    Windowed (memory stays bounded for any scene size) and atomic: the output appears only when complete; it never
    replaces a file the input opens, nor (``clobber`` off) an existing file (:mod:`engine.outputs.guard`).
    Source nodata (per-band nodata value or internal mask) becomes :data:`NDVI_NODATA`.
    """
    out_path = Path(out_path)
    src_path = os.fspath(src_path) if is_gdal_name(src_path) else Path(src_path)
    progress = progress or Progress()
    check_output_path(out_path, input_footprint({"optical": src_path}), clobber=clobber, geotiff=True)
    src = open_raster(src_path, "input raster")
    with src, input_read_errors("the input raster"):
        for b in (red_band, nir_band):
            if not 1 <= b <= src.count:
                raise InputError(f"{src_path} has {src.count} band(s); band {b} does not exist")
        # the scene's own tags (acquisition time, and how a declouded input was made) describe the NDVI too
        band = {"DESCRIPTION": "NDVI = (NIR - Red) / (NIR + Red)", "RED_BAND": str(red_band), "NIR_BAND": str(nir_band)}
        spec = layer_spec(width=src.width, height=src.height, crs=src.crs, transform=src.transform, dtype="float32",
                          nodata=NDVI_NODATA, descriptions=("NDVI",),
                          metadata=RasterMetadata(tags=read_metadata(src).tags, band_tags=[band]))  # fmt: skip
        windows = _windows(src.width, src.height)
        with AtomicGeoTIFFWriter(out_path, spec, clobber=clobber) as dst:
            for i, win in enumerate(windows):
                progress.check_cancelled()
                red, nir = src.read((red_band, nir_band), window=win)
                masks = src.read_masks((red_band, nir_band), window=win)
                valid = (masks[0] > 0) & (masks[1] > 0)
                dst.write(ndvi(red, nir, valid)[None], win)
                progress.update((i + 1) / len(windows), "NDVI")
    return out_path
