"""Widgets more than one panel of the dialog builds the same way."""

from __future__ import annotations

from qgis.PyQt.QtWidgets import QSpinBox

from aligncr_qgis.run_options import OPTIONS

AUTO_ADAPT = -1  # the adaptation spin box's "as the mode decides" (the engine's --adapt left out)


def option_spin(option: str, step: int, suffix: str) -> QSpinBox:
    """A spin box over the range the options table allows for ``option``."""
    row = OPTIONS[option]
    spin = QSpinBox()
    spin.setRange(int(row.minimum), int(row.maximum))
    spin.setSingleStep(step)
    spin.setSuffix(suffix)
    return spin
