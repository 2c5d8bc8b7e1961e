"""``python -m training.evaluate --weights W --data D [--split S] [--ids ...] [--crop N] [--out metrics.json]``.

Scores a weights file on a dataset with :class:`engine.outputs.metrics.MetricAccumulator` (the paper's metrics: overall,
inside/outside cloud, per land-cover class MAE/SAM, cloud-cover bins 0–20 … 80–100 %, NDVI), one accumulator
update per sample (a sample is the paper's evaluation patch). The ``identity`` baseline — the cloudy input, the
paper's "Cloudy" row — is scored on the same samples, so every report carries the number to beat.

Two averages are reported, because they differ: ``overall`` pools squared errors over all pixels of all samples
(:mod:`engine.outputs.metrics`' convention), ``per_sample_mean`` averages each sample's own PSNR/SSIM/MAE/SAM (how the
paper's tables and the training validation average).

``--data`` is a dataset folder: SEN12MS-CR when it holds ``s2_cloudy/`` or ``data.csv`` (``--split`` train/val/test
→ GLF-CR's split 1/2/3), else M3R-CR with the list ``--csv`` or ``<root>/<split>.csv`` or the folder's only CSV.
A folder written by ``python -m training.build_dataset`` (it has ``build.json``) is read as layout samples
(:class:`training.datasets.LayoutSplit`, ``--split`` default test): temporal models get their extra dates, and
``--weights gapfill`` scores the paper's linear gap-filling baseline (any registered model that needs no weights
can be named instead of a file) — Cresson et al.'s comparison on an MSOP / MSOP_cld test split.

``--weights identity`` scores the baseline alone. Samples are scored whole unless ``--crop`` (centre crop; the
official M3R-CR test takes the centre 160).

``--baselines`` adds the non-learned baselines (:mod:`engine.refine.baselines`: ``flat``, ``fill``) scored on the same
pixels inside / outside the cloud, and the headline "margin over the best baseline inside the cloud"
(:mod:`training.scoring`). ``--recipe FILE`` scores a whole report split instead of one folder: a TOML with
``[[report.real]]`` (real cloudy/clear/SAR triplets) and ``[[report.synthetic]]`` (cloud-free pairs that get
deterministic synthetic clouds, ``synthetic_draws`` per image) dataset tables, as in
``training/configs/aligncr_lite_report.toml``; both kinds are reported separately, with the baselines, and
``--figure PNG`` draws cloudy / baselines / model / reference quicklooks of the real samples.
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
from engine.outputs.metrics import CEILING_LABEL, clear_gamut
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
    from engine.outputs.metrics import METRIC_NAMES, MetricAccumulator

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
        gamut = clear_gamut(s["optical"].numpy(), cloud)  # the sample's clear pixels: the off-gamut shares' range
        for name, model in models.items():
            pred = model(batch["optical"], batch["sar"], **model_kwargs(model, batch))
            pred = pred[0].float().clamp(0, 1).cpu().numpy()
            tile = accs[name].update(pred, target, cloud=cloud, landcover=landcover, gamut=gamut)
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


REPORT_KINDS = ("real", "synthetic", "realclouds")


def report_views(recipe: str | Path, crop: int = 0) -> dict[str, TrainView]:
    """{"real": view, "synthetic": view, "realclouds": view} of a report recipe (see the module docstring); a
    ``[[report.realclouds]]`` table names cloud-free images that get real cloud layers
    (:func:`training.datasets.cloud_bank.pasted_view`, ``realcloud_draws`` per image)."""
    import tomllib

    from training.datasets import build_reader

    raw = tomllib.loads(Path(recipe).read_text()).get("report")
    if not isinstance(raw, dict):
        raise InputError(f"{recipe} has no [report] table")
    views = {}
    for kind in REPORT_KINDS:
        specs = raw.get(kind, [])
        if not specs:
            continue
        if kind == "realclouds":  # cloud-free images under real cloud layers of the bank's report split
            from training.datasets.cloud_bank import pasted_view

            readers = [build_reader({**spec, "synthetic": 0.0}) for spec in specs]
            views[kind] = pasted_view(readers, int(raw.get("seed", 0)), int(raw.get("realcloud_draws", 1)))
            continue
        readers = [build_reader({**spec, "synthetic": 1.0 if kind == "synthetic" else 0.0}) for spec in specs]
        n = sum(len(r) for r in readers)
        draws = int(raw.get("synthetic_draws", 1)) if kind == "synthetic" else 1
        aug = AugmentConfig(crop=crop, random_crop=False, flips=False, rot90=False,
                            cloud_model=str(raw.get("cloud_model", "layers")))
        views[kind] = TrainView(readers, aug, seed=int(raw.get("seed", 0)), length=n * draws)
    return views


def score_with_baselines(model: nn.Module, view: TrainView, device: torch.device) -> dict[str, Any]:
    """Rows and the summary (model, cloudy input, flat, fill; margin inside the cloud) of one view."""
    from training import scoring

    rows = scoring.model_rows(model, view, device)
    return {"summary": scoring.summarise(rows), "per_sample": rows}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m training.evaluate", description=__doc__.split("\n")[0])
    parser.add_argument("--weights", required=True,
                        help="a .safetensors weights file, or a model that needs none: 'identity', 'gapfill'")
    parser.add_argument("--data",
                        help="dataset folder (SEN12MS-CR, M3R-CR, or a training.build_dataset output folder)")
    parser.add_argument("--recipe", help="a report split (TOML with [[report.real]] / [[report.synthetic]])")
    parser.add_argument("--baselines", action="store_true",
                        help="also score the flat and fill baselines and the margin inside the cloud")
    parser.add_argument("--figure", help="with --recipe: write quicklooks of the real samples to this PNG")
    parser.add_argument("--card-out", help="with --recipe: write the weights again here with the report split's "
                        "summaries (and --splits' counts) in the model card's metrics")
    parser.add_argument("--splits", help="with --card-out: the split manifest (python -m training.splits) to record")
    parser.add_argument("--markdown", help="with --recipe: write the tables (summary and per sample) as Markdown here")
    parser.add_argument("--split", help="train | val | test (default: every sample; M3R-CR: test)")
    parser.add_argument("--csv", help="M3R-CR list file (default: <data>/<split>.csv)")
    parser.add_argument("--ids", nargs="+", help="only these sample IDs")
    parser.add_argument("--crop", type=int, default=0, help="centre crop in optical pixels (0 = whole samples)")
    parser.add_argument("--device", default="cpu", help="cpu | cuda | cuda:N")
    parser.add_argument("--out", help="write the JSON here instead of stdout")
    args = parser.parse_args(argv)
    if (args.data is None) == (args.recipe is None):
        parser.error("give exactly one of --data and --recipe")
    if args.recipe:
        return _main_recipe(args)
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
        if args.baselines:
            results["baselines"] = score_with_baselines(model, view, device)
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


def _main_recipe(args: argparse.Namespace) -> int:
    try:
        device = torch.device(args.device)
        model, card = load_model(args.weights, device)
        views = report_views(args.recipe, args.crop)
        results = {kind: score_with_baselines(model, view, device) for kind, view in views.items()}
        if args.figure and "real" in views:
            from training.figures import quicklooks

            quicklooks(model, views["real"], device, Path(args.figure))
    except EngineError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    report = {"weights": args.weights, "recipe": str(args.recipe),
              "card": {k: card.get(k) for k in ("arch", "training_data", "version")},
              "samples": {k: len(v) for k, v in views.items()}, "results": results}
    text = json.dumps(report, indent=2, default=float)
    if args.out:
        Path(args.out).write_text(text + "\n")
    else:
        print(text)
    if args.markdown:
        Path(args.markdown).write_text(markdown_tables(results))
    if args.card_out:
        write_card(model, card, results, args.recipe, args.splits, Path(args.card_out))
    for kind, res in results.items():
        print(f"{kind}: " + summary_line(res["summary"]), file=sys.stderr)
    return 0


def write_card(model: nn.Module, card: dict[str, Any], results: dict[str, Any], recipe: str,
               splits: str | None, out: Path) -> Path:
    """The weights again, their card's metrics gaining ``report_<kind>`` summaries (and the split manifest's counts
    and licences): what ``engine models`` and the plugin show is the figure measured on the report split."""
    from engine.models import weights

    card = dict(card)
    metrics = dict(card.get("metrics") or {})
    for kind, res in results.items():
        metrics[f"report_{kind}"] = {k: v for k, v in res["summary"].items() if v is not None}
    metrics["report_recipe"] = str(recipe)
    if splits:
        manifest = json.loads(Path(splits).read_text())
        metrics["splits"] = {"counts": manifest["counts"], "licences": sorted({
            f"{r['source']}: {r['licence']}" for r in manifest["samples"]})}
    card["metrics"] = metrics
    return weights.save(model, out, card)


TABLE_METHODS = (("identity", "cloudy input"), ("flat", "flat"), ("fill", "fill"), ("model", "**model**"))
CEILING_KINDS = ("real",)  # the reference is another date: the date-gap ceiling bounds what a removal can score


def _num(v: float | None, digits: int = 2) -> str:
    return "–" if v is None else f"{v:.{digits}f}"


def _pct(v: float | None) -> str:
    return "–" if v is None else f"{100 * v:.1f} %"


def _summary_table(s: dict[str, Any]) -> list[str]:
    """Inside cloud PSNR/SSIM/SAM/MAE, band r, NDVI r, off-gamut; outside and whole PSNR; the truth's own
    off-gamut share as its last row."""
    rows = ["| method | PSNR in (dB) | SSIM in | SAM in (°) | MAE in | band r in | NDVI r in | off-gamut in | "
            "PSNR out | PSNR whole |", "|---|---|---|---|---|---|---|---|---|---|"]
    for key, name in TABLE_METHODS:
        v = {m: s.get(f"{key}_{m}") for m in ("psnr_in", "ssim_in", "sam_in", "mae_in", "bandr_in", "ndvir_in",
                                              "offgamut_in", "psnr_out", "psnr")}
        rows.append(f"| {name} | {_num(v['psnr_in'])} | {_num(v['ssim_in'], 3)} | {_num(v['sam_in'])} | "
                    f"{_num(v['mae_in'], 4)} | {_num(v['bandr_in'], 3)} | {_num(v['ndvir_in'], 3)} | "
                    f"{_pct(v['offgamut_in'])} | {_num(v['psnr_out'])} | {_num(v['psnr'])} |")
    rows.append(f"| reference (truth) | | | | | | | {_pct(s.get('reference_offgamut_in'))} | | |")
    return rows


def _ceiling_line(s: dict[str, Any]) -> str:
    """The date-gap ceiling beside the inside-cloud PSNR (real splits: the reference is another date)."""
    inside = ", ".join(f"{name} {_num(s.get(f'{name}_psnr_in'))}" for name in ("model", "flat", "fill"))
    return (f"{CEILING_LABEL}: **{_num(s.get('ceiling_psnr'))} dB** (mean over the scored samples: what a perfect "
            f"removal would score inside the cloud against this reference) — inside-cloud PSNR: {inside} dB")


def markdown_tables(results: dict[str, Any]) -> str:
    """Per kind: a summary table (:func:`_summary_table`, per-sample means over the scored samples), on real
    splits the date-gap ceiling, and a per-sample inside-cloud PSNR table (with each sample's ceiling on real
    splits) — the figures the weights README quotes."""
    out = []
    for kind, res in results.items():
        s = res["summary"]
        ceiling = kind in CEILING_KINDS
        out += [f"**{kind}** ({s['scored_samples']} scored samples; margin over the best baseline inside the cloud "
                f"**{_num(s['margin_in'])} dB**, model best on {100 * s['wins_in']:.0f} % of them)", "",
                *_summary_table(s), ""]
        if ceiling:
            out += [_ceiling_line(s), ""]
        extra = " ceiling (dB) |" if ceiling else ""
        out += ["| sample | cloud % | " + " | ".join(n for _, n in TABLE_METHODS) + f" |{extra}",
                "|---|---|" + "---|" * (len(TABLE_METHODS) + ceiling)]
        for r in res["per_sample"]:
            if r["scored"]:
                cells = " | ".join(_num(r.get(f"{k}_psnr_in")) for k, _ in TABLE_METHODS)
                more = f" {_num(r.get('ceiling_psnr'))} |" if ceiling else ""
                out.append(f"| {r['id']} | {100 * r['cover']:.0f} | {cells} |{more}")
        out.append("")
    return "\n".join(out)


def summary_line(summary: dict[str, Any]) -> str:
    """One line: inside-cloud PSNR of the model and the baselines, and the margin."""
    f = summary.get
    return (f"inside the cloud: model {f('model_psnr_in'):.2f} dB, flat {f('flat_psnr_in'):.2f}, "
            f"fill {f('fill_psnr_in'):.2f}, cloudy input {f('identity_psnr_in'):.2f}; margin over the best baseline "
            f"{f('margin_in'):+.2f} dB, model best on {100 * f('wins_in'):.0f} % of {f('scored_samples')} samples")


if __name__ == "__main__":
    sys.exit(main())
