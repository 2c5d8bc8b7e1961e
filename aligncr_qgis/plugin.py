"""Plugin entry: toolbar button, Raster ▸ Cloud removal ▸ Align-CR menu entry, and the Processing provider.

``initProcessing`` is separate from ``initGui`` because ``qgis_process`` (headless) loads plugins without a GUI
and calls only ``initProcessing`` (metadata ``hasProcessingProvider=yes``). ``unload`` removes everything it
added, so disabling or reloading the plugin leaves QGIS as it was.
"""

from __future__ import annotations

from typing import Any

from qgis.core import QgsApplication
from qgis.PyQt.QtCore import QCoreApplication
from qgis.PyQt.QtGui import QIcon
from qgis.PyQt.QtWidgets import QAction, QMenu

from aligncr_qgis.paths import icon_path
from aligncr_qgis.provider import AlignCRProvider

MENU_TITLE = "Cloud removal"
ACTION_TEXT = "Align-CR"  # the plugin's name: not translated


def tr(text: str) -> str:
    """``text`` in the user's language when a translation is installed (this class is no QObject to own ``tr``)."""
    return QCoreApplication.translate("AlignCRPlugin", text)


class AlignCRPlugin:
    def __init__(self, iface: Any) -> None:
        self.iface = iface
        self.provider: AlignCRProvider | None = None
        self.action: QAction | None = None
        self.menu: QMenu | None = None
        self.dialog: Any = None

    def initProcessing(self) -> None:  # noqa: N802 - QGIS API
        if self.provider is None:
            self.provider = AlignCRProvider()
            QgsApplication.processingRegistry().addProvider(self.provider)

    def initGui(self) -> None:  # noqa: N802 - QGIS API
        self.initProcessing()
        self.action = QAction(QIcon(icon_path()), ACTION_TEXT, self.iface.mainWindow())
        self.action.setObjectName("aligncr_action")
        self.action.setToolTip(tr("Align-CR: remove clouds from an optical image using Sentinel-1 SAR"))
        self.action.triggered.connect(self.show_dialog)
        self.iface.addToolBarIcon(self.action)
        raster_menu = self._raster_menu()
        if raster_menu is not None:
            self.menu = QMenu(tr(MENU_TITLE), raster_menu)
            self.menu.setObjectName("aligncr_menu")
            self.menu.setIcon(QIcon(icon_path()))
            self.menu.addAction(self.action)
            raster_menu.addMenu(self.menu)
        else:  # test stubs without a raster menu
            self.iface.addPluginToRasterMenu(tr(MENU_TITLE), self.action)

    def _raster_menu(self) -> QMenu | None:
        try:
            menu = self.iface.rasterMenu()
        except (AttributeError, TypeError):
            return None
        return menu if isinstance(menu, QMenu) else None

    def unload(self) -> None:
        if self.dialog is not None:
            self.dialog.cancel()  # a run in flight: stop the child process rather than orphan it
            self.dialog.close()
            self.dialog.deleteLater()
            self.dialog = None
        if self.action is not None:
            self.iface.removeToolBarIcon(self.action)
            if self.menu is not None:
                raster_menu = self._raster_menu()
                if raster_menu is not None:
                    raster_menu.removeAction(self.menu.menuAction())
                self.menu.deleteLater()
                self.menu = None
            else:
                self.iface.removePluginRasterMenu(tr(MENU_TITLE), self.action)
            self.action.deleteLater()
            self.action = None
        if self.provider is not None:
            QgsApplication.processingRegistry().removeProvider(self.provider)
            self.provider = None

    def show_dialog(self) -> Any:
        from aligncr_qgis.dialog import AlignCRDialog

        if self.dialog is None:
            self.dialog = AlignCRDialog(self.iface, self.iface.mainWindow())
        else:
            self.dialog.pick_default_layers()  # layers added since it was last open
        self.dialog.show()
        self.dialog.raise_()
        self.dialog.activateWindow()
        return self.dialog
