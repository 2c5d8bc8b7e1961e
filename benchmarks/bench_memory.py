#!/usr/bin/env python3
"""Peak memory of the engine's raster path versus scene size: it must stay flat (≤ 20 % growth, 4096² → 16384²).

For each size a synthetic scene is generated with windowed writes into a temporary folder (optical: 4-band
uint16, 3 m, EPSG:32632, DEFLATE; SAR: 2-band float32 dB at ~10 m in EPSG:4326, so the reprojection path runs),
then ``engine.stream.pipeline.run`` decloudes it with the ``identity`` model in a *fresh* Python process whose peak
resident set size (``resource.getrusage(RUSAGE_SELF).ru_maxrss``) is reported. Generation runs in its own process
too, so only the engine is measured. The 16384² optical image is ~2 GiB uncompressed (~0.3-0.6 GiB compressed):
check ``df -h /tmp`` first, or pass ``--workdir``.

Usage: ``.venv/bin/python benchmarks/bench_memory.py [--sizes 4096 16384] [--workdir DIR] [--tile 256]``.
Not part of the test suite (minutes of CPU).
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from harness import add_child_arguments, generate_in_child

ROOT = Path(__file__).resolve().parents[1]
ORIGIN = (500_000.0, 5_100_000.0)
RES = 3.0
STRIP = 512


def generate(size: int, folder: Path) -> tuple[Path, Path]:
    """Write a size² optical + matching SAR strip by strip (memory O(size × STRIP))."""
    import numpy as np
    import rasterio
    from rasterio.transform import from_origin
    from rasterio.warp import transform_bounds

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    opt_path, sar_path = folder / "optical.tif", folder / "sar.tif"
    profile = {"driver": "GTiff", "tiled": True, "blockxsize": 512, "blockysize": 512, "compress": "deflate",
               "BIGTIFF": "IF_SAFER"}  # fmt: skip
    transform = from_origin(*ORIGIN, RES, RES)
    x = np.arange(size, dtype=np.float32)
    with rasterio.open(opt_path, "w", width=size, height=size, count=4, dtype="uint16", crs="EPSG:32632",
                       transform=transform, nodata=0, predictor=2, **profile) as ds:  # fmt: skip
        for row in range(0, size, STRIP):
            h = min(STRIP, size - row)
            y = np.arange(row, row + h, dtype=np.float32)[:, None]
            base = 2500 + 1500 * np.sin(x / 97.0) * np.cos(y / 131.0)
            strip = np.stack([base * f for f in (0.5, 0.7, 0.8, 1.6)])
            strip += rng.integers(0, 40, strip.shape)
            ds.write(strip.astype("uint16"), window=rasterio.windows.Window(0, row, size, h))
    left, bottom, right, top = transform_bounds("EPSG:32632", "EPSG:4326", *ds.bounds, densify_pts=21)
    step = 9e-5
    sw, sh = int((right - left) / step) + 2, int((top - bottom) / step) + 2
    with rasterio.open(sar_path, "w", width=sw, height=sh, count=2, dtype="float32", crs="EPSG:4326",
                       transform=from_origin(left - step, top + step, step, step), predictor=3,
                       **profile) as ds:  # fmt: skip
        xs = np.arange(sw, dtype=np.float32)
        for row in range(0, sh, STRIP):
            h = min(STRIP, sh - row)
            y = np.arange(row, row + h, dtype=np.float32)[:, None]
            vv = -12 + 4 * np.sin(xs / 41.0) * np.cos(y / 53.0)
            strip = np.stack([vv, vv - 7]).astype("float32")
            ds.write(np.round(strip, 1), window=rasterio.windows.Window(0, row, sw, h))
    return opt_path, sar_path


def measure(folder: Path, tile: int) -> dict:
    """Run the engine once (this process must be fresh) and return its timing and peak RSS."""
    sys.path.insert(0, str(ROOT))
    from engine.config import RunConfig
    from engine.stream.pipeline import run

    t0 = time.perf_counter()
    result = run(
        RunConfig(
            optical=folder / "optical.tif",
            sar=folder / "sar.tif",
            out=folder / "out.tif",
            model="identity",
            device="cpu",
            tile=tile,
        )
    )
    seconds = time.perf_counter() - t0
    peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux reports KiB
    mib = 1024.0 * 1024.0
    return {"width": result.width, "tiles": result.total_tiles, "seconds": round(seconds, 1),
            "peak_rss_mib": round(peak_mib, 1), "input_mib": round((folder / "optical.tif").stat().st_size / mib, 1),
            "output_mib": round((folder / "out.tif").stat().st_size / mib, 1)}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[4096, 16384])
    parser.add_argument("--workdir", type=Path, default=None, help="scratch folder (default: a temp dir in /tmp)")
    parser.add_argument("--tile", type=int, default=256)
    add_child_arguments(parser, ["generate", "measure"])
    args = parser.parse_args()
    if args.child == "generate":
        generate(args.size, args.folder)
        return
    if args.child == "measure":
        print(json.dumps(measure(args.folder, args.tile)))
        return

    work = Path(tempfile.mkdtemp(prefix="aligncr-bench-", dir=args.workdir))
    rows = []
    try:
        for size in args.sizes:
            folder = work / str(size)
            gen = generate_in_child(__file__, size, folder)
            out = subprocess.run([sys.executable, __file__, "--child", "measure", "--folder", str(folder), "--tile",
                                  str(args.tile)], check=True, capture_output=True, text=True)  # fmt: skip
            row = json.loads(out.stdout.strip().splitlines()[-1])
            row["generate_seconds"] = round(gen, 1)
            rows.append(row)
            print(f"{size}²: {row['tiles']} tiles in {row['seconds']} s, peak RSS {row['peak_rss_mib']} MiB "
                  f"(scene generated in {row['generate_seconds']} s; optical {row['input_mib']} MiB, output "
                  f"{row['output_mib']} MiB on disk)", flush=True)  # fmt: skip
            shutil.rmtree(folder, ignore_errors=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    if len(rows) >= 2:
        growth = rows[-1]["peak_rss_mib"] / rows[0]["peak_rss_mib"] - 1.0
        verdict = "OK" if growth <= 0.20 else "FAIL"
        print(f"peak RSS growth {args.sizes[0]}² → {args.sizes[-1]}²: {growth * 100:+.1f} % ({verdict}, limit +20 %)")
        if growth > 0.20:
            sys.exit(1)


if __name__ == "__main__":
    main()
