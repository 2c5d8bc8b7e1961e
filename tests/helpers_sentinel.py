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


def scl_values(size: int) -> np.ndarray:
    """(size, size) SCL at 20 m: vegetation, a column block of each cloud class, a row of water, a nodata pixel."""
    scl = np.full((size, size), 4, dtype=np.uint8)
    for k, cls in enumerate((3, 8, 9, 10)):
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
    zipped: bool = False, seed: int = 0,
) -> Path:  # fmt: skip
    """A Sentinel-2 ``level`` (``L1C``/``L2A``/``L1B``) SAFE of ``size``² 10 m pixels in ``folder``; the .SAFE folder,
    or with ``zipped`` its .zip (folder removed)."""
    code = level[1:]  # 2A / 1C / 1B
    name = f"S2B_MSI{level}_{S2_DATE}_N{baseline.replace('.', '')}_R065_T32TNR_20240501T120000.SAFE"
    safe = folder / name
    granule = f"GRANULE/{level}_T32TNR_A037000_20240501T101600"
    img = f"{granule}/IMG_DATA"
    files = []
    for b, data in zip(S2_BAND_FILES, s2_band_values(size, seed)):
        rel = f"{img}/R10m/T32TNR_{S2_DATE}_{b}_10m" if level == "L2A" else f"{img}/T32TNR_{S2_DATE}_{b}"
        _jp2(safe / f"{rel}.jp2", data, 10.0)
        files.append(rel)
    if level == "L2A" and scl:
        rel = f"{img}/R20m/T32TNR_{S2_DATE}_SCL_20m"
        _jp2(safe / f"{rel}.jp2", scl_values(size // 2), 20.0)
        files.append(rel)
    offsets = "" if baseline < "04.00" else _offset_list(level)
    images = "".join(f"<IMAGE_FILE>{f}</IMAGE_FILE>" for f in files)
    xsd = f"https://psd-14.sentinel2.eo.esa.int/PSD/User_Product_Level-{code[0]}{code[1]}.xsd"
    (safe / f"MTD_MSI{level}.xml").write_text(f"""<?xml version="1.0" encoding="UTF-8"?>
<n1:Level-{code}_User_Product xmlns:n1="{xsd}"><n1:General_Info><Product_Info>
<PRODUCT_START_TIME>2024-05-01T10:15:59.024Z</PRODUCT_START_TIME><PRODUCT_URI>{name}</PRODUCT_URI>
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
