"""The toolbar dialog: pick layers and options, check them, run the engine in the background, load the results.

Built in code rather than a ``.ui`` file so that every widget is a named attribute the tests can drive. The
dialog holds no raster maths: it validates with :mod:`aligncr_qgis.layers`, takes its allowed values and ranges
from the engine's options table (:mod:`aligncr_qgis.run_options`), passes a processing extent as the engine's
``--bounds`` and hands a :class:`~aligncr_qgis.run_options.RunCommand` to an :class:`~aligncr_qgis.task.EngineTask`.
When the chosen model is temporal (``temporal_inputs`` in its ``engine models --json`` entry: msop-unet, gapfill)
an "Extra dates" group asks for the images before and after the cloudy one (and, for gapfill, optional acquisition
times); a model without SAR input (gapfill) disables the SAR row, which validation then skips and the command line
omits; a model built with a DEM input (``uses_dem``, or ``dem`` in a weights file's card) shows a DEM picker. It is
non-modal: QGIS stays usable while a run is in flight, and closing the dialog does not stop the task (the task
manager still shows it and can cancel it).
"""

from __future__ import annotations

import json
import os
from datetime import datetime
from pathlib import Path
from typing import Any

from qgis.core import (
    Qgis,
    QgsApplication,
    QgsCoordinateReferenceSystem,
    QgsCoordinateTransform,
    QgsMapLayerProxyModel,
    QgsMessageLog,
    QgsProject,
    QgsRasterLayer,
    QgsRectangle,
    QgsTask,
)
from qgis.gui import (
    QgsFileWidget,
    QgsMapLayerComboBox,
    QgsMapToolExtent,
    QgsMessageBar,
    QgsRasterBandComboBox,
)
from qgis.PyQt.QtCore import Qt, QUrl, pyqtSignal
from qgis.PyQt.QtGui import QDesktopServices, QIcon
from qgis.PyQt.QtWidgets import (
    QCheckBox,
    QComboBox,
    QDialog,
    QFileDialog,
    QFormLayout,
    QGridLayout,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QProgressBar,
    QPushButton,
    QSizePolicy,
    QSpinBox,
    QTextBrowser,
    QVBoxLayout,
    QWidget,
)

from aligncr_qgis import layers as L
from aligncr_qgis.engine_process import EngineProcess, EngineRunError
from aligncr_qgis.install_dialog import ask_install_plan, engine_venv_dir
from aligncr_qgis.install_progress import InstallProgressDialog
from aligncr_qgis.installer import InstallPlan
from aligncr_qgis.model_cards import ModelCard, ModelCardError, TemporalInfo, read_card, temporal_info
from aligncr_qgis.model_cards import uses_dem as model_uses_dem
from aligncr_qgis.model_cards import uses_sar as model_uses_sar
from aligncr_qgis.model_list import (
    NO_WEIGHTS,
    bundled_by_model,
    engine_default,
    entry_html,
    has_weights,
    registry_models,
)
from aligncr_qgis.paths import engine_root, help_url, icon_path, resolve_python
from aligncr_qgis.run_options import OPTIONS, InputError, RunCommand, check_options, choice_items
from aligncr_qgis.settings import PluginSettings
from aligncr_qgis.styling import style_confidence, style_like, style_ndvi, style_qa, style_rgb
from aligncr_qgis.task import LOG_TAG, EngineStep, EngineTask, JobResult

EXTENT_LAYER, EXTENT_CANVAS, EXTENT_DRAWN = "layer", "canvas", "drawn"
# The extra dates of temporal models: engine option (``optical_prev`` → ``--optical-prev`` …) → dialog label.
EXTRA_LAYERS = {
    "optical_prev": "Optical before (t−1)",
    "sar_prev": "SAR before (t−1)",
    "optical_next": "Optical after (t+1)",
    "sar_next": "SAR after (t+1)",
}
EXTRA_DATES = {
    "date": "Date of the cloudy image",
    "date_prev": "Date before (t−1)",
    "date_next": "Date after (t+1)",
}
DATE_HINT = "from the layer's metadata, or e.g. 2021-06-01T10:30:00Z"


class AlignCRDialog(QDialog):
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

    # ------------------------------------------------------------------ layout
    def _build(self) -> None:
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
        root.addWidget(self.progress)
        root.addLayout(buttons)
        self.resize(1060, 560)

    def _raster_combo(self, optional: bool) -> QgsMapLayerComboBox:
        """A raster-layer picker; an optional one starts empty."""
        combo = QgsMapLayerComboBox(self)
        combo.setFilters(QgsMapLayerProxyModel.Filter.RasterLayer)
        combo.setAllowEmptyLayer(optional)
        if optional:
            combo.setLayer(None)
        return combo

    def _build_inputs(self) -> QGroupBox:
        """The Inputs group: optical and SAR layers with their band mapping, land cover, mask, reference."""
        inputs = QGroupBox(self.tr("Inputs"), self)
        form = QFormLayout(inputs)
        self.optical_combo = self._raster_combo(False)
        self.optical_combo.setToolTip(self.tr("The cloudy optical image: 4 bands or more (B, G, R, NIR), a CRS "
                                              "projected in metres"))
        form.addRow(self.tr("Cloudy optical (PlanetScope)"), self.optical_combo)
        band_row = QHBoxLayout()
        self.optical_band_combos: dict[str, QgsRasterBandComboBox] = {}
        for role in L.OPTICAL_ROLES:
            band_row.addWidget(QLabel(role))
            combo = QgsRasterBandComboBox(self)
            combo.setToolTip(self.tr("The optical band holding {0} (guessed from the band names)").format(role))
            self.optical_band_combos[role] = combo
            band_row.addWidget(combo, 1)
        form.addRow(self.tr("Bands"), band_row)
        self.sar_combo = self._raster_combo(False)
        self.sar_combo.setToolTip(self.tr("Sentinel-1 GRD image of the same place (VV and VH), any CRS: the engine "
                                          "reprojects it onto the optical grid"))
        self.sar_label = QLabel(self.tr("Sentinel-1 SAR"), self)
        form.addRow(self.sar_label, self.sar_combo)
        sar_row = QHBoxLayout()
        self.sar_band_combos: dict[str, QgsRasterBandComboBox] = {}
        for role in L.SAR_ROLES:
            sar_row.addWidget(QLabel(role))
            combo = QgsRasterBandComboBox(self)
            combo.setToolTip(self.tr("The SAR band holding {0}").format(role))
            self.sar_band_combos[role] = combo
            sar_row.addWidget(combo, 1)
        sar_row.addWidget(QLabel(self.tr("Units")))
        self.units_combo = QComboBox(self)
        self.units_combo.setToolTip(self.tr("Whether the SAR values are backscatter in dB or linear power; "
                                            "auto-detect reads the value range"))
        for key, label in choice_items("sar_units"):
            self.units_combo.addItem(self.tr(label), key)
        sar_row.addWidget(self.units_combo)
        form.addRow(self.tr("Bands"), sar_row)
        self.landcover_combo = self._raster_combo(True)
        self.landcover_combo.setToolTip(self.tr("ESA WorldCover classes (optional): the report's metrics per class"))
        form.addRow(self.tr("Land cover (optional)"), self.landcover_combo)
        self.mask_combo = self._raster_combo(True)
        self.mask_combo.setToolTip(self.tr("Cloud mask (optional): binary (1 = cloud) or a Planet UDM2; the report "
                                           "scores inside and outside the cloud, 'Replace only the cloud' uses it"))
        form.addRow(self.tr("Cloud mask (optional)"), self.mask_combo)
        keep_row = QHBoxLayout()
        self.only_cloudy_check = QCheckBox(self.tr("Replace only the cloud, keep clear pixels"), self)
        self.only_cloudy_check.setToolTip(
            self.tr("Keep every clear pixel exactly as in the input; only the cloud takes the model's output, blended "
            "into "
            "the input over the feather width beyond the cloud's edge. The cloud is the cloud mask's when one is "
            "chosen, else the clouds detected on the optical image (bright, flat pixels; a real mask is better). "
            "Off: the model's output everywhere, as in the paper.")
        )
        self.feather_spin = _spin("cloud_feather", 1, " px")
        self.feather_spin.setToolTip(self.tr("Blend width beyond the cloud's edge (0 = hard edge)"))
        keep_row.addWidget(self.only_cloudy_check, 1)
        keep_row.addWidget(QLabel(self.tr("Feather")))
        keep_row.addWidget(self.feather_spin)
        form.addRow("", keep_row)
        self.reference_combo = self._raster_combo(True)
        self.reference_combo.setToolTip(self.tr("A cloud-free acquisition of the same place (optional): the report "
                                                "scores the result against it"))
        form.addRow(self.tr("Cloud-free reference (optional)"), self.reference_combo)
        self.dem_combo = self._raster_combo(True)
        self.dem_combo.setToolTip(self.tr("Elevation in metres, for models built with a DEM input"))
        self.dem_label = QLabel(self.tr("DEM (elevation in metres)"), self)
        self.dem_label.setToolTip(self.tr("One-band elevation raster (e.g. SRTM) in any CRS; the engine reprojects it "
                                  "bilinearly onto the optical grid. Only models built with a DEM input use it."))
        form.addRow(self.dem_label, self.dem_combo)
        self.dem_label.setVisible(False)
        self.dem_combo.setVisible(False)
        self.overlap_label = QLabel("", self)
        form.addRow(self.tr("SAR overlap"), self.overlap_label)
        return inputs

    def _build_temporal(self) -> None:
        """The Extra dates group (temporal models only; hidden until one is chosen)."""
        self.temporal_box = QGroupBox(self.tr("Extra dates"), self)
        tform = QFormLayout(self.temporal_box)
        self.extra_combos: dict[str, QgsMapLayerComboBox] = {}
        self.date_edits: dict[str, QLineEdit] = {}
        self._extra_rows: dict[str, tuple[QLabel, QWidget]] = {}
        for key, label in EXTRA_LAYERS.items():
            combo = self._raster_combo(True)
            combo.setToolTip(self.tr("{0}: for temporal models").format(label))
            self.extra_combos[key] = combo
            self._extra_rows[key] = (QLabel(label, self), combo)
            tform.addRow(*self._extra_rows[key])
        for key, label in EXTRA_DATES.items():
            edit = QLineEdit(self)
            edit.setPlaceholderText(DATE_HINT)
            edit.setToolTip(self.tr("ISO 8601 acquisition time; empty = read from the layer's metadata"))
            self.date_edits[key] = edit
            self._extra_rows[key] = (QLabel(label + " (optional)", self), edit)
            tform.addRow(*self._extra_rows[key])
        self.temporal_box.setVisible(False)
        self.temporal_box.setEnabled(False)

    def _build_model_box(self) -> QGroupBox:
        """The Model group: the model list and its card summary."""
        model_box = QGroupBox(self.tr("Model"), self)
        mlay = QVBoxLayout(model_box)
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
        self.adapt_spin = _spin("adapt", 20, self.tr(" steps"))
        self.adapt_spin.setSpecialValueText(self.tr("off"))
        self.adapt_spin.setToolTip(self.tr("Before declouding, fine-tune this run's copy of the model on the scene's "
                                           "own clear pixels with synthetic clouds (the cloud itself is never a "
                                           "target; the weights file is unchanged). About 0.7 s a step on 2 CPU "
                                           "cores; 80 steps is what was measured"))
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

    def _build_processing(self) -> QGroupBox:
        """The Processing group: device, tiling, extent, Python interpreter and its environment."""
        proc_box = QGroupBox(self.tr("Processing"), self)
        pform = QFormLayout(proc_box)
        self.device_combo = QComboBox(self)
        self.device_combo.setToolTip(self.tr("Where the model runs: the first GPU when there is one, else the CPU; "
                                             "'Check environment' lists the GPUs"))
        pform.addRow(self.tr("Device"), self.device_combo)
        tiles = QHBoxLayout()
        self.tile_spin = _spin("tile", 32, " px")
        self.overlap_spin = _spin("overlap", 8, " px")
        self.batch_spin = _spin("batch", 1, "")
        self.tile_spin.setToolTip(self.tr("Side of the square tiles the image is cut into; larger = faster, more "
                                          "memory"))
        self.overlap_spin.setToolTip(self.tr("Pixels two neighbouring tiles share, blended so no seams show"))
        self.batch_spin.setToolTip(self.tr("Tiles per forward pass; lower it when the GPU runs out of memory"))
        for label, spin in (("Tile", self.tile_spin), ("Overlap", self.overlap_spin), ("Batch", self.batch_spin)):
            tiles.addWidget(QLabel(label))
            tiles.addWidget(spin, 1)
        pform.addRow(tiles)
        ext_row = QHBoxLayout()
        self.extent_combo = QComboBox(self)
        self.extent_combo.setToolTip(self.tr("The part of the optical image to process"))
        self.extent_combo.addItem(self.tr("Whole optical layer"), EXTENT_LAYER)
        self.extent_combo.addItem(self.tr("Map canvas extent"), EXTENT_CANVAS)
        self.extent_combo.addItem(self.tr("Drawn rectangle"), EXTENT_DRAWN)
        self.draw_button = QPushButton(self.tr("Draw…"), self)
        self.draw_button.setToolTip(self.tr("Draw the processing rectangle on the map"))
        ext_row.addWidget(self.extent_combo, 1)
        ext_row.addWidget(self.draw_button)
        pform.addRow(self.tr("Extent"), ext_row)
        env_row = QHBoxLayout()
        self.python_widget = QgsFileWidget(self)
        self.python_widget.setDialogTitle(self.tr("Python interpreter with torch and rasterio"))
        self.env_button = QPushButton(self.tr("Check environment"), self)
        self.env_button.setToolTip(self.tr("Check that the Python interpreter can run the engine; lists its GPUs "
                                           "and models"))
        self.python_widget.setToolTip(self.tr("Python interpreter with torch and rasterio that runs the engine; "
                                              "empty = found automatically"))
        self.install_button = QPushButton(self.tr("Install engine…"), self)
        self.install_button.setToolTip(self.tr("Create a Python environment with the engine's packages in the "
                                               "plugin's data folder (from PyPI, or offline from a wheel folder) and "
                                               "use it"))
        pform.addRow(self.tr("Python"), self.python_widget)
        env_row.addWidget(self.env_button)
        env_row.addWidget(self.install_button)
        pform.addRow(env_row)
        self.env_label = QLabel(self.tr("Not checked yet: press “Check environment”."), self)
        self.env_label.setWordWrap(True)
        pform.addRow(self.env_label)
        return proc_box

    def _build_output(self) -> QGroupBox:
        """The Output group: the output path and the optional products."""
        out_box = QGroupBox(self.tr("Output"), self)
        oform = QFormLayout(out_box)
        self.output_widget = QgsFileWidget(self)
        self.output_widget.setStorageMode(QgsFileWidget.StorageMode.SaveFile)
        self.output_widget.setFilter("GeoTIFF (*.tif *.tiff)")
        self.output_widget.setConfirmOverwrite(True)
        self.output_widget.setToolTip(self.tr("The declouded GeoTIFF; it follows the optical layer until you edit it"))
        oform.addRow(self.tr("Declouded GeoTIFF"), self.output_widget)
        checks = QGridLayout()
        self.add_to_map_check = QCheckBox(self.tr("Add result to map"), self)
        self.ndvi_check = QCheckBox(self.tr("Also compute NDVI"), self)
        self.report_check = QCheckBox(self.tr("Write report"), self)
        self.cog_check = QCheckBox(self.tr("Cloud-optimised GeoTIFF"), self)
        self.add_to_map_check.setToolTip(self.tr("Load the results into a layer group when the run ends"))
        self.ndvi_check.setToolTip(self.tr("Also write <output>_ndvi.tif from the result's red and NIR bands"))
        self.report_check.setToolTip(self.tr("Write an HTML report beside the output (metrics against the "
                                             "reference when one is chosen) and open it"))
        self.cog_check.setToolTip(self.tr("Write a cloud-optimised GeoTIFF (tiled, with overviews) for the web"))
        self.qa_check = QCheckBox(self.tr("QA layer (what the model made)"), self)
        self.qa_check.setToolTip(self.tr("Also write <output>_qa.tif: the percent of each pixel taken from the model's "
                                 "output (0 = as acquired, 100 = reconstructed; 255 = no data)"))
        self.confidence_check = QCheckBox(self.tr("Confidence layer (where the model guesses)"), self)
        self.confidence_check.setToolTip(self.tr("Also write <output>_confidence.tif: how much the model's output "
                                         "changes "
                                         "when the tile is flipped or turned (4 passes, so 4× slower; the result is "
                                         "their mean). High = the model is guessing; 0 = as acquired"))
        self.style_inputs_check = QCheckBox(self.tr("Style the inputs like the result"), self)
        self.style_inputs_check.setToolTip(self.tr("Draw the cloudy optical (and the reference) with the result's "
                                                   "bands and "
                                           "its very stretch, so before and after compare fairly"))
        for i, box in enumerate((self.add_to_map_check, self.ndvi_check, self.report_check, self.cog_check,
                                 self.qa_check, self.confidence_check, self.style_inputs_check)):
            checks.addWidget(box, i // 2, i % 2)
        oform.addRow(checks)
        return out_box

    def _build_controls(self) -> None:
        """Issues line, progress bar and the dialog's buttons."""
        self.issues_label = QLabel("", self)
        self.issues_label.setWordWrap(True)
        self.issues_label.setTextFormat(Qt.TextFormat.RichText)
        self.reproject_button = QPushButton(self.tr("Reproject optical to UTM…"), self)
        self.reproject_button.setVisible(False)
        self.reproject_button.setToolTip(self.tr("Warp the optical layer to its UTM zone and use the copy"))
        self.progress = QProgressBar(self)
        self.progress.setRange(0, 100)
        self.progress.setValue(0)
        self.status_label = QLabel("", self)
        self.run_button = QPushButton(self.tr("Run"), self)
        self.run_button.setDefault(True)
        self.cancel_button = QPushButton(self.tr("Cancel"), self)
        self.cancel_button.setEnabled(False)
        self.close_button = QPushButton(self.tr("Close"), self)
        self.help_button = QPushButton(self.tr("Help"), self)
        self.run_button.setToolTip(self.tr("Start the run in the background"))
        self.cancel_button.setToolTip(self.tr("Stop the run; nothing is written"))
        self.close_button.setToolTip(self.tr("Close the dialog; a run goes on in the background"))
        self.help_button.setToolTip(self.tr("Open the plugin's documentation in the browser"))

    def _connect(self) -> None:
        self.optical_combo.layerChanged.connect(self._on_optical_changed)
        QgsProject.instance().layersAdded.connect(self._on_layers_added)
        self.sar_combo.layerChanged.connect(self._on_sar_changed)
        for combo in (self.landcover_combo, self.mask_combo, self.reference_combo, self.dem_combo,
                      *self.extra_combos.values()):
            combo.layerChanged.connect(self.validate)
        self.only_cloudy_check.toggled.connect(self._on_only_cloudy_toggled)
        for edit in self.date_edits.values():
            edit.textChanged.connect(self.validate)
        for combo in (*self.optical_band_combos.values(), *self.sar_band_combos.values()):
            combo.bandChanged.connect(self.validate)
        self.extent_combo.currentIndexChanged.connect(self._on_extent_mode)
        self.draw_button.clicked.connect(self._draw_extent)
        self.output_widget.fileChanged.connect(self.validate)
        for spin in (self.tile_spin, self.overlap_spin, self.batch_spin, self.feather_spin):
            spin.valueChanged.connect(self.validate)
        self.model_combo.currentIndexChanged.connect(self._on_model_changed)
        self.env_button.clicked.connect(self.check_environment)
        self.install_button.clicked.connect(lambda: self.install_engine())
        self.reproject_button.clicked.connect(self.reproject_optical)
        self.run_button.clicked.connect(self.run)
        self.cancel_button.clicked.connect(self.cancel)
        self.close_button.clicked.connect(self.close)
        self.help_button.clicked.connect(lambda: QDesktopServices.openUrl(QUrl(help_url())))

    # ------------------------------------------------------------------ settings
    def _load_settings(self) -> None:
        s = self.settings
        self.python_widget.setFilePath(s.python)
        self.python_widget.lineEdit().setPlaceholderText(self.tr("automatic: {0}").format(resolve_python('')))
        self.tile_spin.setValue(s.tile)
        self.overlap_spin.setValue(s.overlap)
        self.batch_spin.setValue(s.batch)
        self.adapt_spin.setValue(s.adapt)
        self.scene_check_check.setChecked(s.scene_check)
        self.colour_anchor_check.setChecked(s.colour_anchor)
        self.units_combo.setCurrentIndex(max(0, self.units_combo.findData(s.sar_units)))
        self.add_to_map_check.setChecked(s.add_to_map)
        self.style_inputs_check.setChecked(s.style_inputs)
        self.ndvi_check.setChecked(s.make_ndvi)
        self.report_check.setChecked(s.write_report)
        self.cog_check.setChecked(s.cog)
        self.qa_check.setChecked(s.write_qa)
        self.confidence_check.setChecked(s.write_confidence)
        self.only_cloudy_check.setChecked(s.only_cloudy)
        self.feather_spin.setValue(s.cloud_feather)
        self._on_only_cloudy_toggled()
        self._fill_devices()
        self._fill_models()
        self._on_extent_mode()
        if self.settings.env_cache:
            self._show_env(self.settings.env_cache)

    def save_settings(self) -> None:
        s = self.settings
        s.python = self.python_widget.filePath().strip()
        s.tile, s.overlap, s.batch = self.tile_spin.value(), self.overlap_spin.value(), self.batch_spin.value()
        s.adapt = self.adapt_spin.value()
        s.scene_check = self.scene_check_check.isChecked()
        s.colour_anchor = self.colour_anchor_check.isChecked()
        s.sar_units = self.units_combo.currentData()
        s.device = self.device_combo.currentData() or "auto"
        kind, value = self.model_combo.currentData() or ("registry", "identity")
        s.model = value if kind in ("registry", "weights") else s.model
        s.add_to_map = self.add_to_map_check.isChecked()
        s.style_inputs = self.style_inputs_check.isChecked()
        s.make_ndvi = self.ndvi_check.isChecked()
        s.write_report = self.report_check.isChecked()
        s.cog = self.cog_check.isChecked()
        s.write_qa = self.qa_check.isChecked()
        s.write_confidence = self.confidence_check.isChecked()
        s.only_cloudy = self.only_cloudy_check.isChecked()
        s.cloud_feather = self.feather_spin.value()
        if self.output_widget.filePath():
            s.output_dir = os.path.dirname(self.output_widget.filePath())
        s.save()

    def _fill_devices(self) -> None:
        current = self.device_combo.currentData() or self.settings.device
        self.device_combo.blockSignals(True)
        self.device_combo.clear()
        self.device_combo.addItem(self.tr("Auto (GPU if available)"), "auto")
        self.device_combo.addItem(self.tr("CPU"), "cpu")
        for dev in self.settings.cuda_devices():
            free = f", {dev['free_mb']} MiB free" if dev.get("free_mb") is not None else ""
            label = self.tr("CUDA:{0} — {1}{2}").format(dev["index"], dev["name"], free)
            self.device_combo.addItem(label, f"cuda:{dev['index']}")
        self.device_combo.setCurrentIndex(max(0, self.device_combo.findData(current)))
        self.device_combo.blockSignals(False)

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
            if not self.select_model(engine_default(entries)):
                combo.setCurrentIndex(0)
        combo.blockSignals(False)
        self._on_model_changed()

    def _wanted_model(self, entries: list[dict[str, Any]]) -> str:
        """The saved choice; a bundled weights file saved by an older version is its model; nothing saved is the
        engine's default (the bundled weights, else identity)."""
        wanted = self.settings.model
        for name, files in bundled_by_model().items():
            if wanted in files:
                return name
        return wanted or engine_default(entries)

    def _bundled_file(self, name: str) -> str | None:
        """The bundled weights of a registry model that needs weights (the engine itself only finds
        aligncr-lite's), passed as ``--weights``; None for a model without weights."""
        entry = self.model_entries.get(name) or {}
        files = entry.get("bundled_weights") if entry.get("needs_weights", True) else None
        return str(files[0]) if files else None

    def _selectable(self, value: str) -> bool:
        entry = self.model_entries.get(value)
        return entry is None or has_weights(entry)

    # ------------------------------------------------------------------ reactions
    def _on_optical_changed(self, *_: Any) -> None:
        layer = self.optical_combo.currentLayer()
        guess = L.guess_bands(L.band_descriptions(layer), L.OPTICAL_ROLES) if layer else {}
        for role, combo in self.optical_band_combos.items():
            combo.setLayer(layer)
            if layer is not None:
                combo.setBand(guess[role])
        current = self.output_widget.filePath()
        if layer is not None and (not current or current == self.auto_output):  # the user has not edited it
            self.auto_output = os.path.join(self._output_folder(layer), f"{layer.name()}_declouded.tif")
            self.output_widget.setFilePath(self.auto_output)
        self.validate()

    def _output_folder(self, layer: QgsRasterLayer) -> str:
        """The first writable of: the folder last written to, the optical's folder, the project's, the home one."""
        candidates = [self.settings.output_dir, os.path.dirname(L.layer_path(layer)) if _is_file(layer) else "",
                      QgsProject.instance().homePath(), os.path.expanduser("~")]
        return next((c for c in candidates if c and writable(c)), os.path.expanduser("~"))

    def _on_layers_added(self, *_: Any) -> None:
        """A picker that was empty selects the first added layer without emitting ``layerChanged``, so the band
        mapping stayed empty; pick the defaults again and follow whatever the pickers now show."""
        self.pick_default_layers()
        if self.optical_band_combos[L.OPTICAL_ROLES[0]].layer() != self.optical_combo.currentLayer():
            self._on_optical_changed()
        if self.sar_band_combos[L.SAR_ROLES[0]].layer() != self.sar_combo.currentLayer():
            self._on_sar_changed()

    def pick_default_layers(self) -> None:
        """Optical: the active layer when it has ≥ 4 bands, else the first layer that has; SAR: a 2-band layer
        (issue 16: the 2-band S1 was picked as the optical). A choice that already fits is kept."""
        layers = [self.optical_combo.layer(i) for i in range(self.optical_combo.count())]
        rasters = [lyr for lyr in layers if isinstance(lyr, QgsRasterLayer)]
        current = self.optical_combo.currentLayer()
        if current is None or current.bandCount() < 4:
            active = self.iface.activeLayer() if hasattr(self.iface, "activeLayer") else None
            fits = [active] if isinstance(active, QgsRasterLayer) and active.bandCount() >= 4 else []
            chosen = next(iter(fits + [lyr for lyr in rasters if lyr.bandCount() >= 4]), None)
            if chosen is not None:
                self.optical_combo.setLayer(chosen)
        sar = self.sar_combo.currentLayer()
        if sar is None or sar.bandCount() != 2:
            chosen = next((lyr for lyr in rasters if lyr.bandCount() == 2), None)
            if chosen is not None:
                self.sar_combo.setLayer(chosen)

    def _on_only_cloudy_toggled(self, *_: Any) -> None:
        """The feather only means something when only-cloudy is on."""
        self.feather_spin.setEnabled(self.only_cloudy_check.isChecked())

    def _on_sar_changed(self, *_: Any) -> None:
        layer = self.sar_combo.currentLayer()
        guess = L.guess_bands(L.band_descriptions(layer), L.SAR_ROLES) if layer else {}
        for role, combo in self.sar_band_combos.items():
            combo.setLayer(layer)
            if layer is not None:
                combo.setBand(guess[role])
        self.validate()

    def _on_extent_mode(self, *_: Any) -> None:
        self.draw_button.setEnabled(self.extent_combo.currentData() == EXTENT_DRAWN)
        self.validate()

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

    def _show_temporal(self, arch: str) -> None:
        """Show the "Extra dates" group, with the rows the model uses, only for a temporal model."""
        self.temporal = temporal_info(self._registry_entry(arch), arch) if arch else None
        info = self.temporal
        self.temporal_box.setVisible(info is not None)
        self.temporal_box.setEnabled(info is not None)
        if info is None:
            return
        self.temporal_box.setTitle(self.tr("Extra dates for {0} (images before and after the cloudy one)").format(arch))
        for key, (label, widget) in self._extra_rows.items():
            shown = key in info.keys() if key in EXTRA_LAYERS else info.needs_dates
            label.setVisible(shown)
            widget.setVisible(shown)
            widget.setEnabled(shown)

    def _show_sar(self, arch: str) -> None:
        """A model without SAR input (gapfill) needs no SAR layer: its row is disabled and marked unused."""
        self.uses_sar = model_uses_sar(self._registry_entry(arch), arch) if arch else True
        self.sar_label.setText("Sentinel-1 SAR" if self.uses_sar else f"Sentinel-1 SAR (not used by {arch})")
        for widget in (self.sar_combo, *self.sar_band_combos.values(), self.units_combo):
            widget.setEnabled(self.uses_sar)

    def _show_dem(self, shown: bool) -> None:
        """The DEM picker, only for a model built with a DEM input (Cresson U-Nets with ``dem=True``)."""
        self.uses_dem = shown
        for widget in (self.dem_label, self.dem_combo):
            widget.setVisible(shown)
            widget.setEnabled(shown)

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

    def _draw_extent(self) -> None:
        canvas = self.iface.mapCanvas() if self.iface is not None else None
        if canvas is None:
            return
        self._previous_tool = canvas.mapTool()
        self._extent_tool = QgsMapToolExtent(canvas)
        self._extent_tool.extentChanged.connect(self._extent_drawn)
        canvas.setMapTool(self._extent_tool)
        self.hide()

    def _extent_drawn(self, rect: QgsRectangle) -> None:
        canvas = self.iface.mapCanvas()
        self.set_drawn_extent(rect, canvas.mapSettings().destinationCrs())
        if getattr(self, "_previous_tool", None) is not None:
            canvas.setMapTool(self._previous_tool)
        else:
            canvas.unsetMapTool(self._extent_tool)
        self.show()
        self.raise_()

    def set_drawn_extent(self, rect: QgsRectangle, crs: QgsCoordinateReferenceSystem) -> None:
        """Use ``rect`` (in ``crs``) as the processing extent (also the test hook for drawing)."""
        self.drawn_extent, self.drawn_crs = QgsRectangle(rect), crs
        self.extent_combo.setCurrentIndex(self.extent_combo.findData(EXTENT_DRAWN))
        self.validate()

    # ------------------------------------------------------------------ validation
    def processing_extent(self) -> QgsRectangle | None:
        """The chosen extent in the optical layer's CRS, or None for the whole layer."""
        layer = self.optical_combo.currentLayer()
        mode = self.extent_combo.currentData()
        if layer is None or mode == EXTENT_LAYER:
            return None
        if mode == EXTENT_CANVAS:
            canvas = self.iface.mapCanvas() if self.iface is not None else None
            if canvas is None:
                return None
            rect, crs = canvas.extent(), canvas.mapSettings().destinationCrs()
        else:
            if self.drawn_extent is None:
                return QgsRectangle()  # empty: reported as an error until drawn
            rect, crs = self.drawn_extent, self.drawn_crs
        if crs.isValid() and crs != layer.crs():
            rect = QgsCoordinateTransform(crs, layer.crs(), QgsProject.instance()).transformBoundingBox(rect)
        return rect

    def check_inputs(self) -> L.CheckInputs:
        opt = self.optical_combo.currentLayer()
        sar = self.sar_combo.currentLayer() if self.uses_sar else None
        return L.CheckInputs(
            optical=opt,
            sar=sar,
            optical_bands={r: c.currentBand() for r, c in self.optical_band_combos.items()} if opt else {},
            sar_bands={r: c.currentBand() for r, c in self.sar_band_combos.items()} if sar else {},
            landcover=self.landcover_combo.currentLayer(),
            mask=self.mask_combo.currentLayer(),
            reference=self.reference_combo.currentLayer(),
            extent=self.processing_extent(),
            output=self.output_widget.filePath(),
            sar_required=self.uses_sar,
        )

    def validate(self, *_: Any) -> L.CheckResult:
        res = L.check_inputs(self.check_inputs())
        kind, value = self.model_combo.currentData() or ("registry", "identity")
        entry = self._registry_entry(value) if kind == "registry" else None
        if entry and entry.get("needs_weights") and not entry.get("bundled_weights"):
            res.error(self.tr("Model '{0}' has no trained weights installed; browse for a .safetensors file.")
                      .format(value))
        if self.extent_combo.currentData() == EXTENT_DRAWN and self.drawn_extent is None:
            res.error(self.tr("Draw the processing rectangle on the map (Draw…), or choose another extent."))
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

    def _check_extra_dates(self, res: L.CheckResult) -> None:
        info = self.temporal
        if info is None:
            return
        for key in info.keys():
            label = EXTRA_LAYERS[key]
            layer = self.extra_combos[key].currentLayer()
            if layer is None:
                res.error(self.tr("Model '{0}' needs the {1} layer (Extra dates).").format(self.temporal_model, label))
                continue
            if L.check_layer(res, label, layer):
                self._check_overlap(res, label, layer, "it")
        if info.needs_dates:
            for key, label in EXTRA_DATES.items():
                text = self.date_edits[key].text().strip()
                if text and parse_date(text) is None:
                    res.error(self.tr("{0}: '{1}' is not a date (ISO 8601, e.g. 2021-06-01T10:30:00Z).")
                              .format(label, text))

    def _check_dem(self, res: L.CheckResult) -> None:
        if not self.uses_dem:
            return
        layer = self.dem_combo.currentLayer()
        if layer is None:
            res.error(self.tr("Model '{0}' was built with a DEM input: choose the DEM layer (elevation in metres).")
                      .format(self.model_arch))
            return
        if not L.check_layer(res, "DEM", layer):
            return
        if layer.bandCount() != 1:
            res.error(self.tr("DEM layer has {0} bands; one band of elevation is needed.").format(layer.bandCount()))
        self._check_overlap(res, "DEM", layer, "elevation")

    def _check_overlap(self, res: L.CheckResult, label: str, layer: QgsRasterLayer, without: str) -> None:
        """An extra raster (DEM, extra date) that misses the optical layer is an error, a partial one a warning —
        the engine's own rule at run time, said before the run."""
        opt = self.optical_combo.currentLayer()
        if opt is None or not opt.crs().isValid():
            return
        pct = L.overlap_percent(opt, layer)
        if pct <= 0.0:
            res.error(self.tr("{0} layer does not overlap the optical layer (0 % overlap).").format(label))
        elif pct < 99.5:
            res.warning(self.tr("{0} layer covers only {1:.1f} % of the optical area; pixels without {2} are left "
                                "as the input.").format(label, pct, without))

    def extra_dates(self) -> dict[str, str]:
        """The extra rasters (paths) and typed dates the chosen temporal model uses, by run option name."""
        info = self.temporal
        if info is None:
            return {}
        out: dict[str, str] = {}
        for key in info.keys():
            layer = self.extra_combos[key].currentLayer()
            if layer is not None:
                out[key] = L.layer_path(layer)
        if info.needs_dates:
            for key in EXTRA_DATES:
                text = self.date_edits[key].text().strip()
                if text:
                    out[key] = text
        return out

    def issue_messages(self) -> list[str]:
        return [i.message for i in self.last_check.issues]

    # ------------------------------------------------------------------ environment
    def engine_process(self, **callbacks: Any) -> EngineProcess:
        root = engine_root()
        if root is None:
            raise EngineRunError("the engine package is missing next to the plugin; reinstall the plugin")
        return EngineProcess(python=self.current_python(), engine_root=str(root), **callbacks)

    def current_python(self) -> str:
        self.settings.python = self.python_widget.filePath().strip()
        return self.settings.interpreter

    def check_environment(self) -> None:
        """Run ``engine env --json`` and ``engine models --json`` in the background; refresh devices and models."""
        if self.env_task is not None:
            return
        root = engine_root()
        if root is None:
            self._error(self.tr("the engine package is missing next to the plugin; reinstall the plugin"))
            return
        # env through its own module: `python -m engine env` needs every command's imports (rasterio, torch) —
        # exactly what this check is for. `models --json` is optional: it fails cleanly when torch is missing.
        steps = [EngineStep("environment", ["--json"], progress_json=False, module="engine.commands.env"),
                 EngineStep("models", ["models", "--json"], progress_json=False, optional=True)]
        self.env_task = EngineTask("Align-CR: check environment", self.current_python(), str(root), steps)
        self.env_task.done.connect(self._environment_checked)
        self.status_label.setText(self.tr("Checking {0} …").format(self.current_python()))
        self.env_button.setEnabled(False)
        QgsApplication.taskManager().addTask(self.env_task)

    def install_engine(self, plan: InstallPlan | None = None) -> EngineTask | None:
        """*Install engine…*: ask where from (unless ``plan`` is given, as tests do), then create the venv and
        pip-install into it in the background; on success the *Python* field points at it and the environment
        is checked. Returns the task."""
        root = engine_root()
        if self.install_task is not None or root is None:
            return None
        plan = plan or ask_install_plan(self, engine_venv_dir())
        if plan is None:
            return None
        steps = [EngineStep(label, args, weight=1.0 if module == "venv" else 9.0, progress_json=False,
                            module=module, python=python) for label, python, module, args in plan.steps()]
        self.install_task = EngineTask(self.tr("Align-CR: install engine"), plan.base_python, str(root), steps,
                                       context={"plan": plan})
        self.install_task.progressMessage.connect(self._on_progress)
        self.install_task.done.connect(self._engine_installed)
        self.install_button.setEnabled(False)
        self.status_label.setText(self.tr("Installing the engine into {0} …").format(plan.venv))
        self.install_progress = InstallProgressDialog(self.install_task, str(plan.venv), self)
        self.install_progress.show()
        QgsApplication.taskManager().addTask(self.install_task)
        return self.install_task

    def _engine_installed(self, ok: bool, job: JobResult) -> None:
        task, self.install_task = self.install_task, None
        self.install_button.setEnabled(True)
        self.status_label.setText("")
        if not ok:
            self._error(self.tr("Installing the engine failed: {0} (pip's output is in the Align-CR log)").format(
                job.error))
            return
        plan: InstallPlan = task.context["plan"] if task is not None else None
        self.python_widget.setFilePath(str(plan.python))
        self.save_settings()
        self.bar.pushMessage("Align-CR", self.tr("Engine installed in {0}.").format(plan.venv),
                             Qgis.MessageLevel.Success, 8)
        self.check_environment()

    def _environment_checked(self, ok: bool, job: JobResult) -> None:
        self.env_task = None
        self.env_button.setEnabled(True)
        env = _parse_json(job.outcomes[0].stdout) if job.outcomes else None
        if isinstance(env, dict):
            self.settings.env_cache = env
            self._fill_devices()
        models = _parse_json(job.outcomes[1].stdout) if len(job.outcomes) > 1 else None
        if isinstance(models, dict):
            models = models.get("models")
        if isinstance(models, list):
            self.settings.models_cache = [m if isinstance(m, dict) else {"name": str(m)} for m in models]
            self._fill_models()
        self.save_settings()
        if isinstance(env, dict):
            self._show_env(env)
            if env.get("ok"):
                self.bar.pushMessage("Align-CR", self.tr("The interpreter can run the engine."),
                                     Qgis.MessageLevel.Success, 5)
            else:
                self._error(self.tr("The interpreter cannot run the engine: press Install engine…, or pick "
                                    "another Python (the manual command is in the Align-CR log)."))
                QgsMessageLog.logMessage(str(env.get("install_command")), LOG_TAG, Qgis.MessageLevel.Info)
            self.status_label.setText("")
            QgsMessageLog.logMessage(json.dumps(env, indent=1), LOG_TAG, Qgis.MessageLevel.Info)
        else:
            self._error(job.error or "environment check failed")
            self.status_label.setText("")

    # ------------------------------------------------------------------ running
    def build_request(self) -> RunCommand:
        """The engine run the current widgets describe; a processing extent goes as ``--bounds`` (the engine takes
        that window of the optical image, snapped to its pixels, and aligns every other input onto it)."""
        inp = self.check_inputs()
        paths = {"optical": L.layer_path(inp.optical)}
        for key, layer in (("sar", inp.sar), ("landcover", inp.landcover), ("mask", inp.mask),
                           ("reference", inp.reference)):
            if layer is not None:
                paths[key] = L.layer_path(layer)
        extras = self.extra_dates()  # the extra rasters (paths) and typed dates of a temporal model
        if self.uses_dem and self.dem_combo.currentLayer() is not None:
            paths["dem"] = L.layer_path(self.dem_combo.currentLayer())
        kind, value = self.model_combo.currentData() or ("registry", "identity")
        out = inp.output
        return RunCommand(
            **paths,
            **extras,
            out=out,
            model=value if kind == "registry" else None,
            weights=value if kind == "weights" else self._bundled_file(value),
            device=self.device_combo.currentData() or "auto",
            tile=self.tile_spin.value(),
            overlap=self.overlap_spin.value(),
            batch=self.batch_spin.value(),
            adapt=self.adapt_spin.value(),
            scene_check=self.scene_check_check.isChecked(),
            colour_anchor=self.colour_anchor_check.isChecked(),
            cog=self.cog_check.isChecked(),
            bands=tuple(inp.optical_bands[r] for r in L.OPTICAL_ROLES),
            sar_bands=tuple(inp.sar_bands.get(r, i + 1) for i, r in enumerate(L.SAR_ROLES)),
            sar_units=self.units_combo.currentData(),
            report=str(Path(out).with_suffix("")) + "_report" if self.report_check.isChecked() else None,
            only_cloudy=self.only_cloudy_check.isChecked(),
            cloud_feather=self.feather_spin.value() if self.only_cloudy_check.isChecked() else None,
            qa=_beside(out, "_qa") if self.qa_check.isChecked() else None,
            confidence=_beside(out, "_confidence") if self.confidence_check.isChecked() else None,
            bounds=L.bounds_argument(inp.extent) if inp.extent is not None else None,
        )

    def run(self) -> EngineTask | None:
        """Validate, build the request and start the background task (returned for tests)."""
        if self.task is not None or not self.validate().ok:
            return None
        root = engine_root()
        if root is None:
            self._error(self.tr("the engine package is missing next to the plugin; reinstall the plugin"))
            return None
        self.save_settings()
        try:
            req = self.build_request()
        except (L.LayerError, RuntimeError) as exc:
            self._error(str(exc))
            return None
        steps = [EngineStep("declouding", req.to_args(), weight=0.9)]
        ndvi_path = None
        if self.ndvi_check.isChecked():
            ndvi_path = str(Path(req.out).with_suffix("")) + "_ndvi.tif"
            bands = ",".join(str(b) for b in req.bands)
            steps.append(EngineStep("NDVI", ["ndvi", "--optical", req.out, "--out", ndvi_path, "--bands", bands],
                                    weight=0.1, progress_json=False))
        inputs = [c.currentLayer() for c in (self.optical_combo, self.reference_combo) if c.currentLayer()]
        context = {"request": req, "ndvi": ndvi_path, "name": Path(req.out).stem, "inputs": [i.id() for i in inputs],
                   "scene": self.optical_combo.currentLayer().name() if inputs else Path(req.out).stem}
        self.task = EngineTask(f"Align-CR: {Path(req.out).name}", self.current_python(), str(root), steps,
                               context=context)
        self.task.progressMessage.connect(self._on_progress)
        self.task.warningMessage.connect(lambda m: self.bar.pushMessage("Align-CR", m, Qgis.MessageLevel.Warning, 8))
        self.task.done.connect(self._on_done)
        self.progress.setValue(0)
        self.status_label.setText(self.tr("Starting the engine…"))
        self.run_button.setEnabled(False)
        self.cancel_button.setEnabled(True)
        QgsMessageLog.logMessage(f"running: {' '.join(req.to_args())}", LOG_TAG, Qgis.MessageLevel.Info)
        QgsApplication.taskManager().addTask(self.task)
        return self.task

    def cancel(self) -> None:
        if self.task is not None:
            self.status_label.setText(self.tr("Cancelling…"))
            self.task.cancel()

    def _on_progress(self, fraction: float, message: str) -> None:
        self.progress.setValue(int(round(100 * fraction)))
        self.status_label.setText(message)

    def _on_done(self, ok: bool, job: JobResult) -> None:
        task, self.task = self.task, None
        self.cancel_button.setEnabled(False)
        self.validate()
        if not ok:
            self.progress.setValue(0)
            if job.kind == "Cancelled":
                self.status_label.setText(self.tr("Cancelled; no output was written."))
                self.bar.pushMessage("Align-CR", self.tr("Cancelled; no output was written."),
                                     Qgis.MessageLevel.Info, 5)
            else:
                self.status_label.setText(self.tr("Failed — see the message above and the Align-CR log."))
                self._error(job.error)
            self.runFinished.emit(False)
            return
        ctx = task.context if task is not None else {}
        req: RunCommand = ctx["request"]
        result = job.outcomes[0].result if job.outcomes else {}
        out = str(result.get("output") or req.out)
        secs = float(result.get("seconds", job.outcomes[0].seconds if job.outcomes else 0.0))
        self.progress.setValue(100)
        self.status_label.setText(self.tr("Done in {0:.1f} s ({1} on {2}).").format(
            secs, result.get("model", "?"), result.get("device", "?")))
        self.result_layers = []
        if self.add_to_map_check.isChecked():
            self._add_results(ctx, out, str(result.get("model") or "Align-CR"))
        report = result.get("report") or req.report
        if report and self.open_report_in_browser:
            QDesktopServices.openUrl(QUrl.fromLocalFile(_report_entry(report)))
        made = result.get("model_percent")
        made_text = f" The model's output is in {made:.1f} % of the pixels." if made is not None else ""
        msg = f"Declouded image written to {out} in {secs:.1f} s.{made_text}"
        if result.get("scene_check"):
            msg += " " + result["scene_check"][0].upper() + result["scene_check"][1:] + "."
        if result.get("colour_anchor"):
            msg += " " + result["colour_anchor"][0].upper() + result["colour_anchor"][1:] + "."
        self.bar.pushMessage("Align-CR", msg, Qgis.MessageLevel.Success, 8)
        if self.iface is not None:
            self.iface.messageBar().pushMessage("Align-CR", msg, Qgis.MessageLevel.Success, 8)
        QgsMessageLog.logMessage(msg, LOG_TAG, Qgis.MessageLevel.Success)
        self.runFinished.emit(True)

    def _add_results(self, ctx: dict[str, Any], out: str, model: str) -> None:
        """One layer group per run, named after the scene and the run, on top of the layer tree: the RGB result
        first and shown, NDVI / QA / confidence below it and hidden; the inputs styled like the result (option)."""
        req: RunCommand = ctx["request"]
        blue, green, red, _nir = req.bands  # the engine keeps the optical band layout: R, G, B come from the mapping
        layers = [(out, "declouded", lambda lyr: style_rgb(lyr, red, green, blue))]
        layers += [(path, name, styler) for path, name, styler in (
            (ctx.get("ndvi"), "NDVI", style_ndvi), (req.qa, "QA (model share %)", style_qa),
            (req.confidence, "confidence (TTA spread)", style_confidence)) if path]  # fmt: skip
        project = QgsProject.instance()
        group = project.layerTreeRoot().insertGroup(0, f"{ctx['scene']} — {model} {datetime.now():%H:%M:%S}")
        rgb = None
        for path, name, styler in layers:
            layer = QgsRasterLayer(path, name)
            if not layer.isValid():
                self._error(self.tr("the result {0} could not be loaded as a layer").format(path))
                continue
            styler(layer)
            project.addMapLayer(layer, False)
            group.addLayer(layer).setItemVisibilityChecked(not self.result_layers)  # only the first is shown
            self.result_layers.append(layer)
            rgb = rgb or (layer if path == out else None)
        if self.style_inputs_check.isChecked() and rgb is not None:
            for layer_id in ctx.get("inputs", []):
                layer = project.mapLayer(layer_id)
                if isinstance(layer, QgsRasterLayer) and layer.bandCount() >= max(red, green, blue):
                    style_like(layer, rgb, red, green, blue)

    # ------------------------------------------------------------------ reprojection offer
    def reproject_optical(self) -> QgsTask | None:
        """Warp the (geographic) optical layer to its UTM zone next to the output, in the background.

        A full PlanetScope scene takes a while to warp, so it is a QgsTask like the run; when it finishes the new
        layer is added to the project and selected as the optical input (``reprojected`` is emitted).
        """
        layer = self.optical_combo.currentLayer()
        if layer is None or self.reproject_task is not None:
            return None
        centre = layer.extent().center()
        wgs84 = QgsCoordinateReferenceSystem("EPSG:4326")
        if layer.crs() != wgs84:
            centre = QgsCoordinateTransform(layer.crs(), wgs84, QgsProject.instance()).transform(centre)
        zone = min(60, max(1, int((centre.x() + 180.0) // 6) + 1))
        epsg = (32600 if centre.y() >= 0 else 32700) + zone
        try:
            src = L.layer_path(layer)
        except L.LayerError as exc:
            self._error(str(exc))
            return None
        folder = os.path.dirname(self.output_widget.filePath()) or os.path.dirname(src)
        if not os.path.isdir(folder):
            folder = os.path.dirname(src)
        dst = os.path.join(folder, f"{Path(src).stem}_utm{zone}.tif")
        name = f"{layer.name()} (UTM {zone})"

        def warp(task: QgsTask) -> str:
            from osgeo import gdal

            gdal.UseExceptions()

            def progress(fraction: float, *_: Any) -> int:
                task.setProgress(100.0 * fraction)
                return 0 if task.isCanceled() else 1  # GDAL stops (and raises) on 0

            ds = gdal.Warp(dst, src, dstSRS=f"EPSG:{epsg}", resampleAlg="bilinear",
                           creationOptions=["COMPRESS=DEFLATE", "TILED=YES"], callback=progress)
            ds = None  # noqa: F841 - flush and close before QGIS opens it
            return dst

        def finished(exception: Exception | None, result: str | None = None) -> None:
            self.reproject_task = None
            self.reproject_button.setEnabled(True)
            if exception is not None or not result:
                if os.path.exists(dst):
                    os.remove(dst)
                self.status_label.setText("")
                self._error(self.tr("reprojection to EPSG:{0} failed: {1}").format(epsg, exception or 'cancelled'))
                return
            new = QgsRasterLayer(result, name)
            QgsProject.instance().addMapLayer(new)
            self.optical_combo.setLayer(new)
            self.status_label.setText(self.tr("Reprojected to EPSG:{0}: {1}").format(epsg, result))
            self.reprojected.emit(new)

        self.reproject_task = QgsTask.fromFunction(f"Align-CR: reproject {layer.name()} to EPSG:{epsg}", warp,
                                                   on_finished=finished)
        self.reproject_button.setEnabled(False)
        self.status_label.setText(self.tr("Reprojecting to EPSG:{0}…").format(epsg))
        QgsApplication.taskManager().addTask(self.reproject_task)
        return self.reproject_task

    # ------------------------------------------------------------------ helpers
    def _show_env(self, env: dict[str, Any]) -> None:
        self.env_label.setText(_env_line(env))
        self.env_label.setToolTip(_env_summary(env))

    def _error(self, message: str) -> None:
        self.bar.pushMessage("Align-CR", message, Qgis.MessageLevel.Critical, 0)
        QgsMessageLog.logMessage(message, LOG_TAG, Qgis.MessageLevel.Critical)
        if self.iface is not None and not self.isVisible():
            self.iface.messageBar().pushMessage("Align-CR", message, Qgis.MessageLevel.Critical, 0)

    def closeEvent(self, event: Any) -> None:  # noqa: N802 - Qt override
        self.save_settings()
        super().closeEvent(event)


def _beside(out: str, suffix: str) -> str:
    """``<output without its extension><suffix>.tif``: where the QA and confidence layers of an output go."""
    return str(Path(out).with_suffix("")) + suffix + ".tif"


def _spin(option: str, step: int, suffix: str) -> QSpinBox:
    """A spin box over the range the options table allows for ``option``."""
    row = OPTIONS[option]
    spin = QSpinBox()
    spin.setRange(int(row.minimum), int(row.maximum))
    spin.setSingleStep(step)
    spin.setSuffix(suffix)
    return spin


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


def parse_date(text: str) -> datetime | None:
    """An ISO 8601 date/time (``Z`` allowed) as the engine accepts it with ``--date``, or None."""
    text = text.strip()
    if text.endswith(("Z", "z")):
        text = text[:-1] + "+00:00"
    try:
        return datetime.fromisoformat(text)
    except ValueError:
        return None


def writable(folder: str) -> bool:
    """Whether the dialog may propose an output in ``folder``."""
    return os.path.isdir(folder) and os.access(folder, os.W_OK)


def _is_file(layer: QgsRasterLayer) -> bool:
    """The layer is a local file (not only a GDAL dataset name such as /vsizip/…, which has no folder to offer)."""
    try:
        return os.path.isfile(L.layer_path(layer))
    except L.LayerError:
        return False


def _html(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _parse_json(lines: list[str]) -> Any:
    try:
        return json.loads("\n".join(lines))
    except json.JSONDecodeError:
        return None


def _env_summary(env: dict[str, Any]) -> str:
    lines = [f"Python {env.get('python')} — {env.get('executable')}"]
    for name, version in (env.get("packages") or {}).items():
        lines.append(f"  {name}: {version or 'MISSING'}")
    devices = env.get("cuda_devices") or []
    lines.append("  GPUs: " + (", ".join(f"cuda:{d['index']} {d['name']}" for d in devices) or "none (CPU only)"))
    if not env.get("ok"):
        lines.append(f"Install: {env.get('install_command')}")
    return "\n".join(lines)


def _env_line(env: dict[str, Any]) -> str:
    """One line for the dialog: interpreter, torch, GPUs, verdict (the full report is the tooltip and the log)."""
    pkgs = env.get("packages") or {}
    gpus = env.get("cuda_devices") or []
    where = f"{len(gpus)} GPU(s): " + ", ".join(str(d.get("name")) for d in gpus) if gpus else "CPU only"
    verdict = "✔ ready" if env.get("ok") else "✖ missing: " + ", ".join(sorted(env.get("errors") or {}))
    return f"Python {env.get('python')} · torch {pkgs.get('torch') or '—'} · {where} · {verdict}"


def _report_entry(report_dir: str) -> str:
    folder = Path(report_dir)
    for name in ("index.html", "report.html"):
        if (folder / name).is_file():
            return str(folder / name)
    htmls = sorted(folder.glob("*.html")) if folder.is_dir() else []
    return str(htmls[0]) if htmls else str(folder)
