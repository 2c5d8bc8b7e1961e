"""``gapfill``: linear temporal gap-filling (Cresson et al. 2022, §3.3) behind the registry's temporal contract.

It is the deterministic baseline the paper compares its networks with: no weights, no SAR, the image at ``t`` is
only used for its clear pixels when a cloud mask is given. The maths is here too (:func:`linear_gapfill`, paper eq. 1,
after Inglada et al. 2015):

    x_t = x_prev + (x_next − x_prev) · (t − t_prev) / (t_next − t_prev)

with timestamps in seconds; it is also what ``engine.align.temporal`` weighs the extra dates with.

Contract (same as ``msop-unet``, plus dates): ``forward(optical, sar, *, optical_prev, sar_prev, optical_next,
sar_next, t_prev, t, t_next, cloud_mask=None)``. SAR inputs are accepted and ignored so a caller can feed every
temporal model the same way. Dates are seconds since the epoch (floats or (N,) tensors) or datetimes — read them
with :func:`engine.sources.dates.read_acquisition_date`. ``cloud_mask`` (N, 1, H, W), 1 = cloud: fill only those pixels
(``cfg.fill_only_cloudy``); without it the whole image is interpolated.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

import numpy as np
import torch
from torch import nn

from engine.errors import InputError
from engine.models.registry import register_model
from engine.models.unet_arch import check_temporal_inputs

DateLike = datetime | float | torch.Tensor
ArrayLike = np.ndarray | torch.Tensor


def _seconds(t: datetime | float | ArrayLike) -> float | ArrayLike:
    return t.timestamp() if isinstance(t, datetime) else t


def interpolation_weight(
    t_prev: datetime | float | ArrayLike, t: datetime | float | ArrayLike, t_next: datetime | float | ArrayLike
) -> float | ArrayLike:
    """(t − t_prev) / (t_next − t_prev); datetimes or seconds (scalars, or per-sample arrays/tensors)."""
    tp, tc, tn = _seconds(t_prev), _seconds(t), _seconds(t_next)
    span = tn - tp
    if np.any(np.asarray(span if not isinstance(span, torch.Tensor) else span.detach().cpu()) <= 0):
        raise InputError("gap-filling needs the 'previous' image to be acquired strictly before the 'next' one")
    return (tc - tp) / span


def linear_gapfill(
    prev: ArrayLike,
    next: ArrayLike,  # noqa: A002 - the paper's name for the image at t+1
    t_prev: datetime | float | ArrayLike,
    t: datetime | float | ArrayLike,
    t_next: datetime | float | ArrayLike,
    cloudy: ArrayLike | None = None,
    mask: ArrayLike | None = None,
) -> ArrayLike:
    """Linear interpolation in time between two cloud-free images (paper eq. 1), numpy or torch.

    ``prev``/``next``: (..., C, H, W) images at ``t_prev``/``t_next``. Dates: datetimes or seconds; for batches a
    (N,) array/tensor broadcasts over (N, C, H, W). ``cloudy`` + ``mask`` (True/1 = cloud, broadcastable to the
    images, e.g. (N, 1, H, W) or (H, W)): only masked pixels are filled, the others come from ``cloudy``.
    ``t`` outside [t_prev, t_next] extrapolates linearly (no clipping), as the formula does. Integer inputs are
    interpolated (and returned) in floating point; rounding back to the file's dtype is the caller's choice.
    """
    if prev.shape != next.shape:
        raise InputError(f"gap-filling needs two images of one shape, got {tuple(prev.shape)} and {tuple(next.shape)}")
    # integer images (uint16 DN) would wrap around in ``next - prev``: interpolate in floating point
    if isinstance(prev, torch.Tensor):
        if not prev.is_floating_point():
            prev, next = prev.float(), next.float()
    elif np.asarray(prev).dtype.kind not in "f":
        prev, next = np.asarray(prev, np.float64), np.asarray(next, np.float64)
    w = interpolation_weight(t_prev, t, t_next)
    if not isinstance(w, float):
        extra = prev.ndim - w.ndim
        w = w.reshape(tuple(w.shape) + (1,) * extra)
        if isinstance(prev, torch.Tensor):
            w = torch.as_tensor(w, dtype=prev.dtype, device=prev.device)
        else:
            w = np.asarray(w, dtype=prev.dtype)
    out = prev + (next - prev) * w
    if mask is None:
        return out
    if cloudy is None:
        raise InputError("a cloud mask was given without the cloudy image whose clear pixels it should keep")
    if isinstance(out, torch.Tensor):
        m = torch.as_tensor(mask, device=out.device).bool()
        return torch.where(m, out, torch.as_tensor(cloudy, dtype=out.dtype, device=out.device))
    return np.where(np.asarray(mask).astype(bool), out, np.asarray(cloudy, dtype=out.dtype))



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
