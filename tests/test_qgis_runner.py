"""The plugin's Qt-free parts: the JSON-lines engine runner, ``engine env``, model cards, packaging.

The runner is tested against a fake engine (exact control over events, errors, crashes and timing) and against
the real engine with the ``identity`` model (the contract end to end). None of this needs QGIS.
"""

from __future__ import annotations

import json
import os
import struct
import threading
import time
import zipfile
from pathlib import Path

import pytest
import rasterio

from aligncr_qgis.engine_process import (
    INSTALL_REQUIREMENTS,
    EngineCancelled,
    EngineProcess,
    EngineRunError,
)
from aligncr_qgis.model_cards import ModelCardError, read_card
from aligncr_qgis.package import build
from aligncr_qgis.run_options import RunCommand
from tests.qgis_helpers import PYTHON, ROOT, fake_engine, make_scene


def test_run_request_args_follow_the_cli_contract() -> None:
    req = RunCommand(optical="o.tif", sar="s.tif", out="x.tif", mask="m.tif", model="identity", tile=128,
                     overlap=16, batch=2, cog=True, bands=(3, 2, 1, 4), sar_bands=(2, 1), sar_units="db",
                     report="rep")
    args = req.to_args()
    here = os.path.abspath  # issue 28: every path absolute against the caller's folder (the engine runs elsewhere)
    assert args[:7] == ["run", "--optical", here("o.tif"), "--sar", here("s.tif"), "--out", here("x.tif")]
    pairs = dict(zip(args[7::], args[8::]))
    assert pairs["--mask"] == here("m.tif") and pairs["--model"] == "identity" and pairs["--report"] == here("rep")
    assert pairs["--bands"] == "3,2,1,4" and pairs["--sar-bands"] == "2,1" and pairs["--sar-units"] == "db"
    assert pairs["--tile"] == "128" and "--cog" in args and "--landcover" not in args and "--weights" not in args
    # The real engine's parser accepts exactly these flags.
    from engine.cli import build_parser

    ns = build_parser().parse_args([*args, "--progress-json"])
    assert ns.bands == (3, 2, 1, 4) and ns.tile == 128 and ns.cog and ns.progress_json
    extra = RunCommand(optical="o", sar="s", out="x", optical_scale="reflectance", sar_resampling="bilinear")
    ns = build_parser().parse_args(extra.to_args())
    assert ns.optical_scale == "reflectance" and ns.sar_resampling == "bilinear"


def test_runner_reports_progress_warnings_and_result(tmp_path: Path) -> None:
    root = fake_engine(tmp_path / "fake", tiles=4)
    opt, sar = make_scene(tmp_path / "scene")
    seen: list[tuple[float, str]] = []
    warnings: list[str] = []
    logs: list[str] = []
    proc = EngineProcess(PYTHON, root, on_progress=lambda f, m: seen.append((f, m)), on_warning=warnings.append,
                         on_log=logs.append)
    out = tmp_path / "out.tif"
    outcome = proc.run(RunCommand(optical=str(opt), sar=str(sar), out=str(out)).to_args())
    assert outcome.result["model"] == "fake" and outcome.start["total_tiles"] == 4
    assert [m for _, m in seen if m.startswith("tile")] == [f"tile {i}/4" for i in range(1, 5)]
    assert seen[-1] == (1.0, "done")
    assert warnings == ["SAR covers 90 % of the optical image"]
    assert any("fake engine starting" in line for line in logs)  # stderr goes to the log
    assert out.is_file()


def test_runner_turns_error_event_into_one_line(tmp_path: Path) -> None:
    root = fake_engine(tmp_path / "fake", fail="error")
    with pytest.raises(EngineRunError) as exc:
        EngineProcess(PYTHON, root).run(["run", "--out", str(tmp_path / "x.tif")])
    assert str(exc.value) == "optical and SAR do not overlap" and exc.value.kind == "InputError"


def test_runner_explains_missing_torch_with_pip_command(tmp_path: Path) -> None:
    root = fake_engine(tmp_path / "fake", fail="crash")
    with pytest.raises(EngineRunError) as exc:
        EngineProcess(PYTHON, root).run(["run", "--out", str(tmp_path / "x.tif")])
    msg = str(exc.value)
    assert "cannot import 'torch'" in msg and f"{PYTHON} -m pip install {INSTALL_REQUIREMENTS}" in msg
    assert "'torch>=2.1'" in INSTALL_REQUIREMENTS and "'numpy<2'" in INSTALL_REQUIREMENTS  # pyproject's, quoted
    assert "Traceback" not in msg and "Traceback" in exc.value.details


def test_runner_bad_interpreter_and_missing_engine(tmp_path: Path) -> None:
    with pytest.raises(EngineRunError, match="cannot start the Python interpreter"):
        EngineProcess(str(tmp_path / "no-python"), tmp_path).run(["env", "--json"], progress_json=False)
    # (the dev venv has the repo installed editable, so use Debian's python to miss `engine`)
    with pytest.raises(EngineRunError, match="engine package was not found"):
        EngineProcess("/usr/bin/python3", tmp_path).run(["env", "--json"], progress_json=False)


def test_cancel_stops_child_within_a_tile_and_leaves_nothing(tmp_path: Path) -> None:
    root = fake_engine(tmp_path / "fake", tiles=50, delay=0.2)
    opt, sar = make_scene(tmp_path / "scene")
    out = tmp_path / "out.tif"
    fractions: list[float] = []
    cancel = threading.Event()

    def on_progress(f: float, _m: str) -> None:
        fractions.append(f)
        if f >= 0.04:  # two tiles done
            cancel.set()

    proc = EngineProcess(PYTHON, root, on_progress=on_progress, is_cancelled=cancel.is_set)
    t0 = time.monotonic()
    with pytest.raises(EngineCancelled):
        proc.run(RunCommand(optical=str(opt), sar=str(sar), out=str(out)).to_args())
    assert time.monotonic() - t0 < 5.0
    assert max(fractions) < 0.2
    assert not out.exists() and not list(tmp_path.glob("out.tif*"))  # SIGINT let the child remove its temp file


@pytest.mark.slow
def test_runner_with_real_engine_identity(tmp_path: Path) -> None:
    opt, sar = make_scene(tmp_path / "scene")
    out = tmp_path / "declouded.tif"
    fractions: list[float] = []
    proc = EngineProcess(PYTHON, ROOT, on_progress=lambda f, _m: fractions.append(f))
    outcome = proc.run(RunCommand(optical=str(opt), sar=str(sar), out=str(out), model="identity").to_args())
    assert outcome.result["model"] == "identity" and Path(outcome.result["output"]) == out
    assert fractions[-1] == 1.0
    with rasterio.open(opt) as a, rasterio.open(out) as b:
        assert b.crs == a.crs and b.transform == a.transform and (b.read() == a.read()).all()


def test_engine_env_json_reports_this_interpreter() -> None:
    env = EngineProcess(PYTHON, ROOT).run_json(["env", "--json"])
    assert env["ok"] is True and env["executable"] == PYTHON
    assert env["packages"]["torch"].startswith("2.") and env["gdal"]
    assert isinstance(env["cuda_devices"], list)


def test_engine_env_names_missing_packages_and_install_command() -> None:
    # Debian's python has no torch/rasterio: the env module must still answer, with the exact fix.
    env = EngineProcess("/usr/bin/python3", ROOT).run_json(["--json"], module="engine.commands.env")
    assert env["ok"] is False and env["packages"]["torch"] is None and "No module named" in env["errors"]["torch"]
    assert "pip install" in env["install_command"] and "torch" in env["install_command"]
    assert "venv" in env["install_command"]  # PEP 668: pip into /usr/bin/python3 is refused


def test_missing_rasterio_in_run_is_explained(tmp_path: Path) -> None:
    opt, sar = make_scene(tmp_path)
    with pytest.raises(EngineRunError) as exc:
        run = RunCommand(optical=str(opt), sar=str(sar), out=str(tmp_path / "o.tif"))
        EngineProcess("/usr/bin/python3", ROOT).run(run.to_args())
    msg = str(exc.value)
    assert "cannot import" in msg and f"pip install {INSTALL_REQUIREMENTS}" in msg and "venv" in msg


def _safetensors(path: Path, metadata: dict[str, str] | None) -> Path:
    header: dict = {"w": {"dtype": "F32", "shape": [2, 3], "data_offsets": [0, 24]}}
    if metadata is not None:
        header["__metadata__"] = metadata
    raw = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + b"\0" * 24)
    return path


def test_model_card_read_without_torch(tmp_path: Path) -> None:
    card_json = json.dumps({"arch": "aligncr-lite", "training_data": "M3R-CR train", "metrics": {"psnr": 27.1}})
    card = read_card(_safetensors(tmp_path / "m.safetensors", {"aligncr_card": card_json, "format": "pt"}))
    assert card.title == "aligncr-lite" and card.tensors == 1 and card.parameters == 6
    text = card.summary_html()
    assert "<b>Trained on:</b> M3R-CR train" in text and "<td>PSNR</td><td>27.1</td>" in text
    assert "No Align-CR model card" in read_card(_safetensors(tmp_path / "n.safetensors", None)).summary_html()
    (tmp_path / "bad.safetensors").write_bytes(b"PK\x03\x04 not safetensors at all")
    with pytest.raises(ModelCardError):
        read_card(tmp_path / "bad.safetensors")


def test_model_card_matches_engine_writer(tmp_path: Path) -> None:
    from engine.models import build_model, save

    path = save(build_model("identity"), tmp_path / "identity.safetensors", {"arch": "identity",
                                                                             "training_data": "none"})
    card = read_card(path)
    assert card.card["arch"] == "identity" and card.card["training_data"] == "none"


def test_package_zip_layout(tmp_path: Path) -> None:
    out = build(tmp_path / "aligncr_qgis.zip")
    with zipfile.ZipFile(out) as zf:
        names = set(zf.namelist())
        meta = zf.read("aligncr_qgis/metadata.txt").decode()
    for required in ("__init__.py", "metadata.txt", "resources/icons/aligncr.svg", "engine/__main__.py",
                     "engine/commands/run.py", "engine/commands/env.py"):
        assert f"aligncr_qgis/{required}" in names
    assert not any("__pycache__" in n or n.endswith(".pyc") for n in names)
    assert all(n.startswith("aligncr_qgis/") for n in names)
    assert "hasProcessingProvider=yes" in meta and "qgisMinimumVersion=3.22" in meta
    assert build(tmp_path / "again.zip").read_bytes() == out.read_bytes()  # reproducible
