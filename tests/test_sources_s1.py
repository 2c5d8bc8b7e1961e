"""Sentinel-1 GRD SAFE / zip inputs (engine.sources_s1) on minimal products built in the test (helpers_sentinel)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import rasterio
from helpers_models import registered_test_models
from helpers_sentinel import S1_INCIDENCE, s1_dn, s1_sigma_lut, write_s1_safe, write_s2_safe

from engine.cli import main
from engine.config import RunConfig
from engine.errors import InputError
from engine.pipeline import run
from engine.sources import Materialised, TargetGrid, materialise, resolve_optical, resolve_sar
from engine.sources_s1 import calibrated_vrt

LINES = SAMPLES = 100  # the fixture's footprint covers the 40 × 40 S2 fixture


@pytest.fixture(scope="module", autouse=True)
def _models():
    with registered_test_models():
        yield


def _hand_sigma0(pol: str) -> np.ndarray:
    """σ⁰ = DN² / A², A linear in range between the LUT's nodes (as the fixture's LUT is), by hand."""
    pixels, a_nodes = s1_sigma_lut(SAMPLES)
    a = np.interp(np.arange(SAMPLES), pixels, a_nodes)  # exact: the nodes lie on one line
    dn = s1_dn(LINES, SAMPLES, pol).astype(np.float64)
    return dn**2 / a[None, :] ** 2


@pytest.mark.parametrize("zipped", [False, True])
def test_calibration_matches_dn_squared_over_a_squared(tmp_path, zipped):
    source = resolve_sar(write_s1_safe(tmp_path, lines=LINES, samples=SAMPLES, zipped=zipped))
    assert source.kind == "Sentinel-1 GRD SAFE" and source.units == "linear" and source.roles == ("VV", "VH")
    with Materialised() as store:
        for k, pol in enumerate(("VV", "VH")):
            with rasterio.open(calibrated_vrt(source.datasets[k], source.luts[k], store)) as ds:
                got = ds.read(1).astype(np.float64)
                assert ds.nodata == 0 and len(ds.gcps[0]) == 25
            expected = _hand_sigma0(pol)
            np.testing.assert_allclose(got[:, 1:], expected[:, 1:], rtol=1e-6)
            assert (got[:, 0] == 0).all()  # DN 0: no data


def test_grd_is_warped_onto_the_optical_grid_from_its_gcps(tmp_path):
    s2 = resolve_optical(write_s2_safe(tmp_path, size=40))
    source = resolve_sar(write_s1_safe(tmp_path, lines=LINES, samples=SAMPLES))
    with Materialised() as store:
        with rasterio.open(materialise(s2, store)) as ds:
            grid = TargetGrid(ds.crs, ds.transform, ds.width, ds.height)
        with rasterio.open(materialise(source, store, grid)) as ds:
            assert (ds.crs, ds.transform, ds.count) == (grid.crs, grid.transform, 2)
            warped = ds.read()
            assert ds.tags(ns="IMAGERY")["ACQUISITIONDATETIME"].startswith("2024-05-01T05:45:12")
    assert np.isfinite(warped).all()
    for k, pol in enumerate(("VV", "VH")):  # nearest: every value is one of the calibrated source pixels
        values = np.unique(_hand_sigma0(pol)[:, 1:].astype(np.float32))
        idx = np.clip(np.searchsorted(values, warped[k]), 1, values.size - 1)
        nearest = np.minimum(np.abs(values[idx] - warped[k]), np.abs(values[idx - 1] - warped[k]))
        assert (nearest <= 1e-6 * warped[k]).all()


def test_run_on_s2_and_s1_zips_with_mask_auto(tmp_path):
    s2 = write_s2_safe(tmp_path, zipped=True, size=40)
    s1 = write_s1_safe(tmp_path, zipped=True, lines=LINES, samples=SAMPLES)
    out = tmp_path / "o.tif"
    result = run(RunConfig(optical=s2, sar=s1, out=out, mask="auto", tile=32, overlap=8, model="identity"))
    assert result.sar_units == "linear" and result.sar_coverage == pytest.approx(1.0)
    assert result.cloud_fraction is not None and result.cloud_fraction > 0
    low, high = S1_INCIDENCE
    assert any(f"incidence {low:.1f}–{high:.1f}°" in w and "RTC" in w for w in result.warnings)
    with rasterio.open(out) as ds:
        assert (ds.width, ds.height, ds.count, ds.res) == (40, 40, 4, (10.0, 10.0))
        inputs = json.loads(ds.tags()["ALIGNCR_INPUTS"])  # named as given, not as the VRTs they resolved to
    assert inputs == {"optical": s2.name, "sar": s1.name, "mask": "auto"}


@pytest.mark.parametrize("kind,what", [("SLC_", "an SLC"), ("OCN_", "an OCN")])
def test_other_product_types_are_refused(tmp_path, kind, what):
    product = write_s1_safe(tmp_path, kind=kind, lines=20, samples=20)
    with pytest.raises(InputError, match=rf"^Sentinel-1 product is {what} .*give a GRD"):
        resolve_sar(product)


def test_grd_without_vh_is_refused(tmp_path):
    product = write_s1_safe(tmp_path, pols=("VV",), lines=20, samples=20)
    with pytest.raises(InputError, match=r"^Sentinel-1 GRD has VV polarisation\(s\), the model needs VV and VH"):
        resolve_sar(product)


def test_s1_given_as_optical_and_s2_as_sar_are_refused(tmp_path):
    s1 = write_s1_safe(tmp_path, lines=20, samples=20)
    s2 = write_s2_safe(tmp_path, size=20)
    with pytest.raises(InputError, match="optical input is a S1 product, not Sentinel-2"):
        resolve_optical(s1)
    with pytest.raises(InputError, match="SAR input is a S2 product, not Sentinel-1"):
        resolve_sar(s2)


def test_info_says_what_each_product_resolved_to(tmp_path, capsys):
    s2 = write_s2_safe(tmp_path, zipped=True, size=40)
    s1 = write_s1_safe(tmp_path, zipped=True, lines=LINES, samples=SAMPLES)
    assert main(["info", "--optical", str(s2), "--sar", str(s1), "--mask", "auto", "--json"]) == 0
    facts = json.loads(capsys.readouterr().out)
    optical, sar, mask = (facts["sources"][k] for k in ("optical", "sar", "mask"))
    assert optical["kind"] == "Sentinel-2 L2A SAFE" and optical["bands"] == {"blue": "3", "green": "2", "red": "1",
                                                                               "nir": "4"}  # fmt: skip
    assert optical["offsets"] == [-1000.0] * 4 and optical["datasets"][0].startswith("SENTINEL2_L2A:/vsizip//")
    assert sar["kind"] == "Sentinel-1 GRD SAFE" and sar["units"] == "linear" and "DN² / A²" in sar["calibration"]
    assert mask["kind"] == "Sentinel-2 SCL" and ":20m:" in mask["datasets"][0]
    assert facts["sar_units"] == "linear" and facts["sar_overlap_percent"] == pytest.approx(100.0)
    assert facts["sar_gap_days"] == pytest.approx(0.19, abs=0.01)  # S1 05:45, S2 10:16 the same day
    assert any("without terrain correction" in w for w in facts["warnings"])
    assert main(["info", "--optical", str(s2), "--sar", str(s1)]) == 0
    text = capsys.readouterr().out
    assert "resolved    Sentinel-1 GRD SAFE" in text and "CLOUD MASK: none" in text


def test_cli_run_on_the_products_and_a_refused_one(tmp_path, capsys):
    s2 = write_s2_safe(tmp_path, zipped=True, size=40)
    s1 = write_s1_safe(tmp_path, zipped=True, lines=LINES, samples=SAMPLES)
    common = ["--mask", "auto", "--model", "identity", "--tile", "32", "--overlap", "8"]
    assert main(["run", "--optical", str(s2), "--sar", str(s1), "--out", str(tmp_path / "o.tif"), *common]) == 0
    assert (tmp_path / "o.tif").is_file()
    (tmp_path / "slc").mkdir()
    slc = write_s1_safe(tmp_path / "slc", kind="SLC_", lines=20, samples=20)
    capsys.readouterr()
    assert main(["run", "--optical", str(s2), "--sar", str(slc), "--out", str(tmp_path / "x.tif"), *common]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: Sentinel-1 product is an SLC") and "\n" not in err
    assert not (tmp_path / "x.tif").exists()
