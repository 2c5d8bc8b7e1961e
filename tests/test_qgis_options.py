"""The plugin side of the options table and of the engine's grid rules, in a real QGIS: Processing parameters
generated from engine.config.OPTIONS, the dialog's allowed values from it, a processing extent passed as the
engine's --bounds (no clipped copies of the inputs), and the engine's metric-CRS rule and words in both."""

from __future__ import annotations

from pathlib import Path

import pytest

pytest.importorskip("qgis.core")

import rasterio  # noqa: E402
from qgis.core import QgsApplication, QgsProject, QgsRectangle  # noqa: E402

from aligncr_qgis.dialog import AlignCRDialog  # noqa: E402
from engine.config import OPTIONS  # noqa: E402
from engine.sources.metric_grid import metric_crs_problem  # noqa: E402
from tests.qgis_fixtures import close_dialog, processing_provider, project  # noqa: E402, F401 (fixtures)
from tests.qgis_helpers import ORIGIN, PYTHON, add_layer, write_optical, write_sar  # noqa: E402

pytestmark = pytest.mark.qgis



@pytest.fixture
def dlg(project, qgis_iface):
    d = AlignCRDialog(qgis_iface)
    yield d
    close_dialog(d)


def test_processing_parameters_come_from_the_options_table(processing_provider) -> None:
    from qgis.core import QgsProcessingParameterDefinition

    alg = QgsApplication.processingRegistry().algorithmById("aligncr:declouding")
    for name in ("sar_units", "optical_scale", "sar_resampling"):
        param, row = alg.parameterDefinition(name.upper()), OPTIONS[name]
        assert param.options() == list(row.choice_labels) and param.description() == row.label, name
        assert param.defaultValue() == row.choices.index(row.default)
    for name in ("tile", "overlap", "batch", "cloud_feather"):
        param, row = alg.parameterDefinition(name.upper()), OPTIONS[name]
        assert (param.defaultValue(), param.minimum(), param.maximum()) == (row.default, row.minimum, row.maximum)
        assert param.flags() & QgsProcessingParameterDefinition.Flag.FlagAdvanced
    tta = alg.parameterDefinition("TTA")
    assert (tta.defaultValue(), tta.minimum(), tta.maximum()) == (0, 0, OPTIONS["tta"].maximum)  # 0 = engine's
    for name in ("optical_prev", "sar_prev", "optical_next", "sar_next", "dem", "date", "date_prev", "date_next"):
        param = alg.parameterDefinition(name.upper())
        assert param.description() == OPTIONS[name].label
        assert param.flags() & QgsProcessingParameterDefinition.Flag.FlagOptional, name
    assert not alg.parameterDefinition("OPTICAL").flags() & QgsProcessingParameterDefinition.Flag.FlagOptional


def test_dialog_offers_the_table_s_values_and_ranges(dlg: AlignCRDialog) -> None:
    assert [dlg.units_combo.itemData(i) for i in range(dlg.units_combo.count())] == list(OPTIONS["sar_units"].choices)
    for spin, name in ((dlg.tile_spin, "tile"), (dlg.overlap_spin, "overlap"), (dlg.batch_spin, "batch"),
                       (dlg.feather_spin, "cloud_feather")):  # fmt: skip
        assert (spin.minimum(), spin.maximum()) == (OPTIONS[name].minimum, OPTIONS[name].maximum), name


def test_dialog_checks_option_values_with_the_engine_s_rules(project, dlg: AlignCRDialog, tmp_path: Path) -> None:
    dlg.optical_combo.setLayer(add_layer(project, write_optical(tmp_path / "opt.tif"), "optical"))
    dlg.sar_combo.setLayer(add_layer(project, write_sar(tmp_path / "sar.tif"), "sar"))
    dlg.output_widget.setFilePath(str(tmp_path / "out.tif"))
    dlg.tile_spin.setValue(64)
    dlg.overlap_spin.setValue(16)
    assert dlg.run_button.isEnabled(), dlg.issue_messages()
    dlg.overlap_spin.setValue(32)  # the engine refuses an overlap of half a tile or more
    assert "--overlap must be in [0, tile/2) = [0, 32), got 32" in dlg.issue_messages()
    assert not dlg.run_button.isEnabled()
    dlg.tile_spin.setValue(128)
    assert dlg.run_button.isEnabled(), dlg.issue_messages()


def test_dialog_extent_goes_as_bounds_not_as_clipped_copies(project, dlg: AlignCRDialog, tmp_path: Path) -> None:
    opt = add_layer(project, write_optical(tmp_path / "opt.tif"), "optical")
    sar = add_layer(project, write_sar(tmp_path / "sar.tif"), "sar")
    dlg.optical_combo.setLayer(opt)
    dlg.sar_combo.setLayer(sar)
    dlg.output_widget.setFilePath(str(tmp_path / "out.tif"))
    assert not any(a.startswith("--bounds") for a in dlg.build_request().to_args())
    rect = QgsRectangle(ORIGIN[0] + 10.0, ORIGIN[1] - 100.0, ORIGIN[0] + 70.0, ORIGIN[1] - 4.0)
    dlg.set_drawn_extent(rect, opt.crs())
    args = dlg.build_request().to_args()
    bounds = [float(v) for v in next(a for a in args if a.startswith("--bounds=")).split("=", 1)[1].split(",")]
    assert bounds == pytest.approx([rect.xMinimum(), rect.yMinimum(), rect.xMaximum(), rect.yMaximum()])
    assert args[args.index("--optical") + 1] == str(tmp_path / "opt.tif")  # the input itself, not a VRT
    assert args[args.index("--sar") + 1] == str(tmp_path / "sar.tif")


@pytest.mark.slow
def test_processing_extent_runs_the_engine_on_the_window(processing_provider, tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:  # fmt: skip
    """EXTENT in another CRS than the optical's: the engine transforms it, snaps it outwards to the optical
    pixels and writes that window, georeferenced."""
    import processing
    from qgis.core import QgsCoordinateReferenceSystem, QgsCoordinateTransform, QgsReferencedRectangle

    monkeypatch.setenv("ALIGNCR_PYTHON", PYTHON)
    opt, sar = write_optical(tmp_path / "opt.tif"), write_sar(tmp_path / "sar.tif")
    utm = QgsCoordinateReferenceSystem("EPSG:32633")
    wgs84 = QgsCoordinateReferenceSystem("EPSG:4326")
    # columns 10.5 … 30 and rows 2.5 … 20 of the 64 × 64 optical, then in WGS 84 (a slightly larger box)
    window = QgsRectangle(ORIGIN[0] + 31.5, ORIGIN[1] - 60.0, ORIGIN[0] + 90.0, ORIGIN[1] - 7.5)
    extent = QgsCoordinateTransform(utm, wgs84, QgsProject.instance()).transformBoundingBox(window)
    out = tmp_path / "window.tif"
    processing.run("aligncr:declouding", {"OPTICAL": str(opt), "SAR": str(sar), "MODEL": "identity", "TILE": 32,
                                          "OVERLAP": 8, "EXTENT": QgsReferencedRectangle(extent, wgs84),
                                          "OUTPUT": str(out)})  # fmt: skip
    with rasterio.open(opt) as a, rasterio.open(out) as b:
        col = round((b.transform.c - a.transform.c) / 3.0)
        row = round((a.transform.f - b.transform.f) / 3.0)
        assert b.crs == a.crs and b.transform.a == 3.0 and 9 <= col <= 10 and 1 <= row <= 2
        assert 20 <= b.width <= 22 and 18 <= b.height <= 20
        assert (b.read() == a.read(window=((row, row + b.height), (col, col + b.width)))).all()


@pytest.mark.slow
def test_processing_extent_with_negative_coordinates(processing_provider, tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:  # fmt: skip
    """Issue 25: an extent whose coordinates are negative (EPSG:3857 in Chile) went to the engine as
    "--bounds -7849970.0,…", which argparse took for an option: the run failed in QGIS. Now the whole plugin path
    (Processing → command builder → engine) writes the window."""
    import numpy as np
    import processing
    from qgis.core import QgsCoordinateReferenceSystem, QgsReferencedRectangle
    from rasterio.transform import from_origin

    monkeypatch.setenv("ALIGNCR_PYTHON", PYTHON)
    opt, sar = tmp_path / "chile.tif", tmp_path / "sar.tif"
    rng = np.random.default_rng(0)
    with rasterio.open(opt, "w", driver="GTiff", width=64, height=64, count=4, dtype="uint16", crs="EPSG:3857",
                       transform=from_origin(-7_850_000.0, -3_920_000.0, 3.0, 3.0)) as ds:  # fmt: skip
        ds.write(rng.integers(200, 4000, (4, 64, 64), dtype=np.uint16))
    with rasterio.open(sar, "w", driver="GTiff", width=24, height=24, count=2, dtype="float32", crs="EPSG:3857",
                       transform=from_origin(-7_850_030.0, -3_919_970.0, 10.0, 10.0)) as ds:  # fmt: skip
        ds.write(rng.uniform(-20.0, -5.0, (2, 24, 24)).astype(np.float32))
    window = QgsRectangle(-7_849_970.0, -3_920_090.0, -7_849_910.0, -3_920_030.0)  # columns 10-30, rows 10-30
    out = tmp_path / "window.tif"
    processing.run("aligncr:declouding", {"OPTICAL": str(opt), "SAR": str(sar), "MODEL": "identity", "TILE": 32,
                                          "OVERLAP": 8, "OUTPUT": str(out), "EXTENT": QgsReferencedRectangle(
                                              window, QgsCoordinateReferenceSystem("EPSG:3857"))})  # fmt: skip
    with rasterio.open(opt) as a, rasterio.open(out) as b:
        assert (b.width, b.height) == (20, 20) and (b.transform.c, b.transform.f) == (-7_849_970.0, -3_920_030.0)
        assert (b.read() == a.read(window=((10, 30), (10, 30)))).all()


def test_processing_refuses_a_geographic_optical_with_the_engine_s_words(processing_provider, tmp_path: Path,
                                                                        monkeypatch) -> None:  # fmt: skip
    import processing
    from qgis.core import QgsProcessingException

    monkeypatch.setenv("ALIGNCR_PYTHON", PYTHON)
    geo, sar = write_optical(tmp_path / "geo.tif", crs="EPSG:4326"), write_sar(tmp_path / "sar.tif")
    with pytest.raises(QgsProcessingException) as exc:
        processing.run("aligncr:declouding", {"OPTICAL": str(geo), "SAR": str(sar), "MODEL": "identity",
                                              "OUTPUT": str(tmp_path / "o.tif")})  # fmt: skip
    assert str(exc.value) == metric_crs_problem("EPSG:4326", geographic=True, units="degrees")
    assert not (tmp_path / "o.tif").exists()


def test_dialog_shows_the_engine_s_metric_crs_message(project, dlg: AlignCRDialog, tmp_path: Path) -> None:
    geo = add_layer(project, write_optical(tmp_path / "geo.tif", crs="EPSG:4326"), "geo")
    dlg.optical_combo.setLayer(geo)
    dlg.validate()
    engine_words = metric_crs_problem("EPSG:4326", geographic=True, units="degrees")
    assert engine_words[0].upper() + engine_words[1:] + "." in dlg.issue_messages()  # as a sentence
    assert not dlg.run_button.isEnabled()


def test_scene_adaptation_from_the_dialog_and_processing(processing_provider, dlg: AlignCRDialog, project,
                                                         tmp_path: Path) -> None:  # fmt: skip
    row = OPTIONS["adapt"]
    assert (dlg.adapt_spin.minimum(), dlg.adapt_spin.maximum()) == (-1, row.maximum)  # -1: as the mode decides
    assert dlg.adapt_spin.value() == -1 and dlg.adapt_spin.text() == "as the mode decides"
    dlg.optical_combo.setLayer(add_layer(project, write_optical(tmp_path / "opt.tif"), "optical"))
    dlg.sar_combo.setLayer(add_layer(project, write_sar(tmp_path / "sar.tif"), "sar"))
    dlg.output_widget.setFilePath(str(tmp_path / "out.tif"))
    assert "--adapt" not in dlg.build_request().to_args()
    dlg.adapt_spin.setValue(80)
    args = dlg.build_request().to_args()
    assert args[args.index("--adapt") + 1] == "80"
    dlg.save_settings()
    assert dlg.settings.adapt == 80
    alg = QgsApplication.processingRegistry().algorithmById("aligncr:declouding")
    param = alg.parameterDefinition("ADAPT")
    assert (param.defaultValue(), param.minimum(), param.maximum()) == (None, row.minimum, row.maximum)
    assert param.description() == row.label and param.flags() & param.Flag.FlagOptional  # empty: the mode's


@pytest.mark.parametrize("name", ["scene_check", "colour_anchor"])
def test_switch_from_the_dialog_and_processing(processing_provider, dlg: AlignCRDialog, project, tmp_path: Path,
                                               name: str) -> None:  # fmt: skip
    """An off-by-default run switch: its dialog check box adds the flag and is saved (in the raw mode: the best mode
    switches the scene check on itself); Processing has it as an advanced parameter labelled from the options
    table."""
    row, box = OPTIONS[name], getattr(dlg, f"{name}_check")
    dlg.set_mode("raw")
    flag = "--" + name.replace("_", "-")
    assert not box.isChecked()
    dlg.optical_combo.setLayer(add_layer(project, write_optical(tmp_path / "opt.tif"), "optical"))
    dlg.sar_combo.setLayer(add_layer(project, write_sar(tmp_path / "sar.tif"), "sar"))
    dlg.output_widget.setFilePath(str(tmp_path / "out.tif"))
    assert flag not in dlg.build_request().to_args()
    box.setChecked(True)
    assert flag in dlg.build_request().to_args()
    dlg.save_settings()
    assert getattr(dlg.settings, name) is True
    alg = QgsApplication.processingRegistry().algorithmById("aligncr:declouding")
    param = alg.parameterDefinition(name.upper())
    assert param.defaultValue() is False and param.description() == row.label
    assert param.flags() & param.Flag.FlagAdvanced
