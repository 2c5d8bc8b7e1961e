"""DSen2-CR: parameter count of the paper configuration, shapes, residual skip, SAR resampling."""

from __future__ import annotations

import pytest
import torch

from engine.errors import ModelError
from engine.models import build_model, counting


def test_paper_config_has_18_9_million_parameters():
    with torch.device("meta"):
        model = build_model("dsen2cr")
    assert counting.count_params(model).total == pytest.approx(18.9e6, rel=0.01)


def test_shapes_with_low_res_and_same_grid_sar():
    model = build_model("dsen2cr-lite").eval()
    optical = torch.rand(2, 4, 33, 45)
    with torch.no_grad():
        assert model(optical, torch.rand(2, 2, 10, 14)).shape == optical.shape
        assert model(optical, torch.rand(2, 2, 33, 45)).shape == optical.shape


def test_zero_last_conv_returns_input():
    model = build_model("dsen2cr-lite").eval()
    torch.nn.init.zeros_(model.body[-1].weight)
    torch.nn.init.zeros_(model.body[-1].bias)
    optical = torch.rand(1, 4, 17, 19)
    with torch.no_grad():
        assert torch.equal(model(optical, torch.rand(1, 2, 5, 6)), optical)


def test_low_res_sar_equals_pre_upsampled_sar():
    # Upsampling inside the model is pixel-centre nearest: feeding the replicated grid gives the same result.
    torch.manual_seed(0)
    model = build_model("dsen2cr-lite").eval()
    optical = torch.rand(1, 4, 12, 12)
    sar = torch.rand(1, 2, 4, 4)
    with torch.no_grad():
        a = model(optical, sar)
        b = model(optical, sar.repeat_interleave(3, -1).repeat_interleave(3, -2))
    torch.testing.assert_close(a, b)


def test_bad_inputs_are_model_errors():
    model = build_model("dsen2cr-lite")
    with pytest.raises(ModelError):
        model(torch.rand(1, 5, 8, 8), torch.rand(1, 2, 8, 8))
    with pytest.raises(ModelError):
        model(torch.rand(1, 4, 8, 8), None)


def test_describe_counts_macs_by_arithmetic():
    d = counting.describe("dsen2cr-lite", 32, 32)
    f, b = 64, 4
    params = (6 * 9 * f + f) + b * 2 * (f * f * 9 + f) + (f * 9 * 4 + 4)
    macs = 32 * 32 * 9 * (6 * f + b * 2 * f * f + f * 4)  # conv multiply-adds, biases excluded
    assert d["params_M"] == pytest.approx(params / 1e6)
    assert d["gmacs"] == pytest.approx(macs / 1e9) and d["gmacs_paper"] == d["gmacs"]
