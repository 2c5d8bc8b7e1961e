"""Geographically disjoint train/val/test splits of layout samples, and their CSV files (Cresson 2022, §4.3).

Samples are split by *spatial block*, never by sample: the grid cells are grouped into square blocks of
``block_cells`` × ``block_cells`` cells, the blocks holding samples are shuffled with a seed, and whole blocks go
to test (``test`` fraction of the blocks, 15 % in the paper), validation (5 %) and training (the rest). No two
splits share a cell, and blocks keep neighbouring (spatially correlated) patches on one side. As in the paper, the
training and validation splits keep at most ``max_per_location`` samples per cell (50 in the paper: dense swath
overlaps must not dominate), chosen at random with the same seed; the test split keeps every sample.
"""

from __future__ import annotations

import csv
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from training.layout.archive import Grid
from training.layout.query import AcquisitionLayout, Sample

SPLITS = ("train", "val", "test")
BUILD_FILE = "build.json"  # what build_dataset records next to the CSVs (archive path, patch size, split settings)


@dataclass(frozen=True)
class SplitConfig:
    block_cells: int = 4
    val: float = 0.05
    test: float = 0.15
    max_per_location: int | None = 50
    seed: int = 0


def block_of(col: int, row: int, block_cells: int) -> tuple[int, int]:
    return col // block_cells, row // block_cells


def assign_blocks(blocks: list[tuple[int, int]], cfg: SplitConfig) -> dict[tuple[int, int], str]:
    """Shuffle the blocks and hand out test, then val, then train; each non-empty fraction gets ≥ 1 block if it can."""
    blocks = sorted(set(blocks))
    rng = np.random.default_rng(cfg.seed)
    order = [blocks[i] for i in rng.permutation(len(blocks))]
    n = len(order)
    n_test = min(n, max(1 if cfg.test > 0 and n >= 3 else 0, round(n * cfg.test)))
    n_val = min(n - n_test, max(1 if cfg.val > 0 and n >= 3 else 0, round(n * cfg.val)))
    out = {}
    for i, b in enumerate(order):
        out[b] = "test" if i < n_test else "val" if i < n_test + n_val else "train"
    return out


def split_samples(samples: list[Sample], cfg: SplitConfig) -> dict[str, list[Sample]]:
    by_block = assign_blocks([block_of(s.col, s.row, cfg.block_cells) for s in samples], cfg)
    out: dict[str, list[Sample]] = {k: [] for k in SPLITS}
    for s in samples:
        out[by_block[block_of(s.col, s.row, cfg.block_cells)]].append(s)
    if cfg.max_per_location is not None:
        rng = np.random.default_rng(cfg.seed + 1)
        for name in ("train", "val"):
            per_cell: dict[tuple[int, int], list[Sample]] = defaultdict(list)
            for s in out[name]:
                per_cell[(s.col, s.row)].append(s)
            kept = []
            for cell in sorted(per_cell):
                lst = per_cell[cell]
                if len(lst) > cfg.max_per_location:
                    idx = sorted(rng.choice(len(lst), cfg.max_per_location, replace=False))
                    lst = [lst[i] for i in idx]
                kept.extend(lst)
            out[name] = kept
    return out


@dataclass(frozen=True)
class DemColumn:
    """The archive's DEM as the split files record it: its path relative to the archive and each cell's coverage."""

    path: str
    coverage: dict[tuple[int, int], float]


def columns(layout: AcquisitionLayout, dem: bool = False, sar_units: bool = False) -> list[str]:
    cols = ["col", "row", "left", "bottom", "right", "top", "crs"]
    for it in layout.items:
        cols += [f"{it.name}_optical", f"{it.name}_datetime", f"{it.name}_cloud"]
        if it.sar_max_gap_h is not None:
            cols += [f"{it.name}_sar", f"{it.name}_sar_datetime"] + ([f"{it.name}_sar_units"] if sar_units else [])
    if dem:
        cols += ["dem", "dem_valid"]
    return cols


def scene_ref(path: Path, root: Path) -> str:
    """A scene as the split files name it: relative to the archive, or absolute when it lies elsewhere (the VRT
    of a product, :mod:`training.layout.products`)."""
    return path.relative_to(root).as_posix() if path.is_relative_to(root) else path.as_posix()


def write_csv(
    path: Path, samples: list[Sample], layout: AcquisitionLayout, grid: Grid, root: Path, dem: DemColumn | None = None,
    sar_units: bool = False,
) -> None:
    """One row per sample: the cell, its ground bounds, and per item the scene paths (relative to the archive);
    with a DEM, its path (relative to the archive) and the fraction of the patch it covers (``dem``, ``dem_valid``);
    with ``sar_units``, each SAR scene's units (``<item>_sar_units``; empty: detect per patch)."""
    with path.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(columns(layout, dem is not None, sar_units))
        for s in samples:
            row: list[object] = [s.col, s.row, *grid.bounds(s.col, s.row), grid.crs]
            for it in layout.items:
                si = s.items[it.name]
                row += [scene_ref(si.optical.path, root), si.optical.when.isoformat(), f"{si.cloud:.3f}"]
                if it.sar_max_gap_h is not None:
                    assert si.sar is not None
                    row += [scene_ref(si.sar.path, root), si.sar.when.isoformat()]
                    row += [si.sar.units or ""] if sar_units else []
            if dem is not None:
                row += [dem.path, f"{dem.coverage[(s.col, s.row)]:.4f}"]
            w.writerow(row)
