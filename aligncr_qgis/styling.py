"""How results look when they land in the project: RGB from the band mapping, 2–98 % cumulative-cut stretch.

Reflectance rasters look black with QGIS's default min/max stretch (a few bright cloud remnants or nodata
outliers set the max), so the declouded layer gets the cumulative-cut 2–98 % stretch on its R, G and B bands. The
NDVI layer gets a fixed −1…1 red-yellow-green ramp so two runs are visually comparable.
"""

from __future__ import annotations

from qgis.core import (
    QgsColorRampShader,
    QgsContrastEnhancement,
    QgsMultiBandColorRenderer,
    QgsRasterLayer,
    QgsRasterMinMaxOrigin,
    QgsRasterShader,
    QgsSingleBandPseudoColorRenderer,
    QgsStyle,
)

CUT_LOWER, CUT_UPPER = 0.02, 0.98


def style_rgb(layer: QgsRasterLayer, red: int, green: int, blue: int) -> None:
    """Multiband colour renderer on (red, green, blue) with a 2–98 % cumulative-cut stretch."""
    renderer = QgsMultiBandColorRenderer(layer.dataProvider(), red, green, blue)
    layer.setRenderer(renderer)
    origin = QgsRasterMinMaxOrigin()
    origin.setLimits(QgsRasterMinMaxOrigin.CumulativeCut)
    origin.setCumulativeCutLower(CUT_LOWER)
    origin.setCumulativeCutUpper(CUT_UPPER)
    origin.setExtent(QgsRasterMinMaxOrigin.WholeRaster)
    origin.setStatAccuracy(QgsRasterMinMaxOrigin.Estimated)
    renderer.setMinMaxOrigin(origin)
    layer.setContrastEnhancement(
        QgsContrastEnhancement.StretchToMinimumMaximum,
        QgsRasterMinMaxOrigin.CumulativeCut,
        layer.extent(),
        250000,
    )
    layer.triggerRepaint()


def style_ndvi(layer: QgsRasterLayer) -> None:
    """Single-band pseudocolour, RdYlGn from −1 to 1."""
    ramp = QgsStyle.defaultStyle().colorRamp("RdYlGn")
    fn = QgsColorRampShader(-1.0, 1.0, ramp, QgsColorRampShader.Interpolated)
    fn.classifyColorRamp(11, 1, layer.extent(), layer.dataProvider())
    shader = QgsRasterShader()
    shader.setRasterShaderFunction(fn)
    renderer = QgsSingleBandPseudoColorRenderer(layer.dataProvider(), 1, shader)
    renderer.setClassificationMin(-1.0)
    renderer.setClassificationMax(1.0)
    layer.setRenderer(renderer)
    layer.triggerRepaint()
