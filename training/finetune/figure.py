"""The held-out quicklooks of a fine-tuning run: cloudy / flat / fill / before / after / reference, one row per
held-out sample (real pairs first), each row under one stretch from its reference (:mod:`training.figures`).

``engine finetune`` writes it as ``OUT.finetune/holdout.png`` when matplotlib is installed (the ``report`` extra);
``python -m training.finetune.figure WEIGHTS PNG [ROWS_PER_KIND]`` redraws it from a fine-tuned weights file alone:
its card names the base model, the archive and the work folder's split files, so the same held-out samples (and the
same synthetic clouds) are drawn. An archive of products is indexed again for it (:func:`held_out_splits`): the
VRTs its split files name went with the run.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np


def _rows(models: dict[str, Any], views: dict[str, Any], max_per_kind: int) -> list:
    import torch

    from training import scoring
    from training.inputs import model_kwargs

    rows = []
    for kind, view in views.items():
        for i in range(min(len(view), max_per_kind)):
            s = view[i]
            batch = {k: (v[None] if torch.is_tensor(v) else v) for k, v in s.items()}
            optical, target, cloud = s["optical"].numpy(), s["target"].numpy(), s["mask"][0].numpy() > 0.5
            images = {"cloudy": optical, **scoring.baseline_images(optical, cloud)}
            with torch.no_grad():
                for name, model in models.items():
                    model.eval()
                    pred = model(batch["optical"], batch["sar"], **model_kwargs(model, batch))[0]
                    images[name] = pred.float().clamp(0, 1).numpy()
            images["reference"] = target
            rows.append((f"{kind} {s['id'].split('/')[-1]}", images, target, np.ones_like(cloud)))
    return rows


def holdout_figure(weights: Path, png: Path, base: Path | None = None, max_per_kind: int = 4) -> Path:
    """Draw the held-out samples of the fine-tuned ``weights`` (before = ``base`` or the base its card names)."""
    from engine.models import weights as model_weights
    from training.figures import quicklook_grid
    from training.finetune.config import FinetuneConfig
    from training.finetune.run import card_record, resolve_base
    from training.finetune.samples import KINDS
    from training.finetune.scores import reader_spec, validation_views

    info = card_record(weights)
    cfg = FinetuneConfig(archive=Path(info["archive"]["archive"]), out=Path(weights),
                         **{k: info["settings"][k] for k in ("base", "seed")})
    base = base or resolve_base(cfg)
    with held_out_splits(cfg, info["settings"]) as folder:
        specs = {kind: reader_spec(folder / f"{kind}_val.csv", cfg.archive, kind) for kind in KINDS
                 if info["archive"]["samples"][kind]["val"]}
        views = validation_views(specs, cfg.seed)
        models = {"before": model_weights.load(base)[0], "after": model_weights.load(weights)[0]}
        return quicklook_grid(_rows(models, views, max_per_kind), Path(png))


def _scenes_exist(folder: Path, archive: Path) -> bool:
    """Whether every scene the split files of ``folder`` name is still there."""
    import csv

    for path in folder.glob("*_val.csv"):
        with path.open(newline="") as fh:
            for row in csv.DictReader(fh):
                names = [v for k, v in row.items() if k.endswith(("_optical", "_sar")) and v]
                if not all((archive / name).exists() for name in names):
                    return False
    return True


@contextmanager
def held_out_splits(cfg: Any, settings: dict[str, Any]) -> Iterator[Path]:
    """The run's split files (``OUT.finetune/``), or — when they name the product VRTs of a run that has ended
    (:mod:`training.layout.products` deletes them with the run) — the same splits rebuilt from the archive with the
    run's settings, which pick the same samples and held-out blocks (seeded)."""
    import dataclasses
    import tempfile

    from engine.progress import Progress
    from training.finetune.samples import build_samples, index_archive, write_splits

    if _scenes_exist(cfg.work_dir, cfg.archive):
        yield cfg.work_dir
        return
    names = {f.name for f in dataclasses.fields(cfg)}
    run_cfg = dataclasses.replace(cfg, **{k: v for k, v in settings.items() if k in names and k not in (
        "archive", "out", "weights", "resume")})
    idx = index_archive(run_cfg, Progress())
    try:
        with tempfile.TemporaryDirectory(prefix="aligncr-holdout-") as tmp:
            write_splits(Path(tmp), idx, build_samples(idx, run_cfg), run_cfg)
            yield Path(tmp)
    finally:
        idx.close()


if __name__ == "__main__":
    print(holdout_figure(Path(sys.argv[1]), Path(sys.argv[2]), max_per_kind=int(sys.argv[3]) if sys.argv[3:] else 4))
