"""A documented cloud detector for 4-band (B, G, R, NIR) reflectance in [0, 1].

Used when the user gives no cloud mask (metrics "inside clouds", the mask-weighted training losses). DSen2-CR
(§3.4) builds its masks with the Sentinel-2 cloud score of Schmitt et al. (2019) and the cloud-shadow index of
Zhai et al. (2018). Those use SWIR and cirrus bands a PlanetScope scene lacks, so this keeps only their
B/G/R/NIR terms:

* cloud score = min(rescale(B, 0.1, 0.5), rescale(B+G+R, 0.2, 0.8), rescale(NIR, 0.15, 0.5), whiteness term)
  where ``rescale(x, lo, hi) = clip((x - lo) / (hi - lo), 0, 1)`` (Schmitt's brightness terms; NIR stands in
  for NIR+SWIR1+SWIR2 with its range scaled by about a third) and the whiteness term is
  ``1 - rescale(W, 0.1, 0.3)`` with Fmask's whiteness ``W = mean(|band - mean(B,G,R)|) / mean(B,G,R)`` — clouds
  are bright *and* spectrally flat, bright soil or roofs are not flat.
* the score is smoothed with a 7×7 box filter (Schmitt averages too) and thresholded at T_CL = 0.2 (DSen2-CR).
* no shadows: Zhai's cloud-shadow index needs SWIR1, and nothing in the engine used a NIR stand-in for it.

It is deliberately conservative; a real Planet UDM2 or Fmask mask should be preferred when the user has one.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

T_CL = 0.2
SCORE_WINDOW = 7  # the box filter over the cloud score
DETECTOR_HALO = SCORE_WINDOW // 2  # pixels of context a window needs to give the whole image's cloud flags


def _rescale(x: np.ndarray, lo: float, hi: float) -> np.ndarray:
    return np.clip((x - lo) / (hi - lo), 0.0, 1.0)


def cloud_score(optical: np.ndarray) -> np.ndarray:
    """Per-pixel cloud likelihood in [0, 1] for (4, H, W) reflectance in [0, 1], bands B, G, R, NIR."""
    b, g, r, nir = (np.asarray(optical[i], dtype=np.float32) for i in range(4))
    vis = (b + g + r) / 3.0
    whiteness = (np.abs(b - vis) + np.abs(g - vis) + np.abs(r - vis)) / (3.0 * np.maximum(vis, 1e-6))
    score = _rescale(b, 0.1, 0.5)
    score = np.minimum(score, _rescale(b + g + r, 0.2, 0.8))
    score = np.minimum(score, _rescale(nir, 0.15, 0.5))
    score = np.minimum(score, 1.0 - _rescale(whiteness, 0.1, 0.3))
    return ndimage.uniform_filter(score, size=SCORE_WINDOW, mode="nearest")


def detect_clouds(optical: np.ndarray, threshold: float = T_CL) -> np.ndarray:
    """Boolean cloud mask (True = cloud) for (4, H, W) reflectance in [0, 1]."""
    return cloud_score(optical) > threshold


def detect_clouds_scaled(optical: np.ndarray, ok: np.ndarray, scale: float) -> np.ndarray:
    """:func:`detect_clouds` on (4, H, W) values in the file's units (reflectance × ``scale``); pixels where ``ok``
    is False (no data) are never cloud."""
    reflectance = optical.astype(np.float32) / np.float32(scale)
    reflectance[:, ~ok] = 0.0
    return detect_clouds(reflectance) & ok
