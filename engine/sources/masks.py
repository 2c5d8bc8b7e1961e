"""Interpreting user-supplied cloud-mask rasters.

Accepted: a single band where non-zero = cloud (1 = cloud, as the M3R-CR ``.npy`` masks and Fmask-style
binary masks); or a Planet UDM2 asset (8 bands: clear, snow, shadow, light haze, heavy haze, cloud,
confidence, udm1), where cloud ∪ shadow ∪ heavy haze counts as "cloud" — those are the pixels whose surface
signal is lost and must be reconstructed from SAR.
"""

from __future__ import annotations

import numpy as np

UDM2_BANDS = ("clear", "snow", "shadow", "light_haze", "heavy_haze", "cloud", "confidence", "udm1")
UDM2_CLOUDY = ("cloud", "shadow", "heavy_haze")


def cloud_mask_from_bands(array: np.ndarray, nodata: float | None = None) -> np.ndarray:
    """(bands, H, W) or (H, W) mask raster → boolean (H, W), True = cloud (or shadow / heavy haze for UDM2)."""
    a = np.asarray(array)
    if a.ndim == 2:
        a = a[None]
    if a.shape[0] == 1:
        band = a[0]
        out = band != 0
        if nodata is not None:
            out &= band != nodata
        return out
    if a.shape[0] == len(UDM2_BANDS):
        out = np.zeros(a.shape[1:], dtype=bool)
        for name in UDM2_CLOUDY:
            out |= a[UDM2_BANDS.index(name)] > 0
        return out
    raise ValueError(
        f"a cloud mask must have 1 band (1 = cloud) or be a Planet UDM2 asset (8 bands); this one has {a.shape[0]}"
    )
