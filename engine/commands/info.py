"""``python -m engine info --optical F --sar F [--json]``: what the engine sees in a pair of inputs, before a run.

First what each input resolved to (:mod:`engine.sources.resolve`: a Sentinel-2 SAFE's 10 m subdataset and offset, a
Sentinel-1 GRD's calibration, split VV/VH files, the mask ``--mask auto`` finds, the units and why), then each
raster the reader opens: CRS, resolution, size, bands (with descriptions), dtypes and nodata, the fraction of the
optical image the SAR covers once reprojected, and the SAR units (dB, linear power or amplitude) and optical scale
(DN × 10⁴ or reflectance) — the same resolution and detections ``run`` makes, so a surprise shows up here first.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import numpy as np

from engine.align.reader import Grid, bounds_overlap, coverage_fraction
from engine.config import DEFAULT_BANDS, DEFAULT_SAR_BANDS, SAR_UNITS, RunConfig, as_source, parse_band_list
from engine.errors import InputError
from engine.sources import normalise
from engine.sources.dates import dataset_acquisition_date, days_apart
from engine.sources.footprint import run_footprint
from engine.sources.masks import DETECTORS
from engine.sources.product import Materialised
from engine.sources.raster import describe, open_raster, read_sample, require_georeferenced, valid_mask
from engine.sources.resolve import resolve_run_inputs

NAME = "info"
HELP = "describe an optical + SAR pair: CRS, resolution, bands, nodata, overlap, detected units"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--optical", required=True, type=as_source,
                        help="optical raster, Sentinel-2 .SAFE/.zip or GDAL dataset name")  # fmt: skip
    parser.add_argument("--sar", type=as_source, help="Sentinel-1 raster, RTC product or GRD .SAFE/.zip")
    parser.add_argument("--sar-vv", type=as_source, metavar="FILE", help="split polarisations: the VV raster")
    parser.add_argument("--sar-vh", type=as_source, metavar="FILE", help="split polarisations: the VH raster")
    parser.add_argument("--mask", type=as_source, help="cloud mask, or 'auto' (the product's own, else detect), "
                        "'detect' (the trained detector where installed, else the hand-made rule: the default), "
                        "'rule'")  # fmt: skip
    parser.add_argument("--bands", help="optical B,G,R,NIR band indices (default: by band description, else 1,2,3,4)")
    parser.add_argument("--sar-bands", default="1,2", help="SAR VV,VH band indices (default 1,2)")
    parser.add_argument("--sar-units", choices=SAR_UNITS, default="auto", help="SAR units (default: detect)")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of text")


def inspect_pair(
    optical: Path | str, sar: Path | str, bands: tuple[int, ...], sar_bands: tuple[int, ...]
) -> dict[str, Any]:
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


def inspect_inputs(config: RunConfig) -> dict[str, Any]:
    """:func:`inspect_pair` on what ``config``'s inputs resolve to (:func:`engine.sources.resolve.resolve_run_inputs`),
    plus the resolved sources and their warnings."""
    if config.sar is None and config.sar_vv is None:
        raise InputError("info needs the SAR: --sar, or --sar-vv and --sar-vh")
    run_footprint(dataclasses.asdict(config))  # refuses a local input that reaches the network, as a run does
    with Materialised() as store:
        resolved, sources, warnings = resolve_run_inputs(config, store, grid_rules=False)
        facts = inspect_pair(resolved.optical, resolved.sar, resolved.bands, resolved.sar_bands)
    if resolved.sar_units != "auto":
        facts["sar_units"] = resolved.sar_units
    facts["sources"] = {role: source.as_dict() for role, source in sources.items()}
    facts["warnings"] = warnings
    return facts


def inference_facts(config: RunConfig, width: int, height: int) -> dict[str, Any]:
    """Which backend and precision ``engine run`` will use for this scene with ``config``'s model, tile and mode, and
    why (issue 30: the same rules as the run's, :func:`engine.stream.accel.backend_plan`). Torch is imported here
    only; a machine without it says so instead."""
    try:
        from engine.stream import accel, backends, mode
        from engine.stream.tiling import TileGrid
    except Exception as exc:  # noqa: BLE001 - info describes inputs even where the network cannot run
        return {"error": f"{type(exc).__name__}: {exc}".splitlines()[0]}
    model = config.model or mode.default_model(config.mode)
    tiles = len(TileGrid(height, width, config.tile, config.overlap))
    choice = accel.backend_plan(model, tiles)
    return {"model": model, "tiles": tiles, "cpu": backends.cpu_kind(), "backend": choice.backend,
            "precision": choice.precision, "reason": choice.reason, "sentence": choice.sentence()}  # fmt: skip


def _source_lines(role: str, source: dict[str, Any]) -> list[str]:
    lines = [f"{role.upper()} given: {source['given']}", f"  resolved    {source['kind']} ({source['driver']})"]
    lines += [f"  dataset {k:<3} {name}" for k, name in enumerate(source["datasets"], start=1)]
    lines.append("  bands       " + ", ".join(f"{name}={band}" for name, band in source["bands"].items()))
    for key in ("units", "calibration", "offsets"):
        if source[key]:
            lines.append(f"  {key:<11} {source[key]}")
    lines += [f"  note        {note}" for note in source["notes"]]
    return lines


def _text(facts: dict[str, Any]) -> str:
    lines = []
    for role, source in facts.get("sources", {}).items():
        if role == "mask" and source["driver"] in DETECTORS:  # no file: which detector the run will use
            lines.append(f"CLOUD MASK: detected by the {source['kind']}" + "".join(f"; {n}" for n in source["notes"]))
        else:
            lines += _source_lines(role, source)
    lines += [f"WARNING: {w}" for w in facts.get("warnings", [])]
    for role in ("optical", "sar"):
        r = facts[role]
        descs = ", ".join(f"{i}:{d or '-'}" for i, d in enumerate(r["descriptions"], start=1))
        lines += [
            f"{role.upper()} read as: {r['path']}",
            f"  CRS         {r['crs']}",
            f"  resolution  {r['resolution'][0]:.6g} × {r['resolution'][1]:.6g}",
            f"  size        {r['width']} × {r['height']} px, {r['bands']} band(s) [{descs}]",
            f"  dtypes      {', '.join(sorted(set(r['dtypes'])))}   nodata {r['nodata']}",
        ]
    lines += [
        f"SAR overlap of the optical image: {facts['sar_overlap_percent']:.1f} %",
        f"detected SAR units: {facts['sar_units']}   detected optical scale: {facts['optical_scale']}",
    ]
    inf = facts.get("inference") or {}
    if "sentence" in inf:
        lines.append(f"network: {inf['model']}, {inf['tiles']} tile(s), {inf['cpu']} CPU → {inf['sentence']}")
    elif "error" in inf:
        lines.append(f"network: cannot tell here ({inf['error']})")
    acquired = facts["acquired"]
    if acquired["optical"] or acquired["sar"]:
        gap = "" if facts["sar_gap_days"] is None else f"   → {facts['sar_gap_days']:g} days apart"
        lines.append(f"acquired: optical {acquired['optical'] or 'unknown'}, SAR {acquired['sar'] or 'unknown'}{gap}")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    bands = parse_band_list(args.bands) if args.bands else DEFAULT_BANDS
    config = RunConfig(optical=args.optical, sar=args.sar, sar_vv=args.sar_vv, sar_vh=args.sar_vh, mask=args.mask,
                       bands=bands, sar_bands=parse_band_list(args.sar_bands), sar_units=args.sar_units,
                       out=Path(os.devnull))  # fmt: skip
    config.validate()
    facts = inspect_inputs(config)
    facts["inference"] = inference_facts(config, facts["optical"]["width"], facts["optical"]["height"])
    if args.json:
        json.dump(facts, sys.stdout)
        sys.stdout.write("\n")
    else:
        print(_text(facts))
    return 0
