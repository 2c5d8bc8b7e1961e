"""The dialog's Model panel: the mode (:mod:`.mode`), the model list, the chosen model's card, *Train on my area…*,
scene adaptation, the scene check and the colour anchor.

A part of :class:`aligncr_qgis.dialog.AlignCRDialog` (a mixin: its widgets are the dialog's attributes). Registry
models are listed without torch (names from the engine's source, details from the last *Check environment*); a
``.safetensors`` file's card is read from its header. The chosen model decides which inputs the Inputs panel shows.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from qgis.PyQt.QtCore import Qt
from qgis.PyQt.QtWidgets import (
    QCheckBox,
    QComboBox,
    QFileDialog,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QPushButton,
    QTextBrowser,
    QVBoxLayout,
)

from aligncr_qgis.dialog.widgets import AUTO_ADAPT, option_spin
from aligncr_qgis.model_cards import ModelCard, ModelCardError, read_card
from aligncr_qgis.model_cards import uses_dem as model_uses_dem
from aligncr_qgis.model_list import (
    NO_WEIGHTS,
    bundled_by_model,
    engine_default,
    entry_html,
    has_weights,
    registry_models,
)
from aligncr_qgis.paths import engine_root


class ModelPanel:
    """Which network fills the cloud (registry name or weights file), what it needs, and the run's model options."""

    def _build_model_box(self) -> QGroupBox:
        """The Model group: the model list and its card summary."""
        model_box = QGroupBox(self.tr("Model"), self)
        mlay = QVBoxLayout(model_box)
        mlay.addLayout(self._build_mode_row())
        self.model_combo = QComboBox(self)
        self.model_combo.setToolTip(self.tr("The network that fills the cloud; greyed-out models have no trained "
                                            "weights installed"))
        mlay.addWidget(self.model_combo)
        self.card_text = QTextBrowser(self)
        self.card_text.setMaximumHeight(210)
        mlay.addWidget(self.card_text)
        self.finetune_button = QPushButton(self.tr("Train on my area…"), self)
        self.finetune_button.setToolTip(self.tr("Fine-tune this model on an archive of your own area (optical + "
                                                "Sentinel-1 scenes); the new weights become the model here"))
        self.finetune_button.clicked.connect(self.open_finetune)
        mlay.addWidget(self.finetune_button)
        adapt_row = QHBoxLayout()
        self.adapt_spin = option_spin("adapt", 20, self.tr(" steps"))
        self.adapt_spin.setMinimum(AUTO_ADAPT)  # below the table's minimum (0 = off): the mode decides
        self.adapt_spin.setSpecialValueText(self.tr("as the mode decides"))
        self.adapt_spin.setToolTip(self.tr("Before declouding, fine-tune this run's copy of the model on the scene's "
                                           "own clear pixels with synthetic clouds (the cloud itself is never a "
                                           "target; the weights file is unchanged). Off unless you set a number "
                                           "of steps: measured, it did not pay for its time by default; on a hazy "
                                           "real scene try 30 and read the scene check's line"))
        adapt_row.addWidget(QLabel(self.tr("Adapt to this scene first")))
        adapt_row.addWidget(self.adapt_spin, 1)
        mlay.addLayout(adapt_row)
        self.scene_check_check = self._check(mlay, self.tr("Check the model on this scene's clear ground"), self.tr(
            "Lay synthetic clouds on a few clear windows of the scene and score the model against a flat colour and "
            "a smooth fill there (the clear pixels are the exact answer): tells you, without a reference, whether "
            "its output inside the cloud beats a guess on this scene. A few seconds; with adaptation, those "
            "clouds are kept out of its training"))
        self.colour_anchor_check = self._check(mlay, self.tr("Anchor the colour inside the clouds to the clear "
                                                             "pixels"), self.tr(
            "Deep inside a large cloud the model cannot see the clear ground and may paint a colour cast. This "
            "takes that drift off, fitted against the clear pixels' median, leaving the cloud's edge and the "
            "model's texture as they are. It assumes the ground under the cloud has, on average, the colour of "
            "the clear ground: leave it off for a cloud over a lake, or with a mask that misses haze"))
        return model_box

    def _check(self, layout: QVBoxLayout, text: str, tip: str) -> QCheckBox:
        """A check box with its tooltip, added to ``layout``."""
        box = QCheckBox(text, self)
        box.setToolTip(tip)
        layout.addWidget(box)
        return box

    def open_finetune(self) -> Any:
        """The *Train on my area…* window (:mod:`aligncr_qgis.finetune_dialog`), starting from the chosen weights
        file or the bundled model; the weights it writes become this dialog's model."""
        from aligncr_qgis.finetune_dialog import DEFAULT_BASE, FinetuneDialog

        kind, value = self.model_combo.currentData() or ("registry", "")
        root = engine_root()
        self.finetune_window = FinetuneDialog(self.current_python(), str(root) if root else "",
                                              base=value if kind == "weights" else DEFAULT_BASE,
                                              folder=self.settings.output_dir, parent=self)
        self.finetune_window.trained.connect(self._use_weights)
        self.finetune_window.show()
        return self.finetune_window

    def _use_weights(self, path: str) -> None:
        self.settings.model = path
        self._fill_models()

    def _fill_models(self) -> None:
        """One entry per model (registry names read without torch, details from the last *Check environment*),
        those without weights disabled with the reason; a chosen weights file; *Browse…*."""
        entries = registry_models(self.settings.models_cache)
        self.model_entries = {str(e["name"]): e for e in entries}
        wanted = self._wanted_model(entries)
        combo = self.model_combo
        combo.blockSignals(True)
        combo.clear()
        for entry in entries:
            combo.addItem(_model_label(entry), ("registry", str(entry["name"])))
            if not has_weights(entry):
                combo.model().item(combo.count() - 1).setEnabled(False)
                combo.setItemData(combo.count() - 1, NO_WEIGHTS, Qt.ItemDataRole.ToolTipRole)
        if wanted.endswith(".safetensors") and os.path.isfile(wanted):
            combo.addItem(self.tr("{0} (file)").format(Path(wanted).stem), ("weights", wanted))
        combo.addItem(self.tr("Browse for .safetensors weights…"), ("browse", ""))
        if not (self._selectable(wanted) and self.select_model(wanted)):
            if not self.select_model(engine_default(entries, self.current_mode())):
                combo.setCurrentIndex(0)
        combo.blockSignals(False)
        self._on_model_changed()

    def _wanted_model(self, entries: list[dict[str, Any]]) -> str:
        """The saved choice; a bundled weights file saved by an older version is its model; nothing saved is the
        engine's default in the chosen mode (its bundled model, else another bundled one, else identity)."""
        wanted = self.settings.model
        for name, files in bundled_by_model().items():
            if wanted in files:
                return name
        return wanted or engine_default(entries, self.current_mode())

    def _bundled_file(self, name: str) -> str | None:
        """The bundled weights of a registry model that needs weights (the engine itself only finds
        aligncr-lite's), passed as ``--weights``; None for a model without weights."""
        entry = self.model_entries.get(name) or {}
        files = entry.get("bundled_weights") if entry.get("needs_weights", True) else None
        return str(files[0]) if files else None

    def _selectable(self, value: str) -> bool:
        entry = self.model_entries.get(value)
        return entry is None or has_weights(entry)

    def _on_model_changed(self, *_: Any) -> None:
        kind, value = self.model_combo.currentData() or ("registry", "identity")
        if kind == "browse":
            path, _ = QFileDialog.getOpenFileName(self, "Model weights", self.settings.output_dir,
                                                  "safetensors weights (*.safetensors)")
            if not path:
                self.model_combo.setCurrentIndex(0)
                return
            self.settings.model = path
            self._fill_models()
            return
        arch = value
        card: ModelCard | None = None
        if kind == "weights":
            try:
                card = read_card(value)
                self.card_text.setHtml(card.summary_html())
                arch = str(card.card.get("arch") or "")
            except ModelCardError as exc:
                self.card_text.setPlainText(self.tr("Cannot read the model card: {0}").format(exc))
                arch = ""
        else:
            self.card_text.setHtml(entry_html(self._registry_entry(value) or {"name": value}))
        self.model_arch = arch
        self._show_temporal(arch)
        self._show_sar(arch)
        self._show_dem(model_uses_dem(self._registry_entry(arch) if kind == "registry" else None, card))
        self.validate()

    @property
    def temporal_model(self) -> str:
        """The chosen model's name when it is temporal, else ``""``."""
        return self.model_arch if self.temporal is not None else ""

    def select_model(self, value: str) -> bool:
        """Select a registry model by name or a weights file by path — a bundled file is its model's entry
        (QComboBox.findData cannot match tuples)."""
        value = next((name for name, e in self.model_entries.items() if value in (e.get("bundled_weights") or ())),
                     value)
        for i in range(self.model_combo.count()):
            data = self.model_combo.itemData(i)
            if data and data[0] in ("registry", "weights") and data[1] == value:
                self.model_combo.setCurrentIndex(i)
                return True
        return False

    def _registry_entry(self, name: str) -> dict[str, Any] | None:
        return self.model_entries.get(name)


def _model_label(entry: dict[str, Any]) -> str:
    """``aligncr-lite — 2.2 M params, bundled weights`` for the model picker."""
    parts = []
    if entry.get("params"):
        parts.append(f"{int(entry['params']) / 1e6:.1f} M params")
    if entry.get("bundled_weights"):
        parts.append("bundled weights")
    elif entry.get("needs_weights"):
        parts.append("no weights installed")
    return f"{entry['name']} — {', '.join(parts)}" if parts else str(entry["name"])
