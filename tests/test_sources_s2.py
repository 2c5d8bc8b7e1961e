"""Sentinel-2 SAFE / zip inputs (engine.sources.s2) on minimal products built in the test (helpers_sentinel)."""

from __future__ import annotations

import numpy as np
import pytest
import rasterio
from helpers_models import registered_test_models
from helpers_rasters import write_sar
from helpers_sentinel import s2_band_values, scl_values, write_s2_safe

from engine.config import RunConfig
from engine.errors import InputError
from engine.sources.product import Materialised
from engine.sources.resolve import materialise, resolve_optical
from engine.stream.pipeline import run

SIZE = 40


@pytest.fixture(scope="module", autouse=True)
def _models():
    with registered_test_models():
        yield


def _read(source) -> np.ndarray:
    with Materialised() as store, rasterio.open(materialise(source, store)) as ds:
        return ds.read()


@pytest.mark.parametrize("zipped", [False, True])
def test_l2a_reads_b2_b3_b4_b8_with_the_boa_offset_and_nodata(tmp_path, zipped):
    product = write_s2_safe(tmp_path, zipped=zipped, size=SIZE)
    source = resolve_optical(product)
    assert source.kind == "Sentinel-2 L2A SAFE" and source.offsets == (-1000.0,) * 4
    got = _read(source)
    raw = s2_band_values(SIZE).astype(np.float32)  # B02, B03, B04, B08 as written
    expected = raw - 1000
    expected[:, raw[0] == 0] = np.nan  # the product's nodata 0
    np.testing.assert_array_equal(got, expected)


def test_baseline_before_04_has_no_offset(tmp_path):
    source = resolve_optical(write_s2_safe(tmp_path, baseline="02.08", size=SIZE))
    assert source.offsets == ()
    got = _read(source)
    assert np.nanmax(np.abs(got[:, 5:, 5:] - s2_band_values(SIZE)[:, 5:, 5:])) == 0


def test_scl_becomes_the_cloud_mask(tmp_path):
    source = resolve_optical(write_s2_safe(tmp_path, size=SIZE))
    assert source.mask is not None and source.mask.kind == "Sentinel-2 SCL"
    scl = scl_values(SIZE // 2)
    expected = np.isin(scl, (3, 8, 9, 10)).astype(np.uint8)  # shadow, cloud medium/high, thin cirrus
    expected[scl == 0] = 255
    np.testing.assert_array_equal(_read(source.mask)[0], expected)


def test_run_on_an_l2a_zip_with_mask_auto(tmp_path):
    product = write_s2_safe(tmp_path, zipped=True, size=SIZE)
    with Materialised() as store, rasterio.open(materialise(resolve_optical(product), store)) as ds:
        sar = write_sar(tmp_path / "s1.tif", like=ds.name)  # covers the product's 10 m grid
    out = tmp_path / "o.tif"
    result = run(RunConfig(optical=product, sar=sar, out=out, mask="auto", tile=32, overlap=8, model="identity"))
    scl = np.repeat(np.repeat(scl_values(SIZE // 2), 2, 0), 2, 1)  # nearest from 20 m onto 10 m
    valid = (scl != 0) & (s2_band_values(SIZE)[0] != 0)  # the mask's and the optical image's data
    assert result.cloud_fraction == pytest.approx(np.isin(scl[valid], (3, 8, 9, 10)).mean(), abs=1e-6)
    with rasterio.open(out) as ds:
        assert (ds.res, ds.width, ds.count, ds.crs.to_epsg()) == ((10.0, 10.0), SIZE, 4, 32632)
        got = ds.read()
    expected = s2_band_values(SIZE).astype(np.float32) - 1000
    np.testing.assert_allclose(got[:, 5:, 5:], expected[:, 5:, 5:], atol=0.5)  # identity: the offset reflectance
    assert np.isnan(got[:, 0, 0]).all()


def test_l1c_without_scl_and_mask_auto_warns_and_detects(tmp_path):
    product = write_s2_safe(tmp_path, level="L1C", size=SIZE)
    source = resolve_optical(product)
    assert source.kind == "Sentinel-2 L1C SAFE" and source.mask is None and source.offsets == (-1000.0,) * 4
    with Materialised() as store, rasterio.open(materialise(source, store)) as ds:
        sar = write_sar(tmp_path / "s1.tif", like=ds.name)
    result = run(RunConfig(optical=product, sar=sar, out=tmp_path / "o.tif", mask="auto", only_cloudy=True, tile=32,
                           overlap=8, model="identity"))  # fmt: skip
    note = next(w for w in result.warnings if "comes with no cloud mask" in w)
    assert "the clouds are detected on the optical image instead (hand-made brightness rule" in note
    assert result.cloud_mask.startswith("detected: hand-made brightness rule")  # conftest hides the trained one


def test_l1b_is_refused(tmp_path):
    product = write_s2_safe(tmp_path, level="L1B", size=SIZE)
    with pytest.raises(InputError, match=r"^Sentinel-2 L1B is in sensor geometry"):
        resolve_optical(product)


def test_bands_option_does_not_apply_to_a_product(tmp_path):
    product = write_s2_safe(tmp_path, size=SIZE)
    config = RunConfig(optical=product, sar=tmp_path / "s1.tif", out=tmp_path / "o.tif", bands=(2, 3, 4, 8))
    with pytest.raises(InputError, match="--bands does not apply to a Sentinel-2 product"):
        run(config)
    assert not (tmp_path / "o.tif").exists()
