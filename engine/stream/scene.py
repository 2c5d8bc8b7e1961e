"""Open a run's scene and model: stage 3's first step, before the tile loop (:mod:`.pipeline` drives it).

The optical image (it defines the grid), the land cover, mask and reference; the model with its card's
normalisation (:func:`load_model`); exactly the inputs the model declares (:mod:`engine.align.inputs`), each checked
and its fill decided (:func:`prepare_inputs`); and the window readers that bring them onto the optical grid
(:func:`open_aligned_readers`). What is opened and decided lives in :class:`~engine.stream.chunks.OpenedInputs`.
"""

from __future__ import annotations

import dataclasses
import logging
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import rasterio
import torch
from rasterio.windows import Window
from torch import nn

from engine.align.inputs import open_roles, read_optical, sar_channels
from engine.align.reader import AlignedReader, Grid, bounds_overlap, checked_coverage
from engine.align.temporal import acquisition_dates
from engine.config import RunConfig
from engine.errors import InputError, ModelError
from engine.models.roles import ModelInputs, ignored_inputs, inputs_of, require_roles
from engine.progress import Progress, record_warning
from engine.refine import prior
from engine.refine.baselines import median_stride, sample_grid
from engine.refine.scene_check import SceneCheck
from engine.sources import normalise
from engine.sources.raster import (
    check_bands,
    has_any_valid,
    input_read_errors,
    open_raster,
    read_sample,
    require_georeferenced,
    valid_mask,
)
from engine.stream.chunks import (
    OpenedInputs,
    composite_feather,
    halo_cloud,
    sar_on,
)
from engine.stream.device import resolve_device
from engine.stream.mode import BUNDLED, Guard, default_model

log = logging.getLogger("engine")




@dataclass
class LoadedModel:
    """A ready-to-run network with the normalisation it expects."""

    module: nn.Module
    name: str
    in_bands: int
    norm: normalise.NormalisationConfig
    card: dict | None = None
    weights: Path | None = None  # the file the network was loaded from (None: a model without weights)
    scene_check: SceneCheck | None = None  # how this run's copy (adapted or not) did on the scene (--scene-check)
    guard: Guard | None = None  # --mode best: whether the model or the non-learned estimate writes the cloud


def _norm_from_card(card_norm: dict | None) -> normalise.NormalisationConfig:
    if not card_norm:
        return normalise.NormalisationConfig()
    known = {f.name for f in dataclasses.fields(normalise.NormalisationConfig)}
    values = {k: (tuple(v) if isinstance(v, list) else v) for k, v in card_norm.items() if k in known}
    return normalise.NormalisationConfig(**values)


def load_model(config: RunConfig, device: torch.device) -> LoadedModel:
    """Build ``config.model`` from the registry or load ``config.weights`` (its model card wins on normalisation)."""
    from engine.models import build_model, get_spec

    weights = config.weights
    name = config.model or default_model(config.mode)
    if weights is None and name in BUNDLED and BUNDLED[name].is_file():  # a bundled model: its bundled weights
        weights = BUNDLED[name]
    if weights is not None:
        if not Path(weights).is_file():
            raise ModelError(f"weights file not found: {weights}")
        try:
            from engine.models import weights as weights_io
        except ImportError:
            raise ModelError("loading --weights needs engine.models.weights, which this install lacks") from None
        module, card = weights_io.load(Path(weights), device=device)
        card_dict = dataclasses.asdict(card) if dataclasses.is_dataclass(card) else dict(card)
        arch = card_dict.get("arch")
        if config.model is not None and arch is not None and config.model != arch:
            raise ModelError(f"--model {config.model} does not match the weights file's model '{arch}'")
        name = arch or name
        norm = _norm_from_card(card_dict.get("normalisation"))
    else:
        spec = get_spec(name)
        if spec.needs_weights:
            raise ModelError(f"model '{name}' needs trained weights: pass --weights FILE.safetensors")
        module = build_model(name)
        card_dict = None
        norm = normalise.NormalisationConfig()
    cfg = getattr(module, "cfg", None)
    in_bands = int(getattr(cfg, "in_bands", 4))
    module.eval().to(device)
    return LoadedModel(module=module, name=name, in_bands=in_bands, norm=norm, card=card_dict,
                       weights=Path(weights) if weights is not None else None)


def open_scene_and_model(config: RunConfig, early: ModelInputs | None, stack: ExitStack, progress: Progress,
          warnings: list[str]) -> tuple[OpenedInputs, LoadedModel, torch.device]:  # fmt: skip
    """Open and check the optical image and the run's other rasters, load the model and open exactly the inputs it
    declares (those ``early`` — read off its class before loading — already named are opened before the model is
    loaded, so a bad file fails before the weights are read)."""
    with input_read_errors("an input raster"):
        inp = _open_scene(config, stack)
        if early is not None:
            _open_declared(config, inp, early, stack, progress, warnings)
    device = resolve_device(config.device)
    model = load_model(config, device)
    if model.in_bands != len(config.bands) and not getattr(model.module, "any_bands", False):
        raise ModelError(
            f"model '{model.name}' takes {model.in_bands} optical bands but --bands lists {len(config.bands)}"
        )
    declared = inputs_of(model.module, model.name)
    if declared != inp.declared:  # only when the class could not be told before loading
        require_roles(declared, config)
        with input_read_errors("an input raster"):
            _open_declared(config, inp, declared, stack, progress, warnings)
    _check_mask(config, inp, progress, warnings)
    return inp, model, device


def _open_scene(config: RunConfig, stack: ExitStack) -> OpenedInputs:
    """Open and check the optical image (it defines the grid) and the run's own rasters: land cover, cloud mask,
    reference."""
    opt = stack.enter_context(open_raster(config.optical, "optical"))
    require_georeferenced(opt, "optical image")
    if opt.count < 4:
        raise InputError(
            f"optical image must have at least 4 bands (B, G, R, NIR), this one has {opt.count}: {config.optical}"
        )
    check_bands(opt, "optical image", config.bands)
    extra: dict[str, rasterio.io.DatasetReader | None] = {"landcover": None, "mask": None}
    for role in ("landcover", "mask", "reference"):
        path = getattr(config, role)
        if path is None:
            continue
        ds = stack.enter_context(open_raster(path, role.replace("landcover", "land cover")))
        require_georeferenced(ds, role)
        if role in extra:
            extra[role] = ds
    grid = Grid.of(opt)
    if not has_any_valid(opt, config.bands):
        raise InputError(f"optical image has no valid pixel (everything is nodata): {config.optical}")
    for role, ds in extra.items():
        if ds is not None and not bounds_overlap(ds, grid):
            raise InputError(f"{role} raster does not overlap the optical image: {ds.name}")
    if extra["mask"] is not None and extra["mask"].count not in (1, 8):
        raise InputError(
            f"cloud mask must have 1 band (1 = cloud) or 8 (Planet UDM2), this one has {extra['mask'].count}"
        )
    return OpenedInputs(optical=opt, landcover=extra["landcover"], mask=extra["mask"], grid=grid,
                   band_index=[b - 1 for b in config.bands])  # fmt: skip


def _open_declared(config: RunConfig, inp: OpenedInputs, declared: ModelInputs, stack: ExitStack, progress: Progress,
                   warnings: list[str]) -> None:  # fmt: skip
    """Open the inputs ``declared`` names that are not open yet (engine.align.inputs: one path for every role), resolve
    the acquisition times it needs, and warn about the given inputs it does not take (never opened)."""
    ignored = ignored_inputs(declared, config) if inp.declared is None else []
    first = 1 if ignored and not declared.uses_sar and config.sar is not None else 0  # the SAR's, said up front
    for message in ignored[:first]:
        record_warning(progress, warnings, message)
    if declared.needs_dates and not inp.dates:
        inp.dates = acquisition_dates(config, progress, warnings)
    opened = {i.name: i for i in inp.roles}
    todo = tuple(r for r in declared.roles if r not in opened)
    opened.update({i.name: i for i in open_roles(todo, config, inp.grid, inp.optical, stack, progress, warnings)})
    inp.roles = [opened[r] for r in declared.roles]
    for message in ignored[first:]:
        record_warning(progress, warnings, message)
    inp.declared = declared


def _check_mask(config: RunConfig, inp: OpenedInputs, progress: Progress, warnings: list[str]) -> None:
    """When the mask decides what changes, its coverage (a warning below 99.9 %); --only-cloudy without a mask
    says it falls back to detected clouds."""
    if inp.mask is not None and composite_feather(config, inp) is not None:
        with input_read_errors("the cloud mask"):
            checked_coverage(inp.mask, inp.grid, tuple(range(1, inp.mask.count + 1)), "cloud mask", progress,
                             warnings, without="a cloud-mask value")  # fmt: skip
    elif config.only_cloudy:
        message = ("no --mask: --only-cloudy replaces the clouds detected on the optical image (the 'cloud mask' "
                   "line says by which detector; the product's own mask: --mask auto)")  # fmt: skip
        if config.mode == "raw":  # asked for: a warning; --mode best's own choice: said once, as information
            record_warning(progress, warnings, message)
        else:
            log.info("%s", message)


def _decide_optical_scale(config: RunConfig, inp: OpenedInputs, norm: normalise.NormalisationConfig) -> float:
    if config.optical_scale == "dn":
        return float(norm.optical_scale)
    if config.optical_scale == "reflectance":
        return 1.0
    sample = read_sample(inp.optical, config.bands)
    ok = valid_mask(sample, inp.optical.nodata)
    detected = normalise.detect_optical_scale(sample[:, ok])
    if detected == 1.0:
        log.info("optical values look like reflectance in [0, 1] (force with --optical-scale dn)")
        return 1.0
    return float(norm.optical_scale)


def prepare_inputs(config: RunConfig, inp: OpenedInputs, model: LoadedModel) -> None:
    """Decide what depends on the model's normalisation: the optical scale and the inputs' fills."""
    with input_read_errors("an input raster"):
        inp.optical_scale = _decide_optical_scale(config, inp, model.norm)
        inp.norm = model.norm
        _check_optical_types(config, inp)
        for item in inp.roles:
            item.prepare(model.norm)


def _check_optical_types(config: RunConfig, inp: OpenedInputs) -> None:
    """Every optical image's bands must hold reflectance at the scale decided, in and out
    (:func:`engine.sources.normalise.optical_dtype_problem`): refused in one line, never a wrong scale written."""
    images = [("optical image", inp.optical, config.optical)]
    images += [(item.role.label, item.ds, getattr(config, item.name)) for item in inp.roles
               if item.role.kind == "optical"]  # fmt: skip
    for role, ds, given in images:
        for dtype in sorted(set(ds.dtypes)):
            problem = normalise.optical_dtype_problem(dtype, inp.optical_scale)
            if problem is not None:
                raise InputError(f"{role} cannot be declouded: {problem}: {given}")


def open_aligned_readers(config: RunConfig, inp: OpenedInputs, stack: ExitStack) -> None:
    """Window readers that bring the model's inputs and the mask onto the optical grid, closed with ``stack``."""
    for item in inp.roles:
        item.open_reader(stack, inp.grid)
    if inp.mask is not None:
        mask_bands = tuple(range(1, inp.mask.count + 1))
        inp.mask_reader = stack.enter_context(AlignedReader(inp.mask, inp.grid, mask_bands, "nearest"))
    if inp.declared is not None and inp.declared.prior:
        with input_read_errors("the optical image"):
            inp.prior_input = prior.PriorInput(prior_colours(inp), sar_channels(inp.roles))


def prior_colours(inp: OpenedInputs, strip: int = 512) -> prior.SceneColours | None:
    """The scene's colours in the model's units — the prior's value deep inside a cloud (:mod:`engine.refine.prior`:
    clear medians, and the SAR's classes with each one's clear median) — from the pixels of the report's sampling
    grid (:func:`engine.refine.baselines.median_stride`), read in strips (clear: optical data, no cloud, ``--mask``'s
    else detected); None when none is clear."""
    h, w = inp.grid.height, inp.grid.width
    stride = median_stride(w, h)
    pixels, clear, features = [], [], []
    for row in range(0, h, strip):
        win = Window(0, row, w, min(strip, h - row))
        cloud, inner, _ = halo_cloud(inp, win, 0)
        cloud = cloud[inner]  # detected clouds come on the strip grown by the detector's halo
        _, x, ok = read_optical(inp.optical, inp.band_index, inp.optical_scale, win)
        rows, cols = sample_grid((int(win.height), w), row, 0, stride)
        pick = np.ix_(rows, cols)
        usable = ok[pick]
        pixels.append(x[:, rows][:, :, cols][:, usable])
        clear.append((~cloud[pick])[usable])
        feats = prior.sar_features(sar_on(inp, win, x))
        if feats is not None:
            features.append(feats[:, rows][:, :, cols][:, usable])
    values = np.concatenate(pixels, axis=1)
    return prior.fit_colours(values, np.concatenate(clear), np.concatenate(features, axis=1) if features else None)
