"""The report's single streaming pass: tile by tile, write the GeoTIFF layers and accumulate every number.

Tiles are ``tile_size`` px (default 300, the paper's patch; the cloud-cover bins are per tile) and are read with a
:data:`HALO` of context so that SSIM (window radius 5) and the cloud detector (7×7 smoothing) give, on every
tile's core, exactly what they would give on the whole image. Nothing scene-sized is ever held in memory: per
tile the arrays are (4, tile + 2·halo, tile + 2·halo); the rest is sums, a few histograms and the metric
accumulators of :mod:`engine.outputs.metrics`.

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
pixels. The cloud mask is the given one, or the clouds detected on the optical input's valid pixels.

Baselines (:mod:`engine.refine.baselines`, when asked for and a reference is given): ``flat`` and ``fill`` of the cloudy
input are made tile by tile from the same cloud mask and fed to their own :class:`MetricAccumulator` exactly like the
output, so their numbers are on the same pixels. ``flat`` needs the scene's clear medians before the first tile:
a first pass (:func:`clear_sample_pass`) reads the optical input (and mask) tile by tile and takes the median of
its clear pixels — all of them up to :data:`engine.refine.baselines.MEDIAN_SAMPLE_PX` pixels, beyond that a regular grid
of about that many (the median of millions of pixels does not move in the third decimal). ``fill`` is solved per
tile on the optical input read with :data:`engine.refine.baselines.DEFAULT_HALO` more pixels of context (exact for
clouds narrower than that).

Off-gamut shares (:func:`engine.outputs.metrics.off_gamut_share`, with a reference): every method's and the
reference's, against the gamut of the cloudy input's clear pixels, need that gamut before the first tile too. It is
taken from the same first pass and the same sample as the flat medians (so with a reference the first pass runs
even without baselines): on a scene of at most :data:`engine.refine.baselines.MEDIAN_SAMPLE_PX` pixels every clear
pixel, so the streamed shares equal the whole-image computation exactly; beyond that the grid sample, whose 0.5th
and 99.5th percentiles do not move in the third decimal either.
"""

from __future__ import annotations

from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import rasterio
from rasterio.windows import Window

from engine.align.cloudmask import detect_clouds
from engine.outputs.metrics import SSIM_RADIUS, AccumulatorConfig, Gamut, MetricAccumulator, gamut_of
from engine.outputs.ndvi import NDVI_CLASS_EDGES, NDVI_NODATA, ndvi
from engine.outputs.writer import LAYER_BLOCK, AtomicGeoTIFFWriter, OutputSpec, layer_spec
from engine.progress import Progress
from engine.refine.baselines import DEFAULT_HALO, fill_window, flat, median_stride, sample_grid
from engine.report import LAYER_FILES
from engine.report.sources import Sources
from engine.sources.landcover import CLASS_NAMES, UNKNOWN, worldcover_to_classes
from engine.sources.masks import cloud_mask_from_bands

HALO = SSIM_RADIUS  # ≥ 3, the cloud detector's smoothing radius, too
MASK_NODATA = 255
CHANGE_NODATA = -9999.0
HIST_BINS = 200  # NDVI 2-D histograms over [-1, 1]²
CACHE_FLOOR_BYTES = 64 * 1024 * 1024
FILL_BLOCK = 512  # px per side of one fill solve (plus its halo)
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
    baseline_metrics: dict[str, MetricAccumulator] = field(default_factory=dict)
    medians: np.ndarray | None = None  # the flat baseline's per-band values (B, G, R, NIR), when computed
    gamut: Gamut | None = None  # the cloudy input's clear-pixel gamut the off-gamut shares are taken against
    writers: list[AtomicGeoTIFFWriter] = field(default_factory=list)  # the layers, finished, renamed by the caller


def rows_of_blocks(rows: int, block_height: int) -> int:
    """Most pixel rows of whole block rows that a window ``rows`` tall can touch, wherever it starts."""
    return (-(-(rows - 1) // block_height) + 1) * block_height


def block_cache_bytes(src: Sources, tile_size: int, layer_dtypes: list[str], context: int = 0) -> int:
    """GDAL block cache (bytes) that holds every block one row of tiles touches, inputs and layers (worst case).

    Per scene column: each input's bytes per pixel (all its bands, as pixel-interleaved blocks decode them all) ×
    the rows of its blocks a tile + halo read can span, a reprojected one (``WarpedVRT``) twice (its own blocks
    and its source's); each layer's bytes × the rows of 256 px blocks a tile can span. Times the width, a margin,
    and at least :data:`CACHE_FLOOR_BYTES`. ``context``: extra pixels per side the optical input and the mask are
    read with (the fill baseline's halo).
    """
    read_rows = tile_size + 2 * HALO
    per_column = 0
    inputs = [(src.optical.ds, context), (src.prediction.ds, 0)]
    inputs += [(src.reference.ds, 0)] if src.reference is not None else []
    inputs += [(src.landcover, 0)] if src.landcover is not None else []
    inputs += [(src.mask, context)] if src.mask is not None else []
    for ds, extra in inputs:
        pixel_bytes = sum(np.dtype(dt).itemsize for dt in ds.dtypes)
        copies = 1 if isinstance(ds, rasterio.io.DatasetReader) else 2
        block_rows = min(ds.block_shapes[0][0], ds.height)
        per_column += copies * pixel_bytes * rows_of_blocks(read_rows + 2 * extra, block_rows)
    grid = src.grid
    layer_block = LAYER_BLOCK if min(grid.width, grid.height) >= LAYER_BLOCK else grid.height  # see layer_spec
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


def _grown(window: Window, by: int, width: int, height: int) -> tuple[Window, tuple[int, int, int, int]]:
    """``window`` grown by ``by`` px per side, clipped to the image, and ``window``'s margins inside it (t, b, l, r)."""
    y0, x0 = max(0, window.row_off - by), max(0, window.col_off - by)
    y1 = min(height, window.row_off + window.height + by)
    x1 = min(width, window.col_off + window.width + by)
    margins = (window.row_off - y0, y1 - window.row_off - window.height,
               window.col_off - x0, x1 - window.col_off - window.width)  # fmt: skip
    return Window(x0, y0, x1 - x0, y1 - y0), margins


def _inner(margins: tuple[int, int, int, int], shape: tuple[int, ...]) -> tuple[slice, slice]:
    top, bottom, left, right = margins
    return slice(top, shape[-2] - bottom), slice(left, shape[-1] - right)


def read_optical_and_cloud(src: Sources, window: Window) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The optical input on ``window`` ((4, h, w) in [0, 1]), its validity and the evaluation's cloud mask there:
    the given mask, else the clouds detected on the valid optical pixels; never cloud where the optical is invalid."""
    opt, v_opt = src.optical.read(window)
    if src.mask is not None:
        cloud = cloud_mask_from_bands(src.mask.read(window=window))
    else:
        cloud = detect_clouds(np.where(v_opt, opt, 0.0))
    return opt, v_opt, cloud & v_opt


def clear_medians_pass(src: Sources, tile_size: int, progress: Progress) -> np.ndarray | None:
    """Per-band median (4,) of the optical input's clear pixels over the whole scene, or None when none is clear."""
    return medians_of(clear_sample_pass(src, tile_size, progress))


def medians_of(sample: np.ndarray) -> np.ndarray | None:
    """The flat baseline's per-band medians of a (4, N) clear-pixel sample; None when it is empty."""
    return np.median(sample, axis=1).astype(np.float32) if sample.shape[1] else None


def clear_sample_pass(src: Sources, tile_size: int, progress: Progress) -> np.ndarray:
    """(4, N) values of the optical input's clear pixels over the whole scene (the flat medians and the gamut).

    A first pass over the same tiles (and so the same cloud mask) as :func:`run_pass`; every pixel when the scene
    has at most :data:`engine.refine.baselines.MEDIAN_SAMPLE_PX`, else the pixels on a regular grid of about that many.
    """
    grid = src.grid
    stride = median_stride(grid.width, grid.height)
    tiles = _tiles(grid.width, grid.height, tile_size)
    parts = []
    for i, (core, read, halo) in enumerate(tiles):
        progress.check_cancelled()
        opt, v_opt, cloud = read_optical_and_cloud(src, read)
        c = _inner(halo, cloud.shape)
        rows, cols = sample_grid((core.height, core.width), core.row_off, core.col_off, stride)
        core_opt = opt[(slice(None), *c)][:, rows][:, :, cols]
        clear = (v_opt[c] & ~cloud[c])[rows][:, cols]
        parts.append(core_opt[:, clear])
        progress.update((i + 1) / len(tiles), "report: the clear pixels' medians and gamut")
    return np.concatenate(parts, axis=1)


def _fill_blocks(
    opt: np.ndarray, cloud: np.ndarray, inner: tuple[slice, slice], medians: np.ndarray | None
) -> np.ndarray:
    """The fill baseline on the ``inner`` part of ``opt``, in blocks of at most :data:`FILL_BLOCK` px each solved
    with :data:`engine.refine.baselines.DEFAULT_HALO` px of the context around it, so that a large ``--tile-size`` does
    not make one huge sparse solve (memory grows faster than the pixels it covers)."""
    (y0, y1), (x0, x1) = (inner[0].start, inner[0].stop), (inner[1].start, inner[1].stop)
    h, w = cloud.shape
    out = np.empty((opt.shape[0], y1 - y0, x1 - x0), dtype=np.float32)
    for by in range(y0, y1, FILL_BLOCK):
        for bx in range(x0, x1, FILL_BLOCK):
            ey, ex = min(by + FILL_BLOCK, y1), min(bx + FILL_BLOCK, x1)
            cy0, cx0 = max(0, by - DEFAULT_HALO), max(0, bx - DEFAULT_HALO)
            cy1, cx1 = min(h, ey + DEFAULT_HALO), min(w, ex + DEFAULT_HALO)
            out[:, by - y0 : ey - y0, bx - x0 : ex - x0] = fill_window(
                opt[:, cy0:cy1, cx0:cx1], cloud[cy0:cy1, cx0:cx1], (by - cy0, cy1 - ey, bx - cx0, cx1 - ex), medians
            )
    return out


def _baseline_images(
    names: tuple[str, ...], opt: np.ndarray, v_opt: np.ndarray, cloud: np.ndarray,
    margins: tuple[int, int, int, int], medians: np.ndarray | None,
) -> dict[str, np.ndarray]:
    """The baselines of the cloudy input on the read window, from the input read with ``margins`` more context."""
    inner = _inner(margins, cloud.shape)
    images = {}
    for name in names:
        if name == "flat":
            images[name] = flat(opt[(slice(None), *inner)], cloud[inner], medians)
        elif name == "fill":
            images[name] = _fill_blocks(np.where(v_opt, opt, np.nan), cloud, inner, medians)
        else:
            raise ValueError(f"unknown baseline '{name}'")
    return images


def run_pass(
    src: Sources, out_dir: Path, tile_size: int, progress: Progress, quicklook_side: int = 700,
    baselines: tuple[str, ...] = (), clobber: bool = True,
) -> PassResult:
    """Stream the scene once: write the layers into ``out_dir`` and return the accumulated numbers. The layers are
    finished and verified but not renamed into place: the caller commits them (:attr:`PassResult.writers`) with the
    rest of the report, so a report that fails leaves none of its files.

    ``baselines`` (names from :data:`engine.refine.baselines.BASELINES`) are scored beside the output when there is a
    reference (without one there is nothing to score them against, and they are skipped).
    """
    grid = src.grid
    looks = Quicklooks(grid.height, grid.width, quicklook_side)
    has_ref = src.reference is not None
    baselines = tuple(baselines) if has_ref else ()
    layers = dict(LAYER_FILES)
    if not has_ref:
        layers.pop("ndvi_reference")
    stats = SceneStats()
    cfg = AccumulatorConfig(class_names=CLASS_NAMES)
    out_acc = MetricAccumulator(cfg) if has_ref else None
    cloudy_acc = MetricAccumulator(cfg) if has_ref else None
    base_acc = {name: MetricAccumulator(cfg) for name in baselines}
    context = DEFAULT_HALO if "fill" in baselines else 0  # the optical input and mask are read with it
    medians, gamut = None, None
    if has_ref:
        sample = clear_sample_pass(src, tile_size, progress.scaled(0.0, 0.1))
        progress = progress.scaled(0.1, 1.0)
        medians = medians_of(sample) if baselines else None
        gamut = gamut_of(sample)

    def spec(dtype: str, nodata: float) -> OutputSpec:
        return layer_spec(
            width=grid.width, height=grid.height, crs=grid.crs, transform=grid.transform, dtype=dtype, nodata=nodata
        )

    tiles = _tiles(grid.width, grid.height, tile_size)
    finished = False
    dtypes = {name: "uint8" if name == "cloud_mask" else "float32" for name in layers}
    cache = block_cache_bytes(src, tile_size, list(dtypes.values()), context)
    # an int is bytes for rasterio (GDALSetCacheMax), restored on exit
    with rasterio.Env(GDAL_CACHEMAX=cache), ExitStack() as stack:
        writers = [AtomicGeoTIFFWriter(out_dir / fname, spec(dtypes[name], MASK_NODATA if name == "cloud_mask"
                                       else NDVI_NODATA), defer=True, clobber=clobber)
                   for name, fname in layers.items()]  # fmt: skip
        stack.callback(lambda: None if finished else [w.discard() for w in writers])
        dst = {name: stack.enter_context(w) for name, w in zip(layers, writers)}
        tile_pass = _TilePass(src, dst, looks, stats, out_acc, cloudy_acc, base_acc, baselines, medians, context,
                              gamut)
        for i, (core, read, halo) in enumerate(tiles):
            progress.check_cancelled()
            tile_pass.tile(core, read, halo)
            progress.update((i + 1) / len(tiles), "report: metrics and layers")
        finished = True
    return PassResult(stats=stats, output_metrics=out_acc, cloudy_metrics=cloudy_acc, layers=layers, quicklooks=looks,
                      baseline_metrics=base_acc, medians=medians, gamut=gamut, writers=writers)  # fmt: skip


@dataclass
class _TilePass:
    """What one tile of :func:`run_pass` updates: the layer files, quicklooks, scene stats and the accumulators of
    the output, the cloudy input and the baselines. Each method is one step of a tile."""

    src: Sources
    dst: dict[str, AtomicGeoTIFFWriter]
    looks: Quicklooks
    stats: SceneStats
    out_acc: MetricAccumulator | None
    cloudy_acc: MetricAccumulator | None
    base_acc: dict[str, MetricAccumulator]
    baselines: tuple[str, ...]
    medians: np.ndarray | None
    context: int
    gamut: Gamut | None

    def tile(self, core: Window, read: Window, halo: tuple[int, int, int, int]) -> None:
        grid = self.src.grid
        c = _inner(halo, (read.height, read.width))
        outer, margins = _grown(read, self.context, grid.width, grid.height)
        opt_o, v_opt_o, cloud_o = read_optical_and_cloud(self.src, outer)
        inner = _inner(margins, cloud_o.shape)
        opt, v_opt, cloud = opt_o[(slice(None), *inner)], v_opt_o[inner], cloud_o[inner]
        pred, v_pred = self.src.prediction.read(read)
        valid = v_opt & v_pred
        cloud = cloud & valid
        lc = None
        if self.src.landcover is not None:
            lc = worldcover_to_classes(self.src.landcover.read(1, window=read))
        self._count(valid[c], cloud[c], None if lc is None else lc[c])
        self._change_and_mask(core, c, opt, v_opt, pred, v_pred, valid[c], cloud[c])
        n_in, n_out = self._ndvi(core, c, opt, pred, valid[c])
        if self.src.reference is None:
            self.stats.add_hist("input_vs_output", n_in, n_out)
            return
        ref, v_ref = self.src.reference.read(read)
        v_all = valid & v_ref
        n_ref = ndvi(ref[2][c], ref[3][c], v_all[c])
        self.dst["ndvi_reference"].write(n_ref[None], core)
        self.stats.add_ndvi("reference", n_ref)
        self.looks.add("ndvi_reference", core, n_ref, NDVI_NODATA)
        self.looks.add("reference", core, ref[(slice(None), *c)])
        self.looks.add("reference_valid", core, v_ref[c])
        self.stats.add_hist("reference_vs_output", n_ref, n_out)
        self.stats.add_hist("reference_vs_input", n_ref, n_in)
        candidates = [(self.out_acc, pred), (self.cloudy_acc, opt)]
        images = _baseline_images(self.baselines, opt_o, v_opt_o, cloud_o, margins, self.medians)
        for name, image in images.items():
            self.looks.add(f"baseline_{name}", core, image[(slice(None), *c)])
            candidates.append((self.base_acc[name], image))
        for acc, cand in candidates:
            acc.update(cand, ref, valid=v_all, cloud=cloud, landcover=lc, halo=halo, gamut=self.gamut)

    def _count(self, vc: np.ndarray, cc: np.ndarray, lc: np.ndarray | None) -> None:
        stats = self.stats
        stats.total += vc.size
        stats.valid += int(vc.sum())
        stats.cloud += int(cc.sum())
        if lc is not None:
            stats.class_pixels += np.bincount(lc[vc], minlength=UNKNOWN + 1)[: UNKNOWN + 1]

    def _change_and_mask(self, core: Window, c: tuple, opt: np.ndarray, v_opt: np.ndarray, pred: np.ndarray,
                         v_pred: np.ndarray, vc: np.ndarray, cc: np.ndarray) -> None:
        change = np.abs(pred[(slice(None), *c)] - opt[(slice(None), *c)]).mean(axis=0)
        self.stats.change_sum["all"] += float(change[vc].sum())
        self.stats.change_sum["cloud"] += float(change[cc].sum())
        self.stats.change_sum["clear"] += float(change[vc & ~cc].sum())
        mask = np.where(vc, cc.astype(np.uint8), MASK_NODATA).astype(np.uint8)
        self.dst["change_magnitude"].write(np.where(vc, change, CHANGE_NODATA).astype(np.float32)[None], core)
        self.dst["cloud_mask"].write(mask[None], core)
        looks = self.looks
        looks.add("optical", core, opt[(slice(None), *c)])
        looks.add("optical_valid", core, v_opt[c])
        looks.add("prediction", core, pred[(slice(None), *c)])
        looks.add("prediction_valid", core, v_pred[c])
        looks.add("cloud_mask", core, mask)
        looks.add("change_magnitude", core, np.where(vc, change, np.nan).astype(np.float32), np.nan)

    def _ndvi(self, core: Window, c: tuple, opt: np.ndarray, pred: np.ndarray,
              vc: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        n_in = ndvi(opt[2][c], opt[3][c], vc)
        n_out = ndvi(pred[2][c], pred[3][c], vc)
        for name, values in (("input", n_in), ("output", n_out)):
            self.dst[f"ndvi_{name}"].write(values[None], core)
            self.stats.add_ndvi(name, values)
            self.looks.add(f"ndvi_{name}", core, values, NDVI_NODATA)
        return n_in, n_out
