"""Align-CR (Xu et al., M3R-CR paper §IV-B): SAR-guided cloud removal with learned SAR→optical alignment.

Registered configs: ``aligncr`` (the paper's network, D = 6), ``aligncr-lite`` (the same architecture, small
enough for CPU inference) and ``aligncr-res`` (smaller still, and a residual over the non-learned estimate of the
ground, ``prior=True``: the default run's model, issue 26).

Data flow (paper Fig. 3 + the official code, zhu-xlab/M3R-CR ``Align-CR/net_CR_RDN.py``):
SAR (N, 2, h, w) is upsampled to the optical grid by nearest interpolation (pixel-centre, i.e. GDAL's nearest,
which the official loader used); both images are reflect-padded to a multiple of the network's stride and
space-to-depth'ed by 2 (optical 4→16, SAR 2→8 channels; features work at half resolution). Each stream has a
conv + 5 wide-activation weight-norm residual blocks (FE). Then D AlignFuse blocks, each:

1. alignment (:class:`PCDAlignment`): 3-level feature pyramids of both streams (stride-2 convs G0→2G0→4G0,
   ReLU, then an FPN top-down pass bringing every level back to G0), then EDVR's PCD: offsets predicted from
   concat(SAR, optical) at each level, propagated coarse→fine (×2 upsampled offsets and features), a DCNv2
   with ``deformable_groups`` groups per level, and a cascading refinement DCN at full feature resolution. SAR
   is the "neighbour" that is warped, optical the "reference"; the aligned SAR replaces the SAR stream.
2. fusion: SGCI = a dual-stream residual dense block (C conv layers of growth G per stream, local feature
   fusion 3×3 conv) followed by ONE dual-stream Swin layer (window attention with relative position bias,
   shifted by half a window on odd blocks), whose SAR attention logits gate the optical ones through a 1×1 conv
   over heads (the official "cross-modal attention gate"); + block input. SLFC = per-pixel 5×5 dynamic filters
   predicted from concat(optical, SAR) applied to the SAR features, then sigmoid gates that move SAR
   information into the optical stream and the updated optical information back into the SAR stream.

IR block: the D optical outputs are concatenated → 1×1 + 3×3 conv (global feature fusion) + the first FE conv's
ReLU'd output (the official in-place ReLU) → conv → pixel shuffle ×2 → conv to the optical bands → cropped → + the
cloudy input (long skip).

Verified against the official forward (tests/test_official_forward.py): an independent transcription of
``RDN_residual_CR`` with BasicSR's PCD and torchvision's deformable-conv kernel (tests/official_aligncr_reference.py),
driven by a random official-style checkpoint — every parameter perturbed, offsets ≈ 1 px, the official
``attn_mask``/``relative_position_index`` buffers — and ours loaded from it through ``import_official``. Both
streams, every block and every key are covered (the reference reads every tensor of the checkpoint, nothing
else). Max |difference| of the outputs (values ≈ 1): fp64 3e-16 (inference and training code paths), fp32
1.4e-7 (2 blocks, 48² crops, batch 2, in CI); at the official 160² crop, ``aligncr-lite`` fp64 7e-16, fp32
2.5e-7, the paper network fp64 9e-16, fp32 2.1e-7 (slow tests). Our ``resize_bilinear`` computes on the CPU in
fp32 whatever the dtype, which leaves ≈ 1e-10 in fp64 and nothing visible in fp32. Without the in-place-ReLU skip
(before commit 04f7826) the outputs differ by 0.2-0.4.

Choices where the paper is silent (taken from the official code unless stated):
- Module and parameter names mirror the official ones (``SFE_conv``, ``RDBs``, ``SFAlign``, ``DF``, …) so
  :func:`engine.models.weights.import_official` is a key-for-key copy; see that function for the remainder.
- Arbitrary H × W (ours, not official): inputs are reflect-padded to a multiple of 2·lcm(window, 2^(L−1)) and
  the output cropped back; Swin masks and relative-position indices are computed at run time and never stored
  in the weights (the official code stores a 160²-specific ``attn_mask``, which breaks other sizes). A feature
  map only one window high or wide is not shifted (Swin's own rule).
- The whole alignment block — pyramids included — is one :class:`PCDAlignment` module because the official
  training gives exactly that unit (``SFAlign``) the lower learning rate (1e-5); select it by type or with
  :meth:`AlignCR.alignment_parameters`.
- Ablations (paper Tab. II): ``use_sar=False`` ("w/o SAR") builds single-stream RDB/Swin layers and no SAR
  stream, alignment or SLFC; ``use_align=False`` ("w/o Align") drops the alignment blocks only.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from engine.errors import ModelError
from engine.models.arch_util import (
    PointwiseConv2d,
    WideActResBlock,
    lcm,
    make_layer,
    pad_to_multiple,
    per_pixel_filter,
    relative_position_index,
    resize_bilinear,
    shifted_window_mask,
    upsample_like,
    window_partition,
    window_reverse,
)
from engine.models.ops.deform_conv import DCNv2Pack
from engine.models.registry import register_model

SPACE_TO_DEPTH = 2  # the official network works at half resolution after a 2× space-to-depth


@dataclass(frozen=True)
class AlignCRConfig:
    """Hyper-parameters; the defaults are the paper / official network (``aligncr``)."""

    in_bands: int = 4
    sar_bands: int = 2
    num_feat: int = 96  # G0
    num_blocks: int = 6  # D AlignFuse blocks
    rdb_layers: int = 5  # C
    growth: int = 48  # G
    fe_blocks: int = 5  # wide-activation residual blocks per feature extractor
    fe_expand: int = 6
    fe_linear: float = 0.8
    weight_norm: bool = True
    pyramid_channels: tuple[int, ...] = (96, 192, 384)  # L levels; the first must equal num_feat
    deformable_groups: int = 8
    num_heads: int = 8
    window_size: int = 8
    mlp_ratio: float = 4.0
    dyn_kernel: int = 5  # SLFC per-pixel filter size
    up_feat: int = 64  # channels after the ×2 pixel shuffle in the IR block
    use_sar: bool = True
    use_align: bool = True
    # ours, not the paper's (issue 26): the network also takes the best non-learned estimate of the ground under
    # the cloud and the distance to clear ground (engine.refine.prior.channels, in_bands + 1 channels) and
    # predicts a residual over that estimate, its last conv zero-initialised: untrained, it IS the estimate.
    prior: bool = False

    def validate(self) -> None:
        if len(self.pyramid_channels) < 1:
            raise ModelError("pyramid_channels needs at least one level")
        if self.pyramid_channels[0] != self.num_feat:
            raise ModelError(f"pyramid_channels[0] ({self.pyramid_channels[0]}) must equal num_feat ({self.num_feat})")
        if self.num_feat % self.num_heads or self.num_feat % self.deformable_groups:
            raise ModelError("num_feat must be divisible by num_heads and deformable_groups")
        if self.window_size < 2:
            raise ModelError("window_size must be at least 2")

    @property
    def pad_multiple(self) -> int:
        """Input sides are padded to this: the half-resolution features must split into windows and halve
        ``len(pyramid_channels) - 1`` times exactly."""
        return SPACE_TO_DEPTH * lcm(self.window_size, 2 ** (len(self.pyramid_channels) - 1))


PAPER = AlignCRConfig()
# The residual CPU model (issue 26): starts at the non-learned estimate (prior=True) and only learns what the SAR
# adds; narrower and shallower than LITE because it has less to learn and runs in every default run on 2 cores.
# ONE AlignFuse block (issue 30): the bundled weights are a one-block network distilled from a two-block one
# (resources/weights/aligncr-res-d2.safetensors, training/configs/aligncr_res.toml): as good on the report split
# within 0.1 dB, its network 1.6-1.8x faster on a CPU (docs/model.md).
RES = AlignCRConfig(
    num_feat=24,
    num_blocks=1,
    rdb_layers=3,
    growth=12,
    fe_blocks=1,
    fe_expand=4,
    pyramid_channels=(24, 32, 48),
    deformable_groups=4,
    num_heads=4,
    window_size=4,  # 16-token windows: attention was a quarter of the time at 8
    mlp_ratio=2.0,
    up_feat=24,
    prior=True,
)
# CPU-sized: every component of the paper network is kept (two streams, 3-level PCD with cascade, dual Swin with
# the cross-modal gate and shifted windows, SLFC dynamic filters, global fusion); widths, depth, heads and
# deformable groups are cut so a 256² tile runs in about a second on two cores (2.2 M parameters).
LITE = AlignCRConfig(
    num_feat=32,
    num_blocks=3,
    rdb_layers=4,
    growth=16,
    fe_blocks=2,
    fe_expand=4,
    pyramid_channels=(32, 48, 64),
    deformable_groups=4,
    num_heads=4,
    window_size=8,
    mlp_ratio=2.0,
    up_feat=32,
)


class PCDCascade(nn.Module):
    """EDVR's pyramid, cascading and deformable alignment over ``levels`` pre-computed feature levels.

    Names (``offset_conv1.l3``, ``dcn_pack.l1``, ``cas_dcnpack``…) follow BasicSR's ``PCDAlignment``, which the
    official code imports; activations are LeakyReLU(0.1) as there.
    """

    def __init__(self, num_feat: int, deformable_groups: int, levels: int) -> None:
        super().__init__()
        self.levels = levels
        self.offset_conv1 = nn.ModuleDict()
        self.offset_conv2 = nn.ModuleDict()
        self.offset_conv3 = nn.ModuleDict()
        self.dcn_pack = nn.ModuleDict()
        self.feat_conv = nn.ModuleDict()
        for i in range(levels, 0, -1):
            lv = f"l{i}"
            self.offset_conv1[lv] = nn.Conv2d(num_feat * 2, num_feat, 3, 1, 1)
            if i == levels:
                self.offset_conv2[lv] = nn.Conv2d(num_feat, num_feat, 3, 1, 1)
            else:
                self.offset_conv2[lv] = nn.Conv2d(num_feat * 2, num_feat, 3, 1, 1)
                self.offset_conv3[lv] = nn.Conv2d(num_feat, num_feat, 3, 1, 1)
                self.feat_conv[lv] = nn.Conv2d(num_feat * 2, num_feat, 3, 1, 1)
            self.dcn_pack[lv] = DCNv2Pack(num_feat, num_feat, 3, padding=1, deformable_groups=deformable_groups)
        self.cas_offset_conv1 = nn.Conv2d(num_feat * 2, num_feat, 3, 1, 1)
        self.cas_offset_conv2 = nn.Conv2d(num_feat, num_feat, 3, 1, 1)
        self.cas_dcnpack = DCNv2Pack(num_feat, num_feat, 3, padding=1, deformable_groups=deformable_groups)

    def forward(self, nbr: list[torch.Tensor], ref: list[torch.Tensor]) -> torch.Tensor:
        lrelu = nn.functional.leaky_relu
        up_offset = up_feat = feat = None
        for i in range(self.levels, 0, -1):
            lv = f"l{i}"
            offset = lrelu(self.offset_conv1[lv](torch.cat([nbr[i - 1], ref[i - 1]], 1)), 0.1)
            if i == self.levels:
                offset = lrelu(self.offset_conv2[lv](offset), 0.1)
            else:
                offset = lrelu(self.offset_conv2[lv](torch.cat([offset, up_offset], 1)), 0.1)
                offset = lrelu(self.offset_conv3[lv](offset), 0.1)
            feat = self.dcn_pack[lv](nbr[i - 1], offset)
            if i < self.levels:
                feat = self.feat_conv[lv](torch.cat([feat, up_feat], 1))
            if i > 1:
                feat = lrelu(feat, 0.1)
                size = nbr[i - 2].shape[-2:]
                # Offsets are in pixels of their level: ×2 when moving to the finer level.
                up_offset = resize_bilinear(offset, size) * 2
                up_feat = resize_bilinear(feat, size)
        offset = torch.cat([feat, ref[0]], 1)
        offset = lrelu(self.cas_offset_conv2(lrelu(self.cas_offset_conv1(offset), 0.1)), 0.1)
        return lrelu(self.cas_dcnpack(feat, offset), 0.1)


class PCDAlignment(nn.Module):
    """The paper's alignment block: feature pyramids of both streams + :class:`PCDCascade`.

    This whole module is what the official training puts at learning rate 1e-5. ``src`` (warped) is SAR,
    ``ref`` is optical. Pyramid: level l+1 = ReLU(stride-2 conv(level l)) with ``channels[l]`` channels, then an
    FPN top-down pass (1×1 lateral convs to ``num_feat``, ×2 bilinear upsample-add, 3×3 smoothing) so that every
    level the PCD sees has ``num_feat`` channels.
    """

    def __init__(self, channels: tuple[int, ...], deformable_groups: int) -> None:
        super().__init__()
        nf = channels[0]
        self.levels = len(channels)
        L = self.levels
        for side in ("src", "ref"):
            for lvl in range(2, L + 1):
                self.add_module(f"{side}_L{lvl}_conv1", nn.Conv2d(channels[lvl - 2], channels[lvl - 1], 3, 2, 1))
            if L > 1:
                self.add_module(f"{side}_toplayer", PointwiseConv2d(channels[-1], nf))
                for k in range(1, L):
                    self.add_module(f"{side}_smooth{k}", nn.Conv2d(nf, nf, 3, 1, 1))
                    self.add_module(f"{side}_latlayer{k}", PointwiseConv2d(channels[L - k - 1], nf))
        self.pcd_align = PCDCascade(nf, deformable_groups, L)

    def _pyramid(self, side: str, x: torch.Tensor) -> list[torch.Tensor]:
        feats = [x]
        for lvl in range(2, self.levels + 1):
            feats.append(F.relu(getattr(self, f"{side}_L{lvl}_conv1")(feats[-1])))
        if self.levels == 1:
            return feats
        top = F.relu(getattr(self, f"{side}_toplayer")(feats[-1]))
        out = [top]
        for k in range(1, self.levels):
            lat = getattr(self, f"{side}_latlayer{k}")(feats[self.levels - k - 1])
            up = resize_bilinear(out[-1], lat.shape[-2:])
            out.append(getattr(self, f"{side}_smooth{k}")(up + lat))
        return out[::-1]  # finest first

    def forward(self, src: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
        return self.pcd_align(self._pyramid("src", src), self._pyramid("ref", ref))


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class WindowAttention(nn.Module):
    """Window multi-head self-attention with relative position bias; dual-stream with a cross-modal gate.

    With SAR, each stream computes its own logits; ``gate = sigmoid(conv1×1_over_heads(sar − opt))`` and the
    optical logits become ``opt + (sar − opt)·gate`` before softmax (official design). The relative-position
    bias table is shared by both streams, as in the official code.
    """

    def __init__(self, dim: int, window_size: int, num_heads: int, dual: bool) -> None:
        super().__init__()
        self.dim = dim
        self.window_size = window_size
        self.num_heads = num_heads
        self.scale = (dim // num_heads) ** -0.5
        self.dual = dual
        self.relative_position_bias_table = nn.Parameter(torch.zeros((2 * window_size - 1) ** 2, num_heads))
        nn.init.trunc_normal_(self.relative_position_bias_table, std=0.02)
        index = relative_position_index(window_size).to(self.relative_position_bias_table.device)
        self.register_buffer("relative_position_index", index, persistent=False)
        self.qkv = nn.Linear(dim, dim * 3)
        self.proj = nn.Linear(dim, dim)
        if dual:
            self.qkv_SAR = nn.Linear(dim, dim * 3)
            self.proj_SAR = nn.Linear(dim, dim)
            self.attn_fuse_1x1conv = nn.Conv2d(num_heads, num_heads, 1)

    def _bias(self) -> torch.Tensor:
        n = self.window_size**2
        table = self.relative_position_bias_table
        # contiguous: adding a permuted view to the (windows, heads, n, n) logits took 5× longer on the CPU
        return table[self.relative_position_index.reshape(-1)].view(n, n, -1).permute(2, 0, 1).contiguous()

    def _head_mix(self, diff: torch.Tensor) -> torch.Tensor:
        """``attn_fuse_1x1conv(diff)`` as a batched product over the heads (same weights, same result).

        A 1×1 ``Conv2d`` over a (windows, heads, n, n) tensor is a tiny channel mix that oneDNN runs badly on the
        CPU: as an einsum it cut a 256² ``aligncr-lite`` tile by ≈ 18 % of its CPU time, and as a ``bmm`` per
        window (no transposed copy of the logits) the mix is another 3× faster.
        """
        conv = self.attn_fuse_1x1conv
        b, h = diff.shape[:2]
        weight = conv.weight.view(self.num_heads, self.num_heads).to(diff.dtype).expand(b, -1, -1)
        out = torch.bmm(weight, diff.reshape(b, h, -1))
        return out.add_(conv.bias.to(diff.dtype).view(1, -1, 1)).view(diff.shape)

    def _logits(self, qkv_layer: nn.Linear, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        b, n, c = x.shape
        qkv = qkv_layer(x).reshape(b, n, 3, self.num_heads, c // self.num_heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]
        return (q * self.scale) @ k.transpose(-2, -1), v

    def forward(
        self, x: torch.Tensor, x_sar: torch.Tensor | None, mask: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        b, n, c = x.shape
        heads = self.num_heads
        # Relative-position bias and shifted-window mask summed once, (1 or nW, heads, n, n), for both streams.
        bias = self._bias().unsqueeze(0)
        if mask is not None:
            nw = mask.shape[0]
            bias = bias + mask.unsqueeze(1)

        def add_bias(logits: torch.Tensor) -> torch.Tensor:
            if mask is None:
                return logits + bias.to(logits.dtype)
            return (logits.view(b // nw, nw, heads, n, n) + bias.to(logits.dtype)).view(b, heads, n, n)

        attn, v = self._logits(self.qkv, x)
        attn = add_bias(attn)
        out_sar = None
        if self.dual:
            attn_s, v_s = self._logits(self.qkv_SAR, x_sar)
            attn_s = add_bias(attn_s)
            diff = attn_s - attn
            attn = torch.addcmul(attn, diff, torch.sigmoid(self._head_mix(diff)))
            out_sar = self.proj_SAR((attn_s.softmax(-1) @ v_s).transpose(1, 2).reshape(b, n, c))
        out = self.proj((attn.softmax(-1) @ v).transpose(1, 2).reshape(b, n, c))
        return out, out_sar


class SwinTransformerBlock(nn.Module):
    """One (dual-stream) Swin Transformer layer working on (N, C, H, W) maps whose sides are window multiples.

    Shifted-window masks are computed for the actual size and cached per size in a plain dict, never in the
    state dict.
    """

    def __init__(self, dim: int, num_heads: int, window_size: int, shift_size: int, mlp_ratio: float,
                 dual: bool) -> None:
        super().__init__()
        self.window_size = window_size
        self.shift_size = shift_size
        self.dual = dual
        hidden = int(dim * mlp_ratio)
        self.norm1 = nn.LayerNorm(dim)
        self.attn = WindowAttention(dim, window_size, num_heads, dual)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, hidden)
        if dual:
            self.norm1_SAR = nn.LayerNorm(dim)
            self.norm2_SAR = nn.LayerNorm(dim)
            self.mlp_SAR = Mlp(dim, hidden)
        self._masks: dict[tuple, torch.Tensor] = {}

    def _mask(self, h: int, w: int, ws: int, shift: int, device: torch.device) -> torch.Tensor:
        key = (h, w, ws, shift, str(device))
        if key not in self._masks:
            if len(self._masks) > 16:
                self._masks.clear()
            self._masks[key] = shifted_window_mask(h, w, ws, shift, device)
        return self._masks[key]

    def forward(self, x: torch.Tensor, x_sar: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor | None]:
        b, c, h, w = x.shape
        ws, shift = self.window_size, self.shift_size
        if h % ws or w % ws:
            raise ValueError(f"feature map {h}×{w} is not a multiple of the window {ws} (the model pads inputs)")
        if min(h, w) <= ws:  # Swin: a side covered by one window is not shifted
            shift = 0
        if shift == 0:
            mask = None
        elif x.device.type == "meta":
            mask = torch.zeros((h // ws) * (w // ws), ws * ws, ws * ws, device="meta")
        else:
            mask = self._mask(h, w, ws, shift, x.device)

        def to_windows(t: torch.Tensor, norm: nn.LayerNorm) -> torch.Tensor:
            t = norm(t.permute(0, 2, 3, 1))
            if shift:
                t = torch.roll(t, (-shift, -shift), (1, 2))
            return window_partition(t, ws)

        def from_windows(t: torch.Tensor) -> torch.Tensor:
            t = window_reverse(t, ws, h, w)
            if shift:
                t = torch.roll(t, (shift, shift), (1, 2))
            return t

        xt = x.permute(0, 2, 3, 1)
        st = x_sar.permute(0, 2, 3, 1) if self.dual else None
        a, a_sar = self.attn(to_windows(x, self.norm1), to_windows(x_sar, self.norm1_SAR) if self.dual else None,
                             mask)
        xt = xt + from_windows(a)
        xt = xt + self.mlp(self.norm2(xt))
        out_sar = None
        if self.dual:
            st = st + from_windows(a_sar)
            st = st + self.mlp_SAR(self.norm2_SAR(st))
            out_sar = st.permute(0, 3, 1, 2)
        return xt.permute(0, 3, 1, 2), out_sar


class RDBConv(nn.Module):
    """One densely connected layer per stream: concat(input, ReLU(conv3×3(input)))."""

    def __init__(self, cin: int, growth: int, dual: bool) -> None:
        super().__init__()
        self.conv = nn.Sequential(nn.Conv2d(cin, growth, 3, padding=1), nn.ReLU())
        self.conv_SAR = nn.Sequential(nn.Conv2d(cin, growth, 3, padding=1), nn.ReLU()) if dual else None

    def forward(self, x: torch.Tensor, x_sar: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor | None]:
        x = torch.cat((x, self.conv(x)), 1)
        if self.conv_SAR is not None:
            x_sar = torch.cat((x_sar, self.conv_SAR(x_sar)), 1)
        return x, x_sar


class RDB(nn.Module):
    """SGCI: dual-stream residual dense block, local feature fusion, then ONE Swin layer, + block input."""

    def __init__(self, cfg: AlignCRConfig, shift: int, dual: bool) -> None:
        super().__init__()
        g0, g, c = cfg.num_feat, cfg.growth, cfg.rdb_layers
        self.dual = dual
        self.convs = nn.Sequential(*[RDBConv(g0 + i * g, g, dual) for i in range(c)])
        self.LFF = nn.Conv2d(g0 + c * g, g0, 3, 1, 1)
        self.LFF_SAR = nn.Conv2d(g0 + c * g, g0, 3, 1, 1) if dual else None
        self.SwinTransformerBlock = SwinTransformerBlock(g0, cfg.num_heads, cfg.window_size, shift, cfg.mlp_ratio,
                                                         dual)

    def forward(self, x: torch.Tensor, x_sar: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor | None]:
        if torch.is_grad_enabled() or x.device.type != "cpu" or torch.jit.is_tracing():
            h, hs = x, x_sar
            for layer in self.convs:
                h, hs = layer(h, hs)
        else:
            h = self._dense_in_place(x, "conv")
            hs = self._dense_in_place(x_sar, "conv_SAR") if self.dual else None
        f, fs = self.SwinTransformerBlock(self.LFF(h), self.LFF_SAR(hs) if self.dual else None)
        return f + x, (fs + x_sar if self.dual else None)

    def _dense_in_place(self, x: torch.Tensor, stream: str) -> torch.Tensor:
        """The dense layers writing into one preallocated (N, G0 + C·G, H, W) map instead of concatenating.

        Why: each ``torch.cat`` copies everything so far (G0 + G, G0 + 2G, … channels); here each layer's output
        is copied once, and a batch-1 channel prefix is a contiguous view the next conv reads as is — the dense
        part of an ``aligncr-lite`` SGCI block (both streams, 128² maps, bf16, one CPU core) 17.0 → 8.4 ms. The
        map takes the layers' output dtype, which is what the next conv would cast the concatenation to anyway,
        so the LFF conv sees the same values. Inference only (writing into a map that earlier convs read breaks
        autograd), and only on the CPU, where it was measured; not in a graph traced for another runtime
        (:mod:`engine.stream.backends`), which concatenates without copying and whose in-place slice writes
        (``ScatterNDUpdate``) also break its blocked layout.
        """
        convs = [getattr(layer, stream) for layer in self.convs]
        first = convs[0](x)
        n, c, hgt, wid = x.shape
        g = first.shape[1]
        out = torch.empty(n, c + len(convs) * g, hgt, wid, dtype=first.dtype, device=x.device)
        out[:, :c] = x
        out[:, c : c + g] = first
        c += g
        for conv in convs[1:]:
            out[:, c : c + g] = conv(out[:, :c])
            c += g
        return out


class DynamicFilterGenerator(nn.Module):
    """SLFC filter predictor (official ``DFG``): concat(opt, sar) → conv → 2 res blocks → 1×1 to C·k² taps.

    LeakyReLU(0.1) after the first and the last conv, as in the official code (GLF-CR's ``df_conv``).
    """

    def __init__(self, nf: int, k: int) -> None:
        super().__init__()
        self.fac_warp = nn.Sequential(
            nn.Sequential(nn.Conv2d(2 * nf, nf, 3, padding=1), nn.LeakyReLU(0.1, inplace=True)),
            _DFResBlock(nf),
            _DFResBlock(nf),
            nn.Sequential(PointwiseConv2d(nf, nf * k * k), nn.LeakyReLU(0.1, inplace=True)),
        )

    def forward(self, opt: torch.Tensor, sar: torch.Tensor) -> torch.Tensor:
        return self.fac_warp(torch.cat([opt, sar], 1))


class _DFResBlock(nn.Module):
    def __init__(self, nf: int) -> None:
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv2d(nf, nf, 3, padding=1), nn.LeakyReLU(0.1, inplace=True), nn.Conv2d(nf, nf, 3, padding=1)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.stem(x) + x


@register_model("aligncr", PAPER, "Align-CR, the paper's network (D=6, G0=96; ~45.5 M parameters). GPU advised.")
@register_model(
    "aligncr-lite",
    LITE,
    "Align-CR architecture, CPU-sized config (D=3, G0=32; ~2.2 M parameters): for CPUs and the bundled weights.",
)
@register_model(
    "aligncr-res",
    RES,
    "Align-CR architecture predicting a residual over the non-learned estimate of the ground (prior=True; D=1, "
    "G0=24): the default run's model.",
)
class AlignCR(nn.Module):
    """Align-CR; see the module docstring for the data flow and every design choice."""

    def __init__(self, cfg: AlignCRConfig) -> None:
        super().__init__()
        cfg.validate()
        self.cfg = cfg
        g0, r2 = cfg.num_feat, SPACE_TO_DEPTH**2
        wide = {"expand": cfg.fe_expand, "linear": cfg.fe_linear, "use_weight_norm": cfg.weight_norm}
        in_channels = cfg.in_bands + (cfg.in_bands + 1 if cfg.prior else 0)  # + the estimate and the distance
        self.SFE_conv = nn.Conv2d(in_channels * r2, g0, 3, 1, 1)
        self.SFE_module = make_layer(lambda: WideActResBlock(g0, **wide), cfg.fe_blocks)
        if cfg.use_sar:
            self.SFE_conv_SAR = nn.Conv2d(cfg.sar_bands * r2, g0, 3, 1, 1)
            self.SFE_module_SAR = make_layer(lambda: WideActResBlock(g0, **wide), cfg.fe_blocks)
        self.RDBs = nn.ModuleList(
            RDB(cfg, 0 if i % 2 == 0 else cfg.window_size // 2, cfg.use_sar) for i in range(cfg.num_blocks)
        )
        if cfg.use_sar and cfg.use_align:
            self.SFAlign = nn.ModuleList(
                PCDAlignment(cfg.pyramid_channels, cfg.deformable_groups) for _ in range(cfg.num_blocks)
            )
        if cfg.use_sar:
            self.DF = nn.ModuleList(DynamicFilterGenerator(g0, cfg.dyn_kernel) for _ in range(cfg.num_blocks))
            self.sar_fuse_1x1conv = nn.ModuleList(PointwiseConv2d(g0, g0) for _ in range(cfg.num_blocks))
            self.opt_distribute_1x1conv = nn.ModuleList(PointwiseConv2d(g0, g0) for _ in range(cfg.num_blocks))
        self.GFF = nn.Sequential(PointwiseConv2d(cfg.num_blocks * g0, g0), nn.Conv2d(g0, g0, 3, 1, 1))
        self.UPNet = nn.Sequential(
            nn.Conv2d(g0, cfg.up_feat * r2, 3, 1, 1),
            nn.PixelShuffle(SPACE_TO_DEPTH),
            nn.Conv2d(cfg.up_feat, cfg.in_bands, 3, 1, 1),
        )
        if cfg.prior:  # the residual starts at 0: the untrained network returns the estimate
            nn.init.zeros_(self.UPNet[-1].weight)
            nn.init.zeros_(self.UPNet[-1].bias)

    def alignment_modules(self) -> list[PCDAlignment]:
        return [m for m in self.modules() if isinstance(m, PCDAlignment)]

    def alignment_parameters(self) -> Iterator[nn.Parameter]:
        """Parameters the paper trains at the lower alignment learning rate (1e-5)."""
        for m in self.alignment_modules():
            yield from m.parameters()

    def _slfc(self, opt: torch.Tensor, sar: torch.Tensor, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        sar_m = per_pixel_filter(sar, self.DF[i](opt, sar), self.cfg.dyn_kernel)
        new_opt = opt + (sar_m - opt) * torch.sigmoid(self.sar_fuse_1x1conv[i](sar_m - opt))
        new_sar = sar + (new_opt - sar_m) * torch.sigmoid(self.opt_distribute_1x1conv[i](new_opt - sar_m))
        return new_opt, new_sar

    def _input_and_base(self, optical: torch.Tensor,
                        prior: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:  # fmt: skip
        """What the first conv sees and what the output is a residual over: the cloudy input (the paper), or with
        ``cfg.prior`` the input, the estimate and the distance, over the estimate."""
        cfg = self.cfg
        if not cfg.prior:
            return optical, optical
        want = (optical.shape[0], cfg.in_bands + 1, *optical.shape[2:])
        if prior is None or tuple(prior.shape) != want:
            got = None if prior is None else tuple(prior.shape)
            raise ModelError(f"this model needs the estimate and distance input (prior) of shape {want}, got {got}")
        prior = prior.to(optical.dtype)
        return torch.cat([optical, prior], dim=1), prior[:, : cfg.in_bands]

    def forward(self, optical: torch.Tensor, sar: torch.Tensor | None = None,
                prior: torch.Tensor | None = None) -> torch.Tensor:  # fmt: skip
        cfg = self.cfg
        if optical.ndim != 4 or optical.shape[1] != cfg.in_bands:
            raise ModelError(f"optical input must be (N, {cfg.in_bands}, H, W), got {tuple(optical.shape)}")
        x_in, base = self._input_and_base(optical, prior)
        x_in, (h, w) = pad_to_multiple(x_in, cfg.pad_multiple)
        # The official code applies an in-place ReLU to this shallow feature on its way into SFE_module, so the
        # long skip below adds ReLU(SFE_conv(·)), not the raw conv output: that is the forward official
        # checkpoints were trained with (checked against a transcription of the official code, tests/).
        f1 = F.relu(self.SFE_conv(F.pixel_unshuffle(x_in, SPACE_TO_DEPTH)))
        x = self.SFE_module(f1)
        x_sar = None
        if cfg.use_sar:
            if sar is None or sar.ndim != 4 or sar.shape[1] != cfg.sar_bands or sar.shape[0] != optical.shape[0]:
                got = None if sar is None else tuple(sar.shape)
                raise ModelError(f"SAR input must be (N, {cfg.sar_bands}, h, w) matching the optical batch, got {got}")
            s_in, _ = pad_to_multiple(upsample_like(sar.to(optical.dtype), optical), cfg.pad_multiple)
            x_sar = self.SFE_module_SAR(F.relu(self.SFE_conv_SAR(F.pixel_unshuffle(s_in, SPACE_TO_DEPTH))))
        outs = []
        for i in range(cfg.num_blocks):
            if cfg.use_sar and cfg.use_align:
                x_sar = self.SFAlign[i](x_sar, x)
            x, x_sar = self.RDBs[i](x, x_sar)
            if cfg.use_sar:
                x, x_sar = self._slfc(x, x_sar, i)
            outs.append(x)
        y = self.GFF(torch.cat(outs, 1)) + f1
        return self.UPNet(y)[..., :h, :w] + base
