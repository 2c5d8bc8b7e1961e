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
from aligncr_qgis.layer_pick import RESULT_PROPERTY
from aligncr_qgis.paths import engine_root
from aligncr_qgis.run_options import RunCommand
from aligncr_qgis.run_progress import RunProgress
from aligncr_qgis.styling import restyle_like, style_confidence, style_ndvi, style_qa, style_rgb
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
        self.style_optical_check = QCheckBox(self.tr("Style the cloudy input like the result"), self)
        self.style_optical_check.setToolTip(self.tr(
            "Draw this run's cloudy optical layer with the result's bands and its very stretch, so before and after "
            "compare fairly. Only that layer, and reversibly: its own look stays in its list of styles (layer menu ▸ "
            "Styles). Other layers, such as a reference, are never restyled"))
        for i, box in enumerate((self.add_to_map_check, self.ndvi_check, self.report_check, self.cog_check,
                                 self.qa_check, self.confidence_check, self.style_optical_check)):
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
        self.result_label = QLabel("", self)  # the whole outcome of the last run (the message bar clips at two lines)
        self.result_label.setWordWrap(True)
        self.result_label.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.result_label.setToolTip(self.tr("The outcome of the last run, whole (also in the Align-CR log)"))
        self.result_label.setVisible(False)
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
        if inp.mask is None and self.mask_word():  # the rule, or the product's own mask (else detect)
            paths["mask"] = self.mask_word()
        extras = self.extra_dates()  # the extra rasters (paths) and typed dates of a temporal model
        if self.uses_dem and self.dem_combo.currentLayer() is not None:
            paths["dem"] = L.layer_path(self.dem_combo.currentLayer())
        kind, value = self.model_combo.currentData() or ("registry", "identity")
        out = inp.output
        return RunCommand(
            **paths,
            **extras,
            out=out,
            mode=self.current_mode(),
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
        steps = [EngineStep("declouding", req.to_args(), weight=0.9, stages=self._run_stages(req))]
        ndvi_path = None
        if self.ndvi_check.isChecked():
            ndvi_path = str(Path(req.out).with_suffix("")) + "_ndvi.tif"
            bands = ",".join(str(b) for b in req.bands)
            steps.append(EngineStep("NDVI", ["ndvi", "--optical", req.out, "--out", ndvi_path, "--bands", bands],
                                    weight=0.1, progress_json=False))
        optical = self.optical_combo.currentLayer()
        context = {"request": req, "ndvi": ndvi_path, "name": Path(req.out).stem,
                   "optical": optical.id() if optical else "",
                   "scene": optical.name() if optical else Path(req.out).stem}
        self.task = EngineTask(f"Align-CR: {Path(req.out).name}", self.current_python(), str(root), steps,
                               context=context)
        self.task.progressMessage.connect(self._on_progress)
        self.task.warningMessage.connect(lambda m: self.bar.pushMessage("Align-CR", m, Qgis.MessageLevel.Warning, 8))
        self.task.done.connect(self._on_done)
        self.progress.setValue(0)
        self.result_label.setVisible(False)
        self.status_label.setText(self.tr("Starting the engine…"))
        self.run_button.setEnabled(False)
        self.cancel_button.setEnabled(True)
        QgsMessageLog.logMessage(f"running: {' '.join(req.to_args())}", LOG_TAG, Qgis.MessageLevel.Info)
        QgsApplication.taskManager().addTask(self.task)
        return self.task

    def _run_stages(self, req: RunCommand) -> RunProgress:
        """The run's stages (scene check, adaptation, network, anchor, report) sized for the bar."""
        layer = self.optical_combo.currentLayer()
        pixels = layer.width() * layer.height() if layer is not None else 0
        extent = self.processing_extent()
        if layer is not None and extent is not None and not layer.extent().isEmpty():
            pixels = int(pixels * min(1.0, extent.area() / layer.extent().area()))
        return RunProgress.for_command(req, pixels)

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
        headline, msg = _outcome_text(result, out, secs)
        self.result_label.setText(msg)
        self.result_label.setVisible(True)
        more = self.tr("{0} (the whole message is under the progress bar and in the Align-CR log)").format(headline)
        self.bar.pushMessage("Align-CR", more if msg != headline else msg, Qgis.MessageLevel.Success, 8)
        if self.iface is not None:
            self.iface.messageBar().pushMessage("Align-CR", headline, msg, Qgis.MessageLevel.Success, 8)
        QgsMessageLog.logMessage(msg, LOG_TAG, Qgis.MessageLevel.Success)
        self.runFinished.emit(True)

    def _add_results(self, ctx: dict[str, Any], out: str, model: str) -> None:
        """One layer group per run, named after the scene and the run, on top of the layer tree: the RGB result
        first and shown, NDVI / QA / confidence below it and hidden; this run's cloudy optical styled like the
        result when asked (reversibly; no other layer is ever restyled)."""
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
            layer.setCustomProperty(RESULT_PROPERTY, True)  # never proposed as the next run's input
            project.addMapLayer(layer, False)
            group.addLayer(layer).setItemVisibilityChecked(not self.result_layers)  # only the first is shown
            self.result_layers.append(layer)
            rgb = rgb or (layer if path == out else None)
        layer = project.mapLayer(ctx.get("optical", ""))
        if self.style_optical_check.isChecked() and rgb is not None and isinstance(layer, QgsRasterLayer) \
                and layer.bandCount() >= max(red, green, blue):
            restyle_like(layer, rgb, red, green, blue)


def _outcome_text(result: dict[str, Any], out: str, secs: float) -> tuple[str, str]:
    """(headline, whole message) of a finished run: where and how long; then the model's share, the scene check,
    the best mode's guard (the model or the non-learned estimate inside the cloud, and the check's margin; issue 26)
    and the colour anchor, which made the message too long for the message bar's two lines (issue 28)."""
    headline = f"Declouded image written to {out} in {secs:.1f} s."
    parts = [headline]
    if result.get("model_percent") is not None:
        parts.append(f"The model's output is in {result['model_percent']:.1f} % of the pixels.")
    for key in ("scene_check", "guard", "colour_anchor"):
        if result.get(key):
            parts.append(result[key][0].upper() + result[key][1:] + ".")
    return headline, " ".join(parts)


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
