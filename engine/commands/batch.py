"""``python -m engine batch``: decloud every scene of a manifest CSV on a Dask cluster (see :mod:`engine.batch`).

Exit codes: 0 when every scene succeeded, 1 when at least one failed (the summary CSV says which and why), 2 on
a user error before any scene ran (bad manifest, unreachable scheduler).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from engine.commands import add_clobber_argument
from engine.commands.run import accel_from_args, add_accel_arguments, add_tiling_arguments, tiling_options

NAME = "batch"
HELP = "decloud every scene of a manifest CSV, one scene per task on a Dask cluster"
DESCRIPTION = (
    "Manifest columns: id, optical, sar, out, and optionally landcover, mask, reference, model, weights, the "
    "temporal models' optical_prev, sar_prev, optical_next, sar_next, date, date_prev, date_next, dem, qa "
    "and confidence (the scene's QA and confidence rasters) (paths relative to the manifest, empty cell = not "
    "given; sar may be empty for gapfill). Writes a summary CSV (id, status, output, seconds, error, attempts, "
    "warnings, model_percent)."
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--manifest", required=True, type=Path, help="CSV with one scene per row")
    parser.add_argument(
        "--scheduler", default="local", help="local (a LocalCluster, default) or dask://HOST:PORT of a running one"
    )
    parser.add_argument("--workers", type=int, default=2, help="LocalCluster worker processes (default 2)")
    parser.add_argument("--retries", type=int, default=1, help="extra attempts after a crash (default 1)")
    parser.add_argument("--summary", type=Path, help="summary CSV (default: MANIFEST.summary.csv beside it)")
    add_tiling_arguments(parser, where=" on each worker")
    add_accel_arguments(parser)
    add_clobber_argument(parser)  # a scene whose output exists then fails, the others go on


def run(args: argparse.Namespace) -> int:
    from engine.batch import BatchConfig, default_summary_path, read_manifest, run_batch

    jobs = read_manifest(args.manifest)
    accel = accel_from_args(args)
    accel.validate()
    config = BatchConfig(
        scheduler=args.scheduler,
        workers=args.workers,
        retries=args.retries,
        run={**{row.name: getattr(args, row.name) for row in tiling_options()}, "clobber": args.clobber},
        accel={"dtype": accel.dtype, "compile": accel.compile, "threads": accel.threads, "prefetch": accel.prefetch,
               "backend": accel.backend},
    )
    config.validate()
    summary = args.summary or default_summary_path(args.manifest)

    def report(outcome, finished: int, total: int) -> None:
        detail = f"{outcome.seconds:.1f} s" if outcome.status == "ok" else outcome.error
        if outcome.warnings:
            detail += f"; warning: {outcome.warnings}"
        print(f"[{finished}/{total}] {outcome.id}: {outcome.status} ({detail})", file=sys.stderr, flush=True)

    outcomes = run_batch(jobs, config, summary, on_outcome=report, manifest=args.manifest)
    failed = [o for o in outcomes if o.status != "ok"]
    print(f"{len(outcomes) - len(failed)} of {len(outcomes)} scenes ok; summary in {summary}")
    return 1 if failed else 0
