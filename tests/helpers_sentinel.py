"""Minimal Sentinel SAFE products for tests, built the way GDAL's own autotest builds its fakes.

Sentinel-2 (SAFE compact, L1C or L2A): ``MTD_MSIL1C.xml`` / ``MTD_MSIL2A.xml`` listing the granule's image files,
the granule's ``MTD_TL.xml`` with its tile geocoding (EPSG code, sizes and upper-left corners per resolution: what
the SENTINEL2 driver needs to build its subdatasets), and the band files as small lossless JPEG2000 (GDAL's
JP2OpenJPEG driver writes them; ``REVERSIBLE=YES`` keeps the DN exact). Only B02, B03, B04, B08 (10 m) and, for L2A
with ``scl``, the SCL (20 m) exist: the driver lists the other bands, the engine never reads them.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import rasterio
from rasterio.transform import from_origin

S2_ORIGIN = (550_000.0, 5_000_000.0)  # UTM 32N, as the other synthetic rasters
S2_DATE = "20240501T101559"
S2_BAND_FILES = ("B02", "B03", "B04", "B08")


def s2_band_values(size: int, seed: int = 0) -> np.ndarray:
    """(4, size, size) uint16 DN for B02, B03, B04, B08: smooth, 1100…6000, with a 0 (nodata) corner."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    out = np.stack([3500 + 2400 * np.sin(xx / (5 + b) + rng.uniform(0, 6)) * np.cos(yy / 7) for b in range(4)])
    out = np.clip(out, 1100, 6000).astype(np.uint16)
    out[:, :3, :3] = 0
    return out


def scl_values(size: int, clouds: bool = True) -> np.ndarray:
    """(size, size) SCL at 20 m: vegetation, a column block of each cloud class (unless ``clouds`` is False), a row
    of water, a nodata pixel."""
    scl = np.full((size, size), 4, dtype=np.uint8)
    for k, cls in enumerate((3, 8, 9, 10) if clouds else ()):
        scl[:, k] = cls
    scl[-1, :] = 6
    scl[0, -1] = 0
    return scl


def _jp2(path: Path, data: np.ndarray, res: float) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with rasterio.open(path, "w", driver="JP2OpenJPEG", width=data.shape[1], height=data.shape[0], count=1,
                       dtype=data.dtype.name, crs="EPSG:32632", transform=from_origin(*S2_ORIGIN, res, res),
                       QUALITY=100, REVERSIBLE="YES") as ds:  # fmt: skip
        ds.write(data[None])


def _offset_list(level: str) -> str:
    """Processing baseline ≥ 04.00: every band's −1000 offset, as the L2A / L1C metadata lists it."""
    tag, wrapper = ("BOA_ADD_OFFSET", "BOA_ADD_OFFSET_VALUES_LIST") if level == "L2A" else (
        "RADIO_ADD_OFFSET", "Radiometric_Offset_List")  # fmt: skip
    items = "".join(f'<{tag} band_id="{i}">-1000</{tag}>' for i in range(13))
    return f"<{wrapper}>{items}</{wrapper}>"


def write_s2_safe(
    folder: Path, *, level: str = "L2A", baseline: str = "05.10", size: int = 40, scl: bool = True,
    zipped: bool = False, seed: int = 0, date: str = S2_DATE, clouds: bool = True,
) -> Path:  # fmt: skip
    """A Sentinel-2 ``level`` (``L1C``/``L2A``/``L1B``) SAFE of ``size``² 10 m pixels in ``folder``, acquired on
    ``date`` (``YYYYMMDDTHHMMSS``), its SCL with cloud columns unless ``clouds`` is False; the .SAFE folder, or with
    ``zipped`` its .zip (folder removed)."""
    code = level[1:]  # 2A / 1C / 1B
    name = f"S2B_MSI{level}_{date}_N{baseline.replace('.', '')}_R065_T32TNR_{date[:8]}T120000.SAFE"
    safe = folder / name
    granule = f"GRANULE/{level}_T32TNR_A037000_{date[:8]}T101600"
    img = f"{granule}/IMG_DATA"
    files = []
    for b, data in zip(S2_BAND_FILES, s2_band_values(size, seed)):
        rel = f"{img}/R10m/T32TNR_{date}_{b}_10m" if level == "L2A" else f"{img}/T32TNR_{date}_{b}"
        _jp2(safe / f"{rel}.jp2", data, 10.0)
        files.append(rel)
    if level == "L2A" and scl:
        rel = f"{img}/R20m/T32TNR_{date}_SCL_20m"
        _jp2(safe / f"{rel}.jp2", scl_values(size // 2, clouds), 20.0)
        files.append(rel)
    offsets = "" if baseline < "04.00" else _offset_list(level)
    images = "".join(f"<IMAGE_FILE>{f}</IMAGE_FILE>" for f in files)
    xsd = f"https://psd-14.sentinel2.eo.esa.int/PSD/User_Product_Level-{code[0]}{code[1]}.xsd"
    (safe / f"MTD_MSI{level}.xml").write_text(f"""<?xml version="1.0" encoding="UTF-8"?>
<n1:Level-{code}_User_Product xmlns:n1="{xsd}"><n1:General_Info><Product_Info>
<PRODUCT_START_TIME>{date[:4]}-{date[4:6]}-{date[6:8]}T{date[9:11]}:{date[11:13]}:{date[13:15]}.024Z</PRODUCT_START_TIME><PRODUCT_URI>{name}</PRODUCT_URI>
<PROCESSING_LEVEL>Level-{code}</PROCESSING_LEVEL><PRODUCT_TYPE>S2MSI{code}</PRODUCT_TYPE>
<PROCESSING_BASELINE>{baseline}</PROCESSING_BASELINE>
<Query_Options completeSingleTile="true"><PRODUCT_FORMAT>SAFE_COMPACT</PRODUCT_FORMAT></Query_Options>
<Product_Organisation><Granule_List><Granule granuleIdentifier="G" imageFormat="JPEG2000">{images}</Granule>
</Granule_List></Product_Organisation></Product_Info>
<Product_Image_Characteristics><Special_Values><SPECIAL_VALUE_TEXT>NODATA</SPECIAL_VALUE_TEXT>
<SPECIAL_VALUE_INDEX>0</SPECIAL_VALUE_INDEX></Special_Values>{offsets}</Product_Image_Characteristics>
</n1:General_Info></n1:Level-{code}_User_Product>""")
    geo = "".join(f'<Size resolution="{r}"><NROWS>{size * 10 // r}</NROWS><NCOLS>{size * 10 // r}</NCOLS></Size>'
                  for r in (10, 20, 60))  # fmt: skip
    geo += "".join(f'<Geoposition resolution="{r}"><ULX>{S2_ORIGIN[0]:.0f}</ULX><ULY>{S2_ORIGIN[1]:.0f}</ULY>'
                   f"<XDIM>{r}</XDIM><YDIM>-{r}</YDIM></Geoposition>" for r in (10, 20, 60))  # fmt: skip
    (safe / granule / "MTD_TL.xml").write_text(f"""<?xml version="1.0" encoding="UTF-8"?>
<n1:Level-{code}_Tile_ID xmlns:n1="https://psd-14.sentinel2.eo.esa.int/PSD/S2_PDI_Level-{code}_Tile_Metadata.xsd">
<n1:Geometric_Info><Tile_Geocoding><HORIZONTAL_CS_NAME>WGS84 / UTM zone 32N</HORIZONTAL_CS_NAME>
<HORIZONTAL_CS_CODE>EPSG:32632</HORIZONTAL_CS_CODE>{geo}</Tile_Geocoding></n1:Geometric_Info>
</n1:Level-{code}_Tile_ID>""")
    (safe / "manifest.safe").write_text("<xfdu:XFDU xmlns:xfdu='urn:ccsds:schema:xfdu:1'/>")
    if not zipped:
        return safe
    archive = shutil.make_archive(str(folder / name.removesuffix(".SAFE")), "zip", root_dir=folder, base_dir=name)
    shutil.rmtree(safe)
    return Path(archive)


# --------------------------------------------------------------------------------------------------- Sentinel-1

S1_START, S1_STOP = "2024-05-01T05:45:12.000000", "2024-05-01T05:45:37.000000"
S1_NAME = "S1A_IW_{kind}_1SDV_20240501T054512_20240501T054537_053660_0684D5_ABCD.SAFE"
S1_ORIGIN = (9.6355, 45.1522)  # lon, lat of line 0, pixel 0: just outside the UTM 32N test rasters' corner
S1_STEP = (6e-5, -4.8e-5)  # degrees per pixel, per line (≈ 5 m): 100 × 100 covers a 400 m S2 fixture
S1_INCIDENCE = (30.5, 45.7)  # incidence angle at the near and far range, degrees


def s1_dn(lines: int, samples: int, pol: str) -> np.ndarray:
    """uint16 digital numbers of one polarisation: smooth, 20…600, a 0 (no data) first column."""
    yy, xx = np.mgrid[0:lines, 0:samples].astype(np.float32)
    scale = 300.0 if pol == "VV" else 80.0
    dn = scale + 0.8 * scale * np.sin(xx / 4.0) * np.cos(yy / 5.0)
    dn = np.clip(dn, 20, 600).astype(np.uint16)
    dn[:, 0] = 0
    return dn


def s1_sigma_lut(samples: int) -> tuple[np.ndarray, np.ndarray]:
    """(pixels, A) of the calibration vectors: A_σ grows linearly with range, 400 → 600."""
    pixels = np.array([0, samples // 2, samples - 1])
    return pixels, 400.0 + 200.0 * pixels / (samples - 1)


def s1_noise_range(samples: int) -> tuple[np.ndarray, np.ndarray]:
    """(pixels, η) of the noise range vectors: thermal noise power in DN², 900 → 2,100 across range (above the
    darkest VH pixels' DN², so noise-subtracted σ⁰ goes negative there, as it does over calm water)."""
    pixels = np.array([0, samples // 2, samples - 1])
    return pixels, 900.0 + 1200.0 * pixels / (samples - 1)


S1_NOISE_AZIMUTH = (1.0, 1.25)  # the azimuth noise gain at the first and last line (both swath blocks)


def s1_noise_xml(lines: int, samples: int, ipf: str = "3", blocks: tuple[tuple[float, float], ...] = ()) -> str:
    """A noise annotation: range vectors (:func:`s1_noise_range`) at lines 0, lines/2, lines-1 and, for ``ipf="3"``
    (IPF ≥ 2.9 layout), two swath blocks splitting the samples in half with the azimuth gains ``blocks`` (default
    :data:`S1_NOISE_AZIMUTH` in both), linear along lines; ``ipf="2"`` is the older ``noiseVector`` layout."""
    pixels, eta = s1_noise_range(samples)
    vec, lut = ("noiseRangeVector", "noiseRangeLut") if ipf == "3" else ("noiseVector", "noiseLut")
    vectors = "".join(
        f"<{vec}><azimuthTime>2024-05-01T05:45:{12 + k:02d}.000000</azimuthTime><line>{line}</line>"
        f'<pixel count="{len(pixels)}">{" ".join(map(str, pixels))}</pixel>'
        f'<{lut} count="{len(pixels)}">{" ".join(f"{v:.6e}" for v in eta)}</{lut}></{vec}>'
        for k, line in enumerate((0, lines // 2, lines - 1))
    )
    body = f'<{vec}List count="3">{vectors}</{vec}List>'
    if ipf == "3":
        gains = blocks or (S1_NOISE_AZIMUTH, S1_NOISE_AZIMUTH)
        half = samples // 2
        spans = ((0, half - 1), (half, samples - 1))
        body += f'<noiseAzimuthVectorList count="{len(gains)}">' + "".join(
            f"<noiseAzimuthVector><swath>IW{k + 1}</swath><firstAzimuthLine>0</firstAzimuthLine>"
            f"<firstRangeSample>{first}</firstRangeSample><lastAzimuthLine>{lines - 1}</lastAzimuthLine>"
            f'<lastRangeSample>{last}</lastRangeSample><line count="2">0 {lines - 1}</line>'
            f'<noiseAzimuthLut count="2">{g[0]:.6e} {g[1]:.6e}</noiseAzimuthLut></noiseAzimuthVector>'
            for k, ((first, last), g) in enumerate(zip(spans, gains))
        ) + "</noiseAzimuthVectorList>"
    return f'<?xml version="1.0" encoding="UTF-8"?>\n<noise>{body}</noise>'


def _s1_gcps(lines: int, samples: int) -> list[tuple[int, int, float, float, float]]:
    """(line, pixel, lat, lon, incidence) on a coarse grid, as the annotation's geolocation grid."""
    out = []
    for line in np.linspace(0, lines - 1, 5).round().astype(int):
        for pixel in np.linspace(0, samples - 1, 5).round().astype(int):
            lon = S1_ORIGIN[0] + pixel * S1_STEP[0]
            lat = S1_ORIGIN[1] + line * S1_STEP[1]
            inc = S1_INCIDENCE[0] + (S1_INCIDENCE[1] - S1_INCIDENCE[0]) * pixel / (samples - 1)
            out.append((int(line), int(pixel), lat, lon, inc))
    return out


def write_s1_safe(
    folder: Path, *, kind: str = "GRDH", pols: tuple[str, ...] = ("VV", "VH"), lines: int = 30, samples: int = 36,
    zipped: bool = False, noise: str | None = "3",
) -> Path:  # fmt: skip
    """A Sentinel-1 IW product (``kind`` GRDH, SLC_, OCN_) of ``lines`` × ``samples`` in ``folder``: manifest.safe,
    per polarisation an annotation (header, image size, geolocation grid with incidence angles), a calibration
    (σ⁰/β⁰/γ/dn LUT vectors, :func:`s1_sigma_lut`), a noise annotation in the IPF ``noise`` layout
    (:func:`s1_noise_xml`; None = none, as the oldest products) and a measurement GeoTIFF of DN with the same GCPs."""
    from rasterio.control import GroundControlPoint

    name = S1_NAME.format(kind=kind)
    safe = folder / name
    product_type = kind.rstrip("_HM")[:3] if kind != "OCN_" else "OCN"
    gcps = _s1_gcps(lines, samples)
    pixels, sigma = s1_sigma_lut(samples)
    units, objects = [], []
    for i, pol in enumerate(pols, start=1):
        stem = f"s1a-iw-{product_type.lower()}-{pol.lower()}-20240501t054512-20240501t054537-053660-0684d5-{i:03d}"
        points = "".join(
            f"<geolocationGridPoint><azimuthTime>{S1_START}</azimuthTime><slantRangeTime>5.3e-03</slantRangeTime>"
            f"<line>{line}</line><pixel>{pixel}</pixel><latitude>{lat!r}</latitude><longitude>{lon!r}</longitude>"
            f"<height>1.0e+02</height><incidenceAngle>{inc!r}</incidenceAngle><elevationAngle>{inc - 3:.3f}"
            "</elevationAngle></geolocationGridPoint>"
            for line, pixel, lat, lon, inc in gcps
        )
        header = (f"<adsHeader><missionId>S1A</missionId><productType>{product_type}</productType>"
                  f"<polarisation>{pol}</polarisation><mode>IW</mode><swath>IW</swath>"
                  f"<startTime>{S1_START}</startTime><stopTime>{S1_STOP}</stopTime>"
                  f"<imageNumber>{i:03d}</imageNumber></adsHeader>")  # fmt: skip
        (safe / "annotation" / "calibration").mkdir(parents=True, exist_ok=True)
        (safe / "annotation" / f"{stem}.xml").write_text(
            f'<?xml version="1.0" encoding="UTF-8"?>\n<product>{header}<imageAnnotation><imageInformation>'
            f"<numberOfSamples>{samples}</numberOfSamples><numberOfLines>{lines}</numberOfLines>"
            "<outputPixels>16 bit Unsigned Integer</outputPixels></imageInformation><processingInformation>"
            "<ellipsoidName>WGS84</ellipsoidName><ellipsoidSemiMajorAxis>6.378137e+06</ellipsoidSemiMajorAxis>"
            "<ellipsoidSemiMinorAxis>6.356752314245179e+06</ellipsoidSemiMinorAxis></processingInformation>"
            f'</imageAnnotation><geolocationGrid><geolocationGridPointList count="{len(gcps)}">'
            f"{points}</geolocationGridPointList></geolocationGrid></product>"
        )
        vectors = "".join(  # one per third of the scene, distinct times (the driver interpolates between them)
            f"<calibrationVector><azimuthTime>2024-05-01T05:45:{12 + k:02d}.000000</azimuthTime><line>{line}</line>"
            f'<pixel count="{len(pixels)}">{" ".join(map(str, pixels))}</pixel>'
            f'<sigmaNought count="{len(pixels)}">{" ".join(f"{v:.6e}" for v in sigma)}</sigmaNought>'
            f'<betaNought count="{len(pixels)}">{" ".join("4.7e+02" for _ in pixels)}</betaNought>'
            f'<gamma count="{len(pixels)}">{" ".join(f"{v * 0.9:.6e}" for v in sigma)}</gamma>'
            f'<dn count="{len(pixels)}">{" ".join("4.7e+02" for _ in pixels)}</dn></calibrationVector>'
            for k, line in enumerate((0, lines // 2, lines - 1))
        )
        (safe / "annotation" / "calibration" / f"calibration-{stem}.xml").write_text(
            f'<?xml version="1.0" encoding="UTF-8"?>\n<calibration>{header}<calibrationInformation>'
            "<absoluteCalibrationConstant>1.0</absoluteCalibrationConstant></calibrationInformation>"
            f'<calibrationVectorList count="3">{vectors}</calibrationVectorList></calibration>'
        )
        if noise is not None:
            (safe / "annotation" / "calibration" / f"noise-{stem}.xml").write_text(s1_noise_xml(lines, samples, noise))
        (safe / "measurement").mkdir(exist_ok=True)
        with rasterio.open(safe / "measurement" / f"{stem}.tiff", "w", driver="GTiff", width=samples, height=lines,
                           count=1, dtype="uint16") as ds:  # fmt: skip
            ds.write(s1_dn(lines, samples, pol)[None])
            ds.gcps = ([GroundControlPoint(row=line, col=pixel, x=lon, y=lat, z=100.0)
                        for line, pixel, lat, lon, _ in gcps], "EPSG:4326")  # fmt: skip
        key = stem.replace("-", "")
        units.append(
            f'<xfdu:contentUnit unitType="Metadata Unit" repID="s1Level1ProductSchema"><dataObjectPointer '
            f'dataObjectID="product{key}"/></xfdu:contentUnit><xfdu:contentUnit unitType="Metadata Unit" '
            f'repID="s1Level1CalibrationSchema"><dataObjectPointer dataObjectID="calibration{key}"/></xfdu:contentUnit>'
            f'<xfdu:contentUnit unitType="Measurement Data Unit" repID="s1Level1MeasurementSchema" '
            f'dmdID="product{key}Annotation calibration{key}Annotation"><dataObjectPointer dataObjectID="{key}"/>'
            "</xfdu:contentUnit>"
        )
        for ident, rep, href in ((f"product{key}", "s1Level1ProductSchema", f"./annotation/{stem}.xml"),
                                 (f"calibration{key}", "s1Level1CalibrationSchema",
                                  f"./annotation/calibration/calibration-{stem}.xml"),
                                 (key, "s1Level1MeasurementSchema", f"./measurement/{stem}.tiff")):  # fmt: skip
            objects.append(f'<dataObject ID="{ident}" repID="{rep}"><byteStream mimeType="text/xml">'
                           f'<fileLocation locatorType="URL" href="{href}"/></byteStream></dataObject>')  # fmt: skip
    metadata = "".join(
        f'<metadataObject ID="{kind_}{stem_}Annotation" classification="DESCRIPTION" category="DMD">'
        f'<dataObjectPointer dataObjectID="{kind_}{stem_}"/></metadataObject>'
        for stem_ in (o.split('ID="')[1].split('"')[0] for o in objects if 'repID="s1Level1MeasurementSchema"' in o)
        for kind_ in ("product", "calibration")
    )
    (safe / "manifest.safe").write_text(
        '<?xml version="1.0" encoding="UTF-8"?>\n<xfdu:XFDU xmlns:xfdu="urn:ccsds:schema:xfdu:1" '
        'xmlns:safe="http://www.esa.int/safe/sentinel-1.0" '
        'xmlns:s1sarl1="http://www.esa.int/safe/sentinel-1.0/sentinel-1/sar/level-1">'
        '<informationPackageMap><xfdu:contentUnit unitType="SAFE Archive Information Package">'
        f"{''.join(units)}</xfdu:contentUnit></informationPackageMap><metadataSection>{metadata}"
        '<metadataObject ID="platform" classification="DESCRIPTION" category="DMD"><metadataWrap><xmlData>'
        "<safe:platform><safe:familyName>SENTINEL-1</safe:familyName><safe:number>A</safe:number><safe:instrument>"
        "<safe:extension><s1sarl1:instrumentMode><s1sarl1:mode>IW</s1sarl1:mode><s1sarl1:swath>IW</s1sarl1:swath>"
        "</s1sarl1:instrumentMode></safe:extension></safe:instrument></safe:platform></xmlData></metadataWrap>"
        '</metadataObject><metadataObject ID="generalProductInformation" classification="DESCRIPTION" '
        'category="DMD"><metadataWrap><xmlData><s1sarl1:standAloneProductInformation>'
        f"<s1sarl1:productType>{product_type}</s1sarl1:productType></s1sarl1:standAloneProductInformation>"
        '</xmlData></metadataWrap></metadataObject><metadataObject ID="acquisitionPeriod" '
        'classification="DESCRIPTION" category="DMD"><metadataWrap><xmlData><safe:acquisitionPeriod>'
        f"<safe:startTime>{S1_START}</safe:startTime><safe:stopTime>{S1_STOP}</safe:stopTime>"
        "</safe:acquisitionPeriod></xmlData></metadataWrap></metadataObject></metadataSection>"
        f"<dataObjectSection>{''.join(objects)}</dataObjectSection></xfdu:XFDU>"
    )
    if not zipped:
        return safe
    archive = shutil.make_archive(str(folder / name.removesuffix(".SAFE")), "zip", root_dir=folder, base_dir=name)
    shutil.rmtree(safe)
    return Path(archive)
