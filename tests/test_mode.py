"""``--mode`` (engine.stream.mode): the default run is the best mode — only the cloud replaced, no adaptation unless
asked, the scene check and its guard — and ``--mode raw`` is the plain network; the guard falls back to the
non-learned estimate where the model loses to it on the scene's own clear ground, and says so everywhere."""

from __future__ import annotations

import json

import numpy as np
import pytest
import rasterio
import torch
from helpers_prior import engine_colours_and_sar
from helpers_rasters import write_masked_scene

from engine.cli import main
from engine.config import RunConfig
from engine.models import build_model, save
from engine.refine import prior
from engine.refine.scene_check import SceneCheck
from engine.stream import mode
from engine.stream.pipeline import run


def _check(model_db: float, prior_db: float | None) -> SceneCheck:
    return SceneCheck(windows=2, model_db=model_db, flat_db=20.0, fill_db=21.0, margin_db=model_db - 21.0, wins=1,
                      prior_db=prior_db)  # fmt: skip


def test_best_switches_on_the_cloud_only_output_and_the_scene_check_raw_does_not(tmp_path):
    given = RunConfig(optical=tmp_path / "o.tif", out=tmp_path / "x.tif")
    best = mode.resolve(given)
    assert given.mode == "best" and best.only_cloudy and best.scene_check
    raw = mode.resolve(RunConfig(optical=tmp_path / "o.tif", out=tmp_path / "x.tif", mode="raw"))
    assert not raw.only_cloudy and not raw.scene_check


def test_the_default_model_falls_back_from_the_modes_own_to_another_bundled_then_identity(tmp_path, monkeypatch):
    present, absent = tmp_path / "w.safetensors", tmp_path / "none.safetensors"
    present.write_bytes(b"x")
    monkeypatch.setattr(mode, "BUNDLED", {"aligncr-res": absent, "aligncr-lite": present})
    assert mode.default_model("best") == "aligncr-lite" and mode.default_model("raw") == "aligncr-lite"
    monkeypatch.setattr(mode, "BUNDLED", {"aligncr-res": present, "aligncr-lite": absent})
    assert mode.default_model("best") == "aligncr-res"
    monkeypatch.setattr(mode, "BUNDLED", {"aligncr-res": absent, "aligncr-lite": absent})
    assert mode.default_model("best") == "identity"


def test_the_guard_keeps_the_better_of_the_model_and_the_estimate():
    assert mode.guard_verdict(_check(25.0, 24.0)).used == "model"
    kept = mode.guard_verdict(_check(23.0, 24.5))
    assert kept.used == "estimate" and "the output inside the cloud is the estimate" in kept.sentence()
    assert mode.guard_verdict(_check(25.0, None)) is None and mode.guard_verdict(None) is None


def test_the_fallback_module_returns_the_estimate_it_is_given():
    given = torch.rand(1, 5, 8, 8)
    out = mode.EstimateOnly(None)(torch.rand(1, 4, 8, 8), None, prior=given)
    assert torch.equal(out, given[:, :4])


@pytest.fixture()
def scene(tmp_path):
    h, w = 200, 220
    cloud = np.zeros((h, w), dtype=bool)
    cloud[40:150, 60:180] = True
    return (*write_masked_scene(tmp_path, cloud), cloud)


def test_a_default_run_that_loses_to_the_estimate_writes_the_estimate_and_says_so(tmp_path, scene, capsys):
    """A residual model whose head paints +0.3 everywhere loses to the estimate on the scene's clear ground: the
    guard writes the estimate inside the cloud; the CLI line, --json, the output's tags say which was used. The
    default run does not adapt the model to the scene (decided on the select split, docs/model.md)."""
    opt, sar, mask, cloud = scene
    model = build_model("aligncr-res")
    with torch.no_grad():
        model.UPNet[-1].bias.fill_(0.3)
    weights = save(model, tmp_path / "bad.safetensors")
    out = tmp_path / "out.tif"
    code = main(["run", "--optical", str(opt), "--sar", str(sar), "--mask", str(mask), "--weights", str(weights),
                 "--out", str(out), "--tile", "64", "--overlap", "8", "--json"])  # fmt: skip
    assert code == 0
    events = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.startswith("{")]
    assert not any("adapting" in e.get("message", "") for e in events)
    result = next(e for e in events if e["event"] == "result")
    assert result["mode"] == "best" and result["guard_used"] == "estimate" and "estimate" in result["guard"]
    with rasterio.open(out) as ds:
        settings = json.loads(ds.tags()["ALIGNCR_SETTINGS"])
        got = ds.read().astype(np.float32)
    with rasterio.open(opt) as ds:
        raw = ds.read().astype(np.float32)
    assert settings["mode"] == "best" and settings["guard"]["used"] == "estimate" and settings["only_cloudy"]
    assert "adapt" not in settings
    x = raw / 10000.0
    colours, sar_units = engine_colours_and_sar(RunConfig(optical=opt, sar=sar, mask=mask, out=tmp_path / "x.tif",
                                                          weights=weights))  # fmt: skip
    expected = np.clip(np.rint(prior.estimate(x, ~cloud, colours, sar_units) * 10000.0), 1, 65535)
    assert np.abs(got[:, cloud] - expected[:, cloud]).max() <= 1.0  # the estimate, not the painted +0.3
    far = ~np.pad(cloud, 10)[:-20, :-20] & ~np.pad(cloud, 10)[20:, 20:]  # away from the feathered edge
    assert np.array_equal(got[:, far & ~cloud], raw[:, far & ~cloud])


def test_mode_raw_runs_the_network_everywhere_without_the_guard(tmp_path, scene):
    opt, sar, mask, cloud = scene
    weights = save(build_model("aligncr-res"), tmp_path / "res.safetensors")
    result = run(RunConfig(optical=opt, sar=sar, mask=mask, out=tmp_path / "raw.tif", weights=weights, mode="raw",
                           tile=64, overlap=8))  # fmt: skip
    assert result.mode == "raw" and result.guard is None and result.scene_check is None
