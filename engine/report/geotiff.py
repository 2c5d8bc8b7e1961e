"""Atomic, georeferenced GeoTIFF output for the report layers and the NDVI command.

A layer is written to a hidden temporary file in the destination folder and renamed over the target only when
every window has been written, so a crash or a cancel (:class:`~engine.errors.Cancelled` between windows) never
leaves a truncated GeoTIFF that QGIS would happily open. Same folder → ``os.replace`` is atomic on POSIX and
Windows. Outputs are tiled 256×256, DEFLATE-compressed and BigTIFF when needed, so a 20k × 20k layer is fine.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import rasterio
from rasterio.io import DatasetWriter

from engine.errors import OutputError

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


@contextmanager
def atomic_geotiff(path: Path | str, profile: dict[str, Any]) -> Iterator[DatasetWriter]:
    """Open ``path`` for writing through a temporary file; rename into place on success, delete on failure."""
    path = Path(path)
    if not path.parent.is_dir():
        raise OutputError(f"output folder does not exist: {path.parent}")
    tmp = path.with_name(f".{path.name}.{os.getpid()}.partial.tif")
    try:
        dst = rasterio.open(tmp, "w", **profile)
    except rasterio.errors.RasterioIOError as exc:
        raise OutputError(f"cannot write {path}: {exc}") from exc
    try:
        with dst:
            yield dst
        try:
            os.replace(tmp, path)
        except OSError as exc:
            raise OutputError(f"cannot write {path}: {exc}") from exc
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
