"""Start a shallower Align-CR from a deeper trained one: keep its first D AlignFuse blocks (issue 30).

Why: on two AVX2 cores the default run's network is most of a run, and each AlignFuse block is about half of
``aligncr-res``'s cost (ONNX Runtime, one thread, 256² tile: D = 2 0.57 s, D = 1 0.31 s). A shallower network
trained from scratch would relearn what the deeper one already knows; this copies everything that does not
depend on the depth (both feature extractors, the upsampler, the global fusion's 3×3 conv), the first D blocks
(alignment, SGCI, SLFC filters and gates), and the global fusion's 1×1 conv restricted to those blocks' inputs
(it reads the concatenated block outputs, D·G0 channels, block 0 first). Fine-tuning (``training.train`` with
``model.init_weights`` = the file written here) then adapts the rest.

Usage: ``python -m training.shallower --weights resources/weights/aligncr-res-d2.safetensors --blocks 1 --out X``
"""

from __future__ import annotations

import argparse
import dataclasses
import re
from pathlib import Path

import torch
from torch import nn

from engine.models import load, save

FUSION_1X1 = "GFF.0.weight"  # (G0, D·G0, 1, 1): its input channels are the D blocks' outputs, in block order


def block_lists(model: nn.Module) -> list[str]:
    """The network's lists with one entry per AlignFuse block (alignment, SGCI, SLFC filters and gates)."""
    n = model.cfg.num_blocks
    return [name for name, m in model.named_children() if isinstance(m, nn.ModuleList) and len(m) == n]


def shallower_state(state: dict[str, torch.Tensor], lists: list[str], blocks: int,
                    features: int) -> dict[str, torch.Tensor]:  # fmt: skip
    """``state`` of a D-block network cut to its first ``blocks`` blocks of ``lists`` (``features`` = G0)."""
    per_block = re.compile(rf"^({'|'.join(map(re.escape, lists))})\.(\d+)\.")
    out = {}
    for key, value in state.items():
        m = per_block.match(key)
        if m is not None and int(m.group(2)) >= blocks:
            continue
        out[key] = value[:, : blocks * features].clone() if key == FUSION_1X1 else value
    return out


def make_shallower(weights: Path, blocks: int, out: Path) -> Path:
    """Write the first ``blocks`` blocks of the network in ``weights`` (with the rest) as a new weights file."""
    model, card = load(weights)
    cfg = model.cfg
    if not 1 <= blocks < cfg.num_blocks:
        raise SystemExit(f"--blocks must be between 1 and {cfg.num_blocks - 1} for this {cfg.num_blocks}-block network")
    shallow = type(model)(dataclasses.replace(cfg, num_blocks=blocks))
    state = shallower_state(model.state_dict(), block_lists(model), blocks, cfg.num_feat)
    shallow.load_state_dict(state, strict=True)
    note = f"the first {blocks} of {cfg.num_blocks} AlignFuse blocks of {weights.name} (training.shallower), untrained"
    # the card's facts (bands, units, normalisation, training data) carried over; the config is the new network's
    return save(shallow, out, dataclasses.replace(card, config={}, metrics={}, notes=note, created="",
                                                  engine_version=""))  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--weights", type=Path, required=True)
    parser.add_argument("--blocks", type=int, required=True)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    print(make_shallower(args.weights, args.blocks, args.out))


if __name__ == "__main__":
    main()
