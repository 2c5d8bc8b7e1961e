"""The report's figures as PNG bytes (matplotlib, Agg backend; imported lazily — matplotlib is the ``report`` extra).

Quicklooks (:func:`quicklook_panels`) are RGB (bands R, G, B) panels of cloudy input, output, reference and the
baselines under ONE 2–98 % stretch, taken from the reference's *clear* pixels only (:func:`shared_stretch`), so
colours compare across panels (a stretch per panel would hide a colour shift the model introduced) and a bright
cloud — in the input, or a cloud the reference happens to have — cannot squeeze the land into the dark end.
NDVI maps use a fixed RdYlGn scale (−0.2…0.9) so before and after are comparable too. The NDVI scatter is the
paper's Fig. 8 as a density-coloured 2-D histogram (log colour scale) accumulated over all valid pixels, with the
1:1 line.
"""

from __future__ import annotations

import io
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

DPI = 110
RGB = (2, 1, 0)  # R, G, B positions in the engine's B, G, R, NIR band order
NDVI_VMIN, NDVI_VMAX = -0.2, 0.9


def _plt():
    import warnings

    import matplotlib

    matplotlib.use("Agg", force=True)
    with warnings.catch_warnings():
        # A system matplotlib beside the venv's makes pyplot warn that 3-D axes are unavailable; none are used.
        warnings.filterwarnings("ignore", message="Unable to import Axes3D")
        import matplotlib.pyplot as plt

    return plt


def _png(fig: Any) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI, bbox_inches="tight")
    _plt().close(fig)
    return buf.getvalue()


def stretch_limits(rgb: np.ndarray, valid: np.ndarray, lo: float = 2, hi: float = 98) -> np.ndarray:
    """(3, 2) per-band 2nd/98th percentiles over valid pixels."""
    lims = np.zeros((rgb.shape[0], 2))
    for i, band in enumerate(rgb):
        v = band[valid]
        if v.size:
            lims[i] = np.percentile(v, [lo, hi])
        if lims[i, 1] <= lims[i, 0]:
            lims[i, 1] = lims[i, 0] + 1e-6
    return lims


def apply_stretch(rgb: np.ndarray, valid: np.ndarray, lims: np.ndarray) -> np.ndarray:
    """(3, H, W) → (H, W, 4) RGBA in [0, 1]; invalid pixels transparent."""
    out = np.clip((rgb - lims[:, :1, None]) / (lims[:, 1:, None] - lims[:, :1, None]), 0, 1)
    rgba = np.concatenate([out, valid[None].astype(out.dtype)], axis=0)
    return np.moveaxis(rgba, 0, -1)


def shared_stretch(
    reference: np.ndarray, clear_mask: np.ndarray, rgb: Sequence[int] = RGB, lo: float = 2, hi: float = 98
) -> np.ndarray:
    """(3, 2) per-band ``lo``/``hi`` percentiles of the reference's clear, finite pixels (all its finite pixels when
    none is clear): the one stretch every quicklook panel is drawn with."""
    ref_rgb = np.asarray(reference, dtype=np.float64)[list(rgb)]
    finite = np.isfinite(ref_rgb).all(axis=0)
    basis = finite & np.asarray(clear_mask, dtype=bool)
    return stretch_limits(ref_rgb, basis if basis.any() else finite, lo, hi)


def stretched_panels(
    images: Mapping[str, np.ndarray], lims: np.ndarray, rgb: Sequence[int] = RGB
) -> dict[str, np.ndarray]:
    """Each (bands, H, W) image as (H, W, 4) RGBA under ``lims``; pixels with a non-finite RGB band transparent."""
    out = {}
    for title, image in images.items():
        img = np.asarray(image, dtype=np.float64)[list(rgb)]
        finite = np.isfinite(img).all(axis=0)
        out[title] = apply_stretch(np.where(finite, img, 0.0), finite, lims)
    return out


def quicklook_panels(
    images: Mapping[str, np.ndarray], reference: np.ndarray, clear_mask: np.ndarray, path: Path | str | None = None,
    *, rgb: Sequence[int] = RGB,
) -> bytes:
    """PNG of ``images`` (title → (bands, H, W) reflectance, NaN = no data) side by side under one stretch.

    The stretch is :func:`shared_stretch` of ``reference`` (the cloud-free image; without one, pass the output) over
    ``clear_mask`` ((H, W), True = clear); ``rgb`` are the band positions of R, G, B (default B, G, R, NIR order).
    Written to ``path`` too when given. Torch-free and scene-free: the model card figures use it on in-memory arrays.
    """
    lims = shared_stretch(reference, clear_mask, rgb)
    png = quicklooks(list(stretched_panels(images, lims, rgb).items()))
    if path is not None:
        Path(path).write_bytes(png)
    return png


def quicklooks(panels: Sequence[tuple[str, np.ndarray]]) -> bytes:
    """RGBA images with titles: one row up to three panels, else two rows."""
    plt = _plt()
    n = len(panels)
    ncols = n if n <= 3 else math.ceil(n / 2)
    nrows = math.ceil(n / ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(4.2 * ncols, 4.4 * nrows), squeeze=False)
    for ax in axes.ravel():
        ax.set_axis_off()
    for ax, (title, img) in zip(axes.ravel(), panels):
        ax.imshow(img, interpolation="nearest")
        ax.set_title(title)
    fig.tight_layout()
    return _png(fig)


def ndvi_maps(panels: Sequence[tuple[str, np.ndarray]]) -> bytes:
    """NDVI maps (masked arrays) on a common colour scale with one colour bar."""
    plt = _plt()
    n = len(panels)
    fig, axes = plt.subplots(1, n, figsize=(4.2 * n + 0.8, 4.4), squeeze=False)
    im = None
    for ax, (title, arr) in zip(axes[0], panels):
        im = ax.imshow(arr, cmap="RdYlGn", vmin=NDVI_VMIN, vmax=NDVI_VMAX, interpolation="nearest")
        ax.set_title(title)
        ax.set_axis_off()
    fig.colorbar(im, ax=list(axes[0]), shrink=0.8, extend="both", label="NDVI")
    return _png(fig)


def mask_and_change(cloud: np.ndarray, change: np.ndarray, cover_percent: float | None, source: str) -> bytes:
    """Cloud mask (masked uint8) and change magnitude |output − input| (masked float)."""
    plt = _plt()
    from matplotlib.colors import ListedColormap
    from matplotlib.patches import Patch

    fig, axes = plt.subplots(1, 2, figsize=(10, 4.4))
    cover = f"{cover_percent:.1f} %" if cover_percent is not None else "n/a"
    colours = ["#2b6a3f", "#f2f2f2"]
    axes[0].imshow(cloud, cmap=ListedColormap(colours), vmin=0, vmax=1, interpolation="nearest")
    axes[0].legend(
        handles=[
            Patch(facecolor=colours[1], edgecolor="0.3", label="cloud"),
            Patch(facecolor=colours[0], label="clear"),
        ],
        loc="lower left", fontsize=8, framealpha=0.9,
    )
    axes[0].set_title(f"cloud mask ({source}): {cover} cloud")
    axes[0].set_axis_off()
    vmax = float(np.percentile(change.compressed(), 99)) if change.count() else 1.0
    im = axes[1].imshow(change, cmap="magma", vmin=0, vmax=max(vmax, 1e-3), interpolation="nearest")
    axes[1].set_title("change |output − input| (mean of 4 bands)")
    axes[1].set_axis_off()
    fig.colorbar(im, ax=axes[1], shrink=0.8, extend="max", label="reflectance [0, 1]")
    return _png(fig)


def ndvi_scatter(panels: Sequence[tuple[str, str, str, np.ndarray]]) -> bytes:
    """Density 2-D histograms: (title, x label, y label, hist over [-1, 1]², x along axis 0)."""
    plt = _plt()
    from matplotlib.colors import LogNorm

    n = len(panels)
    fig, axes = plt.subplots(1, n, figsize=(4.6 * n, 4.2), squeeze=False)
    for ax, (title, xl, yl, hist) in zip(axes[0], panels):
        edges = np.linspace(-1, 1, hist.shape[0] + 1)
        h = np.ma.masked_equal(hist.T.astype(float), 0)
        if h.count():
            mesh = ax.pcolormesh(edges, edges, h, cmap="viridis", norm=LogNorm(vmin=1, vmax=max(2.0, h.max())))
            fig.colorbar(mesh, ax=ax, label="pixels")
        ax.plot([-1, 1], [-1, 1], color="0.4", lw=0.8, ls="--")
        ax.set(xlim=(-1, 1), ylim=(-1, 1), xlabel=xl, ylabel=yl, title=title, aspect="equal")
        ax.grid(alpha=0.3)
    fig.tight_layout()
    return _png(fig)


def grouped_bars(
    title: str, categories: Sequence[str], series: dict[str, Sequence[float | None]], ylabels: Sequence[str]
) -> bytes:
    """One subplot per metric (``series`` keys are "metric|label"), grouped bars per category; None → no bar."""
    plt = _plt()
    metrics = list(dict.fromkeys(k.split("|")[0] for k in series))
    ncols = min(2, len(metrics))
    nrows = -(-len(metrics) // ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(5.6 * ncols, 3.6 * nrows), squeeze=False)
    x = np.arange(len(categories))
    colors = ["#9e9e9e", "#1f77b4", "#2ca02c"]
    for i, (ax, metric, ylabel) in enumerate(zip(axes.ravel(), metrics, ylabels)):
        labels = [k.split("|")[1] for k in series if k.split("|")[0] == metric]
        width = 0.8 / max(1, len(labels))
        for j, label in enumerate(labels):
            vals = [np.nan if v is None else v for v in series[f"{metric}|{label}"]]
            ax.bar(x + (j - (len(labels) - 1) / 2) * width, vals, width, label=label, color=colors[j % len(colors)])
        ax.set_xticks(x, categories, rotation=30, ha="right")
        ax.set_ylabel(ylabel)
        ax.grid(axis="y", alpha=0.3)
        if len(labels) > 1 and i == 0:
            ax.legend(fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    return _png(fig)
