"""Sentinel-1 GRD SAFE / zip inputs (engine.sources.s1) on minimal products built in the test (helpers_sentinel)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import rasterio
from helpers_models import registered_test_models
from helpers_sentinel import (
    S1_INCIDENCE,
    S1_NOISE_AZIMUTH,
    s1_dn,
    s1_noise_range,
    s1_noise_xml,
    s1_sigma_lut,
    write_s1_safe,
    write_s2_safe,
)

from engine.cli import main
from engine.config import RunConfig
from engine.errors import InputError
from engine.sources.product import Materialised, ResolvedSource
from engine.sources.resolve import TargetGrid, materialise, resolve_optical, resolve_sar
from engine.sources.s1 import calibrated_vrt, noise_eta
from engine.stream.pipeline import run

LINES = SAMPLES = 100  # the fixture's footprint covers the 40 × 40 S2 fixture


@pytest.fixture(scope="module", autouse=True)
def _models():
    with registered_test_models():
        yield


def _hand_eta(noise: str | None, lines: int = LINES, samples: int = SAMPLES) -> np.ndarray:
    """η by hand: the range LUT linear in pixels × (IPF 3) the azimuth gain linear in lines; 0 without noise."""
    if noise is None:
        return np.zeros((lines, samples))
    pixels, eta_nodes = s1_noise_range(samples)
    eta = np.interp(np.arange(samples), pixels, eta_nodes)[None, :]
    if noise == "3":
        eta = eta * np.interp(np.arange(lines), [0, lines - 1], S1_NOISE_AZIMUTH)[:, None]
    return np.broadcast_to(eta, (lines, samples))


def _hand_sigma0(pol: str, noise: str | None = "3") -> np.ndarray:
    """σ⁰ = (DN² − η) / A², A linear in range between the LUT's nodes (as the fixture's LUT is), by hand."""
    pixels, a_nodes = s1_sigma_lut(SAMPLES)
    a = np.interp(np.arange(SAMPLES), pixels, a_nodes)  # exact: the nodes lie on one line
    dn = s1_dn(LINES, SAMPLES, pol).astype(np.float64)
    return (dn**2 - _hand_eta(noise)) / a[None, :] ** 2


@pytest.mark.parametrize("zipped,noise", [(False, "3"), (True, "3"), (False, "2"), (False, None)])
def test_calibration_matches_dn_squared_minus_noise_over_a_squared(tmp_path, zipped, noise):
    source = resolve_sar(write_s1_safe(tmp_path, lines=LINES, samples=SAMPLES, zipped=zipped, noise=noise))
    assert source.kind == "Sentinel-1 GRD SAFE" and source.units == "linear" and source.roles == ("VV", "VH")
    assert ("thermal noise subtracted (noise annotation)" in source.notes) == (noise is not None)
    assert source.calibration.startswith("σ⁰ = (DN² − η) / A²" if noise else "σ⁰ = DN² / A²")
    with Materialised() as store:
        for k, pol in enumerate(("VV", "VH")):
            with rasterio.open(calibrated_vrt(source.datasets[k], source.luts[k], store)) as ds:
                got = ds.read(1).astype(np.float64)
                assert np.isnan(ds.nodata) and len(ds.gcps[0]) == 25
            expected = _hand_sigma0(pol, noise)
            np.testing.assert_allclose(got[:, 1:], expected[:, 1:], rtol=1e-5, atol=1e-7)  # float32 VRT steps
            assert np.isnan(got[:, 0]).all()  # DN 0: no data, through the subtraction too
    if noise is not None:  # the darkest VH pixels lie under the noise floor: kept, negative (floored later, in dB)
        assert (_hand_sigma0("VH", noise)[:, 1:] < 0).any()


def test_noise_eta_takes_each_swath_blocks_azimuth_gain():
    """Two blocks with different gains: η = range LUT × the gain of the block each point lies in, linear along
    lines, and continued past the last line (the coarse grid's last row lies beyond the image)."""
    lines, samples = 31, 40
    xml = s1_noise_xml(lines, samples, "3", blocks=((1.0, 2.0), (3.0, 3.0))).encode()
    at_lines, at_pixels = np.array([0.0, 15.0, 30.0, 45.0]), np.array([0.0, 19.0, 20.0, 39.0, 50.0])
    got = noise_eta(xml, at_lines, at_pixels)
    pixels, eta_nodes = s1_noise_range(samples)
    slope = (eta_nodes[-1] - eta_nodes[0]) / (samples - 1)
    rng = eta_nodes[0] + slope * at_pixels  # linear, continued past the last sample as A is
    gain_iw1 = 1.0 + at_lines / (lines - 1)  # 1 → 2 over the lines, 2.5 at line 45
    expected = rng[None, :] * np.where(at_pixels[None, :] < samples // 2, gain_iw1[:, None], 3.0)
    np.testing.assert_allclose(got, expected, rtol=1e-6)  # the XML holds 7 significant digits


def _warped_grd(tmp_path) -> tuple[TargetGrid, np.ndarray, dict]:
    """The fixture GRD warped onto the 40 × 40 Sentinel-2 fixture's grid: (grid, VV/VH, the VRT's facts)."""
    s2 = resolve_optical(write_s2_safe(tmp_path, size=40))
    source = resolve_sar(write_s1_safe(tmp_path, lines=LINES, samples=SAMPLES))
    with Materialised() as store:
        with rasterio.open(materialise(s2, store)) as ds:
            grid = TargetGrid(ds.crs, ds.transform, ds.width, ds.height)
        with rasterio.open(materialise(source, store, grid)) as ds:
            facts = {"georef": (ds.crs, ds.transform, ds.count), "tags": ds.tags(ns="IMAGERY")}
            return grid, ds.read().astype(np.float64), facts


def test_grd_is_warped_onto_the_optical_grid_from_its_gcps(tmp_path):
    grid, warped, facts = _warped_grd(tmp_path)
    assert facts["georef"] == (grid.crs, grid.transform, 2)
    assert facts["tags"]["ACQUISITIONDATETIME"].startswith("2024-05-01T05:45:12")
    assert np.isfinite(warped).all()
    for k, pol in enumerate(("VV", "VH")):  # nearest: every value is one of the calibrated source pixels
        values = np.unique(_hand_sigma0(pol)[:, 1:].astype(np.float32))
        idx = np.clip(np.searchsorted(values, warped[k]), 1, values.size - 1)
        nearest = np.minimum(np.abs(values[idx] - warped[k]), np.abs(values[idx - 1] - warped[k]))
        assert (nearest <= 1e-5 * np.abs(warped[k]) + 1e-7).all()  # float32 VRT steps


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
    assert sar["kind"] == "Sentinel-1 GRD SAFE" and sar["units"] == "linear" and "(DN² − η) / A²" in sar["calibration"]
    assert mask["kind"] == "Sentinel-2 SCL" and ":20m:" in mask["datasets"][0]
    assert facts["sar_units"] == "linear" and facts["sar_overlap_percent"] == pytest.approx(100.0)
    assert facts["sar_gap_days"] == pytest.approx(0.19, abs=0.01)  # S1 05:45, S2 10:16 the same day
    assert any("without terrain correction" in w for w in facts["warnings"])
    assert main(["info", "--optical", str(s2), "--sar", str(s1)]) == 0
    text = capsys.readouterr().out
    assert "resolved    Sentinel-1 GRD SAFE" in text and "CLOUD MASK: detected by the hand-made brightness rule" in text


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


def test_grd_pixels_land_where_their_gcps_put_them(tmp_path):
    """Each optical pixel holds σ⁰ of the radar pixel its centre maps to through the fixture's tie points (lon, lat
    linear in pixel, line), give or take one pixel (nearest resampling at pixel borders). A warp that ignored the
    GCPs (a constant, or a shifted image) fails this."""
    from helpers_sentinel import S1_ORIGIN, S1_STEP
    from rasterio.warp import transform as reproject_points

    grid, both, _ = _warped_grd(tmp_path)
    warped = both[0]
    rows, cols = np.mgrid[0 : grid.height, 0 : grid.width]
    xs, ys = grid.transform * (cols.ravel() + 0.5, rows.ravel() + 0.5)
    lon, lat = reproject_points(grid.crs, "EPSG:4326", xs, ys)
    pixel = np.floor((np.asarray(lon) - S1_ORIGIN[0]) / S1_STEP[0]).astype(int).reshape(rows.shape)
    line = np.floor((np.asarray(lat) - S1_ORIGIN[1]) / S1_STEP[1]).astype(int).reshape(rows.shape)
    hand = np.pad(_hand_sigma0("VV"), 1, constant_values=np.nan)
    near = np.stack([hand[line + 1 + dy, pixel + 1 + dx] for dy in (-1, 0, 1) for dx in (-1, 0, 1)])
    assert np.unique(warped).size > 100
    match = np.isclose(near, warped[None], rtol=1e-5, atol=1e-7).any(axis=0)
    assert match.all(), f"{(~match).sum()} of {match.size} pixels are not where their GCPs put them"


def test_gcp_warp_is_a_thin_plate_spline_through_every_tie_point(tmp_path):
    """A raster whose values are their column, with the centre tie point moved 3 pixels east: warped bilinearly,
    the map position of that tie point reads its column exactly (a spline passes through every GCP; GDAL's global
    polynomial would average the bump away)."""
    from rasterio.control import GroundControlPoint
    from rasterio.crs import CRS
    from rasterio.transform import from_origin
    from rasterio.warp import transform as reproject_points

    n, step = 60, 1e-4
    gcps = [GroundControlPoint(row=r, col=c, x=9.0 + (c + (3 if r == c == 30 else 0)) * step, y=45.0 - r * step)
            for r in range(0, n + 1, 15) for c in range(0, n + 1, 15)]  # fmt: skip
    path = str(tmp_path / "gcp.tif")
    with rasterio.open(path, "w", driver="GTiff", width=n, height=n, count=1, dtype="float32") as ds:
        ds.write(np.tile(np.arange(n, dtype=np.float32) + 0.5, (n, 1))[None])
        ds.gcps = (gcps, "EPSG:4326")
    (x0,), (y0,) = reproject_points("EPSG:4326", "EPSG:32632", [9.0], [45.0])
    grid = TargetGrid(CRS.from_epsg(32632), from_origin(round(x0) - 50, round(y0) + 50, 1.0, 1.0), 700, 800)
    source = ResolvedSource("SAR", path, "test", (path, path), "GTiff", ("VV", "VH"), (1, 1), members=(0, 1),
                            units="linear", gcps=True)  # fmt: skip
    with Materialised() as store, rasterio.open(materialise(source, store, grid, "bilinear")) as ds:
        warped = ds.read(1)
    (x,), (y,) = reproject_points("EPSG:4326", "EPSG:32632", [9.0 + 33 * step], [45.0 - 30 * step])
    col, row = ~grid.transform * (x, y)
    assert warped[int(row), int(col)] == pytest.approx(30.0, abs=0.2)  # 1 m pixels: within 0.2 source pixel
