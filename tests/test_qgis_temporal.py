"""Temporal models in the QGIS plugin (real offscreen QGIS): the dialog's "Extra dates" group follows the model
picker (from the registry's ``temporal_inputs`` as ``engine models --json`` reports it), its command line carries
the extra-date flags, and gapfill runs end to end from the dialog and from the Processing algorithm (without SAR:
the SAR row follows the model's uses_sar); the DEM picker follows the model's DEM input (uses_dem / card config)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("qgis.core")

import rasterio  # noqa: E402
from rasterio.crs import CRS  # noqa: E402
from rasterio.transform import from_origin  # noqa: E402

from aligncr_qgis.dialog import AlignCRDialog  # noqa: E402
from aligncr_qgis.model_cards import temporal_info  # noqa: E402
from tests.qgis_fixtures import close_dialog, processing_provider, project  # noqa: E402, F401 (fixtures)
from tests.qgis_helpers import ORIGIN, PYTHON, UTM, add_layer, wait_for, write_optical, write_sar  # noqa: E402

pytestmark = pytest.mark.qgis

SIZE = 32
DATES = ("2021-06-01T10:00:00Z", "2021-06-04T10:00:00Z", "2021-06-11T10:00:00Z")  # weight 0.3 on the next image


@pytest.fixture(scope="module")
def registry() -> list[dict]:
    """What `engine models --json` reports (the dialog's model cache), from the engine itself."""
    from engine.commands.models import collect

    return collect()["models"]


@pytest.fixture
def dlg(project, qgis_iface, registry):
    d = AlignCRDialog(qgis_iface)
    d.open_report_in_browser = False
    d.settings.models_cache = registry
    d._fill_models()
    yield d
    close_dialog(d)



def write_dated(path: Path, value: int, when: str, *, res: float = 3.0, shift: float = 0.0) -> Path:
    """A constant 4-band uint16 image over the optical footprint (at ``res`` m, moved east by ``shift`` m), tagged
    with its date."""
    n = int(SIZE * 3.0 / res)
    with rasterio.open(path, "w", driver="GTiff", width=n, height=n, count=4, dtype="uint16", crs=CRS.from_string(UTM),
                       transform=from_origin(ORIGIN[0] + shift, ORIGIN[1], res, res)) as ds:
        ds.write(np.full((4, n, n), value, dtype=np.uint16))
        ds.update_tags(ACQUISITIONDATETIME=when)
    return path


def write_half_mask(path: Path) -> Path:
    """1 = cloud on the left half of the optical footprint."""
    data = np.zeros((1, SIZE, SIZE), dtype=np.uint8)
    data[:, :, : SIZE // 2] = 1
    with rasterio.open(path, "w", driver="GTiff", width=SIZE, height=SIZE, count=1, dtype="uint8",
                       crs=CRS.from_string(UTM), transform=from_origin(ORIGIN[0], ORIGIN[1], 3.0, 3.0)) as ds:
        ds.write(data)
    return path


@pytest.fixture
def scene(tmp_path: Path) -> dict[str, Path]:
    return {
        "optical": write_optical(tmp_path / "cloudy.tif", size=SIZE),
        "sar": write_sar(tmp_path / "sar.tif", optical_size=SIZE),
        "prev": write_dated(tmp_path / "prev.tif", 1000, DATES[0], res=6.0),  # another resolution
        "next": write_dated(tmp_path / "next.tif", 3000, "2030-01-01T00:00:00Z"),  # wrong tag: --date-next wins
        "sar_prev": write_sar(tmp_path / "sar_prev.tif", optical_size=SIZE),
        "sar_next": write_sar(tmp_path / "sar_next.tif", optical_size=SIZE),
        "mask": write_half_mask(tmp_path / "mask.tif"),
    }


def shown(d: AlignCRDialog, key: str) -> bool:
    return not d._extra_rows[key][1].isHidden()


def test_extra_dates_group_follows_the_model(project, dlg: AlignCRDialog, tmp_path: Path) -> None:
    assert dlg.select_model("aligncr-lite")
    assert dlg.temporal_box.isHidden() and dlg.temporal is None
    assert dlg.select_model("msop-unet")
    assert not dlg.temporal_box.isHidden() and dlg.temporal_box.isEnabled()
    assert [k for k in dlg._extra_rows if shown(dlg, k)] == ["optical_prev", "sar_prev", "optical_next", "sar_next"]
    assert dlg.select_model("gapfill")
    assert not dlg.temporal_box.isHidden()
    assert [k for k in dlg._extra_rows if shown(dlg, k)] == ["optical_prev", "optical_next", "date", "date_prev",
                                                             "date_next"]  # fmt: skip
    assert dlg.select_model("identity")
    assert dlg.temporal_box.isHidden() and not dlg.temporal_box.isEnabled()

    # a weights file is temporal when its card's arch is
    from engine.models import build_model, save

    weights = save(build_model("msop-unet", widths=(4, 4, 4, 4, 4, 4)), tmp_path / "msop.safetensors")
    dlg.settings.model = str(weights)
    dlg._fill_models()
    assert dlg.model_combo.currentData() == ("weights", str(weights))
    assert not dlg.temporal_box.isHidden() and dlg.temporal_model == "msop-unet"


def test_model_cache_from_an_older_plugin_still_knows_the_temporal_models() -> None:
    assert temporal_info({"name": "msop-unet"}, "msop-unet").keys() == ["optical_prev", "sar_prev", "optical_next",
                                                                          "sar_next"]  # fmt: skip
    assert temporal_info({"name": "gapfill"}, "gapfill").needs_dates
    assert temporal_info({"name": "aligncr"}, "aligncr") is None
    # the registry's answer wins over the built-in list
    assert temporal_info({"name": "gapfill", "temporal_inputs": []}, "gapfill") is None


def test_command_line_carries_the_extra_dates(project, dlg: AlignCRDialog, scene: dict, tmp_path: Path) -> None:
    layers = {k: add_layer(project, p, k) for k, p in scene.items()}
    dlg.optical_combo.setLayer(layers["optical"])
    dlg.sar_combo.setLayer(layers["sar"])
    dlg.output_widget.setFilePath(str(tmp_path / "out.tif"))
    assert dlg.select_model("msop-unet")
    dlg.validate()
    assert any("needs the Optical before (t−1) layer" in m for m in dlg.issue_messages())
    assert any("needs the SAR after (t+1) layer" in m for m in dlg.issue_messages())
    for key, name in (("optical_prev", "prev"), ("sar_prev", "sar_prev"), ("optical_next", "next"),
                      ("sar_next", "sar_next")):  # fmt: skip
        dlg.extra_combos[key].setLayer(layers[name])
    assert not any("Extra dates" in m for m in dlg.issue_messages())
    args = dlg.build_request().to_args()
    pairs = dict(zip(args, args[1:]))
    assert pairs["--model"] == "msop-unet"
    assert (pairs["--optical-prev"], pairs["--sar-prev"]) == (str(scene["prev"]), str(scene["sar_prev"]))
    assert (pairs["--optical-next"], pairs["--sar-next"]) == (str(scene["next"]), str(scene["sar_next"]))
    assert "--date" not in args  # msop-unet takes no dates

    # an extra date that misses the optical footprint is an error, one that covers part of it a warning
    far = add_layer(project, write_dated(tmp_path / "far.tif", 1000, DATES[0], shift=10 * SIZE * 3.0), "far")
    dlg.extra_combos["optical_prev"].setLayer(far)
    assert any("Optical before (t−1) layer does not overlap the optical layer" in m for m in dlg.issue_messages())
    assert not dlg.run_button.isEnabled()
    half = add_layer(project, write_dated(tmp_path / "half.tif", 1000, DATES[0], shift=SIZE * 3.0 / 2), "half")
    dlg.extra_combos["optical_prev"].setLayer(half)
    levels = {i.message.split(";")[0]: i.level for i in dlg.last_check.issues}
    assert levels.get("Optical before (t−1) layer covers only 50.0 % of the optical area, missing along the west "
                      "edge") == "warning", levels
    dlg.extra_combos["optical_prev"].setLayer(layers["prev"])
    assert not any("Optical before" in m for m in dlg.issue_messages())

    assert dlg.select_model("gapfill")
    dlg.date_edits["date_next"].setText("next tuesday")
    assert any("'next tuesday' is not a date" in m for m in dlg.issue_messages()) and not dlg.run_button.isEnabled()
    dlg.date_edits["date_next"].setText(DATES[2])
    args = dlg.build_request().to_args()
    pairs = dict(zip(args, args[1:]))
    assert pairs["--optical-prev"] == str(scene["prev"]) and pairs["--date-next"] == DATES[2]
    assert "--sar-prev" not in args and "--sar-next" not in args and "--date" not in args

    assert dlg.select_model("aligncr-lite")  # layers still chosen in the hidden group: not passed
    args = dlg.build_request().to_args()
    assert not any(a.startswith(("--optical-prev", "--sar-prev", "--optical-next", "--sar-next", "--date"))
                   for a in args)  # fmt: skip


def _expected_gapfill(cloudy: Path) -> np.ndarray:
    with rasterio.open(cloudy) as ds:
        expected = ds.read()
    expected[:, :, : SIZE // 2] = 1600  # 1000 + (3000 − 1000) × 0.3 where the mask says cloud
    return expected


@pytest.mark.slow
def test_dialog_runs_gapfill(project, dlg: AlignCRDialog, scene: dict, tmp_path: Path) -> None:
    layers = {k: add_layer(project, p, k) for k, p in scene.items()}
    out = tmp_path / "filled.tif"
    dlg.optical_combo.setLayer(layers["optical"])
    dlg.sar_combo.setLayer(None)  # gapfill takes no SAR
    dlg.mask_combo.setLayer(layers["mask"])
    dlg.output_widget.setFilePath(str(out))
    assert dlg.select_model("gapfill")
    dlg.set_mode("raw")  # the fill as the model writes it (the best mode feathers it into the clear pixels)
    dlg.extra_combos["optical_prev"].setLayer(layers["prev"])
    dlg.extra_combos["optical_next"].setLayer(layers["next"])
    dlg.date_edits["date"].setText(DATES[1])
    dlg.date_edits["date_next"].setText(DATES[2])
    dlg.tile_spin.setValue(64)
    dlg.overlap_spin.setValue(8)
    assert dlg.validate().ok, dlg.issue_messages()
    finished: list[bool] = []
    dlg.runFinished.connect(finished.append)
    assert dlg.run() is not None
    assert wait_for(lambda: bool(finished), 90) and finished == [True], dlg.status_label.text()
    with rasterio.open(out) as ds:
        np.testing.assert_array_equal(ds.read(), _expected_gapfill(scene["optical"]))


@pytest.mark.slow
def test_processing_declouding_with_gapfill(processing_provider, scene: dict, tmp_path: Path,
                                            monkeypatch: pytest.MonkeyPatch) -> None:  # fmt: skip
    import processing

    monkeypatch.setenv("ALIGNCR_PYTHON", PYTHON)
    out = tmp_path / "filled.tif"
    params = {"OPTICAL": str(scene["optical"]), "MASK": str(scene["mask"]),  # no SAR: gapfill takes none
              "MODEL": "gapfill", "OPTICAL_PREV": str(scene["prev"]), "OPTICAL_NEXT": str(scene["next"]),
              "DATE": DATES[1], "DATE_NEXT": DATES[2], "TILE": 64, "OVERLAP": 8, "OUTPUT": str(out),
              "MODE": "raw"}  # fmt: skip (raw: the fill as the model writes it)
    res = processing.run("aligncr:declouding", params)
    assert res["OUTPUT"] == str(out)
    with rasterio.open(out) as ds:
        np.testing.assert_array_equal(ds.read(), _expected_gapfill(scene["optical"]))

    from qgis.core import QgsProcessingException

    missing = {k: v for k, v in params.items() if k != "OPTICAL_NEXT"} | {"OUTPUT": str(tmp_path / "x.tif")}
    with pytest.raises(QgsProcessingException, match="missing --optical-next"):
        processing.run("aligncr:declouding", missing)
    assert not (tmp_path / "x.tif").exists()
    with pytest.raises(QgsProcessingException, match="model 'identity' needs --sar"):  # any SAR model without it
        processing.run("aligncr:declouding", params | {"MODEL": "identity", "OUTPUT": str(tmp_path / "x.tif")})
    assert not (tmp_path / "x.tif").exists()


def test_sar_layer_follows_the_model(project, dlg: AlignCRDialog, scene: dict, tmp_path: Path) -> None:
    """gapfill takes no SAR: the SAR row is disabled, validation skips it (even a SAR that misses the scene) and the
    command line has no --sar; a SAR model without a SAR layer cannot run."""
    from tests.qgis_helpers import write_sar as write_far_sar

    layers = {k: add_layer(project, scene[k], k) for k in ("optical", "prev", "next")}
    dlg.optical_combo.setLayer(layers["optical"])
    dlg.sar_combo.setLayer(None)
    dlg.output_widget.setFilePath(str(tmp_path / "out.tif"))
    assert dlg.select_model("aligncr-lite")
    dlg.validate()
    assert "Choose the Sentinel-1 SAR layer." in dlg.issue_messages() and not dlg.run_button.isEnabled()
    assert dlg.sar_combo.isEnabled() and dlg.sar_label.text() == "Sentinel-1 SAR"

    assert dlg.select_model("gapfill")
    dlg.extra_combos["optical_prev"].setLayer(layers["prev"])
    dlg.extra_combos["optical_next"].setLayer(layers["next"])
    assert dlg.validate().ok and dlg.run_button.isEnabled(), dlg.issue_messages()
    assert not dlg.sar_combo.isEnabled() and not dlg.units_combo.isEnabled()
    assert "not used by gapfill" in dlg.sar_label.text() and "uses no SAR" in dlg.overlap_label.text()
    args = dlg.build_request().to_args()
    assert "--sar" not in args and args[args.index("--model") + 1] == "gapfill"

    far = add_layer(project, write_far_sar(tmp_path / "far.tif", optical_size=SIZE, shift_m=50_000.0), "far")
    dlg.sar_combo.setLayer(far)  # a SAR elsewhere: no matter for gapfill, an error for a SAR model
    assert dlg.validate().ok and "--sar" not in dlg.build_request().to_args(), dlg.issue_messages()
    assert dlg.select_model("aligncr-lite")
    assert any("SAR layer does not overlap" in m for m in dlg.issue_messages()) and not dlg.run_button.isEnabled()
    sar = add_layer(project, scene["sar"], "sar")
    dlg.sar_combo.setLayer(sar)
    assert dlg.validate().ok and dlg.run_button.isEnabled(), dlg.issue_messages()
    args = dlg.build_request().to_args()
    assert args[args.index("--sar") + 1] == str(scene["sar"])


def write_dem(path: Path) -> Path:
    """A one-band elevation raster (metres) in EPSG:4326 at ~20 m over the optical footprint."""
    from rasterio.warp import transform_bounds

    extent = SIZE * 3.0
    w, s, e, n = transform_bounds(UTM, "EPSG:4326", ORIGIN[0] - 40.0, ORIGIN[1] - extent - 40.0,
                                  ORIGIN[0] + extent + 40.0, ORIGIN[1] + 40.0)  # fmt: skip
    n_px = 8
    with rasterio.open(path, "w", driver="GTiff", width=n_px, height=n_px, count=1, dtype="float32",
                       crs=CRS.from_string("EPSG:4326"), transform=from_origin(w, n, (e - w) / n_px, (n - s) / n_px),
                       nodata=-9999.0) as ds:  # fmt: skip
        ds.write(np.linspace(100.0, 900.0, n_px * n_px, dtype=np.float32).reshape(1, n_px, n_px))
    return path


def test_dem_picker_follows_the_model(project, dlg: AlignCRDialog, scene: dict, registry: list[dict],
                                      tmp_path: Path) -> None:  # fmt: skip
    """Shown only for a model built with a DEM input: a weights file whose card says dem=True, or a registry entry
    whose `models --json` field uses_dem is true; then a DEM layer is required and passed as --dem."""
    from engine.models import build_model, save

    layers = {k: add_layer(project, scene[k], k) for k in ("optical", "sar")}
    dem = add_layer(project, write_dem(tmp_path / "dem.tif"), "dem")
    dlg.optical_combo.setLayer(layers["optical"])
    dlg.sar_combo.setLayer(layers["sar"])
    dlg.output_widget.setFilePath(str(tmp_path / "out.tif"))

    def picker_shown() -> bool:
        return not dlg.dem_combo.isHidden() and not dlg.dem_label.isHidden()

    for name in ("aligncr-lite", "ssop-unet", "msop-unet", "gapfill"):  # registry defaults: no DEM branch
        assert dlg.select_model(name)
        assert not picker_shown() and not dlg.uses_dem, name
    assert "--dem" not in dlg.build_request().to_args()

    weights = save(build_model("ssop-unet", widths=(4, 4, 4, 4, 4, 4), dem=True, dem_width=4),
                   tmp_path / "ssop-dem.safetensors")  # fmt: skip
    dlg.settings.model = str(weights)
    dlg._fill_models()
    assert dlg.model_combo.currentData() == ("weights", str(weights)) and picker_shown()
    dlg.dem_combo.setLayer(None)
    assert any("was built with a DEM input: choose the DEM layer" in m for m in dlg.issue_messages())
    assert not dlg.run_button.isEnabled()
    dlg.dem_combo.setLayer(layers["optical"])  # 4 bands: not an elevation raster
    assert any("one band of elevation" in m for m in dlg.issue_messages()) and not dlg.run_button.isEnabled()
    dlg.dem_combo.setLayer(dem)
    assert dlg.validate().ok and dlg.run_button.isEnabled(), dlg.issue_messages()
    args = dlg.build_request().to_args()
    assert args[args.index("--dem") + 1] == str(tmp_path / "dem.tif")
    assert args[args.index("--weights") + 1] == str(weights)

    assert dlg.select_model("aligncr-lite")  # the DEM stays chosen in the hidden picker but is not passed
    assert not picker_shown() and "--dem" not in dlg.build_request().to_args()

    dlg.settings.models_cache = [dict(m, uses_dem=True) if m["name"] == "ssop-unet" else m for m in registry]
    dlg._fill_models()
    assert dlg.select_model("ssop-unet") and picker_shown()


@pytest.mark.slow
def test_processing_declouding_with_a_dem(processing_provider, scene: dict, tmp_path: Path,
                                          monkeypatch: pytest.MonkeyPatch) -> None:  # fmt: skip
    """The DEM parameter reaches the network end to end: U-Net weights built with dem=True run through
    `aligncr:declouding`, a different DEM gives a different output, and no DEM is the engine's one-line error."""
    import processing
    from qgis.core import QgsProcessingException

    from engine.models import build_model, save

    monkeypatch.setenv("ALIGNCR_PYTHON", PYTHON)
    torch = pytest.importorskip("torch")
    torch.manual_seed(0)
    model = build_model("ssop-unet", widths=(4, 4, 4, 4, 4, 4), dem=True, dem_width=4)
    for p in model.parameters():  # random, large enough that the DEM branch moves the output by whole DN
        p.data.normal_(0.0, 0.5)
    weights = save(model, tmp_path / "ssop-dem.safetensors")
    dem = write_dem(tmp_path / "dem.tif")
    with rasterio.open(dem) as src:
        profile, elevation = src.profile, src.read()
    with rasterio.open(tmp_path / "dem_high.tif", "w", **profile) as dst:
        dst.write(elevation + 2000.0)
    params = {"OPTICAL": str(scene["optical"]), "SAR": str(scene["sar"]), "WEIGHTS": str(weights), "DEM": str(dem),
              "TILE": 64, "OVERLAP": 8, "MODE": "raw"}  # fmt: skip (raw: the network's output everywhere)
    outs = []
    for name, dem_path in (("low", dem), ("again", dem), ("high", tmp_path / "dem_high.tif")):
        out = tmp_path / f"out_{name}.tif"
        res = processing.run("aligncr:declouding", params | {"DEM": str(dem_path), "OUTPUT": str(out)})
        assert res["OUTPUT"] == str(out)
        with rasterio.open(out) as ds:
            outs.append(ds.read().astype(np.int32))
    assert outs[0].shape == (4, SIZE, SIZE)
    np.testing.assert_array_equal(outs[0], outs[1])  # deterministic: the difference below is the DEM's
    assert np.abs(outs[0] - outs[2]).max() > 0

    with pytest.raises(QgsProcessingException, match="was built with a DEM input"):
        processing.run("aligncr:declouding", {k: v for k, v in params.items() if k != "DEM"}
                       | {"OUTPUT": str(tmp_path / "x.tif")})  # fmt: skip
    assert not (tmp_path / "x.tif").exists()
