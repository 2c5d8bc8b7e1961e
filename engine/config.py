"""The settings of one engine run, as a dataclass shared by the CLI, the QGIS plugin, benchmarks and Dask jobs.

Everything that decides the output lives here so that a run is reproducible from its :class:`RunConfig`
(``dataclasses.asdict`` is what goes into the report's "run settings"). Validation of the values that do not
need the files (tile geometry, band lists, enum options) happens in :meth:`RunConfig.validate`, before any
raster is opened, so a typo fails in milliseconds with a one-line :class:`~engine.errors.InputError`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from engine.errors import InputError
from engine.sources import as_source
from engine.tta import DEFAULT_CONFIDENCE_TTA, MAX_TTA

SAR_UNITS = ("auto", "db", "linear", "amplitude")
OPTICAL_SCALES = ("auto", "dn", "reflectance")
SAR_RESAMPLINGS = ("nearest", "bilinear")
DEFAULT_BANDS = (1, 2, 3, 4)  # PlanetScope B, G, R, NIR
DEFAULT_SAR_BANDS = (1, 2)  # VV, VH
TEMPORAL_PATHS = ("optical_prev", "sar_prev", "optical_next", "sar_next")  # the extra dates' rasters
DATE_FIELDS = ("date", "date_prev", "date_next")
INPUT_FIELDS = ("optical", "sar", "sar_vv", "sar_vh", "landcover", "mask", "reference", "dem", *TEMPORAL_PATHS)
MAX_FEATHER = 512  # --cloud-feather, pixels: the cloud mask is read with this halo around each chunk


def flag(field_name: str) -> str:
    """The ``engine run`` option of a :class:`RunConfig` field: ``optical_prev`` → ``--optical-prev``."""
    return "--" + field_name.replace("_", "-")


@dataclass
class RunConfig:
    """One cloud-removal run: inputs, output, model, tiling and unit handling.

    ``bands`` / ``sar_bands`` are 1-based band indices into the optical / SAR files (Sentinel-2 B2, B3, B4, B8 in
    a 13-band L1C file are ``(2, 3, 4, 8)``). ``model=None`` means the default model (bundled ``aligncr-lite``
    weights when present, else ``identity``). ``chunk`` is the side, in pixels, of the processing chunk on the
    global tile grid: it bounds memory and does not change the result.

    Temporal models (those with a ``temporal_inputs`` attribute: ``msop-unet``, ``gapfill``) also take the images
    acquired before (``optical_prev``, ``sar_prev``) and after (``optical_next``, ``sar_next``) the cloudy one;
    they are aligned and normalised like ``optical`` / ``sar``. ``date`` / ``date_prev`` / ``date_next`` are the
    acquisition times (datetimes or ISO 8601 strings) for models that need them (``gapfill``); when absent they are
    read from the files' tags (:func:`engine.dates.read_acquisition_date`). Other models ignore all of these.

    ``sar`` may be ``None`` only for a model that takes no SAR (``uses_sar = False`` on its class: ``gapfill``);
    the pipeline says so in one line for any other model. ``out`` is keyword-only (it follows the optional ``sar``).
    ``dem`` is a one-band elevation raster in metres (any CRS/resolution) for models built with ``dem=True`` (the
    Cresson 2022 U-Nets; see :mod:`engine.dem`); other models ignore it with a warning.

    ``only_cloudy`` keeps every pixel that ``mask`` does not mark as cloud exactly as the input and puts the
    model's output on the cloud, feathered over ``cloud_feather`` pixels beyond it (:mod:`engine.composite`);
    without ``mask`` the cloud is detected on the optical image (:mod:`engine.cloudmask`). Off, the output is the
    model's everywhere, as in the paper. ``qa`` also writes, on the output's grid, the percent of each pixel that
    is the model's output (0 = as acquired, 100 = reconstructed; 255 = no optical data).

    ``tta`` runs the model on that many flips/rotations of each tile and outputs their mean (:mod:`engine.tta`;
    ``None`` or 1 = off); ``confidence`` also writes, on the output's grid, their per-pixel spread in reflectance
    (``-1`` = no optical data). ``confidence`` without ``tta`` means ``tta = 4``; the resolved number is what
    :attr:`tta` holds after construction (and what reports record).
    ``memory_budget`` (GB) bounds one tile's forward plus the pipeline's buffers (:mod:`engine.memory`): a tile
    that does not fit is refused with the largest one that does; ``None`` takes 80 % of the available memory.
    ``tile`` is the largest tile: on a scene smaller than it the tiles shrink to the scene (:mod:`engine.tiling`).
    """

    optical: Path | str
    sar: Path | str | None = None
    out: Path = field(kw_only=True)
    landcover: Path | str | None = None
    mask: Path | str | None = None  # a file, a GDAL name, or "auto" (the mask that comes with the optical product)
    reference: Path | str | None = None
    model: str | None = None
    weights: Path | None = None
    device: str = "auto"
    tile: int = 256
    overlap: int = 32
    batch: int = 4
    cog: bool = False
    bands: tuple[int, ...] = DEFAULT_BANDS
    sar_bands: tuple[int, ...] = DEFAULT_SAR_BANDS
    sar_units: str = "auto"
    optical_scale: str = "auto"
    sar_resampling: str = "nearest"
    report: Path | None = None
    baselines: bool = True  # the report also scores the non-learned baselines (engine.baselines) and the margin
    chunk: int = 1024
    optical_prev: Path | None = None
    optical_next: Path | None = None
    sar_prev: Path | None = None
    sar_next: Path | None = None
    date: datetime | None = None
    date_prev: datetime | None = None
    date_next: datetime | None = None
    dem: Path | None = None
    only_cloudy: bool = False
    cloud_feather: int = 8
    qa: Path | None = None
    confidence: Path | None = None
    tta: int | None = None
    memory_budget: float | None = None  # GB for one run's tiles and buffers; None = 80 % of what is available
    sar_vv: Path | str | None = None  # split polarisations: one file each instead of ``sar`` (engine.sources)
    sar_vh: Path | str | None = None

    def __post_init__(self) -> None:
        for name in ("out", "weights", "report", "qa", "confidence"):
            value = getattr(self, name)
            if value is not None and not isinstance(value, Path):
                setattr(self, name, Path(value))
        for name in INPUT_FIELDS:  # GDAL names (/vsizip//abs/…, DRIVER:…) stay strings: Path would fold them
            value = getattr(self, name)
            if value is not None:
                setattr(self, name, as_source(value))
        for name in DATE_FIELDS:
            value = getattr(self, name)
            if value is not None and not isinstance(value, datetime):
                from engine.dates import parse_datetime

                setattr(self, name, parse_datetime(str(value)))
        self.bands = tuple(int(b) for b in self.bands)
        self.sar_bands = tuple(int(b) for b in self.sar_bands)
        if self.tta is None:
            self.tta = DEFAULT_CONFIDENCE_TTA if self.confidence is not None else 1

    def validate(self) -> None:
        """Check the settings that need no file; raise :class:`InputError` with one line on the first problem."""
        if self.tile < 16:
            raise InputError(f"--tile must be at least 16 pixels, got {self.tile}")
        if self.overlap < 0 or 2 * self.overlap >= self.tile:
            raise InputError(f"--overlap must be in [0, tile/2) = [0, {self.tile // 2}), got {self.overlap}")
        if self.batch < 1:
            raise InputError(f"--batch must be at least 1, got {self.batch}")
        if self.chunk < 1:
            raise InputError(f"chunk must be at least 1 pixel, got {self.chunk}")
        if len(self.bands) < 1 or any(b < 1 for b in self.bands) or len(set(self.bands)) != len(self.bands):
            raise InputError(f"--bands must be distinct 1-based band indices, got {','.join(map(str, self.bands))}")
        if len(self.sar_bands) != 2 or any(b < 1 for b in self.sar_bands) or len(set(self.sar_bands)) != 2:
            raise InputError(
                f"--sar-bands must be two distinct 1-based indices (VV,VH), got {','.join(map(str, self.sar_bands))}"
            )
        if self.sar is not None and (self.sar_vv is not None or self.sar_vh is not None):
            raise InputError("give the SAR either as --sar or as --sar-vv and --sar-vh, not both")
        if (self.sar_vv is None) != (self.sar_vh is None):
            raise InputError(f"split polarisations need both --sar-vv and --sar-vh; "
                             f"{'--sar-vh' if self.sar_vh is None else '--sar-vv'} is missing")  # fmt: skip
        if self.qa is not None and Path(self.qa).resolve() == Path(self.out).resolve():
            raise InputError(f"--qa must be another file than --out, got {self.qa} for both")
        self._validate_tta()
        if self.only_cloudy and self.mask is None and len(self.bands) != 4:
            raise InputError(f"--only-cloudy without --mask detects clouds on B, G, R, NIR; --bands lists "
                             f"{len(self.bands)} bands: give a cloud mask with --mask")  # fmt: skip
        if self.memory_budget is not None and not self.memory_budget > 0:
            raise InputError(f"--memory-budget must be a positive number of GB, got {self.memory_budget}")
        if not 0 <= self.cloud_feather <= MAX_FEATHER:
            raise InputError(f"--cloud-feather must be in [0, {MAX_FEATHER}] pixels, got {self.cloud_feather}")
        for name, value, allowed in (
            ("--sar-units", self.sar_units, SAR_UNITS),
            ("--optical-scale", self.optical_scale, OPTICAL_SCALES),
            ("--sar-resampling", self.sar_resampling, SAR_RESAMPLINGS),
        ):
            if value not in allowed:
                raise InputError(f"{name} must be one of {', '.join(allowed)}, got '{value}'")

    def _validate_tta(self) -> None:
        if self.tta is None or not 1 <= self.tta <= MAX_TTA:
            raise InputError(f"--tta must be 1 to {MAX_TTA} transforms (flips and 90° rotations), got {self.tta}")
        if self.confidence is None:
            return
        if self.tta < 2:
            raise InputError(f"--confidence needs --tta of 2 or more (the spread of one output is 0), got {self.tta}")
        others = {"--out": self.out, "--qa": self.qa}
        for name, path in others.items():
            if path is not None and Path(self.confidence).resolve() == Path(path).resolve():
                raise InputError(f"--confidence must be another file than {name}, got {self.confidence} for both")

    def temporal_paths(self) -> dict[str, Path]:
        """The extra dates' rasters that were given, by field name (``optical_prev`` …)."""
        return {name: getattr(self, name) for name in TEMPORAL_PATHS if getattr(self, name) is not None}

    def as_dict(self) -> dict[str, Any]:
        """JSON-friendly settings (paths as strings) for reports and logs."""
        out: dict[str, Any] = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if isinstance(value, Path):
                value = str(value)
            elif isinstance(value, datetime):
                value = value.isoformat()
            elif isinstance(value, tuple):
                value = list(value)
            out[f.name] = value
        return out


def parse_band_list(text: str) -> tuple[int, ...]:
    """``"1,2,3,4"`` → ``(1, 2, 3, 4)``; raises :class:`InputError` on anything else."""
    try:
        return tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise InputError(f"band list must be comma-separated integers like 1,2,3,4, got '{text}'") from None
