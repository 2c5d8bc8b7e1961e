"""Does low confidence mark high error? Spearman correlation of the TTA spread with the absolute error, per pixel
inside the cloud, on held-out samples with a cloud-free reference.

What it measures: for each sample the model runs on ``--tta`` flips/rotations of optical + SAR
(:func:`engine.stream.tta.predict`, exactly what ``engine run --confidence`` does per tile); the spread is the per-band
standard deviation of those outputs averaged over the bands (reflectance), the error is the absolute difference
between their mean (the output a ``--confidence`` run writes) and the cloud-free reference, averaged over the
bands. Inside the cloud mask the two are ranked against each other (``scipy.stats.spearmanr``) per sample and
pooled over all samples; ``--max-pixels`` subsamples each sample's cloud pixels (seeded) when given. The pooled
mean error per spread quintile says the same in reflectance, and ``mean_abs_error_without_tta`` is the plain
output's (the identity transform alone) for comparison. Samples are read with the training readers as
``training/evaluate.py`` reads them (SEN12MS-CR, M3R-CR or a layout split), whole, no augmentation.

    python benchmarks/confidence_correlation.py --data /work/shared/data/sen12mscr_triplets --ids 4438 6553 746
    python benchmarks/confidence_correlation.py --weights final.safetensors --data D --split val --out conf.json

Only models that take (optical, sar) alone: the extra inputs of temporal or DEM models are not turned with them.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch
from scipy.stats import spearmanr

from engine.errors import EngineError
from engine.stream import tta
from engine.stream.mode import BUNDLED
from training.datasets import AugmentConfig, TrainView
from training.evaluate import load_model, open_dataset
from training.inputs import input_keys

QUANTILES = 5


def spread_and_errors(model: torch.nn.Module, sample: dict[str, Any], n: int,
                      device: torch.device) -> tuple[np.ndarray, np.ndarray, np.ndarray]:  # fmt: skip
    """Per-pixel (H, W) TTA spread, |TTA mean − reference| and |plain output − reference| (each averaged over the
    bands) of one sample; the plain output is the first transform's (the identity)."""
    outputs: list[np.ndarray] = []

    @torch.inference_mode()
    def run(optical: torch.Tensor, sar: torch.Tensor) -> np.ndarray:
        outputs.append(model(optical.to(device), sar.to(device)).float().clamp(0.0, 1.0).cpu().numpy())
        return outputs[-1]

    mean, spread = tta.predict(run, sample["optical"][None], sample["sar"][None], n)
    target = sample["target"].numpy().astype(np.float64)
    error = np.abs(mean[0].astype(np.float64) - target).mean(axis=0)
    plain = np.abs(outputs[0][0].astype(np.float64) - target).mean(axis=0)
    return spread[0].astype(np.float64), error, plain


def _correlation(spread: np.ndarray, error: np.ndarray, plain: np.ndarray) -> dict[str, Any]:
    rho, p = spearmanr(spread, error)
    return {"pixels": int(spread.size), "spearman_rho": float(rho), "p_value": float(p),
            "mean_spread": float(spread.mean()), "mean_abs_error": float(error.mean()),
            "mean_abs_error_without_tta": float(plain.mean())}  # fmt: skip


def _by_quantile(spread: np.ndarray, error: np.ndarray) -> list[dict[str, float]]:
    """Mean |error| in each spread quantile (lowest spread first)."""
    order = np.argsort(spread, kind="stable")
    return [{"spread_from": float(spread[part[0]]), "spread_to": float(spread[part[-1]]),
             "mean_abs_error": float(error[part].mean())}
            for part in np.array_split(order, QUANTILES) if part.size]  # fmt: skip


def measure(model: torch.nn.Module, view: TrainView, n: int, device: torch.device, max_pixels: int,
            seed: int) -> dict[str, Any]:  # fmt: skip
    """Per-sample and pooled correlation inside the cloud (samples without cloud are listed, not scored)."""
    rng = np.random.default_rng(seed)
    rows, pooled_s, pooled_e, pooled_p = [], [], [], []
    for i in range(len(view)):
        sample = view[i]
        cloud = sample["mask"][0].numpy() > 0.5
        row: dict[str, Any] = {"id": sample["id"], "cloud_fraction": float(cloud.mean())}
        if cloud.sum() < 2:
            rows.append({**row, "skipped": "no cloud"})
            continue
        spread, error, plain = spread_and_errors(model, sample, n, device)
        s, e, p = spread[cloud], error[cloud], plain[cloud]
        if max_pixels and s.size > max_pixels:
            keep = rng.choice(s.size, max_pixels, replace=False)
            s, e, p = s[keep], e[keep], p[keep]
        rows.append({**row, **_correlation(s, e, p)})
        pooled_s.append(s)
        pooled_e.append(e)
        pooled_p.append(p)
    if not pooled_s:
        raise EngineError("no sample has a cloud to score")
    s, e, p = np.concatenate(pooled_s), np.concatenate(pooled_e), np.concatenate(pooled_p)
    return {"per_sample": rows, "pooled": {**_correlation(s, e, p), "error_by_spread_quintile": _by_quantile(s, e)}}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python benchmarks/confidence_correlation.py",
                                     description=__doc__.split("\n")[0])  # fmt: skip
    parser.add_argument("--weights", default=str(BUNDLED["aligncr-lite"]),
                        help="a .safetensors file (default: the bundled aligncr-lite)")
    parser.add_argument("--data", required=True, help="dataset folder (as training/evaluate.py takes it)")
    parser.add_argument("--split", help="train | val | test (default: every sample; M3R-CR: test)")
    parser.add_argument("--csv", help="M3R-CR list file")
    parser.add_argument("--ids", nargs="+", help="only these sample IDs")
    parser.add_argument("--tta", type=int, default=tta.DEFAULT_CONFIDENCE_TTA, help="transforms (2-8, default 4)")
    parser.add_argument("--max-pixels", type=int, default=0, help="cloud pixels kept per sample (0 = all)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the pixel subsample")
    parser.add_argument("--device", default="cpu", help="cpu | cuda | cuda:N")
    parser.add_argument("--out", help="write the JSON here instead of stdout")
    args = parser.parse_args(argv)
    try:
        if not 2 <= args.tta <= tta.MAX_TTA:
            raise EngineError(f"--tta must be 2 to {tta.MAX_TTA}, got {args.tta}")
        device = torch.device(args.device)
        reader = open_dataset(args.data, args.split, args.csv, args.ids)
        view = TrainView([reader], AugmentConfig(crop=0, random_crop=False, flips=False, rot90=False))
        model, card = load_model(args.weights, device)
        if input_keys(model):
            raise EngineError(f"model '{card.get('arch')}' takes {', '.join(input_keys(model))} besides optical and "
                              "SAR: this measurement turns only those two")  # fmt: skip
        results = measure(model, view, args.tta, device, args.max_pixels, args.seed)
    except EngineError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    report = {"weights": args.weights, "card": {k: card.get(k) for k in ("arch", "training_data", "version")},
              "data": str(args.data), "split": args.split, "ids": args.ids, "tta": args.tta,
              "max_pixels": args.max_pixels, **results}  # fmt: skip
    text = json.dumps(report, indent=2)
    if args.out:
        Path(args.out).write_text(text + "\n")
    else:
        print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
