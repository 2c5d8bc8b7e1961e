"""``engine run --scene-check`` (engine.refine.scene_check): the model beside flat and fill under synthetic clouds on
the scene's own clear ground. An oracle that is handed the clear image wins, the cloudy input loses; only clear ground
with every input is scored; the windows and clouds are seeded; with ``--adapt`` the checked clouds are never
adaptation targets and adaptation sees them as the check does; the verdict reaches the output's settings, the CLI
and the plugin's result event."""

from __future__ import annotations

import json

import numpy as np
import pytest
import rasterio
import torch
from helpers_models import registered_test_models
from helpers_rasters import write_mask, write_optical, write_sar
from rasterio.windows import Window
from scipy import ndimage
from torch import nn

from engine.cli import main
from engine.config import RunConfig
from engine.progress import Progress
from engine.refine import colour_anchor, scene_check
from engine.refine.scene_check import HeldOut, plan_check, score_check
from engine.stream.pipeline import run


@pytest.fixture(scope="module", autouse=True)
def _models():
    with registered_test_models():
        yield


def _texture(size: int, seed: int = 0) -> np.ndarray:
    """(4, size, size) smooth random fields in 0.05–0.45 reflectance: ground a flat colour cannot match."""
    rng = np.random.default_rng(seed)
    bands = [ndimage.gaussian_filter(rng.standard_normal((size, size)), 6) for _ in range(4)]
    out = np.stack([(b - b.min()) / (np.ptp(b) + 1e-9) for b in bands])
    return (0.05 + 0.4 * out).astype(np.float32)


def _reader(image: np.ndarray, unusable: np.ndarray | None = None):
    """A window reader as the pipeline's: the optical image, the clear image itself as the "SAR" (so that a model
    returning its second input is an oracle) and the unusable mask."""
    mask = np.zeros(image.shape[1:], np.float32) if unusable is None else unusable.astype(np.float32)

    def read(win: Window) -> dict[str, np.ndarray]:
        y, x = int(win.row_off), int(win.col_off)
        sl = (slice(y, y + int(win.height)), slice(x, x + int(win.width)))
        return {"optical": image[(slice(None), *sl)].copy(), "sar": image[(slice(None), *sl)].copy(),
                "mask": mask[sl][None].copy()}  # fmt: skip

    return read


class _Oracle(nn.Module):
    def forward(self, optical: torch.Tensor, packed: torch.Tensor) -> torch.Tensor:
        return packed


class _Cloudy(nn.Module):
    def forward(self, optical: torch.Tensor, packed: torch.Tensor) -> torch.Tensor:
        return optical


def test_an_oracle_beats_the_baselines_and_the_cloudy_input_does_not():
    image = _texture(256)
    held = plan_check(_reader(image), image.shape[1:], Progress())
    assert isinstance(held, list) and len(held) == scene_check.CHECKS
    oracle = score_check(_Oracle(), held, torch.device("cpu"))
    assert oracle.beats_baselines and oracle.wins == oracle.windows
    assert oracle.model_db > oracle.flat_db + 20 and "on this ground it beats both" in oracle.sentence()
    cloudy = score_check(_Cloudy(), held, torch.device("cpu"))
    assert not cloudy.beats_baselines and cloudy.wins <= 1  # a thin-haze draw can leave the input the best guess
    assert cloudy.model_db < min(cloudy.flat_db, cloudy.fill_db)
    assert "read its output inside the cloud as a guess" in cloudy.sentence()
    assert (oracle.flat_db, oracle.fill_db) == (cloudy.flat_db, cloudy.fill_db)  # same windows, same clouds


def test_windows_and_clouds_are_seeded_and_only_clear_ground_is_scored():
    image = _texture(256, seed=3)
    unusable = np.zeros((256, 256), bool)
    unusable[:, :100] = True  # real cloud (or no data) on the left
    first = plan_check(_reader(image, unusable), (256, 256), Progress())
    again = plan_check(_reader(image, unusable), (256, 256), Progress())
    assert isinstance(first, list) and isinstance(again, list) and first
    for a, b in zip(first, again, strict=True):
        assert a.window == b.window
        np.testing.assert_array_equal(a.clouded, b.clouded)
    for item in first:
        size = scene_check.window_size((256, 256))
        assert (item.window.width, item.window.height) == (size, size) == (128, 128)
        left = unusable[int(item.window.row_off) :, int(item.window.col_off) :][:size, :size]
        np.testing.assert_array_equal(item.unusable, left)
        assert 1 - left.mean() >= scene_check.MIN_CLEAR
        assert int((item.cloud & ~item.unusable).sum()) >= scene_check.MIN_SCORED
        assert int((~item.cloud & ~item.unusable).sum()) >= scene_check.MIN_SCORED  # the baselines' clear pixels
        # the cloudy input differs from the clear image under the synthetic cloud only
        changed = np.abs(item.clouded - item.clear).max(axis=0) > 1e-6
        assert changed[item.cloud].mean() > 0.5


@pytest.mark.parametrize(("shape", "cloudy", "words"),
                         [((64, 200), False, "smaller than 80 px"),
                          ((160, 160), True, "at least 30 % clear")])  # fmt: skip
def test_a_scene_that_cannot_be_checked_says_why(shape, cloudy, words):
    image = np.full((4, *shape), 0.3, np.float32)
    unusable = np.full(shape, cloudy)
    reason = plan_check(_reader(image, unusable), shape, Progress())
    assert isinstance(reason, str) and words in reason and reason.startswith("--scene-check skipped")


def test_paste_into_puts_the_checked_window_as_the_check_sees_it():
    clear = np.zeros((4, 8, 8), np.float32)
    clouded = np.full((4, 8, 8), 0.9, np.float32)
    cloud = np.zeros((8, 8), bool)
    cloud[2:6, 2:6] = True
    item = HeldOut(Window(10, 20, 8, 8), clouded, clear[:2], clear, cloud, np.zeros((8, 8), bool))
    optical = np.full((4, 10, 10), 0.1, np.float32)
    unusable = np.zeros((10, 10), bool)
    item.paste_into(Window(14, 16, 10, 10), optical, unusable)  # overlaps rows 20-25, cols 14-17 of the scene
    np.testing.assert_array_equal(optical[:, 4:10, 0:4], 0.9)
    assert (optical[:, :4] == 0.1).all() and (optical[:, :, 4:] == 0.1).all()
    expected = np.zeros((10, 10), bool)
    expected[4:10, 0:4] = cloud[0:6, 4:8]
    np.testing.assert_array_equal(unusable, expected)
    untouched = np.full((4, 10, 10), 0.1, np.float32)
    item.paste_into(Window(40, 40, 10, 10), untouched, np.zeros((10, 10), bool))  # no overlap: nothing changes
    assert (untouched == 0.1).all()


def _scene(tmp_path, size: int = 160):
    data = (_texture(size, seed=5) * 10000).astype(np.uint16)
    opt = write_optical(tmp_path / "opt.tif", data)
    sar = write_sar(tmp_path / "s1.tif", like=opt)
    mask = write_mask(tmp_path / "mask.tif", like=opt, cloud_fraction=0.2)
    return opt, sar, mask


def test_adaptation_never_targets_the_checked_clouds(tmp_path, monkeypatch):
    from engine.refine import scene_adapt

    pools = []
    real = scene_adapt.fine_tune_

    def spy(module, pool, *args, **kwargs):
        pools.append(pool)
        return real(module, pool, *args, **kwargs)

    monkeypatch.setattr(scene_adapt, "fine_tune_", spy)
    planned = []
    real_plan = scene_check.plan_check

    def plan_spy(*args, **kwargs):
        planned.append(real_plan(*args, **kwargs))
        return planned[-1]

    monkeypatch.setattr("engine.stream.pipeline.plan_check", plan_spy)
    opt, sar, mask = _scene(tmp_path)
    result = run(RunConfig(optical=opt, sar=sar, out=tmp_path / "out.tif", mask=mask, model="test-bias", mode="raw",
                           device="cpu", tile=64, overlap=8, adapt=5, scene_check=True))  # fmt: skip
    (held,), (pool,) = planned, pools
    assert len(held) == 1  # with --adapt the check holds out at most a quarter of the 2×2 cells of 80 px
    assert result.scene_check is not None and result.scene_check.adapted
    assert result.scene_check.windows == len(held)
    checked_cloud = np.zeros((160, 160), bool)
    for item in held:
        y, x = int(item.window.row_off), int(item.window.col_off)
        checked_cloud[y : y + item.cloud.shape[0], x : x + item.cloud.shape[1]] |= item.cloud
    # the pool's windows are 160 px here (the whole scene): every checked cloud pixel is masked out of the targets
    (sample,) = [s for s in pool if s["mask"].shape[-2:] == (160, 160)][:1]
    assert (sample["mask"][0][checked_cloud] == 1).all()
    item = held[0]
    y, x = int(item.window.row_off), int(item.window.col_off)
    h, w = item.cloud.shape
    np.testing.assert_allclose(sample["optical"][:, y : y + h, x : x + w][:, item.cloud], item.clouded[:, item.cloud])


def test_the_verdict_reaches_the_settings_the_cli_and_the_result_event(tmp_path, capsys):
    opt, sar, mask = _scene(tmp_path)
    result = run(RunConfig(optical=opt, sar=sar, out=tmp_path / "a.tif", mask=mask, model="test-bias", mode="raw",
                           device="cpu", tile=64, overlap=8, scene_check=True))  # fmt: skip
    check = result.scene_check
    assert check is not None and not check.adapted and not check.beats_baselines  # a constant 0.5 loses
    assert check.sentence() in result.warnings
    with rasterio.open(tmp_path / "a.tif") as ds:
        assert json.loads(ds.tags()["ALIGNCR_SETTINGS"])["scene_check"] == check.as_tag()
    plain = run(RunConfig(optical=opt, sar=sar, out=tmp_path / "b.tif", mask=mask, model="test-bias", mode="raw",
                          device="cpu", tile=64, overlap=8))  # fmt: skip
    assert plain.scene_check is None
    with rasterio.open(tmp_path / "b.tif") as ds:
        assert "scene_check" not in json.loads(ds.tags()["ALIGNCR_SETTINGS"])
    args = ["run", "--optical", str(opt), "--sar", str(sar), "--mask", str(mask), "--model", "test-bias",
            "--device", "cpu", "--tile", "64", "--overlap", "8", "--scene-check", "--mode", "raw"]  # fmt: skip
    capsys.readouterr()
    assert main([*args, "--out", str(tmp_path / "c.tif"), "--json"]) == 0
    events = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.startswith("{")]
    (done,) = [e for e in events if e["event"] == "result"]
    assert done["scene_check"] == check.sentence()
    assert any(e["event"] == "warning" and e["message"] == check.sentence() for e in events)


def test_batch_writes_each_scene_check_margin(tmp_path):
    from engine.batch import SceneJob, run_scene

    opt, sar, mask = _scene(tmp_path)
    job = SceneJob(id="a", optical=opt, sar=sar, out=tmp_path / "a.tif", mask=mask, model="test-bias")
    record = run_scene(job, {"scene_check": True, "mode": "raw", "device": "cpu", "tile": 64, "overlap": 8}, {})
    assert record["status"] == "ok", record
    margin = float(record["scene_check_db"])
    assert margin < 0 and f"margin {margin:+.1f} dB" in record["warnings"]
    plain = run_scene(SceneJob(id="b", optical=opt, sar=sar, out=tmp_path / "b.tif", mask=mask, model="test-bias"),
                      {"mode": "raw", "device": "cpu", "tile": 64, "overlap": 8}, {})  # fmt: skip
    assert plain["scene_check_db"] == ""


class _Drifting(nn.Module):
    """The clear image (handed over as the "SAR") with a colour drift that grows inside the cloud, as the bundled
    network's does: the colour anchor takes it off."""

    def forward(self, optical: torch.Tensor, packed: torch.Tensor) -> torch.Tensor:
        cloud = (optical - packed).abs().amax(dim=1, keepdim=True) > 0.02
        depth = torch.from_numpy(colour_anchor.ramp(cloud[0, 0].numpy()))[None, None]
        return packed + 0.2 * depth


def test_the_check_scores_the_anchored_output_when_the_run_anchors():
    image = _texture(256)
    held = plan_check(_reader(image), image.shape[1:], Progress())
    raw = score_check(_Drifting(), held, torch.device("cpu"))
    anchored = score_check(_Drifting(), held, torch.device("cpu"), anchored=True)
    assert anchored.anchored and not raw.anchored and "colour-anchored model" in anchored.sentence()
    assert anchored.model_db > raw.model_db + 3 and (anchored.flat_db, anchored.fill_db) == (raw.flat_db, raw.fill_db)
