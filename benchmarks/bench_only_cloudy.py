#!/usr/bin/env python3
"""What --only-cloudy saves: the same generated scene declouded whole and with only its cloud replaced.

With --only-cloudy a tile whose pixels all keep the input (no cloud within the feather) skips the network, so the
cost follows the cloud cover rather than the scene size. The scene is bench_inference's (4-band uint16 optical at
3 m, SAR in EPSG:4326; one bright, flat Gaussian cloud left of centre). Variants: the whole output; --only-cloudy
without a mask (the clouds :mod:`engine.align.cloudmask` detects on that scene); --only-cloudy with generated masks of
clumped clouds (random disks of 30–120 px radius, like cumulus fields) covering each ``--fractions`` share of the
scene. Each variant runs once after a 512² warm-up in the same process; one JSON line per variant on stdout:
seconds, Mpix/s, tiles through the network, cloud share.

    .venv/bin/python benchmarks/bench_only_cloudy.py --size 2048
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

from bench_inference import generate

ROOT = Path(__file__).resolve().parents[1]


def _clumped_mask(optical: Path, path: Path, fraction: float, seed: int = 0) -> tuple[Path, float]:
    """A 1-band mask on the optical grid: random disks until ``fraction`` of the pixels are cloud."""
    import numpy as np
    import rasterio

    rng = np.random.default_rng(seed)
    with rasterio.open(optical) as ds:
        profile = {**ds.profile, "count": 1, "dtype": "uint8", "nodata": None, "predictor": 1}
        h, w = ds.height, ds.width
    cloud = np.zeros((h, w), dtype=bool)
    while cloud.mean() < fraction:
        r = int(rng.integers(30, 121))
        cy, cx = int(rng.integers(0, h)), int(rng.integers(0, w))
        y0, y1, x0, x1 = max(0, cy - r), min(h, cy + r + 1), max(0, cx - r), min(w, cx + r + 1)
        yy, xx = np.ogrid[y0:y1, x0:x1]
        cloud[y0:y1, x0:x1] |= (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(cloud[None].astype(np.uint8))
    return path, float(cloud.mean())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=2048, help="scene side in pixels (default 2048)")
    parser.add_argument("--feather", type=int, default=8, help="--cloud-feather (default 8)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--fractions", type=float, nargs="*", default=[0.05, 0.2, 0.5],
                        help="cloud shares of the generated masks (default 0.05 0.2 0.5)")  # fmt: skip
    args = parser.parse_args()
    sys.path.insert(0, str(ROOT))
    import numpy as np
    import rasterio

    from engine.align.cloudmask import detect_clouds
    from engine.config import RunConfig
    from engine.stream.pipeline import run

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        opt, sar = generate(args.size, folder / "scene")
        warm_opt, warm_sar = generate(512, folder / "warmup")
        with rasterio.open(opt) as ds:  # the detected share, for the record (whole image: fine at bench sizes)
            cloud_share = float(detect_clouds(ds.read().astype(np.float32) / 10_000).mean())
        run(RunConfig(optical=warm_opt, sar=warm_sar, out=folder / "warm.tif", device=args.device))
        only = {"only_cloudy": True, "cloud_feather": args.feather}
        variants = [("whole", {}, None), ("only-cloudy, detected", only, cloud_share)]
        for f in args.fractions:
            mask, share = _clumped_mask(opt, folder / f"mask_{f}.tif", f)
            variants.append((f"only-cloudy, mask {f:.0%}", {**only, "mask": mask}, share))
        for name, extra, cloud_share in variants:
            t0 = time.perf_counter()
            result = run(RunConfig(optical=opt, sar=sar, out=folder / f"{name}.tif", device=args.device, **extra))
            seconds = time.perf_counter() - t0
            print(json.dumps({
                "variant": name, "size": args.size, "seconds": round(seconds, 2),
                "mpix_per_s": round(args.size**2 / seconds / 1e6, 3), "network_tiles": result.network_tiles,
                "total_tiles": result.total_tiles,
                "cloud_share": None if cloud_share is None else round(cloud_share, 3),
                "model": result.model, "device": result.device,
            }), flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
