"""The one model registry: every network the engine, training and the plugin can use, by name.

BasicSR-style: each architecture lives in ``engine/models/<arch>_arch.py`` and registers one or more *named
configs* with :func:`register_model`. A named config pairs an ``nn.Module`` class with a config dataclass
instance (``aligncr`` and ``aligncr-lite`` are the same class with two configs). Everything is built through
:func:`build_model` so that a weights file's model card (``arch`` + ``config``) is enough to rebuild it.

Model contract (all registered models):
``forward(optical, sar) -> optical_hat`` with ``optical`` (N, B, H, W) float in [0, 1] (B = ``cfg.in_bands``,
default 4: B, G, R, NIR) and ``sar`` (N, 2, h, w) float in [0, 1] (VV, VH); ``h, w`` may be smaller than
``H, W`` (the model upsamples nearest) or equal. Output has the optical input's shape, in the same scaling.
Inputs beyond these (no SAR, extra dates, a DEM) are declared by the class and config and read into roles by
:func:`engine.models.roles.inputs_of`; the pipeline opens exactly those.
"""

from __future__ import annotations

import dataclasses
import importlib
import pkgutil
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from torch import nn

from engine.errors import ModelError


@dataclass(frozen=True)
class ModelSpec:
    """A named, buildable model: architecture class + default config."""

    name: str
    arch: str
    cls: type[nn.Module]
    config: Any  # a dataclass instance
    description: str
    needs_weights: bool = True

    def build_config(self, **overrides: Any) -> Any:
        unknown = set(overrides) - {f.name for f in dataclasses.fields(self.config)}
        if unknown:
            raise ModelError(f"model '{self.name}' has no config option(s) {sorted(unknown)}")
        return dataclasses.replace(self.config, **overrides)


MODEL_REGISTRY: dict[str, ModelSpec] = {}


def register_model(
    name: str,
    config: Any,
    description: str,
    *,
    needs_weights: bool = True,
) -> Callable[[type[nn.Module]], type[nn.Module]]:
    """Class decorator registering ``cls`` under ``name`` with the config dataclass instance ``config``.

    Stack the decorator to register several named configs of one architecture. The class must accept the
    config dataclass as its single constructor argument.
    """

    def deco(cls: type[nn.Module]) -> type[nn.Module]:
        if name in MODEL_REGISTRY:
            raise ValueError(f"model name '{name}' registered twice")
        if not dataclasses.is_dataclass(config):
            raise TypeError(f"config of '{name}' must be a dataclass instance")
        MODEL_REGISTRY[name] = ModelSpec(
            name=name,
            arch=cls.__name__,
            cls=cls,
            config=config,
            description=description,
            needs_weights=needs_weights,
        )
        return cls

    return deco


def discover() -> None:
    """Import every ``engine/models/*_arch.py`` once, so each registers its named configs.

    Why here and not in the package's ``__init__``: the QGIS plugin imports torch-free modules of this package
    (:mod:`engine.models.safetensors_header`, :mod:`engine.models.finetune_record`) in QGIS's own Python; importing
    the package must not import torch. Every lookup below discovers first."""
    package = importlib.import_module("engine.models")
    for info in sorted(pkgutil.iter_modules(package.__path__), key=lambda i: i.name):
        if info.name.endswith("_arch"):
            importlib.import_module(f"engine.models.{info.name}")


def get_spec(name: str) -> ModelSpec:
    discover()
    try:
        return MODEL_REGISTRY[name]
    except KeyError:
        known = ", ".join(sorted(MODEL_REGISTRY))
        raise ModelError(f"unknown model '{name}' (known: {known})") from None


def build_model(name: str, **overrides: Any) -> nn.Module:
    """Build the named model with its default config, optionally overriding config fields."""
    spec = get_spec(name)
    model = spec.cls(spec.build_config(**overrides))
    model.model_name = name  # remembered for model cards
    return model


def list_models() -> list[ModelSpec]:
    discover()
    return [MODEL_REGISTRY[k] for k in sorted(MODEL_REGISTRY)]


def config_to_dict(config: Any) -> dict[str, Any]:
    return dataclasses.asdict(config)
