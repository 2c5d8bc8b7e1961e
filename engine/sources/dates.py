"""Acquisition dates from raster metadata, without torch (``engine info``, the pipeline's checks, gap-filling).

GDAL's ``ACQUISITIONDATETIME`` (IMAGERY domain, ISO 8601, what GDAL writes for many satellite products), then
``TIFFTAG_DATETIME`` ("YYYY:MM:DD HH:MM:SS", the TIFF standard tag), then a few common names
(``ACQUISITION_DATE``, ``DATE_ACQUIRED``, ``acquired``). Times without a zone are taken as UTC, which is what
satellite metadata means by them.
"""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import Any

from engine.config import DATE_TAGS, parse_datetime
from engine.errors import InputError

__all__ = ["DATE_TAGS", "dataset_acquisition_date", "days_apart", "read_acquisition_date"]


def days_apart(first: datetime, second: datetime) -> float:
    """Days between two acquisition times, whichever comes first."""
    return abs((second - first).total_seconds()) / 86400


def _date_tag(ds: Any) -> tuple[str, str] | None:
    """(text, tag name) of the first acquisition-date tag an open rasterio dataset has, in :data:`DATE_TAGS` order."""
    domains = [ds.tags(ns="IMAGERY"), ds.tags()]
    for tag in DATE_TAGS:
        for tags in domains:
            if tags.get(tag):
                return tags[tag], tag
    return None


def dataset_acquisition_date(ds: Any) -> tuple[datetime, str] | None:
    """(date, tag name) from an open rasterio dataset's tags, or None when it has none (or an unreadable one)."""
    found = _date_tag(ds)
    if found is None:
        return None
    try:
        return parse_datetime(found[0]), found[1]
    except InputError:
        return None


def read_acquisition_date(path: str | Path) -> datetime:
    """The acquisition date of a raster from its tags (see module docstring); ``InputError`` when it has none."""
    import rasterio

    try:
        with rasterio.open(path) as ds:
            found = _date_tag(ds)
    except rasterio.errors.RasterioIOError as exc:
        raise InputError(f"cannot open {path}: {exc}") from None
    if found is not None:
        return parse_datetime(found[0])
    raise InputError(
        f"{Path(path).name} has no acquisition date in its metadata ({', '.join(DATE_TAGS)}); give the date explicitly"
    )
