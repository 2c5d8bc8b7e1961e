"""Atomic, windowed GeoTIFF (and Cloud-Optimized GeoTIFF) writing.

The output is written block by block into a hidden temporary file *in the destination folder* (same file
system, so the final ``os.replace`` is an atomic rename) and renamed only when the run succeeded: a crash, an
error or a user cancel never leaves a half-written file under the requested name.

What "succeeded" means for the file itself (issue 15: disk full while finishing the file gave exit 0 and a corrupt
GeoTIFF): every GDAL write and the close that flushes GDAL's block cache are checked for GDAL failures
(:mod:`engine.sources.gdal_errors`: GDAL only *logs* a failed flush), the temporary file is ``fsync``-ed (delayed
allocation can report a full disk only then) and verified — re-opened, its size, band count and data type
compared, every block's offset and length checked against the file's length, its first and last blocks read —
before the rename. Any failure is one :class:`~engine.errors.OutputError` line ("no space left on device" when the
file system is full), the temporary file is removed and nothing appears under the requested name.

Temporary files: ``.<name>.<pid>.<tag>.tmp.tif`` (``.cog.tmp.tif`` for the COG copy; git-ignored; a name too long
to carry the suffix is shortened with a hash, :mod:`engine.names`). The first one is created exclusively and, on
POSIX, ``flock``-ed for as long as its writer lives; the COG copy and GDAL's own side files (``.aux.xml``,
``.ovr.tmp``) share its ``<pid>.<tag>``. :func:`remove_stale_temporaries` (run before a new writer starts on the same
path, and by ``engine batch`` before each attempt and after the cluster stops) removes a group only when its owner is
gone — the lock can be taken *and* the PID is not a live process here (Windows: the file can be deleted, which it
cannot while GDAL has it open) — and only names that are exactly the writer's (:func:`engine.names.temporary_pattern`:
never a user's file that happens to contain ``tmp``; ``scene[1].tif``'s cleanup never touches ``scene1.tif``'s).
A writer that finds another live process's temporary for the same output refuses to start: two runs writing one
path at once cannot both report success. With ``clobber=False`` (``--no-clobber``) the final rename never replaces
a file (a hard link, then the temporary's removal).

Layout: internal tiles 512 wide and 512 (or, to match the engine's chunk rows, slightly fewer, e.g. 448) rows
high, DEFLATE; predictor 2 (horizontal differencing) for integer data as asked for PlanetScope DN, predictor 3
(floating-point) for float data, where GDAL/libtiff's predictor 2 gains little. ``cog=True`` writes the plain tiled
GeoTIFF first, then lets GDAL's COG driver copy it with overviews (averaged) into a second temporary file, since a
COG must be written in one ordered pass with its overviews first.

Output paths are checked before any work by :mod:`engine.outputs.guard`.
"""

from __future__ import annotations

import errno
import os
import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import rasterio
import rasterio.shutil
from rasterio.crs import CRS
from rasterio.transform import Affine
from rasterio.windows import Window

from engine.errors import OutputError, one_line
from engine.names import temporary_name, temporary_pattern
from engine.outputs.guard import file_kind
from engine.outputs.provenance import RasterMetadata, folded
from engine.outputs.provenance import apply as apply_metadata
from engine.sources import gdal_errors
from engine.sources.raster import block_layout_problem, corner_windows

try:  # POSIX advisory locks mark a temporary file as owned by a live writer
    import fcntl
except ImportError:  # Windows: an open file cannot be deleted, which is the ownership test there
    fcntl = None  # type: ignore[assignment]

BLOCK = 512
LAYER_BLOCK = 256  # auxiliary layers (layer_spec)
LOW_SPACE_BYTES = 16 * 2**20  # below this much free space a write failure is reported as a full disk


@dataclass(frozen=True)
class OutputSpec:
    """Geometry and encoding of the output raster."""

    crs: CRS
    transform: Affine
    width: int
    height: int
    count: int
    dtype: str
    nodata: float | None
    descriptions: tuple[str | None, ...]
    block_height: int = BLOCK  # see engine.stream.tiling.output_block_height: chosen so chunk rows fill whole blocks
    metadata: RasterMetadata | None = None  # tags, band tags, scales/offsets, units (engine.outputs.provenance)
    creation: dict[str, Any] | None = None  # GTiff creation options; None: the engine output's (_creation_options)


def layer_spec(*, width: int, height: int, crs: CRS, transform: Affine, dtype: str, count: int = 1,
               nodata: float | None = None, descriptions: tuple[str | None, ...] = (),
               metadata: RasterMetadata | None = None) -> OutputSpec:  # fmt: skip
    """The spec of an auxiliary layer (the report's layers, ``engine ndvi``): 256² tiles when both sides allow it
    (else strips), DEFLATE, the floating-point predictor for float data — small files that QGIS opens fast. They
    are written by the same :class:`AtomicGeoTIFFWriter` as the engine's output, only the layout differs."""
    creation: dict[str, Any] = {"compress": "deflate"}
    if width >= LAYER_BLOCK and height >= LAYER_BLOCK:
        creation.update(tiled=True, blockxsize=LAYER_BLOCK, blockysize=LAYER_BLOCK)
    if dtype.startswith("float"):
        creation["predictor"] = 3
    return OutputSpec(crs=crs, transform=transform, width=width, height=height, count=count, dtype=dtype,
                      nodata=nodata, descriptions=descriptions, metadata=metadata, creation=creation)  # fmt: skip


def compression_threads() -> int:
    """GDAL threads that compress the output's blocks (GTiff/COG ``NUM_THREADS``): up to 4 of this machine's cores.

    Why: DEFLATE was the slowest step of the raster path — with the identity model on 2 cores, 1.85 of 4.2 s for a
    4096² scene, the writer thread alone capping the run near 9 Mpix/s whatever the GPU does. Blocks compress
    independently, so the file's pixels are the same; 2 threads there took a 4096² identity run from 5.6 to
    6.5 Mpix/s. More than 4 gains little at the engine's block rate and would crowd the network's threads.
    """
    return max(1, min(4, os.cpu_count() or 1))


def _creation_options(dtype: str, block_height: int) -> dict:
    predictor = 3 if np.dtype(dtype).kind == "f" else 2
    return {
        "tiled": True,
        "blockxsize": BLOCK,
        "blockysize": block_height,
        "compress": "deflate",
        "predictor": predictor,
        "num_threads": str(compression_threads()),
    }


# ---------------------------------------------------------------------------------------------------------------
# Temporary files: naming, ownership, stale cleanup


def _pid_alive(pid: int) -> bool:
    """Whether a process ``pid`` runs on this machine (True when it cannot be told: never guess it dead)."""
    if pid <= 0:
        return False
    if pid == os.getpid() or os.name != "posix":
        return True  # on Windows os.kill would terminate the process: no probing there
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True  # PermissionError: someone else's live process
    return True


def _locked_by_someone(path: Path) -> bool | None:
    """True when a live process holds ``path``'s lock, False when it can be taken, None when it cannot be told."""
    if fcntl is None:
        return None
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return False
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    except OSError:
        return None  # a file system without locks
    finally:
        os.close(fd)
    return False


def _owner_gone(owner: Path, pid: int) -> bool:
    """Whether the writer that made ``owner`` (its main temporary file) is gone; see the module docstring."""
    if not owner.exists():
        return not _pid_alive(pid)  # side files only
    locked = _locked_by_someone(owner)
    if locked:
        return False
    if locked is None and fcntl is None:
        return True  # Windows: deleting fails while the writer has the file open
    return not _pid_alive(pid)  # a free lock (or a file system without locks) and no such process here


def _groups(path: Path) -> dict[tuple[int, str], list[Path]]:
    """The temporaries beside ``path`` of exactly its name (:func:`engine.names.temporary_pattern`), by writer."""
    path = Path(path)
    folder = path.parent if str(path.parent) else Path(".")
    pattern = temporary_pattern(path.name)
    groups: dict[tuple[int, str], list[Path]] = {}
    try:
        names = [entry.name for entry in os.scandir(folder)]
    except OSError:
        return {}
    for name in names:
        m = pattern.fullmatch(name)
        if m is not None:
            groups.setdefault((int(m["pid"]), m["tag"]), []).append(folder / name)
    return groups


def _owner(path: Path, pid: int, tag: str) -> Path:
    return Path(path).parent / temporary_name(Path(path).name, f"{pid}.{tag}")


def remove_stale_temporaries(path: Path) -> list[Path]:
    """Remove the temporary files an earlier, dead writer of ``path`` left beside it (see the module docstring).

    Only the names the writer gives ``path``'s temporaries are considered (:func:`engine.names.temporary_pattern`:
    exact, the name compared literally), and a group only when its owner is gone. Returns what was removed."""
    removed: list[Path] = []
    for (pid, tag), files in _groups(path).items():
        owner = _owner(path, pid, tag)
        if not _owner_gone(owner, pid):
            continue
        for f in sorted(files, key=lambda p: p != owner):  # the owner's file first: on Windows it fails if in use
            try:
                f.unlink()
            except FileNotFoundError:
                continue
            except PermissionError:
                break
            except OSError:
                continue
            removed.append(f)
    return removed


def other_live_writer(path: Path) -> int | None:
    """The PID of another live process writing ``path`` now (its temporary locked, or — without locks — its PID
    alive), or None. Two runs writing one path at once would both report success; the second is refused."""
    for (pid, tag), _ in _groups(path).items():
        if pid == os.getpid():
            continue  # this process's own writers (a colour-anchor draft beside its output)
        owner = _owner(path, pid, tag)
        if owner.exists() and not _owner_gone(owner, pid):
            return pid
    return None


class _Claim:
    """A temporary file name reserved for this process: created exclusively and, on POSIX, locked until released."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._fd: int | None = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        if fcntl is not None:
            try:
                fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                pass  # a file system without locks: the PID in the name is the owner's only mark

    def fsync(self) -> None:
        """Flush what GDAL wrote through the same name (the same file) to the disk."""
        if self._fd is None:
            return
        try:
            os.fsync(self._fd)
        except OSError as exc:
            if exc.errno not in (errno.EINVAL, errno.EROFS, errno.ENOTSUP, errno.EBADF):
                raise

    def close(self) -> None:
        """Drop the lock (closing the descriptor)."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def release(self) -> None:
        """Remove the file and drop the lock."""
        self.path.unlink(missing_ok=True)
        self.close()


class _GdalFailure(Exception):
    """A GDAL failure during a write step (its message only; the writer words the error)."""


def _free_bytes(folder: Path) -> int | None:
    try:
        return shutil.disk_usage(folder).free
    except OSError:
        return None


def _reason(exc: BaseException | str) -> str:
    if isinstance(exc, str):
        return exc
    if isinstance(exc, OSError) and exc.errno == errno.ENOSPC:
        return "no space left on device"
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return one_line(exc)


def write_failure(path: Path, doing: str, exc: BaseException | str) -> OutputError:
    """The one-line error for a failed write step of ``path``; says "no space left on device" (with the free
    space) when the file system is (nearly) full, whatever GDAL's own words were."""
    reason = _reason(exc)
    folder = Path(path).parent
    free = _free_bytes(folder)
    if free is not None and free < LOW_SPACE_BYTES:
        if "no space left" not in reason.lower():
            reason = f"no space left on device ({reason})"
        reason += f"; {free / 2**20:.1f} MB free in {folder}"
    return OutputError(f"cannot {doing} {path}: {reason}")


# ---------------------------------------------------------------------------------------------------------------
# Verification of a finished file


def verify_geotiff(path: Path, *, width: int, height: int, count: int, dtype: str, label: Path | None = None) -> None:
    """Re-open a finished GeoTIFF and check it is whole: size, bands and type as written, every block inside the
    file, the first and last blocks readable. Raises :class:`OutputError` naming ``label`` (default ``path``)."""
    what = f"the output {label or path} is damaged (verification of the finished file failed)"
    with gdal_errors.gdal_failure_check(lambda message: OutputError(f"{what}: {message}")):
        with rasterio.open(path) as ds:
            if (ds.width, ds.height, ds.count) != (width, height, count) or ds.dtypes[0] != np.dtype(dtype).name:
                raise OutputError(f"{what}: it reads as {ds.width}×{ds.height}×{ds.count} {ds.dtypes[0]}, "
                                  f"expected {width}×{height}×{count} {dtype}")  # fmt: skip
            problem = block_layout_problem(ds, allow_sparse=False)
            if problem is not None:
                raise OutputError(f"{what}: {problem}")
            for window in corner_windows(ds):
                ds.read(window=window)


# ---------------------------------------------------------------------------------------------------------------
# The writers


def _place(finished: Path, path: Path, clobber: bool) -> None:
    """Rename ``finished`` to ``path``: replacing it (``clobber``), or — atomically — only if ``path`` does not exist
    (a hard link then the temporary's removal; where links are not supported, a check then the rename)."""
    if clobber:
        os.replace(finished, path)
        return
    try:
        os.link(finished, path)
    except FileExistsError:
        raise
    except OSError:  # no hard links here (FAT, some network shares)
        if os.path.lexists(path):
            raise FileExistsError(errno.EEXIST, "exists", str(path)) from None
        os.replace(finished, path)
        return
    os.unlink(finished)


class AtomicFile:
    """One output written through a claimed temporary file: finish (flush, fsync, verify), then commit (rename) or
    discard. The base of :class:`AtomicGeoTIFFWriter`."""

    def __init__(self, path: Path, kind: str = "", clobber: bool = True) -> None:
        self.path = Path(path)
        self.clobber = clobber  # False (--no-clobber): the rename never replaces a file that exists by then
        self._tag = f"{os.getpid()}.{uuid.uuid4().hex[:8]}"
        self.tmp = self.temporary(kind)
        self.finished: Path | None = None
        self._claims: list[_Claim] = []
        self._side: list[Path] = []

    def temporary(self, kind: str = "") -> Path:
        """A temporary name of this writer's group: ``.<name>.<pid>.<tag>[.<kind>].tmp.tif`` (a long name shortened
        with a hash: :func:`engine.names.temporary_stem`)."""
        return self.path.parent / temporary_name(self.path.name, self._tag, kind)

    def claim(self, path: Path) -> None:
        """Create ``path`` exclusively and lock it (the group's first claim marks the group as owned). The first
        claim also makes sure no other live process writes the same output (else :class:`OutputError`)."""
        try:
            self._claims.append(_Claim(path))
        except OSError as exc:
            raise write_failure(self.path, "create a temporary file for", exc) from None
        if len(self._claims) == 1:
            other = other_live_writer(self.path)
            if other is not None:
                self._release()
                raise OutputError(f"another process (PID {other}) is writing {self.path} right now; wait for it to "
                                  "finish or choose another name")  # fmt: skip
        self._side += [Path(str(path) + ext) for ext in (".aux.xml", ".ovr.tmp", ".msk.ovr.tmp")]

    def fsync(self, path: Path) -> None:
        for c in self._claims:
            if c.path == path:
                try:
                    c.fsync()
                except OSError as exc:
                    raise write_failure(self.path, "finish", exc) from None

    def commit(self) -> None:
        """Rename the verified file into place (once; a no-op after a failure or a previous commit)."""
        if self.finished is None:
            return
        try:
            kind = file_kind(self.path)
            if kind is not None:  # appeared since the up-front check
                raise OutputError(f"cannot finish the output {self.path}: it is now {kind}, not a regular file")
            if fcntl is None:  # Windows cannot rename a file that is open: the claim's descriptor goes first
                for claim in self._claims:
                    claim.close()
            _place(self.finished, self.path, self.clobber)
        except FileExistsError:
            self.discard()
            raise OutputError(f"cannot finish the output {self.path}: it was created by someone else during the run "
                              "and --no-clobber is set; it was left as it is") from None  # fmt: skip
        except OSError as err:
            self.discard()
            raise write_failure(self.path, "finish", err) from None
        except BaseException:
            self.discard()
            raise
        self.finished = None
        self._release()

    def discard(self) -> None:
        """Remove the temporary files (finished or not); the requested path is untouched."""
        self.finished = None
        self._release()

    def _release(self) -> None:
        for side in self._side:  # GDAL's side files first, while the lock still marks them as ours
            side.unlink(missing_ok=True)
        for claim in reversed(self._claims):
            claim.release()
        self._claims = []


class AtomicGeoTIFFWriter(AtomicFile):
    """Context manager writing windows into a temporary GeoTIFF that becomes ``path`` only on a clean exit.

    ``with AtomicGeoTIFFWriter(path, spec, cog=False) as w: w.write(array, window)``. On an exception inside the
    ``with`` block the temporary file is deleted and the exception propagates; ``path`` is untouched. A write,
    flush, COG copy or verification failure is one :class:`OutputError` line (the temporary files removed).

    ``defer=True`` finishes and verifies the file on a clean exit but renames it only at :meth:`commit` (until then
    :attr:`finished` is the verified temporary file, readable, e.g. by the report); :meth:`discard` removes it.
    The outputs of a run are committed together at its very end, so a later failure (the report) leaves none.
    """

    def __init__(self, path: Path, spec: OutputSpec, cog: bool = False, defer: bool = False,
                 clobber: bool = True) -> None:  # fmt: skip
        super().__init__(path, clobber=clobber)
        self.spec = spec
        self.cog = cog
        self.defer = defer
        self.tmp_cog = self.temporary("cog")
        self._ds: rasterio.io.DatasetWriter | None = None

    def __enter__(self) -> AtomicGeoTIFFWriter:
        s = self.spec
        if not self.path.parent.is_dir():
            raise OutputError(f"output folder does not exist: {self.path.parent}")
        remove_stale_temporaries(self.path)
        try:
            self.claim(self.tmp)
            with gdal_errors.gdal_failure_check(_GdalFailure):
                self._ds = rasterio.open(
                    self.tmp,
                    "w",
                    driver="GTiff",
                    width=s.width,
                    height=s.height,
                    count=s.count,
                    dtype=s.dtype,
                    crs=s.crs,
                    transform=s.transform,
                    nodata=s.nodata,
                    BIGTIFF="IF_SAFER",
                    **(s.creation if s.creation is not None else _creation_options(s.dtype, s.block_height)),
                )
                for i, desc in enumerate(s.descriptions, start=1):
                    if desc:
                        self._ds.set_band_description(i, desc)
                if s.metadata is not None:  # the COG copy keeps only the default domain: fold the others into it
                    apply_metadata(self._ds, folded(s.metadata) if self.cog else s.metadata)
        except (_GdalFailure, OSError) as exc:
            self._abandon()
            raise write_failure(self.path, "create the output file", exc if isinstance(exc, OSError)
                                else str(exc)) from None  # fmt: skip
        except BaseException:
            self._abandon()
            raise
        return self

    def write(self, data: np.ndarray, window: Window) -> None:
        """Write (count, h, w) ``data`` (cast to the spec's dtype) into ``window``."""
        assert self._ds is not None
        try:
            with gdal_errors.gdal_failure_check(_GdalFailure):
                self._ds.write(data.astype(self.spec.dtype, copy=False), window=window)
        except _GdalFailure as exc:
            raise write_failure(self.path, "write the output", str(exc)) from None
        except OSError as exc:
            raise write_failure(self.path, "write the output", exc) from None

    def __exit__(self, exc_type: type | None, exc: BaseException | None, tb: object) -> None:
        if exc_type is not None:
            self._abandon()
            return
        try:
            self._finish()
        except BaseException:
            self._abandon()
            raise
        if not self.defer:
            self.commit()

    def _finish(self) -> None:
        """Close (flush), fsync, verify; with ``cog``, copy to the COG temporary file, fsync and verify that too."""
        s = self.spec
        ds, self._ds = self._ds, None
        try:
            with gdal_errors.gdal_failure_check(_GdalFailure):
                if ds is not None:
                    ds.close()
        except _GdalFailure as exc:
            raise write_failure(self.path, "finish the output", str(exc)) from None
        except OSError as exc:
            raise write_failure(self.path, "finish the output", exc) from None
        self.fsync(self.tmp)
        geometry = {"width": s.width, "height": s.height, "count": s.count, "dtype": s.dtype, "label": self.path}
        verify_geotiff(self.tmp, **geometry)
        final = self.tmp
        if self.cog:
            self.claim(self.tmp_cog)
            try:
                with gdal_errors.gdal_failure_check(_GdalFailure):
                    rasterio.shutil.copy(
                        self.tmp,
                        self.tmp_cog,
                        driver="COG",
                        COMPRESS="DEFLATE",
                        PREDICTOR="YES",
                        BLOCKSIZE=BLOCK,
                        OVERVIEWS="AUTO",
                        OVERVIEW_RESAMPLING="AVERAGE",
                        NUM_THREADS=str(compression_threads()),
                        BIGTIFF="IF_SAFER",
                    )
            except _GdalFailure as exc:
                raise write_failure(self.path, "write the COG copy of", str(exc)) from None
            except OSError as exc:
                raise write_failure(self.path, "write the COG copy of", exc) from None
            self.fsync(self.tmp_cog)
            verify_geotiff(self.tmp_cog, **geometry)
            final = self.tmp_cog
        self.finished = final

    def _abandon(self) -> None:
        if self._ds is not None:
            try:
                self._ds.close()
            except Exception:  # noqa: BLE001 - the file is being thrown away
                pass
            self._ds = None
        self.discard()
