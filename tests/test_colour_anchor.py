"""``engine run --colour-anchor`` (engine.refine.colour_anchor): the network's colour drift is taken off the inside of
each cloud — fitted over the scene against the clear pixels' median, 0 at the cloud's edge — and the streamed run gives
what one whole-image anchor gives, whatever the chunking, leaving clear pixels and pixels the model did not write
as they were."""

from __future__ import annotations

import json

import numpy as np
import pytest
import rasterio
from helpers_models import registered_test_models
from helpers_rasters import write_masked_scene, write_sar

from engine.cli import main
from engine.config import RunConfig
from engine.refine import colour_anchor
from engine.stream.pipeline import run

H, W = 90, 100


@pytest.fixture(scope="module", autouse=True)
def _models():
    with registered_test_models():
        yield


def _blobs() -> np.ndarray:
    """A large cloud (deep inside: r ≈ 1) and a small one touching the image edge."""
    yy, xx = np.mgrid[0:H, 0:W]
    return ((yy - 40) ** 2 / 900 + (xx - 40) ** 2 / 1000 < 1) | ((yy - 80) ** 2 + (xx - 92) ** 2 < 12**2)


def test_ramp_is_zero_off_the_cloud_grows_inside_and_stops_at_its_reach():
    cloud = np.zeros((1, 80), dtype=bool)
    cloud[0, 10:] = True  # a cloud running off the right edge: distances 1, 2, … from column 10
    r = colour_anchor.ramp(np.repeat(cloud, 3, axis=0))[1]
    assert (r[:10] == 0).all()
    np.testing.assert_allclose(r[10:14], 1 - np.exp(-np.arange(1, 5) / colour_anchor.TAU_PX), rtol=1e-6)
    assert (np.diff(r[10:]) >= 0).all()
    reach = 10 + colour_anchor.REACH_PX
    assert (r[reach - 1 :] == r[-1]).all() and r[-1] > 0.999
    everywhere = colour_anchor.ramp(np.ones((5, 5), bool))
    np.testing.assert_allclose(everywhere, r[-1])  # no clear pixel anywhere: as deep as the reach
    assert not colour_anchor.ramp(np.zeros((5, 5), bool)).any()


def test_a_drift_of_the_models_form_is_taken_off_exactly():
    """Flat ground, a model that drifts by β·r inside the cloud: the anchor gives the ground back and β."""
    cloud = _blobs()
    ground = np.array([0.05, 0.08, 0.06, 0.30], np.float32)[:, None, None] * np.ones((1, H, W), np.float32)
    beta = np.array([0.04, 0.02, 0.05, -0.15], np.float32)
    output = ground + beta[:, None, None] * colour_anchor.ramp(cloud)
    cloudy = np.where(cloud, 0.8, ground).astype(np.float32)
    anchored, fitted = colour_anchor.anchor(output, cloudy, cloud)
    np.testing.assert_allclose(fitted, beta, atol=1e-6)
    np.testing.assert_allclose(anchored, ground, atol=1e-6)
    edge = cloud & ~np.roll(cloud, 1, axis=1)  # a shift on the edge would draw the cloud's outline
    assert np.abs(anchored - output)[:, edge].max() <= np.abs(beta).max() * (1 - np.exp(-1.5 / colour_anchor.TAU_PX))


def test_nothing_to_anchor_leaves_the_output_alone():
    out = np.random.default_rng(0).random((4, 20, 20)).astype(np.float32)
    same, beta = colour_anchor.anchor(out, out, np.zeros((20, 20), bool))  # no cloud
    assert beta is None and np.array_equal(same, out)
    same, beta = colour_anchor.anchor(out, out, np.ones((20, 20), bool))  # no clear pixel
    assert beta is None and np.array_equal(same, out)


@pytest.fixture()
def scene(tmp_path):
    return write_masked_scene(tmp_path, _blobs())


def _read(path) -> np.ndarray:
    with rasterio.open(path) as ds:
        return ds.read().astype(np.float64)


def test_the_streamed_run_equals_one_whole_image_anchor_whatever_the_chunking(tmp_path, scene):
    opt, sar, mask = scene
    common = dict(optical=opt, sar=sar, mask=mask, model="test-brighten", tile=32, overlap=8)
    plain = run(RunConfig(out=tmp_path / "plain.tif", **common))
    small = run(RunConfig(out=tmp_path / "small.tif", colour_anchor=True, chunk=40, **common))
    run(RunConfig(out=tmp_path / "large.tif", colour_anchor=True, chunk=1024, **common))
    assert plain.colour_anchor is None and small.colour_anchor is not None
    np.testing.assert_array_equal(_read(tmp_path / "small.tif"), _read(tmp_path / "large.tif"))
    cloud = _blobs()
    expected, beta = colour_anchor.anchor(_read(tmp_path / "plain.tif") / 1e4, _read(opt) / 1e4, cloud)
    np.testing.assert_allclose(small.colour_anchor, beta, atol=1e-5)
    assert beta[0] > 0.05  # test-brighten's +0.1 and the cloudless random ground: a real drift to take off
    got = _read(tmp_path / "small.tif")
    expected = np.rint(expected * 1e4)
    expected[expected == 0] = 1  # nodata is 0: a valid pixel is written as 1 (stream.chunks.nodata_substitute)
    np.testing.assert_allclose(got, expected, atol=1)
    np.testing.assert_array_equal(got[:, ~cloud], _read(tmp_path / "plain.tif")[:, ~cloud])  # clear: untouched
    with rasterio.open(tmp_path / "small.tif") as ds:
        tag = json.loads(ds.tags()["ALIGNCR_COLOUR_ANCHOR"])
    np.testing.assert_allclose(tag["shift"], beta, atol=1e-5)
    with rasterio.open(tmp_path / "plain.tif") as ds:
        assert "ALIGNCR_COLOUR_ANCHOR" not in ds.tags() and "colour_anchor" not in ds.tags()["ALIGNCR_SETTINGS"]
    with rasterio.open(tmp_path / "small.tif") as ds:
        assert json.loads(ds.tags()["ALIGNCR_SETTINGS"])["colour_anchor_tau_px"] == colour_anchor.TAU_PX
    assert sorted(p.name for p in tmp_path.iterdir()) == ["large.tif", "mask.tif", "opt.tif", "plain.tif", "s1.tif",
                                                          "small.tif"]  # the drafts are gone  # fmt: skip


def test_pixels_the_model_did_not_write_stay_as_acquired(tmp_path, scene):
    """--only-cloudy with a SAR that covers only the left half: the right half of the cloud keeps the input."""
    opt, _, mask = scene
    half = write_sar(tmp_path / "half.tif", like=opt)
    with rasterio.open(half, "r+") as ds:
        data = ds.read()
        data[:, :, data.shape[2] // 2 :] = np.nan
        ds.write(data)
    out = tmp_path / "out.tif"
    result = run(RunConfig(optical=opt, sar=half, mask=mask, out=out, model="test-brighten", tile=32, overlap=8,
                           only_cloudy=True, cloud_feather=0, colour_anchor=True))  # fmt: skip
    assert result.colour_anchor is not None
    got, original = _read(out), _read(opt)
    kept = np.all(got == original, axis=0)
    assert kept[:, -20:].all()  # no SAR there: the input, anchored or not
    assert (~kept[_blobs() & (np.arange(W) < 30)[None, :]]).all()  # the model wrote (and was anchored) there


def test_the_cli_prints_the_drift_and_the_json_event_carries_it(tmp_path, scene, capsys):
    opt, sar, mask = scene
    args = ["run", "--optical", str(opt), "--sar", str(sar), "--mask", str(mask), "--model", "test-brighten",
            "--tile", "32", "--overlap", "8", "--colour-anchor"]  # fmt: skip
    assert main([*args, "--out", str(tmp_path / "a.tif")]) == 0
    assert "colour anchor: the model's drift deep inside the cloud, taken off" in capsys.readouterr().out
    assert main([*args, "--out", str(tmp_path / "b.tif"), "--json"]) == 0
    events = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.startswith("{")]
    result = [e for e in events if e["event"] == "result"][0]
    assert len(result["colour_anchor_shift"]) == 4 and result["colour_anchor_shift"][0] > 0.05
    assert result["colour_anchor"].startswith("colour anchor: the model's drift deep inside the cloud")
