"""Training losses of the papers this project reproduces, on (N, C, H, W) tensors in [0, 1].

* :class:`MaskedCharbonnier` — Align-CR, eq. (8): ``mean((1 + w·M) ⊙ ((ŷ − y)² + ε²)^α)`` with w = 5,
  ε = 1e-3 (ε² = 1e-6), α = 0.45. The paper writes the per-pixel map only; the reduction is a plain mean over
  every element (batch, band, pixel), as BasicSR's Charbonnier losses and the official training code do. The
  (N, 1, H, W) mask broadcasts over the bands.
* :class:`CARL` — DSen2-CR's cloud-adaptive regularised loss (§3.3): ``mean|CSM⊙(P−T) + (1−CSM)⊙(P−I)| +
  λ·mean|P−T|``, λ = 1. Clear pixels are pulled towards the *input* (they are already correct there), cloudy
  ones towards the target, and the λ term keeps the whole image close to the target.
* :class:`L1Loss` and :class:`L1SSIMLoss` — MMCANet's L_sum = L1 + (1 − mean SSIM) with an 11×11 Gaussian window
  (σ = 1.5, the usual Wang et al. window; MMCANet gives the size only), C1 = 0.01², C2 = 0.03², computed per band
  with "valid" filtering (no padding) so border statistics are not biased by zeros.

All losses share the call signature ``loss(pred, batch)`` where ``batch`` holds "target", "optical" (the cloudy
input) and "mask" tensors, so the training loop need not know which one it runs.

Multi-output models (deep supervision). :class:`StageLoss` wraps any of them for a model that returns several
images (``forward(..., return_stages=True)``, e.g. the MMCANet MPIR variants, coarsest stage first):
``Σ_s w_s · loss(pred_s, batch_s)``, where ``batch_s`` is the batch brought to stage ``s``'s size by average
pooling over whole blocks (the same down-sampling the MPIR stages apply to their input) — "target", "optical" and
"mask" (a cloud fraction then). A stage whose size does not divide the batch's is an error, not a resampling.
``stage_weights`` (``[loss]``) gives one weight per output; empty = the final output only (single-output models).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from engine.errors import EngineError


class MaskedCharbonnier(nn.Module):
    """Align-CR's cloud-weighted Charbonnier loss (eq. 8)."""

    def __init__(self, weight: float = 5.0, eps2: float = 1e-6, alpha: float = 0.45) -> None:
        super().__init__()
        self.weight, self.eps2, self.alpha = weight, eps2, alpha

    def forward(self, pred: torch.Tensor, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
        target = batch["target"]
        mask = batch["mask"].to(pred.dtype)
        per_pixel = ((pred - target) ** 2 + self.eps2) ** self.alpha
        return ((1.0 + self.weight * mask) * per_pixel).mean()


class CARL(nn.Module):
    """DSen2-CR's cloud-adaptive regularised loss; the mask is the cloud-and-shadow mask (CSM)."""

    def __init__(self, lam: float = 1.0) -> None:
        super().__init__()
        self.lam = lam

    def forward(self, pred: torch.Tensor, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
        target, cloudy = batch["target"], batch["optical"]
        csm = batch["mask"].to(pred.dtype)
        adaptive = (csm * (pred - target) + (1.0 - csm) * (pred - cloudy)).abs().mean()
        return adaptive + self.lam * (pred - target).abs().mean()


class L1Loss(nn.Module):
    """Mean absolute error to the cloud-free target."""

    def forward(self, pred: torch.Tensor, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
        return (pred - batch["target"]).abs().mean()


def gaussian_window(size: int = 11, sigma: float = 1.5, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Normalised 2-D Gaussian kernel (size, size)."""
    coords = torch.arange(size, dtype=dtype) - (size - 1) / 2.0
    g = torch.exp(-(coords**2) / (2.0 * sigma**2))
    g = g / g.sum()
    return g[:, None] * g[None, :]


def ssim_map(
    x: torch.Tensor, y: torch.Tensor, window: int = 11, sigma: float = 1.5, c1: float = 0.01**2, c2: float = 0.03**2
) -> torch.Tensor:
    """Differentiable per-pixel SSIM of (N, C, H, W) tensors in [0, 1], each band separately ('valid' windows)."""
    if x.shape[-1] < window or x.shape[-2] < window:
        raise EngineError(f"SSIM needs images of at least {window}×{window} pixels, got {tuple(x.shape[-2:])}")
    channels = x.shape[1]
    kernel = gaussian_window(window, sigma, x.dtype).to(x.device).expand(channels, 1, window, window)

    def filt(t: torch.Tensor) -> torch.Tensor:
        return F.conv2d(t, kernel, groups=channels)

    mu_x, mu_y = filt(x), filt(y)
    sxx = filt(x * x) - mu_x**2
    syy = filt(y * y) - mu_y**2
    sxy = filt(x * y) - mu_x * mu_y
    num = (2 * mu_x * mu_y + c1) * (2 * sxy + c2)
    den = (mu_x**2 + mu_y**2 + c1) * (sxx + syy + c2)
    return num / den


class L1SSIMLoss(nn.Module):
    """MMCANet's L_sum = L1 + (1 − mean SSIM)."""

    def __init__(self, ssim_weight: float = 1.0, window: int = 11, sigma: float = 1.5) -> None:
        super().__init__()
        self.ssim_weight, self.window, self.sigma = ssim_weight, window, sigma

    def forward(self, pred: torch.Tensor, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
        target = batch["target"]
        l1 = (pred - target).abs().mean()
        ssim = ssim_map(pred, target.to(pred.dtype), self.window, self.sigma).mean()
        return l1 + self.ssim_weight * (1.0 - ssim)


@dataclass(frozen=True)
class LossConfig:
    """``[loss]`` section of a training recipe. ``kind``: charbonnier | carl | l1 | l1_ssim."""

    kind: str = "charbonnier"
    weight: float = 5.0  # Align-CR w
    eps2: float = 1e-6  # Align-CR ε² (ε = 1e-3)
    alpha: float = 0.45  # Align-CR α
    lam: float = 1.0  # CARL λ
    ssim_weight: float = 1.0  # MMCANet: plain sum
    # one weight per output of a multi-output model (coarsest stage first); [] = supervise the final output only
    stage_weights: list[float] = field(default_factory=list)
    # > 0 adds StripePenalty (ours, not the paper's): the output's pixel-locked 2-px pattern must match the target's
    stripe_weight: float = 0.0
    # ours (issue 30): a trained model's output as a second target, ``teacher_weight · loss(ŷ, teacher(x))`` —
    # distillation of a deeper network into a faster one; "" = none. The ground truth term stays as it is.
    teacher: str = ""
    teacher_weight: float = 0.0


STAGE_KEYS = ("target", "optical", "mask")


def batch_at(batch: Mapping[str, torch.Tensor], size: tuple[int, int]) -> dict[str, torch.Tensor]:
    """``target``/``optical``/``mask`` average-pooled over whole blocks to ``size`` (the batch itself if equal)."""
    out = dict(batch)
    h, w = batch["target"].shape[-2:]
    if (h, w) == tuple(size):
        return out
    fy, fx = h // size[0], w // size[1]
    if fy < 1 or fy != fx or fy * size[0] != h or fx * size[1] != w:
        raise EngineError(
            f"a stage output of {size[0]}×{size[1]} px is not the {h}×{w} px batch down-sampled by a whole factor: "
            "use a crop that is a multiple of the model's stage factors (e.g. of 32 for mmcanet-mpir2)"
        )
    for key in STAGE_KEYS:
        if key in batch and batch[key].dim() == 4 and tuple(batch[key].shape[-2:]) == (h, w):
            out[key] = F.avg_pool2d(batch[key].float(), fy)
    return out


class StageLoss(nn.Module):
    """Deep supervision: the wrapped loss on every output of a multi-output model, weighted (module docstring).

    Called with a single tensor it is the wrapped loss (weights must then be ``[]`` or one value). ``last_terms``
    holds the unweighted per-output values of the last call (for logging; NaN for an output weighted 0).
    """

    def __init__(self, base: nn.Module, weights: Sequence[float] = ()) -> None:
        super().__init__()
        self.base = base
        self.weights = [float(w) for w in weights]
        self.last_terms: list[float] = []

    def forward(self, pred: torch.Tensor | Sequence[torch.Tensor], batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
        preds = [pred] if isinstance(pred, torch.Tensor) else list(pred)
        weights = self.weights or [0.0] * (len(preds) - 1) + [1.0]
        if len(weights) != len(preds):
            raise EngineError(f"loss.stage_weights has {len(weights)} weight(s) but the model returned "
                              f"{len(preds)} output(s)")
        total: torch.Tensor | None = None
        terms = []
        for p, w in zip(preds, weights):
            if w == 0.0:
                terms.append(float("nan"))
                continue
            term = self.base(p, batch_at(batch, tuple(p.shape[-2:])))
            terms.append(float(term.detach()))
            total = w * term if total is None else total + w * term
        if total is None:
            raise EngineError("loss.stage_weights are all zero: nothing is supervised")
        self.last_terms = terms if len(preds) > 1 else []
        return total


def line_pattern(x: torch.Tensor, axis: int) -> torch.Tensor:
    """(N, C) mean over the image of each odd line minus the mean of its two neighbours along ``axis`` (-2 rows,
    -1 columns): the pixel-locked 2-px pattern :mod:`engine.refine.stripes` measures (0 on any smooth image)."""
    x = x.movedim(axis, -1)
    n = (x.shape[-1] - 1) // 2 * 2
    mid, before, after = x[..., 1:n:2], x[..., 0 : n - 1 : 2], x[..., 2 : n + 1 : 2]
    return (mid - 0.5 * (before + after)).mean(dim=(-2, -1))


class StripePenalty(nn.Module):
    """``base + w · Σ_axes mean|pattern(ŷ) − pattern(y)|`` — ours, not the paper's.

    A network with a ×2 pixel-shuffle output computes the four output phases with four filters; ICNR starts them
    equal, but training drifts them apart and the first retrained ``aligncr-lite`` drew 9–12 DN column stripes over
    thick clouds (engine.refine.stripes). The pattern term is the signed image-mean of the odd-line second difference —
    real detail averages out of it, a pattern locked to the pixel grid does not — so matching the target's (≈ 0 on
    real images) removes the stripes without asking the network to blur detail. L1 on it: its values are ~1e-3.
    """

    def __init__(self, base: nn.Module, weight: float) -> None:
        super().__init__()
        self.base, self.weight = base, weight

    def forward(self, pred: torch.Tensor, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
        target = batch["target"]
        term = sum((line_pattern(pred, a) - line_pattern(target, a)).abs().mean() for a in (-2, -1))
        return self.base(pred, batch) + self.weight * term


def build_base_loss(cfg: LossConfig) -> nn.Module:
    """The single-output loss a recipe names."""
    if cfg.kind == "charbonnier":
        return MaskedCharbonnier(cfg.weight, cfg.eps2, cfg.alpha)
    if cfg.kind == "carl":
        return CARL(cfg.lam)
    if cfg.kind == "l1":
        return L1Loss()
    if cfg.kind == "l1_ssim":
        return L1SSIMLoss(cfg.ssim_weight)
    raise EngineError(f"unknown loss kind '{cfg.kind}' (known: charbonnier, carl, l1, l1_ssim)")


def build_loss(cfg: LossConfig) -> nn.Module:
    """The loss module a recipe names: the single-output loss, wrapped for deep supervision if ``stage_weights``."""
    base = build_base_loss(cfg)
    if cfg.stripe_weight > 0:
        base = StripePenalty(base, cfg.stripe_weight)
    return StageLoss(base, cfg.stage_weights) if cfg.stage_weights else base
