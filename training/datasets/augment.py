"""Crops, flips, 90° rotations and synthetic clouds applied identically to every modality (and date) of a sample —
the DEM (``dem``, on the optical grid) included.

Resolution ratio (decision). M3R-CR pairs 300 optical pixels (3 m) with 90 SAR pixels (10 m): 10 optical px =
3 SAR px. When SAR is kept at its own resolution, a crop is only taken where its boundaries fall on whole SAR
pixels: the optical offset and size must be multiples of 10 (the numerator of the reduced ratio 10/3) and the SAR
window is offset·3/10, size·3/10 (160 optical ↔ 48 SAR, the paper's crop). Nothing is resampled, so the SAR
window covers exactly the optical window's ground footprint and flips/rotations stay exact on both grids. A crop
size that is not a multiple of 10 raises an error instead of silently mis-registering; with ``sar_mode =
"upsample"`` (the official loader's choice: SAR replicated nearest to the optical grid before cropping) any size
works. Ratio 1 (SEN12MS-CR, or upsampled SAR) allows any crop.

Synthetic clouds (optional, documented in any model card that uses them): a real cloud mask from another sample is
blurred into an opacity map ``a`` (Gaussian σ 2–6 px, peak opacity 0.6–1) and the clear image is blended towards
a bright, nearly flat spectrum ``c`` (0.35–0.85 reflectance per band ± 5 %): ``cloudy = (1 − a)·clear + a·c``;
the new mask is ``a > 0.1`` united with the sample's own mask. It multiplies the few cloudy examples a tiny real
data set offers; it does not model shadows or haze colour.
"""

from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction

import numpy as np
from scipy import ndimage

from engine.errors import InputError
from training.datasets.base import Sample


@dataclass(frozen=True)
class AugmentConfig:
    """How training (or validation) views of a dataset are made; ``crop = 0`` keeps whole images."""

    crop: int = 160
    random_crop: bool = True  # False: centre crop (the official test-time crop)
    flips: bool = True
    rot90: bool = True
    synthetic_clouds: float = 0.0  # probability of adding synthetic clouds from a real mask to a sample
    # "flat": the original bright flat layer shaped by a real mask (add_synthetic_clouds, the first bundled model's);
    # "layers": training.datasets.clouds (thick / semi / haze, textured colour, shadows, real + generated shapes)
    cloud_model: str = "flat"


def sar_ratio(opt_hw: tuple[int, int], sar_hw: tuple[int, int]) -> Fraction:
    """Optical pixels per SAR pixel as an exact fraction (e.g. 10/3); both axes must agree."""
    ry = Fraction(opt_hw[0], sar_hw[0])
    rx = Fraction(opt_hw[1], sar_hw[1])
    if ry != rx:
        raise InputError(f"optical {opt_hw} and SAR {sar_hw} do not share one resolution ratio")
    return ry


def crop_windows(
    opt_hw: tuple[int, int], sar_hw: tuple[int, int], crop: int, rng: np.random.Generator | None
) -> tuple[tuple[int, int, int], tuple[int, int, int]]:
    """((oy, ox, osize), (sy, sx, ssize)) of a crop whose boundaries fall on whole SAR pixels.

    ``rng=None`` gives the centre crop (rounded down to the SAR grid).
    """
    ratio = sar_ratio(opt_hw, sar_hw)
    step_o, step_s = ratio.numerator, ratio.denominator
    if crop % step_o:
        raise InputError(
            f"crop {crop} does not fall on whole SAR pixels (optical/SAR ratio {ratio}): use a multiple of "
            f"{step_o} or sar_mode = 'upsample'"
        )
    if crop > min(opt_hw):
        raise InputError(f"crop {crop} is larger than the image {opt_hw}")
    n_y = (opt_hw[0] - crop) // step_o
    n_x = (opt_hw[1] - crop) // step_o
    if rng is None:
        ky, kx = n_y // 2, n_x // 2
    else:
        ky, kx = int(rng.integers(0, n_y + 1)), int(rng.integers(0, n_x + 1))
    ssize = crop * step_s // step_o
    return (ky * step_o, kx * step_o, crop), (ky * step_s, kx * step_s, ssize)


# arrays on the optical grid and on the SAR grid; the temporal keys (other dates) and the DEM (layout readers warp it
# onto the optical patch grid) are cropped when present
OPTICAL_GRID_KEYS = ("optical", "target", "mask", "landcover", "optical_prev", "optical_next", "dem")
SAR_GRID_KEYS = ("sar", "sar_prev", "sar_next")


def crop_sample(sample: Sample, crop: int, rng: np.random.Generator | None) -> Sample:
    """Crop every modality (and every date) of a sample to the same ground window."""
    opt_hw = sample["optical"].shape[-2:]
    sar_hw = sample["sar"].shape[-2:]
    for key in OPTICAL_GRID_KEYS + SAR_GRID_KEYS:
        want = opt_hw if key in OPTICAL_GRID_KEYS else sar_hw
        if key in sample and sample[key].shape[-2:] != want:
            raise InputError(f"'{key}' is {sample[key].shape[-2:]} pixels where the sample's grid is {want}")
    (oy, ox, os_), (sy, sx, ss) = crop_windows(opt_hw, sar_hw, crop, rng)
    out = dict(sample)
    for key in OPTICAL_GRID_KEYS:
        if key in sample:
            out[key] = sample[key][..., oy : oy + os_, ox : ox + os_]
    for key in SAR_GRID_KEYS:
        if key in sample:
            out[key] = sample[key][..., sy : sy + ss, sx : sx + ss]
    return out


def flip_rotate(sample: Sample, rng: np.random.Generator, flips: bool = True, rot90: bool = True) -> Sample:
    """Random horizontal/vertical flip and k·90° rotation, the same for every image (every modality and date; square
    crops for rot90). Scalars (``id``, acquisition times) are left alone."""
    hflip = flips and bool(rng.integers(0, 2))
    vflip = flips and bool(rng.integers(0, 2))
    k = int(rng.integers(0, 4)) if rot90 else 0
    out = dict(sample)
    for key, a in sample.items():
        if key == "id" or np.ndim(a) < 2:
            continue
        if hflip:
            a = np.flip(a, axis=-1)
        if vflip:
            a = np.flip(a, axis=-2)
        if k:
            a = np.rot90(a, k, axes=(a.ndim - 2, a.ndim - 1))
        out[key] = np.ascontiguousarray(a)
    return out


def add_synthetic_clouds(sample: Sample, cloud_mask: np.ndarray, rng: np.random.Generator) -> Sample:
    """Blend a bright cloud layer shaped by a real (H, W) mask into the sample's cloudy image (see module doc)."""
    optical = sample["optical"]
    h, w = optical.shape[-2:]
    mask = np.asarray(cloud_mask, dtype=np.float32)
    if mask.shape != (h, w):
        from training.datasets.base import nearest_resize

        mask = nearest_resize(mask, (h, w))
    alpha = ndimage.gaussian_filter(mask, sigma=float(rng.uniform(2.0, 6.0)))
    alpha = np.clip(alpha * float(rng.uniform(0.6, 1.0)), 0.0, 1.0).astype(np.float32)
    level = float(rng.uniform(0.35, 0.85))
    colour = (level * rng.uniform(0.95, 1.05, size=(optical.shape[0], 1, 1))).astype(np.float32)
    out = dict(sample)
    out["optical"] = np.clip((1.0 - alpha) * optical + alpha * colour, 0.0, 1.0).astype(np.float32)
    out["mask"] = np.maximum(sample["mask"], (alpha > 0.1)[None].astype(np.float32))
    return out
