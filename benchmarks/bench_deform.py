#!/usr/bin/env python3
"""Our pure-torch modulated deformable convolution versus torchvision's compiled ``deform_conv2d``.

Same inputs for both (random features, offsets of a few pixels, sigmoid masks), forward and forward+backward, on
the DCN shapes that Align-CR actually runs: the paper network (``aligncr``: 96 channels, 8 deformable groups, at
the half-resolution feature sizes of a 160² and a 304² patch and their pyramid levels) and ``aligncr-lite`` (32
channels, 4 groups). Reported per shape: median milliseconds of each path, the pure/torchvision ratio (target on
a GPU: ≤ 3×) and the largest absolute difference of the outputs (they implement the same sampling).

Where torchvision is not importable (the CPU/QGIS environment) this says so on stderr and still times the pure
path, so the CPU cost of the pure path inside ``aligncr-lite`` can be followed.

Usage: ``.venv/bin/python benchmarks/bench_deform.py [--device cuda] [--batch 4] [--repeat 5] [--no-backward]``;
one JSON line per shape and pass on stdout.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


@dataclass(frozen=True)
class Shape:
    name: str
    channels: int
    groups: int  # deformable groups
    size: int  # feature map side


SHAPES = [
    Shape("aligncr@160 L1", 96, 8, 80),
    Shape("aligncr@160 L2", 96, 8, 40),
    Shape("aligncr@304 L1", 96, 8, 152),
    Shape("aligncr-lite@160 L1", 32, 4, 80),
    Shape("aligncr-lite@304 L1", 32, 4, 152),
]


def _sync(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _time(fn, device, warmup: int, repeat: int) -> tuple[float, float]:
    """Median wall and CPU (user + system) seconds of ``fn()``."""
    for _ in range(warmup):
        fn()
    _sync(device)
    walls, cpus = [], []
    for _ in range(repeat):
        t, c = time.perf_counter(), os.times()
        fn()
        _sync(device)
        c2 = os.times()
        walls.append(time.perf_counter() - t)
        cpus.append(c2.user - c.user + c2.system - c.system)
    return statistics.median(walls), statistics.median(cpus)


def bench(shape: Shape, args: argparse.Namespace, device) -> list[dict]:
    import torch

    from engine.models.ops.deform_conv import deform_conv2d, torchvision_available

    g = torch.Generator().manual_seed(0)
    n, c, s, k = args.batch, shape.channels, shape.size, 9
    x = torch.randn(n, c, s, s, generator=g).to(device)
    offset = (3 * torch.randn(n, 2 * shape.groups * k, s, s, generator=g)).to(device)
    mask = torch.sigmoid(torch.randn(n, shape.groups * k, s, s, generator=g)).to(device)
    weight = (0.05 * torch.randn(c, c, 3, 3, generator=g)).to(device)
    bias = torch.zeros(c, device=device)
    paths = [("pure", False)] + ([("torchvision", True)] if torchvision_available() else [])
    rows = []
    for mode in ("forward", "backward") if args.backward else ("forward",):
        result: dict[str, tuple[float, float]] = {}
        outputs = {}
        for name, use_tv in paths:
            inputs = [t.clone().requires_grad_(mode == "backward") for t in (x, offset, mask, weight)]

            def run(inputs=inputs, use_tv=use_tv, mode=mode):
                xi, oi, mi, wi = inputs
                if mode == "forward":
                    with torch.inference_mode():
                        return deform_conv2d(xi, oi, wi, bias, 1, 1, 1, mi, use_torchvision=use_tv)
                out = deform_conv2d(xi, oi, wi, bias, 1, 1, 1, mi, use_torchvision=use_tv)
                out.square().mean().backward()
                return out

            result[name] = _time(run, device, args.warmup, args.repeat)
            outputs[name] = run().detach()
        row = {
            "shape": shape.name,
            "pass": mode,
            "batch": n,
            "channels": c,
            "deformable_groups": shape.groups,
            "size": s,
            "device": str(device),
            "pure_ms": round(result["pure"][0] * 1e3, 2),
            "pure_cpu_ms": round(result["pure"][1] * 1e3, 2),
        }
        if "torchvision" in result:
            row["torchvision_ms"] = round(result["torchvision"][0] * 1e3, 2)
            row["pure_over_torchvision"] = round(result["pure"][0] / result["torchvision"][0], 2)
            row["max_abs_diff"] = float((outputs["pure"] - outputs["torchvision"]).abs().max())
        rows.append(row)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--shapes", nargs="+", help="subset of shape names (default: all)")
    parser.add_argument("--threads", type=int, help="CPU threads (default: every core)")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--no-backward", dest="backward", action="store_false", help="time the forward pass only")
    args = parser.parse_args()

    from engine.models.ops.deform_conv import torchvision_available
    from engine.stream.accel import set_threads
    from engine.stream.device import resolve_device

    device = resolve_device(args.device)
    set_threads(args.threads)
    if not torchvision_available():
        print("torchvision.ops.deform_conv2d is not importable here: timing the pure-torch path only",
              file=sys.stderr)  # fmt: skip
    for shape in SHAPES:
        if args.shapes and shape.name not in args.shapes:
            continue
        for row in bench(shape, args, device):
            print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
