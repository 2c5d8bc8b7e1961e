"""``engine run --adapt STEPS`` (engine.refine.scene_adapt): the run's copy of the model is fine-tuned on the scene's
own clear pixels first. The learnable-constant test model shows which pixels were its targets: the clear ones, never
the masked (or detected) cloud; the weights file is not changed; skipped runs say why; a cancel writes nothing."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest
import rasterio
from helpers_models import registered_test_models
from helpers_rasters import write_mask, write_optical, write_sar

from engine.cli import main
from engine.config import RunConfig
from engine.errors import Cancelled
from engine.models import build_model, weights
from engine.progress import Progress
from engine.stream.pipeline import run

SIZE = 128


@pytest.fixture(scope="module", autouse=True)
def _models():
    with registered_test_models():
        yield


def _scene(tmp_path, clear: tuple[float, ...], cloud: float, cloud_fraction: float, size: int = SIZE):
    """Optical DN: ``clear`` reflectance per band on the right, ``cloud`` in every band on the left
    ``cloud_fraction`` of the columns (the mask's cloud); SAR and a 1-band mask on the same place."""
    data = np.empty((4, size, size), np.uint16)
    data[:] = (np.array(clear) * 10000).astype(np.uint16)[:, None, None]
    data[:, :, : int(round(size * cloud_fraction))] = int(cloud * 10000)
    opt = write_optical(tmp_path / "opt.tif", data)
    sar = write_sar(tmp_path / "s1.tif", like=opt)
    mask = write_mask(tmp_path / "mask.tif", like=opt, cloud_fraction=cloud_fraction)
    return opt, sar, mask


def _run(opt, sar, out, **kw):
    kw.setdefault("model", "test-bias")
    kw.setdefault("mode", "raw")  # --adapt as asked, nothing else (the default --mode best: test_mode.py)
    return run(RunConfig(optical=opt, sar=sar, out=out, device="cpu", tile=64, overlap=8, **kw))


def _output_mean(path) -> np.ndarray:
    with rasterio.open(path) as ds:
        return ds.read().reshape(4, -1).mean(axis=1) / 10000.0


def test_adaptation_learns_from_the_clear_pixels_not_the_masked_cloud(tmp_path):
    # clear fields at 0.6, the "cloud" under the mask dark (0.05) on half the scene: had its pixels been targets,
    # the constant would go down; the clear pixels pull it up from 0.5
    opt, sar, mask = _scene(tmp_path, clear=(0.6, 0.6, 0.6, 0.6), cloud=0.05, cloud_fraction=0.5)
    _run(opt, sar, tmp_path / "plain.tif", mask=mask)
    result = _run(opt, sar, tmp_path / "adapted.tif", mask=mask, adapt=40)
    np.testing.assert_allclose(_output_mean(tmp_path / "plain.tif"), 0.5, atol=1e-4)
    assert (_output_mean(tmp_path / "adapted.tif") > 0.5 + 0.001).all()  # Adam: ≈ 40 × 5e-5 towards 0.6
    assert result.model_card["scene_adaptation"] == "40 steps on this scene's clear pixels"
    with rasterio.open(tmp_path / "adapted.tif") as ds, rasterio.open(tmp_path / "plain.tif") as plain:
        assert json.loads(ds.tags()["ALIGNCR_SETTINGS"])["adapt"] == 40
        assert "adapt" not in json.loads(plain.tags()["ALIGNCR_SETTINGS"])


def test_without_a_mask_the_detected_cloud_is_not_a_target(tmp_path):
    # dark vegetation (B, G, R, NIR) on 40 %, a bright white cloud (0.9) on 60 % and no mask: the detector's cloud
    # is no target, so every band goes down from 0.5 towards the vegetation
    opt, sar, _ = _scene(tmp_path, clear=(0.04, 0.07, 0.05, 0.30), cloud=0.9, cloud_fraction=0.6)
    result = _run(opt, sar, tmp_path / "adapted.tif", adapt=40)
    assert (_output_mean(tmp_path / "adapted.tif") < 0.5 - 0.001).all()
    assert any(w.startswith("--adapt without --mask") for w in result.warnings), result.warnings


def test_the_weights_file_is_not_changed_and_the_output_is(tmp_path):
    opt, sar, mask = _scene(tmp_path, clear=(0.1, 0.12, 0.1, 0.35), cloud=0.8, cloud_fraction=0.4)
    path = weights.save(build_model("aligncr-lite", num_blocks=1, fe_blocks=1), tmp_path / "tiny.safetensors", {})
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    _run(opt, sar, tmp_path / "plain.tif", mask=mask, model=None, weights=path)
    _run(opt, sar, tmp_path / "adapted.tif", mask=mask, model=None, weights=path, adapt=3)
    assert hashlib.sha256(path.read_bytes()).hexdigest() == digest
    with rasterio.open(tmp_path / "plain.tif") as a, rasterio.open(tmp_path / "adapted.tif") as b:
        assert not np.array_equal(a.read(), b.read())
        assert (a.transform, a.crs) == (b.transform, b.crs)


def test_same_scene_same_settings_same_output(tmp_path):
    opt, sar, mask = _scene(tmp_path, clear=(0.3, 0.3, 0.3, 0.3), cloud=0.9, cloud_fraction=0.3)
    for name in ("a.tif", "b.tif"):
        _run(opt, sar, tmp_path / name, mask=mask, adapt=10)
    with rasterio.open(tmp_path / "a.tif") as a, rasterio.open(tmp_path / "b.tif") as b:
        np.testing.assert_array_equal(a.read(), b.read())


@pytest.mark.parametrize(
    ("model", "size", "fraction", "words"),
    [("test-brighten", SIZE, 0.3, "this model has no trained weights to adapt"),
     ("test-bias", 64, 0.3, "smaller than one 80-px crop"),
     ("test-bias", SIZE, 0.97, "fewer than 1000 clear pixels")],
)  # fmt: skip
def test_a_run_that_cannot_adapt_says_why_and_runs_as_without(tmp_path, model, size, fraction, words):
    opt, sar, mask = _scene(tmp_path, clear=(0.3, 0.3, 0.3, 0.3), cloud=0.9, cloud_fraction=fraction, size=size)
    result = _run(opt, sar, tmp_path / "out.tif", mask=mask, model=model, adapt=20)
    assert any(words in w for w in result.warnings), result.warnings
    assert "scene_adaptation" not in (result.model_card or {})


def test_cancel_while_adapting_writes_nothing(tmp_path):
    opt, sar, mask = _scene(tmp_path, clear=(0.3, 0.3, 0.3, 0.3), cloud=0.9, cloud_fraction=0.3)
    progress = Progress()
    seen = []

    def on_progress(fraction: float, message: str) -> None:
        seen.append(message)
        if message.startswith("adapting to the scene: step 3/"):
            progress.cancel()

    progress.callback = on_progress
    with pytest.raises(Cancelled):
        run(RunConfig(optical=opt, sar=sar, out=tmp_path / "out.tif", mask=mask, model="test-bias", device="cpu",
                      adapt=50), progress)  # fmt: skip
    assert not (tmp_path / "out.tif").exists()
    assert seen[-1] == "adapting to the scene: step 3/50"  # the next step checks the flag and stops


def test_cli_takes_adapt_and_refuses_a_negative_count(tmp_path, capsys):
    opt, sar, mask = _scene(tmp_path, clear=(0.6, 0.6, 0.6, 0.6), cloud=0.05, cloud_fraction=0.5)
    args = ["run", "--optical", str(opt), "--sar", str(sar), "--mask", str(mask), "--model", "test-bias",
            "--device", "cpu", "--tile", "64", "--overlap", "8"]  # fmt: skip
    assert main([*args, "--out", str(tmp_path / "out.tif"), "--adapt", "10"]) == 0
    assert (_output_mean(tmp_path / "out.tif") > 0.5).all()
    assert "adapting to the scene: step 10/10" in capsys.readouterr().err  # a status line before the tile bar
    assert main([*args, "--out", str(tmp_path / "bad.tif"), "--adapt", "-1"]) != 0
    assert "--adapt must be 0 (off) to 2000 steps, got -1" in capsys.readouterr().err
    assert not (tmp_path / "bad.tif").exists()


def test_batch_adapts_every_scene_with_the_run_setting(tmp_path):
    from engine.batch import SceneJob, run_scene

    opt, sar, mask = _scene(tmp_path, clear=(0.6, 0.6, 0.6, 0.6), cloud=0.05, cloud_fraction=0.5)
    job = SceneJob(id="a", optical=opt, sar=sar, out=tmp_path / "a.tif", mask=mask, model="test-bias")
    record = run_scene(job, {"adapt": 10, "device": "cpu", "tile": 64, "overlap": 8}, {})
    assert record["status"] == "ok", record
    assert (_output_mean(tmp_path / "a.tif") > 0.5).all()
    with rasterio.open(tmp_path / "a.tif") as ds:
        assert json.loads(ds.tags()["ALIGNCR_SETTINGS"])["adapt"] == 10
