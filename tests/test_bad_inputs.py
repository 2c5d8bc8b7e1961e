"""Every bad input gives a one-line EngineError and writes nothing (one test per case)."""

from __future__ import annotations

import numpy as np
import pytest
from helpers_rasters import WGS84, footprint_transform, write_optical, write_raster, write_sar

from engine.config import RunConfig
from engine.errors import InputError, OutputError
from engine.stream.pipeline import run


@pytest.fixture()
def pair(tmp_path):
    opt = write_optical(tmp_path / "opt.tif", height=40, width=40)
    sar = write_sar(tmp_path / "s1.tif", like=opt)
    return opt, sar


def _fails(tmp_path, exc_type, match, **kw):
    out = kw.pop("out", tmp_path / "out.tif")
    before = sorted(p.name for p in tmp_path.iterdir())
    with pytest.raises(exc_type, match=match) as info:
        run(RunConfig(out=out, **{"tile": 32, "overlap": 8, **kw}))
    assert "\n" not in str(info.value)
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # nothing written, no temp file left


def test_missing_file(tmp_path, pair):
    _fails(tmp_path, InputError, "optical file not found", optical=tmp_path / "nope.tif", sar=pair[1])


def test_not_a_raster(tmp_path, pair):
    bogus = tmp_path / "notes.tif"
    bogus.write_text("this is not a GeoTIFF\n")
    _fails(tmp_path, InputError, "SAR file is not a readable raster", optical=pair[0], sar=bogus)


def test_optical_with_fewer_than_4_bands(tmp_path, pair):
    opt3 = write_optical(tmp_path / "rgb.tif", height=40, width=40, bands=3)
    _fails(tmp_path, InputError, "at least 4 bands", optical=opt3, sar=pair[1])


def test_sar_without_exactly_2_bands(tmp_path, pair):
    sar3 = write_sar(tmp_path / "s3.tif", like=pair[0], bands=3)
    _fails(tmp_path, InputError, "exactly 2 bands", optical=pair[0], sar=sar3)
    sar1 = write_sar(tmp_path / "s1b.tif", like=pair[0], bands=1)
    _fails(tmp_path, InputError, "exactly 2 bands", optical=pair[0], sar=sar1)


def test_no_geographic_overlap(tmp_path, pair):
    transform, w, h = footprint_transform(pair[0], WGS84, 9e-5, shift=(2.0, 0.0))  # 2° east
    far = write_sar(tmp_path / "far.tif", crs=WGS84, transform=transform, height=h, width=w)
    _fails(tmp_path, InputError, "does not overlap", optical=pair[0], sar=far)


@pytest.mark.filterwarnings("ignore::rasterio.errors.NotGeoreferencedWarning")
def test_crs_missing(tmp_path, pair):
    no_crs = write_raster(tmp_path / "nocrs.tif", np.ones((4, 40, 40), dtype=np.uint16), crs=None)
    _fails(tmp_path, InputError, "no coordinate reference system", optical=no_crs, sar=pair[1])


def test_all_nodata_optical(tmp_path, pair):
    empty = write_optical(tmp_path / "empty.tif", np.zeros((4, 40, 40), dtype=np.uint16), nodata=0)
    _fails(tmp_path, InputError, "no valid pixel", optical=empty, sar=pair[1])


def test_sar_all_nan_is_an_error_but_some_nan_is_not(tmp_path, pair):
    # Some NaN/inf is handled as nodata (see test_pipeline); a SAR with nothing valid cannot guide anything.
    transform, w, h = footprint_transform(pair[0], WGS84, 9e-5)
    nan = write_sar(tmp_path / "nan.tif", np.full((2, h, w), np.nan, dtype=np.float32), crs=WGS84, transform=transform)
    _fails(tmp_path, InputError, "no valid pixel over the optical image", optical=pair[0], sar=nan)
    data = np.full((2, h, w), -12.0, dtype=np.float32)
    data[:, ::3, ::3] = np.nan
    data[:, 1::5, 1::5] = -np.inf
    some = write_sar(tmp_path / "some.tif", data, crs=WGS84, transform=transform)
    result = run(RunConfig(optical=pair[0], sar=some, out=tmp_path / "ok.tif", tile=32, overlap=8))
    assert (tmp_path / "ok.tif").exists() and 0.3 < result.sar_coverage < 0.9


def test_output_path_not_writable(tmp_path, pair):
    a_file = tmp_path / "plain.txt"
    a_file.write_text("x")
    _fails(tmp_path, OutputError, "not a folder", optical=pair[0], sar=pair[1], out=a_file / "out.tif")
    _fails(tmp_path, OutputError, "does not exist", optical=pair[0], sar=pair[1], out=tmp_path / "no" / "out.tif")


def test_output_equals_an_input(tmp_path, pair):
    _fails(tmp_path, OutputError, "overwrite an input", optical=pair[0], sar=pair[1], out=pair[0])
    _fails(tmp_path, OutputError, "overwrite an input", optical=pair[0], sar=pair[1], out=tmp_path / "." / "s1.tif")


def test_bad_settings_fail_before_reading(tmp_path, pair):
    _fails(tmp_path, InputError, "--overlap", optical=pair[0], sar=pair[1], overlap=16, tile=16)
    _fails(tmp_path, InputError, "--sar-units", optical=pair[0], sar=pair[1], sar_units="watts")
