"""Issue 26, item 3, in a real QGIS: the default run is the best mode — the dialog's *Mode* and Processing's MODE
default to it (the options table's default), the boxes the best mode switches on say so, the model list's default
follows the mode by the engine's own rule, and the guard's sentence (the model or the non-learned estimate inside
the cloud, and the check's margin) reaches the dialog's message and the Processing log. ``--mode raw`` stays."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

pytest.importorskip("qgis.core")

import rasterio  # noqa: E402
from qgis.core import QgsApplication, QgsProcessingContext, QgsProcessingFeedback, QgsSettings  # noqa: E402
from qgis.PyQt.QtCore import Qt  # noqa: E402

from aligncr_qgis import model_list  # noqa: E402
from aligncr_qgis.dialog import AlignCRDialog  # noqa: E402
from aligncr_qgis.dialog import outputs as dialog_outputs  # noqa: E402
from aligncr_qgis.run_options import choice_items  # noqa: E402
from aligncr_qgis.settings import PluginSettings  # noqa: E402
from engine.config import OPTIONS  # noqa: E402
from tests.qgis_fixtures import close_dialog, dlg, processing_provider, project  # noqa: E402, F401 (fixtures)
from tests.qgis_helpers import (  # noqa: E402
    PYTHON,
    add_layer,
    enabled_plugin_env,
    make_scene,
    run_and_wait,
    scripted_engine,
    write_sar,
    write_scene_optical,
)

pytestmark = pytest.mark.qgis
QGIS_PROCESS = shutil.which("qgis_process.bin")
CHECK = ("scene check: under synthetic clouds on 3 clear windows the model scores 24.1 dB inside the cloud, flat "
         "22.3 dB and fill 23.0 dB: the model beats both by 1.1 dB")  # fmt: skip
GUARD = ("guard: the model scored 24.1 dB and the non-learned estimate 23.5 dB under synthetic clouds on 3 clear "
         "window(s) of this scene; the model's output is used (+0.6 dB)")  # fmt: skip


def ready(dlg: AlignCRDialog, project, folder: Path) -> None:  # noqa: ANN001
    """An optical and a SAR layer chosen, an output named."""
    opt, sar = make_scene(folder)
    dlg.optical_combo.setLayer(add_layer(project, opt, "optical"))
    dlg.sar_combo.setLayer(add_layer(project, sar, "sar"))
    dlg.output_widget.setFilePath(str(folder / "out.tif"))


@pytest.fixture
def res_bundled(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Bundled weights of aligncr-res beside aligncr-lite's, as once it is trained (a fresh model's card)."""
    from engine.models import build_model, save
    from engine.stream.mode import BUNDLED

    if not BUNDLED["aligncr-lite"].is_file():
        pytest.skip("no bundled aligncr-lite weights")
    res = save(build_model("aligncr-res"), tmp_path / "weights" / "aligncr-res.safetensors")
    monkeypatch.setattr(model_list, "bundled_weights", lambda: [BUNDLED["aligncr-lite"], res])
    return res


# ------------------------------------------------------------------------------------------------------ dialog
def test_mode_combo_offers_the_table_s_modes_with_what_each_does(dlg: AlignCRDialog) -> None:
    combo = dlg.mode_combo
    assert [(combo.itemData(i), combo.itemText(i)) for i in range(combo.count())] == choice_items("mode")
    assert dlg.current_mode() == OPTIONS["mode"].default == PluginSettings().mode
    tips = [combo.itemData(i, Qt.ItemDataRole.ToolTipRole) for i in range(combo.count())]
    assert all(tips) and len(set(tips)) == len(tips), tips
    best, raw = (tips[[v for v, _ in choice_items("mode")].index(m)] for m in ("best", "raw"))
    assert "only the cloud" in best and "estimate" in best and "everywhere" in raw
    assert best in combo.toolTip() and raw in combo.toolTip()


def test_mode_is_remembered_and_reaches_the_engine(project, dlg: AlignCRDialog, qgis_iface, tmp_path: Path) -> None:
    ready(dlg, project, tmp_path)
    assert "--mode" not in dlg.build_request().to_args()  # the default: the engine's own
    dlg.set_mode("raw")
    args = dlg.build_request().to_args()
    assert args[args.index("--mode") + 1] == "raw" and dlg.build_request().mode == "raw"
    dlg.save_settings()
    assert QgsSettings().value("aligncr/mode") == "raw"
    again = AlignCRDialog(qgis_iface)
    try:
        assert again.current_mode() == "raw"
    finally:
        close_dialog(again)


def test_best_mode_shows_its_switches_on_and_raw_gives_back_the_user_s_own(project, qgis_iface,
                                                                        tmp_path: Path) -> None:  # fmt: skip
    for key, value in (("only_cloudy", False), ("scene_check", True), ("mode", "best")):
        QgsSettings().setValue(f"aligncr/{key}", value)
    d = AlignCRDialog(qgis_iface)
    try:
        ready(d, project, tmp_path)
        boxes = (d.only_cloudy_check, d.scene_check_check)
        assert d.mode_combo.currentData() == "best"
        for box in boxes:
            assert box.isChecked() and not box.isEnabled() and "best mode" in box.toolTip(), box.text()
        assert d.feather_spin.isEnabled()  # the best mode replaces only the cloud: the feather means something
        args = d.build_request().to_args()
        assert "--only-cloudy" in args and "--scene-check" in args and "--mode" not in args
        d.set_mode("raw")
        assert not d.only_cloudy_check.isChecked() and d.scene_check_check.isChecked()  # the user's own, back
        assert all(box.isEnabled() and "best mode" not in box.toolTip() for box in boxes)
        assert d.only_cloudy_check.toolTip().startswith("Keep every clear pixel")  # their own tooltips, back
        assert d.scene_check_check.toolTip().startswith("Lay synthetic clouds")
        args = d.build_request().to_args()
        assert "--only-cloudy" not in args and "--scene-check" in args and not d.feather_spin.isEnabled()
        d.scene_check_check.setChecked(False)
        d.set_mode("best")
        assert d.scene_check_check.isChecked() and not d.scene_check_check.isEnabled()
        d.save_settings()  # the user's own values, not what the best mode shows
        assert (d.settings.only_cloudy, d.settings.scene_check, d.settings.mode) == (False, False, "best")
        d.set_mode("raw")
        assert not d.scene_check_check.isChecked() and not d.only_cloudy_check.isChecked()
    finally:
        close_dialog(d)


def test_defaults_line_names_the_mode_and_restore_brings_the_best_mode_back(dlg: AlignCRDialog) -> None:
    assert dlg.changed_from_defaults() == []
    dlg.set_mode("raw")
    assert dlg.changed_from_defaults() == ["mode raw"] and dlg.defaults_label.text() == "Not the defaults: mode raw."
    dlg.scene_check_check.setChecked(True)
    assert dlg.changed_from_defaults() == ["scene check", "mode raw"]
    dlg.set_mode("best")  # the scene check is the mode's doing here: not listed
    assert dlg.changed_from_defaults() == []
    dlg.set_mode("raw")
    dlg.restore_defaults_button.click()
    assert dlg.current_mode() == OPTIONS["mode"].default and dlg.changed_from_defaults() == []
    assert dlg.own_checks == {"only_cloudy": OPTIONS["only_cloudy"].default,
                              "scene_check": OPTIONS["scene_check"].default}  # fmt: skip
    assert not dlg.defaults_label.isVisibleTo(dlg)


def test_model_list_default_follows_the_mode(project, res_bundled: Path, qgis_iface, tmp_path: Path) -> None:
    """With aligncr-res bundled the best mode's default is it and the raw mode's aligncr-lite (the engine's
    rule, engine.stream.mode.default_model); a model the user picked stays whatever the mode."""
    d = AlignCRDialog(qgis_iface)
    try:
        ready(d, project, tmp_path)
        assert d.model_combo.currentData() == ("registry", "aligncr-res") and d.changed_from_defaults() == []
        req = d.build_request()
        assert (req.model, req.weights) == ("aligncr-res", str(res_bundled))
        d.set_mode("raw")
        assert d.model_combo.currentData() == ("registry", "aligncr-lite") and d.changed_from_defaults() == ["mode raw"]
        d.save_settings()
        assert d.settings.model == ""  # the mode's default: it follows the mode (and what is bundled) next time
        d.set_mode("best")
        assert d.model_combo.currentData() == ("registry", "aligncr-res")
        assert d.select_model("identity")
        d.set_mode("raw")
        assert d.model_combo.currentData() == ("registry", "identity")
        assert d.changed_from_defaults() == ["model identity", "mode raw"]
        d.restore_defaults()
        assert d.current_mode() == "best" and d.model_combo.currentData() == ("registry", "aligncr-res")
    finally:
        close_dialog(d)


def test_engine_default_is_the_engine_s_rule_per_mode(res_bundled: Path) -> None:
    entries = model_list.registry_models([])
    assert model_list.engine_default(entries, "best") == "aligncr-res"
    assert model_list.engine_default(entries, "raw") == "aligncr-lite"
    lite_only = [e for e in entries if e["name"] != "aligncr-res"]
    assert {model_list.engine_default(lite_only, m) for m in ("best", "raw")} == {"aligncr-lite"}


def test_success_message_says_what_the_guard_used_after_the_scene_check(project, dlg: AlignCRDialog, tmp_path: Path,
                                                                         monkeypatch) -> None:  # fmt: skip
    root = scripted_engine(tmp_path / "fake", [], result={"scene_check": CHECK, "mode": "best", "guard": GUARD,
                                                          "guard_used": "model"})  # fmt: skip
    monkeypatch.setattr(dialog_outputs, "engine_root", lambda: root)
    ready(dlg, project, tmp_path)
    assert run_and_wait(dlg) == [True]
    text = dlg.result_label.text()
    assert "Guard: the model scored 24.1 dB" in text and "the model's output is used (+0.6 dB)." in text
    assert text.index("Scene check:") < text.index("Guard:")


@pytest.mark.slow
def test_default_run_with_a_model_that_loses_writes_the_estimate_and_says_so(project, dlg: AlignCRDialog,
                                                                             tmp_path: Path) -> None:  # fmt: skip
    """The real engine, from the dialog's defaults: a residual model whose head paints +0.3 everywhere loses to
    the estimate on the scene's clear ground, and the message says the estimate was written inside the cloud."""
    import torch

    from engine.models import build_model, save

    model = build_model("aligncr-res")
    with torch.no_grad():
        model.UPNet[-1].bias.fill_(0.3)
    weights = save(model, tmp_path / "bad.safetensors")
    opt = add_layer(project, write_scene_optical(tmp_path / "cloudy.tif", cloud=0.3, size=192), "optical")
    sar = add_layer(project, write_sar(tmp_path / "s1.tif", 192), "sar")
    dlg.optical_combo.setLayer(opt)
    dlg.sar_combo.setLayer(sar)
    dlg.output_widget.setFilePath(str(tmp_path / "out.tif"))
    dlg.settings.model = str(weights)
    dlg._fill_models()
    dlg.tile_spin.setValue(64)
    dlg.overlap_spin.setValue(8)
    assert run_and_wait(dlg, 240) == [True], dlg.status_label.text()
    text = dlg.result_label.text()
    assert "Guard:" in text and "the output inside the cloud is the estimate" in text, text
    with rasterio.open(tmp_path / "out.tif") as ds:
        settings = json.loads(ds.tags()["ALIGNCR_SETTINGS"])
    assert settings["mode"] == "best" and settings["guard"]["used"] == "estimate"


def test_the_bar_counts_the_best_mode_s_scene_check_and_only_the_adaptation_asked_for(tmp_path: Path) -> None:
    """The best mode's scene check is not in the command (the engine switches it on): the bar counts it from the mode.
    Adaptation is off unless ``--adapt N`` asks for it; then the bar walks through its N steps."""
    from aligncr_qgis.run_options import RunCommand
    from aligncr_qgis.run_progress import RunProgress

    raw = RunProgress.for_command(RunCommand(optical=str(tmp_path / "o.tif"), out="x.tif", mode="raw"), 4096)
    assert "check_read" not in raw.expected and "adapt" not in raw.expected
    best = RunProgress.for_command(RunCommand(optical=str(tmp_path / "o.tif"), out="x.tif"), 2048 * 2048)
    assert "check_read" in best.expected and "adapt" not in best.expected
    bar = RunProgress.for_command(RunCommand(optical=str(tmp_path / "o.tif"), out="x.tif", adapt=40), 2048 * 2048)
    messages = ["scene check: reading window 1/1", "adapting to the scene: reading window 1/1",
                *(f"adapting to the scene: step {k}/40" for k in range(1, 41)),
                "scene check: scoring the model and the baselines", "tile 1/1", "writing output"]  # fmt: skip
    seen = [bar.update(0.0, m)[0] for m in messages]
    during = seen[2:42]
    assert seen == sorted(seen) and len(set(during)) >= 36 and 0.5 < during[-1] < 1.0, seen


# -------------------------------------------------------------------------------------------------- Processing
def test_processing_mode_parameter_from_the_table(processing_provider) -> None:
    alg = QgsApplication.processingRegistry().algorithmById("aligncr:declouding")
    param, row = alg.parameterDefinition("MODE"), OPTIONS["mode"]
    assert param.options() == list(row.choice_labels) and param.description() == row.label
    assert param.defaultValue() == row.choices.index(row.default)
    assert not param.flags() & param.Flag.FlagAdvanced
    names = [p.name() for p in alg.parameterDefinitions()]
    assert names.index("MODE") + 1 == names.index("MODEL")  # beside the model it decides
    assert f"MODE: {row.choice_labels[row.choices.index(row.default)]}" in alg.shortHelpString()


def args_engine(folder: Path) -> Path:
    """A stand-in engine that writes its command line to ``args.json`` and reports a run with a guard."""
    return scripted_engine(folder, [], result={"scene_check": CHECK, "guard": GUARD, "guard_used": "model"},
                           args_file=folder / "args.json")  # fmt: skip


@pytest.mark.parametrize("given", ["raw", 1, "1", None])
def test_processing_mode_by_name_or_number_and_the_guard_in_the_log(processing_provider, tmp_path: Path,
                                                                     monkeypatch, given) -> None:  # fmt: skip
    import processing

    from aligncr_qgis.algorithms import base

    monkeypatch.setattr(base, "engine_root", lambda: args_engine(tmp_path / "fake"))
    monkeypatch.setenv("ALIGNCR_PYTHON", PYTHON)
    opt, sar = make_scene(tmp_path)
    params = {"OPTICAL": str(opt), "SAR": str(sar), "CLOUD_FEATHER": 3, "OUTPUT": str(tmp_path / "o.tif")}
    if given is not None:
        params["MODE"] = given
    feedback = QgsProcessingFeedback()
    processing.run("aligncr:declouding", params, feedback=feedback)
    args = json.loads((tmp_path / "fake" / "args.json").read_text())
    if given is None:  # the default: the best mode, which replaces only the cloud, so the feather means something
        assert "--mode" not in args and args[args.index("--cloud-feather") + 1] == "3"
    else:  # raw, without ONLY_CLOUDY: no feather
        assert args[args.index("--mode") + 1] == "raw" and "--cloud-feather" not in args
    log = feedback.textLog()
    assert CHECK in log and GUARD in log and log.index(CHECK) < log.index(GUARD)


@pytest.mark.parametrize(("adapt", "expected"), [(None, None), (0, "0"), (40, "40")])
def test_processing_adapt_empty_is_the_mode_s_and_0_is_off(processing_provider, tmp_path: Path, monkeypatch,
                                                           adapt, expected) -> None:  # fmt: skip
    """ADAPT left empty leaves --adapt out (the engine's mode decides: no adaptation); 0 and 40 are passed as given
    (0 was once read as "not given")."""
    import processing

    from aligncr_qgis.algorithms import base

    monkeypatch.setattr(base, "engine_root", lambda: args_engine(tmp_path / "fake"))
    monkeypatch.setenv("ALIGNCR_PYTHON", PYTHON)
    opt, sar = make_scene(tmp_path)
    params = {"OPTICAL": str(opt), "SAR": str(sar), "OUTPUT": str(tmp_path / "o.tif")}
    processing.run("aligncr:declouding", params if adapt is None else {**params, "ADAPT": adapt})
    args = json.loads((tmp_path / "fake" / "args.json").read_text())
    assert (args[args.index("--adapt") + 1] if "--adapt" in args else None) == expected


def test_processing_refuses_an_unknown_mode(processing_provider, tmp_path: Path) -> None:
    alg = QgsApplication.processingRegistry().algorithmById("aligncr:declouding")
    opt, sar = make_scene(tmp_path)
    base = {"OPTICAL": str(opt), "SAR": str(sar), "OUTPUT": str(tmp_path / "x.tif")}
    assert alg.checkParameterValues({**base, "MODE": "raw"}, QgsProcessingContext())[0]
    ok, message = alg.checkParameterValues({**base, "MODE": "fastest"}, QgsProcessingContext())
    assert not ok and "MODE" in message


@pytest.mark.slow
@pytest.mark.skipif(QGIS_PROCESS is None, reason="qgis_process.bin not installed")
def test_qgis_process_takes_mode_by_name(tmp_path: Path) -> None:
    """``qgis_process … MODE=raw``: the name, as ``MODEL=identity`` (the number is QGIS's own way for an enum)."""
    env = enabled_plugin_env(tmp_path)
    opt, sar = make_scene(tmp_path / "data")
    out = tmp_path / "o.tif"
    res = subprocess.run([QGIS_PROCESS, "--json", "run", "aligncr:declouding", "--", f"OPTICAL={opt}", f"SAR={sar}",
                          "MODE=raw", "MODEL=identity", "TILE=64", "OVERLAP=8", f"OUTPUT={out}"],
                         env=env, capture_output=True, text=True, timeout=300, check=False)  # fmt: skip
    assert res.returncode == 0, (res.stdout[-2000:], res.stderr[-2000:])
    with rasterio.open(out) as ds:
        assert json.loads(ds.tags()["ALIGNCR_SETTINGS"])["mode"] == "raw"
