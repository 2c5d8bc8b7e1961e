"""Test-time augmentation (TTA): the model's output averaged over flips and 90° rotations, and its spread.

Why: a network that has learned the scene's content gives (nearly) the same reconstruction however the tile is
turned; where it is guessing — under a thick cloud, far from any clear pixel, where the SAR says little — its
guesses for a flipped or rotated tile disagree. The per-pixel spread of the outputs over the transforms is
therefore a cheap confidence layer (no retraining, no second model). How well it marks the error is measured by
``benchmarks/confidence_correlation.py`` (docs/measurements.md, "Confidence layer").

Transforms: elements of the dihedral group D4 (the 8 symmetries of a square), each applied to the optical AND the
SAR (and any packed extra input: other dates, DEM) of a tile *identically and as whole tiles*, so they stay
registered even when the SAR is on a coarser grid than the optical tile (a flip or a transpose of the whole
footprint maps pixel centres to pixel centres at every resolution). The model's output is mapped back with the
inverse transform before averaging. The order is :data:`D4`:

* N = 4 (the default): identity, left-right flip, up-down flip, 180° rotation — the Klein four-group. Chosen over
  identity + three 90° rotations (the other subgroup of order 4) because it never transposes rows and columns: a
  tile of any shape keeps its shape in every pass (no square padding, one shape for a compiled network), and each
  image axis keeps its own sampling — a 90° rotation also swaps the SAR's range and azimuth axes, whose speckle and
  geometry differ, where a flip only reverses them.
* N = 8: the whole group, the four transposing elements (transpose, the two 90° rotations, anti-transpose) added.
  The pipeline's tiles are square (reflect-padded to ``tile``², :mod:`engine.stream.tiling`), so their transposes have
  the same shape; a non-square sample (the benchmark's) is transposed as it is — each pass is its own forward, and the
  models pad internally to the multiple they need.
* Other N (2..8) take the first N of that order; only 1, 2, 4 and 8 are subgroups.

Spread (what the confidence raster holds): for each pixel and each of the model's bands, the population standard
deviation (ddof = 0) of the N outputs — each clipped to [0, 1] as the runner returns it, i.e. in reflectance
units — then the mean over the bands. Mean and spread accumulate in float64 (Welford), so a model whose output
turns with its input (an equivariant model) gets a spread of exactly 0 and a mean equal to its plain output.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, TypeAlias

import numpy as np

# declared with the options they bound (--tta, --confidence); re-exported for the modules that use them here
from engine.config import CONFIDENCE_NODATA, DEFAULT_CONFIDENCE_TTA, MAX_TTA  # noqa: F401

if TYPE_CHECKING:
    import torch

Array: TypeAlias = "np.ndarray | torch.Tensor"  # tensor methods are called on anything not numpy: no torch import


@dataclass(frozen=True)
class D4Transform:
    """One symmetry of the square on the last two axes: transpose first (if ``transpose``), then flip the rows
    (``flip_ud``) and the columns (``flip_lr``). Works on numpy arrays and torch tensors of any leading shape."""

    name: str
    transpose: bool = False
    flip_ud: bool = False
    flip_lr: bool = False

    def apply(self, x: Array) -> Array:
        if self.transpose:
            x = _transpose(x)
        return _flip(x, self.flip_ud, self.flip_lr)

    def invert(self, y: Array) -> Array:
        y = _flip(y, self.flip_ud, self.flip_lr)  # flips are their own inverses
        return _transpose(y) if self.transpose else y


D4: tuple[D4Transform, ...] = (
    D4Transform("identity"),
    D4Transform("flip-lr", flip_lr=True),
    D4Transform("flip-ud", flip_ud=True),
    D4Transform("rot180", flip_ud=True, flip_lr=True),
    D4Transform("transpose", transpose=True),
    D4Transform("rot90", transpose=True, flip_ud=True),  # counter-clockwise, as np.rot90(x, 1)
    D4Transform("rot270", transpose=True, flip_lr=True),
    D4Transform("anti-transpose", transpose=True, flip_ud=True, flip_lr=True),
)


def transforms(n: int) -> tuple[D4Transform, ...]:
    """The first ``n`` transforms of :data:`D4` (see the module docstring); ``n`` in 1..8."""
    if not 1 <= n <= MAX_TTA:
        raise ValueError(f"TTA takes 1 to {MAX_TTA} transforms, got {n}")
    return D4[:n]


def _transpose(x: Array) -> Array:
    return np.swapaxes(x, -2, -1) if isinstance(x, np.ndarray) else x.transpose(-2, -1)


def _flip(x: Array, ud: bool, lr: bool) -> Array:
    axes = [a for a, on in ((-2, ud), (-1, lr)) if on]
    if not axes:
        return x
    return np.flip(x, axes) if isinstance(x, np.ndarray) else x.flip(axes)


def _contiguous(x: Array) -> Array:
    """numpy views with negative strides cannot become tensors: copy them (tensors from flip are copies). Not with
    ``np.ascontiguousarray``: a flipped axis of length 1 (a 1-pixel-high tile) keeps its negative stride and numpy
    calls the view contiguous already (issue 25: ``--tta``/``--confidence`` on a 1 × 1 image)."""
    if not isinstance(x, np.ndarray):
        return x.contiguous()
    return x.copy() if any(stride < 0 for stride in x.strides) else np.ascontiguousarray(x)


Predict = Callable[[Array, Array], np.ndarray]


def predict(run: Predict, optical: Array, sar: Array, n: int) -> tuple[np.ndarray, np.ndarray]:
    """``(mean, spread)`` of ``run`` over the first ``n`` D4 transforms of each tile.

    ``run(optical, sar)`` maps (K, B, H, W) and (K, C, h, w) to (K, B, H, W) outputs (an
    :meth:`engine.stream.accel.InferenceRunner.predict`); it is called once per transform with the whole batch, so its
    batching, memory limits and out-of-memory halving apply unchanged. Returns the float32 mean (K, B, H, W) and
    the float32 spread (K, H, W): the per-band population standard deviation averaged over the bands.
    """
    count, mean, m2 = 0, None, None
    for t in transforms(n):
        out = t.invert(run(_contiguous(t.apply(optical)), _contiguous(t.apply(sar))))
        x = np.asarray(out, dtype=np.float64)
        count += 1
        if mean is None:
            mean, m2 = x.copy(), np.zeros_like(x)
            continue
        delta = x - mean
        mean += delta / count
        m2 += delta * (x - mean)
    assert mean is not None and m2 is not None
    spread = np.sqrt(m2 / count).mean(axis=1)
    return mean.astype(np.float32), spread.astype(np.float32)
