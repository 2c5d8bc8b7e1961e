"""The dialog's Inputs panel and its Extra dates group: the layer pickers, their band mapping and the checks on them.

A part of :class:`aligncr_qgis.dialog.AlignCRDialog` (a mixin: its widgets are the dialog's attributes). The chosen
model decides what is shown here: a temporal model (``temporal_inputs`` in its ``engine models --json`` entry:
msop-unet, gapfill) shows the "Extra dates" group, the images before and after the cloudy one (and, for gapfill,
optional acquisition times); a model without SAR input (gapfill) disables the SAR row, which validation then skips
and the command line omits; a model built with a DEM input (``uses_dem``, or ``dem`` in a weights file's card)
shows a DEM picker.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

from qgis.core import QgsMapLayerProxyModel, QgsProcessingUtils, QgsProject, QgsRasterLayer
from qgis.gui import QgsMapLayerComboBox, QgsRasterBandComboBox
from qgis.PyQt.QtWidgets import (
    QCheckBox,
    QComboBox,
    QFileDialog,
    QFormLayout,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QPushButton,
    QWidget,
)

from aligncr_qgis import layers as L
from aligncr_qgis.dialog.widgets import option_spin
from aligncr_qgis.layer_pick import pick_sar
from aligncr_qgis.model_cards import temporal_info
from aligncr_qgis.model_cards import uses_sar as model_uses_sar
from aligncr_qgis.npy_mask import npy_mask_to_geotiff
from aligncr_qgis.run_options import MASK_AUTO, MASK_RULE, choice_items

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


class InputsPanel:
    """Optical and SAR layers with their bands, land cover, mask (and *Replace only the cloud*), reference, DEM, the
    extra dates of a temporal model; what the engine gets as its inputs (:meth:`check_inputs`, :meth:`extra_dates`)."""

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
        self._add_optical_rows(form)
        self._add_sar_rows(form)
        self.landcover_combo = self._raster_combo(True)
        self.landcover_combo.setToolTip(self.tr("ESA WorldCover classes (optional): the report's metrics per class"))
        form.addRow(self.tr("Land cover (optional)"), self.landcover_combo)
        self._add_mask_rows(form)
        self._add_reference_and_dem_rows(form)
        self.overlap_label = QLabel("", self)
        form.addRow(self.tr("SAR overlap"), self.overlap_label)
        return inputs

    def _band_row(self, roles: Sequence[str], tip: str) -> tuple[QHBoxLayout, dict[str, QgsRasterBandComboBox]]:
        """A row of band pickers, one per role (``tip`` formatted with the role)."""
        row = QHBoxLayout()
        combos: dict[str, QgsRasterBandComboBox] = {}
        for role in roles:
            row.addWidget(QLabel(role))
            combo = QgsRasterBandComboBox(self)
            combo.setToolTip(tip.format(role))
            combos[role] = combo
            row.addWidget(combo, 1)
        return row, combos

    def _add_optical_rows(self, form: QFormLayout) -> None:
        """The cloudy optical layer and its B, G, R, NIR bands."""
        self.optical_combo = self._raster_combo(False)
        self.optical_combo.setToolTip(self.tr("The cloudy optical image (PlanetScope, Sentinel-2, …): 4 bands or more "
                                              "(B, G, R, NIR), a CRS projected in metres. Proposed: the cloudiest "
                                              "4+-band layer over a SAR layer"))
        form.addRow(self.tr("Cloudy optical"), self.optical_combo)
        band_row, self.optical_band_combos = self._band_row(
            L.OPTICAL_ROLES, self.tr("The optical band holding {0} (guessed from the band names)"))
        form.addRow(self.tr("Bands"), band_row)

    def _add_sar_rows(self, form: QFormLayout) -> None:
        """The Sentinel-1 layer, its VV/VH bands and their units."""
        self.sar_combo = self._raster_combo(False)
        self.sar_combo.setToolTip(self.tr("Sentinel-1 GRD image of the same place (VV and VH), any CRS: the engine "
                                          "reprojects it onto the optical grid. Proposed: the 2-band layer covering "
                                          "most of the optical layer (nearest date on a tie)"))
        self.sar_label = QLabel(self.tr("Sentinel-1 SAR"), self)
        form.addRow(self.sar_label, self.sar_combo)
        sar_row, self.sar_band_combos = self._band_row(L.SAR_ROLES, self.tr("The SAR band holding {0}"))
        sar_row.addWidget(QLabel(self.tr("Units")))
        self.units_combo = QComboBox(self)
        self.units_combo.setToolTip(self.tr("Whether the SAR values are backscatter in dB or linear power; "
                                            "auto-detect reads the value range"))
        for key, label in choice_items("sar_units"):
            self.units_combo.addItem(self.tr(label), key)
        sar_row.addWidget(self.units_combo)
        form.addRow(self.tr("Bands"), sar_row)

    def _add_mask_rows(self, form: QFormLayout) -> None:
        """Where the cloud comes from (a layer, an .npy, a detector) and whether only the cloud is replaced."""
        self.mask_combo = self._raster_combo(True)
        # Where the cloud comes from: a mask layer, or (no layer) a detector the engine runs on the optical image.
        # The default names the trained detector (issue 29); without it installed the engine uses the rule and says so.
        self.mask_combo.setAllowEmptyLayer(True, self.tr("detect (trained)"))
        self.mask_words = {self.tr("detect (hand-made rule)"): MASK_RULE,
                           self.tr("the product's own (UDM2, SCL), else detect"): MASK_AUTO}
        self.mask_combo.setAdditionalItems(list(self.mask_words))
        self.mask_combo.setCurrentIndex(0)
        self.mask_combo.setToolTip(self.tr(
            "Where the cloud comes from. detect (trained), the default: the trained cloud and shadow detector "
            "(ukis-csmask, installed by Install engine…) marks cloud and cloud shadow on the optical image; where it "
            "is not installed the engine uses the hand-made brightness rule and says so. detect (hand-made rule): "
            "bright, flat pixels only (no shadows; misses thin haze and fringes). The product's own: a PlanetScope "
            "UDM2 or Sentinel-2 L2A SCL found beside the image, else detect. Or a mask layer: binary (1 = cloud) or a "
            "Planet UDM2. The report scores inside and outside the cloud, 'Replace only the cloud' replaces it"))
        mask_row = QHBoxLayout()
        mask_row.addWidget(self.mask_combo, 1)
        self.mask_npy_button = QPushButton(self.tr("From .npy…"), self)
        self.mask_npy_button.setToolTip(self.tr("Load a NumPy .npy cloud mask of the optical's height × width (as "
                                                "M3R-CR ships them; non-zero = cloud): it is saved as a GeoTIFF on "
                                                "the optical grid beside the .npy and chosen here"))
        self.mask_npy_button.clicked.connect(self._browse_npy_mask)
        mask_row.addWidget(self.mask_npy_button)
        form.addRow(self.tr("Cloud mask (optional)"), mask_row)
        keep_row = QHBoxLayout()
        self.only_cloudy_check = QCheckBox(self.tr("Replace only the cloud, keep clear pixels"), self)
        self.only_cloudy_check.setToolTip(
            self.tr("Keep every clear pixel exactly as in the input; only the cloud takes the model's output, blended "
            "into "
            "the input over the feather width beyond the cloud's edge. The cloud is what the Cloud mask picker says: "
            "a mask layer, the product's own mask, or the clouds (and shadows) detected on the optical image. "
            "Off: the model's output everywhere, as in the paper.")
        )
        self.feather_spin = option_spin("cloud_feather", 1, " px")
        self.feather_spin.setToolTip(self.tr("Blend width beyond the cloud's edge (0 = hard edge)"))
        keep_row.addWidget(self.only_cloudy_check, 1)
        keep_row.addWidget(QLabel(self.tr("Feather")))
        keep_row.addWidget(self.feather_spin)
        form.addRow("", keep_row)

    def _add_reference_and_dem_rows(self, form: QFormLayout) -> None:
        """The cloud-free reference (for the report) and the DEM (hidden unless the model takes one)."""
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

    def _on_optical_changed(self, *_: Any) -> None:
        layer = self.optical_combo.currentLayer()
        self._pick_sar()  # the SAR follows the optical layer until the user picks one
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
        """Propose the cloudy optical and the SAR layer by the rules of :mod:`aligncr_qgis.layer_pick` (the cloudiest
        4+-band layer over a SAR layer; the SAR covering most of it) — unless the user chose one in its picker."""
        rasters = self._project_rasters()
        self._picking = True
        try:
            if not self.user_picked["optical"]:
                active = self.iface.activeLayer() if hasattr(self.iface, "activeLayer") else None
                chosen = self.picker.optical(rasters, active if isinstance(active, QgsRasterLayer) else None)
                if chosen is not None and chosen != self.optical_combo.currentLayer():
                    self.optical_combo.setLayer(chosen)
            self._pick_sar(rasters)
        finally:
            self._picking = False

    def _pick_sar(self, rasters: list[QgsRasterLayer] | None = None) -> None:
        """The SAR layer covering most of the chosen optical one, unless the user chose one."""
        if self.user_picked["sar"]:
            return
        chosen = pick_sar(rasters if rasters is not None else self._project_rasters(),
                          self.optical_combo.currentLayer())
        if chosen is not None and chosen != self.sar_combo.currentLayer():
            was, self._picking = self._picking, True
            try:
                self.sar_combo.setLayer(chosen)
            finally:
                self._picking = was

    def _project_rasters(self) -> list[QgsRasterLayer]:
        """The raster layers the pickers list, in their order."""
        layers = [self.optical_combo.layer(i) for i in range(self.optical_combo.count())]
        return [lyr for lyr in layers if isinstance(lyr, QgsRasterLayer)]

    def _picked_by_user(self, role: str) -> None:
        """A picker changed by the user (not by :meth:`pick_default_layers`) keeps its choice from then on."""
        if not self._picking:
            self.user_picked[role] = True

    def _optical_picked(self, *_: Any) -> None:
        self._picked_by_user("optical")

    def _sar_picked(self, *_: Any) -> None:
        self._picked_by_user("sar")

    def _browse_npy_mask(self) -> None:
        path, _ = QFileDialog.getOpenFileName(self, self.tr("Cloud mask (.npy)"), "", "NumPy arrays (*.npy)")
        if path:
            self.load_npy_mask(path)

    def load_npy_mask(self, npy: str) -> QgsRasterLayer | None:
        """An ``.npy`` cloud mask as a GeoTIFF on the optical grid (beside it, else in QGIS's temporary folder),
        added to the project and chosen as the mask; a wrong shape is an error in the message bar."""
        optical = self.optical_combo.currentLayer()
        if optical is None:
            self._error(self.tr("Choose the cloudy optical layer first: a .npy mask takes its grid."))
            return None
        folder = os.path.dirname(os.path.abspath(npy))
        out = os.path.join(folder if writable(folder) else QgsProcessingUtils.tempFolder(),
                           f"{Path(npy).stem}_mask.tif")
        try:
            npy_mask_to_geotiff(npy, L.layer_path(optical), out)
        except L.LayerError as exc:
            self._error(str(exc))
            return None
        layer = QgsRasterLayer(out, f"{Path(npy).stem} (cloud mask)")
        QgsProject.instance().addMapLayer(layer)
        self.mask_combo.setLayer(layer)
        return layer

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

    def mask_word(self) -> str | None:
        """``--mask``'s word for the picker's choice without a layer: ``rule`` or ``auto``; None for a mask layer
        and for the default, detect (trained), which is the engine's own default (no ``--mask``)."""
        if self.mask_combo.currentLayer() is not None:
            return None
        return self.mask_words.get(self.mask_combo.currentText())

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

    def _check_cloudiness(self, res: L.CheckResult) -> None:
        """A cloud-free-looking optical layer while a cloudier one is loaded: the reference chosen as the cloudy
        image, most likely (issue 28) — a warning, as the user may mean it."""
        layer = self.optical_combo.currentLayer()
        clear = self.picker.looks_clear_beside_cloudier(layer, self._project_rasters()) if layer else None
        if clear is not None:
            res.warning(self.tr("Optical layer '{0}' looks cloud-free ({1:.1f} % cloud in a quick thumbnail check) "
                                "while a cloudier layer is loaded: is it the cloud-free reference?")
                        .format(layer.name(), clear))

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
        partial = L.partial_cover(opt, layer, pct)
        if pct <= 0.0:
            res.error(self.tr("{0} layer does not overlap the optical layer (0 % overlap).").format(label))
        elif partial:
            res.warning(self.tr("{0} layer {1}; pixels without {2} are left as the input.")
                        .format(label, partial, without))

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
