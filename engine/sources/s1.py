"""Sentinel-1 GRD SAFE products (folder or zip), calibrated to σ⁰ and geocoded from their GCPs (engine.sources.resolve).

GDAL's SAFE driver reads a GRD's measurement files but does not calibrate them: its ``SENTINEL1_CALIB:SIGMA0:…``
subdatasets exist for SLC only (OSGeo/gdal#5826, still open; GDAL 3.6 and 3.10 answer "Measurement bands not
found" for a GRD). So the calibration is done here, as ESA defines it (ESA "Thermal Denoising of Products Generated
by the Sentinel-1 IPF", the formula SNAP's Sentinel1RemoveThermalNoiseOp applies): σ⁰ = (DN² − η) / A², A the
``sigmaNought`` LUT of ``annotation/calibration/calibration-*.xml`` and η the thermal-noise power of
``annotation/calibration/noise-*.xml``, both interpolated bilinearly between their vectors (lines × pixels). η is the
range LUT (``noiseRangeVector``, or ``noiseVector`` before IPF 2.9) times, since IPF 2.9, the azimuth LUT of the swath
block the pixel lies in (``noiseAzimuthVector``: one per IW1/IW2/IW3 block, linear along lines). A product without a
noise annotation is calibrated without the subtraction, and says so.

It stays lazy: A and η sampled on a coarse regular grid (every :data:`LUT_STEP` pixels) are upsampled bilinearly by
VRTs (η's steps at swath-block borders are smoothed over one coarse cell, 15 pixels of a ~25,000-pixel-wide scene),
and GDAL pixel functions compute DN·DN·(1/A)·(1/A) − η·(1/A)·(1/A) when a window is read. DN 0 (no data) becomes NaN
on the way in, so it stays no data through the subtraction. Noise-subtracted σ⁰ can be ≤ 0 where the signal is under
the noise floor (calm water, radar shadow): it is kept (unbiased where pixels are averaged by resampling), and the
pipeline's linear → dB conversion floors it far below the normalisation's clip. The result keeps the measurement's
GCPs, and :func:`engine.sources.resolve.materialise` warps it onto the optical grid with GDAL's thin-plate-spline GCP
transformer (:data:`engine.sources.resolve.GCP_METHOD`: exact at every GCP of the annotation's geolocation grid, where a
global polynomial leaves residuals) like any polarisation file; the pipeline's linear → dB conversion follows
(``units = "linear"``).

Not done: terrain correction (a GRD is geocoded on the ellipsoid: the position error grows with relief; a warning
gives the scene's incidence angles, and an RTC product is the better input in mountains).
"""

from __future__ import annotations

import re
import uuid
import warnings
from dataclasses import dataclass
from xml.sax.saxutils import escape, quoteattr

import defusedxml.ElementTree as DefusedET
import numpy as np
from rasterio.errors import NotGeoreferencedWarning
from rasterio.io import MemoryFile

from engine.errors import InputError
from engine.sources.product import (
    SAR_ROLES,
    Materialised,
    ResolvedSource,
    SafeProduct,
    open_source,
    read_member,
    xml_refusals,
)

LUT_STEP = 15  # pixels between the coarse LUT samples; odd, so its cells centre on whole pixels
CALIBRATION = "σ⁰ = DN² / A² (sigmaNought LUT of the product's calibration annotation)"
CALIBRATION_DENOISED = "σ⁰ = (DN² − η) / A² (sigmaNought LUT and thermal noise η of the product's annotations)"
NAN = float("nan")


@dataclass(frozen=True)
class Polarisation:
    """One polarisation's files inside the product and what its annotation says."""

    pol: str
    measurement: str
    calibration: str
    noise: str | None
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
        SAR_ROLES, (1, 1), members=(0, 1), units="linear", gcps=True,
        calibration=CALIBRATION_DENOISED if all(pols[p].noise for p in SAR_ROLES) else CALIBRATION,
        luts=tuple(pols[p].calibration for p in SAR_ROLES),
        tags=(("ACQUISITIONDATETIME", pols["VV"].start),),
        notes=(f"{product_type} {product.name}", "geocoded from the measurement GCPs (GDAL thin-plate spline)",
               _noise_note([pols[p] for p in SAR_ROLES])),
        warnings=(warning,),
    )  # fmt: skip


def _noise_note(pols: list[Polarisation]) -> str:
    """What :func:`calibrated_vrt` will do about thermal noise, for ``engine info`` and the run's notes."""
    if all(p.noise for p in pols):
        return "thermal noise subtracted (noise annotation)"
    return "no thermal-noise removal (the product has no noise annotation)"


def noise_member(calibration: str) -> str:
    """The noise annotation beside a calibration annotation (the SAFE's naming: ``calibration-X`` → ``noise-X``)."""
    head, _, tail = calibration.rpartition("/")
    return f"{head}/{tail.replace('calibration-', 'noise-', 1)}"


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
        with xml_refusals(member, product.given):
            root = DefusedET.fromstring(_read(product, member))
        incidence = [float(e.text) for e in root.iter("incidenceAngle") if e.text]
        calibration = f"annotation/calibration/calibration-{stem}.xml"
        measurement = f"measurement/{stem}.tiff"
        for needed in (calibration, measurement):
            if needed not in product.members:
                raise InputError(f"Sentinel-1 product lacks {needed}: {product.given}")
        noise = noise_member(calibration)
        out.append(Polarisation(
            pol=(root.findtext("adsHeader/polarisation") or "").upper(), measurement=product.vsi(measurement),
            calibration=product.vsi(calibration), noise=product.vsi(noise) if noise in product.members else None,
            start=root.findtext("adsHeader/startTime") or "",
            incidence=(min(incidence), max(incidence)) if incidence else (float("nan"), float("nan")),
        ))  # fmt: skip
    return out


def _read(product: SafeProduct, member: str) -> bytes:
    """A file inside the product (folder or zip) as bytes, within :func:`engine.sources.product.read_member`'s caps."""
    if not product.zipped:
        return read_member(None, str(product.root / member), product.given)
    archive, top = str(product.root).rsplit("/", 1)
    return read_member(archive, f"{top}/{member}", product.given)


def read_vsi(name: str) -> bytes:
    """Bytes of a plain path or a ``/vsizip/`` member (the calibration LUT names :func:`resolve_grd` gives), within
    :func:`engine.sources.product.read_member`'s caps."""
    if name.startswith("/vsizip/"):
        path = name.removeprefix("/vsizip/")
        archive = path[: path.lower().index(".zip") + 4]
        return read_member(archive, path[len(archive) + 1 :], archive)
    return read_member(None, name, name)


# ---------------------------------------------------------------------------------------------- calibration


def _vectors(root, vector_tag: str, value_tag: str) -> tuple[np.ndarray, list[np.ndarray], list[np.ndarray]]:
    """(lines, pixels per vector, values per vector) of a LUT annotation's vectors, sorted by line."""
    lines, pixels, values = [], [], []
    for vector in root.iter(vector_tag):
        lines.append(float(vector.findtext("line") or "nan"))
        pixels.append(np.array((vector.findtext("pixel") or "").split(), dtype=np.float64))
        values.append(np.array((vector.findtext(value_tag) or "").split(), dtype=np.float64))
    if not lines or any(p.size != v.size or p.size < 2 for p, v in zip(pixels, values)):
        raise InputError(f"Sentinel-1 annotation has no usable {value_tag} vectors")
    order = np.argsort(lines)
    return np.asarray(lines)[order], [pixels[i] for i in order], [values[i] for i in order]


def sigma_lut(xml: bytes) -> tuple[np.ndarray, list[np.ndarray], list[np.ndarray]]:
    """(lines, pixels per vector, A per vector) of a calibration annotation's ``sigmaNought`` vectors."""
    return _vectors(DefusedET.fromstring(xml), "calibrationVector", "sigmaNought")


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


def _bilinear(lut: tuple[np.ndarray, list[np.ndarray], list[np.ndarray]], lines: np.ndarray,
              pixels: np.ndarray) -> np.ndarray:  # fmt: skip
    """A vector LUT at ``lines`` × ``pixels``: linear along each vector's pixels, then between vectors' lines."""
    lut_lines, lut_pixels, lut_values = lut
    pixels, lines = np.asarray(pixels, dtype=np.float64), np.asarray(lines, dtype=np.float64)
    rows = np.stack([interp_linear(pixels, p, v) for p, v in zip(lut_pixels, lut_values)])  # (vectors, pixels)
    if lut_lines.size == 1:
        return np.repeat(rows, lines.size, axis=0)
    return np.stack([interp_linear(lines, lut_lines, rows[:, j]) for j in range(rows.shape[1])], axis=1)


def sigma_a(xml: bytes, lines: np.ndarray, pixels: np.ndarray) -> np.ndarray:
    """A (the sigmaNought LUT) at ``lines`` × ``pixels``: bilinear between the vectors, linear beyond them."""
    return _bilinear(sigma_lut(xml), lines, pixels)


# ---------------------------------------------------------------------------------------------- thermal noise


def _azimuth_gain(root, lines: np.ndarray, pixels: np.ndarray) -> np.ndarray:
    """The azimuth noise LUT (IPF ≥ 2.9) at ``lines`` × ``pixels``: each swath block's vector, linear along lines
    (continued linearly past its ends, as A is); 1 where no block covers a point (and everywhere for products
    before IPF 2.9). Points past the image's last line or sample take the block of the nearest pixel inside it."""
    gain = np.ones((lines.size, pixels.size))
    blocks = list(root.iter("noiseAzimuthVector"))
    if not blocks:
        return gain
    last_line = max(float(b.findtext("lastAzimuthLine") or 0) for b in blocks)
    last_sample = max(float(b.findtext("lastRangeSample") or 0) for b in blocks)
    y, x = np.clip(lines, 0, last_line), np.clip(pixels, 0, last_sample)
    for block in blocks:
        rows = (y >= float(block.findtext("firstAzimuthLine") or 0)) & (y <= float(block.findtext("lastAzimuthLine")))
        cols = (x >= float(block.findtext("firstRangeSample") or 0)) & (x <= float(block.findtext("lastRangeSample")))
        at = np.array((block.findtext("line") or "").split(), dtype=np.float64)
        values = np.array((block.findtext("noiseAzimuthLut") or "").split(), dtype=np.float64)
        if at.size != values.size or at.size == 0:
            raise InputError("Sentinel-1 noise annotation has an unusable noiseAzimuthVector")
        gain[np.ix_(rows, cols)] = interp_linear(lines[rows], at, values)[:, None]  # continued past the ends
    return gain


def noise_eta(xml: bytes, lines: np.ndarray, pixels: np.ndarray) -> np.ndarray:
    """η, the thermal-noise power in DN², at ``lines`` × ``pixels``: range LUT (bilinear) × azimuth LUT."""
    root = DefusedET.fromstring(xml)
    lines, pixels = np.asarray(lines, dtype=np.float64), np.asarray(pixels, dtype=np.float64)
    if root.find(".//noiseRangeVector") is not None:
        rng = _bilinear(_vectors(root, "noiseRangeVector", "noiseRangeLut"), lines, pixels)
    else:  # IPF < 2.9: one noise LUT, range only
        rng = _bilinear(_vectors(root, "noiseVector", "noiseLut"), lines, pixels)
    return rng * _azimuth_gain(root, lines, pixels)


def _read_optional(name: str) -> bytes | None:
    """The annotation's bytes, or None where the product does not carry it."""
    try:
        return read_vsi(name)
    except (FileNotFoundError, KeyError):
        return None


# ---------------------------------------------------------------------------------------------- the lazy VRT


def _coarse_raster(values: np.ndarray, store: Materialised, what: str) -> str:
    """An in-memory float32 raster (pixel space) of a LUT sampled every :data:`LUT_STEP` pixels."""
    ny, nx = values.shape
    memfile = MemoryFile(filename=f"{what}-{uuid.uuid4().hex}.tif")
    store.files.append(memfile)
    with warnings.catch_warnings():  # the LUT raster is in pixel space, on purpose
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        with memfile.open(driver="GTiff", width=nx, height=ny, count=1, dtype="float32") as dst:
            dst.write(values.astype(np.float32)[None])
    return memfile.name


def _upsampled(coarse: str, shape: tuple[int, int]) -> str:
    """A VRT source reading a coarse LUT raster bilinearly onto every pixel: its samples centred on pixels 0, 15,
    30 …"""
    ny, nx = shape
    half = LUT_STEP // 2
    return (f'<ComplexSource resampling="bilinear"><SourceFilename relativeToVRT="0">{coarse}</SourceFilename>'
            f'<SourceBand>1</SourceBand><SrcRect xOff="0" yOff="0" xSize="{nx}" ySize="{ny}"/>'
            f'<DstRect xOff="{-half}" yOff="{-half}" xSize="{nx * LUT_STEP}" ySize="{ny * LUT_STEP}"/>'
            "</ComplexSource>")  # fmt: skip


def _simple(name: str, nodata: float | None = None) -> str:
    """Band 1 of ``name`` as a VRT source; ``nodata`` values become the derived band's NaN."""
    if nodata is None:
        return (f'<SimpleSource><SourceFilename relativeToVRT="0">{escape(name)}</SourceFilename>'
                "<SourceBand>1</SourceBand></SimpleSource>")  # fmt: skip
    return (f'<ComplexSource><SourceFilename relativeToVRT="0">{escape(name)}</SourceFilename>'
            f"<SourceBand>1</SourceBand><NODATA>{nodata!r}</NODATA></ComplexSource>")  # fmt: skip


def calibrated_vrt(measurement: str, lut: str, store: Materialised) -> str:
    """σ⁰ of one measurement file as a lazy VRT with the measurement's GCPs: (DN·DN − η)·(1/A)·(1/A), A and η
    upsampled bilinearly from coarse rasters of their LUTs (exact where the LUTs are linear between samples); η = 0
    when the product has no noise annotation beside the calibration ``lut``; NaN where DN is 0 (no data)."""
    with open_source(measurement, "SAR (Sentinel-1 measurement)") as ds:
        width, height = ds.width, ds.height
        gcps, gcp_crs = ds.gcps
    if not gcps:
        raise InputError(f"Sentinel-1 measurement has no GCPs to geocode it: {measurement}")
    shape = (-(-(height - 1) // LUT_STEP) + 2, -(-(width - 1) // LUT_STEP) + 2)
    lines, pixels = np.arange(shape[0]) * LUT_STEP, np.arange(shape[1]) * LUT_STEP
    with xml_refusals(lut.rsplit("/", 1)[-1], measurement):
        a = _coarse_raster(sigma_a(read_vsi(lut), lines, pixels), store, "sigma-lut")
    inverse = _simple(store.write("inverse-a", _derived(width, height, "inv", _upsampled(a, shape))))
    dn = _simple(measurement, nodata=0.0)
    points = "".join(f'<GCP Id="{i}" Pixel="{g.col!r}" Line="{g.row!r}" X="{g.x!r}" Y="{g.y!r}" Z="{g.z or 0.0!r}"/>'
                     for i, g in enumerate(gcps))  # fmt: skip
    gcp_list = f"<GCPList Projection={quoteattr(gcp_crs.to_wkt())}>{points}</GCPList>"
    noise = _read_optional(noise_member(lut))
    if noise is None:  # σ⁰ = DN²/A²
        return store.write("sigma0", _derived(width, height, "mul", dn + dn + inverse + inverse, gcp_list, NAN))
    signal = store.write("dn2-over-a2", _derived(width, height, "mul", dn + dn + inverse + inverse, nodata=NAN))
    with xml_refusals(noise_member(lut).rsplit("/", 1)[-1], measurement):
        eta = _upsampled(_coarse_raster(noise_eta(noise, lines, pixels), store, "noise-lut"), shape)
    floor = store.write("eta-over-a2", _derived(width, height, "mul", eta + inverse + inverse))
    xml = _derived(width, height, "diff", _simple(signal) + _simple(floor), gcp_list, nodata=NAN)  # DN²/A² − η/A²
    return store.write("sigma0", xml)


def _derived(width: int, height: int, function: str, sources: str, head: str = "", nodata: float | None = None) -> str:
    """A one-band Float32 VRT computing GDAL pixel function ``function`` of ``sources``."""
    nodata_xml = f"<NoDataValue>{_xml_float(nodata)}</NoDataValue>" if nodata is not None else ""
    return (f'<VRTDataset rasterXSize="{width}" rasterYSize="{height}">{head}<VRTRasterBand dataType="Float32" '
            f'band="1" subClass="VRTDerivedRasterBand">{nodata_xml}<PixelFunctionType>{function}</PixelFunctionType>'
            f"<SourceTransferType>Float64</SourceTransferType>{sources}</VRTRasterBand></VRTDataset>")  # fmt: skip


def _xml_float(value: float) -> str:
    """A float as GDAL's VRT XML spells it (``nan``, not Python's repr)."""
    return "nan" if np.isnan(value) else repr(float(value))
