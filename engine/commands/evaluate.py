"""``python -m engine evaluate``: the paper's evaluation of a declouded raster against a cloud-free reference.

Writes the full report (layers, ``report.json``, ``report.html``) into ``--out`` via
:func:`engine.report.write_report`; ``--json`` prints ``report.json`` on stdout (for the QGIS plugin and scripts),
otherwise a short human summary with the cloudy input's and the baselines' numbers beside the output's and the
headline: the output's margin over the best baseline inside the cloud (:mod:`engine.report.margin`). The baselines
(:mod:`engine.refine.baselines`: flat, fill) are on by default — they cost a sparse solve per cloudy tile — and
``--no-baselines`` skips them. Beside PSNR: band r, NDVI r and the off-gamut share of every column (and of the
reference itself), and the date-gap ceiling (:mod:`engine.outputs.metrics`).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from engine.commands import add_clobber_argument, add_renamed_argument
from engine.commands.ndvi import parse_bands, terminal_progress
from engine.config import as_source
from engine.report.margin import ceiling_sentence, gamut_sentence, margin_sentence

NAME = "evaluate"
HELP = ("score a declouded raster against a cloud-free reference (MAE, PSNR, SSIM, SAM, NDVI), beside the cloudy "
        "input and the flat/fill baselines, and write a report")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--optical", required=True, type=as_source, help="the cloudy optical input (B,G,R,NIR)")
    parser.add_argument("--prediction", required=True, type=as_source,
                        help="the declouded output, on the optical grid")
    parser.add_argument("--reference", required=True, type=as_source,
                        help="the cloud-free reference, on the optical grid")
    parser.add_argument("--landcover", type=as_source, help="ESA WorldCover raster (any grid; reprojected, nearest)")
    parser.add_argument("--mask", type=as_source,
                        help="cloud mask raster (1 = cloud, or Planet UDM2); default: detected")
    parser.add_argument("--out", required=True, type=Path, help="report folder (created if missing)")
    parser.add_argument(
        "--bands", type=parse_bands, default=(1, 2, 3, 4), help="1-based band indices of B,G,R,NIR (default 1,2,3,4)"
    )
    add_renamed_argument(parser, "--tile", "--tile-size", type=int, default=300, dest="tile_size",
                         help="tile size for streaming and cloud-cover bins")
    parser.add_argument("--json", action="store_true", help="print report.json on stdout")
    parser.add_argument(
        "--baselines", action=argparse.BooleanOptionalAction, default=True,
        help="also score the non-learned baselines flat and fill on the same pixels, and the output's margin over "
             "the best of them inside the cloud (default: on)",
    )  # fmt: skip
    add_clobber_argument(parser)


LABEL = 24  # width of the summary's first column ("outside_cloud off_gamut")


def _fmt(value: float | None) -> str:
    return "–" if value is None else f"{value:.4f}"


def _summary(report: dict[str, Any]) -> str:
    m = report["metrics"]
    cover = report["scene"]["cloud_mask"]["cloud_cover_percent"]
    lines = [f"cloud cover: {cover:.1f} % ({report['scene']['cloud_mask']['source']} mask)" if cover is not None
             else "cloud cover: n/a (no valid pixels)"]
    columns = {"cloudy input": m["cloudy_input"]}
    columns |= m["baselines"] or {}
    columns["output"] = m["output"]
    lines.append(f"{'':{LABEL}}" + "".join(f"{name:>14}" for name in columns))
    for part in ("overall", "inside_cloud", "outside_cloud"):
        for key in ("mae", "psnr", "ssim", "sam", "band_r", "ndvi_r", "off_gamut"):
            lines.append(f"{part + ' ' + key:{LABEL}}" + "".join(f"{_fmt(b[part][key]):>14}" for b in columns.values()))
    for key in ("rmse", "miou"):
        lines.append(f"{'ndvi ' + key:{LABEL}}" + "".join(f"{_fmt(b['ndvi'][key]):>14}" for b in columns.values()))
    if m["baselines"] is not None:
        lines.append(margin_sentence(m["baseline_margin"]))
    lines += [line for line in (ceiling_sentence(m), gamut_sentence(m)) if line]
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    from engine.report import write_report

    with terminal_progress("evaluate") as progress:
        report = write_report(
            args.optical,
            args.prediction,
            args.out,
            reference=args.reference,
            landcover=args.landcover,
            mask=args.mask,
            bands=args.bands,
            run_settings={"command": "evaluate", "tile_size": args.tile_size, "bands": list(args.bands),
                          "baselines": args.baselines},
            tile_size=args.tile_size,
            progress=progress,
            baselines=args.baselines,
            clobber=args.clobber,
        )
    if args.json:
        json.dump(report, sys.stdout, indent=2)
        sys.stdout.write("\n")
    else:
        print(_summary(report))
        print(f"report: {Path(args.out) / 'report.html'}")
    return 0
