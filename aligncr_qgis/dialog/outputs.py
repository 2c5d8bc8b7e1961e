"""The dialog's Output panel and its controls: output path and products, the issues line, *Run* / *Cancel*, and
loading the results into the project.

A part of :class:`aligncr_qgis.dialog.AlignCRDialog` (a mixin: its widgets are the dialog's attributes). *Run* hands a
:class:`~aligncr_qgis.run_options.RunCommand` built from every panel to an :class:`~aligncr_qgis.task.EngineTask`;
closing the dialog does not stop the task (the task manager still shows it and can cancel it).
"""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import Any

from qgis.core import Qgis, QgsApplication, QgsMessageLog, QgsProject, QgsRasterLayer
from qgis.gui import QgsFileWidget
from qgis.PyQt.QtCore import Qt, QUrl
from qgis.PyQt.QtGui import QDesktopServices
from qgis.PyQt.QtWidgets import QCheckBox, QFormLayout, QGridLayout, QGroupBox, QLabel, QProgressBar, QPushButton

from aligncr_qgis import layers as L
from aligncr_qgis.dialog.widgets import AUTO_ADAPT
from aligncr_qgis.paths import engine_root
from aligncr_qgis.run_options import RunCommand
from aligncr_qgis.styling import style_confidence, style_like, style_ndvi, style_qa, style_rgb
from aligncr_qgis.task import LOG_TAG, EngineStep, EngineTask, JobResult


class OutputsPanel:
    """What the run writes, the run itself in the background, and its results added to the map."""

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
            adapt=None if self.adapt_spin.value() == AUTO_ADAPT else self.adapt_spin.value(),
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


def _beside(out: str, suffix: str) -> str:
    """``<output without its extension><suffix>.tif``: where the QA and confidence layers of an output go."""
    return str(Path(out).with_suffix("")) + suffix + ".tif"


def _report_entry(report_dir: str) -> str:
    folder = Path(report_dir)
    for name in ("index.html", "report.html"):
        if (folder / name).is_file():
            return str(folder / name)
    htmls = sorted(folder.glob("*.html")) if folder.is_dir() else []
    return str(htmls[0]) if htmls else str(folder)
