"""The optional digital elevation model (DEM) input of the Cresson 2022 U-Nets in the streaming pipeline.

``ssop-unet`` and ``msop-unet`` built with ``dem=True`` (their config; see :mod:`engine.models.unet_arch`) take a
one-band elevation raster as the keyword ``dem``. Cresson et al. (2022, §3.1.2, Fig. 4) feed an SRTM DEM at 20 m
next to the 10 m images and inject it after the first stride-2 convolution, i.e. at half the optical resolution,
"without prior spatial re-sampling"; our network does that resampling itself (bilinear, to half the padded tile
size), so the pipeline hands it the DEM on the optical grid.

How the DEM reaches the network (``engine run --dem FILE``):

* warped onto the optical grid through an :class:`~engine.align.reader.AlignedReader` with **bilinear** resampling
  (elevation is a continuous field; any CRS and resolution) and read one chunk window at a time, like the SAR;
* **scaling**: the paper does not say. We follow the official code (CNES/decloud,
  ``decloud/preprocessing/constants.py``: ``DEM_SCALE_COEF = 0.0001``, applied to the elevation in metres):
  ``network input = elevation [m] × 10⁻⁴`` (:data:`DEM_SCALE`), so 0–8 849 m becomes 0–0.885 and places below sea
  level stay slightly negative. The factor is this module's constant, not a setting and not stored in weight files:
  weights trained with another scaling would need the same factor here. The file's values are taken as metres;
  its nodata value (and NaN/inf) means "no elevation";
* pixels without elevation (outside the DEM's footprint, nodata) take the scene's mean elevation in the tile fed
  to the network, and are left as the input in the output, as pixels without SAR are; below 99.9 % coverage a
  warning gives the percentage. A DEM that misses the optical image entirely is an error.

A model built with ``dem=True`` without ``--dem`` is a one-line :class:`~engine.errors.InputError` before any
raster is opened; ``--dem`` with a model that takes no DEM is ignored with a warning.
"""

from __future__ import annotations

from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from rasterio.windows import Window

from engine.align.reader import AlignedInput, Grid, WindowContext, checked_coverage
from engine.errors import InputError
from engine.progress import Progress
from engine.sources.raster import open_raster, read_sample, require_georeferenced, valid_mask

if TYPE_CHECKING:
    from engine.config import RunConfig
    from engine.models.roles import Role

DEM_SCALE = 1e-4  # elevation in metres → network input (CNES/decloud's DEM_SCALE_COEF)


def normalise_dem(metres: np.ndarray) -> np.ndarray:
    """Elevation in metres → the network's input scale (NaN preserved)."""
    return (np.asarray(metres, dtype=np.float32) * np.float32(DEM_SCALE)).astype(np.float32)


@dataclass
class DemInput(AlignedInput):
    """The DEM role: one band of elevation, aligned bilinearly, with the scene's mean (normalised) as its fill."""

    fill: float = 0.0

    @classmethod
    def open(cls, role: Role, path: Path, config: RunConfig | None, grid: Grid, optical: object, stack: ExitStack,
             progress: Progress, warnings: list[str]) -> DemInput:  # fmt: skip
        """Open and check the DEM raster (one band, georeferenced, overlapping the optical image)."""
        ds = stack.enter_context(open_raster(path, role.label))
        require_georeferenced(ds, role.label)
        if ds.count != 1:
            raise InputError(f"{role.label} must have 1 band (elevation in metres), this one has {ds.count}: {path}")
        coverage = checked_coverage(ds, grid, (1,), role.label, progress, warnings, without=role.without)
        sample = read_sample(ds, (1,)).astype(np.float32)
        values = sample[:, valid_mask(sample, ds.nodata)]
        fill = float(normalise_dem(values).mean()) if values.size else 0.0
        return cls(role=role, ds=ds, bands=(1,), resampling="bilinear", coverage=coverage, fill=fill)

    def read(self, win: Window, context: WindowContext | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(1, h, w) normalised elevation of one window, gaps filled; and where the DEM has data."""
        assert self.reader is not None
        unit = normalise_dem(self.reader.read(win))
        ok = np.isfinite(unit[0])
        unit[0][~ok] = self.fill
        return unit, ok


def open_dem(path: Path, grid: Grid, stack: ExitStack, progress: Progress, warnings: list[str]) -> DemInput:
    """The DEM at ``path`` opened and checked as the pipeline does for a model's ``dem`` role."""
    from engine.models.roles import ROLES

    return DemInput.open(ROLES["dem"], path, None, grid, None, stack, progress, warnings)
