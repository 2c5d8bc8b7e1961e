#!/usr/bin/env python3
"""End-to-end engine speed on a generated scene: the engine's fast path versus the naive path, in one run.

A synthetic ``--size``² scene is written with windowed writes (memory O(size × 512)) into a temporary folder:
4-band uint16 optical at 3 m in EPSG:32632 and 2-band float32 dB SAR at ~10 m in EPSG:4326, so reprojection,
normalisation, tiling, blending and the atomic GeoTIFF writer all run as in production. Then
:func:`engine.stream.pipeline.run` decloudes it twice, each time in a fresh Python process (so peak RSS and peak GPU
memory belong to that run alone):

* ``fast``: the engine as shipped — ``--dtype`` (auto: bf16 on a CUDA GPU and on CPUs with native bf16, else
  fp32), ``--batch`` tiles per forward on the GPU (one at a time on the CPU, see engine.stream.accel), channels_last on
  CUDA, optional ``--compile``, background reader/writer threads.
* ``naive``: one tile per forward, fp32, no compile, no channels_last, no prefetching (I/O and compute in turn).

Before the timed run each process decloudes a small 512² scene with the same settings (``--no-warmup`` to skip),
so one-off costs — CUDA context, cuDNN/oneDNN kernel selection, torch.compile — are not billed to the scene: they
are paid once per process in production too. Model weights: ``--weights`` if given, else the registry model with
random weights (speed does not depend on the values).

Reported per path (stderr as it goes, and all in ONE JSON line on stdout at the end): seconds, Mpix/s, CPU
seconds (user + system, ``os.times``; on a busy shared machine compare those), peak RSS (MiB, ``VmHWM``), peak
GPU memory (MiB), tiles, the runner's settings, the 1-minute load average; plus ``speedup`` = fast Mpix/s ÷ naive
Mpix/s.

Usage: ``.venv/bin/python benchmarks/bench_inference.py --size 4096 --model aligncr-lite --device cpu``
       ``.venv/bin/python benchmarks/bench_inference.py --size 8192 --model aligncr --device cuda --batch 16``
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from harness import add_child_arguments, generate_in_child

ROOT = Path(__file__).resolve().parents[1]
ORIGIN = (500_000.0, 5_100_000.0)
RES = 3.0
STRIP = 512
SAR_STEP = 9e-5  # degrees, ≈ 10 m
ISA_ENV = ("ONEDNN_MAX_CPU_ISA", "ATEN_CPU_CAPABILITY")  # the AVX2 emulation of issue 30, recorded when set


def generate(size: int, folder: Path, seed: int = 0) -> tuple[Path, Path]:
    """Write a ``size``² optical scene and the SAR covering it, strip by strip; returns (optical, sar)."""
    import numpy as np
    import rasterio
    from rasterio.transform import from_origin
    from rasterio.warp import transform_bounds
    from rasterio.windows import Window

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    opt_path, sar_path = folder / "optical.tif", folder / "sar.tif"
    tiled = {"tiled": True, "blockxsize": 512, "blockysize": 512, "compress": "deflate", "BIGTIFF": "IF_SAFER"}
    x = np.arange(size, dtype=np.float32)
    with rasterio.open(opt_path, "w", driver="GTiff", width=size, height=size, count=4, dtype="uint16",
                       crs="EPSG:32632", transform=from_origin(*ORIGIN, RES, RES), nodata=0, predictor=2,
                       **tiled) as ds:  # fmt: skip
        for row in range(0, size, STRIP):
            h = min(STRIP, size - row)
            y = np.arange(row, row + h, dtype=np.float32)[:, None]
            base = 2500 + 1500 * np.sin(x / 97.0) * np.cos(y / 131.0)
            cloud = np.clip(6000 * np.exp(-((x - size / 3) ** 2 + (y - size / 2) ** 2) / (size / 5) ** 2), 0, 6000)
            strip = np.stack([base * f + cloud for f in (0.5, 0.7, 0.8, 1.6)])
            strip += rng.integers(0, 40, strip.shape)
            ds.write(np.clip(strip, 1, 10000).astype("uint16"), window=Window(0, row, size, h))
        bounds = ds.bounds
    left, bottom, right, top = transform_bounds("EPSG:32632", "EPSG:4326", *bounds, densify_pts=21)
    sw, sh = int((right - left) / SAR_STEP) + 2, int((top - bottom) / SAR_STEP) + 2
    with rasterio.open(sar_path, "w", driver="GTiff", width=sw, height=sh, count=2, dtype="float32",
                       crs="EPSG:4326", transform=from_origin(left - SAR_STEP, top + SAR_STEP, SAR_STEP, SAR_STEP),
                       predictor=3, **tiled) as ds:  # fmt: skip
        xs = np.arange(sw, dtype=np.float32)
        for row in range(0, sh, STRIP):
            h = min(STRIP, sh - row)
            y = np.arange(row, row + h, dtype=np.float32)[:, None]
            vv = -12 + 4 * np.sin(xs / 41.0) * np.cos(y / 53.0) + rng.normal(0, 0.5, (h, sw))
            ds.write(np.stack([vv, vv - 7]).astype("float32"), window=Window(0, row, sw, h))
    return opt_path, sar_path


def _accel_settings(args: argparse.Namespace, mode: str) -> dict:
    if mode == "naive":
        return {"dtype": "fp32", "channels_last": "off", "compile": False, "threads": args.threads, "prefetch": False,
                "cpu_workers": 1, "keep_freed_memory": False, "backend": "torch"}  # PyTorch, whatever --backend says
    return {"dtype": args.dtype, "compile": args.compile, "threads": args.threads, "prefetch": True,
            "keep_freed_memory": args.keep_freed_memory, "backend": args.backend}


def measure(args: argparse.Namespace) -> dict:
    """(Child process) warm up, decloud the scene once with ``args.mode``'s settings, report."""
    sys.path.insert(0, str(ROOT))
    import torch

    from engine.config import RunConfig
    from engine.stream.accel import AccelConfig
    from engine.stream.pipeline import run

    folder = Path(args.folder)
    accel = AccelConfig(**_accel_settings(args, args.mode))
    batch = 1 if args.mode == "naive" else args.batch

    def config(scene: Path, out: Path) -> RunConfig:
        return RunConfig(optical=scene / "optical.tif", sar=scene / "sar.tif", out=out, model=args.model,
                         weights=args.weights, device=args.device, tile=args.tile, overlap=args.overlap,
                         batch=batch, mode=args.run_mode, adapt=args.adapt)  # fmt: skip

    if args.warmup:
        run(config(folder / "warmup", folder / f"warmup-{args.mode}.tif"), accel=accel)
    cuda = torch.cuda.is_available() and args.device != "cpu"
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    c0, t0 = os.times(), time.perf_counter()
    result = run(config(folder / "scene", folder / f"out-{args.mode}.tif"), accel=accel)
    seconds, c1 = time.perf_counter() - t0, os.times()
    mpix = result.width * result.height / 1e6
    return {
        "mode": args.mode,
        "seconds": round(seconds, 2),
        "mpix_per_s": round(mpix / seconds, 4),
        "cpu_seconds": round(c1.user - c0.user + c1.system - c0.system, 2),
        "peak_rss_mib": round(_peak_rss_mib(), 1),
        "peak_gpu_mib": round(torch.cuda.max_memory_allocated() / 2**20, 1) if cuda else None,
        "tiles": result.total_tiles,
        "network_tiles": result.network_tiles,
        "cpu_s_per_mpix": round((c1.user - c0.user + c1.system - c0.system) / mpix, 2),
        "batch": batch,
        "device": result.device,
        "accel": result.accel,
        "loadavg_1m": round(os.getloadavg()[0], 2),
    }


def _peak_rss_mib() -> float:
    """This process's peak resident set size. Linux: ``VmHWM`` of /proc/self/status, the high-water mark of this
    program alone — ``ru_maxrss`` also keeps the high-water mark of the process image before ``exec`` (the
    forking parent's), which can exceed what the engine itself used."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # KiB on Linux, bytes on macOS


def _child(args: argparse.Namespace, *extra: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, __file__, *extra]
    for flag in ("model", "device", "dtype", "tile", "overlap", "batch", "threads", "backend", "run_mode", "adapt"):
        value = getattr(args, flag)
        if value is not None:
            cmd += [f"--{flag.replace('_', '-')}", str(value)]
    if args.weights:
        cmd += ["--weights", str(args.weights)]
    if args.compile:
        cmd.append("--compile")
    if not args.warmup:
        cmd.append("--no-warmup")
    if not args.keep_freed_memory:
        cmd.append("--no-keep-freed-memory")
    return subprocess.run(cmd, check=True, capture_output=True, text=True)


def _random_weights(model: str, folder: Path) -> Path | None:
    """A weights file with random values for registry models that refuse to run without one."""
    sys.path.insert(0, str(ROOT))
    from engine.models import build_model, get_spec
    from engine.models import weights as weights_io

    if not get_spec(model).needs_weights:
        return None
    import torch

    torch.manual_seed(0)
    return weights_io.save(build_model(model), folder / f"{model}-random.safetensors")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, default=4096, help="scene side in pixels (default 4096)")
    parser.add_argument("--model", default="aligncr-lite", help="registry model (default aligncr-lite)")
    parser.add_argument("--weights", type=Path, help="weights file (default: random weights for --model)")
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    parser.add_argument("--dtype", default="auto", help="fast path dtype: auto | fp32 | bf16 | fp16")
    parser.add_argument("--tile", type=int, default=256)
    parser.add_argument("--overlap", type=int, default=32)
    parser.add_argument("--batch", type=int, default=4, help="fast path tiles per forward (naive: 1)")
    parser.add_argument("--threads", type=int, help="CPU threads for torch (default: every core)")
    parser.add_argument("--compile", action="store_true", help="fast path: torch.compile")
    parser.add_argument("--backend", default="auto",
                        help="fast path CPU backend: auto | torch | onnxruntime | openvino")
    parser.add_argument("--run-mode", default="raw", choices=["raw", "best"],
                        help="engine run --mode (default raw: the network on every tile; best: the default run, "
                        "with adaptation, the scene check and only the cloud replaced)")
    parser.add_argument("--adapt", type=int,
                        help="engine run --adapt: scene adaptation steps (default: the mode's own)")
    parser.add_argument("--no-keep-freed-memory", dest="keep_freed_memory", action="store_false",
                        help="fast path: let glibc unmap freed memory between tiles (ablation of engine.stream.malloc)")
    parser.add_argument("--no-naive", dest="naive", action="store_false", help="skip the naive path")
    parser.add_argument("--no-warmup", dest="warmup", action="store_false", help="no 512² warm-up run")
    parser.add_argument("--workdir", type=Path, help="scratch folder (default: a temp dir)")
    add_child_arguments(parser, ["generate", "measure"], size=False)  # --size is public here
    parser.add_argument("--mode", choices=["fast", "naive"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child == "generate":
        generate(args.size, args.folder)
        return
    if args.child == "measure":
        print(json.dumps(measure(args)))
        return

    work = Path(tempfile.mkdtemp(prefix="aligncr-bench-inference-", dir=args.workdir))
    try:
        t0 = time.perf_counter()
        generate_in_child(__file__, args.size, work / "scene")
        generate_in_child(__file__, 512, work / "warmup")
        print(f"generated {args.size}² scene in {time.perf_counter() - t0:.1f} s", file=sys.stderr, flush=True)
        if args.weights is None:
            args.weights = _random_weights(args.model, work)
        env = {k: os.environ[k] for k in ISA_ENV if k in os.environ}
        record: dict = {"size": args.size, "model": args.model, "tile": args.tile, "overlap": args.overlap,
                        "backend": args.backend, "mode": args.run_mode, "adapt": args.adapt, "env": env}
        for mode in ("fast", "naive") if args.naive else ("fast",):
            done = _child(args, "--child", "measure", "--mode", mode, "--folder", str(work))
            record[mode] = json.loads(done.stdout.strip().splitlines()[-1])
            print(f"{mode}: {json.dumps(record[mode])}", file=sys.stderr, flush=True)
        if args.naive:
            record["speedup"] = round(record["fast"]["mpix_per_s"] / record["naive"]["mpix_per_s"], 2)
        print(json.dumps(record), flush=True)
    except subprocess.CalledProcessError as exc:
        sys.stderr.write(exc.stderr or "")
        raise SystemExit(f"benchmark step failed: {' '.join(map(str, exc.cmd[:4]))} ...") from None
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
