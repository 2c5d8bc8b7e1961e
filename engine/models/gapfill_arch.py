"""``gapfill``: linear temporal gap-filling (Cresson et al. 2022, §3.3) behind the registry's temporal contract.

It is the deterministic baseline the paper compares its networks with: no weights, no SAR, the image at ``t`` is
only used for its clear pixels when a cloud mask is given. The maths is :func:`engine.gapfill.linear_gapfill`.

Contract (same as ``msop-unet``, plus dates): ``forward(optical, sar, *, optical_prev, sar_prev, optical_next,
sar_next, t_prev, t, t_next, cloud_mask=None)``. SAR inputs are accepted and ignored so a caller can feed every
temporal model the same way. Dates are seconds since the epoch (floats or (N,) tensors) or datetimes — read them
with :func:`engine.dates.read_acquisition_date`. ``cloud_mask`` (N, 1, H, W), 1 = cloud: fill only those pixels
(``cfg.fill_only_cloudy``); without it the whole image is interpolated.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

import torch
from torch import nn

from engine.errors import InputError
from engine.gapfill import linear_gapfill
from engine.models.registry import register_model
from engine.models.unet_arch import check_temporal_inputs

DateLike = datetime | float | torch.Tensor


@dataclass(frozen=True)
class GapfillConfig:
    in_bands: int = 4
    sar_bands: int = 2
    fill_only_cloudy: bool = True


@register_model(
    "gapfill",
    GapfillConfig(),
    "Linear temporal gap-filling between cloud-free images before and after (Cresson 2022 baseline). "
    "No weights; needs the extra dates and their acquisition times.",
    needs_weights=False,
)
class LinearGapfill(nn.Module):
    temporal_inputs = ("prev", "next")
    needs_dates = True
    uses_sar = False  # the engine need not supply sar_prev / sar_next, and SAR gaps do not limit the fill
    any_bands = True  # per-band arithmetic: it takes whatever --bands lists (cfg.in_bands is only the default)

    def __init__(self, cfg: GapfillConfig) -> None:
        super().__init__()
        self.cfg = cfg

    def forward(
        self,
        optical: torch.Tensor,
        sar: torch.Tensor | None = None,
        *,
        optical_prev: torch.Tensor | None = None,
        sar_prev: torch.Tensor | None = None,
        optical_next: torch.Tensor | None = None,
        sar_next: torch.Tensor | None = None,
        t_prev: DateLike | None = None,
        t: DateLike | None = None,
        t_next: DateLike | None = None,
        cloud_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        check_temporal_inputs({"optical_prev": optical_prev, "optical_next": optical_next}, optical)
        if t_prev is None or t is None or t_next is None:
            raise InputError("gap-filling needs the acquisition dates of the three images (t_prev, t, t_next)")
        assert optical_prev is not None and optical_next is not None
        use_mask = cloud_mask is not None and self.cfg.fill_only_cloudy
        return linear_gapfill(
            optical_prev,
            optical_next,
            t_prev,
            t,
            t_next,
            cloudy=optical if use_mask else None,
            mask=cloud_mask if use_mask else None,
        )
