#!/usr/bin/env python3
"""How far tiled inference is from one forward over the whole image, per tile overlap: the price of less overlap.

Why: on the CPU the network is the whole cost, and the tile overlap sets how much of it is recomputed — at tile
256, ``(256 / (256 − overlap))²`` = 1.31× the scene's pixels for overlap 32, 1.14× for 16 (plus the last row and
column of tiles running past the edge). Less overlap is faster but puts more weight on predictions made near a
tile's reflect-padded border. This measures that cost on real images with the bundled model: each image is
declouded once as a single tile (the reference: the network sees the whole image, padded as it pads itself) and
then with small tiles at several overlaps, through the real pipeline in fp32 on the CPU; reported per overlap:
MAE and max absolute difference to the reference (reflectance) over the image, the same and the 99.9th
percentile away from the image's border (16 px: there the last tiles see reflect padding beyond the edge where the
whole-image pass sees the conv's zero padding, a difference that no overlap removes), the same within 8 px of a
tile seam, and the recompute factor at tile 256. Small tiles (default 128) put many seams in
these 256–300² images; at the engine's tile 256 a scene has 4× fewer seam pixels for the same per-seam error.

Needs ../shared/data (the M3R-CR quartet and the two georeferenced SEN12MS-CR triplets) and the bundled weights.
Usage: ``.venv/bin/python benchmarks/bench_overlap.py [--tile 128] [--overlaps 0 8 16 32 48]``; one JSON line per
image and overlap on stdout.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
DATA = ROOT.parent / "shared" / "data"
BORDER = 16  # px: at the image's own edge tiles see reflected context where the whole-image pass sees none


def _images() -> list[tuple[str, Path, Path, tuple[int, ...]]]:
    """(name, optical, SAR, optical bands) for every real georeferenced image pair in ../shared/data."""
    out = []
    root = DATA / "m3rcr_sample" / "train"
    if root.is_dir():
        out.append(("m3rcr_fall_1_p_457", next((root / "planet_cloudy_fall").rglob("*.tif")),
                    next((root / "S1_fall").rglob("*.tif")), (1, 2, 3, 4)))  # fmt: skip
    glf = DATA / "sen12mscr_glfcr"
    for path in sorted((glf / "s2_cloudy").glob("*.tif")):
        out.append((path.stem, path, glf / "s1" / path.name, (2, 3, 4, 8)))
    return out


def _decloud(optical: Path, sar: Path, bands: tuple[int, ...], tile: int, overlap: int, out: Path,
             mode: str | None = None) -> np.ndarray:  # fmt: skip
    import rasterio

    from engine.config import RunConfig
    from engine.stream.accel import AccelConfig
    from engine.stream.pipeline import run

    extra = {} if mode is None else {"mode": mode}
    run(RunConfig(optical=optical, sar=sar, out=out, bands=bands, tile=tile, overlap=overlap, **extra),
        accel=AccelConfig(dtype="fp32"))  # fmt: skip
    with rasterio.open(out) as ds:
        return ds.read().astype(np.float64) / 10000.0


def _seam_mask(shape: tuple[int, int], tile: int, overlap: int, width: int = 8) -> np.ndarray:
    """Pixels within ``width`` of the middle of an overlap band (where two tiles' weights cross)."""
    from engine.stream.tiling import TileGrid

    h, w = shape
    grid = TileGrid(h, w, tile, overlap)
    mask = np.zeros(shape, dtype=bool)
    for k in range(1, max(grid.rows, grid.cols)):
        centre = k * grid.stride + overlap // 2
        if k < grid.rows:
            mask[max(0, centre - width) : centre + width, :] = True
        if k < grid.cols:
            mask[:, max(0, centre - width) : centre + width] = True
    return mask


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tile", type=int, default=128)
    parser.add_argument("--overlaps", type=int, nargs="+", default=[0, 8, 16, 32, 48])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--mode", default=None,
                        help="engine run --mode (default: the engine's default run); raw: the network's output "
                             "everywhere, so its seams are measured even where the default run keeps the estimate")
    args = parser.parse_args()
    import torch

    torch.set_num_threads(args.threads)
    images = _images()
    if not images:
        raise SystemExit(f"no real images under {DATA}")
    with tempfile.TemporaryDirectory(prefix="aligncr-bench-overlap-") as tmp:
        for name, optical, sar, bands in images:
            import rasterio

            with rasterio.open(optical) as ds:
                shape = (ds.height, ds.width)
            whole = -(-max(shape) // 32) * 32  # one tile: the network sees the whole image, padded as it pads itself
            ref = _decloud(optical, sar, bands, whole, 0, Path(tmp) / f"{name}-whole.tif", args.mode)
            for overlap in args.overlaps:
                pred = _decloud(optical, sar, bands, args.tile, overlap, Path(tmp) / f"{name}-{overlap}.tif", args.mode)
                diff = np.abs(pred - ref)
                inner = np.zeros(shape, dtype=bool)  # the image border differs for another reason (see below)
                inner[BORDER:-BORDER, BORDER:-BORDER] = True
                seams = _seam_mask(shape, args.tile, overlap) & inner
                print(json.dumps({
                    "image": name, "mode": args.mode or "default", "size": list(shape), "tile": args.tile,
                    "overlap": overlap,
                    "mae": float(diff.mean()), "max": float(diff.max()), "inner_mae": float(diff[:, inner].mean()),
                    "inner_p999": float(np.quantile(diff[:, inner], 0.999)), "inner_max": float(diff[:, inner].max()),
                    "seam_mae": float(diff[:, seams].mean()), "seam_max": float(diff[:, seams].max()),
                    "recompute_at_tile_256": round((256 / (256 - overlap)) ** 2, 3),
                }), flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
