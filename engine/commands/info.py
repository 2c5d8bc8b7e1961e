"""``python -m engine info --optical F --sar F [--json]``: what the engine sees in a pair of inputs, before a run.

Prints each raster's CRS, resolution, size, bands (with descriptions), dtypes and nodata, the fraction of the
optical image the SAR covers once reprojected, and the detected SAR units (dB or linear power) and optical
scale (DN × 10⁴ or reflectance) — the same detections ``run`` makes, so a surprise shows up here first.
"""

from __future__ import annotations

import argparse
import json
import sys
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import numpy as np

from engine import normalise
from engine.align import Grid, bounds_overlap, coverage_fraction
from engine.config import DEFAULT_SAR_BANDS, parse_band_list
from engine.dates import dataset_acquisition_date, days_apart
from engine.raster import describe, open_raster, read_sample, require_georeferenced, valid_mask

NAME = "info"
HELP = "describe an optical + SAR pair: CRS, resolution, bands, nodata, overlap, detected units"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--optical", required=True, type=Path, help="optical GeoTIFF")
    parser.add_argument("--sar", required=True, type=Path, help="Sentinel-1 GeoTIFF")
    parser.add_argument("--bands", default="1,2,3,4", help="optical B,G,R,NIR band indices (default 1,2,3,4)")
    parser.add_argument("--sar-bands", default="1,2", help="SAR VV,VH band indices (default 1,2)")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of text")


def inspect_pair(optical: Path, sar: Path, bands: tuple[int, ...], sar_bands: tuple[int, ...]) -> dict[str, Any]:
    """The facts ``info`` prints, as a JSON-friendly dict (also used by the plugin's layer checks)."""
    with ExitStack() as stack:
        opt = stack.enter_context(open_raster(optical, "optical"))
        s1 = stack.enter_context(open_raster(sar, "SAR"))
        require_georeferenced(opt, "optical image")
        require_georeferenced(s1, "SAR image")
        opt_bands = tuple(b for b in bands if b <= opt.count)
        s1_bands = tuple(b for b in sar_bands if b <= s1.count) or DEFAULT_SAR_BANDS[: s1.count]
        grid = Grid.of(opt)
        overlap = coverage_fraction(s1, grid, s1_bands) if bounds_overlap(s1, grid) else 0.0
        sample = read_sample(s1, s1_bands).astype(np.float32)
        sar_units = normalise.detect_sar_units(sample[:, valid_mask(sample, s1.nodata)])
        osample = read_sample(opt, opt_bands)
        scale = normalise.detect_optical_scale(osample[:, valid_mask(osample, opt.nodata)])
        dates = {role: dataset_acquisition_date(ds) for role, ds in (("optical", opt), ("sar", s1))}
        gap = None
        if dates["optical"] and dates["sar"]:
            gap = round(days_apart(dates["optical"][0], dates["sar"][0]), 2)
        return {
            "optical": describe(opt).as_dict(),
            "sar": describe(s1).as_dict(),
            "sar_overlap_percent": round(100.0 * overlap, 2),
            "sar_units": sar_units,
            "optical_scale": "reflectance" if scale == 1.0 else "dn",
            "acquired": {role: (f"{d[0].isoformat()} ({d[1]})" if d else None) for role, d in dates.items()},
            "sar_gap_days": gap,
        }


def _text(facts: dict[str, Any]) -> str:
    lines = []
    for role in ("optical", "sar"):
        r = facts[role]
        descs = ", ".join(f"{i}:{d or '-'}" for i, d in enumerate(r["descriptions"], start=1))
        lines += [
            f"{role.upper()}: {r['path']}",
            f"  CRS         {r['crs']}",
            f"  resolution  {r['resolution'][0]:.6g} × {r['resolution'][1]:.6g}",
            f"  size        {r['width']} × {r['height']} px, {r['bands']} band(s) [{descs}]",
            f"  dtypes      {', '.join(sorted(set(r['dtypes'])))}   nodata {r['nodata']}",
        ]
    lines += [
        f"SAR overlap of the optical image: {facts['sar_overlap_percent']:.1f} %",
        f"detected SAR units: {facts['sar_units']}   detected optical scale: {facts['optical_scale']}",
    ]
    acquired = facts["acquired"]
    if acquired["optical"] or acquired["sar"]:
        gap = "" if facts["sar_gap_days"] is None else f"   → {facts['sar_gap_days']:g} days apart"
        lines.append(f"acquired: optical {acquired['optical'] or 'unknown'}, SAR {acquired['sar'] or 'unknown'}{gap}")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    facts = inspect_pair(args.optical, args.sar, parse_band_list(args.bands), parse_band_list(args.sar_bands))
    if args.json:
        json.dump(facts, sys.stdout)
        sys.stdout.write("\n")
    else:
        print(_text(facts))
    return 0
