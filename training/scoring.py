"""Per-sample scores of a model beside the non-learned baselines, inside the cloud, outside it and overall.

The number that decides whether a model is worth shipping is its **inside-cloud PSNR margin over the best
baseline** (:mod:`engine.refine.baselines`: ``flat`` and ``fill``, computed from the same cloudy input and mask): a
model that only corrects brightness beats the cloudy input by 8–12 dB and still loses to a harmonic fill of the cloud.
Training validation chooses the checkpoint on it (``run.select = "margin"``), and ``training.evaluate`` reports it.

Inside-cloud figures are taken over samples with 1–99 % cloud: a sample with no clear pixel gives the baselines
nothing to work from (they degenerate to the cloudy input), and one with no cloud has no inside.

Beside PSNR/SSIM/MAE/SAM, inside the cloud (issue 26; the maths in :mod:`engine.outputs.metrics`): ``bandr_in``
(per-band Pearson r, a flat colour scores 0), ``ndvir_in`` (NDVI r) and ``offgamut_in`` (share of pixels outside
the sample's clear-pixel gamut, taken from the cloudy input) for every method, the truth's own
``reference_offgamut_in``, and ``ceiling_psnr``, the date-gap ceiling (clear pixels of the cloudy input against the
reference: on a real triplet what a perfect removal would score inside the cloud; averaged over the scored samples,
like the inside-cloud figures it is read beside).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from engine.outputs import metrics
from engine.refine import baselines

METHODS = ("model", "identity", *baselines.BASELINES)
SCORED_COVER = (0.01, 0.99)
SCORED_ONLY = ("ceiling_psnr",)  # averaged over the scored samples, like the ``*_in`` keys
SHAPE_KEYS = ("bandr_in", "ndvir_in", "offgamut_in")


def _finite(value: float) -> float | None:
    return value if np.isfinite(value) else None


def off_gamut_in(image: np.ndarray, cloud: np.ndarray, gamut: metrics.Gamut | None) -> float | None:
    """The off-gamut share inside ``cloud``; None without cloud or gamut (no clear pixel to take it from)."""
    return None if gamut is None or not cloud.any() else _finite(metrics.off_gamut_share(image, gamut, cloud))


def shape_scores(pred: np.ndarray, target: np.ndarray, cloud: np.ndarray,
                 gamut: metrics.Gamut | None) -> dict[str, float | None]:
    """Band r, NDVI r and the off-gamut share inside ``cloud`` (None where undefined)."""
    if not cloud.any():
        return dict.fromkeys(SHAPE_KEYS)
    return {"bandr_in": _finite(metrics.band_r(pred, target, cloud)),
            "ndvir_in": _finite(metrics.ndvi_r(pred, target, cloud)),
            "offgamut_in": off_gamut_in(pred, cloud, gamut)}


def region_scores(pred: np.ndarray, target: np.ndarray, cloud: np.ndarray) -> dict[str, float | None]:
    """PSNR/SSIM/MAE/SAM overall and PSNR/SSIM/MAE/SAM inside and outside ``cloud`` for one (bands, H, W) image."""
    out: dict[str, float | None] = {
        "psnr": metrics.psnr(pred, target),
        "ssim": metrics.ssim(pred, target),
        "mae": metrics.mae(pred, target),
        "sam": metrics.sam_degrees(pred, target),
    }
    ssim_px = metrics.ssim_map(pred, target)
    for suffix, sel in (("in", cloud), ("out", ~cloud)):
        if not sel.any():
            out.update({f"{k}_{suffix}": None for k in ("psnr", "ssim", "mae", "sam")})
            continue
        out[f"psnr_{suffix}"] = metrics.psnr(pred, target, mask=sel)
        out[f"ssim_{suffix}"] = float(ssim_px[sel].mean())
        out[f"mae_{suffix}"] = metrics.mae(pred, target, mask=sel)
        out[f"sam_{suffix}"] = metrics.sam_degrees(pred, target, mask=sel)
    return out


def baseline_images(optical: np.ndarray, cloud: np.ndarray) -> dict[str, np.ndarray]:
    """``{"flat": ..., "fill": ...}`` of one cloudy image (clipped to [0, 1] like a model's output)."""
    return {name: np.clip(baselines.baseline(name, optical, cloud), 0.0, 1.0) for name in baselines.BASELINES}


def scored(cloud: np.ndarray) -> bool:
    """Whether a sample counts for the inside-cloud figures (see the module docstring)."""
    cover = float(np.mean(cloud))
    return SCORED_COVER[0] <= cover <= SCORED_COVER[1]


def summarise(rows: list[dict[str, Any]]) -> dict[str, float | None]:
    """Mean over samples of each ``method_metric`` key; inside-cloud keys over the scored samples only; plus
    ``margin_in`` (model's inside PSNR − the best baseline's, per sample, averaged) and ``wins_in`` (share of
    scored samples where the model beats every baseline inside the cloud)."""
    out: dict[str, float | None] = {}
    keys = {k for r in rows for k in r if k not in ("id", "cover", "scored")}
    for key in sorted(keys):
        inside = key.endswith("_in") or key in SCORED_ONLY
        vals = [r[key] for r in rows if r.get(key) is not None and (r["scored"] or not inside)]
        out[key] = float(np.mean(vals)) if vals else None
    margins = [r["model_psnr_in"] - max(r[f"{b}_psnr_in"] for b in baselines.BASELINES)
               for r in rows if r["scored"] and r.get("model_psnr_in") is not None]
    out["margin_in"] = float(np.mean(margins)) if margins else None
    out["wins_in"] = float(np.mean([m > 0 for m in margins])) if margins else None
    out["scored_samples"] = len(margins)
    return out


def score_sample(sid: str, pred: np.ndarray, optical: np.ndarray, target: np.ndarray, cloud: np.ndarray,
                 cached_baselines: dict[str, np.ndarray] | None = None) -> dict[str, Any]:
    """One row: ``{method}_{metric}`` for the model, the cloudy input and each baseline, the reference's own
    ``reference_offgamut_in`` and the date-gap ``ceiling_psnr`` (see the module docstring)."""
    base = cached_baselines if cached_baselines is not None else baseline_images(optical, cloud)
    row: dict[str, Any] = {"id": sid, "cover": float(np.mean(cloud)), "scored": scored(cloud)}
    gamut = metrics.clear_gamut(optical, cloud)
    for name, img in (("model", pred), ("identity", optical), *base.items()):
        for k, v in (region_scores(img, target, cloud) | shape_scores(img, target, cloud, gamut)).items():
            row[f"{name}_{k}"] = v
    row["reference_offgamut_in"] = off_gamut_in(target, cloud, gamut)
    row["ceiling_psnr"] = _finite(metrics.date_gap_ceiling(optical, target, cloud))
    return row


def model_rows(model: Any, view: Any, device: Any, batch_size: int = 1,
               cache: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    """:func:`score_sample` rows of a model (``torch.nn.Module``) over a dataset view, in eval mode, no grad.

    ``cache`` keeps each sample's baselines by id (a validation view is deterministic, so they never change).
    """
    import torch
    from torch.utils.data import DataLoader

    from training.inputs import model_kwargs, to_device

    was_training = model.training
    model.eval()
    rows = []
    with torch.no_grad():
        for batch in DataLoader(view, batch_size=batch_size, shuffle=False, num_workers=0):
            tensors = to_device(batch, device)
            pred = model(tensors["optical"], tensors["sar"], **model_kwargs(model, tensors))
            pred = pred.float().clamp(0, 1).cpu().numpy()
            target, cloudy = batch["target"].numpy(), batch["optical"].numpy()
            masks = batch["mask"].numpy()[:, 0] > 0.5
            for k in range(pred.shape[0]):
                sid = str(batch["id"][k])
                base = None
                if cache is not None:
                    base = cache.setdefault(sid, baseline_images(cloudy[k], masks[k]))
                rows.append(score_sample(sid, pred[k], cloudy[k], target[k], masks[k], base))
    model.train(was_training)
    return rows
