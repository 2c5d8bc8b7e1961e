"""*Install engine…* end to end in a real QGIS (issue 16): from a local wheel folder, QGIS's Python makes a venv in a
temporary folder, pip installs the engine's packages into it offline, the *Python* field is set, the automatic
environment check passes and the dialog declouds a scene with it — no terminal.

Needs a folder of wheels for this machine (``ALIGNCR_WHEELS``), e.g. made once with
``python -m pip download -d WHEELS 'torch==2.13.0+cpu' 'numpy<2' rasterio affine scikit-image tqdm safetensors``;
skipped without it (CI has no wheel folder; a real install takes about a minute and 1 GB)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

pytest.importorskip("qgis.core")

from qgis.core import QgsProject, QgsRasterLayer  # noqa: E402

from aligncr_qgis.dialog import AlignCRDialog  # noqa: E402
from aligncr_qgis.installer import InstallPlan, qgis_python  # noqa: E402
from tests.qgis_fixtures import close_dialog, project  # noqa: E402, F401 (fixtures)
from tests.qgis_helpers import make_scene, wait_for  # noqa: E402

pytestmark = [pytest.mark.qgis, pytest.mark.slow]
WHEELS = os.environ.get("ALIGNCR_WHEELS", "")


@pytest.mark.skipif(not os.path.isdir(WHEELS), reason="set ALIGNCR_WHEELS to a folder of wheels for this machine")
def test_install_engine_offline_then_decloud(project: QgsProject, qgis_iface, tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("ALIGNCR_PYTHON")  # the field, set by the install, must decide
    monkeypatch.setenv("PIP_NO_CACHE_DIR", "1")
    dlg = AlignCRDialog(qgis_iface)
    dlg.open_report_in_browser = False
    try:
        plan = InstallPlan(base_python=qgis_python(), venv=tmp_path / "venv", wheel_dir=WHEELS)
        assert dlg.install_engine(plan) is not None
        seen: list[tuple[int, str]] = []
        window = dlg.install_progress
        window.progress.valueChanged.connect(lambda v: seen.append((v, window.step_label.text())))
        assert wait_for(lambda: dlg.install_task is None, 900), "the install did not finish"
        # Issue 28: pip's stdout in the window as it comes, and a bar that moves with the wheels it unpacks.
        log = window.log.toPlainText()
        assert "Processing " in log and "Installing collected packages" in log and "Successfully installed" in log
        during_pip = {v for v, text in seen if "install the engine's packages" in text and v < 100}
        assert len(during_pip) >= 5 and any(" MB" in text for _, text in seen), seen
        assert [v for v, _ in seen] == sorted(v for v, _ in seen) and not plan.pip_tmp.exists()
        assert dlg.python_widget.filePath() == str(tmp_path / "venv" / "bin" / "python"), dlg.status_label.text()
        assert wait_for(lambda: dlg.env_task is None, 300)  # the environment check that follows the install
        assert dlg.settings.env_cache.get("ok") is True, dlg.settings.env_cache
        assert dlg.current_python() == str(tmp_path / "venv" / "bin" / "python")
        opt, sar = make_scene(tmp_path / "scene")
        optical, s1 = QgsRasterLayer(str(opt), "optical"), QgsRasterLayer(str(sar), "sar")
        project.addMapLayers([optical, s1])
        dlg.optical_combo.setLayer(optical)
        dlg.sar_combo.setLayer(s1)
        dlg.output_widget.setFilePath(str(tmp_path / "out.tif"))
        assert dlg.select_model("identity")
        finished: list[bool] = []
        dlg.runFinished.connect(finished.append)
        assert dlg.run() is not None, dlg.issue_messages()
        assert wait_for(lambda: bool(finished), 300) and finished == [True], dlg.status_label.text()
        assert (tmp_path / "out.tif").is_file()
    finally:
        close_dialog(dlg)


def test_unreachable_cpu_index_stops_the_install_and_says_why(project: QgsProject, qgis_iface, tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """Issue 28: with PyTorch's CPU index unreachable, pip fell back to PyPI's CUDA build (a 5.8 GB venv). Now the
    install stops at the PyTorch step — nothing else is fetched — and says why, with the size of the alternative.
    The index is a closed port on this machine; pip's own configuration is left out (this machine's points at a
    local wheel mirror that would otherwise answer)."""
    for name in ("PIP_FIND_LINKS", "PIP_INDEX_URL", "PIP_EXTRA_INDEX_URL"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("PIP_CONFIG_FILE", os.devnull)
    dlg = AlignCRDialog(qgis_iface)
    before = dlg.python_widget.filePath()
    try:
        plan = InstallPlan(base_python=qgis_python(), venv=tmp_path / "venv", platform="linux",
                           cpu_index="http://127.0.0.1:9/whl/cpu")
        assert dlg.install_engine(plan) is not None
        window = dlg.install_progress
        assert wait_for(lambda: dlg.install_task is None, 300), "the install did not end"
        text = window.step_label.text()
        assert text.startswith("Failed: PyTorch's CPU index (http://127.0.0.1:9/whl/cpu) could not be reached"), text
        assert "about 5.8 GB instead of about 1 GB" in text
        assert any("could not be reached" in item.text() for item in dlg.bar.items())
        log = window.log.toPlainText()
        assert log.count("-m pip install") == 1 and "--index-url http://127.0.0.1:9/whl/cpu" in log, log
        assert "rasterio" not in log  # the step that would reach PyPI never ran
        assert not list((tmp_path / "venv").glob("lib/python*/site-packages/torch"))
        assert dlg.python_widget.filePath() == before and not plan.pip_tmp.exists()
    finally:
        if dlg.install_progress is not None:
            dlg.install_progress.close()
        close_dialog(dlg)


def test_install_progress_window_shows_pip_output_and_the_failure(project: QgsProject, qgis_iface,
                                                                  tmp_path: Path) -> None:
    """No wheel folder needed: an empty one makes pip fail offline after the venv is made. The progress window
    follows the task (steps, bar), shows both commands and pip's own refusal as they print, and ends with the
    failure; the Python field is not switched to the half-made environment."""
    empty = tmp_path / "wheels"
    empty.mkdir()
    dlg = AlignCRDialog(qgis_iface)
    before = dlg.python_widget.filePath()
    try:
        plan = InstallPlan(base_python=qgis_python(), venv=tmp_path / "venv", wheel_dir=str(empty))
        assert dlg.install_engine(plan) is not None
        window = dlg.install_progress
        assert window is not None and window.isVisible() and window.cancel_button.isEnabled()
        assert wait_for(lambda: dlg.install_task is None, 300), "the install did not end"
        log = window.log.toPlainText()
        assert "-m venv" in log and "-m pip install" in log and "--no-index" in log, log
        assert "No matching distribution" in log or "Could not find a version" in log, log
        assert window.step_label.text().startswith("Failed:"), window.step_label.text()
        assert not window.cancel_button.isEnabled()
        assert dlg.python_widget.filePath() == before
    finally:
        if dlg.install_progress is not None:
            dlg.install_progress.close()
        close_dialog(dlg)
