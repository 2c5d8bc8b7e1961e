"""The *Install engine…* progress window: which step, how far, and pip's own output as it comes.

An install takes minutes and downloads about a gigabyte; a status line in the main dialog and a log panel the user
has to find are not enough to tell "slow download" from "stuck" or to read why pip refused. This window follows one
:class:`aligncr_qgis.task.EngineTask`: its progress bar and step label, every line the child processes print
(``EngineTask.logLine``, also in QGIS's Align-CR log), *Cancel* (the task manager's cancel: pip is interrupted and
the half-made venv is not selected), and *Close*, which only hides the window — the install goes on in QGIS's task
manager.
"""

from __future__ import annotations

from typing import Any

from qgis.PyQt.QtWidgets import (
    QDialog,
    QDialogButtonBox,
    QLabel,
    QPlainTextEdit,
    QProgressBar,
    QVBoxLayout,
)

from aligncr_qgis.task import EngineTask

MAX_LOG_LINES = 5000  # pip prints a few hundred lines; the cap only bounds memory on a runaway child


class InstallProgressDialog(QDialog):
    """Step label, progress bar, pip's log, Cancel / Close, for one install task."""

    def __init__(self, task: EngineTask, venv: str, parent: Any = None) -> None:
        super().__init__(parent)
        self.task: EngineTask | None = task
        self.setWindowTitle(self.tr("Align-CR — installing the engine"))
        self.resize(720, 420)
        layout = QVBoxLayout(self)
        layout.addWidget(QLabel(self.tr("Installing into {0}").format(venv), self))
        self.step_label = QLabel(self.tr("Starting …"), self)
        self.step_label.setWordWrap(True)
        layout.addWidget(self.step_label)
        self.progress = QProgressBar(self)
        self.progress.setRange(0, 100)
        layout.addWidget(self.progress)
        self.log = QPlainTextEdit(self)
        self.log.setReadOnly(True)
        self.log.setMaximumBlockCount(MAX_LOG_LINES)
        self.log.setToolTip(self.tr("The output of python -m venv and pip, as they print it"))
        layout.addWidget(self.log, 1)
        self.buttons = QDialogButtonBox(QDialogButtonBox.StandardButton.Cancel
                                        | QDialogButtonBox.StandardButton.Close, self)  # fmt: skip
        self.cancel_button = self.buttons.button(QDialogButtonBox.StandardButton.Cancel)
        self.cancel_button.setToolTip(self.tr("Stop the install; the environment is not used"))
        self.close_button = self.buttons.button(QDialogButtonBox.StandardButton.Close)
        self.close_button.setToolTip(self.tr("Hide this window; the install goes on in QGIS's task manager"))
        self.buttons.rejected.connect(self.hide)
        self.cancel_button.clicked.connect(self.cancel)
        layout.addWidget(self.buttons)
        task.progressMessage.connect(self.on_progress)
        task.logLine.connect(self.log.appendPlainText)
        task.done.connect(self.on_done)

    def on_progress(self, fraction: float, message: str) -> None:
        self.progress.setValue(int(round(100 * fraction)))
        self.step_label.setText(message)

    def cancel(self) -> None:
        if self.task is not None:
            self.task.cancel()
            self.step_label.setText(self.tr("Cancelling …"))

    def on_done(self, ok: bool, job: Any) -> None:
        self.task = None
        self.cancel_button.setEnabled(False)
        if ok:
            self.progress.setValue(100)
            self.step_label.setText(self.tr("Installed. The Python field now points at the new environment."))
        elif job.kind == "Cancelled":
            self.step_label.setText(self.tr("Cancelled; the environment is not used."))
        else:
            self.step_label.setText(self.tr("Failed: {0}").format(job.error))
