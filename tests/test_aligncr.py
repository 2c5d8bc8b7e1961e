"""Align-CR network: shapes at odd sizes, paper counts, residual skip, alignment gradients, ablations."""

from __future__ import annotations

import pytest
import torch

from engine.errors import ModelError
from engine.models import build_model, counting
from engine.models.aligncr_arch import AlignCR, PCDAlignment
from engine.models.arch_util import offset_magnitudes, set_offset_tracking
from engine.models.ops.deform_conv import ModulatedDeformConv2d


@pytest.fixture(scope="module")
def lite() -> AlignCR:
    torch.manual_seed(0)
    return build_model("aligncr-lite").eval()


@pytest.fixture(scope="module")
def paper_meta() -> AlignCR:
    with torch.device("meta"):
        return build_model("aligncr")


def test_lite_odd_sizes_low_res_and_same_grid_sar(lite):
    torch.manual_seed(1)
    optical = torch.rand(1, 4, 97, 131)
    with torch.no_grad():
        low = lite(optical, torch.rand(1, 2, 29, 39))
        same = lite(optical, torch.rand(1, 2, 97, 131))
    assert low.shape == same.shape == optical.shape
    assert torch.isfinite(low).all() and torch.isfinite(same).all()


def test_tiny_and_non_square_inputs():
    model = build_model("aligncr-lite", num_blocks=2, fe_blocks=1).eval()
    with torch.no_grad():
        assert model(torch.rand(2, 4, 5, 7), torch.rand(2, 2, 2, 2)).shape == (2, 4, 5, 7)
        assert model(torch.rand(1, 4, 16, 48), torch.rand(1, 2, 5, 15)).shape == (1, 4, 16, 48)


def test_sar_changes_output():
    # The SAR really is used: different SAR, different result.
    torch.manual_seed(2)
    model = build_model("aligncr-lite", num_blocks=1, fe_blocks=1).eval()
    optical = torch.rand(1, 4, 16, 16)
    with torch.no_grad():
        a = model(optical, torch.zeros(1, 2, 5, 5))
        b = model(optical, torch.ones(1, 2, 5, 5))
    assert not torch.allclose(a, b)


def test_no_size_dependent_tensors_in_weights(lite):
    keys = lite.state_dict().keys()
    assert not [k for k in keys if "attn_mask" in k or "relative_position_index" in k]


def test_bad_band_count_is_a_model_error(lite):
    with pytest.raises(ModelError, match="optical input"):
        lite(torch.rand(1, 3, 16, 16), torch.rand(1, 2, 16, 16))
    with pytest.raises(ModelError, match="SAR input"):
        lite(torch.rand(1, 4, 16, 16), torch.rand(1, 1, 16, 16))


def test_paper_parameter_counts(paper_meta):
    counts = counting.count_params(paper_meta)
    assert counts.total == pytest.approx(45.5e6, rel=0.01)
    assert counts.paper_convention == pytest.approx(43.53e6, rel=0.03)  # paper Tab. V


def test_lite_is_small():
    with torch.device("meta"):
        model = build_model("aligncr-lite")
    assert counting.count_params(model).total <= 3_000_000


@pytest.mark.slow
def test_paper_macs_at_160(paper_meta):
    macs = counting.count_macs(paper_meta, 160, 160)
    assert macs.paper_convention == pytest.approx(174.94e9, rel=0.10)  # paper Tab. V "GFLOPs"
    assert macs.total > macs.paper_convention


def test_long_skip_zero_last_conv_returns_input():
    model = build_model("aligncr-lite", num_blocks=1, fe_blocks=1).eval()
    torch.nn.init.zeros_(model.UPNet[-1].weight)
    torch.nn.init.zeros_(model.UPNet[-1].bias)
    optical = torch.rand(1, 4, 23, 30)
    with torch.no_grad():
        out = model(optical, torch.rand(1, 2, 7, 9))
    assert torch.equal(out, optical)


def test_gradients_reach_every_offset_predictor():
    torch.manual_seed(3)
    model = build_model("aligncr-lite", num_blocks=1, fe_blocks=1)
    out = model(torch.rand(1, 4, 16, 16), torch.rand(1, 2, 5, 5))
    out.square().mean().backward()
    packs = [m for m in model.modules() if isinstance(m, ModulatedDeformConv2d)]
    assert len(packs) == 4  # 3 pyramid levels + cascade
    for m in packs:
        assert m.conv_offset.weight.grad is not None
        assert m.conv_offset.weight.grad.abs().sum() > 0


def test_alignment_found_by_type_and_offsets_tracked():
    model = build_model("aligncr-lite", num_blocks=2, fe_blocks=1)
    aligns = [m for m in model.modules() if isinstance(m, PCDAlignment)]
    assert len(aligns) == 2
    assert {id(p) for p in model.alignment_parameters()} == {id(p) for a in aligns for p in a.parameters()}
    set_offset_tracking(model, True)
    with torch.no_grad():
        model(torch.rand(1, 4, 16, 16), torch.rand(1, 2, 16, 16))
    mags = offset_magnitudes(model)
    assert len(mags) == 8 and all(v == 0.0 for v in mags.values())  # zero-initialised offset predictors


def test_ablation_flags_change_the_parameter_set():
    small = {"num_blocks": 1, "fe_blocks": 1}
    full = build_model("aligncr-lite", **small)
    no_align = build_model("aligncr-lite", use_align=False, **small)
    no_sar = build_model("aligncr-lite", use_sar=False, **small)
    n = counting.count_params
    align_params = sum(p.numel() for p in full.alignment_parameters())
    assert n(full).total - n(no_align).total == align_params
    assert not list(no_align.alignment_modules())
    assert "DF.0.fac_warp.0.0.weight" in no_align.state_dict()
    names = list(no_sar.state_dict())
    assert not [k for k in names if "SAR" in k or k.startswith(("SFAlign", "DF", "sar_fuse"))]
    with torch.no_grad():
        assert no_sar.eval()(torch.rand(1, 4, 20, 20), None).shape == (1, 4, 20, 20)
        assert no_align.eval()(torch.rand(1, 4, 20, 20), torch.rand(1, 2, 6, 6)).shape == (1, 4, 20, 20)


@pytest.mark.parametrize("dual", [False, True])
def test_shifted_window_attention_does_not_wrap_around(dual, monkeypatch):
    from engine.models.aligncr_arch import SwinTransformerBlock

    torch.manual_seed(4)
    layer = SwinTransformerBlock(8, num_heads=2, window_size=8, shift_size=4, mlp_ratio=2.0, dual=dual).eval()
    x = torch.rand(1, 8, 16, 16)
    s = torch.rand(1, 8, 16, 16) if dual else None
    x2 = x.clone()
    x2[:, :, 0, 0] += torch.randn(8) * 3  # after the cyclic shift, (0, 0) shares a window with (15, 15)

    def corner_change() -> float:
        with torch.no_grad():
            return (layer(x, s)[0] - layer(x2, s)[0])[:, :, 15, 15].abs().max().item()

    assert corner_change() < 1e-4  # -100 logits: softmax weight ~e^-100, i.e. no interaction
    monkeypatch.setattr(layer, "_mask", lambda *a: torch.zeros(4, 64, 64))
    assert corner_change() > 1e-3  # without the mask the wrap-around is real: the test can fail


def test_bfloat16_forward():
    model = build_model("aligncr-lite", num_blocks=2, fe_blocks=1).to(torch.bfloat16).eval()
    with torch.no_grad():
        out = model(torch.rand(1, 4, 20, 20, dtype=torch.bfloat16), torch.rand(1, 2, 6, 6, dtype=torch.bfloat16))
    assert out.dtype == torch.bfloat16 and out.shape == (1, 4, 20, 20)


def test_channels_last_gives_the_same_result():
    # engine.stream.accel switches CUDA models to channels_last: views/reshapes must not assume NCHW strides.
    torch.manual_seed(5)
    model = build_model("aligncr-lite", num_blocks=2, fe_blocks=1).eval()
    for m in model.modules():
        if hasattr(m, "conv_offset"):
            torch.nn.init.normal_(m.conv_offset.weight, std=0.01)
    optical, sar = torch.rand(1, 4, 24, 24), torch.rand(1, 2, 8, 8)
    with torch.no_grad():
        ref = model(optical, sar)
        model = model.to(memory_format=torch.channels_last)
        cl = torch.channels_last
        out = model(optical.to(memory_format=cl), sar.to(memory_format=cl))
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)


def test_per_pixel_filter_matches_unfold_reference_and_gradients():
    """The in-place tap loop equals the official unfold formulation (values and gradients)."""
    import torch.nn.functional as F

    from engine.models.arch_util import per_pixel_filter

    torch.manual_seed(3)
    k, (n, c, h, w) = 5, (2, 3, 6, 7)
    feat = torch.randn(n, c, h, w, requires_grad=True)
    kernels = torch.randn(n, c * k * k, h, w, requires_grad=True)
    out = per_pixel_filter(feat, kernels, k)
    cols = F.unfold(F.pad(feat, (2, 2, 2, 2), mode="replicate"), k).view(n, c, k * k, h, w)
    ref = (cols * kernels.view(n, c, k * k, h, w)).sum(2)
    torch.testing.assert_close(out, ref)
    g_out = torch.autograd.grad(out.square().sum(), (feat, kernels))
    g_ref = torch.autograd.grad(ref.square().sum(), (feat, kernels))
    for a, b in zip(g_out, g_ref, strict=True):
        torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)  # summation order differs


def test_cross_modal_gate_product_equals_the_1x1_conv():
    from engine.models.aligncr_arch import WindowAttention

    torch.manual_seed(4)
    attn = WindowAttention(32, 8, 4, dual=True)
    diff = torch.randn(3, 4, 64, 64)
    torch.testing.assert_close(attn._head_mix(diff), attn.attn_fuse_1x1conv(diff), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("bias", [True, False])
def test_pointwise_conv_equals_the_1x1_conv_forward_and_backward(bias):
    from engine.models.arch_util import PointwiseConv2d

    torch.manual_seed(5)
    fast = PointwiseConv2d(12, 40, bias=bias)
    conv = torch.nn.Conv2d(12, 40, 1, bias=bias)
    conv.load_state_dict(fast.state_dict())  # same keys, same shapes
    x = torch.randn(2, 12, 9, 13, requires_grad=True)
    y_fast, y_conv = fast(x), conv(x)
    torch.testing.assert_close(y_fast, y_conv, atol=1e-5, rtol=1e-5)
    g_fast = torch.autograd.grad(y_fast.square().sum(), [x, *fast.parameters()])
    g_conv = torch.autograd.grad(y_conv.square().sum(), [x, *conv.parameters()])
    for a, b in zip(g_fast, g_conv, strict=True):
        torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)
    # channels_last input: the conv path (a reshape would copy), same numbers
    x_cl = x.detach().contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(fast(x_cl), conv(x_cl), atol=1e-5, rtol=1e-5)
    with torch.autocast("cpu", torch.bfloat16):
        y_bf = fast(x.detach())
    assert y_bf.dtype == torch.bfloat16
    torch.testing.assert_close(y_bf.float(), y_conv.detach(), atol=0.1, rtol=0.02)


def test_pointwise_conv_under_weight_norm_keeps_the_parametrised_keys():
    from torch.nn.utils.parametrizations import weight_norm

    from engine.models.arch_util import PointwiseConv2d, WideActResBlock

    block = WideActResBlock(8, expand=4)
    assert isinstance(block.body[0], PointwiseConv2d)
    assert "body.0.parametrizations.weight.original0" in block.state_dict()
    torch.manual_seed(6)
    fast = weight_norm(PointwiseConv2d(8, 16))
    conv = weight_norm(torch.nn.Conv2d(8, 16, 1))
    conv.load_state_dict(fast.state_dict())
    x = torch.randn(1, 8, 10, 10)
    torch.testing.assert_close(fast(x), conv(x), atol=1e-5, rtol=1e-5)


def test_resize_bilinear_keeps_dtype_and_matches_fp32_interpolation():
    import torch.nn.functional as F

    from engine.models.arch_util import resize_bilinear

    torch.manual_seed(7)
    x = torch.randn(1, 3, 16, 20)
    ref = F.interpolate(x, size=(32, 40), mode="bilinear", align_corners=False)
    torch.testing.assert_close(resize_bilinear(x, (32, 40)), ref)
    xb = x.bfloat16()
    out = resize_bilinear(xb, torch.Size([32, 40]))
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out, F.interpolate(xb.float(), size=(32, 40), mode="bilinear").bfloat16())


@pytest.mark.parametrize(("dual", "batch"), [(True, 1), (True, 2), (False, 1)])
def test_dense_block_in_place_at_inference_equals_the_concatenations(dual, batch):
    from engine.models.aligncr_arch import RDB, AlignCRConfig

    torch.manual_seed(9)
    cfg = AlignCRConfig(num_feat=8, growth=4, rdb_layers=3, num_heads=2, window_size=4, mlp_ratio=1.0)
    block = RDB(cfg, shift=2, dual=dual).eval()
    x = torch.randn(batch, 8, 16, 16)
    xs = torch.randn(batch, 8, 16, 16) if dual else None
    trained = block(x, xs)  # grad enabled: the concatenating path
    with torch.inference_mode():
        inferred = block(x, xs)
    torch.testing.assert_close(inferred[0], trained[0].detach(), rtol=0, atol=0)
    if dual:
        torch.testing.assert_close(inferred[1], trained[1].detach(), rtol=0, atol=0)
