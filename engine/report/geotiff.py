"""Atomic, georeferenced GeoTIFF output for the report layers and the NDVI command.

A layer is written to a hidden temporary file in the destination folder (:class:`engine.writer.AtomicFile`:
claimed, verified) and renamed over the target only when every window has been written, so a crash or a cancel
(:class:`~engine.errors.Cancelled` between windows) never leaves a truncated GeoTIFF that QGIS would happily
open. Same folder → ``os.replace`` is atomic on POSIX and Windows. Outputs are tiled 256×256, DEFLATE-compressed
and BigTIFF when needed, so a 20k × 20k layer is fine.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import rasterio
from rasterio.io import DatasetWriter

from engine.errors import OutputError
from engine.gdal_errors import gdal_failure_check
from engine.writer import AtomicFile, remove_stale_temporaries, verify_geotiff, write_failure

BLOCK = 256


def layer_profile(
    *, width: int, height: int, crs: Any, transform: Any, dtype: str, count: int = 1, nodata: float | None = None
) -> dict[str, Any]:
    """A GeoTIFF creation profile on the given grid."""
    profile: dict[str, Any] = {
        "driver": "GTiff",
        "width": width,
        "height": height,
        "count": count,
        "dtype": dtype,
        "crs": crs,
        "transform": transform,
        "nodata": nodata,
        "compress": "deflate",
        "BIGTIFF": "IF_SAFER",
    }
    if width >= BLOCK and height >= BLOCK:
        profile.update(tiled=True, blockxsize=BLOCK, blockysize=BLOCK)
    if dtype.startswith("float"):
        profile["predictor"] = 3
    return profile


class _CheckedWriter:
    """A :class:`DatasetWriter` whose writes raise one :class:`OutputError` line on a GDAL failure (everything
    else is the dataset's own)."""

    def __init__(self, ds: DatasetWriter, path: Path) -> None:
        self._ds = ds
        self._path = path

    def write(self, *args: Any, **kwargs: Any) -> None:
        with gdal_failure_check(lambda message: write_failure(self._path, "write", message)):
            self._ds.write(*args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._ds, name)


@contextmanager
def atomic_geotiff(path: Path | str, profile: dict[str, Any]) -> Iterator[DatasetWriter]:
    """Open ``path`` for writing through a temporary file; rename into place on success, delete on failure.

    The same guarantees as the engine's output (:mod:`engine.writer`): a claimed temporary file (stale ones of a
    dead writer removed first), GDAL write and flush failures raised as one :class:`OutputError` line, the file
    fsync-ed and verified before the rename."""
    path = Path(path)
    if not path.parent.is_dir():
        raise OutputError(f"output folder does not exist: {path.parent}")
    remove_stale_temporaries(path)
    target = AtomicFile(path)
    target.claim(target.tmp)
    try:
        with gdal_failure_check(lambda message: write_failure(path, "create", message)):
            dst = rasterio.open(target.tmp, "w", **profile)
        try:
            yield _CheckedWriter(dst, path)  # type: ignore[misc]
        except BaseException:
            dst.close()
            raise
        with gdal_failure_check(lambda message: write_failure(path, "finish", message)):
            dst.close()
        target.fsync(target.tmp)
        verify_geotiff(target.tmp, width=profile["width"], height=profile["height"], count=profile.get("count", 1),
                       dtype=profile["dtype"], label=path)  # fmt: skip
        target.finished = target.tmp
        target.commit()
    finally:
        target.discard()  # a no-op after the commit
