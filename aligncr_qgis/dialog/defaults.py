"""The dialog's defaults line: which remembered settings differ from the defaults, *Restore defaults*, and the
warning for weights fine-tuned far from this scene.

A part of :class:`aligncr_qgis.dialog.AlignCRDialog` (a mixin: its widgets are the dialog's attributes). Why: the
dialog remembers every setting (a QGIS habit worth keeping), so *Adapt 80*, the confidence layer, the QA layer and
a weights file fine-tuned on Punjab became the defaults of later runs on other scenes — 15 s turned into minutes
without a word (issue 28). The line names what differs, slow ones first; the defaults are
:class:`aligncr_qgis.settings.PluginSettings`'s, which are the engine's options table's (never written here), so a
new engine default shows up here by itself. A weights file written by ``engine finetune`` records the area it was
trained on (``bounds_lonlat`` in its card's record), so the dialog can say when this scene lies far from it.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from qgis.core import QgsCoordinateReferenceSystem, QgsCoordinateTransform, QgsProject, QgsRectangle
from qgis.PyQt.QtWidgets import QHBoxLayout, QLabel, QPushButton

from aligncr_qgis import layers as L
from aligncr_qgis.finetune_request import finetune_info
from aligncr_qgis.settings import PluginSettings

FAR_KM = 100.0  # a scene further than this from the fine-tuning area gets the warning
EARTH_KM = 6371.0


@dataclass
class Setting:
    """One remembered setting: its words in the line, whether it is slow, its value now, and how to restore it."""

    text: Callable[[Any], str]
    slow: bool
    current: Callable[[], Any]
    default: Any
    restore: Callable[[Any], None]
    applies: Callable[[], bool] = lambda: True  # a setting that means nothing now is not listed (the feather)


def distance_km(lon: float, lat: float, bounds_lonlat: list[float]) -> float:
    """Great-circle distance from (lon, lat) to the nearest point of a lon/lat box (0 inside it)."""
    lon0, lat0, lon1, lat1 = bounds_lonlat
    near_lon, near_lat = min(max(lon, lon0), lon1), min(max(lat, lat0), lat1)
    p1, p2, dl = math.radians(lat), math.radians(near_lat), math.radians(near_lon - lon)
    a = math.sin((p2 - p1) / 2) ** 2 + math.cos(p1) * math.cos(p2) * math.sin(dl / 2) ** 2
    return 2 * EARTH_KM * math.asin(min(1.0, math.sqrt(a)))


class DefaultsLine:
    """The line under the panels naming what differs from the defaults, and *Restore defaults*."""

    def _build_defaults_row(self) -> QHBoxLayout:
        row = QHBoxLayout()
        self.defaults_label = QLabel("", self)
        self.defaults_label.setWordWrap(True)
        self.defaults_label.setToolTip(self.tr("Settings are remembered between runs; these differ from the defaults "
                                               "(slow ones first)"))
        self.restore_defaults_button = QPushButton(self.tr("Restore defaults"), self)
        self.restore_defaults_button.setToolTip(self.tr("Put every setting listed on the left back to its default "
                                                        "(inputs, output file and Python are kept)"))
        self.restore_defaults_button.clicked.connect(self.restore_defaults)
        row.addWidget(self.defaults_label, 1)
        row.addWidget(self.restore_defaults_button)
        return row

    def _settings_table(self) -> list[Setting]:
        """Every remembered run setting, with the defaults of a fresh :class:`PluginSettings`."""
        d = PluginSettings()
        spin = lambda w: (w.value, w.setValue)  # noqa: E731 - a getter/setter pair
        check = lambda w: (w.isChecked, w.setChecked)  # noqa: E731
        rows: list[tuple[Callable[[Any], str], bool, tuple, Any]] = [
            (lambda v: self.tr("Adapt to this scene: {0} steps").format(v), True, spin(self.adapt_spin), d.adapt),
            (lambda v: self.tr("confidence layer (4× slower)"), True, check(self.confidence_check), d.write_confidence),
            (lambda v: self.tr("colour anchor"), True, check(self.colour_anchor_check), d.colour_anchor),
            (lambda v: self.tr("report"), True, check(self.report_check), d.write_report),
            (lambda v: self.tr("QA layer"), False, check(self.qa_check), d.write_qa),
            (lambda v: self.tr("NDVI"), False, check(self.ndvi_check), d.make_ndvi),
            (lambda v: self.tr("COG"), False, check(self.cog_check), d.cog),
            (lambda v: self.tr("tile {0} px").format(v), False, spin(self.tile_spin), d.tile),
            (lambda v: self.tr("overlap {0} px").format(v), False, spin(self.overlap_spin), d.overlap),
            (lambda v: self.tr("batch {0}").format(v), False, spin(self.batch_spin), d.batch),
            (lambda v: self.tr("not added to the map") if not v else "", False, check(self.add_to_map_check),
             d.add_to_map),
            (lambda v: self.tr("cloudy input restyled"), False, check(self.style_optical_check), d.style_optical),
        ]
        table = [Setting(text, slow, get, default, put) for text, slow, (get, put), default in rows]
        table[2:2] = self._forced_settings(d)
        table.append(Setting(lambda v: self.tr("feather {0} px").format(v), False, self.feather_spin.value,
                             d.cloud_feather, self.feather_spin.setValue, self.only_cloudy_check.isChecked))
        table += [Setting(lambda v: self.tr("SAR units {0}").format(v), False, self.units_combo.currentData,
                          d.sar_units, self._set_combo(self.units_combo)),
                  Setting(lambda v: self.tr("device {0}").format(v), False, self.device_combo.currentData, d.device,
                          self._set_combo(self.device_combo)),
                  Setting(self._model_text, False, self._current_model, self.mode_default_model(), self.select_model),
                  # after the model: the model list follows the mode when it shows the previous mode's default
                  Setting(lambda v: self.tr("mode {0}").format(v), False, self.current_mode, d.mode, self.set_mode)]
        return table

    def _forced_settings(self, d: PluginSettings) -> list[Setting]:
        """The scene check and *Replace only the cloud*: the user's own values (what the best mode shows is the
        mode's doing), named only where they mean something: where the mode does not switch them on."""
        return [self._own_setting("scene_check", lambda v: self.tr("scene check"), True, d.scene_check),
                self._own_setting("only_cloudy", lambda v: self.tr("replace only the cloud") if v else self.tr(
                    "model everywhere"), False, d.only_cloudy)]

    def _own_setting(self, name: str, text: Callable[[Any], str], slow: bool, default: bool) -> Setting:
        return Setting(text, slow, lambda: self.own_check(name), default, lambda v: self.set_own_check(name, v),
                       lambda: not self.mode_forces(name))

    @staticmethod
    def _set_combo(combo: Any) -> Callable[[Any], None]:
        return lambda value: combo.setCurrentIndex(max(0, combo.findData(value)))

    def _current_model(self) -> str:
        kind, value = self.model_combo.currentData() or ("registry", "")
        return value if kind in ("registry", "weights") else ""

    def _model_text(self, value: str) -> str:
        name = Path(value).name if value.endswith(".safetensors") else value
        return self.tr("weights {0}").format(name) if value.endswith(".safetensors") else self.tr(
            "model {0}").format(name)

    def changed_from_defaults(self) -> list[str]:
        """What differs from the defaults, slow settings first (the feather only with *Replace only the cloud*)."""
        found = []
        for row in self._settings_table():
            value = row.current()
            if value == row.default or not row.applies():
                continue
            text = row.text(value)
            if text:
                found.append((not row.slow, text))
        return [text for _, text in sorted(found, key=lambda item: item[0])]

    def _update_defaults_line(self) -> None:
        changed = self.changed_from_defaults()
        self.defaults_label.setText(self.tr("Not the defaults: {0}.").format(", ".join(changed)) if changed else "")
        self.defaults_label.setVisible(bool(changed))
        self.restore_defaults_button.setVisible(bool(changed))

    def restore_defaults(self) -> None:
        """Every run setting back to its default; the inputs, output file and Python stay."""
        for row in self._settings_table():
            row.restore(row.default)
        self.settings.model = ""
        self.validate()

    def _check_weights_area(self, res: L.CheckResult) -> None:
        """Weights fine-tuned on an area far from this scene: a warning with the distance (the card knows the area)."""
        kind, value = self.model_combo.currentData() or ("registry", "")
        layer = self.optical_combo.currentLayer()
        if kind != "weights" or layer is None or not layer.crs().isValid():
            return
        bounds = (finetune_info(value).get("archive") or {}).get("bounds_lonlat")
        if not (isinstance(bounds, list) and len(bounds) == 4):
            return
        centre = _lonlat_centre(layer.extent(), layer.crs())
        km = distance_km(centre[0], centre[1], [float(b) for b in bounds])
        if km > FAR_KM:
            res.warning(self.tr("The weights '{0}' were fine-tuned on an area about {1:,.0f} km from this scene "
                                "(lon {2:.2f}…{3:.2f}, lat {4:.2f}…{5:.2f}); here the bundled model may do better.")
                        .format(Path(value).name, km, *bounds[0::2], *bounds[1::2]))


def _lonlat_centre(extent: QgsRectangle, crs: QgsCoordinateReferenceSystem) -> tuple[float, float]:
    """The centre of ``extent`` (in ``crs``) in longitude, latitude."""
    wgs84 = QgsCoordinateReferenceSystem("EPSG:4326")
    box = QgsCoordinateTransform(crs, wgs84, QgsProject.instance()).transformBoundingBox(extent)
    return box.center().x(), box.center().y()
