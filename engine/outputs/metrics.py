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

Beyond the paper (issue 26), because PSNR alone rewards a smooth guess and misses a painted colour:

* **band r**: Pearson r of each band with the reference over the selected pixels, averaged over the bands (B, G,
  R, NIR). It measures structure, not level: a flat colour scores 0 — r of a constant is *defined* as 0 (not NaN),
  so a method that paints one colour is told it recovered no structure. "Constant" means a variance under
  :data:`R_VAR_FLOOR` per pixel (a standard deviation of 1e-6, a hundredth of a DN at the 1/10000 scale), so the
  float rounding of a fill over a uniform border does not read as a correlation.
* **NDVI r**: Pearson r of NDVI ``(NIR − R)/(NIR + R)`` with the reference's, over pixels where both are defined.
* Both stream exactly: per chunk the means and co-moments are merged with Chan et al.'s pairwise update
  (:class:`PearsonSums`), which stays accurate where the naive ``Σx² − (Σx)²/n`` cancels, and keeps a constant
  exactly constant (its deviations are exactly 0 in every chunk).
* **off-gamut share**: the fraction of pixels whose colour falls outside the scene's own clear-pixel distribution
  (:class:`Gamut`): any band below its :data:`GAMUT_PERCENTILES` 0.5th or above its 99.5th clear percentile, the
  range widened by :data:`GAMUT_MARGIN` (10 %) of the 0.5–99.5 range on each side. The clear pixels are the cloudy
  input's (what the user has), never the reference's. It catches the pink/orange paintings PSNR forgives. Why
  10 %: without a margin the clear pixels themselves are off-gamut by construction (1 % per band, up to 4 % for
  any of four bands), and so is true ground a hair outside the clear pixels' extremes. Measured on the generator
  split of ``training/configs/aligncr_lite_report.toml`` (15 samples, exact target; the 0.5–99.5 ranges are
  0.07–0.49 reflectance, so 10 % is 0.007–0.05): the truth's own share inside the cloud has median 7.3 % with no
  margin, 0.9 % with 10 % (0.2–8.2 %; the high ones are 96–97 % cloud, where the few clear pixels do not span the
  scene, or a cloud over ground unlike the clear part), 0.3 % with 20 %; the bundled lite model's (its
  orange-brown cast) median 20.8 % with 10 % but only 2.2 % with 20 %. 10 % keeps the cast plain and the truth
  near 1 %. A scene whose clear pixels span a very narrow range (open water) gets a narrow margin too: read the
  reference's own share, printed beside every method's (on real triplets, another date with hazy "clear" pixels,
  the true ground can be off-gamut as well: 0–100 % on that recipe's eight real triplets).
* **date-gap ceiling**: on a real triplet the reference is another date, so the cloudy image's own *clear*
  pixels scored against it (:func:`date_gap_ceiling`) are what a perfect removal would score inside the cloud
  (docs/measurements.md, "Why the real triplets cannot show +1.5 dB over flat"). Streamed, it is the cloudy
  input's outside-cloud PSNR of a :class:`MetricAccumulator` (:func:`ceiling_of`).
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
AGREEMENT_NAMES = ("band_r", "ndvi_r", "off_gamut", "reference_off_gamut")  # per region, beside METRIC_NAMES
RED_INDEX, NIR_INDEX = 2, 3  # 0-based positions of R and NIR in (B, G, R, NIR)
R_VAR_FLOOR = 1e-12  # variance per pixel under which a series is constant (its r is 0)
GAMUT_PERCENTILES = (0.5, 99.5)
GAMUT_MARGIN = 0.10  # of the percentile range, added on each side
CEILING_LABEL = "date-gap ceiling (clear pixels of the input vs the reference)"


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
class PearsonSums:
    """Means and co-moments of ``k`` paired series over one shared pixel selection, merged chunk by chunk.

    Chan et al.'s pairwise update: each chunk's own centred sums are merged with the running ones, so a streamed
    scene gives the whole-image r up to rounding and a constant series stays exactly constant (see the module
    docstring). ``k`` is 4 for the bands, 1 for NDVI.
    """

    k: int
    n: int = 0

    def __post_init__(self) -> None:
        self.mean_x, self.mean_y = np.zeros(self.k), np.zeros(self.k)
        self.m2x, self.m2y, self.cxy = np.zeros(self.k), np.zeros(self.k), np.zeros(self.k)

    def add(self, x: np.ndarray, y: np.ndarray) -> PearsonSums:
        """Merge one chunk: ``x``, ``y`` are (k, N) values of the same N pixels."""
        x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
        if x.shape[1] == 0:
            return self
        chunk = PearsonSums(self.k, x.shape[1])
        chunk.mean_x, chunk.mean_y = x.mean(axis=1), y.mean(axis=1)
        dx, dy = x - chunk.mean_x[:, None], y - chunk.mean_y[:, None]
        chunk.m2x, chunk.m2y = np.einsum("kn,kn->k", dx, dx), np.einsum("kn,kn->k", dy, dy)
        chunk.cxy = np.einsum("kn,kn->k", dx, dy)
        return self.merge(chunk)

    def merge(self, other: PearsonSums) -> PearsonSums:
        """Merge the sums of other pixels (a chunk, or another region: inside + outside the cloud = the whole)."""
        if other.n == 0:
            return self
        na, nb = self.n, other.n
        n = na + nb
        ex, ey = other.mean_x - self.mean_x, other.mean_y - self.mean_y
        w = na * nb / n
        self.m2x = self.m2x + other.m2x + ex * ex * w
        self.m2y = self.m2y + other.m2y + ey * ey * w
        self.cxy = self.cxy + other.cxy + ex * ey * w
        self.mean_x = self.mean_x + ex * nb / n
        self.mean_y = self.mean_y + ey * nb / n
        self.n = n
        return self

    def r(self) -> np.ndarray | None:
        """Pearson r per series (k,): 0 where either series is constant; None without pixels."""
        if self.n == 0:
            return None
        floor = R_VAR_FLOOR * self.n
        flat = (self.m2x <= floor) | (self.m2y <= floor)
        with np.errstate(invalid="ignore", divide="ignore"):
            r = self.cxy / np.sqrt(self.m2x * self.m2y)
        return np.clip(np.where(flat, 0.0, r), -1.0, 1.0)

    def mean_r(self) -> float | None:
        """The series' r averaged (band r over B, G, R, NIR); None without pixels."""
        r = self.r()
        return None if r is None else float(r.mean())


def pearson_r(x: np.ndarray, y: np.ndarray) -> float:
    """Pearson r of two 1-D series; 0 when either is constant, NaN when empty."""
    r = PearsonSums(1).add(np.ravel(x)[None], np.ravel(y)[None]).mean_r()
    return math.nan if r is None else r


def _selected(pred: np.ndarray, ref: np.ndarray, mask: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    """(C, N) values of the selected pixels of both images."""
    pred, ref = _check(pred, ref)
    m = _pixel_mask(mask, pred.shape)
    m = np.ones(pred.shape[1:], dtype=bool) if m is None else m
    return pred[:, m], ref[:, m]


def band_r(pred: np.ndarray, ref: np.ndarray, mask: np.ndarray | None = None) -> float:
    """Per-band Pearson r with the reference over the selected pixels, averaged over bands (a flat colour: 0)."""
    p, r = _selected(pred, ref, mask)
    mean = PearsonSums(p.shape[0]).add(p, r).mean_r()
    return math.nan if mean is None else mean


def ndvi_both(pred: np.ndarray, ref: np.ndarray, red: int, nir: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(prediction's NDVI, reference's NDVI, (H, W) where both are defined): the pixels every NDVI score uses."""
    n_p, n_r = ndvi_of(pred, red, nir), ndvi_of(ref, red, nir)
    return n_p, n_r, np.isfinite(n_p) & np.isfinite(n_r)


def ndvi_r(pred: np.ndarray, ref: np.ndarray, mask: np.ndarray | None = None, red_index: int = RED_INDEX,
           nir_index: int = NIR_INDEX) -> float:
    """Pearson r of the NDVI ``(NIR − R)/(NIR + R)`` with the reference's, where both are defined."""
    pred, ref = _check(pred, ref)
    m = _pixel_mask(mask, pred.shape)
    n_p, n_r, ok = ndvi_both(pred, ref, red_index, nir_index)
    ok = ok if m is None else ok & m
    mean = PearsonSums(1).add(n_p[ok][None], n_r[ok][None]).mean_r()
    return math.nan if mean is None else mean


@dataclass(frozen=True)
class Gamut:
    """A scene's clear-pixel colour range per band, ``[low, high]`` (C,) each: see the module docstring."""

    low: np.ndarray
    high: np.ndarray

    def outside(self, image: np.ndarray) -> np.ndarray:
        """(H, W) True where any band of ``image`` (C, H, W) is below ``low`` or above ``high``."""
        image = np.asarray(image)
        lo, hi = self.low[:, None, None], self.high[:, None, None]
        return ((image < lo) | (image > hi)).any(axis=0)


def gamut_of(clear_pixels: np.ndarray) -> Gamut | None:
    """The gamut of (C, N) clear-pixel values (all of them, or a regular sample); None when N is 0."""
    clear_pixels = np.asarray(clear_pixels, dtype=np.float64)
    if clear_pixels.shape[1] == 0:
        return None
    lo, hi = np.percentile(clear_pixels, GAMUT_PERCENTILES, axis=1)
    pad = GAMUT_MARGIN * (hi - lo)
    return Gamut(low=lo - pad, high=hi + pad)


def clear_gamut(cloudy: np.ndarray, cloud: np.ndarray) -> Gamut | None:
    """The gamut of a cloudy image's clear pixels (finite in every band, not cloud); None when none is clear."""
    cloudy = np.asarray(cloudy, dtype=np.float64)
    clear = ~np.asarray(cloud, dtype=bool) & np.isfinite(cloudy).all(axis=0)
    return gamut_of(cloudy[:, clear])


def off_gamut_share(image: np.ndarray, gamut: Gamut, mask: np.ndarray | None = None) -> float:
    """Share of the selected pixels (finite in every band) whose colour is outside ``gamut``; NaN when none."""
    image = np.asarray(image, dtype=np.float64)
    sel = np.isfinite(image).all(axis=0)
    m = _pixel_mask(mask, image.shape)
    sel = sel if m is None else sel & m
    n = int(sel.sum())
    return float(gamut.outside(image)[sel].sum()) / n if n else math.nan


def date_gap_ceiling(cloudy: np.ndarray, ref: np.ndarray, cloud: np.ndarray) -> float:
    """PSNR of the cloudy image's clear pixels against the reference: what a perfect cloud removal would score
    inside the cloud when the reference is another date (:data:`CEILING_LABEL`); NaN when nothing is clear."""
    cloudy, ref = _check(cloudy, ref)
    clear = ~np.asarray(cloud, dtype=bool) & np.isfinite(cloudy).all(axis=0) & np.isfinite(ref).all(axis=0)
    return psnr(cloudy, ref, mask=clear)


def ceiling_of(cloudy_result: dict[str, Any] | None) -> float | None:
    """:func:`date_gap_ceiling` of a streamed scene: the cloudy input's :class:`MetricAccumulator` result's
    outside-cloud PSNR (the same pooled MSE over the same clear pixels); None when absent."""
    return ((cloudy_result or {}).get("outside_cloud") or {}).get("psnr")


@dataclass
class _Agreement:
    """Sums for band r, NDVI r and the off-gamut shares (prediction's and reference's) of one pixel subset."""

    bands: PearsonSums
    ndvi: PearsonSums = field(default_factory=lambda: PearsonSums(1))
    gamut_n: int = 0  # pixels checked against a gamut
    off_pred: int = 0
    off_ref: int = 0

    def add(
        self, p: np.ndarray, r: np.ndarray, sel: np.ndarray, ndvi_pairs: tuple[np.ndarray, np.ndarray] | None,
        off: tuple[np.ndarray, np.ndarray] | None,
    ) -> None:
        self.bands.add(p[:, sel], r[:, sel])
        if ndvi_pairs is not None:
            self.ndvi.add(*ndvi_pairs)
        if off is not None:
            self.gamut_n += int(sel.sum())
            self.off_pred += int(off[0][sel].sum())
            self.off_ref += int(off[1][sel].sum())

    @classmethod
    def union(cls, parts: list[_Agreement]) -> _Agreement:
        """The sums of disjoint subsets together (inside + outside the cloud = the whole image)."""
        out = cls(PearsonSums(parts[0].bands.k))
        for part in parts:
            out.bands.merge(part.bands)
            out.ndvi.merge(part.ndvi)
            out.gamut_n += part.gamut_n
            out.off_pred += part.off_pred
            out.off_ref += part.off_ref
        return out

    def result(self, with_ndvi: bool) -> dict[str, float | None]:
        def share(k: int) -> float | None:
            return k / self.gamut_n if self.gamut_n else None

        return {
            "band_r": self.bands.mean_r(),
            "ndvi_r": self.ndvi.mean_r() if with_ndvi else None,
            "off_gamut": share(self.off_pred),
            "reference_off_gamut": share(self.off_ref),
        }


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
    red_index: int | None = RED_INDEX
    nir_index: int | None = NIR_INDEX
    ndvi_class_edges: tuple[float, ...] = (-0.1, 0.1, 0.4, 0.8)


@dataclass
class MetricAccumulator:
    """Streams tiles of a (prediction, reference) pair into the paper's metrics, band r, NDVI r and off-gamut.

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
        self._agree: dict[str, _Agreement] = {}  # per region, created at the first update (the band count)
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
        gamut: Gamut | None = None,
    ) -> dict[str, float | None]:
        """Add one tile; returns the tile's own metrics (MAE, PSNR, SSIM, SAM, cloud cover %).

        ``pred``/``ref`` are (C, H, W) tile + halo; ``valid``, ``cloud`` (bool) and ``landcover`` (class index)
        are (H, W) on the same window. ``halo = (top, bottom, left, right)`` rows/columns of context around the
        core tile; only core pixels are counted, the halo only feeds the SSIM windows. ``gamut``: the scene's
        clear-pixel gamut (:func:`clear_gamut`, the same for every tile of a scene); without it this tile's pixels
        are not counted in the off-gamut shares.
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

        ndvis = self._ndvis(p, r, v)
        self._update_agreement(p, r, {"cloud": v & cl, "clear": v & ~cl}, ndvis, gamut)
        tile_result: dict[str, Any] = dict(tile.result(self.config.data_range))
        ndvi_rmse = self._update_ndvi(ndvis)
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

    def _ndvis(self, p: np.ndarray, r: np.ndarray, v: np.ndarray) -> tuple[np.ndarray, ...] | None:
        """(prediction's NDVI, reference's NDVI, where both are defined on valid pixels), or None without R/NIR."""
        cfg = self.config
        if cfg.red_index is None or cfg.nir_index is None:
            return None
        np_, nr, ok = ndvi_both(p, r, cfg.red_index, cfg.nir_index)
        return np_, nr, v & ok

    def _update_agreement(self, p: np.ndarray, r: np.ndarray, regions: dict[str, np.ndarray],
                          ndvis: tuple[np.ndarray, ...] | None, gamut: Gamut | None) -> None:
        """Band r, NDVI r and off-gamut sums inside and outside the cloud (the whole image is their union)."""
        off = None if gamut is None else (gamut.outside(p), gamut.outside(r))
        for name, sel in regions.items():
            agree = self._agree.setdefault(name, _Agreement(PearsonSums(p.shape[0])))
            pairs = None if ndvis is None else (ndvis[0][ndvis[2] & sel][None], ndvis[1][ndvis[2] & sel][None])
            agree.add(p, r, sel, pairs, off)

    def _update_ndvi(self, ndvis: tuple[np.ndarray, ...] | None) -> float | None:
        if ndvis is None:
            return None
        cfg = self.config
        np_, nr, ok = ndvis
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
        with_ndvi = cfg.red_index is not None and cfg.nir_index is not None
        agree = dict(self._agree)
        if agree:
            agree["all"] = _Agreement.union(list(agree.values()))
        regions = {"overall": (self._all, "all"), "inside_cloud": (self._cloud, "cloud"),
                   "outside_cloud": (self._clear, "clear")}
        out: dict[str, Any] = {
            part: {**sums.result(dr), **(agree[key].result(with_ndvi) if agree else dict.fromkeys(AGREEMENT_NAMES))}
            for part, (sums, key) in regions.items()
        }
        out |= {
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
