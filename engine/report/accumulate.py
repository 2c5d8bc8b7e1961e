"""The report's single streaming pass: tile by tile, write the GeoTIFF layers and accumulate every number.

Tiles are ``tile_size`` px (default 300, the paper's patch; the cloud-cover bins are per tile) and are read with a
:data:`HALO` of context so that SSIM (window radius 5) and the cloud detector (7×7 smoothing) give, on every
tile's core, exactly what they would give on the whole image. Nothing scene-sized is ever held in memory: per
tile the arrays are (4, tile + 2·halo, tile + 2·halo); the rest is sums, a few histograms and the metric
accumulators of :mod:`engine.metrics`.

Quicklooks are filled in the same pass (:class:`Quicklooks`): each quicklook pixel takes the full-resolution pixel
nearest to its centre (what a nearest decimated read returns), copied out of whichever tile contains it. A
decimated read of the finished files would decompress every block once more, minutes on a 20k × 20k scene.

GDAL's block cache is sized for this pass (:func:`block_cache_bytes`) rather than left at GDAL's default (5 % of
the machine's RAM): the tiles (300 px) straddle the layers' 256 px blocks and the inputs' blocks, so every block
touched by one row of tiles is touched again by the next. A cache holding one row of tiles' blocks decodes each
input block once and writes each layer block once, whole; a smaller one decompresses inputs again and, worse,
flushes half-written layer blocks that GDAL then appends again to the compressed file (measured: layers 40 %
larger, 13 % slower with 64 MiB on 8192²); a larger one (GDAL's default on a big machine) only holds memory. So
memory grows with the scene's *width* (≈ 40 KB per column with 512² input blocks), never with its area.

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
import rasterio
from rasterio.windows import Window

from engine.cloudmask import detect_clouds
from engine.landcover import CLASS_NAMES, UNKNOWN, worldcover_to_classes
from engine.masks import cloud_mask_from_bands
from engine.metrics import SSIM_RADIUS, AccumulatorConfig, MetricAccumulator
from engine.ndvi import NDVI_CLASS_EDGES, NDVI_NODATA, ndvi
from engine.progress import Progress
from engine.report import LAYER_FILES
from engine.report.geotiff import BLOCK, atomic_geotiff, layer_profile
from engine.report.sources import Sources

HALO = SSIM_RADIUS  # ≥ 3, the cloud detector's smoothing radius, too
MASK_NODATA = 255
CHANGE_NODATA = -9999.0
HIST_BINS = 200  # NDVI 2-D histograms over [-1, 1]²
CACHE_FLOOR_BYTES = 64 * 1024 * 1024
CACHE_MARGIN = 1.1  # LRU slack: around the tile in progress, blocks of two rows of tiles are live at once


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
        """2-D histogram over [-1, 1]² (x along axis 0), as np.histogram2d but with one bincount (≈ 10× faster)."""
        ok = (x != NDVI_NODATA) & (y != NDVI_NODATA)
        ix = np.clip(((x[ok] + 1.0) * (HIST_BINS / 2.0)).astype(np.int64), 0, HIST_BINS - 1)
        iy = np.clip(((y[ok] + 1.0) * (HIST_BINS / 2.0)).astype(np.int64), 0, HIST_BINS - 1)
        h = np.bincount(ix * HIST_BINS + iy, minlength=HIST_BINS * HIST_BINS).reshape(HIST_BINS, HIST_BINS)
        self.hist2d[name] = self.hist2d.get(name, 0) + h

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


def quicklook_shape(height: int, width: int, side: int) -> tuple[int, int]:
    """Shape whose longer side is at most ``side`` (never upsampled), aspect kept."""
    f = max(height, width) / side
    if f <= 1:
        return height, width
    return max(1, round(height / f)), max(1, round(width / f))


class Quicklooks:
    """Nearest-neighbour decimated copies of the scene's layers, filled tile by tile."""

    def __init__(self, height: int, width: int, side: int):
        self.shape = quicklook_shape(height, width, side)
        qh, qw = self.shape
        # source row/column sampled by each quicklook row/column: the pixel under the quicklook pixel's centre
        self._rows = np.minimum(((np.arange(qh) + 0.5) * height / qh).astype(np.int64), height - 1)
        self._cols = np.minimum(((np.arange(qw) + 0.5) * width / qw).astype(np.int64), width - 1)
        self.layers: dict[str, np.ndarray] = {}

    def add(self, name: str, core: Window, data: np.ndarray, fill: float | int = 0) -> None:
        """Copy the sampled pixels of ``data`` ((…, h, w) on window ``core``) into layer ``name``."""
        if name not in self.layers:
            self.layers[name] = np.full((*data.shape[:-2], *self.shape), fill, dtype=data.dtype)
        r = (self._rows >= core.row_off) & (self._rows < core.row_off + core.height)
        c = (self._cols >= core.col_off) & (self._cols < core.col_off + core.width)
        if not r.any() or not c.any():
            return
        sub = data[..., self._rows[r] - core.row_off, :][..., self._cols[c] - core.col_off]
        self.layers[name][..., np.flatnonzero(r)[:, None], np.flatnonzero(c)[None, :]] = sub


@dataclass
class PassResult:
    """Everything the JSON and the plots need from the streaming pass."""

    stats: SceneStats
    output_metrics: MetricAccumulator | None
    cloudy_metrics: MetricAccumulator | None
    layers: dict[str, str]
    quicklooks: Quicklooks


def rows_of_blocks(rows: int, block_height: int) -> int:
    """Most pixel rows of whole block rows that a window ``rows`` tall can touch, wherever it starts."""
    return (-(-(rows - 1) // block_height) + 1) * block_height


def block_cache_bytes(src: Sources, tile_size: int, layer_dtypes: list[str]) -> int:
    """GDAL block cache (bytes) that holds every block one row of tiles touches, inputs and layers (worst case).

    Per scene column: each input's bytes per pixel (all its bands, as pixel-interleaved blocks decode them all) ×
    the rows of its blocks a tile + halo read can span, a reprojected one (``WarpedVRT``) twice (its own blocks
    and its source's); each layer's bytes × the rows of 256 px blocks a tile can span. Times the width, a margin,
    and at least :data:`CACHE_FLOOR_BYTES`.
    """
    read_rows = tile_size + 2 * HALO
    per_column = 0
    inputs = [src.optical.ds, src.prediction.ds]
    inputs += [src.reference.ds] if src.reference is not None else []
    inputs += [ds for ds in (src.landcover, src.mask) if ds is not None]
    for ds in inputs:
        pixel_bytes = sum(np.dtype(dt).itemsize for dt in ds.dtypes)
        copies = 1 if isinstance(ds, rasterio.io.DatasetReader) else 2
        per_column += copies * pixel_bytes * rows_of_blocks(read_rows, min(ds.block_shapes[0][0], ds.height))
    grid = src.grid
    layer_block = BLOCK if grid.width >= BLOCK and grid.height >= BLOCK else grid.height  # see layer_profile
    for dt in layer_dtypes:
        per_column += np.dtype(dt).itemsize * rows_of_blocks(tile_size, layer_block)
    return max(CACHE_FLOOR_BYTES, int(CACHE_MARGIN * grid.width * per_column))


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


def run_pass(src: Sources, out_dir: Path, tile_size: int, progress: Progress, quicklook_side: int = 700) -> PassResult:
    """Stream the scene once: write the layers atomically into ``out_dir`` and return the accumulated numbers."""
    grid = src.grid
    looks = Quicklooks(grid.height, grid.width, quicklook_side)
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
    dtypes = {name: "uint8" if name == "cloud_mask" else "float32" for name in layers}
    cache = block_cache_bytes(src, tile_size, list(dtypes.values()))
    # an int is bytes for rasterio (GDALSetCacheMax), restored on exit
    with rasterio.Env(GDAL_CACHEMAX=cache), ExitStack() as stack:
        dst = {
            name: stack.enter_context(
                atomic_geotiff(
                    out_dir / fname,
                    profile(dtypes[name], MASK_NODATA if name == "cloud_mask" else NDVI_NODATA),
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

            looks.add("optical", core, opt[(slice(None), *c)])
            looks.add("optical_valid", core, v_opt[c])
            looks.add("prediction", core, pred[(slice(None), *c)])
            looks.add("prediction_valid", core, v_pred[c])
            looks.add("cloud_mask", core, np.where(vc, cc.astype(np.uint8), MASK_NODATA).astype(np.uint8))
            looks.add("change_magnitude", core, np.where(vc, change, np.nan).astype(np.float32), np.nan)

            n_in = ndvi(opt[2][c], opt[3][c], vc)
            n_out = ndvi(pred[2][c], pred[3][c], vc)
            dst["ndvi_input"].write(n_in, 1, window=core)
            dst["ndvi_output"].write(n_out, 1, window=core)
            stats.add_ndvi("input", n_in)
            stats.add_ndvi("output", n_out)
            looks.add("ndvi_input", core, n_in, NDVI_NODATA)
            looks.add("ndvi_output", core, n_out, NDVI_NODATA)

            if has_ref:
                ref, v_ref = src.reference.read(read)
                v_all = valid & v_ref
                n_ref = ndvi(ref[2][c], ref[3][c], v_all[c])
                dst["ndvi_reference"].write(n_ref, 1, window=core)
                stats.add_ndvi("reference", n_ref)
                looks.add("ndvi_reference", core, n_ref, NDVI_NODATA)
                looks.add("reference", core, ref[(slice(None), *c)])
                looks.add("reference_valid", core, v_ref[c])
                stats.add_hist("reference_vs_output", n_ref, n_out)
                stats.add_hist("reference_vs_input", n_ref, n_in)
                for acc, cand in ((out_acc, pred), (cloudy_acc, opt)):
                    acc.update(cand, ref, valid=v_all, cloud=cloud, landcover=lc, halo=halo)
            else:
                stats.add_hist("input_vs_output", n_in, n_out)
            progress.update((i + 1) / len(tiles), "report: metrics and layers")
    return PassResult(stats=stats, output_metrics=out_acc, cloudy_metrics=cloudy_acc, layers=layers, quicklooks=looks)


def finite_or_none(x: float | None) -> float | None:
    return x if x is not None and math.isfinite(x) else None
