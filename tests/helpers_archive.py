"""Tiny scene archives in the layout ``python -m training.build_dataset`` reads (optical/, sar/, dates.csv).

Used by the dataset-builder tests and the temporal-training tests. Every raster shares one CRS and origin: optical
at 5 m, SAR at 10 m (half the pixels). Values are chosen so tests know the exact answer:

* optical DN = 300 + days since May 1 (linear in time: gap-filling between two scenes reproduces a third exactly),
  plus, with ``texture=True``, the same asymmetric spatial pattern ``(7x + 13y) mod 50`` on every scene (so a
  flip, rotation or crop applied to one date and not to another is visible), and, with ``bright_clouds=True``,
  + 5700 DN under each scene's cloud mask (bright, texture kept);
* SAR -12 dB (VV and VH), or with ``texture=True`` -12 + 0.05·days + a spatial pattern on the SAR grid;
* optionally ``dem.tif`` (:func:`write_dem`): a tilted plane of elevations (:func:`dem_elevation`, metres, different
  slopes east and south) on its own 10 m grid, offset from the optical and SAR grids by a fraction of a pixel, so
  bilinear resampling onto any optical pixel gives exactly :func:`dem_elevation` at that pixel's centre while
  nearest resampling, a half-pixel shift, a flip or a transposition does not.
"""

from __future__ import annotations

import csv
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import rasterio
from rasterio.transform import from_origin

X0, Y0 = 500_000.0, 4_800_000.0
CRS = "EPSG:32631"
CLOUD_DN = 5700  # added under a scene's cloud mask with bright_clouds=True
DEM_BASE, DEM_EAST, DEM_SOUTH = 1200.0, 0.8, -0.3  # metres at (X0, Y0); metres per metre east / south
DEM_RES, DEM_SHIFT = 10.0, (-7.5, 3.0)  # the DEM's pixel size and its origin's offset from (X0, Y0) minus a margin
DEM_NODATA = -9999.0


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


def dem_elevation(x: np.ndarray | float, y: np.ndarray | float) -> np.ndarray | float:
    """Elevation (m) of the archive's DEM plane at ground coordinates (x, y)."""
    return DEM_BASE + DEM_EAST * (np.asarray(x) - X0) + DEM_SOUTH * (Y0 - np.asarray(y))


def write_dem(path: Path, extent_m: float, nodata_east_of: float | None = None, bands: int = 1) -> Path:
    """The plane of :func:`dem_elevation` on a 10 m grid covering [X0, X0 + extent] × [Y0 − extent, Y0] with a
    two-pixel margin (so every optical pixel centre lies between DEM pixel centres), float32, nodata -9999;
    ``nodata_east_of``: no elevation for DEM pixels whose centre is that many metres east of X0 or more."""
    x0, y0 = X0 + DEM_SHIFT[0] - 2 * DEM_RES, Y0 + DEM_SHIFT[1] + 2 * DEM_RES
    n = int(np.ceil((extent_m - DEM_SHIFT[0]) / DEM_RES)) + 4
    cols, rows = np.meshgrid(np.arange(n), np.arange(n))
    xc, yc = x0 + (cols + 0.5) * DEM_RES, y0 - (rows + 0.5) * DEM_RES
    plane = dem_elevation(xc, yc).astype(np.float32)
    if nodata_east_of is not None:
        plane[xc - X0 >= nodata_east_of] = DEM_NODATA
    profile = {"driver": "GTiff", "width": n, "height": n, "count": bands, "dtype": "float32", "crs": CRS,
               "transform": from_origin(x0, y0, DEM_RES, DEM_RES), "nodata": DEM_NODATA}
    with rasterio.open(path, "w", **profile) as ds:
        ds.write(np.repeat(plane[None], bands, axis=0))
    return path


def make_archive(
    root: Path,
    size: int,
    optical: dict,
    sar: dict,
    in_csv: set[str] = frozenset(),
    texture: bool = False,
    bright_clouds: bool = False,
    dem: bool = False,
) -> Path:
    """optical: name -> (date, cloud mask (size, size) or None for no sidecar, nodata mask or None); sar: name -> date.

    A scene named in ``in_csv`` is dated by ``dates.csv`` instead of its GeoTIFF tags. ``dem``: also write
    ``dem.tif`` (:func:`write_dem`) covering the whole archive.
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
    if dem:
        write_dem(root / "dem.tif", size * 5.0)
    if rows:
        with (root / "dates.csv").open("w", newline="") as fh:
            w = csv.writer(fh)
            w.writerow(["file", "datetime"])
            w.writerows(rows)
    return root


def alternating_archive(root: Path, size: int, dates: list[datetime], dem: bool = False) -> Path:
    """A textured archive with one optical image per date — every other one cloudy over its west half (bright
    clouds), the others clear — and a SAR image a day after each; ``dem``: with ARCHIVE/dem.tif."""
    west = np.zeros((size, size), bool)
    west[:, : size // 2] = True
    clear = np.zeros((size, size), bool)
    optical = {f"O{k}": (when, west if k % 2 else clear, None) for k, when in enumerate(dates)}
    sar = {f"S{k}": when + timedelta(days=1) for k, when in enumerate(dates)}
    return make_archive(root, size, optical, sar, texture=True, bright_clouds=True, dem=dem)


def crop_flip_rot(a: np.ndarray, y: int, x: int, size: int, k: int, flip: bool) -> np.ndarray:
    """The ``size``² window at (y, x) of ``a`` (…, H, W), mirrored left-right if ``flip``, then rotated k·90°."""
    w = a[..., y : y + size, x : x + size]
    return np.rot90(w[..., ::-1] if flip else w, k, axes=(w.ndim - 2, w.ndim - 1))


def augmentations_matching(raw: np.ndarray, out: np.ndarray, size: int) -> list[tuple[int, int, int, bool]]:
    """Every (y, x, k, flip) for which ``crop_flip_rot(raw, …)`` equals ``out``: which augmentation was applied."""
    h, w = raw.shape[-2:]
    return [(y, x, k, f) for y in range(h - size + 1) for x in range(w - size + 1) for k in range(4)
            for f in (False, True) if np.array_equal(crop_flip_rot(raw, y, x, size, k, f), out)]  # fmt: skip


def augmented_draws(view, reader, size: int, n: int = 24):
    """``n`` draws of a training view over 3 epochs: yields (augmented sample, raw sample, (y, x, k, flip)), where
    exactly one window and dihedral transform of the raw optical patch must give the augmented one."""
    for i in range(n):
        view.set_epoch(i % 3)
        out = view[i]
        raw = reader.read(i % len(reader))
        matches = augmentations_matching(raw["optical"], out["optical"].numpy(), size)
        assert len(matches) == 1, matches
        yield out, raw, matches[0]
