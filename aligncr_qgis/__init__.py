"""Align-CR Cloud Removal — QGIS plugin: a thin Qt shell over the headless engine (``python -m engine``).

QGIS calls :func:`classFactory` when the plugin is enabled. Nothing heavy is imported here: no torch, no
rasterio — the engine runs in a child process with the interpreter chosen in the settings.
"""

from __future__ import annotations

from typing import Any


def classFactory(iface: Any) -> Any:  # noqa: N802 - name fixed by QGIS
    from aligncr_qgis.plugin import AlignCRPlugin

    return AlignCRPlugin(iface)
