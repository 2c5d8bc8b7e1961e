"""The toolbar dialog in a real (offscreen) QGIS: layer pickers, band auto-fill, inline validation, a background
run with the real engine (``identity``) that loads a styled layer, extent clipping, cancel, environment check."""

from __future__ import annotations

from pathlib import Path

import pytest

pytest.importorskip("qgis.core")

import rasterio  # noqa: E402
from qgis.core import QgsApplication, QgsRasterLayer, QgsRectangle, QgsSettings  # noqa: E402

from aligncr_qgis.dialog import AlignCRDialog  # noqa: E402
from aligncr_qgis.dialog import inputs as dialog_inputs  # noqa: E402
from aligncr_qgis.dialog import outputs as dialog_outputs  # noqa: E402
from aligncr_qgis.dialog.processing import EXTENT_CANVAS, EXTENT_LAYER  # noqa: E402
from tests.qgis_fixtures import close_dialog, dlg, project  # noqa: E402, F401 (fixtures)
from tests.qgis_helpers import PYTHON, add_layer, fake_engine, wait_for, write_optical, write_sar  # noqa: E402

pytestmark = pytest.mark.qgis



def choose(d: AlignCRDialog, optical: QgsRasterLayer, sar: QgsRasterLayer, out: Path) -> None:
    d.optical_combo.setLayer(optical)
    d.sar_combo.setLayer(sar)
    d.output_widget.setFilePath(str(out))
    d.validate()


def test_band_mapping_autofills_from_descriptions(project, dlg: AlignCRDialog, tmp_path: Path) -> None:
    path = write_optical(tmp_path / "shuffled.tif")
    with rasterio.open(path, "r+") as ds:  # NIR, R, G, B order, as some exports have
        for i, name in enumerate(("nir", "red", "green", "blue")):
            ds.set_band_description(i + 1, name)
    opt = add_layer(project, path, "shuffled")
    sar = add_layer(project, write_sar(tmp_path / "sar.tif"), "sar")
    choose(dlg, opt, sar, tmp_path / "out.tif")
    assert {r: c.currentBand() for r, c in dlg.optical_band_combos.items()} == {"B": 4, "G": 3, "R": 2, "NIR": 1}
    assert {r: c.currentBand() for r, c in dlg.sar_band_combos.items()} == {"VV": 1, "VH": 2}


def test_validation_messages_block_run(project, dlg: AlignCRDialog, tmp_path: Path) -> None:
    assert not dlg.run_button.isEnabled()
    opt = add_layer(project, write_optical(tmp_path / "opt.tif"), "optical")
    sar = add_layer(project, write_sar(tmp_path / "sar.tif"), "sar")  # EPSG:4326 vs UTM: overlap via transform
    choose(dlg, opt, sar, tmp_path / "out.tif")
    assert dlg.last_check.ok and dlg.run_button.isEnabled(), dlg.issue_messages()
    assert dlg.overlap_label.text().startswith("100.0 %")

    far = add_layer(project, write_sar(tmp_path / "far.tif", shift_m=50_000.0), "far")
    dlg.sar_combo.setLayer(far)
    assert not dlg.run_button.isEnabled()
    assert any("does not overlap" in m for m in dlg.issue_messages())

    half = add_layer(project, write_sar(tmp_path / "half.tif", shift_m=130.0), "half")
    dlg.sar_combo.setLayer(half)
    assert dlg.run_button.isEnabled()  # partial overlap is a warning
    assert any("covers only" in m for m in dlg.issue_messages())
    assert 0.0 < dlg.last_check.sar_overlap_percent < 100.0

    dlg.sar_combo.setLayer(sar)
    dlg.optical_band_combos["NIR"].setBand(1)
    assert any("same band twice" in m for m in dlg.issue_messages()) and not dlg.run_button.isEnabled()
    dlg.optical_band_combos["NIR"].setBand(4)

    three = add_layer(project, write_optical(tmp_path / "three.tif", bands=3), "three")
    dlg.optical_combo.setLayer(three)
    assert any("B, G, R and NIR are needed" in m for m in dlg.issue_messages())

    dlg.optical_combo.setLayer(opt)
    dlg.output_widget.setFilePath(str(tmp_path / "missing-dir" / "o.tif"))
    assert any("does not exist" in m for m in dlg.issue_messages()) and not dlg.run_button.isEnabled()


def test_geographic_optical_gets_reprojection_offer(project, dlg: AlignCRDialog, tmp_path: Path) -> None:
    geo = add_layer(project, write_optical(tmp_path / "geo.tif", crs="EPSG:4326"), "geo")
    sar = add_layer(project, write_sar(tmp_path / "sar.tif"), "sar")
    choose(dlg, geo, sar, tmp_path / "out.tif")
    assert any("not projected in metres" in m for m in dlg.issue_messages())
    assert not dlg.run_button.isEnabled() and not dlg.reproject_button.isHidden()
    got: list = []
    dlg.reprojected.connect(got.append)
    assert dlg.reproject_optical() is not None  # a background QgsTask
    assert wait_for(lambda: bool(got), 60), dlg.status_label.text()
    new = got[0]
    assert new.crs().authid() == "EPSG:32633" and (tmp_path / "geo_utm33.tif").is_file()
    assert dlg.optical_combo.currentLayer() == new
    assert not any("not projected" in m for m in dlg.issue_messages()) and dlg.reproject_button.isHidden()


def run_and_wait(d: AlignCRDialog, timeout: float = 90.0) -> list[bool]:
    finished: list[bool] = []
    d.runFinished.connect(finished.append)
    assert d.run() is not None
    assert not d.run_button.isEnabled() and d.cancel_button.isEnabled()
    assert wait_for(lambda: bool(finished), timeout), "the task did not finish"
    return finished


@pytest.mark.slow
def test_run_identity_loads_styled_layer_and_ndvi(project, dlg: AlignCRDialog, tmp_path: Path) -> None:
    opt_path = write_optical(tmp_path / "opt.tif")
    opt = add_layer(project, opt_path, "optical")
    sar = add_layer(project, write_sar(tmp_path / "sar.tif"), "sar")
    out = tmp_path / "declouded.tif"
    choose(dlg, opt, sar, out)
    dlg.set_mode("raw")  # the model everywhere (the best mode keeps the clear pixels: tests/test_qgis_mode.py)
    assert dlg.select_model("identity")
    dlg.ndvi_check.setChecked(True)
    dlg.qa_check.setChecked(True)
    dlg.style_optical_check.setChecked(True)  # off by default (issue 28)
    assert run_and_wait(dlg) == [True], dlg.status_label.text()
    assert dlg.progress.value() == 100 and "Done" in dlg.status_label.text()
    assert "model's output is in 100.0 % of the pixels" in dlg.result_label.text()  # whole, not clipped (issue 28)
    with rasterio.open(opt_path) as a, rasterio.open(out) as b:
        assert (a.read() == b.read()).all() and a.transform == b.transform
    names = [lyr.name() for lyr in project.mapLayers().values()]
    assert "declouded" in names and "NDVI" in names
    qa = next(lyr for lyr in project.mapLayers().values() if lyr.name() == "QA (model share %)")
    assert qa.renderer().type() == "singlebandpseudocolor"
    with rasterio.open(tmp_path / "declouded_qa.tif") as ds:
        assert (ds.read(1) == 100).all()  # identity everywhere: every pixel is the model's output
    result = next(lyr for lyr in project.mapLayers().values() if lyr.name() == "declouded")
    renderer = result.renderer()
    assert (renderer.redBand(), renderer.greenBand(), renderer.blueBand()) == (3, 2, 1)
    ce = renderer.redContrastEnhancement()
    with rasterio.open(out) as b:
        red = b.read(3)
    assert red.min() < ce.minimumValue() < ce.maximumValue() < red.max()  # 2–98 % cut, not min/max
    assert (tmp_path / "declouded_ndvi.tif").is_file()
    assert QgsSettings().value("aligncr/make_ndvi") in (True, "true")  # settings persisted on run
    # Issue 16: one group per run named after the scene and run, on top; the RGB result first and the only one
    # shown; the input drawn with the result's bands and very stretch; the NDVI ramp over the data's 2–98 %.
    group = project.layerTreeRoot().children()[0]
    assert group.name().startswith("optical — identity ")
    assert [n.name() for n in group.children()] == ["declouded", "NDVI", "QA (model share %)"]
    assert [n.itemVisibilityChecked() for n in group.children()] == [True, False, False]
    theirs = opt.renderer()
    assert (theirs.redBand(), theirs.greenBand(), theirs.blueBand()) == (3, 2, 1)
    for band in ("red", "green", "blue"):
        mine, other = (getattr(r, f"{band}ContrastEnhancement")() for r in (renderer, theirs))
        assert (other.minimumValue(), other.maximumValue()) == (mine.minimumValue(), mine.maximumValue())
    ndvi = next(lyr for lyr in project.mapLayers().values() if lyr.name() == "NDVI").renderer()
    with rasterio.open(tmp_path / "declouded_ndvi.tif") as ds:
        values = ds.read(1)[ds.read_masks(1) > 0]
    assert values.min() < ndvi.classificationMin() < ndvi.classificationMax() < values.max()
    assert (ndvi.classificationMin(), ndvi.classificationMax()) != (-1.0, 1.0)


def test_run_with_scene_check_tells_the_verdict(project, dlg: AlignCRDialog, tmp_path: Path) -> None:
    # identity returns the cloudy input: under synthetic clouds it loses to a flat colour, and the dialog says so
    opt = add_layer(project, write_optical(tmp_path / "opt.tif", 192), "optical")
    sar = add_layer(project, write_sar(tmp_path / "sar.tif", 192), "sar")
    choose(dlg, opt, sar, tmp_path / "declouded.tif")
    dlg.set_mode("raw")  # the model everywhere: the input, which loses (the best mode keeps the clear pixels)
    assert dlg.select_model("identity")
    dlg.scene_check_check.setChecked(True)
    assert run_and_wait(dlg) == [True], dlg.status_label.text()
    text = dlg.result_label.text()  # the whole message (issue 28: the message bar clipped it at two lines)
    assert "Scene check: under synthetic clouds" in text and "read its output inside the cloud as a guess" in text
    assert dlg.result_label.isVisibleTo(dlg)


@pytest.mark.slow
def test_run_on_drawn_extent_clips_inputs(project, dlg: AlignCRDialog, tmp_path: Path) -> None:
    opt = add_layer(project, write_optical(tmp_path / "opt.tif"), "optical")
    sar = add_layer(project, write_sar(tmp_path / "sar.tif"), "sar")
    out = tmp_path / "clip.tif"
    choose(dlg, opt, sar, out)
    dlg.add_to_map_check.setChecked(False)
    full = opt.extent()
    rect = QgsRectangle(full.xMinimum(), full.yMinimum(), full.xMinimum() + full.width() / 2, full.yMaximum())
    dlg.set_drawn_extent(rect, opt.crs())
    assert dlg.extent_combo.currentData() != EXTENT_LAYER and dlg.run_button.isEnabled()
    assert run_and_wait(dlg) == [True]
    with rasterio.open(out) as b:
        assert (b.width, b.height) == (32, 64)
        assert b.bounds.left == pytest.approx(full.xMinimum()) and b.bounds.top == pytest.approx(full.yMaximum())


def test_canvas_extent_is_transformed_to_the_optical_crs(project, dlg: AlignCRDialog, qgis_iface,
                                                         tmp_path: Path) -> None:
    from qgis.core import QgsCoordinateReferenceSystem, QgsCoordinateTransform

    opt = add_layer(project, write_optical(tmp_path / "opt.tif"), "optical")
    sar = add_layer(project, write_sar(tmp_path / "sar.tif"), "sar")
    choose(dlg, opt, sar, tmp_path / "o.tif")
    canvas = qgis_iface.mapCanvas()
    wgs84 = QgsCoordinateReferenceSystem("EPSG:4326")
    canvas.setDestinationCrs(wgs84)
    full = opt.extent()
    quarter = QgsRectangle(full.xMinimum(), full.yMinimum(), full.center().x(), full.center().y())
    canvas.setExtent(QgsCoordinateTransform(opt.crs(), wgs84, project).transformBoundingBox(quarter))
    dlg.extent_combo.setCurrentIndex(dlg.extent_combo.findData(EXTENT_CANVAS))
    got = dlg.processing_extent()
    assert got is not None and got.intersects(quarter)
    assert got.center().x() == pytest.approx(quarter.center().x(), abs=10.0)  # metres, in UTM again
    assert dlg.run_button.isEnabled()
    far = QgsRectangle(quarter)
    far.setXMinimum(full.xMaximum() + 1_000.0)
    far.setXMaximum(full.xMaximum() + 2_000.0)
    canvas.setExtent(QgsCoordinateTransform(opt.crs(), wgs84, project).transformBoundingBox(far))
    dlg.validate()
    assert any("does not intersect" in m for m in dlg.issue_messages()) and not dlg.run_button.isEnabled()


def test_cancel_stops_the_engine_and_writes_nothing(project, dlg: AlignCRDialog, tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    root = fake_engine(tmp_path / "fake", tiles=100, delay=0.1)  # ~10 s if not cancelled
    monkeypatch.setattr(dialog_outputs, "engine_root", lambda: root)
    opt = add_layer(project, write_optical(tmp_path / "opt.tif"), "optical")
    sar = add_layer(project, write_sar(tmp_path / "sar.tif"), "sar")
    out = tmp_path / "never.tif"
    choose(dlg, opt, sar, out)
    finished: list[bool] = []
    dlg.runFinished.connect(finished.append)
    task = dlg.run()
    assert task is not None
    assert task in QgsApplication.taskManager().tasks()  # visible (and cancellable) in QGIS's task manager
    assert wait_for(lambda: dlg.progress.value() >= 3, 30), "no progress arrived"
    assert task.progress() >= 3
    dlg.cancel_button.click()
    assert wait_for(lambda: bool(finished), 15)
    assert finished == [False] and "Cancelled" in dlg.status_label.text()
    assert dlg.progress.value() == 0 and dlg.run_button.isEnabled() and not dlg.cancel_button.isEnabled()
    assert not out.exists() and not list(tmp_path.glob("never.tif*"))
    assert not any(lyr.name().startswith("never") for lyr in project.mapLayers().values())


def test_engine_error_goes_to_message_bar_not_traceback(project, dlg: AlignCRDialog, tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    root = fake_engine(tmp_path / "fake", fail="error")
    monkeypatch.setattr(dialog_outputs, "engine_root", lambda: root)
    opt = add_layer(project, write_optical(tmp_path / "opt.tif"), "optical")
    sar = add_layer(project, write_sar(tmp_path / "sar.tif"), "sar")
    choose(dlg, opt, sar, tmp_path / "o.tif")
    assert run_and_wait(dlg) == [False]
    assert [item.text() for item in dlg.bar.items()] == ["optical and SAR do not overlap"]
    assert "Failed" in dlg.status_label.text() and dlg.run_button.isEnabled()


@pytest.mark.slow
def test_check_environment_fills_devices(project, dlg: AlignCRDialog) -> None:
    dlg.check_environment()
    assert wait_for(lambda: dlg.env_task is None, 60)
    assert dlg.settings.env_cache.get("ok") is True
    assert [dlg.device_combo.itemData(i) for i in range(2)] == ["auto", "cpu"]
    assert dlg.device_combo.count() == 2 + len(dlg.settings.env_cache["cuda_devices"])
    assert "torch 2." in dlg.env_label.text() and "ready" in dlg.env_label.text()
    detector = dlg.settings.env_cache["cloud_detector"]  # which cloud detector a run without a mask gets
    assert ("clouds: trained detector (ukis-csmask" if detector else "clouds: hand-made") in dlg.env_label.toolTip()
    # `engine models --json` filled the model picker with the whole registry, sizes included.
    registry = {dlg.model_combo.itemData(i)[1]: dlg.model_combo.itemText(i) for i in range(dlg.model_combo.count())
                if dlg.model_combo.itemData(i)[0] == "registry"}
    assert {"identity", "aligncr", "aligncr-lite"} <= set(registry) and "M params" in registry["aligncr"]
    names = [d[1] for d in map(dlg.model_combo.itemData, range(dlg.model_combo.count())) if d[0] != "browse"]
    assert sorted(names) == sorted(registry)  # one entry per model (issue 16: the bundled one came three times)
    reopened = AlignCRDialog(None)  # the cache survives in QgsSettings
    assert reopened.settings.env_cache["executable"] == PYTHON
    reopened.deleteLater()


def test_weights_file_shows_model_card_and_is_passed_as_weights(project, qgis_iface, tmp_path: Path) -> None:
    from engine.models import build_model, save

    weights = save(build_model("identity"), tmp_path / "my_model.safetensors",
                   {"arch": "identity", "training_data": "unit-test scenes", "metrics": {"psnr": 12.5}})
    QgsSettings().setValue("aligncr/model", str(weights))  # what "Browse…" stores
    d = AlignCRDialog(qgis_iface)
    try:
        assert d.model_combo.currentData() == ("weights", str(weights))
        card = d.card_text.toPlainText()
        assert "identity" in card and "unit-test scenes" in card and "PSNR\n12.5" in card
        opt = add_layer(project, write_optical(tmp_path / "opt.tif"), "optical")
        sar = add_layer(project, write_sar(tmp_path / "sar.tif"), "sar")
        choose(d, opt, sar, tmp_path / "o.tif")
        req = d.build_request()
        assert req.weights == str(weights) and req.model is None
        assert d.select_model("identity") and d.build_request().model == "identity"
    finally:
        d.deleteLater()


def test_report_entry_prefers_report_html(tmp_path: Path) -> None:
    (tmp_path / "a.html").write_text("x")
    assert dialog_outputs._report_entry(str(tmp_path)) == str(tmp_path / "a.html")
    (tmp_path / "report.html").write_text("x")
    assert dialog_outputs._report_entry(str(tmp_path)) == str(tmp_path / "report.html")


def test_settings_persist_between_sessions(project, qgis_iface, tmp_path: Path) -> None:
    first = AlignCRDialog(qgis_iface)
    first.tile_spin.setValue(512)
    first.overlap_spin.setValue(64)
    first.units_combo.setCurrentIndex(first.units_combo.findData("linear"))
    first.report_check.setChecked(True)
    first.python_widget.setFilePath(PYTHON)
    first.close()  # closing saves
    first.deleteLater()
    assert QgsSettings().value("aligncr/tile") in (512, "512")
    second = AlignCRDialog(qgis_iface)
    try:
        assert (second.tile_spin.value(), second.overlap_spin.value()) == (512, 64)
        assert second.units_combo.currentData() == "linear" and second.report_check.isChecked()
        assert second.python_widget.filePath() == PYTHON
    finally:
        second.deleteLater()


def test_model_list_one_entry_each_disabled_without_weights(project, qgis_iface) -> None:
    """Issue 16: after *Check environment* with the bundled file saved as the choice, the bundled model was listed
    three times and models without weights were selectable; the card box showed the raw card JSON."""
    from aligncr_qgis.model_list import NO_WEIGHTS
    from engine.commands.models import collect
    from engine.stream.mode import BUNDLED
    from tests.helpers_models import engine_models

    if not BUNDLED["aligncr-lite"].is_file():
        pytest.skip("no bundled weights")
    QgsSettings().setValue("aligncr/model", str(BUNDLED["aligncr-lite"]))  # what an older version saved
    d = AlignCRDialog(qgis_iface)
    try:
        ours = engine_models()
        d.settings.models_cache = [m for m in collect()["models"] if m["name"] in ours]  # *Check environment*'s
        d._fill_models()
        combo = d.model_combo
        items = [(combo.itemData(i), combo.model().item(i)) for i in range(combo.count())]
        names = [data[1] for data, _item in items if data[0] == "registry"]
        assert sorted(names) == sorted(ours) and [data[0] for data, _ in items[len(names):]] == ["browse"]
        assert sum("aligncr-lite" in combo.itemText(i) for i in range(combo.count())) == 1
        for (_kind, name), item in items[:-1]:
            spec = ours[name]
            runnable = not spec.needs_weights or BUNDLED.get(name, Path("-")).is_file()
            assert item.isEnabled() == runnable, name
            assert (item.toolTip() == NO_WEIGHTS) == (not runnable), name
        assert combo.currentData() == ("registry", "aligncr-lite")
        card = d.card_text.toPlainText()
        assert "Trained on:" in card and "SEN12MS-CR" in card and "cloudy input" in card and "PSNR" in card
        # the baselines a user compares against
        assert "flat" in card and "fill" in card and "Margin over best baseline" in card
        assert "{" not in card and "recipe" not in card  # a summary, not the raw card
        assert d._bundled_file("aligncr-lite") == str(BUNDLED["aligncr-lite"])
    finally:
        d.deleteLater()


def test_default_layers_and_output_that_follows(project, qgis_iface, tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """Issue 16: the 2-band S1 was picked as the optical. Optical = the active layer with ≥ 4 bands, else the first
    with ≥ 4; SAR = a 2-band layer; the output follows the optical until edited, in a writable folder."""
    (tmp_path / "b").mkdir()
    (tmp_path / "c").mkdir()
    sar = add_layer(project, write_sar(tmp_path / "s1.tif"), "a_sentinel1")  # sorts first in the pickers
    opt_b = add_layer(project, write_optical(tmp_path / "b" / "b.tif"), "b_planet")
    opt_c = add_layer(project, write_optical(tmp_path / "c" / "c.tif"), "c_planet")
    d = AlignCRDialog(qgis_iface)
    try:
        assert d.optical_combo.currentLayer() == opt_b and d.sar_combo.currentLayer() == sar
        assert d.output_widget.filePath() == str(tmp_path / "b" / "b_planet_declouded.tif")
        d.optical_combo.setLayer(opt_c)  # not edited by the user: follows
        assert d.output_widget.filePath() == str(tmp_path / "c" / "c_planet_declouded.tif")
        d.output_widget.setFilePath(str(tmp_path / "mine.tif"))
        d.optical_combo.setLayer(opt_b)  # edited: stays
        assert d.output_widget.filePath() == str(tmp_path / "mine.tif")
    finally:
        d.deleteLater()
    qgis_iface.setActiveLayer(opt_c)
    monkeypatch.setattr(dialog_inputs, "writable",
                        lambda folder: folder != str(tmp_path / "c") and Path(folder).is_dir())
    d = AlignCRDialog(qgis_iface)
    try:
        assert d.optical_combo.currentLayer() == opt_c and d.sar_combo.currentLayer() == sar
        assert Path(d.output_widget.filePath()).parent != tmp_path / "c"  # project or home folder instead
        assert Path(d.output_widget.filePath()).name == "c_planet_declouded.tif"
    finally:
        d.deleteLater()
    qgis_iface.setActiveLayer(sar)  # an active layer with < 4 bands is not an optical
    d = AlignCRDialog(qgis_iface)
    try:
        assert d.optical_combo.currentLayer() == opt_b
    finally:
        d.deleteLater()


def test_every_control_has_a_tooltip_and_help_points_at_the_readme(project, dlg: AlignCRDialog) -> None:
    """Issue 16: 20 of 23 main controls had no tooltip; a Help button and Processing's helpUrl() open the README's
    plugin section (the homepage from metadata.txt)."""
    from qgis.gui import QgsFileWidget
    from qgis.PyQt.QtWidgets import QAbstractButton, QComboBox, QLineEdit, QSpinBox

    from aligncr_qgis.algorithms.declouding import DecloudingAlgorithm
    from aligncr_qgis.paths import help_url

    kinds = (QComboBox, QSpinBox, QAbstractButton, QLineEdit, QgsFileWidget)
    found = {}
    for name, value in vars(dlg).items():
        for i, widget in enumerate(value.values() if isinstance(value, dict) else [value]):
            if isinstance(widget, kinds):
                found[f"{name}[{i}]" if isinstance(value, dict) else name] = widget
    assert len(found) >= 30 and {"device_combo", "tile_spin", "python_widget", "report_check"} <= set(found)
    assert [name for name, widget in found.items() if not widget.toolTip().strip()] == []
    opened = []
    monkey = pytest.MonkeyPatch()
    monkey.setattr(dialog_outputs.QDesktopServices, "openUrl", lambda url: opened.append(url.toString()))
    try:
        dlg.help_button.click()
    finally:
        monkey.undo()
    assert opened == [help_url()] == ["https://github.com/aligncr/aligncr-qgis#qgis-plugin"]
    assert DecloudingAlgorithm().helpUrl() == help_url()


def test_layers_added_while_the_dialog_is_open_fill_the_band_mapping(project, dlg: AlignCRDialog,
                                                                     tmp_path: Path) -> None:
    """An empty picker selects the first added layer without emitting layerChanged: the band mapping stayed empty
    and validation said the mapping refers to a band the layer does not have."""
    assert dlg.optical_combo.currentLayer() is None
    sar = QgsRasterLayer(str(write_sar(tmp_path / "sar.tif")), "sar")
    opt = QgsRasterLayer(str(write_optical(tmp_path / "opt.tif")), "optical")
    project.addMapLayers([sar, opt])
    assert dlg.optical_combo.currentLayer() == opt and dlg.sar_combo.currentLayer() == sar
    assert [c.currentBand() for c in dlg.optical_band_combos.values()] == [1, 2, 3, 4]
    assert [c.currentBand() for c in dlg.sar_band_combos.values()] == [1, 2]
    assert not any("band mapping" in m for m in dlg.issue_messages())


def test_install_dialog_defaults(project, tmp_path: Path) -> None:
    """*Install engine…* asks with QGIS's Python, no wheel folder (PyPI), CUDA only when a GPU answers, the trained
    cloud detector, and QGIS's packages visible; the venv goes to the plugin's data folder in the profile."""
    from qgis.core import QgsApplication

    from aligncr_qgis.install_dialog import InstallDialog, engine_venv_dir
    from aligncr_qgis.installer import has_nvidia_gpu, qgis_python

    assert engine_venv_dir() == Path(QgsApplication.qgisSettingsDirPath()) / "aligncr" / "venv"
    dialog = InstallDialog(tmp_path / "venv")
    try:
        plan = dialog.plan()
        assert plan.base_python == qgis_python() and plan.venv == tmp_path / "venv" and plan.wheel_dir == ""
        assert plan.cuda == has_nvidia_gpu() and plan.system_site_packages
        assert plan.masks and plan.with_masks and "trained cloud detector" in dialog.size_label.text()
        dialog.wheels_widget.setFilePath(str(tmp_path))
        assert "--no-index" in dialog.plan().pip_args() and not dialog.plan().with_masks  # no ukis-csmask wheel
        assert "hand-made rule" in dialog.size_label.text()
        dialog.masks_check.setChecked(False)
        assert not dialog.plan().masks and "hand-made rule" not in dialog.size_label.text()
    finally:
        dialog.deleteLater()


def test_cloud_mask_picker_offers_the_trained_detector_first(project, dlg: AlignCRDialog, tmp_path: Path) -> None:
    """The cloud-mask picker (issue 29): "detect (trained)" by default (no --mask: the engine's own default), then the
    project's layers, then the hand-made rule and the product's own mask, each its --mask word; a layer its path."""
    opt = add_layer(project, write_optical(tmp_path / "opt.tif"), "optical")
    sar = add_layer(project, write_sar(tmp_path / "sar.tif"), "sar")
    choose(dlg, opt, sar, tmp_path / "out.tif")
    combo = dlg.mask_combo
    assert combo.currentIndex() == 0 and combo.currentText() == "detect (trained)" and combo.currentLayer() is None
    assert dlg.mask_word() is None and "--mask" not in dlg.build_request().to_args()
    texts = [combo.itemText(i) for i in range(combo.count())]
    assert texts[-2:] == ["detect (hand-made rule)", "the product's own (UDM2, SCL), else detect"]
    for index, word in ((combo.count() - 2, "rule"), (combo.count() - 1, "auto")):
        combo.setCurrentIndex(index)
        args = dlg.build_request().to_args()
        assert dlg.mask_word() == word and args[args.index("--mask") + 1] == word
    assert dlg.last_check.ok, dlg.issue_messages()
    combo.setLayer(opt)  # any raster layer: its file goes as the mask
    args = dlg.build_request().to_args()
    assert dlg.mask_word() is None and args[args.index("--mask") + 1] == str(tmp_path / "opt.tif")
