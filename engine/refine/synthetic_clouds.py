"""Synthetic clouds with an exact target: a clear image becomes cloudy, and the clear image stays the target.

Real cloudy/clear pairs are days to months apart, so part of their "error" is the landscape changing; a clear image
with clouds laid on it has no such noise: everything the network must undo is the cloud. The generator draws:

* a **shape** — half the time a real cloud mask (the training samples' own masks, the "bank"), else a generated
  one: fractal noise (Gaussian-smoothed white noise summed over octaves) thresholded at a random cover of 10–85 %;
* a **kind** — thick (peak opacity 0.85–1, edges softened over σ = 1–4 px), semi-transparent (0.45–0.85) or thin
  haze (0.12–0.45, edges σ 4–10 px: haze has no sharp outline);
* a **colour** — bright and nearly flat across B, G, R, NIR (level 0.3–0.9 reflectance, blue slightly raised, each
  band ± 5 %), with low-frequency internal texture (± 15 % brightness): real cloud tops are not a flat colour;
* a **shadow** with probability 0.5 — the cloud's opacity shifted 6–30 px in one direction (the sun's), darkening
  the ground to 35–75 % of its reflectance where it does not fall under the cloud itself.

``cloudy = (1 − a)·(ground · (1 − s·(1 − k))) + a·colour``; the mask (1 = cloud or shadow) is ``a > 0.1`` or
``s > 0.1`` — what the paper's loss weights and what the metrics call "inside the cloud". The sample's own mask
(a real triplet's) is kept as well.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from engine.refine.samples import Sample, nearest_resize

KINDS = (("thick", 0.45), ("semi", 0.3), ("haze", 0.25))  # (kind, probability)
MASK_THRESHOLD = 0.1


def fractal_shape(hw: tuple[int, int], rng: np.random.Generator, cover: float | None = None) -> np.ndarray:
    """(H, W) bool cloud shape: multi-octave smoothed noise thresholded at ``cover`` (random 10–85 % if None)."""
    h, w = hw
    field = np.zeros(hw, np.float32)
    base = float(rng.uniform(6.0, 24.0))
    for octave in range(4):
        sigma = base / (2**octave)
        noise = ndimage.gaussian_filter(rng.standard_normal(hw).astype(np.float32), sigma, mode="wrap")
        field += noise / (noise.std() + 1e-8) * (0.55**octave)
    cover = float(rng.uniform(0.10, 0.85)) if cover is None else cover
    return field > np.quantile(field, 1.0 - cover)


def _soft(shape: np.ndarray, sigma: float) -> np.ndarray:
    return np.clip(ndimage.gaussian_filter(shape.astype(np.float32), sigma), 0.0, 1.0)


def _texture(hw: tuple[int, int], rng: np.random.Generator, amount: float) -> np.ndarray:
    t = ndimage.gaussian_filter(rng.standard_normal(hw).astype(np.float32), float(rng.uniform(4.0, 12.0)))
    return 1.0 + amount * t / (np.abs(t).max() + 1e-8)


def _shift(a: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    dist = float(rng.uniform(6.0, 30.0))
    angle = float(rng.uniform(0.0, 2.0 * np.pi))
    return ndimage.shift(a, (dist * np.sin(angle), dist * np.cos(angle)), order=1, mode="constant", cval=0.0)


def opacity(shape: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, str]:
    """Opacity map in [0, 1] of one cloud layer of a random kind over ``shape``."""
    kind = KINDS[int(rng.choice(len(KINDS), p=[p for _, p in KINDS]))][0]
    if kind == "thick":
        peak, sigma = rng.uniform(0.85, 1.0), rng.uniform(1.0, 4.0)
    elif kind == "semi":
        peak, sigma = rng.uniform(0.45, 0.85), rng.uniform(2.0, 6.0)
    else:
        peak, sigma = rng.uniform(0.12, 0.45), rng.uniform(4.0, 10.0)
    a = _soft(shape, float(sigma)) * float(peak) * _texture(shape.shape, rng, 0.15)
    return np.clip(a, 0.0, 1.0).astype(np.float32), kind


def cloud_colour(bands: int, hw: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
    """(bands, H, W) bright, nearly flat cloud-top reflectance with low-frequency texture."""
    level = float(rng.uniform(0.3, 0.9))
    tilt = np.linspace(1.06, 0.97, bands)[:, None, None]  # blue a little brighter than NIR
    jitter = rng.uniform(0.95, 1.05, size=(bands, 1, 1))
    return np.clip(level * tilt * jitter * _texture(hw, rng, 0.15)[None], 0.0, 1.0).astype(np.float32)


def add_clouds(sample: Sample, rng: np.random.Generator, bank: list[np.ndarray] | None = None) -> Sample:
    """The sample with one synthetic cloud layer (and maybe its shadow) over its ``optical`` image."""
    optical = sample["optical"]
    hw = optical.shape[-2:]
    if bank and rng.random() < 0.5:
        shape = bank[int(rng.integers(0, len(bank)))] > 0.5
        shape = _random_window(shape, hw, rng)
    else:
        shape = fractal_shape(hw, rng)
    a, _ = opacity(shape, rng)
    ground = optical
    s = np.zeros(hw, np.float32)
    if rng.random() < 0.5:
        s = np.clip(_shift(a, rng) / max(float(a.max()), 1e-6), 0.0, 1.0) * (1.0 - a)
        darken = float(rng.uniform(0.35, 0.75))
        ground = optical * (1.0 - s * (1.0 - darken))[None]
    cloudy = (1.0 - a)[None] * ground + a[None] * cloud_colour(optical.shape[0], hw, rng)
    out = dict(sample)
    out["optical"] = np.clip(cloudy, 0.0, 1.0).astype(np.float32)
    new = ((a > MASK_THRESHOLD) | (s > MASK_THRESHOLD))[None].astype(np.float32)
    out["mask"] = np.maximum(sample["mask"], new)
    return out


def _random_window(shape: np.ndarray, hw: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
    if shape.shape[0] < hw[0] or shape.shape[1] < hw[1]:
        return nearest_resize(shape.astype(np.uint8), hw).astype(bool)
    y = int(rng.integers(0, shape.shape[0] - hw[0] + 1))
    x = int(rng.integers(0, shape.shape[1] - hw[1] + 1))
    return shape[y : y + hw[0], x : x + hw[1]]
