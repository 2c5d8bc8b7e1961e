"""The best non-learned estimate of the ground under a cloud: what the residual network starts from.

Why: the two baselines a model must beat (:mod:`.baselines`) are each right in one place — a harmonic ``fill`` near
the cloud's edge, where the ground continues the border's colours, and the ``flat`` clear-pixel colour deep inside,
where the border says little. A network that must learn both from a few dozen scenes learns neither well (issue 26:
the bundled model painted colour casts where ``fill`` scored 7.6 dB more). So the engine computes this estimate
itself and hands it to the network, which only adds what the SAR tells beyond it (``aligncr-res``).

The estimate is a multi-scale *normalised convolution* of the clear pixels (Knutsson & Westin 1993), blended coarse
to fine like a push-pull fill: at each box size ``s`` (:data:`SIZES`, twice-applied box filters ≈ a triangle of
support ``s``), the clear pixels' local mean ``Σ k·c·x / Σ k·c`` replaces the coarser estimate in proportion to how
much clear ground the window holds, ``Σ k·c / (Σ k·c + θ)``; the coarsest estimate is the scene's clear-pixel
median (``flat``). Near the edge the finest windows hold clear ground and the estimate follows the border (as
``fill``); deep inside a large cloud no window reaches clear ground and the estimate is ``flat``. Clear pixels keep
their value.

Every window is finite, so the estimate of a pixel depends only on the pixels within :data:`REACH` of it: a chunk
read with that halo gives the same values as the whole scene (the scene's medians come from one pre-pass).
``distance`` (px to the nearest clear pixel, capped at :data:`REACH`) is the network's second hint: how far the
estimate had to reach.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

# Chosen on the select split (training/configs/aligncr_lite_bundled.toml's, 4 samples; docs/model.md): sizes from
# 5 px and θ 0.005–0.08 followed the border too closely (−0.1 to −0.5 dB under the better baseline), θ 0.15 with
# sizes from 9 px was best (+0.17 dB); never tuned on a report split.
SIZES = (9, 17, 33, 65, 129)  # box sizes, fine → coarse (each applied twice: a triangle of twice the support)
THETA = 0.15  # clear share of a window at which a scale's local mean and the coarser estimate weigh the same
REACH = 2 * (SIZES[-1] // 2)  # px: the largest window's reach, hence the halo a chunk needs


@dataclass(frozen=True)
class PriorInput:
    """For a model that takes the estimate (``prior``) outside the tile loop — scene adaptation's crops, the scene
    check's windows: the scene's clear medians their estimates fall back to, the channels packed after the others."""

    medians: np.ndarray | None


def _box(a: np.ndarray, size: int) -> np.ndarray:
    """A box filter of ``size`` applied twice over the last two axes (zero outside the array: a window that leaves
    the scene just sees less clear ground)."""
    axes = (a.ndim - 2, a.ndim - 1)
    out = ndimage.uniform_filter(a, size=size, axes=axes, mode="constant", cval=0.0)
    return ndimage.uniform_filter(out, size=size, axes=axes, mode="constant", cval=0.0)


def estimate(optical: np.ndarray, clear: np.ndarray, medians: np.ndarray | None,
             sizes: tuple[int, ...] = SIZES, theta: float = THETA) -> np.ndarray:  # fmt: skip
    """The estimate of every pixel of ``optical`` ((bands, H, W) float reflectance) from its ``clear`` ((H, W) bool)
    pixels; ``medians`` ((bands,)) are the scene's clear medians (None: this window's own). Clear pixels are returned
    as they are; without any clear pixel (and no medians) the input is returned."""
    x = np.asarray(optical, dtype=np.float32)
    c = np.asarray(clear, dtype=bool) & np.isfinite(x).all(axis=0)
    if medians is None:
        medians = np.median(x[:, c], axis=1) if c.any() else None
    if medians is None:
        return x.copy()
    est = np.empty_like(x)
    est[:] = np.asarray(medians, dtype=np.float32)[:, None, None]
    cf = c.astype(np.float32)
    xc = np.where(c[None], x, 0.0).astype(np.float32)
    for size in sorted(sizes, reverse=True):  # coarse → fine: each finer scale overrides where it sees ground
        den = _box(cf, size)
        num = _box(xc, size)
        local = num / np.maximum(den, 1e-12)[None]
        weight = (den / (den + np.float32(theta)))[None]
        est = weight * local + (1.0 - weight) * est
    return np.where(c[None], x, est).astype(np.float32)


def distance(clear: np.ndarray, reach: int = REACH) -> np.ndarray:
    """(H, W) float32: px from each pixel to the nearest clear pixel, capped at ``reach`` (0 on clear pixels).
    Computed on the window: a chunk needs a halo of ``reach`` for the capped value to be exact."""
    c = np.asarray(clear, dtype=bool)
    if c.all():
        return np.zeros(c.shape, np.float32)
    if not c.any():
        return np.full(c.shape, float(reach), np.float32)
    return np.minimum(ndimage.distance_transform_edt(~c), reach).astype(np.float32)


def channels(optical: np.ndarray, clear: np.ndarray, medians: np.ndarray | None) -> np.ndarray:
    """The network's ``prior`` input: the estimate's bands and the distance to clear ground over :data:`REACH`
    ((bands + 1, H, W) float32) — the one packing the engine, adaptation and training share."""
    return np.concatenate([estimate(optical, clear, medians), distance(clear)[None] / np.float32(REACH)])
