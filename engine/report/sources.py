"""Opening the report's inputs and reading them window by window on the optical grid.

Optical, prediction and reference must share the optical grid (same size and transform): the prediction is the
engine's output on that grid and the reference is the user's cloud-free acquisition of the same scene; resampling
either would blur exactly the errors the metrics measure, so a mismatch is an :class:`~engine.errors.InputError`.
Land cover and cloud mask may come on any grid/CRS (WorldCover is 10 m, the M3R-CR land cover 90×90 px): they are
reprojected on the fly with a :class:`rasterio.vrt.WarpedVRT`, nearest neighbour (categorical data), which is what
the official M3R-CR loader's nearest upsampling does for the aligned case. Pixels outside their coverage read as 0
(WorldCover "no data" → unknown class; mask → clear).

Optical units are detected per file (:func:`engine.sources.normalise.detect_optical_scale`), because a prediction may be
written as float reflectance while the input is DN. The sample is a grid of :data:`SAMPLE_WINDOWS`² small windows
spread over the scene rather than a decimated read of the whole file: without overviews a decimated read
decompresses every block of the file, which on a 20k × 20k scene costs minutes; the windows touch a few blocks.
"""

from __future__ import annotations

from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import rasterio
from rasterio.enums import Resampling
from rasterio.vrt import WarpedVRT
from rasterio.windows import Window

from engine.config import as_source
from engine.errors import InputError
from engine.sources.normalise import detect_optical_scale, normalise_optical
from engine.sources.raster import has_any_valid, open_raster

SAMPLE_WINDOWS = 6  # per side
SAMPLE_WINDOW_PX = 64


def _open(stack: ExitStack, path: Path, role: str) -> rasterio.io.DatasetReader:
    """Open an input of the report, checked by :func:`engine.sources.raster.open_raster` (a truncated file fails
    here)."""
    return stack.enter_context(open_raster(as_source(path), role))


@dataclass
class OpticalSource:
    """An optical raster on the optical grid, with its band order and detected scale."""

    ds: rasterio.io.DatasetReader
    bands: tuple[int, int, int, int]
    scale: float
    role: str

    def read(self, window: Window) -> tuple[np.ndarray, np.ndarray]:
        """(4, h, w) float32 in [0, 1] and the (h, w) validity mask (all four bands valid)."""
        raw = self.ds.read(self.bands, window=window)
        valid = (self.ds.read_masks(self.bands, window=window) > 0).all(axis=0)
        return normalise_optical(raw, self.scale), valid



def _optical(stack: ExitStack, path: Path, role: str, bands: tuple[int, int, int, int], grid=None) -> OpticalSource:
    ds = _open(stack, path, role)
    for b in bands:
        if not 1 <= b <= ds.count:
            raise InputError(f"the {role} raster {Path(path).name} has {ds.count} band(s); band {b} does not exist")
    if grid is not None and (ds.width, ds.height) != (grid.width, grid.height):
        raise InputError(
            f"the {role} raster is {ds.width}×{ds.height} px but the optical input is {grid.width}×{grid.height}: "
            "they must share the optical grid"
        )
    if grid is not None and not ds.transform.almost_equals(grid.transform, precision=1e-6 * abs(grid.transform.a)):
        raise InputError(f"the {role} raster is not on the optical input's grid (different geotransform)")
    if not has_any_valid(ds, bands):  # issue 25: an all-NaN reference gave a report of "–" and exit 0
        raise InputError(f"the {role} raster has no valid pixel in bands {','.join(map(str, bands))} (all nodata or "
                         f"NaN): {path}")  # fmt: skip
    return OpticalSource(ds=ds, bands=bands, scale=detect_optical_scale(_sample(ds, bands)), role=role)


def _sample(ds: rasterio.io.DatasetReader, bands: tuple[int, ...]) -> np.ndarray:
    """Valid values from a grid of small windows spread over the raster (all values if none is valid)."""
    valid_parts, all_parts = [], []
    size = SAMPLE_WINDOW_PX
    ys = np.unique(np.linspace(0, max(0, ds.height - size), SAMPLE_WINDOWS).astype(int))
    xs = np.unique(np.linspace(0, max(0, ds.width - size), SAMPLE_WINDOWS).astype(int))
    for y in ys:
        for x in xs:
            win = Window(int(x), int(y), min(size, ds.width), min(size, ds.height))
            data = ds.read(bands, window=win)
            ok = (ds.read_masks(bands, window=win) > 0).all(axis=0)
            valid_parts.append(data[:, ok].ravel())
            all_parts.append(data.ravel())
    values = np.concatenate(valid_parts)
    return values if values.size else np.concatenate(all_parts)


def _on_grid(stack: ExitStack, path: Path, role: str, grid: rasterio.io.DatasetReader):
    """The raster at ``path`` as seen on ``grid`` (nearest), or the raster itself when already on it."""
    ds = _open(stack, path, role)
    same = (ds.width, ds.height) == (grid.width, grid.height) and ds.transform.almost_equals(
        grid.transform, precision=1e-6 * abs(grid.transform.a)
    )
    if same and (ds.crs == grid.crs or ds.crs is None or grid.crs is None):
        return ds
    if ds.crs is None or grid.crs is None:
        raise InputError(
            f"the {role} raster is on another grid than the optical input and one of them has no CRS, "
            "so it cannot be reprojected"
        )
    return stack.enter_context(
        WarpedVRT(
            ds,
            crs=grid.crs,
            transform=grid.transform,
            width=grid.width,
            height=grid.height,
            resampling=Resampling.nearest,
            nodata=0,
        )
    )


@dataclass
class Sources:
    """Every input of a report, opened; close with the ExitStack that created it."""

    optical: OpticalSource
    prediction: OpticalSource
    reference: OpticalSource | None
    landcover: rasterio.io.DatasetReader | WarpedVRT | None
    mask: rasterio.io.DatasetReader | WarpedVRT | None

    @property
    def grid(self) -> rasterio.io.DatasetReader:
        return self.optical.ds


def open_sources(
    stack: ExitStack,
    *,
    optical: Path,
    prediction: Path,
    reference: Path | None,
    landcover: Path | None,
    mask: Path | None,
    bands: tuple[int, int, int, int],
) -> Sources:
    opt = _optical(stack, optical, "optical", bands)
    pred = _optical(stack, prediction, "prediction", bands, grid=opt.ds)
    ref = _optical(stack, reference, "reference", bands, grid=opt.ds) if reference is not None else None
    lc = _on_grid(stack, landcover, "land cover", opt.ds) if landcover is not None else None
    mk = _on_grid(stack, mask, "cloud mask", opt.ds) if mask is not None else None
    if mk is not None and mk.count not in (1, 8):
        raise InputError(f"a cloud mask must have 1 band (1 = cloud) or 8 (Planet UDM2), this one has {mk.count}")
    return Sources(optical=opt, prediction=pred, reference=ref, landcover=lc, mask=mk)
