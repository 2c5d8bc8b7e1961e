"""DSen2-CR (Meraner et al. 2020, §3.3): a plain residual network fusing SAR and optical — the paper's baseline.

concat(optical, SAR) → conv3×3 + ReLU → B residual blocks (conv3×3, ReLU, conv3×3, ×0.1 residual scaling,
no batch norm) with F features → conv3×3 to the optical bands → + cloudy input (long skip).

Choices: B = 16, F = 256 (18.9 M parameters) as the M3R-CR PyTorch port (``baselines/DSen2-CR/EDSR.py``), whose
module names (``head.0``, ``body.<i>.body.0/2``, ``body.<B>``) we mirror so its checkpoints map key-for-key;
the port concatenates optical first, then SAR, and so do we. The network works on the optical grid, so SAR at
a coarser resolution is upsampled inside the model with pixel-centre nearest (as Align-CR does). The original
paper's input scaling (optical /2000, SAR to [0, 2]) belongs to training recipes; this module expects the
engine's [0, 1] scaling like every registered model.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from engine.errors import ModelError
from engine.models.arch_util import upsample_like
from engine.models.registry import register_model


@dataclass(frozen=True)
class DSen2CRConfig:
    in_bands: int = 4
    sar_bands: int = 2
    num_feat: int = 256  # F
    num_blocks: int = 16  # B
    res_scale: float = 0.1


class _ResBlock(nn.Module):
    """EDSR block with the port's naming: ``body.0`` conv, ``body.1`` ReLU, ``body.2`` conv."""

    def __init__(self, nf: int, res_scale: float) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(nf, nf, 3, padding=1), nn.ReLU(True), nn.Conv2d(nf, nf, 3, padding=1))
        self.res_scale = res_scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x) * self.res_scale


@register_model("dsen2cr", DSen2CRConfig(), "DSen2-CR baseline (Meraner 2020; B=16, F=256; 18.9 M parameters).")
@register_model(
    "dsen2cr-lite", DSen2CRConfig(num_feat=64, num_blocks=4), "DSen2-CR, small CPU/test config (B=4, F=64)."
)
class DSen2CR(nn.Module):
    def __init__(self, cfg: DSen2CRConfig) -> None:
        super().__init__()
        self.cfg = cfg
        f = cfg.num_feat
        self.head = nn.Sequential(nn.Conv2d(cfg.in_bands + cfg.sar_bands, f, 3, padding=1), nn.ReLU(True))
        self.body = nn.Sequential(
            *[_ResBlock(f, cfg.res_scale) for _ in range(cfg.num_blocks)],
            nn.Conv2d(f, cfg.in_bands, 3, padding=1),
        )

    def forward(self, optical: torch.Tensor, sar: torch.Tensor) -> torch.Tensor:
        cfg = self.cfg
        if optical.ndim != 4 or optical.shape[1] != cfg.in_bands:
            raise ModelError(f"optical input must be (N, {cfg.in_bands}, H, W), got {tuple(optical.shape)}")
        if sar is None or sar.ndim != 4 or sar.shape[1] != cfg.sar_bands or sar.shape[0] != optical.shape[0]:
            got = None if sar is None else tuple(sar.shape)
            raise ModelError(f"SAR input must be (N, {cfg.sar_bands}, h, w) matching the optical batch, got {got}")
        sar = upsample_like(sar.to(optical.dtype), optical)
        return optical + self.body(self.head(torch.cat((optical, sar), 1)))
