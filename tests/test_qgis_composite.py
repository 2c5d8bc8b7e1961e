"""'Replace only the cloud' in a real (offscreen) QGIS: the dialog's check box and feather reach the engine as
--only-cloudy / --cloud-feather (with or without a mask); the Processing parameter runs end to end with real weights."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("qgis.core")

import rasterio  # noqa: E402
from qgis.core import QgsRasterLayer  # noqa: E402

from aligncr_qgis.dialog import AlignCRDialog  # noqa: E402
from aligncr_qgis.styling import style_qa  # noqa: E402
from tests.qgis_fixtures import close_dialog, processing_provider, project  # noqa: E402, F401 (fixtures)
from tests.qgis_helpers import PYTHON, add_layer, make_scene  # noqa: E402

pytestmark = pytest.mark.qgis
CLOUD_COLUMNS = 24  # the mask's left 24 of 64 columns are cloud


def write_mask(optical: Path, path: Path) -> Path:
    """A 1-band mask (1 = cloud) on the optical grid."""
    with rasterio.open(optical) as ds:
        profile = {**ds.profile, "count": 1, "dtype": "uint8", "nodata": None}
        cloud = np.zeros((1, ds.height, ds.width), dtype=np.uint8)
    cloud[:, :, :CLOUD_COLUMNS] = 1
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(cloud)
    return path



def test_dialog_check_box_reaches_the_engine(project, qgis_iface, tmp_path: Path) -> None:
    opt_path, sar_path = make_scene(tmp_path)
    dlg = AlignCRDialog(qgis_iface)
    try:
        dlg.optical_combo.setLayer(add_layer(project, opt_path, "optical"))
        dlg.sar_combo.setLayer(add_layer(project, sar_path, "sar"))
        dlg.output_widget.setFilePath(str(tmp_path / "out.tif"))
        dlg.mask_combo.setLayer(add_layer(project, write_mask(opt_path, tmp_path / "mask.tif"), "mask"))
        dlg.set_mode("raw")  # the best mode replaces only the cloud itself (tests/test_qgis_mode.py)
        assert not dlg.only_cloudy_check.isChecked() and not dlg.feather_spin.isEnabled()
        dlg.only_cloudy_check.setChecked(True)
        dlg.feather_spin.setValue(5)
        assert dlg.feather_spin.isEnabled()
        args = dlg.build_request().to_args()
        assert args[args.index("--only-cloudy") + 1 :][:2] == ["--cloud-feather", "5"]
        assert args[args.index("--mask") + 1] == str(tmp_path / "mask.tif")
        dlg.only_cloudy_check.setChecked(False)
        assert "--only-cloudy" not in dlg.build_request().to_args()
        assert "--qa" not in args
        dlg.qa_check.setChecked(True)
        qa_args = dlg.build_request().to_args()
        assert qa_args[qa_args.index("--qa") + 1] == str(tmp_path / "out_qa.tif")
        dlg.only_cloudy_check.setChecked(True)
        dlg.mask_combo.setLayer(None)  # no mask: the engine detects the clouds itself
        args = dlg.build_request().to_args()
        assert "--only-cloudy" in args and "--mask" not in args
    finally:
        close_dialog(dlg)  # saves the settings
    again = AlignCRDialog(qgis_iface)
    try:
        assert again.only_cloudy_check.isChecked() and again.feather_spin.value() == 5
        assert again.qa_check.isChecked()
    finally:
        close_dialog(again)


@pytest.mark.slow
def test_processing_only_cloudy_keeps_the_clear_pixels(processing_provider, tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:  # fmt: skip
    """The bundled aligncr-lite weights through `aligncr:declouding`: with ONLY_CLOUDY and a hard edge the clear
    pixels are the input bit for bit and the cloud is what the model writes without the option."""
    import processing

    from engine.stream.mode import BUNDLED

    if not BUNDLED["aligncr-lite"].is_file():
        pytest.skip("no bundled weights")
    monkeypatch.setenv("ALIGNCR_PYTHON", PYTHON)
    opt, sar = make_scene(tmp_path)
    mask = write_mask(opt, tmp_path / "mask.tif")
    params = {"OPTICAL": str(opt), "SAR": str(sar), "MASK": str(mask), "WEIGHTS": str(BUNDLED["aligncr-lite"]),
              "TILE": 64, "OVERLAP": 8, "MODE": "raw"}  # fmt: skip (raw: the best mode keeps the clear pixels itself)
    outs = {}
    qa = tmp_path / "qa.tif"
    for name, extra in (("all", {}), ("cloudy", {"ONLY_CLOUDY": True, "CLOUD_FEATHER": 0, "QA": str(qa)})):
        out = tmp_path / f"{name}.tif"
        processing.run("aligncr:declouding", params | extra | {"OUTPUT": str(out)})
        with rasterio.open(out) as ds:
            outs[name] = ds.read().astype(np.int32)
    with rasterio.open(opt) as ds:
        original = ds.read().astype(np.int32)
    cloud = np.s_[:, :, :CLOUD_COLUMNS]
    clear = np.s_[:, :, CLOUD_COLUMNS:]
    np.testing.assert_array_equal(outs["cloudy"][clear], original[clear])
    np.testing.assert_array_equal(outs["cloudy"][cloud], outs["all"][cloud])
    assert (outs["all"][clear] != original[clear]).mean() > 0.5  # without the option the model changes them
    with rasterio.open(qa) as ds:  # the QA layer says which pixels the model wrote
        share = ds.read(1)
    assert (share[:, :CLOUD_COLUMNS] == 100).all() and (share[:, CLOUD_COLUMNS:] == 0).all()
    layer = QgsRasterLayer(str(qa), "qa")
    style_qa(layer)
    assert layer.renderer().type() == "singlebandpseudocolor"
    assert layer.dataProvider().sourceNoDataValue(1) == 255

    # no mask: the clouds are detected on the optical image; this random scene has none, so nothing changes
    processing.run("aligncr:declouding", {k: v for k, v in params.items() if k != "MASK"}
                   | {"ONLY_CLOUDY": True, "OUTPUT": str(tmp_path / "detected.tif")})  # fmt: skip
    with rasterio.open(tmp_path / "detected.tif") as ds:
        np.testing.assert_array_equal(ds.read().astype(np.int32), original)
