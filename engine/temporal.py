"""The extra dates of temporal models (``msop-unet``, ``gapfill``) in the streaming pipeline.

A model is *temporal* when its class has ``temporal_inputs`` (``("prev", "next")``): besides the cloudy optical
image and its SAR at ``t`` it takes, as keyword tensors, ``optical_prev, sar_prev, optical_next, sar_next`` — the
images acquired before and after. ``uses_sar = False`` (``gapfill``) means the model takes no SAR at all:
neither the extra dates' SAR nor the main ``--sar``, which is then optional (one that is given is ignored with a
warning, never opened) and the model gets ``sar=None``. ``needs_dates = True`` means the model also takes the
acquisition times ``t_prev, t, t_next`` (seconds since the epoch).

Each extra raster is handled exactly like the main input of its kind:

* warped onto the optical grid through an :class:`~engine.align.AlignedReader` and read one chunk window at a
  time (never at scene size), in the reader thread when prefetching;
* optical: the same bands and the same DN/reflectance scale as the cloudy image, nearest resampling (as
  ``python -m engine gapfill``); pixels it does not cover take the cloudy image's value in the tile fed to the
  network;
* SAR: the same bands, resampling and dB/linear detection (per file) as the main SAR; pixels without SAR take the
  file's mean, as the main SAR does.

A pixel where any extra raster the model needs has no data is left as the input, as pixels without SAR are.

The :class:`~engine.accel.InferenceRunner` calls ``module(optical, sar)``: :class:`PackedInputsAdapter` packs the
extra dates after the SAR channels of its second argument (all inputs are on the optical grid by then), so the
runner's batching, OOM halving, pinned copies and ``torch.compile`` apply to them unchanged, and unpacks them into
the model's keyword arguments. Without SAR the packed argument holds the extra inputs alone.
"""

from __future__ import annotations

import logging
from contextlib import ExitStack
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import numpy as np
import rasterio
import torch
from rasterio.windows import Window
from torch import nn

from engine import normalise
from engine.align import AlignedReader, Grid, checked_coverage
from engine.config import DATE_FIELDS, DEFAULT_SAR_BANDS, TEMPORAL_PATHS, RunConfig, flag
from engine.errors import InputError
from engine.gapfill import interpolation_weight, read_acquisition_date
from engine.progress import Progress, record_warning
from engine.raster import check_bands, open_raster, read_sample, require_georeferenced, valid_mask

log = logging.getLogger("engine")

_ROLES = {"prev": "t-1", "next": "t+1"}


def temporal_keys(module: nn.Module | type) -> list[str]:
    """The extra-date inputs ``module`` needs, in forward-argument order (``[]`` for a non-temporal model)."""
    keys: list[str] = []
    uses_sar = bool(getattr(module, "uses_sar", True))
    for suffix in getattr(module, "temporal_inputs", None) or ():
        keys.append(f"optical_{suffix}")
        if uses_sar:
            keys.append(f"sar_{suffix}")
    unknown = [k for k in keys if k not in TEMPORAL_PATHS]
    if unknown:
        raise InputError(f"this engine cannot supply the model's extra input(s) {', '.join(unknown)}")
    return keys


@dataclass
class ExtraInput:
    """One extra-date raster, opened and checked, with what was decided about it (units, NaN fill)."""

    key: str  # "optical_prev", "sar_next", ...
    ds: rasterio.io.DatasetReader
    bands: tuple[int, ...]
    sar_units: str = ""  # SAR only: "db" or "linear"
    fill: np.ndarray | None = None  # SAR only: per-polarisation fill for missing pixels, normalised
    reader: AlignedReader | None = None

    @property
    def is_sar(self) -> bool:
        return self.key.startswith("sar_")

    @property
    def channels(self) -> int:
        return len(self.bands)


@dataclass
class TemporalInputs:
    """What a temporal run adds to the pipeline: the extra rasters, the dates and how to feed them."""

    extras: list[ExtraInput] = field(default_factory=list)
    dates: dict[str, float] = field(default_factory=dict)  # t_prev, t, t_next in seconds (needs_dates models)
    fill_only_cloudy: bool = False  # with --mask, only cloudy pixels take the model's output

    def open_readers(self, stack: ExitStack, grid: Grid, sar_resampling: str) -> None:
        for e in self.extras:
            resampling = sar_resampling if e.is_sar else "nearest"
            e.reader = stack.enter_context(AlignedReader(e.ds, grid, e.bands, resampling))

    def read(
        self, win: Window, optical: np.ndarray, optical_scale: float, norm: normalise.NormalisationConfig
    ) -> tuple[list[np.ndarray], np.ndarray]:
        """The extra rasters of one chunk window, normalised, gaps filled; and where they all have data.

        ``optical`` is the cloudy image's normalised window, used where an extra optical image has no data.
        """
        arrays: list[np.ndarray] = []
        ok = np.ones(optical.shape[1:], dtype=bool)
        for e in self.extras:
            assert e.reader is not None
            if e.is_sar:
                assert e.fill is not None
                unit, good = read_sar(e.reader, win, e.sar_units, e.fill, norm)
            else:
                unit = normalise.normalise_optical(e.reader.read(win), optical_scale)
                good = np.isfinite(unit).all(axis=0)
                unit = np.where(good[None], unit, optical).astype(np.float32)
            ok &= good
            arrays.append(unit)
        return arrays, ok


def sar_to_unit(data: np.ndarray, units: str, norm: normalise.NormalisationConfig) -> np.ndarray:
    """(2, h, w) SAR in file units (NaN = none) → [0, 1] with the model's dB ranges; NaN preserved."""
    db = normalise.sar_to_db(data, units)
    return normalise.normalise_sar(db, (tuple(norm.vv_range), tuple(norm.vh_range)))


def read_sar(
    reader: AlignedReader, win: Window, units: str, fill: np.ndarray, norm: normalise.NormalisationConfig
) -> tuple[np.ndarray, np.ndarray]:
    """One window of SAR on the optical grid, normalised, gaps set to ``fill``; and where it has data."""
    unit = sar_to_unit(reader.read(win), units, norm)
    ok = np.isfinite(unit).all(axis=0)
    for k in range(unit.shape[0]):
        unit[k][~np.isfinite(unit[k])] = fill[k]
    return unit, ok


def check_sar_bands(ds: rasterio.io.DatasetReader, role: str, config: RunConfig, path: Path) -> None:
    """A SAR raster has the ``--sar-bands`` it is read with (exactly VV, VH when they are the default)."""
    if config.sar_bands == DEFAULT_SAR_BANDS and ds.count != 2:
        raise InputError(
            f"{role} must have exactly 2 bands (VV, VH), this one has {ds.count} (pick two with --sar-bands): {path}"
        )
    check_bands(ds, role, config.sar_bands)


def detect_sar_units(ds: rasterio.io.DatasetReader, config: RunConfig) -> str:
    """``config.sar_units``, or the units a sample of ``ds`` looks like when it is ``auto``."""
    if config.sar_units != "auto":
        return config.sar_units
    sample = read_sample(ds, config.sar_bands).astype(np.float32)
    units = normalise.detect_sar_units(sample[:, valid_mask(sample, ds.nodata)])
    if units == "linear":
        log.info("SAR values of %s look like linear power; converting to dB (force with --sar-units db)", ds.name)
    return units


def sar_fill(
    ds: rasterio.io.DatasetReader, bands: tuple[int, ...], units: str, norm: normalise.NormalisationConfig
) -> np.ndarray:
    """Per-polarisation scene mean of the normalised SAR (0.5 where there is none): the fill for missing SAR."""
    sample = read_sample(ds, bands).astype(np.float32)
    sample[:, ~valid_mask(sample, ds.nodata)] = np.nan
    unit = sar_to_unit(sample, units, norm)
    with np.errstate(all="ignore"):
        fill = np.nanmean(unit.reshape(unit.shape[0], -1), axis=1)
    return np.where(np.isfinite(fill), fill, 0.5).astype(np.float32)


def _role(key: str) -> str:
    kind, suffix = key.split("_", 1)
    return f"{'SAR' if kind == 'sar' else 'optical'} image at {_ROLES.get(suffix, suffix)} ({flag(key)})"


def _date(given: datetime | None, path: Path, option: str) -> datetime:
    if given is not None:
        return given
    try:
        return read_acquisition_date(path)
    except InputError as exc:
        raise InputError(f"{exc} with {option}") from None


def open_temporal(
    config: RunConfig,
    module: nn.Module,
    model_name: str,
    grid: Grid,
    norm: normalise.NormalisationConfig,
    stack: ExitStack,
    progress: Progress,
    warnings: list[str],
) -> TemporalInputs | None:
    """Check and open the extra dates ``module`` needs; ``None`` for a non-temporal model (extras ignored).

    Raises :class:`InputError` (one line, before anything is written) when a needed extra raster or date is missing
    or unusable.
    """
    keys = temporal_keys(module)
    needs_dates = bool(getattr(module, "needs_dates", False))
    given = config.temporal_paths()
    given_dates = [name for name in DATE_FIELDS if getattr(config, name) is not None]
    if not keys:
        ignored = [flag(k) for k in given] + [flag(d) for d in given_dates]
        if ignored:
            record_warning(progress, warnings, f"model '{model_name}' is not temporal: {', '.join(ignored)} ignored")
        return None
    require_extra_dates(keys, model_name, config)
    unused = [flag(k) for k in given if k not in keys]
    if not needs_dates:
        unused += [flag(d) for d in given_dates]
    if unused:
        record_warning(progress, warnings, f"model '{model_name}' does not use {', '.join(unused)}: ignored")
    cfg = getattr(module, "cfg", None)
    out = TemporalInputs(fill_only_cloudy=bool(getattr(cfg, "fill_only_cloudy", False)))
    if needs_dates:
        t_prev = _date(config.date_prev, given["optical_prev"], "--date-prev")
        t = _date(config.date, config.optical, "--date")
        t_next = _date(config.date_next, given["optical_next"], "--date-next")
        weight = float(interpolation_weight(t_prev, t, t_next))  # raises unless t_prev < t_next
        if not 0.0 <= weight <= 1.0:
            record_warning(progress, warnings, f"the cloudy date {t.isoformat()} is outside [{t_prev.isoformat()}, "
                  f"{t_next.isoformat()}]: extrapolating (weight {weight:.3f} on the next image)")  # fmt: skip
        log.info("dates: t-1 %s, t %s, t+1 %s (weight %.4f on t+1)", t_prev.isoformat(), t.isoformat(),
                 t_next.isoformat(), weight)  # fmt: skip
        out.dates = {"t_prev": t_prev.timestamp(), "t": t.timestamp(), "t_next": t_next.timestamp()}
    for key in keys:
        path = given[key]
        role = _role(key)
        ds = stack.enter_context(open_raster(path, role))
        require_georeferenced(ds, role)
        if key.startswith("sar_"):
            bands = tuple(config.sar_bands)
            check_sar_bands(ds, role, config, path)
        else:
            bands = tuple(config.bands)
            check_bands(ds, role, bands)
        checked_coverage(ds, grid, bands, role, progress, warnings)
        extra = ExtraInput(key=key, ds=ds, bands=bands)
        if extra.is_sar:
            extra.sar_units = detect_sar_units(ds, config)
            extra.fill = sar_fill(ds, bands, extra.sar_units, norm)
        out.extras.append(extra)
    return out


def require_extra_dates(keys: list[str], model_name: str, config: RunConfig) -> None:
    """Raise the one-line :class:`InputError` naming the flags of the extra dates ``keys`` that ``config`` lacks."""
    missing = [k for k in keys if getattr(config, k) is None]
    if missing:
        raise InputError(
            f"model '{model_name}' needs {_join([flag(k) for k in keys])} (the images before and after the cloudy "
            f"one); missing {', '.join(flag(k) for k in missing)}"
        )


@dataclass(frozen=True)
class ModelNeeds:
    """What a model takes besides the cloudy optical image, read off its class (and config) alone."""

    name: str
    temporal_keys: tuple[str, ...] = ()  # the extra-date rasters, by RunConfig field name
    uses_sar: bool = True  # False (gapfill): no --sar needed, any given one is ignored
    uses_dem: bool = False  # its config says dem=True (the Cresson U-Nets): --dem needed (see engine.dem)


def needs_of(module: nn.Module | type, name: str, config: object | None = None) -> ModelNeeds:
    """The :class:`ModelNeeds` of a built module, or of a model class and its ``config`` (dataclass or dict)."""
    cfg = config if config is not None else getattr(module, "cfg", None)
    dem = cfg.get("dem", False) if isinstance(cfg, dict) else getattr(cfg, "dem", False)
    return ModelNeeds(
        name=name,
        temporal_keys=tuple(temporal_keys(module)),
        uses_sar=bool(getattr(module, "uses_sar", True)),
        uses_dem=bool(dem),
    )


def model_needs(model: str | None, weights: Path | None, default_model: str) -> ModelNeeds | None:
    """The needs of a model given as a registry name and/or a weights file (as ``--model`` / ``--weights``), from the
    registry or the weights file's card header (no tensor read); ``None`` when that cannot be told (unknown name,
    unreadable weights): the full checks report it."""
    from engine.errors import EngineError
    from engine.models import get_spec

    try:
        name = model or default_model
        model_config: object = get_spec(name).config if weights is None else None
        if weights is not None:
            from engine.models.weights import read_card

            card = read_card(weights)
            name = card.arch or name
            card_config = card.config if isinstance(card.config, dict) else {}
            model_config = {"dem": getattr(get_spec(name).config, "dem", False), **card_config}
        cls = get_spec(name).cls
    except (EngineError, OSError, ValueError):
        return None
    return needs_of(cls, name, model_config)


def require_sar(needs: ModelNeeds, config: RunConfig) -> None:
    """Raise the one-line :class:`InputError` when a model that takes SAR gets no ``--sar``."""
    if needs.uses_sar and config.sar is None:
        raise InputError(
            f"model '{needs.name}' needs --sar (the Sentinel-1 VV/VH image); only models without SAR input "
            "(gapfill) run without it"
        )


def require_dem(needs: ModelNeeds, config: RunConfig) -> None:
    """Raise the one-line :class:`InputError` when a model built with ``dem=True`` gets no ``--dem``."""
    if needs.uses_dem and config.dem is None:
        raise InputError(
            f"model '{needs.name}' was built with a DEM input (dem=True): pass --dem FILE (elevation in metres)"
        )


def precheck(config: RunConfig, default_model: str) -> ModelNeeds | None:
    """Fail in milliseconds, before any raster is opened, when the chosen model lacks an extra date, its SAR or
    its DEM.

    Only the model's class is looked at (registry name, or the weights file's card header); anything unclear here
    (unknown name, unreadable weights) is left for the full checks to report in their usual order. Returns what
    was found out about the model (``None`` when nothing).
    """
    needs = model_needs(config.model, config.weights, default_model)
    if needs is None:
        return None
    require_extra_dates(list(needs.temporal_keys), needs.name, config)
    require_sar(needs, config)
    require_dem(needs, config)
    return needs


def _join(items: list[str]) -> str:
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


class PackedInputsAdapter(nn.Module):
    """``forward(optical, packed)`` → ``module(optical, sar, **extras, **dates)`` for the inference runner.

    ``packed`` is (N, sar_channels + Σ extra channels, H, W): the SAR, then each extra input in ``keys`` order (the
    extra dates, the DEM). With ``sar_channels = 0`` (a model that takes no SAR, run without ``--sar``) the model
    gets ``sar=None``.
    """

    def __init__(
        self, module: nn.Module, sar_channels: int, keys: list[str], channels: list[int], dates: dict[str, float]
    ) -> None:
        super().__init__()
        self.module = module
        self.sizes = [sar_channels, *channels]
        self.keys = list(keys)
        self.dates = dict(dates)
        self.cfg = getattr(module, "cfg", None)

    def forward(self, optical: torch.Tensor, packed: torch.Tensor) -> torch.Tensor:
        sar, *parts = torch.split(packed, self.sizes, dim=1)
        return self.module(optical, sar if self.sizes[0] else None, **dict(zip(self.keys, parts)), **self.dates)

    @staticmethod
    def pack(sar: np.ndarray, extras: list[np.ndarray]) -> np.ndarray:
        """One tile's (or chunk's) SAR and extra inputs, concatenated on the channel axis."""
        return np.concatenate([sar, *extras], axis=0) if extras else sar
