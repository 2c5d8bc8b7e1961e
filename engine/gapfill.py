"""Linear temporal gap-filling (Cresson et al. 2022, §3.3, after Inglada et al. 2015) and acquisition dates.

The estimate at date ``t`` from two cloud-free images at ``t_prev < t < t_next`` is (paper eq. 1)

    x_t = x_prev + (x_next − x_prev) · (t − t_prev) / (t_next − t_prev)

with timestamps in seconds. It uses neither SAR nor the image at ``t``; a product, though, should not replace
the clear pixels of the cloudy image, so when a cloud mask is given only the cloudy pixels are filled (the clear
ones are copied from the image at ``t``). Without a mask the whole image is interpolated, as in the paper.

Acquisition dates come from the raster's metadata (:mod:`engine.dates`, re-exported here).
"""

from __future__ import annotations

from datetime import datetime

import numpy as np
import torch

from engine.dates import DATE_TAGS, dataset_acquisition_date, parse_datetime, read_acquisition_date
from engine.errors import InputError

__all__ = ["DATE_TAGS", "dataset_acquisition_date", "interpolation_weight", "linear_gapfill", "parse_datetime",
           "read_acquisition_date"]

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
