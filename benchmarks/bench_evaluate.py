#!/usr/bin/env python3
"""Speed and peak memory of ``python -m engine evaluate`` (the streaming report) versus scene size.

For each ``--sizes`` value a synthetic ``size``² scene is written strip by strip (memory O(size × 512)), in its
own process, on one UTM grid (EPSG:32632, 3 m), as tiled (512²), DEFLATE-compressed, ``BIGTIFF=IF_SAFER``
GeoTIFFs:

* ``reference.tif``: the cloud-free scene, 4-band uint16 (B, G, R, NIR) DN, a smooth pattern plus noise;
* ``optical.tif``: the reference with bright cloud blobs (discs of 60–200 px radius, ~25 % cover at every size);
* ``prediction.tif``: the "declouded output", the reference plus small Gaussian noise (σ = 25 DN);
* ``mask.tif``: 1 band uint8, 1 = cloud (exactly the blobs);
* ``landcover.tif``: 1 band uint8 of ESA WorldCover codes (10 … 100, rectangular patches).

Then ``python -m engine evaluate --optical … --prediction … --reference … --landcover … --mask … --out DIR`` runs
in a *fresh* child process (the real CLI, nothing imported by this script). Reported per size, as ONE JSON line on
stdout (progress on stderr): wall seconds, CPU seconds (user + system of the child, ``os.wait4``), Mpix/s, peak RSS
(MiB, the child's ``ru_maxrss``; ``VmHWM`` polled from /proc beside it), a coarse VmRSS trace (10 samples evenly
spaced in time) to see where memory goes, the 1-minute load average before and after, input / report sizes on
disk, whether ``report.html`` exists, and a few headline numbers read back from ``report.json`` (cloud cover,
output and cloudy-input PSNR / SSIM / MAE) so a reader sees it really computed. The last line on stderr gives
the peak-RSS growth from the first size to the last.

Disk: 20000² takes 5.0 GiB of inputs plus 4.2 GiB of report layers; check ``df -h /tmp`` or pass ``--workdir``.
Each size's folder is deleted after it is measured unless ``--keep``.

Usage: ``.venv/bin/python benchmarks/bench_evaluate.py --sizes 2048 8192``
       ``nohup .venv/bin/python benchmarks/bench_evaluate.py --sizes 20000 > eval20k.jsonl 2> eval20k.log &``
Not part of the test suite. On 2 AMD EPYC cores: 2048² 10 s, 8192² 1.6 min, 20000² 10 min (generation included).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from harness import add_child_arguments, generate_in_child

ROOT = Path(__file__).resolve().parents[1]
ORIGIN = (500_000.0, 5_100_000.0)
RES = 3.0
STRIP = 512
BLOB_RADIUS = (60.0, 200.0)  # px
BLOB_DENSITY = 0.29 / 54_000.0  # blobs per px²: λ = 0.29 of mean disc area ≈ 54 000 px² → ~25 % cover
WORLDCOVER_CODES = (10, 20, 30, 40, 50, 60, 80, 90, 10, 40, 70, 95, 100)  # forest/cropland twice as common
MIB = 1024.0 * 1024.0
FILES = ("optical", "prediction", "reference", "mask", "landcover")


def generate(size: int, folder: Path, seed: int = 0) -> None:
    """Write the five rasters of a ``size``² scene strip by strip (all five files open at once)."""
    import numpy as np
    import rasterio
    from rasterio.transform import from_origin
    from rasterio.windows import Window

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    n_blobs = max(3, round(BLOB_DENSITY * size * size))
    blobs = np.column_stack(
        [rng.uniform(0, size, n_blobs), rng.uniform(0, size, n_blobs), rng.uniform(*BLOB_RADIUS, n_blobs)]
    )  # (col, row, radius)
    common = {"driver": "GTiff", "width": size, "height": size, "crs": "EPSG:32632",
              "transform": from_origin(*ORIGIN, RES, RES), "tiled": True, "blockxsize": 512, "blockysize": 512,
              "compress": "deflate", "BIGTIFF": "IF_SAFER"}  # fmt: skip
    optical_profile = {**common, "count": 4, "dtype": "uint16", "nodata": 0, "predictor": 2}
    byte_profile = {**common, "count": 1, "dtype": "uint8"}
    x = np.arange(size, dtype=np.float32)
    factors = np.array([0.5, 0.7, 0.8, 1.6], dtype=np.float32)[:, None, None]
    with rasterio.Env(GDAL_NUM_THREADS="ALL_CPUS"):
        ds = {name: rasterio.open(folder / f"{name}.tif", "w", **(optical_profile if name in FILES[:3] else
                                                                    byte_profile))
              for name in FILES}  # fmt: skip
        try:
            for row in range(0, size, STRIP):
                h = min(STRIP, size - row)
                win = Window(0, row, size, h)
                y = np.arange(row, row + h, dtype=np.float32)[:, None]
                base = 2500 + 1500 * np.sin(x / 97.0) * np.cos(y / 131.0)
                ref = base[None] * factors + rng.integers(0, 40, (4, h, size)).astype(np.float32)
                pred = ref + rng.normal(0.0, 25.0, ref.shape).astype(np.float32)
                # cloud brightness: max over the discs touching this strip, 1 − (d/r)² shaped, 2500…6000 DN
                bright = np.zeros((h, size), dtype=np.float32)
                near = blobs[np.abs(blobs[:, 1] - (row + h / 2)) < h / 2 + blobs[:, 2]]
                for cx, cy, r in near:
                    c0, c1 = max(0, int(cx - r)), min(size, int(cx + r) + 1)
                    d2 = ((x[c0:c1] - cx) ** 2)[None, :] + (y - cy) ** 2
                    inside = np.where(d2 < r * r, 2500.0 + 3500.0 * (1.0 - d2 / (r * r)), 0.0)
                    np.maximum(bright[:, c0:c1], inside, out=bright[:, c0:c1])
                opt = ref + bright[None]
                for name, arr in (("reference", ref), ("prediction", pred), ("optical", opt)):
                    ds[name].write(np.clip(arr, 1, 10000).astype(np.uint16), window=win)
                ds["mask"].write((bright > 0).astype(np.uint8), 1, window=win)
                patch = (x.astype(np.int64) // 173)[None, :] * 7 + (y.astype(np.int64) // 211) * 13
                ds["landcover"].write(np.asarray(WORLDCOVER_CODES, dtype=np.uint8)[patch % len(WORLDCOVER_CODES)], 1,
                                      window=win)  # fmt: skip
        finally:
            for d in ds.values():
                d.close()


def _status_mib(pid: int, key: str) -> float | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1]) / 1024.0
    except (OSError, ValueError):
        pass
    return None


def measure(folder: Path, tile_size: int) -> dict:
    """Run ``python -m engine evaluate`` on ``folder``'s scene in a fresh process; return its numbers."""
    out = folder / "report"
    cmd = [sys.executable, "-m", "engine", "evaluate"]
    for name in FILES:
        cmd += [f"--{name}", str(folder / f"{name}.tif")]
    cmd += ["--out", str(out), "--tile", str(tile_size)]
    samples: list[tuple[float, float]] = []  # (seconds since start, VmRSS MiB)
    hwm = [0.0]
    load0 = os.getloadavg()[0]
    with open(folder / "evaluate.stdout", "w") as so, open(folder / "evaluate.stderr", "w") as se:
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, cwd=ROOT, stdout=so, stderr=se)
        stop = threading.Event()

        def poll() -> None:
            while not stop.wait(0.5):
                rss, peak = _status_mib(proc.pid, "VmRSS"), _status_mib(proc.pid, "VmHWM")
                if rss is not None:
                    samples.append((time.perf_counter() - t0, rss))
                if peak is not None:
                    hwm[0] = max(hwm[0], peak)

        poller = threading.Thread(target=poll, daemon=True)
        poller.start()
        _, status, usage = os.wait4(proc.pid, 0)
        seconds = time.perf_counter() - t0
        stop.set()
        poller.join()
        proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        sys.stderr.write((folder / "evaluate.stderr").read_text()[-4000:])
        raise SystemExit(f"engine evaluate failed with exit code {proc.returncode}")
    report = json.loads((out / "report.json").read_text())
    width, height = report["grid"]["width"], report["grid"]["height"]
    m = report["metrics"]

    def head(which: str, part: str) -> dict:
        return {k: None if m[which][part][k] is None else round(m[which][part][k], 4) for k in ("mae", "psnr", "ssim")}

    picks = sorted({round(i * (len(samples) - 1) / 9) for i in range(10)}) if samples else []
    trace = [[round(samples[i][0], 1), round(samples[i][1], 1)] for i in picks]
    html = out / "report.html"
    return {
        "size": width,
        "mpix": round(width * height / 1e6, 2),
        "tile_size": tile_size,
        "seconds": round(seconds, 1),
        "cpu_seconds": round(usage.ru_utime + usage.ru_stime, 1),
        "mpix_per_s": round(width * height / 1e6 / seconds, 3),
        "peak_rss_mib": round(usage.ru_maxrss / 1024.0, 1),  # KiB on Linux
        "vmhwm_polled_mib": round(hwm[0], 1),
        "rss_trace_s_mib": trace,
        "loadavg_1m": [round(load0, 2), round(os.getloadavg()[0], 2)],
        "inputs_mib": round(sum((folder / f"{n}.tif").stat().st_size for n in FILES) / MIB, 1),
        "report_mib": round(sum(p.stat().st_size for p in out.iterdir() if p.is_file()) / MIB, 1),
        "html_exists": html.is_file(),
        "html_kib": round(html.stat().st_size / 1024.0, 1) if html.is_file() else None,
        "plots": report["plots"],
        "cloud_cover_percent": round(report["scene"]["cloud_mask"]["cloud_cover_percent"], 2),
        "output_overall": head("output", "overall"),
        "output_inside_cloud": head("output", "inside_cloud"),
        "cloudy_input_inside_cloud": head("cloudy_input", "inside_cloud"),
        "cloud_cover_bin_tiles": [b["tiles"] for b in m["output"]["cloud_cover_bins"]],
        "forest_pixels": m["output"]["per_class"]["forest"]["pixels"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[2048, 8192], help="scene sides (default 2048 8192)")
    parser.add_argument("--tile-size", type=int, default=300, help="evaluate --tile (default 300, the CLI's)")
    parser.add_argument("--workdir", type=Path, default=None, help="scratch folder (default: a temp dir in /tmp)")
    parser.add_argument("--keep", action="store_true", help="keep the generated scenes and reports")
    add_child_arguments(parser, ["generate"])
    args = parser.parse_args()
    if args.child == "generate":
        generate(args.size, args.folder)
        return

    if args.workdir is not None:
        args.workdir.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="aligncr-bench-evaluate-", dir=args.workdir))
    rows = []
    try:
        for size in args.sizes:
            folder = work / str(size)
            gen = generate_in_child(__file__, size, folder)
            print(f"{size}²: scene generated in {gen:.1f} s; running engine evaluate …", file=sys.stderr, flush=True)
            row = measure(folder, args.tile_size)
            row["generate_seconds"] = round(gen, 1)
            rows.append(row)
            print(json.dumps(row), flush=True)
            print(f"{size}²: {row['seconds']} s ({row['cpu_seconds']} CPU s), {row['mpix_per_s']} Mpix/s, peak RSS "
                  f"{row['peak_rss_mib']} MiB, output PSNR {row['output_overall']['psnr']} dB", file=sys.stderr,
                  flush=True)  # fmt: skip
            if not args.keep:
                shutil.rmtree(folder, ignore_errors=True)
    except subprocess.CalledProcessError as exc:
        raise SystemExit(f"benchmark step failed: {' '.join(map(str, exc.cmd[:4]))} ...") from None
    finally:
        if args.keep:
            print(f"kept: {work}", file=sys.stderr)
        else:
            shutil.rmtree(work, ignore_errors=True)
    if len(rows) >= 2:
        growth = rows[-1]["peak_rss_mib"] / rows[0]["peak_rss_mib"] - 1.0
        print(f"peak RSS {rows[0]['size']}² → {rows[-1]['size']}²: {rows[0]['peak_rss_mib']} → "
              f"{rows[-1]['peak_rss_mib']} MiB ({growth * 100:+.1f} %)", file=sys.stderr)  # fmt: skip


if __name__ == "__main__":
    main()
