"""``python -m engine run``: remove clouds from one optical GeoTIFF using a Sentinel-1 GeoTIFF.

A thin argument layer over :func:`engine.pipeline.run`. Progress goes to stderr as a tqdm bar, or, with
``--progress-json``, to stdout as one JSON object per line (the QGIS plugin's protocol; stdout then carries
nothing else, logs stay on stderr):

``{"event":"start","total_tiles":N,"width":W,"height":H,"output":"..."}``,
``{"event":"progress","fraction":0.42,"message":"tile 12/40"}``, ``{"event":"warning","message":"..."}``,
``{"event":"result","output":"...","seconds":12.3,"model":"identity","device":"cpu","report":null,"sar_used":true,
"model_percent":100.0}`` (``model_percent``: share of the valid pixels that hold the model's output)
(``sar_used`` is false for a model that takes no SAR, e.g. gapfill, which runs without ``--sar``) and, on a
user error, ``{"event":"error","message":"...","kind":"InputError"}`` with exit code 2 (130 when cancelled).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path
from typing import Any

from engine.accel import DTYPES, AccelConfig
from engine.commands import datetime_arg
from engine.config import OPTICAL_SCALES, SAR_RESAMPLINGS, SAR_UNITS, RunConfig, parse_band_list
from engine.errors import Cancelled, EngineError, as_user_error
from engine.progress import Progress
from engine.sources import as_source
from engine.tta import CONFIDENCE_NODATA, DEFAULT_CONFIDENCE_TTA, MAX_TTA

NAME = "run"
HELP = "remove clouds from an optical GeoTIFF using a Sentinel-1 SAR GeoTIFF"
DESCRIPTION = (
    "Reproject the SAR (and optional land cover / cloud mask) onto the optical grid, run the model tile by tile "
    "with overlap blending, and write a georeferenced GeoTIFF on the optical grid. Temporal models (msop-unet, "
    "gapfill) also take the images acquired before and after the cloudy one (--optical-prev, --sar-prev, "
    "--optical-next, --sar-next) and, for gapfill, their acquisition times (from the files' tags unless given); "
    "gapfill uses no SAR, so --sar is optional with it. U-Nets built with a DEM input (dem=True) take --dem."
)


def _bands(text: str) -> tuple[int, ...]:
    try:
        return parse_band_list(text)
    except EngineError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--optical", required=True, type=as_source,
                        help="cloudy optical raster (≥ 4 bands), a Sentinel-2 L1C/L2A .SAFE folder or .zip, or any "
                             "GDAL dataset name (/vsizip/…, a .vrt, a subdataset)")  # fmt: skip
    parser.add_argument("--sar", type=as_source,
                        help="Sentinel-1: a 2-band VV, VH raster (dB, linear power or amplitude), an RTC product or a "
                             "GRD .SAFE folder or .zip; required except for gapfill")  # fmt: skip
    parser.add_argument("--sar-vv", type=as_source, metavar="FILE",
                        help="split polarisations: the VV raster (with --sar-vh, instead of --sar)")  # fmt: skip
    parser.add_argument("--sar-vh", type=as_source, metavar="FILE", help="split polarisations: the VH raster")
    parser.add_argument("--landcover", type=as_source, help="ESA WorldCover land-cover raster (for the report)")
    parser.add_argument("--mask", type=as_source,
                        help="cloud mask: 1 band (1 = cloud), Planet UDM2 (8 bands), or 'auto': the mask that "
                             "comes with the optical product (UDM2 beside a PlanetScope file, L2A SCL)")  # fmt: skip
    parser.add_argument("--reference", type=as_source, help="cloud-free reference image (for the report's metrics)")
    parser.add_argument(
        "--dem", type=as_source, metavar="FILE",
        help="elevation raster in metres, 1 band, any CRS (models built with dem=True: ssop-unet/msop-unet +DEM)",
    )  # fmt: skip
    parser.add_argument("--out", required=True, type=Path, help="output GeoTIFF (written atomically)")
    parser.add_argument("--model", help="registry model name (default: aligncr-lite if bundled weights, else identity)")
    parser.add_argument("--weights", type=Path, help=".safetensors weights file with its model card")
    add_tiling_arguments(parser)
    parser.add_argument("--bands", type=_bands, default=(1, 2, 3, 4), help="optical B,G,R,NIR band indices")
    parser.add_argument("--sar-bands", type=_bands, default=(1, 2), help="SAR VV,VH band indices (default 1,2)")
    parser.add_argument("--sar-units", choices=SAR_UNITS, default="auto", help="SAR units (default: detect)")
    parser.add_argument(
        "--optical-scale", choices=OPTICAL_SCALES, default="auto", help="optical units: DN ×10⁴ or reflectance"
    )
    parser.add_argument("--sar-resampling", choices=SAR_RESAMPLINGS, default="nearest", help="SAR upsampling")
    parser.add_argument("--report", type=Path, help="also write a metrics/figures report into this folder")
    parser.add_argument("--no-baselines", dest="baselines", action="store_false",
                        help="with --report and --reference: skip scoring the non-learned baselines (flat, fill) "
                             "and the output's margin over them inside the cloud (default: scored)")  # fmt: skip
    parser.add_argument("--qa", type=Path, metavar="FILE",
                        help="also write a QA GeoTIFF: percent of each pixel from the model (0 = as acquired, "
                             "100 = reconstructed, 255 = no data)")  # fmt: skip
    parser.add_argument("--confidence", type=Path, metavar="FILE",
                        help="also write a confidence GeoTIFF: the spread (std, reflectance) of the model's output "
                             "over --tta flips/rotations; high = guessing (0 = as acquired, "
                             f"{CONFIDENCE_NODATA:g} = no data; implies --tta {DEFAULT_CONFIDENCE_TTA})")  # fmt: skip
    parser.add_argument("--progress-json", action="store_true", help="machine-readable JSON-lines progress on stdout")
    add_temporal_arguments(parser)
    add_accel_arguments(parser)


def add_temporal_arguments(parser: argparse.ArgumentParser) -> None:
    """The extra dates of temporal models (``msop-unet``: all four rasters; ``gapfill``: the optical ones + dates)."""
    group = parser.add_argument_group(
        "extra dates (temporal models: msop-unet, gapfill; ignored with a warning by the others)"
    )
    for flag, help_text in (
        ("--optical-prev", "optical image acquired before the cloudy one (t-1)"),
        ("--sar-prev", "SAR image acquired with --optical-prev (t-1; msop-unet)"),
        ("--optical-next", "optical image acquired after the cloudy one (t+1)"),
        ("--sar-next", "SAR image acquired with --optical-next (t+1; msop-unet)"),
    ):
        group.add_argument(flag, type=Path, metavar="FILE", help=help_text)
    for flag, help_text in (
        ("--date", "acquisition time of --optical, ISO 8601 (gapfill; default: the file's tags)"),
        ("--date-prev", "acquisition time of --optical-prev (default: its tags)"),
        ("--date-next", "acquisition time of --optical-next (default: its tags)"),
    ):
        group.add_argument(flag, type=datetime_arg, metavar="TIME", help=help_text)


def add_tiling_arguments(parser: argparse.ArgumentParser, where: str = "") -> None:
    """Device, tile grid, batch, output format and compositing: shared by ``run`` and ``batch`` (defaults:
    :class:`RunConfig`)."""
    default = {f.name: f.default for f in dataclasses.fields(RunConfig)}
    parser.add_argument("--device", default=default["device"],
                        help=f"auto | cpu | cuda | cuda:N{where} (default {default['device']})")  # fmt: skip
    parser.add_argument("--tile", type=int, default=default["tile"],
                        help=f"tile size in pixels (default {default['tile']})")  # fmt: skip
    parser.add_argument("--overlap", type=int, default=default["overlap"],
                        help=f"tile overlap in pixels, blended (default {default['overlap']})")  # fmt: skip
    parser.add_argument("--batch", type=int, default=default["batch"],
                        help=f"tiles per forward pass (default {default['batch']})")  # fmt: skip
    parser.add_argument("--memory-budget", type=float, metavar="GB", default=default["memory_budget"],
                        help="memory for the network's tiles and the buffers; a larger --tile is refused with the "
                             "largest that fits (default: 80 %% of the available memory)")  # fmt: skip
    parser.add_argument("--cog", action="store_true", help="write Cloud-Optimized GeoTIFF output with overviews")
    parser.add_argument("--only-cloudy", action="store_true",
                        help="replace only the pixels --mask marks as cloud (without --mask: the clouds detected on "
                             "the optical image); keep every clear pixel as the input (default: the model's output "
                             "everywhere, as in the paper)")  # fmt: skip
    parser.add_argument("--cloud-feather", type=int, metavar="PX", default=default["cloud_feather"],
                        help="with --only-cloudy: blend model and input over this many pixels beyond the cloud "
                             f"(0 = hard edge; default {default['cloud_feather']})")  # fmt: skip
    parser.add_argument("--tta", type=int, metavar="N",
                        help=f"test-time augmentation: output the mean of the model over N (2-{MAX_TTA}) flips/90° "
                             "rotations of each tile, N times slower (default 1 = off; "
                             f"{DEFAULT_CONFIDENCE_TTA} with --confidence)")  # fmt: skip


def add_accel_arguments(parser: argparse.ArgumentParser) -> None:
    """The speed options (shared with ``batch``); none changes the output in fp32."""
    parser.add_argument(
        "--dtype",
        choices=DTYPES,
        default="auto",
        help="compute precision (auto: bf16 on a CUDA GPU and on CPUs with native bf16, else fp32; fp32 is exact)",
    )
    parser.add_argument("--compile", action="store_true", help="torch.compile the network (cached on disk)")
    parser.add_argument("--threads", type=int, help="CPU threads for the network (default: every core)")
    parser.add_argument(
        "--no-prefetch", dest="prefetch", action="store_false", help="no background reader/writer threads"
    )


def accel_from_args(args: argparse.Namespace) -> AccelConfig:
    return AccelConfig(dtype=args.dtype, compile=args.compile, threads=args.threads, prefetch=args.prefetch)


def config_from_args(args: argparse.Namespace) -> RunConfig:
    return RunConfig(
        optical=args.optical,
        sar=args.sar,
        sar_vv=args.sar_vv,
        sar_vh=args.sar_vh,
        out=args.out,
        landcover=args.landcover,
        mask=args.mask,
        reference=args.reference,
        model=args.model,
        weights=args.weights,
        device=args.device,
        tile=args.tile,
        overlap=args.overlap,
        batch=args.batch,
        cog=args.cog,
        bands=args.bands,
        sar_bands=args.sar_bands,
        sar_units=args.sar_units,
        optical_scale=args.optical_scale,
        sar_resampling=args.sar_resampling,
        report=args.report,
        baselines=args.baselines,
        optical_prev=args.optical_prev,
        optical_next=args.optical_next,
        sar_prev=args.sar_prev,
        sar_next=args.sar_next,
        date=args.date,
        date_prev=args.date_prev,
        date_next=args.date_next,
        dem=args.dem,
        only_cloudy=args.only_cloudy,
        qa=args.qa,
        confidence=args.confidence,
        tta=args.tta,
        cloud_feather=args.cloud_feather,
        memory_budget=args.memory_budget,
    )


def emit(event: dict[str, Any]) -> None:
    """One JSON object per line on stdout, flushed so the reading process sees it at once."""
    sys.stdout.write(json.dumps(event) + "\n")
    sys.stdout.flush()


def _run_json(config: RunConfig, accel: AccelConfig | None = None) -> int:
    from engine.pipeline import run as run_pipeline

    progress = Progress(
        callback=lambda f, m: emit({"event": "progress", "fraction": round(f, 4), "message": m}),
        warn_callback=lambda m: emit({"event": "warning", "message": m}),
    )
    start = lambda plan: emit(  # noqa: E731
        {
            "event": "start",
            "total_tiles": plan.total_tiles,
            "width": plan.width,
            "height": plan.height,
            "output": str(plan.output),
        }
    )
    try:
        result = run_pipeline(config, progress, on_start=start, accel=accel)
    except EngineError as exc:
        emit({"event": "error", "message": str(exc), "kind": type(exc).__name__})
        return 130 if isinstance(exc, Cancelled) else 2
    except Exception as exc:
        error = as_user_error(exc)  # out of memory, OS, GDAL: one line as well
        if error is not None:
            emit({"event": "error", "message": str(error), "kind": type(exc).__name__})
            return 2
        # a bug: still tell the plugin in one line, then keep the traceback on stderr
        emit({"event": "error", "message": f"internal error: {exc}", "kind": type(exc).__name__})
        raise
    emit(
        {
            "event": "result",
            "output": str(result.output),
            "seconds": round(result.seconds, 3),
            "model": result.model,
            "device": result.device,
            "report": str(result.report_dir) if result.report_dir else None,
            "sar_used": result.sar_used,
            "model_percent": round(100.0 * result.model_fraction, 2),
        }
    )
    return 0


def _run_tqdm(config: RunConfig, accel: AccelConfig | None = None) -> int:
    from tqdm import tqdm

    from engine.pipeline import run as run_pipeline
    from engine.report.margin import margin_sentence

    bars: list[tqdm] = []  # created at the start event, so an input error prints its line without a bar

    def start(plan: Any) -> None:
        bars.append(tqdm(total=plan.total_tiles, file=sys.stderr, unit="tile", leave=False, dynamic_ncols=True))

    def update(fraction: float, message: str) -> None:
        if bars:
            bars[0].n = round(fraction * bars[0].total)
            bars[0].set_description_str(message, refresh=False)
            bars[0].refresh()

    def warn(message: str) -> None:
        tqdm.write(f"WARNING: {message}", file=sys.stderr)

    try:
        result = run_pipeline(config, Progress(callback=update, warn_callback=warn), on_start=start, accel=accel)
    finally:
        for bar in bars:
            bar.close()
    no_sar = "" if result.sar_used else ", no SAR used"
    share = f"the model's output in {100 * result.model_fraction:.1f} % of the pixels"
    print(f"wrote {result.output} ({result.width}×{result.height}, {result.model} on {result.device}{no_sar}, "
          f"{result.seconds:.1f} s; {share})")  # fmt: skip
    if result.report_dir:
        print(f"report in {result.report_dir}")
        metrics = (result.report or {}).get("metrics")
        if metrics is not None and metrics["baselines"] is not None:
            print(margin_sentence(metrics["baseline_margin"]))
    return 0


def run(args: argparse.Namespace) -> int:
    if args.progress_json:
        try:
            config = config_from_args(args)
            accel = accel_from_args(args)
            accel.validate()
        except EngineError as exc:
            emit({"event": "error", "message": str(exc), "kind": type(exc).__name__})
            return 2
        return _run_json(config, accel)
    return _run_tqdm(config_from_args(args), accel_from_args(args))
