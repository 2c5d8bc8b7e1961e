"""Sentinel-1 SAR inputs (roles of kind ``sar``: the main ``--sar`` and the extra dates' ``--sar-prev/--sar-next``).

Every SAR raster is handled the same way: ``--sar-bands`` (VV, VH) read through an
:class:`~engine.align.reader.AlignedReader` with ``--sar-resampling``, its units told per file (``--sar-units``, or
detected: dB or linear power), converted to dB and normalised to [0, 1] with the model's dB ranges
(:func:`sar_to_unit`). Pixels without SAR (outside the footprint, nodata, NaN/inf) take the file's scene mean per
polarisation in the tile fed to the network (the official M3R-CR loader's "NaN → image mean", :func:`sar_fill`) and are
left as the input in the output.

The main SAR also says how many days it was acquired from the optical image when both files' tags tell
(:func:`sar_gap_days`): the network learned from pairs 2.2 days apart on average, so a bigger gap is worth a warning.
"""

from __future__ import annotations

import logging
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import rasterio
from rasterio.windows import Window

from engine.align.reader import AlignedInput, AlignedReader, Grid, WindowContext, checked_coverage
from engine.config import DEFAULT_SAR_BANDS, RunConfig
from engine.errors import InputError
from engine.progress import Progress, record_warning
from engine.sources import normalise
from engine.sources.dates import dataset_acquisition_date, days_apart
from engine.sources.raster import check_bands, open_raster, read_sample, require_georeferenced, valid_mask

if TYPE_CHECKING:
    from engine.models.roles import Role

log = logging.getLogger("engine")
SAR_GAP_WARN_DAYS = 12.0  # one Sentinel-1 repeat cycle; M3R-CR's SAR is 2.2 days from the cloudy image on average


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


def sar_gap_days(opt: rasterio.io.DatasetReader, sar: rasterio.io.DatasetReader, progress: Progress,
                 warnings: list[str]) -> float | None:  # fmt: skip
    """Days between the optical and SAR acquisitions when both files' tags give them; a warning past
    :data:`SAR_GAP_WARN_DAYS` (the network learned from pairs 2.2 days apart on average, M3R-CR §III)."""
    found_opt, found_sar = dataset_acquisition_date(opt), dataset_acquisition_date(sar)
    if found_opt is None or found_sar is None:
        return None
    days = days_apart(found_opt[0], found_sar[0])
    if days > SAR_GAP_WARN_DAYS:
        record_warning(progress, warnings, f"the SAR was acquired {days:.0f} days from the optical image (tags "
                       f"{found_sar[1]} / {found_opt[1]}); the model learned from pairs 2.2 days apart on average, "
                       "so changes on the ground in between show in the result")  # fmt: skip
    return round(days, 2)


@dataclass
class SarInput(AlignedInput):
    """A SAR role: its units (per file) and, once the model's normalisation is known, its fill for missing pixels."""

    units: str = ""
    fill: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.float32))
    gap_days: float | None = None  # the main SAR: days from the optical acquisition, when the tags say

    @classmethod
    def open(cls, role: Role, path: Path, config: RunConfig, grid: Grid, optical: rasterio.io.DatasetReader,
             stack: ExitStack, progress: Progress, warnings: list[str]) -> SarInput:  # fmt: skip
        ds = stack.enter_context(open_raster(path, role.name_in_warnings))
        require_georeferenced(ds, role.label)
        check_sar_bands(ds, role.label, config, path)
        bands = tuple(config.sar_bands)
        coverage = checked_coverage(ds, grid, bands, role.label, progress, warnings, label=role.short or None,
                                    without=role.without)  # fmt: skip
        gap = sar_gap_days(optical, ds, progress, warnings) if role.date_gap else None
        return cls(role=role, ds=ds, bands=bands, resampling=config.sar_resampling, coverage=coverage,
                   units=detect_sar_units(ds, config), gap_days=gap)  # fmt: skip

    def prepare(self, norm: normalise.NormalisationConfig) -> None:
        self.fill = sar_fill(self.ds, self.bands, self.units, norm)

    def read(self, win: Window, context: WindowContext | None = None) -> tuple[np.ndarray, np.ndarray]:
        assert self.reader is not None and context is not None
        return read_sar(self.reader, win, self.units, self.fill, context.norm)
