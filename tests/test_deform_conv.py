"""Modulated deformable convolution: hand-checked cases for the pure path, parity with torchvision when present."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from engine.models.ops import deform_conv as dc


def _zero_offsets(x: torch.Tensor, k: int, dg: int, ho: int, wo: int) -> tuple[torch.Tensor, torch.Tensor]:
    n = x.shape[0]
    return torch.zeros(n, 2 * dg * k * k, ho, wo, dtype=x.dtype), torch.ones(n, dg * k * k, ho, wo, dtype=x.dtype)


@pytest.mark.parametrize(
    ("stride", "padding", "dilation", "groups"),
    [(1, 1, 1, 1), (2, 1, 1, 1), (1, 2, 2, 2), (2, 0, 1, 3)],
)
def test_zero_offsets_unit_mask_equal_conv2d(stride, padding, dilation, groups):
    torch.manual_seed(0)
    x = torch.randn(2, 6, 9, 11)
    weight = torch.randn(6, 6 // groups, 3, 3)
    bias = torch.randn(6)
    ref = F.conv2d(x, weight, bias, stride, padding, dilation, groups)
    off, mask = _zero_offsets(x, 3, 2, *ref.shape[-2:])
    out = dc.deform_conv2d_pure(x, off, weight, bias, stride, padding, dilation, mask)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)


def test_integer_offset_equals_shifted_conv():
    torch.manual_seed(1)
    x = torch.randn(1, 4, 12, 12)
    weight = torch.randn(5, 4, 3, 3)
    ho = wo = 12
    off = torch.zeros(1, 2 * 9, ho, wo)
    off[:, 0::2] = 2.0  # dy = +2 for every tap
    off[:, 1::2] = -1.0  # dx = -1 for every tap
    out = dc.deform_conv2d_pure(x, off, weight, None, 1, 1, 1, None)
    # Tap (i, j) of pixel (y, x) reads x[y + i + 1, x + j - 2] (zero outside): a valid conv over a zero-padded
    # input, read at rows shifted by +2 and columns by -1 relative to the usual padding-1 window.
    full = F.conv2d(F.pad(x, (3, 3, 3, 3)), weight)
    ref = full[:, :, 4 : 4 + ho, 1 : 1 + wo]
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)


def test_half_mask_halves_output_and_groups_are_independent():
    torch.manual_seed(2)
    x = torch.randn(1, 4, 7, 8)
    weight = torch.randn(3, 4, 3, 3)
    off = torch.randn(1, 2 * 2 * 9, 7, 8) * 1.5
    full = dc.deform_conv2d_pure(x, off, weight, None, 1, 1, 1, torch.ones(1, 18, 7, 8))
    half = dc.deform_conv2d_pure(x, off, weight, None, 1, 1, 1, torch.full((1, 18, 7, 8), 0.5))
    torch.testing.assert_close(half, full * 0.5, rtol=1e-5, atol=1e-5)
    # Deformable group 1's offsets must not influence channels 0-1 (group 0): zero those weights and compare.
    w0 = weight.clone()
    w0[:, 2:] = 0
    off2 = off.clone()
    off2[:, 18:] += 3.0
    a = dc.deform_conv2d_pure(x, off, w0, None, 1, 1, 1, None)
    b = dc.deform_conv2d_pure(x, off2, w0, None, 1, 1, 1, None)
    torch.testing.assert_close(a, b)


def test_fractional_offset_is_bilinear():
    x = torch.arange(16.0).view(1, 1, 4, 4)
    weight = torch.ones(1, 1, 1, 1)
    off = torch.zeros(1, 2, 4, 4)
    off[:, 0] = 0.25  # dy
    off[:, 1] = 0.5  # dx
    out = dc.deform_conv2d_pure(x, off, weight)
    # Interior: value at (y + .25, x + .5) of the linear ramp 4y + x is 4(y + .25) + x + .5.
    assert out[0, 0, 1, 1].item() == pytest.approx(4 * 1.25 + 1.5)
    # Last row: the corner below is outside (zero) -> 0.75 * bilinear along the row.
    assert out[0, 0, 3, 0].item() == pytest.approx(0.75 * (12 + 0.5))


def test_gradcheck_float64():
    torch.manual_seed(3)
    x = torch.randn(1, 2, 3, 3, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(1, 2, 3, 3, dtype=torch.float64, requires_grad=True)
    bias = torch.randn(1, dtype=torch.float64, requires_grad=True)
    # Offsets away from integers so the bilinear kernel is differentiable at every sample.
    off = (torch.rand(1, 2 * 9, 3, 3, dtype=torch.float64) * 0.6 + 0.2).requires_grad_(True)
    mask = torch.rand(1, 9, 3, 3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(
        lambda *a: dc.deform_conv2d_pure(*a[:3], a[3], 1, 1, 1, a[4]), (x, off, weight, bias, mask)
    )


def test_module_tracks_mean_abs_offset_and_pack_starts_as_conv():
    torch.manual_seed(4)
    pack = dc.DCNv2Pack(4, 4, 3, padding=1, deformable_groups=2)
    pack.track_offsets = True
    x = torch.randn(1, 4, 6, 6)
    feat = torch.randn(1, 4, 6, 6)
    out = pack(x, feat)
    # Zero-initialised offset conv: offsets 0, mask sigmoid(0) = 0.5 -> half a plain conv.
    torch.testing.assert_close(out, 0.5 * F.conv2d(x, pack.weight, None, 1, 1) + pack.bias.view(1, -1, 1, 1))
    assert pack.last_offset_abs_mean == 0.0
    assert pack.conv_offset.out_channels == 3 * 2 * 9


def test_validation_errors():
    x = torch.randn(1, 4, 5, 5)
    with pytest.raises(ValueError, match="multiple"):
        dc.deform_conv2d_pure(x, torch.zeros(1, 7, 5, 5), torch.randn(2, 4, 3, 3), padding=1)
    with pytest.raises(ValueError, match="spatial size"):
        dc.deform_conv2d_pure(x, torch.zeros(1, 18, 4, 4), torch.randn(2, 4, 3, 3), padding=1)


def test_env_var_forces_pure_path_and_missing_torchvision_falls_back(monkeypatch):
    monkeypatch.setenv(dc.PURE_ENV_VAR, "1")
    assert dc._use_torchvision(None) is False
    monkeypatch.setattr(dc, "_tv_deform_conv2d", None)
    assert dc._use_torchvision(True) is False  # asked for, but absent: the pure path runs
    x = torch.randn(1, 2, 4, 4)
    out = dc.deform_conv2d(x, torch.zeros(1, 18, 4, 4), torch.randn(3, 2, 3, 3), padding=1, use_torchvision=True)
    assert out.shape == (1, 3, 4, 4)


@pytest.mark.skipif(not dc.torchvision_available(), reason="torchvision not importable: no fast path to compare")
@pytest.mark.parametrize(("stride", "padding", "dilation", "dg"), [(1, 1, 1, 1), (1, 1, 1, 4), (2, 2, 2, 2)])
def test_pure_matches_torchvision(stride, padding, dilation, dg):
    torch.manual_seed(5)
    x = torch.randn(2, 8, 13, 10)
    weight = torch.randn(6, 8, 3, 3)
    bias = torch.randn(6)
    ho = (13 + 2 * padding - dilation * 2 - 1) // stride + 1
    wo = (10 + 2 * padding - dilation * 2 - 1) // stride + 1
    off = torch.randn(2, 2 * dg * 9, ho, wo) * 3
    mask = torch.rand(2, dg * 9, ho, wo)
    fast = dc.deform_conv2d(x, off, weight, bias, stride, padding, dilation, mask, use_torchvision=True)
    pure = dc.deform_conv2d(x, off, weight, bias, stride, padding, dilation, mask, use_torchvision=False)
    torch.testing.assert_close(pure, fast, rtol=1e-4, atol=1e-4)


def test_tap_chunking_gives_the_same_result(monkeypatch):
    torch.manual_seed(6)
    x = torch.randn(1, 4, 9, 9)
    weight = torch.randn(4, 2, 3, 3)  # groups = 2
    off = torch.randn(1, 2 * 2 * 9, 9, 9)
    mask = torch.rand(1, 2 * 9, 9, 9)
    whole = dc.deform_conv2d_pure(x, off, weight, None, 1, 1, 1, mask)
    monkeypatch.setattr(dc, "_CHUNK_BYTES", 1)  # one tap at a time
    torch.testing.assert_close(dc.deform_conv2d_pure(x, off, weight, None, 1, 1, 1, mask), whole)


def test_inference_masks_in_place_with_the_same_result_and_training_still_has_gradients():
    torch.manual_seed(8)
    x = torch.randn(1, 4, 9, 9, requires_grad=True)
    weight = torch.randn(4, 4, 3, 3)
    off = torch.randn(1, 2 * 2 * 9, 9, 9)
    mask = torch.rand(1, 2 * 9, 9, 9, requires_grad=True)
    trained = dc.deform_conv2d_pure(x, off, weight, None, 1, 1, 1, mask)
    gx, gm = torch.autograd.grad(trained.sum(), (x, mask))
    assert gx.abs().sum() > 0 and gm.abs().sum() > 0
    with torch.inference_mode():
        inferred = dc.deform_conv2d_pure(x, off, weight, None, 1, 1, 1, mask)
    torch.testing.assert_close(inferred, trained.detach())
