"""Every file an input dataset opens — and whether it reaches the network. One function for every command.

Why: an output must never replace a file the engine reads, and the engine reads more than the names the user typed
(issue 25: ``run --optical opt.vrt --out src.tif`` replaced the VRT's source; ``--optical /vsizip/in.zip/a.tif --out
in.zip`` replaced the archive). What a dataset name opens, here:

* the file itself, or the product folder (every file under a ``.SAFE`` folder);
* what GDAL lists for it (``GetFileList``: VRT sources, sidecars that exist — ``.aux.xml``, ``.ovr``, ``.msk``, world
  files —, the file behind a ``NETCDF:"f.nc":var`` or ``vrt://f.tif?…`` name), and, recursively, what a listed
  ``.vrt`` opens (GDAL lists a nested VRT but not its sources);
* no FIFO, device or socket (GDAL would block on a FIFO a VRT names, or read a device without end: refused);
* the archive holding a ``/vsizip/``, ``/vsitar/``, ``/vsigzip/``, ``/vsi7z/``, ``/vsirar/``, ``/vsisubfile/`` member;
* the sidecar names GDAL would read beside each raster if they existed (:data:`SIDECARS`): writing an output there
  would change how the input reads (a GeoTIFF named ``opt.tif.ovr`` becomes ``opt.tif``'s overviews).

Paths are compared after resolving symlinks and ``..`` (and by inode for hard links): :meth:`Footprint.clash`.

The network: a remote name (``/vsicurl/``, ``/vsis3/`` …, ``http://``, a web-service driver such as ``WMS:``) is read
only when the user named it. A local file that reaches the network — a VRT whose source is remote, a ``<GDAL_WMS>``
description — is refused unless ``--allow-network`` (:data:`ALLOW_NETWORK_ENV`) says otherwise; the names are found
in the VRT's XML before GDAL opens it, and GDAL itself opens the file with ``/vsicurl/`` and its kin shut
(:data:`NO_NETWORK`), so listing a file never makes a request.
"""

from __future__ import annotations

import logging
import os
import re
import warnings
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from xml.etree.ElementTree import ParseError

import defusedxml.ElementTree as DefusedET
import rasterio
from defusedxml import DefusedXmlException
from rasterio._err import CPLE_BaseError
from rasterio.errors import NotGeoreferencedWarning, RasterioError

from engine.config import is_gdal_name
from engine.errors import InputError

ALLOW_NETWORK_ENV = "ALIGNCR_ALLOW_NETWORK"  # set by the CLI's --allow-network (inherited by batch workers)
# GDAL's network file systems; a chained name (/vsizip//vsicurl/…) is remote too
REMOTE_VSI = ("/vsicurl", "/vsis3", "/vsigs", "/vsiaz", "/vsiadls", "/vsioss", "/vsiswift", "/vsihdfs",
              "/vsiwebhdfs")  # fmt: skip
# drivers that fetch from a server: by their name prefix (WMS:http://…) and by the opened dataset's driver
NETWORK_DRIVERS = frozenset({"WMS", "WMTS", "WCS", "HTTP", "EEDA", "EEDAI", "DAAS", "PLMOSAIC", "STACIT", "STACTA",
                             "OGCAPI", "NGW", "PG", "POSTGISRASTER"})  # fmt: skip
_URL = re.compile(r"^(https?|ftps?|s3|gs|gcs|az|azure|abfss?|adl|oss|swift|hdfs|webhdfs)://", re.IGNORECASE)
# the XML descriptions of web services GDAL opens from a local file
_SERVICE_XML = (b"<GDAL_WMS", b"<GDAL_WMTS", b"<WCS_GDAL", b"<GDAL_WCS", b"<WMS_Capabilities", b"<Capabilities",
                b"<GDAL_WMTS_")  # fmt: skip
ARCHIVE_VSI = ("/vsizip/", "/vsitar/", "/vsigzip/", "/vsi7z/", "/vsirar/", "/vsisubfile/")
# read beside a raster when present: <file>.<suffix> and <stem>.<suffix> (world files, RPCs, overviews, masks, PAM)
SIDECARS = (".aux.xml", ".ovr", ".msk", ".aux", ".ovr.aux.xml", ".msk.aux.xml", ".rrd")
STEM_SIDECARS = (".aux", ".ovr", ".tfw", ".tifw", ".tfwx", ".wld", ".j2w", ".jgw", ".pgw", ".rpb", "_rpc.txt",
                 ".imd", ".prj")  # fmt: skip
# GDAL opens no remote file while a footprint is listed: /vsicurl/ and its kin accept only this (absent) extension
NO_NETWORK = {"CPL_VSIL_CURL_ALLOWED_EXTENSIONS": ".aligncr-no-network", "GDAL_VRT_ENABLE_PYTHON": "NO"}
VRT_MAX_BYTES = 64 * 2**20  # a VRT larger than this is not parsed (refused: its sources cannot be checked)
MAX_DEPTH = 16  # nested VRTs


def network_allowed() -> bool:
    """Whether ``--allow-network`` was given (a local file may then read remote sources)."""
    return os.environ.get(ALLOW_NETWORK_ENV, "") not in ("", "0")


def is_remote(name: str | os.PathLike[str]) -> bool:
    """True for a dataset name that reads from a server: a network file system (anywhere in a chained name), a URL,
    or a web-service driver prefix (``WMS:…``)."""
    text = os.fspath(name).strip()
    lower = text.lower()
    if text.startswith("<"):
        return False  # inline VRT XML: local; the sources it names are visited one by one
    if (lower.startswith("/vsi") and any(prefix in lower for prefix in REMOTE_VSI)) or _URL.match(text):
        return True
    head = text.split(":", 1)[0].upper() if ":" in text else ""
    return head in NETWORK_DRIVERS


@dataclass(frozen=True)
class Read:
    """One local file an input opens: where, for which input (``role``, ``given``: as the user named it) and how."""

    path: Path
    role: str
    given: str
    how: str
    sidecar: bool = False  # a name GDAL would read beside a raster: compared by name, whether it exists or not


@dataclass
class Footprint:
    """The files a set of inputs opens (:class:`Read`), and the remote names among them."""

    reads: list[Read] = field(default_factory=list)
    remote: list[tuple[str, str, str]] = field(default_factory=list)  # (role, given, remote name), not named

    def add(self, other: Footprint) -> Footprint:
        self.reads += other.reads
        self.remote += other.remote
        return self

    def clash(self, out: str | os.PathLike[str]) -> Read | None:
        """The read that writing ``out`` would replace or shadow, or None."""
        target = _resolved(Path(out))
        for read in self.reads:
            if read.sidecar:
                if read.path.parent == target.parent and read.path.name.lower() == target.name.lower():
                    return read
            elif read.path == target or _same_inode(read.path, target):
                return read
        return None

    def refuse_network(self) -> None:
        """One-line :class:`InputError` when a local input reaches the network without ``--allow-network``."""
        if self.remote and not network_allowed():
            role, given, name = self.remote[0]
            raise InputError(f"refused: the {role} input {given} reads {name} over the network; the engine reads "
                             "remote data only when you name it, or with --allow-network")  # fmt: skip


def _resolved(path: Path) -> Path:
    try:
        return Path(os.path.realpath(path))
    except (OSError, ValueError):
        return Path(os.path.abspath(path))


def _same_inode(a: Path, b: Path) -> bool:
    try:
        return os.path.samefile(a, b)
    except (OSError, ValueError):
        return False


def input_footprint(inputs: Mapping[str, str | os.PathLike[str] | None]) -> Footprint:
    """The footprint of every input (role → name as given; None and ``--mask``'s words skipped); refuses a local input
    that reaches the network (:meth:`Footprint.refuse_network`). The one function every command checks outputs
    with."""
    from engine.config import is_mask_word

    found = Footprint()
    for role, name in inputs.items():
        if name is None or not os.fspath(name) or is_mask_word(name):
            continue
        found.add(dataset_footprint(os.fspath(name), role.replace("_", " ")))
    found.refuse_network()
    return found


def dataset_footprint(given: str, role: str) -> Footprint:
    """What one dataset name opens (see the module docstring); nothing for a remote name the user gave."""
    walk = _Walk(role, given)
    if not is_remote(given):
        walk.visit(given, "the input itself", 0)
    return walk.found


class _Walk:
    """One input's footprint, built by visiting each name it opens once."""

    def __init__(self, role: str, given: str) -> None:
        self.role = role
        self.given = "(an inline VRT)" if given.lstrip().startswith("<") else given  # as messages name it
        self.found = Footprint()
        self.seen: set[str] = set()
        self.listed: set[tuple[Path, bool]] = set()

    def read(self, path: Path, how: str, sidecar: bool = False) -> None:
        """Record one file (the first way it is reached names it)."""
        key = (_resolved(path), sidecar)
        if key not in self.listed:
            self.listed.add(key)
            self.found.reads.append(Read(key[0], self.role, self.given, how, sidecar))

    def remote(self, name: str) -> None:
        self.found.remote.append((self.role, self.given, name))

    def visit(self, name: str, how: str, depth: int) -> None:
        """A dataset name: a local file or folder, a GDAL name (archive member, subdataset, inline VRT)."""
        key = name if is_gdal_name(name) else str(_resolved(Path(name)))
        if key in self.seen or depth > MAX_DEPTH:
            return
        self.seen.add(key)
        if is_remote(name):
            self.remote(name)
            return
        for container in archive_containers(name):
            self.read(container, "the archive holding it" if how == "the input itself" else f"the archive of {how}")
        if not is_gdal_name(name):
            if not self._local(Path(name), how, depth):
                return
        elif name.lstrip().startswith("<VRTDataset"):
            self._vrt_xml(name.encode(), None, depth)
        self._gdal_files(name, how, depth)

    def _local(self, path: Path, how: str, depth: int) -> bool:
        """A local path: the file (and the sidecar names beside it), or every file of a SAFE product; True when GDAL
        should list what it opens too."""
        product = _product_folder(path)
        if product is not None:
            for f in _files_under(product):
                self.read(f, "a file of the product")
            return False
        self.read(path, how)
        if path.exists() and not path.is_file() and not path.is_dir():
            # a FIFO or a device behind a VRT: GDAL would block on it (a FIFO) or read it without end
            raise InputError(f"refused: the {self.role} input {self.given} reads {path}, which is not a regular file "
                             "(a FIFO, a device or a socket)")  # fmt: skip
        if not path.is_file():
            return False  # a missing file or a plain folder: the readers refuse it
        for name in _sidecar_names(path):
            self.read(name, "a file GDAL reads beside it", sidecar=True)
        head = _head(path)
        if any(marker in head for marker in _SERVICE_XML):
            self.remote(f"the web service {path.name} describes")
            return False
        if b"<VRTDataset" in head:
            if path.stat().st_size > VRT_MAX_BYTES:
                raise InputError(f"refused: the {self.role} VRT {path} is larger than {VRT_MAX_BYTES // 2**20} MB; "
                                 "its sources cannot be checked")  # fmt: skip
            self._vrt_xml(path.read_bytes(), path.parent, depth)
        return True

    def _vrt_xml(self, xml: bytes, folder: Path | None, depth: int) -> None:
        """The sources a VRT names (``SourceFilename``, ``SourceDataset``), visited before GDAL opens it."""
        try:
            root = DefusedET.fromstring(xml)
        except (ParseError, DefusedXmlException):
            return  # GDAL will say it cannot read it; nothing it names was opened
        for element in root.iter():
            if element.tag not in ("SourceFilename", "SourceDataset") or not (element.text or "").strip():
                continue
            source = element.text.strip()
            if element.get("relativeToVRT", "0") == "1" and folder is not None and not is_gdal_name(source):
                source = str(folder / source)
            self.visit(source, "a VRT source", depth + 1)

    def _gdal_files(self, name: str, how: str, depth: int) -> None:
        """What GDAL lists for ``name`` (opened with the network shut), each visited in turn."""
        try:
            with _quiet(), rasterio.Env(**NO_NETWORK), rasterio.open(name) as ds:
                driver, files = ds.driver, list(ds.files)
        except (RasterioError, CPLE_BaseError, OSError, ValueError, IndexError):
            return  # not a raster (weights, a zip product) or unreadable: the readers say so, in their words
        if driver.upper() in NETWORK_DRIVERS:
            self.remote(f"{name} (GDAL driver {driver})")
            return
        for listed in files:
            if is_remote(listed):
                self.remote(listed)
            elif listed.lower().endswith(".vrt") and listed != name:
                self.visit(listed, "a VRT source", depth + 1)
            elif is_gdal_name(listed):
                for container in archive_containers(listed):
                    self.read(container, "the archive holding a file it opens")
            else:
                self.read(Path(listed), "a file GDAL opens with it")


@contextmanager
def _quiet() -> Iterator[None]:
    """Listing a file is no reading: no NotGeoreferencedWarning (a product's XML, a GCP measurement), and none of
    the INFO lines rasterio logs for a file GDAL does not recognise (weights, a zip product)."""
    logger = logging.getLogger("rasterio")
    level = logger.level
    logger.setLevel(max(level, logging.WARNING))
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", NotGeoreferencedWarning)
            yield
    finally:
        logger.setLevel(level)


def _head(path: Path, size: int = 4096) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read(size)
    except OSError:
        return b""


def _product_folder(path: Path) -> Path | None:
    """The SAFE folder ``path`` is (or whose manifest / metadata file it is), else None."""
    folder = path.parent if path.name == "manifest.safe" or re.match(r"MTD_MSIL\w+\.xml$", path.name) else path
    if folder.is_dir() and ((folder / "manifest.safe").exists() or any(folder.glob("MTD_MSIL*.xml"))):
        return folder
    return None


def _files_under(folder: Path, limit: int = 100_000) -> Iterator[Path]:
    for n, f in enumerate(p for p in folder.rglob("*") if p.is_file()):
        if n >= limit:
            return
        yield f


def _sidecar_names(path: Path) -> Iterator[Path]:
    for suffix in SIDECARS:
        yield path.with_name(path.name + suffix)
    for suffix in STEM_SIDECARS:
        yield path.with_name(path.stem + suffix)


def archive_containers(name: str) -> list[Path]:
    """The local archives a ``/vsizip/``-style name reads (outermost first; chained names give several)."""
    found: list[Path] = []
    rest = name
    while True:
        prefix = next((p for p in ARCHIVE_VSI if rest.startswith(p)), None)
        if prefix is None:
            return found
        rest = rest[len(prefix):]
        if prefix == "/vsisubfile/":  # /vsisubfile/offset_size,path
            rest = rest.split(",", 1)[1] if "," in rest else rest
        if rest.startswith("{"):  # /vsizip/{/path/a.zip}/member
            inner, _, _ = rest[1:].partition("}")
            rest = inner
        elif not rest.startswith("/vsi"):
            archive = _existing_prefix(rest)
            if archive is not None:
                found.append(archive)
            return found


def _existing_prefix(path: str) -> Path | None:
    """The longest leading part of ``path`` that is an existing file (the archive of ``a.zip/dir/member.tif``)."""
    parts = Path(path).parts
    for n in range(len(parts), 0, -1):
        candidate = Path(*parts[:n])
        if candidate.is_file():
            return candidate
    return None


def run_footprint(values: Mapping[str, object]) -> Footprint:
    """The footprint of one run's inputs — a :class:`~engine.config.RunConfig`'s or a batch scene's fields by name:
    every input raster, the weights, and with ``mask`` ``auto`` the mask found beside the optical image."""
    from engine.config import INPUT_FIELDS, MASK_AUTO

    named = {name: values.get(name) for name in (*INPUT_FIELDS, "weights")}
    if named.get("mask") is not None and os.fspath(named["mask"]) == MASK_AUTO and named.get("optical") is not None:
        from engine.sources.resolve import planet_udm2  # the product's own mask (a SAFE's is in its folder)

        named["mask"] = planet_udm2(os.fspath(named["optical"]))  # type: ignore[arg-type]
    return input_footprint(named)  # type: ignore[arg-type]
