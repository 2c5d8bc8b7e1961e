"""Issue 28, item 3 (and ``MODEL=1`` of item 10): relative paths reach the engine absolute — it runs in the plugin's
folder, so ``qgis_process … OPTICAL=data/s12/x.tif OUTPUT=out_qp/o.tif`` failed with "optical file not found" and
"Output folder does not exist" — from ``qgis_process``, in-process Processing, the dialog and the fine-tune window."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

pytest.importorskip("qgis.core")

from qgis.core import QgsApplication, QgsRasterLayer  # noqa: E402

from aligncr_qgis.dialog import AlignCRDialog  # noqa: E402
from aligncr_qgis.finetune_request import FinetuneRequest  # noqa: E402
from tests.qgis_fixtures import close_dialog, processing_provider, project  # noqa: E402, F401 (fixtures)
from tests.qgis_helpers import enabled_plugin_env, make_scene, wait_for  # noqa: E402

pytestmark = pytest.mark.qgis
QGIS_PROCESS = shutil.which("qgis_process.bin")


def relative_scene(tmp_path: Path) -> None:
    """``data/optical.tif``, ``data/sar.tif`` and an empty ``out_qp/`` under ``tmp_path``."""
    make_scene(tmp_path / "data")
    (tmp_path / "out_qp").mkdir()


@pytest.mark.slow
@pytest.mark.skipif(QGIS_PROCESS is None, reason="qgis_process.bin not installed")
def test_qgis_process_relative_paths_and_model_by_number(tmp_path: Path) -> None:
    """The issue's command, run from the folder holding ``data/``; MODEL given by its number in the help's list."""
    env = enabled_plugin_env(tmp_path)
    help_text = subprocess.run([QGIS_PROCESS, "help", "aligncr:declouding"], env=env, capture_output=True,
                               text=True, timeout=120, check=False).stdout
    number = next(line.split(":")[0].strip().lstrip("- ") for line in help_text.splitlines()
                  if line.strip().endswith(": identity"))
    relative_scene(tmp_path)
    res = subprocess.run(
        [QGIS_PROCESS, "--json", "run", "aligncr:declouding", "--", "OPTICAL=data/optical.tif", "SAR=data/sar.tif",
         f"MODEL={number}", "TILE=64", "OVERLAP=8", "OUTPUT=out_qp/o.tif"],
        env=env, cwd=tmp_path, capture_output=True, text=True, timeout=300, check=False,
    )
    assert res.returncode == 0, (res.stdout[-2000:], res.stderr[-2000:])
    payload = json.loads(res.stdout[res.stdout.index("{"):])
    assert Path(payload["results"]["OUTPUT"]) == tmp_path / "out_qp" / "o.tif"
    assert (tmp_path / "out_qp" / "o.tif").is_file() and "identity on" in res.stdout + res.stderr


def test_processing_in_process_relative_paths(project, processing_provider, tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    import processing

    relative_scene(tmp_path)
    monkeypatch.chdir(tmp_path)
    res = processing.run("aligncr:declouding", {"OPTICAL": "data/optical.tif", "SAR": "data/sar.tif",
                                                "MODEL": "identity", "TILE": 64, "OVERLAP": 8,
                                                "OUTPUT": "out_qp/o.tif", "REPORT": "out_qp/report"})
    assert (tmp_path / "out_qp" / "o.tif").is_file() and Path(res["OUTPUT"]).is_absolute()
    out = processing.run("aligncr:ndvi", {"INPUT": "out_qp/o.tif", "OUTPUT": "out_qp/ndvi.tif"})
    assert (tmp_path / "out_qp" / "ndvi.tif").is_file(), out


def test_processing_model_by_number(project, processing_provider, tmp_path: Path) -> None:
    """Item 10: the number ``qgis_process help`` shows for a model is taken as the model, the name as before."""
    import processing

    alg = QgsApplication.processingRegistry().algorithmById("aligncr:declouding")
    number = alg.parameterDefinition("MODEL").options().index("identity")
    opt, sar = make_scene(tmp_path)
    for model in (number, str(number), "identity"):
        res = processing.run("aligncr:declouding", {"OPTICAL": str(opt), "SAR": str(sar), "MODEL": model, "TILE": 64,
                                                    "OVERLAP": 8, "OUTPUT": str(tmp_path / f"o{model}.tif")})
        assert Path(res["OUTPUT"]).is_file()
    from qgis.core import QgsProcessingContext

    ok, message = alg.checkParameterValues({"OPTICAL": str(opt), "SAR": str(sar), "MODEL": "99",
                                            "OUTPUT": str(tmp_path / "x.tif")}, QgsProcessingContext())
    assert not ok and "MODEL" in message


def test_dialog_relative_layers_and_output(project, qgis_iface, tmp_path: Path,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    relative_scene(tmp_path)
    monkeypatch.chdir(tmp_path)
    opt, sar = QgsRasterLayer("data/optical.tif", "optical"), QgsRasterLayer("data/sar.tif", "sar")
    project.addMapLayers([opt, sar])
    d = AlignCRDialog(qgis_iface)
    d.open_report_in_browser = False
    try:
        d.output_widget.setFilePath("out_qp/o.tif")
        d.report_check.setChecked(True)
        assert d.select_model("identity") and d.validate().ok, d.issue_messages()
        req = d.build_request()
        assert (req.optical, req.out) == (str(tmp_path / "data" / "optical.tif"), str(tmp_path / "out_qp" / "o.tif"))
        assert req.report == str(tmp_path / "out_qp" / "o_report")
        finished: list[bool] = []
        d.runFinished.connect(finished.append)
        assert d.run() is not None
        assert wait_for(lambda: bool(finished), 120) and finished == [True], d.status_label.text()
        assert (tmp_path / "out_qp" / "o.tif").is_file()
    finally:
        close_dialog(d)


def test_finetune_request_relative_paths(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    args = FinetuneRequest(archive="area", out="w/mine.safetensors", base="old.safetensors").to_args()
    pairs = dict(zip(args, args[1:]))
    assert pairs["--archive"] == str(tmp_path / "area") and pairs["--out"] == str(tmp_path / "w" / "mine.safetensors")
    assert pairs["--weights"] == str(tmp_path / "old.safetensors")
    assert dict(zip(*[iter(FinetuneRequest(archive="a", out="o").to_args()[1:])] * 2))["--base"] == "aligncr-lite"
    assert os.path.isabs(pairs["--archive"])
