"""The official Align-CR forward, transcribed as plain functions over an official state dict — for tests only.

Why this exists: :mod:`engine.models.aligncr_arch` re-implements the official network (zhu-xlab/M3R-CR,
``Align-CR/net_CR_RDN.py`` → ``RDN_residual_CR``) with its own code paths — padding, run-time Swin masks, a
grid-sample deformable conv, in-place dense blocks, 1×1 convs as matrix products — and
:func:`engine.models.weights.import_official` maps official checkpoints onto it. A round trip through our own model
cannot show that the two compute the same function; this file is written from reading the official code (and what
it imports: ``submodules.py``, ``model/arch_util.py``, BasicSR's ``PCDAlignment`` / ``DCNv2Pack`` and
torchvision's ``deform_conv2d`` CPU kernel), NOT from ours, and it is driven by an official-style state dict:
official parameter names (``module.`` prefix allowed), ``weight_g``/``weight_v`` weight-norm pairs, and the
persistent ``relative_position_index`` and ``attn_mask`` buffers the official modules register and use.

Official behaviour kept on purpose, because each changes the numbers:
- ``self.lrelu = nn.ReLU(inplace=True)`` applied to ``f__1`` on its way into ``SFE_module`` rewrites ``f__1`` in
  place, so the long skip ``x += f__1`` adds ReLU(SFE_conv(·)). ``skip_relu_in_place=False`` gives the reading
  that ignores the side effect (the un-ReLU'd feature), i.e. what our network computed before commit 04f7826.
- Activations exactly where the official code puts them: ReLU after the stride-2 pyramid convs and the FPN top
  layer only (lateral/smooth convs linear); LeakyReLU(0.1) everywhere in PCD except on the level-1 feature before
  the cascade; plain ReLU in the wide-activation blocks and dense layers; LeakyReLU(0.1) after the first and last
  convs of the dynamic-filter generator and inside its res blocks; GELU in the Swin MLP.
- Concatenation orders: [nbr, ref] for offsets, [offset, upsampled offset], [feat, upsampled feat], [feat, ref L1]
  for the cascade, [opt, sar] for the dynamic filters, RDB [input, conv(input)].
- BasicSR's offset split: ``conv_offset`` output → thirds o1, o2, m; offset = cat(o1, o2) read in torchvision's
  layout (dy, dx interleaved per group and tap), mask = sigmoid(m).
- Swin: the stored ``attn_mask`` buffer (built at construction for ``input_size / 2``) and the stored
  ``relative_position_index``; the bias table shared by both streams; the gate ``sigmoid(1×1 conv over heads
  (attn_SAR − attn))`` mixing SAR logits into the optical ones; window size clipped and shift dropped when the
  feature map is no larger than a window (the official constructor's rule).
- No padding or cropping: the official forward takes what the loader gives (160×160 crops, SAR already on the
  optical grid).

Generalisations, so that a smaller network than the paper's can be checked quickly: every width is read from the
state dict's tensor shapes (the official class hard-codes G0 = 96, pyramid 96/192/384, C = 5, G = 48, 8 groups,
8 heads, ``attn_fuse_1x1conv`` 8→8); the number of blocks, dense layers and wide-activation blocks is counted
from the keys; heads and window come from ``relative_position_bias_table`` (shape ((2·ws − 1)², heads)); the
deformable groups from ``conv_offset``'s output (3·groups·9). The structure and every operation are the official
ones; for the paper's shapes this is the official forward.

The deformable sampling itself is an independent transcription of torchvision's ``deform_conv2d`` CPU kernel
(``bilinear_interpolate``: a sample with y ≤ −1, y ≥ H, x ≤ −1 or x ≥ W is 0; otherwise each of the four corners
counts only when inside the image) using gathers — deliberately not the engine's ``grid_sample`` formulation.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

LEAKY = 0.1  # submodules.LEAKY_VALUE and BasicSR's PCD LeakyReLU slope


class OfficialParams:
    """An official state dict (``module.`` prefixes stripped) that records which keys the forward read.

    Why: a key the official forward would read but the checkpoint lacks raises ``KeyError`` here, and a key the
    checkpoint has but nothing reads shows up in :meth:`unused` — so the key set our importer accepts is checked
    against the one the official code actually uses, not only the values.
    """

    def __init__(self, state: dict[str, torch.Tensor]) -> None:
        self.state = {k.removeprefix("module."): v for k, v in state.items()}
        self.used: set[str] = set()

    def __call__(self, key: str) -> torch.Tensor:
        self.used.add(key)
        return self.state[key]

    def has(self, key: str) -> bool:
        return key in self.state

    def unused(self) -> set[str]:
        return set(self.state) - self.used


# --- torch.nn layers as the official modules configure them --------------------------------------------------------


def conv(p: OfficialParams, name: str, x: torch.Tensor, stride: int = 1) -> torch.Tensor:
    """``nn.Conv2d`` with the official padding: every official conv is 'same' ((k − 1) // 2), stride-2 ones too."""
    w = p(f"{name}.weight")
    return F.conv2d(x, w, p(f"{name}.bias"), stride=stride, padding=(w.shape[-1] - 1) // 2)


def wn_conv(p: OfficialParams, name: str, x: torch.Tensor) -> torch.Tensor:
    """``torch.nn.utils.weight_norm(nn.Conv2d)`` (dim 0): w = g · v / ‖v‖, the norm over all dims but the first."""
    g, v = p(f"{name}.weight_g"), p(f"{name}.weight_v")
    w = g * v / torch.sqrt((v * v).sum(dim=(1, 2, 3), keepdim=True))
    return F.conv2d(x, w, p(f"{name}.bias"), padding=(w.shape[-1] - 1) // 2)


def linear(p: OfficialParams, name: str, x: torch.Tensor) -> torch.Tensor:
    return F.linear(x, p(f"{name}.weight"), p(f"{name}.bias"))


def layer_norm(p: OfficialParams, name: str, x: torch.Tensor) -> torch.Tensor:
    w = p(f"{name}.weight")
    return F.layer_norm(x, w.shape, w, p(f"{name}.bias"), eps=1e-5)


def lrelu_(x: torch.Tensor) -> torch.Tensor:
    """``nn.LeakyReLU(0.1, inplace=True)``."""
    return F.leaky_relu_(x, LEAKY)


# --- torchvision.ops.deform_conv2d (CPU kernel), the primitive BasicSR's DCNv2Pack calls --------------------------


def _corner(x_flat: torch.Tensor, yi: torch.Tensor, xi: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """Values at integer corners (yi, xi) of every channel, 0 where the corner lies outside the image.

    ``x_flat``: (N, G, Cg, H·W); ``yi``/``xi``: (N, G, K, Ho, Wo) → (N, G, Cg, K, Ho, Wo).
    """
    inside = (yi >= 0) & (yi <= h - 1) & (xi >= 0) & (xi <= w - 1)
    idx = (yi.clamp(0, h - 1) * w + xi.clamp(0, w - 1)).flatten(2)  # (N, G, K·Ho·Wo)
    n, g, cg, _ = x_flat.shape
    vals = torch.gather(x_flat, 3, idx.unsqueeze(2).expand(n, g, cg, idx.shape[-1]))
    return vals.view(n, g, cg, *yi.shape[2:]) * inside.unsqueeze(2).to(x_flat.dtype)


def torchvision_deform_conv2d(
    x: torch.Tensor,
    offset: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor,
    mask: torch.Tensor,
    stride: int = 1,
    padding: int = 1,
    dilation: int = 1,
) -> torch.Tensor:
    """Modulated deformable conv, groups = 1, as torchvision's ``deformable_im2col_kernel`` computes it.

    Offset channel ``2·(g·K + k)`` is dy and ``2·(g·K + k) + 1`` dx for deformable group g and tap k = i·kw + j;
    mask channel ``g·K + k``; tap (i, j) of output (oy, ox) samples y = oy·s − p + i·d + dy, x = ox·s − p + j·d + dx.
    """
    n, c, h, w = x.shape
    out_ch, _, kh, kw = weight.shape
    k = kh * kw
    groups = offset.shape[1] // (2 * k)
    ho, wo = offset.shape[-2:]
    off = offset.view(n, groups, k, 2, ho, wo)
    taps_i = (torch.arange(k, device=x.device) // kw).view(1, 1, k, 1, 1)
    taps_j = (torch.arange(k, device=x.device) % kw).view(1, 1, k, 1, 1)
    oy = torch.arange(ho, device=x.device).view(1, 1, 1, ho, 1)
    ox = torch.arange(wo, device=x.device).view(1, 1, 1, 1, wo)
    y = (oy * stride - padding + taps_i * dilation).to(x.dtype) + off[:, :, :, 0]
    xx = (ox * stride - padding + taps_j * dilation).to(x.dtype) + off[:, :, :, 1]
    y_low, x_low = torch.floor(y), torch.floor(xx)
    ly, lx = y - y_low, xx - x_low
    hy, hx = 1 - ly, 1 - lx
    yl, xl = y_low.long(), x_low.long()
    x_flat = x.reshape(n, groups, c // groups, h * w)
    val = (
        (hy * hx).unsqueeze(2) * _corner(x_flat, yl, xl, h, w)
        + (hy * lx).unsqueeze(2) * _corner(x_flat, yl, xl + 1, h, w)
        + (ly * hx).unsqueeze(2) * _corner(x_flat, yl + 1, xl, h, w)
        + (ly * lx).unsqueeze(2) * _corner(x_flat, yl + 1, xl + 1, h, w)
    )
    outside = (y <= -1) | (y >= h) | (xx <= -1) | (xx >= w)  # the kernel's early "return 0"
    val = val.masked_fill(outside.unsqueeze(2), 0.0)
    cols = val * mask.view(n, groups, 1, k, ho, wo)  # mask_value * bilinear_interpolate(...)
    cols = cols.reshape(n, c * k, ho * wo)  # im2col rows: channel-major, then tap
    out = torch.matmul(weight.reshape(out_ch, c * k), cols).view(n, out_ch, ho, wo)
    return out + bias.view(1, -1, 1, 1)


# --- BasicSR: DCNv2Pack and PCDAlignment ---------------------------------------------------------------------------


def dcnv2_pack(p: OfficialParams, name: str, x: torch.Tensor, feat: torch.Tensor, record: list | None) -> torch.Tensor:
    """BasicSR ``DCNv2Pack.forward(x, feat)``: offsets and mask from ``conv_offset(feat)``, split in thirds."""
    out = conv(p, f"{name}.conv_offset", feat)
    o1, o2, mask = torch.chunk(out, 3, dim=1)
    offset = torch.cat((o1, o2), dim=1)
    mask = torch.sigmoid(mask)
    if record is not None:
        record.append((name, float(offset.abs().mean())))
    return torchvision_deform_conv2d(x, offset, p(f"{name}.weight"), p(f"{name}.bias"), mask, 1, 1, 1)


def _upsample2(x: torch.Tensor) -> torch.Tensor:
    """``nn.Upsample(scale_factor=2, mode='bilinear', align_corners=False)``."""
    return F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False)


def pcd_alignment(
    p: OfficialParams, name: str, nbr: list[torch.Tensor], ref: list[torch.Tensor], record: list | None
) -> torch.Tensor:
    """BasicSR ``PCDAlignment.forward`` (three levels, l3 coarsest), then the cascading DCN."""
    up_offset = up_feat = feat = None
    for i in range(3, 0, -1):
        lv = f"l{i}"
        offset = torch.cat([nbr[i - 1], ref[i - 1]], dim=1)
        offset = lrelu_(conv(p, f"{name}.offset_conv1.{lv}", offset))
        if i == 3:
            offset = lrelu_(conv(p, f"{name}.offset_conv2.{lv}", offset))
        else:
            offset = lrelu_(conv(p, f"{name}.offset_conv2.{lv}", torch.cat([offset, up_offset], dim=1)))
            offset = lrelu_(conv(p, f"{name}.offset_conv3.{lv}", offset))
        feat = dcnv2_pack(p, f"{name}.dcn_pack.{lv}", nbr[i - 1], offset, record)
        if i < 3:
            feat = conv(p, f"{name}.feat_conv.{lv}", torch.cat([feat, up_feat], dim=1))
        if i > 1:
            feat = lrelu_(feat)
        if i > 1:
            up_offset = _upsample2(offset) * 2
            up_feat = _upsample2(feat)
    offset = torch.cat([feat, ref[0]], dim=1)
    offset = lrelu_(conv(p, f"{name}.cas_offset_conv2", lrelu_(conv(p, f"{name}.cas_offset_conv1", offset))))
    return lrelu_(dcnv2_pack(p, f"{name}.cas_dcnpack", feat, offset, record))


# --- net_CR_RDN.py ---------------------------------------------------------------------------------------------------


def align_feature(p: OfficialParams, name: str, src: torch.Tensor, ref: torch.Tensor, record: list | None
                  ) -> torch.Tensor:
    """``Align_Feature.forward(src_feature, ref_feature)``: 3-level pyramids, FPN top-down, PCD (its lrelu is a
    ReLU, in place on fresh conv outputs only)."""
    relu_ = torch.relu_

    def pyramid(side: str, l1: torch.Tensor) -> list[torch.Tensor]:
        l2 = relu_(conv(p, f"{name}.{side}_L2_conv1", l1, stride=2))
        l3 = relu_(conv(p, f"{name}.{side}_L3_conv1", l2, stride=2))
        l3 = relu_(conv(p, f"{name}.{side}_toplayer", l3))
        l2 = conv(p, f"{name}.{side}_smooth1", _upsample2(l3) + conv(p, f"{name}.{side}_latlayer1", l2))
        l1 = conv(p, f"{name}.{side}_smooth2", _upsample2(l2) + conv(p, f"{name}.{side}_latlayer2", l1))
        return [l1.clone(), l2.clone(), l3.clone()]

    return pcd_alignment(p, f"{name}.pcd_align", pyramid("src", src), pyramid("ref", ref), record)


def pixel_reshuffle(x: torch.Tensor, r: int) -> torch.Tensor:
    """The official space-to-depth: (B, C, H, W) → (B, C·r², H/r, W/r), channel c·r² + i·r + j."""
    b, c, h, w = x.shape
    v = x.contiguous().view(b, c, h // r, r, w // r, r)
    return v.permute(0, 1, 3, 5, 2, 4).contiguous().view(b, c * r * r, h // r, w // r)


def wide_act_res_block(p: OfficialParams, name: str, x: torch.Tensor) -> torch.Tensor:
    """``model/arch_util.WideActResBlock``: wn 1×1 expand, ReLU(inplace), wn 1×1 reduce, wn 3×3; res += x."""
    res = wn_conv(p, f"{name}.body.0", x)
    res = torch.relu_(res)
    res = wn_conv(p, f"{name}.body.2", res)
    res = wn_conv(p, f"{name}.body.3", res) * 1  # res_scale = 1
    res += x
    return res


def _count(p: OfficialParams, prefix: str, suffix: str) -> int:
    n = 0
    while p.has(f"{prefix}.{n}.{suffix}"):
        n += 1
    return n


def sfe_module(p: OfficialParams, name: str, x: torch.Tensor) -> torch.Tensor:
    for i in range(_count(p, name, "body.0.weight_g")):
        x = wide_act_res_block(p, f"{name}.{i}", x)
    return x


def window_partition(x: torch.Tensor, ws: int) -> torch.Tensor:
    b, h, w, c = x.shape
    x = x.view(b, h // ws, ws, w // ws, ws, c)
    return x.permute(0, 1, 3, 2, 4, 5).contiguous().view(-1, ws, ws, c)


def window_reverse(windows: torch.Tensor, ws: int, h: int, w: int) -> torch.Tensor:
    b = int(windows.shape[0] / (h * w / ws / ws))
    x = windows.view(b, h // ws, w // ws, ws, ws, -1)
    return x.permute(0, 1, 3, 2, 4, 5).contiguous().view(b, h, w, -1)


def official_relative_position_index(ws: int) -> torch.Tensor:
    """The buffer ``WindowAttention.__init__`` registers (persistent: it is in every official checkpoint)."""
    coords = torch.stack(torch.meshgrid([torch.arange(ws), torch.arange(ws)], indexing="ij"))
    flat = torch.flatten(coords, 1)
    rel = (flat[:, :, None] - flat[:, None, :]).permute(1, 2, 0).contiguous()
    rel[:, :, 0] += ws - 1
    rel[:, :, 1] += ws - 1
    rel[:, :, 0] *= 2 * ws - 1
    return rel.sum(-1)


def official_attn_mask(h: int, w: int, ws: int, shift: int) -> torch.Tensor:
    """The ``attn_mask`` buffer ``SwinTransformerBlock.__init__`` registers for a shifted block at (h, w)."""
    img_mask = torch.zeros((1, h, w, 1))
    slices = (slice(0, -ws), slice(-ws, -shift), slice(-shift, None))
    cnt = 0
    for hs in slices:
        for wsl in slices:
            img_mask[:, hs, wsl, :] = cnt
            cnt += 1
    mask_windows = window_partition(img_mask, ws).view(-1, ws * ws)
    attn_mask = mask_windows.unsqueeze(1) - mask_windows.unsqueeze(2)
    return attn_mask.masked_fill(attn_mask != 0, (-100.0)).masked_fill(attn_mask == 0, 0.0)


def official_buffers(num_blocks: int, window: int, feat_hw: tuple[int, int]) -> dict[str, torch.Tensor]:
    """The persistent buffers an official checkpoint carries besides the parameters (for ``input_size`` = 2·feat)."""
    out = {}
    h, w = feat_hw
    for i in range(num_blocks):
        prefix = f"RDBs.{i}.SwinTransformerBlock"
        ws, shift = window, 0 if i % 2 == 0 else window // 2
        if min(h, w) <= ws:
            ws, shift = min(h, w), 0
        out[f"{prefix}.attn.relative_position_index"] = official_relative_position_index(ws)
        if shift > 0:
            out[f"{prefix}.attn_mask"] = official_attn_mask(h, w, ws, shift)
    return out


def window_attention(
    p: OfficialParams, name: str, x: torch.Tensor, x_sar: torch.Tensor, mask: torch.Tensor | None, ws: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """``WindowAttention.forward([x, x_SAR], mask)`` (dropouts are 0)."""
    table = p(f"{name}.relative_position_bias_table")
    heads = table.shape[1]
    b_, n, c = x.shape
    qkv = linear(p, f"{name}.qkv", x).reshape(b_, n, 3, heads, c // heads).permute(2, 0, 3, 1, 4).contiguous()
    qkv_sar = linear(p, f"{name}.qkv_SAR", x_sar).reshape(b_, n, 3, heads, c // heads).permute(2, 0, 3, 1, 4)
    qkv_sar = qkv_sar.contiguous()
    q, k, v = qkv[0], qkv[1], qkv[2]
    q_sar, k_sar, v_sar = qkv_sar[0], qkv_sar[1], qkv_sar[2]
    scale = (c // heads) ** -0.5
    q = q * scale
    q_sar = q_sar * scale
    attn = q @ k.transpose(-2, -1)
    attn_sar = q_sar @ k_sar.transpose(-2, -1)
    index = p(f"{name}.relative_position_index")
    bias = table[index.view(-1)].view(ws * ws, ws * ws, -1).permute(2, 0, 1).contiguous()
    attn = attn + bias.unsqueeze(0)
    attn_sar = attn_sar + bias.unsqueeze(0)
    if mask is not None:
        nw = mask.shape[0]
        attn = (attn.view(b_ // nw, nw, heads, n, n) + mask.unsqueeze(1).unsqueeze(0)).view(-1, heads, n, n)
        attn_sar = (attn_sar.view(b_ // nw, nw, heads, n, n) + mask.unsqueeze(1).unsqueeze(0)).view(-1, heads, n, n)
    gate = torch.sigmoid(conv(p, f"{name}.attn_fuse_1x1conv", attn_sar - attn))
    attn = attn + (attn_sar - attn) * gate
    attn = torch.softmax(attn, dim=-1)
    attn_sar = torch.softmax(attn_sar, dim=-1)
    x = linear(p, f"{name}.proj", (attn @ v).transpose(1, 2).reshape(b_, n, c))
    x_sar = linear(p, f"{name}.proj_SAR", (attn_sar @ v_sar).transpose(1, 2).reshape(b_, n, c))
    return x, x_sar


def mlp(p: OfficialParams, name: str, x: torch.Tensor) -> torch.Tensor:
    return linear(p, f"{name}.fc2", F.gelu(linear(p, f"{name}.fc1", x)))


def swin_block(
    p: OfficialParams, name: str, x: torch.Tensor, x_sar: torch.Tensor, h: int, w: int, shift: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """``SwinTransformerBlock.forward([x, x_SAR])`` on (B, H·W, C) tokens, with the stored ``attn_mask``."""
    ws = (math.isqrt(p(f"{name}.attn.relative_position_bias_table").shape[0]) + 1) // 2
    if min(h, w) <= ws:  # the constructor's rule
        shift, ws = 0, min(h, w)
    mask = p(f"{name}.attn_mask") if shift > 0 else None
    b, length, c = x.shape
    assert length == h * w, "input feature has wrong size"
    shortcut, shortcut_sar = x, x_sar
    x = layer_norm(p, f"{name}.norm1", x).view(b, h, w, c)
    x_sar = layer_norm(p, f"{name}.norm1_SAR", x_sar).view(b, h, w, c)
    if shift > 0:
        x = torch.roll(x, shifts=(-shift, -shift), dims=(1, 2))
        x_sar = torch.roll(x_sar, shifts=(-shift, -shift), dims=(1, 2))
    xw = window_partition(x, ws).view(-1, ws * ws, c)
    sw = window_partition(x_sar, ws).view(-1, ws * ws, c)
    aw, asw = window_attention(p, f"{name}.attn", xw, sw, mask, ws)
    x = window_reverse(aw.view(-1, ws, ws, c), ws, h, w)
    x_sar = window_reverse(asw.view(-1, ws, ws, c), ws, h, w)
    if shift > 0:
        x = torch.roll(x, shifts=(shift, shift), dims=(1, 2))
        x_sar = torch.roll(x_sar, shifts=(shift, shift), dims=(1, 2))
    x = shortcut + x.view(b, h * w, c)
    x = x + mlp(p, f"{name}.mlp", layer_norm(p, f"{name}.norm2", x))
    x_sar = shortcut_sar + x_sar.view(b, h * w, c)
    x_sar = x_sar + mlp(p, f"{name}.mlp_SAR", layer_norm(p, f"{name}.norm2_SAR", x_sar))
    return x, x_sar


def rdb(p: OfficialParams, name: str, x: torch.Tensor, x_sar: torch.Tensor, shift: int
        ) -> tuple[torch.Tensor, torch.Tensor]:
    """``RDB.forward([x, x_SAR])``: dense layers per stream, LFF, one dual Swin layer on tokens, + input."""
    xc, sc = x, x_sar
    for c in range(_count(p, f"{name}.convs", "conv.0.weight")):
        new_x = torch.relu(conv(p, f"{name}.convs.{c}.conv.0", xc))
        new_s = torch.relu(conv(p, f"{name}.convs.{c}.conv_SAR.0", sc))
        xc, sc = torch.cat((xc, new_x), 1), torch.cat((sc, new_s), 1)
    lff = conv(p, f"{name}.LFF", xc)
    lff_sar = conv(p, f"{name}.LFF_SAR", sc)
    b, dim, h, w = lff.shape
    t, ts = swin_block(p, f"{name}.SwinTransformerBlock", lff.flatten(2).transpose(1, 2),
                       lff_sar.flatten(2).transpose(1, 2), h, w, shift)
    return t.transpose(1, 2).view(b, dim, h, w) + x, ts.transpose(1, 2).view(b, dim, h, w) + x_sar


def dfg(p: OfficialParams, name: str, opt: torch.Tensor, sar: torch.Tensor) -> torch.Tensor:
    """``DFG.forward``: df_conv 3×3, two df_resnet_blocks, df_conv 1×1 (each df_conv = conv + LeakyReLU(0.1))."""
    out = lrelu_(conv(p, f"{name}.fac_warp.0.0", torch.cat([opt, sar], 1)))
    for i in (1, 2):
        stem = lrelu_(conv(p, f"{name}.fac_warp.{i}.stem.0", out))
        out = conv(p, f"{name}.fac_warp.{i}.stem.2", stem) + out
    return lrelu_(conv(p, f"{name}.fac_warp.3.0", out))


def kernel2d_conv(feat_in: torch.Tensor, kernel: torch.Tensor, ksize: int) -> torch.Tensor:
    """``submodules.kernel2d_conv``: per-pixel ksize×ksize filters, replicate padding, via unfold."""
    channels = feat_in.size(1)
    n, _, h, w = kernel.size()
    pad = (ksize - 1) // 2
    feat_in = F.pad(feat_in, (pad, pad, pad, pad), mode="replicate")
    feat_in = feat_in.unfold(2, ksize, 1).unfold(3, ksize, 1)
    feat_in = feat_in.permute(0, 2, 3, 1, 5, 4).contiguous().reshape(n, h, w, channels, -1)
    kernel = kernel.permute(0, 2, 3, 1).contiguous().reshape(n, h, w, channels, ksize, ksize)
    kernel = kernel.permute(0, 1, 2, 3, 5, 4).contiguous().reshape(n, h, w, channels, -1)
    return torch.sum(feat_in * kernel, -1).permute(0, 3, 1, 2).contiguous()


def fuse(p: OfficialParams, opt: torch.Tensor, sar: torch.Tensor, i: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``RDN_residual_CR.fuse`` (SLFC): dynamic-filtered SAR, then the two sigmoid gates."""
    kernel_sar = dfg(p, f"DF.{i}", opt, sar)
    ks = math.isqrt(kernel_sar.shape[1] // sar.shape[1])
    sar_m = kernel2d_conv(sar, kernel_sar, ks)
    gate = torch.sigmoid(conv(p, f"sar_fuse_1x1conv.{i}", sar_m - opt))
    new_opt = opt + (sar_m - opt) * gate
    gate = torch.sigmoid(conv(p, f"opt_distribute_1x1conv.{i}", new_opt - sar_m))
    new_sar = sar + (new_opt - sar_m) * gate
    return new_opt, new_sar


def official_forward(
    p: OfficialParams,
    cloudy: torch.Tensor,
    sar: torch.Tensor,
    *,
    skip_relu_in_place: bool = True,
    record: list | None = None,
) -> torch.Tensor:
    """``RDN_residual_CR.forward(cloudy_data, SAR)``; SAR already on the optical grid, as the official loader gives it.

    ``skip_relu_in_place``: True is the official forward (the in-place ReLU rewrites ``f__1`` before the skip);
    False keeps the raw ``SFE_conv`` output for the skip (the behaviour the official code does NOT have).
    ``record`` collects (DCN name, mean |offset|) for every deformable conv that ran.
    """
    f1 = conv(p, "SFE_conv", pixel_reshuffle(cloudy, 2))
    if not skip_relu_in_place:
        f1 = f1.clone()  # only the copy given to SFE_module is rectified
        x = sfe_module(p, "SFE_module", torch.relu(f1))
    else:
        x = sfe_module(p, "SFE_module", torch.relu_(f1))  # self.lrelu = nn.ReLU(inplace=True): f1 changes too
    f1_sar = conv(p, "SFE_conv_SAR", pixel_reshuffle(sar, 2))
    x_sar = sfe_module(p, "SFE_module_SAR", torch.relu_(f1_sar))
    num_blocks = _count(p, "RDBs", "LFF.weight")
    ws = (math.isqrt(p("RDBs.0.SwinTransformerBlock.attn.relative_position_bias_table").shape[0]) + 1) // 2
    outs = []
    for i in range(num_blocks):
        x_sar = align_feature(p, f"SFAlign.{i}", x_sar, x, record)
        x, x_sar = rdb(p, f"RDBs.{i}", x, x_sar, 0 if i % 2 == 0 else ws // 2)
        x, x_sar = fuse(p, x, x_sar, i)
        outs.append(x)
    x = conv(p, "GFF.1", conv(p, "GFF.0", torch.cat(outs, 1)))
    x += f1
    up = conv(p, "UPNet.2", F.pixel_shuffle(conv(p, "UPNet.0", x), 2))
    return up + cloudy
