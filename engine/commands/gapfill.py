"""``python -m engine gapfill`` — deprecated: an alias of ``engine run --model gapfill`` for one release.

Linear temporal gap-filling (Cresson et al. 2022, §3.3; maths in :mod:`engine.models.gapfill_arch`) of a cloudy image
from two cloud-free images acquired before and after it. It used to be a second raster path beside the pipeline; it is
now the registry's ``gapfill`` model run by :func:`engine.stream.pipeline.run` — one data path: the same alignment,
nodata, provenance tags, atomic output and progress as every run. The command stays for scripts written against it, says
it is deprecated on stderr, and maps its options onto ``run``'s:

* ``--optical`` (was ``--cloudy``), ``--optical-prev`` (was ``--prev``), ``--optical-next`` (was ``--next``),
  ``--mask``, ``--out``, ``--date-prev/--date/--date-next`` as in ``run``; every band of the cloudy image is filled
  (``--bands`` = all of them), and ``--prev``/``--next`` must have as many bands;
* ``--json`` prints the summary it always printed (dates, the weight on the next image, filled and unfillable pixel
  counts).

What the pipeline does differently from the old path: the filled values are clipped to the optical range the
engine normalises to (reflectance [0, 1], DN up to the model's scale, 10 000), and the cloudy image needs the four
bands every run needs.
"""

from __future__ import annotations

import argparse
import json
import sys
from datetime import UTC, datetime
from pathlib import Path

from engine.commands import add_renamed_argument, datetime_arg
from engine.config import RunConfig
from engine.errors import InputError
from engine.models.gapfill_arch import interpolation_weight
from engine.progress import Progress
from engine.sources.raster import open_raster

NAME = "gapfill"
HELP = "deprecated: engine run --model gapfill (linear interpolation in time between images before and after)"
DEPRECATION = ("warning: 'engine gapfill' is deprecated and will be removed in the next release; use 'engine run "
               "--model gapfill --optical … --optical-prev … --optical-next …'")  # fmt: skip


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_renamed_argument(parser, "--optical", "--cloudy", required=True, type=Path, dest="cloudy",
                         help="the cloudy optical image (defines the output grid)")  # fmt: skip
    add_renamed_argument(parser, "--optical-prev", "--prev", required=True, type=Path, dest="prev",
                         help="cloud-free image acquired before it")  # fmt: skip
    add_renamed_argument(parser, "--optical-next", "--next", required=True, type=Path, dest="next",
                         help="cloud-free image acquired after it")  # fmt: skip
    parser.add_argument("--mask", type=Path, help="cloud mask of the cloudy image: fill only those pixels")
    parser.add_argument("--out", required=True, type=Path, help="output GeoTIFF")
    for flag in ("--date-prev", "--date", "--date-next"):
        parser.add_argument(flag, type=datetime_arg, help="acquisition time (ISO 8601) overriding the file's tags")
    parser.add_argument("--json", action="store_true", help="print a JSON summary on stdout")


def _band_count(cloudy: Path, prev: Path, next_: Path) -> int:
    """The cloudy image's band count, which the images before and after must share (all bands are filled)."""
    with open_raster(cloudy, "cloudy image") as ds:
        count = ds.count
    for role, path in (("previous image", prev), ("next image", next_)):
        with open_raster(path, role) as src:
            if src.count != count:
                raise InputError(f"{role} has {src.count} bands, the cloudy image {count}: {path}")
    return count


def gapfill_rasters(
    cloudy: Path,
    prev: Path,
    next_: Path,
    out: Path,
    mask: Path | None = None,
    dates: tuple[datetime | None, datetime | None, datetime | None] = (None, None, None),
    progress: Progress | None = None,
) -> dict:
    """``engine run --model gapfill`` on these files; returns the summary (dates, weight, filled and unfillable
    pixel counts)."""
    from engine.align.temporal import acquisition_dates
    from engine.stream.pipeline import run

    bands = tuple(range(1, _band_count(cloudy, prev, next_) + 1))
    config = RunConfig(optical=cloudy, out=out, model="gapfill", mode="raw", device="cpu", bands=bands, mask=mask,
                       optical_prev=prev, optical_next=next_, date_prev=dates[0], date=dates[1],
                       date_next=dates[2])  # fmt: skip
    config.validate()
    when = acquisition_dates(config, Progress(), [])
    t_prev, t, t_next = (datetime.fromtimestamp(when[k], UTC) for k in ("t_prev", "t", "t_next"))
    result = run(config, progress)
    todo = result.cloud_pixels if result.cloud_pixels is not None else result.valid_pixels
    return {"output": str(out), "t_prev": t_prev.isoformat(), "t": t.isoformat(), "t_next": t_next.isoformat(),
            "weight": float(interpolation_weight(t_prev, t, t_next)), "filled_pixels": result.model_pixels,
            "unfillable_pixels": todo - result.model_pixels}  # fmt: skip


def run(args: argparse.Namespace) -> int:
    print(DEPRECATION, file=sys.stderr)
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
