"""Modulated deformable convolution (DCNv2) in pure torch, with torchvision's kernel as a drop-in fast path.

Why pure torch: the engine must run where torchvision (or a compiled DCN extension) is absent — QGIS's bundled
Python on a laptop — and give the same numbers as on a GPU machine that has it. The offset and mask layouts are
exactly torchvision's ``deform_conv2d``, so :func:`deform_conv2d` dispatches to torchvision when it imports and
nothing else changes (weights trained on one path run on the other).

Layout (torchvision's): ``offset`` is (N, 2·G·kh·kw, Ho, Wo) holding, for deformable group ``g`` and kernel tap
``k = i·kw + j``, ``dy`` at channel ``2(g·K + k)`` and ``dx`` at ``2(g·K + k) + 1``; ``mask`` is (N, G·kh·kw, Ho,
Wo) with channel ``g·K + k``. Tap ``(i, j)`` of output pixel ``(ho, wo)`` samples the input at
``y = ho·s − p + i·d + dy``, ``x = wo·s − p + j·d + dx`` by bilinear interpolation with zeros outside, exactly as
torchvision (a sample beyond one pixel outside the image is 0; within one pixel, its inside corners count).

Speed and memory: the pure path samples the input for a chunk of kernel taps with ONE ``grid_sample`` call (all
deformable groups batched), applies the mask and reduces the chunk with one (grouped) matrix product into the
output accumulator — 3–10× faster on CPU than one ``grid_sample`` + 1×1 conv per tap. The chunk is sized so the
sampled columns stay under ~96 MiB (all 9 taps of a 3×3 kernel at once for 256² tiles, fewer taps for huge
maps), instead of materialising the im2col column for the whole map regardless of its size.

Set ``ALIGNCR_PURE_DEFORM=1`` (or pass ``use_torchvision=False``) to force the pure path, e.g. to compare both.
"""

from __future__ import annotations

import math
import os

import torch
import torch.nn.functional as F
from torch import nn

try:  # torchvision is optional: present on GPU machines, absent in the QGIS/CPU environment.
    from torchvision.ops import deform_conv2d as _tv_deform_conv2d
except Exception:  # noqa: BLE001 - any import failure (missing, ABI mismatch) means "use the pure path"
    _tv_deform_conv2d = None

PURE_ENV_VAR = "ALIGNCR_PURE_DEFORM"
_LOW_PRECISION = (torch.float16, torch.bfloat16)
_CHUNK_BYTES = 96 * 2**20


def torchvision_available() -> bool:
    """True when torchvision's compiled ``deform_conv2d`` can be used."""
    return _tv_deform_conv2d is not None


def _pair(v: int | tuple[int, int]) -> tuple[int, int]:
    return (v, v) if isinstance(v, int) else (int(v[0]), int(v[1]))


def _use_torchvision(flag: bool | None) -> bool:
    if _tv_deform_conv2d is None:
        return False
    if flag is not None:
        return flag
    return os.environ.get(PURE_ENV_VAR, "").strip().lower() not in {"1", "true", "yes", "on"}


def deform_conv2d_pure(
    x: torch.Tensor,
    offset: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    stride: int | tuple[int, int] = 1,
    padding: int | tuple[int, int] = 0,
    dilation: int | tuple[int, int] = 1,
    mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """Pure-torch modulated deformable convolution; same signature and layout as torchvision's."""
    n, c, h, w = x.shape
    out_ch, c_per_group, kh, kw = weight.shape
    if c % c_per_group:
        raise ValueError(f"input channels {c} not divisible by weight's channels per group {c_per_group}")
    groups = c // c_per_group
    sh, sw = _pair(stride)
    ph, pw = _pair(padding)
    dh, dw = _pair(dilation)
    ho = (h + 2 * ph - dh * (kh - 1) - 1) // sh + 1
    wo = (w + 2 * pw - dw * (kw - 1) - 1) // sw + 1
    k_taps = kh * kw
    if offset.shape[1] % (2 * k_taps):
        raise ValueError(f"offset has {offset.shape[1]} channels, not a multiple of 2·{k_taps}")
    dg = offset.shape[1] // (2 * k_taps)
    if c % dg:
        raise ValueError(f"input channels {c} not divisible by deformable groups {dg}")
    if tuple(offset.shape[-2:]) != (ho, wo):
        raise ValueError(f"offset spatial size {tuple(offset.shape[-2:])} != output size {(ho, wo)}")

    off = offset.reshape(n, dg, k_taps, 2, ho, wo)
    msk = mask.reshape(n, dg, 1, k_taps, ho * wo) if mask is not None else None
    # Input viewed per deformable group, so one grid_sample call serves every group (batch dim = n·dg).
    xg = x.reshape(n * dg, c // dg, h, w)
    taps = torch.arange(k_taps, device=x.device)
    tap_y = ((taps // kw) * dh).to(x.dtype).view(1, 1, k_taps, 1, 1)
    tap_x = ((taps % kw) * dw).to(x.dtype).view(1, 1, k_taps, 1, 1)
    base_y = (torch.arange(ho, device=x.device, dtype=x.dtype) * sh - ph).view(1, 1, 1, ho, 1)
    base_x = (torch.arange(wo, device=x.device, dtype=x.dtype) * sw - pw).view(1, 1, 1, 1, wo)
    w_g = weight.reshape(groups, out_ch // groups, c_per_group, k_taps)

    # Taps are processed in chunks so the sampled columns never exceed ~_CHUNK_BYTES (all 9 at once for the
    # tile sizes the engine uses; fewer for huge maps).
    per_tap = n * c * ho * wo * x.element_size()
    chunk = max(1, min(k_taps, _CHUNK_BYTES // max(per_tap, 1)))
    out = None
    for k0 in range(0, k_taps, chunk):
        k1 = min(k_taps, k0 + chunk)
        kk = k1 - k0
        py = base_y + tap_y[:, :, k0:k1] + off[:, :, k0:k1, 0]  # (n, dg, kk, ho, wo) absolute row positions
        px = base_x + tap_x[:, :, k0:k1] + off[:, :, k0:k1, 1]
        # align_corners=False mapping: pixel p -> (2p + 1)/size - 1 is exact for every size, including 1.
        grid = torch.stack(((2 * px + 1) / w - 1, (2 * py + 1) / h - 1), dim=-1).reshape(n * dg, kk * ho, wo, 2)
        cols = F.grid_sample(xg, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
        cols = cols.reshape(n, dg, c // dg, kk, ho * wo)
        if msk is not None:
            # In place when no gradient is recorded (inference): one 10-20 MB temporary fewer per chunk.
            cols = cols.mul_(msk[:, :, :, k0:k1]) if not torch.is_grad_enabled() else cols * msk[:, :, :, k0:k1]
        cols = cols.reshape(n, groups, c_per_group, kk, ho * wo)
        part = torch.einsum("gock,ngckp->ngop", w_g[..., k0:k1], cols)
        out = part if out is None else out + part
    out = out.reshape(n, out_ch, ho, wo)
    if bias is not None:
        out = out + bias.view(1, out_ch, 1, 1)
    return out


def deform_conv2d(
    x: torch.Tensor,
    offset: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    stride: int | tuple[int, int] = 1,
    padding: int | tuple[int, int] = 0,
    dilation: int | tuple[int, int] = 1,
    mask: torch.Tensor | None = None,
    use_torchvision: bool | None = None,
) -> torch.Tensor:
    """Modulated deformable conv; torchvision's kernel when available (unless forced off), else pure torch."""
    if x.device.type == "meta":
        # Shape/cost stand-in for the meta device (parameter and FLOP counting): a plain conv has the output
        # shape and exactly the multiply-adds of the K tap-wise 1×1 products, without grid_sample's slow meta
        # decomposition (thousands of Python-level ops per call).
        return F.conv2d(x, weight, bias, _pair(stride), _pair(padding), _pair(dilation), x.shape[1] // weight.shape[1])
    if torch.onnx.is_in_onnx_export():  # one ONNX DeformConv node (opset 19) instead of the traced sampling
        kh, kw = (int(v) for v in weight.shape[-2:])
        layout = (int(x.shape[1]) // int(weight.shape[1]), int(offset.shape[1]) // (2 * kh * kw), kh, kw)
        return _OnnxDeformConv.apply(x, offset, weight, bias, mask, _pair(stride), _pair(padding), _pair(dilation),
                                     layout)
    if _use_torchvision(use_torchvision):
        return _tv_deform_conv2d(
            x, offset, weight, bias, stride=_pair(stride), padding=_pair(padding), dilation=_pair(dilation), mask=mask
        )
    if x.dtype in _LOW_PRECISION or offset.dtype in _LOW_PRECISION or torch.is_autocast_enabled(x.device.type):
        # Sampling positions (pixel index + fractional offset) need fp32: in bf16 a position near 150 rounds to a
        # whole pixel, which would undo the sub-pixel alignment. Same rule as torchvision's autocast registration
        # of deform_conv2d: compute in fp32 (autocast off inside), return the input's dtype.
        def f32(t: torch.Tensor | None) -> torch.Tensor | None:
            return None if t is None else t.float()

        with torch.autocast(x.device.type, enabled=False):
            out = deform_conv2d_pure(f32(x), f32(offset), f32(weight), f32(bias), stride, padding, dilation, f32(mask))
        return out.to(x.dtype)
    return deform_conv2d_pure(x, offset, weight, bias, stride, padding, dilation, mask)


class _OnnxDeformConv(torch.autograd.Function):
    """The pure convolution when run, ONNX's ``DeformConv`` (opset 19) when exported by the tracing exporter.

    Why: traced, the pure path is a ``GridSample`` + product per layer whose columns ONNX Runtime and OpenVINO
    reshape back and forth; their native kernels sample and reduce in one pass. Same layouts as torchvision's
    (ONNX copied them: offsets ``(dy, dx)`` per tap and group, mask per tap and group, zeros outside).
    """

    @staticmethod
    def forward(ctx, x, offset, weight, bias, mask, stride, padding, dilation, layout):  # noqa: ANN001, ANN205
        return deform_conv2d_pure(x, offset, weight, bias, stride, padding, dilation, mask)

    @staticmethod
    def symbolic(g, x, offset, weight, bias, mask, stride, padding, dilation, layout):  # noqa: ANN001, ANN205
        groups, offset_groups, kh, kw = layout
        if bias is None:  # ONNX's inputs are positional: X, W, offset, B, mask
            bias = g.op("Constant", value_t=torch.zeros(int(weight.type().sizes()[0]) if weight.type().sizes() else 0))
        inputs = [x, weight, offset, bias] + ([mask] if mask is not None else [])
        return g.op("DeformConv", *inputs, dilations_i=list(dilation), group_i=groups, offset_group_i=offset_groups,
                    kernel_shape_i=[kh, kw], pads_i=[padding[0], padding[1], padding[0], padding[1]],
                    strides_i=list(stride))


class ModulatedDeformConv2d(nn.Module):
    """A DCNv2 layer whose offsets and mask are given by the caller.

    Parameters ``weight`` (out, in/groups, kh, kw) and ``bias`` are named as in ``nn.Conv2d`` so state dicts
    map one-to-one onto BasicSR's / mmcv's modulated deformable convolutions.

    ``track_offsets``: when True, every forward stores the mean absolute offset (pixels, detached float) in
    :attr:`last_offset_abs_mean` — training logs it to see whether the alignment actually moves anything (and
    EDVR's > 50 px divergence sign). It costs one device synchronisation per call, hence off by default.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int | tuple[int, int] = 3,
        stride: int | tuple[int, int] = 1,
        padding: int | tuple[int, int] = 1,
        dilation: int | tuple[int, int] = 1,
        groups: int = 1,
        deformable_groups: int = 1,
        bias: bool = True,
    ) -> None:
        super().__init__()
        if in_channels % groups or out_channels % groups:
            raise ValueError("in/out channels must be divisible by groups")
        if in_channels % deformable_groups:
            raise ValueError("in channels must be divisible by deformable_groups")
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.kernel_size = _pair(kernel_size)
        self.stride = _pair(stride)
        self.padding = _pair(padding)
        self.dilation = _pair(dilation)
        self.groups = groups
        self.deformable_groups = deformable_groups
        self.weight = nn.Parameter(torch.empty(out_channels, in_channels // groups, *self.kernel_size))
        self.bias = nn.Parameter(torch.empty(out_channels)) if bias else None
        self.track_offsets = False
        self.last_offset_abs_mean: float | None = None
        self.use_torchvision: bool | None = None  # None: automatic (env var / availability)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        # Same scheme as nn.Conv2d (and mmcv's DCN): uniform in ±1/sqrt(fan_in).
        fan_in = self.weight.shape[1] * self.kernel_size[0] * self.kernel_size[1]
        bound = 1.0 / math.sqrt(fan_in)
        nn.init.uniform_(self.weight, -bound, bound)
        if self.bias is not None:
            nn.init.zeros_(self.bias)

    def forward(self, x: torch.Tensor, offset: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        if self.track_offsets and offset.device.type != "meta":
            self.last_offset_abs_mean = float(offset.detach().abs().mean())
        return deform_conv2d(
            x,
            offset,
            self.weight,
            self.bias,
            self.stride,
            self.padding,
            self.dilation,
            mask,
            use_torchvision=self.use_torchvision,
        )

    def extra_repr(self) -> str:
        return (
            f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, stride={self.stride}, "
            f"padding={self.padding}, dilation={self.dilation}, groups={self.groups}, "
            f"deformable_groups={self.deformable_groups}"
        )


class DCNv2Pack(ModulatedDeformConv2d):
    """DCNv2 whose offsets and mask are predicted by a conv (``conv_offset``) from a separate feature.

    As in EDVR/BasicSR: ``conv_offset(feat)`` gives 3·G·K channels split into thirds ``o1, o2, m``; the offset
    is ``cat(o1, o2)`` read in torchvision's layout and the mask is ``sigmoid(m)``. This split is kept verbatim
    (not "tidied" into an interleaved layout) so that weights trained with BasicSR's module import unchanged.
    ``conv_offset`` starts at zero: the layer begins as a plain conv with mask 0.5, as in BasicSR.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3, padding: int = 1,
                 deformable_groups: int = 1, stride: int = 1, dilation: int = 1) -> None:
        super().__init__(in_channels, out_channels, kernel_size, stride, padding, dilation, 1, deformable_groups)
        k = self.kernel_size
        self.conv_offset = nn.Conv2d(
            in_channels, deformable_groups * 3 * k[0] * k[1], k, self.stride, self.padding, self.dilation, bias=True
        )
        nn.init.zeros_(self.conv_offset.weight)
        nn.init.zeros_(self.conv_offset.bias)

    def forward(self, x: torch.Tensor, feat: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        o1, o2, m = torch.chunk(self.conv_offset(feat), 3, dim=1)
        offset = torch.cat((o1, o2), dim=1)
        return super().forward(x, offset, torch.sigmoid(m))
