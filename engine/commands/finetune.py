"""``python -m engine finetune --archive DIR --out my_area.safetensors``: fine-tune the bundled model on your area.

The archive is the layout :mod:`training.layout.archive` reads (``optical/*.tif`` with optional ``_mask``
sidecars, ``sar/*.tif``, optional ``dates.csv``), each entry in any form ``engine run`` reads — Sentinel-2 and
Sentinel-1 GRD SAFE folders or zips, PlanetScope with its UDM2, split ``_VV``/``_VH`` files
(:mod:`training.layout.products`); scenes in another CRS than the first optical scene are reprojected on the fly,
with a notice. The run pairs real cloudy/clear patches and clear patches with synthetic clouds, holds
out spatial blocks for validation, fine-tunes the base model (default: the bundled one) within the time or step
budget, and writes the weights with a model card holding the held-out table (before / after / flat / fill, inside
and outside the cloud, real and synthetic apart). See :mod:`training.finetune`.

Why the code lives in ``training/``: fine-tuning *is* the training loop (datasets, losses, checkpoints); the QGIS
plugin's zip carries the ``training`` package next to ``engine`` so an installed plugin can run this command.

``--json`` (``--progress-json``: its deprecated old name): stdout carries one JSON object per line (``progress``,
``warning``, ``result``, ``error``), the protocol of ``engine run`` that the plugin reads. Cancel (Ctrl-C,
SIGINT/SIGTERM from the plugin): the current step ends, the best weights so far stay in ``--out`` (they are
rewritten atomically at every improvement), and the command says so and exits 130.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
from pathlib import Path
from typing import Any

from engine.commands import add_clobber_argument, add_renamed_argument, check_number

NAME = "finetune"
HELP = "fine-tune the bundled model on an archive of your own area (optical + Sentinel-1 scenes)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from training.finetune.config import DEFAULT_BASE, FinetuneConfig

    d = FinetuneConfig(archive=Path("."), out=Path("."))
    parser.add_argument("--archive", required=True, type=Path,
                        help="archive folder (optical/, sar/, dates.csv; rasters or products as downloaded)")
    parser.add_argument("--out", required=True, type=Path, help="output weights (.safetensors)")
    base = parser.add_mutually_exclusive_group()
    base.add_argument("--base", default=DEFAULT_BASE, help=f"bundled weights to start from (default {DEFAULT_BASE})")
    base.add_argument("--weights", type=Path, help="or any weights file to start from")
    parser.add_argument("--minutes", type=float, default=d.minutes,
                        help="training time budget in minutes (default 30; 0 = no time limit, then give --steps)")
    parser.add_argument("--steps", type=int, default=d.steps,
                        help="optimisation-step budget (default 0 = no step limit; the first limit reached stops)")
    parser.add_argument("--device", default=d.device, help="auto | cpu | cuda | cuda:N (default auto)")
    parser.add_argument("--val-fraction", type=float, default=d.val_fraction,
                        help="share of the spatial blocks held out for validation (default 0.25)")
    parser.add_argument("--patch-size", type=int, default=d.patch_size, help="patch side in pixels (default 256)")
    parser.add_argument("--block-cells", type=int, default=d.block_cells,
                        help="held-out block side, in patches (default 2)")
    parser.add_argument("--pair-days", type=float, default=d.pair_days,
                        help="a real pair's clear image within this many days of the cloudy one (default 30)")
    parser.add_argument("--sar-max-days", type=float, default=d.sar_days, dest="sar_days",
                        help="pair optical with Sentinel-1 acquired within this many days (default 3)")
    parser.add_argument("--crop", type=int, default=d.crop, help="training crop in pixels (default ¾ of the patch)")
    parser.add_argument("--batch", type=int, default=d.batch_size, dest="batch_size", help="batch size (default 4)")
    parser.add_argument("--lr", type=float, default=d.lr, help="learning rate (default 1e-4; alignment ×0.1)")
    parser.add_argument("--val-every", type=int, default=d.val_every, help="steps between validations (default 25)")
    parser.add_argument("--patience", type=int, default=d.patience,
                        help="stop after this many validations without improvement (default 8; 0 = never)")
    parser.add_argument("--threads", type=int, default=d.threads,
                        help="torch CPU threads, up to this machine's cores (default 0: torch's)")
    parser.add_argument("--seed", type=int, default=d.seed)
    parser.add_argument("--resume", action="store_true", help="continue the checkpoint in OUT.finetune/")
    add_renamed_argument(parser, "--json", "--progress-json", action="store_true", dest="progress_json",
                         help="machine-readable JSON-lines progress on stdout (as run --json)")
    add_clobber_argument(parser)


# every numeric option's bounds, checked before any work (issue 25: --lr nan trained, then failed)
NUMBERS = {"minutes": {"minimum": 0}, "steps": {"minimum": 0}, "val_fraction": {"above": 0, "maximum": 0.99},
           "patch_size": {"minimum": 16}, "block_cells": {"minimum": 1}, "crop": {"minimum": 0},
           "pair_days": {"above": 0}, "sar_days": {"minimum": 0}, "batch_size": {"minimum": 1}, "lr": {"above": 0},
           "val_every": {"minimum": 1}, "patience": {"minimum": 0}, "threads": {"minimum": 0}}  # fmt: skip


def check_arguments(args: argparse.Namespace) -> None:
    """Every number finite and in its range, a budget given (0 minutes = no time limit, 0 steps = no step limit,
    not both), ``--threads`` within this machine's cores; one-line errors before anything is read or written."""
    from engine.errors import InputError
    from engine.stream.accel import check_threads

    for name, bounds in NUMBERS.items():
        check_number(f"--{name.replace('_', '-')}".replace("--batch-size", "--batch"), getattr(args, name), **bounds)
    if args.minutes == 0 and args.steps == 0:
        raise InputError("no budget: give --minutes N (0 = no time limit) or --steps N (0 = no step limit), not both 0")
    check_threads(args.threads or None)


def absolute(path: Path | None) -> Path | None:
    """A path against the current folder, as the user meant it (issue 25: the trainer resolved a relative --out
    against the repository and left a half-built OUT.finetune/ there)."""
    return None if path is None else Path(os.path.abspath(Path(path).expanduser()))


def config_from_args(args: argparse.Namespace) -> Any:
    from training.finetune.config import FinetuneConfig

    return FinetuneConfig(
        archive=absolute(args.archive), out=absolute(args.out), base=args.base, weights=absolute(args.weights),
        minutes=args.minutes,
        steps=args.steps, device=args.device, val_fraction=args.val_fraction, patch_size=args.patch_size,
        block_cells=args.block_cells, crop=args.crop, pair_days=args.pair_days, sar_days=args.sar_days,
        batch_size=args.batch_size, lr=args.lr, alignment_lr=args.lr / 10, val_every=args.val_every,
        patience=args.patience, threads=args.threads, seed=args.seed, resume=args.resume,
    )


def emit(event: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(event, default=str) + "\n")
    sys.stdout.flush()


def outcome_line(result: Any) -> str:
    """What the user reads at the end: where the weights are and which ones they are."""
    if result.cancelled:
        kept = (f"the best weights so far (step {result.best_step}) are kept in {result.output}" if result.best_step
                else f"no checkpoint beat the base model yet: {result.output} holds the base weights")
        return f"cancelled after step {result.steps}: {kept}"
    which = f"best at step {result.best_step}" if result.best_step else "no step beat the base model: base weights"
    return f"wrote {result.output} ({result.steps} steps, stopped: {result.stop_reason}; {which})"


def _progress(json_mode: bool) -> Any:
    from engine.progress import Progress

    if json_mode:
        return Progress(callback=lambda f, m: emit({"event": "progress", "fraction": f, "message": m}),
                        warn_callback=lambda m: emit({"event": "warning", "message": m}))
    last = {"message": ""}

    def show(fraction: float, message: str) -> None:
        if message != last["message"]:
            last["message"] = message
            print(f"[{100 * fraction:5.1f} %] {message}", file=sys.stderr, flush=True)

    return Progress(callback=show, warn_callback=lambda m: print(f"WARNING: {m}", file=sys.stderr, flush=True))


def check_paths(cfg: Any, clobber: bool) -> None:
    """The output weights never replace the base weights nor a file of the archive (issue 25: ``--weights w
    --out w`` overwrote the base in place), nor, with ``--no-clobber``, an existing file; and no file of the archive
    reaches the network (:mod:`engine.sources.footprint`)."""
    from engine.outputs.guard import check_output_path
    from engine.sources.footprint import Footprint, Read, input_footprint
    from training.finetune.run import resolve_base

    archive = Path(cfg.archive)
    entries = sorted(archive.glob("*/*")) if archive.is_dir() else []
    everything = sorted(p for p in archive.rglob("*") if p.is_file())[:100_000] if archive.is_dir() else []
    named = {"base weights": resolve_base(cfg), **{f"archive ({p.parent.name}/{p.name})": p for p in entries}}
    files = Footprint([Read(p.resolve(), "archive", str(archive), "a file of the archive") for p in everything])
    check_output_path(cfg.out, input_footprint(named).add(files), what="output weights", clobber=clobber)


def run(args: argparse.Namespace) -> int:
    from engine.errors import EngineError
    from training.finetune.scores import table_lines

    try:
        check_arguments(args)
        cfg = config_from_args(args)
        check_paths(cfg, args.clobber)
        result = _finetune(cfg, _progress(args.progress_json))
    except EngineError as exc:
        if not args.progress_json:
            raise
        emit({"event": "error", "message": str(exc), "kind": type(exc).__name__})
        return 2
    line = outcome_line(result)
    if args.progress_json:
        emit({"event": "result", "output": str(result.output), "steps": result.steps, "best_step": result.best_step,
              "stop_reason": result.stop_reason, "cancelled": result.cancelled, "message": line,
              "table": result.table, "archive": result.summary})
    else:
        print("\n".join(table_lines(result.table)))
        print(line)
    return 130 if result.cancelled else 0


def _finetune(cfg: Any, progress: Any) -> Any:
    """:func:`training.finetune.run.finetune`; a run that fails removes the work folder it created (a cancelled one
    keeps it: ``--resume`` continues from it)."""
    from engine.errors import Terminated
    from training.finetune.run import MARKER, finetune

    work = Path(cfg.work_dir)
    existed = work.exists()
    try:
        return finetune(cfg, progress)
    except BaseException as exc:
        if not existed and not isinstance(exc, (KeyboardInterrupt, Terminated)) and work.is_dir():
            if (work / MARKER).is_file():  # made by this run (it holds our marker), never the user's
                shutil.rmtree(work, ignore_errors=True)
            else:
                _rmdir(work)
        raise


def _rmdir(folder: Path) -> None:
    try:
        folder.rmdir()  # only when empty
    except OSError:
        pass
