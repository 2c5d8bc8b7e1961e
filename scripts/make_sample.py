#!/usr/bin/env python3
"""Generate the bundled synthetic sample scene in ``resources/sample/`` (deterministic, seed 2026).

Real PlanetScope data may not be redistributed, so the project ships a procedurally generated but physically
plausible scene instead. One 3 m land-cover map drives everything, so the optical image, the SAR and the land-cover
raster agree with each other the way real co-registered products do:

* ``cloudfree.tif`` — 512×512, 3 m, EPSG:32632 (UTM 32N, Po valley), uint16 DN = reflectance × 10⁴, bands B, G, R,
  NIR, nodata 0. Crop parcels (green, ripening, bare), grassland, a forest, a meandering river, roads and an urban
  block with roofs, each with textbook surface reflectances (vegetation: red edge, NIR ≫ red; water: NIR ≈ 0).
* ``cloudy.tif`` — the same scene under fractal cumulus (≈ 27 % cloud, ≈ 33 % with shadows, soft edges), a thin
  haze over everything and the clouds' shadows cast south-east.
* ``cloud_mask.tif`` — uint8, 1 = cloud or cloud shadow (the pixels whose surface signal is lost; as Planet UDM2's
  cloud ∪ shadow), 0 = clear.
* ``s1.tif`` — Sentinel-1-like sigma0 in dB, float32, bands VV, VH, ~10 m in EPSG:4326 (a different CRS on
  purpose), from the same land cover with per-class backscatter (water dark, forest volume scattering in VH,
  double bounce in the city), averaged over the 10 m footprint, with multiplicative speckle (ENL 4.4, GRD-like)
  and a ~5 m geolocation offset from the optical image (as real S1/PlanetScope pairs).
* ``landcover.tif`` — ESA WorldCover codes, uint8, 1/12000° (~10 m) in EPSG:4326 like the real product.

Usage: ``.venv/bin/python scripts/make_sample.py [--out resources/sample] [--size 512]``.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import rasterio
from rasterio.transform import from_origin
from rasterio.warp import transform as warp_transform
from rasterio.warp import transform_bounds
from scipy import ndimage

SEED = 2026
CRS_OPTICAL = "EPSG:32632"
CRS_SAR = "EPSG:4326"
ORIGIN = (552_000.0, 5_004_000.0)  # UTM 32N, ≈ 45.18° N 9.67° E
RES = 3.0
SAR_SHIFT_M = (3.0, -4.0)  # ≈ 5 m geolocation offset of the SAR relative to the optical image
CLOUD_COVER = 0.27

# Surface classes of the 3 m map, their WorldCover code, reflectance (B, G, R, NIR) and S1 sigma0 in dB (VV, VH).
CLASSES = {
    "water": (80, (0.060, 0.055, 0.030, 0.015), (-22.0, -29.0)),
    "forest": (10, (0.025, 0.050, 0.030, 0.320), (-8.0, -13.5)),
    "crop_green": (40, (0.035, 0.080, 0.045, 0.420), (-10.5, -17.0)),
    "crop_ripe": (40, (0.060, 0.100, 0.125, 0.290), (-11.5, -19.0)),
    "bare_soil": (40, (0.095, 0.130, 0.170, 0.230), (-13.0, -22.0)),
    "grass": (30, (0.045, 0.090, 0.065, 0.340), (-12.0, -19.5)),
    "road": (50, (0.100, 0.110, 0.120, 0.140), (-16.0, -24.0)),
    "roof": (50, (0.140, 0.150, 0.190, 0.230), (-3.0, -11.0)),
    "roof_red": (50, (0.080, 0.095, 0.210, 0.260), (-3.5, -11.5)),
}
NAMES = list(CLASSES)


@dataclass(frozen=True)
class Scene:
    classes: np.ndarray  # (H, W) index into NAMES
    clear: np.ndarray  # (4, H, W) reflectance
    cloudy: np.ndarray  # (4, H, W) reflectance
    mask: np.ndarray  # (H, W) uint8


def smooth_noise(rng: np.random.Generator, shape: tuple[int, int], sigma: float) -> np.ndarray:
    """Gaussian-filtered white noise scaled to zero mean, unit std."""
    n = ndimage.gaussian_filter(rng.standard_normal(shape), sigma, mode="wrap")
    return (n - n.mean()) / (n.std() + 1e-12)


def fractal_noise(rng: np.random.Generator, shape: tuple[int, int], base: float = 64.0, octaves: int = 6) -> np.ndarray:
    """Sum of octaves (σ halving, amplitude ×0.55): the usual cheap fBm for cloud fields."""
    out = np.zeros(shape)
    amp, sigma = 1.0, base
    for _ in range(octaves):
        out += amp * smooth_noise(rng, shape, max(sigma, 0.7))
        amp *= 0.55
        sigma /= 2.0
    return (out - out.mean()) / out.std()


def land_cover(rng: np.random.Generator, size: int) -> np.ndarray:
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64)
    cls = np.full((size, size), NAMES.index("grass"), dtype=np.uint8)
    # Crop parcels on a slightly rotated cadastre, 25-45 px (75-135 m) a side.
    ang = np.deg2rad(11.0)
    u, v = xx * np.cos(ang) + yy * np.sin(ang), -xx * np.sin(ang) + yy * np.cos(ang)
    pu, pv = np.floor(u / 38.0).astype(int), np.floor((v + 0.35 * u) / 27.0).astype(int)
    parcel = (pu * 7919 + pv * 104729) % 9973
    crop_kind = np.array(["crop_green", "crop_ripe", "bare_soil", "crop_green", "grass", "crop_ripe"])
    kinds = crop_kind[parcel % len(crop_kind)]
    for name in set(kinds.ravel()):
        cls[kinds == name] = NAMES.index(name)
    # Forest: a smooth blob in the north-west.
    forest = smooth_noise(rng, (size, size), 30) + 2.5 * np.exp(-(((xx - 110) / 130) ** 2 + ((yy - 100) / 110) ** 2))
    cls[forest > 1.6] = NAMES.index("forest")
    # Urban block in the south-east: street grid, roofs of two kinds, a few courtyard trees.
    urban = (xx > 330) & (yy > 320) & (xx < 500) & (yy < 490)
    street = (np.mod(xx - 330, 34) < 5) | (np.mod(yy - 320, 30) < 5)
    block_id = (np.floor((xx - 330) / 34) * 31 + np.floor((yy - 320) / 30)).astype(int)
    roof_kind = np.where(block_id % 3 == 0, NAMES.index("roof_red"), NAMES.index("roof"))
    courtyard = (np.mod(xx - 330, 34) > 14) & (np.mod(xx - 330, 34) < 24) & (np.mod(yy - 320, 30) > 12)
    cls[urban] = roof_kind[urban]
    cls[urban & courtyard & (block_id % 4 == 1)] = NAMES.index("forest")
    cls[urban & street] = NAMES.index("road")
    # Roads: one straight, one gently curved, 3 px (9 m) wide.
    cls[np.abs(yy - (0.32 * xx + 260)) < 1.6] = NAMES.index("road")
    cls[np.abs(xx - (300 + 40 * np.sin(yy / 90.0))) < 1.6] = NAMES.index("road")
    # River: a meander crossing the scene, 14-22 px wide, drawn last (bridges are not modelled).
    centre = 150 + 0.45 * xx + 45 * np.sin(xx / 70.0)
    width = 7 + 3 * np.sin(xx / 40.0)
    cls[np.abs(yy - centre) < width] = NAMES.index("water")
    return cls


def reflectance(rng: np.random.Generator, cls: np.ndarray) -> np.ndarray:
    size = cls.shape[0]
    table = np.array([CLASSES[n][1] for n in NAMES], dtype=np.float64)  # (classes, 4)
    out = table[cls].transpose(2, 0, 1).copy()
    # Within-class variability: smooth (soil moisture, crop vigour) plus fine texture; vegetation varies in NIR most.
    vigour = 1.0 + 0.08 * smooth_noise(rng, (size, size), 12)
    out[3] *= vigour
    out[:3] *= 1.0 + 0.05 * smooth_noise(rng, (size, size), 20)
    out *= 1.0 + 0.012 * rng.standard_normal(out.shape)
    return np.clip(out, 0.002, 1.0)


def add_clouds(rng: np.random.Generator, clear: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    size = clear.shape[1]
    field = fractal_noise(rng, (size, size), base=48.0)
    thresh = np.quantile(field, 1.0 - CLOUD_COVER)
    alpha = np.clip((field - thresh) / 0.9, 0.0, 1.0) ** 0.7  # soft edges, opaque cores
    # Shadow: the cloud's opacity displaced 30 px east, 40 px south (sun in the north-west), darkening by ≤ 65 %.
    shadow = ndimage.shift(alpha, (40, 30), order=1, mode="constant", cval=0.0)
    shade = 1.0 - 0.65 * shadow * (1.0 - alpha)
    haze_alpha = 0.06 + 0.04 * (0.5 + 0.5 * np.tanh(smooth_noise(rng, (size, size), 60)))
    haze = np.array([0.22, 0.20, 0.18, 0.16])[:, None, None]
    cloud_top = np.array([0.62, 0.61, 0.60, 0.58])[:, None, None] * (1.0 + 0.06 * field[None])
    out = clear * shade[None]
    out = (1.0 - haze_alpha[None]) * out + haze_alpha[None] * haze
    out = (1.0 - alpha[None]) * out + alpha[None] * cloud_top
    mask = ((alpha > 0.15) | ((shadow * (1.0 - alpha)) > 0.3)).astype(np.uint8)
    return np.clip(out, 0.002, 1.0), mask


def make_scene(size: int, seed: int = SEED) -> Scene:
    rng = np.random.default_rng(seed)
    cls = land_cover(rng, size)
    clear = reflectance(rng, cls)
    cloudy, mask = add_clouds(rng, clear)
    return Scene(classes=cls, clear=clear, cloudy=cloudy, mask=mask)


def _write(path: Path, data: np.ndarray, **profile: object) -> None:
    profile = {"driver": "GTiff", "compress": "deflate", "tiled": True, "blockxsize": 256, "blockysize": 256, **profile}
    with rasterio.open(path, "w", count=data.shape[0], height=data.shape[1], width=data.shape[2], **profile) as ds:
        ds.write(data)
        descriptions = profile.get("descriptions")
        if descriptions:
            for i, d in enumerate(descriptions, start=1):
                ds.set_band_description(i, d)


def geographic_grid(size: int, pixel_m: float, margin_m: float) -> tuple[object, int, int, float, float]:
    """An EPSG:4326 grid covering the optical extent plus a margin, with ~``pixel_m`` pixels."""
    left, top = ORIGIN
    right, bottom = left + size * RES, top - size * RES
    lon0, lat0, lon1, lat1 = transform_bounds(CRS_OPTICAL, CRS_SAR, left, bottom, right, top, densify_pts=21)
    lat_mid = 0.5 * (lat0 + lat1)
    dlat = pixel_m / 111_320.0
    dlon = pixel_m / (111_320.0 * np.cos(np.deg2rad(lat_mid)))
    mlat, mlon = margin_m / 111_320.0, margin_m / (111_320.0 * np.cos(np.deg2rad(lat_mid)))
    width = int(np.ceil((lon1 - lon0 + 2 * mlon) / dlon))
    height = int(np.ceil((lat1 - lat0 + 2 * mlat) / dlat))
    return from_origin(lon0 - mlon, lat1 + mlat, dlon, dlat), width, height, dlon, dlat


def worldcover_grid(size: int) -> tuple[object, int, int]:
    """The real WorldCover grid (1/12000° pixels snapped to whole multiples) covering the optical extent."""
    left, top = ORIGIN
    lon0, lat0, lon1, lat1 = transform_bounds(
        CRS_OPTICAL, CRS_SAR, left, top - size * RES, left + size * RES, top, densify_pts=21
    )
    step = 1.0 / 12000.0
    west, north = np.floor(lon0 / step) * step, np.ceil(lat1 / step) * step
    width = int(np.ceil((lon1 - west) / step))
    height = int(np.ceil((north - lat0) / step))
    return from_origin(west, north, step, step), width, height


def sample_on_grid(values: np.ndarray, transform: object, width: int, height: int, shift_m=(0.0, 0.0)) -> np.ndarray:
    """Nearest-sample a 3 m UTM array at the centres of a geographic grid's pixels (optionally displaced)."""
    cols, rows = np.meshgrid(np.arange(width) + 0.5, np.arange(height) + 0.5)
    lon, lat = transform * (cols.ravel(), rows.ravel())
    x, y = warp_transform(CRS_SAR, CRS_OPTICAL, lon, lat)
    c = ((np.asarray(x) + shift_m[0] - ORIGIN[0]) / RES).astype(int)
    r = ((ORIGIN[1] - (np.asarray(y) + shift_m[1])) / RES).astype(int)
    size = values.shape[-1]
    inside = (c >= 0) & (c < size) & (r >= 0) & (r < size)
    out = np.full(values.shape[:-2] + (height * width,), np.nan)
    out[..., inside] = values[..., r[inside], c[inside]]
    return out.reshape(values.shape[:-2] + (height, width))


def make_sar(rng: np.random.Generator, cls: np.ndarray) -> tuple[np.ndarray, object]:
    size = cls.shape[0]
    table_db = np.array([CLASSES[n][2] for n in NAMES], dtype=np.float64)  # (classes, 2)
    lin = 10.0 ** (table_db[cls].transpose(2, 0, 1) / 10.0)
    lin *= 10.0 ** (1.2 * smooth_noise(rng, (size, size), 15) / 10.0)[None]  # ±1.2 dB soil moisture / structure
    lin = np.stack([ndimage.uniform_filter(b, size=3, mode="nearest") for b in lin])  # ≈ 10 m footprint
    transform, width, height, _, _ = geographic_grid(size, 10.0, margin_m=60.0)
    sar = sample_on_grid(lin, transform, width, height, SAR_SHIFT_M)
    # Outside the optical extent the land cover is unknown: continue with the mean grass/crop backscatter.
    for b in range(2):
        sar[b][np.isnan(sar[b])] = np.nanmedian(sar[b])
    enl = 4.4
    speckle = rng.gamma(enl, 1.0 / enl, sar.shape)
    return (10.0 * np.log10(sar * speckle)).astype(np.float32), transform


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parents[1] / "resources" / "sample")
    parser.add_argument("--size", type=int, default=512)
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    scene = make_scene(args.size)
    transform = from_origin(ORIGIN[0], ORIGIN[1], RES, RES)
    opt = {"crs": CRS_OPTICAL, "transform": transform, "dtype": "uint16", "nodata": 0, "predictor": 2}
    names = ("blue", "green", "red", "nir")
    for name, refl in (("cloudfree.tif", scene.clear), ("cloudy.tif", scene.cloudy)):
        dn = np.clip(np.rint(refl * 10000.0), 1, 10000).astype(np.uint16)
        _write(args.out / name, dn, descriptions=names, **opt)
    _write(args.out / "cloud_mask.tif", scene.mask[None], crs=CRS_OPTICAL, transform=transform, dtype="uint8")

    rng = np.random.default_rng(SEED + 1)
    sar, sar_transform = make_sar(rng, scene.classes)
    _write(args.out / "s1.tif", sar, crs=CRS_SAR, transform=sar_transform, dtype="float32", descriptions=("VV", "VH"))

    codes = np.array([CLASSES[n][0] for n in NAMES], dtype=np.float64)[scene.classes]
    lc_transform, lc_w, lc_h = worldcover_grid(args.size)
    lc = sample_on_grid(codes, lc_transform, lc_w, lc_h)
    lc = np.nan_to_num(lc, nan=0).astype(np.uint8)
    _write(args.out / "landcover.tif", lc[None], crs=CRS_SAR, transform=lc_transform, dtype="uint8", nodata=0)
    cover = scene.mask.mean()
    print(f"sample written to {args.out} (cloud + shadow mask cover {cover * 100:.1f} %)")


if __name__ == "__main__":
    main()
