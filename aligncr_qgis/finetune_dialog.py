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

from aligncr_qgis.finetune_request import (
    AUTO_PATCH,
    DEFAULT_BASE,
    FinetuneRequest,
    in_words,
    kept_weights,
    outcome_text,
)
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
        self.minutes_spin = self._spin(QDoubleSpinBox, (0.5, 24 * 60), 30.0, self.tr(" min"), self.tr(
            "Stop training after this long (the best held-out weights so far are kept)"))
        form.addRow(self.tr("Time budget"), self.minutes_spin)
        self.steps_spin = self._spin(QSpinBox, (0, 1_000_000), 0, "", self.tr(
            "Stop after this many optimisation steps (whichever budget ends first)"))
        self.steps_spin.setSpecialValueText(self.tr("no step limit"))
        form.addRow(self.tr("Step budget"), self.steps_spin)
        self._build_archive_settings(form)
        self.output_widget = QgsFileWidget(self)
        self.output_widget.setStorageMode(QgsFileWidget.StorageMode.SaveFile)
        self.output_widget.setFilter("safetensors weights (*.safetensors)")
        self.output_widget.setFilePath(os.path.join(folder, "my_area.safetensors") if folder else "")
        self.output_widget.setToolTip(self.tr("The fine-tuned weights (.safetensors, with the held-out table in its "
                                              "model card); they become the dialog's model"))
        form.addRow(self.tr("Output weights"), self.output_widget)
        self.progress = QProgressBar(self)
        self.progress.setToolTip(self.tr("Indexing the archive, then training within the budget"))
        self.status_label = QLabel("", self)
        self.status_label.setWordWrap(True)
        self.train_button = QPushButton(self.tr("Train"), self)
        self.train_button.setToolTip(self.tr("Start fine-tuning in the background (QGIS stays usable)"))
        self.cancel_button = QPushButton(self.tr("Cancel"), self)
        self.cancel_button.setToolTip(self.tr("Stop; the best weights so far stay in the output file"))
        self.cancel_button.setEnabled(False)
        self.close_button = QPushButton(self.tr("Close"), self)
        self.close_button.setToolTip(self.tr("Close this window; a run goes on in QGIS's task manager"))
        self.train_button.clicked.connect(self.start)
        self.cancel_button.clicked.connect(self.cancel)
        self.close_button.clicked.connect(self.close)
        buttons = QHBoxLayout()
        for b in (self.train_button, self.cancel_button, self.close_button):
            buttons.addWidget(b)
        lay = QVBoxLayout(self)
        lay.addLayout(form)
        lay.addWidget(self.progress)
        lay.addWidget(self.status_label)
        lay.addLayout(buttons)

    def _build_archive_settings(self, form: QFormLayout) -> None:
        """How the archive is cut and paired (issue 28: without these a real archive gave 0 real pairs, and the
        fixed 256-px patch failed on a small one)."""
        d = FinetuneRequest(archive="", out="")
        self.patch_spin = self._spin(QSpinBox, (AUTO_PATCH, 1024), AUTO_PATCH, " px", self.tr(
            "Side of the square patches the archive is cut into; auto: the largest that still leaves a few blocks "
            "to hold out, from the archive's scene sizes"))
        self.patch_spin.setSpecialValueText(self.tr("auto (from the archive)"))
        form.addRow(self.tr("Patch size"), self.patch_spin)
        self.pair_days_spin = self._spin(QDoubleSpinBox, (0.0, 3650.0), d.pair_days, self.tr(" days"), self.tr(
            "A real pair is a cloudy acquisition and a clear one within this many days; raise it when the archive "
            "has few acquisitions (0 real pairs)"))
        form.addRow(self.tr("Real pairs within (days)"), self.pair_days_spin)
        self.sar_days_spin = self._spin(QDoubleSpinBox, (0.0, 365.0), d.sar_days, self.tr(" days"), self.tr(
            "Pair each optical acquisition with a Sentinel-1 scene acquired within this many days (12 days is one "
            "Sentinel-1 repeat)"))
        form.addRow(self.tr("Sentinel-1 within (days)"), self.sar_days_spin)
        self.block_spin = self._spin(QSpinBox, (1, 64), d.block_cells, self.tr(" patches"), self.tr(
            "Side of the square blocks of patches held out whole for validation (never a random patch: neighbours "
            "would leak)"))
        form.addRow(self.tr("Held-out block (patches)"), self.block_spin)
        self.val_spin = self._spin(QDoubleSpinBox, (0.01, 0.9), d.val_fraction, "", self.tr(
            "Share of the blocks held out for validation"))
        self.val_spin.setSingleStep(0.05)
        form.addRow(self.tr("Held-out share"), self.val_spin)

    def _spin(self, kind: type, bounds: tuple[float, float], value: float, suffix: str, tip: str) -> Any:
        """A spin box with its range, value, suffix and tooltip."""
        spin = kind(self)
        spin.setRange(*bounds)
        spin.setValue(value)
        spin.setSuffix(suffix)
        spin.setToolTip(tip)
        return spin

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
                               patch_size=self.patch_spin.value(), pair_days=self.pair_days_spin.value(),
                               sar_days=self.sar_days_spin.value(), block_cells=self.block_spin.value(),
                               val_fraction=self.val_spin.value())

    def start(self) -> EngineTask | None:
        req = self.request()
        if req is None:
            return None
        why = req.choose_patch()
        chosen = self.tr(" Patch size {0}.").format(why) if why else ""
        step = EngineStep(self.tr("fine-tuning"), req.to_args())
        self.task = EngineTask(f"Align-CR: train on my area → {Path(req.out).name}", self.python, self.engine_root,
                               [step], context={"request": req})
        self.task.progressMessage.connect(self._on_progress)
        self.task.warningMessage.connect(lambda m: self.status_label.setText(in_words(m)))
        self.task.done.connect(self._on_done)
        self.started = time.time()
        self.progress.setValue(0)
        self.status_label.setText(self.tr("Indexing the archive…") + chosen)
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
        self.status_label.setText(self.tr("Failed: {0}").format(in_words(job.error)))
