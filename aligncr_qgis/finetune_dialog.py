"""The *Train on my area…* window: fine-tune a model on an archive of the user's area, as a background task.

Opened from the main dialog's Model group. It builds a :class:`aligncr_qgis.finetune_request.FinetuneRequest`, runs
``engine finetune`` in one :class:`aligncr_qgis.task.EngineTask` (QGIS's task manager shows it too, with its own
cancel), shows its progress, and on success emits :attr:`FinetuneDialog.trained` with the weights file so the main
dialog selects it as its model (its card — the held-out table — appears in the model box). Cancel keeps the best
weights so far and says so: the engine rewrites the output at every held-out improvement. Closing the window does
not stop a run (it goes on in QGIS's task manager, which can cancel it too).
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

from qgis.core import QgsApplication
from qgis.gui import QgsFileWidget
from qgis.PyQt.QtCore import pyqtSignal
from qgis.PyQt.QtWidgets import (
    QDialog,
    QDoubleSpinBox,
    QFormLayout,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QProgressBar,
    QPushButton,
    QSpinBox,
    QVBoxLayout,
)

from aligncr_qgis.finetune_request import DEFAULT_BASE, FinetuneRequest, kept_weights, outcome_text
from aligncr_qgis.task import EngineStep, EngineTask


class FinetuneDialog(QDialog):
    """Archive folder, base model, budget, output weights; Train / Cancel / Close; progress and the outcome."""

    trained = pyqtSignal(str)  # the weights file written (also after a cancel that kept weights)

    def __init__(self, python: str, engine_root: str, base: str = DEFAULT_BASE, folder: str = "",
                 parent: Any = None) -> None:
        super().__init__(parent)
        self.setWindowTitle(self.tr("Align-CR — Train on my area"))
        self.python, self.engine_root = python, engine_root
        self.task: EngineTask | None = None
        self.started = 0.0
        self._build(base, folder)

    def _build(self, base: str, folder: str) -> None:
        form = QFormLayout()
        self.archive_widget = QgsFileWidget(self)
        self.archive_widget.setStorageMode(QgsFileWidget.StorageMode.GetDirectory)
        self.archive_widget.setToolTip(self.tr("Folder with optical/*.tif (B, G, R, NIR; optional NAME_mask.tif) or "
                                               "Sentinel-2 / PlanetScope products, sar/*.tif (VV, VH), split _VV/_VH "
                                               "files or Sentinel-1 GRD products, and optionally dates.csv"))
        form.addRow(self.tr("Archive folder"), self.archive_widget)
        self.base_edit = QLineEdit(base, self)
        self.base_edit.setToolTip(self.tr("A bundled model's weights name or a .safetensors file to start from"))
        form.addRow(self.tr("Start from"), self.base_edit)
        self.minutes_spin = QDoubleSpinBox(self)
        self.minutes_spin.setRange(0.5, 24 * 60)
        self.minutes_spin.setValue(30.0)
        self.minutes_spin.setSuffix(self.tr(" min"))
        form.addRow(self.tr("Time budget"), self.minutes_spin)
        self.steps_spin = QSpinBox(self)
        self.steps_spin.setRange(0, 1_000_000)
        self.steps_spin.setSpecialValueText(self.tr("no step limit"))
        form.addRow(self.tr("Step budget"), self.steps_spin)
        self.patch_spin = QSpinBox(self)
        self.patch_spin.setRange(16, 1024)
        self.patch_spin.setValue(256)
        self.patch_spin.setSuffix(" px")
        form.addRow(self.tr("Patch size"), self.patch_spin)
        self.output_widget = QgsFileWidget(self)
        self.output_widget.setStorageMode(QgsFileWidget.StorageMode.SaveFile)
        self.output_widget.setFilter("safetensors weights (*.safetensors)")
        self.output_widget.setFilePath(os.path.join(folder, "my_area.safetensors") if folder else "")
        form.addRow(self.tr("Output weights"), self.output_widget)
        self.progress = QProgressBar(self)
        self.status_label = QLabel("", self)
        self.status_label.setWordWrap(True)
        self.train_button = QPushButton(self.tr("Train"), self)
        self.cancel_button = QPushButton(self.tr("Cancel"), self)
        self.cancel_button.setEnabled(False)
        close_button = QPushButton(self.tr("Close"), self)
        self.train_button.clicked.connect(self.start)
        self.cancel_button.clicked.connect(self.cancel)
        close_button.clicked.connect(self.close)
        buttons = QHBoxLayout()
        for b in (self.train_button, self.cancel_button, close_button):
            buttons.addWidget(b)
        lay = QVBoxLayout(self)
        lay.addLayout(form)
        lay.addWidget(self.progress)
        lay.addWidget(self.status_label)
        lay.addLayout(buttons)

    def request(self) -> FinetuneRequest | None:
        """The request from the form, or None (with the reason shown) when the archive or output is missing."""
        archive, out = self.archive_widget.filePath().strip(), self.output_widget.filePath().strip()
        if not archive or not out:
            self.status_label.setText(self.tr("Choose the archive folder and the output weights file."))
            return None
        if not out.lower().endswith(".safetensors"):
            out += ".safetensors"
        return FinetuneRequest(archive=archive, out=out, base=self.base_edit.text().strip() or DEFAULT_BASE,
                               minutes=self.minutes_spin.value(), steps=self.steps_spin.value(),
                               patch_size=self.patch_spin.value())

    def start(self) -> EngineTask | None:
        req = self.request()
        if req is None:
            return None
        step = EngineStep(self.tr("fine-tuning"), req.to_args())
        self.task = EngineTask(f"Align-CR: train on my area → {Path(req.out).name}", self.python, self.engine_root,
                               [step], context={"request": req})
        self.task.progressMessage.connect(self._on_progress)
        self.task.warningMessage.connect(lambda m: self.status_label.setText(m))
        self.task.done.connect(self._on_done)
        self.started = time.time()
        self.progress.setValue(0)
        self.status_label.setText(self.tr("Indexing the archive…"))
        self.train_button.setEnabled(False)
        self.cancel_button.setEnabled(True)
        QgsApplication.taskManager().addTask(self.task)
        return self.task

    def cancel(self) -> None:
        if self.task is not None:
            self.status_label.setText(self.tr("Cancelling (the best weights so far are kept)…"))
            self.task.cancel()

    def _on_progress(self, fraction: float, message: str) -> None:
        self.progress.setValue(round(100 * fraction))
        self.status_label.setText(message)

    def _on_done(self, ok: bool, job: Any) -> None:
        req: FinetuneRequest = self.task.context["request"] if self.task is not None else None
        self.task = None
        self.train_button.setEnabled(True)
        self.cancel_button.setEnabled(False)
        if ok:
            self.progress.setValue(100)
            self.status_label.setText(outcome_text(job.outcomes[-1].result))
            self.trained.emit(req.out)
            return
        if job.kind == "Cancelled":
            kept = kept_weights(req.out, self.started)
            self.status_label.setText(self.tr("Cancelled; {0}").format(kept) if kept else
                                      self.tr("Cancelled before any weights were written."))
            if kept:
                self.trained.emit(req.out)
            return
        self.status_label.setText(self.tr("Failed: {0}").format(job.error))
