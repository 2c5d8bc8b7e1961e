"""How results look when they land in the project: RGB from the band mapping, 2–98 % cumulative-cut stretch.

Reflectance rasters look black with QGIS's default min/max stretch (a few bright cloud remnants or nodata
outliers set the max), so the declouded layer gets the cumulative-cut 2–98 % stretch on its R, G and B bands. The
NDVI layer gets a red-yellow-green ramp over its own 2–98 % range (a fixed −1…1 left most scenes in two yellowish
shades). The cloudy input can be drawn with the result's band mapping and its very min/max numbers
(:func:`style_like`), so the before/after comparison is fair — as a named style of that layer only
(:func:`restyle_like`), so its own look is one click away (issue 28: the analyst's reference turned near-black).
The QA layer (percent of each pixel from the model) is transparent where the pixel is as acquired and a translucent
amber→magenta where the model's output is blended in → reconstructed, so it can lie over the result and show what
was made up. The
confidence layer (the spread of the model's output over test-time flips/rotations, reflectance) is a Magma heat
map stretched from 0 to its 98th percentile — a few extreme pixels would otherwise wash out the rest — and
transparent at 0, where the pixel is as acquired, so it too can lie over the result.
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
from qgis.PyQt.QtGui import QColor

CUT_LOWER, CUT_UPPER = 0.02, 0.98
CONFIDENCE_RAMP, CONFIDENCE_CLASSES = "Magma", 8
MIN_SPREAD_MAX = 1e-4  # stretch floor (reflectance) for a layer that is all (or nearly all) 0


def style_rgb(layer: QgsRasterLayer, red: int, green: int, blue: int) -> None:
    """Multiband colour renderer on (red, green, blue) with a 2–98 % cumulative-cut stretch."""
    renderer = QgsMultiBandColorRenderer(layer.dataProvider(), red, green, blue)
    layer.setRenderer(renderer)
    origin = QgsRasterMinMaxOrigin()
    origin.setLimits(QgsRasterMinMaxOrigin.Limits.CumulativeCut)
    origin.setCumulativeCutLower(CUT_LOWER)
    origin.setCumulativeCutUpper(CUT_UPPER)
    origin.setExtent(QgsRasterMinMaxOrigin.Extent.WholeRaster)
    origin.setStatAccuracy(QgsRasterMinMaxOrigin.StatAccuracy.Estimated)
    renderer.setMinMaxOrigin(origin)
    layer.setContrastEnhancement(
        QgsContrastEnhancement.ContrastEnhancementAlgorithm.StretchToMinimumMaximum,
        QgsRasterMinMaxOrigin.Limits.CumulativeCut,
        layer.extent(),
        250000,
    )
    layer.triggerRepaint()


def style_ndvi(layer: QgsRasterLayer) -> None:
    """Single-band pseudocolour, RdYlGn over the layer's 2–98 % cumulative cut (−1…1 when the layer is flat)."""
    low, high = layer.dataProvider().cumulativeCut(1, CUT_LOWER, CUT_UPPER, layer.extent(), 250000)
    low, high = (float(low), float(high)) if high > low else (-1.0, 1.0)
    ramp = QgsStyle.defaultStyle().colorRamp("RdYlGn")
    fn = QgsColorRampShader(low, high, ramp, QgsColorRampShader.Type.Interpolated)
    fn.classifyColorRamp(11, 1, layer.extent(), layer.dataProvider())
    shader = QgsRasterShader()
    shader.setRasterShaderFunction(fn)
    renderer = QgsSingleBandPseudoColorRenderer(layer.dataProvider(), 1, shader)
    renderer.setClassificationMin(low)
    renderer.setClassificationMax(high)
    layer.setRenderer(renderer)
    layer.triggerRepaint()


def style_like(layer: QgsRasterLayer, result: QgsRasterLayer, red: int, green: int, blue: int) -> None:
    """Draw an input (the cloudy optical, the reference) with the result's band mapping and the result's stretch —
    the same min/max numbers, not the input's own cut, which clouds would push up — so both compare fairly."""
    source = result.renderer()
    if not isinstance(source, QgsMultiBandColorRenderer):
        return
    renderer = QgsMultiBandColorRenderer(layer.dataProvider(), red, green, blue)
    for band, theirs, setter in ((red, source.redContrastEnhancement(), renderer.setRedContrastEnhancement),
                                 (green, source.greenContrastEnhancement(), renderer.setGreenContrastEnhancement),
                                 (blue, source.blueContrastEnhancement(), renderer.setBlueContrastEnhancement)):
        if theirs is None:
            continue
        ce = QgsContrastEnhancement(layer.dataProvider().dataType(band))
        ce.setContrastEnhancementAlgorithm(QgsContrastEnhancement.ContrastEnhancementAlgorithm.StretchToMinimumMaximum)
        ce.setMinimumValue(theirs.minimumValue())
        ce.setMaximumValue(theirs.maximumValue())
        setter(ce)
    layer.setRenderer(renderer)
    layer.triggerRepaint()


LIKE_RESULT_STYLE = "like the Align-CR result"


def restyle_like(layer: QgsRasterLayer, result: QgsRasterLayer, red: int, green: int, blue: int) -> str:
    """:func:`style_like` as a style of its own in the layer's style manager (layer menu ▸ Styles): the style the
    layer had stays in the list under its name and the new look becomes :data:`LIKE_RESULT_STYLE`. Returns the
    name of the style to go back to."""
    manager = layer.styleManager()
    previous = manager.currentStyle()
    if previous == LIKE_RESULT_STYLE:  # restyled by an earlier run: the user's own is the one noted then
        previous = str(layer.customProperty("aligncr/style_before", "")) or previous
    else:
        manager.removeStyle(LIKE_RESULT_STYLE)
        manager.addStyleFromLayer(LIKE_RESULT_STYLE)  # a copy of the current look, made current unchanged …
        manager.setCurrentStyle(LIKE_RESULT_STYLE)  # … which keeps the user's own under its name
        layer.setCustomProperty("aligncr/style_before", previous)
    style_like(layer, result, red, green, blue)  # … then restyled
    return previous


def style_qa(layer: QgsRasterLayer) -> None:
    """Model share 0–100 %: transparent at 0 (as acquired), amber (blend) to magenta (reconstructed); the
    no-data value (255, set in the file) is transparent as any raster's."""
    fn = QgsColorRampShader(0.0, 100.0)
    fn.setColorRampType(QgsColorRampShader.Type.Interpolated)
    fn.setColorRampItemList([
        QgsColorRampShader.ColorRampItem(0.0, QColor(0, 0, 0, 0), "as acquired"),
        QgsColorRampShader.ColorRampItem(1.0, QColor(255, 190, 0, 110), "blend"),
        QgsColorRampShader.ColorRampItem(100.0, QColor(220, 0, 140, 170), "reconstructed"),
    ])
    shader = QgsRasterShader()
    shader.setRasterShaderFunction(fn)
    renderer = QgsSingleBandPseudoColorRenderer(layer.dataProvider(), 1, shader)
    renderer.setClassificationMin(0.0)
    renderer.setClassificationMax(100.0)
    layer.setRenderer(renderer)
    layer.triggerRepaint()


def style_confidence(layer: QgsRasterLayer) -> None:
    """TTA spread: transparent at 0 (as acquired), then the Magma ramp up to the 98th percentile of the layer (all
    higher values take its last colour); the no-data value (-1, set in the file) is transparent as any raster's."""
    _low, high = layer.dataProvider().cumulativeCut(1, 0.0, CUT_UPPER, layer.extent(), 250000)
    high = max(float(high), MIN_SPREAD_MAX)
    ramp = QgsStyle.defaultStyle().colorRamp(CONFIDENCE_RAMP)
    items = [QgsColorRampShader.ColorRampItem(0.0, QColor(0, 0, 0, 0), "0 (as acquired)")]
    for k in range(1, CONFIDENCE_CLASSES + 1):
        value = high * k / CONFIDENCE_CLASSES
        items.append(QgsColorRampShader.ColorRampItem(value, ramp.color(k / CONFIDENCE_CLASSES), f"{value:.4f}"))
    fn = QgsColorRampShader(0.0, high)
    fn.setColorRampType(QgsColorRampShader.Type.Interpolated)
    fn.setClip(False)  # above the 98th percentile: the last colour
    fn.setColorRampItemList(items)
    shader = QgsRasterShader()
    shader.setRasterShaderFunction(fn)
    renderer = QgsSingleBandPseudoColorRenderer(layer.dataProvider(), 1, shader)
    renderer.setClassificationMin(0.0)
    renderer.setClassificationMax(high)
    layer.setRenderer(renderer)
    layer.triggerRepaint()
