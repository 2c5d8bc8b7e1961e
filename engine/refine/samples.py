"""A *sample*: the dict of arrays one training item or one scene window is (cloudy ``optical``, ``sar``, ``mask``,
``target``…; :mod:`training.datasets.base` lists the keys), and the geometry every modality shares.

Why here, under ``refine``: scene adaptation (:mod:`engine.refine.scene_adapt`) crops, flips and clouds a user's
scene windows exactly as training does, so the engine owns these helpers and the training package imports them
(the engine never imports ``training``).

Resolution ratio (decision). M3R-CR pairs 300 optical pixels (3 m) with 90 SAR pixels (10 m): 10 optical px =
3 SAR px. When SAR is kept at its own resolution, a crop is only taken where its boundaries fall on whole SAR
pixels: the optical offset and size must be multiples of 10 (the numerator of the reduced ratio 10/3) and the SAR
window is offset·3/10, size·3/10 (160 optical ↔ 48 SAR, the paper's crop). Nothing is resampled, so the SAR
window covers exactly the optical window's ground footprint and flips/rotations stay exact on both grids. A crop
size that is not a multiple of 10 raises an error instead of silently mis-registering; with ``sar_mode =
"upsample"`` (the official loader's choice: SAR replicated nearest to the optical grid before cropping) any size
works. Ratio 1 (SEN12MS-CR, or upsampled SAR) allows any crop.
"""

from __future__ import annotations

from fractions import Fraction
from typing import Any

import numpy as np

from engine.errors import InputError

Sample = dict[str, Any]


def nearest_resize(a: np.ndarray, out_hw: tuple[int, int]) -> np.ndarray:
    """Nearest resampling of the last two axes at pixel centres: output i takes source floor((i + ½) · in / out).

    That is rasterio's / GDAL's nearest ``out_shape`` read (what the official M3R-CR loader does; checked on the
    real 90 → 300 px sample) and torch's ``interpolate(mode="nearest-exact")``, which the networks use — so SAR
    upsampled here matches what a model's own upsampling of native SAR gives. Integer arithmetic: exact.
    """
    h_in, w_in = a.shape[-2:]
    rows = ((2 * np.arange(out_hw[0]) + 1) * h_in) // (2 * out_hw[0])
    cols = ((2 * np.arange(out_hw[1]) + 1) * w_in) // (2 * out_hw[1])
    return a[..., rows[:, None], cols[None, :]]


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
