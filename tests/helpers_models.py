"""Small test-only models registered in the engine's registry (no weights), to observe the raster path.

``test-brighten`` adds 0.1 (so "the network ran here" is visible), ``test-tile-mean`` outputs each tile's mean
(an output that depends on the tile's position — the seam test's worst case), ``test-probe`` records what it was
fed (to check normalisation), ``test-ramp`` adds a ramp down the tile's rows (not flip-equivariant: its output
changes when the tile is flipped, so test-time augmentation sees a spread), ``test-bias`` is one learnable
constant per band (what scene adaptation trains it towards shows its targets). Use them inside
:func:`registered_test_models` (a module fixture does).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import nn

from engine.models import MODEL_REGISTRY, register_model


@dataclass(frozen=True)
class ProbeModelConfig:
    in_bands: int = 4
    sar_bands: int = 2


class Brighten(nn.Module):
    def __init__(self, cfg: ProbeModelConfig) -> None:
        super().__init__()
        self.cfg = cfg

    def forward(self, optical: torch.Tensor, sar: torch.Tensor) -> torch.Tensor:
        return optical + 0.1


class TileMean(nn.Module):
    def __init__(self, cfg: ProbeModelConfig) -> None:
        super().__init__()
        self.cfg = cfg

    def forward(self, optical: torch.Tensor, sar: torch.Tensor) -> torch.Tensor:
        return optical.mean(dim=(2, 3), keepdim=True).expand_as(optical).clone()


class Probe(nn.Module):
    """Identity that keeps every batch it sees in ``Probe.seen`` (class attribute: the pipeline builds its own)."""

    seen: list[tuple[torch.Tensor, torch.Tensor]] = []

    def __init__(self, cfg: ProbeModelConfig) -> None:
        super().__init__()
        self.cfg = cfg

    def forward(self, optical: torch.Tensor, sar: torch.Tensor) -> torch.Tensor:
        Probe.seen.append((optical.clone(), sar.clone()))
        return optical.clone()


class Ramp(nn.Module):
    """optical + 0.1 · row / height: a ramp tied to the tile's orientation, not to the image content."""

    def __init__(self, cfg: ProbeModelConfig) -> None:
        super().__init__()
        self.cfg = cfg

    def forward(self, optical: torch.Tensor, sar: torch.Tensor) -> torch.Tensor:
        rows = torch.arange(optical.shape[-2], dtype=optical.dtype, device=optical.device) / optical.shape[-2]
        return optical + 0.1 * rows[:, None]


class Bias(nn.Module):
    """A learnable per-band constant (0.5 to start): where ``--adapt`` moves it says which pixels were its targets."""

    def __init__(self, cfg: ProbeModelConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.bias = nn.Parameter(torch.full((1, cfg.in_bands, 1, 1), 0.5))

    def forward(self, optical: torch.Tensor, sar: torch.Tensor) -> torch.Tensor:
        return self.bias.expand_as(optical) + 0.0 * optical


@dataclass(frozen=True)
class ConstantConfig:
    in_bands: int = 4
    value: float = 0.0


class Constant(nn.Module):
    """``cfg.value`` everywhere: 0 (clipped predictions), NaN or inf (broken weights, an overflow), or a plausible
    reflectance (0.2: what a real model writes in a cloud). Register it with the value a test needs."""

    def __init__(self, cfg: ConstantConfig) -> None:
        super().__init__()
        self.cfg = cfg

    def forward(self, optical: torch.Tensor, sar: torch.Tensor) -> torch.Tensor:
        return torch.full_like(optical, self.cfg.value)


TEST_MODELS = {"test-brighten": Brighten, "test-tile-mean": TileMean, "test-probe": Probe, "test-ramp": Ramp,
               "test-bias": Bias}  # fmt: skip


@contextmanager
def registered_test_models() -> Iterator[None]:
    """Register the test models for the duration of the block, then remove them so other tests see the registry
    exactly as shipped."""
    added = []
    for name, cls in TEST_MODELS.items():
        if name not in MODEL_REGISTRY:
            register_model(name, ProbeModelConfig(), f"test model {cls.__name__}", needs_weights=False)(cls)
            added.append(name)
    try:
        yield
    finally:
        for name in added:
            MODEL_REGISTRY.pop(name, None)


def engine_models() -> dict:
    """The registry's models defined by the engine itself (engine/models/*_arch.py), without those tests register
    at run time (``test-tiny`` of the training tests stays registered for the session)."""
    return {name: spec for name, spec in MODEL_REGISTRY.items() if spec.cls.__module__.startswith("engine.models.")}
