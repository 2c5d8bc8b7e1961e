"""The output GeoTIFF keeps the input's metadata (acquisition time, band tags, scale/offset, units) and says how it
was made (ALIGNCR_* tags); the NDVI keeps the scene's tags; a declouded scene can stand in for the original."""

from __future__ import annotations

import json

import pytest
import rasterio
from helpers_models import registered_test_models
from helpers_rasters import write_mask, write_optical, write_sar

from engine.config import RunConfig
from engine.outputs.ndvi import write_ndvi
from engine.outputs.provenance import SOFTWARE, weights_id
from engine.sources.dates import read_acquisition_date
from engine.stream.pipeline import run

ACQUIRED = "2024-06-01T10:20:30+00:00"


@pytest.fixture(scope="module", autouse=True)
def _models():
    with registered_test_models():
        yield


@pytest.fixture()
def scene(tmp_path):
    sub = tmp_path / "inputs"
    sub.mkdir()
    opt = write_optical(sub / "planet.tif", height=48, width=40)
    with rasterio.open(opt, "r+") as ds:
        ds.update_tags(SATELLITE_ID="2427", CUSTOM="kept")
        ds.update_tags(ns="IMAGERY", ACQUISITIONDATETIME=ACQUIRED)
        ds.update_tags(1, WAVELENGTH="490")
        ds.scales = (1e-4,) * 4
        ds.units = ("reflectance",) * 4
    sar = write_sar(sub / "s1.tif", like=opt)
    return opt, sar


def test_output_keeps_the_input_metadata_and_says_how_it_was_made(tmp_path, scene):
    opt, sar = scene
    out = tmp_path / "out.tif"
    run(RunConfig(optical=opt, sar=sar, out=out, model="test-brighten", mode="raw", tile=32, overlap=8))
    with rasterio.open(out) as ds:
        tags = ds.tags()
        assert tags["SATELLITE_ID"] == "2427" and tags["CUSTOM"] == "kept"
        assert ds.tags(ns="IMAGERY")["ACQUISITIONDATETIME"] == ACQUIRED
        assert ds.tags(1)["WAVELENGTH"] == "490"
        assert ds.scales == (1e-4,) * 4 and ds.units == ("reflectance",) * 4
        assert tags["TIFFTAG_SOFTWARE"] == SOFTWARE
        assert tags["ALIGNCR_MODEL"] == "test-brighten" and tags["ALIGNCR_WEIGHTS"].startswith("none")
        assert "reconstruction wherever" in tags["ALIGNCR_PRODUCT"]
        assert json.loads(tags["ALIGNCR_INPUTS"]) == {"optical": "planet.tif", "sar": "s1.tif"}  # names, no folders
        settings = json.loads(tags["ALIGNCR_SETTINGS"])
        assert (settings["tile"], settings["overlap"], settings["sar_units"], settings["dtype"]) == (32, 8, "db",
                                                                                                    "float32")
        assert "T" in tags["ALIGNCR_PROCESSED"]
    assert read_acquisition_date(out).isoformat() == ACQUIRED  # the declouded scene keeps its date


def test_cog_only_cloudy_weights_and_ndvi(tmp_path, scene):
    opt, sar = scene
    mask = write_mask(tmp_path / "udm.tif", like=opt)
    from engine.stream.mode import BUNDLED

    if not BUNDLED["aligncr-lite"].is_file():
        pytest.skip("no bundled weights")
    out = tmp_path / "out_cog.tif"
    run(RunConfig(optical=opt, sar=sar, out=out, mask=mask, weights=BUNDLED["aligncr-lite"], tile=32, overlap=8,
                  cog=True, only_cloudy=True, cloud_feather=3))  # fmt: skip
    with rasterio.open(out) as ds:
        tags = ds.tags()
        assert ds.tags(ns="IMAGE_STRUCTURE").get("LAYOUT") == "COG"
        assert tags["ACQUISITIONDATETIME"] == ACQUIRED  # GDAL's COG copy keeps the default domain only
        assert ds.tags(1)["WAVELENGTH"] == "490" and ds.scales == (1e-4,) * 4
        assert tags["ALIGNCR_WEIGHTS"] == weights_id(BUNDLED["aligncr-lite"])
        assert tags["ALIGNCR_MODEL"] == "aligncr-lite" and "others as acquired" in tags["ALIGNCR_PRODUCT"]
        settings = json.loads(tags["ALIGNCR_SETTINGS"])
        assert settings["only_cloudy"] is True and settings["cloud_feather"] == 3
    assert read_acquisition_date(out).isoformat() == ACQUIRED
    ndvi = write_ndvi(out, tmp_path / "ndvi.tif", red_band=3, nir_band=4)
    with rasterio.open(ndvi) as ds:
        assert ds.tags()["ACQUISITIONDATETIME"] == ACQUIRED
        assert ds.tags()["ALIGNCR_MODEL"] == "aligncr-lite"
        assert ds.tags(1)["RED_BAND"] == "3"


def test_weights_id_names_the_bytes(tmp_path):
    a = tmp_path / "w.safetensors"
    a.write_bytes(b"x" * 3_000_000)
    first = weights_id(a)
    assert first.startswith("w.safetensors sha256:") and first == weights_id(a)
    a.write_bytes(b"x" * 2_999_999 + b"y")
    assert weights_id(a) != first


@pytest.mark.parametrize(
    ("sar_tags", "gap", "warned"),
    [
        ({"ns": "IMAGERY", "ACQUISITIONDATETIME": "2024-06-20T10:20:30Z"}, 19.0, True),
        ({"TIFFTAG_DATETIME": "2024:06:03 10:20:30"}, 2.0, False),
        ({}, None, False),  # the SAR has no date: nothing to compare
    ],
)
def test_sar_acquired_far_from_the_optical_image_is_a_warning(tmp_path, scene, sar_tags, gap, warned):
    opt, sar = scene
    if sar_tags:
        with rasterio.open(sar, "r+") as ds:
            ds.update_tags(**sar_tags)
    out = tmp_path / "out.tif"
    result = run(RunConfig(optical=opt, sar=sar, out=out, model="identity", tile=32, overlap=8))
    messages = [w for w in result.warnings if "days from the optical image" in w]
    assert bool(messages) == warned
    if warned:
        assert messages[0].startswith("the SAR was acquired 19 days from the optical image (tags ACQUISITIONDATETIME")
    with rasterio.open(out) as ds:
        assert json.loads(ds.tags()["ALIGNCR_SETTINGS"])["sar_gap_days"] == gap
