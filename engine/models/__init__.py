"""Model registry and networks (BasicSR-style: one ``*_arch.py`` per network, :mod:`.registry` the one registry).

Public API, resolved lazily (PEP 562) so that importing this package imports no torch — the plugin reads
:mod:`.safetensors_header` and :mod:`.finetune_record` in QGIS's own Python: :func:`build_model`,
:func:`list_models`, :func:`get_spec`, :func:`register_model`, ``MODEL_REGISTRY`` (complete: every ``*_arch``
module is imported first) from :mod:`.registry`; ``save``/``load``/``read_card``/``import_official``/``ModelCard``
from :mod:`.weights`.
"""

from __future__ import annotations

import importlib
from typing import Any

_PUBLIC = {
    **dict.fromkeys(("MODEL_REGISTRY", "ModelSpec", "build_model", "config_to_dict", "get_spec", "list_models",
                     "register_model"), "registry"),
    **dict.fromkeys(("ModelCard", "import_official", "load", "read_card", "save"), "weights"),
}  # fmt: skip
__all__ = sorted(_PUBLIC)


def __getattr__(name: str) -> Any:
    if name not in _PUBLIC:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    registry = importlib.import_module(f"{__name__}.registry")
    registry.discover()
    return getattr(importlib.import_module(f"{__name__}.{_PUBLIC[name]}"), name)
