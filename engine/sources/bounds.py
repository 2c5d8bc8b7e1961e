"""``--bounds``: process one window of the optical image, given in any CRS.

Why in the engine: the plugin used to clip every input with GDAL virtual rasters before calling the engine (twice:
dialog and Processing), so the CLI, batch jobs and scripts had no way to do the same. Here the window is taken in
the optical image's own pixels: the bounds are transformed to the optical CRS (their bounding box, densified
edges), snapped *outwards* to the optical pixel grid and clipped to the image, and the optical raster is read
through a virtual raster of that window (nothing is copied or resampled). Everything else — SAR, land cover,
mask, extra dates, DEM — is aligned onto the optical grid by the pipeline as before, so it follows the window by
itself; the cloud-free reference, which must share the optical grid, gets the same window. The output is the
window, georeferenced (its transform is the optical's, shifted to the window's corner).
"""

from __future__ import annotations

import math
from typing import Any
from xml.sax.saxutils import escape

import rasterio
from rasterio.windows import Window

from engine.config import Bounds
from engine.errors import InputError


def bounds_window(ds: rasterio.io.DatasetReader, bounds: Bounds) -> Window:
    """The pixels of ``ds`` that ``bounds`` touches, snapped outwards to whole pixels; InputError when none."""
    col0, row0, col1, row1 = _snapped(ds, bounds)
    col0, row0, col1, row1 = max(0, col0), max(0, row0), min(ds.width, col1), min(ds.height, row1)
    if col1 <= col0 or row1 <= row0:
        raise InputError(f"--bounds {bounds} does not cover any pixel of the optical image ({ds.width}×{ds.height} "
                         f"px, bounds {', '.join(f'{v:.6g}' for v in ds.bounds)} in its CRS)")  # fmt: skip
    return Window(col0, row0, col1 - col0, row1 - row0)


def _snapped(ds: rasterio.io.DatasetReader, bounds: Bounds) -> tuple[int, int, int, int]:
    """``bounds`` in ``ds``'s pixels, snapped outwards, not clipped: (col0, row0, col1, row1)."""
    xmin, ymin, xmax, ymax = _in_crs(bounds, ds.crs)
    inverse = ~ds.transform
    cols, rows = zip(*(inverse * (x, y) for x in (xmin, xmax) for y in (ymin, ymax)))
    eps = 1e-6  # a bound on a pixel edge stays on it despite floating-point noise
    return (math.floor(min(cols) + eps), math.floor(min(rows) + eps), math.ceil(max(cols) - eps),
            math.ceil(max(rows) - eps))  # fmt: skip


def outside_note(ds: rasterio.io.DatasetReader, bounds: Bounds, window: Window) -> str | None:
    """The warning for ``--bounds`` that leave the optical image by more than a pixel (the output is then only the
    overlap, smaller than asked: issue 25 found it cut silently), else None."""
    col0, row0, col1, row1 = _snapped(ds, bounds)
    asked_w, asked_h = col1 - col0, row1 - row0
    if asked_w - int(window.width) <= 1 and asked_h - int(window.height) <= 1:
        return None
    share = 100.0 * int(window.width) * int(window.height) / max(asked_w * asked_h, 1)
    return (f"--bounds {bounds} reach {asked_w}×{asked_h} px but the optical image covers only "
            f"{int(window.width)}×{int(window.height)} px of them ({share:.1f} %): the output is that overlap "
            f"(tag ALIGNCR_BOUNDS)")  # fmt: skip


def _in_crs(bounds: Bounds, crs: Any) -> tuple[float, float, float, float]:
    box = (bounds.xmin, bounds.ymin, bounds.xmax, bounds.ymax)
    if bounds.crs is None:
        return box
    from rasterio.crs import CRS
    from rasterio.errors import CRSError
    from rasterio.warp import transform_bounds

    try:
        given = CRS.from_user_input(bounds.crs)
    except CRSError:
        raise InputError(f"--bounds: '{bounds.crs}' is not a CRS GDAL knows (try EPSG:4326)") from None
    if crs is None:
        raise InputError("--bounds gives a CRS but the optical image has none; georeference it first")
    return transform_bounds(given, crs, *box, densify_pts=21)


def window_vrt(name: str, window: Window, tags: dict[str, str] | None = None) -> str:
    """VRT XML reading ``window`` of the raster ``name``: same bands, types, nodata, descriptions, colours,
    scales/offsets and metadata (the acquisition date and product tags the engine reads from the optical file), plus
    ``tags`` (the output carries the optical image's tags: ``ALIGNCR_BOUNDS``)."""
    with rasterio.open(name) as ds:
        transform = ds.window_transform(window)
        gt = ", ".join(repr(float(v)) for v in transform.to_gdal())
        head = (f'<VRTDataset rasterXSize="{int(window.width)}" rasterYSize="{int(window.height)}">'
                f"<SRS>{escape(ds.crs.to_wkt()) if ds.crs else ''}</SRS><GeoTransform>{gt}</GeoTransform>")  # fmt: skip
        domains = [None, *[d for d in ds.tag_namespaces() if d and not d.startswith(("IMAGE_STRUCTURE", "DERIVED"))]]
        meta = "".join(_metadata({**ds.tags(ns=d), **(tags or {})} if d is None else ds.tags(ns=d), d)
                       for d in domains)  # fmt: skip
        bands = "".join(_band(ds, name, i, window) for i in range(1, ds.count + 1))
    return f"{head}{meta}{bands}</VRTDataset>"


def _metadata(tags: dict[str, str], domain: str | None) -> str:
    if not tags:
        return ""
    items = "".join(f'<MDI key="{escape(k)}">{escape(v)}</MDI>' for k, v in tags.items())
    return f'<Metadata domain="{escape(domain)}">{items}</Metadata>' if domain else f"<Metadata>{items}</Metadata>"


def _band(ds: rasterio.io.DatasetReader, name: str, i: int, window: Window) -> str:
    dtype = {"uint8": "Byte", "int8": "Int8", "uint16": "UInt16", "int16": "Int16", "uint32": "UInt32",
             "int32": "Int32", "float32": "Float32", "float64": "Float64"}[ds.dtypes[i - 1]]  # fmt: skip
    parts = [f'<VRTRasterBand dataType="{dtype}" band="{i}">']
    if ds.nodatavals[i - 1] is not None:
        parts.append(f"<NoDataValue>{ds.nodatavals[i - 1]!r}</NoDataValue>")
    if ds.descriptions[i - 1]:
        parts.append(f"<Description>{escape(ds.descriptions[i - 1])}</Description>")
    parts.append(f"<ColorInterp>{ds.colorinterp[i - 1].name.capitalize()}</ColorInterp>")
    if ds.offsets[i - 1] not in (None, 0.0):
        parts.append(f"<Offset>{ds.offsets[i - 1]!r}</Offset>")
    if ds.scales[i - 1] not in (None, 1.0):
        parts.append(f"<Scale>{ds.scales[i - 1]!r}</Scale>")
    if ds.units[i - 1]:
        parts.append(f"<UnitType>{escape(ds.units[i - 1])}</UnitType>")
    parts.append(_metadata(ds.tags(i), None))
    w, h = int(window.width), int(window.height)
    parts.append(f'<SimpleSource><SourceFilename relativeToVRT="0">{escape(name)}</SourceFilename>'
                 f"<SourceBand>{i}</SourceBand>"
                 f'<SrcRect xOff="{int(window.col_off)}" yOff="{int(window.row_off)}" xSize="{w}" ySize="{h}"/>'
                 f'<DstRect xOff="0" yOff="0" xSize="{w}" ySize="{h}"/></SimpleSource></VRTRasterBand>')  # fmt: skip
    return "".join(parts)
