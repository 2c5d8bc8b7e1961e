"""How much memory a tile costs, how much the run may use, and the check that keeps a run within it.

Issue 15: ``--tile`` had no upper bound — ``--tile 4096`` on a 300² image was killed by the kernel at 20 GB and
``--tile 100000`` died with a MemoryError traceback. Tiles now never exceed the scene (:class:`engine.stream.tiling.
TileGrid`), and before anything is written :func:`plan_memory` estimates one tile's forward from the table below
and refuses a tile that does not fit the budget, naming the largest one that does; on the CPU it also lowers the
number of tiles run at once (``cpu_workers``) to what fits, on CUDA the batch.

The table: peak memory of one fp32 forward per tile pixel (CPU, one thread, on top of the loaded model), measured by
``benchmarks/bench_tile_memory.py`` at 512² tiles (2026-11-30, torch 2.13 CPU). bf16 and CUDA need less, so it
is an upper bound there. A model not in the table (a new architecture) is assumed to cost as much as the most
demanding one. The pipeline's own buffers (the chunk's raw, normalised and accumulated arrays, up to three chunks
in flight with prefetching) are added at :data:`PIPELINE_BYTES_PER_PIXEL` per chunk pixel.

The budget: ``--memory-budget GB`` when given, else :data:`AUTO_FRACTION` of what is available — on the CPU the
kernel's ``MemAvailable`` (or the cgroup's limit minus its usage, when lower), on a CUDA device its free memory.
Where neither can be read, no limit is enforced (the check cannot fail on a machine it cannot measure).
"""

from __future__ import annotations

import dataclasses
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import torch

from engine.errors import InputError
from engine.stream.accel import MAX_AUTO_CPU_WORKERS, AccelConfig
from engine.stream.tiling import TileGrid, chunk_tiles

log = logging.getLogger("engine")

BYTES_PER_PIXEL = {  # peak bytes of one fp32 forward ÷ tile pixels, at 512² (benchmarks/bench_tile_memory.py)
    "identity": 18,
    "gapfill": 40,
    "dsen2cr-lite": 1_323,
    "dsen2cr": 5_171,
    "aligncr-lite": 2_876,
    "aligncr": 6_854,
    "mmcanet": 10_536,
    "mmcanet-l": 10_472,
    "mmcanet-mpir2": 3_127,
    "mmcanet-mpir4": 11_138,
    "ssop-unet": 1_968,
    "msop-unet": 3_856,
}
DEFAULT_BYTES_PER_PIXEL = max(BYTES_PER_PIXEL.values())  # a model not measured: the most demanding known
# four chunks in flight (read ahead, queued on the network, being blended, being written) × (raw + normalised + SAR +
# accumulator + masks)
PIPELINE_BYTES_PER_PIXEL = 4 * 96
AUTO_FRACTION = 0.8
GB = 1e9


@dataclass(frozen=True)
class MemoryPlan:
    """What the check decided: bytes per tile, the budget, and how many tiles may run at once."""

    per_tile: int
    pipeline: int
    budget: int | None
    concurrent: int

    def describe(self) -> str:
        budget = "none" if self.budget is None else f"{self.budget / GB:.1f} GB"
        tiles = f"≈ {self.per_tile / GB:.2f} GB per tile × {self.concurrent}"
        return f"{tiles} + {self.pipeline / GB:.2f} GB of buffers; budget {budget}"


def tile_bytes(model: str, tile_h: int, tile_w: int) -> int:
    """Estimated peak memory of one forward of ``model`` on a ``tile_h × tile_w`` tile."""
    return int(BYTES_PER_PIXEL.get(model, DEFAULT_BYTES_PER_PIXEL) * tile_h * tile_w)


def pipeline_bytes(grid: TileGrid, chunk_px: int) -> int:
    """The pipeline's buffers for chunks of ``grid`` (a chunk is at least one tile plus its overlap)."""
    cy, cx = chunk_tiles(grid, chunk_px)
    h = min(grid.height, cy * grid.stride_y + grid.overlap_y)
    w = min(grid.width, cx * grid.stride_x + grid.overlap_x)
    return PIPELINE_BYTES_PER_PIXEL * h * w


def _meminfo_available() -> int | None:
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError):
        return None
    return None


def _cgroup_available() -> int | None:
    """memory.max − memory.current of this process's cgroup (v2), when it sets a limit."""
    root = Path("/sys/fs/cgroup")
    try:
        limit = (root / "memory.max").read_text().strip()
        if limit == "max":
            return None
        return int(limit) - int((root / "memory.current").read_text().strip())
    except (OSError, ValueError):
        return None


def available_bytes(device: torch.device) -> int | None:
    """Memory this run could use now on ``device``, or None when it cannot be told."""
    if device.type == "cuda":
        try:
            return int(torch.cuda.mem_get_info(device)[0])
        except Exception:  # noqa: BLE001 - no CUDA runtime answer: unknown
            return None
    found = [v for v in (_meminfo_available(), _cgroup_available()) if v is not None]
    return min(found) if found else None


def budget_bytes(memory_budget_gb: float | None, device: torch.device) -> int | None:
    """The run's budget: ``--memory-budget`` when given, else :data:`AUTO_FRACTION` of what is available."""
    if memory_budget_gb is not None:
        return int(memory_budget_gb * GB)
    available = available_bytes(device)
    return None if available is None else int(AUTO_FRACTION * available)


def largest_fitting_tile(model: str, grid: TileGrid, chunk_px: int, budget: int) -> int:
    """The largest tile (a multiple of 16, at least 16) whose forward and buffers fit ``budget``; 0 if none."""
    t = max(16, grid.tile - grid.tile % 16)
    while t >= 16:
        g = TileGrid(grid.height, grid.width, t, min(grid.overlap, (t - 1) // 2))
        if tile_bytes(model, g.tile_h, g.tile_w) + pipeline_bytes(g, chunk_px) <= budget:
            return t
        t -= 16
    return 0


def plan_memory(model: str, grid: TileGrid, chunk_px: int, device: torch.device, accel: AccelConfig,
                batch: int, memory_budget_gb: float | None) -> tuple[MemoryPlan, AccelConfig]:  # fmt: skip
    """Check that one tile fits the budget (else :class:`InputError` naming the largest tile that does) and lower
    the CPU's concurrent forwards to what fits; returns the plan and the (possibly adjusted) accel settings."""
    per_tile = tile_bytes(model, grid.tile_h, grid.tile_w)
    pipeline = pipeline_bytes(grid, chunk_px)
    budget = budget_bytes(memory_budget_gb, device)
    if device.type == "cpu":
        threads = accel.threads or os.cpu_count() or 1
        wanted = max(1, min(accel.cpu_workers or min(threads, MAX_AUTO_CPU_WORKERS), threads))
    else:
        wanted = max(1, batch)
    if budget is None:
        return MemoryPlan(per_tile, pipeline, None, wanted), accel
    if per_tile + pipeline > budget:
        largest = largest_fitting_tile(model, grid, chunk_px, budget)
        fix = f"use --tile {largest} or less" if largest else "free memory or raise --memory-budget"
        source = "--memory-budget" if memory_budget_gb is not None else f"{AUTO_FRACTION:.0%} of the available memory"
        raise InputError(
            f"--tile {grid.tile} ({grid.tile_w}×{grid.tile_h} px on this scene) needs about "
            f"{(per_tile + pipeline) / GB:.1f} GB for model '{model}', more than the {budget / GB:.1f} GB memory "
            f"budget ({source}): {fix}"
        )
    fits = max(1, int((budget - pipeline) // max(per_tile, 1)))
    concurrent = min(wanted, fits)
    if device.type == "cpu" and concurrent < wanted:
        log.info("memory budget: %d tile(s) at once on the CPU instead of %d", concurrent, wanted)
        accel = dataclasses.replace(accel, cpu_workers=concurrent)
    return MemoryPlan(per_tile, pipeline, budget, concurrent), accel
