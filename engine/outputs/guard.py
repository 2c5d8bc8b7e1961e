"""Output paths, checked before any work: what may be written where, and what is never replaced.

The promises (docs/reliability.md, issues 15 and 25):

* an existing path that is not a regular file (a device such as ``/dev/null``, a FIFO, a socket, a folder, a
  symbolic link) is refused — the final rename would replace it;
* an output never replaces a file an input opens, nor takes a name GDAL would read beside an input: the inputs'
  :class:`~engine.sources.footprint.Footprint` (VRT sources, archives, sidecars, the product's files) is compared
  with every output, symlinks and ``..`` resolved;
* an existing output is replaced (the habit of the engine's users and of its plugin, which asks first) unless
  ``clobber`` is off (``--no-clobber``): then an existing output is refused here, and again at the rename, which
  then cannot replace a file that appeared meanwhile (:func:`engine.outputs.writer.AtomicFile.commit`);
* the folder exists and is writable (probed with a real file named like the writer's temporaries).
"""

from __future__ import annotations

import errno
import os
import stat
import uuid
from collections.abc import Iterable
from pathlib import Path

from engine.errors import OutputError
from engine.names import temporary_name
from engine.sources.footprint import Footprint, Read

Inputs = Footprint | Iterable[Path | str | None]


def _kind(mode: int) -> str | None:
    """What a non-regular file is, in words (None for a regular file)."""
    for test, name in ((stat.S_ISDIR, "a folder"), (stat.S_ISCHR, "a character device"),
                       (stat.S_ISBLK, "a block device"), (stat.S_ISFIFO, "a FIFO (named pipe)"),
                       (stat.S_ISSOCK, "a socket")):  # fmt: skip
        if test(mode):
            return name
    return None if stat.S_ISREG(mode) else "not a regular file"


def existing_kind(path: Path) -> str | None:
    """None when ``path`` does not exist or is a regular file (following links), else what it is."""
    try:
        return _kind(os.stat(path).st_mode)
    except FileNotFoundError:
        return None
    except OSError as exc:
        if exc.errno in (errno.ENOTDIR, errno.ENAMETOOLONG, errno.ELOOP):
            return None  # reported by the folder checks below
        raise OutputError(f"cannot inspect the output path {path}: {exc.strerror or exc}") from None


def file_kind(path: Path) -> str | None:
    """As :func:`existing_kind`, for a file the engine will *replace* (the rename acts on the name, not on what it
    links to): a symbolic link is refused too (issue 25's review: ``--out /dev/stdout``, a link to a regular file,
    was replaced — the link became a GeoTIFF)."""
    if os.path.islink(path):
        return f"a symbolic link (to {os.readlink(path)})"
    return existing_kind(path)


def as_footprint(inputs: Inputs) -> Footprint:
    """``inputs`` as a footprint: a footprint as it is; plain paths (other outputs, a manifest) as files only."""
    if isinstance(inputs, Footprint):
        return inputs
    reads = [Read(Path(os.path.realpath(p)), "", str(p), "another file of this run") for p in inputs if p is not None]
    return Footprint(reads=reads)


def clash_message(out: Path, what: str, inputs: Inputs) -> str | None:
    """Why writing ``out`` would destroy or shadow something this run reads, or None."""
    read = as_footprint(inputs).clash(out)
    if read is None:
        return None
    if not read.role:
        return f"{what} would overwrite another file of this run: {out}"
    if read.sidecar:
        return (f"{what} would change how an input reads: GDAL reads {out} beside the {read.role} input {read.given} "
                "(overviews, mask, metadata or georeferencing)")  # fmt: skip
    if read.how == "the input itself":
        return f"{what} would overwrite an input file: {out} is the {read.role} input"
    return f"{what} would overwrite an input file: {out} is {read.how} ({read.role} input {read.given})"


def check_output_path(out: Path, inputs: Inputs, what: str = "output", clobber: bool = True,
                      geotiff: bool = False) -> None:  # fmt: skip
    """Fail early (before any work) if ``out`` cannot be created, is not a regular file, would replace or shadow a
    file an input opens, or (``clobber`` off) exists already; a ``geotiff`` output must not be named as another
    raster format (GDAL tools choose the format by the name: ``o.gpkg`` holding a GeoTIFF misleads them)."""
    out = Path(out)
    clash = clash_message(out, what, inputs)
    if clash is not None:
        raise OutputError(f"{clash}; choose another name")
    if geotiff:
        _check_geotiff_name(out, what)
    kind = file_kind(out)
    if kind == "a folder":
        raise OutputError(f"{what} path is a folder, give a file name: {out}")
    if kind is not None:
        raise OutputError(f"{what} path exists and is {kind}, not a regular file; refusing to replace it: {out}")
    parent = out.parent if str(out.parent) else Path(".")
    if not parent.exists():
        raise OutputError(f"{what} folder does not exist: {parent}")
    if not parent.is_dir():
        raise OutputError(f"{what} folder is not a folder: {parent}")
    if not clobber and os.path.lexists(out):
        raise OutputError(f"{what} {out} exists and --no-clobber is set; refusing to replace it")
    probe = parent / temporary_name(out.name, f"{os.getpid()}.{uuid.uuid4().hex[:8]}", "probe")
    try:
        probe.touch(exist_ok=False)
    except OSError as exc:
        raise OutputError(f"{what} folder is not writable: {parent} ({exc.strerror})") from None
    probe.unlink(missing_ok=True)


def _check_geotiff_name(out: Path, what: str) -> None:
    from rasterio.drivers import raster_driver_extensions

    driver = raster_driver_extensions().get(out.suffix.lower().lstrip("."))
    if driver not in (None, "GTiff", "COG"):
        raise OutputError(f"{what} {out}: the engine writes GeoTIFF, and GDAL reads a '{out.suffix}' name as "
                          f"{driver}; name it .tif")  # fmt: skip


def check_output_dir(folder: Path, inputs: Inputs, files: tuple[str, ...] = (), what: str = "report",
                     clobber: bool = True) -> None:  # fmt: skip
    """Fail early if the folder ``folder`` (created later, with its parents) cannot be made or written, if it
    exists as something other than a folder, or if one of the ``files`` it will hold fails
    :func:`check_output_path` (a non-regular file, an input's file, an existing file without ``clobber``)."""
    folder = Path(folder)
    kind = existing_kind(folder)
    if kind is None and folder.exists():
        raise OutputError(f"{what} folder path is a file, not a folder: {folder}")
    if kind not in (None, "a folder"):
        raise OutputError(f"{what} folder path exists and is {kind}: {folder}")
    clash = clash_message(folder, f"{what} folder", inputs)
    if clash is not None:
        raise OutputError(f"{clash}; choose another folder")
    if kind == "a folder":
        if not os.access(folder, os.W_OK | os.X_OK):
            raise OutputError(f"{what} folder is not writable: {folder}")
        for name in files:
            check_output_path(folder / name, inputs, what=f"{what} file", clobber=clobber)
        return
    ancestor = folder.parent
    while not ancestor.exists() and ancestor != ancestor.parent:
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise OutputError(f"{what} folder cannot be created: {ancestor} is not a folder")
    if not os.access(ancestor, os.W_OK | os.X_OK):
        raise OutputError(f"{what} folder cannot be created: {ancestor} is not writable")
    for name in files:  # the folder does not exist yet: its files can still be an input's (a path through ..)
        clash = clash_message(folder / name, f"{what} file", inputs)
        if clash is not None:
            raise OutputError(f"{clash}; choose another folder")
