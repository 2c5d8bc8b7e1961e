#!/usr/bin/env python3
"""What --colour-anchor costs: the same scene and mask declouded with and without it.

The anchor needs the whole scene's drift before it can shift a pixel, so the output is streamed into a draft and
copied once more with the shift (a second read and write of the output and a second read of the mask with its
32-px halo; the network runs once). The scene is bench_inference's, the mask bench_only_cloudy's clumped clouds
(``--fraction`` of the scene). Variants, each once after a 512² warm-up in the same process: the ``identity``
model (the anchor's own cost stands out) and ``--model`` (default the bundled ``aligncr-lite``), each plain and
anchored; one JSON line per variant on stdout: seconds, Mpix/s and the anchor's share of the time.

    .venv/bin/python benchmarks/bench_colour_anchor.py --size 2048
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

from bench_inference import generate
from bench_only_cloudy import _clumped_mask

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=2048, help="scene side in pixels (default 2048)")
    parser.add_argument("--fraction", type=float, default=0.2, help="cloud share of the mask (default 0.2)")
    parser.add_argument("--model", default=None, help="registry model (default: the engine's default)")
    parser.add_argument("--device", default="auto")
    args = parser.parse_args()
    sys.path.insert(0, str(ROOT))
    from engine.config import RunConfig
    from engine.stream.pipeline import run

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        opt, sar = generate(args.size, folder / "scene")
        mask, share = _clumped_mask(opt, folder / "mask.tif", args.fraction)
        warm_opt, warm_sar = generate(512, folder / "warmup")
        run(RunConfig(optical=warm_opt, sar=warm_sar, out=folder / "warm.tif", device=args.device))
        plain_seconds: dict[str, float] = {}
        for model in ("identity", args.model):
            for anchored in (False, True):
                out = folder / f"{model}_{anchored}.tif"
                t0 = time.perf_counter()
                result = run(RunConfig(optical=opt, sar=sar, mask=mask, out=out, model=model, device=args.device,
                                       only_cloudy=True, colour_anchor=anchored))  # fmt: skip
                seconds = time.perf_counter() - t0
                key = model or "default"
                if not anchored:
                    plain_seconds[key] = seconds
                print(json.dumps({
                    "model": result.model, "colour_anchor": anchored, "size": args.size,
                    "cloud_share": round(share, 3), "seconds": round(seconds, 2),
                    "mpix_per_s": round(args.size**2 / seconds / 1e6, 3),
                    "anchor_share_of_time": round(1 - plain_seconds[key] / seconds, 3) if anchored else None,
                    "device": result.device,
                }), flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
