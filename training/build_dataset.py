"""``python -m training.build_dataset``: index a scene archive and write layout-matched, disjoint splits.

The framework of Cresson et al. (2022, §4): every patch of every scene is indexed once in an R-tree over cloud
cover, acquisition time, duration to the nearest valid SAR patch and valid-pixel fraction; an *acquisition
layout* (the paper's Tables 4–6 are built in: ``ssop``, ``msop``, ``msop-cld``; or a JSON file) is then answered
as R-tree queries, and the matching samples are split into geographically disjoint train / val / test CSVs.

Archive layout: see :mod:`training.layout.archive`; layouts: :mod:`training.layout.query`; splits:
:mod:`training.layout.split`. Output folder::

    OUT/train.csv, OUT/val.csv, OUT/test.csv   one row per sample (cell, bounds, CRS, per-item scene paths/dates)
    OUT/patches.csv                            the index: every patch with its statistics
    OUT/layout.json                            the layout that was queried (after command-line overrides)
    OUT/build.json                             the archive (absolute path), patch size and split settings: what
                                               the training reader (``kind = "layout"``) needs to find the scenes;
                                               ``dem``: the archive's DEM (path relative to it, or null) and
                                               ``dem_dropped``: samples left out for lack of elevation

DEM (optional; the paper's SSOP/MSOP_unet+DEM, §2.1.3, §3.1.2): when the archive holds one elevation raster
``dem.tif`` (see :mod:`training.layout.archive`), every split row also names it (column ``dem``) with the fraction
of the patch it covers once warped bilinearly onto the patch's optical pixels (``dem_valid``). A sample whose patch
the DEM covers less than the layout's ``min_valid`` (1.0 unless ``--min-valid``: the rule every optical and SAR
patch already obeys) is left out, and ``build.json`` counts them; a DEM that covers no patch at all is an error.
The reader (:class:`training.datasets.LayoutSplit`) then yields each sample's ``dem``; splits of an archive
without a DEM are unchanged, and the models without a DEM input ignore the column.

Example::

    python -m training.build_dataset --archive /data/occitanie --out splits/ssop --layout ssop --patch-size 256
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import json
import logging
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from engine.errors import EngineError, OutputError
from training.layout.archive import Grid, PatchStats, dem_coverage, find_dem, make_grid, patch_stats, scan_archive
from training.layout.query import LAYOUTS, AcquisitionLayout, PatchIndex, Sample, load_layout
from training.layout.split import BUILD_FILE, SPLITS, DemColumn, SplitConfig, split_samples, write_csv

log = logging.getLogger("training.build_dataset")


@dataclass(frozen=True)
class BuildResult:
    grid: Grid
    patches: list[PatchStats]
    samples: list[Sample]
    splits: dict[str, list[Sample]]
    dem: DemColumn | None = None  # the archive's DEM and each sample cell's coverage
    dem_dropped: int = 0  # samples left out because the DEM covers less than min_valid of their patch


def build(
    archive: str | Path,
    out: str | Path,
    layout: AcquisitionLayout,
    patch_size: int = 256,
    split: SplitConfig | None = None,
) -> BuildResult:
    """Index ``archive``, query ``layout``, write the split CSVs to ``out``; returns everything for inspection."""
    root = Path(archive).resolve()
    out_dir = Path(out)
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(f"cannot create {out_dir}: {exc.strerror}") from None
    scenes = scan_archive(root)
    grid = make_grid(scenes, patch_size)
    patches = patch_stats(scenes, grid)
    index = PatchIndex(patches, min_sar_valid=layout.min_valid)
    samples = index.query(layout)
    dem, dropped = None, 0
    dem_path = find_dem(root)
    if dem_path is not None:
        cells = sorted({(s.col, s.row) for s in samples})
        dem = DemColumn(dem_path.relative_to(root).as_posix(), dem_coverage(dem_path, grid, cells, patch_size))
        kept = [s for s in samples if dem.coverage[(s.col, s.row)] >= layout.min_valid]
        dropped = len(samples) - len(kept)
        if dropped:
            log.warning("%d of %d samples left out: %s covers less than %.0f%% of their patch", dropped,
                        len(samples), dem.path, 100 * layout.min_valid)
        samples = kept
    splits = split_samples(samples, split or SplitConfig())
    for name in SPLITS:
        write_csv(out_dir / f"{name}.csv", splits[name], layout, grid, root, dem)
    with (out_dir / "patches.csv").open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["scene", "kind", "datetime", "col", "row", "valid", "cloud"])
        for p in patches:
            w.writerow([p.scene.path.relative_to(root).as_posix(), p.scene.kind, p.scene.when.isoformat(),
                        p.col, p.row, f"{p.valid:.4f}", f"{p.cloud:.3f}"])
    (out_dir / "layout.json").write_text(layout.to_json())
    info = {"archive": str(root), "layout": layout.name, "patch_size": patch_size,
            "split": dataclasses.asdict(split or SplitConfig()), "samples": {k: len(v) for k, v in splits.items()},
            "dem": dem.path if dem is not None else None, "dem_dropped": dropped}
    (out_dir / BUILD_FILE).write_text(json.dumps(info, indent=2))
    return BuildResult(grid, patches, samples, splits, dem, dropped)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m training.build_dataset", description=__doc__.split("\n\n")[0])
    p.add_argument("--archive", required=True, help="archive folder (optical/, sar/, optional dates.csv, dem.tif)")
    p.add_argument("--out", required=True, help="output folder for train/val/test CSVs")
    p.add_argument("--layout", default="ssop", help=f"{', '.join(LAYOUTS)}, or a layout .json file (default ssop)")
    p.add_argument("--patch-size", type=int, default=256, help="patch side in optical pixels (default 256)")
    p.add_argument("--min-valid", type=float, help="minimum valid-pixel fraction per patch (layout default 1.0)")
    p.add_argument("--sar-max-gap-hours", type=float, help="override the SAR–optical pairing gap of the layout")
    p.add_argument("--block-cells", type=int, default=4, help="spatial split block side, in patches (default 4)")
    p.add_argument("--val", type=float, default=0.05, help="fraction of blocks for validation (default 0.05)")
    p.add_argument("--test", type=float, default=0.15, help="fraction of blocks for test (default 0.15)")
    p.add_argument("--max-per-location", type=int, default=50, help="train/val cap per patch location (0 = none)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--debug", action="store_true", help="show tracebacks")
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s: %(message)s")
    try:
        layout = load_layout(args.layout)
        if args.sar_max_gap_hours is not None:
            layout = layout.with_sar_gap(args.sar_max_gap_hours)
        if args.min_valid is not None:
            layout = AcquisitionLayout(layout.name, layout.items, args.min_valid)
        if args.patch_size < 1 or args.block_cells < 1:
            raise EngineError("--patch-size and --block-cells must be positive")
        cfg = SplitConfig(args.block_cells, args.val, args.test, args.max_per_location or None, args.seed)
        res = build(args.archive, args.out, layout, args.patch_size, cfg)
    except EngineError as exc:
        if args.debug:
            raise
        print(f"error: {exc}", file=sys.stderr)
        return 2
    counts = ", ".join(f"{k} {len(v)}" for k, v in res.splits.items())
    log.info("%d patches indexed, %d samples match layout '%s': %s", len(res.patches), len(res.samples),
             layout.name, counts)
    if res.dem is not None:
        log.info("DEM: %s (each sample's 'dem' column)", res.dem.path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
