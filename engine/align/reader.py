"""Reprojection of SAR, land cover and cloud masks onto the optical raster's grid.

The optical grid is the output grid (the product is a declouded version of *that* image), so every other input
is warped onto it through a GDAL :class:`~rasterio.vrt.WarpedVRT` and read one window at a time: nothing is
materialised at full scene size, and any pair of CRSs / resolutions works (UTM optical + EPSG:4326 SAR, 3 m + 10
m). SAR uses nearest resampling by default, which is the paper's nearest upsampling of the 10 m SAR to the 3 m
grid (the official loader reads S1 with ``out_shape`` and nearest); bilinear is offered because it removes the
10/3-pixel blockiness when the SAR is much coarser. Land cover and masks are categorical and always nearest.

Pixels the SAR does not cover come back as NaN (the VRT's nodata); NaN/±inf already in the SAR file and its own
nodata value are treated the same way, so "no SAR here" is one condition downstream.

:class:`AlignedInput` is what every input a model declares becomes (SAR, other dates, DEM; :mod:`engine.align.inputs`):
an opened, checked file with its reader onto the optical grid and a ``read`` that gives one window in the network's
units.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from contextlib import ExitStack
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import rasterio
from rasterio.crs import CRS
from rasterio.transform import Affine
from rasterio.vrt import WarpedVRT
from rasterio.warp import transform_bounds
from rasterio.windows import Window

from engine.config import COVERAGE_WARNING, EDGES
from engine.errors import InputError
from engine.progress import Progress, record_warning
from engine.sources.normalise import NormalisationConfig
from engine.sources.raster import RESAMPLING, sample_shape

if TYPE_CHECKING:
    from engine.models.roles import Role

EDGE_BAND = 8  # the outer 1/8 of the image on each side is where an edge's gap is looked for



@dataclass(frozen=True)
class Grid:
    """A raster grid: the target every input is aligned to."""

    crs: CRS
    transform: Affine
    width: int
    height: int

    @classmethod
    def of(cls, ds: rasterio.io.DatasetReader) -> Grid:
        return cls(crs=ds.crs, transform=ds.transform, width=ds.width, height=ds.height)

    @property
    def bounds(self) -> tuple[float, float, float, float]:
        left, top = self.transform * (0, 0)
        right, bottom = self.transform * (self.width, self.height)
        return (min(left, right), min(bottom, top), max(left, right), max(bottom, top))

    def decimated(self, size: int) -> Grid:
        """The same extent with at most ``size`` pixels a side (for cheap coverage estimates)."""
        h, w = sample_shape(self.height, self.width, size)
        scale = Affine.scale(self.width / w, self.height / h)
        return Grid(crs=self.crs, transform=self.transform * scale, width=w, height=h)


class AlignedReader:
    """Windowed reads of some bands of ``ds`` warped onto ``grid``, as float32 with NaN where there is no data."""

    def __init__(
        self,
        ds: rasterio.io.DatasetReader,
        grid: Grid,
        bands: tuple[int, ...],
        resampling: str = "nearest",
    ) -> None:
        self.ds = ds
        self.grid = grid
        self.bands = tuple(bands)
        src_nodata = ds.nodata
        self.vrt = WarpedVRT(
            ds,
            crs=grid.crs,
            transform=grid.transform,
            width=grid.width,
            height=grid.height,
            resampling=RESAMPLING[resampling],
            src_nodata=src_nodata,
            nodata=np.nan,
            dtype="float32",
        )

    def read(self, window: Window) -> np.ndarray:
        """(len(bands), h, w) float32 on the target grid; non-finite values and the source nodata become NaN."""
        data = self.vrt.read(list(self.bands), window=window, out_dtype="float32")
        data[~np.isfinite(data)] = np.nan
        return data

    def read_all(self) -> np.ndarray:
        """The whole target grid; only for small (decimated) grids."""
        return self.read(Window(0, 0, self.grid.width, self.grid.height))

    def close(self) -> None:
        self.vrt.close()

    def __enter__(self) -> AlignedReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


@dataclass(frozen=True)
class WindowContext:
    """What reading one window of a model input may need besides its own file: the cloudy optical image's window
    (normalised; an extra optical image takes it where it has no data), its scale and the model's normalisation."""

    optical: np.ndarray
    optical_scale: float
    norm: NormalisationConfig


@dataclass
class AlignedInput(ABC):
    """One declared input of a model (a :class:`~engine.models.roles.Role`), opened and checked, read onto the
    optical grid one window at a time.

    The one path every model input takes: a kind's subclass (:data:`engine.align.inputs.KINDS`) opens and checks the
    file (``open``), fixes what depends on the model's normalisation (:meth:`prepare`), and turns a window of the
    aligned file into the network's units with gaps filled (:meth:`read`); this base aligns it (:meth:`open_reader`).
    """

    role: Role
    ds: rasterio.io.DatasetReader
    bands: tuple[int, ...]
    resampling: str
    coverage: float
    reader: AlignedReader | None = None

    @property
    def name(self) -> str:
        return self.role.name

    @property
    def channels(self) -> int:
        return len(self.bands)

    def open_reader(self, stack: ExitStack, grid: Grid) -> None:
        """The window reader onto ``grid``, closed with ``stack``."""
        self.reader = stack.enter_context(AlignedReader(self.ds, grid, self.bands, self.resampling))

    def prepare(self, norm: NormalisationConfig) -> None:
        """Decide what depends on the model's normalisation (a fill value); nothing by default."""
        return None

    @abstractmethod
    def read(self, win: Window, context: WindowContext | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(channels, h, w) float32 in the network's units with gaps filled, and where the file has data."""


def bounds_overlap(src: rasterio.io.DatasetReader, grid: Grid) -> bool:
    """True if the footprint of ``src`` (reprojected to the grid's CRS) intersects the grid's extent."""
    try:
        left, bottom, right, top = transform_bounds(src.crs, grid.crs, *src.bounds, densify_pts=21)
    except Exception as exc:  # PROJ raises when the source extent is outside the target projection's domain
        raise InputError(f"cannot transform the extent of {src.name} into the optical CRS: {exc}") from None
    g_left, g_bottom, g_right, g_top = grid.bounds
    return left < g_right and right > g_left and bottom < g_top and top > g_bottom


def coverage_fraction(src: rasterio.io.DatasetReader, grid: Grid, bands: tuple[int, ...], size: int = 512) -> float:
    """Fraction of the grid where ``src`` has valid data in every band, estimated on a ≤ size² decimated grid.

    Warping straight onto the coarse grid makes GDAL sample only the source pixels it needs, so this costs the
    same for any scene size.
    """
    return float(coverage_grid(src, grid, bands, size).mean())


def coverage_grid(src: rasterio.io.DatasetReader, grid: Grid, bands: tuple[int, ...], size: int = 512) -> np.ndarray:
    """Where ``src`` has valid data in every band, on a ≤ size² decimated copy of the grid (True = covered)."""
    coarse = grid.decimated(size)
    with AlignedReader(src, coarse, bands, "nearest") as reader:
        data = reader.read_all()
    return np.isfinite(data).all(axis=0)


def missing_where(covered: np.ndarray) -> str:
    """Where the uncovered part of a coverage grid lies, for the warning: the edges whose outer band is mostly
    uncovered (``along the east edge``), else ``in gaps inside the image``."""
    h, w = covered.shape
    bh, bw = max(1, h // EDGE_BAND), max(1, w // EDGE_BAND)
    bands = dict(zip(EDGES, (covered[:bh], covered[-bh:], covered[:, :bw], covered[:, -bw:])))
    sides = [edge for edge, band in bands.items() if band.mean() < 0.5]
    if not sides:
        return "in gaps inside the image"
    return f"along the {' and '.join(sides)} edge{'s' if len(sides) > 1 else ''}"


def checked_coverage(
    src: rasterio.io.DatasetReader,
    grid: Grid,
    bands: tuple[int, ...],
    role: str,
    progress: Progress,
    warnings: list[str],
    *,
    label: str | None = None,
    without: str = "it",
) -> float:
    """:func:`_covered_or_raise`'s fraction, plus one warning, saying where the gap is, when ``src`` covers less than
    :data:`engine.config.COVERAGE_WARNING` of the grid (``label`` names it there, default ``role``; pixels
    ``without`` it keep the input). A sliver of a percent at an edge is no news on every run (issue 28)."""
    covered = _covered_or_raise(src, grid, bands, role)
    fraction = float(covered.mean())
    if fraction < COVERAGE_WARNING:
        record_warning(progress, warnings, f"{label or role} covers only {fraction * 100:.1f}% of the optical image, "
                       f"missing {missing_where(covered)}; pixels without {without} are left as the input")  # fmt: skip
    return fraction


def _covered_or_raise(src: rasterio.io.DatasetReader, grid: Grid, bands: tuple[int, ...], role: str) -> np.ndarray:
    """:func:`coverage_grid`, raising :class:`InputError` when ``src`` misses the grid or has no valid pixel on it."""
    if not bounds_overlap(src, grid):
        raise InputError(f"{role} does not overlap the optical image geographically: {src.name}")
    covered = coverage_grid(src, grid, bands)
    if not covered.any():
        raise InputError(f"{role} has no valid pixel over the optical image (outside it, or all nodata): {src.name}")
    return covered
