"""``python -m training.choose --run DIR [--from-step N] [--recipe R]``: the checkpoint to ship from a run.

Rule (recorded in the bundled model's README): among the validated checkpoints a run kept (``run.keep_validated``:
``val_step<N>.safetensors``, with their select-split figures in ``val_log.csv``), the one with the highest
inside-cloud PSNR margin over the best baseline (``margin_in``) whose output shows no 2-px stripes
(:mod:`engine.refine.stripes`, below :data:`~engine.refine.stripes.STRIPE_LIMIT` above the reference's own pattern) on
the select split's real samples and on a smooth ramp. Everything here reads the select split only — the report split
never takes part in a choice.
"""

from __future__ import annotations

import argparse
import csv
import sys
from pathlib import Path

import numpy as np
import torch

from engine.refine.stripes import STRIPE_LIMIT, even_odd_difference


def ramp(size: int = 128) -> tuple[torch.Tensor, torch.Tensor]:
    """A smooth optical ramp and SAR: any 2-px pattern in a model's output on it is the model's own."""
    y, x = torch.meshgrid(torch.linspace(0, 1, size), torch.linspace(0, 1, size), indexing="ij")
    optical = torch.stack([0.05 + 0.05 * x, 0.07 + 0.05 * y, 0.06 + 0.04 * x, 0.3 + 0.1 * y])[None]
    return optical, (0.45 + 0.1 * torch.stack([x, y]))[None]


def stripe_excess(model: torch.nn.Module, samples: list[dict]) -> float:
    """Largest even/odd difference of the model's output above the reference's own, over ``samples`` + the ramp."""
    worst = 0.0
    with torch.no_grad():
        opt, sar = ramp()
        worst = max(even_odd_difference(model(opt, sar)[0].numpy()))
        for s in samples:
            out = model(torch.from_numpy(s["optical"])[None], torch.from_numpy(s["sar"])[None])[0].numpy()
            worst = max(worst, max(even_odd_difference(out)) - max(even_odd_difference(s["target"])))
    return worst


def candidates(run: Path, from_step: int) -> list[tuple[float, int, Path]]:
    """(margin_in, step, weights) of the kept checkpoints, best margin first."""
    rows = []
    with open(run / "val_log.csv", newline="") as fh:
        for row in csv.DictReader(fh):
            step, margin = int(row["step"]), row.get("margin_in")
            path = run / f"val_step{step}.safetensors"
            if step >= from_step and margin and path.is_file():
                rows.append((float(margin), step, path))
    return sorted(rows, reverse=True)


def choose(run: Path, from_step: int, samples: list[dict]) -> tuple[Path, float, float] | None:
    from engine.models import weights

    for margin, _, path in candidates(run, from_step):
        model, _ = weights.load(path, "cpu")
        excess = stripe_excess(model.eval(), samples)
        print(f"{path.name}: margin {margin:+.2f} dB, stripes {excess * 1e4:.1f} DN above the reference's",
              file=sys.stderr)
        if excess < STRIPE_LIMIT:
            return path, margin, excess
    return None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m training.choose", description=__doc__.split("\n")[0])
    parser.add_argument("--run", required=True, type=Path, help="the run's out_dir")
    parser.add_argument("--from-step", type=int, default=0, help="only checkpoints from this step on")
    parser.add_argument("--recipe", required=True, help="the training recipe (its [[data.val]] = the select split)")
    args = parser.parse_args(argv)
    from training.config import load_config
    from training.datasets import build_reader

    cfg = load_config(args.recipe)
    samples = []
    for spec in cfg.data.val:
        reader = build_reader(spec)
        if getattr(reader, "synthetic", 0.0) == 0.0:  # real triplets: what stripes look like over real clouds
            samples += [reader.read(i) for i in range(len(reader))]
    torch.set_num_threads(1)
    found = choose(args.run, args.from_step, [s for s in samples if np.mean(s["mask"]) > 0.01])
    if found is None:
        print("error: no kept checkpoint passes the stripe check", file=sys.stderr)
        return 2
    print(found[0])
    return 0


if __name__ == "__main__":
    sys.exit(main())
