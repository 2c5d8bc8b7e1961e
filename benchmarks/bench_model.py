#!/usr/bin/env python3
"""Model-only forward latency and throughput per patch size, batch size and dtype, with the model's FLOPs.

The network runs through :class:`engine.stream.accel.InferenceRunner` — the exact code path of the engine (autocast,
channels_last, torch.compile) — on random inputs already on the device, so this measures the network alone: no
raster I/O, no tiling, no host↔device copies of the inputs. The paper's reference point is Align-CR at 309 ms per
160×160 patch (batch 1, RTX 3090); ``--sizes 160 304`` gives that size and a larger patch (a multiple of the
network's padding unit, 16, so no padding work is timed) closer to the engine's 256² tiles.

Each configuration is warmed up (``--warmup`` passes: oneDNN/cuDNN kernel selection, torch.compile) before
``--repeat`` timed passes; the median is reported. CPU time (``os.times``: user + system) is given beside wall
time because a shared machine inflates wall time. FLOPs come from :func:`engine.models.counting.count_macs` on the
meta device (multiply-adds; ``gflops`` = 2 × G MACs). One JSON line per configuration on stdout.

Usage: ``.venv/bin/python benchmarks/bench_model.py --model aligncr-lite --sizes 160 304 --batches 1 4 --dtypes
fp32 bf16 [--device cuda] [--compile] [--channels-last on] [--backends torch onnxruntime openvino]`` (one CPU
worker: the network alone on ``--threads`` intra-op threads).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def _sync(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure(args: argparse.Namespace, size: int, batch: int, dtype: str, gmacs: float, backend: str = "torch") -> dict:
    import torch

    from engine.models import build_model
    from engine.stream.accel import AccelConfig, InferenceRunner
    from engine.stream.device import describe_device, resolve_device

    device = resolve_device(args.device)
    torch.manual_seed(0)
    model = build_model(args.model)
    cfg = AccelConfig(dtype=dtype, channels_last=args.channels_last, compile=args.compile, threads=args.threads,
                      tf32=args.tf32, backend=backend, cpu_workers=1)  # fmt: skip
    runner = InferenceRunner(model, device, cfg)
    optical = torch.rand(batch, model.cfg.in_bands, size, size, device=device)
    sar = torch.rand(batch, 2, size, size, device=device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    for _ in range(args.warmup):
        runner.forward(optical, sar)
    _sync(device)
    walls, cpus = [], []
    for _ in range(args.repeat):
        t, c = time.perf_counter(), os.times()
        runner.forward(optical, sar)
        _sync(device)
        c2 = os.times()
        walls.append(time.perf_counter() - t)
        cpus.append((c2.user - c.user) + (c2.system - c.system))
    wall = statistics.median(walls)
    row = {
        "model": args.model,
        "device": describe_device(device),
        "size": size,
        "batch": batch,
        **{k: v for k, v in runner.describe().items() if k != "max_batch"},
        "ms_per_batch": round(wall * 1e3, 2),
        "ms_per_patch": round(wall * 1e3 / batch, 2),
        "patches_per_s": round(batch / wall, 3),
        "mpix_per_s": round(batch * size * size / wall / 1e6, 4),
        "cpu_s_per_patch": round(statistics.median(cpus) / batch, 3),
        "gmacs_per_patch": round(gmacs, 2),
        "achieved_gflops": round(2 * gmacs * batch / wall, 1),
        "loadavg_1m": round(os.getloadavg()[0], 2),
    }
    if device.type == "cuda":
        row["peak_gpu_mib"] = round(torch.cuda.max_memory_allocated(device) / 2**20, 1)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="aligncr-lite", help="registry name (random weights; default aligncr-lite)")
    parser.add_argument("--sizes", type=int, nargs="+", default=[160, 304], help="square patch sides")
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 4], help="batch sizes")
    parser.add_argument("--dtypes", nargs="+", default=["fp32", "bf16"], help="fp32 | bf16 | fp16 | auto")
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    parser.add_argument("--channels-last", default="auto", choices=["auto", "on", "off"])
    parser.add_argument("--compile", action="store_true", help="torch.compile (first call compiles: raise --warmup)")
    parser.add_argument("--no-tf32", dest="tf32", action="store_false",
                        help="CUDA bf16/fp16: deformable convs in full fp32, not TF32 (ablation)")  # fmt: skip
    parser.add_argument("--threads", type=int, help="CPU threads (default: every core)")
    parser.add_argument("--backends", nargs="+", default=["torch"],
                        help="CPU backends (engine.stream.backends): torch | onnxruntime | openvino; the first warm-up "
                        "pass converts the network and is not timed")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()

    from engine.errors import EngineError
    from engine.models.counting import describe

    for size in args.sizes:
        gmacs = describe(args.model, size, size)["gmacs"]
        for dtype in args.dtypes:
            for batch in args.batches:
                for backend in args.backends:
                    try:
                        row = measure(args, size, batch, dtype, gmacs, backend)
                    except EngineError as exc:  # e.g. fp16 on the CPU: say so and go on with the others
                        row = {"model": args.model, "size": size, "batch": batch, "dtype": dtype, "skipped": str(exc)}
                    print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
