"""The one path a model's declared inputs take into the network: open → check → align → read per window → pack.

A model declares its inputs as roles (:mod:`engine.models.roles`); :func:`open_roles` opens exactly those, each
through the class of its kind (:data:`KINDS`), which checks the file (bands, georeferencing, overlap with a
coverage warning below 99.9 %) and decides what the file alone tells (SAR units, the DEM's fill). Every one is then
an :class:`~engine.align.reader.AlignedInput`: :meth:`~engine.align.reader.AlignedInput.prepare` once the model's
normalisation is known, :meth:`~engine.align.reader.AlignedInput.open_reader` onto the optical grid, and
:meth:`~engine.align.reader.AlignedInput.read` one chunk window at a time (in the reader thread when prefetching), which
gives the network's units with gaps filled and where the file has data; a pixel that any input lacks is left as the
cloudy input in the output.

Kinds:

* ``sar`` (:class:`engine.align.sar.SarInput`): ``--sar-bands`` with ``--sar-resampling``, units per file,
dB-normalised,
  gaps filled with the scene mean;
* ``optical`` (:class:`OpticalInput`, the extra dates): the cloudy image's ``--bands`` and scale, nearest; gaps take
  the cloudy image's value;
* ``dem`` (:class:`engine.align.dem.DemInput`): one band of metres, bilinear, ×10⁻⁴, gaps take the scene mean.

The :class:`~engine.stream.accel.InferenceRunner` calls ``module(optical, sar)``: :class:`PackedInputsAdapter` packs
every input after the SAR channels of its second argument (all are on the optical grid by then), so the runner's
batching, OOM halving, pinned copies and ``torch.compile`` apply to them unchanged, and unpacks them into the model's
keyword arguments (``sar=None`` for a model without SAR).
"""

from __future__ import annotations

from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import rasterio
import torch
from rasterio.windows import Window
from torch import nn

from engine.align.dem import DemInput
from engine.align.reader import AlignedInput, Grid, WindowContext, checked_coverage
from engine.align.sar import SarInput
from engine.config import RunConfig
from engine.models.roles import ROLES, ModelInputs, Role
from engine.progress import Progress
from engine.sources import normalise
from engine.sources.raster import check_bands, open_raster, require_georeferenced, valid_mask


@dataclass
class OpticalInput(AlignedInput):
    """An optical role (another date): the cloudy image's bands and scale; its gaps take the cloudy image's value."""

    @classmethod
    def open(cls, role: Role, path: Path, config: RunConfig, grid: Grid, optical: rasterio.io.DatasetReader,
             stack: ExitStack, progress: Progress, warnings: list[str]) -> OpticalInput:  # fmt: skip
        ds = stack.enter_context(open_raster(path, role.label))
        require_georeferenced(ds, role.label)
        bands = tuple(config.bands)
        check_bands(ds, role.label, bands)
        coverage = checked_coverage(ds, grid, bands, role.label, progress, warnings, without=role.without)
        return cls(role=role, ds=ds, bands=bands, resampling="nearest", coverage=coverage)

    def read(self, win: Window, context: WindowContext | None = None) -> tuple[np.ndarray, np.ndarray]:
        assert self.reader is not None and context is not None
        unit = normalise.normalise_optical(self.reader.read(win), context.optical_scale)
        good = np.isfinite(unit).all(axis=0)
        return np.where(good[None], unit, context.optical).astype(np.float32), good


KINDS: dict[str, type[OpticalInput] | type[SarInput] | type[DemInput]] = {
    "optical": OpticalInput,
    "sar": SarInput,
    "dem": DemInput,
}


def open_roles(names: tuple[str, ...], config: RunConfig, grid: Grid, optical: rasterio.io.DatasetReader,
               stack: ExitStack, progress: Progress, warnings: list[str]) -> list[AlignedInput]:  # fmt: skip
    """Open and check the rasters of the roles ``names`` (given in ``config`` under the same names), in order;
    closed with ``stack``. Raises :class:`~engine.errors.InputError` (one line) on the first unusable one."""
    out: list[AlignedInput] = []
    for name in names:
        role = ROLES[name]
        out.append(KINDS[role.kind].open(role, getattr(config, name), config, grid, optical, stack, progress,
                                         warnings))  # fmt: skip
    return out


def read_optical(optical: rasterio.io.DatasetReader, band_index: list[int], scale: float,
                 win: Window) -> tuple[np.ndarray, np.ndarray, np.ndarray]:  # fmt: skip
    """One window of the optical image: every band as read, the model's bands normalised (0 where they have no
    data), and where they have data."""
    raw = optical.read(window=win)
    ok = valid_mask(raw[band_index], optical.nodata)
    x = normalise.normalise_optical(raw[band_index], scale)
    x[:, ~ok] = 0.0
    return raw, x, ok


def read_window(inputs: list[AlignedInput], win: Window, context: WindowContext) -> tuple[np.ndarray, np.ndarray,
                                                                                          np.ndarray]:  # fmt: skip
    """One window of every input, packed in order (the network's second argument), where each of them has data,
    and where the SAR has data (everywhere without SAR: no pixel is held back for lack of it)."""
    shape = context.optical.shape[1:]
    packed = [np.zeros((0, *shape), dtype=np.float32)]
    ok = np.ones(shape, dtype=bool)
    sar_ok = ok
    for item in inputs:
        unit, good = item.read(win, context)
        packed.append(unit)
        ok = ok & good
        if item.name == "sar":
            sar_ok = good
    return (np.concatenate(packed, axis=0) if len(packed) > 2 else packed[-1]), ok, sar_ok


def sar_channels(inputs: list[AlignedInput]) -> int:
    """How many of the packed inputs' first channels are the main SAR's (:func:`read_window` packs it first)."""
    return sum(i.channels for i in inputs if i.name == "sar")


def packed_module(module: nn.Module, inputs: list[AlignedInput], declared: ModelInputs,
                  dates: dict[str, float]) -> nn.Module:  # fmt: skip
    """The module the runner calls: ``module`` itself when it takes exactly ``(optical, sar)``, else behind a
    :class:`PackedInputsAdapter` in the order of :func:`read_window` (with the acquisition times ``dates``), the
    engine's ``prior`` (the optical bands + 1 channels) last when the model takes it."""
    if declared.roles == ("sar",) and not declared.prior:
        return module
    extras = [i for i in inputs if i.name != "sar"]
    keys, channels = [i.name for i in extras], [i.channels for i in extras]
    if declared.prior:
        keys.append("prior")
        channels.append(int(getattr(getattr(module, "cfg", None), "in_bands", 4)) + 1)
    return PackedInputsAdapter(module, sar_channels(inputs), keys, channels, dates)


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
