"""The shapes every source resolver shares: a resolved input (:class:`ResolvedSource`), a SAFE product as downloaded
(:class:`SafeProduct`), the in-memory VRT store of a run (:class:`Materialised`) and the one way to open a dataset
name (:func:`open_source`).

Why a module of their own: :mod:`.resolve` dispatches to the product readers (:mod:`.s1`, :mod:`.s2`), and those
build the same :class:`ResolvedSource`; with the shapes here, neither imports the other's caller.
"""

from __future__ import annotations

import re
import uuid
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from xml.etree.ElementTree import ParseError

import rasterio
import rasterio.shutil
from defusedxml import DefusedXmlException
from rasterio._err import CPLE_BaseError
from rasterio.errors import RasterioError
from rasterio.io import MemoryFile

from engine.config import is_gdal_name
from engine.errors import InputError, one_line
from engine.sources.raster import open_raster

OPTICAL_ROLES = ("blue", "green", "red", "nir")
SAR_ROLES = ("VV", "VH")


@dataclass(frozen=True)
class ResolvedSource:
    """One input, resolved: what it is and how the reader gets VV/VH or B/G/R/NIR out of it.

    ``datasets`` are GDAL dataset names (a file, ``/vsizip/…``, ``DRIVER:…`` subdatasets); ``bands`` the 1-based band
    of each role, in ``roles`` order, and ``members`` which dataset each role comes from (an index into
    ``datasets``): a stacked SAR GeoTIFF is one dataset, bands (1, 2); split polarisations are two, bands (1, 1).
    ``units`` is decided (``db``/``linear``/``amplitude`` for SAR, ``dn`` for optical) or None (detected later),
    ``offsets`` are added to optical DN (Sentinel-2 processing baseline ≥ 04.00), ``gcps`` says the datasets are in
    radar geometry and must be warped from their ground control points. ``mask`` is the cloud mask found with the
    product (UDM2, SCL) for ``--mask auto``.
    """

    role: str
    given: str
    kind: str
    datasets: tuple[str, ...]
    driver: str
    roles: tuple[str, ...]
    bands: tuple[int, ...]
    members: tuple[int, ...] = ()
    units: str | None = None
    calibration: str | None = None
    offsets: tuple[float, ...] = ()  # added to each role band's DN (Sentinel-2 BOA_ADD_OFFSET), () = none
    nodata: float | None = None  # the source's nodata when the driver does not declare it (Sentinel-2: 0)
    tags: tuple[tuple[str, str], ...] = ()  # written on the VRT (an acquisition date the product's metadata holds)
    gcps: bool = False
    luts: tuple[str, ...] = ()  # per dataset: the Sentinel-1 calibration annotation σ⁰ is computed with
    mask: ResolvedSource | None = None
    lut: tuple[tuple[int, int], ...] = ()  # a categorical mask's value → cloud (1) / clear (0) / nodata (255)
    notes: tuple[str, ...] = ()
    warnings: tuple[str, ...] = field(default=(), compare=False)

    @property
    def passthrough(self) -> bool:
        """True when the reader can open the one dataset as it is (no VRT needed)."""
        return len(self.datasets) == 1 and not self.gcps and not self.offsets and not self.lut and not self.tags

    def as_dict(self) -> dict[str, Any]:
        """JSON-friendly, for ``engine info`` and the plugin: ``bands`` maps each role to its band, prefixed by
        the dataset's number when there are several (``"2:1"``: band 1 of the second dataset)."""
        many = len(self.datasets) > 1
        bands = {r: (f"{self.member(i) + 1}:{b}" if many else str(b)) for i, (r, b) in enumerate(zip(self.roles,
                                                                                                  self.bands))}
        return {
            "given": self.given, "kind": self.kind, "driver": self.driver, "datasets": list(self.datasets),
            "bands": bands, "units": self.units, "calibration": self.calibration,
            "offsets": list(self.offsets) or None, "mask": self.mask.as_dict() if self.mask is not None else None,
            "notes": list(self.notes),
        }  # fmt: skip

    def member(self, i: int) -> int:
        return self.members[i] if self.members else 0


# What the engine reads from one member of a product (an XML annotation), and how much more than its compressed size
# (issue 25: a 2 MB Sentinel-1 zip whose calibration XML inflated to 1 GiB took 2.4 GB of memory, exit 0). Real
# annotations are a few MB and compress about 10-30:1.
MEMBER_MAX_BYTES = 64 * 2**20
MEMBER_MAX_RATIO = 200  # uncompressed : compressed, checked above 1 MB
MEMBER_RATIO_FROM = 2**20


def read_member(archive: str | Path | None, member: str, given: str) -> bytes:
    """A file of a product — ``member`` of the zip ``archive``, or the plain file ``member`` when ``archive`` is
    None — read whole, at most :data:`MEMBER_MAX_BYTES` and, from a zip, at most :data:`MEMBER_MAX_RATIO` times its
    compressed size (however the zip's header lies: the read stops there). Beyond: a one-line refusal."""
    limit = MEMBER_MAX_BYTES
    try:
        if archive is None:
            with open(member, "rb") as f:
                data = f.read(limit + 1)
        else:
            with zipfile.ZipFile(archive) as zf:
                info = zf.getinfo(member)
                if info.file_size > MEMBER_RATIO_FROM:
                    limit = min(limit, max(MEMBER_RATIO_FROM, MEMBER_MAX_RATIO * info.compress_size))
                with zf.open(info) as f:
                    data = f.read(limit + 1)
    except zipfile.BadZipFile as exc:
        raise InputError(f"cannot read {member} in the zip file ({one_line(exc)}): {given}") from None
    if len(data) > limit:
        ratio = "" if archive is None else f", or {MEMBER_MAX_RATIO}:1 compressed"
        raise InputError(f"refused: {member} of the product is larger than the engine reads from one file "
                         f"({limit / 2**20:.0f} MB{ratio}): {given}")  # fmt: skip
    return data


@contextmanager
def xml_refusals(member: str, given: str) -> Iterator[None]:
    """A product's XML that defusedxml refuses (entity declarations: billion laughs, external entities) or cannot
    parse, as one :class:`InputError` line naming the member (issue 25: a traceback ending in EntitiesForbidden)."""
    try:
        yield
    except DefusedXmlException:
        raise InputError(f"refused: the product's XML {member} declares entities (unsafe): {given}") from None
    except ParseError as exc:
        raise InputError(f"the product's XML {member} is not well-formed ({exc}): {given}") from None


def open_source(name: str, role: str) -> rasterio.io.DatasetReader:
    """Open a GDAL dataset name with :func:`engine.sources.raster.open_raster`'s checks and one-line errors."""
    return open_raster(name, role)


@dataclass(frozen=True)
class SafeProduct:
    """A Sentinel SAFE product as downloaded: a ``.SAFE`` folder, its ``.zip``, or the manifest/metadata file in it.

    ``root`` is the folder or zip, ``members`` the relative paths inside (from the folder tree or the zip's index),
    ``name`` the product name (``S2B_MSIL2A_…``, ``S1A_IW_GRDH_…``)."""

    given: str
    root: Path
    name: str
    members: tuple[str, ...]
    zipped: bool

    @property
    def mission(self) -> str:
        return self.name[:2]

    def vsi(self, member: str) -> str:
        """A GDAL name of a file inside the product."""
        prefix = f"/vsizip/{self.root}" if self.zipped else str(self.root)
        return f"{prefix}/{member}"


def safe_product(given: str) -> SafeProduct | None:
    """The SAFE product ``given`` is (folder, zip, or its manifest.safe / MTD_*.xml), None for anything else; a zip
    that holds no SAFE product is an :class:`InputError` (say which file inside it to read)."""
    if is_gdal_name(given):
        return None
    path = Path(given)
    if path.is_file() and (path.name == "manifest.safe" or re.match(r"MTD_MSIL\w+\.xml$", path.name)):
        path = path.parent
    if path.is_dir():
        if not (path / "manifest.safe").exists() and not list(path.glob("MTD_MSIL*.xml")):
            return None
        members = tuple(str(p.relative_to(path)) for p in sorted(path.rglob("*")) if p.is_file())
        return SafeProduct(given, path.resolve(), path.name.removesuffix(".SAFE"), members, zipped=False)
    if path.suffix.lower() != ".zip":
        return None
    try:
        with zipfile.ZipFile(path) as zf:
            names = tuple(zf.namelist())
    except (zipfile.BadZipFile, OSError) as exc:
        raise InputError(f"not a readable zip file ({one_line(exc)}): {given}") from None
    tops = {n.split("/")[0] for n in names if n.split("/")[0].endswith(".SAFE")}
    if len(tops) != 1:
        raise InputError(f"zip file holds no Sentinel .SAFE product; give the raster inside it as "
                         f"/vsizip/{path.resolve()}/<file>: {given}")  # fmt: skip
    top = tops.pop()
    members = tuple(n[len(top) + 1 :] for n in names if n.startswith(top + "/") and not n.endswith("/"))
    return SafeProduct(given, Path(f"{path.resolve()}/{top}"), top.removesuffix(".SAFE"), members, zipped=True)


class Materialised:
    """The in-memory VRTs written for one run; :meth:`close` deletes them (use as a context manager)."""

    def __init__(self) -> None:
        self.names: list[str] = []
        self.files: list[MemoryFile] = []

    def new_name(self, stem: str) -> str:
        name = f"/vsimem/aligncr-sources/{uuid.uuid4().hex}/{stem}.vrt"
        self.names.append(name)
        return name

    def write(self, stem: str, xml: str) -> str:
        """Write VRT XML into /vsimem and return its name."""
        memfile = MemoryFile(xml.encode(), filename=f"{stem}-{uuid.uuid4().hex}.vrt")
        self.files.append(memfile)
        return memfile.name

    def memory_file(self, ext: str = ".tif") -> MemoryFile:
        """An empty in-memory file deleted with the others (a raster the run writes and reads back: a detected
        cloud mask)."""
        memfile = MemoryFile(ext=ext)
        self.files.append(memfile)
        return memfile

    def close(self) -> None:
        for name in reversed(self.names):
            try:
                rasterio.shutil.delete(name, driver="VRT")
            except (RasterioError, CPLE_BaseError):
                pass  # already gone
        self.names.clear()
        for memfile in self.files:
            memfile.close()
        self.files.clear()

    def __enter__(self) -> Materialised:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
