"""sources.resolve: inputs as analysts download them — split VV/VH, RTC units, GDAL dataset names, PlanetScope."""

from __future__ import annotations

import json
import zipfile

import numpy as np
import pytest
import rasterio
import torch
from helpers_models import Probe, registered_test_models
from helpers_rasters import UTM32N, WGS84, footprint_transform, write_mask, write_optical, write_raster, write_sar

from engine.align.reader import AlignedReader, Grid
from engine.cli import main
from engine.config import RunConfig, as_source, is_gdal_name
from engine.errors import InputError
from engine.sources.product import Materialised
from engine.sources.raster import open_raster
from engine.sources.resolve import TargetGrid, materialise, resolve_optical, resolve_run_inputs, resolve_sar
from engine.stream.pipeline import run


@pytest.fixture(scope="module", autouse=True)
def _models():
    with registered_test_models():
        yield


@pytest.fixture()
def scene(tmp_path):
    """Optical (UTM, 3 m) and a stacked dB SAR (EPSG:4326, ~10 m) plus its VV and VH as two files."""
    opt = write_optical(tmp_path / "opt.tif", height=48, width=56)
    sar = write_sar(tmp_path / "s1.tif", like=opt)
    with rasterio.open(sar) as ds:
        data, transform = ds.read(), ds.transform
    vv = write_raster(tmp_path / "vv.tif", data[0], crs=WGS84, transform=transform)
    vh = write_raster(tmp_path / "vh.tif", data[1], crs=WGS84, transform=transform)
    return opt, sar, vv, vh


def _cfg(opt, out, **kw):
    return RunConfig(optical=opt, out=out, **{"tile": 32, "overlap": 8, "model": "test-probe", **kw})


def _probe_sar(config: RunConfig) -> torch.Tensor:
    Probe.seen.clear()
    run(config)
    return torch.cat([s for _, s in Probe.seen])


def _grid(path) -> TargetGrid:
    with rasterio.open(path) as ds:
        return TargetGrid(ds.crs, ds.transform, ds.width, ds.height)


def test_gdal_names_stay_strings_and_files_become_paths(tmp_path):
    for name in ("/vsizip//data/x.zip/a.tif", "SENTINEL1_CALIB:SIGMA0:/d/manifest.safe:IW_VV:INTENSITY",
                 "SENTINEL2_L2A:/d/MTD_MSIL2A.xml:10m:EPSG_32632"):  # fmt: skip
        assert is_gdal_name(name) and as_source(name) == name  # Path would fold "//" into a relative path
    for name in ("a.tif", "/abs/b.tif", "C:\\data\\c.tif", tmp_path / "d.vrt"):
        assert not is_gdal_name(name) and as_source(name) == type(as_source(name))(name)
    assert RunConfig(optical="/vsizip//d/x.zip/a.tif", out=tmp_path / "o.tif").optical == "/vsizip//d/x.zip/a.tif"


def test_split_polarisations_feed_the_model_what_the_stacked_file_does(tmp_path, scene):
    opt, sar, vv, vh = scene
    stacked = _probe_sar(_cfg(opt, tmp_path / "a.tif", sar=sar))
    split = _probe_sar(_cfg(opt, tmp_path / "b.tif", sar_vv=vv, sar_vh=vh))
    torch.testing.assert_close(split, stacked, rtol=0, atol=0)


def test_split_polarisations_on_different_grids_are_each_warped_onto_the_optical_grid(tmp_path, scene):
    opt, _, vv, _ = scene
    transform, w, h = footprint_transform(opt, UTM32N, 20.0, margin=40.0)  # another CRS, resolution and extent
    vh_data = np.random.default_rng(3).uniform(-28, -14, (h, w)).astype(np.float32)
    vh = write_raster(tmp_path / "vh_utm.tif", vh_data, crs=UTM32N, transform=transform)
    source = resolve_sar(vv=vv, vh=vh)
    with Materialised() as store, rasterio.open(opt) as o:
        name = materialise(source, store, _grid(opt), "nearest")
        with rasterio.open(name) as ds, rasterio.open(vv) as a, rasterio.open(vh) as b:
            got = ds.read()
            for k, single in enumerate((a, b)):
                with AlignedReader(single, Grid.of(o), (1,)) as reader:
                    np.testing.assert_array_equal(got[k], reader.read_all()[0])
    assert source.kind == "split VV/VH" and source.units == "db"


def test_split_polarisations_from_different_dates_warn_with_the_gap(tmp_path, scene):
    opt, _, vv, vh = scene
    for path, date in ((vv, "2024:05:01 10:00:00"), (vh, "2024:05:11 10:00:00")):
        with rasterio.open(path, "r+") as ds:
            ds.update_tags(TIFFTAG_DATETIME=date)
    with Materialised() as store:
        _, _, warnings = resolve_run_inputs(_cfg(opt, tmp_path / "o.tif", sar_vv=vv, sar_vh=vh), store)
    assert any("10.0 days apart" in w for w in warnings)


def test_split_needs_both_and_not_with_sar(tmp_path, scene):
    opt, sar, vv, _ = scene
    with pytest.raises(InputError, match="--sar-vh is missing"):
        _cfg(opt, tmp_path / "o.tif", sar_vv=vv).validate()
    with pytest.raises(InputError, match="not both"):
        _cfg(opt, tmp_path / "o.tif", sar=sar, sar_vv=vv, sar_vh=vv).validate()


def _rtc(tmp_path, scene, name, transform_values):
    """An RTC-like pair of single-band γ⁰ files made from the scene's dB SAR through ``transform_values``."""
    _, _, vv, vh = scene
    out = []
    for pol, src in (("VV", vv), ("VH", vh)):
        with rasterio.open(src) as ds:
            data, transform = ds.read(1), ds.transform
        out.append(write_raster(tmp_path / name.format(pol=pol), transform_values(data), crs=WGS84,
                                transform=transform))  # fmt: skip
    return out


def test_rtc_units_from_values_name_and_forced(tmp_path, scene):
    power = _rtc(tmp_path, scene, "pc_{pol}.tif", lambda db: (10 ** (db / 10)).astype(np.float32))
    amplitude = _rtc(tmp_path, scene, "amp_{pol}.tif", lambda db: np.sqrt(10 ** (db / 10)).astype(np.float32))
    assert resolve_sar(vv=power[0], vh=power[1]).units == "linear"
    assert resolve_sar(vv=amplitude[0], vh=amplitude[1]).units == "amplitude"
    # a HyP3 name says "power" even where the values would look like something else
    hyp3 = _rtc(tmp_path, scene, "S1A_IW_20240501T101010_DVP_RTC30_G_gpuned_ABCD_{pol}.tif",
                lambda db: np.sqrt(10 ** (db / 10)).astype(np.float32))  # fmt: skip
    source = resolve_sar(vv=hyp3[0], vh=hyp3[1])
    assert source.units == "linear" and "HyP3" in source.notes[0]
    assert resolve_sar(vv=amplitude[0], vh=amplitude[1], units="linear").units == "linear"


def test_amplitude_rtc_is_squared_before_db(tmp_path, scene):
    opt, sar, *_ = scene
    amplitude = _rtc(tmp_path, scene, "amp_{pol}.tif", lambda db: np.sqrt(10 ** (db / 10)).astype(np.float32))
    reference = _probe_sar(_cfg(opt, tmp_path / "a.tif", sar=sar))
    got = _probe_sar(_cfg(opt, tmp_path / "b.tif", sar_vv=amplitude[0], sar_vh=amplitude[1]))
    torch.testing.assert_close(got, reference, rtol=0, atol=1e-5)


def test_gdal_dataset_names_run_like_files(tmp_path, scene):
    opt, sar, *_ = scene
    with zipfile.ZipFile(tmp_path / "opt.zip", "w") as zf:
        zf.write(opt, "inside/opt.tif")
    vrt = tmp_path / "s1.vrt"
    with rasterio.open(sar) as ds:
        rasterio.shutil.copy(ds, vrt, driver="VRT")
    zipped = f"/vsizip/{tmp_path / 'opt.zip'}/inside/opt.tif"
    assert zipped.startswith("/vsizip//")
    run(RunConfig(optical=opt, sar=sar, out=tmp_path / "a.tif", tile=32, overlap=8, model="identity"))
    run(RunConfig(optical=zipped, sar=vrt, out=tmp_path / "b.tif", tile=32, overlap=8, model="identity"))
    with rasterio.open(tmp_path / "a.tif") as a, rasterio.open(tmp_path / "b.tif") as b:
        np.testing.assert_array_equal(a.read(), b.read())
        assert (a.crs, a.transform) == (b.crs, b.transform)


def test_unreadable_gdal_name_is_one_line(tmp_path):
    with pytest.raises(InputError, match=r"^optical GDAL dataset is not a readable raster: /vsizip/"):
        open_raster(f"/vsizip/{tmp_path}/missing.zip/a.tif", "optical")


def test_zip_that_is_not_a_safe_is_refused_with_a_hint(tmp_path, scene):
    opt, sar, *_ = scene
    with zipfile.ZipFile(tmp_path / "other.zip", "w") as zf:
        zf.write(opt, "opt.tif")
    with pytest.raises(InputError, match=r"zip file holds no Sentinel \.SAFE product; give the raster inside"):
        run(_cfg(tmp_path / "other.zip", tmp_path / "o.tif", sar=sar))
    assert not (tmp_path / "o.tif").exists()


SUPERDOVE = ("coastal_blue", "blue", "green_i", "green", "yellow", "red", "rededge", "nir")


@pytest.fixture()
def planet(tmp_path):
    """A SuperDove 8-band AnalyticMS_SR clip with its UDM2 beside it (left 40 % of the columns cloud)."""
    stem = "20240501_101010_12_24a1_3B"
    opt = write_optical(tmp_path / f"{stem}_AnalyticMS_SR_8b_clip.tif", height=40, width=50, bands=8,
                        descriptions=SUPERDOVE)  # fmt: skip
    udm2 = write_mask(tmp_path / f"{stem}_udm2_clip.tif", like=opt, bands=8, cloud_fraction=0.4)
    write_mask(tmp_path / f"{stem}_udm2.tif", like=opt, bands=8, cloud_fraction=0.9)  # the unclipped scene's
    return opt, udm2


def test_planetscope_superdove_bands_by_description_and_udm2_beside(planet):
    opt, udm2 = planet
    source = resolve_optical(opt)
    assert source.bands == (2, 4, 6, 8) and source.kind == "PlanetScope AnalyticMS"
    assert source.mask is not None and source.mask.datasets == (str(udm2),)  # the clip's own, not the scene's
    assert resolve_optical(opt, (1, 2, 3, 4)).bands == (1, 2, 3, 4)  # an explicit --bands wins


def test_mask_auto_uses_the_udm2_and_the_superdove_bands(tmp_path, planet, scene):
    opt, udm2 = planet
    _, sar, *_ = scene
    Probe.seen.clear()
    result = run(_cfg(opt, tmp_path / "o.tif", sar=sar, mask="auto"))
    assert result.cloud_fraction == pytest.approx(0.4, abs=0.03)
    with rasterio.open(opt) as ds:
        expected = ds.read([2, 4, 6, 8]).astype(np.float32) / 10000
    first = Probe.seen[0][0][0].numpy()
    np.testing.assert_allclose(first[:, :8, :8], expected[:, :8, :8], atol=1e-6)  # tile 0 starts at the origin


def test_mask_auto_without_a_mask_warns_and_detects(tmp_path, scene):
    opt, sar, *_ = scene
    result = run(_cfg(opt, tmp_path / "o.tif", sar=sar, mask="auto", model="identity"))
    assert any("comes with no cloud mask" in w for w in result.warnings)
    assert result.cloud_fraction is None


def test_info_on_split_amplitude_files(tmp_path, scene, capsys):
    opt, *_ = scene
    amplitude = _rtc(tmp_path, scene, "amp_{pol}.tif", lambda db: np.sqrt(10 ** (db / 10)).astype(np.float32))
    assert main(["info", "--optical", str(opt), "--sar-vv", str(amplitude[0]), "--sar-vh", str(amplitude[1]),
                 "--json"]) == 0  # fmt: skip
    facts = json.loads(capsys.readouterr().out)
    sar = facts["sources"]["sar"]
    assert sar["kind"] == "split VV/VH" and sar["bands"] == {"VV": "1:1", "VH": "2:1"}
    assert facts["sar_units"] == "amplitude" and sar["notes"] == ["units amplitude from the value range"]
    assert facts["sar_overlap_percent"] == pytest.approx(100.0)


def test_batch_manifest_takes_split_polarisations_gdal_names_and_mask_auto(tmp_path, scene):
    from engine.batch import read_manifest, run_scene

    opt, _, vv, vh = scene
    manifest = tmp_path / "m.csv"
    zipped = f"/vsizip/{tmp_path / 'opt.zip'}/opt.tif"
    with zipfile.ZipFile(tmp_path / "opt.zip", "w") as zf:
        zf.write(opt, "opt.tif")
    manifest.write_text(f"id,optical,sar,sar_vv,sar_vh,mask,out,model\na,{zipped},,vv.tif,vh.tif,auto,a.tif,identity\n")
    (job,) = read_manifest(manifest)
    assert job.optical == zipped and job.mask == "auto" and job.sar is None
    assert job.sar_vv == vv.resolve() and job.sar_vh == vh.resolve()
    record = run_scene(job, {"tile": 32, "overlap": 8}, {})
    assert record["status"] == "ok" and "comes with no cloud mask" in record["warnings"]
