"""The plugin hands the engine any GDAL-backed layer (a file, a file in a zip, a subdataset), and says in one line
how to save a web layer (WMS/XYZ) first."""

from __future__ import annotations

import zipfile
from pathlib import Path

import pytest

pytest.importorskip("qgis.core")

from qgis.core import QgsRasterLayer  # noqa: E402

from aligncr_qgis.layers import LayerError, layer_path  # noqa: E402
from tests.qgis_fixtures import project  # noqa: E402, F401 (fixture)
from tests.qgis_helpers import write_optical  # noqa: E402


def test_file_zip_member_and_subdataset_layers_pass_through(project, tmp_path: Path) -> None:  # noqa: F811
    tif = write_optical(tmp_path / "opt.tif")
    assert layer_path(QgsRasterLayer(str(tif), "file", "gdal")) == str(tif)
    with zipfile.ZipFile(tmp_path / "scene.zip", "w") as zf:
        zf.write(tif, "inside/opt.tif")
    zipped = f"/vsizip/{tmp_path / 'scene.zip'}/inside/opt.tif"
    layer = QgsRasterLayer(zipped, "zipped", "gdal")
    assert layer.isValid() and layer_path(layer) == zipped
    gtiff = f"GTIFF_DIR:1:{tif}"  # a subdataset-style name GDAL opens
    layer = QgsRasterLayer(gtiff, "sub", "gdal")
    assert layer.isValid() and layer_path(layer) == gtiff


def test_web_layers_get_a_save_first_error(project) -> None:  # noqa: F811
    xyz = QgsRasterLayer("type=xyz&url=http://127.0.0.1:9/{z}/{x}/{y}.png", "tiles", "wms")
    with pytest.raises(LayerError, match=r"^layer 'tiles' is a WMS layer, which the engine cannot read: save it as a "
                                         r"GeoTIFF first"):  # fmt: skip
        layer_path(xyz)


def test_missing_file_is_still_refused(project, tmp_path: Path) -> None:  # noqa: F811
    layer = QgsRasterLayer(str(tmp_path / "gone.tif"), "gone", "gdal")
    with pytest.raises(LayerError, match="is not a local file"):
        layer_path(layer)
