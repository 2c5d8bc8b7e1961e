"""Align-CR inference engine: SAR-guided cloud removal for georeferenced optical rasters.

The engine is deliberately free of Qt imports so that it runs headless (CLI, batch, Dask workers) and in a
separate process from QGIS; the plugin in ``aligncr_qgis`` only talks to it through ``python -m engine``.
"""

from pathlib import Path

__version__ = "0.1.0"
# the bundled sample, weights and icons: beside the engine package in a checkout and in the plugin's zip alike
RESOURCES = Path(__file__).resolve().parents[1] / "resources"
