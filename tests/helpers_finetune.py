"""Archives for the fine-tuning tests: a tiny synthetic one (several dates over one UTM area, real-looking clouds
with mask sidecars, Sentinel-1 in another CRS) and one assembled from the real SSL4EO-S12 scenes of
``../shared/data`` (skipped when absent). Both are written into a temporary folder at test time, never into the
repository.

``python -m tests.helpers_finetune DIR`` writes the SSL4EO-S12 archive into DIR (docs/model.md's fine-tune run).
"""

from __future__ import annotations

import csv
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import rasterio
from rasterio.transform import from_origin
from rasterio.warp import Resampling, calculate_default_transform, reproject

ROOT = Path(__file__).resolve().parents[1]
SSL4EO = ROOT.parent / "shared" / "data" / "ssl4eo_s12_sample" / "SSL4EO-S12"
X0, Y0, RES = 600_000.0, 5_000_000.0, 10.0
UTM, OTHER = "EPSG:32631", "EPSG:4326"
BGRN = ("B2", "B3", "B4", "B8")


def day(n: int) -> datetime:
    return datetime(2021, 6, 1, 10, tzinfo=UTC) + timedelta(days=n)


def _write(path: Path, data: np.ndarray, crs: str, transform, nodata=None, tags: dict | None = None) -> Path:
    profile = {"driver": "GTiff", "width": data.shape[2], "height": data.shape[1], "count": data.shape[0],
               "dtype": data.dtype.name, "crs": crs, "transform": transform, "nodata": nodata}
    with rasterio.open(path, "w", **profile) as ds:
        ds.write(data)
        if tags:
            ds.update_tags(**tags)
    return path


def landscape(size: int, seed: int = 3) -> np.ndarray:
    """(4, size, size) reflectance of a field mosaic (8-px fields: crops, bare soil, water) with a gentle texture."""
    rng = np.random.default_rng(seed)
    kinds = np.array([[0.04, 0.07, 0.05, 0.35], [0.09, 0.12, 0.16, 0.25], [0.05, 0.05, 0.03, 0.02]])
    fields = rng.integers(0, 3, (size // 8 + 1, size // 8 + 1))
    refl = kinds[np.kron(fields, np.ones((8, 8), int))[:size, :size]].transpose(2, 0, 1)
    yy, xx = np.mgrid[0:size, 0:size]
    return refl * (1 + 0.05 * np.sin(xx / 3.0) * np.cos(yy / 5.0))


def disk(size: int, cy: float, cx: float, r: float) -> np.ndarray:
    yy, xx = np.mgrid[0:size, 0:size]
    return (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r


def write_sar(path: Path, refl: np.ndarray, when: datetime, crs: str, tags: bool = True) -> Path:
    """VV, VH (dB) that follow the vegetation (NIR) of ``refl`` at 20 m, written in ``crs`` (reprojected)."""
    size = refl.shape[1] // 2
    nir = refl[3, ::2, ::2]
    vv = (-16.0 + 18.0 * nir).astype(np.float32)
    sar = np.stack([vv, vv - 6.5])
    src_t = from_origin(X0, Y0, 2 * RES, 2 * RES)
    date_tag = {"ACQUISITIONDATETIME": when.isoformat()} if tags else None
    if crs == UTM:
        return _write(path, sar, UTM, src_t, tags=date_tag)
    bounds = (X0, Y0 - size * 2 * RES, X0 + size * 2 * RES, Y0)
    t, w, h = calculate_default_transform(UTM, crs, size, size, *bounds)
    out = np.full((2, h, w), np.nan, np.float32)
    for b in range(2):
        reproject(sar[b], out[b], src_transform=src_t, src_crs=UTM, dst_transform=t, dst_crs=crs,
                  resampling=Resampling.bilinear, dst_nodata=np.nan)
    return _write(path, out, crs, t, nodata=float("nan"), tags=date_tag)


def synthetic_archive(root: Path, size: int = 64, clouds: dict[int, np.ndarray | None] | None = None,
                      sar_days: tuple[int, ...] | None = None, sar_crs: str = OTHER, tags: bool = True,
                      scl: bool = False) -> Path:
    """Optical scenes (4 bands, DN = reflectance × 10⁴, UTM 10 m) on days 0, 5, 10, 15 — days 5 and 15 cloudy
    (bright, semi-opaque clouds + ``_mask`` sidecars) unless ``clouds`` (day → mask or None) says otherwise — and a
    Sentinel-1 scene a day after each (``sar_days``), in ``sar_crs``. ``tags=False``: no date tags (the dates are
    then only in the file names, ``S2_YYYYMMDD.tif``). ``scl=True``: the cloudy scenes' masks are Sentinel-2 SCL
    sidecars at 20 m (``_scl.tif``: 4 = vegetation, 9 = cloud high probability) instead of 10 m ``_mask`` files."""
    if clouds is None:
        clouds = {0: None, 5: disk(size, 20, 18, 15), 10: None, 15: disk(size, 44, 42, 13)}
    (root / "optical").mkdir(parents=True)
    (root / "sar").mkdir()
    base = landscape(size)
    t = from_origin(X0, Y0, RES, RES)
    for k, (d, mask) in enumerate(sorted(clouds.items())):
        refl = base * (1 + 0.01 * k)
        if mask is not None:
            refl = np.where(mask, 0.15 * refl + 0.85 * np.array([0.55, 0.55, 0.56, 0.6])[:, None, None], refl)
        dn = np.round(refl * 10_000).astype(np.uint16)
        date_tag = {"TIFFTAG_DATETIME": day(d).strftime("%Y:%m:%d %H:%M:%S")} if tags else None
        _write(root / "optical" / f"S2_{day(d):%Y%m%d}.tif", dn, UTM, t, nodata=0, tags=date_tag)
        if mask is not None and scl:
            classes = np.where(mask[::2, ::2], 9, 4).astype(np.uint8)[None]
            t20 = from_origin(X0, Y0, 2 * RES, 2 * RES)
            _write(root / "optical" / f"S2_{day(d):%Y%m%d}_scl.tif", classes, UTM, t20)
        elif mask is not None:
            _write(root / "optical" / f"S2_{day(d):%Y%m%d}_mask.tif", mask[None].astype(np.uint8), UTM, t)
    for d in sar_days if sar_days is not None else [d + 1 for d in clouds]:
        write_sar(root / "sar" / f"S1_{day(d):%Y%m%d}.tif", base, day(d), sar_crs, tags)
    return root


# --------------------------------------------------------------------------------------------- real data
def _stack(files: list[Path], out: Path) -> Path:
    """Single-band files of one grid → one multi-band GeoTIFF (same grid, same dtype)."""
    with rasterio.open(files[0]) as ds:
        profile = ds.profile | {"count": len(files), "driver": "GTiff"}
    with rasterio.open(out, "w", **profile) as dst:
        for i, f in enumerate(files, 1):
            with rasterio.open(f) as src:
                dst.write(src.read(1), i)
    return out


def _when(name: str) -> datetime:
    """``20200604T054639_…`` (S2) or ``S1A_IW_GRDH_1SDV_20200607T010800_…`` (S1) → the acquisition time."""
    stamp = next(p for p in name.split("_") if len(p) == 15 and p[8] == "T")
    return datetime.strptime(stamp, "%Y%m%dT%H%M%S").replace(tzinfo=UTC)


def ssl4eo_archive(root: Path, level: str = "s2c") -> Path | None:
    """The SSL4EO-S12 location 0000200 (Punjab) as an archive: optical = Sentinel-2 ``level`` (``s2c`` = L1C:
    2020-06-04 clear, 2020-08-23 with real clouds; ``s2a`` = L2A: 06-04 and 08-13, clear) B2, B3, B4, B8 stacked;
    sar = the two Sentinel-1 GRD scenes (06-07, 09-03) VV, VH; dates.csv from the product names. EPSG:4326; the S1
    grid differs from the S2 one (read through the archive's windows). None when ../shared/data is absent."""
    if not SSL4EO.is_dir():
        return None
    (root / "optical").mkdir(parents=True)
    (root / "sar").mkdir()
    rows = []
    for product in sorted((SSL4EO / level / "0000200").iterdir()):
        when = _when(product.name)
        name = f"optical/S2_{when:%Y%m%d}.tif"
        _stack([product / f"{b}.tif" for b in BGRN], root / name)
        rows.append((name, when.isoformat()))
    for product in sorted((SSL4EO / "s1" / "0000200").iterdir()):
        when = _when(product.name)
        name = f"sar/S1_{when:%Y%m%d}.tif"
        _stack([product / "VV.tif", product / "VH.tif"], root / name)
        rows.append((name, when.isoformat()))
    with (root / "dates.csv").open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["file", "datetime"])
        w.writerows(rows)
    return root


if __name__ == "__main__":
    out = ssl4eo_archive(Path(sys.argv[1]))
    print(out if out is not None else f"{SSL4EO} not found")
