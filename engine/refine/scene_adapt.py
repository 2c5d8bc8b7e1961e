"""``engine run --adapt STEPS``: fine-tune the run's own copy of the model on the scene's clear pixels first.

Why: a model trained on a few dozen public patches carries colour casts and the wrong landscape onto a scene it
never saw (issue 13). The cloudy scene itself holds exact training pairs for its own landscape: its clear pixels
with synthetic clouds laid on them (:mod:`.synthetic_clouds`), SAR included (the measured experiment is
``python -m training.scene_adapt``). The real cloud's pixels (the mask's, else the ones
:mod:`engine.align.cloudmask` detects, grown by :data:`CLOUD_MARGIN`) and pixels without data never enter the loss.
The weights file is not changed: only the copy this run loaded is tuned.

The pool is a few windows of the scene, read through the same aligned readers as the tiles (so SAR, land cover
and extra inputs are on the optical grid exactly as the network will see them): :data:`CANDIDATES` windows of
:data:`WINDOW` px at seeded random places, of which the :data:`KEEP` clearest with at least :data:`MIN_CLEAR` of
usable pixels are kept (a nearly all-cloud scene adapts too: each crop is the clearest of several, and only its clear
pixels count), if they hold :data:`MIN_TARGETS` usable pixels in all. Everything is seeded: the same scene and
settings give the same output.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np
import torch
from rasterio.windows import Window
from scipy import ndimage
from torch import nn

from engine.align.cloudmask import detect_clouds_scaled
from engine.align.inputs import read_optical, read_window
from engine.align.reader import WindowContext
from engine.progress import Progress
from engine.refine import prior
from engine.refine.samples import Sample, crop_sample, flip_rotate
from engine.refine.synthetic_clouds import add_clouds
from engine.sources import normalise
from engine.sources.masks import cloud_mask_from_bands

if TYPE_CHECKING:
    from engine.refine.scene_check import HeldOut

log = logging.getLogger("engine")

WINDOW = 256  # px: a pool window (smaller scenes: the whole scene)
CANDIDATES = 32  # windows read to choose from
KEEP = 12  # the clearest kept
MIN_CLEAR = 0.01  # share of a window's pixels that must be usable targets to join the pool
MIN_TARGETS = 1000  # usable target pixels the whole pool must hold (a 97 %-cloud 256² scene still has ~2000)
CLOUD_MARGIN = 3  # px the real cloud is grown by: its soft edge is no target either
SEED = 0


@dataclass(frozen=True)
class AdaptConfig:
    """Fixed before any scoring: 80 Adam steps of 4 crops of 80 px (a multiple of the 3 m / 10 m SAR ratio's 10 and of
    the network's ×8 pyramid), the paper's loss shape ((1 + 5·M)((y − ŷ)² + ε²)^0.45) with M the synthetic cloud."""

    steps: int = 80
    crop: int = 80
    batch: int = 4
    lr: float = 5e-5
    tries: int = 20  # random crops drawn per item; the clearest is kept (heavily clouded scenes have few clear ones)
    cloud_weight: float = 5.0
    alpha: float = 0.45
    eps2: float = 1e-6


def training_batch(pool: Sequence[Sample], cfg: AdaptConfig, rng: np.random.Generator,
                   with_prior: prior.PriorInput | None = None) -> dict[str, torch.Tensor]:  # fmt: skip
    """``cfg.batch`` crops of the scene's windows ``pool``, each the clearest of ``cfg.tries``, flipped/rotated, with
    synthetic clouds; ``w`` is the loss weight: 0 on each window's real cloud (``sample["mask"]``: cloud, or no
    data), 1 + w on the synthetic one. ``with_prior``: the crop's ``prior`` channels are packed after its ``sar``,
    computed from the clouded crop (clear = neither cloud)."""
    items = []
    while len(items) < cfg.batch:
        crops = [crop_sample(pool[int(rng.integers(len(pool)))] if len(pool) > 1 else pool[0], cfg.crop, rng)
                 for _ in range(cfg.tries)]  # fmt: skip
        crop = flip_rotate(min(crops, key=lambda c: float(c["mask"].mean())), rng)
        real = crop["mask"]
        clouded = add_clouds({**crop, "mask": np.zeros_like(real)}, rng)
        packed = crop["sar"]
        if with_prior is not None:
            clear = (real[0] < 0.5) & (clouded["mask"][0] < 0.5)
            sar = crop["sar"][: with_prior.sar_channels]
            packed = np.concatenate([packed, prior.channels(clouded["optical"], clear, with_prior.colours, sar)])
        items.append({"optical": clouded["optical"], "sar": packed, "target": crop["optical"],
                      "w": (1.0 - real) * (1.0 + cfg.cloud_weight * clouded["mask"])})  # fmt: skip
    return {k: torch.from_numpy(np.stack([np.ascontiguousarray(i[k], dtype=np.float32) for i in items]))
            for k in items[0]}  # fmt: skip


def fine_tune_(
    module: nn.Module, pool: Sequence[Sample], cfg: AdaptConfig = AdaptConfig(), seed: int = 0,
    device: torch.device | None = None, on_step: Callable[[int], None] | None = None,
    with_prior: prior.PriorInput | None = None,
) -> nn.Module:  # fmt: skip
    """Fine-tune ``module`` in place on windows of one scene (``pool``: samples with a cloudy ``optical`` image in
    [0, 1], the ``sar`` input ``module(optical, sar)`` takes on the same grid, and ``mask`` = 1 where the pixel
    must not be a target: its real cloud or no data). ``on_step(k)`` is called after each step (progress, cancel).
    Returned in eval mode."""
    device = device or next(module.parameters()).device
    module.train()
    opt = torch.optim.Adam([p for p in module.parameters() if p.requires_grad], lr=cfg.lr)
    rng = np.random.default_rng(seed)
    for step in range(cfg.steps):
        batch = {k: v.to(device) for k, v in training_batch(pool, cfg, rng, with_prior).items()}
        pred = module(batch["optical"], batch["sar"])
        loss = (batch["w"] * ((pred - batch["target"]) ** 2 + cfg.eps2) ** cfg.alpha).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        if on_step is not None:
            on_step(step + 1)
    return module.eval()


def adapt(model: nn.Module, sample: Sample, cfg: AdaptConfig = AdaptConfig(), seed: int = 0) -> nn.Module:
    """A copy of ``model`` fine-tuned on ``sample`` (``optical`` cloudy image in [0, 1], ``sar``, ``mask`` = its real
    cloud, 1 = cloud); the original is left as it was. Returned in eval mode."""
    return fine_tune_(copy.deepcopy(model), [sample], cfg, seed)


class SceneInputs(Protocol):
    """What the pool reads (the pipeline's opened inputs)."""

    optical: Any
    band_index: list[int]
    optical_scale: float
    roles: list[Any]
    mask: Any
    mask_reader: Any
    declared: Any  # engine.models.roles.ModelInputs: whether the model takes the prior
    prior_input: prior.PriorInput | None


def adapt_to_scene(module: nn.Module, inp: SceneInputs, norm: normalise.NormalisationConfig, shape: tuple[int, int],
                   steps: int, device: torch.device, progress: Progress,
                   held_out: Sequence[HeldOut] = ()) -> str | None:  # fmt: skip
    """Fine-tune ``module`` (called as ``module(optical, packed)``, the runner's module) in place for ``steps`` steps
    on the scene ``inp`` of ``shape`` (H, W), never on the ``held_out`` windows' synthetic clouds
    (:mod:`engine.refine.scene_check`). Returns a warning when the scene offers nothing to adapt on (the module is left
    as it was), else None."""
    cfg = AdaptConfig(steps=steps)
    if min(shape) < cfg.crop:
        return f"--adapt skipped: the scene ({shape[1]}×{shape[0]} px) is smaller than one {cfg.crop}-px crop"
    if not any(p.requires_grad for p in module.parameters()):
        return "--adapt skipped: this model has no trained weights to adapt"
    pool = clear_pool(lambda win: read_sample(inp, norm, win, held_out), shape, min(WINDOW, *shape), progress)
    if sum(float((1.0 - s["mask"]).sum()) for s in pool) < MIN_TARGETS:
        return (f"--adapt skipped: the scene has fewer than {MIN_TARGETS} clear pixels with SAR and every other "
                "input to adapt on")  # fmt: skip
    clear = float(np.mean([1.0 - s["mask"].mean() for s in pool]))
    log.info("adapting to the scene: %d steps on %d of its windows (%.0f %% clear)", steps, len(pool), 100 * clear)

    def on_step(k: int) -> None:
        progress.check_cancelled()
        progress.update(0.0, f"adapting to the scene: step {k}/{steps}")

    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):  # seeded, the caller's RNG kept
        torch.manual_seed(SEED)
        with_prior = inp.prior_input if inp.declared is not None and inp.declared.prior else None
        fine_tune_(module, pool, cfg, seed=SEED, device=device, on_step=on_step, with_prior=with_prior)
    return None


def clear_pool(read: Callable[[Window], Sample], shape: tuple[int, int], size: int, progress: Progress) -> list[Sample]:
    """The :data:`KEEP` clearest of :data:`CANDIDATES` seeded random ``size``-px windows with at least
    :data:`MIN_CLEAR` usable pixels, clearest first."""
    rng = np.random.default_rng(SEED)
    h, w = shape
    corners = {(int(rng.integers(0, h - size + 1)), int(rng.integers(0, w - size + 1))) for _ in range(CANDIDATES)}
    samples = []
    for i, (y, x) in enumerate(sorted(corners)):
        progress.check_cancelled()
        progress.update(0.0, f"adapting to the scene: reading window {i + 1}/{len(corners)}")
        sample = read(Window(x, y, size, size))
        if 1.0 - float(sample["mask"].mean()) >= MIN_CLEAR:
            samples.append(sample)
    samples.sort(key=lambda s: float(s["mask"].mean()))
    return samples[:KEEP]


def read_sample(inp: SceneInputs, norm: normalise.NormalisationConfig, win: Window,
                held_out: Sequence[HeldOut] = ()) -> Sample:  # fmt: skip
    """One window as a training sample: the normalised optical image, the packed inputs and ``mask`` = 1 where the
    pixel may not be a target (cloud, grown by :data:`CLOUD_MARGIN`; no optical, SAR or other input data; a
    ``held_out`` window's synthetic cloud, whose clouded image replaces the window's there)."""
    raw, x, opt_ok = read_optical(inp.optical, inp.band_index, inp.optical_scale, win)
    packed, inputs_ok, _ = read_window(inp.roles, win, WindowContext(x, inp.optical_scale, norm))
    if inp.mask_reader is not None:
        cloud = cloud_mask_from_bands(np.nan_to_num(inp.mask_reader.read(win), nan=0.0), inp.mask.nodata)
    else:  # the clouds engine.align.cloudmask detects (no mask given)
        cloud = detect_clouds_scaled(raw[inp.band_index], opt_ok, inp.optical_scale)
    cloud = ndimage.binary_dilation(cloud, iterations=CLOUD_MARGIN) if cloud.any() else cloud
    unusable = cloud | ~(opt_ok & inputs_ok)
    x = x.astype(np.float32)
    for item in held_out:
        item.paste_into(win, x, unusable)
    return {"optical": x, "sar": packed.astype(np.float32),
            "mask": unusable[None].astype(np.float32)}  # fmt: skip
