#!/usr/bin/env python3
"""Peak memory of one network forward per tile pixel, per registry model: the table in :mod:`engine.stream.memory`.

For each model and tile size a *fresh* Python process builds the model (random weights: memory does not depend on
their values), makes a (1, 4, t, t) optical and (1, 2, t, t) SAR batch (and the extra dates of temporal models),
resets the kernel's peak-RSS mark (``/proc/self/clear_refs``, Linux ≥ 4.0), runs one fp32 forward under
``torch.inference_mode`` on one thread, and reports ``VmHWM − VmRSS`` before the forward: the bytes the forward
needed on top of the loaded model. ``engine.stream.memory.BYTES_PER_PIXEL`` is that peak ÷ t² at t = 512 (the larger of
the two sizes measured; the per-pixel cost falls slightly with the tile, so it is an upper bound for larger tiles).

Usage: ``.venv/bin/python benchmarks/bench_tile_memory.py [--models aligncr-lite dsen2cr] [--tiles 256 512]``.
Linux only; minutes of CPU for the large models. Not part of the test suite.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

CHILD = r"""
import datetime, json, sys
import torch
torch.set_num_threads(1)
from engine.models import build_model
name, t = sys.argv[1], int(sys.argv[2])

def status(key):
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key):
                return int(line.split()[1]) * 1024

m = build_model(name).eval()
o, s = torch.rand(1, 4, t, t), torch.rand(1, 2, t, t)
kw = {}
if getattr(m, "temporal_inputs", None):
    kw = {"optical_prev": torch.rand(1, 4, t, t), "optical_next": torch.rand(1, 4, t, t)}
    if getattr(m, "uses_sar", True):
        kw.update(sar_prev=torch.rand(1, 2, t, t), sar_next=torch.rand(1, 2, t, t))
    else:
        d = datetime.datetime(2020, 1, 1)
        kw.update(t_prev=d, t=d + datetime.timedelta(days=3), t_next=d + datetime.timedelta(days=9))
with torch.inference_mode():
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    base = status("VmRSS:")
    m(o, s, **kw)
    peak = status("VmHWM:")
print(json.dumps({"model": name, "tile": t, "peak_bytes": peak - base, "bytes_per_pixel": (peak - base) / t / t}))
"""


def main() -> None:
    from engine.models import MODEL_REGISTRY

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", nargs="*", default=sorted(MODEL_REGISTRY))
    parser.add_argument("--tiles", nargs="*", type=int, default=[256, 512])
    args = parser.parse_args()
    for name in args.models:
        for t in args.tiles:
            done = subprocess.run([sys.executable, "-c", CHILD, name, str(t)], cwd=ROOT, capture_output=True,
                                  text=True, check=False)  # fmt: skip
            print(done.stdout.strip() or json.dumps({"model": name, "tile": t, "error": done.stderr[-300:]}),
                  flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
