"""The engine's options table, as the plugin reads it: the one declaration of every ``engine run`` option.

Why import the engine here: the dialog and the Processing algorithm used to repeat the options (a ``RunRequest``
dataclass, its argument builder, the allowed values of the SAR units, optical scale and SAR resampling) and they
drifted (Processing offered no "amplitude"). ``engine.config`` is standard-library-only and Python 3.9 clean, so
QGIS's own Python imports it from the engine folder the plugin ships (or the checkout's, in development) — no
torch, numpy or rasterio. So do the engine's rules the dialog checks before a run (:mod:`engine.sources.metric_grid`).
"""

from __future__ import annotations

import sys
from typing import Any

from aligncr_qgis.paths import engine_root


def _engine_importable() -> None:
    """Put the folder holding ``engine/`` on ``sys.path`` (appended: nothing QGIS has is shadowed)."""
    root = engine_root()
    if root is not None and str(root) not in sys.path:
        sys.path.append(str(root))


_engine_importable()

from engine.config import (  # noqa: E402 - needs the path above
    COVERAGE_WARNING,
    DATE_TAGS,
    EDGES,
    MASK_AUTO,
    MASK_RULE,
    MASK_WORDS,
    MODE_SWITCHES,
    OPTIONS,
    Option,
    absolute_name,
    check_options,
    is_gdal_name,
    mode_model,
    parse_datetime,
    run_arguments,
)
from engine.errors import InputError  # noqa: E402
from engine.sources.metric_grid import metric_crs_problem  # noqa: E402

__all__ = ["COVERAGE_WARNING", "DATE_TAGS", "EDGES", "MASK_AUTO", "MASK_RULE", "MASK_WORDS", "MODE_SWITCHES", "OPTIONS",
           "InputError", "Option", "RunCommand", "absolute_name", "check_options", "choice_items", "is_gdal_name",
           "metric_crs_problem", "mode_model", "parse_datetime", "run_arguments"]


PATH_KINDS = ("source", "path")  # the options table's kinds whose values are files or folders


class RunCommand:
    """One ``engine run`` the plugin starts: option values by table name, as typed (text, numbers, band tuples),
    and the command line they make (:func:`engine.config.run_arguments`). An option not given reads as its
    table default; a name that is not in the table is a ``TypeError`` at once. Every file or folder is made
    absolute here (:func:`engine.config.absolute_name`), the one door the dialog and Processing share to the engine."""

    def __init__(self, **values: Any) -> None:
        run_arguments(values)  # checks the names
        self.values = {name: absolute_name(v) if OPTIONS[name].kind in PATH_KINDS else v
                       for name, v in values.items()}  # fmt: skip

    def __getattr__(self, name: str) -> Any:
        if name == "values" or name not in OPTIONS:
            raise AttributeError(name)
        return self.values.get(name, OPTIONS[name].default)

    def to_args(self) -> list[str]:
        """The command line; file names absolute (the engine runs in the plugin's folder)."""
        return run_arguments(self.values)


def choice_items(name: str) -> list[tuple[str, str]]:
    """``(value, label)`` of each allowed value of a choice option (the dialog's combos, Processing's enums)."""
    row = OPTIONS[name]
    return list(zip(row.choices, row.choice_labels or row.choices))
