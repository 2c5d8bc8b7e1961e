"""Whole output vs --only-cloudy (hard edge, feathered) on real SEN12MS-CR triplets, scored against the cloud-free
reference inside the cloud mask, outside it and overall.

Why: --only-cloudy keeps the clear pixels as measured; this shows what that costs or gains against the reference
(which was acquired on another date, so "outside clouds" scores the date difference as much as the method).
The triplets carry no georeferencing, so each is copied to a temporary GeoTIFF with a nominal UTM grid (10 m).

    python benchmarks/compare_only_cloudy.py --ids 4438 6553 746     # the bundled model's held-out samples
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import numpy as np
import rasterio
from rasterio.transform import from_origin

from engine.config import RunConfig
from engine.sources.masks import cloud_mask_from_bands
from engine.stream.pipeline import run

BANDS = (2, 3, 4, 8)  # Sentinel-2 B2, B3, B4, B8 in the 13-band L1C files
VARIANTS = {"model everywhere": {}, "only-cloudy, feather 0": {"only_cloudy": True, "cloud_feather": 0},
            "only-cloudy, feather 8": {"only_cloudy": True, "cloud_feather": 8}}  # fmt: skip


def _georeferenced(src: Path, dst: Path) -> Path:
    with rasterio.open(src) as ds:
        profile = {**ds.profile, "crs": "EPSG:32632", "transform": from_origin(500_000, 5_000_000, 10, 10)}
        with rasterio.open(dst, "w", **profile) as out:
            out.write(ds.read())
    return dst


def _reflectance(path: Path) -> np.ndarray:
    with rasterio.open(path) as ds:
        return np.clip(ds.read(list(BANDS)).astype(np.float64) / 10_000, 0, 1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    default_data = Path(__file__).resolve().parents[2] / "shared/data/sen12mscr_triplets"
    parser.add_argument("--data", type=Path, default=default_data, help="SEN12MS-CR triplets folder")
    parser.add_argument("--ids", nargs="+", default=["4438", "6553", "746"])
    parser.add_argument("--weights", type=Path, help="default: the bundled aligncr-lite")
    args = parser.parse_args()
    errors: dict[tuple[str, str], list[np.ndarray]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for sid in args.ids:
            paths = {k: _georeferenced(args.data / k / f"{sid}.tif", Path(tmp) / f"{k}_{sid}.tif")
                     for k in ("s2_cloudy", "s1", "cloudmask")}  # fmt: skip
            with rasterio.open(paths["cloudmask"]) as ds:
                cloud = cloud_mask_from_bands(ds.read())
            ref = _reflectance(args.data / "s2_cloudfree" / f"{sid}.tif")
            outputs = {"input": _reflectance(paths["s2_cloudy"])}
            for name, kw in VARIANTS.items():
                out = Path(tmp) / f"out_{sid}.tif"
                run(RunConfig(optical=paths["s2_cloudy"], sar=paths["s1"], mask=paths["cloudmask"], out=out,
                              bands=BANDS, weights=args.weights, **kw))  # fmt: skip
                outputs[name] = _reflectance(out)
            for name, pred in outputs.items():
                for region, sel in (("all", np.ones_like(cloud)), ("cloud", cloud), ("clear", ~cloud)):
                    errors.setdefault((name, region), []).append((pred - ref)[:, sel].ravel())
    for (name, region), parts in errors.items():
        e = np.concatenate(parts)
        psnr = 10 * np.log10(1.0 / float((e**2).mean()))
        print(json.dumps({"output": name, "pixels": region, "mae": round(float(np.abs(e).mean()), 4),
                          "psnr_db": round(psnr, 2), "samples": args.ids}))  # fmt: skip


if __name__ == "__main__":
    main()
