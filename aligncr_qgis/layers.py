"""Map layers ↔ what the engine needs: a GDAL dataset name, band numbers, and checks that catch mistakes early.

The engine reads GDAL datasets, so a layer is usable when GDAL serves it (a file, a file in a zip, a subdataset).
The checks here run before the Run button enables (and before the Processing algorithm spawns anything), because a
wrong band count or a SAR scene over another city is much cheaper to explain here than after a torch import and a
reprojection.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field

from qgis.core import (
    QgsCoordinateReferenceSystem,
    QgsCoordinateTransform,
    QgsMapLayer,
    QgsProject,
    QgsProviderRegistry,
    QgsRasterLayer,
    QgsRectangle,
    QgsUnitTypes,
)
from qgis.PyQt.QtCore import QCoreApplication

from aligncr_qgis.run_options import COVERAGE_WARNING, EDGES, metric_crs_problem

OPTICAL_ROLES = ("B", "G", "R", "NIR")
SAR_ROLES = ("VV", "VH")
# A Sentinel-2 band stack: 13 bands (L1C: B1…B8, B8A, B9, B10, B11, B12) or 12 (L2A, without B10). Either way B2,
# B3, B4 and B8 are bands 2, 3, 4 and 8; bands 1–4 would be coastal aerosol, blue, green and red.
S2_STACK_BANDS = (12, 13)
S2_MAPPING = {"B": 2, "G": 3, "R": 4, "NIR": 8}

# Band-description patterns, checked in order (NIR before R so "near infrared"/"red edge" do not read as red).
_ROLE_PATTERNS: dict[str, list[str]] = {
    "NIR": [r"\bnir\b", r"near[ _-]?infra", r"\bb0?8\b", r"\bnir\d*\b"],
    "B": [r"\bblue\b", r"\bb\b", r"\bb0?2\b"],
    "G": [r"\bgreen\b", r"\bg\b", r"\bb0?3\b"],
    "R": [r"\bred\b(?![ _-]?edge)", r"\br\b", r"\bb0?4\b"],
    "VV": [r"\bvv\b"],
    "VH": [r"\bvh\b"],
}


def tr(text: str) -> str:
    """``text`` in the user's language when a translation is installed (validation messages reach the dialog)."""
    return QCoreApplication.translate("AlignCR", text)


class LayerError(ValueError):
    """A layer cannot be handed to the engine; the message says why in one line."""


# A GDAL dataset name that is no plain file (the engine's engine.sources.resolve.is_gdal_name; the plugin does not
# import it).
_GDAL_NAME = re.compile(r"^(/vsi|[A-Za-z][A-Za-z0-9_]+:)")


def layer_path(layer: QgsMapLayer | None) -> str:
    """What the engine opens for a GDAL raster layer: its local file, or — for a layer GDAL reads from elsewhere
    (``/vsizip/…`` inside an archive, a ``SENTINEL2_L2A:…`` or ``NETCDF:…`` subdataset) — its GDAL dataset name,
    which the engine takes wherever it takes a file. Layers of other providers (WMS, XYZ tiles, WCS, databases) are
    no GDAL dataset: a one-line error says to save them as a GeoTIFF first."""
    if layer is None:
        raise LayerError(tr("no layer chosen"))
    if not isinstance(layer, QgsRasterLayer):
        raise LayerError(tr("layer '{0}' is not a raster layer").format(layer.name()))
    if layer.providerType() != "gdal":
        raise LayerError(tr("layer '{0}' is a {1} layer, which the engine cannot read: save it as a GeoTIFF first "
                            "(Export → Save As…) and pick the saved layer").format(layer.name(),
                                                                                 layer.providerType().upper()))
    parts = QgsProviderRegistry.instance().decodeUri("gdal", layer.source())
    if parts.get("openOptions"):
        raise LayerError(tr("layer '{0}' is opened with GDAL open options, which the engine does not pass on: save it "
                            "as a GeoTIFF first").format(layer.name()))
    source = layer.source().split("|")[0]  # QGIS appends |layername=… / |option:… to GDAL sources
    path = parts.get("path") or source
    if parts.get("vsiPrefix"):
        return f"{parts['vsiPrefix']}{path}{parts.get('vsiSuffix') or ''}"
    if os.path.isfile(path):
        return os.path.abspath(path)  # a layer loaded by a relative name (qgis_process): the engine runs elsewhere
    if _GDAL_NAME.match(source):
        return source
    raise LayerError(tr("layer '{0}' is not a local file ({1})").format(layer.name(), path))


def band_descriptions(layer: QgsRasterLayer) -> list[str]:
    """Display names of the layer's bands ("Band 1: Blue"), 1-based order."""
    provider = layer.dataProvider()
    return [provider.displayBandName(i) for i in range(1, layer.bandCount() + 1)]


def guess_bands(descriptions: list[str], roles: tuple[str, ...]) -> dict[str, int]:
    """Map roles (B/G/R/NIR or VV/VH) to 1-based band numbers from band descriptions; default: bands in order.

    Only a complete, unambiguous match from descriptions is used; otherwise a 12- or 13-band optical layer is read
    as a Sentinel-2 stack (B2, B3, B4, B8: :data:`S2_MAPPING`) and any other the natural order 1, 2, 3, … (the
    PlanetScope 4-band and Sentinel-1 GRD layouts); the user can correct it.
    """
    found: dict[str, int] = {}
    for role in roles:
        for pattern in _ROLE_PATTERNS[role]:
            hits = [
                i + 1
                for i, desc in enumerate(descriptions)
                if re.search(pattern, desc.split(":", 1)[-1].strip().lower()) and (i + 1) not in found.values()
            ]
            if len(hits) == 1:
                found[role] = hits[0]
                break
    if len(found) == len(roles):
        return found
    if roles == OPTICAL_ROLES and len(descriptions) in S2_STACK_BANDS:
        return dict(S2_MAPPING)
    return {role: min(i + 1, max(len(descriptions), 1)) for i, role in enumerate(roles)}


@dataclass
class Issue:
    level: str  # "error" blocks the run, "warning" does not
    message: str


@dataclass
class CheckInputs:
    optical: QgsRasterLayer | None
    sar: QgsRasterLayer | None
    optical_bands: dict[str, int] = field(default_factory=dict)
    sar_bands: dict[str, int] = field(default_factory=dict)
    landcover: QgsRasterLayer | None = None
    mask: QgsRasterLayer | None = None
    reference: QgsRasterLayer | None = None
    extent: QgsRectangle | None = None  # in the optical layer's CRS; None = whole layer
    output: str = ""
    sar_required: bool = True  # False for a model without SAR input (gapfill): no SAR is checked or needed


@dataclass
class CheckResult:
    issues: list[Issue] = field(default_factory=list)
    sar_overlap_percent: float | None = None
    geographic_crs: bool = False  # the optical layer needs reprojecting (the dialog offers it)

    @property
    def ok(self) -> bool:
        return not any(i.level == "error" for i in self.issues)

    def error(self, message: str) -> None:
        self.issues.append(Issue("error", message))

    def warning(self, message: str) -> None:
        self.issues.append(Issue("warning", message))


def overlap_percent(
    target: QgsRasterLayer, other: QgsRasterLayer, project: QgsProject | None = None, area: QgsRectangle | None = None
) -> float:
    """Share (0–100 %) of ``area`` (default: the target layer's extent) covered by ``other``'s extent.

    Extents are compared in the target's CRS through :class:`QgsCoordinateTransform` of the other extent's
    bounding box, which is what the engine's reprojection onto the optical grid will cover.
    """
    base = QgsRectangle(area) if area is not None else target.extent()
    if base.isEmpty() or base.area() <= 0:
        return 0.0
    inter = base.intersect(other_extent(target, other, project))
    if inter.isEmpty():
        return 0.0
    return 100.0 * inter.area() / base.area()


def missing_edges(target: QgsRectangle, other: QgsRectangle) -> str:
    """Where ``other`` leaves ``target`` uncovered, in the engine's words (``along the east edge``;
    engine.align.reader.missing_where): the sides where it stops short by more than 1 % of the extent."""
    inter = target.intersect(other)
    dx, dy = 0.01 * target.width(), 0.01 * target.height()
    short = (inter.yMaximum() < target.yMaximum() - dy, inter.yMinimum() > target.yMinimum() + dy,
             inter.xMinimum() > target.xMinimum() + dx, inter.xMaximum() < target.xMaximum() - dx)
    sides = [edge for edge, gap in zip(EDGES, short) if gap]
    if not sides:
        return "in gaps inside the image"
    return f"along the {' and '.join(sides)} edge{'s' if len(sides) > 1 else ''}"


def other_extent(target: QgsRasterLayer, other: QgsRasterLayer, project: QgsProject | None = None) -> QgsRectangle:
    """``other``'s extent in ``target``'s CRS (the bounding box of its transformed extent)."""
    extent = other.extent()
    if other.crs() != target.crs():
        extent = QgsCoordinateTransform(other.crs(), target.crs(), project or QgsProject.instance()
                                        ).transformBoundingBox(extent)
    return extent


def partial_cover(target: QgsRasterLayer, other: QgsRasterLayer, pct: float, area: QgsRectangle | None = None,
                  project: QgsProject | None = None) -> str | None:
    """The "covers only …, missing along …" part of a warning when ``other`` covers less than the engine's
    :data:`COVERAGE_WARNING` of ``area`` (default the target's extent) — no news for a sliver at an edge (issue 28);
    None when it covers enough or nothing at all."""
    if pct <= 0.0 or pct >= 100.0 * COVERAGE_WARNING:
        return None
    base = QgsRectangle(area) if area is not None else target.extent()
    return tr("covers only {0:.1f} % of the optical area, missing {1}").format(
        pct, missing_edges(base, other_extent(target, other, project)))


def bounds_argument(extent: QgsRectangle) -> str:
    """The engine's ``--bounds`` for an extent in the optical layer's CRS (the engine snaps it outwards to the
    optical pixels and aligns every other input onto that window)."""
    return ",".join(repr(v) for v in (extent.xMinimum(), extent.yMinimum(), extent.xMaximum(), extent.yMaximum()))


def metric_problem(crs: QgsCoordinateReferenceSystem) -> str | None:
    """The engine's one-line refusal of a CRS that is not projected in metres (:mod:`engine.sources.metric_grid`, the
    rule the engine applies to the optical raster), asked with QGIS's facts about ``crs``; None when it is fine."""
    if not crs.isValid():
        return None
    return metric_crs_problem(crs.authid() or crs.description(), geographic=crs.isGeographic(),
                              units=QgsUnitTypes.encodeUnit(crs.mapUnits()))  # fmt: skip


def check_inputs(inp: CheckInputs, project: QgsProject | None = None) -> CheckResult:
    """All pre-run checks; errors block the run, warnings are shown but allow it."""
    res = CheckResult()
    opt, sar = inp.optical, inp.sar
    if opt is None:
        res.error(tr("Choose the cloudy optical layer."))
    if sar is None and inp.sar_required:
        res.error(tr("Choose the Sentinel-1 SAR layer."))
    for label, layer in (("Optical", opt), ("SAR", sar), ("Land cover", inp.landcover), ("Cloud mask", inp.mask),
                         ("Reference", inp.reference)):
        if layer is not None:
            check_layer(res, label, layer)
    if opt is not None:
        if opt.bandCount() < 4:
            res.error(tr("Optical layer has {0} band(s); B, G, R and NIR are needed (4 bands).")
                      .format(opt.bandCount()))
        _check_mapping(res, "Optical", inp.optical_bands, OPTICAL_ROLES, opt.bandCount())
        problem = metric_problem(opt.crs())
        if problem is not None:
            res.geographic_crs = True
            res.error(problem[:1].upper() + problem[1:] + ".")
        _check_s2_stack(res, opt, inp.optical_bands)
    if sar is not None:
        _check_sar_bands(res, sar, inp.sar_bands)
    if opt is not None and opt.crs().isValid():
        area = None
        if inp.extent is not None:
            area = opt.extent().intersect(inp.extent)
            if area.isEmpty():
                res.error(tr("The processing extent does not intersect the optical layer."))
                area = None
        for label, layer in (("SAR", sar), ("Land cover", inp.landcover), ("Cloud mask", inp.mask),
                             ("Reference", inp.reference)):
            if layer is None or not layer.crs().isValid():
                continue
            pct = overlap_percent(opt, layer, project, area)
            if label == "SAR":
                res.sar_overlap_percent = pct
            if pct <= 0.0:
                # Land cover only refines the report; a mask or reference that misses the scene is a mistake.
                report = res.warning if label == "Land cover" else res.error
                report(f"{label} layer does not overlap the optical layer (0 % overlap).")
            elif partial_cover(opt, layer, pct, area, project):
                res.warning(tr("{0} layer {1}; the rest is filled as nodata.")
                            .format(label, partial_cover(opt, layer, pct, area, project)))
    out = inp.output.strip()
    if not out:
        res.error(tr("Choose an output file."))
    else:
        folder = os.path.dirname(os.path.abspath(out))
        if not os.path.isdir(folder):
            res.error(tr("Output folder {0} does not exist.").format(folder))
        elif not os.access(folder, os.W_OK):
            res.error(tr("Output folder {0} is not writable.").format(folder))
        if not out.lower().endswith((".tif", ".tiff")):
            res.error(tr("The output must be a GeoTIFF (.tif)."))
        for layer in (opt, sar):
            try:
                if layer is not None and os.path.abspath(layer_path(layer)) == os.path.abspath(out):
                    res.error(tr("The output would overwrite an input layer."))
            except LayerError:
                pass
    return res


def check_layer(res: CheckResult, label: str, layer: QgsRasterLayer) -> bool:
    """A chosen layer is a local file with a CRS (errors into ``res``); returns whether its CRS is valid."""
    try:
        layer_path(layer)
    except LayerError as exc:
        res.error(f"{label}: {exc}.")
    if not layer.crs().isValid():
        res.error(tr("{0} layer '{1}' has no coordinate reference system.").format(label, layer.name()))
        return False
    return True


def _check_sar_bands(res: CheckResult, sar: QgsRasterLayer, mapping: dict[str, int]) -> None:
    """VV and VH: two bands, or two picked from a few. A layer of 4 bands or more is an optical image chosen by
    mistake — the engine would refuse it only after a torch import (issue 28); so would it a 3-band layer read as
    bands 1, 2 (its rule: exactly two bands unless the SAR bands are picked)."""
    count = sar.bandCount()
    if count < 2:
        res.error(tr("SAR layer has {0} band(s); VV and VH are needed (2 bands).").format(count))
    elif count >= 4:
        res.error(tr("SAR layer '{0}' has {1} bands: it looks like an optical image. Choose the Sentinel-1 layer "
                     "(2 bands, VV and VH).").format(sar.name(), count))
    elif count != 2 and tuple(mapping.get(r, i + 1) for i, r in enumerate(SAR_ROLES)) == (1, 2):
        res.error(tr("SAR layer '{0}' has {1} bands: choose which hold VV and VH (not bands 1 and 2 by default).")
                  .format(sar.name(), count))
    _check_mapping(res, "SAR", mapping, SAR_ROLES, count)


def _check_s2_stack(res: CheckResult, opt: QgsRasterLayer, mapping: dict[str, int]) -> None:
    """A 12/13-band layer read as bands 1–4 is a Sentinel-2 stack read as coastal aerosol, blue, green, red."""
    if opt.bandCount() in S2_STACK_BANDS and tuple(mapping.get(r, 0) for r in OPTICAL_ROLES) == (1, 2, 3, 4):
        res.warning(tr("Optical layer has {0} bands, like a Sentinel-2 stack: bands 1–4 are then coastal aerosol, "
                       "blue, green and red. Map B, G, R, NIR to B2, B3, B4, B8 (bands 2, 3, 4, 8) unless the layer "
                       "is another sensor's.").format(opt.bandCount()))


def _check_mapping(res: CheckResult, label: str, mapping: dict[str, int], roles: tuple[str, ...], count: int) -> None:
    if not mapping:
        return
    bands = [mapping.get(r, 0) for r in roles]
    if any(b < 1 or b > count for b in bands):
        res.error(tr("{0} band mapping refers to a band the layer does not have (it has {1}).").format(label, count))
    elif len(set(bands)) != len(bands):
        pairs = ", ".join(f"{r}={b}" for r, b in zip(roles, bands))
        res.error(tr("{0} band mapping uses the same band twice ({1}).").format(label, pairs))
