"""The packaged plugin in a real QGIS: the built zip loads, adds its toolbar button and menu, registers the
``aligncr`` Processing provider, unloads cleanly; the algorithms run in-process and headless via qgis_process."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

pytest.importorskip("qgis.core")

import rasterio  # noqa: E402
from qgis.core import QgsApplication  # noqa: E402
from qgis.PyQt.QtWidgets import QMainWindow, QMenu  # noqa: E402

from aligncr_qgis.package import build  # noqa: E402
from tests.qgis_fixtures import processing_provider  # noqa: E402, F401 (fixtures)
from tests.qgis_helpers import PYTHON, fake_engine, make_scene, qgis_env, write_optical, write_sar  # noqa: E402

pytestmark = pytest.mark.qgis


class RecordingIface:
    """The slice of QgisInterface the plugin uses, recording what it adds (pytest-qgis's stub records nothing)."""

    def __init__(self) -> None:
        self.window = QMainWindow()
        self.raster_menu = QMenu("&Raster", self.window)
        self.window.menuBar().addMenu(self.raster_menu)
        self.toolbar_actions: list = []

    def mainWindow(self) -> QMainWindow:  # noqa: N802
        return self.window

    def rasterMenu(self) -> QMenu:  # noqa: N802
        return self.raster_menu

    def addToolBarIcon(self, action) -> None:  # noqa: N802, ANN001
        self.toolbar_actions.append(action)

    def removeToolBarIcon(self, action) -> None:  # noqa: N802, ANN001
        self.toolbar_actions.remove(action)

    def messageBar(self):  # noqa: N802, ANN201 - qgis.utils reports plugin exceptions there
        from qgis.gui import QgsMessageBar

        if not hasattr(self, "_bar"):
            self._bar = QgsMessageBar(self.window)
        return self._bar

    def menu_titles(self) -> list[str]:
        return [a.text() for a in self.raster_menu.actions()]


@pytest.fixture(scope="module")
def plugin_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The built zip, unpacked into a fresh plugin folder (what "Install from ZIP" does)."""
    folder = tmp_path_factory.mktemp("plugins")
    with zipfile.ZipFile(build(folder / "aligncr_qgis.zip")) as zf:
        zf.extractall(folder / "installed")
    return folder / "installed"


@pytest.fixture
def installed_plugin(plugin_dir: Path, monkeypatch: pytest.MonkeyPatch, qgis_app: QgsApplication):
    """Import ``aligncr_qgis`` from the unpacked zip (not the repo), then put the repo's modules back."""
    import qgis.utils

    stashed = {k: v for k, v in sys.modules.items() if k == "aligncr_qgis" or k.startswith("aligncr_qgis.")}
    for key in stashed:
        del sys.modules[key]
    monkeypatch.syspath_prepend(str(plugin_dir))
    iface = RecordingIface()
    monkeypatch.setattr(qgis.utils, "iface", iface)
    # What QGIS does at start-up: scan the plugin folders, parse every metadata.txt.
    monkeypatch.setattr(qgis.utils, "plugin_paths", [str(plugin_dir)])
    qgis.utils.updateAvailablePlugins()
    yield iface
    if "aligncr_qgis" in qgis.utils.active_plugins:
        qgis.utils.unloadPlugin("aligncr_qgis")
    for key in [k for k in sys.modules if k == "aligncr_qgis" or k.startswith("aligncr_qgis.")]:
        del sys.modules[key]
    sys.modules.update(stashed)


def test_zip_plugin_loads_and_unloads(installed_plugin: RecordingIface, plugin_dir: Path) -> None:
    import qgis.utils

    registry = QgsApplication.processingRegistry()
    assert registry.providerById("aligncr") is None
    assert "aligncr_qgis" in qgis.utils.available_plugins
    assert qgis.utils.pluginMetadata("aligncr_qgis", "name") == "Align-CR Cloud Removal"
    assert qgis.utils.pluginMetadata("aligncr_qgis", "hasProcessingProvider") == "yes"
    assert qgis.utils.loadPlugin("aligncr_qgis")
    assert Path(sys.modules["aligncr_qgis"].__file__).parent == plugin_dir / "aligncr_qgis"
    assert qgis.utils.startPlugin("aligncr_qgis")

    from aligncr_qgis.paths import engine_root, icon_path

    assert engine_root() == plugin_dir / "aligncr_qgis"  # the bundled engine, not the repo's
    assert icon_path().startswith(str(plugin_dir))
    assert [a.text() for a in installed_plugin.toolbar_actions] == ["Align-CR"]
    assert "Cloud removal" in installed_plugin.menu_titles()
    provider = registry.providerById("aligncr")
    assert provider is not None and provider.name() == "Align-CR"
    assert sorted(a.id() for a in provider.algorithms()) == ["aligncr:declouding", "aligncr:evaluate",
                                                          "aligncr:finetune", "aligncr:ndvi"]

    installed_plugin.toolbar_actions[0].trigger()  # the toolbar button opens the dialog
    dialog = qgis.utils.plugins["aligncr_qgis"].dialog
    assert dialog is not None and dialog.isVisible() and dialog.windowTitle().startswith("Align-CR")

    assert qgis.utils.unloadPlugin("aligncr_qgis")
    assert not dialog.isVisible()
    assert installed_plugin.toolbar_actions == []
    assert "Cloud removal" not in installed_plugin.menu_titles()
    assert registry.providerById("aligncr") is None


@pytest.mark.slow
def test_processing_evaluate_writes_report(processing_provider, tmp_path: Path,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    import processing

    monkeypatch.setenv("ALIGNCR_PYTHON", PYTHON)
    cloudy = write_optical(tmp_path / "cloudy.tif", seed=0)
    reference = write_optical(tmp_path / "reference.tif", seed=1)
    res = processing.run("aligncr:evaluate", {"OPTICAL": str(cloudy), "PREDICTION": str(cloudy),
                                              "REFERENCE": str(reference), "OUTPUT": str(tmp_path / "report")})
    assert Path(res["OUTPUT"]) == tmp_path / "report"
    assert Path(res["HTML"]) == tmp_path / "report" / "report.html" and Path(res["HTML"]).is_file()
    assert (tmp_path / "report" / "report.json").is_file()


@pytest.mark.slow
def test_algorithms_chain_in_a_processing_model(processing_provider, tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """What the model builder produces: declouding → NDVI, the NDVI input wired to the declouded output.

    Also the in-process test of both algorithms (``processing.run`` with typed parameters)."""
    import processing
    from qgis.core import (
        QgsProcessingModelAlgorithm,
        QgsProcessingModelChildAlgorithm,
        QgsProcessingModelChildParameterSource,
        QgsProcessingModelOutput,
        QgsProcessingModelParameter,
        QgsProcessingParameterRasterLayer,
    )

    monkeypatch.setenv("ALIGNCR_PYTHON", PYTHON)
    model = QgsProcessingModelAlgorithm("declouded NDVI", "tests")
    for name in ("optical", "sar"):
        model.addModelParameter(QgsProcessingParameterRasterLayer(name, name), QgsProcessingModelParameter(name))
    decloud = QgsProcessingModelChildAlgorithm("aligncr:declouding")
    decloud.setChildId("decloud")
    decloud.addParameterSources("OPTICAL", [QgsProcessingModelChildParameterSource.fromModelParameter("optical")])
    decloud.addParameterSources("SAR", [QgsProcessingModelChildParameterSource.fromModelParameter("sar")])
    decloud.addParameterSources("MODEL", [QgsProcessingModelChildParameterSource.fromStaticValue("identity")])
    ndvi = QgsProcessingModelChildAlgorithm("aligncr:ndvi")
    ndvi.setChildId("ndvi")
    ndvi.addParameterSources("INPUT", [QgsProcessingModelChildParameterSource.fromChildOutput("decloud", "OUTPUT")])
    out = QgsProcessingModelOutput("ndvi_out")
    out.setChildOutputName("OUTPUT")
    ndvi.setModelOutputs({"ndvi_out": out})
    model.addChildAlgorithm(decloud)
    model.addChildAlgorithm(ndvi)
    model.updateDestinationParameters()
    assert model.dependsOnChildAlgorithms("ndvi") == {"decloud"}

    opt, sar = make_scene(tmp_path)
    target = tmp_path / "model_ndvi.tif"
    res = processing.run(model, {"optical": str(opt), "sar": str(sar), "ndvi:ndvi_out": str(target)})
    assert Path(res["ndvi:ndvi_out"]) == target
    # identity model: the declouded image is the input, so the NDVI is the input's NDVI
    with rasterio.open(opt) as src, rasterio.open(target) as dst:
        r, nir = src.read(3).astype("float64"), src.read(4).astype("float64")
        assert dst.count == 1 and dst.dtypes[0] == "float32" and dst.transform == src.transform
        assert abs(dst.read(1) - (nir - r) / (nir + r)).max() < 1e-5


def test_processing_progress_and_cancel(processing_provider, tmp_path: Path,
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """Progress reaches QgsProcessingFeedback; feedback.cancel() (the dialog's Cancel) stops the engine."""
    import threading

    import processing
    from qgis.core import QgsProcessingException, QgsProcessingFeedback

    from aligncr_qgis.algorithms import base

    monkeypatch.setattr(base, "engine_root", lambda: fake_engine(tmp_path / "fake", tiles=100, delay=0.05))
    monkeypatch.setenv("ALIGNCR_PYTHON", PYTHON)
    opt, sar = make_scene(tmp_path)
    feedback = QgsProcessingFeedback()
    seen: list[float] = []

    def on_progress(value: float) -> None:
        seen.append(value)
        if value >= 10 and not feedback.isCanceled():
            threading.Timer(0.05, feedback.cancel).start()  # from another thread, as the GUI would

    feedback.progressChanged.connect(on_progress)
    out = tmp_path / "never.tif"
    with pytest.raises(QgsProcessingException, match="cancelled"):
        processing.run("aligncr:declouding", {"OPTICAL": str(opt), "SAR": str(sar), "MODE": "raw",
                                              "OUTPUT": str(out)}, feedback=feedback)
    assert seen and 10 <= max(seen) < 60
    assert not out.exists() and not list(tmp_path.glob("never.tif*"))


def test_processing_reports_engine_error_in_one_line(processing_provider, tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    import processing
    from qgis.core import QgsProcessingException

    monkeypatch.setenv("ALIGNCR_PYTHON", PYTHON)
    opt = write_optical(tmp_path / "opt.tif")
    far = write_sar(tmp_path / "far.tif", shift_m=50_000.0)  # SAR 50 km away: no overlap
    with pytest.raises(QgsProcessingException) as exc:
        processing.run("aligncr:declouding", {"OPTICAL": str(opt), "SAR": str(far), "MODEL": "identity",
                                              "OUTPUT": str(tmp_path / "o.tif")})
    assert "does not overlap" in str(exc.value) and "Traceback" not in str(exc.value)
    assert not (tmp_path / "o.tif").exists()


QGIS_PROCESS = shutil.which("qgis_process.bin")


@pytest.mark.slow
@pytest.mark.skipif(QGIS_PROCESS is None, reason="qgis_process.bin not installed")
def test_qgis_process_headless_declouding(plugin_dir: Path, tmp_path: Path) -> None:
    """`qgis_process.bin run aligncr:declouding` with the zip's plugin in an isolated profile (two CRSs)."""
    env = qgis_env(plugin_dir, tmp_path / "profile")
    enable = subprocess.run([QGIS_PROCESS, "plugins", "enable", "aligncr_qgis"], env=env, capture_output=True,
                            text=True, timeout=120, check=False)
    assert enable.returncode == 0, enable.stderr[-2000:]
    opt, sar = make_scene(tmp_path / "scene")  # optical UTM 33N, SAR EPSG:4326
    out = tmp_path / "qp_out.tif"
    res = subprocess.run(
        [QGIS_PROCESS, "--json", "run", "aligncr:declouding", "--", f"OPTICAL={opt}", f"SAR={sar}",
         "MODEL=identity", "TILE=64", "OVERLAP=8", f"OUTPUT={out}"],
        env=env, capture_output=True, text=True, timeout=180, check=False,
    )
    assert res.returncode == 0, (res.stdout[-2000:], res.stderr[-2000:])
    payload = json.loads(res.stdout[res.stdout.index("{"):])
    assert Path(payload["results"]["OUTPUT"]) == out
    with rasterio.open(opt) as a, rasterio.open(out) as b:
        assert b.crs == a.crs and b.transform == a.transform and b.count == 4
        assert (a.read() == b.read()).all()


def test_declouding_model_parameter_defaults_to_the_engine_default(processing_provider) -> None:
    """MODEL is an enum of the registered names (read without torch) whose default is the engine's own default
    (issue 16: it was a free-text field defaulting to ``identity``); the help lists every parameter's default."""
    from tests.helpers_models import engine_models

    alg = QgsApplication.processingRegistry().algorithmById("aligncr:declouding")
    model = alg.parameterDefinition("MODEL")
    assert model.usesStaticStrings() and model.defaultValue() == "default"
    assert model.options()[0] == "default" and sorted(model.options()[1:]) == sorted(engine_models())
    assert "aligncr-lite" in model.description()  # the bundled weights are installed in this checkout
    assert alg.parameterDefinition("WEIGHTS") is not None
    helptext = alg.shortHelpString()
    for name, default in (("MODEL", "default"), ("TILE", "256"), ("DEVICE", "auto"), ("SAR_UNITS", "Auto-detect"),
                          ("ONLY_CLOUDY", "no"), ("WEIGHTS", "none (optional)")):
        assert f"\n{name}: {default}\n" in helptext


@pytest.mark.slow
@pytest.mark.skipif(QGIS_PROCESS is None, reason="qgis_process.bin not installed")
def test_qgis_process_without_model_runs_the_bundled_model(plugin_dir: Path, tmp_path: Path) -> None:
    """Issue 16's "done when": `qgis_process.bin run aligncr:declouding -- OPTICAL=… SAR=… OUTPUT=…` without MODEL
    runs the bundled aligncr-lite weights — it used to return the input bit for bit (identity) and report success."""
    env = qgis_env(plugin_dir, tmp_path / "profile")
    enable = subprocess.run([QGIS_PROCESS, "plugins", "enable", "aligncr_qgis"], env=env, capture_output=True,
                            text=True, timeout=120, check=False)
    assert enable.returncode == 0, enable.stderr[-2000:]
    opt, sar = make_scene(tmp_path / "scene")
    out = tmp_path / "default_model.tif"
    res = subprocess.run(
        [QGIS_PROCESS, "run", "aligncr:declouding", "--", f"OPTICAL={opt}", f"SAR={sar}", "TILE=64", "OVERLAP=8",
         "DEVICE=cpu", "MODE=raw", f"OUTPUT={out}"],  # raw: the model everywhere (best keeps this cloudless scene)
        env=env, capture_output=True, text=True, timeout=300, check=False,
    )
    assert res.returncode == 0, (res.stdout[-2000:], res.stderr[-2000:])
    assert "aligncr-lite on cpu" in res.stdout
    with rasterio.open(opt) as a, rasterio.open(out) as b:
        assert b.count == 4 and not (a.read() == b.read()).all()  # not the identity's copy of the input
