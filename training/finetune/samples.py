"""The archive as fine-tuning samples: index, pair, hold out spatial blocks, write the split CSVs.

Two kinds of sample, both cut on the fly from the scenes (windowed reads of the split CSVs' ground bounds by
:class:`training.datasets.LayoutSplit`; nothing is copied):

* **real** pairs — a cloudy patch (≥ ``cloudy_min`` % cloud) with the nearest clear patch (≤ ``clear_max`` %) of
  the same place within ``pair_days`` days as the target, and the Sentinel-1 patch nearest the cloudy date within
  ``sar_days`` days (the paper's setting; Cresson's SSOP layout with a configurable window);
* **synthetic** pairs — a clear patch with its own Sentinel-1 patch; synthetic clouds
  (:func:`engine.refine.synthetic_clouds.add_clouds`) are laid on it when it is read, so the target is exact.

Validation holds out whole blocks of ``block_cells`` × ``block_cells`` patches. The blocks that hold real pairs and
the others are drawn apart (each gives ``val_fraction`` of its blocks, at least one when it has two or more), so
a small archive still validates on real clouds when it has any — a stratified spatial split, never a pixel split.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import rasterio
from rasterio.warp import transform_bounds

from engine.errors import InputError
from engine.progress import Progress
from training.finetune.config import FinetuneConfig
from training.layout.archive import Grid, PatchStats, Scene, foreign_scenes, make_grid, patch_stats
from training.layout.products import FolderStore, scan_products
from training.layout.query import INF, AcquisitionLayout, LayoutItem, PatchIndex, Sample, SampleItem
from training.layout.split import block_of, write_csv

KINDS = ("real", "synthetic")
DAY_H = 24.0


@dataclass
class ArchiveIndex:
    """The indexed archive; ``store`` holds the VRTs its product scenes are read through (:meth:`close` when the
    run no longer reads samples)."""

    root: Path
    scenes: list[Scene]
    grid: Grid
    patches: list[PatchStats]
    index: PatchIndex
    notices: list[str] = field(default_factory=list)
    store: FolderStore | None = None

    def close(self) -> None:
        if self.store is not None:
            self.store.close()


@dataclass
class SampleSet:
    """Samples per kind and split (``splits[kind][split]``) and what the model card says about the archive."""

    splits: dict[str, dict[str, list[Sample]]]
    summary: dict

    def count(self, kind: str, split: str) -> int:
        return len(self.splits[kind][split])


# --------------------------------------------------------------------------------------------- index
def index_archive(cfg: FinetuneConfig, progress: Progress) -> ArchiveIndex:
    """Scan and index the archive (any input form engine.sources.resolve reads, :mod:`training.layout.products`); every
    problem that would make fine-tuning pointless is raised here, before any training."""
    store = FolderStore()
    try:
        return _index(Path(cfg.archive).resolve(), store, cfg, progress)
    except BaseException:
        store.close()
        raise


def _index(root: Path, store: FolderStore, cfg: FinetuneConfig, progress: Progress) -> ArchiveIndex:
    notices: list[str] = []
    scenes = scan_products(root, store, names_as_dates=True, notices=notices)
    optical = [s for s in scenes if s.kind == "optical"]
    if len(optical) < 2:
        raise InputError(f"{root} has one optical scene only ({optical[0].label}): fine-tuning needs several "
                         "acquisitions of the area (a clear one, and cloudy ones or more clear ones)")
    if not any(s.kind == "sar" for s in scenes):
        raise InputError(f"{root} has no Sentinel-1 scene (expected sar/*.tif with VV, VH, or Sentinel-1 products)")
    grid = make_grid(scenes, cfg.patch_size, reproject=True)
    foreign = foreign_scenes(scenes, grid)
    if foreign:
        names = ", ".join(s.label for s in foreign[:4]) + (" …" if len(foreign) > 4 else "")
        notices.append(f"{len(foreign)} scene(s) not in {grid.crs} ({names}) are reprojected on the fly onto the "
                       f"first optical scene's grid ({optical[0].label}, nearest neighbour)")
    progress.update(0.3, f"indexing {len(scenes)} scenes")
    patches = patch_stats(scenes, grid)
    if not any(p.scene.kind == "optical" for p in patches):
        raise InputError(f"the optical scenes are smaller than one {cfg.patch_size}-pixel patch: lower --patch-size")
    index = PatchIndex(patches)
    _check_pairs(index, cfg)
    return ArchiveIndex(root, scenes, grid, patches, index, notices, store)


def _check_pairs(index: PatchIndex, cfg: FinetuneConfig) -> None:
    """No clear patch, or no optical patch with Sentinel-1 within the limit: say which, with the nearest gap."""
    ops = index.patches
    if not any(p.stats.cloud <= cfg.clear_max for p in ops):
        least = min(p.stats.cloud for p in ops)
        raise InputError(f"no clear acquisition in the archive: every optical patch has more than {cfg.clear_max:g} "
                         f"% cloud (least cloudy: {least:.1f} %); add a clear scene")
    gaps = [p.sar_gap_h for p in ops if p.sar_gap_h < INF]
    if not gaps:
        raise InputError("no Sentinel-1 scene overlaps any optical patch (check the scenes' extents and CRS)")
    if min(gaps) > cfg.sar_days * DAY_H:
        raise InputError(f"no Sentinel-1 scene within {cfg.sar_days:g} days of an optical scene (nearest: "
                         f"{min(gaps) / DAY_H:.1f} days); add Sentinel-1 scenes or raise --sar-max-days")


# --------------------------------------------------------------------------------------------- samples
def real_layout(cfg: FinetuneConfig) -> AcquisitionLayout:
    window = cfg.pair_days * DAY_H
    return AcquisitionLayout("finetune-real", (
        LayoutItem("t", (cfg.cloudy_min, 100.0), None, cfg.sar_days * DAY_H),
        LayoutItem("target", (0.0, cfg.clear_max), (-window, window), None),
    ))


def synthetic_layout(cfg: FinetuneConfig) -> AcquisitionLayout:
    """The CSV columns of a synthetic pair: the clear patch is both ``t`` (clouds laid on it) and ``target``."""
    return AcquisitionLayout("finetune-synthetic", (
        LayoutItem("t", (0.0, cfg.clear_max), None, cfg.sar_days * DAY_H),
        LayoutItem("target", (0.0, cfg.clear_max), (0.0, 0.0), None),
    ))


def synthetic_samples(index: PatchIndex, cfg: FinetuneConfig) -> list[Sample]:
    clear = AcquisitionLayout("finetune-clear", synthetic_layout(cfg).items[:1])
    out = []
    for s in index.query(clear):
        t = s.items["t"]
        out.append(Sample(s.col, s.row, {"t": t, "target": SampleItem(t.optical, t.cloud, None)}))
    return out


def _pick_blocks(blocks: set[tuple[int, int]], fraction: float, rng: np.random.Generator) -> set[tuple[int, int]]:
    order = sorted(blocks)
    order = [order[i] for i in rng.permutation(len(order))]
    n = len(order)
    k = min(n - 1, max(1, round(n * fraction))) if n >= 2 else 0
    return set(order[:k])


def split_blocks(real: list[Sample], synthetic: list[Sample], cfg: FinetuneConfig) -> set[tuple[int, int]]:
    """The held-out blocks: drawn among the blocks with real pairs and among the others apart (module docstring)."""
    rng = np.random.default_rng(cfg.seed)
    with_real = {block_of(s.col, s.row, cfg.block_cells) for s in real}
    others = {block_of(s.col, s.row, cfg.block_cells) for s in synthetic} - with_real
    val = _pick_blocks(with_real, cfg.val_fraction, rng) | _pick_blocks(others, cfg.val_fraction, rng)
    if not val:
        raise InputError(f"the archive's samples fill {len(with_real | others)} block(s) of {cfg.block_cells}×"
                         f"{cfg.block_cells} patches: too few to hold one out for validation; lower --patch-size")
    return val


def build_samples(idx: ArchiveIndex, cfg: FinetuneConfig) -> SampleSet:
    """Real and synthetic samples, split by held-out blocks; an archive giving no training or no validation
    sample is refused."""
    found = {"real": idx.index.query(real_layout(cfg)), "synthetic": synthetic_samples(idx.index, cfg)}
    val_blocks = split_blocks(found["real"], found["synthetic"], cfg)
    splits = {kind: {"train": [], "val": []} for kind in KINDS}
    for kind, samples in found.items():
        for s in samples:
            held = block_of(s.col, s.row, cfg.block_cells) in val_blocks
            splits[kind]["val" if held else "train"].append(s)
    for split in ("train", "val"):
        if not any(splits[k][split] for k in KINDS):
            raise InputError(f"no {split} sample once blocks are held out ({len(val_blocks)} held out); lower "
                             "--patch-size or --val-fraction, or add scenes")
    out = SampleSet(splits, {})
    out.summary = archive_summary(idx, out, sorted(val_blocks), cfg)
    return out


# --------------------------------------------------------------------------------------------- files and summary
def write_splits(work: Path, idx: ArchiveIndex, samples: SampleSet, cfg: FinetuneConfig) -> dict[str, dict[str, Path]]:
    """``WORK/{real,synthetic}_{train,val}.csv`` (the ``build_dataset`` columns) and ``WORK/archive.json``."""
    layouts = {"real": real_layout(cfg), "synthetic": synthetic_layout(cfg)}
    paths: dict[str, dict[str, Path]] = {}
    for kind in KINDS:
        paths[kind] = {}
        for split in ("train", "val"):
            path = work / f"{kind}_{split}.csv"
            write_csv(path, samples.splits[kind][split], layouts[kind], idx.grid, idx.root, sar_units=True)
            paths[kind][split] = path
    (work / "archive.json").write_text(json.dumps(samples.summary, indent=2))
    return paths


def _area(idx: ArchiveIndex, patch_size: int) -> dict:
    """Bounds of the optical scenes in the grid CRS and in longitude/latitude, and the optical pixel size (m)."""
    lefts, bottoms, rights, tops = [], [], [], []
    for s in idx.scenes:
        if s.kind != "optical":
            continue
        with rasterio.open(s.path) as ds:
            b = transform_bounds(ds.crs, idx.grid.crs, *ds.bounds)
        lefts.append(b[0]), bottoms.append(b[1]), rights.append(b[2]), tops.append(b[3])
    bounds = (min(lefts), min(bottoms), max(rights), max(tops))
    lonlat = transform_bounds(idx.grid.crs, "EPSG:4326", *bounds)
    px = idx.grid.size / patch_size
    if rasterio.crs.CRS.from_user_input(idx.grid.crs).is_geographic:
        px *= 111_320.0 * math.cos(math.radians((lonlat[1] + lonlat[3]) / 2))
    return {"crs": idx.grid.crs, "bounds": [round(v, 6) for v in bounds],
            "bounds_lonlat": [round(v, 5) for v in lonlat], "pixel_m": round(px, 2)}


def sensor_guess(pixel_m: float) -> str:
    """What the optical pixel size says about the sensor (the card's ``sensor``; the engine does not need it)."""
    if pixel_m < 5:
        return f"PlanetScope-like ({pixel_m:g} m pixels)"
    return f"Sentinel-2-like ({pixel_m:g} m pixels)"


def archive_summary(idx: ArchiveIndex, samples: SampleSet, val_blocks: list, cfg: FinetuneConfig) -> dict:
    area = _area(idx, cfg.patch_size)
    dates = sorted(s.when for s in idx.scenes)
    return {
        "archive": str(idx.root),
        **area,
        "sensor": sensor_guess(area["pixel_m"]),
        "dates": [dates[0].isoformat(), dates[-1].isoformat()],
        "scenes": {k: sum(s.kind == k for s in idx.scenes) for k in ("optical", "sar")},
        "patch_size": cfg.patch_size,
        "samples": {kind: {split: samples.count(kind, split) for split in ("train", "val")} for kind in KINDS},
        "held_out_blocks": [list(b) for b in val_blocks],
        "block_cells": cfg.block_cells,
        "notices": idx.notices,
    }

