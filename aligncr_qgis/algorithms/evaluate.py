"""``aligncr:evaluate`` — metrics of a declouded image against a cloud-free reference, written as a report folder.

Runs ``python -m engine evaluate``: MAE/PSNR/SSIM/SAM inside and outside the clouds (and per land-cover class when
a land-cover raster is given), as the paper reports them, beside the engine's non-learned baselines (flat, fill).
The cloudy input is needed to know where the clouds were when no mask is given, and to make the baselines.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from qgis.core import (
    QgsProcessingContext,
    QgsProcessingFeedback,
    QgsProcessingOutputFile,
    QgsProcessingParameterBand,
    QgsProcessingParameterFolderDestination,
    QgsProcessingParameterRasterLayer,
)

from aligncr_qgis.algorithms.base import EngineAlgorithm, tr
from aligncr_qgis.run_options import absolute_name


class EvaluateAlgorithm(EngineAlgorithm):
    OPTICAL, PREDICTION, REFERENCE = "OPTICAL", "PREDICTION", "REFERENCE"
    LANDCOVER, MASK, OUTPUT, HTML = "LANDCOVER", "MASK", "OUTPUT", "HTML"
    BANDS = ("BAND_B", "BAND_G", "BAND_R", "BAND_NIR")

    def name(self) -> str:
        return "evaluate"

    def displayName(self) -> str:  # noqa: N802 - QGIS API
        return tr("Evaluate cloud removal against a reference")

    def shortHelpString(self) -> str:  # noqa: N802 - QGIS API
        return (
            tr("Compares a declouded image with the reference — a cloud-free acquisition of the same place — and "
            "writes a report folder "
            "(metrics inside/outside clouds, per land-cover class, figures), with the cloudy input and two "
            "non-learned baselines (flat colour, interpolation from the cloud's border) scored beside it and the "
            "output's margin over the best baseline inside the cloud.")
        ) + self.defaults_help()

    def initAlgorithm(self, config: Any = None) -> None:  # noqa: N802 - QGIS API
        self.addParameter(QgsProcessingParameterRasterLayer(self.OPTICAL, tr("Cloudy optical image")))
        # optional + default: QGIS 3.22's band parameter rejects an omitted value instead of using the default
        for i, (name, label) in enumerate(zip(self.BANDS, ("Blue", "Green", "Red", "Near infrared"))):
            self.addParameter(QgsProcessingParameterBand(name, tr("{0} band (all three images)").format(label), i + 1,
                                                         self.OPTICAL, optional=True))
        self.addParameter(QgsProcessingParameterRasterLayer(self.PREDICTION, tr("Declouded image")))
        self.addParameter(QgsProcessingParameterRasterLayer(self.REFERENCE, tr("Cloud-free reference")))
        self.addParameter(QgsProcessingParameterRasterLayer(self.LANDCOVER, tr("Land cover (ESA WorldCover)"),
                                                            optional=True))
        self.addParameter(QgsProcessingParameterRasterLayer(self.MASK, tr("Cloud mask"), optional=True))
        self.addParameter(QgsProcessingParameterFolderDestination(self.OUTPUT, tr("Report folder")))
        self.addOutput(QgsProcessingOutputFile(self.HTML, "Report page"))

    def processAlgorithm(self, parameters: dict[str, Any], context: QgsProcessingContext,  # noqa: N802
                         feedback: QgsProcessingFeedback) -> dict[str, Any]:
        out = absolute_name(self.parameterAsString(parameters, self.OUTPUT, context))
        args = [
            "evaluate",
            "--optical", str(self.raster_path(parameters, self.OPTICAL, context)),
            "--prediction", str(self.raster_path(parameters, self.PREDICTION, context)),
            "--reference", str(self.raster_path(parameters, self.REFERENCE, context)),
            "--out", out,
            "--bands", ",".join(str(self.parameterAsInt(parameters, b, context) or i + 1)
                                for i, b in enumerate(self.BANDS)),
        ]
        for flag, name in (("--landcover", self.LANDCOVER), ("--mask", self.MASK)):
            path = self.raster_path(parameters, name, context, optional=True)
            if path:
                args += [flag, path]
        outcome = self.run_engine(args, feedback, progress_json=False)
        for line in outcome.stdout:
            feedback.pushInfo(line)
        html = Path(out) / "report.html"
        if not html.is_file():
            html = next(iter(sorted(Path(out).glob("*.html"))), None) if Path(out).is_dir() else None
        return {self.OUTPUT: out, self.HTML: str(html) if html else None}
