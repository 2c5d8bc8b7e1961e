"""The *Install engine…* question: which Python makes the venv, from where the packages come, CUDA or not, and the
trained cloud detector (checked by default).

The answers become an :class:`aligncr_qgis.installer.InstallPlan`; the venv goes to the plugin's data folder in
the QGIS profile (:func:`engine_venv_dir`), so uninstalling the profile removes it and nothing lands in the user's
home or needs administrator rights.
"""

from __future__ import annotations

from pathlib import Path

from qgis.core import QgsApplication
from qgis.gui import QgsFileWidget
from qgis.PyQt.QtWidgets import QCheckBox, QDialog, QDialogButtonBox, QFormLayout, QLabel, QWidget

from aligncr_qgis.installer import InstallPlan, has_nvidia_gpu, qgis_python


def engine_venv_dir() -> Path:
    """``<QGIS profile>/aligncr/venv``: the plugin's data folder."""
    return Path(QgsApplication.qgisSettingsDirPath()) / "aligncr" / "venv"


class InstallDialog(QDialog):
    """Python (QGIS's by default), optional wheel folder, CUDA wheels (checked when an NVIDIA GPU answers), the
    trained cloud detector (checked)."""

    def __init__(self, venv: Path, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.venv = venv
        self.setWindowTitle(self.tr("Install the Align-CR engine"))
        form = QFormLayout(self)
        self.gpu = has_nvidia_gpu()
        self.size_label = QLabel(self)
        self.size_label.setWordWrap(True)
        form.addRow(self.size_label)
        self.python_widget = QgsFileWidget(self)
        self.python_widget.setFilePath(qgis_python())
        self.python_widget.setToolTip(self.tr("The Python that creates the environment: QGIS's own by default"))
        form.addRow(self.tr("Python"), self.python_widget)
        self.wheels_widget = QgsFileWidget(self)
        self.wheels_widget.setStorageMode(QgsFileWidget.StorageMode.GetDirectory)
        self.wheels_widget.setToolTip(self.tr("Offline: a folder of .whl files to install from instead of PyPI"))
        form.addRow(self.tr("Wheel folder (optional)"), self.wheels_widget)
        self.cuda_check = QCheckBox(self.tr("PyTorch for NVIDIA GPUs (CUDA)"), self)
        self.cuda_check.setChecked(self.gpu)
        self.cuda_check.setToolTip(self.tr("Checked when an NVIDIA GPU answered; unchecked: the CPU build only, "
                                           "from PyTorch's CPU index (the install stops if it cannot be reached)"))
        self.cuda_check.toggled.connect(self._show_size)
        self.wheels_widget.fileChanged.connect(self._show_size)
        form.addRow(self.cuda_check)
        self.masks_check = QCheckBox(self.tr("Trained cloud and shadow detector (ukis-csmask)"), self)
        self.masks_check.setChecked(True)
        self.masks_check.setToolTip(self.tr("The default source of the cloud when no cloud mask is given: it marks "
                                            "cloud and cloud shadow, and misses far less of the visible cloud than the "
                                            "hand-made brightness rule used without it (about 165 MB more). "
                                            "Offline: installed when the wheel folder holds its wheel"))
        self.masks_check.toggled.connect(self._show_size)
        form.addRow(self.masks_check)
        self.site_check = QCheckBox(self.tr("See QGIS's Python packages (GDAL, numpy)"), self)
        self.site_check.setChecked(True)
        self.site_check.setToolTip(self.tr("Create the environment with --system-site-packages, as QGIS's own "
                                           "packages must stay visible to its Python"))
        form.addRow(self.site_check)
        self._show_size()
        buttons = QDialogButtonBox(QDialogButtonBox.StandardButton.Ok | QDialogButtonBox.StandardButton.Cancel, self)
        buttons.accepted.connect(self.accept)
        buttons.rejected.connect(self.reject)
        form.addRow(buttons)

    def _show_size(self, *_: object) -> None:
        """What will be installed and how big, for the choices as they stand."""
        plan = self.plan()
        text = self.tr("Creates a Python environment in {0} and installs PyTorch ({1}), rasterio, scikit-image, "
                       "safetensors, tqdm{3} into it: about {2:g} GB, several minutes.").format(
            self.venv, self.tr("CUDA build") if plan.cuda and not plan.wheel_dir else self.tr("CPU build"),
            plan.size_gb, self.tr(" and the trained cloud detector") if plan.with_masks else "")
        if plan.masks and not plan.with_masks:
            text += " " + self.tr("The wheel folder has no ukis-csmask wheel: clouds will be found by the hand-made "
                                  "rule.")
        if plan.cuda and not self.gpu:
            text += " " + self.tr("No NVIDIA GPU answered: the CUDA build would not be used here.")
        self.size_label.setText(text)

    def plan(self) -> InstallPlan:
        return InstallPlan(base_python=self.python_widget.filePath().strip(), venv=self.venv,
                           wheel_dir=self.wheels_widget.filePath().strip(), cuda=self.cuda_check.isChecked(),
                           system_site_packages=self.site_check.isChecked(), masks=self.masks_check.isChecked())


def ask_install_plan(parent: QWidget | None, venv: Path) -> InstallPlan | None:
    """The user's answers, or None when cancelled or no Python was given."""
    dialog = InstallDialog(venv, parent)
    try:
        if dialog.exec() != QDialog.DialogCode.Accepted:
            return None
        plan = dialog.plan()
        return plan if plan.base_python else None
    finally:
        dialog.deleteLater()
