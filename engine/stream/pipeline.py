"""The engine's raster path: read → validate → align → normalise → tile → infer → blend → write (→ report).

``run(config, progress)`` is the one implementation behind ``python -m engine run``, the demo, the QGIS plugin
(through the CLI), benchmarks and Dask batch jobs. It streams: the scene is processed in chunks of the global tile
grid (see :mod:`engine.stream.tiling`), each chunk's inputs read as one window and its final area written as one window,
so memory does not grow with the scene and the result equals a whole-scene blend bit for bit.

Choices where the paper is silent (following the official M3R-CR loader where it has one):

* Pixels without SAR (outside the SAR footprint, SAR nodata/NaN/inf) are left as the optical input and counted;
  below 99.9 % coverage a warning gives the percentage. NaN SAR inside a tile fed to the network is replaced by the
  scene's mean SAR value per polarisation (the official loader's "NaN → image mean").
* Optical nodata pixels are fed as 0 and written back unchanged (so nodata stays nodata).
* Predictions are clipped to [0, 1] (the training targets' range) before inverse scaling to the input units and
  dtype. Extra optical bands beyond the model's are copied through unchanged.
* Tiles with no valid optical pixel or no SAR at all skip the network: every pixel they touch is copied from the
  input anyway, so the result is the same and empty scene margins cost nothing.
* GDAL's block cache is capped (``GDAL_CACHEMAX``) so its size, not the scene's, bounds what GDAL keeps.

The model's inputs besides the cloudy optical image are the roles it declares (:mod:`engine.models.roles`: the
SAR, the images before and after for temporal models such as ``msop-unet`` and ``gapfill``, a DEM): exactly those
are opened, checked, aligned onto the optical grid, normalised and read per chunk window, all through one path
(:mod:`engine.align.inputs`); a pixel that one of them does not cover is left as the input. A model whose config says
``fill_only_cloudy`` (``gapfill``) changes only the pixels ``--mask`` marks as cloud when a mask is given (the
others are copied from the input bit for bit).

``--only-cloudy`` does the same for any model, with the cut feathered over ``--cloud-feather`` pixels
(:mod:`engine.stream.composite`): clear pixels beyond the feather are the input bit for bit, cloud pixels are the
model's output, and the result does not depend on the chunking (the mask is read with a halo of the feather's width).
Without ``--mask`` the cloud is detected on the optical image (:func:`engine.align.cloudmask.detect_clouds`, with a
warning saying so).

``--colour-anchor`` (:mod:`engine.refine.colour_anchor`) takes the network's colour drift out of the inside of each
cloud (the same cloud: ``--mask``'s, else the detected one). The drift is fitted over the whole scene, so the output is
streamed into a draft while the statistics accumulate, then copied once into the output with the shift; the ramp
is recomputed from the cloud read with its reach, so this too does not depend on the chunking.

``--tta N`` runs the network on N flips/rotations of every tile (optical, SAR and packed extra inputs turned
together; :mod:`engine.stream.tta`) and blends their mean; ``--confidence`` blends their spread as one more channel with
the same tile weights and writes it, times the model's share of each pixel, beside the output (the QA raster's
sibling; see :func:`_confidence_spec`).

A model that takes no SAR (no ``sar`` role: ``gapfill``) runs without ``--sar``: no SAR is opened (a given one is
ignored with a warning, so it cannot fail the run), the model gets ``sar=None``, no pixel is held back for lack of
SAR, and the result says ``sar_used = False`` (also in the report's run settings). A model missing a declared input
is a one-line :class:`~engine.errors.InputError` before anything is read or written; given inputs it does not
declare are ignored with a warning. The DEM of a model built with ``dem=True`` is aligned bilinearly and scaled as
:mod:`engine.align.dem` describes.

The run reads as its data path: :func:`~engine.stream.scene.open_scene_and_model` (inputs, model, declared roles)
→ :func:`_plan` (scales, fills, output spec, tile grid) → :func:`_stream` (chunks read, inferred, blended, written) →
the :class:`RunResult`; then :func:`run` writes the report and renames the outputs into place together.

Speed (``accel``, see :mod:`engine.stream.accel` and :mod:`engine.stream.prefetch`): the network runs through an
:class:`~engine.stream.accel.InferenceRunner` (dtype, channels_last, torch.compile, OOM halving). With ``prefetch`` on
(the default), a reader thread reads, aligns, normalises and batches chunk *k+1* and a writer thread encodes
chunk *k−1* while the network works on chunk *k*; both queues hold one or two chunks, so memory stays flat. In
fp32 none of this changes a single output value.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from collections.abc import Callable, Iterable
from contextlib import ExitStack, nullcontext
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import rasterio
import torch
from rasterio.windows import Window

from engine.align.inputs import packed_module
from engine.config import RunConfig
from engine.errors import EngineError
from engine.models.roles import precheck
from engine.outputs.guard import as_footprint, check_output_dir, check_output_path
from engine.outputs.provenance import RasterMetadata, processing_tags, read_metadata, with_processing
from engine.outputs.writer import AtomicGeoTIFFWriter, OutputSpec
from engine.progress import Progress, record_warning
from engine.refine import colour_anchor, scene_adapt
from engine.refine.baselines import median_stride
from engine.refine.scene_adapt import adapt_to_scene
from engine.refine.scene_check import ADAPT_SHARE, HeldOut, SceneCheck, plan_check, score_check
from engine.sources.dates import DATE_TAGS
from engine.sources.footprint import run_footprint
from engine.sources.masks import describe
from engine.sources.product import Materialised, ResolvedSource
from engine.sources.raster import (
    DEFAULT_OPTICAL_DESCRIPTIONS,
    input_read_errors,
)
from engine.sources.resolve import resolve_run_inputs
from engine.stream import mode
from engine.stream.accel import AccelConfig, InferenceRunner, Pending
from engine.stream.chunks import (
    QA_NODATA,
    ChunkData,
    OpenedInputs,
    composite_feather,
    halo_cloud,
    nodata_substitute,
    process_chunk,
    read_chunk,
    start_chunk,
    tile_grid,
    to_output_units,
)
from engine.stream.detected import take_cloud_source
from engine.stream.device import describe_device
from engine.stream.memory import MemoryPlan, plan_memory
from engine.stream.mode import Guard, default_model
from engine.stream.prefetch import BackgroundWriter, Prefetcher
from engine.stream.scene import (
    LoadedModel,
    open_aligned_readers,
    open_scene_and_model,
    prepare_inputs,
)
from engine.stream.tiling import Chunk, ChunkBlender, TileGrid, chunks, output_block_height
from engine.stream.tta import CONFIDENCE_NODATA

log = logging.getLogger("engine")

# In bytes: rasterio hands an integer straight to GDALSetCacheMax, so "64" would mean 64 *bytes* (not MB as in
# the GDAL_CACHEMAX environment variable) and every decimated read would thrash the block cache.
GDAL_CACHE_BYTES = 32 * 1024 * 1024
REPORT_START = 0.8


@dataclass(frozen=True)
class RunPlan:
    """What a run is about to do; given to ``on_start`` before the first tile (the ``start`` JSON event)."""

    total_tiles: int
    width: int
    height: int
    output: Path
    model: str
    device: str


@dataclass
class RunResult:
    """Outcome of a successful run."""

    output: Path
    seconds: float
    model: str
    device: str
    total_tiles: int
    width: int
    height: int
    sar_coverage: float
    sar_units: str
    optical_scale: float
    cloud_fraction: float | None = None
    report_dir: Path | None = None
    report: dict | None = None
    model_card: dict | None = None
    warnings: list[str] = field(default_factory=list)
    accel: dict | None = None  # what the inference runner decided (dtype, channels_last, compiled, ...)
    sar_used: bool = True  # False: the model takes no SAR (gapfill); sar_coverage is then 0 and sar_units "none"
    network_tiles: int = 0  # tiles the network ran on (the others lacked valid inputs, or --only-cloudy's cloud)
    model_fraction: float = 0.0  # share of the valid optical pixels whose output holds the model's (QA > 0)
    model_pixels: int = 0  # pixels whose output holds the model's (QA > 0)
    valid_pixels: int = 0  # pixels with valid optical data
    cloud_pixels: int | None = None  # valid pixels the cloud mask marks as cloud (None without --mask)
    scene_check: SceneCheck | None = None  # --scene-check: the model vs flat / fill under synthetic clouds
    mode: str = "best"  # --mode
    guard: Guard | None = None  # --mode best: the model or the non-learned estimate inside the cloud, and why
    colour_anchor: list[float] | None = None  # --colour-anchor: the drift taken off deep in the cloud, per band
    cloud_mask: str | None = None  # where the cloud came from (engine.sources.masks.describe)
    mask_read: Path | str | None = None  # the mask raster the run read (a detected one: in the run's store)


def _output_metadata(config: RunConfig, inp: OpenedInputs, model: LoadedModel, runner: InferenceRunner,
                     device_name: str, given: RunConfig, cloud_mask: str | None = None) -> RasterMetadata:
    """The input's metadata plus how this output was made (:mod:`engine.outputs.provenance`); the inputs are named as
    the user gave them (``given``: a SAFE, a zip, two polarisation files), not as the VRTs they resolved to."""
    settings: dict[str, object] = {
        "bands": list(config.bands), "sar_bands": list(config.sar_bands), "tile": config.tile,
        "overlap": config.overlap, "sar_units": inp.sar_units, "sar_resampling": config.sar_resampling,
        "optical_scale": inp.optical_scale, "dtype": runner.describe()["dtype"], "device": device_name,
        "only_cloudy": config.only_cloudy, "sar_gap_days": inp.sar.gap_days if inp.sar is not None else None,
    }  # fmt: skip
    if config.only_cloudy:
        settings["cloud_feather"] = config.cloud_feather
    if config.tta > 1:  # the output is the mean over that many flips/rotations (engine.stream.tta)
        settings["tta"] = config.tta
    if (model.card or {}).get("scene_adaptation"):  # --adapt tuned this run's copy of the model
        settings["adapt"] = config.adapt
    if model.scene_check is not None:
        settings["scene_check"] = model.scene_check.as_tag()
    settings["mode"] = config.mode
    if cloud_mask is not None:
        settings["cloud_mask"] = cloud_mask
    if model.guard is not None:
        settings["guard"] = model.guard.as_tag()
    if config.colour_anchor:  # the fitted shift is its own tag, ALIGNCR_COLOUR_ANCHOR (known only after the stream)
        settings["colour_anchor_tau_px"] = colour_anchor.TAU_PX
    sar_used = inp.sar is not None
    inputs = {"optical": given.optical, "sar": given.sar if sar_used else None,
              "sar_vv": given.sar_vv if sar_used else None, "sar_vh": given.sar_vh if sar_used else None,
              "mask": given.mask}  # fmt: skip
    inputs.update({item.name: getattr(config, item.name) for item in inp.roles if item.name != "sar"})
    tags = processing_tags(model=model.name, only_masked_cloud=composite_feather(config, inp) is not None,
                           weights=model.weights, inputs=inputs, settings=settings)
    metadata = with_processing(read_metadata(inp.optical), tags)
    nodata, dtype = inp.optical.nodata, _output_dtype(inp.optical)
    substitute = nodata_substitute(nodata, dtype)
    if substitute is not None:
        note = f"the model's output equal to the nodata value {nodata:g} is written as {substitute:g}"
        for b in inp.band_index:
            if b < len(metadata.band_tags):
                metadata.band_tags[b] = {**metadata.band_tags[b], "ALIGNCR_NODATA_SUBSTITUTE": note}
    temporal = inp.declared is not None and bool(inp.declared.temporal_keys)
    if temporal and config.date is not None and not any(
        t.get(k) for t in metadata.tags.values() for k in DATE_TAGS
    ):
        # a time given on the command line (the file had none): the output carries it, so it can be chained
        metadata.tags.setdefault("IMAGERY", {})["ACQUISITIONDATETIME"] = config.date.isoformat()
    return metadata


def _output_dtype(opt: rasterio.io.DatasetReader) -> str:
    """The output's data type: one that holds every band of the optical input."""
    return np.result_type(*[np.dtype(d) for d in opt.dtypes]).name


def _output_spec(config: RunConfig, inp: OpenedInputs, metadata: RasterMetadata | None = None) -> OutputSpec:
    opt = inp.optical
    dtype = _output_dtype(opt)
    descriptions: list[str | None] = []
    for i in range(opt.count):
        desc = opt.descriptions[i]
        if not desc and i in inp.band_index and len(inp.band_index) == len(DEFAULT_OPTICAL_DESCRIPTIONS):
            desc = DEFAULT_OPTICAL_DESCRIPTIONS[inp.band_index.index(i)]
        descriptions.append(desc)
    return OutputSpec(
        crs=opt.crs,
        transform=opt.transform,
        width=opt.width,
        height=opt.height,
        count=opt.count,
        dtype=dtype,
        nodata=opt.nodata,
        descriptions=tuple(descriptions),
        block_height=output_block_height(TileGrid(opt.height, opt.width, config.tile, config.overlap), config.chunk),
        metadata=metadata,
    )


def run(
    config: RunConfig,
    progress: Progress | None = None,
    on_start: Callable[[RunPlan], None] | None = None,
    accel: AccelConfig | None = None,
) -> RunResult:
    """Run one cloud removal end to end; see the module docstring. Raises EngineError subclasses on bad input.

    ``accel`` says how to run the network (dtype, compile, threads, prefetching); the default is fp32 on the CPU
    and bf16 autocast on a CUDA GPU, with prefetching.

    Every output path is checked before anything is read, and the outputs (``out``, ``qa``) are renamed into place
    together at the very end — after the report, which reads the finished, verified temporary output — so a run
    that fails anywhere, the report included, leaves none of them (and no temporary file).
    """
    config.validate()
    config = mode.resolve(config)
    accel = accel or AccelConfig()
    accel.validate()
    progress = progress or Progress()
    outer = progress
    if config.report is not None:  # the report streams the scene again: give it the last fifth of the bar
        progress = outer.scaled(0.0, REPORT_START)
    t0 = time.perf_counter()
    check_outputs(config)
    writers: list[AtomicGeoTIFFWriter] = []
    try:
        with Materialised() as store:  # the VRTs the products resolve to live until the report is written
            given = config
            with input_read_errors("an input raster"):
                config, sources, source_warnings = resolve_run_inputs(config, store)
            for message in source_warnings:
                progress.warn(message)
            result = _decloud(config, progress, on_start, accel, writers, given, (sources["mask"], store))
            result.warnings[:0] = source_warnings
            if config.report is not None:
                result.report = _write_report(config, result, outer.scaled(REPORT_START, 1.0), writers[0].finished)
                result.report_dir = Path(config.report)
        for writer in writers:
            writer.commit()
    finally:
        for writer in writers:
            writer.discard()  # a no-op for a committed output
    result.seconds = time.perf_counter() - t0
    log.info("wrote %s in %.1f s (%d of %d tiles through the network)", config.out, result.seconds,
             result.network_tiles, result.total_tiles)  # fmt: skip
    return result


def check_outputs(config: RunConfig) -> None:
    """Every output path of a run, checked before any work (issues 15, 25): a file name in an existing, writable
    folder, not an existing non-regular file (device, FIFO, socket, folder), not a file any input opens nor a name GDAL
    reads beside one (:func:`engine.sources.footprint.run_footprint`, which also refuses an input that reaches the
    network), not another output, not an existing file with ``--no-clobber``; the report folder creatable and its
    files held to the same rules."""
    inputs = run_footprint(dataclasses.asdict(config))
    outputs: list[Path] = []
    for path, what in ((config.out, "output"), (config.qa, "QA output (--qa)"),
                       (config.confidence, "confidence output (--confidence)")):  # fmt: skip
        if path is not None:
            check_output_path(path, inputs.add(as_footprint(outputs[-1:])), what=what, clobber=config.clobber,
                              geotiff=True)  # fmt: skip
            outputs.append(Path(path))
    if config.report is not None:
        from engine.report import REPORT_FILES

        check_output_dir(config.report, inputs.add(as_footprint(outputs)), files=REPORT_FILES,
                         what="report (--report)", clobber=config.clobber)  # fmt: skip


def _decloud(
    config: RunConfig,
    progress: Progress,
    on_start: Callable[[RunPlan], None] | None,
    accel: AccelConfig,
    writers: list[AtomicGeoTIFFWriter],
    given: RunConfig | None = None,
    cloud: tuple[ResolvedSource, Materialised] | None = None,
) -> RunResult:
    """The data path: open → (detect the cloud, when the trained detector is its source) → (choose the scene check's
    windows) → (adapt the model to the scene, those held out) →
    (score the scene check) → plan → stream chunks → result. The finished
    (uncommitted) outputs are appended to ``writers``. ``config`` names what the readers open
    (:func:`engine.sources.resolve.resolve_run_inputs`), ``given`` what the user gave (provenance), ``cloud`` where
    the cloud comes from (:func:`engine.sources.resolve.resolve_mask`) and the store a detected mask is written to."""
    t0 = time.perf_counter()
    warnings: list[str] = []
    cloud_line = describe(cloud[0]) if cloud is not None else None
    early = precheck(config, default_model(config.mode))
    with rasterio.Env(GDAL_CACHEMAX=GDAL_CACHE_BYTES), ExitStack() as stack:
        inp, model, device = open_scene_and_model(config, early, stack, progress, warnings)
        prepare_inputs(config, inp, model)
        tiles = TileGrid(inp.grid.height, inp.grid.width, config.tile, config.overlap)
        memory, accel = _plan_memory(config, tiles, model, device, accel)  # a tile that cannot fit fails here, first
        if cloud is not None:
            config = take_cloud_source(config, inp, cloud[0], cloud[1], stack, progress, accel.threads or 1)
        open_aligned_readers(config, inp, stack)
        held = _plan_scene_check(config, inp, model, progress, warnings)
        _adapt(config, inp, model, device, progress, warnings, held)
        _scene_check(config, inp, model, device, progress, warnings, held)
        _guard(config, model, progress)
        runner = _start_runner(config, inp, model, device, accel, memory, len(tiles), stack)
        spec, grid, device_name = _plan(config, inp, model, runner, device, given or config, on_start, progress,
                                        cloud_line)
        counts, shift = _stream(config, inp, model, runner, spec, grid, device, accel, writers, progress)
        seconds = time.perf_counter() - t0
    result = _result(config, inp, model, runner, spec, grid, device_name, counts, seconds, warnings)
    result.cloud_mask = cloud_line
    result.mask_read = config.mask
    result.colour_anchor = None if shift is None else [float(v) for v in shift]
    if config.colour_anchor and shift is None:
        record_warning(progress, warnings, "--colour-anchor: nothing anchored (no cloud pixel written by the "
                       "model, or no clear pixel to anchor to)")  # fmt: skip
    return result


def _result(config: RunConfig, inp: OpenedInputs, model: LoadedModel, runner: InferenceRunner, spec: OutputSpec,
            grid: TileGrid, device_name: str, counts: dict[str, int], seconds: float,
            warnings: list[str]) -> RunResult:  # fmt: skip
    """What the streamed run did, from its pixel and tile counts."""
    valid = max(counts["valid"], 1)
    return RunResult(
        output=Path(config.out),
        seconds=seconds,
        model=model.name,
        device=device_name,
        total_tiles=len(grid),
        network_tiles=counts["network"],
        model_fraction=counts["model_px"] / valid,
        model_pixels=counts["model_px"],
        valid_pixels=counts["valid"],
        cloud_pixels=counts["cloud"] if inp.mask_reader is not None else None,
        width=spec.width,
        height=spec.height,
        sar_coverage=counts["sar"] / valid if inp.sar is not None else 0.0,
        sar_units=inp.sar_units,
        optical_scale=inp.optical_scale,
        cloud_fraction=(counts["cloud"] / max(counts["mask_valid"], 1)) if inp.mask_reader is not None else None,
        model_card=model.card,
        warnings=warnings,
        accel=runner.describe(),
        sar_used=inp.sar is not None,
        scene_check=model.scene_check,
        mode=config.mode,
        guard=model.guard,
    )


def _plan(config: RunConfig, inp: OpenedInputs, model: LoadedModel, runner: InferenceRunner, device: torch.device,
          given: RunConfig, on_start: Callable[[RunPlan], None] | None, progress: Progress,
          cloud_line: str | None = None) -> tuple[OutputSpec, TileGrid, str]:  # fmt: skip
    """Decide the output's spec and metadata and the tile grid; announce the plan (``on_start``). Returns the spec,
    grid and device name."""
    device_name = describe_device(device)
    spec = _output_spec(config, inp, _output_metadata(config, inp, model, runner, device_name, given, cloud_line))
    grid = tile_grid(spec, config)
    log.info(
        "%s on %s: %d×%d px, %d tiles of %d×%d px (overlap %d, batch %d), SAR %s, optical ÷%g, %s",
        model.name, device_name, spec.width, spec.height, len(grid), grid.tile_w, grid.tile_h, config.overlap,
        config.batch,
        inp.sar_units, inp.optical_scale, runner.describe(),
    )  # fmt: skip
    if on_start is not None:
        on_start(RunPlan(len(grid), spec.width, spec.height, Path(config.out), model.name, device_name))
    progress.update(0.0, f"tile 0/{len(grid)}")
    return spec, grid, device_name


def _notice(config: RunConfig, progress: Progress, warnings: list[str], message: str) -> None:
    """A step that cannot run as asked: a warning when the user asked for it (``--mode raw`` plus the option), an
    info line when ``--mode best`` chose it — the mode's own steps that do not apply to a scene (too small, no clear
    window) are not the user's problem, and the one mask notice is the only-cloudy one."""
    if config.mode == "raw":
        record_warning(progress, warnings, message)
    else:
        log.info("%s", message)


def _plan_scene_check(config: RunConfig, inp: OpenedInputs, model: LoadedModel, progress: Progress,
                      warnings: list[str]) -> list[HeldOut]:  # fmt: skip
    """``--scene-check``: the scene's checked windows with their synthetic clouds (:mod:`engine.refine.scene_check`),
    chosen before ``--adapt`` so that adaptation holds them out; none (with a warning) when the scene has none."""
    if not config.scene_check:
        return []
    with input_read_errors("an input raster"):
        held = plan_check(lambda win: scene_adapt.read_sample(inp, model.norm, win), (inp.grid.height, inp.grid.width),
                          progress, ADAPT_SHARE if config.adapt else 1.0)  # fmt: skip
    if isinstance(held, str):
        _notice(config, progress, warnings, held)
        return []
    return held


def _scene_check(config: RunConfig, inp: OpenedInputs, model: LoadedModel, device: torch.device, progress: Progress,
                 warnings: list[str], held: list[HeldOut]) -> None:  # fmt: skip
    """Score this run's copy of the model (adapted, if it was) and the baselines on the checked windows; a model
    that does not beat them is a warning, a model that does an info line (both in the result)."""
    if not held:
        return
    assert inp.declared is not None
    progress.update(0.0, "scene check: scoring the model and the baselines")
    module = packed_module(model.module, inp.roles, inp.declared, inp.dates)
    with_prior = inp.prior_input if inp.declared.prior else None
    model.scene_check = score_check(module, held, device, adapted=bool((model.card or {}).get("scene_adaptation")),
                                    anchored=config.colour_anchor, with_prior=with_prior)  # fmt: skip
    if model.scene_check.beats_baselines or (config.mode == "best" and model.scene_check.prior_db is not None):
        log.info("%s", model.scene_check.sentence())  # in --mode best the guard acts on it (_guard)
    else:
        record_warning(progress, warnings, model.scene_check.sentence())


def _guard(config: RunConfig, model: LoadedModel, progress: Progress) -> None:
    """``--mode best``'s guard (:func:`engine.stream.mode.guard_verdict`): where the scene check found the model no
    better than the non-learned estimate on this scene's own clear ground, the estimate takes its place."""
    if config.mode != "best":
        return
    model.guard = mode.guard_verdict(model.scene_check)
    if model.guard is None:
        return
    if model.guard.used == "estimate":
        model.module = mode.EstimateOnly(getattr(model.module, "cfg", None))
    log.info("%s", model.guard.sentence())


def _adapt(config: RunConfig, inp: OpenedInputs, model: LoadedModel, device: torch.device, progress: Progress,
           warnings: list[str], held: list[HeldOut]) -> None:  # fmt: skip
    """``--adapt``: fine-tune this run's copy of the model on the scene's clear pixels
    (:mod:`engine.refine.scene_adapt`), ``--scene-check``'s windows held out, before the runner takes it; the model card
    records it."""
    if not config.adapt:
        return
    assert inp.declared is not None
    if inp.mask is None:
        _notice(config, progress, warnings, "--adapt without --mask: the clouds detected on the optical image are "
                       "kept out of its training, but thin haze they miss is learned as ground; a real cloud mask "
                       "(Planet UDM2, Fmask, SCL) is better")  # fmt: skip
    module = packed_module(model.module, inp.roles, inp.declared, inp.dates)
    with input_read_errors("an input raster"), torch.enable_grad():
        skipped = adapt_to_scene(module, inp, model.norm, (inp.grid.height, inp.grid.width), config.adapt, device,
                                 progress, held)  # fmt: skip
    if skipped is not None:
        _notice(config, progress, warnings, skipped)
        return
    model.card = {**(model.card or {}), "scene_adaptation": f"{config.adapt} steps on this scene's clear pixels"}


def _plan_memory(config: RunConfig, grid: TileGrid, model: LoadedModel, device: torch.device,
                 accel: AccelConfig) -> tuple[MemoryPlan, AccelConfig]:  # fmt: skip
    """The run's concurrency on the scene's tile ``grid`` fitted to the memory budget (:mod:`engine.stream.memory`),
    decided before any work: a tile that does not fit is refused before the detector, adaptation and the scene check,
    not after them."""
    memory, accel = plan_memory(model.name, grid, config.chunk, device, accel, config.batch, config.memory_budget)
    log.info("memory: %s", memory.describe())
    return memory, accel


def _start_runner(config: RunConfig, inp: OpenedInputs, model: LoadedModel, device: torch.device, accel: AccelConfig,
                  memory: MemoryPlan, tiles: int, stack: ExitStack) -> InferenceRunner:  # fmt: skip
    """The inference runner for this run's ``tiles`` with the concurrency of :func:`_plan_memory`; closed (and
    torch's thread count restored) with ``stack``."""
    assert inp.declared is not None
    module = packed_module(model.module, inp.roles, inp.declared, inp.dates)
    stack.callback(torch.set_num_threads, torch.get_num_threads())  # the runner sets threads for this run only
    runner = InferenceRunner(module, device, accel, tiles=tiles)  # tiles: whether a CPU backend pays
    stack.callback(runner.close)
    if device.type == "cuda" and memory.concurrent < config.batch:
        runner.max_batch = memory.concurrent  # the OOM halving would get there too, one failure at a time
    return runner


def _stream(config: RunConfig, inp: OpenedInputs, model: LoadedModel, runner: InferenceRunner, spec: OutputSpec,
            grid: TileGrid, device: torch.device, accel: AccelConfig, writers: list[AtomicGeoTIFFWriter],
            progress: Progress) -> tuple[dict[str, int], np.ndarray | None]:
    """Chunks read → tiles inferred and blended → written into the output (and QA / confidence) writers, which are
    appended to ``writers`` finished but not renamed into place; with ``--colour-anchor`` the output is streamed
    into a draft and rewritten shifted (:func:`_rewrite_anchored`). Returns the pixel and tile counts and the
    anchor's shift."""
    counts = {"valid": 0, "sar": 0, "cloud": 0, "mask_valid": 0, "network": 0, "model_px": 0}
    plan = chunks(grid, config.chunk)

    def read(chunk: Chunk) -> ChunkData:
        return read_chunk(chunk, config, inp, model.norm, spec, device)

    writers.append(AtomicGeoTIFFWriter(config.out, spec, cog=config.cog, defer=True, clobber=config.clobber))
    anchor, draft, shift = None, None, None
    if config.colour_anchor:  # the network's output goes to a draft first; the anchored copy is the output
        anchor = colour_anchor.StreamedAnchor(len(inp.band_index), median_stride(spec.width, spec.height))
        draft = AtomicGeoTIFFWriter(config.out, spec, defer=True)
    if config.qa is not None:
        writers.append(AtomicGeoTIFFWriter(config.qa, _qa_spec(spec), cog=config.cog, defer=True,
                                           clobber=config.clobber))
    qa_target = writers[-1] if config.qa is not None else nullcontext()
    if config.confidence is not None:
        writers.append(AtomicGeoTIFFWriter(config.confidence, _confidence_spec(spec, config.tta), cog=config.cog,
                                           defer=True, clobber=config.clobber))
    conf_target = writers[-1] if config.confidence is not None else nullcontext()
    try:
        with draft or writers[0] as writer, qa_target as qa_writer, conf_target as conf_writer, ExitStack() as io:

            def write(out: np.ndarray, share: np.ndarray | None, spread: np.ndarray | None, window: Window) -> None:
                writer.write(out, window)
                if qa_writer is not None and share is not None:
                    qa_writer.write(share[None], window)
                if conf_writer is not None and spread is not None:
                    conf_writer.write(spread[None], window)

            submit: Callable[[np.ndarray, np.ndarray | None, np.ndarray | None, Window], None] = write
            chunk_data: Iterable[ChunkData] = map(read, plan)
            if accel.prefetch:  # reader and writer threads overlap I/O with compute; closed before the writers
                submit = io.enter_context(BackgroundWriter(write, depth=2)).submit
                chunk_data = io.enter_context(Prefetcher(plan, read, depth=1))
            blender = ChunkBlender(grid, len(config.bands) + (1 if config.confidence else 0))  # + the TTA spread
            done = 0
            ahead: list[tuple[ChunkData, list[Pending | None]]] = []  # started on the network, not yet blended

            def blend(started: tuple[ChunkData, list[Pending | None]], done: int) -> int:
                data, pending = started
                return process_chunk(data, config, inp, runner, blender, submit, spec, counts, progress, done,
                                     anchor, pending)  # fmt: skip

            try:
                for data in chunk_data:
                    progress.check_cancelled()
                    ahead.append((data, start_chunk(data, config, runner)))
                    if len(ahead) > 1:  # this chunk's tiles are queued: blend the one before while they run
                        done = blend(ahead[0], done)
                        ahead.pop(0)
                while ahead:
                    done = blend(ahead[0], done)
                    ahead.pop(0)
            finally:
                for _, pending in ahead:  # a failed or cancelled run does not wait for tiles nobody will blend
                    for p in pending:
                        if p is not None:
                            p.cancel()
            progress.update(1.0, "writing output" + (" (COG with overviews)" if config.cog else ""))
        if anchor is not None and draft is not None and draft.finished is not None:
            progress.update(0.0, "colour anchor: fitting the drift")
            shift = _rewrite_anchored(config, inp, spec, draft.finished, writers[0], anchor, progress)
    finally:
        if draft is not None:
            draft.discard()
    return counts, shift


def _qa_spec(spec: OutputSpec) -> OutputSpec:
    """The QA raster beside the output: one uint8 band on the same grid, the percent of each pixel that is the
    model's output — 0 the input as acquired (clear pixels kept by --only-cloudy, pixels without SAR or other
    inputs), 100 the model's reconstruction, between them --cloud-feather's blend — and 255 where the optical
    image has no data. It carries the output's metadata and provenance tags."""
    scene_tags = RasterMetadata(tags=(spec.metadata or RasterMetadata()).tags)  # not the optical bands' own tags
    qa_tag = {"ALIGNCR_QA": "percent of each pixel taken from the model's output: 0 = the input as acquired, 100 = "
                            f"the model's reconstruction, between = feathered blend; {QA_NODATA} = no optical data"}
    return dataclasses.replace(spec, count=1, dtype="uint8", nodata=QA_NODATA, descriptions=("model share (%)",),
                               metadata=with_processing(scene_tags, qa_tag))  # fmt: skip


def _confidence_spec(spec: OutputSpec, passes: int) -> OutputSpec:
    """The confidence raster beside the output: one float32 band on the same grid, the spread of the model's output
    over ``passes`` test-time flips/rotations (:mod:`engine.stream.tta`: per-band standard deviation, mean over the
    bands, in reflectance), blended over tile overlaps with the output's weights and scaled by the share of the pixel
    that is the model's (so 0 where the input is kept: outside --only-cloudy's cloud, pixels without SAR), and
    :data:`CONFIDENCE_NODATA` where the optical image has no data. High = the model is guessing there."""
    scene_tags = RasterMetadata(tags=(spec.metadata or RasterMetadata()).tags)
    tag = {"ALIGNCR_CONFIDENCE": f"spread of the model's output over {passes} test-time flips/rotations (per-band "
                                 "standard deviation averaged over the bands, reflectance); 0 = the input as "
                                 f"acquired; {CONFIDENCE_NODATA:g} = no optical data",
           "ALIGNCR_TTA": str(passes)}  # fmt: skip
    return dataclasses.replace(spec, count=1, dtype="float32", nodata=CONFIDENCE_NODATA,
                               descriptions=("TTA spread (reflectance)",),
                               metadata=with_processing(scene_tags, tag))  # fmt: skip


def _rewrite_anchored(config: RunConfig, inp: OpenedInputs, spec: OutputSpec, draft: Path, writer: AtomicGeoTIFFWriter,
                      anchor: colour_anchor.StreamedAnchor, progress: Progress) -> np.ndarray | None:  # fmt: skip
    """``--colour-anchor``'s second pass: fit the drift ``β`` over the whole scene, then copy the streamed ``draft``
    into ``writer`` with ``β · r`` taken off the cloud pixels the model wrote (the ramp ``r`` recomputed from the
    cloud read with its reach). Returns ``β`` (None: no cloud pixel was written or none was clear, a plain copy)."""
    beta = anchor.stats.shift()
    if beta is not None:
        tag = {"ALIGNCR_COLOUR_ANCHOR": json.dumps({
            "shift": [round(float(v), 5) for v in beta], "tau_px": colour_anchor.TAU_PX,
            "note": "reflectance taken off deep inside the cloud (times 1 - exp(-d/tau), d = px to clear ground)"})}
        writer.spec = dataclasses.replace(spec, metadata=with_processing(spec.metadata or RasterMetadata(), tag))
    windows = list(anchor.written)
    with rasterio.open(draft) as src, writer as out:
        for i, (row, col, h, w) in enumerate(windows):
            progress.check_cancelled()
            win = Window(col, row, w, h)
            data = src.read(window=win)
            used = anchor.used((row, col, h, w)) if beta is not None else None
            if used is not None:
                cloud, inner, _ = halo_cloud(inp, win, colour_anchor.REACH_PX)
                r = colour_anchor.ramp(cloud)[inner]
                bands = data[list(inp.band_index)].astype(np.float32) / np.float32(inp.optical_scale)
                pred = to_output_units(colour_anchor.shifted(bands, r, used, beta), inp, spec)
                for k, b in enumerate(inp.band_index):
                    data[b][used] = pred[k][used]
            out.write(data, win)
            progress.update((i + 1) / len(windows), "colour anchor: writing the shifted output")
    return beta


def _write_report(config: RunConfig, result: RunResult, progress: Progress, prediction: Path | None) -> dict:
    """The report on the finished output (``prediction``: its verified temporary file, not yet renamed)."""
    try:
        from engine.report import write_report
    except ImportError:
        raise EngineError("--report needs engine.report.write_report, which this install lacks") from None
    return write_report(
        optical=config.optical if isinstance(config.optical, str) else Path(config.optical),
        prediction=Path(prediction or config.out),
        prediction_name=Path(config.out),
        out_dir=Path(config.report),
        reference=config.reference,
        landcover=config.landcover,
        mask=result.mask_read,
        cloud_mask=result.cloud_mask,
        bands=tuple(config.bands),
        model_card=result.model_card,
        run_settings={**config.as_dict(), "cloud_mask": result.cloud_mask, "sar_used": result.sar_used,
                      "model_percent": round(100.0 * result.model_fraction, 2), "network_tiles": result.network_tiles,
                      "total_tiles": result.total_tiles},
        progress=progress,
        baselines=config.baselines,
        clobber=config.clobber,
    )
