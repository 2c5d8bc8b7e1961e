"""No Python warning from the plugin may reach the QGIS log (issue 16): every engine run — Processing's and the
dialog's background task — runs here with warnings turned into errors, and warnings raised where Python cannot raise
(``__del__`` of an unclosed pipe: ``ResourceWarning: unclosed file``) collected through ``sys.unraisablehook``."""

from __future__ import annotations

import gc
import sys
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

pytest.importorskip("qgis.core")

from aligncr_qgis.paths import engine_root  # noqa: E402
from aligncr_qgis.task import EngineStep, EngineTask  # noqa: E402
from tests.qgis_fixtures import processing_provider  # noqa: E402, F401 (fixtures)
from tests.qgis_helpers import PYTHON, make_scene  # noqa: E402

pytestmark = pytest.mark.qgis


@contextmanager
def warnings_are_errors() -> Iterator[list[str]]:
    """Warnings raise; those Python can only report (finalisers) are collected into the yielded list."""
    unraisable: list[str] = []
    previous = sys.unraisablehook
    sys.unraisablehook = lambda info: unraisable.append(f"{info.exc_type.__name__}: {info.exc_value}")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            yield unraisable
            gc.collect()  # finalise what the run left behind while the filter is on
    finally:
        sys.unraisablehook = previous


def test_processing_run_warns_nothing(processing_provider, tmp_path: Path,
                                      monkeypatch: pytest.MonkeyPatch) -> None:
    import processing

    monkeypatch.setenv("ALIGNCR_PYTHON", PYTHON)
    opt, sar = make_scene(tmp_path / "scene")
    with warnings_are_errors() as unraisable:
        res = processing.run("aligncr:declouding", {"OPTICAL": str(opt), "SAR": str(sar), "MODEL": "identity",
                                                    "TILE": 64, "OVERLAP": 8, "OUTPUT": str(tmp_path / "o.tif")})
    assert Path(res["OUTPUT"]).is_file()
    assert unraisable == []


def test_dialog_task_warns_nothing(qgis_app, tmp_path: Path) -> None:
    """The dialog's QgsTask, run in this thread: a run step and an optional step that fails."""
    opt, sar = make_scene(tmp_path / "scene")
    steps = [EngineStep("run", ["run", "--optical", str(opt), "--sar", str(sar), "--model", "identity", "--tile",
                                "64", "--overlap", "8", "--out", str(tmp_path / "t.tif")]),
             EngineStep("bad", ["no-such-command"], progress_json=False, optional=True)]
    with warnings_are_errors() as unraisable:
        task = EngineTask("test", PYTHON, str(engine_root()), steps)
        assert task.run(), task.job.error
        del task
    assert (tmp_path / "t.tif").is_file()
    assert unraisable == []
