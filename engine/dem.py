"""The optional digital elevation model (DEM) input of the Cresson 2022 U-Nets in the streaming pipeline.

``ssop-unet`` and ``msop-unet`` built with ``dem=True`` (their config; see :mod:`engine.models.unet_arch`) take a
one-band elevation raster as the keyword ``dem``. Cresson et al. (2022, §3.1.2, Fig. 4) feed an SRTM DEM at 20 m
next to the 10 m images and inject it after the first stride-2 convolution, i.e. at half the optical resolution,
"without prior spatial re-sampling"; our network does that resampling itself (bilinear, to half the padded tile
size), so the pipeline hands it the DEM on the optical grid.

How the DEM reaches the network (``engine run --dem FILE``):

* warped onto the optical grid through an :class:`~engine.align.AlignedReader` with **bilinear** resampling
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

import numpy as np
import rasterio
from rasterio.windows import Window

from engine.align import AlignedReader, Grid, checked_coverage
from engine.errors import InputError
from engine.progress import Progress
from engine.raster import open_raster, read_sample, require_georeferenced, valid_mask

DEM_SCALE = 1e-4  # elevation in metres → network input (CNES/decloud's DEM_SCALE_COEF)
ROLE = "DEM (--dem)"


def normalise_dem(metres: np.ndarray) -> np.ndarray:
    """Elevation in metres → the network's input scale (NaN preserved)."""
    return (np.asarray(metres, dtype=np.float32) * np.float32(DEM_SCALE)).astype(np.float32)


@dataclass
class DemInput:
    """The opened DEM, its fill value for missing pixels (normalised) and, once the run starts, its reader."""

    ds: rasterio.io.DatasetReader
    fill: float
    coverage: float
    reader: AlignedReader | None = None

    def open_reader(self, stack: ExitStack, grid: Grid) -> None:
        self.reader = stack.enter_context(AlignedReader(self.ds, grid, (1,), "bilinear"))

    def read(self, win: Window) -> tuple[np.ndarray, np.ndarray]:
        """(1, h, w) normalised elevation of one window, gaps filled; and where the DEM has data."""
        assert self.reader is not None
        unit = normalise_dem(self.reader.read(win))
        ok = np.isfinite(unit[0])
        unit[0][~ok] = self.fill
        return unit, ok


def open_dem(path: Path, grid: Grid, stack: ExitStack, progress: Progress, warnings: list[str]) -> DemInput:
    """Open and check the DEM raster (one band, georeferenced, overlapping the optical image)."""
    ds = stack.enter_context(open_raster(path, ROLE))
    require_georeferenced(ds, ROLE)
    if ds.count != 1:
        raise InputError(f"{ROLE} must have 1 band (elevation in metres), this one has {ds.count}: {path}")
    coverage = checked_coverage(ds, grid, (1,), ROLE, progress, warnings, without="elevation")
    sample = read_sample(ds, (1,)).astype(np.float32)
    values = sample[:, valid_mask(sample, ds.nodata)]
    fill = float(normalise_dem(values).mean()) if values.size else 0.0
    return DemInput(ds=ds, fill=fill, coverage=coverage)
