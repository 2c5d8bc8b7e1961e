"""What every Align-CR Processing algorithm shares: running the engine with a QgsProcessingFeedback.

``processAlgorithm`` already runs in a background thread (or in ``qgis_process``), so the child process is waited
for synchronously here; progress goes to ``feedback.setProgress``, engine warnings to ``pushWarning``, engine
logging to the console text, and ``feedback.isCanceled()`` stops the child within one tile. Engine failures become
a :class:`QgsProcessingException` carrying the engine's one-line message — never a Python traceback.
"""

from __future__ import annotations

from typing import Any

from qgis.core import (
    QgsProcessingAlgorithm,
    QgsProcessingContext,
    QgsProcessingException,
    QgsProcessingFeedback,
    QgsProcessingParameterDefinition,
    QgsProcessingParameterEnum,
    QgsRasterLayer,
)
from qgis.PyQt.QtCore import QCoreApplication
from qgis.PyQt.QtGui import QIcon

from aligncr_qgis.engine_process import EngineOutcome, EngineProcess, EngineRunError
from aligncr_qgis.layers import LayerError, layer_path
from aligncr_qgis.paths import engine_root, help_url, icon_path, resolve_python


def tr(text: str) -> str:
    """``text`` in the user's language when a translation is installed (Processing algorithms are no QObjects)."""
    return QCoreApplication.translate("AlignCR", text)


class EngineAlgorithm(QgsProcessingAlgorithm):
    """Base class; subclasses define parameters and build the engine arguments."""

    def group(self) -> str:
        return tr("Cloud removal")

    def groupId(self) -> str:  # noqa: N802 - QGIS API
        return "cloudremoval"

    def icon(self) -> QIcon:
        return QIcon(icon_path())

    def helpUrl(self) -> str:  # noqa: N802 - QGIS API
        return help_url()

    def createInstance(self) -> EngineAlgorithm:  # noqa: N802 - QGIS API
        return type(self)()

    def defaults_help(self) -> str:
        """The help's list of every parameter's default, read from the parameter definitions themselves (so the
        help cannot drift from them); parameters without a default say whether they are optional."""
        lines = []
        for param in self.parameterDefinitions():
            optional = bool(param.flags() & QgsProcessingParameterDefinition.Flag.FlagOptional)
            lines.append(f"{param.name()}: {_default_text(param, optional)}")
        return "\n\nDefaults:\n" + "\n".join(lines) if lines else ""

    def raster_path(self, parameters: dict[str, Any], name: str, context: QgsProcessingContext,
                    optional: bool = False) -> str | None:
        layer: QgsRasterLayer | None = self.parameterAsRasterLayer(parameters, name, context)
        if layer is None:
            if optional:
                return None
            raise QgsProcessingException(tr("{0}: no raster layer given").format(name))
        try:
            return layer_path(layer)
        except LayerError as exc:
            raise QgsProcessingException(f"{name}: {exc}") from None

    def run_engine(self, args: list[str], feedback: QgsProcessingFeedback | None,
                   progress_json: bool = True, stages: Any = None) -> EngineOutcome:
        """Run the engine with ``args``; ``stages`` (a :class:`~aligncr_qgis.run_progress.RunProgress`) spreads
        the child's per-stage progress over the one bar, as the dialog does."""
        feedback = feedback or QgsProcessingFeedback()
        root = engine_root()
        if root is None:
            raise QgsProcessingException(tr("the engine package is missing next to the plugin; reinstall the plugin"))
        python = resolve_python(_saved_python())

        def on_progress(fraction: float, message: str) -> None:
            if stages is not None:
                fraction, message = stages.update(fraction, message)
            feedback.setProgress(100.0 * fraction)
            if message:
                feedback.setProgressText(message)

        proc = EngineProcess(
            python=python,
            engine_root=str(root),
            on_progress=on_progress,
            on_warning=feedback.pushWarning,
            on_log=feedback.pushConsoleInfo,
            is_cancelled=feedback.isCanceled,
        )
        try:
            return proc.run(args, progress_json=progress_json)
        except EngineRunError as exc:
            if exc.details:
                feedback.pushDebugInfo(exc.details)
            raise QgsProcessingException(str(exc)) from None


def _default_text(param: QgsProcessingParameterDefinition, optional: bool) -> str:
    """``256``, ``Auto-detect`` (an enum's option, not its index), ``yes``/``no``; else optional/required."""
    value = param.defaultValue()
    if value is None or value == "":
        return "none (optional)" if optional else "none (required)"
    if isinstance(param, QgsProcessingParameterEnum) and not param.usesStaticStrings():
        options = param.options()
        return options[int(value)] if str(value).isdigit() and int(value) < len(options) else str(value)
    if isinstance(value, bool):
        return "yes" if value else "no"
    return str(value)


def _saved_python() -> str:
    """The interpreter saved by the dialog (QgsSettings is safe to read from the algorithm's thread)."""
    from qgis.core import QgsSettings

    from aligncr_qgis.settings import PREFIX

    return str(QgsSettings().value(PREFIX + "python", "") or "")
