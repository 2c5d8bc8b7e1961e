"""Processing provider ``aligncr``: declouding, evaluation, NDVI and fine-tuning (*Train on my area*) as ordinary
QGIS Processing algorithms.

Being Processing algorithms is what gives them the model builder, batch mode, the Python console
(``processing.run("aligncr:declouding", {...})``) and headless ``qgis_process run aligncr:declouding`` for free.
"""

from __future__ import annotations

from qgis.core import QgsProcessingProvider
from qgis.PyQt.QtGui import QIcon

from aligncr_qgis.algorithms.base import tr
from aligncr_qgis.paths import icon_path


class AlignCRProvider(QgsProcessingProvider):
    def id(self) -> str:
        return "aligncr"

    def name(self) -> str:
        return "Align-CR"

    def longName(self) -> str:  # noqa: N802 - QGIS API
        return tr("Align-CR cloud removal (SAR-guided)")

    def icon(self) -> QIcon:
        return QIcon(icon_path())

    def loadAlgorithms(self) -> None:  # noqa: N802 - QGIS API
        from aligncr_qgis.algorithms.declouding import DecloudingAlgorithm
        from aligncr_qgis.algorithms.evaluate import EvaluateAlgorithm
        from aligncr_qgis.algorithms.finetune import FinetuneAlgorithm
        from aligncr_qgis.algorithms.ndvi import NdviAlgorithm

        for alg in (DecloudingAlgorithm(), EvaluateAlgorithm(), NdviAlgorithm(), FinetuneAlgorithm()):
            self.addAlgorithm(alg)
