"""Image-quality metrics of the Align-CR paper (§V-B, Tab. II–IV, Fig. 5, 9), plain and streamed by tiles.

All functions take numpy arrays ``(C, H, W)`` in the [0, 1]-scaled band space of :mod:`engine.sources.normalise`
(bands B, G, R, NIR for the 4-band models) and return Python floats.

Choices, where the paper is silent (it names the metrics only), following the official code
(zhu-xlab/M3R-CR, ``Align-CR/metrics.py``):

* **MAE**: mean |pred − ref| over pixels *and* bands.
* **PSNR**: ``20·log10(data_range / sqrt(MSE))`` with the MSE pooled over pixels and bands, data range 1 on the
  [0, 1] scale. Identical images give :data:`PSNR_CAP` (100 dB), as the official code returns, so averages over
  tiles stay finite.
* **SAM**: per-pixel angle between the band vectors, ``arccos(<p, r> / (|p| |r|))`` in degrees, averaged over
  pixels. The official code floors the squared norms at float16's eps (≈ 1e-3), which bends the angle of very dark
  pixels; we floor them at 1e-12 instead, so only an all-zero vector is affected (its angle to anything is 90°).
* **SSIM**: scikit-image ``structural_similarity`` with ``channel_axis=0`` and ``data_range=1``, configured as the
  official code's SSIM (Wang et al. 2004): an 11×11 Gaussian window, σ = 1.5 (``gaussian_weights=True``,
  ``sigma=1.5``, scikit-image's default truncation gives radius 5 → 11 px), population covariance
  (``use_sample_covariance=False``), K1 = 0.01, K2 = 0.03, computed per band and averaged over bands. The one
  difference from the official PyTorch code: scikit-image reflects at the image border and leaves the 5-px border
  strip out of the mean, where the official code zero-pads and keeps it.

Streaming (:class:`MetricAccumulator`): every metric above except SSIM is a ratio of pixel sums, so the sums are
accumulated tile by tile and the streamed result equals the whole-image one up to float rounding. SSIM is a
mean of the SSIM *map*; a map pixel depends only on the pixels within the window radius (5 px). Each tile is
therefore passed with a halo of at least :data:`SSIM_RADIUS` pixels on every side that is not the image border;
the accumulator computes the map on tile + halo, and sums it over the tile's core pixels that are at least
``SSIM_RADIUS`` from the array edge (on the image border that is exactly scikit-image's border crop; elsewhere the
halo makes it a no-op). The sum of those maps over all tiles divided by their count equals the whole-image SSIM
(tested on a 1024² raster). A map pixel whose window touches an invalid (nodata) pixel is left out, so nodata never
leaks into SSIM; inside/outside-cloud SSIM is the map's mean over those pixels.

Aggregations: per land-cover class MAE and SAM are pooled over the class's pixels in the whole image (the
official code does this per 300×300 patch). Cloud-cover bins (0–20, …, 80–100 %) follow the paper's Fig. 5:
each :meth:`MetricAccumulator.update` call is one evaluation tile (the paper's patch, default 300 px); its
cloud cover is cloud pixels / valid pixels, and the bin reports the mean over its tiles of the per-tile metrics.
Tab. II's numbers are averages over 3,000 test patches scored on their centre 160×160 crop (official test loader);
a scene scored here is scored whole, so compare with the paper's magnitudes, not its decimals.
NDVI (Tab. IV): RMSE of NDVI over pixels where both NDVIs are defined, and mIoU of the five NDVI classes with the
reference's classes as truth; the mean runs over classes present in either map (IoU undefined otherwise).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from scipy import ndimage
from skimage.metrics import structural_similarity

PSNR_CAP = 100.0
SAM_NORM_FLOOR = 1e-12
SSIM_SIGMA = 1.5
SSIM_RADIUS = 5  # int(3.5 * 1.5 + 0.5): scikit-image's Gaussian window radius for sigma 1.5 (11×11 window)
CLOUD_COVER_BINS: tuple[tuple[float, float], ...] = ((0, 20), (20, 40), (40, 60), (60, 80), (80, 100))
METRIC_NAMES = ("mae", "psnr", "ssim", "sam")


def _check(pred: np.ndarray, ref: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    pred = np.asarray(pred, dtype=np.float64)
    ref = np.asarray(ref, dtype=np.float64)
    if pred.shape != ref.shape or pred.ndim != 3:
        raise ValueError(f"pred and ref must both be (C, H, W) of equal shape, got {pred.shape} and {ref.shape}")
    return pred, ref


def _pixel_mask(mask: np.ndarray | None, shape: tuple[int, ...]) -> np.ndarray | None:
    if mask is None:
        return None
    mask = np.asarray(mask, dtype=bool)
    if mask.shape != shape[1:]:
        raise ValueError(f"mask must be (H, W) = {shape[1:]}, got {mask.shape}")
    return mask


def mae(pred: np.ndarray, ref: np.ndarray, mask: np.ndarray | None = None) -> float:
    """Mean absolute error over pixels (where ``mask`` is True) and bands; NaN when no pixel is selected."""
    pred, ref = _check(pred, ref)
    m = _pixel_mask(mask, pred.shape)
    err = np.abs(pred - ref)
    if m is not None:
        err = err[:, m]
    return float(err.mean()) if err.size else math.nan


def psnr_from_mse(mse: float, data_range: float = 1.0) -> float:
    """PSNR in dB for a mean squared error; capped at :data:`PSNR_CAP` for a perfect match."""
    if not math.isfinite(mse):
        return math.nan
    if mse <= 0.0:
        return PSNR_CAP
    return min(PSNR_CAP, 20.0 * math.log10(data_range / math.sqrt(mse)))


def psnr(pred: np.ndarray, ref: np.ndarray, data_range: float = 1.0, mask: np.ndarray | None = None) -> float:
    """Peak signal-to-noise ratio (dB) with the MSE pooled over selected pixels and all bands."""
    pred, ref = _check(pred, ref)
    m = _pixel_mask(mask, pred.shape)
    sq = (pred - ref) ** 2
    if m is not None:
        sq = sq[:, m]
    return psnr_from_mse(float(sq.mean()), data_range) if sq.size else math.nan


def sam_map(pred: np.ndarray, ref: np.ndarray) -> np.ndarray:
    """Per-pixel spectral angle (H, W) in degrees."""
    pred, ref = _check(pred, ref)
    dot = np.einsum("chw,chw->hw", pred, ref)
    norms = np.sqrt(
        np.maximum(np.einsum("chw,chw->hw", pred, pred), SAM_NORM_FLOOR)
        * np.maximum(np.einsum("chw,chw->hw", ref, ref), SAM_NORM_FLOOR)
    )
    return np.degrees(np.arccos(np.clip(dot / norms, -1.0, 1.0)))


def sam_degrees(pred: np.ndarray, ref: np.ndarray, mask: np.ndarray | None = None) -> float:
    """Spectral angle mapper: mean per-pixel angle in degrees over selected pixels."""
    angles = sam_map(pred, ref)
    m = _pixel_mask(mask, (0, *angles.shape))
    if m is not None:
        angles = angles[m]
    return float(angles.mean()) if angles.size else math.nan


def _ssim_kwargs(data_range: float) -> dict[str, Any]:
    return {
        "data_range": data_range,
        "channel_axis": 0,
        "gaussian_weights": True,
        "sigma": SSIM_SIGMA,
        "use_sample_covariance": False,
    }


def ssim(pred: np.ndarray, ref: np.ndarray, data_range: float = 1.0) -> float:
    """Structural similarity, scikit-image with the official code's window (see module docstring)."""
    pred, ref = _check(pred, ref)
    if min(pred.shape[1:]) < 2 * SSIM_RADIUS + 1:
        raise ValueError(f"SSIM needs images of at least {2 * SSIM_RADIUS + 1}×{2 * SSIM_RADIUS + 1} pixels")
    return float(structural_similarity(pred, ref, **_ssim_kwargs(data_range)))


def ssim_map(pred: np.ndarray, ref: np.ndarray, data_range: float = 1.0) -> np.ndarray:
    """The SSIM map (H, W) averaged over bands; its mean without the 5-px border strip is :func:`ssim`."""
    pred, ref = _check(pred, ref)
    _, full = structural_similarity(pred, ref, full=True, **_ssim_kwargs(data_range))
    return full.mean(axis=0)


def ndvi_of(bands: np.ndarray, red_index: int, nir_index: int) -> np.ndarray:
    """NDVI of a (C, H, W) array, NaN where red + NIR is 0 (kept here so metrics need no raster I/O)."""
    red = np.asarray(bands[red_index], dtype=np.float64)
    nir = np.asarray(bands[nir_index], dtype=np.float64)
    den = red + nir
    with np.errstate(invalid="ignore", divide="ignore"):
        out = (nir - red) / den
    out[den == 0] = np.nan
    return out


def ndvi_classes(ndvi: np.ndarray, edges: tuple[float, ...]) -> np.ndarray:
    """Class index 0…len(edges) of each NDVI value; left-closed bins (a value equal to an edge goes up).

    Edges are cast to the values' float type so a float32 NDVI of exactly −0.1 lands in the −0.1…0.1 class.
    """
    ndvi = np.asarray(ndvi)
    dtype = ndvi.dtype if np.issubdtype(ndvi.dtype, np.floating) else np.float64
    return np.searchsorted(np.asarray(edges, dtype=dtype), ndvi, side="right").astype(np.int64)


def mean_iou(confusion: np.ndarray) -> tuple[float, list[float | None]]:
    """mIoU from a confusion matrix (rows = reference, cols = prediction), over classes present in either."""
    confusion = np.asarray(confusion, dtype=np.float64)
    tp = np.diag(confusion)
    union = confusion.sum(axis=0) + confusion.sum(axis=1) - tp
    ious: list[float | None] = [float(t / u) if u > 0 else None for t, u in zip(tp, union)]
    present = [v for v in ious if v is not None]
    return (float(np.mean(present)) if present else math.nan), ious


@dataclass
class _Sums:
    """Pixel sums from which MAE, PSNR, SAM and SSIM of one pixel subset are finished."""

    n: int = 0  # pixels
    abs_err: float = 0.0  # sum over pixels and bands
    sq_err: float = 0.0
    sam: float = 0.0  # sum of per-pixel angles (degrees)
    ssim_n: int = 0
    ssim: float = 0.0
    bands: int = 0

    def add(self, abs_px: np.ndarray, sq_px: np.ndarray, sam_px: np.ndarray, sel: np.ndarray) -> None:
        self.n += int(sel.sum())
        self.abs_err += float(abs_px[sel].sum())
        self.sq_err += float(sq_px[sel].sum())
        self.sam += float(sam_px[sel].sum())

    def add_ssim(self, ssim_px: np.ndarray, sel: np.ndarray) -> None:
        self.ssim_n += int(sel.sum())
        self.ssim += float(ssim_px[sel].sum())

    def result(self, data_range: float) -> dict[str, float | int | None]:
        def f(x: float) -> float | None:
            return x if math.isfinite(x) else None

        if self.n == 0:
            return {"pixels": 0, "mae": None, "psnr": None, "ssim": None, "sam": None}
        denom = self.n * self.bands
        return {
            "pixels": self.n,
            "mae": f(self.abs_err / denom),
            "psnr": f(psnr_from_mse(self.sq_err / denom, data_range)),
            "ssim": f(self.ssim / self.ssim_n) if self.ssim_n else None,
            "sam": f(self.sam / self.n),
        }


@dataclass(frozen=True)
class AccumulatorConfig:
    """What to aggregate. ``red_index``/``nir_index`` are 0-based band positions (B, G, R, NIR → 2, 3)."""

    data_range: float = 1.0
    class_names: tuple[str, ...] = ("forest", "rangeland", "agriculture", "urban", "barren", "water")
    cloud_cover_bins: tuple[tuple[float, float], ...] = CLOUD_COVER_BINS
    red_index: int | None = 2
    nir_index: int | None = 3
    ndvi_class_edges: tuple[float, ...] = (-0.1, 0.1, 0.4, 0.8)


@dataclass
class MetricAccumulator:
    """Streams tiles of a (prediction, reference) pair into the paper's metrics.

    Call :meth:`update` once per evaluation tile (see module docstring for the halo SSIM needs), then
    :meth:`result`. Land-cover classes are indices 0…len(class_names)-1 (anything else is ignored in per-class
    numbers but still counts in the whole-image ones, as in the official code).
    """

    config: AccumulatorConfig = field(default_factory=AccumulatorConfig)

    def __post_init__(self) -> None:
        self._all = _Sums()
        self._cloud = _Sums()
        self._clear = _Sums()
        self._classes = [_Sums() for _ in self.config.class_names]
        self._bins: list[dict[str, list[float]]] = [
            {k: [] for k in (*METRIC_NAMES, "ndvi_rmse")} for _ in self.config.cloud_cover_bins
        ]
        n_ndvi = len(self.config.ndvi_class_edges) + 1
        self._ndvi_confusion = np.zeros((n_ndvi, n_ndvi), dtype=np.int64)
        self._ndvi_sq = 0.0
        self._ndvi_n = 0
        self._tiles = 0

    def _bin_index(self, cover: float) -> int:
        bins = self.config.cloud_cover_bins
        for i, (lo, hi) in enumerate(bins):
            if lo <= cover < hi:
                return i
        return len(bins) - 1 if cover >= bins[-1][0] else 0

    def update(
        self,
        pred: np.ndarray,
        ref: np.ndarray,
        *,
        valid: np.ndarray | None = None,
        cloud: np.ndarray | None = None,
        landcover: np.ndarray | None = None,
        halo: tuple[int, int, int, int] = (0, 0, 0, 0),
    ) -> dict[str, float | None]:
        """Add one tile; returns the tile's own metrics (MAE, PSNR, SSIM, SAM, cloud cover %).

        ``pred``/``ref`` are (C, H, W) tile + halo; ``valid``, ``cloud`` (bool) and ``landcover`` (class index)
        are (H, W) on the same window. ``halo = (top, bottom, left, right)`` rows/columns of context around the
        core tile; only core pixels are counted, the halo only feeds the SSIM windows.
        """
        pred, ref = _check(pred, ref)
        _, h, w = pred.shape
        top, bottom, left, right = halo
        core = (slice(top, h - bottom), slice(left, w - right))
        valid_full = np.ones((h, w), dtype=bool) if valid is None else np.asarray(valid, dtype=bool)
        # Non-finite values anywhere in the window are treated as nodata.
        valid_full = valid_full & np.isfinite(pred).all(axis=0) & np.isfinite(ref).all(axis=0)
        for s in (self._all, self._cloud, self._clear, *self._classes):
            s.bands = pred.shape[0]

        # SSIM on tile + halo, with invalid pixels zeroed (their influence is removed below).
        p0 = np.where(valid_full, pred, 0.0)
        r0 = np.where(valid_full, ref, 0.0)
        ssim_ok = np.zeros((h, w), dtype=bool)
        if min(h, w) >= 2 * SSIM_RADIUS + 1:
            smap = ssim_map(p0, r0, self.config.data_range)
            ssim_ok[SSIM_RADIUS : h - SSIM_RADIUS, SSIM_RADIUS : w - SSIM_RADIUS] = True
            if not valid_full.all():
                size = 2 * SSIM_RADIUS + 1
                ssim_ok &= ndimage.minimum_filter(valid_full, size=size, mode="constant", cval=True)
        else:
            smap = np.zeros((h, w))
        smap = smap[core]
        ssim_ok = ssim_ok[core]

        p, r, v = pred[(slice(None), *core)], ref[(slice(None), *core)], valid_full[core]
        diff = p - r
        abs_px = np.abs(diff).sum(axis=0)
        sq_px = (diff**2).sum(axis=0)
        sam_px = np.where(v, sam_map(np.where(v, p, 0.0), np.where(v, r, 0.0)), 0.0)
        cl = np.zeros_like(v) if cloud is None else np.asarray(cloud, dtype=bool)[core]

        tile = _Sums(bands=pred.shape[0])
        for s, sel in ((self._all, v), (tile, v), (self._cloud, v & cl), (self._clear, v & ~cl)):
            s.add(abs_px, sq_px, sam_px, sel)
            s.add_ssim(smap, sel & ssim_ok)
        if landcover is not None:
            lc = np.asarray(landcover)[core]
            for k, s in enumerate(self._classes):
                sel = v & (lc == k)
                if sel.any():
                    s.add(abs_px, sq_px, sam_px, sel)
                    s.add_ssim(smap, sel & ssim_ok)

        tile_result: dict[str, Any] = dict(tile.result(self.config.data_range))
        ndvi_rmse = self._update_ndvi(p, r, v)
        tile_result["ndvi_rmse"] = ndvi_rmse
        n_valid = int(v.sum())
        if n_valid:
            cover = 100.0 * float((cl & v).sum()) / n_valid
            tile_result["cloud_cover"] = cover
            acc = self._bins[self._bin_index(cover)]
            for k in (*METRIC_NAMES, "ndvi_rmse"):
                if tile_result[k] is not None:
                    acc[k].append(float(tile_result[k]))
            self._tiles += 1
        else:
            tile_result["cloud_cover"] = None
        return tile_result

    def _update_ndvi(self, p: np.ndarray, r: np.ndarray, v: np.ndarray) -> float | None:
        cfg = self.config
        if cfg.red_index is None or cfg.nir_index is None:
            return None
        np_ = ndvi_of(p, cfg.red_index, cfg.nir_index)
        nr = ndvi_of(r, cfg.red_index, cfg.nir_index)
        ok = v & np.isfinite(np_) & np.isfinite(nr)
        n = int(ok.sum())
        if n == 0:
            return None
        sq = float(((np_[ok] - nr[ok]) ** 2).sum())
        self._ndvi_sq += sq
        self._ndvi_n += n
        k = len(cfg.ndvi_class_edges) + 1
        cr = ndvi_classes(nr[ok], cfg.ndvi_class_edges)
        cp = ndvi_classes(np_[ok], cfg.ndvi_class_edges)
        self._ndvi_confusion += np.bincount(cr * k + cp, minlength=k * k).reshape(k, k)
        return math.sqrt(sq / n)

    def result(self) -> dict[str, Any]:
        """Final numbers (JSON-ready: plain floats/ints, ``None`` where a subset has no pixels)."""
        cfg = self.config
        dr = cfg.data_range
        out: dict[str, Any] = {
            "overall": self._all.result(dr),
            "inside_cloud": self._cloud.result(dr),
            "outside_cloud": self._clear.result(dr),
            "per_class": {
                name: {k: v for k, v in s.result(dr).items() if k in ("pixels", "mae", "sam")}
                for name, s in zip(cfg.class_names, self._classes)
            },
            "cloud_cover_bins": [],
            "tiles": self._tiles,
        }
        for (lo, hi), acc in zip(cfg.cloud_cover_bins, self._bins):
            row: dict[str, Any] = {"range": [lo, hi], "tiles": len(acc["mae"])}
            for k, vals in acc.items():
                row[k] = float(np.mean(vals)) if vals else None
            out["cloud_cover_bins"].append(row)
        if cfg.red_index is not None and cfg.nir_index is not None:
            miou, ious = mean_iou(self._ndvi_confusion)
            out["ndvi"] = {
                "pixels": self._ndvi_n,
                "rmse": math.sqrt(self._ndvi_sq / self._ndvi_n) if self._ndvi_n else None,
                "miou": miou if self._ndvi_n else None,
                "iou_per_class": ious,
                "confusion": self._ndvi_confusion.tolist(),
            }
        return out
