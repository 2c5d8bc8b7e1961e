"""``aligncr:ndvi`` — NDVI of an optical raster through ``python -m engine ndvi`` (float32, nodata −9999)."""

from __future__ import annotations

from typing import Any

from qgis.core import (
    QgsProcessingContext,
    QgsProcessingFeedback,
    QgsProcessingLayerPostProcessorInterface,
    QgsProcessingParameterBand,
    QgsProcessingParameterRasterDestination,
    QgsProcessingParameterRasterLayer,
)

from aligncr_qgis.algorithms.base import EngineAlgorithm, tr
from aligncr_qgis.run_options import absolute_name
from aligncr_qgis.styling import style_ndvi


class _NdviStyler(QgsProcessingLayerPostProcessorInterface):
    def postProcessLayer(self, layer: Any, context: Any, feedback: Any) -> None:  # noqa: N802 - QGIS API
        style_ndvi(layer)


class NdviAlgorithm(EngineAlgorithm):
    INPUT, BAND_R, BAND_NIR, OUTPUT = "INPUT", "BAND_R", "BAND_NIR", "OUTPUT"

    def __init__(self) -> None:
        super().__init__()
        self._styler = _NdviStyler()

    def name(self) -> str:
        return "ndvi"

    def displayName(self) -> str:  # noqa: N802 - QGIS API
        return tr("NDVI (Align-CR engine)")

    def shortHelpString(self) -> str:  # noqa: N802 - QGIS API
        return (tr("NDVI = (NIR − R) / (NIR + R) of an optical raster, e.g. a declouded image. Nodata is −9999.")
                + self.defaults_help())

    def initAlgorithm(self, config: Any = None) -> None:  # noqa: N802 - QGIS API
        self.addParameter(QgsProcessingParameterRasterLayer(self.INPUT, tr("Optical image")))
        # optional + default: QGIS 3.22's band parameter rejects an omitted value instead of using the default
        self.addParameter(QgsProcessingParameterBand(self.BAND_R, tr("Red band"), 3, self.INPUT, optional=True))
        self.addParameter(QgsProcessingParameterBand(self.BAND_NIR, tr("Near-infrared band"), 4, self.INPUT,
                                                     optional=True))
        self.addParameter(QgsProcessingParameterRasterDestination(self.OUTPUT, tr("NDVI")))

    def processAlgorithm(self, parameters: dict[str, Any], context: QgsProcessingContext,  # noqa: N802
                         feedback: QgsProcessingFeedback) -> dict[str, Any]:
        src = self.raster_path(parameters, self.INPUT, context)
        red = self.parameterAsInt(parameters, self.BAND_R, context) or 3
        nir = self.parameterAsInt(parameters, self.BAND_NIR, context) or 4
        out = self.parameterAsOutputLayer(parameters, self.OUTPUT, context)
        # The engine's --bands is B,G,R,NIR; only R and NIR enter NDVI, B and G are placeholders.
        self.run_engine(["ndvi", "--optical", str(src), "--out", absolute_name(out), "--bands", f"1,1,{red},{nir}"],
                        feedback, progress_json=False)
        if context.willLoadLayerOnCompletion(out):
            context.layerToLoadOnCompletionDetails(out).setPostProcessor(self._styler)
        return {self.OUTPUT: out}
