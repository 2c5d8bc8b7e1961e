"""Sentinel-2 L1C / L2A SAFE products (folder or zip) through GDAL's SENTINEL2 driver, for
:mod:`engine.sources.resolve`.

The driver turns the product's metadata into subdatasets by resolution (``SENTINEL2_L2A:…/MTD_MSIL2A.xml:10m:
EPSG_32632``): the 10 m one holds B4, B3, B2, B8 (in that order, plus AOT/WVP for L2A), each band described
("B4, central wavelength 665 nm") and, from processing baseline 04.00 on, carrying its ``BOA_ADD_OFFSET`` (L2A) or
``RADIO_ADD_OFFSET`` (L1C), −1000: reflectance is (DN + offset) / 10 000. The engine reads B2, B3, B4, B8 in its
order with that offset added, 0 as nodata (the product's ``SPECIAL_VALUE_NODATA``). An L2A's scene classification
(SCL, 20 m subdataset) gives ``--mask auto`` its cloud mask: cloud medium/high probability, thin cirrus and cloud
shadow are cloud; the pipeline warps it onto the 10 m grid with nearest like every mask.
"""

from __future__ import annotations

import re
import warnings

import rasterio
from rasterio._err import CPLE_BaseError
from rasterio.errors import NotGeoreferencedWarning, RasterioError

from engine.errors import InputError, one_line
from engine.sources.product import OPTICAL_ROLES, ResolvedSource, SafeProduct, open_source

S2_BANDS = ("B2", "B3", "B4", "B8")  # blue, green, red, NIR = OPTICAL_ROLES
_MTD = re.compile(r"^(MTD_MSIL(1C|2A)|S2._OPER_MTD_SAFL(1C|2A).*)\.xml$")
# SCL classes: 0 no data, 1 saturated/defective, 2 dark area, 3 cloud shadow, 4 vegetation, 5 not vegetated,
# 6 water, 7 unclassified, 8 cloud medium probability, 9 cloud high probability, 10 thin cirrus, 11 snow/ice.
SCL_CLOUD = (3, 8, 9, 10)
SCL_NODATA = 0
SCL_LUT = tuple((c, 255 if c == SCL_NODATA else int(c in SCL_CLOUD)) for c in range(12))
OFFSET_BASELINE = (4, 0)  # from processing baseline 04.00 on, DN carry an offset
DEFAULT_OFFSET = -1000.0


def resolve_s2(product: SafeProduct) -> ResolvedSource:
    """The 10 m B2, B3, B4, B8 of an L1C/L2A product, their offsets, and for L2A its SCL as the mask found."""
    mtd = _metadata_file(product)
    level = "L2A" if "2A" in mtd.rsplit("/", 1)[-1] else "L1C"
    root = _quiet_open(mtd, product.given)
    with root:
        subdatasets, tags = list(root.subdatasets), root.tags()
    ten = [s for s in subdatasets if ":10m:" in s]
    if not ten:
        raise InputError(f"Sentinel-2 product has no 10 m bands GDAL can read (missing JP2 files, or no JPEG2000 "
                         f"driver in this GDAL): {product.given}")  # fmt: skip
    notes = []
    if len(ten) > 1:
        notes.append(f"{len(ten)} UTM zones in the product: the first is read ({ten[0].rsplit(':', 1)[-1]})")
    with open_source(ten[0], "optical (Sentinel-2 10 m)") as ds:
        names = [(d or "").split(",")[0].strip() for d in ds.descriptions]
        missing = [b for b in S2_BANDS if b not in names]
        if missing:
            raise InputError(f"Sentinel-2 10 m subdataset lacks band(s) {', '.join(missing)}: {product.given}")
        bands = tuple(names.index(b) + 1 for b in S2_BANDS)
        offsets = tuple(_offset(ds.tags(b), tags) for b in bands)
    if any(offsets):
        notes.append(f"offset {offsets[0]:g} added to the DN (processing baseline {tags.get('PROCESSING_BASELINE')})")
    date = tags.get("PRODUCT_START_TIME") or tags.get("DATATAKE_1_DATATAKE_SENSING_START")
    mask = _scl_mask(subdatasets, product) if level == "L2A" else None
    return ResolvedSource(
        "optical", product.given, f"Sentinel-2 {level} SAFE", (ten[0],), "SENTINEL2", OPTICAL_ROLES, bands,
        units="dn", offsets=offsets if any(offsets) else (), nodata=float(tags.get("SPECIAL_VALUE_NODATA", 0)),
        tags=(("ACQUISITIONDATETIME", date),) if date else (("PRODUCT", product.name),), mask=mask,
        notes=tuple(notes),
    )  # fmt: skip


def _metadata_file(product: SafeProduct) -> str:
    """The product's main metadata file (MTD_MSIL2A.xml …); an L1B or anything else is one line."""
    if "MSIL1B" in product.name or any("MTD_SAFL1B" in m or "MTD_L1B" in m for m in product.members):
        raise InputError(f"Sentinel-2 L1B is in sensor geometry (not orthorectified); give the L1C or L2A product: "
                         f"{product.given}")  # fmt: skip
    found = [m for m in product.members if "/" not in m and _MTD.match(m)]
    if not found:
        raise InputError(f"Sentinel-2 product has no MTD_MSIL1C.xml / MTD_MSIL2A.xml: {product.given}")
    return product.vsi(found[0])


def _quiet_open(name: str, given: str) -> rasterio.io.DatasetReader:
    """Open the product's root (no bands, only subdatasets) without rasterio's not-georeferenced warning."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        try:
            return rasterio.open(name)
        except (RasterioError, CPLE_BaseError) as exc:
            raise InputError(f"Sentinel-2 product is not readable by GDAL ({one_line(exc)}): {given}") from None


def _offset(band_tags: dict[str, str], product_tags: dict[str, str]) -> float:
    """The band's additive offset as the driver reports it, else the baseline rule (≥ 04.00: −1000), else 0."""
    for key in ("BOA_ADD_OFFSET", "RADIO_ADD_OFFSET"):
        if key in band_tags:
            return float(band_tags[key])
    baseline = re.match(r"(\d+)\.(\d+)", product_tags.get("PROCESSING_BASELINE", ""))
    if baseline and (int(baseline.group(1)), int(baseline.group(2))) >= OFFSET_BASELINE:
        return DEFAULT_OFFSET
    return 0.0


def _scl_mask(subdatasets: list[str], product: SafeProduct) -> ResolvedSource | None:
    """The SCL band of the 20 m subdataset through :data:`SCL_LUT`, or None when the product has none."""
    twenty = [s for s in subdatasets if ":20m:" in s]
    if not twenty:
        return None
    with open_source(twenty[0], "Sentinel-2 20 m subdataset") as ds:
        names = [(d or "").split(",")[0].strip() for d in ds.descriptions]
    if "SCL" not in names:
        return None
    return ResolvedSource(
        "cloud mask", product.given, "Sentinel-2 SCL", (twenty[0],), "SENTINEL2", ("scl",), (names.index("SCL") + 1,),
        lut=SCL_LUT, notes=("SCL cloud shadow, cloud medium/high probability, thin cirrus = cloud (20 m, nearest)",),
    )  # fmt: skip
