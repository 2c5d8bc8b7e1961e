"""Model registry and networks. Importing this package registers every ``*_arch.py`` module in it.

Public API: :func:`build_model`, :func:`list_models`, :func:`get_spec`, ``MODEL_REGISTRY``; weight files
(``save``/``load``/``import_official``) live in :mod:`engine.models.weights`.
"""

import importlib
import pkgutil

from engine.models.registry import (
    MODEL_REGISTRY,
    ModelSpec,
    build_model,
    config_to_dict,
    get_spec,
    list_models,
    register_model,
)

for _info in sorted(pkgutil.iter_modules(__path__), key=lambda i: i.name):
    if _info.name.endswith("_arch"):
        importlib.import_module(f"{__name__}.{_info.name}")

from engine.models.weights import ModelCard, import_official, load, read_card, save  # noqa: E402

__all__ = [
    "MODEL_REGISTRY",
    "ModelCard",
    "ModelSpec",
    "build_model",
    "config_to_dict",
    "get_spec",
    "import_official",
    "list_models",
    "load",
    "read_card",
    "register_model",
    "save",
]
