"""The report a user reads after declouding: GeoTIFF layers, ``report.json`` and a self-contained ``report.html``.

``write_report`` is resolved lazily (PEP 562) so that light users of this package (the GeoTIFF writer used by
:mod:`engine.outputs.ndvi`) do not import the report builder, and importing :mod:`engine.outputs.ndvi` from the builder
is not circular.
"""

from __future__ import annotations

from typing import Any

__all__ = ["LAYER_FILES", "REPORT_FILES", "write_report"]

LAYER_FILES = {
    "cloud_mask": "cloud_mask.tif",
    "change_magnitude": "change_magnitude.tif",
    "ndvi_input": "ndvi_input.tif",
    "ndvi_output": "ndvi_output.tif",
    "ndvi_reference": "ndvi_reference.tif",
}
REPORT_FILES = ("report.json", "report.html", *LAYER_FILES.values())  # what a report folder receives


def __getattr__(name: str) -> Any:
    if name == "write_report":
        from engine.report.build import write_report

        return write_report
    raise AttributeError(f"module 'engine.report' has no attribute {name!r}")
