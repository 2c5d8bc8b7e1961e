"""The report a user reads after declouding: GeoTIFF layers, ``report.json`` and a self-contained ``report.html``.

``write_report`` is resolved lazily (PEP 562) so that light users of this package (the GeoTIFF writer used by
:mod:`engine.ndvi`) do not import the report builder, and importing :mod:`engine.ndvi` from the builder is not
circular.
"""

from __future__ import annotations

from typing import Any

__all__ = ["write_report"]


def __getattr__(name: str) -> Any:
    if name == "write_report":
        from engine.report.build import write_report

        return write_report
    raise AttributeError(f"module 'engine.report' has no attribute {name!r}")
