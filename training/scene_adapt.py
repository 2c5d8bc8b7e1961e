"""Scene adaptation (test-time training): fine-tune a model on one cloudy scene's *own* clear pixels, then decloud it.

Why: the bundled model has seen a few dozen public patches and carries colour casts onto scenes it never saw
(issue 13), while fine-tuning on a user's archive fixes much of that (``engine finetune``). A single cloudy scene
already holds an archive's worth of supervision for its own landscape: its clear pixels, with synthetic clouds laid on
them (:func:`engine.refine.synthetic_clouds.add_clouds`), are exact training pairs, SAR included. The real cloud's
pixels never enter the loss — their reference is unknown — so adapting on the scene and scoring inside its real cloud is
honest (nothing of the reference is seen).

The loop itself (:func:`engine.refine.scene_adapt.fine_tune_`, :func:`~engine.refine.scene_adapt.adapt`) lives in the
engine, which runs it for ``engine run --adapt``; ``python -m training.scene_adapt`` scores before / after / flat / fill
inside the cloud on the select split of the bundled recipe and on the report split. Hyper-parameters are fixed up front
(:class:`~engine.refine.scene_adapt.AdaptConfig`), never tuned on the report split.
"""

from __future__ import annotations

import argparse
import time
from typing import Any

import numpy as np
import torch
from torch import nn

from engine.refine.scene_adapt import AdaptConfig, adapt


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
