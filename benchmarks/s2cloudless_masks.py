"""s2cloudless cloud masks for the 13-band Sentinel-2 L1C pairs that ``measure_masks.py`` scores (issue 29's trial).

s2cloudless (Sentinel Hub; LightGBM on 10 of the 13 L1C bands; CC-BY-SA-4.0, and its package imports sentinelhub)
is NOT an engine dependency: this script runs in a scratch environment of its own and writes one ``<sample id>.npy``
(True = cloud) per sample and setting, which ``measure_masks.py --external NAME=DIR`` scores beside the engine's
sources on the same pixels::

    python3 -m venv /tmp/s2c && /tmp/s2c/bin/pip install s2cloudless numpy rasterio
    /tmp/s2c/bin/python benchmarks/s2cloudless_masks.py --data ../shared/data --out /tmp/s2c-masks
    .venv/bin/python benchmarks/measure_masks.py --data ../shared/data \\
        --external "s2cloudless 10 m (0.4, 22, 11)=/tmp/s2c-masks/recommended" ...

Settings, fixed before scoring (none tuned here): ``recommended`` = threshold 0.4, probabilities averaged over a disk
of 22 px, mask dilated by 11 px (the package's advice for 10 m; its 0.4 / 4 / 2 defaults are for 60 m);
``undilated`` = the same without the dilation (the engine does not grow its masks: measured, growing buys nothing);
``triplet-masks`` = threshold 0.7, 4, 2, the settings of the script (Oriolac/cloud-removal ``cloudmask/main.py``) that
made the cloud masks shipped with ``sen12mscr_triplets`` — scoring it shows how circular the IoU with those masks is.
Bands with a coarser grid (SSL4EO-S12's 20 m and 60 m files) are upsampled to 10 m bilinearly, as Earth Engine's
s2cloudless layer does. Standalone on purpose: it imports nothing of the engine.
"""

from __future__ import annotations

import argparse
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import rasterio
from rasterio.enums import Resampling

S2_BANDS = ("B1", "B2", "B3", "B4", "B5", "B6", "B7", "B8", "B8A", "B9", "B10", "B11", "B12")  # SEN12MS-CR's order
SETTINGS = {"recommended": (0.4, 22, 11), "undilated": (0.4, 22, 0), "triplet-masks": (0.7, 4, 2)}
SSL4EO = "ssl4eo_s12_sample/SSL4EO-S12/s2c/0000200/20200823T054639_20200823T055618_T43RCP"  # the cloudy L1C date


def _stack(path: Path) -> np.ndarray:
    with rasterio.open(path) as ds:
        return ds.read().astype(np.float32) / 10000.0


def _ssl4eo(folder: Path) -> np.ndarray:
    """The 13 single-band files on the 10 m grid of B2 (bilinear for the 20 m and 60 m bands)."""
    with rasterio.open(folder / "B2.tif") as ds:
        shape = ds.shape
    bands = []
    for name in S2_BANDS:
        with rasterio.open(folder / f"{name}.tif") as ds:
            bands.append(ds.read(1, out_shape=shape, resampling=Resampling.bilinear).astype(np.float32))
    return np.stack(bands) / 10000.0


def samples(root: Path) -> Iterator[tuple[str, np.ndarray]]:
    """(sample id as measure_masks.py names it, 13-band reflectance) of every L1C cloudy image with all bands."""
    for path in sorted((root / "sen12mscr_triplets" / "s2_cloudy").glob("*.tif")):
        yield path.stem, _stack(path)
    for path in sorted((root / "sen12mscr_s2pairs_nosar" / "s2_cloudy").glob("*.tif")):
        yield path.stem, _stack(path)
    for path in sorted((root / "sen12mscr_glfcr" / "s2_cloudy").glob("*.tif")):
        yield path.stem, _stack(path)
    if (root / SSL4EO).is_dir():
        yield Path(SSL4EO).name, _ssl4eo(root / SSL4EO)


def main(argv: list[str] | None = None) -> int:
    from s2cloudless import S2PixelCloudDetector

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=Path("../shared/data"))
    parser.add_argument("--out", type=Path, required=True, help="one folder per setting is written here")
    args = parser.parse_args(argv)
    detectors = {name: S2PixelCloudDetector(threshold=t, average_over=a, dilation_size=d, all_bands=True)
                 for name, (t, a, d) in SETTINGS.items()}  # fmt: skip
    for name in SETTINGS:
        (args.out / name).mkdir(parents=True, exist_ok=True)
    for sid, image in samples(args.data):
        prob = detectors["recommended"].get_cloud_probability_maps(image.transpose(1, 2, 0)[None])
        for name, det in detectors.items():
            np.save(args.out / name / f"{sid}.npy", det.get_mask_from_prob(prob)[0] > 0)
        print(f"{sid}: cloud probability > 0.4 on {100 * (prob > 0.4).mean():.1f} % of the pixels")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
