"""The confidence layer in a real (offscreen) QGIS: the dialog's check box reaches the engine as --confidence
<output>_confidence.tif and a real run loads it as a heat map; the Processing output runs end to end with the
bundled weights."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("qgis.core")

import rasterio  # noqa: E402
from qgis.core import QgsRasterLayer  # noqa: E402

from aligncr_qgis.dialog import AlignCRDialog  # noqa: E402
from aligncr_qgis.styling import CUT_UPPER, style_confidence  # noqa: E402
from tests.qgis_fixtures import close_dialog, processing_provider, project  # noqa: E402, F401 (fixtures)
from tests.qgis_helpers import add_layer, make_scene, wait_for  # noqa: E402

pytestmark = pytest.mark.qgis
NAME = "confidence (TTA spread)"


def _bundled() -> Path:
    from engine.stream.mode import BUNDLED

    if not BUNDLED["aligncr-lite"].is_file():
        pytest.skip("no bundled weights")
    return BUNDLED["aligncr-lite"]



def assert_heat_map(layer: QgsRasterLayer, spread: np.ndarray) -> None:
    """Single-band pseudocolour from a transparent 0 up to the layer's 98th percentile, no data -1."""
    renderer = layer.renderer()
    assert renderer.type() == "singlebandpseudocolor"
    items = renderer.shader().rasterShaderFunction().colorRampItemList()
    assert items[0].value == 0.0 and items[0].color.alpha() == 0
    assert all(item.color.alpha() == 255 for item in items[1:])
    top = float(np.quantile(spread[spread >= 0], CUT_UPPER))
    assert items[-1].value == pytest.approx(top, rel=0.1) and renderer.classificationMax() == items[-1].value
    assert layer.dataProvider().sourceNoDataValue(1) == -1.0


def test_dialog_check_box_reaches_the_engine_and_persists(project, qgis_iface, tmp_path: Path) -> None:
    opt_path, sar_path = make_scene(tmp_path)
    dlg = AlignCRDialog(qgis_iface)
    try:
        dlg.optical_combo.setLayer(add_layer(project, opt_path, "optical"))
        dlg.sar_combo.setLayer(add_layer(project, sar_path, "sar"))
        dlg.output_widget.setFilePath(str(tmp_path / "out.tif"))
        assert not dlg.confidence_check.isChecked()
        assert "--confidence" not in dlg.build_request().to_args()
        dlg.confidence_check.setChecked(True)
        args = dlg.build_request().to_args()
        assert args[args.index("--confidence") + 1] == str(tmp_path / "out_confidence.tif")
        assert "--tta" not in args  # the engine's default for a confidence layer (4)
    finally:
        close_dialog(dlg)  # saves the settings
    again = AlignCRDialog(qgis_iface)
    try:
        assert again.confidence_check.isChecked()
    finally:
        close_dialog(again)


@pytest.mark.slow
def test_dialog_run_loads_the_confidence_heat_map(project, qgis_iface, tmp_path: Path) -> None:
    weights = _bundled()
    opt_path, sar_path = make_scene(tmp_path)
    out = tmp_path / "declouded.tif"
    dlg = AlignCRDialog(qgis_iface)
    try:
        dlg.optical_combo.setLayer(add_layer(project, opt_path, "optical"))
        dlg.sar_combo.setLayer(add_layer(project, sar_path, "sar"))
        dlg.output_widget.setFilePath(str(out))
        assert dlg.select_model(str(weights))
        dlg.set_mode("raw")  # the model everywhere (the best mode keeps this cloudless scene as acquired)
        dlg.confidence_check.setChecked(True)
        finished: list[bool] = []
        dlg.runFinished.connect(finished.append)
        assert dlg.run() is not None
        assert wait_for(lambda: bool(finished), 180), "the task did not finish"
        assert finished == [True], dlg.status_label.text()
        with rasterio.open(tmp_path / "declouded_confidence.tif") as ds, rasterio.open(out) as res:
            assert (ds.transform, ds.shape, ds.dtypes) == (res.transform, res.shape, ("float32",))
            spread = ds.read(1)
        assert spread.max() > 0  # the bundled model's output changes a little when the tile turns
        layer = next(lyr for lyr in project.mapLayers().values() if lyr.name() == NAME)
        assert_heat_map(layer, spread)
    finally:
        close_dialog(dlg)


@pytest.mark.slow
def test_processing_confidence_output_loads_styled(processing_provider, project, tmp_path: Path) -> None:
    """`aligncr:declouding` with CONFIDENCE and TTA 8, its results loaded as the Processing toolbox loads them: a
    float32 raster on the output grid, a heat map in the project (the QA layer styled too, the result in RGB)."""
    import processing

    weights = _bundled()
    opt, sar = make_scene(tmp_path)
    conf, out, qa = tmp_path / "conf.tif", tmp_path / "out.tif", tmp_path / "qa.tif"
    result = processing.runAndLoadResults("aligncr:declouding", {
        "OPTICAL": str(opt), "SAR": str(sar), "WEIGHTS": str(weights), "TILE": 64, "OVERLAP": 8, "TTA": 8,
        "MODE": "raw", "CONFIDENCE": str(conf), "QA": str(qa), "OUTPUT": str(out)})  # fmt: skip
    assert result["CONFIDENCE"] == str(conf)
    loaded = {Path(lyr.source()).name: lyr for lyr in project.mapLayers().values()}
    assert loaded["qa.tif"].renderer().type() == "singlebandpseudocolor"
    rgb = loaded["out.tif"].renderer()
    assert (rgb.redBand(), rgb.greenBand(), rgb.blueBand()) == (3, 2, 1)  # B, G, R, NIR mapped, not QGIS's 1, 2, 3
    with rasterio.open(conf) as ds, rasterio.open(out) as res:
        assert (ds.crs, ds.transform, ds.shape) == (res.crs, res.transform, res.shape)
        assert ds.dtypes == ("float32",) and ds.descriptions == ("TTA spread (reflectance)",)
        assert ds.tags()["ALIGNCR_TTA"] == "8"
        spread = ds.read(1)
    assert (spread >= 0).all() and spread.max() > 0
    assert_heat_map(loaded["conf.tif"], spread)
    layer = QgsRasterLayer(str(conf), "confidence")
    style_confidence(layer)
    assert_heat_map(layer, spread)
