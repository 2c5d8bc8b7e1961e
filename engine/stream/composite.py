"""Keep the clear pixels: weights that put the model's output only where the cloud mask says so.

Why: the paper scores the network's whole output, but an analyst who has a good cloud mask (Planet UDM2, Fmask)
usually wants the clear pixels of the scene left exactly as they were — they are measurements, the network's
output there is a reconstruction. A hard cut at the mask's edge shows as a seam (the reconstruction and the
original differ a little in radiometry, and masks miss the thin haze at cloud borders), so the weight falls
linearly from 1 on the cloud to 0 at ``feather + 1`` pixels away from it (Euclidean distance), and the output is
``w · model + (1 − w) · input``. ``feather = 0`` is the hard cut (what ``gapfill`` does with its mask).
Without a mask the pipeline takes the clouds :func:`engine.align.cloudmask.detect_clouds` finds on the optical image,
read with the detector's 3-pixel smoothing context added to the halo.

Chunks: the pipeline reads the mask with a halo of ``feather`` pixels around each chunk's output window. Any
cloud pixel closer than ``feather + 1`` to a window pixel lies inside that halo (an integer offset with
``dy² + dx² < (feather + 1)²`` has ``|dy|, |dx| ≤ feather``), so the weights — and the output — do not depend
on how the scene is cut into chunks.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage


def halo_window(x: int, y: int, w: int, h: int, feather: int, width: int, height: int) -> tuple[int, int, int, int]:
    """The window ``(x, y, w, h)`` grown by ``feather`` pixels on each side and clipped to the scene."""
    x0, y0 = max(0, x - feather), max(0, y - feather)
    x1, y1 = min(width, x + w + feather), min(height, y + h + feather)
    return x0, y0, x1 - x0, y1 - y0


def cloud_weight(cloud: np.ndarray, feather: int) -> np.ndarray:
    """float32 weight of the model's output: 1 on ``cloud`` (bool), linear to 0 at ``feather + 1`` px from it."""
    if feather < 0:
        raise ValueError(f"feather must be 0 or more pixels, got {feather}")
    if feather == 0 or not cloud.any():
        return cloud.astype(np.float32)
    distance = ndimage.distance_transform_edt(~cloud)  # 0 on cloud, else the distance to the nearest cloud pixel
    return np.clip(1.0 - distance / (feather + 1), 0.0, 1.0).astype(np.float32)


def mix(prediction: np.ndarray, original: np.ndarray, weight: np.ndarray) -> np.ndarray:
    """``w · prediction + (1 − w) · original`` in float32, exactly ``prediction`` where ``w == 1``."""
    w = weight.astype(np.float32, copy=False)
    p = prediction.astype(np.float32, copy=False)
    return np.where(w >= 1.0, p, w * p + (1.0 - w) * original.astype(np.float32, copy=False))
