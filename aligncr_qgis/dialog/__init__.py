"""The toolbar dialog: pick layers and options, check them, run the engine in the background, load the results.

Built in code rather than a ``.ui`` file so that every widget is a named attribute the tests can drive. The
dialog holds no raster maths: it validates with :mod:`aligncr_qgis.layers`, takes its allowed values and ranges
from the engine's options table (:mod:`aligncr_qgis.run_options`), passes a processing extent as the engine's
``--bounds`` and hands a :class:`~aligncr_qgis.run_options.RunCommand` to an :class:`~aligncr_qgis.task.EngineTask`.
It is non-modal: QGIS stays usable while a run is in flight, and closing the dialog does not stop the task (the task
manager still shows it and can cancel it).

One module per panel, composed here as mixins of the one dialog class — so each panel reads on its own while every
widget stays an attribute of the dialog (tests and the screenshot script drive them by name) and the panels share
its state (the chosen model decides which inputs show; every panel feeds the run): :mod:`.inputs` (layers, bands,
extra dates, DEM), :mod:`.model` (model list, card, adaptation), :mod:`.processing` (device, tiling, extent, Python
environment), :mod:`.outputs` (products, *Run*, results), :mod:`.reproject` (the UTM offer), :mod:`.defaults`
(the line naming the remembered settings that differ from the defaults, *Restore defaults*). This module lays them
out, wires their signals, keeps the settings and runs the live check that enables *Run*.
"""

from __future__ import annotations

import os
from typing import Any

from qgis.core import (
    Qgis,
    QgsCoordinateReferenceSystem,
    QgsMessageLog,
    QgsProject,
    QgsRasterLayer,
    QgsRectangle,
    QgsTask,
)
from qgis.gui import QgsMessageBar
from qgis.PyQt.QtCore import Qt, QUrl, pyqtSignal
from qgis.PyQt.QtGui import QDesktopServices, QIcon
from qgis.PyQt.QtWidgets import QDialog, QHBoxLayout, QSizePolicy, QVBoxLayout, QWidget

from aligncr_qgis import layers as L
from aligncr_qgis.dialog.defaults import DefaultsLine
from aligncr_qgis.dialog.inputs import InputsPanel
from aligncr_qgis.dialog.mode import FORCED, ModeChoice
from aligncr_qgis.dialog.model import ModelPanel
from aligncr_qgis.dialog.outputs import OutputsPanel
from aligncr_qgis.dialog.processing import EXTENT_DRAWN, ProcessingPanel
from aligncr_qgis.dialog.reproject import ReprojectOffer
from aligncr_qgis.install_progress import InstallProgressDialog
from aligncr_qgis.layer_pick import LayerPicker
from aligncr_qgis.model_cards import TemporalInfo
from aligncr_qgis.paths import help_url, icon_path, resolve_python
from aligncr_qgis.run_options import InputError, check_options
from aligncr_qgis.settings import PluginSettings
from aligncr_qgis.task import LOG_TAG, EngineTask


class AlignCRDialog(InputsPanel, ModeChoice, ModelPanel, ProcessingPanel, OutputsPanel, ReprojectOffer, DefaultsLine,
                    QDialog):
    """Align-CR cloud removal dialog. ``iface`` may be a test stub; only its map canvas and message bar are used."""

    runFinished = pyqtSignal(bool)  # noqa: N815 - Qt signal naming; emitted after results are loaded
    reprojected = pyqtSignal(object)  # the new optical layer (QgsRasterLayer)

    def __init__(self, iface: Any = None, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.iface = iface
        self.settings = PluginSettings.load()
        self.task: EngineTask | None = None
        self.env_task: EngineTask | None = None
        self.install_task: EngineTask | None = None
        self.install_progress: InstallProgressDialog | None = None  # the install's window (kept after it ends)
        self.reproject_task: QgsTask | None = None
        self.finetune_window: Any = None  # the *Train on my area…* window, once opened
        self.drawn_extent: QgsRectangle | None = None  # in the canvas CRS
        self.drawn_crs = QgsCoordinateReferenceSystem()
        self.open_report_in_browser = True
        self.result_layers: list[QgsRasterLayer] = []
        self.last_check = L.CheckResult()
        self.temporal: TemporalInfo | None = None  # the chosen model's extra dates (None: not a temporal model)
        self.uses_sar = True  # False when the chosen model takes no SAR (gapfill): the SAR layer is not used
        self.uses_dem = False  # True when the chosen model was built with a DEM input: the DEM picker is shown
        self.model_arch = ""
        self.model_entries: dict[str, dict[str, Any]] = {}  # registry name → its models --json-shaped entry
        self.auto_output = ""  # the output path the dialog proposed; it follows the optical until the user edits it
        self.picker = LayerPicker()  # proposes the cloudy optical and the SAR layer (cloud fractions cached)
        self.user_picked = {"optical": False, "sar": False}  # a picker the user changed keeps its choice
        self._picking = False  # True while the dialog itself sets a picker
        self.setWindowTitle(self.tr("Align-CR — SAR-guided cloud removal"))
        if icon_path():
            self.setWindowIcon(QIcon(icon_path()))
        self._build()
        self._load_settings()
        self.pick_default_layers()
        self._connect()
        self._on_optical_changed()
        self._on_sar_changed()
        self.validate()

    def _build(self) -> None:
        """Each panel builds its group; here they are laid out: inputs, extra dates, output and the issues line on
        the left, model and processing on the right, the progress bar and buttons below."""
        self.bar = QgsMessageBar(self)
        self.bar.setSizePolicy(QSizePolicy.Policy.Minimum, QSizePolicy.Policy.Fixed)
        inputs = self._build_inputs()
        self._build_temporal()
        model_box = self._build_model_box()
        proc_box = self._build_processing()
        out_box = self._build_output()
        self._build_controls()

        left = QVBoxLayout()
        left.addWidget(inputs)
        left.addWidget(self.temporal_box)
        left.addWidget(out_box)
        issues_row = QHBoxLayout()
        issues_row.addWidget(self.issues_label, 1)
        issues_row.addWidget(self.reproject_button, 0, Qt.AlignmentFlag.AlignTop)
        left.addLayout(issues_row)
        left.addStretch(1)
        right = QVBoxLayout()
        right.addWidget(model_box)
        right.addWidget(proc_box)
        right.addStretch(1)
        columns = QHBoxLayout()
        columns.addLayout(left, 3)
        columns.addLayout(right, 2)
        buttons = QHBoxLayout()
        buttons.addWidget(self.help_button)
        buttons.addWidget(self.status_label, 1)
        buttons.addWidget(self.run_button)
        buttons.addWidget(self.cancel_button)
        buttons.addWidget(self.close_button)
        root = QVBoxLayout(self)
        root.addWidget(self.bar)
        root.addLayout(columns)
        root.addLayout(self._build_defaults_row())
        root.addWidget(self.progress)
        root.addWidget(self.result_label)
        root.addLayout(buttons)
        self.resize(1060, 560)

    def _connect(self) -> None:
        """Wire the panels' signals to their reactions and to the live check; done after the settings are restored
        and the default layers picked (the constructor then runs each reaction once itself)."""
        # bound methods, not lambdas: PyQt drops them with the dialog (a lambda outlived it and crashed QGIS when the
        # project's layers were removed after the dialog was deleted)
        self.optical_combo.layerChanged.connect(self._optical_picked)
        self.sar_combo.layerChanged.connect(self._sar_picked)
        self.optical_combo.layerChanged.connect(self._on_optical_changed)
        QgsProject.instance().layersAdded.connect(self._on_layers_added)
        self.sar_combo.layerChanged.connect(self._on_sar_changed)
        for combo in (self.landcover_combo, self.mask_combo, self.reference_combo, self.dem_combo,
                      *self.extra_combos.values()):
            combo.layerChanged.connect(self.validate)
        self.only_cloudy_check.toggled.connect(self._on_only_cloudy_toggled)
        for box in self._forced_boxes().values():
            box.toggled.connect(self._remember_own_checks)
        self.mode_combo.currentIndexChanged.connect(self._apply_mode)
        for edit in self.date_edits.values():
            edit.textChanged.connect(self.validate)
        for combo in (*self.optical_band_combos.values(), *self.sar_band_combos.values()):
            combo.bandChanged.connect(self.validate)
        self.extent_combo.currentIndexChanged.connect(self._on_extent_mode)
        self.draw_button.clicked.connect(self._draw_extent)
        self.output_widget.fileChanged.connect(self.validate)
        for spin in (self.tile_spin, self.overlap_spin, self.batch_spin, self.feather_spin):
            spin.valueChanged.connect(self.validate)
        for box in (self.scene_check_check, self.colour_anchor_check, self.report_check, self.qa_check,
                    self.confidence_check, self.ndvi_check, self.cog_check, self.add_to_map_check,
                    self.style_optical_check):
            box.toggled.connect(self._update_defaults_line)
        self.adapt_spin.valueChanged.connect(self._update_defaults_line)
        self.units_combo.currentIndexChanged.connect(self._update_defaults_line)
        self.device_combo.currentIndexChanged.connect(self._update_defaults_line)
        self.model_combo.currentIndexChanged.connect(self._on_model_changed)
        self.env_button.clicked.connect(self.check_environment)
        self.install_button.clicked.connect(lambda: self.install_engine())
        self.reproject_button.clicked.connect(self.reproject_optical)
        self.run_button.clicked.connect(self.run)
        self.cancel_button.clicked.connect(self.cancel)
        self.close_button.clicked.connect(self.close)
        self.help_button.clicked.connect(lambda: QDesktopServices.openUrl(QUrl(help_url())))

    def _load_settings(self) -> None:
        """Restore every panel's last values, then refresh what follows from them (the feather's state, the device
        and model lists, the *Draw…* button, the environment line)."""
        s = self.settings
        self.python_widget.setFilePath(s.python)
        self.python_widget.lineEdit().setPlaceholderText(self.tr("automatic: {0}").format(resolve_python('')))
        self.tile_spin.setValue(s.tile)
        self.overlap_spin.setValue(s.overlap)
        self.batch_spin.setValue(s.batch)
        self.adapt_spin.setValue(s.adapt)
        self.set_mode(s.mode)  # applied once the model list is filled
        for name in FORCED:
            self.set_own_check(name, getattr(s, name))
        self.colour_anchor_check.setChecked(s.colour_anchor)
        self.units_combo.setCurrentIndex(max(0, self.units_combo.findData(s.sar_units)))
        self.add_to_map_check.setChecked(s.add_to_map)
        self.style_optical_check.setChecked(s.style_optical)
        self.ndvi_check.setChecked(s.make_ndvi)
        self.report_check.setChecked(s.write_report)
        self.cog_check.setChecked(s.cog)
        self.qa_check.setChecked(s.write_qa)
        self.confidence_check.setChecked(s.write_confidence)
        self.feather_spin.setValue(s.cloud_feather)
        self._fill_devices()
        self._fill_models()
        self._apply_mode()
        self._on_only_cloudy_toggled()
        self._on_extent_mode()
        if self.settings.env_cache:
            self._show_env(self.settings.env_cache)

    def save_settings(self) -> None:
        """Keep every panel's values for the next session (on *Run*, on close, after an install or a check)."""
        s = self.settings
        s.python = self.python_widget.filePath().strip()
        s.tile, s.overlap, s.batch = self.tile_spin.value(), self.overlap_spin.value(), self.batch_spin.value()
        s.adapt = self.adapt_spin.value()
        s.mode = self.current_mode()
        s.scene_check = self.own_check("scene_check")  # the user's own, not what the best mode shows
        s.colour_anchor = self.colour_anchor_check.isChecked()
        s.sar_units = self.units_combo.currentData()
        s.device = self.device_combo.currentData() or "auto"
        s.model = self._model_to_save()
        s.add_to_map = self.add_to_map_check.isChecked()
        s.style_optical = self.style_optical_check.isChecked()
        s.make_ndvi = self.ndvi_check.isChecked()
        s.write_report = self.report_check.isChecked()
        s.cog = self.cog_check.isChecked()
        s.write_qa = self.qa_check.isChecked()
        s.write_confidence = self.confidence_check.isChecked()
        s.only_cloudy = self.own_check("only_cloudy")
        s.cloud_feather = self.feather_spin.value()
        if self.output_widget.filePath():
            s.output_dir = os.path.dirname(self.output_widget.filePath())
        s.save()

    def _model_to_save(self) -> str:
        """The chosen model; empty when it is the mode's default, so the default follows the mode and the bundled
        models installed next time (issue 26: a saved ``aligncr-lite`` would outlive a better bundled model)."""
        kind, value = self.model_combo.currentData() or ("registry", "identity")
        if kind not in ("registry", "weights"):
            return self.settings.model
        return "" if kind == "registry" and value == self.mode_default_model() else value

    def validate(self, *_: Any) -> L.CheckResult:
        """The live check of every panel (inputs, model weights, extent, extra dates, DEM, option values): shows the
        issues and the SAR overlap, offers the UTM warp, and enables *Run* only when nothing is an error."""
        res = L.check_inputs(self.check_inputs())
        kind, value = self.model_combo.currentData() or ("registry", "identity")
        entry = self._registry_entry(value) if kind == "registry" else None
        if entry and entry.get("needs_weights") and not entry.get("bundled_weights"):
            res.error(self.tr("Model '{0}' has no trained weights installed; browse for a .safetensors file.")
                      .format(value))
        if self.extent_combo.currentData() == EXTENT_DRAWN and self.drawn_extent is None:
            res.error(self.tr("Draw the processing rectangle on the map (Draw…), or choose another extent."))
        self._check_cloudiness(res)
        self._check_weights_area(res)
        self._check_extra_dates(res)
        self._check_dem(res)
        self._check_options(res)
        self.last_check = res
        if not self.uses_sar:
            self.overlap_label.setText(self.tr("— (the model uses no SAR)"))
        elif res.sar_overlap_percent is None:
            self.overlap_label.setText("—")
        else:
            self.overlap_label.setText(self.tr("{0:.1f} % of the optical area").format(res.sar_overlap_percent))
        lines = []
        for issue in res.issues:
            colour = "#b00020" if issue.level == "error" else "#9a6700"
            lines.append(f"<span style='color:{colour}'>{'✖' if issue.level == 'error' else '⚠'} "
                         f"{_html(issue.message)}</span>")
        if res.ok:
            lines.append("<span style='color:#1a7f37'>✔ Ready to run.</span>")
        self.issues_label.setText("<br>".join(lines))
        self.reproject_button.setVisible(res.geographic_crs)
        self._update_defaults_line()
        running = self.task is not None
        self.run_button.setEnabled(res.ok and not running)
        return res

    def _check_options(self, res: L.CheckResult) -> None:
        """The engine's own rules on the option values (tile, overlap, batch, feather …), in its words."""
        try:
            check_options({"tile": self.tile_spin.value(), "overlap": self.overlap_spin.value(),
                           "batch": self.batch_spin.value(), "only_cloudy": self.only_cloudy_check.isChecked(),
                           "cloud_feather": self.feather_spin.value()})
        except InputError as exc:
            res.error(str(exc))

    def issue_messages(self) -> list[str]:
        """The last check's messages, in order (what the issues line shows, without its markup)."""
        return [i.message for i in self.last_check.issues]

    def _error(self, message: str) -> None:
        """Show an error in the dialog's bar and the log, and in QGIS's bar when the dialog is closed."""
        self.bar.pushMessage("Align-CR", message, Qgis.MessageLevel.Critical, 0)
        QgsMessageLog.logMessage(message, LOG_TAG, Qgis.MessageLevel.Critical)
        if self.iface is not None and not self.isVisible():
            self.iface.messageBar().pushMessage("Align-CR", message, Qgis.MessageLevel.Critical, 0)

    def closeEvent(self, event: Any) -> None:  # noqa: N802 - Qt override
        self.save_settings()
        super().closeEvent(event)


def _html(text: str) -> str:
    """An issue message made safe for the rich-text issues line (paths may hold ``<`` or ``&``)."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
