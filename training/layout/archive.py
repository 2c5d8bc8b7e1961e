"""Scene archive → per-patch statistics, the raw material of the acquisition-layout index (Cresson 2022, §4.2).

Archive layout (one folder; every raster in one CRS — or, for ``make_grid(..., reproject=True)``, any CRS)::

    ARCHIVE/
      optical/NAME.tif        optical scene, 4 bands B, G, R, NIR (any dtype; .tiff and GDAL .vrt too); nodata = the
                              file's nodata value. ``engine finetune`` also takes products as downloaded here and in
                              sar/ (Sentinel-2 / Sentinel-1 SAFE or zip, split VV/VH, PlanetScope with its UDM2):
                              :mod:`training.layout.products` resolves them through engine.sources.resolve into VRTs
      optical/NAME_mask.tif   optional cloud-mask sidecar on the same grid: 1 band, non-zero = cloud, or a Planet
                              UDM2 asset (8 bands; cloud ∪ shadow ∪ heavy haze, see engine.sources.masks). Without one,
                              the engine's documented cloud detector (engine.align.cloudmask) is run on the scene.
      optical/NAME_scl.tif    or a Sentinel-2 L2A scene classification (SCL) at any resolution: cloud shadow,
                              medium/high-probability cloud and thin cirrus are cloud (as for --mask auto); beside a
                              PlanetScope ``*_AnalyticMS*`` file, its ``*_udm2*.tif`` is the mask when there is no
                              ``_mask`` sidecar
      sar/NAME.tif            Sentinel-1 scene, 2 bands VV, VH (any resolution, e.g. 10 m next to 3 m optical)
      dates.csv               optional, columns ``file,datetime`` (file relative to ARCHIVE, ISO 8601 or
                              ``YYYY:MM:DD HH:MM:SS``); a scene not listed there is dated from its GeoTIFF tags
                              (ACQUISITIONDATETIME / TIFFTAG_DATETIME, engine.sources.dates.read_acquisition_date), or,
                              for ``engine finetune``, from a date in its file name (20200823[T054639])
      dem.tif                 optional digital elevation model, ONE for the whole archive (``dem.tiff`` or a GDAL
                              ``dem.vrt`` mosaic of tiles also work): 1 band, elevation in metres, georeferenced in
                              any CRS and resolution (e.g. the paper's SRTM at 20 m next to 10 m Sentinel-2); its
                              nodata value (and NaN) means "no elevation". Undated: every sample of a cell gets the
                              same DEM window. Only the models built with ``dem=True`` (Cresson's U-Nets) read it.

Patches are the cells of one grid over the archive: ``patch_size`` × ``patch_size`` optical pixels (square on the
ground in a projected CRS; in degrees, e.g. EPSG:4326, the pixels and so the cells may be taller than wide), anchored
on the first optical scene's pixel grid (sorted by name), so every optical and SAR scene is cut into the same ground
footprints whatever its resolution. A scene in another CRS than that first optical scene is refused by default
(``build_dataset``: reproject the archive first); ``engine finetune`` asks for ``reproject=True`` instead, and such a
scene is then read through a GDAL warped view onto the grid's CRS (:func:`open_scene`, nearest neighbour, no copy
on disk). A scene contributes a patch for each cell lying entirely inside it. For each
patch we keep the valid-pixel fraction (engine.sources.raster.valid_mask: finite, and not nodata in every band) and, for
optical patches, the cloud cover: the percentage of valid pixels that are cloudy — the paper's single value per
patch.

The DEM, when there is one, is the one raster not cut on the archive's own pixels: like ``engine run --dem`` it is
warped **bilinearly** onto each patch's optical pixel grid (:class:`engine.align.reader.AlignedReader`, any CRS), and a
patch's *DEM coverage* is the fraction of those pixels that get an elevation (:func:`dem_coverage`).
"""

from __future__ import annotations

import csv
import math
import re
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import rasterio
from rasterio.crs import CRS
from rasterio.enums import Resampling
from rasterio.vrt import WarpedVRT
from rasterio.windows import Window, from_bounds

from engine.align.cloudmask import detect_clouds
from engine.align.reader import AlignedReader
from engine.align.reader import Grid as PixelGrid
from engine.config import parse_datetime
from engine.errors import InputError
from engine.sources.dates import read_acquisition_date
from engine.sources.masks import cloud_mask_from_bands
from engine.sources.normalise import detect_optical_scale
from engine.sources.raster import valid_mask

MASK_SUFFIX = "_mask"
UDM2_MARK = "_udm2"  # a Planet usable-data mask (NAME_udm2.tif, NAME_udm2_clip.tif) beside its AnalyticMS scene
SCL_SUFFIX = "_scl"  # a Sentinel-2 L2A scene classification sidecar, any resolution (e.g. its native 20 m)
RASTER_EXT = (".tif", ".tiff", ".vrt")  # .vrt: any GDAL virtual raster (a mosaic, a band pick)
DEM_NAMES = ("dem.tif", "dem.tiff", "dem.vrt")  # the archive's optional elevation model (first one found)


@dataclass(frozen=True)
class Scene:
    """One acquisition: ``path`` is what the readers open — the archive's file itself, or (``engine finetune``,
    :mod:`training.layout.products`) a VRT engine.sources.resolve made of a product, then ``source`` names the archive
    file it came from; ``units`` are a SAR scene's units as engine.sources.resolve decided them (None: detected per
    patch)."""

    path: Path
    kind: str  # "optical" or "sar"
    when: datetime
    mask: Path | None = None
    source: Path | None = None
    units: str | None = None

    @property
    def name(self) -> str:
        return self.path.stem

    @property
    def label(self) -> str:
        """The scene's name in messages: the archive file (or product) the user put there."""
        return (self.source or self.path).name


@dataclass(frozen=True)
class Grid:
    """The patch grid: cell (col, row) covers x ∈ [x0 + col·size, x0 + (col+1)·size), y downward from y0 in steps
    of ``size_y`` (0 = ``size``: square cells; taller or shorter in a geographic CRS, whose pixels are not square)."""

    crs: str
    x0: float
    y0: float
    size: float  # ground width of one patch (CRS units)
    size_y: float = 0.0  # ground height of one patch (CRS units); 0 = same as size

    @property
    def height(self) -> float:
        return self.size_y or self.size

    def bounds(self, col: int, row: int) -> tuple[float, float, float, float]:
        left = self.x0 + col * self.size
        top = self.y0 - row * self.height
        return left, top - self.height, left + self.size, top

    def cells_inside(self, left: float, bottom: float, right: float, top: float) -> list[tuple[int, int]]:
        eps = 1e-6 * self.size
        c0 = math.ceil((left - self.x0) / self.size - eps)
        c1 = math.floor((right - self.x0) / self.size + eps)
        r0 = math.ceil((self.y0 - top) / self.height - eps)
        r1 = math.floor((self.y0 - bottom) / self.height + eps)
        return [(c, r) for r in range(r0, r1) for c in range(c0, c1)]


@dataclass(frozen=True)
class PatchStats:
    scene: Scene
    col: int
    row: int
    valid: float  # fraction of valid pixels in [0, 1]
    cloud: float  # cloud cover of the valid pixels in % (0 for SAR)


def is_mask_file(path: Path) -> bool:
    """A cloud-mask file of ``optical/`` (a ``_mask``/``_scl`` sidecar, a Planet UDM2), not a scene."""
    return path.stem.endswith((MASK_SUFFIX, SCL_SUFFIX)) or UDM2_MARK in path.name


def _rasters(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in RASTER_EXT) if folder.is_dir() else []


def read_dates_csv(archive: Path) -> dict[str, datetime]:
    path = archive / "dates.csv"
    if not path.is_file():
        return {}
    out = {}
    with path.open(newline="") as fh:
        reader = csv.DictReader(fh)
        if not reader.fieldnames or not {"file", "datetime"} <= set(reader.fieldnames):
            raise InputError(f"{path} must have the columns 'file,datetime'")
        for row in reader:
            out[Path(row["file"]).as_posix()] = parse_datetime(row["datetime"])
    return out


NAME_DATE = re.compile(r"(?<!\d)(\d{8})(?:T(\d{6}))?(?!\d)")  # 20200823 or 20200823T054639 inside a file name


def date_from_name(path: Path) -> datetime | None:
    """The acquisition date written in a file name the way Sentinel and Planet products are named
    (``…_20200823T054639_…``, ``20210601_101010_…``, ``S2_20210606.tif``): the first 8-digit date (with its
    ``THHMMSS`` time when there is one), read as UTC; None when the name has no valid date."""
    for m in NAME_DATE.finditer(path.stem):
        try:
            return datetime.strptime(m.group(1) + (m.group(2) or "000000"), "%Y%m%d%H%M%S").replace(tzinfo=UTC)
        except ValueError:
            continue
    return None


def _scene_date(path: Path, names_as_dates: bool) -> datetime:
    try:
        return read_acquisition_date(path)
    except InputError:
        when = date_from_name(path) if names_as_dates else None
        if when is None:
            raise
        return when


def scan_archive(archive: str | Path, names_as_dates: bool = False) -> list[Scene]:
    """Every optical and SAR scene of the archive with its acquisition date and optional mask sidecar.

    Dates come from ``dates.csv``, else the GeoTIFF tags, else — with ``names_as_dates`` (``engine finetune``) —
    the file name (:func:`date_from_name`)."""
    root = Path(archive)
    if not root.is_dir():
        raise InputError(f"archive folder {root} does not exist")
    dates = read_dates_csv(root)
    scenes = []
    for kind in ("optical", "sar"):
        for path in _rasters(root / kind):
            if kind == "optical" and is_mask_file(path):
                continue
            rel = path.relative_to(root).as_posix()
            when = dates[rel] if rel in dates else _scene_date(path, names_as_dates)
            mask = sidecar(path) if kind == "optical" else None
            scenes.append(Scene(path=path, kind=kind, when=when, mask=mask))
    if not any(s.kind == "optical" for s in scenes):
        raise InputError(f"no optical scenes in {root / 'optical'} (expected optical/*.tif)")
    return scenes


def make_grid(scenes: list[Scene], patch_size: int, reproject: bool = False) -> Grid:
    """The patch grid of ``patch_size`` pixels of the first optical scene; all scenes must share its CRS unless
    ``reproject`` (then the others are read through :func:`open_scene`; :func:`foreign_scenes` names them)."""
    ref = next(s for s in scenes if s.kind == "optical")
    with rasterio.open(ref.path) as ds:
        if ds.crs is None:
            raise InputError(f"{ref.label} has no CRS; the archive must be georeferenced")
        crs, t = ds.crs, ds.transform
    square = abs(abs(t.a) - abs(t.e)) <= 1e-9 * abs(t.a)
    if t.b or t.d or not (square or crs.is_geographic):
        raise InputError(f"{ref.label} must have square, north-up pixels to anchor the patch grid")
    for s in scenes:
        with rasterio.open(s.path) as ds:
            if ds.crs is None:
                raise InputError(f"{s.label} has no CRS; the archive must be georeferenced")
            if ds.crs != crs and not reproject:
                raise InputError(f"{s.label} is in {ds.crs}, not {crs}: reproject the archive to one CRS first")
    size_y = 0.0 if square else patch_size * abs(t.e)
    return Grid(crs=crs.to_string(), x0=t.c, y0=t.f, size=patch_size * abs(t.a), size_y=size_y)


def foreign_scenes(scenes: list[Scene], grid: Grid) -> list[Scene]:
    """The scenes not in the grid's CRS (read reprojected by :func:`open_scene`)."""
    crs = CRS.from_user_input(grid.crs)
    out = []
    for s in scenes:
        with rasterio.open(s.path) as ds:
            if ds.crs != crs:
                out.append(s)
    return out


@contextmanager
def open_scene(path: Path, crs: str | None = None) -> Iterator[rasterio.io.DatasetReader | WarpedVRT]:
    """``path`` opened for windowed reads in ``crs``: the file itself when it is in that CRS (or none is given),
    else a nearest-neighbour GDAL warped view (lazy: only the windows read are warped). Outside the scene's own
    footprint the view is nodata (NaN for float rasters), so those pixels never count as valid."""
    with rasterio.open(path) as ds:
        if crs is None or ds.crs == CRS.from_user_input(crs):
            yield ds
            return
        float_data = np.dtype(ds.dtypes[0]).kind == "f"
        nodata = ds.nodata if ds.nodata is not None else (np.nan if float_data else 0)
        with WarpedVRT(ds, crs=crs, resampling=Resampling.nearest, nodata=nodata) as vrt:
            yield vrt


def sidecar(scene: Path) -> Path | None:
    """The cloud-mask sidecar of an optical scene: ``NAME_mask.tif`` (same grid), else ``NAME_scl.tif``, else the
    Planet UDM2 beside a PlanetScope ``*_AnalyticMS*`` file (:func:`engine.sources.resolve.planet_udm2`, same grid)."""
    from engine.sources.resolve import planet_udm2

    cand = [scene.with_name(scene.stem + suffix + ext) for suffix in (MASK_SUFFIX, SCL_SUFFIX) for ext in RASTER_EXT]
    found = next((c for c in cand if c.is_file()), None)
    if found is None and scene.suffix.lower() != ".vrt":
        udm2 = planet_udm2(str(scene))
        found = Path(udm2) if udm2 is not None else None
    return found


def is_scl(mask: Path) -> bool:
    return mask.stem.endswith(SCL_SUFFIX)


def scl_cloud(classes: np.ndarray) -> np.ndarray:
    """Cloud of a Sentinel-2 SCL patch: cloud shadow, medium/high-probability cloud, thin cirrus (the classes
    ``--mask auto`` uses for an L2A product, :data:`engine.sources.s2.SCL_CLOUD`)."""
    from engine.sources.s2 import SCL_CLOUD

    return np.isin(np.asarray(classes)[0] if np.ndim(classes) == 3 else classes, SCL_CLOUD)


def _window(ds: rasterio.io.DatasetReader, bounds: tuple[float, float, float, float]) -> Window:
    w = from_bounds(*bounds, transform=ds.transform)
    return w.round_offsets().round_lengths()


def _cloudy(mask_ds: rasterio.io.DatasetReader | None, data: np.ndarray, window: Window,
            bounds: tuple[float, float, float, float]) -> np.ndarray:
    """Cloud pixels of one patch: from the sidecar mask when there is one (an SCL one read at its own resolution,
    nearest onto the patch), else the engine's detector."""
    if mask_ds is not None and is_scl(Path(mask_ds.name)):
        shape = (1, *data.shape[-2:])
        return scl_cloud(mask_ds.read([1], window=_window(mask_ds, bounds), out_shape=shape,
                                      resampling=Resampling.nearest))
    if mask_ds is not None:
        return cloud_mask_from_bands(mask_ds.read(window=window), mask_ds.nodata)
    scale = detect_optical_scale(data)
    return detect_clouds(np.clip(data[:4].astype(np.float32) / scale, 0.0, None))


def patch_stats(scenes: list[Scene], grid: Grid) -> list[PatchStats]:
    """Valid fraction and cloud cover of every (scene, cell) patch lying fully inside its scene."""
    out = []
    for scene in scenes:
        with ExitStack() as stack:
            ds = stack.enter_context(open_scene(scene.path, grid.crs))
            if scene.kind == "optical" and ds.count < 4:
                raise InputError(f"{scene.label}: optical scenes need 4 bands (B, G, R, NIR), it has {ds.count}")
            if scene.kind == "sar" and ds.count != 2:
                raise InputError(f"{scene.label}: SAR scenes need 2 bands (VV, VH), it has {ds.count}")
            mask_ds = stack.enter_context(open_scene(scene.mask, grid.crs)) if scene.mask is not None else None
            if mask_ds is not None and not is_scl(scene.mask) and (mask_ds.width, mask_ds.height) != (
                    ds.width, ds.height):
                raise InputError(
                    f"{mask_ds.name} is {mask_ds.width}×{mask_ds.height}, its scene {ds.width}×{ds.height}"
                )
            for col, row in grid.cells_inside(*ds.bounds):
                window = _window(ds, grid.bounds(col, row))
                if isinstance(ds, WarpedVRT):  # no boundless reads there; the cell lies inside its bounds anyway
                    data = ds.read(window=window)
                else:
                    data = ds.read(window=window, boundless=True,
                                   fill_value=ds.nodata if ds.nodata is not None else 0)
                valid = valid_mask(data, ds.nodata)
                n_valid = int(valid.sum())
                cloud = 0.0
                if scene.kind == "optical" and n_valid:
                    cloudy = _cloudy(mask_ds, data, window, grid.bounds(col, row))
                    cloud = 100.0 * float((cloudy & valid).sum()) / n_valid
                out.append(PatchStats(scene, col, row, n_valid / valid.size, cloud))
    return out


# --------------------------------------------------------------------------------------------- the DEM
def find_dem(archive: str | Path) -> Path | None:
    """The archive's DEM (``dem.tif``, ``dem.tiff`` or ``dem.vrt`` at its root), or ``None``."""
    root = Path(archive)
    found = [root / n for n in DEM_NAMES if (root / n).is_file()]
    if len(found) > 1:
        raise InputError(f"{root} has several DEMs ({', '.join(p.name for p in found)}): keep one")
    return found[0] if found else None


def check_dem(ds: rasterio.io.DatasetReader, name: str) -> None:
    """One band, georeferenced: what the DEM input needs (engine.align.dem checks the same for ``--dem``)."""
    if ds.count != 1:
        raise InputError(f"{name} must have 1 band (elevation in metres), this one has {ds.count}")
    if ds.crs is None:
        raise InputError(f"{name} has no CRS: the DEM must be georeferenced")


def read_dem_patch(
    ds: rasterio.io.DatasetReader, crs: object, transform: rasterio.Affine, shape: tuple[int, int]
) -> np.ndarray:
    """(H, W) float32 elevation in metres of ``ds`` warped bilinearly onto the pixel grid (crs, transform, shape),
    NaN where there is none — the alignment ``engine run --dem`` uses (:class:`engine.align.reader.AlignedReader`)."""
    grid = PixelGrid(crs=crs, transform=transform, width=int(shape[1]), height=int(shape[0]))
    with AlignedReader(ds, grid, (1,), "bilinear") as reader:
        return reader.read_all()[0]


def dem_coverage(
    dem: Path, grid: Grid, cells: list[tuple[int, int]], patch_size: int
) -> dict[tuple[int, int], float]:
    """Fraction of each cell's ``patch_size``² optical pixels that get an elevation from ``dem`` (bilinear warp)."""
    from rasterio.crs import CRS
    from rasterio.transform import from_origin

    crs = CRS.from_user_input(grid.crs)
    px, py = grid.size / patch_size, grid.height / patch_size
    out = {}
    with rasterio.open(dem) as ds:
        check_dem(ds, dem.name)
        for col, row in cells:
            left, _, _, top = grid.bounds(col, row)
            data = read_dem_patch(ds, crs, from_origin(left, top, px, py), (patch_size, patch_size))
            out[(col, row)] = float(np.isfinite(data).mean())
    if cells and not any(out.values()):
        raise InputError(f"{dem} gives no elevation on any patch of the archive (wrong extent or CRS?)")
    return out
