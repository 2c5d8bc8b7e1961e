"""Colour anchor: take the network's colour drift out of the deep inside of each cloud, against the scene's clear
ground, and leave its texture and the cloud's edge alone.

Why (measured; ``resources/weights/README.md``, *Colour anchor*): the bundled network sees the clear pixels near
a cloud's edge, but deep inside a large cloud its receptive field holds only cloud and SAR, and it paints the colour
of its training scenes there (the orange/purple casts of issue 13). Its texture is worth keeping — shifting its
in-cloud mean to the clear pixels' median turns a −3.0 dB margin under the best non-learned baseline into +0.5 dB
on the synthetic report split — but a constant shift draws the cloud's outline (the network is right at the edge).

The model: inside the cloud the output's deviation from the clear pixels' per-band median is a per-band drift
``β · r(d)``, ``r(d) = 1 − exp(−d / τ)``, with ``d`` the distance (px) to the nearest pixel that is not cloud.
``β`` is the least-squares fit over every cloud pixel the model wrote, and ``β · r(d)`` is subtracted: 0 at the
edge (no seam), the full ``β`` a few ``τ`` inside. Its one assumption is the ``flat`` baseline's — the ground
under the cloud has, on average, the clear ground's colour — so it is an option (``--colour-anchor``), not the
default: a cloud that covers a lake, or a cloud mask that leaves haze in the "clear" pixels, breaks it.

``τ`` = :data:`TAU_PX` was chosen on the select split's images (synthetic clouds, 16 draws; ``τ`` = 1, 2, 4, 8,
16, 32, 64 px and a constant shift were tried), never on the report split.

Chunks: ``d`` is capped at :data:`REACH_PX` (where ``r`` is within 4·10⁻⁴ of 1), so a cloud read with that halo
gives every pixel the same ``r`` whatever the chunking. ``β`` needs the whole scene: the pipeline accumulates
:class:`DriftStats` while it streams the output, then rewrites it once with the shift (:func:`shifted`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage

from engine.refine.baselines import sample_grid

TAU_PX = 4.0
REACH_PX = 32


def ramp(cloud: np.ndarray) -> np.ndarray:
    """float32 ``r(d)`` on ``cloud`` (bool (H, W)), 0 elsewhere; ``d`` capped at :data:`REACH_PX`."""
    cloud = np.asarray(cloud, dtype=bool)
    if not cloud.any():
        return np.zeros(cloud.shape, dtype=np.float32)
    if cloud.all():  # no clear pixel within reach (SciPy's transform has no background to measure from)
        d = np.full(cloud.shape, float(REACH_PX))
    else:
        d = np.minimum(ndimage.distance_transform_edt(cloud), REACH_PX)
    return np.where(cloud, 1.0 - np.exp(-d / TAU_PX), 0.0).astype(np.float32)


@dataclass
class DriftStats:
    """What the fit of ``β`` needs, summed over the scene's chunks: Σ r·p, Σ r and Σ r² over the cloud pixels the
    model wrote, and a sample of the clear pixels (their median is the anchor)."""

    bands: int
    sum_rp: np.ndarray = field(init=False)
    sum_r: float = 0.0
    sum_rr: float = 0.0
    clear: list[np.ndarray] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.sum_rp = np.zeros(self.bands)

    def add(self, output: np.ndarray, r: np.ndarray, used: np.ndarray, clear_values: np.ndarray) -> None:
        """One chunk: ``output`` (bands, h, w) reflectance, ``r`` its ramp, ``used`` where the model's output was
        written, ``clear_values`` (bands, n) clear input pixels (a sample of them on a large scene)."""
        sel = used & (r > 0)
        if sel.any():
            rs = r[sel].astype(np.float64)
            self.sum_rp += output[:, sel].astype(np.float64) @ rs
            self.sum_r += float(rs.sum())
            self.sum_rr += float(rs @ rs)
        if clear_values.size:
            self.clear.append(np.asarray(clear_values, dtype=np.float32))

    def shift(self) -> np.ndarray | None:
        """``β`` per band (reflectance), or None when no cloud pixel was written or no pixel was clear."""
        if self.sum_rr <= 0 or not self.clear:
            return None
        anchor = np.median(np.concatenate(self.clear, axis=1), axis=1).astype(np.float64)
        return ((self.sum_rp - anchor * self.sum_r) / self.sum_rr).astype(np.float32)


def shifted(output: np.ndarray, r: np.ndarray, used: np.ndarray, beta: np.ndarray) -> np.ndarray:
    """``output`` with ``β · r`` taken off the pixels the model wrote, clipped to [0, 1] as the network's output is
    (float32; the rest as given)."""
    out = np.array(output, dtype=np.float32, copy=True)
    sel = used & (r > 0)
    out[:, sel] = np.clip(out[:, sel] - np.asarray(beta, dtype=np.float32)[:, None] * r[sel], 0.0, 1.0)
    return out


def anchor(output: np.ndarray, optical: np.ndarray, cloud: np.ndarray,
           used: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray | None]:  # fmt: skip
    """One whole image (training's scoring, tests): the anchored ``output`` and ``β`` (None: nothing to anchor).

    ``optical`` is the cloudy input (its finite pixels off ``cloud`` are the clear ground), ``used`` where the
    output is the model's (default: everywhere)."""
    cloud = np.asarray(cloud, dtype=bool)
    used = np.ones(cloud.shape, dtype=bool) if used is None else np.asarray(used, dtype=bool)
    r = ramp(cloud)
    stats = DriftStats(output.shape[0])
    clear = ~cloud & np.isfinite(optical).all(axis=0)
    stats.add(output, r, used, optical[:, clear])
    beta = stats.shift()
    if beta is None:
        return np.array(output, dtype=np.float32, copy=True), None
    return shifted(output, r, used, beta), beta


@dataclass
class StreamedAnchor:
    """The streamed run's side (:mod:`engine.stream.pipeline`): the drift statistics and, for every written window,
    where the model wrote on the cloud (packed bits) — the rewrite must leave a cloud pixel the model did not write (one
    without SAR) as it is. Clear pixels are sampled on the scene's regular grid (``stride``), as the report's
    ``flat`` medians are."""

    bands: int
    stride: int
    stats: DriftStats = field(init=False)
    written: dict[tuple[int, int, int, int], np.ndarray | None] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.stats = DriftStats(self.bands)

    def add(self, window: tuple[int, int, int, int], output: np.ndarray, r: np.ndarray, used: np.ndarray,
            optical: np.ndarray, valid: np.ndarray) -> None:  # fmt: skip
        """One written ``window`` = (row, col, height, width): the output (reflectance), its ramp, where the model
        wrote, the optical input (reflectance) and where it is valid."""
        rows, cols = sample_grid(r.shape, window[0], window[1], self.stride)
        clear = (valid & (r == 0))[rows][:, cols]
        self.stats.add(output, r, used, optical[:, rows][:, :, cols][:, clear])
        on_cloud = used & (r > 0)
        self.written[window] = np.packbits(on_cloud) if on_cloud.any() else None

    def used(self, window: tuple[int, int, int, int]) -> np.ndarray | None:
        """Where the model wrote on the cloud in ``window`` ((h, w) bool), None where it wrote none."""
        packed = self.written[window]
        if packed is None:
            return None
        h, w = window[2], window[3]
        return np.unpackbits(packed, count=h * w).reshape(h, w).astype(bool)


def sentence(beta: list[float] | np.ndarray, names: tuple[str, ...] = ("B", "G", "R", "NIR")) -> str:
    """The one line a run prints: the drift taken off deep inside the cloud, per band (reflectance)."""
    parts = ", ".join(f"{n} {v:+.3f}" for n, v in zip(names, beta))
    return f"colour anchor: the model's drift deep inside the cloud, taken off (reflectance): {parts}"
