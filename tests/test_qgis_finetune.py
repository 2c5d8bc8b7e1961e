"""*Train on my area* in real QGIS: the ``aligncr:finetune`` Processing algorithm and the dialog's window, running
the real ``engine finetune`` on the tiny synthetic archive of :mod:`tests.helpers_finetune`."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

pytest.importorskip("qgis.core")

from qgis.core import QgsApplication  # noqa: E402

from aligncr_qgis.dialog import AlignCRDialog  # noqa: E402
from aligncr_qgis.finetune_request import finetune_info  # noqa: E402
from tests.helpers_finetune import synthetic_archive  # noqa: E402
from tests.qgis_fixtures import close_dialog, processing_provider, project  # noqa: E402, F401 (fixtures)
from tests.qgis_helpers import wait_for  # noqa: E402

pytestmark = pytest.mark.qgis
FAST = {"PATCH_SIZE": 16, "MINUTES": 0, "LEARNING_RATE": 1e-3, "VAL_EVERY": 5}


@contextmanager
def finetune_window(qgis_iface, archive: Path, out: Path | str) -> Iterator[tuple[AlignCRDialog, object]]:
    """The dialog and its *Train on my area…* window, filled with ``archive`` and ``out``; closed after."""
    d = AlignCRDialog(qgis_iface)
    try:
        win = d.open_finetune()
        win.archive_widget.setFilePath(str(archive))
        win.output_widget.setFilePath(str(out))
        yield d, win
        win.close()
    finally:
        close_dialog(d)


@pytest.fixture(scope="module")
def archive(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return synthetic_archive(tmp_path_factory.mktemp("qgis_finetune") / "area")


def test_processing_finetune_writes_weights_with_card(project, processing_provider, archive: Path,
                                                      tmp_path: Path) -> None:
    import processing

    out = tmp_path / "area.safetensors"
    res = processing.run("aligncr:finetune", {"ARCHIVE": str(archive), "OUTPUT": str(out), "STEPS": 10, **FAST})
    assert res["OUTPUT"] == str(out) and out.is_file()
    info = finetune_info(out)
    assert info["steps"] == 10 and info["best_step"] == res["BEST_STEP"] and info["stop_reason"] == "budget"
    assert "synthetic: inside-cloud PSNR" in res["SUMMARY"] and "real: inside-cloud PSNR" in res["SUMMARY"]
    assert processing_provider.algorithm("finetune").displayName().startswith("Train on my area")


def test_processing_finetune_cancel_keeps_best_weights(project, processing_provider, archive: Path,
                                                       tmp_path: Path) -> None:
    import processing
    from qgis.core import QgsProcessingException, QgsProcessingFeedback

    out = tmp_path / "cancelled.safetensors"
    feedback = QgsProcessingFeedback()

    def on_progress(_value: float) -> None:
        if out.is_file() and not feedback.isCanceled():  # a validation beat the base model: cancel
            threading.Timer(0.05, feedback.cancel).start()

    feedback.progressChanged.connect(on_progress)
    with pytest.raises(QgsProcessingException, match=r"Cancelled; the best weights so far \(step \d+\) are kept"):
        processing.run("aligncr:finetune", {"ARCHIVE": str(archive), "OUTPUT": str(out), "STEPS": 400, **FAST},
                       feedback=feedback)
    assert finetune_info(out)["best_step"] > 0


def test_processing_finetune_bad_archive_one_line(project, processing_provider, tmp_path: Path) -> None:
    import processing
    from qgis.core import QgsProcessingException

    one = synthetic_archive(tmp_path / "one", clouds={0: None})
    with pytest.raises(QgsProcessingException, match="one optical scene only"):
        processing.run("aligncr:finetune", {"ARCHIVE": str(one), "OUTPUT": str(tmp_path / "o.safetensors"),
                                            "STEPS": 5, **FAST})
    assert not (tmp_path / "o.safetensors").exists()


def test_dialog_train_on_my_area_runs_and_selects_the_weights(project, qgis_iface, archive: Path,
                                                              tmp_path: Path) -> None:
    d = AlignCRDialog(qgis_iface)
    try:
        assert d.finetune_button.text() == "Train on my area…"
        win = d.open_finetune()
        assert win.base_edit.text() == "aligncr-lite"
        win.archive_widget.setFilePath(str(archive))
        out = tmp_path / "mine.safetensors"
        win.output_widget.setFilePath(str(out))
        win.patch_spin.setValue(16)
        win.steps_spin.setValue(6)
        seen: list[str] = []
        win.trained.connect(seen.append)
        task = win.start()
        assert task is not None and not win.train_button.isEnabled() and win.cancel_button.isEnabled()
        assert QgsApplication.taskManager().tasks()  # a background task in QGIS's task manager
        assert wait_for(lambda: win.task is None, 300)
        assert seen == [str(out)] and out.is_file(), win.status_label.text()
        assert "inside-cloud PSNR" in win.status_label.text()
        assert d.model_combo.currentData() == ("weights", str(out))  # the new weights are the dialog's model
        assert "Holdout synthetic" in d.card_text.toPlainText()
        win.close()
    finally:
        close_dialog(d)


def test_dialog_cancel_says_what_was_kept(project, qgis_iface, archive: Path, tmp_path: Path) -> None:
    out = tmp_path / "c.safetensors"
    with finetune_window(qgis_iface, archive, out) as (d, win):
        win.patch_spin.setValue(16)
        win.steps_spin.setValue(2000)
        win.start()
        assert wait_for(lambda: win.progress.value() > 10, 120)  # training has started (10 %: the base is scored)
        win.cancel()
        assert wait_for(lambda: win.task is None, 60)
        text = win.status_label.text()
        assert text.startswith("Cancelled")
        if out.is_file():  # the engine kept weights (best so far, or the base ones): said, and selected
            assert "kept in" in text or "holds the base weights" in text
            assert d.model_combo.currentData() == ("weights", str(out))
        else:
            assert text == "Cancelled before any weights were written."


def test_window_has_the_archive_settings_with_tooltips(project, qgis_iface, archive: Path) -> None:
    """Issue 28, item 8: pair days, Sentinel-1 days, held-out block and share are fields; the patch size is chosen
    from the archive (a fixed 256 px failed on a small one); every field and button says what it does."""
    from qgis.gui import QgsFileWidget
    from qgis.PyQt.QtWidgets import QAbstractButton, QAbstractSpinBox, QLineEdit

    with finetune_window(qgis_iface, archive, "mine.safetensors") as (_d, win):
        widgets = {name: w for name, w in vars(win).items()
                   if isinstance(w, (QAbstractSpinBox, QAbstractButton, QLineEdit, QgsFileWidget))}
        assert {"pair_days_spin", "sar_days_spin", "block_spin", "val_spin", "patch_spin"} <= set(widgets)
        assert [name for name, w in widgets.items() if not w.toolTip().strip()] == []
        assert win.patch_spin.value() == 0 and win.patch_spin.specialValueText().startswith("auto")
        win.pair_days_spin.setValue(90)
        win.sar_days_spin.setValue(12)
        win.block_spin.setValue(2)
        args = win.request().to_args()
        pairs = dict(zip(args, args[1:]))
        assert (pairs["--pair-days"], pairs["--sar-max-days"], pairs["--block-cells"]) == ("90", "12", "2")
        assert pairs["--patch-size"] == "16"  # 64-px scenes: 16-px patches make 2×2 blocks of 2×2 patches


def test_window_errors_speak_in_field_names(project, qgis_iface, archive: Path, tmp_path: Path) -> None:
    """The engine's "lower --patch-size" reaches the window as the field's name."""
    with finetune_window(qgis_iface, archive, tmp_path / "big.safetensors") as (_d, win):
        win.patch_spin.setValue(256)
        assert win.start() is not None
        assert wait_for(lambda: win.task is None, 300)
        text = win.status_label.text()
        assert text.startswith("Failed:") and "lower 'Patch size'" in text and "--" not in text, text


def test_processing_errors_name_parameters(project, processing_provider, archive: Path, tmp_path: Path) -> None:
    import processing
    from qgis.core import QgsProcessingException

    with pytest.raises(QgsProcessingException, match="lower 'PATCH_SIZE'"):
        processing.run("aligncr:finetune", {"ARCHIVE": str(archive), "OUTPUT": str(tmp_path / "o.safetensors"),
                                            "STEPS": 5, **FAST, "PATCH_SIZE": 256})
