"""What the user gave → what the reader opens: products as analysts download them, in front of the raster reader.

The readers (:mod:`engine.sources.raster`, :mod:`engine.align.reader`) take one GDAL dataset per input: a 4+-band
optical raster, a 2-band SAR raster (VV, VH), a 1-band or UDM2 cloud mask. Analysts download other things: VV and VH as
two files, RTC γ⁰ in amplitude, a PlanetScope scene whose UDM2 lies beside it, a Sentinel-2 SAFE, a Sentinel-1 GRD SAFE
in radar geometry. :func:`resolve_optical`, :func:`resolve_sar` and :func:`resolve_mask` say what each input *is*
(a :class:`ResolvedSource`: GDAL dataset names, band roles, units, calibration, mask found, notes), without
reading pixels beyond a small sample; :func:`materialise` turns it into one dataset name the existing readers
open — the input itself when it already is what they expect, else a VRT in GDAL's in-memory file system (a
stack of the per-polarisation files warped onto the optical grid, a band selection with an offset, a class → cloud
lookup). VRTs are lazy, so everything stays windowed.

Torch- and Qt-free (``engine info`` and the pipeline use it; the plugin passes product and GDAL names through to
the engine); rasterio only, because rasterio may carry its own GDAL and ``/vsimem`` files exist only inside the
GDAL that wrote them.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any
from xml.etree import ElementTree
from xml.sax.saxutils import escape

import defusedxml.ElementTree as DefusedET
import numpy as np
import rasterio
import rasterio.shutil
from rasterio.io import MemoryFile
from rasterio.vrt import WarpedVRT

from engine.config import DEFAULT_BANDS, MASK_AUTO, Bounds, as_source, is_gdal_name, is_mask_word
from engine.errors import InputError
from engine.sources.bounds import bounds_window, outside_note, window_vrt
from engine.sources.dates import dataset_acquisition_date, days_apart
from engine.sources.masks import detector_source, is_detector
from engine.sources.metric_grid import require_metric_crs
from engine.sources.normalise import detect_sar_units
from engine.sources.product import (
    OPTICAL_ROLES,
    SAR_ROLES,
    Materialised,
    ResolvedSource,
    SafeProduct,
    open_source,
    safe_product,
)
from engine.sources.raster import RESAMPLING, read_sample, valid_mask
from engine.sources.s1 import calibrated_vrt, resolve_grd
from engine.sources.s2 import resolve_s2

# A dataset name GDAL opens but that is no plain file: a virtual file system, or DRIVER:… (a subdataset).
# HyP3 RTC product names: …_RTC30_G_gpuned_… — radiometry (g γ⁰, s σ⁰), then scale (p power, a amplitude, d dB).
_HYP3 = re.compile(r"_RTC\d+_[A-Z]_([gs])([pad])")
# GDAL transformer from radar geometry (GCPs) to the map: a thin-plate spline passes through every GCP of a
# Sentinel-1 geolocation grid, where a global polynomial leaves residuals of a pixel or more across a 250 km scene.
GCP_METHOD = "GCP_TPS"
_HYP3_SCALES = {"p": "linear", "a": "amplitude", "d": "db"}
_UNIT_WORDS = {"db": "db", "decibel": "db", "decibels": "db", "amplitude": "amplitude", "power": "linear",
               "linear": "linear", "intensity": "linear"}  # fmt: skip
# A linear SAR whose median is this high is amplitude, not power: VH power medians lie near 0.01 (−20 dB),
# VV near 0.05 (−13 dB); their square roots (0.1, 0.22) are what amplitude files hold.
AMPLITUDE_MEDIAN = {"VV": 0.3, "VH": 0.08}
SPLIT_GAP_WARN_DAYS = 0.5  # VV and VH of one acquisition are seconds apart; more is two acquisitions


def _exists_or_raise(given: str, role: str) -> None:
    if not is_gdal_name(given) and not Path(given).exists():
        raise InputError(f"{role} file not found: {given}")


# ------------------------------------------------------------------------------------------------------ optical


def bands_from_descriptions(descriptions: Sequence[str | None]) -> tuple[int, ...] | None:
    """Blue, green, red, NIR band indices (1-based) from band descriptions, or None when they do not name all four.

    PlanetScope 8-band SuperDove (coastal_blue, blue, green_i, green, yellow, red, rededge, nir) → (2, 4, 6, 8);
    4-band (blue, green, red, nir) → (1, 2, 3, 4). Exact names only: "green_i" is not the green band."""
    names = [(d or "").strip().lower() for d in descriptions]
    if not all(role in names for role in OPTICAL_ROLES):
        return None
    return tuple(names.index(role) + 1 for role in OPTICAL_ROLES)


def resolve_optical(given: str | os.PathLike[str], bands: tuple[int, ...] | None = None) -> ResolvedSource:
    """What the optical input is; ``bands`` are the user's ``--bands`` (None: the default, free to be decided).

    A Sentinel-2 SAFE/zip goes through the SENTINEL2 driver (:func:`engine.sources.s2.resolve_s2`); a raster whose
    band descriptions name blue/green/red/nir is read by them unless ``bands`` says otherwise; a PlanetScope
    AnalyticMS file brings its UDM2 as the mask found."""
    text = os.fspath(given)
    _exists_or_raise(text, "optical")
    product = safe_product(text)
    if product is not None:
        return _resolve_product(product, "optical")
    with open_source(text, "optical") as ds:
        driver, descriptions = ds.driver, ds.descriptions
    notes: list[str] = []
    chosen = bands
    if chosen is None:
        chosen = bands_from_descriptions(descriptions)
        if chosen is not None and chosen != (1, 2, 3, 4):
            notes.append(f"blue, green, red, NIR = bands {','.join(map(str, chosen))} (band descriptions)")
        chosen = chosen or (1, 2, 3, 4)
    udm2 = planet_udm2(text)
    kind = "PlanetScope AnalyticMS" if "_AnalyticMS" in Path(text).name else "raster"
    mask = None
    if udm2 is not None:
        mask = ResolvedSource("cloud mask", udm2, "Planet UDM2", (udm2,), "GTiff", ("udm2",), (1,),
                              notes=("found beside the AnalyticMS file",))  # fmt: skip
    return ResolvedSource("optical", text, kind, (text,), driver, OPTICAL_ROLES[: len(chosen)], tuple(chosen),
                          mask=mask, notes=tuple(notes))  # fmt: skip


def planet_udm2(optical: str) -> str | None:
    """The ``*_udm2*.tif`` beside a PlanetScope ``*_AnalyticMS*`` file (same scene prefix, same ``_clip`` suffix when
    there are several), or None."""
    path = Path(optical)
    if is_gdal_name(optical) or "_AnalyticMS" not in path.name:
        return None
    prefix = path.name.split("_AnalyticMS")[0]
    found = sorted(path.parent.glob(f"{prefix}_udm2*.tif"))
    if not found:
        return None
    clip = "_clip" in path.name
    same = [p for p in found if ("_clip" in p.name) == clip]
    return str((same or found)[0])


def _resolve_product(product: SafeProduct, role: str) -> ResolvedSource:
    """A SAFE product for the ``role`` it was given as; the wrong mission or product type is one line."""
    if role == "optical":
        if product.mission != "S2":
            raise InputError(f"optical input is a {product.mission} product, not Sentinel-2: {product.given}")
        return resolve_s2(product)
    if product.mission != "S1":
        raise InputError(f"SAR input is a {product.mission} product, not Sentinel-1: {product.given}")
    return resolve_grd(product)


# ---------------------------------------------------------------------------------------------------------- SAR


def resolve_sar(
    given: str | os.PathLike[str] | None = None,
    *,
    vv: str | os.PathLike[str] | None = None,
    vh: str | os.PathLike[str] | None = None,
    bands: tuple[int, int] = (1, 2),
    units: str = "auto",
) -> ResolvedSource:
    """What the SAR input is: one stacked raster (``given``, VV and VH = ``bands``), two single-polarisation files
    (``vv``, ``vh``), or a Sentinel-1 GRD SAFE/zip (:func:`engine.sources.s1.resolve_grd`). ``units`` other than
    ``auto`` (``--sar-units``) wins over anything detected."""
    if given is not None and (vv is not None or vh is not None):
        raise InputError("give the SAR either as --sar (both polarisations) or as --sar-vv and --sar-vh, not both")
    if given is None and (vv is None) != (vh is None):
        missing = "--sar-vh" if vh is None else "--sar-vv"
        raise InputError(f"split polarisations need both --sar-vv and --sar-vh; {missing} is missing")
    if given is None and vv is None:
        raise InputError("no SAR given (--sar, or --sar-vv and --sar-vh)")
    if given is not None:
        text = os.fspath(given)
        _exists_or_raise(text, "SAR")
        product = safe_product(text)
        if product is not None:
            return _with_forced_units(_resolve_product(product, "SAR"), units)
        source = ResolvedSource("SAR", text, "raster", (text,), _driver(text, "SAR"), SAR_ROLES, tuple(bands))
    else:
        names = (os.fspath(vv), os.fspath(vh))  # type: ignore[arg-type]
        for name, flag in zip(names, ("--sar-vv", "--sar-vh")):
            _exists_or_raise(name, f"SAR ({flag})")
        source = ResolvedSource("SAR", " + ".join(names), "split VV/VH", names, _driver(names[0], "SAR (--sar-vv)"),
                                SAR_ROLES, (1, 1), members=(0, 1))  # fmt: skip
    if units != "auto":
        return replace(source, units=units, notes=(*source.notes, f"units {units} (--sar-units)"))
    return _detect_units(source)


def _driver(name: str, role: str) -> str:
    with open_source(name, role) as ds:
        return ds.driver


def _with_forced_units(source: ResolvedSource, units: str) -> ResolvedSource:
    if units == "auto":
        return source
    return replace(source, units=units, notes=(*source.notes, f"units {units} (--sar-units, over {source.units})"))


def units_from_metadata(name: str, ds: rasterio.io.DatasetReader, band: int) -> tuple[str, str] | None:
    """(units, why) from a HyP3 product name, the band's unit type, or a ``scale``/``units`` tag; None if silent."""
    hyp3 = _HYP3.search(Path(name).name)
    if hyp3 is not None:
        return _HYP3_SCALES[hyp3.group(2)], f"HyP3 product name ({hyp3.group(0)[1:]})"
    unit = (ds.units[band - 1] or "").strip().lower() if band <= ds.count else ""
    if unit in _UNIT_WORDS:
        return _UNIT_WORDS[unit], f"band unit type '{unit}'"
    for tags in (ds.tags(band) if band <= ds.count else {}, ds.tags()):
        for key, value in tags.items():
            if key.lower() in ("scale", "units", "unit", "sar_units", "backscatter_units"):
                word = str(value).strip().lower()
                if word in _UNIT_WORDS:
                    return _UNIT_WORDS[word], f"tag {key}={value}"
    return None


def detect_units_from_values(values: dict[str, np.ndarray]) -> str:
    """``db``, ``linear`` (power) or ``amplitude`` from valid samples by polarisation (see :data:`AMPLITUDE_MEDIAN`)."""
    pooled = np.concatenate([v.ravel() for v in values.values()]) if values else np.zeros(0)
    if detect_sar_units(pooled) == "db":
        return "db"
    for pol, v in values.items():
        v = v[np.isfinite(v) & (v > 0)]
        if v.size and float(np.median(v)) >= AMPLITUDE_MEDIAN[pol]:
            return "amplitude"
    return "linear"


def _detect_units(source: ResolvedSource) -> ResolvedSource:
    """Units from the metadata of each polarisation, else from their values; a note says which."""
    values: dict[str, np.ndarray] = {}
    for i, (pol, band) in enumerate(zip(source.roles, source.bands)):
        name = source.datasets[source.member(i)]
        with open_source(name, f"SAR ({pol})") as ds:
            if band > ds.count:
                return source  # the band checks say so in their words, later
            found = units_from_metadata(name, ds, band)
            if found is not None:
                return replace(source, units=found[0], notes=(*source.notes, f"units {found[0]} from {found[1]}"))
            sample = read_sample(ds, (band,)).astype(np.float32)
            values[pol] = sample[0][valid_mask(sample, ds.nodata)]
    units = detect_units_from_values(values)
    return replace(source, units=units, notes=(*source.notes, f"units {units} from the value range"))


def sar_date_gap(source: ResolvedSource) -> float | None:
    """Days between the acquisition dates of split VV and VH files when both say, else None."""
    if len(source.datasets) != 2:
        return None
    found = []
    for name in source.datasets:
        with open_source(name, "SAR") as ds:
            found.append(dataset_acquisition_date(ds))
    if found[0] is None or found[1] is None:
        return None
    return days_apart(found[0][0], found[1][0])


# --------------------------------------------------------------------------------------------------------- mask


def resolve_mask(given: str | os.PathLike[str] | None, optical: ResolvedSource) -> ResolvedSource:
    """The cloud mask of a run — the one place that decides where "the cloud" comes from, best first: the file
    given; with ``auto`` the mask that came with the optical product (UDM2 beside a PlanetScope scene, a Sentinel-2
    L2A's SCL); else (``auto`` without one, ``detect``, no ``--mask``) the trained detector where installed, else the
    hand-made rule (:func:`engine.sources.masks.detector_source`); ``rule`` forces the rule. A detector is a source
    without datasets (:func:`engine.sources.masks.is_detector`)."""
    text = None if given is None else os.fspath(given)
    if text is not None and not is_mask_word(text):
        _exists_or_raise(text, "cloud mask")
        return ResolvedSource("cloud mask", text, "raster", (text,), _driver(text, "cloud mask"), ("cloud",), (1,))
    if text == MASK_AUTO and optical.mask is not None:
        return optical.mask
    detector = detector_source(text)
    if text != MASK_AUTO:
        return detector
    note = (f"--mask auto: {optical.kind} {optical.given} comes with no cloud mask; the clouds are detected on the "
            f"optical image instead ({detector.kind})")  # fmt: skip
    return replace(detector, warnings=(note,))


# ----------------------------------------------------------------------------------------------- materialising


@dataclass(frozen=True)
class TargetGrid:
    """The optical grid (crs, transform, width, height) that radar-geometry and split inputs are warped onto."""

    crs: Any
    transform: Any
    width: int
    height: int


def materialise(
    source: ResolvedSource, store: Materialised, grid: TargetGrid | None = None, resampling: str = "nearest"
) -> str:
    """One dataset name the reader opens for ``source``: the dataset itself when it already is one, else a VRT.

    Multi-dataset and GCP sources need ``grid``: each member band is warped onto it (so VV and VH on different
    grids, CRSs or in radar geometry each land on the optical pixels) and the results are stacked."""
    if source.passthrough:
        return source.datasets[0]
    if source.lut:
        return store.write(source.role.replace(" ", "_"), _lut_vrt(source))
    if len(source.datasets) == 1 and not source.gcps:
        return store.write(source.role, _band_vrt(source))
    if grid is None:
        raise InputError(f"{source.role} ({source.kind}) can only be read onto the optical grid: {source.given}")
    warped = [_warp_member(source, i, store, grid, resampling) for i in range(len(source.roles))]
    return store.write(source.role, _stack_vrt(warped, grid, source.tags))


def _warp_member(source: ResolvedSource, i: int, store: Materialised, grid: TargetGrid, resampling: str) -> str:
    """Band ``i`` of ``source`` warped onto ``grid`` as a VRT (float32, NaN where it has no data)."""
    name = source.datasets[source.member(i)]
    if source.luts:  # Sentinel-1 GRD: DN → σ⁰ first, in radar geometry
        name = calibrated_vrt(name, source.luts[source.member(i)], store)
    with open_source(name, f"{source.role} ({source.roles[i]})") as ds:
        if ds.crs is None and not ds.gcps[0]:
            raise InputError(f"{source.role} ({source.roles[i]}) has no CRS, geotransform or GCPs: {name}")
        src_nodata = ds.nodata if ds.nodata is not None else (0.0 if source.gcps else None)
        if source.gcps:
            out = store.write(f"{source.roles[i]}-warped", _gcp_warped(ds, grid, RESAMPLING[resampling], src_nodata))
            return f"{out}\t{source.bands[i]}"
        out = store.new_name(f"{source.roles[i]}-warped")
        with WarpedVRT(ds, crs=grid.crs, transform=grid.transform, width=grid.width, height=grid.height,
                       resampling=RESAMPLING[resampling], src_nodata=src_nodata, nodata=np.nan,
                       dtype="float32") as vrt:  # fmt: skip
            rasterio.shutil.copy(vrt, out, driver="VRT")
    return f"{out}\t{source.bands[i]}"


def _gcp_warped(ds: Any, grid: TargetGrid, resampling: Any, src_nodata: float | None) -> str:
    """A radar-geometry dataset warped onto ``grid`` through its GCPs (:data:`GCP_METHOD`), as VRT XML.

    rasterio's ``WarpedVRT`` ignores a GCP source's transformer once it is given a destination grid (every pixel
    then reads the same source pixel: rasterio/rasterio#1891), but builds it right for a destination it chooses.
    So GDAL serialises that warp — its GCP transformer, source, nodata and resampling — and only the destination
    is rewritten to the optical grid: size, geotransform and the transformer's own destination geotransforms."""
    with WarpedVRT(ds, crs=grid.crs, resampling=resampling, src_nodata=src_nodata, nodata=np.nan, dtype="float32",
                   SRC_METHOD=GCP_METHOD) as vrt, MemoryFile(ext=".vrt") as auto:  # fmt: skip
        rasterio.shutil.copy(vrt, auto.name, driver="VRT")
        root = DefusedET.fromstring(auto.read())
    gt, inverse = grid.transform.to_gdal(), (~grid.transform).to_gdal()
    root.set("rasterXSize", str(grid.width))
    root.set("rasterYSize", str(grid.height))
    _set_texts(root, {"GeoTransform": gt, ".//DstGeoTransform": gt, ".//DstInvGeoTransform": inverse,
                      "BlockXSize": (min(grid.width, 512),), "BlockYSize": (min(grid.height, 512),)})  # fmt: skip
    source = root.find(".//SourceDataset")
    source.set("relativeToVRT", "0")
    source.text = ds.name
    return ElementTree.tostring(root, encoding="unicode")


def _set_texts(root: Any, values: dict[str, tuple[float, ...]]) -> None:
    """Set each element found by path to its comma-separated numbers."""
    for path, numbers in values.items():
        element = root.find(path)
        if element is None:
            raise InputError(f"GDAL's warped VRT has no {path} (unexpected GDAL version?)")
        element.text = ",".join(repr(float(v)) if isinstance(v, float) else str(v) for v in numbers)


def _stack_vrt(members: list[str], grid: TargetGrid, tags: tuple[tuple[str, str], ...] = ()) -> str:
    """A VRT stacking one band of each (already on ``grid``) VRT, in order."""
    bands = []
    for k, member in enumerate(members, start=1):
        name, band = member.split("\t")
        bands.append(
            f'<VRTRasterBand dataType="Float32" band="{k}"><NoDataValue>nan</NoDataValue>'
            f'<SimpleSource><SourceFilename relativeToVRT="0">{escape(name)}</SourceFilename>'
            f"<SourceBand>{band}</SourceBand></SimpleSource></VRTRasterBand>"
        )
    return _vrt(grid.crs.to_wkt(), grid.transform, grid.width, grid.height, bands, tags)


def _vrt(wkt: str, transform: Any, width: int, height: int, bands: list[str],
         tags: tuple[tuple[str, str], ...] = ()) -> str:  # fmt: skip
    gt = ", ".join(repr(float(v)) for v in transform.to_gdal())
    items = "".join(f'<MDI key="{escape(k)}">{escape(v)}</MDI>' for k, v in tags)
    metadata = f'<Metadata domain="IMAGERY">{items}</Metadata>' if tags else ""
    return (f'<VRTDataset rasterXSize="{width}" rasterYSize="{height}"><SRS>{escape(wkt)}</SRS>'
            f"<GeoTransform>{gt}</GeoTransform>{metadata}{''.join(bands)}</VRTDataset>")  # fmt: skip


def _band_vrt(source: ResolvedSource) -> str:
    """The role bands of a one-dataset source, in role order, as Float32 with ``offsets`` added (nodata → NaN)."""
    name = source.datasets[0]
    with open_source(name, source.role) as ds:
        crs, transform, width, height, nodata = ds.crs, ds.transform, ds.width, ds.height, ds.nodata
        dtypes = ds.dtypes
    nodata = source.nodata if nodata is None else nodata
    nodata_xml = f"<NODATA>{nodata!r}</NODATA>" if nodata is not None else ""
    offsets = source.offsets or (0.0,) * len(source.bands)
    bands = []
    for k, (band, offset) in enumerate(zip(source.bands, offsets), start=1):
        bands.append(
            f'<VRTRasterBand dataType="Float32" band="{k}"><NoDataValue>nan</NoDataValue>'
            f"<Description>{escape(source.roles[k - 1])}</Description>"
            f'<ComplexSource><SourceFilename relativeToVRT="0">{escape(name)}</SourceFilename>'
            f"<SourceBand>{band}</SourceBand><SourceProperties DataType=\"{dtypes[band - 1].capitalize()}\"/>"
            f"<ScaleOffset>{float(offset)!r}</ScaleOffset><ScaleRatio>1</ScaleRatio>{nodata_xml}"
            "</ComplexSource></VRTRasterBand>"
        )
    return _vrt(crs.to_wkt() if crs else "", transform, width, height, bands, source.tags)


def _lut_vrt(source: ResolvedSource) -> str:
    """A categorical mask through ``source.lut``: 1 = cloud, 0 = clear, 255 = nodata (Byte)."""
    name = source.datasets[0]
    with open_source(name, source.role) as ds:
        crs, transform, width, height = ds.crs, ds.transform, ds.width, ds.height
    lut = ",".join(f"{value}:{out}" for value, out in source.lut)
    band = (
        '<VRTRasterBand dataType="Byte" band="1"><NoDataValue>255</NoDataValue>'
        f'<ComplexSource><SourceFilename relativeToVRT="0">{escape(name)}</SourceFilename>'
        f"<SourceBand>{source.bands[0]}</SourceBand><LUT>{lut}</LUT></ComplexSource></VRTRasterBand>"
    )
    return _vrt(crs.to_wkt() if crs else "", transform, width, height, [band])


# ------------------------------------------------------------------------------------------------------- a run


def optical_window(opt_name: str, config: Any, store: Materialised, warnings: list[str]) -> dict[str, Any]:
    """The engine's rules on the optical grid: its CRS projected in metres (:mod:`engine.sources.metric_grid`) and, with
    ``--bounds``, the optical image (and the reference, which shares its grid) read through a VRT of the window
    (:mod:`engine.sources.bounds`; bounds that leave the image are cut to it, with a warning and the output's
    ``ALIGNCR_BOUNDS`` tag); returns the config changes (none without ``--bounds``)."""
    with open_source(opt_name, "optical") as ds:
        require_metric_crs(ds.crs)
        if config.bounds is None:
            return {}
        window = bounds_window(ds, config.bounds)
        crs, box = ds.crs, rasterio.windows.bounds(window, ds.transform)
        note = outside_note(ds, config.bounds, window)
    if note is not None:
        warnings.append(note)
    tag = {"ALIGNCR_BOUNDS": json.dumps({"requested": str(config.bounds), "processed": [round(v, 6) for v in box],
                                         "cut_to_the_image": note is not None})}  # fmt: skip
    changes = {"optical": store.write("optical_window", window_vrt(opt_name, window, tag))}
    if config.reference is not None:
        ref_name = os.fspath(config.reference)
        with open_source(ref_name, "reference") as ref:
            ref_window = bounds_window(ref, Bounds(*box, crs=None if ref.crs == crs else crs.to_wkt()))
        changes["reference"] = as_source(store.write("reference_window", window_vrt(ref_name, ref_window)))
    return changes


def resolve_run_inputs(config: Any, store: Materialised, grid_rules: bool = True,
                       ) -> tuple[Any, dict[str, ResolvedSource], list[str]]:  # fmt: skip
    """A :class:`~engine.config.RunConfig` whose optical, SAR and mask name what the readers open (the inputs
    themselves, or VRTs in ``store``), with the band lists and SAR units the resolution decided; the resolved
    sources by role (``mask`` always: a raster, or the detector :func:`resolve_mask` chose, whose config ``mask`` is
    then None); and the warnings to record (a split VV/VH pair far apart in time, ``--mask auto`` with no mask in the
    product). ``grid_rules`` applies :func:`optical_window` (a run; ``engine info`` only describes)."""
    warnings: list[str] = []
    user_bands = None if tuple(config.bands) == DEFAULT_BANDS else tuple(config.bands)
    optical = resolve_optical(config.optical, user_bands)
    if user_bands is not None and optical.kind.startswith("Sentinel-2") and user_bands != optical.bands:
        raise InputError(f"--bands does not apply to a Sentinel-2 product (its B2, B3, B4, B8 are read): "
                         f"{config.optical}")  # fmt: skip
    resolved = {"optical": optical}
    opt_name = materialise(optical, store)
    changes: dict[str, Any] = optical_window(opt_name, config, store, warnings) if grid_rules else {}
    opt_name = changes.get("optical", opt_name)
    bands = optical.bands if optical.passthrough else tuple(range(1, len(optical.bands) + 1))
    changes.update(optical=as_source(opt_name), bands=bands)
    warnings += optical.warnings
    if config.sar is not None or config.sar_vv is not None:
        sar = resolve_sar(config.sar, vv=config.sar_vv, vh=config.sar_vh, bands=tuple(config.sar_bands),
                          units=config.sar_units)  # fmt: skip
        resolved["sar"] = sar
        with open_source(opt_name, "optical") as ds:
            grid = TargetGrid(ds.crs, ds.transform, ds.width, ds.height)
        name = materialise(sar, store, grid, config.sar_resampling)
        changes.update(sar=as_source(name), sar_bands=sar.bands if sar.passthrough else (1, 2),
                       sar_units=sar.units or config.sar_units, sar_vv=None, sar_vh=None)  # fmt: skip
        warnings += sar.warnings
        gap = sar_date_gap(sar)
        if gap is not None and gap > SPLIT_GAP_WARN_DAYS:
            warnings.append(f"--sar-vv and --sar-vh were acquired {gap:.1f} days apart; the polarisations show "
                            "different days on the ground")  # fmt: skip
    mask = resolve_mask(config.mask, optical)
    resolved["mask"] = mask
    warnings += mask.warnings
    changes["mask"] = None if is_detector(mask) else as_source(materialise(mask, store))
    return replace(config, **changes), resolved, warnings
