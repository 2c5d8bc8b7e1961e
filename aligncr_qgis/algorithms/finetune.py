"""``aligncr:finetune`` — fine-tune the bundled model on an archive of the user's own area.

Runs ``python -m engine finetune`` (see :mod:`training.finetune`): the archive folder holds ``optical/*.tif``
(B, G, R, NIR; optional ``_mask`` cloud sidecars), ``sar/*.tif`` (VV, VH) and optionally ``dates.csv``, or products as
downloaded (:mod:`training.layout.products`). The output is
a ``.safetensors`` weights file with a model card (the held-out before/after/flat/fill table) that the declouding
algorithm and the dialog take as their model. Cancelling keeps the best weights so far in the output.
"""

from __future__ import annotations

import time
from typing import Any

from qgis.core import (
    QgsProcessingContext,
    QgsProcessingException,
    QgsProcessingFeedback,
    QgsProcessingOutputNumber,
    QgsProcessingOutputString,
    QgsProcessingParameterDefinition,
    QgsProcessingParameterFile,
    QgsProcessingParameterFileDestination,
    QgsProcessingParameterNumber,
    QgsProcessingParameterString,
)

from aligncr_qgis.algorithms.base import EngineAlgorithm, tr
from aligncr_qgis.finetune_request import (
    AUTO_PATCH,
    DEFAULT_BASE,
    FinetuneRequest,
    in_words,
    kept_weights,
    outcome_text,
)


class FinetuneAlgorithm(EngineAlgorithm):
    ARCHIVE, BASE, MINUTES, STEPS, OUTPUT = "ARCHIVE", "BASE", "MINUTES", "STEPS", "OUTPUT"
    PATCH, VAL, PAIR_DAYS, SAR_DAYS, DEVICE = "PATCH_SIZE", "VAL_FRACTION", "PAIR_DAYS", "SAR_MAX_DAYS", "DEVICE"
    LR, VAL_EVERY, BLOCK = "LEARNING_RATE", "VAL_EVERY", "BLOCK_CELLS"
    BEST_STEP, SUMMARY = "BEST_STEP", "SUMMARY"

    def name(self) -> str:
        return "finetune"

    def displayName(self) -> str:  # noqa: N802 - QGIS API
        return tr("Train on my area (fine-tune the model)")

    def shortHelpString(self) -> str:  # noqa: N802 - QGIS API
        return tr(
            "Fine-tunes the bundled model on an archive of your own area: a folder with optical/*.tif (Blue, Green, "
            "Red, NIR; optional NAME_mask.tif cloud masks), sar/*.tif (Sentinel-1 VV, VH) and optionally dates.csv. "
            "Products as downloaded work too: Sentinel-2 L1C/L2A and Sentinel-1 GRD .SAFE folders or .zip files, "
            "PlanetScope scenes with their UDM2, split NAME_VV.tif + NAME_VH.tif files. "
            "Cloudy acquisitions are paired with clear ones (real pairs) and clear ones get synthetic clouds; whole "
            "spatial blocks are held out for validation. The output weights carry a model card with the held-out "
            "table (before / after / flat / fill, inside and outside the cloud). Cancelling keeps the best weights "
            "so far."
        ) + self.defaults_help()

    def initAlgorithm(self, config: Any = None) -> None:  # noqa: N802 - QGIS API
        self.addParameter(QgsProcessingParameterFile(self.ARCHIVE, tr("Archive folder"),
                                                     behavior=QgsProcessingParameterFile.Behavior.Folder))
        self.addParameter(QgsProcessingParameterString(self.BASE, tr("Base model (bundled name or .safetensors)"),
                                                       DEFAULT_BASE))
        self.addParameter(QgsProcessingParameterNumber(self.MINUTES, tr("Time budget (minutes)"),
                                                       QgsProcessingParameterNumber.Type.Double, 30.0, minValue=0.0))
        self.addParameter(QgsProcessingParameterNumber(self.STEPS, tr("Step budget (0 = time only)"),
                                                       QgsProcessingParameterNumber.Type.Integer, 0, minValue=0))
        advanced = [
            QgsProcessingParameterNumber(self.PATCH, tr("Patch size (pixels; 0 = chosen from the archive)"),
                                         QgsProcessingParameterNumber.Type.Integer, AUTO_PATCH, minValue=0),
            QgsProcessingParameterNumber(self.BLOCK, tr("Held-out block side (patches)"),
                                         QgsProcessingParameterNumber.Type.Integer, 2, minValue=1),
            QgsProcessingParameterNumber(self.VAL, tr("Share of blocks held out for validation"),
                                         QgsProcessingParameterNumber.Type.Double, 0.25, minValue=0.01, maxValue=0.9),
            QgsProcessingParameterNumber(self.PAIR_DAYS, tr("Real pairs: clear image within (days)"),
                                         QgsProcessingParameterNumber.Type.Double, 30.0, minValue=0.0),
            QgsProcessingParameterNumber(self.SAR_DAYS, tr("Sentinel-1 within (days)"),
                                         QgsProcessingParameterNumber.Type.Double, 3.0, minValue=0.0),
            QgsProcessingParameterString(self.DEVICE, tr("Device (auto, cpu, cuda)"), "auto"),
            QgsProcessingParameterNumber(self.LR, tr("Learning rate (0 = default 1e-4)"),
                                         QgsProcessingParameterNumber.Type.Double, 0.0, minValue=0.0),
            QgsProcessingParameterNumber(self.VAL_EVERY, tr("Steps between validations (0 = default 25)"),
                                         QgsProcessingParameterNumber.Type.Integer, 0, minValue=0),
        ]
        for param in advanced:
            param.setFlags(param.flags() | QgsProcessingParameterDefinition.Flag.FlagAdvanced)
            self.addParameter(param)
        self.addParameter(QgsProcessingParameterFileDestination(self.OUTPUT, tr("Fine-tuned weights"),
                                                                "safetensors weights (*.safetensors)"))
        self.addOutput(QgsProcessingOutputNumber(self.BEST_STEP, tr("Step of the kept weights (0 = base)")))
        self.addOutput(QgsProcessingOutputString(self.SUMMARY, tr("Held-out summary")))

    def _request(self, parameters: dict[str, Any], context: QgsProcessingContext) -> FinetuneRequest:
        return FinetuneRequest(
            archive=self.parameterAsString(parameters, self.ARCHIVE, context),
            out=self.parameterAsFileOutput(parameters, self.OUTPUT, context),
            base=self.parameterAsString(parameters, self.BASE, context) or DEFAULT_BASE,
            minutes=self.parameterAsDouble(parameters, self.MINUTES, context),
            steps=self.parameterAsInt(parameters, self.STEPS, context),
            patch_size=self.parameterAsInt(parameters, self.PATCH, context),
            val_fraction=self.parameterAsDouble(parameters, self.VAL, context),
            pair_days=self.parameterAsDouble(parameters, self.PAIR_DAYS, context),
            sar_days=self.parameterAsDouble(parameters, self.SAR_DAYS, context),
            device=self.parameterAsString(parameters, self.DEVICE, context) or "auto",
            lr=self.parameterAsDouble(parameters, self.LR, context),
            val_every=self.parameterAsInt(parameters, self.VAL_EVERY, context),
            block_cells=self.parameterAsInt(parameters, self.BLOCK, context),
        )

    def processAlgorithm(self, parameters: dict[str, Any], context: QgsProcessingContext,  # noqa: N802
                         feedback: QgsProcessingFeedback) -> dict[str, Any]:
        req = self._request(parameters, context)
        why = req.choose_patch()
        if why:
            feedback.pushInfo(tr("PATCH_SIZE {0}").format(why))
        started = time.time()
        try:
            outcome = self.run_engine(req.to_args(), feedback)
        except QgsProcessingException as exc:
            if not feedback.isCanceled():
                raise QgsProcessingException(in_words(str(exc), processing=True)) from None
            kept = kept_weights(req.out, started)
            raise QgsProcessingException(tr("Cancelled; {0}").format(kept) if kept else
                                         tr("Cancelled before any weights were written")) from None
        summary = outcome_text(outcome.result)
        feedback.pushInfo(summary)
        return {self.OUTPUT: req.out, self.BEST_STEP: int(outcome.result.get("best_step", 0)), self.SUMMARY: summary}
