"""A cloud mask given as a NumPy ``.npy`` array (M3R-CR's masks), made a GeoTIFF on the optical image's grid.

The engine reads GDAL rasters; M3R-CR ships its cloud masks as ``.npy`` arrays of the optical image's shape (True =
cloud) with no georeferencing, so QGIS cannot load them and Processing refused them (issue 28). An array of the
optical's height × width (a leading or trailing axis of 1 is dropped) becomes a 1-band byte GeoTIFF — 1 where the
array is non-zero, the engine's mask convention — with the optical file's geotransform and CRS, read by GDAL in
QGIS's own process (QGIS ships NumPy and GDAL; no torch). Any other shape is one line that says what was expected.
"""

from __future__ import annotations

from pathlib import Path

from aligncr_qgis.layers import LayerError, tr


def is_npy(value: object) -> bool:
    """Whether a parameter value or path names a ``.npy`` file."""
    return isinstance(value, (str, Path)) and str(value).lower().endswith(".npy")


def npy_mask_to_geotiff(npy: str | Path, optical: str, out: str | Path) -> str:
    """Write ``npy`` as a cloud-mask GeoTIFF ``out`` on the grid of the raster file ``optical``; returns ``out``."""
    import numpy as np
    from osgeo import gdal

    try:
        array = np.load(str(npy), allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise LayerError(tr("cannot read the mask {0}: {1}").format(npy, exc)) from None
    ref = gdal.Open(optical)
    if ref is None:
        raise LayerError(tr("cannot open the optical image {0}").format(optical))
    width, height = ref.RasterXSize, ref.RasterYSize
    if array.ndim == 3 and 1 in (array.shape[0], array.shape[-1]):
        array = array.reshape(array.shape[1:] if array.shape[0] == 1 else array.shape[:-1])
    if array.shape != (height, width):
        raise LayerError(tr("the mask {0} is {1}, the optical image {2}×{3} pixels (height × width): a .npy mask "
                            "must have the optical's shape").format(Path(npy).name, "×".join(map(str, array.shape)),
                                                                    height, width))
    ds = gdal.GetDriverByName("GTiff").Create(str(out), width, height, 1, gdal.GDT_Byte, ["COMPRESS=DEFLATE"])
    ds.SetGeoTransform(ref.GetGeoTransform())
    ds.SetProjection(ref.GetProjection())
    ds.GetRasterBand(1).WriteArray((array != 0).astype(np.uint8))
    ds.GetRasterBand(1).SetDescription("cloud (1) from " + Path(npy).name)
    ds, ref = None, None
    return str(out)
