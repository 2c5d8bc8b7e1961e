"""Fixtures shared by the real-QGIS test modules (import them by name; this module needs ``qgis.core``)."""

from __future__ import annotations

import pytest
from qgis.core import QgsApplication, QgsProject, QgsSettings

from tests.qgis_helpers import PYTHON, wait_for


@pytest.fixture
def project(qgis_iface, monkeypatch: pytest.MonkeyPatch):
    """A clean project and clean ``aligncr/`` settings; the engine runs with the dev venv's Python."""
    monkeypatch.setenv("ALIGNCR_PYTHON", PYTHON)
    QgsSettings().remove("aligncr")
    proj = QgsProject.instance()
    proj.removeAllMapLayers()
    yield proj
    proj.removeAllMapLayers()  # release every raster before QGIS exits (segfault otherwise)
    QgsSettings().remove("aligncr")


@pytest.fixture(scope="module")
def processing_provider(qgis_processing: None):
    """The plugin's Processing provider, registered for one test module."""
    from aligncr_qgis.provider import AlignCRProvider

    provider = AlignCRProvider()
    QgsApplication.processingRegistry().addProvider(provider)
    yield provider
    QgsApplication.processingRegistry().removeProvider(provider)


@pytest.fixture
def dlg(project, qgis_iface):  # noqa: ANN001, ANN201 - fixtures; an AlignCRDialog
    """The dialog on a clean project, reports not opened in a browser; closed after the test."""
    from aligncr_qgis.dialog import AlignCRDialog

    d = AlignCRDialog(qgis_iface)
    d.open_report_in_browser = False
    yield d
    close_dialog(d)


def close_dialog(dialog) -> None:  # noqa: ANN001 - an AlignCRDialog
    """Teardown of a dialog fixture: cancel a running task (waiting for it), then close and delete the dialog."""
    if dialog.task is not None:
        dialog.cancel()
        wait_for(lambda: dialog.task is None, 20)
    dialog.close()
    dialog.deleteLater()
