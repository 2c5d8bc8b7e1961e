"""Test-time augmentation (stream.tta) and --confidence: the spread of the model's output over flips/rotations."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
import rasterio
import torch
from helpers_models import registered_test_models
from helpers_rasters import (
    WGS84,
    footprint_transform,
    read_band_and_facts,
    write_mask,
    write_optical,
    write_sar,
    write_tiny_sen12,
)

from engine.cli import main
from engine.config import RunConfig
from engine.errors import Cancelled, InputError
from engine.models.unet_arch import match_sar
from engine.progress import Progress
from engine.stream import tta
from engine.stream.composite import cloud_weight
from engine.stream.pipeline import CONFIDENCE_NODATA, run
from engine.stream.tiling import blend_window


@pytest.fixture(scope="module", autouse=True)
def _models():
    with registered_test_models():
        yield


_read = read_band_and_facts


def _ramp_spread(size: int) -> np.ndarray:
    """test-ramp's spread over the 4 flips on a ``size``-row tile: identity and flip-lr add 0.1·r/size, flip-ud and
    rot180 0.1·(size−1−r)/size, so the standard deviation is half their difference (the same in every band)."""
    r = np.arange(size, dtype=np.float64)
    return 0.05 * np.abs(2 * r - (size - 1)) / size


# --- the transforms -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("shape", [(2, 3, 8, 8), (2, 3, 5, 7)])
def test_every_transform_is_undone_by_its_inverse(shape):
    x = np.random.default_rng(0).random(shape).astype(np.float32)
    for t in tta.D4:
        np.testing.assert_array_equal(t.invert(t.apply(x)), x)
        torch.testing.assert_close(t.invert(t.apply(torch.from_numpy(x))), torch.from_numpy(x), rtol=0, atol=0)


def test_the_eight_transforms_are_d4_in_the_documented_order():
    x = np.arange(16).reshape(4, 4)
    images = [t.apply(x) for t in tta.D4]
    assert len({im.tobytes() for im in images}) == 8  # all distinct: the whole dihedral group
    expected = [x, x[:, ::-1], x[::-1], np.rot90(x, 2), x.T, np.rot90(x, 1), np.rot90(x, 3), x[::-1, ::-1].T]
    for t, got, want in zip(tta.D4, images, expected):
        np.testing.assert_array_equal(got, want, err_msg=t.name)
    assert not any(t.transpose for t in tta.transforms(4))  # the default keeps a non-square tile's shape
    with pytest.raises(ValueError, match="1 to 8"):
        tta.transforms(9)


def _pointwise(optical, sar):
    """A model whose output turns with its input (equivariant): each pixel from its own optical and SAR values."""
    o, s = torch.as_tensor(optical), torch.as_tensor(sar)
    return (0.5 * o + 0.25 * match_sar(s, o.shape[-2:]).mean(1, keepdim=True)).numpy()


@pytest.mark.parametrize("n", range(1, 9))
def test_an_equivariant_model_has_no_spread_and_its_plain_output_as_mean(n):
    rng = np.random.default_rng(n)
    optical = rng.random((3, 4, 16, 16), dtype=np.float32)
    sar = rng.random((3, 2, 16, 16), dtype=np.float32)
    mean, spread = tta.predict(_pointwise, optical, sar, n)
    assert mean.shape == (3, 4, 16, 16) and spread.shape == (3, 16, 16) and spread.dtype == np.float32
    np.testing.assert_array_equal(mean, _pointwise(optical, sar))
    assert (spread == 0).all()


def test_coarse_sar_stays_registered_with_the_optical_tile():
    """SAR on a grid 4× coarser than the optical tile (upsampled nearest inside the model, as the U-Nets and
    Align-CR do): flipping and turning both whole tiles keeps each optical pixel on its own SAR pixel, so the
    equivariant model still has no spread under all 8 transforms; turning the optical alone would show one."""
    rng = np.random.default_rng(3)
    optical = rng.random((2, 4, 16, 16), dtype=np.float32)
    sar = rng.random((2, 2, 4, 4), dtype=np.float32)
    mean, spread = tta.predict(_pointwise, optical, sar, 8)
    assert (spread == 0).all()
    np.testing.assert_array_equal(mean, _pointwise(optical, sar))
    _, misregistered = tta.predict(lambda o, s: _pointwise(o, sar), optical, sar, 8)  # the SAR left unturned
    assert misregistered.max() > 0.01


def test_a_model_tied_to_the_tile_orientation_has_a_spread():
    optical = np.full((1, 4, 32, 32), 0.3, dtype=np.float32)
    sar = np.zeros((1, 2, 32, 32), dtype=np.float32)
    ramp = 0.1 * np.arange(32, dtype=np.float32)[:, None] / 32
    mean, spread = tta.predict(lambda o, s: np.asarray(o) + ramp, optical, sar, 4)
    np.testing.assert_allclose(spread[0], np.broadcast_to(_ramp_spread(32)[:, None], (32, 32)), atol=1e-7)
    np.testing.assert_allclose(mean, 0.3 + 0.1 * 31 / 64, atol=1e-7)  # the ramp averages out
    assert spread.min() > 0


# --- the pipeline ---------------------------------------------------------------------------------------------


def _expected_blend(height: int, width: int, tile: int, overlap: int) -> np.ndarray:
    """test-ramp's per-tile spread blended over the scene with the output's tile weights (Σ w·s / Σ w)."""
    num, den = np.zeros((height + tile, width + tile)), np.zeros((height + tile, width + tile))
    window = blend_window(tile, overlap).astype(np.float64)
    spread = np.broadcast_to(_ramp_spread(tile)[:, None], (tile, tile))
    stride = tile - overlap
    for y in range(0, max(1, height - overlap), stride):
        for x in range(0, max(1, width - overlap), stride):
            num[y : y + tile, x : x + tile] += window * spread
            den[y : y + tile, x : x + tile] += window
    return num[:height, :width] / den[:height, :width]


def test_confidence_raster_is_aligned_float32_blended_like_the_output(tmp_path):
    """A nodata corner (-1), half the scene without SAR (input kept: 0), the rest the model's spread blended over
    the tile overlaps with the output's weights; the chunking does not change it."""
    data = np.full((4, 70, 60), 3000, dtype=np.uint16)
    data[:, :5, :5] = 0  # optical nodata
    opt = write_optical(tmp_path / "opt.tif", data)
    transform, w, h = footprint_transform(opt, WGS84, 9e-5)
    sar = write_sar(tmp_path / "half.tif", crs=WGS84, transform=transform, height=h, width=w // 2)
    conf = {}
    for chunk in (32, 1024):
        path = tmp_path / f"conf{chunk}.tif"
        run(RunConfig(optical=opt, sar=sar, out=tmp_path / f"out{chunk}.tif", confidence=path, model="test-ramp",
                      tile=32, overlap=8, chunk=chunk))  # fmt: skip
        conf[chunk], facts = _read(path)
    np.testing.assert_array_equal(conf[32], conf[1024])
    spread = conf[32]
    with rasterio.open(opt) as src:
        assert (facts["crs"], facts["transform"], facts["shape"]) == (src.crs, src.transform, src.shape)
    assert facts["dtypes"] == ("float32",) and facts["nodata"] == CONFIDENCE_NODATA
    assert facts["descriptions"] == ("TTA spread (reflectance)",)
    assert "ALIGNCR_CONFIDENCE" in facts["tags"] and facts["tags"]["ALIGNCR_MODEL"] == "test-ramp"
    assert facts["tags"]["ALIGNCR_TTA"] == "4" and json.loads(facts["tags"]["ALIGNCR_SETTINGS"])["tta"] == 4
    assert (spread[:5, :5] == CONFIDENCE_NODATA).all()
    assert (spread[:, -20:] == 0).all()  # no SAR: the input as acquired
    expected = _expected_blend(70, 60, 32, 8)
    np.testing.assert_allclose(spread[10:, 5:20], expected[10:, 5:20], atol=1e-6)


def test_tta_alone_outputs_the_mean_and_an_equivariant_model_is_unchanged(tmp_path):
    opt = write_optical(tmp_path / "opt.tif", height=40, width=40)
    sar = write_sar(tmp_path / "s1.tif", like=opt)
    with rasterio.open(opt) as ds:
        original = ds.read().astype(np.float64)
    base = dict(optical=opt, sar=sar, mode="raw", tile=32, overlap=8)
    run(RunConfig(**base, out=tmp_path / "ramp.tif", model="test-ramp", tta=4))
    with rasterio.open(tmp_path / "ramp.tif") as ds:
        mean = ds.read().astype(np.float64)
        assert json.loads(ds.tags()["ALIGNCR_SETTINGS"])["tta"] == 4
    np.testing.assert_allclose(mean - original, 1e4 * 0.1 * 31 / 64, atol=1.0)  # the ramp averaged out, in DN
    assert not list(tmp_path.glob("*conf*"))
    run(RunConfig(**base, out=tmp_path / "plain.tif", model="test-brighten"))
    run(RunConfig(**base, out=tmp_path / "tta8.tif", model="test-brighten", tta=8, confidence=tmp_path / "c.tif"))
    with rasterio.open(tmp_path / "plain.tif") as a, rasterio.open(tmp_path / "tta8.tif") as b:
        np.testing.assert_array_equal(a.read(), b.read())
    assert (_read(tmp_path / "c.tif")[0] == 0).all()


def test_only_cloudy_confidence_is_zero_where_the_input_is_kept(tmp_path):
    opt = write_optical(tmp_path / "opt.tif", height=50, width=50)
    sar = write_sar(tmp_path / "s1.tif", like=opt)
    cloud = np.zeros((1, 50, 50), np.uint8)
    cloud[:, 20:30, 20:30] = 1
    mask = write_mask(tmp_path / "mask.tif", cloud, like=opt)
    base = dict(optical=opt, sar=sar, mask=mask, model="test-ramp", mode="raw", tile=32, overlap=8, cloud_feather=5)
    run(RunConfig(**base, out=tmp_path / "all.tif", confidence=tmp_path / "all_c.tif"))
    run(RunConfig(**base, out=tmp_path / "cl.tif", confidence=tmp_path / "cl_c.tif", only_cloudy=True))
    everywhere, cloudy = _read(tmp_path / "all_c.tif")[0], _read(tmp_path / "cl_c.tif")[0]
    weight = cloud_weight(cloud[0].astype(bool), 5)
    np.testing.assert_allclose(cloudy, weight * everywhere, rtol=1e-6)
    assert (cloudy[weight == 0] == 0).all() and (cloudy[weight == 1] > 0).all()


def test_confidence_cli_errors_and_cancel_leave_no_file(tmp_path):
    opt = write_optical(tmp_path / "opt.tif", height=40, width=40)
    sar = write_sar(tmp_path / "s1.tif", like=opt)
    out, conf = tmp_path / "out.tif", tmp_path / "conf.tif"
    args = ["run", "--optical", str(opt), "--sar", str(sar), "--out", str(out), "--model", "test-ramp",
            "--tile", "32", "--overlap", "8"]  # fmt: skip
    assert main([*args, "--confidence", str(conf), "--tta", "8", "--cog"]) == 0
    spread, facts = _read(conf)
    assert facts["layout"] == "COG" and facts["tags"]["ALIGNCR_TTA"] == "8" and spread.max() > 0
    assert main([*args, "--tta", "9"]) == 2
    assert RunConfig(optical=opt, sar=sar, out=out, confidence=conf).tta == tta.DEFAULT_CONFIDENCE_TTA
    with pytest.raises(InputError, match="--confidence needs --tta of 2 or more"):
        run(RunConfig(optical=opt, sar=sar, out=tmp_path / "o.tif", confidence=conf, tta=1, model="identity"))
    with pytest.raises(InputError, match="--confidence must be another file than --out"):
        run(RunConfig(optical=opt, sar=sar, out=out, confidence=out, model="identity"))
    with pytest.raises(InputError, match="--confidence must be another file than --qa"):
        run(RunConfig(optical=opt, sar=sar, out=tmp_path / "o.tif", qa=conf, confidence=conf, model="identity"))
    with pytest.raises(Exception, match="overwrite an input"):
        run(RunConfig(optical=opt, sar=sar, out=tmp_path / "o2.tif", confidence=opt, model="identity"))
    progress = Progress()
    progress.callback = lambda fraction, message: progress.cancel() if fraction > 0 else None
    with pytest.raises(Cancelled):
        run(RunConfig(optical=opt, sar=sar, out=tmp_path / "c.tif", confidence=tmp_path / "c_conf.tif",
                      model="test-ramp", tile=32, overlap=8, batch=1), progress)  # fmt: skip
    assert not (tmp_path / "c.tif").exists() and not (tmp_path / "c_conf.tif").exists()
    assert not list(tmp_path.glob(".*tmp.tif"))


def test_batch_confidence_column_writes_the_scene_confidence(tmp_path):
    from helpers_processes import dead_pid

    from engine.batch import read_manifest, run_scene

    opt = write_optical(tmp_path / "opt.tif", height=40, width=40)
    sar = write_sar(tmp_path / "s1.tif", like=opt)
    manifest = tmp_path / "m.csv"
    manifest.write_text(f"id,optical,sar,out,model,confidence\na,{opt},{sar},a.tif,test-ramp,conf/a_conf.tif\n")
    (job,) = read_manifest(manifest)
    assert job.confidence == (tmp_path / "conf" / "a_conf.tif").resolve()
    job.confidence.parent.mkdir()
    stale = job.confidence.parent / f".{job.confidence.name}.{dead_pid()}.dead1234.tmp.tif"  # a dead owner
    stale.write_bytes(b"half")
    record = run_scene(job, {"tile": 32, "overlap": 8, "device": "cpu"}, {})
    assert record["status"] == "ok", record
    assert _read(job.confidence)[0].max() > 0 and not stale.exists()


def test_correlation_benchmark_reports_per_sample_and_pooled_spearman(tmp_path):
    """benchmarks/confidence_correlation.py on tiny SEN12MS-CR triplets with test-ramp: every sample scored inside
    its cloud, the spread the ramp's (known), a finite correlation per sample and pooled."""
    script = Path(__file__).resolve().parents[1] / "benchmarks" / "confidence_correlation.py"
    spec = importlib.util.spec_from_file_location("confidence_correlation", script)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    data = write_tiny_sen12(tmp_path / "sen12", n=2, size=32)
    out = tmp_path / "conf.json"
    assert bench.main(["--weights", "test-ramp", "--data", str(data), "--out", str(out)]) == 0
    report = json.loads(out.read_text())
    assert report["tta"] == 4 and [r["id"] for r in report["per_sample"]] == ["0", "1"]
    for row in report["per_sample"]:
        cloud = _read(data / "cloudmask" / f"{row['id']}.tif")[0] > 0
        rows = np.nonzero(cloud)[0]
        assert row["pixels"] == cloud.sum() and -1 <= row["spearman_rho"] <= 1
        assert row["mean_spread"] == pytest.approx(_ramp_spread(32)[rows].mean(), abs=1e-6)
    assert report["pooled"]["pixels"] == sum(r["pixels"] for r in report["per_sample"])
    assert len(report["pooled"]["error_by_spread_quintile"]) == 5
    assert bench.main(["--weights", "test-ramp", "--data", str(data), "--max-pixels", "50", "--out", str(out)]) == 0
    assert [r["pixels"] for r in json.loads(out.read_text())["per_sample"]] == [50, 50]
    assert bench.main(["--weights", "test-ramp", "--data", str(data), "--tta", "1"]) == 2
