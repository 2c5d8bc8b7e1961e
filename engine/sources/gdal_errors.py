"""GDAL's failures that rasterio only logs, turned into exceptions.

Why: GDAL writes GeoTIFF blocks lazily — from its block cache when the cache is full and, above all, when the
dataset is closed. rasterio raises for a failed call it wraps (``ds.write`` when the write itself fails), but a
failure while the cache is flushed at ``close()`` (disk full, quota, an I/O error on a network share) is only
*reported*: to Python logging as ``INFO: GDAL signalled an error`` in the thread that entered ``rasterio.Env``,
or as ``ERROR 1: …`` on stderr in any other thread (rasterio pushes its handler per thread). The close returns
normally and a truncated file is left behind. (The hostile-input review of issue 15: disk full while finishing the
file gave exit 0 and a corrupt GeoTIFF under the requested name.)

GDAL keeps the last error of each thread (``CPLGetLastErrorType`` / ``CPLGetLastErrorMsg``), whoever handled it.
:func:`gdal_failure_check` resets it before an operation and raises if the operation left a failure behind. The
functions are looked up in the GDAL library rasterio uses (the copy its wheel bundles, else the one loaded in
the process, found through ``/proc/self/maps`` on Linux); where it cannot be found the check is a no-op and the writer's
verification of the finished file (:func:`engine.outputs.writer.verify_geotiff`) is what catches a broken file.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import logging
import os
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from engine.errors import one_line

log = logging.getLogger("engine")

CE_FAILURE = 3  # CPLErr: CE_None 0, CE_Debug 1, CE_Warning 2, CE_Failure 3, CE_Fatal 4


def _loaded_gdal_paths() -> list[str]:
    """Paths of GDAL libraries mapped into this process (Linux), most specific first."""
    found: list[str] = []
    try:
        with open("/proc/self/maps", encoding="utf-8", errors="replace") as f:
            for line in f:
                path = line.rsplit(None, 1)[-1] if "/" in line else ""
                if path.startswith("/") and Path(path).name.startswith("libgdal") and path not in found:
                    found.append(path)
    except OSError:
        pass
    return found


def _bundled_gdal_paths() -> list[str]:
    """GDAL libraries shipped inside the rasterio wheel (``rasterio.libs``, ``.dylibs``) or beside it."""
    try:
        import rasterio
    except ImportError:
        return []
    pkg = Path(rasterio.__file__).resolve().parent
    out: list[str] = []
    for folder in (pkg.parent / "rasterio.libs", pkg / ".dylibs", pkg):
        if not folder.is_dir():
            continue
        for p in sorted(folder.iterdir()):
            name = p.name.lower()
            if name.startswith(("libgdal", "gdal")) and (".so" in name or name.endswith((".dylib", ".dll"))):
                out.append(str(p))
    return out


@functools.cache
def _library() -> ctypes.CDLL | None:
    """The GDAL library rasterio uses, with the error functions typed; None when it cannot be found."""
    import rasterio  # noqa: F401 - loads GDAL, so /proc/self/maps lists it

    # rasterio's own copy first: a process may hold two GDALs (QGIS's osgeo links the system one), and the error
    # state to read is that of the library rasterio calls.
    loaded = [os.path.realpath(p) for p in _loaded_gdal_paths()] if sys.platform.startswith("linux") else []
    bundled = [os.path.realpath(p) for p in _bundled_gdal_paths()]
    candidates = [p for p in bundled if p in loaded or not loaded] + [p for p in loaded if p not in bundled]
    name = ctypes.util.find_library("gdal")
    if name:
        candidates.append(name)
    for path in candidates:
        try:
            lib = ctypes.CDLL(path)
            lib.CPLGetLastErrorType.restype = ctypes.c_int
            lib.CPLGetLastErrorMsg.restype = ctypes.c_char_p
            lib.CPLErrorReset.restype = None
        except (OSError, AttributeError):
            continue
        return lib
    log.debug("GDAL's error functions not found: write failures are caught by verifying the file only")
    return None


def available() -> bool:
    """True when GDAL's per-thread last error can be read here."""
    return _library() is not None


def reset() -> None:
    lib = _library()
    if lib is not None:
        lib.CPLErrorReset()


def last_failure() -> str | None:
    """The message of the last GDAL failure in this thread since :func:`reset`, or None."""
    lib = _library()
    if lib is None or lib.CPLGetLastErrorType() < CE_FAILURE:
        return None
    raw = lib.CPLGetLastErrorMsg() or b""
    return raw.decode("utf-8", errors="replace").strip() or "unknown GDAL error"


@contextmanager
def gdal_failure_check(on_failure: Callable[[str], Exception]) -> Iterator[None]:
    """Run the block; raise ``on_failure(message)`` if GDAL reported a failure in this thread meanwhile. A rasterio
    exception raised by the block is converted the same way; other exceptions pass unchanged."""
    from rasterio.errors import RasterioError

    reset()
    try:
        yield
    except RasterioError as exc:
        raise on_failure(one_line(exc)) from None
    except Exception as exc:
        if type(exc).__module__.startswith("rasterio"):  # rasterio._err.CPLE_* (not RasterioError subclasses)
            raise on_failure(one_line(exc)) from None
        raise
    message = last_failure()
    if message is not None:
        reset()
        raise on_failure(message)
