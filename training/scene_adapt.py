"""Scene adaptation (test-time training): fine-tune a model on one cloudy scene's *own* clear pixels, then decloud it.

Why: the bundled model has seen a few dozen public patches and carries colour casts onto scenes it never saw
(issue 13), while fine-tuning on a user's archive fixes much of that (``engine finetune``). A single cloudy scene
already holds an archive's worth of supervision for its own landscape: its clear pixels, with synthetic clouds laid on
them (:func:`training.datasets.clouds.add_clouds`), are exact training pairs, SAR included. The real cloud's pixels
never enter the loss — their reference is unknown — so adapting on the scene and scoring inside its real cloud is
honest (nothing of the reference is seen).

:func:`fine_tune_` is the loop ``engine run --adapt`` uses (:mod:`engine.refine.scene_adapt` reads the scene's windows);
:func:`adapt` fine-tunes a copy of the model on one in-memory sample; ``python -m training.scene_adapt`` scores
before / after / flat / fill inside the cloud on the select split of the bundled recipe and on the report split.
Hyper-parameters are fixed up front (:class:`AdaptConfig`), never tuned on the report split.
"""

from __future__ import annotations

import argparse
import copy
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from training.datasets.augment import crop_sample, flip_rotate
from training.datasets.base import Sample
from training.datasets.clouds import add_clouds


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


def training_batch(pool: Sequence[Sample], cfg: AdaptConfig, rng: np.random.Generator) -> dict[str, torch.Tensor]:
    """``cfg.batch`` crops of the scene's windows ``pool``, each the clearest of ``cfg.tries``, flipped/rotated, with
    synthetic clouds; ``w`` is the loss weight: 0 on each window's real cloud (``sample["mask"]``: cloud, or no
    data), 1 + w on the synthetic one."""
    items = []
    while len(items) < cfg.batch:
        crops = [crop_sample(pool[int(rng.integers(len(pool)))] if len(pool) > 1 else pool[0], cfg.crop, rng)
                 for _ in range(cfg.tries)]  # fmt: skip
        crop = flip_rotate(min(crops, key=lambda c: float(c["mask"].mean())), rng)
        real = crop["mask"]
        clouded = add_clouds({**crop, "mask": np.zeros_like(real)}, rng)
        items.append({"optical": clouded["optical"], "sar": crop["sar"], "target": crop["optical"],
                      "w": (1.0 - real) * (1.0 + cfg.cloud_weight * clouded["mask"])})  # fmt: skip
    return {k: torch.from_numpy(np.stack([np.ascontiguousarray(i[k], dtype=np.float32) for i in items]))
            for k in items[0]}  # fmt: skip


def fine_tune_(
    module: nn.Module, pool: Sequence[Sample], cfg: AdaptConfig = AdaptConfig(), seed: int = 0,
    device: torch.device | None = None, on_step: Callable[[int], None] | None = None,
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
        batch = {k: v.to(device) for k, v in training_batch(pool, cfg, rng).items()}
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


def _score_view(model: nn.Module, view: Any, name: str, cfg: AdaptConfig) -> dict[str, Any]:
    """Inside-cloud PSNR of before / after / flat / fill per scored sample of ``view``, and the margins."""
    from torch.utils.data import DataLoader

    from training.inputs import model_kwargs
    from training.scoring import baseline_images, region_scores, scored

    res: dict[str, list[float]] = {}
    for i, batch in enumerate(DataLoader(view, batch_size=1, shuffle=False, num_workers=0)):
        cloud = batch["mask"].numpy()[0, 0] > 0.5
        if not scored(cloud):
            continue
        cloudy, target = batch["optical"].numpy()[0], batch["target"].numpy()[0]
        tuned = adapt(model, {"optical": cloudy, "sar": batch["sar"].numpy()[0], "mask": batch["mask"].numpy()[0]},
                      cfg, seed=i)  # fmt: skip
        images = baseline_images(cloudy, cloud)
        with torch.no_grad():
            for key, net in (("before", model.eval()), ("after", tuned)):
                images[key] = net(batch["optical"], batch["sar"], **model_kwargs(net, batch)).clamp(0, 1).numpy()[0]
        for key, img in images.items():
            res.setdefault(key, []).append(float(region_scores(img, target, cloud)["psnr_in"]))
        print(name, i, {k: round(v[-1], 2) for k, v in res.items()}, flush=True)
    best = np.maximum(res["flat"], res["fill"])
    return {
        "mean": {k: float(np.mean(v)) for k, v in res.items()},
        "margin": {k: float(np.mean(np.array(res[k]) - best)) for k in ("before", "after")},
        "wins": {k: int(np.sum(np.array(res[k]) > best)) for k in ("before", "after")},
        "samples": len(best),
    }


def main(argv: list[str] | None = None) -> int:
    from training.config import load_config
    from training.evaluate import load_model, report_views
    from training.train import build_views

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--weights", default="resources/weights/aligncr-lite.safetensors")
    parser.add_argument("--recipe", default="training/configs/aligncr_lite_bundled.toml", help="select split")
    parser.add_argument("--report", default="training/configs/aligncr_lite_report.toml", help="report split")
    parser.add_argument("--steps", type=int, default=AdaptConfig.steps)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    cfg = AdaptConfig(steps=args.steps)
    model, _ = load_model(args.weights, torch.device("cpu"))
    views = {"select": build_views(load_config(args.recipe))[1]}
    views.update({f"report-{k}": v for k, v in report_views(args.report).items()})
    start = time.time()
    for name, view in views.items():
        out = _score_view(model, view, name, cfg)
        print(f"SUMMARY {name}: {out} ({time.time() - start:.0f} s)", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
