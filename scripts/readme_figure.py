"""Draw the README's before/after picture: a real cloudy Sentinel-2 scene, the engine's output, a clear reference.

The scene is the SSL4EO-S12 sample of ``../shared/data`` (CC-BY-4.0; location 0000200, irrigated cropland in Punjab,
Pakistan): Sentinel-2 L1C of 2020-08-23 with real clouds, Sentinel-1 GRD of 2020-09-03 (11 days later), and the
clear L1C of 2020-06-04 (another season) as the reference. M3R-CR's PlanetScope imagery (academic-only) and
Sen1Floods11 (no licence) must never be pictured, so they are not offered here.

What it does, as a user would:
1. stacks B2, B3, B4, B8 of each Sentinel-2 date into one GeoTIFF (uint16 DN, 0 = no data) reprojected from
   EPSG:4326 onto UTM 43N at 10 m (the engine wants a projected optical grid), and VV, VH of the Sentinel-1 scene
   into one GeoTIFF as downloaded (EPSG:4326, dB; the engine reprojects it onto the optical grid);
2. runs ``python -m engine run --optical cloudy.tif --sar s1.tif --out declouded.tif`` with the engine's DEFAULT
   options (only ``--threads``, which changes speed, not pixels) in a separate process;
3. draws cloudy | output | reference side by side under ONE 2–98 % stretch per band taken from the cloudy date's
   clear pixels (bright pixels, grown by a few pixels, left out), so a bright cloud does not wash out the land and
   a colour cast stays visible (the convention of ``training/figures.py``).

Re-run it whenever the engine's default model changes:

    .venv/bin/python scripts/readme_figure.py                 # → docs/readme_before_after.png
    .venv/bin/python scripts/readme_figure.py --keep runs/fig  # keep the GeoTIFFs it wrote and the engine's output
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import rasterio
from rasterio.warp import Resampling, calculate_default_transform, reproject

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data" / "ssl4eo_s12_sample" / "SSL4EO-S12"
OUT = ROOT / "docs" / "readme_before_after.png"
CLOUDY = "s2c/0000200/20200823T054639_20200823T055618_T43RCP"
CLEAR = "s2c/0000200/20200604T054639_20200604T054831_T43RCP"
SAR = "s1/0000200/S1A_IW_GRDH_1SDV_20200903T131212_20200903T131237_034195_03F8F5_AC1C"
UTM = "EPSG:32643"  # the scene's Sentinel-2 tile 43RCP
BGRN = ("B2", "B3", "B4", "B8")
CAPTION = (
    "Contains modified Copernicus Sentinel data 2020. Scene: SSL4EO-S12 (Wang et al. 2023), CC-BY-4.0, "
    "location 0000200 (Punjab, Pakistan). Sentinel-2 L1C B4/B3/B2, Sentinel-1 GRD VV/VH. "
    "One 2-98 % stretch per band from the cloudy date's clear pixels."
)


def _stack(files: list[Path]) -> tuple[np.ndarray, dict]:
    with rasterio.open(files[0]) as ds:
        profile = ds.profile
    return np.stack([rasterio.open(f).read(1) for f in files]), profile


def write_optical(folder: Path, path: Path, when: str) -> Path:
    """B2, B3, B4, B8 of one Sentinel-2 product folder → one uint16 GeoTIFF on UTM 43N at 10 m (0 = no data)."""
    data, profile = _stack([folder / f"{b}.tif" for b in BGRN])
    h, w = data.shape[1:]
    bounds = rasterio.transform.array_bounds(h, w, profile["transform"])
    transform, width, height = calculate_default_transform(profile["crs"], UTM, w, h, *bounds, resolution=10.0)
    out = np.zeros((len(BGRN), height, width), np.uint16)
    for b in range(len(BGRN)):
        reproject(data[b], out[b], src_transform=profile["transform"], src_crs=profile["crs"], src_nodata=0,
                  dst_transform=transform, dst_crs=UTM, dst_nodata=0, resampling=Resampling.bilinear)  # fmt: skip
    with rasterio.open(path, "w", driver="GTiff", width=width, height=height, count=len(BGRN), dtype="uint16",
                       crs=UTM, transform=transform, nodata=0) as ds:  # fmt: skip
        ds.write(out)
        ds.update_tags(ACQUISITIONDATETIME=when)
        for i, name in enumerate(("blue", "green", "red", "nir"), 1):
            ds.set_band_description(i, name)
    return path


def write_sar(folder: Path, path: Path, when: str) -> Path:
    """VV, VH (dB) of the Sentinel-1 product folder → one 2-band GeoTIFF, its own grid and CRS (EPSG:4326)."""
    data, profile = _stack([folder / "VV.tif", folder / "VH.tif"])
    with rasterio.open(path, "w", driver="GTiff", width=data.shape[2], height=data.shape[1], count=2,
                       dtype="float32", crs=profile["crs"], transform=profile["transform"]) as ds:  # fmt: skip
        ds.write(data.astype(np.float32))
        ds.update_tags(ACQUISITIONDATETIME=when)
    return path


def run_engine(optical: Path, sar: Path, out: Path, threads: int) -> None:
    """``python -m engine run`` with the default options, in its own process, as a user runs it."""
    cmd = [sys.executable, "-m", "engine", "run", "--optical", str(optical), "--sar", str(sar), "--out", str(out),
           "--threads", str(threads)]  # fmt: skip
    print("+", " ".join(cmd), flush=True)
    subprocess.run(cmd, cwd=ROOT, check=True)


def read_reflectance(path: Path) -> np.ndarray:
    """(4, H, W) reflectance, NaN where the file has no data."""
    with rasterio.open(path) as ds:
        data = ds.read().astype(np.float64)
        valid = ds.read_masks(1) > 0
    return np.where(valid, data / 10_000.0, np.nan)


def clear_pixels(cloudy: np.ndarray, threshold: float = 0.2, grow: int = 4) -> np.ndarray:
    """(H, W) True where the cloudy image looks clear: mean visible reflectance under ``threshold``, the bright
    pixels grown by ``grow`` px (the haze at a cloud's edge). Only used to choose the stretch."""
    from scipy.ndimage import binary_dilation

    finite = np.isfinite(cloudy).all(axis=0)
    bright = np.where(finite, np.nan_to_num(cloudy[:3]).mean(axis=0) > threshold, False)
    return finite & ~binary_dilation(bright, iterations=grow)


def stretch(images: list[np.ndarray], basis: np.ndarray, clear: np.ndarray) -> list[np.ndarray]:
    """Each (4, H, W) image as (H, W, 3) RGB in [0, 1] under ONE per-band 2–98 % stretch of ``basis``'s clear pixels."""
    rgb = [2, 1, 0]
    lims = [np.percentile(basis[b][clear], [2, 98]) for b in rgb]
    out = []
    for img in images:
        bands = [(img[b] - lo) / max(hi - lo, 1e-6) for b, (lo, hi) in zip(rgb, lims, strict=True)]
        out.append(np.nan_to_num(np.clip(np.stack(bands, axis=-1), 0, 1), nan=1.0))
    return out


def draw(panels: list[tuple[str, np.ndarray]], path: Path, caption: str) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(panels), figsize=(3.3 * len(panels), 3.9))
    for ax, (title, rgb) in zip(axes, panels, strict=True):
        ax.imshow(rgb, interpolation="nearest")
        ax.set_title(title, fontsize=9)
        ax.set_axis_off()
    fig.text(0.5, 0.02, caption, ha="center", va="bottom", fontsize=6.5, wrap=True)
    fig.tight_layout(rect=(0, 0.07, 1, 1))
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, default=DATA, help="the SSL4EO-S12 folder of ../shared/data")
    parser.add_argument("--out", type=Path, default=OUT, help="the PNG to write")
    parser.add_argument("--threads", type=int, default=1, help="engine --threads (speed only)")
    parser.add_argument("--keep", type=Path, help="write the scene's GeoTIFFs and the output here and keep them")
    args = parser.parse_args(argv)
    if not args.data.is_dir():
        print(f"{args.data} not found: the picture needs the SSL4EO-S12 sample of ../shared/data", file=sys.stderr)
        return 1
    with tempfile.TemporaryDirectory() as tmp:
        work = args.keep or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        cloudy_tif = write_optical(args.data / CLOUDY, work / "cloudy_20200823.tif", "2020-08-23T05:46:39Z")
        clear_tif = write_optical(args.data / CLEAR, work / "clear_20200604.tif", "2020-06-04T05:46:39Z")
        sar_tif = write_sar(args.data / SAR, work / "s1_20200903.tif", "2020-09-03T13:12:12Z")
        out_tif = work / "declouded.tif"
        run_engine(cloudy_tif, sar_tif, out_tif, args.threads)
        cloudy, output, clear = (read_reflectance(p) for p in (cloudy_tif, out_tif, clear_tif))
    ok = clear_pixels(cloudy)
    print(f"stretch from {ok.mean():.0%} of the cloudy date's pixels (the clear ones)")
    images = stretch([cloudy, output, clear], cloudy, ok)
    titles = ["cloudy Sentinel-2, 2020-08-23", "engine output (default options)", "clear reference, 2020-06-04"]
    draw(list(zip(titles, images, strict=True)), args.out, CAPTION)
    print(args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
