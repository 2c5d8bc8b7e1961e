"""What the output GeoTIFF says about itself: the input's metadata carried over, and how it was made.

Why: a declouded scene is still *that* acquisition — its date, sensor tags, band units and scale/offset are the
input's, and later steps read them (``gapfill`` takes acquisition times from the tags; a time series stacks scenes
by date). Without copying them a declouded image could not stand in for the original. And an analyst who finds
the file months later must be able to tell that it is a reconstruction, by which model and weights, from which
SAR, with which settings — so those go into ``ALIGNCR_*`` tags of the default domain (``gdalinfo`` shows them;
QGIS shows them under *Layer Properties ▸ Information*). File names only, not full paths: a shared file should not
reveal the producer's folders. The weights are identified by their SHA-256, which names them exactly.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import rasterio

from engine import __version__

SOFTWARE = f"Align-CR engine {__version__}"
COPIED_DOMAINS = ("", "IMAGERY")  # "" = the default domain; IMAGERY holds GDAL's standard acquisition tags
_GDAL_OWN = {"AREA_OR_POINT"}  # written by GDAL from the raster itself, not copied


@dataclass
class RasterMetadata:
    """Tags per domain, band tags, scales/offsets and units of a raster, as the writer applies them."""

    tags: dict[str, dict[str, str]] = field(default_factory=dict)  # domain ("" = default) → tags
    band_tags: list[dict[str, str]] = field(default_factory=list)
    scales: tuple[float, ...] | None = None
    offsets: tuple[float, ...] | None = None
    units: tuple[str, ...] | None = None


def read_metadata(ds: rasterio.io.DatasetReader) -> RasterMetadata:
    """The metadata of ``ds`` that describes its acquisition and units (what a copy of its pixels should keep)."""
    tags = {}
    for domain in COPIED_DOMAINS:
        found = ds.tags(ns=domain or None)
        found = {k: v for k, v in found.items() if k not in _GDAL_OWN}
        if found:
            tags[domain] = found
    band_tags = [dict(ds.tags(i)) for i in range(1, ds.count + 1)]
    scales = tuple(ds.scales) if any(s not in (None, 1.0) for s in ds.scales) else None
    offsets = tuple(ds.offsets) if any(o not in (None, 0.0) for o in ds.offsets) else None
    units = tuple(u or "" for u in ds.units) if any(ds.units) else None
    return RasterMetadata(tags, band_tags, scales, offsets, units)


def weights_id(path: Path) -> str:
    """``name sha256:<first 16 hex>`` of a weights file."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return f"{Path(path).name} sha256:{h.hexdigest()[:16]}"


def processing_tags(
    *,
    model: str,
    only_masked_cloud: bool,
    weights: Path | None,
    inputs: dict[str, Path | None],
    settings: dict[str, Any],
    now: datetime | None = None,
) -> dict[str, str]:
    """The ``ALIGNCR_*`` tags (and TIFFTAG_SOFTWARE) of an output: model, weights, input names, settings, time.

    ``only_masked_cloud``: the model's output replaced only the pixels of the cloud mask (``--only-cloudy``, or a
    model that fills only the cloud), so the product line says which pixels are still as acquired.
    """
    names = {role: Path(p).name for role, p in inputs.items() if p is not None}
    product = ("cloud-removed image: pixels under the cloud mask reconstructed by the model, the others as acquired"
               if only_masked_cloud else "cloud-removed image: the model's reconstruction wherever it had its inputs")
    return {
        "TIFFTAG_SOFTWARE": SOFTWARE,
        "ALIGNCR_PRODUCT": product,
        "ALIGNCR_MODEL": model,
        "ALIGNCR_WEIGHTS": weights_id(weights) if weights is not None else "none (model without trained weights)",
        "ALIGNCR_INPUTS": json.dumps(names, sort_keys=True),
        "ALIGNCR_SETTINGS": json.dumps(settings, sort_keys=True, default=str),
        "ALIGNCR_PROCESSED": (now or datetime.now(UTC)).isoformat(timespec="seconds"),
    }


def with_processing(meta: RasterMetadata, tags: dict[str, str]) -> RasterMetadata:
    """``meta`` with ``tags`` added to (and overriding in) the default domain."""
    merged = {domain: dict(values) for domain, values in meta.tags.items()}
    merged[""] = {**merged.get("", {}), **tags}
    return RasterMetadata(merged, [dict(t) for t in meta.band_tags], meta.scales, meta.offsets, meta.units)


def folded(meta: RasterMetadata) -> RasterMetadata:
    """``meta`` with the other domains' tags also in the default domain (where it lacks them).

    GDAL's COG driver (3.6) copies only the default domain, so a COG output would lose its IMAGERY acquisition
    time; folded, the time survives where every reader (``gdalinfo``,
    :func:`engine.sources.dates.read_acquisition_date`) still finds it.
    """
    default = dict(meta.tags.get("", {}))
    for tags in meta.tags.values():
        for key, value in tags.items():
            default.setdefault(key, value)
    return RasterMetadata({**meta.tags, "": default}, meta.band_tags, meta.scales, meta.offsets, meta.units)


def apply(ds: rasterio.io.DatasetWriter, meta: RasterMetadata) -> None:
    """Write ``meta`` into an open output dataset (bands beyond the input's are left alone)."""
    for domain, tags in meta.tags.items():
        if tags:
            ds.update_tags(ns=domain or None, **tags)
    for i, tags in enumerate(meta.band_tags[: ds.count], start=1):
        if tags:
            ds.update_tags(i, **tags)
    if meta.scales is not None and len(meta.scales) == ds.count:
        ds.scales = meta.scales
    if meta.offsets is not None and len(meta.offsets) == ds.count:
        ds.offsets = meta.offsets
    if meta.units is not None and len(meta.units) == ds.count:
        ds.units = meta.units
