"""``identity``: returns the cloudy input unchanged.

It is the paper's "Cloudy" row (Tab. II) — the honest baseline every trained model must beat — and it lets
the whole raster path run end to end without weights.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from engine.models.registry import register_model


@dataclass(frozen=True)
class IdentityConfig:
    in_bands: int = 4
    sar_bands: int = 2


@register_model(
    "identity",
    IdentityConfig(),
    "Baseline: returns the cloudy input (the paper's 'Cloudy' row). Needs no weights.",
    needs_weights=False,
)
class Identity(nn.Module):
    def __init__(self, cfg: IdentityConfig) -> None:
        super().__init__()
        self.cfg = cfg

    def forward(self, optical: torch.Tensor, sar: torch.Tensor) -> torch.Tensor:
        return optical.clone()
