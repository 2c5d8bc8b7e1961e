"""Clip the inputs to a processing extent with GDAL virtual rasters, because the engine has no extent flag.

``gdal.Translate(format="VRT", projWin=…)`` writes a few-kilobyte XML file that points into the source — nothing
is copied or resampled, so clipping is instant and the engine still does the one and only resampling (SAR, land
cover and mask onto the optical grid). The optical raster is clipped exactly to the extent (snapped by GDAL to
its pixel grid); the others are clipped to the extent's bounding box in their own CRS plus a two-pixel margin so
that the engine's resampling has neighbours at the edges.
"""

from __future__ import annotations

import os
from pathlib import Path

from osgeo import gdal
from qgis.core import QgsCoordinateReferenceSystem, QgsCoordinateTransform, QgsProject, QgsRectangle

from aligncr_qgis.layers import LayerError

gdal.UseExceptions()

MARGIN_PIXELS = 2


def clip_to_extent(
    path: str,
    extent: QgsRectangle,
    extent_crs: QgsCoordinateReferenceSystem,
    layer_crs: QgsCoordinateReferenceSystem,
    out_dir: str | Path,
    name: str,
    margin_pixels: int = 0,
) -> str:
    """Write ``out_dir/name.vrt`` covering ``extent`` (given in ``extent_crs``) of the raster at ``path``."""
    rect = QgsRectangle(extent)
    if layer_crs.isValid() and extent_crs.isValid() and layer_crs != extent_crs:
        rect = QgsCoordinateTransform(extent_crs, layer_crs, QgsProject.instance()).transformBoundingBox(rect)
    ds = gdal.Open(path)
    try:
        gt = ds.GetGeoTransform()
        pad_x, pad_y = abs(gt[1]) * margin_pixels, abs(gt[5]) * margin_pixels
        full = QgsRectangle(gt[0], gt[3] + gt[5] * ds.RasterYSize, gt[0] + gt[1] * ds.RasterXSize, gt[3])
        full.normalize()
        win = QgsRectangle(rect.xMinimum() - pad_x, rect.yMinimum() - pad_y, rect.xMaximum() + pad_x,
                           rect.yMaximum() + pad_y).intersect(full)
        if win.isEmpty() or win.width() < abs(gt[1]) or win.height() < abs(gt[5]):
            raise LayerError(f"the processing extent does not cover any pixel of {os.path.basename(path)}")
        out = str(Path(out_dir) / f"{name}.vrt")
        result = gdal.Translate(
            out, ds, format="VRT", projWin=[win.xMinimum(), win.yMaximum(), win.xMaximum(), win.yMinimum()]
        )
        if result is None:
            raise LayerError(f"GDAL could not clip {os.path.basename(path)}: {gdal.GetLastErrorMsg()}")
        result = None  # close: the VRT is flushed to disk on release
    finally:
        ds = None  # noqa: F841 - release the dataset before QGIS exits (segfault otherwise)
    return out
