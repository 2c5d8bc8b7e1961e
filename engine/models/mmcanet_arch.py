"""MMCANet (Zhou et al., TGRS 2025, §III): dual-stream MFF encoders, multimodal cross-attention, ASPP, decoder.

Registered configs: ``mmcanet`` (3×3 depth-wise convolutions in the MFF blocks), ``mmcanet-l`` (5×5, the paper's
MMCANet_L), and the multistage progressive restoration variants ``mmcanet-mpir2`` (three stages, the third an
original-resolution ORSNet, intermediate feature connections) and ``mmcanet-mpir4`` (two MMCANet stages with
cross-stage skip connections) — the two the paper found best (Table IV).

What the paper fixes, and we follow:

* Two encoders of four stages, one for the cloudy optical image and one for the SAR, built from MFF blocks (the
  KBNet block [26]): LayerNorm → three branches — 1×1 + depth-wise conv (3×3, or 5×5 for ``-l``), channel attention
  (global pooling + 1×1), and kernel basis attention (KBA: ``nset`` learned kernel bases mixed per pixel by
  predicted coefficients) — multiplied together, projected, added back (scaled residual), then a gated FFN.
* Multimodal cross-attention (eqs. 1–8) on the low-level (first-stage) and high-level (last-stage) features:
  Q, K, V of each modality by 1×1 convolutions, attention maps P = softmax(Q Kᵀ), fused map P_fuse = P_opt ⊙ P_sar,
  AP_x = P_fuse applied to V_x, AP = AP_opt ⊙ AP_sar; then concat(F_sar, F_opt, AP) (eqs. 9–10).
* ASPP on the fused high-level features: three 3×3 convolutions dilated 6, 12, 18 and an image-pooling branch
  with a 1×1 convolution, concatenated and fused by a 1×1 convolution (eq. 11); the result and the fused low-level
  features feed the decoder (eq. 12). Loss L1 + SSIM (``training/losses.py``), not part of the network.

Where the paper is silent (its Fig. 1 block counts and all widths are not in the text; no official code is
published), our choices, written down:

* Widths 32/64/128/256 over the four encoder stages (down-sampling by 2×2 stride-2 convolutions, up-sampling by
  1×1 conv + pixel shuffle, as KBNet); MFF blocks per encoder stage (2, 2, 4, 4) in each stream; decoder stages at
  1/4, 1/2 and 1/1 with (2, 2, 2) blocks. KBA: 32 kernel bases, 4 channels per group, FFN expansion 2 (KBNet).
* "Distinct kernel sizes for the optical and SAR modalities": the KBA kernel is 3×3 in the optical stream and 5×5
  in the SAR stream (speckle needs the wider support); the depth-wise kernel is the one ``-l`` changes.
* Attention: "the transpose of Q times K" is taken over *channels* (a C×C map per head, as Restormer's transposed
  attention), which keeps the low-level attention at full resolution linear in the number of pixels — a
  pixel×pixel map is infeasible on raster tiles. Q and K are L2-normalised with a learned temperature. The product
  of two softmax maps is renormalised row-wise, i.e. P_fuse = softmax(S_opt + S_sar): still an attention map.
* Decoder skips at the two intermediate scales add the optical and SAR encoder features (U-Net/KBNet style); at
  full resolution the up-sampled ASPP path is concatenated with the fused low-level features (eq. 12) and reduced
  by a 1×1 convolution. ASPP uses ReLU and no normalisation (restoration nets avoid BatchNorm).
* The output is the cloudy input plus a predicted residual (KBNet, DSen2-CR, Align-CR all do so).
* MPIR (§III-B, after MPRNet [29]): stage s of S works at 1/2^(S-1-s) of the input size (the first stage on "a
  low-resolution variant"); its optical input is the cloudy image at that size, concatenated for s > 0 with the
  previous stage's output up-sampled ("the output of each stage is channeled to its successor"), which is also
  the base its residual is added to. *Intermediate feature connection* (MPIR1/2): the previous stage's features
  before its terminal convolution are up-sampled and merged (concat + 1×1) with the new stage's optical features
  after its first convolution. *Skip connection* (MPIR3/4): they are instead added to the new stage's output
  features. ORSNet (MPIR2's third stage): MPRNet's original-resolution subnetwork, three ORBs of eight channel
  attention blocks (CAB, reduction 4) with residuals, on concat(optical input, SAR) at full resolution.
  ``forward_stages`` (or ``forward(..., return_stages=True)``) returns every stage's output for deep supervision;
  ``forward`` the last one.
* Any H, W: reflect-padded to a multiple of 8 (× 2^(S-1) for MPIR) and cropped back; SAR coarser than the optical
  grid is up-sampled nearest (registry contract).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from engine.models.registry import register_model
from engine.models.unet_arch import match_sar, pad_to_multiple


@dataclass(frozen=True)
class MMCANetConfig:
    """Single-stage MMCANet (defaults: our documented choices, see module docstring)."""

    in_bands: int = 4
    sar_bands: int = 2
    width: int = 32
    enc_blocks: tuple[int, ...] = (2, 2, 4, 4)
    dec_blocks: tuple[int, ...] = (2, 2, 2)
    dw_kernel: int = 3
    kba_kernel_optical: int = 3
    kba_kernel_sar: int = 5
    kba_bases: int = 32
    kba_group_channels: int = 4
    ffn_expand: int = 2
    heads: int = 1
    aspp_rates: tuple[int, ...] = (6, 12, 18)


@dataclass(frozen=True)
class MPIRConfig(MMCANetConfig):
    """Multistage progressive restoration: one entry per stage ("mmcanet" or "orsnet"), and how stages connect."""

    stages: tuple[str, ...] = ("mmcanet", "mmcanet", "orsnet")
    link: str = "feature"  # "feature" (MPIR1/2: merge at the next stage's input) or "skip" (MPIR3/4: add at output)
    orb_count: int = 3
    cabs_per_orb: int = 8
    cab_reduction: int = 4


class LayerNorm2d(nn.Module):
    """LayerNorm over the channels of an (N, C, H, W) map, per pixel (as KBNet/NAFNet)."""

    def __init__(self, channels: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mu = x.mean(1, keepdim=True)
        var = (x - mu).pow(2).mean(1, keepdim=True)
        y = (x - mu) / torch.sqrt(var + self.eps)
        return y * self.weight.view(1, -1, 1, 1) + self.bias.view(1, -1, 1, 1)


class SimpleGate(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a, b = x.chunk(2, dim=1)
        return a * b


class KernelBasisAttention(nn.Module):
    """KBA: ``nset`` grouped k×k kernel bases, mixed at every pixel by the coefficients ``att`` (N, nset, H, W).

    Computed as ``nset`` grouped convolutions then a per-pixel weighted sum, which equals applying the per-pixel
    kernel Σ_n att_n·W_n (convolution is linear in the kernel) and runs on stock convolutions with autograd.
    """

    def __init__(self, channels: int, kernel: int, nset: int, group_channels: int) -> None:
        super().__init__()
        if channels % group_channels:
            raise ValueError(f"KBA channels {channels} must be a multiple of group_channels {group_channels}")
        self.c, self.k, self.nset = channels, kernel, nset
        self.groups = channels // group_channels
        # weight laid out (groups, nset, C/groups) on the output axis so one grouped conv computes every basis
        self.weight = nn.Parameter(torch.empty(self.groups * nset * group_channels, group_channels, kernel, kernel))
        self.bias = nn.Parameter(torch.empty(nset, channels))
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))
        bound = 1.0 / math.sqrt(group_channels * kernel * kernel)
        nn.init.uniform_(self.bias, -bound, bound)

    def forward(self, x: torch.Tensor, att: torch.Tensor) -> torch.Tensor:
        n, c, h, w = x.shape
        y = F.conv2d(x, self.weight, padding=self.k // 2, groups=self.groups)
        y = y.view(n, self.groups, self.nset, c // self.groups, h, w).transpose(1, 2).reshape(n, self.nset, c, h, w)
        y = y + self.bias.view(1, self.nset, c, 1, 1)
        return (y * att.unsqueeze(2)).sum(dim=1)


class MFFBlock(nn.Module):
    """Multi-axis feature fusion block (KBNet's KBBlock_s): DWconv × channel attention × KBA, then gated FFN."""

    def __init__(self, c: int, dw_kernel: int, kba_kernel: int, nset: int, group_channels: int, ffn: int) -> None:
        super().__init__()
        self.norm1 = LayerNorm2d(c)
        self.norm2 = LayerNorm2d(c)
        self.channel_att = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Conv2d(c, c, 1))
        self.dw = nn.Sequential(nn.Conv2d(c, c, 1), nn.Conv2d(c, c, dw_kernel, padding=dw_kernel // 2, groups=c))
        inter = min(c, 32)
        self.coef = nn.Sequential(
            nn.Conv2d(c, inter, 3, padding=1, groups=inter), SimpleGate(), nn.Conv2d(inter // 2, nset, 1)
        )
        self.coef_linear = nn.Conv2d(c, nset, 1)
        self.kba_in = nn.Sequential(nn.Conv2d(c, c, 1), nn.Conv2d(c, c, 3, padding=1, groups=c))
        self.kba = KernelBasisAttention(c, kba_kernel, nset, group_channels)
        self.proj = nn.Conv2d(c, c, 1)
        self.ffn_in = nn.Conv2d(c, c * ffn, 1)
        self.ffn_out = nn.Conv2d(c * ffn // 2, c, 1)
        self.gate = SimpleGate()
        # small learned scales on every residual branch: the block starts close to identity (KBNet's 1e-2)
        self.coef_scale = nn.Parameter(torch.full((1, nset, 1, 1), 1e-2))
        self.kba_scale = nn.Parameter(torch.full((1, c, 1, 1), 1e-2))
        self.beta = nn.Parameter(torch.full((1, c, 1, 1), 1e-2))
        self.gamma = nn.Parameter(torch.full((1, c, 1, 1), 1e-2))

    def forward(self, inp: torch.Tensor) -> torch.Tensor:
        x = self.norm1(inp)
        ca = self.channel_att(x)
        dw = self.dw(x)
        att = self.coef(x) * self.coef_scale + self.coef_linear(x)
        u = self.kba_in(x)
        k = self.kba(u, att) * self.kba_scale + u
        y = inp + self.proj(k * dw * ca) * self.beta
        z = self.ffn_out(self.gate(self.ffn_in(self.norm2(y))))
        return y + z * self.gamma


class CrossModalAttention(nn.Module):
    """Eqs. 1–8: per-modality channel attention maps, fused by product, applied to both V, outputs multiplied."""

    def __init__(self, c: int, heads: int) -> None:
        super().__init__()
        if c % heads:
            raise ValueError(f"attention channels {c} must be a multiple of heads {heads}")
        self.heads = heads
        self.qkv_opt = nn.Conv2d(c, 3 * c, 1)
        self.qkv_sar = nn.Conv2d(c, 3 * c, 1)
        self.temp_opt = nn.Parameter(torch.ones(heads, 1, 1))
        self.temp_sar = nn.Parameter(torch.ones(heads, 1, 1))
        self.proj = nn.Conv2d(c, c, 1)

    def _split(self, qkv: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        n, c3, h, w = qkv.shape
        q, k, v = qkv.view(n, 3, self.heads, c3 // (3 * self.heads), h * w).unbind(1)
        return F.normalize(q, dim=-1), F.normalize(k, dim=-1), v

    def forward(self, f_opt: torch.Tensor, f_sar: torch.Tensor) -> torch.Tensor:
        n, c, h, w = f_opt.shape
        q_o, k_o, v_o = self._split(self.qkv_opt(f_opt))
        q_s, k_s, v_s = self._split(self.qkv_sar(f_sar))
        p_opt = torch.softmax(q_o @ k_o.transpose(-2, -1) * self.temp_opt, dim=-1)
        p_sar = torch.softmax(q_s @ k_s.transpose(-2, -1) * self.temp_sar, dim=-1)
        p_fuse = p_opt * p_sar
        p_fuse = p_fuse / p_fuse.sum(dim=-1, keepdim=True).clamp_min(1e-12)
        ap = (p_fuse @ v_o) * (p_fuse @ v_s)
        return self.proj(ap.reshape(n, c, h, w))


class ASPP(nn.Module):
    """Three dilated 3×3 branches and an image-pooling 1×1 branch, concatenated and fused by a 1×1 conv (eq. 11)."""

    def __init__(self, cin: int, cout: int, rates: tuple[int, ...]) -> None:
        super().__init__()
        self.branches = nn.ModuleList(nn.Conv2d(cin, cout, 3, padding=r, dilation=r) for r in rates)
        self.pool = nn.Conv2d(cin, cout, 1)
        self.fuse = nn.Conv2d(cout * (len(rates) + 1), cout, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        outs = [F.relu(b(x)) for b in self.branches]
        pooled = F.relu(self.pool(F.adaptive_avg_pool2d(x, 1)))
        outs.append(pooled.expand(-1, -1, x.shape[-2], x.shape[-1]))
        return F.relu(self.fuse(torch.cat(outs, dim=1)))


class _Stream(nn.Module):
    """One modality's encoder: stages of MFF blocks at widths C·2^i, 2×2 stride-2 down-sampling between them."""

    def __init__(self, cfg: MMCANetConfig, kba_kernel: int) -> None:
        super().__init__()
        self.stages = nn.ModuleList()
        self.downs = nn.ModuleList()
        c = cfg.width
        for i, n in enumerate(cfg.enc_blocks):
            self.stages.append(
                nn.Sequential(
                    *(
                        MFFBlock(c, cfg.dw_kernel, kba_kernel, cfg.kba_bases, cfg.kba_group_channels, cfg.ffn_expand)
                        for _ in range(n)
                    )
                )
            )
            if i < len(cfg.enc_blocks) - 1:
                self.downs.append(nn.Conv2d(c, 2 * c, 2, 2))
                c *= 2

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        feats = []
        for i, stage in enumerate(self.stages):
            x = stage(x)
            feats.append(x)
            if i < len(self.downs):
                x = self.downs[i](x)
        return feats


class MMCANetCore(nn.Module):
    """The single-stage network up to (not including) its terminal convolution: returns width-C features.

    ``extra`` (optional, ``extra_channels`` wide, at the input size) is merged into the optical features right after
    the first convolution — the MPIR intermediate feature connection.
    """

    def __init__(self, cfg: MMCANetConfig, optical_in: int, extra_channels: int = 0) -> None:
        super().__init__()
        if len(cfg.dec_blocks) != len(cfg.enc_blocks) - 1:
            raise ValueError("dec_blocks needs one entry per up-sampling (len(enc_blocks) - 1)")
        c = cfg.width
        c_high = c * 2 ** (len(cfg.enc_blocks) - 1)
        self.intro_opt = nn.Conv2d(optical_in, c, 3, padding=1)
        self.intro_sar = nn.Conv2d(cfg.sar_bands, c, 3, padding=1)
        self.merge = nn.Conv2d(c + extra_channels, c, 1) if extra_channels else None
        self.enc_opt = _Stream(cfg, cfg.kba_kernel_optical)
        self.enc_sar = _Stream(cfg, cfg.kba_kernel_sar)
        self.att_low = CrossModalAttention(c, cfg.heads)
        self.att_high = CrossModalAttention(c_high, cfg.heads)
        self.aspp = ASPP(3 * c_high, c_high, cfg.aspp_rates)
        self.low_fuse = nn.Conv2d(3 * c, c, 1)
        self.ups = nn.ModuleList()
        self.decoders = nn.ModuleList()
        ch = c_high
        for n in cfg.dec_blocks:
            self.ups.append(nn.Sequential(nn.Conv2d(ch, ch * 2, 1, bias=False), nn.PixelShuffle(2)))
            ch //= 2
            self.decoders.append(
                nn.Sequential(
                    *(
                        MFFBlock(
                            ch, cfg.dw_kernel, cfg.kba_kernel_optical, cfg.kba_bases, cfg.kba_group_channels,
                            cfg.ffn_expand,
                        )
                        for _ in range(n)
                    )
                )
            )
        self.full_res_reduce = nn.Conv2d(2 * c, c, 1)

    def forward(self, optical: torch.Tensor, sar: torch.Tensor, extra: torch.Tensor | None = None) -> torch.Tensor:
        fo = self.intro_opt(optical)
        if self.merge is not None:
            if extra is None:
                raise ValueError("this stage expects the previous stage's features")
            fo = self.merge(torch.cat([fo, extra], dim=1))
        enc_o = self.enc_opt(fo)
        enc_s = self.enc_sar(self.intro_sar(sar))
        low = self.low_fuse(torch.cat([enc_s[0], enc_o[0], self.att_low(enc_o[0], enc_s[0])], dim=1))
        high = torch.cat([enc_s[-1], enc_o[-1], self.att_high(enc_o[-1], enc_s[-1])], dim=1)
        x = self.aspp(high)
        n_up = len(self.ups)
        for i, (up, dec) in enumerate(zip(self.ups, self.decoders)):
            x = up(x)
            level = n_up - 1 - i
            if level == 0:
                x = self.full_res_reduce(torch.cat([x, low], dim=1))
            else:
                x = x + enc_o[level] + enc_s[level]
            x = dec(x)
        return x


def _prepare(optical: torch.Tensor, sar: torch.Tensor, multiple: int) -> tuple[torch.Tensor, torch.Tensor]:
    sar = match_sar(sar, optical.shape[-2:])
    return pad_to_multiple(optical, multiple), pad_to_multiple(sar, multiple)


@register_model(
    "mmcanet",
    MMCANetConfig(),
    "MMCANet (Zhou 2025): dual-stream MFF encoders, SAR-optical cross-attention, ASPP; 3x3 depth-wise convs.",
)
@register_model(
    "mmcanet-l",
    MMCANetConfig(dw_kernel=5),
    "MMCANet_L (Zhou 2025): MMCANet with 5x5 depth-wise convs in the MFF blocks (stronger, slower).",
)
class MMCANet(nn.Module):
    """Single-stage MMCANet: ``forward(optical (N,B,H,W), sar (N,2,h,w)) -> (N,B,H,W)``, residual on the input."""

    def __init__(self, cfg: MMCANetConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.multiple = 2 ** (len(cfg.enc_blocks) - 1)
        self.core = MMCANetCore(cfg, cfg.in_bands)
        self.tail = nn.Conv2d(cfg.width, cfg.in_bands, 3, padding=1)

    def forward(self, optical: torch.Tensor, sar: torch.Tensor) -> torch.Tensor:
        h, w = optical.shape[-2:]
        opt, s = _prepare(optical, sar, self.multiple)
        out = opt + self.tail(self.core(opt, s))
        return out[..., :h, :w]


class ChannelAttentionBlock(nn.Module):
    """CAB (RCAN / MPRNet): conv-ReLU-conv, squeeze-excitation channel weights, residual."""

    def __init__(self, c: int, reduction: int) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(c, c, 3, padding=1), nn.ReLU(), nn.Conv2d(c, c, 3, padding=1))
        self.se = nn.Sequential(
            nn.AdaptiveAvgPool2d(1),
            nn.Conv2d(c, c // reduction, 1),
            nn.ReLU(),
            nn.Conv2d(c // reduction, c, 1),
            nn.Sigmoid(),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.body(x)
        return x + y * self.se(y)


class ORSNet(nn.Module):
    """Original-resolution subnetwork (MPRNet): ORBs of CABs + conv with residuals, never down-sampling."""

    def __init__(self, cfg: MPIRConfig, optical_in: int, extra_channels: int = 0) -> None:
        super().__init__()
        c = cfg.width
        self.intro = nn.Conv2d(optical_in + cfg.sar_bands, c, 3, padding=1)
        self.merge = nn.Conv2d(c + extra_channels, c, 1) if extra_channels else None
        self.orbs = nn.ModuleList(
            nn.Sequential(
                *(ChannelAttentionBlock(c, cfg.cab_reduction) for _ in range(cfg.cabs_per_orb)),
                nn.Conv2d(c, c, 3, padding=1),
            )
            for _ in range(cfg.orb_count)
        )

    def forward(self, optical: torch.Tensor, sar: torch.Tensor, extra: torch.Tensor | None = None) -> torch.Tensor:
        x = self.intro(torch.cat([optical, sar], dim=1))
        if self.merge is not None:
            if extra is None:
                raise ValueError("this stage expects the previous stage's features")
            x = self.merge(torch.cat([x, extra], dim=1))
        for orb in self.orbs:
            x = x + orb(x)
        return x


@register_model(
    "mmcanet-mpir2",
    MPIRConfig(stages=("mmcanet", "mmcanet", "orsnet"), link="feature"),
    "MMCANet MPIR2 (Zhou 2025): 3 progressive stages (1/4, 1/2, 1), the last an original-resolution ORSNet.",
)
@register_model(
    "mmcanet-mpir4",
    MPIRConfig(stages=("mmcanet", "mmcanet"), link="skip"),
    "MMCANet MPIR4 (Zhou 2025): 2 progressive MMCANet stages (1/2, 1) with cross-stage skip connections.",
)
class MMCANetMPIR(nn.Module):
    """Multistage progressive restoration over MMCANet stages (and ORSNet); see the module docstring."""

    def __init__(self, cfg: MPIRConfig) -> None:
        super().__init__()
        if cfg.link not in ("feature", "skip"):
            raise ValueError(f"MPIR link must be 'feature' or 'skip', not {cfg.link!r}")
        unknown = set(cfg.stages) - {"mmcanet", "orsnet"}
        if unknown or not cfg.stages:
            raise ValueError(f"MPIR stages must be 'mmcanet' or 'orsnet', got {cfg.stages}")
        self.cfg = cfg
        n = len(cfg.stages)
        self.multiple = 2 ** (len(cfg.enc_blocks) - 1) * 2 ** (n - 1)
        self.stages = nn.ModuleList()
        for s, kind in enumerate(cfg.stages):
            optical_in = cfg.in_bands * (2 if s > 0 else 1)
            extra = cfg.width if (s > 0 and cfg.link == "feature") else 0
            net = MMCANetCore(cfg, optical_in, extra) if kind == "mmcanet" else ORSNet(cfg, optical_in, extra)
            self.stages.append(net)
        self.tails = nn.ModuleList(nn.Conv2d(cfg.width, cfg.in_bands, 3, padding=1) for _ in cfg.stages)

    def forward_stages(self, optical: torch.Tensor, sar: torch.Tensor) -> list[torch.Tensor]:
        """Every stage's restored image, coarsest first (each at its stage's size; the last at the input size)."""
        h, w = optical.shape[-2:]
        opt, s_full = _prepare(optical, sar, self.multiple)
        n = len(self.stages)
        outputs: list[torch.Tensor] = []
        prev_img: torch.Tensor | None = None
        prev_feat: torch.Tensor | None = None
        for s, (net, tail) in enumerate(zip(self.stages, self.tails)):
            factor = 2 ** (n - 1 - s)
            o = F.avg_pool2d(opt, factor) if factor > 1 else opt
            sa = F.avg_pool2d(s_full, factor) if factor > 1 else s_full
            size = o.shape[-2:]
            if prev_img is None:
                base, inp = o, o
            else:
                base = F.interpolate(prev_img, size=size, mode="bilinear", align_corners=False)
                inp = torch.cat([o, base], dim=1)
            up_feat = None
            if prev_feat is not None:
                up_feat = F.interpolate(prev_feat, size=size, mode="bilinear", align_corners=False)
            feat = net(inp, sa, up_feat if self.cfg.link == "feature" else None)
            if self.cfg.link == "skip" and up_feat is not None:
                feat = feat + up_feat
            prev_img = base + tail(feat)
            prev_feat = feat
            crop_h, crop_w = math.ceil(h / factor), math.ceil(w / factor)
            outputs.append(prev_img[..., :crop_h, :crop_w])
        return outputs

    def forward(
        self, optical: torch.Tensor, sar: torch.Tensor, *, return_stages: bool = False
    ) -> torch.Tensor | list[torch.Tensor]:
        """The final (full-size) image; with ``return_stages=True`` every stage's image (:meth:`forward_stages`),
        so a training loop wrapped in DistributedDataParallel can supervise each stage through ``forward``."""
        stages = self.forward_stages(optical, sar)
        return stages if return_stages else stages[-1]
