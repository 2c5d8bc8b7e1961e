"""``python -m training.evaluate --weights W --data D [--split S] [--ids ...] [--crop N] [--out metrics.json]``.

Scores a weights file on a dataset with :class:`engine.metrics.MetricAccumulator` (the paper's metrics: overall,
inside/outside cloud, per land-cover class MAE/SAM, cloud-cover bins 0–20 … 80–100 %, NDVI), one accumulator
update per sample (a sample is the paper's evaluation patch). The ``identity`` baseline — the cloudy input, the
paper's "Cloudy" row — is scored on the same samples, so every report carries the number to beat.

Two averages are reported, because they differ: ``overall`` pools squared errors over all pixels of all samples
(:mod:`engine.metrics`' convention), ``per_sample_mean`` averages each sample's own PSNR/SSIM/MAE/SAM (how the
paper's tables and the training validation average).

``--data`` is a dataset folder: SEN12MS-CR when it holds ``s2_cloudy/`` or ``data.csv`` (``--split`` train/val/test
→ GLF-CR's split 1/2/3), else M3R-CR with the list ``--csv`` or ``<root>/<split>.csv`` or the folder's only CSV.
A folder written by ``python -m training.build_dataset`` (it has ``build.json``) is read as layout samples
(:class:`training.datasets.LayoutSplit`, ``--split`` default test): temporal models get their extra dates, and
``--weights gapfill`` scores the paper's linear gap-filling baseline (any registered model that needs no weights
can be named instead of a file) — Cresson et al.'s comparison on an MSOP / MSOP_cld test split.

``--weights identity`` scores the baseline alone. Samples are scored whole unless ``--crop`` (centre crop; the
official M3R-CR test takes the centre 160).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import default_collate

from engine.errors import EngineError, InputError
from training.datasets import M3RCR, SEN12MSCR, AugmentConfig, LayoutSplit, TrainView
from training.inputs import check_inputs, model_kwargs, to_device
from training.layout.split import BUILD_FILE

SPLITS = {"train": 1, "val": 2, "test": 3}


def open_dataset(data: str | Path, split: str | None = None, csv_file: str | None = None,
                 ids: list[str] | None = None) -> M3RCR | SEN12MSCR | LayoutSplit:
    """The reader for a dataset folder (see the module docstring for how the kind is recognised)."""
    root = Path(data)
    if not root.is_dir():
        raise InputError(f"dataset folder {root} not found")
    if (root / BUILD_FILE).is_file():
        ds = LayoutSplit(root, split or "test", csv_file=csv_file)
        return _only_ids(ds, ids, ds.path)
    if (root / "s2_cloudy").is_dir() or (root / "data.csv").is_file():
        splits = None
        if split is not None:
            if split not in SPLITS:
                raise InputError(f"SEN12MS-CR split must be one of {sorted(SPLITS)}, got '{split}'")
            splits = [SPLITS[split]]
        return SEN12MSCR(root, include=ids, splits=splits if (root / "data.csv").is_file() else None)
    split = split or "test"
    if csv_file is None:
        candidates = [root / f"{split}.csv"] if (root / f"{split}.csv").is_file() else sorted(root.glob("*.csv"))
        if len(candidates) != 1:
            raise InputError(f"{root}: cannot tell which CSV lists the {split} samples; pass --csv")
        csv_file = str(candidates[0])
    return _only_ids(M3RCR(root, csv_file, split=split, sar_mode="native"), ids, csv_file)


def _only_ids(ds: M3RCR | LayoutSplit, ids: list[str] | None, source: object) -> M3RCR | LayoutSplit:
    """``ds`` restricted to the samples ``ids`` names (all of them when ``ids`` is empty)."""
    if ids:
        wanted = set(ids)
        keep = [i for i in range(len(ds)) if ds.sample_id(i) in wanted]
        if not keep:
            raise InputError(f"none of the IDs {ids} is in {source}")
        ds.rows = [ds.rows[i] for i in keep]
    return ds


def load_model(weights: str, device: torch.device) -> tuple[nn.Module, dict[str, Any]]:
    """(model, card dict) from a weights file, or a registered model that needs none (``identity``, ``gapfill``)."""
    from engine.models import MODEL_REGISTRY, build_model

    spec = MODEL_REGISTRY.get(weights)
    if spec is not None and not spec.needs_weights:
        return build_model(weights).to(device).eval(), {"arch": weights}
    from engine.models import weights as model_weights

    model, card = model_weights.load(weights, device)
    return model.eval(), card.to_dict()


@torch.no_grad()
def evaluate(models: dict[str, nn.Module], view: TrainView, device: torch.device) -> dict[str, Any]:
    """{name: {accumulator result..., "per_sample_mean": {...}, "per_sample": [...]}} for each model."""
    from engine.metrics import METRIC_NAMES, MetricAccumulator

    accs = {name: MetricAccumulator() for name in models}
    rows: dict[str, list[dict[str, Any]]] = {name: [] for name in models}
    if len(view):
        keys = set(view.read(0))
        for name, model in models.items():
            check_inputs(model, name, keys)
    for i in range(len(view)):
        s = view[i]
        batch = to_device(default_collate([s]), device)
        target = s["target"].numpy()
        cloud = s["mask"][0].numpy() > 0.5
        landcover = s["landcover"].numpy()
        for name, model in models.items():
            pred = model(batch["optical"], batch["sar"], **model_kwargs(model, batch))
            pred = pred[0].float().clamp(0, 1).cpu().numpy()
            tile = accs[name].update(pred, target, cloud=cloud, landcover=landcover)
            rows[name].append({"id": s["id"], **{k: tile.get(k) for k in (*METRIC_NAMES, "cloud_cover")}})
    out: dict[str, Any] = {}
    for name in models:
        result = accs[name].result()
        result["per_sample_mean"] = {
            k: float(np.mean([r[k] for r in rows[name] if r[k] is not None])) for k in METRIC_NAMES
        }
        result["per_sample"] = rows[name]
        out[name] = result
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m training.evaluate", description=__doc__.split("\n")[0])
    parser.add_argument("--weights", required=True,
                        help="a .safetensors weights file, or a model that needs none: 'identity', 'gapfill'")
    parser.add_argument("--data", required=True,
                        help="dataset folder (SEN12MS-CR, M3R-CR, or a training.build_dataset output folder)")
    parser.add_argument("--split", help="train | val | test (default: every sample; M3R-CR: test)")
    parser.add_argument("--csv", help="M3R-CR list file (default: <data>/<split>.csv)")
    parser.add_argument("--ids", nargs="+", help="only these sample IDs")
    parser.add_argument("--crop", type=int, default=0, help="centre crop in optical pixels (0 = whole samples)")
    parser.add_argument("--device", default="cpu", help="cpu | cuda | cuda:N")
    parser.add_argument("--out", help="write the JSON here instead of stdout")
    args = parser.parse_args(argv)
    try:
        device = torch.device(args.device)
        if device.type == "cuda" and not torch.cuda.is_available():
            raise EngineError("CUDA asked for but not available (use --device cpu)")
        reader = open_dataset(args.data, args.split, args.csv, args.ids)
        view = TrainView([reader], AugmentConfig(crop=args.crop, random_crop=False, flips=False, rot90=False))
        model, card = load_model(args.weights, device)
        models = {"model": model}
        if card.get("arch") != "identity":
            models["identity"] = load_model("identity", device)[0]
        results = evaluate(models, view, device)
    except EngineError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    report = {
        "weights": args.weights,
        "card": {k: card.get(k) for k in ("arch", "training_data", "metrics", "version")},
        "data": str(args.data),
        "split": args.split,
        "crop": args.crop,
        "samples": len(view),
        "results": results,
    }
    text = json.dumps(report, indent=2, default=float)
    if args.out:
        Path(args.out).write_text(text + "\n")
    else:
        print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
