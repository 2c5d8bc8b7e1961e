"""CUDA checks that the CPU suite cannot make; every test here is skipped without a CUDA GPU.

They are what a session with a lent GPU runs first (``bash benchmarks/gpu_session.sh``): the pure-torch DCN
against torchvision's kernel on the GPU, the bundled model's low-precision output against the CPU fp32 reference
on real data (the issue's < 1e-2 MAE rule for autocast), the whole pipeline on CUDA, and torch.compile.
"""

from __future__ import annotations

import numpy as np
import pytest
import rasterio
import torch

from engine.config import RunConfig
from engine.models import build_model
from engine.models.ops import deform_conv as dc
from engine.stream.accel import AccelConfig, InferenceRunner
from engine.stream.pipeline import run

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
CUDA = torch.device("cuda")


@pytest.mark.skipif(not dc.torchvision_available(), reason="torchvision not importable")
@pytest.mark.parametrize(("channels", "groups", "size"), [(96, 8, 40), (32, 4, 64)])
def test_pure_deform_matches_torchvision_on_cuda(channels, groups, size):
    torch.manual_seed(0)
    x = torch.randn(2, channels, size, size, device=CUDA, requires_grad=True)
    weight = torch.randn(channels, channels, 3, 3, device=CUDA, requires_grad=True)
    offset = (3 * torch.randn(2, 2 * groups * 9, size, size, device=CUDA)).requires_grad_()
    mask = torch.rand(2, groups * 9, size, size, device=CUDA, requires_grad=True)
    outs, grads = [], []
    for tv in (True, False):
        out = dc.deform_conv2d(x, offset, weight, None, 1, 1, 1, mask, use_torchvision=tv)
        outs.append(out)
        grads.append(torch.autograd.grad(out.square().mean(), (x, weight, offset, mask)))
    scale = outs[0].abs().max()
    torch.testing.assert_close(outs[1] / scale, outs[0] / scale, atol=1e-4, rtol=1e-4)
    for a, b in zip(grads[1], grads[0], strict=True):
        torch.testing.assert_close(a / b.abs().max(), b / b.abs().max(), atol=1e-3, rtol=1e-3)


def _quartet(shared_data):
    root = shared_data / "m3rcr_sample" / "train"
    return next((root / "planet_cloudy_fall").rglob("*.tif")), next((root / "S1_fall").rglob("*.tif"))


@pytest.mark.shared
def test_bundled_model_on_cuda_matches_cpu_fp32_on_real_data(shared_data, tmp_path):
    """fp32 on CUDA ≈ CPU fp32 (kernel rounding only); bf16 / fp16 autocast within 1e-2 MAE in reflectance."""
    opt, sar = _quartet(shared_data)
    outs = {}
    for name, device, dtype in [("cpu", "cpu", "fp32"), ("cuda-fp32", "cuda", "fp32"), ("cuda-bf16", "cuda", "bf16"),
                                ("cuda-fp16", "cuda", "fp16")]:  # fmt: skip
        out = tmp_path / f"{name}.tif"
        run(RunConfig(optical=opt, sar=sar, out=out, model="aligncr-lite", device=device, tile=256, overlap=32),
            accel=AccelConfig(dtype=dtype))  # fmt: skip
        with rasterio.open(out) as ds:
            outs[name] = ds.read().astype(np.float64) / 10000.0
    ref = outs.pop("cpu")
    assert np.abs(outs["cuda-fp32"] - ref).mean() < 1e-4
    for name in ("cuda-bf16", "cuda-fp16"):
        mae = np.abs(outs[name] - ref).mean()
        print(f"{name} vs CPU fp32: MAE {mae:.2e} reflectance, max {np.abs(outs[name] - ref).max():.2e}")
        assert mae < 1e-2


def test_bf16_runner_uses_tf32_for_fp32_islands_and_restores_it():
    before = torch.get_float32_matmul_precision()
    runner = InferenceRunner(build_model("aligncr-lite"), CUDA, AccelConfig(dtype="bf16"))
    assert torch.get_float32_matmul_precision() == "high" and runner.describe()["fp32_matmul"] == "high"
    runner.close()
    assert torch.get_float32_matmul_precision() == before
    exact = InferenceRunner(build_model("aligncr-lite"), CUDA, AccelConfig(dtype="fp32"))
    assert torch.get_float32_matmul_precision() == before  # fp32 stays exact
    exact.close()


def test_runner_batches_on_cuda_like_single_tiles():
    torch.manual_seed(1)
    model = build_model("aligncr-lite")
    runner = InferenceRunner(model, CUDA, AccelConfig(dtype="fp32", channels_last="off"))
    o, s = np.random.rand(4, 4, 128, 128).astype("float32"), np.random.rand(4, 2, 128, 128).astype("float32")
    together = runner.predict(o, s)
    alone = np.concatenate([runner.predict(o[i : i + 1], s[i : i + 1]) for i in range(4)])
    np.testing.assert_allclose(together, alone, atol=1e-4)


def test_compile_on_cuda_matches_eager():
    torch.manual_seed(2)
    model = build_model("aligncr-lite", num_blocks=1, fe_blocks=1)
    o, s = np.random.rand(2, 4, 128, 128).astype("float32"), np.random.rand(2, 2, 128, 128).astype("float32")
    eager = InferenceRunner(model, CUDA, AccelConfig(dtype="fp32")).predict(o, s)
    runner = InferenceRunner(model, CUDA, AccelConfig(dtype="fp32", compile=True))
    compiled = runner.predict(o, s)
    assert runner.compiled, "torch.compile fell back to eager on CUDA"
    np.testing.assert_allclose(compiled, eager, atol=1e-3)
