"""The dialog's background job: a :class:`QgsTask` that runs one or more engine commands in sequence.

QGIS runs ``run()`` in a worker thread, shows the task in its task manager (with its own cancel button) and calls
``finished()`` back in the GUI thread — so layers are only ever added to the project from the GUI thread, and QGIS
stays responsive while the child process works. Progress from the child is forwarded both to
:meth:`QgsTask.setProgress` (task manager) and to Qt signals the dialog connects to (queued across threads).
A typical job is ``run`` followed by ``ndvi`` on its output; each step gets a share of the progress bar.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from qgis.core import Qgis, QgsMessageLog, QgsTask
from qgis.PyQt.QtCore import pyqtSignal

from aligncr_qgis.engine_process import EngineCancelled, EngineOutcome, EngineProcess, EngineRunError

LOG_TAG = "Align-CR"


@dataclass
class EngineStep:
    label: str
    args: list[str]
    weight: float = 1.0
    progress_json: bool = True
    module: str = "engine"  # `python -m MODULE ARGS`
    optional: bool = False  # a failure is logged and the job goes on (e.g. `models --json` on an older engine)
    python: str = ""  # the interpreter of this step; empty = the task's (Install engine… mixes two)
    stages: Any = None  # maps the child's (fraction, message) onto the step's bar: a RunProgress, a PipProgress
    log_stdout: bool = False  # every stdout line to the log as it comes (pip's "Collecting …", "Downloading …")
    env: dict[str, str] = field(default_factory=dict)  # extra environment of this step's child


@dataclass
class JobResult:
    outcomes: list[EngineOutcome] = field(default_factory=list)
    error: str = ""
    kind: str = ""
    details: str = ""
    step: str = ""  # the label of the step that failed


class EngineTask(QgsTask):
    """Run ``steps`` with ``python -m engine`` in ``engine_root``; emits ``done(ok, JobResult)`` in the GUI thread."""

    progressMessage = pyqtSignal(float, str)  # noqa: N815 - Qt signal naming
    warningMessage = pyqtSignal(str)  # noqa: N815
    logLine = pyqtSignal(str)  # noqa: N815 - every line the child prints (stderr, and stdout without --json)
    done = pyqtSignal(bool, object)

    def __init__(self, description: str, python: str, engine_root: str, steps: list[EngineStep],
                 context: Any = None) -> None:
        super().__init__(description, QgsTask.Flag.CanCancel)
        self.python = python
        self.engine_root = engine_root
        self.steps = steps
        self.context = context  # whatever the caller needs back in done() (layer names, band mapping …)
        self.job = JobResult()

    def run(self) -> bool:
        total = sum(s.weight for s in self.steps) or 1.0
        start = 0.0
        for step in self.steps:
            share = step.weight / total

            def emit(fraction: float, message: str, start: float = start, share: float = share,
                     label: str = step.label) -> None:
                overall = start + share * fraction
                self.setProgress(100.0 * overall)
                self.progressMessage.emit(overall, f"{label}: {message}" if message else label)

            proc = EngineProcess(
                python=step.python or self.python,
                engine_root=self.engine_root,
                on_progress=_mapped(emit, step.stages),
                on_warning=self._warn,
                on_log=_watched(self._log, emit, step.stages),
                is_cancelled=self.isCanceled,
                extra_env=step.env,
                log_stdout=step.log_stdout,
                on_tick=_ticked(emit, step.stages),
            )
            try:
                self.job.outcomes.append(proc.run(step.args, progress_json=step.progress_json, module=step.module))
            except EngineCancelled as exc:
                self.job.error, self.job.kind = str(exc), exc.kind
                return False
            except EngineRunError as exc:
                if step.optional:
                    QgsMessageLog.logMessage(f"{step.label} skipped: {exc}", LOG_TAG, Qgis.MessageLevel.Warning)
                    self.job.outcomes.append(EngineOutcome())
                    start += share
                    continue
                self.job.error, self.job.kind, self.job.details = str(exc), exc.kind, exc.details
                self.job.step = step.label
                return False
            except Exception as exc:  # noqa: BLE001 - a plugin bug must reach the log, not kill the worker silently
                self.job.error, self.job.kind = f"internal error: {type(exc).__name__}: {exc}", "InternalError"
                return False
            start += share
        return True

    def _log(self, line: str) -> None:
        """Every line the child prints: QGIS's log and the :attr:`logLine` signal (the install window)."""
        QgsMessageLog.logMessage(line, LOG_TAG, Qgis.MessageLevel.Info)
        self.logLine.emit(line)

    def _warn(self, message: str) -> None:
        QgsMessageLog.logMessage(message, LOG_TAG, Qgis.MessageLevel.Warning)
        self.warningMessage.emit(message)

    def finished(self, result: bool) -> None:  # GUI thread
        if not result and not self.job.error:
            self.job.error, self.job.kind = "cancelled by the user; no output was written", "Cancelled"
        if not result:
            level = Qgis.MessageLevel.Info if self.job.kind == "Cancelled" else Qgis.MessageLevel.Critical
            QgsMessageLog.logMessage(self.job.error, LOG_TAG, level)
            if self.job.details:
                QgsMessageLog.logMessage(self.job.details, LOG_TAG, Qgis.MessageLevel.Info)
        try:
            self.done.emit(bool(result), self.job)
        except Exception as exc:  # noqa: BLE001 - a failing receiver must end in the log, not a traceback dialog
            QgsMessageLog.logMessage(f"Align-CR could not finish the run: {type(exc).__name__}: {exc}", LOG_TAG,
                                     Qgis.MessageLevel.Critical)


ProgressFn = Callable[[float, str], None]


def _mapped(emit: ProgressFn, stages: Any) -> ProgressFn:
    """The child's progress events through ``stages.update`` (a run's stages onto one bar), when a step has any."""
    if stages is None:
        return emit
    return lambda fraction, message: emit(*stages.update(fraction, message))


def _watched(log: Callable[[str], None], emit: ProgressFn, stages: Any) -> Callable[[str], None]:
    """Log each line; a step whose progress is read from its output (pip: ``stages.line``) also moves the bar."""
    if not hasattr(stages, "line"):
        return log

    def on_line(line: str) -> None:
        log(line)
        found = stages.line(line)
        if found is not None:
            emit(*found)

    return on_line


def _ticked(emit: ProgressFn, stages: Any) -> Callable[[], None]:
    """Between lines, a step that can measure its progress (pip's download so far: ``stages.tick``) reports it."""
    if not hasattr(stages, "tick"):
        return lambda: None

    def on_tick() -> None:
        found = stages.tick()
        if found is not None:
            emit(*found)

    return on_tick
