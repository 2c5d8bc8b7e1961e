"""Archive files in every form ``engine run`` reads → the scenes :mod:`training.layout.archive` indexes.

``engine finetune --archive DIR`` takes what analysts download, as ``engine run`` does: each entry of ``optical/``
and ``sar/`` goes through :mod:`engine.sources.resolve` (one place that says what a product is; no second parser here):

=================================================  =========================================================
``optical/``                                       read as
=================================================  =========================================================
``NAME.tif`` / ``.tiff`` / ``.vrt``, 4+ bands      the file itself (B, G, R, NIR = bands 1-4, or the bands
                                                   its descriptions name: PlanetScope SuperDove 8-band)
``*_AnalyticMS*.tif`` + ``*_udm2*.tif`` beside it  the UDM2 is the scene's cloud mask
``S2?_MSIL2A_….SAFE`` / ``.zip``, ``…MSIL1C…``     B2, B3, B4, B8 at 10 m with the product's DN offset; an
                                                   L2A's SCL is the scene's cloud mask
``sar/``
``NAME.tif`` (2 bands VV, VH; dB, power or amp.)   the file itself, units decided once per scene
``NAME_VV.tif`` + ``NAME_VH.tif`` (HyP3 RTC …)     the pair, warped onto the archive grid and stacked
``S1?_IW_GRDH_….SAFE`` / ``.zip``                  σ⁰ (thermal noise removed), geocoded from its GCPs onto
                                                   the archive grid; linear power
=================================================  =========================================================

A ``NAME_mask.tif`` / ``NAME_scl.tif`` sidecar beside any optical entry (``S2…_MSIL2A_….zip`` →
``S2…_MSIL2A_…_mask.tif``) still wins over the mask a product brings. Dates: ``dates.csv`` (by the entry's path,
either file of a split pair), else the acquisition date engine.sources.resolve read from the product's metadata (written
as a tag on its VRT) or the file's tags, else the date in the entry's name.

Radar-geometry (GRD) and split SAR are warped (``engine run``'s default ``--sar-resampling``, nearest) onto the
*archive grid*: the first optical scene's pixel lattice (sorted by name, the patch grid's anchor) stretched over
every optical scene. A SAR scene's units (``linear`` for a GRD, from a HyP3 name, a unit tag or the value range)
are recorded with the scene and the split files, so a patch is converted to dB exactly as ``engine run`` converts
that file (:func:`engine.align.sar.sar_to_unit`), never re-guessed per patch.

Where the VRTs live: on disk, in a temporary folder owned by the run (:class:`FolderStore`, deleted when the run
ends), not in GDAL's ``/vsimem``: the layout reader finds mask sidecars and checks scenes by file name, and the
split CSVs name each scene by path. (A GRD's coarse calibration grids stay in ``/vsimem`` as engine.sources.resolve
writes them, so the VRTs are for this process: the fine-tune reads its samples in-process.) Not the run's work folder
``OUT.finetune/``: the archive is indexed, and refused, before that folder is cleared or written.
"""

from __future__ import annotations

import math
import os
import re
import shutil
import tempfile
import uuid
from dataclasses import dataclass, fields, replace
from datetime import datetime
from pathlib import Path

import rasterio
import rasterio.shutil
from rasterio._err import CPLE_BaseError
from rasterio.enums import Resampling
from rasterio.errors import RasterioError
from rasterio.transform import Affine
from rasterio.vrt import WarpedVRT
from rasterio.warp import transform_bounds

from engine.config import DEFAULT_BANDS, RunConfig
from engine.errors import EngineError, InputError, one_line
from engine.sources.dates import read_acquisition_date
from engine.sources.product import Materialised, ResolvedSource
from engine.sources.resolve import TargetGrid, materialise, resolve_optical, resolve_sar
from training.layout.archive import (
    MASK_SUFFIX,
    RASTER_EXT,
    SCL_SUFFIX,
    Scene,
    date_from_name,
    is_mask_file,
    is_scl,
    read_dates_csv,
    sidecar,
)

PRODUCT_EXT = (".zip",)  # a zipped SAFE product (folders: NAME.SAFE)
SPLIT_POL = re.compile(r"^(?P<prefix>.+?)[_-](?P<pol>VV|VH)$", re.IGNORECASE)  # NAME_VV.tif, HyP3 …_VH.tif
SAR_RESAMPLING = next(f.default for f in fields(RunConfig) if f.name == "sar_resampling")  # engine run's default


class FolderStore(Materialised):
    """engine.sources.resolve's VRT store on disk, in a temporary folder made on the first write; :meth:`close` deletes
    it. ``scene_path`` gives a scene's own VRT a stable name (``optical/NAME.vrt``, its mask ``NAME_mask.vrt``)."""

    def __init__(self) -> None:
        super().__init__()
        self._folder: Path | None = None

    @property
    def folder(self) -> Path:
        if self._folder is None:
            self._folder = Path(tempfile.mkdtemp(prefix="aligncr-archive-"))
        return self._folder

    def new_name(self, stem: str) -> str:
        part = self.folder / "parts" / f"{stem}-{uuid.uuid4().hex[:12]}.vrt"
        part.parent.mkdir(exist_ok=True)
        return str(part)

    def write(self, stem: str, xml: str) -> str:
        name = self.new_name(stem)
        Path(name).write_text(xml, encoding="utf-8")
        return name

    def scene_path(self, kind: str, stem: str) -> Path:
        path = self.folder / kind / f"{stem}.vrt"
        if path.exists():
            raise InputError(f"two {kind} scenes of the archive are named {stem}: rename one")
        path.parent.mkdir(exist_ok=True)
        return path

    def close(self) -> None:
        self.names.clear()  # files of our folder, removed with it
        super().close()
        if self._folder is not None:
            shutil.rmtree(self._folder, ignore_errors=True)
            self._folder = None


@dataclass(frozen=True)
class ArchiveEntry:
    """One scene as the archive holds it: a file or product folder, or the VV and VH files of a split pair."""

    kind: str  # "optical" or "sar"
    files: tuple[Path, ...]

    @property
    def stem(self) -> str:
        if len(self.files) == 2:
            return SPLIT_POL.match(self.files[0].stem).group("prefix")  # type: ignore[union-attr]
        return self.files[0].stem  # NAME of NAME.tif, NAME.zip, NAME.SAFE

    @property
    def label(self) -> str:
        return " + ".join(f.name for f in self.files)


# --------------------------------------------------------------------------------------------- listing
def _is_input(path: Path) -> bool:
    if path.is_dir():
        return path.suffix.upper() == ".SAFE"
    return path.suffix.lower() in RASTER_EXT + PRODUCT_EXT


def list_entries(folder: Path, kind: str) -> list[ArchiveEntry]:
    """The scenes of ``optical/`` or ``sar/`` in name order: mask files left out (they go with their scene),
    split ``_VV``/``_VH`` rasters of ``sar/`` paired by their common prefix (a lone one is refused)."""
    if not folder.is_dir():
        return []
    found = sorted(p for p in folder.iterdir() if _is_input(p) and not (kind == "optical" and is_mask_file(p)))
    if kind == "optical":
        return [ArchiveEntry(kind, (p,)) for p in found]
    pairs: dict[str, dict[str, Path]] = {}
    entries = []
    for p in found:
        m = SPLIT_POL.match(p.stem) if p.is_file() and p.suffix.lower() in RASTER_EXT else None
        if m is None:
            entries.append(ArchiveEntry(kind, (p,)))
        else:
            pairs.setdefault(m.group("prefix"), {})[m.group("pol").upper()] = p
    for prefix, pols in pairs.items():
        if set(pols) != {"VV", "VH"}:
            have, want = next(iter(pols.items())), "VH" if "VV" in pols else "VV"
            raise InputError(f"{have[1].name}: a split {have[0]} file without its {want} partner in {folder} "
                             f"(expected {prefix}_{want}{have[1].suffix})")
        entries.append(ArchiveEntry(kind, (pols["VV"], pols["VH"])))
    return sorted(entries, key=lambda e: e.files[0].name)


# --------------------------------------------------------------------------------------------- resolving
def resolve_entry(entry: ArchiveEntry) -> ResolvedSource:
    """What engine.sources.resolve says the entry is; an unreadable file is one line naming it."""
    try:
        if entry.kind == "optical":
            return resolve_optical(str(entry.files[0]))
        if len(entry.files) == 2:
            return resolve_sar(vv=str(entry.files[0]), vh=str(entry.files[1]))
        return resolve_sar(str(entry.files[0]))
    except EngineError:
        raise
    except (RasterioError, CPLE_BaseError, OSError, ValueError) as exc:
        raise InputError(f"{entry.label}: not readable as {entry.kind} ({one_line(exc)})") from None


def _warp_onto(name: str, grid: TargetGrid, out: Path) -> Path:
    """``name`` warped nearest onto ``grid`` (a mask onto its scene's pixels), as a VRT file."""
    with rasterio.open(name) as src, WarpedVRT(src, crs=grid.crs, transform=grid.transform, width=grid.width,
                                               height=grid.height, resampling=Resampling.nearest) as vrt:
        rasterio.shutil.copy(vrt, str(out), driver="VRT")
    return out


def _grid_of(path: Path) -> TargetGrid:
    with rasterio.open(path) as ds:
        return TargetGrid(ds.crs, ds.transform, ds.width, ds.height)


def _product_mask(entry: ArchiveEntry, source: ResolvedSource, store: FolderStore, scene: Path) -> Path | None:
    """The mask of a scene read through a VRT, on its pixels beside it (``NAME_mask.vrt``, ``NAME_scl.vrt``): a
    sidecar beside the archive entry, else the product's own (SCL through engine.sources.resolve's lookup, UDM2)."""
    given = sidecar(entry.files[0])
    if given is not None:
        suffix = SCL_SUFFIX if is_scl(given) else MASK_SUFFIX
        return _warp_onto(str(given), _grid_of(scene), scene.with_name(scene.stem + suffix + ".vrt"))
    if source.mask is None:
        return None
    name = materialise(source.mask, store)
    return _warp_onto(name, _grid_of(scene), scene.with_name(scene.stem + MASK_SUFFIX + ".vrt"))


def optical_scene(entry: ArchiveEntry, source: ResolvedSource, store: FolderStore) -> tuple[Path, Path | None]:
    """(what the readers open, its mask): a plain B, G, R, NIR raster as it is (its sidecar, or a PlanetScope
    UDM2, found beside it), anything else as engine.sources.resolve's VRT (bands picked, offset added) in ``store``."""
    if source.passthrough and tuple(source.bands) == DEFAULT_BANDS:
        return entry.files[0], sidecar(entry.files[0])
    # a raster whose band descriptions pick other bands (SuperDove): a zero offset makes materialise write the
    # band-selection VRT it writes for a Sentinel-2 product
    wanted = replace(source, offsets=(0.0,) * len(source.bands)) if source.passthrough else source
    path = store.scene_path("optical", entry.stem)
    os.replace(materialise(wanted, store), path)
    return path, _product_mask(entry, source, store, path)


def sar_scene(entry: ArchiveEntry, source: ResolvedSource, store: FolderStore, grid: TargetGrid | None) -> Path:
    """What the readers open: a stacked VV, VH raster as it is, else resolve's VRT on the archive grid."""
    if source.passthrough:
        return entry.files[0]
    if grid is None:
        raise InputError(f"{entry.label}: no optical scene to warp it onto")
    path = store.scene_path("sar", entry.stem)
    os.replace(materialise(source, store, grid, SAR_RESAMPLING), path)
    return path


def archive_grid(optical: list[Path]) -> TargetGrid:
    """The first optical scene's pixel lattice over the union of every optical scene (in its CRS)."""
    with rasterio.open(optical[0]) as ds:
        if ds.crs is None:
            raise InputError(f"{optical[0].name} has no CRS; the archive must be georeferenced")
        crs, t = ds.crs, ds.transform
    if t.b or t.d:
        raise InputError(f"{optical[0].name} must have north-up pixels to anchor the patch grid")
    boxes = []
    for path in optical:
        with rasterio.open(path) as ds:
            boxes.append(transform_bounds(ds.crs, crs, *ds.bounds) if ds.crs is not None else ds.bounds)
    left, right = min(b[0] for b in boxes), max(b[2] for b in boxes)
    bottom, top = min(b[1] for b in boxes), max(b[3] for b in boxes)
    eps = 1e-6
    c0, c1 = math.floor((left - t.c) / t.a + eps), math.ceil((right - t.c) / t.a - eps)
    r0, r1 = math.floor((top - t.f) / t.e + eps), math.ceil((bottom - t.f) / t.e - eps)
    return TargetGrid(crs, t * Affine.translation(c0, r0), c1 - c0, r1 - r0)


def _notice(notices: list[str] | None, source: ResolvedSource) -> None:
    if notices is not None:
        notices += [w for w in source.warnings if w not in notices]


# --------------------------------------------------------------------------------------------- dates and scan
def entry_date(entry: ArchiveEntry, reader: Path, source: ResolvedSource, dates: dict[str, datetime],
               root: Path, names_as_dates: bool) -> datetime:
    """dates.csv, else the metadata (the VRT's tag, the files' tags), else the entry's name (``names_as_dates``)."""
    for f in entry.files:
        rel = f.relative_to(root).as_posix()
        if rel in dates:
            return dates[rel]
    for name in (str(reader), *(d for d in source.datasets if d != str(reader))):
        try:
            return read_acquisition_date(name)
        except (InputError, RasterioError, CPLE_BaseError):
            continue
    when = date_from_name(entry.files[0]) if names_as_dates else None
    if when is None:
        raise InputError(f"{entry.label} has no acquisition date in its metadata"
                         f"{' or name' if names_as_dates else ''}; give it in {root / 'dates.csv'}")
    return when


def scan_products(archive: str | Path, store: FolderStore, names_as_dates: bool = True,
                  notices: list[str] | None = None) -> list[Scene]:
    """Every optical and SAR scene of the archive, in any accepted form (module docstring), with its date and mask;
    VRTs go to ``store``. A product engine.sources.resolve refuses fails here, in one line naming it; what it warns
    about (a GRD geocoded without terrain correction) is added to ``notices``."""
    root = Path(archive)
    if not root.is_dir():
        raise InputError(f"archive folder {root} does not exist")
    dates = read_dates_csv(root)
    scenes = []
    for entry in list_entries(root / "optical", "optical"):
        source = resolve_entry(entry)
        _notice(notices, source)
        path, mask = optical_scene(entry, source, store)
        when = entry_date(entry, path, source, dates, root, names_as_dates)
        scenes.append(Scene(path, "optical", when, mask, source=entry.files[0]))
    if not scenes:
        raise InputError(f"no optical scenes in {root / 'optical'} (expected optical/*.tif or Sentinel-2 products)")
    grid: TargetGrid | None = None
    for entry in list_entries(root / "sar", "sar"):
        source = resolve_entry(entry)
        _notice(notices, source)
        if not source.passthrough and grid is None:
            grid = archive_grid([s.path for s in scenes])
        path = sar_scene(entry, source, store, grid)
        when = entry_date(entry, path, source, dates, root, names_as_dates)
        scenes.append(Scene(path, "sar", when, source=entry.files[0], units=source.units))
    return scenes
