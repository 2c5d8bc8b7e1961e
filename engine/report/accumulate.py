"""The report's single streaming pass: tile by tile, write the GeoTIFF layers and accumulate every number.

Tiles are ``tile_size`` px (default 300, the paper's patch; the cloud-cover bins are per tile) and are read with a
:data:`HALO` of context so that SSIM (window radius 5) and the cloud detector (7×7 smoothing) give, on every
tile's core, exactly what they would give on the whole image. Nothing scene-sized is ever held in memory: per
tile the arrays are (4, tile + 2·halo, tile + 2·halo); the rest is sums, a few histograms and the metric
accumulators of :mod:`engine.metrics`.

Validity: a pixel counts when all four bands of the optical input and of the prediction are valid (source nodata
/ internal mask); metrics additionally need the reference to be valid there. Cloud cover is cloud pixels / valid
pixels.
"""

from __future__ import annotations

import math
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from rasterio.windows import Window

from engine.cloudmask import detect_clouds
from engine.landcover import CLASS_NAMES, UNKNOWN, worldcover_to_classes
from engine.masks import cloud_mask_from_bands
from engine.metrics import SSIM_RADIUS, AccumulatorConfig, MetricAccumulator
from engine.ndvi import NDVI_CLASS_EDGES, NDVI_NODATA, ndvi
from engine.progress import Progress
from engine.report.geotiff import atomic_geotiff, layer_profile
from engine.report.sources import Sources

HALO = SSIM_RADIUS  # ≥ 3, the cloud detector's smoothing radius, too
MASK_NODATA = 255
CHANGE_NODATA = -9999.0
HIST_BINS = 200  # NDVI 2-D histograms over [-1, 1]²
LAYER_FILES = {
    "cloud_mask": "cloud_mask.tif",
    "change_magnitude": "change_magnitude.tif",
    "ndvi_input": "ndvi_input.tif",
    "ndvi_output": "ndvi_output.tif",
    "ndvi_reference": "ndvi_reference.tif",
}


@dataclass
class SceneStats:
    """Reference-free numbers: pixel counts, per-class counts, change magnitude, NDVI distributions."""

    total: int = 0
    valid: int = 0
    cloud: int = 0
    class_pixels: np.ndarray = field(default_factory=lambda: np.zeros(len(CLASS_NAMES) + 1, dtype=np.int64))
    change_sum: dict[str, float] = field(default_factory=lambda: {"all": 0.0, "cloud": 0.0, "clear": 0.0})
    ndvi_sum: dict[str, float] = field(default_factory=dict)
    ndvi_n: dict[str, int] = field(default_factory=dict)
    ndvi_class_counts: dict[str, np.ndarray] = field(default_factory=dict)
    hist2d: dict[str, np.ndarray] = field(default_factory=dict)

    def add_ndvi(self, name: str, values: np.ndarray) -> None:
        ok = values != NDVI_NODATA
        v = values[ok].astype(np.float64)
        self.ndvi_sum[name] = self.ndvi_sum.get(name, 0.0) + float(v.sum())
        self.ndvi_n[name] = self.ndvi_n.get(name, 0) + int(v.size)
        edges = np.asarray(NDVI_CLASS_EDGES, dtype=np.float32)
        counts = np.bincount(np.searchsorted(edges, values[ok], side="right"), minlength=len(edges) + 1)
        self.ndvi_class_counts[name] = self.ndvi_class_counts.get(name, 0) + counts

    def add_hist(self, name: str, x: np.ndarray, y: np.ndarray) -> None:
        ok = (x != NDVI_NODATA) & (y != NDVI_NODATA)
        h, _, _ = np.histogram2d(x[ok], y[ok], bins=HIST_BINS, range=((-1, 1), (-1, 1)))
        self.hist2d[name] = self.hist2d.get(name, 0) + h.astype(np.int64)

    def ndvi_summary(self, name: str) -> dict[str, Any] | None:
        n = self.ndvi_n.get(name, 0)
        if name not in self.ndvi_n:
            return None
        counts = self.ndvi_class_counts[name]
        return {
            "pixels": n,
            "mean": self.ndvi_sum[name] / n if n else None,
            "class_fractions": [float(c) / n if n else 0.0 for c in counts],
        }


@dataclass
class PassResult:
    """Everything the JSON and the plots need from the streaming pass."""

    stats: SceneStats
    output_metrics: MetricAccumulator | None
    cloudy_metrics: MetricAccumulator | None
    layers: dict[str, str]


def _tiles(width: int, height: int, size: int) -> list[tuple[Window, Window, tuple[int, int, int, int]]]:
    """(core window, read window = core + halo clipped to the image, halo per side (top, bottom, left, right))."""
    out = []
    for y in range(0, height, size):
        for x in range(0, width, size):
            h, w = min(size, height - y), min(size, width - x)
            y0, x0 = max(0, y - HALO), max(0, x - HALO)
            y1, x1 = min(height, y + h + HALO), min(width, x + w + HALO)
            out.append((Window(x, y, w, h), Window(x0, y0, x1 - x0, y1 - y0), (y - y0, y1 - y - h, x - x0, x1 - x - w)))
    return out


def run_pass(src: Sources, out_dir: Path, tile_size: int, progress: Progress) -> PassResult:
    """Stream the scene once: write the layers atomically into ``out_dir`` and return the accumulated numbers."""
    grid = src.grid
    has_ref = src.reference is not None
    layers = dict(LAYER_FILES)
    if not has_ref:
        layers.pop("ndvi_reference")
    stats = SceneStats()
    cfg = AccumulatorConfig(class_names=CLASS_NAMES)
    out_acc = MetricAccumulator(cfg) if has_ref else None
    cloudy_acc = MetricAccumulator(cfg) if has_ref else None

    def profile(dtype: str, nodata: float) -> dict[str, Any]:
        return layer_profile(
            width=grid.width, height=grid.height, crs=grid.crs, transform=grid.transform, dtype=dtype, nodata=nodata
        )

    tiles = _tiles(grid.width, grid.height, tile_size)
    with ExitStack() as stack:
        dst = {
            name: stack.enter_context(
                atomic_geotiff(
                    out_dir / fname,
                    profile("uint8", MASK_NODATA) if name == "cloud_mask" else profile("float32", NDVI_NODATA),
                )
            )
            for name, fname in layers.items()
        }
        for i, (core, read, halo) in enumerate(tiles):
            progress.check_cancelled()
            top, bottom, left, right = halo
            c = (slice(top, read.height - bottom), slice(left, read.width - right))
            opt, v_opt = src.optical.read(read)
            pred, v_pred = src.prediction.read(read)
            valid = v_opt & v_pred
            if src.mask is not None:
                cloud = cloud_mask_from_bands(src.mask.read(window=read))
            else:
                cloud = detect_clouds(np.where(valid, opt, 0.0))
            cloud &= valid
            lc = None
            if src.landcover is not None:
                lc = worldcover_to_classes(src.landcover.read(1, window=read))

            vc, cc = valid[c], cloud[c]
            stats.total += vc.size
            stats.valid += int(vc.sum())
            stats.cloud += int(cc.sum())
            if lc is not None:
                stats.class_pixels += np.bincount(lc[c][vc], minlength=UNKNOWN + 1)[: UNKNOWN + 1]

            change = np.abs(pred[(slice(None), *c)] - opt[(slice(None), *c)]).mean(axis=0)
            stats.change_sum["all"] += float(change[vc].sum())
            stats.change_sum["cloud"] += float(change[cc].sum())
            stats.change_sum["clear"] += float(change[vc & ~cc].sum())
            dst["change_magnitude"].write(np.where(vc, change, CHANGE_NODATA).astype(np.float32), 1, window=core)
            dst["cloud_mask"].write(np.where(vc, cc.astype(np.uint8), MASK_NODATA).astype(np.uint8), 1, window=core)

            n_in = ndvi(opt[2][c], opt[3][c], vc)
            n_out = ndvi(pred[2][c], pred[3][c], vc)
            dst["ndvi_input"].write(n_in, 1, window=core)
            dst["ndvi_output"].write(n_out, 1, window=core)
            stats.add_ndvi("input", n_in)
            stats.add_ndvi("output", n_out)

            if has_ref:
                ref, v_ref = src.reference.read(read)
                v_all = valid & v_ref
                n_ref = ndvi(ref[2][c], ref[3][c], v_all[c])
                dst["ndvi_reference"].write(n_ref, 1, window=core)
                stats.add_ndvi("reference", n_ref)
                stats.add_hist("reference_vs_output", n_ref, n_out)
                stats.add_hist("reference_vs_input", n_ref, n_in)
                for acc, cand in ((out_acc, pred), (cloudy_acc, opt)):
                    acc.update(cand, ref, valid=v_all, cloud=cloud, landcover=lc, halo=halo)
            else:
                stats.add_hist("input_vs_output", n_in, n_out)
            progress.update((i + 1) / len(tiles), "report: metrics and layers")
    return PassResult(stats=stats, output_metrics=out_acc, cloudy_metrics=cloudy_acc, layers=layers)


def finite_or_none(x: float | None) -> float | None:
    return x if x is not None and math.isfinite(x) else None
