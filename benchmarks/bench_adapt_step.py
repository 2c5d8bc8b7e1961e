"""Seconds per scene-adaptation step (issue 30): one Adam step as engine.refine.scene_adapt.fine_tune_ takes it
(4 crops of 80², the adaptation loss) on random inputs, after one warm-up step; median of STEPS.

Imports the engine from the current directory, so the same file times any checkout (before/after):
``cd CHECKOUT && OMP_NUM_THREADS=1 python /path/to/bench_adapt_step.py aligncr-lite THREADS [STEPS]``; env CL=1:
channels-last, NOMKL=1: oneDNN off, PROF=1: a torch.profiler table of one step.
"""

from __future__ import annotations

import os
import sys
import time

import torch

sys.path.insert(0, os.getcwd())


def main() -> None:
    from engine.align.inputs import PackedInputsAdapter
    from engine.models import build_model

    name, threads = sys.argv[1], int(sys.argv[2])
    steps = int(sys.argv[3]) if len(sys.argv) > 3 else 4
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    model = build_model(name)
    res = name == "aligncr-res"
    module = PackedInputsAdapter(model, 2, ["prior"], [5], {}) if res else model
    opt = torch.optim.Adam([p for p in module.parameters() if p.requires_grad], lr=5e-5)
    module.train()
    o, s = torch.rand(4, 4, 80, 80), torch.rand(4, 7 if res else 2, 80, 80)
    t, w = torch.rand(4, 4, 80, 80), torch.rand(4, 1, 80, 80)
    if os.environ.get("CL"):
        module.to(memory_format=torch.channels_last)
        o, s = o.contiguous(memory_format=torch.channels_last), s.contiguous(memory_format=torch.channels_last)

    def step() -> None:
        loss = (w * ((module(o, s) - t) ** 2 + 1e-6) ** 0.45).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()

    step()
    if os.environ.get("NOMKL"):
        torch.backends.mkldnn.enabled = False
    if os.environ.get("PROF"):
        from torch.profiler import ProfilerActivity, profile

        with profile(activities=[ProfilerActivity.CPU]) as prof:
            step()
        print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=25))
    walls, cpus = [], []
    for _ in range(steps):
        c0, t0 = os.times(), time.perf_counter()
        step()
        walls.append(time.perf_counter() - t0)
        c1 = os.times()
        cpus.append(c1.user + c1.system - c0.user - c0.system)
    wall, cpu = sorted(walls)[len(walls) // 2], sorted(cpus)[len(cpus) // 2]
    print(f"{name} threads={threads} step wall median {wall:.3f} s, cpu {cpu:.3f} s, load {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
