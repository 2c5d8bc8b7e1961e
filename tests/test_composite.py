"""--only-cloudy: clear pixels stay the input, cloud takes the model's output, feathered, whatever the chunking."""

from __future__ import annotations

import numpy as np
import pytest
import rasterio
from helpers_models import registered_test_models
from helpers_rasters import write_mask, write_masked_scene, write_optical, write_sar

from engine.align.cloudmask import detect_clouds
from engine.cli import main
from engine.config import RunConfig
from engine.errors import InputError
from engine.stream.composite import cloud_weight, halo_window, mix
from engine.stream.pipeline import run

H, W = 90, 100


@pytest.fixture(scope="module", autouse=True)
def _models():
    with registered_test_models():
        yield


def _blobs(h: int = H, w: int = W) -> np.ndarray:
    """Two irregular clouds, one touching the image edge (the halo must be clipped there)."""
    yy, xx = np.mgrid[0:h, 0:w]
    cloud = ((yy - 30) ** 2 / 150 + (xx - 35) ** 2 / 300 < 1) | ((yy - 80) ** 2 + (xx - 90) ** 2 < 15**2)
    return cloud


@pytest.fixture()
def scene(tmp_path):
    return write_masked_scene(tmp_path, _blobs())


def _run(scene, out, **kw):
    opt, sar, mask = scene
    cfg = RunConfig(optical=opt, sar=sar, out=out, mask=mask, model="test-brighten", mode="raw", tile=32, overlap=8,
                    **kw)
    run(cfg)
    with rasterio.open(out) as ds:
        return ds.read().astype(np.int64)


def test_weight_is_one_on_cloud_and_falls_linearly_to_zero():
    cloud = np.zeros((1, 20), dtype=bool)
    cloud[0, :5] = True
    np.testing.assert_array_equal(cloud_weight(cloud, 0), cloud.astype(np.float32))
    w = cloud_weight(cloud, 3)
    np.testing.assert_allclose(w[0, :10], [1, 1, 1, 1, 1, 0.75, 0.5, 0.25, 0, 0])
    assert not cloud_weight(np.zeros((4, 4), bool), 5).any()  # no cloud: no distance transform, all zero
    with pytest.raises(ValueError):
        cloud_weight(cloud, -1)


def test_weights_of_halo_windows_equal_the_whole_image():
    cloud, feather = _blobs(), 7
    whole = cloud_weight(cloud, feather)
    for y in range(0, H, 23):
        for x in range(0, W, 31):
            hx, hy, hw, hh = halo_window(x, y, 31, 23, feather, W, H)
            part = cloud_weight(cloud[hy : hy + hh, hx : hx + hw], feather)
            inner = part[y - hy : y - hy + 23, x - hx : x - hx + 31]
            np.testing.assert_array_equal(inner, whole[y : y + 23, x : x + 31])


def test_mix_is_exactly_the_prediction_where_the_weight_is_one():
    p = np.array([0.123456789, 0.5, 0.9], np.float32)
    o = np.array([0.2, 0.2, 0.2], np.float32)
    m = mix(p, o, np.array([1.0, 0.0, 0.5], np.float32))
    assert m.dtype == np.float32 and m[0] == p[0] and m[1] == o[1]
    assert m[2] == pytest.approx(0.55, abs=1e-7)


def test_only_cloudy_keeps_clear_pixels_and_feathers_the_edge(tmp_path, scene):
    feather = 6
    with rasterio.open(scene[0]) as ds:
        original = ds.read().astype(np.int64)
    everywhere = _run(scene, tmp_path / "all.tif")
    out = _run(scene, tmp_path / "cloudy.tif", only_cloudy=True, cloud_feather=feather)
    w = cloud_weight(_blobs(), feather)
    clear, cloud = w == 0, w == 1
    assert clear.sum() > 1000 and cloud.sum() > 1000 and ((w > 0) & (w < 1)).sum() > 200
    np.testing.assert_array_equal(out[:, clear], original[:, clear])  # clear pixels: the input bit for bit
    np.testing.assert_array_equal(out[:, cloud], everywhere[:, cloud])  # cloud: the model's output, unchanged
    # test-brighten adds 0.1 reflectance = 1000 DN, so the feather shows as 1000·w DN above the input
    np.testing.assert_allclose(out - original, np.broadcast_to(1000 * w, out.shape), atol=1)


def test_tiles_away_from_the_cloud_skip_the_network(tmp_path):
    """Only tiles that touch the cloud or its feather run the network; the result is what the whole run gives."""
    opt = write_optical(tmp_path / "opt.tif", height=H, width=W)
    sar = write_sar(tmp_path / "s1.tif", like=opt)
    corner = np.zeros((1, H, W), np.uint8)
    corner[:, :6, :6] = 1  # a small cloud in the top-left corner
    mask = write_mask(tmp_path / "corner.tif", corner, like=opt)
    common = dict(optical=opt, sar=sar, mask=mask, model="test-brighten", mode="raw", tile=32, overlap=8)
    every = run(RunConfig(out=tmp_path / "every.tif", **common))
    only = run(RunConfig(out=tmp_path / "only.tif", only_cloudy=True, cloud_feather=4, **common))
    assert every.network_tiles == every.total_tiles == 16
    assert only.network_tiles == 1  # the feather (≤ 10 px) stays inside the first tile's 32 px
    with rasterio.open(opt) as a, rasterio.open(tmp_path / "every.tif") as e, rasterio.open(tmp_path / "only.tif") as o:
        original, everywhere, got = (ds.read().astype(np.int64) for ds in (a, e, o))
    w = cloud_weight(corner[0].astype(bool), 4)
    np.testing.assert_array_equal(got[:, w == 1], everywhere[:, w == 1])
    np.testing.assert_array_equal(got[:, w == 0], original[:, w == 0])


def test_hard_edge_and_chunking_do_not_change_the_result(tmp_path, scene):
    with rasterio.open(scene[0]) as ds:
        original = ds.read().astype(np.int64)
    hard = _run(scene, tmp_path / "hard.tif", only_cloudy=True, cloud_feather=0)
    cloud = _blobs()
    np.testing.assert_array_equal(hard[:, ~cloud], original[:, ~cloud])
    assert (hard[:, cloud] - original[:, cloud] == 1000).all()
    small = _run(scene, tmp_path / "small.tif", only_cloudy=True, cloud_feather=9, chunk=40)
    large = _run(scene, tmp_path / "large.tif", only_cloudy=True, cloud_feather=9, chunk=1024)
    np.testing.assert_array_equal(small, large)


def test_udm2_mask_in_another_crs(tmp_path):
    """A Planet UDM2 asset (8 bands) in EPSG:4326 at ~3 m: reprojected, its cloud/shadow/heavy-haze bands used."""
    opt = write_optical(tmp_path / "opt.tif", height=60, width=60)
    sar = write_sar(tmp_path / "s1.tif", like=opt)
    mask = write_mask(tmp_path / "udm2.tif", like=opt, crs="EPSG:4326", res=2.7e-5, bands=8, cloud_fraction=0.5)
    out = tmp_path / "out.tif"
    run(RunConfig(optical=opt, sar=sar, out=out, mask=mask, model="test-brighten", mode="raw", tile=32, overlap=8,
                  only_cloudy=True, cloud_feather=0))  # fmt: skip
    with rasterio.open(opt) as a, rasterio.open(out) as b:
        diff = b.read().astype(np.int64) - a.read().astype(np.int64)
    assert (diff[:, :, :25] == 1000).all() and (diff[:, :, 35:] == 0).all()  # left half cloud, right half clear


def test_a_mask_covering_part_of_the_scene_is_a_warning(tmp_path, scene):
    opt, sar, _mask = scene
    half = np.ones((1, H, W // 2), np.uint8)  # on the optical grid's origin: the western half only, all cloud
    mask = write_mask(tmp_path / "half.tif", half, like=opt)
    out = tmp_path / "o.tif"
    result = run(RunConfig(optical=opt, sar=sar, out=out, mask=mask, model="test-brighten", mode="raw", tile=32,
                           overlap=8, only_cloudy=True, cloud_feather=0))  # fmt: skip
    assert any(w.startswith("cloud mask covers only 50.0%") for w in result.warnings), result.warnings
    with rasterio.open(opt) as a, rasterio.open(out) as b:
        diff = b.read().astype(np.int64) - a.read().astype(np.int64)
    assert (diff[:, :, : W // 2] == 1000).all() and (diff[:, :, W // 2 :] == 0).all()


def test_without_a_mask_the_detected_clouds_are_replaced(tmp_path):
    """Bright, flat clouds over dark vegetation, no --mask: the detector's clouds (whole-image detection) take the
    model's output, feathered; the rest is the input; chunks change nothing; a warning says a mask is better."""
    yy, xx = np.mgrid[0:H, 0:W]
    ground = np.array([400, 700, 500, 3000], np.float32)[:, None, None] + 100 * np.sin(xx / 5.0)[None]
    cloudy = np.where(_blobs()[None], np.float32(6000), ground).astype(np.uint16)
    opt = write_optical(tmp_path / "opt.tif", cloudy)
    sar = write_sar(tmp_path / "s1.tif", like=opt)
    feather = 4
    expected = cloud_weight(detect_clouds(cloudy.astype(np.float32) / 10_000), feather)
    assert 0.1 < (expected == 1).mean() < 0.5
    outs = []
    for chunk in (40, 1024):
        out = tmp_path / f"o{chunk}.tif"
        result = run(RunConfig(optical=opt, sar=sar, out=out, model="test-brighten", mode="raw", tile=32, overlap=8,
                               chunk=chunk, only_cloudy=True, cloud_feather=feather))  # fmt: skip
        assert any(w.startswith("no --mask: --only-cloudy replaces the clouds detected") for w in result.warnings)
        with rasterio.open(out) as ds:
            outs.append(ds.read().astype(np.int64))
    np.testing.assert_array_equal(outs[0], outs[1])
    np.testing.assert_allclose(outs[0] - cloudy, np.broadcast_to(1000 * expected, cloudy.shape), atol=1)


def test_bad_only_cloudy_settings(tmp_path, scene):
    opt, sar, mask = scene
    with pytest.raises(InputError, match="--cloud-feather"):
        run(RunConfig(optical=opt, sar=sar, out=tmp_path / "o.tif", mask=mask, only_cloudy=True, cloud_feather=-2))
    five = write_optical(tmp_path / "five.tif", bands=5)
    with pytest.raises(InputError, match="detects clouds on B, G, R, NIR; --bands lists 5"):
        run(RunConfig(optical=five, sar=sar, out=tmp_path / "o.tif", model="identity", bands=(1, 2, 3, 4, 5),
                      only_cloudy=True))  # fmt: skip
    assert not (tmp_path / "o.tif").exists()


def test_cli_flags(tmp_path, scene):
    opt, sar, mask = scene
    out = tmp_path / "cli.tif"
    args = ["run", "--optical", str(opt), "--sar", str(sar), "--mask", str(mask), "--out", str(out),
            "--model", "test-brighten", "--tile", "32", "--overlap", "8", "--only-cloudy", "--cloud-feather", "6"]
    assert main(args) == 0
    with rasterio.open(out) as ds:
        np.testing.assert_array_equal(ds.read(), _run(scene, tmp_path / "api.tif", only_cloudy=True, cloud_feather=6))
