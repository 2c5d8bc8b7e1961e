"""The held-out validation table of a fine-tuning run: model before / after, flat, fill and the cloudy input.

Real and synthetic pairs are scored apart (:mod:`training.scoring`: PSNR/SSIM/MAE/SAM inside the cloud, outside
it and overall; inside-cloud figures over the samples with 1–99 % cloud): a real pair's reference is another date
(phenology and light change too), a synthetic pair's is exact, and one average would hide which the gain comes
from. Each kind is one split of the model card's ``metrics`` (``holdout_real``, ``holdout_synthetic``) in the
layout the dialog's card box already reads: ``model_*`` (after fine-tuning), ``before_*``, ``flat_*``, ``fill_*``,
``identity_*`` (the cloudy input), ``margin_in`` (after, over the best baseline) and the sample counts.

The views are deterministic (no crop, no flip, synthetic clouds a function of the seed and the sample), so the
model before and after are scored on exactly the same pixels and clouds.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from training.datasets import AugmentConfig, TrainView, build_reader

CLOUD_MODEL = "layers"  # the synthetic-cloud generator of the bundled model's training (engine.refine.synthetic_clouds)


def reader_spec(csv_path: Path, archive: Path, kind: str) -> dict[str, Any]:
    """A ``[[data.*]]`` table reading one split CSV; synthetic pairs are served as clear pairs (clouds laid on)."""
    spec: dict[str, Any] = {"kind": "layout", "root": str(csv_path.parent), "csv": csv_path.name,
                            "archive": str(archive)}
    if kind == "synthetic":
        spec["as_clear"] = True
    return spec


def validation_views(specs: dict[str, dict[str, Any]], seed: int) -> dict[str, TrainView]:
    """One deterministic view per kind with samples (kind → view)."""
    views = {}
    for kind, spec in specs.items():
        reader = build_reader(spec, cache=True)
        if len(reader):
            views[kind] = TrainView([reader], AugmentConfig(crop=0, random_crop=False, flips=False, rot90=False,
                                                            cloud_model=CLOUD_MODEL), seed=seed)
    return views


def score_views(model: Any, views: dict[str, TrainView], device: Any) -> dict[str, list[dict[str, Any]]]:
    """Per-sample rows (:func:`training.scoring.model_rows`) of ``model`` on each kind's view."""
    from training import scoring

    return {kind: scoring.model_rows(model, view, device) for kind, view in views.items()}


def selection_score(rows: dict[str, list[dict[str, Any]]]) -> float:
    """The mean inside-cloud PSNR of the model over every scored held-out sample, real and synthetic: what the
    output weights are chosen on (higher is better)."""
    vals = [r["model_psnr_in"] for kind_rows in rows.values() for r in kind_rows
            if r["scored"] and r.get("model_psnr_in") is not None]
    return sum(vals) / len(vals) if vals else float("-inf")


def holdout_table(before: dict[str, list[dict]], after: dict[str, list[dict]]) -> dict[str, dict[str, Any]]:
    """``{"holdout_real": {...}, "holdout_synthetic": {...}}`` (module docstring) from the before/after rows."""
    from training import scoring

    table = {}
    for kind, rows in after.items():
        now, then = scoring.summarise(rows), scoring.summarise(before[kind])
        split = {k: v for k, v in now.items() if v is not None and not k.startswith("model_")}
        split |= {k: v for k, v in now.items() if v is not None and k.startswith("model_")}
        split |= {f"before_{k[len('model_'):]}": v for k, v in then.items() if v is not None and k.startswith("model_")}
        split["before_margin_in"] = then.get("margin_in")
        split["samples"] = len(rows)
        table[f"holdout_{kind}"] = {k: v for k, v in split.items() if v is not None}
    return table


def table_lines(table: dict[str, dict[str, Any]]) -> list[str]:
    """The headline rows as text: inside- and outside-cloud PSNR of before / after / flat / fill / cloudy input."""
    lines = [f"{'held-out block':22}{'samples':>8}{'before':>9}{'after':>9}{'flat':>9}{'fill':>9}{'cloudy':>9}"]
    for split, v in table.items():
        for region in ("in", "out"):
            key = f"psnr_{region}"
            cells = [v.get(f"before_{key}"), v.get(f"model_{key}"), v.get(f"flat_{key}"), v.get(f"fill_{key}"),
                     v.get(f"identity_{key}")]
            label = f"{split.removeprefix('holdout_')} PSNR {region}side"
            n = v.get("scored_samples", 0) if region == "in" else v.get("samples", 0)
            lines.append(f"{label:22}{n:>8}" + "".join(f"{c:>9.2f}" if c is not None else f"{'–':>9}" for c in cells))
    return lines
