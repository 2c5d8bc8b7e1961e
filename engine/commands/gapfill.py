"""``python -m engine gapfill --optical T.tif --optical-prev A.tif --optical-next B.tif [--mask M.tif] --out F.tif``
(the names ``engine run`` uses; ``--cloudy``/``--prev``/``--next`` still work for one release, deprecated).

Linear temporal gap-filling (Cresson et al. 2022, §3.3; maths in :mod:`engine.gapfill`) of a cloudy image from
two cloud-free images acquired before and after it, on raster files. It needs no SAR and no weights: it is the
deterministic baseline the paper compares its networks with, and a usable product when clear dates bracket the
cloudy one closely.

* The output is on the cloudy image's grid, with its bands, dtype and nodata; ``--prev``/``--next`` (same band
  count) and ``--mask`` are warped onto that grid (nearest) when they are on another one.
* With ``--mask`` (1 band, non-zero = cloud, or a Planet UDM2 asset) only the cloudy pixels are replaced; without
  it, the whole image is interpolated, as in the paper. A pixel that ``--prev`` or ``--next`` does not cover keeps
  the cloudy value (counted in the summary).
* Dates come from each file's tags (ACQUISITIONDATETIME / TIFFTAG_DATETIME, :func:`read_acquisition_date`) unless
  given with ``--date-prev/--date/--date-next``. The output is tagged with the cloudy image's date.

The registry's ``gapfill`` model is the same maths behind the temporal model contract.
"""

from __future__ import annotations

import argparse
import json
import sys
from contextlib import ExitStack
from datetime import datetime
from pathlib import Path

import numpy as np
from rasterio.windows import Window

from engine.align import AlignedReader, Grid, bounds_overlap
from engine.commands import add_renamed_argument, datetime_arg
from engine.errors import InputError
from engine.gapfill import interpolation_weight, read_acquisition_date
from engine.masks import cloud_mask_from_bands
from engine.normalise import denormalise_optical
from engine.progress import Progress
from engine.raster import open_raster, require_georeferenced
from engine.report.geotiff import atomic_geotiff, layer_profile
from engine.writer import check_output_path

NAME = "gapfill"
HELP = "fill a cloudy image by linear interpolation in time between cloud-free images before and after it"
ROWS_PER_BLOCK = 512


def add_arguments(parser: argparse.ArgumentParser) -> None:
    for new, old, help_text in (("--optical", "--cloudy", "the cloudy optical image (defines the output grid)"),
                                ("--optical-prev", "--prev", "cloud-free image acquired before it"),
                                ("--optical-next", "--next", "cloud-free image acquired after it")):  # fmt: skip
        add_renamed_argument(parser, new, old, required=True, type=Path, dest=old.lstrip("-"), metavar="FILE",
                             help=help_text)
    parser.add_argument("--mask", type=Path, help="cloud mask of the cloudy image: fill only those pixels")
    parser.add_argument("--out", required=True, type=Path, help="output GeoTIFF")
    for flag in ("--date-prev", "--date", "--date-next"):
        parser.add_argument(flag, type=datetime_arg, help="acquisition time (ISO 8601) overriding the file's tags")
    parser.add_argument("--json", action="store_true", help="print a JSON summary on stdout")


def _date(given: datetime | None, path: Path) -> datetime:
    return given if given is not None else read_acquisition_date(path)


def gapfill_rasters(
    cloudy: Path,
    prev: Path,
    next_: Path,
    out: Path,
    mask: Path | None = None,
    dates: tuple[datetime | None, datetime | None, datetime | None] = (None, None, None),
    progress: Progress | None = None,
) -> dict:
    """Write the gap-filled image; returns a summary (dates, weight, filled and unfillable pixel counts)."""
    progress = progress or Progress()
    check_output_path(out, [cloudy, prev, next_, mask])
    t_prev, t, t_next = _date(dates[0], prev), _date(dates[1], cloudy), _date(dates[2], next_)
    weight = float(interpolation_weight(t_prev, t, t_next))
    with ExitStack() as stack:
        ds = stack.enter_context(open_raster(cloudy, "cloudy image"))
        require_georeferenced(ds, "cloudy image")
        grid = Grid.of(ds)
        bands = tuple(range(1, ds.count + 1))
        readers = []
        for role, path in (("previous image", prev), ("next image", next_)):
            src = stack.enter_context(open_raster(path, role))
            require_georeferenced(src, role)
            if src.count != ds.count:
                raise InputError(f"{role} has {src.count} bands, the cloudy image {ds.count}: {path}")
            if not bounds_overlap(src, grid):
                raise InputError(f"{role} does not overlap the cloudy image: {path}")
            readers.append(stack.enter_context(AlignedReader(src, grid, bands)))
        mask_reader = None
        if mask is not None:
            msrc = stack.enter_context(open_raster(mask, "cloud mask"))
            require_georeferenced(msrc, "cloud mask")
            mask_reader = stack.enter_context(AlignedReader(msrc, grid, tuple(range(1, msrc.count + 1))))
        profile = layer_profile(width=ds.width, height=ds.height, crs=ds.crs, transform=ds.transform,
                                dtype=ds.dtypes[0], count=ds.count, nodata=ds.nodata)
        filled = unfillable = 0
        with atomic_geotiff(out, profile) as dst:
            for row in range(0, ds.height, ROWS_PER_BLOCK):
                progress.check_cancelled()
                win = Window(0, row, ds.width, min(ROWS_PER_BLOCK, ds.height - row))
                cur = ds.read(window=win).astype(np.float64)
                a, b = (r.read(win).astype(np.float64) for r in readers)
                estimate = a + (b - a) * weight
                if mask_reader is None:
                    todo = np.ones(cur.shape[1:], dtype=bool)
                else:
                    todo = cloud_mask_from_bands(np.nan_to_num(mask_reader.read(win), nan=0.0))
                ok = np.isfinite(estimate).all(axis=0)
                fill = todo & ok
                filled += int(fill.sum())
                unfillable += int((todo & ~ok).sum())
                result = np.where(fill[None], estimate, cur)
                dst.write(denormalise_optical(result, scale=1.0, dtype=ds.dtypes[0]), window=win)
                progress.update((row + win.height) / ds.height, "gap-filling")
            dst.update_tags(TIFFTAG_DATETIME=t.strftime("%Y:%m:%d %H:%M:%S"), ACQUISITIONDATETIME=t.isoformat(),
                            GAPFILL_PREV=t_prev.isoformat(), GAPFILL_NEXT=t_next.isoformat())
    return {"output": str(out), "t_prev": t_prev.isoformat(), "t": t.isoformat(), "t_next": t_next.isoformat(),
            "weight": weight, "filled_pixels": filled, "unfillable_pixels": unfillable}


def run(args: argparse.Namespace) -> int:
    summary = gapfill_rasters(args.cloudy, args.prev, args.next, args.out, args.mask,
                              (args.date_prev, args.date, args.date_next))
    if args.json:
        json.dump(summary, sys.stdout)
        sys.stdout.write("\n")
    else:
        print(f"gap-filled {summary['filled_pixels']} pixels (weight {summary['weight']:.3f} on the next image) "
              f"→ {summary['output']}")
        if summary["unfillable_pixels"]:
            print(f"warning: {summary['unfillable_pixels']} pixels kept their cloudy value: the previous or next "
                  "image has no data there", file=sys.stderr)
    return 0
