"""Tiny scene archives in the layout ``python -m training.build_dataset`` reads (optical/, sar/, dates.csv).

Used by the dataset-builder tests and the temporal-training tests. Every raster shares one CRS and origin: optical
at 5 m, SAR at 10 m (half the pixels). Values are chosen so tests know the exact answer:

* optical DN = 300 + days since May 1 (linear in time: gap-filling between two scenes reproduces a third exactly),
  plus, with ``texture=True``, the same asymmetric spatial pattern ``(7x + 13y) mod 50`` on every scene (so a
  flip, rotation or crop applied to one date and not to another is visible), and, with ``bright_clouds=True``,
  + 5700 DN under each scene's cloud mask (bright, texture kept);
* SAR -12 dB (VV and VH), or with ``texture=True`` -12 + 0.05·days + a spatial pattern on the SAR grid.
"""

from __future__ import annotations

import csv
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import rasterio
from rasterio.transform import from_origin

X0, Y0 = 500_000.0, 4_800_000.0
CRS = "EPSG:32631"
CLOUD_DN = 5700  # added under a scene's cloud mask with bright_clouds=True


def d(month: int, day: int, hour: int = 10) -> datetime:
    return datetime(2021, month, day, hour, tzinfo=UTC)


def days(when: datetime) -> float:
    return (when - d(5, 1)).total_seconds() / 86400


def optical_dn(when: datetime) -> int:
    """The archive's optical DN of a scene acquired at ``when`` (before texture)."""
    return 300 + round(days(when))


def write_raster(path: Path, data: np.ndarray, res: float, tags: dict | None = None, nodata: float | None = 0) -> None:
    profile = {"driver": "GTiff", "width": data.shape[2], "height": data.shape[1], "count": data.shape[0],
               "dtype": data.dtype.name, "crs": CRS, "transform": from_origin(X0, Y0, res, res), "nodata": nodata}
    with rasterio.open(path, "w", **profile) as ds:
        ds.write(data)
        if tags:
            ds.update_tags(**tags)


def optical_texture(size: int) -> np.ndarray:
    yy, xx = np.mgrid[0:size, 0:size]
    return (7 * xx + 13 * yy) % 50


def sar_texture(size: int) -> np.ndarray:
    yy, xx = np.mgrid[0:size, 0:size]
    return ((3 * xx + 5 * yy) % 7) * 0.5


def make_archive(
    root: Path,
    size: int,
    optical: dict,
    sar: dict,
    in_csv: set[str] = frozenset(),
    texture: bool = False,
    bright_clouds: bool = False,
) -> Path:
    """optical: name -> (date, cloud mask (size, size) or None for no sidecar, nodata mask or None); sar: name -> date.

    A scene named in ``in_csv`` is dated by ``dates.csv`` instead of its GeoTIFF tags.
    """
    (root / "optical").mkdir(parents=True)
    (root / "sar").mkdir()
    rows = []
    for name, (when, cloud, nodata) in optical.items():
        data = np.full((4, size, size), optical_dn(when), np.uint16)
        if texture:
            data += optical_texture(size).astype(np.uint16)
        if bright_clouds and cloud is not None:
            data[:, cloud] += CLOUD_DN
        if nodata is not None:
            data[:, nodata] = 0
        tags = None if name in in_csv else {"TIFFTAG_DATETIME": when.strftime("%Y:%m:%d %H:%M:%S")}
        write_raster(root / "optical" / f"{name}.tif", data, 5.0, tags)
        if cloud is not None:
            write_raster(root / "optical" / f"{name}_mask.tif", cloud[None].astype(np.uint8), 5.0, nodata=None)
        if name in in_csv:
            rows.append((f"optical/{name}.tif", when.isoformat()))
    for name, when in sar.items():
        data = np.full((2, size // 2, size // 2), -12.0, np.float32)
        if texture:
            data += np.float32(0.05 * days(when)) + sar_texture(size // 2).astype(np.float32)
        tags = None if name in in_csv else {"ACQUISITIONDATETIME": when.isoformat()}
        write_raster(root / "sar" / f"{name}.tif", data, 10.0, tags, nodata=None)
        if name in in_csv:
            rows.append((f"sar/{name}.tif", when.isoformat()))
    if rows:
        with (root / "dates.csv").open("w", newline="") as fh:
            w = csv.writer(fh)
            w.writerow(["file", "datetime"])
            w.writerows(rows)
    return root
