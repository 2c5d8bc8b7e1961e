"""``python -m engine run``: remove clouds from one optical GeoTIFF using a Sentinel-1 GeoTIFF.

A thin argument layer over :func:`engine.stream.pipeline.run`, generated from the options table
(:data:`engine.config.OPTIONS`: one argparse option per row). Progress goes to stderr as a tqdm bar, or, with
``--json`` (``--progress-json``: its deprecated old name), to stdout as one JSON object per line (the QGIS
plugin's protocol; stdout then carries nothing else, logs stay on stderr):

``{"event":"start","total_tiles":N,"width":W,"height":H,"output":"..."}``,
``{"event":"progress","fraction":0.42,"message":"tile 12/40"}``, ``{"event":"warning","message":"..."}``,
``{"event":"result","output":"...","seconds":12.3,"model":"identity","device":"cpu","report":null,"sar_used":true,
"model_percent":100.0}`` (``model_percent``: share of the valid pixels that hold the model's output)
(``sar_used`` is false for a model that takes no SAR, e.g. gapfill, which runs without ``--sar``) and, on a
user error, ``{"event":"error","message":"...","kind":"InputError"}`` with exit code 2 (130 when cancelled).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

from engine.commands import add_renamed_argument, datetime_arg
from engine.config import GROUPS, OPTIONS, Bounds, Option, RunConfig, as_source, parse_band_list
from engine.errors import Cancelled, EngineError, as_user_error
from engine.progress import Progress
from engine.stream.accel import DTYPES, AccelConfig, check_threads
from engine.stream.backends import BACKENDS

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


def _bounds(text: str) -> Bounds:
    try:
        return Bounds.parse(text)
    except EngineError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _file_path(text: str) -> Path:
    """An output file's name: ``out/`` (a folder, by its trailing slash) would have become a file named ``out``."""
    if text.endswith(("/", os.sep)):
        raise argparse.ArgumentTypeError(f"'{text}' ends with a slash: give a file name, e.g. {text}declouded.tif")
    return Path(text)


# How each kind of option is parsed (engine.config.KINDS); bool, choice and text need no type.
_TYPES: dict[str, Any] = {"source": as_source, "path": Path, "int": int, "float": float, "bands": _bands,
                          "time": datetime_arg, "bounds": _bounds}  # fmt: skip
_GROUP_TITLES = {
    "extra dates": "extra dates (temporal models: msop-unet, gapfill; ignored with a warning by the others)",
}


def add_option(parser: argparse.ArgumentParser | argparse._ArgumentGroup, row: Option, where: str = "") -> None:
    """``row`` of the options table as an argparse option: its flag, type, default, choices and help."""
    kwargs: dict[str, Any] = {"dest": row.name,
                              "help": row.help.format(default=row.default, where=where).replace("%", "%%")}
    if row.kind == "bool":
        kwargs["action"] = "store_false" if row.default else "store_true"
    else:
        kwargs.update(default=row.default, required=row.required)
        if row.kind in _TYPES:
            kwargs["type"] = _file_path if row.group == "output" and row.name != "report" else _TYPES[row.kind]
        if row.choices:
            kwargs["choices"] = row.choices
        if row.metavar:
            kwargs["metavar"] = row.metavar
    parser.add_argument(row.flag, **kwargs)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Every option of :data:`engine.config.OPTIONS`, by group, then the output mode and the speed options."""
    for group in GROUPS:
        target = parser.add_argument_group(_GROUP_TITLES[group]) if group in _GROUP_TITLES else parser
        for row in OPTIONS.values():
            if row.group == group:
                add_option(target, row)
    add_renamed_argument(parser, "--json", "--progress-json", action="store_true", dest="progress_json",
                         help="machine-readable JSON-lines progress on stdout")  # fmt: skip
    add_accel_arguments(parser)


def add_tiling_arguments(parser: argparse.ArgumentParser, where: str = "") -> None:
    """Device, tile grid, batch, output format and compositing (the ``tiling`` rows of the options table): shared
    by ``run`` and ``batch``, whose ``where`` ends the device's help."""
    for row in tiling_options():
        add_option(parser, row, where)


def tiling_options() -> list[Option]:
    """The options ``engine batch`` applies to every scene of its manifest."""
    return [row for row in OPTIONS.values() if row.group == "tiling"]


def add_accel_arguments(parser: argparse.ArgumentParser) -> None:
    """The speed options (shared with ``batch``); none changes the output in fp32."""
    parser.add_argument(
        "--dtype",
        choices=DTYPES,
        default="auto",
        help="compute precision (auto: bf16 on a CUDA GPU and on CPUs with native bf16, else fp32; fp32 is exact)",
    )
    parser.add_argument(
        "--backend",
        choices=BACKENDS,
        default="auto",
        help="CPU inference backend (auto: ONNX Runtime, else OpenVINO, when installed, in fp32, for a measured "
        "network and a scene of enough tiles; torch: PyTorch, the reference). A backend that fails falls back to "
        "PyTorch with a warning",
    )
    parser.add_argument("--compile", action="store_true", help="torch.compile the network (cached on disk)")
    parser.add_argument("--threads", type=int, help="CPU threads for the network (default: every core)")
    parser.add_argument(
        "--no-prefetch", dest="prefetch", action="store_false", help="no background reader/writer threads"
    )


def accel_from_args(args: argparse.Namespace) -> AccelConfig:
    """The speed options; ``--threads`` bounded by this machine's cores (:func:`engine.stream.accel.check_threads`)."""
    check_threads(args.threads)
    return AccelConfig(dtype=args.dtype, compile=args.compile, threads=args.threads, prefetch=args.prefetch,
                       backend=args.backend)


def config_from_args(args: argparse.Namespace) -> RunConfig:
    return RunConfig(**{name: getattr(args, name) for name in OPTIONS})


def emit(event: dict[str, Any]) -> None:
    """One JSON object per line on stdout, flushed so the reading process sees it at once."""
    sys.stdout.write(json.dumps(event) + "\n")
    sys.stdout.flush()


def _run_json(config: RunConfig, accel: AccelConfig | None = None) -> int:
    from engine.stream.pipeline import run as run_pipeline

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
            "scene_check": result.scene_check.sentence() if result.scene_check is not None else None,
            "mode": result.mode,
            "guard": result.guard.sentence() if result.guard is not None else None,
            "guard_used": result.guard.used if result.guard is not None else None,
            "colour_anchor": _anchor_sentence(result.colour_anchor),
            "colour_anchor_shift": result.colour_anchor,
        }
    )
    return 0


def _anchor_sentence(shift: list[float] | None) -> str | None:
    """``--colour-anchor``'s line (None when nothing was anchored); imported here: the CLI starts without SciPy."""
    if not shift:
        return None
    from engine.refine.colour_anchor import sentence

    return sentence(shift)


def _run_tqdm(config: RunConfig, accel: AccelConfig | None = None) -> int:
    from tqdm import tqdm

    from engine.report.margin import ceiling_sentence, gamut_sentence, margin_sentence
    from engine.stream.pipeline import run as run_pipeline

    bars: list[tqdm] = []  # created at the start event, so an input error prints its line without a bar
    status: list[tqdm] = []  # one status line for the work before the tile loop (scene adaptation)

    def start(plan: Any) -> None:
        for line in status:
            line.close()
        status.clear()
        bars.append(tqdm(total=plan.total_tiles, file=sys.stderr, unit="tile", leave=False, dynamic_ncols=True))

    def update(fraction: float, message: str) -> None:
        if bars:
            bars[0].n = round(fraction * bars[0].total)
            bars[0].set_description_str(message, refresh=False)
            bars[0].refresh()
        elif message:
            if not status:
                status.append(tqdm(file=sys.stderr, bar_format="{desc}", leave=False, dynamic_ncols=True))
            status[0].set_description_str(message)

    def warn(message: str) -> None:
        tqdm.write(f"WARNING: {message}", file=sys.stderr)

    try:
        result = run_pipeline(config, Progress(callback=update, warn_callback=warn), on_start=start, accel=accel)
    finally:
        for bar in (*status, *bars):
            bar.close()
    no_sar = "" if result.sar_used else ", no SAR used"
    share = f"the model's output in {100 * result.model_fraction:.1f} % of the pixels"
    print(f"wrote {result.output} ({result.width}×{result.height}, {result.model} on {result.device}{no_sar}, "
          f"{result.seconds:.1f} s; {share})")  # fmt: skip
    check = result.scene_check
    if check is not None and (check.beats_baselines or result.guard is not None):  # else it was a warning already
        print(check.sentence())
    if result.guard is not None:
        print(result.guard.sentence())
    if result.colour_anchor is not None:
        print(_anchor_sentence(result.colour_anchor))
    if result.report_dir:
        print(f"report in {result.report_dir}")
        metrics = (result.report or {}).get("metrics")
        if metrics is not None:
            lines = [margin_sentence(metrics["baseline_margin"])] if metrics["baselines"] is not None else []
            lines += [line for line in (ceiling_sentence(metrics), gamut_sentence(metrics)) if line]
            for line in lines:
                print(line)
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
