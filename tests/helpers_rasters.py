"""Tiny synthetic GeoTIFF factory for tests (anyone's): optical, SAR, land cover and mask writers.

Every writer takes the array (bands, H, W) or builds a plausible one, plus CRS, transform, dtype and nodata, so
a test states exactly the georeferencing it is about. Defaults: optical in UTM 32N (EPSG:32632) at 3 m, SAR in
EPSG:4326 at ~10 m covering the same place, as PlanetScope + Sentinel-1.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import rasterio
from rasterio.crs import CRS
from rasterio.transform import Affine, from_origin
from rasterio.warp import transform_bounds

UTM32N = "EPSG:32632"
WGS84 = "EPSG:4326"
# An origin in UTM 32N (near 45.1° N, 9.6° E: the Po valley): any land place works, this one is easy to check.
ORIGIN = (550_000.0, 5_000_000.0)


def optical_transform(res: float = 3.0, origin: tuple[float, float] = ORIGIN) -> Affine:
    return from_origin(origin[0], origin[1], res, res)


def write_raster(
    path: Path,
    data: np.ndarray,
    *,
    crs: str | CRS | None = UTM32N,
    transform: Affine | None = None,
    nodata: float | None = None,
    dtype: str | None = None,
    descriptions: tuple[str | None, ...] | None = None,
) -> Path:
    """Write (bands, H, W) ``data`` as a GeoTIFF; ``crs=None`` and ``transform=None`` make it non-georeferenced."""
    data = np.asarray(data)
    if data.ndim == 2:
        data = data[None]
    dtype = dtype or data.dtype.name
    profile = {
        "driver": "GTiff",
        "width": data.shape[2],
        "height": data.shape[1],
        "count": data.shape[0],
        "dtype": dtype,
        "nodata": nodata,
    }
    if crs is not None:
        profile["crs"] = crs
    if transform is not None:
        profile["transform"] = transform
    with rasterio.open(path, "w", **profile) as ds:
        ds.write(data.astype(dtype))
        if descriptions:
            for i, d in enumerate(descriptions, start=1):
                if d:
                    ds.set_band_description(i, d)
    return Path(path)


def make_optical_array(
    height: int = 64, width: int = 64, bands: int = 4, seed: int = 0, dtype: str = "uint16"
) -> np.ndarray:
    """Smooth, non-constant DN reflectance × 10⁴ in [200, 6000] (float dtypes: reflectance in [0.02, 0.6])."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    out = np.empty((bands, height, width), dtype=np.float32)
    for b in range(bands):
        phase = rng.uniform(0, 2 * np.pi, 2)
        wave = np.sin(xx / (7.0 + b) + phase[0]) * np.cos(yy / (9.0 + b) + phase[1])
        out[b] = 3100 + 2900 * wave + rng.normal(0, 30, (height, width))
    out = np.clip(out, 200, 6000)
    if np.dtype(dtype).kind == "f":
        return (out / 10000.0).astype(dtype)
    return out.astype(dtype)


def write_optical(
    path: Path,
    data: np.ndarray | None = None,
    *,
    height: int = 64,
    width: int = 64,
    bands: int = 4,
    res: float = 3.0,
    crs: str | None = UTM32N,
    transform: Affine | None = None,
    nodata: float | None = 0,
    dtype: str = "uint16",
    seed: int = 0,
    descriptions: tuple[str | None, ...] | None = None,
) -> Path:
    """An optical GeoTIFF (default 4-band uint16 DN, 3 m, UTM 32N, nodata 0)."""
    if data is None:
        data = make_optical_array(height, width, bands, seed, dtype)
    if transform is None and crs is not None:
        transform = optical_transform(res)
    return write_raster(path, data, crs=crs, transform=transform, nodata=nodata, dtype=dtype, descriptions=descriptions)


def footprint_transform(
    optical_path: Path, crs: str, res: float, *, margin: float = 0.0, shift: tuple[float, float] = (0.0, 0.0)
) -> tuple[Affine, int, int]:
    """Transform, width, height of a grid in ``crs`` with pixel size ``res`` covering the optical raster's extent.

    ``margin`` grows the extent on every side (in ``crs`` units), ``shift`` moves it (x, y) — for misalignment and
    partial-overlap tests.
    """
    with rasterio.open(optical_path) as ds:
        left, bottom, right, top = transform_bounds(ds.crs, crs, *ds.bounds, densify_pts=21)
    left, right = left - margin + shift[0], right + margin + shift[0]
    bottom, top = bottom - margin + shift[1], top + margin + shift[1]
    width = max(1, int(np.ceil((right - left) / res)))
    height = max(1, int(np.ceil((top - bottom) / res)))
    return from_origin(left, top, res, res), width, height


def write_sar(
    path: Path,
    data: np.ndarray | None = None,
    *,
    like: Path | None = None,
    crs: str = WGS84,
    res: float | None = None,
    transform: Affine | None = None,
    height: int = 20,
    width: int = 20,
    bands: int = 2,
    nodata: float | None = None,
    dtype: str = "float32",
    linear: bool = False,
    seed: int = 1,
) -> Path:
    """A SAR GeoTIFF (VV, VH sigma0 in dB, or linear power with ``linear=True``).

    With ``like=optical.tif`` the grid covers the optical extent in ``crs`` at ``res`` (default ≈ 10 m: 9e-5° in
    EPSG:4326, 10 m in a projected CRS) and ``height``/``width`` are derived; ``data`` must then be None or match.
    """
    if like is not None and transform is None:
        if res is None:
            res = 9e-5 if CRS.from_user_input(crs).is_geographic else 10.0
        transform, width, height = footprint_transform(like, crs, res)
    if data is None:
        rng = np.random.default_rng(seed)
        vv = rng.uniform(-18, -6, (height, width))
        vh = vv - 7 + rng.normal(0, 1, (height, width))
        data = np.stack([vv, vh] + [vv] * (bands - 2))[:bands].astype(np.float32)
        if linear:
            data = (10.0 ** (data / 10.0)).astype(np.float32)
    if transform is None:
        transform = from_origin(9.6, 45.15, 9e-5, 9e-5) if crs == WGS84 else optical_transform(10.0)
    return write_raster(path, data, crs=crs, transform=transform, nodata=nodata, dtype=dtype)


def write_landcover(
    path: Path, data: np.ndarray | None = None, *, like: Path, crs: str = UTM32N, res: float = 10.0, seed: int = 2
) -> Path:
    """ESA WorldCover-coded uint8 raster covering ``like`` (nodata 0, WorldCover's own)."""
    transform, width, height = footprint_transform(like, crs, res)
    if data is None:
        rng = np.random.default_rng(seed)
        data = rng.choice(np.array([10, 30, 40, 50, 80], dtype=np.uint8), size=(height, width))
    return write_raster(path, data, crs=crs, transform=transform, nodata=0, dtype="uint8")


def write_mask(
    path: Path,
    data: np.ndarray | None = None,
    *,
    like: Path,
    crs: str = UTM32N,
    res: float = 3.0,
    bands: int = 1,
    cloud_fraction: float = 0.5,
) -> Path:
    """Cloud mask covering ``like``: 1 band (1 = cloud; the left ``cloud_fraction`` of columns) or 8-band UDM2."""
    transform, width, height = footprint_transform(like, crs, res)
    if data is None:
        cloud = np.zeros((height, width), dtype=np.uint8)
        cloud[:, : int(round(width * cloud_fraction))] = 1
        if bands == 1:
            data = cloud[None]
        else:
            data = np.zeros((bands, height, width), dtype=np.uint8)
            data[0] = 1 - cloud  # clear
            data[5] = cloud  # cloud
    return write_raster(path, data, crs=crs, transform=transform, nodata=None, dtype="uint8")


def write_masked_scene(folder: Path, cloud: np.ndarray) -> tuple[Path, Path, Path]:
    """Optical (the default random DN), SAR over it and the 1-band mask of ``cloud`` ((H, W) bool) in ``folder``."""
    opt = write_optical(folder / "opt.tif", height=cloud.shape[0], width=cloud.shape[1])
    sar = write_sar(folder / "s1.tif", like=opt)
    mask = write_mask(folder / "mask.tif", cloud[None].astype(np.uint8), like=opt)
    return opt, sar, mask


def write_tiny_sen12(root: Path, n: int = 3, size: int = 32) -> Path:
    """SEN12MS-CR-layout triplets (13-band S2, 2-band S1 in dB, masks): a smooth scene under a bright square cloud."""
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:size, 0:size] / size
    for k in range(n):
        scene = np.stack([0.05 + 0.1 * np.sin(3 * xx + k + b) ** 2 + 0.05 * yy for b in range(13)])
        cloudy, mask = scene.copy(), np.zeros((1, size, size), np.uint8)
        y0, x0 = rng.integers(0, size // 2, 2)
        cloudy[:, y0 : y0 + size // 2, x0 : x0 + size // 2] = 0.7
        mask[:, y0 : y0 + size // 2, x0 : x0 + size // 2] = 1
        sar = np.stack([-20 + 40 * scene[7], -25 + 40 * scene[3]]).astype(np.float32)
        arrays = {"s2_cloudfree": (scene * 1e4).astype(np.uint16), "s2_cloudy": (cloudy * 1e4).astype(np.uint16),
                  "s1": sar, "cloudmask": mask}
        for sub, arr in arrays.items():
            (root / sub).mkdir(parents=True, exist_ok=True)
            with rasterio.open(root / sub / f"{k}.tif", "w", driver="GTiff", width=size, height=size,
                               count=arr.shape[0], dtype=arr.dtype) as ds:
                ds.write(arr)
    return root


def read_band_and_facts(path: Path) -> tuple[np.ndarray, dict]:
    """Band 1 of a raster and the facts the side-output tests check (read while it is open)."""
    with rasterio.open(path) as ds:
        facts = {"crs": ds.crs, "transform": ds.transform, "shape": ds.shape, "dtypes": ds.dtypes,
                 "nodata": ds.nodata, "descriptions": ds.descriptions, "tags": ds.tags(),
                 "layout": ds.tags(ns="IMAGE_STRUCTURE").get("LAYOUT")}  # fmt: skip
        return ds.read(1), facts
