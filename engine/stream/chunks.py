"""One chunk of the tile grid, from its read to its written window: the per-chunk half of :mod:`.pipeline`.

:func:`read_chunk` reads a chunk's optical window and the model's packed inputs, its cloud weight (``--only-cloudy``)
and colour-anchor ramp, and batches its tiles (in the reader thread when prefetching); :func:`process_chunk` runs the
batches through the network (``--tta``), blends them, keeps the clear pixels, and hands the finished window, its QA
share and confidence to the writer. :class:`OpenedInputs` is what the pipeline opened and decided before the loop.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import rasterio
import torch
from rasterio.windows import Window

from engine.align.cloudmask import DETECTOR_HALO, detect_clouds_scaled
from engine.align.inputs import read_optical, read_window
from engine.align.reader import AlignedInput, AlignedReader, Grid, WindowContext
from engine.align.sar import SarInput
from engine.config import RunConfig
from engine.errors import ModelError
from engine.models.roles import ModelInputs
from engine.outputs.writer import OutputSpec
from engine.progress import Progress
from engine.refine import colour_anchor, prior
from engine.sources import normalise
from engine.sources.masks import cloud_mask_from_bands
from engine.sources.raster import (
    input_read_errors,
    valid_mask,
)
from engine.stream import tta
from engine.stream.accel import InferenceRunner, Pending
from engine.stream.composite import cloud_weight, halo_window, mix
from engine.stream.prefetch import pinned
from engine.stream.tiling import Chunk, ChunkBlender, Tile, TileGrid, reflect_pad
from engine.stream.tta import CONFIDENCE_NODATA

QA_NODATA = 255  # the QA raster's no-data value: no optical data (a percent is 0–100)


@dataclass
class OpenedInputs:
    """Open datasets and what was decided about them before the tile loop."""

    optical: rasterio.io.DatasetReader
    landcover: rasterio.io.DatasetReader | None
    mask: rasterio.io.DatasetReader | None
    grid: Grid
    band_index: list[int]  # 0-based indices of the model bands in the optical file
    optical_scale: float = 0.0  # set once the model's normalisation is known
    declared: ModelInputs | None = None  # what the model takes (engine.models.roles); None until known
    roles: list[AlignedInput] = field(default_factory=list)  # its inputs, opened, in declared (packing) order
    dates: dict[str, float] = field(default_factory=dict)  # t_prev, t, t_next of a needs_dates model
    mask_reader: AlignedReader | None = None
    norm: normalise.NormalisationConfig | None = None  # the model's, once known (the prior reads the SAR with it)
    # the scene's colours (clear medians, SAR classes: the estimate's value deep inside a cloud, engine.refine.prior);
    # set before the tile loop for a model that takes the prior, None otherwise
    prior_input: prior.PriorInput | None = None

    @property
    def sar(self) -> SarInput | None:
        """The main SAR (role ``sar``), None when the model takes none."""
        found = [r for r in self.roles if r.name == "sar"]
        return found[0] if found and isinstance(found[0], SarInput) else None

    @property
    def sar_units(self) -> str:
        return self.sar.units if self.sar is not None else "none"


def tile_grid(spec: OutputSpec, config: RunConfig) -> TileGrid:
    """The run's tile grid: ``--tile`` tiles, shrunk to the scene on an axis shorter than that (stream.tiling)."""
    return TileGrid(spec.height, spec.width, config.tile, config.overlap)


def _tile_slice(data: np.ndarray, tile: Tile, origin: tuple[int, int], size: tuple[int, int]) -> np.ndarray:
    """The ``size`` = (h, w) tile of a chunk array whose pixel (0, 0) is image pixel ``origin``, reflect-padded."""
    y, x = tile.y - origin[0], tile.x - origin[1]
    part = data[..., y : y + size[0], x : x + size[1]]
    return reflect_pad(part, size[0] - part.shape[-2], size[1] - part.shape[-1])


@dataclass
class TileBatch:
    """Up to ``config.batch`` tiles of a chunk, ready for the network (prepared in the reader thread)."""

    tiles: list[Tile]
    fallback: list[np.ndarray]  # each tile's normalised optical input: its "prediction" when the network skips it
    run_idx: list[int]  # which tiles go through the network (they have valid optical and SAR pixels)
    optical: np.ndarray | torch.Tensor | None  # (len(run_idx), B, t, t), pinned on CUDA
    sar: np.ndarray | torch.Tensor | None  # (len(run_idx), 2 or 0 without SAR [+ extra inputs' channels], t, t)


@dataclass
class ChunkData:
    """Everything read for one chunk: raw optical window, validity, tile batches, aligned mask of its output."""

    chunk: Chunk
    raw: np.ndarray
    opt_ok: np.ndarray
    sar_ok: np.ndarray
    batches: list[TileBatch]
    mask: np.ndarray | None
    use_ok: np.ndarray  # where the model's output may be used: optical, SAR and every extra input valid
    weight: np.ndarray | None = None  # only-cloudy runs: the model output's weight on the output window
    anchor: np.ndarray | None = None  # --colour-anchor: the drift ramp r on the output window (0 off the cloud)


def read_chunk(
    chunk: Chunk, config: RunConfig, inp: OpenedInputs, norm: normalise.NormalisationConfig, spec: OutputSpec,
    device: torch.device,
) -> ChunkData:  # fmt: skip
    """Read and prepare one chunk's inputs (runs in the reader thread when prefetching); a read failure of any input
    is one :class:`InputError` line."""
    with input_read_errors("an input raster"):
        return _read_chunk_inputs(chunk, config, inp, norm, spec, device)


def _read_chunk_inputs(
    chunk: Chunk, config: RunConfig, inp: OpenedInputs, norm: normalise.NormalisationConfig, spec: OutputSpec,
    device: torch.device,
) -> ChunkData:  # fmt: skip
    y0, x0 = chunk.acc_y, chunk.acc_x
    win = Window(x0, y0, min(chunk.acc_w, spec.width - x0), min(chunk.acc_h, spec.height - y0))
    raw, x, opt_ok = read_optical(inp.optical, inp.band_index, inp.optical_scale, win)
    # the model's inputs, packed in declared order after the optical (engine.align.inputs)
    packed, inputs_ok, sar_ok = read_window(inp.roles, win, WindowContext(x, inp.optical_scale, norm))
    if inp.declared is not None and inp.declared.prior:  # the engine's estimate and distance, after the file roles
        packed = np.concatenate([packed, prior_window(inp, win)])
    use_ok = opt_ok & inputs_ok
    mask, weight = _chunk_mask_and_weight(chunk, config, inp, win, spec)
    needed = use_ok if weight is None else use_ok & (weight > 0)  # a tile whose output nobody keeps is not run
    grid = tile_grid(spec, config)
    t = (grid.tile_h, grid.tile_w)
    tiles = list(chunk.tiles)
    batches: list[TileBatch] = []
    for i in range(0, len(tiles), config.batch):
        batch = tiles[i : i + config.batch]
        opt_tiles = [_tile_slice(x, tl, (y0, x0), t) for tl in batch]
        run_idx = [j for j, tl in enumerate(batch) if _tile_slice(needed, tl, (y0, x0), t).any()]
        o = s = None
        if run_idx:
            o = pinned(np.stack([opt_tiles[j] for j in run_idx]), device)
            s = pinned(np.stack([_tile_slice(packed, batch[j], (y0, x0), t) for j in run_idx]), device)
        batches.append(TileBatch(batch, opt_tiles, run_idx, o, s))
    if weight is not None:
        weight = weight[: chunk.out_h, : chunk.out_w]  # the output window starts at the read window's origin
    anchor = _chunk_anchor(chunk, config, inp, spec) if config.colour_anchor else None
    return ChunkData(chunk, raw, opt_ok, sar_ok, batches, mask, use_ok, weight, anchor)


def _chunk_mask_and_weight(
    chunk: Chunk, config: RunConfig, inp: OpenedInputs, win: Window, spec: OutputSpec
) -> tuple[np.ndarray | None, np.ndarray | None]:
    """The cloud mask on the chunk's output window (for the cloud fraction) and, when only the cloud takes the
    model's output, that output's weight on the whole read window ``win``: tiles that lie where it is 0 everywhere
    skip the network (no pixel they touch keeps the model's output, so the result is the same). The mask (or the
    optical image, for detected clouds) is read with a halo of the feather's width (plus the detector's smoothing
    context) so the weights do not depend on the chunks."""
    feather = composite_feather(config, inp)
    has_out = chunk.out_h > 0 and chunk.out_w > 0
    if feather is None:
        if inp.mask_reader is None or not has_out:
            return None, None
        return inp.mask_reader.read(Window(chunk.out_x, chunk.out_y, chunk.out_w, chunk.out_h)), None
    cloud, inner, halo = halo_cloud(inp, win, feather)
    mask = None
    if halo is not None and has_out:
        iy, ix = inner[0].start, inner[1].start
        mask = halo[:, iy : iy + chunk.out_h, ix : ix + chunk.out_w]
    return mask, cloud_weight(cloud, feather)[inner]


def halo_cloud(inp: OpenedInputs, win: Window,
               reach: int) -> tuple[np.ndarray, tuple[slice, slice], np.ndarray | None]:  # fmt: skip
    """The cloud on ``win`` grown by ``reach`` px (clipped to the scene), ``win``'s slices inside it, and the mask's
    bands read there (None for detected clouds). The cloud is ``--mask``'s, else the clouds
    :mod:`engine.align.cloudmask` detects on the optical image (read with the detector's smoothing context too), so
    whatever is computed from it within ``reach`` does not depend on the chunking."""
    halo, inner = _halo(inp, win, reach + (0 if inp.mask_reader is not None else DETECTOR_HALO))
    cloud, bands = _cloud_on(inp, halo)
    return cloud, inner, bands


def _halo(inp: OpenedInputs, win: Window, reach: int) -> tuple[Window, tuple[slice, slice]]:
    """``win`` grown by ``reach`` px and clipped to the scene, and ``win``'s slices inside it."""
    hx, hy, hw, hh = halo_window(int(win.col_off), int(win.row_off), int(win.width), int(win.height), reach,
                                 inp.grid.width, inp.grid.height)  # fmt: skip
    iy, ix = int(win.row_off) - hy, int(win.col_off) - hx
    return Window(hx, hy, hw, hh), (slice(iy, iy + int(win.height)), slice(ix, ix + int(win.width)))


def _cloud_on(inp: OpenedInputs, win: Window) -> tuple[np.ndarray, np.ndarray | None]:
    """The cloud on ``win`` (``--mask``'s, else detected) and the mask's bands there (None when detected)."""
    if inp.mask_reader is not None:
        bands = inp.mask_reader.read(win)
        cloud = cloud_mask_from_bands(np.nan_to_num(bands, nan=0.0), inp.mask.nodata) & np.isfinite(bands).all(0)
        return cloud, bands
    raw = inp.optical.read([b + 1 for b in inp.band_index], window=win)
    return detect_clouds_scaled(raw, valid_mask(raw, inp.optical.nodata), inp.optical_scale), None


def prior_window(inp: OpenedInputs, win: Window) -> np.ndarray:
    """The ``prior`` input on ``win`` (:func:`engine.refine.prior.channels`: the estimate of the ground and the
    distance to clear ground), computed on ``win`` grown by the prior's reach so that it does not depend on the
    chunking; clear = optical data and no cloud (the cloud of :func:`halo_cloud`)."""
    halo, inner = _halo(inp, win, prior.REACH + (0 if inp.mask_reader is not None else DETECTOR_HALO))
    cloud, _ = _cloud_on(inp, halo)
    _, x, ok = read_optical(inp.optical, inp.band_index, inp.optical_scale, halo)
    colours = inp.prior_input.colours if inp.prior_input is not None else None
    clear, sar = ok & ~cloud, sar_on(inp, halo, x)
    if colours is None:  # the window's own colours, fitted on all of it
        return prior.channels(x, clear, None, sar)[:, inner[0], inner[1]]
    return prior.channels_within(x, clear, colours, sar, inner)


def sar_on(inp: OpenedInputs, win: Window, x: np.ndarray) -> np.ndarray | None:
    """The main SAR on ``win`` in the network's units, NaN where the file has no data (the prior's classes read it;
    ``x`` is the optical window); None without SAR."""
    if inp.sar is None or inp.norm is None:
        return None
    unit, ok = inp.sar.read(win, WindowContext(x, inp.optical_scale, inp.norm))
    return np.where(ok[None], unit, np.nan).astype(np.float32)


def _chunk_anchor(chunk: Chunk, config: RunConfig, inp: OpenedInputs, spec: OutputSpec) -> np.ndarray | None:
    """``--colour-anchor``'s drift ramp on the chunk's output window (:func:`engine.refine.colour_anchor.ramp`), from
    the cloud read with the ramp's reach around it; None when the chunk writes nothing."""
    if chunk.out_h <= 0 or chunk.out_w <= 0:
        return None
    win = Window(chunk.out_x, chunk.out_y, chunk.out_w, chunk.out_h)
    cloud, inner, _ = halo_cloud(inp, win, colour_anchor.REACH_PX)
    return colour_anchor.ramp(cloud)[inner]


def composite_feather(config: RunConfig, inp: OpenedInputs) -> int | None:
    """Feather (px) when only the cloudy pixels take the model's output (--only-cloudy: the mask's cloud, or the
    detected one without a mask; a ``fill_only_cloudy`` model such as gapfill with a mask: a hard cut), None when
    the model's output is used everywhere."""
    if config.only_cloudy:
        return config.cloud_feather
    declared = inp.declared
    if inp.mask is not None and declared is not None and declared.temporal_keys and declared.fill_only_cloudy:
        return 0
    return None


def start_chunk(data: ChunkData, config: RunConfig, runner: InferenceRunner) -> list[Pending | None]:
    """Queue a read chunk's tiles on the network (:meth:`InferenceRunner.submit`), one entry per batch (None: no
    tile of the batch needs the network, or ``--tta`` runs it at :func:`process_chunk`). The pipeline starts the
    next chunk before it blends this one, so the CPU workers never wait for the main thread."""
    if config.tta != 1:
        return [None] * len(data.batches)
    return [runner.submit(b.optical, b.sar) if b.run_idx and b.optical is not None and b.sar is not None else None
            for b in data.batches]  # fmt: skip


def process_chunk(
    data: ChunkData,
    config: RunConfig,
    inp: OpenedInputs,
    runner: InferenceRunner,
    blender: ChunkBlender,
    submit: Callable[[np.ndarray, np.ndarray | None, np.ndarray | None, Window], None],
    spec: OutputSpec,
    counts: dict[str, int],
    progress: Progress,
    done: int,
    anchor: colour_anchor.StreamedAnchor | None = None,
    started: list[Pending | None] | None = None,
) -> int:
    """Run one read chunk's tiles in batches (or take the predictions :func:`start_chunk` started), blend, hand its
    final area to the writer (and its drift statistics to ``anchor``, with ``--colour-anchor``). Returns tiles
    done."""
    blender.start(data.chunk)
    total = len(blender.grid)
    started = started or [None] * len(data.batches)
    for batch, pending in zip(data.batches, started):
        preds = list(batch.fallback)
        if config.confidence is not None:  # a tile the network skips is the input: no spread
            preds = [np.concatenate([p, np.zeros_like(p[:1])]) for p in preds]
        if batch.run_idx:
            counts["network"] += len(batch.run_idx)
            out = pending.result() if pending is not None else _predict(runner, batch, config)
            for j, p in zip(batch.run_idx, out):
                _require_finite(p, batch.tiles[j], blender.grid, runner)
                preds[j] = p
        for tl, p in zip(batch.tiles, preds):
            blender.add(tl, p)
        done += len(batch.tiles)
        progress.update(done / total, f"tile {done}/{total}")
        progress.check_cancelled()
    oy, ox, blended = blender.finish()
    h, w = blended.shape[1:]
    if h == 0 or w == 0:
        return done
    spread = None
    if config.confidence is not None:
        spread, blended = blended[-1], blended[:-1]
    raw, opt_ok, sar_ok = data.raw, data.opt_ok, data.sar_ok
    out = raw[:, :h, :w].copy()
    with_sar = opt_ok[:h, :w] & sar_ok[:h, :w]
    use = data.use_ok[:h, :w]
    if data.mask is not None and inp.mask is not None:
        m = data.mask
        m_ok = np.isfinite(m).all(axis=0) & opt_ok[:h, :w]
        counts["cloud"] += int((cloud_mask_from_bands(np.nan_to_num(m, nan=0.0), inp.mask.nodata) & m_ok).sum())
        counts["mask_valid"] += int(m_ok.sum())
    anchoring = anchor is not None and data.anchor is not None
    if data.weight is not None or anchoring:  # the input in reflectance, unclipped
        original = raw[inp.band_index, :h, :w].astype(np.float32) / np.float32(inp.optical_scale)
    if data.weight is not None:  # only the cloud (feathered) takes the model's output; the rest stays the input
        use = use & (data.weight > 0)
        blended = mix(blended, original, data.weight)
    if anchoring:
        anchor.add((oy, ox, h, w), blended, data.anchor[:h, :w], use, original, opt_ok[:h, :w])
    pred = to_output_units(blended, inp, spec)
    for k, b in enumerate(inp.band_index):
        out[b][use] = pred[k][use]
    share = None
    if config.qa is not None:  # percent of each pixel that is the model's output (see _qa_spec)
        share = np.zeros((h, w), dtype=np.uint8)
        if data.weight is None:
            share[use] = 100
        else:
            share[use] = np.clip(np.rint(100.0 * data.weight[use]), 1, 100).astype(np.uint8)
        share[~opt_ok[:h, :w]] = QA_NODATA
    conf = None
    if spread is not None:  # the output's spread: the model's share of the pixel times the model's spread
        conf = np.zeros((h, w), dtype=np.float32)
        conf[use] = spread[use] if data.weight is None else data.weight[use] * spread[use]
        conf[~opt_ok[:h, :w]] = CONFIDENCE_NODATA
    submit(out, share, conf, Window(ox, oy, w, h))
    counts["model_px"] += int(use.sum())
    counts["valid"] += int(opt_ok[:h, :w].sum())
    counts["sar"] += int(with_sar.sum())
    return done


def to_output_units(reflectance: np.ndarray, inp: OpenedInputs, spec: OutputSpec) -> np.ndarray:
    """The model's output (reflectance) in the output's units and dtype, never equal to its nodata value."""
    pred = normalise.denormalise_optical(reflectance, inp.optical_scale, dtype=spec.dtype)
    substitute = nodata_substitute(spec.nodata, spec.dtype)
    if substitute is not None:  # a valid pixel must not read as nodata (see nodata_substitute)
        pred[pred == np.asarray(spec.nodata, dtype=spec.dtype)] = substitute
    return pred


def _predict(runner: InferenceRunner, batch: TileBatch, config: RunConfig) -> np.ndarray:
    """The network's outputs for a batch: plain, or the mean over ``config.tta`` flips/rotations with (when a
    confidence raster is asked for) their spread as one more channel (:mod:`engine.stream.tta`)."""
    assert batch.optical is not None and batch.sar is not None
    if config.tta == 1:
        return runner.predict(batch.optical, batch.sar)
    mean, spread = tta.predict(runner.predict, batch.optical, batch.sar, config.tta)
    return np.concatenate([mean, spread[:, None]], axis=1) if config.confidence is not None else mean


def _require_finite(pred: np.ndarray, tile: Tile, grid: TileGrid, runner: InferenceRunner) -> None:
    """Stop the run at the first tile the network returns NaN or ±inf for (issue 15: weights full of NaN wrote
    99.7 % of a scene as nodata, exit 0): broken weights, or an overflow of a reduced precision."""
    if np.isfinite(pred).all():
        return
    bad = 100.0 * float((~np.isfinite(pred)).mean())
    precision = runner.describe()["dtype"]
    hint = "" if runner.dtype == torch.float32 else f" or an overflow in {precision} (try --dtype fp32)"
    raise ModelError(
        f"the network returned NaN or infinite values for tile row {tile.row}, column {tile.col} (pixels x "
        f"{tile.x}–{tile.x + grid.tile_w - 1}, y {tile.y}–{tile.y + grid.tile_h - 1}; {bad:.1f} % of its values): "
        f"broken weights{hint}; nothing was written"
    )


def nodata_substitute(nodata: float | None, dtype: str) -> float | int | None:
    """The value written instead of ``nodata`` where the model's output equals it, or None when no valid output
    can collide (no nodata, NaN nodata, or a value the dtype cannot hold).

    Issue 15: with nodata 0, predictions clipped to 0 were written as 0 and read back as nodata. The substitute is
    the next representable value towards the data (``nodata + 1`` for integers, ``nextafter`` for floats; from
    the top of the range, one below); the output's bands say so in their ``ALIGNCR_NODATA_SUBSTITUTE`` tag.
    """
    if nodata is None or not np.isfinite(nodata):
        return None
    kind = np.dtype(dtype)
    if kind.kind in "ui":
        info = np.iinfo(kind)
        if not info.min <= nodata <= info.max or nodata != int(nodata):
            return None
        return int(nodata) + 1 if nodata < info.max else int(nodata) - 1
    value = kind.type(nodata)
    towards = kind.type(-np.inf if value == np.finfo(kind).max else np.inf)  # same dtype: float32 steps, not float64
    return np.nextafter(value, towards).item()
