"""Non-learned cloud-removal baselines: what a model must beat *inside the cloud* before it is worth shipping.

Scoring a model only against the cloudy input proves nothing: any brightness correction "wins" by 8–12 dB. So every
place that scores a model (``engine evaluate --baselines``, ``engine run --report``, ``training.evaluate`` and the
checkpoint choice) scores these beside it, on the same pixels:

* ``flat`` — every pixel is the per-band median of the input's clear pixels (the simplest possible "declouding").
* ``fill`` — clear pixels kept as acquired, each cloud filled by harmonic interpolation from its border (the
  solution of Laplace's equation with the clear pixels as boundary values: the smoothest surface that meets the
  cloud's edge). Solved with SciPy's sparse LU (one factorisation for all bands and all cloud regions).
* ``gapfill`` — linear interpolation in time between two other dates (Cresson et al.), where extra dates exist; it
  is a registered model (:mod:`engine.models.gapfill_arch`), not repeated here.

Arrays are (bands, H, W) float reflectance; ``cloud`` is (H, W) bool, True = cloud. Pixels that are not finite
count as neither clear nor fillable: they stay as they are. Torch-free (the plugin and the reports use it).

Streaming (:func:`fill_window`): a large scene is filled chunk by chunk, each chunk read with a ``halo`` of pixels
around it so that a cloud crossing the chunk edge is interpolated from the clear pixels beyond the edge too. Only
clouds wider than the halo see a difference from a whole-scene solve (their far border is cut); the default halo
(128 px) covers the clouds of a 300² PlanetScope patch whole.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from scipy import ndimage
from scipy.sparse import coo_matrix, csc_matrix, csr_matrix
from scipy.sparse.linalg import splu

BASELINES = ("flat", "fill")
DEFAULT_HALO = 128
MEDIAN_SAMPLE_PX = 4_000_000  # clear pixels a scene's medians are taken from, at most (about)


def _clear(optical: np.ndarray, cloud: np.ndarray) -> np.ndarray:
    return ~np.asarray(cloud, dtype=bool) & np.isfinite(optical).all(axis=0)


def clear_medians(optical: np.ndarray, cloud: np.ndarray) -> np.ndarray | None:
    """Per-band median of the clear pixels, (bands,), or None when no pixel is clear."""
    clear = _clear(optical, cloud)
    if not clear.any():
        return None
    return np.median(optical[:, clear], axis=1).astype(np.float32)


def median_stride(width: int, height: int) -> int:
    """The stride of the regular grid a streamed scene's clear medians are sampled on: every pixel up to
    :data:`MEDIAN_SAMPLE_PX`, else about that many (the report's ``flat`` and ``--colour-anchor`` share it)."""
    return max(1, math.ceil(math.sqrt(width * height / MEDIAN_SAMPLE_PX)))


def sample_grid(shape: tuple[int, int], row_off: int, col_off: int, stride: int) -> tuple[np.ndarray, np.ndarray]:
    """Rows and columns of a window of ``shape`` at (``row_off``, ``col_off``), relative to it, that lie on the
    scene's regular ``stride`` grid (so chunks sample the same pixels as one whole-scene pass)."""
    rows = np.arange(-row_off % stride, shape[0], stride)
    cols = np.arange(-col_off % stride, shape[1], stride)
    return rows, cols


def flat(optical: np.ndarray, cloud: np.ndarray, medians: np.ndarray | None = None) -> np.ndarray:
    """The flat baseline: the clear pixels' per-band median everywhere (the input itself when nothing is clear).

    ``medians`` lets a streamed scene use the scene-wide medians instead of one chunk's.
    """
    if medians is None:
        medians = clear_medians(optical, cloud)
    if medians is None:
        return np.array(optical, dtype=np.float32, copy=True)
    out = np.empty(optical.shape, dtype=np.float32)
    out[:] = np.asarray(medians, dtype=np.float32)[:, None, None]
    return out


def _laplace_system(hole: np.ndarray, known: np.ndarray) -> tuple[Any, tuple[np.ndarray, np.ndarray], csr_matrix]:
    """The factorised 4-neighbour Laplace operator on ``hole`` pixels, and the matrix that gathers its right-hand
    sides from the ``known`` pixels (equations × known pixels in row-major order).

    A neighbour that is neither hole nor known (off the image, or not finite) is left out of the stencil (a
    zero-flux boundary), so the system is well posed for every region that touches a known pixel. The operator is
    symmetric positive definite, so SuperLU is told so (symmetric minimum-degree ordering: about half the fill-in
    and time of its default column ordering on a large cloud). One factorisation serves all bands.
    """
    h, w = hole.shape
    idx = -np.ones((h, w), dtype=np.int64)
    ys, xs = np.nonzero(hole)
    n = ys.size
    idx[ys, xs] = np.arange(n)
    known_idx = -np.ones((h, w), dtype=np.int64)
    known_idx[known] = np.arange(int(known.sum()))
    rows, cols, src_rows, src_cols = [], [], [], []
    diag = np.zeros(n)
    for dy, dx in ((-1, 0), (1, 0), (0, -1), (0, 1)):
        ny, nx = ys + dy, xs + dx
        inside = (ny >= 0) & (ny < h) & (nx >= 0) & (nx < w)
        nyc, nxc = np.clip(ny, 0, h - 1), np.clip(nx, 0, w - 1)
        is_hole = inside & hole[nyc, nxc]
        is_known = inside & known[nyc, nxc]
        diag += is_hole | is_known
        rows.append(np.nonzero(is_hole)[0])
        cols.append(idx[nyc[is_hole], nxc[is_hole]])
        src_rows.append(np.nonzero(is_known)[0])
        src_cols.append(known_idx[nyc[is_known], nxc[is_known]])
    r = np.concatenate([np.arange(n), *rows])
    c = np.concatenate([np.arange(n), *cols])
    v = np.concatenate([diag, -np.ones(r.size - n)])
    lu = splu(
        csc_matrix(coo_matrix((v, (r, c)), shape=(n, n))),
        permc_spec="MMD_AT_PLUS_A", options={"SymmetricMode": True},
    )
    sr, sc = np.concatenate(src_rows), np.concatenate(src_cols)
    gather = csr_matrix((np.ones(sr.size), (sr, sc)), shape=(n, int(known.sum())))
    return lu, (ys, xs), gather


def _regions_reaching(hole: np.ndarray, within: np.ndarray) -> np.ndarray:
    """The cloud regions (4-connected parts of ``hole``) that have a pixel in ``within``."""
    labels, _ = ndimage.label(hole)
    reached = np.unique(labels[within & hole])
    return np.isin(labels, reached[reached > 0])


def fill(
    optical: np.ndarray, cloud: np.ndarray, medians: np.ndarray | None = None, *, within: np.ndarray | None = None
) -> np.ndarray:
    """The fill baseline: clear pixels kept, every cloud region harmonically interpolated from its border.

    A cloud region with no clear pixel around it (a fully clouded window) gets the flat value (``medians``, else
    the window's own clear medians; the input where there are none). ``within`` ((H, W) bool) solves only the
    regions that reach those pixels — each region's solution depends on that region alone, so the others would be
    work thrown away (:func:`fill_window` passes the chunk); the rest keep the input.
    """
    optical = np.asarray(optical, dtype=np.float32)
    cloud = np.asarray(cloud, dtype=bool)
    finite = np.isfinite(optical).all(axis=0)
    hole = cloud & finite
    known = finite & ~cloud
    out = optical.copy()
    if within is not None:
        hole = _regions_reaching(hole, np.asarray(within, dtype=bool))
    if not hole.any():
        return out
    labels, count = ndimage.label(hole)
    touching = ndimage.binary_dilation(known) & hole
    has_border = np.asarray(ndimage.maximum(touching, labels, np.arange(1, count + 1)), dtype=bool)
    isolated = np.isin(labels, np.nonzero(~has_border)[0] + 1)
    if isolated.any():
        if medians is None:
            medians = clear_medians(optical, cloud)
        if medians is not None:
            out[:, isolated] = np.asarray(medians, dtype=np.float32)[:, None]
        hole &= ~isolated
    if not hole.any():
        return out
    lu, (ys, xs), gather = _laplace_system(hole, known)
    rhs = gather @ optical[:, known].T.astype(np.float64)  # (equations, bands)
    out[:, ys, xs] = lu.solve(np.ascontiguousarray(rhs)).T.astype(np.float32)
    return out


def baseline(name: str, optical: np.ndarray, cloud: np.ndarray, medians: np.ndarray | None = None) -> np.ndarray:
    """The baseline ``name`` (one of :data:`BASELINES`) of one image."""
    if name == "flat":
        return flat(optical, cloud, medians)
    if name == "fill":
        return fill(optical, cloud, medians)
    raise ValueError(f"unknown baseline '{name}' (known: {', '.join(BASELINES)})")


def fill_window(
    optical_with_halo: np.ndarray, cloud_with_halo: np.ndarray, halo: tuple[int, int, int, int],
    medians: np.ndarray | None = None,
) -> np.ndarray:
    """``fill`` of a chunk read with a halo; returns the chunk alone. ``halo`` = (top, bottom, left, right) px.

    Only the cloud regions that reach the chunk are solved (the halo's other clouds only cost time).
    """
    top, bottom, left, right = halo
    h, w = np.shape(cloud_with_halo)
    chunk = np.zeros((h, w), dtype=bool)
    chunk[top : h - bottom, left : w - right] = True
    filled = fill(optical_with_halo, cloud_with_halo, medians, within=chunk)
    return filled[:, top : h - bottom, left : w - right]
