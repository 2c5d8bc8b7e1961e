"""End-to-end raster path through stream.pipeline.run: georeferencing, units, nodata, partial SAR, cancel, COG."""

from __future__ import annotations

import numpy as np
import pytest
import rasterio
import torch
from helpers_models import Probe, registered_test_models
from helpers_rasters import WGS84, footprint_transform, write_optical, write_sar

from engine.config import RunConfig
from engine.errors import Cancelled
from engine.progress import Progress
from engine.stream.pipeline import run


@pytest.fixture(scope="module", autouse=True)
def _models():
    with registered_test_models():
        yield


@pytest.fixture()
def pair(tmp_path):
    opt = write_optical(tmp_path / "opt.tif", height=70, width=90, descriptions=("B", "G", "R", "N"))
    sar = write_sar(tmp_path / "s1.tif", like=opt)
    return opt, sar


def _cfg(opt, sar, out, **kw):
    # the plain network's path (--mode raw); the default --mode best is tested in test_mode.py
    return RunConfig(optical=opt, sar=sar, out=out, **{"tile": 32, "overlap": 8, "model": "identity", "mode": "raw",
                                                       **kw})


def test_round_trip_georeferencing_identity(tmp_path, pair):
    opt, sar = pair
    out = tmp_path / "out.tif"
    result = run(_cfg(opt, sar, out))
    with rasterio.open(opt) as a, rasterio.open(out) as b:
        assert (b.crs, b.transform, b.width, b.height, b.count) == (a.crs, a.transform, a.width, a.height, a.count)
        assert b.dtypes == a.dtypes and b.nodata == a.nodata
        assert b.descriptions == ("B", "G", "R", "N")  # the input's descriptions are kept
        assert b.profile["tiled"] and b.profile["compress"] == "deflate"
        np.testing.assert_array_equal(b.read(), a.read())  # identity + exact inverse scaling
    assert result.model == "identity" and result.device == "cpu"
    assert result.sar_coverage == pytest.approx(1.0)
    assert result.total_tiles == len(list(range(0, 70 - 8, 24))) * len(list(range(0, 90 - 8, 24)))
    assert not list(tmp_path.glob("*.tmp.tif"))


def test_default_model_is_a_bundled_model(tmp_path, pair, monkeypatch):
    """No --model: --mode raw runs the bundled aligncr-lite weights (they change the image); without any bundled
    weights, identity."""
    from engine.stream import mode

    opt, sar = pair
    lite = mode.BUNDLED["aligncr-lite"]
    assert lite.is_file(), f"no bundled weights where the engine looks: {lite}"
    result = run(RunConfig(optical=opt, sar=sar, out=tmp_path / "lite.tif", tile=64, overlap=8, mode="raw"))
    assert result.model == "aligncr-lite"
    with rasterio.open(opt) as a, rasterio.open(tmp_path / "lite.tif") as b:
        assert not np.array_equal(a.read(), b.read())
    monkeypatch.setattr(mode, "BUNDLED", {k: tmp_path / "absent.safetensors" for k in mode.BUNDLED})
    result = run(RunConfig(optical=opt, sar=sar, out=tmp_path / "id.tif", tile=64, overlap=8, mode="raw"))
    assert result.model == "identity"


def test_cpu_workers_give_the_same_output_and_restore_threads(tmp_path, pair):
    """Concurrent CPU forwards (the default on multi-core CPUs) change nothing in the output."""
    from engine.stream.accel import AccelConfig

    opt, sar = pair
    before = torch.get_num_threads()
    outs = []
    for workers in (1, 2):
        out = tmp_path / f"w{workers}.tif"
        cfg = _cfg(opt, sar, out, model="aligncr-lite", tile=32, overlap=8, batch=4)
        result = run(cfg, accel=AccelConfig(dtype="fp32", threads=2, cpu_workers=workers))
        assert result.accel["cpu_workers"] == workers and torch.get_num_threads() == before
        with rasterio.open(out) as ds:
            outs.append(ds.read())
    # 1 vs 2 intra-op threads may pick other oneDNN kernels: float rounding, at most 1 DN after scaling
    assert np.abs(outs[0].astype(int) - outs[1].astype(int)).max() <= 1


def test_default_band_descriptions_and_extra_band_passthrough(tmp_path):
    opt = write_optical(tmp_path / "opt5.tif", height=40, width=40, bands=5)
    sar = write_sar(tmp_path / "s1.tif", like=opt)
    out = tmp_path / "out.tif"
    run(_cfg(opt, sar, out, model="test-brighten"))
    with rasterio.open(opt) as a, rasterio.open(out) as b:
        src, dst = a.read().astype(int), b.read().astype(int)
        assert b.descriptions[:4] == ("blue", "green", "red", "nir")
    np.testing.assert_array_equal(dst[4], src[4])  # extra band untouched
    np.testing.assert_allclose(dst[:4] - src[:4], 1000, atol=1)  # +0.1 reflectance on the model bands


def test_normalisation_fed_to_the_model(tmp_path):
    """Optical DN/10⁴; VV -12.5 dB → 0.5 and VH -16.25 dB → 0.5 (paper ranges); linear SAR detected → same."""
    opt = write_optical(tmp_path / "opt.tif", np.full((4, 32, 32), 2500, dtype=np.uint16))
    transform, w, h = footprint_transform(opt, WGS84, 9e-5)
    db = np.stack([np.full((h, w), -12.5), np.full((h, w), -16.25)]).astype(np.float32)
    for name, data in (("db", db), ("linear", (10 ** (db / 10)).astype(np.float32))):
        sar = write_sar(tmp_path / f"{name}.tif", data, crs=WGS84, transform=transform)
        Probe.seen.clear()
        result = run(_cfg(opt, sar, tmp_path / f"out_{name}.tif", model="test-probe"))
        assert result.sar_units == name
        optical, s = Probe.seen[0]
        np.testing.assert_allclose(optical.numpy(), 0.25, atol=1e-6)
        np.testing.assert_allclose(s[:, 0].numpy(), 0.5, atol=1e-4)
        np.testing.assert_allclose(s[:, 1].numpy(), 0.5, atol=1e-4)


def test_reflectance_input_is_detected_and_written_back_as_float(tmp_path):
    refl = np.full((4, 24, 24), 0.3, dtype=np.float32)
    opt = write_optical(tmp_path / "refl.tif", refl, dtype="float32", nodata=None)
    sar = write_sar(tmp_path / "s1.tif", like=opt)
    out = tmp_path / "out.tif"
    result = run(_cfg(opt, sar, out, model="test-brighten"))
    assert result.optical_scale == 1.0
    with rasterio.open(out) as ds:
        assert ds.dtypes[0] == "float32"
        np.testing.assert_allclose(ds.read(), 0.4, atol=1e-6)


def test_weights_file_card_normalisation_wins(tmp_path):
    from engine.models import build_model, weights

    path = weights.save(
        build_model("test-probe"), tmp_path / "probe.safetensors", {"normalisation": {"optical_scale": 5000.0}}
    )
    opt = write_optical(tmp_path / "opt.tif", np.full((4, 32, 32), 2500, dtype=np.uint16))
    sar = write_sar(tmp_path / "s1.tif", like=opt)
    Probe.seen.clear()
    result = run(_cfg(opt, sar, tmp_path / "out.tif", model=None, weights=path))
    assert result.model == "test-probe" and result.model_card["normalisation"]["optical_scale"] == 5000.0
    np.testing.assert_allclose(Probe.seen[0][0].numpy(), 0.5, atol=1e-6)  # 2500 / 5000, not / 10000


def test_optical_nodata_stays_nodata(tmp_path):
    data = np.full((4, 40, 40), 3000, dtype=np.uint16)
    data[:, :10, :] = 0  # nodata strip
    opt = write_optical(tmp_path / "opt.tif", data, nodata=0)
    sar = write_sar(tmp_path / "s1.tif", like=opt)
    out = tmp_path / "out.tif"
    run(_cfg(opt, sar, out, model="test-brighten"))
    with rasterio.open(out) as ds:
        res = ds.read()
    assert (res[:, :10] == 0).all()
    assert (res[:, 10:] == 4000).all()


def test_partial_sar_overlap_leaves_input_and_warns(tmp_path):
    opt = write_optical(tmp_path / "opt.tif", np.full((4, 60, 60), 3000, dtype=np.uint16))
    transform, w, h = footprint_transform(opt, WGS84, 9e-5)
    sar = write_sar(tmp_path / "half.tif", crs=WGS84, transform=transform, height=h, width=w // 2)
    warnings: list[str] = []
    out = tmp_path / "out.tif"
    result = run(_cfg(opt, sar, out, model="test-brighten"), Progress(warn_callback=warnings.append))
    assert len(warnings) == 1 and "%" in warnings[0] and "SAR covers only" in warnings[0]
    with rasterio.open(out) as ds:
        res = ds.read(1)
    assert (res[:, :20] == 4000).all()  # western part: SAR present, model applied
    assert (res[:, -20:] == 3000).all()  # eastern part: no SAR, input kept
    assert 0.35 < result.sar_coverage < 0.65


def test_nan_and_inf_in_sar_are_nodata_not_an_error(tmp_path):
    opt = write_optical(tmp_path / "opt.tif", np.full((4, 45, 45), 3000, dtype=np.uint16))
    transform, w, h = footprint_transform(opt, "EPSG:32632", 10.0)
    data = np.full((2, h, w), -10.0, dtype=np.float32)
    data[0, 0, 0] = np.nan
    data[1, 2, 2] = np.inf
    sar = write_sar(tmp_path / "holes.tif", data, crs="EPSG:32632", transform=transform)
    out = tmp_path / "out.tif"
    result = run(_cfg(opt, sar, out, model="test-brighten"))
    with rasterio.open(out) as ds:
        res = ds.read(1)
    assert res[0, 0] == 3000 and res[8, 8] == 3000  # under the NaN / inf SAR pixels: input kept
    assert res[20, 20] == 4000
    assert 0.9 < result.sar_coverage < 1.0


def test_cancel_leaves_no_file(tmp_path, pair):
    opt, sar = pair
    out = tmp_path / "out.tif"
    progress = Progress()

    def cancel_after_first_tile(fraction: float, message: str) -> None:
        if fraction > 0:
            progress.cancel()

    progress.callback = cancel_after_first_tile
    with pytest.raises(Cancelled):
        run(_cfg(opt, sar, out, batch=1), progress)
    assert not out.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["opt.tif", "s1.tif"]


def test_progress_reaches_one_and_is_monotone(tmp_path, pair):
    opt, sar = pair
    seen: list[float] = []
    run(_cfg(opt, sar, tmp_path / "out.tif"), Progress(callback=lambda f, m: seen.append(f)))
    assert seen[-1] == 1.0 and seen == sorted(seen)


def test_cog_output_has_overviews(tmp_path):
    opt = write_optical(tmp_path / "big.tif", height=600, width=520)
    sar = write_sar(tmp_path / "s1.tif", like=opt)
    out = tmp_path / "cog.tif"
    run(RunConfig(optical=opt, sar=sar, out=out, tile=256, overlap=32, batch=8, cog=True))
    with rasterio.open(out) as ds:
        assert ds.tags(ns="IMAGE_STRUCTURE").get("LAYOUT") == "COG"
        assert ds.overviews(1)
        assert ds.profile["blockxsize"] == 512
    assert not list(tmp_path.glob("*.tmp.tif"))


@pytest.mark.parametrize("tiled", [True, False])
def test_statistics_sample_spans_large_scenes(tmp_path, tiled):
    """Above SAMPLE_SIZE² pixels the sample is a grid of windows spread over the whole scene (tiled or striped)."""
    from engine.sources.raster import SAMPLE_SIZE, read_sample

    h, w = 1300, 1100
    ids = np.arange(h * w, dtype=np.float32).reshape(1, h, w)
    path = tmp_path / "big.tif"
    extra = {"tiled": True, "blockxsize": 256, "blockysize": 256} if tiled else {}
    with rasterio.open(path, "w", driver="GTiff", width=w, height=h, count=1, dtype="float32", crs="EPSG:32632",
                       transform=rasterio.Affine(3, 0, 0, 0, -3, 0), **extra) as ds:  # fmt: skip
        ds.write(ids)
    with rasterio.open(path) as ds:
        sample = read_sample(ds, (1,))
    assert sample.size <= SAMPLE_SIZE * SAMPLE_SIZE
    rows, cols = np.unique(sample // w), np.unique(sample % w)
    assert rows.min() < 100 and rows.max() > h - 100 and cols.min() < 100 and cols.max() > w - 100


@pytest.mark.shared
def test_real_m3rcr_quartet(tmp_path, shared_data):
    """Real PlanetScope (UTM 46N, 3 m, uint16) + S1 (float64 dB, 10 m, grid offset by 1-2 m) + WorldCover."""
    root = shared_data / "m3rcr_sample" / "train"
    opt = next((root / "planet_cloudy_fall").rglob("*.tif"))
    sar = next((root / "S1_fall").rglob("*.tif"))
    lc = next((root / "landcover_fall").rglob("*.tif"))
    out = tmp_path / "out.tif"
    result = run(RunConfig(optical=opt, sar=sar, landcover=lc, out=out, tile=128, overlap=16, model="identity"))
    assert result.sar_units == "db" and result.sar_coverage > 0.95
    with rasterio.open(opt) as a, rasterio.open(out) as b:
        assert (b.crs, b.transform, b.shape, b.dtypes, b.nodata) == (a.crs, a.transform, a.shape, a.dtypes, a.nodata)
        src, dst = a.read(), b.read()
    valid = (src <= 10000).all(axis=0)  # identity is exact except where DN saturates above the paper's clip
    np.testing.assert_array_equal(dst[:, valid], src[:, valid])
