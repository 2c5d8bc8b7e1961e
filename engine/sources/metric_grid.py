"""The engine works on a metric grid: the optical image's CRS must be projected in metres.

Why a rule of its own: the tile size, the overlap, the cloud feather and the SAR's ~10 m footprint are all reasoned
in metres-sized pixels, and a geographic CRS (degrees) gives pixels that are neither square nor metres. The rule
and its one-line message live here once; the engine applies it to the optical raster it opens
(:func:`require_metric_crs`), the QGIS plugin to the layer the user picked, before any run
(:func:`metric_crs_problem` with QGIS's facts about the CRS). Standard library only: the plugin imports it in
QGIS's Python.
"""

from __future__ import annotations

from typing import Any

from engine.errors import InputError

METRE_UNITS = ("metre", "metres", "meter", "meters", "m")  # rasterio says "metre", QGIS's encodeUnit "meters"


def metric_crs_problem(name: str, *, geographic: bool, units: str | None) -> str | None:
    """The one-line message when a CRS named ``name`` (``EPSG:4326`` …) is geographic or not in metres, else None."""
    if not geographic and (units or "").strip().lower() in METRE_UNITS:
        return None
    return (f"the optical CRS {name or 'of the optical image'} is not projected in metres; the engine works on a "
            "metric grid: reproject it first (e.g. to its UTM zone)")  # fmt: skip


def require_metric_crs(crs: Any) -> None:
    """Raise :class:`InputError` when ``crs`` (a :class:`rasterio.crs.CRS`) is not projected in metres; a raster
    without CRS is left to :func:`engine.sources.raster.require_georeferenced`, which says so in its own words."""
    if crs is None or not crs:
        return
    name = crs.to_string() if crs.to_epsg() is not None else (crs.to_dict().get("proj") or "given")
    units = None if crs.is_geographic else crs.linear_units
    problem = metric_crs_problem(name, geographic=crs.is_geographic, units=units)
    if problem is not None:
        raise InputError(problem)
