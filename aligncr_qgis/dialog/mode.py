"""The dialog's *Mode* (the engine's ``--mode``), at the top of the Model panel, and what it decides in the dialog.

A part of :class:`aligncr_qgis.dialog.AlignCRDialog` (a mixin: its widgets are the dialog's attributes). Why the
dialog shows the mode's effects instead of only passing ``--mode``: in ``best`` the engine replaces only the cloud
and runs the scene check whatever the check boxes say (``engine.stream.mode.resolve``), so boxes left unchecked
would tell the user something the run does not do. In ``best`` they show checked and disabled, saying why; the
user's own choices are kept aside and come back in ``raw``, and only they are saved. The mode also decides the
engine's default model (:func:`aligncr_qgis.model_list.engine_default`): a model list left at one mode's default
follows the other's when the mode changes; a model the user picked stays.
"""

from __future__ import annotations

from typing import Any

from qgis.PyQt.QtCore import Qt
from qgis.PyQt.QtWidgets import QCheckBox, QComboBox, QHBoxLayout, QLabel

from aligncr_qgis.model_list import engine_default
from aligncr_qgis.run_options import MODE_SWITCHES, OPTIONS, choice_items

# the run options some mode switches on (engine.config.MODE_SWITCHES): each is the dialog's ``<name>_check`` box
FORCED = tuple(dict.fromkeys(name for names in MODE_SWITCHES.values() for name in names))


class ModeChoice:
    """The *Mode* combo, the check boxes the mode switches on, and the model list's default per mode."""

    def _build_mode_row(self) -> QHBoxLayout:
        """``Mode [Best: … | Raw …]``, items and values from the options table, each item's tooltip saying what the
        mode does."""
        self.mode_combo = QComboBox(self)
        tips = self._mode_tips()
        for value, label in choice_items("mode"):
            self.mode_combo.addItem(self.tr(label), value)
            self.mode_combo.setItemData(self.mode_combo.count() - 1, tips.get(value, ""), Qt.ItemDataRole.ToolTipRole)
        self.mode_combo.setToolTip("\n\n".join(tips.values()))
        self.own_checks: dict[str, bool] = {name: bool(OPTIONS[name].default) for name in FORCED}
        self.own_tips: dict[str, str] = {}
        self.shown_mode = ""  # the mode the boxes and the model list were last set for
        self.applying_mode = False  # True while the mode sets the boxes
        row = QHBoxLayout()
        row.addWidget(QLabel(self.tr(OPTIONS["mode"].label)))
        row.addWidget(self.mode_combo, 1)
        return row

    def _mode_tips(self) -> dict[str, str]:
        """What each mode does, in the user's words (the combo's and its items' tooltips)."""
        return {
            "best": self.tr(
                "Best (the default): the bundled residual model (aligncr-res when installed, else aligncr-lite), "
                "replacing only the cloud and keeping every clear pixel as acquired, and checked on the scene's own "
                "clear ground: where it loses there to the non-learned estimate (a smooth fill from the cloud's "
                "edge), that estimate is written inside the cloud instead. The message at the end says which was "
                "used and by how many dB"),
            "raw": self.tr(
                "Raw: the network's output everywhere, as in the paper (default model aligncr-lite), and nothing "
                "else unless you ask for it below: no adaptation, no scene check, clear pixels replaced too"),
        }

    def _forced_boxes(self) -> dict[str, QCheckBox]:
        return {name: getattr(self, f"{name}_check") for name in FORCED}

    def _forced_tips(self) -> dict[str, str]:
        """The tooltips of the boxes while the mode switches them on."""
        return {
            "only_cloudy": self.tr("The best mode replaces only the cloud and keeps every clear pixel as acquired; "
                                   "choose the raw mode to set this yourself"),
            "scene_check": self.tr("The best mode checks the model on this scene's clear ground and writes the "
                                   "non-learned estimate inside the cloud where the model loses there; choose the "
                                   "raw mode to set this yourself"),
        }

    def current_mode(self) -> str:
        return self.mode_combo.currentData() or OPTIONS["mode"].default

    def mode_forces(self, name: str) -> bool:
        """Whether the chosen mode switches the run option ``name`` on (its box then says so)."""
        return name in MODE_SWITCHES.get(self.current_mode(), ())

    def own_check(self, name: str) -> bool:
        """The user's own value of a box the mode may switch on: what is saved, restored and used in ``raw``."""
        return self.own_checks[name] if self.mode_forces(name) else self._forced_boxes()[name].isChecked()

    def set_own_check(self, name: str, value: bool) -> None:
        """Set the user's own value (the settings, *Restore defaults*); the box shows it unless the mode rules."""
        self.own_checks[name] = bool(value)
        if not self.mode_forces(name):
            self._forced_boxes()[name].setChecked(bool(value))

    def _remember_own_checks(self, *_: Any) -> None:
        """A box toggled while it is the user's: remember it for when the mode has ruled and let go (not while the
        mode itself sets the boxes, one after the other)."""
        if self.applying_mode:
            return
        for name, box in self._forced_boxes().items():
            if not self.mode_forces(name):
                self.own_checks[name] = box.isChecked()

    def set_mode(self, mode: str) -> None:
        """Choose ``mode`` (an unknown one is the default); the combo's signal applies it."""
        self.mode_combo.setCurrentIndex(max(0, self.mode_combo.findData(mode)))

    def _apply_mode(self, *_: Any) -> None:
        """The boxes: checked and disabled with the mode's reason in ``best``, the user's own again in ``raw``; then
        the model list's default (when it was left at the previous mode's) and the live check."""
        self.applying_mode = True
        for name, box in self._forced_boxes().items():
            forced = self.mode_forces(name)
            self.own_tips.setdefault(name, box.toolTip())
            box.setEnabled(not forced)
            box.setChecked(True if forced else self.own_checks[name])
            box.setToolTip(self._forced_tips()[name] if forced else self.own_tips[name])
        self.applying_mode = False
        self._follow_mode_default()
        self.shown_mode = self.current_mode()
        self.validate()

    def _follow_mode_default(self) -> None:
        """A model list showing the previous mode's default model shows the new mode's (the engine's rule)."""
        entries = list(self.model_entries.values())
        if not self.shown_mode or not entries:
            return
        kind, value = self.model_combo.currentData() or ("registry", "")
        if kind == "registry" and value == engine_default(entries, self.shown_mode):
            self.select_model(engine_default(entries, self.current_mode()))

    def mode_default_model(self) -> str:
        """The engine's default model in the chosen mode (the model list's default, the defaults line's)."""
        return engine_default(list(self.model_entries.values()), self.current_mode())
