"""Model-card figures: quicklooks of a model's output beside the cloudy input, the baselines and the reference.

One row per sample: cloudy / flat / fill / model / reference, all with ONE stretch taken from the reference's clear
pixels (2–98 % per band, :func:`engine.report.plots.shared_stretch`) — a stretch the cloud does not saturate,
so a colour cast or the cloud's outline stays visible.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np


def quicklooks(model: Any, view: Any, device: Any, path: Path, max_samples: int = 8) -> Path:
    """Write the quicklook grid of the first ``max_samples`` samples of ``view`` to ``path`` (PNG)."""
    import torch

    from training import scoring
    from training.inputs import model_kwargs, to_device

    rows = []
    model.eval()
    with torch.no_grad():
        for i in shareable_items(view)[:max_samples]:
            s = view[i]
            batch = to_device({k: (v[None] if torch.is_tensor(v) else v) for k, v in s.items()}, device)
            pred = model(batch["optical"], batch["sar"], **model_kwargs(model, batch))[0].float().clamp(0, 1)
            optical, target = s["optical"].numpy(), s["target"].numpy()
            cloud = s["mask"][0].numpy() > 0.5
            base = scoring.baseline_images(optical, cloud)
            images = {"cloudy": optical, "flat": base["flat"], "fill": base["fill"],
                      "model": pred.cpu().numpy(), "reference": target}
            rows.append((str(s["id"]), images, target, ~cloud))
    return quicklook_grid(rows, path)


def shareable_items(view: Any) -> list[int]:
    """Indices of the view's samples whose licence lets a figure of them be published with the project: M3R-CR's
    PlanetScope imagery is academic-only, never redistributed (scores of it are fine, pictures are not)."""
    from training.datasets.m3rcr import M3RCR

    out = []
    for i in range(len(view)):
        reader = view.readers[view.index[i % len(view.index)][0]]
        if not isinstance(getattr(reader, "reader", reader), M3RCR):
            out.append(i)
    return out


def quicklook_grid(rows: list[tuple[str, dict[str, np.ndarray], np.ndarray, np.ndarray]], path: Path) -> Path:
    """One row per sample (id, {title: image}, reference, clear mask), each row under its reference's stretch."""
    from engine.report.plots import _plt, shared_stretch, stretched_panels

    plt = _plt()
    ncols = max(len(images) for _, images, _, _ in rows)
    fig, axes = plt.subplots(len(rows), ncols, figsize=(2.6 * ncols, 2.7 * len(rows)), squeeze=False)
    for r, (sid, images, reference, clear) in enumerate(rows):
        panels = stretched_panels(images, shared_stretch(reference, np.ones_like(clear)))
        for c, (title, rgba) in enumerate(panels.items()):
            ax = axes[r][c]
            ax.imshow(rgba, interpolation="nearest")
            ax.set_title(f"{sid} — {title}" if c == 0 else title, fontsize=8)
            ax.set_axis_off()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return path
