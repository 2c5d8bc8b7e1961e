"""Issue 28, items 1, 2 and 9: which layers the dialog proposes, and what it refuses, in a real (offscreen) QGIS.

The cloudy optical is picked by what it shows (the most cloud in a thumbnail check among the 4+-band layers over a
SAR layer), never the cloud-free reference loaded last; the SAR by how much of the optical it covers (then the
nearest date), never the first 2-band layer by name; a 13-band Sentinel-2 stack is read as B2, B3, B4, B8; a 4-band
optical chosen as SAR is refused before the run. Every order of loading the layers is tried."""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest

pytest.importorskip("qgis.core")

import rasterio  # noqa: E402
from qgis.core import QgsRasterLayer  # noqa: E402

from aligncr_qgis.dialog import AlignCRDialog  # noqa: E402
from tests.qgis_fixtures import processing_provider, project  # noqa: E402, F401 (fixtures)
from tests.qgis_helpers import PYTHON, fake_engine, write_sar, write_scene_optical  # noqa: E402

pytestmark = pytest.mark.qgis


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A cloudy scene, its cloud-free reference, a SAR 50 km away, one covering a third and one covering it all;
    a 13-band Sentinel-2 stack of the same (cloudy) place."""
    folder = tmp_path_factory.mktemp("pick")
    return {
        "cloudy": write_scene_optical(folder / "cloudy.tif", cloud=0.4),
        "clear": write_scene_optical(folder / "cloudfree.tif", cloud=0.0),
        "far": write_sar(folder / "far_s1.tif", shift_m=50_000.0),
        "third": write_sar(folder / "third_s1.tif", shift_m=130.0),
        "near": write_sar(folder / "near_s1.tif"),
        "s2": write_scene_optical(folder / "s2_stack.tif", cloud=0.4, s2_stack=True),
    }


# Names sort the wrong layers first: the old pickers took the first 2-band layer by name and the active layer.
NAMES = {"cloudy": "m_cloudy", "clear": "m_cloudfree", "far": "a_far_s1", "third": "b_third_s1", "near": "z_s1",
         "s2": "s2_stack"}


def load(project, files: dict[str, Path], order: tuple[str, ...], qgis_iface) -> dict[str, QgsRasterLayer]:
    """The layers in ``order``, each made active as it is added (what QGIS does), so the last one is active."""
    project.removeAllMapLayers()
    layers = {}
    for key in order:
        layers[key] = QgsRasterLayer(str(files[key]), NAMES[key])
        assert layers[key].isValid()
        project.addMapLayer(layers[key])
        qgis_iface.setActiveLayer(layers[key])
    return layers


def test_thumbnail_cloud_check(files: dict[str, Path]) -> None:
    from aligncr_qgis.layer_pick import cloud_fraction

    cloudy, clear, s2 = (QgsRasterLayer(str(files[k]), k) for k in ("cloudy", "clear", "s2"))
    assert cloud_fraction(cloudy) == pytest.approx(40.0, abs=3.0)
    assert cloud_fraction(clear) == 0.0
    assert cloud_fraction(s2) == pytest.approx(40.0, abs=3.0)  # read as B2, B3, B4, B8, not the coastal band 1
    assert cloud_fraction(QgsRasterLayer(str(files["near"]), "sar")) is None  # 2 bands: no optical


@pytest.mark.parametrize("order", list(itertools.permutations(("cloudy", "clear", "far", "near"))))
def test_every_loading_order_picks_the_cloudy_optical_and_the_covering_sar(project, qgis_iface, files, order) -> None:
    """Item 1 and 2: reference last (active), far SAR first … in every order: the cloudy layer and the SAR over it,
    and the dialog says Ready for them, with the output named after the cloudy layer."""
    layers = load(project, files, order, qgis_iface)
    d = AlignCRDialog(qgis_iface)
    try:
        assert d.optical_combo.currentLayer() == layers["cloudy"], order
        assert d.sar_combo.currentLayer() == layers["near"], order
        assert Path(d.output_widget.filePath()).name == "m_cloudy_declouded.tif"
        assert d.last_check.ok and d.overlap_label.text().startswith("100.0 %"), d.issue_messages()
    finally:
        d.deleteLater()


def test_layers_added_while_open_repick_until_the_user_chooses(project, qgis_iface, files) -> None:
    """The reference added after the dialog opened does not replace the cloudy layer; a SAR covering more
    replaces one covering a third; once the user picks a layer, it stays."""
    layers = load(project, files, ("third", "cloudy"), qgis_iface)
    d = AlignCRDialog(qgis_iface)
    try:
        assert d.optical_combo.currentLayer() == layers["cloudy"] and d.sar_combo.currentLayer() == layers["third"]
        issues = d.issue_messages()
        assert any("covers only" in m and "missing along the west edge" in m for m in issues), issues
        clear = QgsRasterLayer(str(files["clear"]), NAMES["clear"])
        near = QgsRasterLayer(str(files["near"]), NAMES["near"])
        project.addMapLayers([clear, near])
        qgis_iface.setActiveLayer(clear)
        assert d.optical_combo.currentLayer() == layers["cloudy"]
        assert d.sar_combo.currentLayer() == near and not any("covers only" in m for m in d.issue_messages())
        d.optical_combo.setLayer(clear)  # the user's choice: kept, with a warning that it looks clear
        assert any("looks cloud-free" in m for m in d.issue_messages()), d.issue_messages()
        d.sar_combo.setLayer(layers["third"])
        project.addMapLayer(QgsRasterLayer(str(files["far"]), NAMES["far"]))
        assert d.optical_combo.currentLayer() == clear and d.sar_combo.currentLayer() == layers["third"]
    finally:
        d.deleteLater()


def test_equal_overlap_takes_the_sar_nearest_in_time(project, qgis_iface, tmp_path: Path) -> None:
    optical = write_scene_optical(tmp_path / "opt.tif", cloud=0.3, date="2021:06:10 10:30:00")
    far_in_time = write_sar(tmp_path / "a_s1_early.tif")
    near_in_time = write_sar(tmp_path / "b_s1.tif")
    for path, when in ((far_in_time, "2021:03:01 05:00:00"), (near_in_time, "2021:06:11 05:00:00")):
        with rasterio.open(path, "r+") as ds:
            ds.update_tags(TIFFTAG_DATETIME=when)
    layers = {p.stem: QgsRasterLayer(str(p), p.stem) for p in (far_in_time, near_in_time, optical)}
    project.addMapLayers(list(layers.values()))
    d = AlignCRDialog(qgis_iface)
    try:
        assert d.sar_combo.currentLayer() == layers["b_s1"]
    finally:
        d.deleteLater()


def test_sentinel2_stack_reads_b2_b3_b4_b8_or_warns(project, qgis_iface, files) -> None:
    """Item 9: a 13-band stack without band names is picked (its cloud seen through B2, B3, B4, B8) and mapped to
    bands 2, 3, 4, 8; mapped back to 1–4 it is a warning that names the Sentinel-2 bands."""
    layers = load(project, files, ("s2", "clear", "near"), qgis_iface)
    d = AlignCRDialog(qgis_iface)
    try:
        assert d.optical_combo.currentLayer() == layers["s2"]
        assert [c.currentBand() for c in d.optical_band_combos.values()] == [2, 3, 4, 8]
        assert d.build_request().bands == (2, 3, 4, 8)
        assert not any("Sentinel-2" in m for m in d.issue_messages())
        for i, combo in enumerate(d.optical_band_combos.values()):
            combo.setBand(i + 1)
        assert any("like a Sentinel-2 stack" in m and "B2, B3, B4, B8" in m for m in d.issue_messages())
        assert d.run_button.isEnabled()  # a warning: another sensor's 13 bands may be meant
    finally:
        d.deleteLater()


def test_processing_reads_a_sentinel2_stack_as_b2_b3_b4_b8(project, processing_provider, files, tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    import processing
    from qgis.core import QgsProcessingFeedback

    from aligncr_qgis.algorithms import base

    monkeypatch.setattr(base, "engine_root", lambda: fake_engine(tmp_path / "fake"))
    monkeypatch.setenv("ALIGNCR_PYTHON", PYTHON)
    seen: list[str] = []
    feedback = QgsProcessingFeedback()
    feedback.pushConsoleInfo = seen.append
    processing.run("aligncr:declouding", {"OPTICAL": str(files["s2"]), "SAR": str(files["near"]),
                                          "OUTPUT": str(tmp_path / "o.tif")}, feedback=feedback)
    command = next(line for line in seen if line.startswith("$ "))
    assert "--bands 2,3,4,8" in command, command


def test_a_4_band_layer_chosen_as_sar_is_refused(project, qgis_iface, files) -> None:
    """Item 9: an optical layer in the SAR picker showed "Ready" and failed in the engine."""
    layers = load(project, files, ("cloudy", "clear", "near"), qgis_iface)
    d = AlignCRDialog(qgis_iface)
    try:
        d.sar_combo.setLayer(layers["clear"])
        assert any("looks like an optical image" in m for m in d.issue_messages()), d.issue_messages()
        assert not d.run_button.isEnabled()
    finally:
        d.deleteLater()
