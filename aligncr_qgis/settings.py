"""Persistent plugin settings (QgsSettings, prefix ``aligncr/``), as one dataclass.

Everything the user sets once — interpreter, device, tile size, model, output folder, check boxes — survives QGIS
restarts. The last ``engine env --json`` / ``engine models --json`` answers are cached here too, so the dialog
can offer CUDA devices and registry models immediately instead of starting a torch import every time it opens.
The run options' defaults are the engine's options table's.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from typing import Any

from qgis.core import QgsSettings

from aligncr_qgis.paths import resolve_python
from aligncr_qgis.run_options import OPTIONS

PREFIX = "aligncr/"


@dataclass
class PluginSettings:
    python: str = ""  # empty = automatic (see paths.default_python)
    mode: str = OPTIONS["mode"].default  # best: what the mode switches on (engine.stream.mode); raw: plain network
    model: str = ""  # registry name or .safetensors path; empty = the mode's bundled model, else identity
    device: str = OPTIONS["device"].default
    tile: int = OPTIONS["tile"].default
    overlap: int = OPTIONS["overlap"].default
    batch: int = OPTIONS["batch"].default
    adapt: int = -1  # adaptation steps before declouding (0 = off, -1 = as the mode decides: --adapt left out)
    scene_check: bool = OPTIONS["scene_check"].default  # score the model vs flat / fill on the scene's clear ground
    colour_anchor: bool = OPTIONS["colour_anchor"].default  # take the model's colour drift out of the cloud
    sar_units: str = OPTIONS["sar_units"].default
    cog: bool = OPTIONS["cog"].default
    only_cloudy: bool = OPTIONS["only_cloudy"].default  # replace only the cloud, keep the clear pixels
    cloud_feather: int = OPTIONS["cloud_feather"].default
    write_qa: bool = False  # the QA layer: percent of each pixel from the model
    write_confidence: bool = False  # the confidence layer: spread of the model's output over test-time flips
    add_to_map: bool = True
    # draw this run's cloudy optical with the result's bands and stretch, as a named style of the layer (reversible);
    # off by default and a new key: the old ``style_inputs`` (on) also restyled the user's reference (issue 28)
    style_optical: bool = False
    make_ndvi: bool = False
    write_report: bool = False
    output_dir: str = ""
    env_cache: dict[str, Any] = field(default_factory=dict)  # last `engine env --json`
    models_cache: list[dict[str, Any]] = field(default_factory=list)  # last `engine models --json`

    @property
    def interpreter(self) -> str:
        return resolve_python(self.python)

    @classmethod
    def load(cls) -> PluginSettings:
        s = QgsSettings()
        values: dict[str, Any] = {}
        for f in dataclasses.fields(cls):
            key = PREFIX + f.name
            if not s.contains(key):
                continue
            raw = s.value(key)
            default = f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc]
            values[f.name] = _coerce(raw, default)
        return cls(**values)

    def save(self) -> None:
        s = QgsSettings()
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if isinstance(value, (dict, list)):
                value = json.dumps(value)
            s.setValue(PREFIX + f.name, value)

    def cuda_devices(self) -> list[dict[str, Any]]:
        return list(self.env_cache.get("cuda_devices") or [])


def _coerce(raw: Any, default: Any) -> Any:
    """QgsSettings hands back strings on some platforms; convert to the field's type, falling back to default."""
    try:
        if isinstance(default, bool):
            return raw if isinstance(raw, bool) else str(raw).lower() in ("true", "1", "yes")
        if isinstance(default, int):
            return int(raw)
        if isinstance(default, (dict, list)):
            value = json.loads(raw) if isinstance(raw, str) else raw
            return value if isinstance(value, type(default)) else default
        return "" if raw is None else str(raw)
    except (TypeError, ValueError):
        return default
