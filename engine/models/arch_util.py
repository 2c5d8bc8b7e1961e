"""Building blocks shared by the networks (BasicSR's ``arch_util`` habit: small, reusable, no model logic).

Choices written down:
- :class:`WideActResBlock` follows the wide-activation block the official Align-CR code uses in its feature
  extractors (1×1 expand ×6 → ReLU → 1×1 to 0.8·nf → 3×3 back to nf, weight-normalised, identity skip).
  Weight norm is kept as a *parametrisation* (``torch.nn.utils.parametrizations.weight_norm``) rather than folded
  into plain weights, because it changes training dynamics and the official models were trained with it; the
  state-dict keys become ``…parametrizations.weight.original0/1`` (g / v), to which the official importer maps
  ``weight_g`` / ``weight_v`` losslessly.
- Space-to-depth uses :func:`torch.nn.functional.pixel_unshuffle`, whose channel order (c·r² + i·r + j) is the
  official ``pixel_reshuffle``'s.
- :func:`shifted_window_mask` computes the Swin attention mask for the actual feature size at run time (the
  official code stores it as a buffer for one size, which breaks loading at any other size).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.parametrizations import weight_norm

from engine.models.ops.deform_conv import ModulatedDeformConv2d


def make_layer(block: Callable[[], nn.Module], n: int) -> nn.Sequential:
    """``n`` fresh blocks in a Sequential (indices become state-dict keys, as in BasicSR)."""
    return nn.Sequential(*[block() for _ in range(n)])


class PointwiseConv2d(nn.Conv2d):
    """A 1×1 ``nn.Conv2d`` (same parameters and state-dict keys) computed as a matrix product on the CPU.

    Why: oneDNN runs 1×1 convolutions over small channel counts far from the matmul speed on the same core —
    measured on a 128² map, bf16 autocast, one AMD EPYC core: 32→800 channels 29 ms as a conv vs 3.8 ms as a
    batched matmul, 32→32 / 32→128 / 96→32 about 2× — and ``aligncr-lite`` has a dozen of them per tile (the
    SLFC filter predictor's 32→800 alone was 13 % of a tile). The product is the same (equal in fp32, tested).
    Other devices and channels_last inputs (where a reshape would copy) keep the convolution; cuDNN has no such
    gap. So does a graph traced for another runtime (``torch.jit.is_tracing()``: OpenVINO, ONNX Runtime,
    :mod:`engine.stream.backends`): their optimisers fuse a 1×1 convolution in their blocked layout, whereas a
    matmul there forces a layout reorder on each side.
    """

    def __init__(self, in_channels: int, out_channels: int, bias: bool = True) -> None:
        super().__init__(in_channels, out_channels, 1, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.device.type != "cpu" or x.ndim != 4 or not x.is_contiguous() or torch.jit.is_tracing():
            return super().forward(x)
        n, c, h, w = x.shape
        weight = self.weight.view(self.out_channels, c).expand(n, -1, -1)
        cols = x.view(n, c, h * w)
        out = torch.bmm(weight, cols)
        if self.bias is not None:  # in place: baddbmm would first copy the broadcast bias into a fresh output
            out.add_(self.bias.view(1, -1, 1).to(out.dtype))
        return out.view(n, self.out_channels, h, w)


def _maybe_wn(conv: nn.Conv2d, use: bool) -> nn.Module:
    if not use:
        return conv
    if conv.weight.is_meta:
        # A skeleton for shapes only (the weights file's header check, engine.models.weights): the same keys and
        # shapes without weight_norm's norm, whose first call on the meta device imports torch._dynamo — ≈ 1.9 s
        # of every engine process (tests/test_weights.py checks the skeleton against a real model).
        torch.nn.utils.parametrize.register_parametrization(conv, "weight", _ShapeOnlyWeightNorm(), unsafe=True)
        return conv
    return weight_norm(conv)


class _ShapeOnlyWeightNorm(nn.Module):
    """weight_norm's originals (g: one value per output channel, v: the weight) without computing g."""

    def forward(self, g: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        return v

    def right_inverse(self, weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return weight.new_empty((weight.shape[0],) + (1,) * (weight.dim() - 1)), weight


class WideActResBlock(nn.Module):
    """Wide-activation residual block (WDSR-style) as in the official Align-CR feature extractors."""

    def __init__(self, nf: int, expand: int = 6, linear: float = 0.8, use_weight_norm: bool = True) -> None:
        super().__init__()
        mid = int(nf * linear)
        self.body = nn.Sequential(
            _maybe_wn(PointwiseConv2d(nf, nf * expand), use_weight_norm),
            nn.ReLU(inplace=True),
            _maybe_wn(PointwiseConv2d(nf * expand, mid), use_weight_norm),
            _maybe_wn(nn.Conv2d(mid, nf, 3, padding=1), use_weight_norm),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)



def upsample_like(x: torch.Tensor, ref: torch.Tensor, mode: str = "nearest-exact") -> torch.Tensor:
    """Resample ``x`` to ``ref``'s spatial size.

    ``nearest-exact`` samples at pixel centres (src = floor((dst + ½)·in/out)), which is what GDAL/rasterio's
    nearest resampling does — the official loader upsampled SAR with rasterio — whereas torch's legacy
    ``nearest`` shifts the pattern by up to one source pixel.
    """
    if x.shape[-2:] == ref.shape[-2:]:
        return x
    return F.interpolate(x, size=tuple(ref.shape[-2:]), mode=mode)


def resize_bilinear(x: torch.Tensor, size: tuple[int, int] | torch.Size) -> torch.Tensor:
    """Bilinear resize (``align_corners=False``); half-precision maps on the CPU computed in fp32 and returned in
    ``x``'s dtype.

    torch's CPU bilinear kernel is 2× slower on bf16 maps than converting to fp32, resizing and converting back
    (32×64² → 128²: 1.33 vs 0.67 ms); the result is the same rounding of the same fp32 interpolation. fp32 and fp64
    resize as they are (fp64 through fp32 would leave ~1e-10 against the official forward in the fp64 equivalence
    test). Other devices resize in place (not measured there, so not changed).
    """
    if x.dtype not in (torch.bfloat16, torch.float16) or x.device.type != "cpu":
        return F.interpolate(x, size=tuple(size), mode="bilinear", align_corners=False)
    return F.interpolate(x.float(), size=tuple(size), mode="bilinear", align_corners=False).to(x.dtype)


def pad_to_multiple(x: torch.Tensor, multiple: int) -> tuple[torch.Tensor, tuple[int, int]]:
    """Pad bottom/right to a multiple of ``multiple``; reflect when possible, replicate for tiny inputs.

    Reflection avoids the artificial edges zero padding would feed the attention and the pyramid; it needs the
    pad to be smaller than the side, so tiles smaller than that fall back to edge replication.
    """
    h, w = x.shape[-2:]
    ph = (-h) % multiple
    pw = (-w) % multiple
    if ph == 0 and pw == 0:
        return x, (h, w)
    mode = "reflect" if ph < h and pw < w else "replicate"
    return F.pad(x, (0, pw, 0, ph), mode=mode), (h, w)


def window_partition(x: torch.Tensor, ws: int) -> torch.Tensor:
    """(B, H, W, C) → (B·nW, ws·ws, C); H and W must be multiples of ``ws``."""
    b, h, w, c = x.shape
    x = x.view(b, h // ws, ws, w // ws, ws, c)
    return x.permute(0, 1, 3, 2, 4, 5).reshape(-1, ws * ws, c)


def window_reverse(windows: torch.Tensor, ws: int, h: int, w: int) -> torch.Tensor:
    """Inverse of :func:`window_partition`: (B·nW, ws·ws, C) → (B, H, W, C)."""
    c = windows.shape[-1]
    b = windows.shape[0] // ((h // ws) * (w // ws))
    x = windows.view(b, h // ws, w // ws, ws, ws, c)
    return x.permute(0, 1, 3, 2, 4, 5).reshape(b, h, w, c)


def shifted_window_mask(h: int, w: int, ws: int, shift: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """Swin's SW-MSA mask for an (h, w) map: (nW, ws², ws²) with 0 within a region and −100 across regions."""
    img = torch.zeros(1, h, w, 1, device=device)
    cnt = 0
    for hs in (slice(0, -ws), slice(-ws, -shift), slice(-shift, None)):
        for wsl in (slice(0, -ws), slice(-ws, -shift), slice(-shift, None)):
            img[:, hs, wsl, :] = cnt
            cnt += 1
    win = window_partition(img, ws).squeeze(-1)  # nW, ws²
    diff = win.unsqueeze(1) - win.unsqueeze(2)
    return diff.masked_fill(diff != 0, -100.0).masked_fill(diff == 0, 0.0)


def relative_position_index(ws: int) -> torch.Tensor:
    """(ws², ws²) index into the (2ws−1)² relative-position bias table (Swin Transformer), computed on the CPU
    whatever the default device (the meta device's first use costs ≈ 1 s of imports; the caller moves it)."""
    cpu = torch.device("cpu")
    coords = torch.stack(torch.meshgrid(torch.arange(ws, device=cpu), torch.arange(ws, device=cpu),
                                        indexing="ij")).flatten(1)  # fmt: skip
    rel = (coords[:, :, None] - coords[:, None, :]).permute(1, 2, 0) + (ws - 1)
    return rel[..., 0] * (2 * ws - 1) + rel[..., 1]


def per_pixel_filter(feat: torch.Tensor, kernels: torch.Tensor, k: int) -> torch.Tensor:
    """Apply a different k×k filter per pixel and channel (the SLFC dynamic filter).

    ``kernels`` is (N, C·k², H, W) with channel ``c·k² + a·k + b`` weighting ``feat[c]`` at offset ``(a − k//2,
    b − k//2)``, edges replicated — the official layout. Looping over the k² taps keeps memory at one
    feature-sized temporary instead of the C·k²·H·W unfolded tensor; accumulating with in-place ``addcmul_``
    (autograd-safe: the accumulator is never needed for a gradient) avoids two allocations per tap (≈ 1.5× faster
    on the CPU).
    """
    n, c, h, w = feat.shape
    r = k // 2
    padded = F.pad(feat, (r, r, r, r), mode="replicate")
    if torch.is_grad_enabled() and (feat.requires_grad or kernels.requires_grad):
        # Training (scene adaptation): the tap loop's backward gave each of the k² slices of ``kernels`` and
        # ``padded`` a zero-filled gradient of the whole tensor (k² fills and adds of C·k²·H·W values: 40 % of
        # an ``aligncr-res`` adaptation step); ``unfold``'s backward is one fold. Its (c, a, b) column order is
        # the kernels' layout.
        cols = F.unfold(padded, k).view(n, c, k * k, h * w)
        return (kernels.view(n, c, k * k, h * w) * cols).sum(2).view(n, c, h, w)
    kern = kernels.view(n, c, k * k, h, w)
    out = kern[:, :, 0] * padded[:, :, :h, :w]
    for tap in range(1, k * k):
        a, b = divmod(tap, k)
        out.addcmul_(kern[:, :, tap], padded[:, :, a : a + h, b : b + w])
    return out


def deform_convs(model: nn.Module) -> dict[str, ModulatedDeformConv2d]:
    """Every deformable conv in ``model`` by qualified name."""
    return {name: m for name, m in model.named_modules() if isinstance(m, ModulatedDeformConv2d)}


def set_offset_tracking(model: nn.Module, on: bool = True) -> None:
    """Make every deformable conv record its last mean |offset| (see :func:`offset_magnitudes`)."""
    for m in deform_convs(model).values():
        m.track_offsets = on
        if not on:
            m.last_offset_abs_mean = None


def offset_magnitudes(model: nn.Module) -> dict[str, float]:
    """Last mean absolute offset (pixels) per deformable conv, for those that have run with tracking on."""
    return {
        name: m.last_offset_abs_mean for name, m in deform_convs(model).items() if m.last_offset_abs_mean is not None
    }


def lcm(*values: int) -> int:
    out = 1
    for v in values:
        out = out * v // math.gcd(out, v)
    return out
