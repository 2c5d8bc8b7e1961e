"""CPU inference backends (engine.stream.backends, issue 30): the choice rules, each backend against fp32 PyTorch
(the deformable convolution alone, the networks, a small scene through the pipeline), and the fallback to PyTorch
when a backend fails.

The tolerance: 1e-4 reflectance (the backends measured ≤ 1e-6 on both networks; bf16, for comparison, moves
outputs by up to 2.5e-3), and at most 1 DN in a written uint16 output (rounding of values that differ by less).
"""

from __future__ import annotations

import logging

import numpy as np
import pytest
import rasterio
import torch
from helpers_rasters import write_optical, write_sar

from engine.align.inputs import PackedInputsAdapter
from engine.config import RunConfig
from engine.models import build_model
from engine.models import save as save_weights
from engine.models.arch_util import per_pixel_filter
from engine.models.ops.deform_conv import DCNv2Pack
from engine.stream import backends
from engine.stream.accel import AccelConfig, InferenceRunner, backend_plan
from engine.stream.pipeline import run

CPU = torch.device("cpu")
TOLERANCE = 1e-4  # reflectance
INSTALLED = [name for name in backends.AUTO_ORDER if backends.installed(name)]
needs_ort = pytest.mark.skipif(backends.installed("onnxruntime") is None, reason="onnxruntime not installed")


def _perturbed(name: str, seed: int = 0) -> torch.nn.Module:
    """``name`` with every parameter moved (the zero-initialised offset convs and residual head too), so the
    deformable convolutions sample ≈ 1 px off the grid and every layer counts."""
    torch.manual_seed(seed)
    model = build_model(name).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return model


def _runner_module(model: torch.nn.Module) -> tuple[torch.nn.Module, int]:
    """What the runner calls for ``model`` (the packed adapter for the estimate-taking one) and its packed
    channels."""
    if getattr(model.cfg, "prior", False):
        return PackedInputsAdapter(model, 2, ["prior"], [model.cfg.in_bands + 1], {}), 2 + model.cfg.in_bands + 1
    return model, 2


# ---- the rules -------------------------------------------------------------------------------------------------


def test_choice_rules(monkeypatch, caplog):
    fp32, bf16 = torch.float32, torch.bfloat16
    monkeypatch.setattr(backends, "installed", lambda name: "1.0")
    assert backends.choose("auto", CPU, fp32, "aligncr-res", 100).backend == "onnxruntime"
    assert backends.choose("openvino", CPU, fp32, "identity", 1).backend == "openvino"  # asked for: no cost rule
    for args, why in [
        (("torch", CPU, fp32, "aligncr-res", 100), "asked"),
        (("auto", torch.device("cuda"), bf16, "aligncr-res", 100), "CUDA"),
        (("auto", CPU, bf16, "aligncr-res", 100), "bf16"),
        (("auto", CPU, fp32, "identity", 100), "measured for"),
        (("auto", CPU, fp32, "aligncr-res", None), "fewer than"),
        (("auto", CPU, fp32, "aligncr-res", backends.MIN_TILES - 1), "fewer than"),
    ]:
        choice = backends.choose(*args)
        assert choice.backend == "torch" and why in choice.reason, (args, choice)
    assert backends.choose("auto", CPU, fp32, "aligncr-res", 100, compile=True).backend == "torch"
    monkeypatch.setattr(backends, "installed", lambda name: None if name != "torch" else "2")
    assert "no CPU backend installed" in backends.choose("auto", CPU, fp32, "aligncr-res", 100).reason
    with caplog.at_level(logging.WARNING, logger="engine"):
        assert backends.choose("onnxruntime", CPU, fp32, "aligncr-res", 100).backend == "torch"
    assert "not installed" in caplog.text
    with pytest.raises(backends.BackendError):
        backends.choose("tensorrt", CPU, fp32, "aligncr-res", 100)


def test_runner_keeps_torch_outside_a_pipeline_run_and_says_why():
    runner = InferenceRunner(_perturbed("aligncr-lite"), CPU, AccelConfig(dtype="fp32", threads=1))
    described = runner.describe()
    runner.close()
    assert described["backend"] == "torch" and "fewer than" in described["backend_reason"]
    assert backend_plan("aligncr-lite", 4).backend == "torch"
    assert backends.model_name(PackedInputsAdapter(build_model("aligncr-res"), 2, ["prior"], [5], {})) == "aligncr-res"


# ---- each backend against fp32 PyTorch --------------------------------------------------------------------------


@pytest.mark.parametrize("name", INSTALLED)
def test_native_deformable_convolution_matches_the_pure_one(name):
    """One DCN with offsets up to ±6 px (samples beyond the border: zeros, and the border's inside corners)."""
    torch.manual_seed(1)
    dcn = DCNv2Pack(8, 8, 3, padding=1, deformable_groups=2).eval()
    with torch.no_grad():
        dcn.conv_offset.weight.normal_(0, 0.5)
        dcn.conv_offset.bias.normal_(0, 2.0)
    x, feat = torch.rand(1, 8, 20, 24), torch.rand(1, 8, 20, 24)
    with torch.no_grad():
        ref = dcn(x, feat)
    out = backends.open_backend(name, dcn, threads=1, workers=1).run(x, feat)
    assert float((out - ref).abs().max()) < 1e-4


@pytest.mark.slow
@pytest.mark.parametrize("model_name", ["aligncr-lite", "aligncr-res"])
@pytest.mark.parametrize("name", INSTALLED)
def test_backend_networks_match_fp32_pytorch(name, model_name):
    module, packed_channels = _runner_module(_perturbed(model_name))
    rng = np.random.default_rng(0)
    optical = rng.random((2, 4, 48, 64), dtype=np.float32)
    packed = rng.random((2, packed_channels, 48, 64), dtype=np.float32)
    config = AccelConfig(dtype="fp32", threads=2, cpu_workers=2)
    reference = InferenceRunner(module, CPU, AccelConfig(dtype="fp32", threads=1, backend="torch"))
    fast = InferenceRunner(module, CPU, AccelConfig(**{**config.__dict__, "backend": name}))
    try:
        expected, got = reference.predict(optical, packed), fast.predict(optical, packed)
        assert fast.describe()["backend"] == name
    finally:
        reference.close()
        fast.close()
    assert 0.0 < float(np.abs(expected - 0.5).max())  # the network did something
    assert float(np.abs(got - expected).max()) < TOLERANCE


def test_a_backend_that_fails_falls_back_to_pytorch_with_one_warning(monkeypatch, caplog):
    class Broken(backends.Backend):
        label = "Broken"

        def _build(self, optical, packed):
            raise RuntimeError("no such op: DeformConv\nsecond line")

        def _infer(self, graph, optical, packed):
            raise AssertionError("never reached: the build fails")

    monkeypatch.setattr(backends, "open_backend", lambda name, module, threads, workers: Broken(module, 1, 1))
    monkeypatch.setattr(backends, "installed", lambda name: "1.0")
    model = _perturbed("aligncr-lite")
    optical = np.random.default_rng(0).random((3, 4, 32, 32), dtype=np.float32)
    sar = np.random.default_rng(1).random((3, 2, 32, 32), dtype=np.float32)
    expected = InferenceRunner(model, CPU, AccelConfig(dtype="fp32", threads=1, backend="torch")).predict(optical, sar)
    runner = InferenceRunner(model, CPU, AccelConfig(dtype="fp32", threads=2, backend="onnxruntime"))
    with caplog.at_level(logging.WARNING, logger="engine"):
        got = runner.predict(optical, sar)
    runner.close()
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "could not convert" in warnings[0] and "second line" not in warnings[0]
    assert runner.describe()["backend"] == "torch" and "failed" in runner.describe()["backend_reason"]
    np.testing.assert_allclose(got, expected, atol=1e-6)


# ---- a small scene, both paths ---------------------------------------------------------------------------------


@needs_ort
@pytest.mark.parametrize("model_name", ["aligncr-lite", "aligncr-res"])
def test_small_scene_through_onnxruntime_matches_pytorch(tmp_path, model_name):
    opt = write_optical(tmp_path / "opt.tif", height=80, width=96)
    sar = write_sar(tmp_path / "s1.tif", like=opt)
    weights = save_weights(_perturbed(model_name), tmp_path / f"{model_name}.safetensors")
    outputs = {}
    for backend in ("torch", "onnxruntime"):
        config = RunConfig(optical=opt, sar=sar, out=tmp_path / f"{backend}.tif", weights=weights, mode="raw",
                           tile=64, overlap=16)  # fmt: skip
        result = run(config, accel=AccelConfig(dtype="fp32", backend=backend))
        assert result.accel["backend"] == backend
        with rasterio.open(config.out) as ds:
            outputs[backend] = ds.read().astype(np.int32)
    assert np.abs(outputs["onnxruntime"] - outputs["torch"]).max() <= 1  # DN
    assert (outputs["onnxruntime"] != outputs["torch"]).mean() < 0.01


def test_pipeline_runs_choose_by_tile_count(tmp_path, monkeypatch):
    """``auto`` in a run: a backend for a scene of enough tiles (here: the threshold lowered to this scene's)."""
    seen = []
    original = backends.choose
    monkeypatch.setattr(backends, "choose", lambda *a, **k: seen.append(a[4]) or original(*a, **k))
    opt = write_optical(tmp_path / "opt.tif", height=64, width=96)
    sar = write_sar(tmp_path / "s1.tif", like=opt)
    weights = save_weights(_perturbed("aligncr-lite"), tmp_path / "w.safetensors")
    run(RunConfig(optical=opt, sar=sar, out=tmp_path / "o.tif", weights=weights, mode="raw", tile=64, overlap=16),
        accel=AccelConfig(dtype="fp32", backend="torch"))  # fmt: skip
    assert seen == [2]  # 1 row × 2 columns of 64-px tiles


# ---- adaptation's faster backward ------------------------------------------------------------------------------


def test_per_pixel_filter_training_path_matches_the_loop():
    """The unfold path (gradients recorded) gives the tap loop's values and the loop's gradients."""
    torch.manual_seed(0)
    feat = torch.rand(2, 3, 9, 11, dtype=torch.float64, requires_grad=True)
    kern = torch.rand(2, 3 * 25, 9, 11, dtype=torch.float64, requires_grad=True)
    fast = per_pixel_filter(feat, kern, 5)
    grads = torch.autograd.grad(fast.square().sum(), (feat, kern))
    padded = torch.nn.functional.pad(feat, (2, 2, 2, 2), mode="replicate")
    k = kern.view(2, 3, 25, 9, 11)
    loop = sum(k[:, :, t] * padded[:, :, t // 5 : t // 5 + 9, t % 5 : t % 5 + 11] for t in range(25))
    with torch.no_grad():
        assert float((per_pixel_filter(feat, kern, 5) - loop).abs().max()) < 1e-12  # the inference path
    loop_grads = torch.autograd.grad(loop.square().sum(), (feat, kern))
    assert float((fast - loop).detach().abs().max()) < 1e-12
    for a, b in zip(grads, loop_grads):
        assert float((a - b).abs().max()) < 1e-10


# ---- what engine env / engine info / the plugin's check say ----------------------------------------------------


@pytest.mark.parametrize("present", [True, False])
def test_env_info_and_the_plugins_check_say_backend_precision_and_why(tmp_path, monkeypatch, present):
    """``engine env`` (text and JSON), ``engine info`` and the plugin's environment line and tooltip name the
    backend, the precision and the reason, on a CPU without native bf16 (where ``--dtype auto`` is fp32)."""
    from engine.commands import env, info
    from engine.stream import accel

    monkeypatch.setattr(accel, "cpu_has_native_bf16", lambda: False)
    monkeypatch.setattr(backends, "cpu_kind", lambda: "AVX2")
    monkeypatch.setattr(backends, "installed", lambda name: ("1.31" if present else None) if name != "torch" else "2")
    label, why = ("ONNX Runtime fp32", "measured faster") if present else ("PyTorch fp32", "no CPU backend installed")
    rep = env.collect()
    assert rep.inference["backend"] == ("onnxruntime" if present else "torch") and rep.inference["precision"] == "fp32"
    text = env.format_text(rep)
    line = next(row for row in text.splitlines() if row.strip().startswith("network"))
    assert "on this AVX2 CPU" in line and label in line and why in line
    assert ("not installed" in text) != present
    opt = write_optical(tmp_path / "opt.tif", height=2048, width=2048)
    facts = info.inference_facts(RunConfig(optical=opt, out=tmp_path / "o.tif", mode="raw"), 2048, 2048)
    assert facts["tiles"] == 81 and facts["precision"] == "fp32" and label in facts["sentence"]
    small = info.inference_facts(RunConfig(optical=opt, out=tmp_path / "o.tif", mode="raw"), 300, 300)
    assert small["backend"] == "torch" and "fewer than" in small["reason"]
    pytest.importorskip("qgis.core")
    from dataclasses import asdict

    from aligncr_qgis.dialog.processing import _env_line, _env_summary

    report = asdict(rep)
    assert f"Network: {rep.inference['model']} on this AVX2 CPU: {label}" in _env_summary(report)
    assert _env_line(report).count(f"runs {rep.inference['backend']} fp32") == 1
