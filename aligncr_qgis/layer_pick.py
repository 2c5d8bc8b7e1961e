"""Which loaded layers the dialog proposes: the cloudy optical by what it shows, the SAR by what it covers.

Why not simply the active layer or the first layer by name (issue 28): an analyst loads the cloud-free reference last
(so it is active) and the dialog took it as "the cloudy optical", said "Ready to run" and named the output
``…_cloudfree_declouded.tif``; the SAR picker took the first 2-band layer by name, 0 % over the scene, while one
covering 99.8 % was loaded. The rules (also in the README's QGIS section and docs/qgis.md):

1. **Cloudy optical**: among the raster layers with 4 bands or more that overlap a 2-band (SAR) layer — all of the
   4+-band layers when none does — the one with the most cloud in a thumbnail check (:func:`cloud_fraction`). A
   layer that looks clear (under :data:`CLEAR_PERCENT`) is never picked while a cloudier one is loaded; between
   equally cloudy layers the active layer wins, then the layer order.
2. **SAR**: among the 2-band layers, the one covering most of the chosen optical layer; between equal overlaps
   (within :data:`OVERLAP_TIE`) the one acquired nearest to the optical when both dates are known, then the layer
   order.

The thumbnail check runs in QGIS's process, without torch or numpy: each band is read as a ≤ 64-pixel-wide
decimated block through the layer's GDAL provider (overviews when the file has them) and scored with the engine's
brightness rule (:mod:`engine.align.cloudmask`: bright in blue, in the visible sum and in NIR, and spectrally flat;
threshold ``T_CL``) without its 7×7 smoothing — a thumbnail pixel already stands for a block of the scene. Asking
the engine (``engine info``) would cost a child process and a torch import per layer each time the dialog opens;
this costs a few milliseconds and only has to rank layers, not draw a mask.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Iterable
from datetime import datetime

from qgis.core import Qgis, QgsRasterLayer

from aligncr_qgis import layers as L
from aligncr_qgis.run_options import DATE_TAGS, InputError, parse_datetime

THUMB = 64  # pixels on the long side of the thumbnail
T_CL = 0.2  # the engine's cloud-score threshold (engine.align.cloudmask.T_CL)
DN_SCALE = 10000.0  # reflectance × 10⁴ (engine.sources.normalise.OPTICAL_SCALE)
CLEAR_PERCENT = 0.5  # a layer with less detected cloud than this looks cloud-free
OVERLAP_TIE = 0.5  # percentage points: SAR overlaps closer than this are equal
_DATE_IN_NAME = re.compile(r"(20\d{2})-?(\d{2})-?(\d{2})")
_FLOAT_TYPES = (Qgis.DataType.Float32, Qgis.DataType.Float64)
RESULT_PROPERTY = "aligncr/result"  # set on the layers a run adds: a result is never proposed as an input


def _rescale(x: float, lo: float, hi: float) -> float:
    return min(max((x - lo) / (hi - lo), 0.0), 1.0)


def cloud_score(b: float, g: float, r: float, nir: float) -> float:
    """The engine's per-pixel cloud likelihood of B, G, R, NIR reflectance in [0, 1] (engine.align.cloudmask)."""
    vis = (b + g + r) / 3.0
    whiteness = (abs(b - vis) + abs(g - vis) + abs(r - vis)) / (3.0 * max(vis, 1e-6))
    return min(_rescale(b, 0.1, 0.5), _rescale(b + g + r, 0.2, 0.8), _rescale(nir, 0.15, 0.5),
               1.0 - _rescale(whiteness, 0.1, 0.3))


def thumbnail(layer: QgsRasterLayer, bands: Iterable[int]) -> list[list[float | None]]:
    """Each band's values on a ≤ :data:`THUMB`-pixel decimated grid of the whole layer (None = no data)."""
    provider = layer.dataProvider()
    width, height = max(layer.width(), 1), max(layer.height(), 1)
    scale = min(1.0, THUMB / max(width, height))
    cols, rows = max(1, round(width * scale)), max(1, round(height * scale))
    out = []
    for band in bands:
        block = provider.block(band, layer.extent(), cols, rows)
        values: list[float | None] = []
        for i in range(rows * cols):
            row, col = divmod(i, cols)
            value = block.value(row, col)
            values.append(None if block.isNoData(row, col) or math.isnan(value) else value)
        out.append(values)
    return out


def _reflectance_scale(values: list[float], floating: bool) -> float:
    """The engine's optical units rule (engine.sources.normalise.detect_optical_scale) on the thumbnail."""
    if not floating or not values:
        return DN_SCALE
    ordered = sorted(values)
    return 1.0 if ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))] <= 1.5 else DN_SCALE


def cloud_fraction(layer: QgsRasterLayer) -> float | None:
    """Percent of the layer's valid thumbnail pixels that the engine's rule calls cloud, read through the band
    mapping the dialog would propose (a Sentinel-2 stack: B2, B3, B4, B8); None when it cannot be read."""
    if layer.bandCount() < 4 or not layer.isValid():
        return None
    guess = L.guess_bands(L.band_descriptions(layer), L.OPTICAL_ROLES)
    try:
        b, g, r, nir = thumbnail(layer, [guess[role] for role in L.OPTICAL_ROLES])
    except Exception:  # noqa: BLE001 - a layer the provider cannot read is simply not ranked
        return None
    pixels = [p for p in zip(b, g, r, nir) if None not in p]
    if not pixels:
        return None
    floating = layer.dataProvider().dataType(guess["B"]) in _FLOAT_TYPES
    scale = _reflectance_scale([v for p in pixels for v in p], floating)
    cloudy = sum(cloud_score(*(v / scale for v in p)) > T_CL for p in pixels)
    return 100.0 * cloudy / len(pixels)


def acquisition_date(layer: QgsRasterLayer) -> datetime | None:
    """The layer's acquisition time: the engine's date tags (engine.sources.dates), else a YYYYMMDD in its file
    name (Sentinel-1/2 product names carry one); None when neither says."""
    try:
        path = L.layer_path(layer)
    except L.LayerError:
        return None
    try:
        from osgeo import gdal

        ds = gdal.Open(path)
        domains = [ds.GetMetadata("IMAGERY") or {}, ds.GetMetadata() or {}] if ds is not None else []
        ds = None
    except Exception:  # noqa: BLE001 - metadata is a tie-breaker only
        domains = []
    for tag in DATE_TAGS:
        for tags in domains:
            if tags.get(tag):
                try:
                    return parse_datetime(tags[tag])
                except InputError:
                    continue
    found = _DATE_IN_NAME.search(os.path.basename(path))
    try:
        return parse_datetime("-".join(found.groups())) if found else None
    except InputError:
        return None


class LayerPicker:
    """The rules of the module docstring over the project's raster layers, with each layer's cloud fraction read
    once (by layer id and source) however often the dialog asks."""

    def __init__(self) -> None:
        self._clouds: dict[tuple[str, str], float | None] = {}

    def cloud(self, layer: QgsRasterLayer) -> float | None:
        key = (layer.id(), layer.source())
        if key not in self._clouds:
            self._clouds[key] = cloud_fraction(layer)
        return self._clouds[key]

    def optical(self, rasters: list[QgsRasterLayer], active: QgsRasterLayer | None = None) -> QgsRasterLayer | None:
        """Rule 1: the cloudiest 4+-band layer over a SAR layer."""
        candidates = [lyr for lyr in rasters if lyr.bandCount() >= 4 and lyr.crs().isValid() and not is_result(lyr)]
        sars = sar_candidates(rasters)
        over_sar = [lyr for lyr in candidates if any(L.overlap_percent(lyr, s) > 0.0 for s in sars)]
        candidates = over_sar or candidates
        if not candidates:
            return None

        def rank(item: tuple[int, QgsRasterLayer]) -> tuple[float, bool, int]:
            index, layer = item
            cloud = self.cloud(layer)
            return (round(cloud if cloud is not None else -1.0, 1), layer == active, -index)

        return max(enumerate(candidates), key=rank)[1]

    def looks_clear_beside_cloudier(self, layer: QgsRasterLayer, rasters: list[QgsRasterLayer]) -> float | None:
        """The layer's cloud percent when it looks cloud-free while a cloudier 4+-band layer is loaded (the
        reference picked as the cloudy image); else None."""
        mine = self.cloud(layer)
        if mine is None or mine >= CLEAR_PERCENT:
            return None
        others = [self.cloud(o) for o in rasters if o != layer and o.bandCount() >= 4]
        return mine if any(c is not None and c >= CLEAR_PERCENT for c in others) else None


def is_result(layer: QgsRasterLayer) -> bool:
    """A layer an Align-CR run added (the declouded image looks as cloudy as its input in the thumbnail of a
    model that keeps the clear pixels, and must not become the next run's input)."""
    return bool(layer.customProperty(RESULT_PROPERTY, False))


def sar_candidates(rasters: list[QgsRasterLayer]) -> list[QgsRasterLayer]:
    """The layers that can be a Sentinel-1 VV, VH raster: exactly two bands and a CRS."""
    return [lyr for lyr in rasters if lyr.bandCount() == 2 and lyr.crs().isValid()]


def pick_sar(rasters: list[QgsRasterLayer], optical: QgsRasterLayer | None) -> QgsRasterLayer | None:
    """Rule 2: the 2-band layer covering most of ``optical`` (nearest date on a tie), else the first 2-band one."""
    sars = sar_candidates(rasters)
    if optical is None or not optical.crs().isValid() or not sars:
        return sars[0] if sars else None
    when = acquisition_date(optical)

    def rank(item: tuple[int, QgsRasterLayer]) -> tuple[float, float, int]:
        index, layer = item
        overlap = L.overlap_percent(optical, layer)
        other = acquisition_date(layer) if when is not None else None
        gap = abs((other - when).total_seconds()) if other is not None and when is not None else math.inf
        return (math.floor(overlap / OVERLAP_TIE), -gap, -index)

    return max(enumerate(sars), key=rank)[1]
