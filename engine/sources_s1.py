"""Sentinel-1 GRD SAFE products (folder or zip), calibrated to σ⁰ and geocoded from their GCPs (engine.sources).

GDAL's SAFE driver reads a GRD's measurement files but does not calibrate them: its ``SENTINEL1_CALIB:SIGMA0:…``
subdatasets exist for SLC only (OSGeo/gdal#5826, still open; GDAL 3.6 and 3.10 answer "Measurement bands not
found" for a GRD). So the calibration is done here, as ESA defines it: σ⁰ = DN² / A², A the ``sigmaNought`` LUT of
the product's ``annotation/calibration/calibration-*.xml``, interpolated bilinearly between its vectors (lines ×
pixels). It stays lazy: A sampled on a coarse regular grid (every :data:`LUT_STEP` pixels) is upsampled bilinearly
by a VRT, inverted by GDAL's ``inv`` pixel function and multiplied with DN·DN by ``mul``, so every window is computed
when read. The result keeps the measurement's GCPs, and
:func:`engine.sources.materialise` warps it onto the optical grid from them like any polarisation file; the
pipeline's existing linear → dB conversion follows (``units = "linear"``).

Not done: thermal-noise removal (the ``noise-*.xml`` LUT is not subtracted: σ⁰ over very dark surfaces — calm water
— is biased high) and terrain correction (a GRD is geocoded on the ellipsoid: the position error grows with relief;
a warning gives the scene's incidence angles, and an RTC product is the better input in mountains).
"""

from __future__ import annotations

import re
import uuid
import warnings
import zipfile
from dataclasses import dataclass
from xml.sax.saxutils import escape, quoteattr

import defusedxml.ElementTree as DefusedET
import numpy as np
from rasterio.errors import NotGeoreferencedWarning
from rasterio.io import MemoryFile

from engine.errors import InputError
from engine.sources import SAR_ROLES, Materialised, ResolvedSource, SafeProduct, _open

LUT_STEP = 15  # pixels between the coarse LUT samples; odd, so its cells centre on whole pixels
CALIBRATION = "σ⁰ = DN² / A² (sigmaNought LUT of the product's calibration annotation)"


@dataclass(frozen=True)
class Polarisation:
    """One polarisation's files inside the product and what its annotation says."""

    pol: str
    measurement: str
    calibration: str
    start: str
    incidence: tuple[float, float]


def resolve_grd(product: SafeProduct) -> ResolvedSource:
    """VV and VH of a GRD product: measurement files, calibration LUTs, σ⁰ in linear power, and the warnings."""
    product_type = _product_type(product)
    if not product_type.startswith("GRD"):
        what = {"SLC": "an SLC (complex, slant range)", "OCN": "an OCN (ocean wind/wave, no image)",
                "RAW": "a RAW (unfocused)"}.get(product_type[:3], f"a {product_type}")  # fmt: skip
        raise InputError(f"Sentinel-1 product is {what} product; give a GRD (ground range detected) or an RTC "
                         f"product: {product.given}")  # fmt: skip
    pols = {p.pol: p for p in _polarisations(product)}
    missing = [p for p in SAR_ROLES if p not in pols]
    if missing:
        have = "+".join(sorted(pols)) or "no"
        raise InputError(f"Sentinel-1 GRD has {have} polarisation(s), the model needs VV and VH ({'/'.join(missing)} "
                         f"missing): {product.given}")  # fmt: skip
    low = min(pols[p].incidence[0] for p in SAR_ROLES)
    high = max(pols[p].incidence[1] for p in SAR_ROLES)
    warning = (f"Sentinel-1 GRD {product.name} is geocoded from its GCPs without terrain correction (incidence "
               f"{low:.1f}–{high:.1f}°): positions shift with relief; Align-CR's deformable alignment absorbs some "
               "misregistration, but in mountains an RTC product is the better SAR")  # fmt: skip
    return ResolvedSource(
        "SAR", product.given, "Sentinel-1 GRD SAFE", tuple(pols[p].measurement for p in SAR_ROLES), "SAFE (GTiff)",
        SAR_ROLES, (1, 1), members=(0, 1), units="linear", calibration=CALIBRATION, gcps=True,
        luts=tuple(pols[p].calibration for p in SAR_ROLES),
        tags=(("ACQUISITIONDATETIME", pols["VV"].start),),
        notes=(f"{product_type} {product.name}", "geocoded from the measurement GCPs (GDAL polynomial)",
               "no thermal-noise removal"),
        warnings=(warning,),
    )  # fmt: skip


def _product_type(product: SafeProduct) -> str:
    """GRDH / GRDM / SLC_ / OCN_ … from the product name (S1A_IW_GRDH_1SDV_…)."""
    parts = product.name.split("_")
    return parts[2].rstrip("_") if len(parts) > 2 else "unknown"


def _polarisations(product: SafeProduct) -> list[Polarisation]:
    """Each annotation (``annotation/*.xml``) with its measurement and calibration files."""
    out = []
    for member in product.members:
        if not re.match(r"^annotation/[^/]+\.xml$", member):
            continue
        stem = member.split("/")[1].removesuffix(".xml")
        root = DefusedET.fromstring(_read(product, member))
        incidence = [float(e.text) for e in root.iter("incidenceAngle") if e.text]
        calibration = f"annotation/calibration/calibration-{stem}.xml"
        measurement = f"measurement/{stem}.tiff"
        for needed in (calibration, measurement):
            if needed not in product.members:
                raise InputError(f"Sentinel-1 product lacks {needed}: {product.given}")
        out.append(Polarisation(
            pol=(root.findtext("adsHeader/polarisation") or "").upper(), measurement=product.vsi(measurement),
            calibration=product.vsi(calibration), start=root.findtext("adsHeader/startTime") or "",
            incidence=(min(incidence), max(incidence)) if incidence else (float("nan"), float("nan")),
        ))  # fmt: skip
    return out


def _read(product: SafeProduct, member: str) -> bytes:
    """A file inside the product (folder or zip) as bytes."""
    if not product.zipped:
        return (product.root / member).read_bytes()
    archive, top = str(product.root).rsplit("/", 1)
    with zipfile.ZipFile(archive) as zf:
        return zf.read(f"{top}/{member}")


def read_vsi(name: str) -> bytes:
    """Bytes of a plain path or a ``/vsizip/`` member (the calibration LUT names :func:`resolve_grd` gives)."""
    if name.startswith("/vsizip/"):
        path = name.removeprefix("/vsizip/")
        archive = path[: path.lower().index(".zip") + 4]
        with zipfile.ZipFile(archive) as zf:
            return zf.read(path[len(archive) + 1 :])
    with open(name, "rb") as f:
        return f.read()


# ---------------------------------------------------------------------------------------------- calibration


def sigma_lut(xml: bytes) -> tuple[np.ndarray, list[np.ndarray], list[np.ndarray]]:
    """(lines, pixels per vector, A per vector) of a calibration annotation's ``sigmaNought`` vectors."""
    root = DefusedET.fromstring(xml)
    lines, pixels, values = [], [], []
    for vector in root.iter("calibrationVector"):
        lines.append(float(vector.findtext("line") or "nan"))
        pixels.append(np.array((vector.findtext("pixel") or "").split(), dtype=np.float64))
        values.append(np.array((vector.findtext("sigmaNought") or "").split(), dtype=np.float64))
    if not lines or any(p.size != v.size or p.size < 2 for p, v in zip(pixels, values)):
        raise InputError("Sentinel-1 calibration annotation has no usable sigmaNought vectors")
    order = np.argsort(lines)
    return np.asarray(lines)[order], [pixels[i] for i in order], [values[i] for i in order]


def interp_linear(x: np.ndarray, xp: np.ndarray, fp: np.ndarray) -> np.ndarray:
    """``np.interp``, but continued linearly beyond the end nodes (the coarse grid's last sample lies past the last
    pixel: holding the LUT constant there would bend the interpolation of the last pixels towards it)."""
    out = np.interp(x, xp, fp)
    if xp.size < 2:
        return out
    lo, hi = x < xp[0], x > xp[-1]
    out[lo] = fp[0] + (x[lo] - xp[0]) * (fp[1] - fp[0]) / (xp[1] - xp[0])
    out[hi] = fp[-1] + (x[hi] - xp[-1]) * (fp[-1] - fp[-2]) / (xp[-1] - xp[-2])
    return out


def sigma_a(xml: bytes, lines: np.ndarray, pixels: np.ndarray) -> np.ndarray:
    """A (the sigmaNought LUT) at ``lines`` × ``pixels``: bilinear between the vectors, linear beyond them."""
    lut_lines, lut_pixels, lut_values = sigma_lut(xml)
    pixels, lines = np.asarray(pixels, dtype=np.float64), np.asarray(lines, dtype=np.float64)
    rows = np.stack([interp_linear(pixels, p, v) for p, v in zip(lut_pixels, lut_values)])  # (vectors, pixels)
    if lut_lines.size == 1:
        return np.repeat(rows, lines.size, axis=0)
    return np.stack([interp_linear(lines, lut_lines, rows[:, j]) for j in range(rows.shape[1])], axis=1)


def calibrated_vrt(measurement: str, lut: str, store: Materialised) -> str:
    """σ⁰ of one measurement file as a lazy VRT, DN · DN · (1/A) · (1/A) with A upsampled bilinearly from a coarse
    raster of the LUT (exact where the LUT is linear between samples), with the measurement's GCPs; nodata 0 (DN 0 =
    no data)."""
    with _open(measurement, "SAR (Sentinel-1 measurement)") as ds:
        width, height = ds.width, ds.height
        gcps, gcp_crs = ds.gcps
    if not gcps:
        raise InputError(f"Sentinel-1 measurement has no GCPs to geocode it: {measurement}")
    half = LUT_STEP // 2
    ny, nx = -(-(height - 1) // LUT_STEP) + 2, -(-(width - 1) // LUT_STEP) + 2
    a = sigma_a(read_vsi(lut), np.arange(ny) * LUT_STEP, np.arange(nx) * LUT_STEP).astype(np.float32)
    memfile = MemoryFile(filename=f"sigma-lut-{uuid.uuid4().hex}.tif")
    store.files.append(memfile)
    with warnings.catch_warnings():  # the LUT raster is in pixel space, on purpose
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        with memfile.open(driver="GTiff", width=nx, height=ny, count=1, dtype="float32") as dst:
            dst.write(a[None])
    upsampled = (  # A on every pixel: the coarse samples centred on pixels 0, 15, 30 … and bilinear between them
        f'<ComplexSource resampling="bilinear"><SourceFilename relativeToVRT="0">{memfile.name}</SourceFilename>'
        f'<SourceBand>1</SourceBand><SrcRect xOff="0" yOff="0" xSize="{nx}" ySize="{ny}"/>'
        f'<DstRect xOff="{-half}" yOff="{-half}" xSize="{nx * LUT_STEP}" ySize="{ny * LUT_STEP}"/></ComplexSource>'
    )
    inverse = store.write("inverse-a", _derived(width, height, "inv", upsampled))
    one_over_a = (f'<SimpleSource><SourceFilename relativeToVRT="0">{inverse}</SourceFilename>'
                  "<SourceBand>1</SourceBand></SimpleSource>")  # fmt: skip
    dn = (f'<SimpleSource><SourceFilename relativeToVRT="0">{escape(measurement)}</SourceFilename>'
          "<SourceBand>1</SourceBand></SimpleSource>")  # fmt: skip
    points = "".join(f'<GCP Id="{i}" Pixel="{g.col!r}" Line="{g.row!r}" X="{g.x!r}" Y="{g.y!r}" Z="{g.z or 0.0!r}"/>'
                     for i, g in enumerate(gcps))  # fmt: skip
    gcp_list = f"<GCPList Projection={quoteattr(gcp_crs.to_wkt())}>{points}</GCPList>"
    xml = _derived(width, height, "mul", dn + dn + one_over_a + one_over_a, gcp_list, nodata=0.0)
    return store.write("sigma0", xml)


def _derived(width: int, height: int, function: str, sources: str, head: str = "", nodata: float | None = None) -> str:
    """A one-band Float32 VRT computing GDAL pixel function ``function`` of ``sources``."""
    nodata_xml = f"<NoDataValue>{nodata!r}</NoDataValue>" if nodata is not None else ""
    return (f'<VRTDataset rasterXSize="{width}" rasterYSize="{height}">{head}<VRTRasterBand dataType="Float32" '
            f'band="1" subClass="VRTDerivedRasterBand">{nodata_xml}<PixelFunctionType>{function}</PixelFunctionType>'
            f"<SourceTransferType>Float64</SourceTransferType>{sources}</VRTRasterBand></VRTDataset>")  # fmt: skip
