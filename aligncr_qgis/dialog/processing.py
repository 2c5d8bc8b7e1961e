"""The dialog's Processing panel: device, tiling, processing extent, and the Python interpreter that runs the engine
(*Check environment*, *Install engine…*).

A part of :class:`aligncr_qgis.dialog.AlignCRDialog` (a mixin: its widgets are the dialog's attributes). A processing
extent is passed to the engine as ``--bounds``; nothing is copied. The environment is checked and installed in
background tasks, so QGIS stays usable.
"""

from __future__ import annotations

import json
import shutil
from typing import Any

from qgis.core import (
    Qgis,
    QgsApplication,
    QgsCoordinateReferenceSystem,
    QgsCoordinateTransform,
    QgsMessageLog,
    QgsProject,
    QgsRectangle,
)
from qgis.gui import QgsFileWidget, QgsMapToolExtent
from qgis.PyQt.QtWidgets import QComboBox, QFormLayout, QGroupBox, QHBoxLayout, QLabel, QPushButton

from aligncr_qgis.dialog.widgets import option_spin
from aligncr_qgis.engine_process import EngineProcess, EngineRunError
from aligncr_qgis.install_dialog import ask_install_plan, engine_venv_dir
from aligncr_qgis.install_progress import InstallProgressDialog
from aligncr_qgis.installer import OPTIONAL_STEPS, InstallPlan, PipProgress, explain_failure
from aligncr_qgis.paths import engine_root
from aligncr_qgis.task import LOG_TAG, EngineStep, EngineTask, JobResult

EXTENT_LAYER, EXTENT_CANVAS, EXTENT_DRAWN = "layer", "canvas", "drawn"
VENV_SHARE = 0.03  # of the install's bar, for making the venv (against what pip downloads)


class ProcessingPanel:
    """Where and how the model runs: device, tile/overlap/batch, extent, interpreter and its environment."""

    def _build_processing(self) -> QGroupBox:
        """The Processing group: device, tiling, extent, Python interpreter and its environment."""
        proc_box = QGroupBox(self.tr("Processing"), self)
        pform = QFormLayout(proc_box)
        self.device_combo = QComboBox(self)
        self.device_combo.setToolTip(self.tr("Where the model runs: the first GPU when there is one, else the CPU; "
                                             "'Check environment' lists the GPUs"))
        pform.addRow(self.tr("Device"), self.device_combo)
        tiles = QHBoxLayout()
        self.tile_spin = option_spin("tile", 32, " px")
        self.overlap_spin = option_spin("overlap", 8, " px")
        self.batch_spin = option_spin("batch", 1, "")
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

    def _on_extent_mode(self, *_: Any) -> None:
        self.draw_button.setEnabled(self.extent_combo.currentData() == EXTENT_DRAWN)
        self.validate()

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
        self.install_task = EngineTask(self.tr("Align-CR: install engine"), plan.base_python, str(root),
                                       install_steps(plan), context={"plan": plan})
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
        plan: InstallPlan = task.context["plan"] if task is not None else None
        if plan is not None:
            shutil.rmtree(plan.pip_tmp, ignore_errors=True)  # pip's temporary folder, empty or half a download
        if not ok:
            # connected before the install window, so the window shows this sentence too
            job.error = explain_failure(plan, job.step, f"{job.details}\n{job.error}") or job.error
            self._error(self.tr("Installing the engine failed: {0} (pip's output is in the Align-CR log)").format(
                job.error))
            return
        self.python_widget.setFilePath(str(plan.python))
        self.save_settings()
        self.bar.clearWidgets()  # an earlier "cannot run the engine" is no longer true (issue 28)
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
                self.bar.clearWidgets()  # the errors of an earlier check or install are stale now
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

    def _show_env(self, env: dict[str, Any]) -> None:
        self.env_label.setText(_env_line(env))
        self.env_label.setToolTip(_env_summary(env))


def install_steps(plan: InstallPlan) -> list[EngineStep]:
    """The install's commands as task steps: the venv, then pip with its output logged line by line and read for
    progress (:class:`PipProgress`; each step's share of the bar is what it downloads), in its own temporary
    folder, whose growth is the download under way."""
    plan.pip_tmp.mkdir(parents=True, exist_ok=True)
    tmp = {name: str(plan.pip_tmp) for name in ("TMPDIR", "TEMP", "TMP")}
    commands = plan.steps()
    pip_mb = sum(plan.expected_mb(label) for label, _, module, _ in commands if module == "pip")
    steps = []
    for label, python, module, args in commands:
        pip = module == "pip"
        mb = plan.expected_mb(label) if pip else VENV_SHARE * pip_mb
        steps.append(EngineStep(label, args, weight=mb, progress_json=False, module=module, python=python,
                                log_stdout=True, stages=PipProgress(mb, plan.pip_tmp) if pip else None,
                                env=tmp if pip else {}, optional=label in OPTIONAL_STEPS))
    return steps


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
    if "cloud_detector" in env:  # an engine from before issue 29 does not say
        detector = env.get("cloud_detector")
        lines.append(f"  clouds: trained detector ({detector})" if detector else
                     "  clouds: hand-made brightness rule (no trained detector: Install engine… adds it)")
    inference = env.get("inference") or {}
    if inference.get("sentence"):  # issue 30: which backend and precision a run will use, and why
        lines.append(f"  Network: {inference.get('model')} on this {inference.get('cpu')} CPU: {inference['sentence']}")
    if not env.get("ok"):
        lines.append(f"Install: {env.get('install_command')}")
    return "\n".join(lines)


def _env_line(env: dict[str, Any]) -> str:
    """One line for the dialog: interpreter, torch, GPUs, verdict (the full report is the tooltip and the log)."""
    pkgs = env.get("packages") or {}
    gpus = env.get("cuda_devices") or []
    where = f"{len(gpus)} GPU(s): " + ", ".join(str(d.get("name")) for d in gpus) if gpus else "CPU only"
    verdict = "✔ ready" if env.get("ok") else "✖ missing: " + ", ".join(sorted(env.get("errors") or {}))
    inference = env.get("inference") or {}
    if inference.get("backend") and not gpus:  # e.g. "runs onnxruntime fp32"; the reason is in the tooltip
        where += f" · runs {inference['backend']} {inference.get('precision', '')}".rstrip()
    return f"Python {env.get('python')} · torch {pkgs.get('torch') or '—'} · {where} · {verdict}"
