"""The dialog's offer to warp a geographic optical layer to its UTM zone (the engine needs a CRS in metres).

A part of :class:`aligncr_qgis.dialog.AlignCRDialog` (a mixin); its button sits beside the issues line and shows only
when the check finds a geographic CRS.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from qgis.core import (
    QgsApplication,
    QgsCoordinateReferenceSystem,
    QgsCoordinateTransform,
    QgsProject,
    QgsRasterLayer,
    QgsTask,
)

from aligncr_qgis import layers as L


class ReprojectOffer:
    """*Reproject optical to UTM…*: a background warp whose result becomes the optical input."""

    def reproject_optical(self) -> QgsTask | None:
        """Warp the (geographic) optical layer to its UTM zone next to the output, in the background.

        A full PlanetScope scene takes a while to warp, so it is a QgsTask like the run; when it finishes the new
        layer is added to the project and selected as the optical input (``reprojected`` is emitted).
        """
        layer = self.optical_combo.currentLayer()
        if layer is None or self.reproject_task is not None:
            return None
        centre = layer.extent().center()
        wgs84 = QgsCoordinateReferenceSystem("EPSG:4326")
        if layer.crs() != wgs84:
            centre = QgsCoordinateTransform(layer.crs(), wgs84, QgsProject.instance()).transform(centre)
        zone = min(60, max(1, int((centre.x() + 180.0) // 6) + 1))
        epsg = (32600 if centre.y() >= 0 else 32700) + zone
        try:
            src = L.layer_path(layer)
        except L.LayerError as exc:
            self._error(str(exc))
            return None
        folder = os.path.dirname(self.output_widget.filePath()) or os.path.dirname(src)
        if not os.path.isdir(folder):
            folder = os.path.dirname(src)
        dst = os.path.join(folder, f"{Path(src).stem}_utm{zone}.tif")
        name = f"{layer.name()} (UTM {zone})"

        def warp(task: QgsTask) -> str:
            from osgeo import gdal

            gdal.UseExceptions()

            def progress(fraction: float, *_: Any) -> int:
                task.setProgress(100.0 * fraction)
                return 0 if task.isCanceled() else 1  # GDAL stops (and raises) on 0

            ds = gdal.Warp(dst, src, dstSRS=f"EPSG:{epsg}", resampleAlg="bilinear",
                           creationOptions=["COMPRESS=DEFLATE", "TILED=YES"], callback=progress)
            ds = None  # noqa: F841 - flush and close before QGIS opens it
            return dst

        def finished(exception: Exception | None, result: str | None = None) -> None:
            self.reproject_task = None
            self.reproject_button.setEnabled(True)
            if exception is not None or not result:
                if os.path.exists(dst):
                    os.remove(dst)
                self.status_label.setText("")
                self._error(self.tr("reprojection to EPSG:{0} failed: {1}").format(epsg, exception or 'cancelled'))
                return
            new = QgsRasterLayer(result, name)
            QgsProject.instance().addMapLayer(new)
            self.optical_combo.setLayer(new)
            self.status_label.setText(self.tr("Reprojected to EPSG:{0}: {1}").format(epsg, result))
            self.reprojected.emit(new)

        self.reproject_task = QgsTask.fromFunction(f"Align-CR: reproject {layer.name()} to EPSG:{epsg}", warp,
                                                   on_finished=finished)
        self.reproject_button.setEnabled(False)
        self.status_label.setText(self.tr("Reprojecting to EPSG:{0}…").format(epsg))
        QgsApplication.taskManager().addTask(self.reproject_task)
        return self.reproject_task
