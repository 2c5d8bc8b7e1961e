"""Crops, flips, 90° rotations and synthetic clouds applied identically to every modality (and date) of a sample —
the DEM (``dem``, on the optical grid) included.

Crops keep whole SAR pixels (:mod:`engine.refine.samples` says how).

Synthetic clouds (optional, documented in any model card that uses them): a real cloud mask from another sample is
blurred into an opacity map ``a`` (Gaussian σ 2–6 px, peak opacity 0.6–1) and the clear image is blended towards
a bright, nearly flat spectrum ``c`` (0.35–0.85 reflectance per band ± 5 %): ``cloudy = (1 − a)·clear + a·c``;
the new mask is ``a > 0.1`` united with the sample's own mask. It multiplies the few cloudy examples a tiny real
data set offers; it does not model shadows or haze colour.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from engine.refine.samples import Sample, nearest_resize


@dataclass(frozen=True)
class AugmentConfig:
    """How training (or validation) views of a dataset are made; ``crop = 0`` keeps whole images."""

    crop: int = 160
    random_crop: bool = True  # False: centre crop (the official test-time crop)
    flips: bool = True
    rot90: bool = True
    synthetic_clouds: float = 0.0  # probability of adding synthetic clouds from a real mask to a sample
    # "flat": the original bright flat layer shaped by a real mask (add_synthetic_clouds, the first bundled model's);
    # "layers": engine.refine.synthetic_clouds (thick / semi / haze, textured colour, shadows, real + generated shapes)
    cloud_model: str = "flat"
    # a split of training.datasets.cloud_bank ("train", "select", "report"): half the synthetic clouds are then real
    # cloud layers of that split pasted instead of the generator's ("" = the generator only)
    cloud_bank: str = ""



def add_synthetic_clouds(sample: Sample, cloud_mask: np.ndarray, rng: np.random.Generator) -> Sample:
    """Blend a bright cloud layer shaped by a real (H, W) mask into the sample's cloudy image (see module doc)."""
    optical = sample["optical"]
    h, w = optical.shape[-2:]
    mask = np.asarray(cloud_mask, dtype=np.float32)
    if mask.shape != (h, w):
        mask = nearest_resize(mask, (h, w))
    alpha = ndimage.gaussian_filter(mask, sigma=float(rng.uniform(2.0, 6.0)))
    alpha = np.clip(alpha * float(rng.uniform(0.6, 1.0)), 0.0, 1.0).astype(np.float32)
    level = float(rng.uniform(0.35, 0.85))
    colour = (level * rng.uniform(0.95, 1.05, size=(optical.shape[0], 1, 1))).astype(np.float32)
    out = dict(sample)
    out["optical"] = np.clip((1.0 - alpha) * optical + alpha * colour, 0.0, 1.0).astype(np.float32)
    out["mask"] = np.maximum(sample["mask"], (alpha > 0.1)[None].astype(np.float32))
    return out
