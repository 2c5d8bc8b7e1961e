"""Issue 25's hostile review as regression tests: nothing of the user's is ever overwritten, no input passes
silently wrong, and every refusal is one line with exit 2.

One section per family of the issue (and of ``docs/reliability.md``): 1. outputs that would replace what the
inputs open, 2. wrong outputs with exit 0, 3. resources and the network, 4. tracebacks and exit codes, 5. paths and
signals, 6. negative ``--bounds``. CPU only, tiny rasters; the QGIS side of 6 is in ``tests/test_qgis_options.py``.
"""

from __future__ import annotations

import http.server
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
import zipfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import rasterio
import rasterio.warp
import torch
from helpers_models import Constant, ConstantConfig
from helpers_processes import dead_pid, slowed_network, start_slow_run, wait_for_temporary
from helpers_rasters import optical_transform, write_optical, write_raster, write_sar

from engine.cli import main as cli_main
from engine.config import OPTIONS, RunConfig, run_arguments
from engine.errors import OutputError
from engine.models import MODEL_REGISTRY, register_model
from engine.outputs.writer import AtomicFile, remove_stale_temporaries
from engine.stream.pipeline import run

ROOT = Path(__file__).resolve().parents[1]
FAST = ["--model", "identity", "--tile", "32", "--overlap", "8", "--device", "cpu", "--threads", "1"]


# --- helpers ----------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module", autouse=True)
def _constant_model() -> Iterator[None]:
    added = "test-constant" not in MODEL_REGISTRY
    if added:
        register_model("test-constant", ConstantConfig(value=0.2), "test model", needs_weights=False)(Constant)
    yield
    if added:
        MODEL_REGISTRY.pop("test-constant", None)


@pytest.fixture()
def scene(tmp_path: Path) -> tuple[Path, Path]:
    opt = write_optical(tmp_path / "opt.tif", height=40, width=40)
    return opt, write_sar(tmp_path / "s1.tif", like=opt)


def _cli(capsys, *args: object) -> tuple[int, str]:
    """The CLI in-process: (exit code, stderr); a failure must be exactly one ``error:`` line, no traceback."""
    code = cli_main([str(a) for a in args])
    err = capsys.readouterr().err
    assert "Traceback" not in err, err
    if code != 0:
        assert len([line for line in err.splitlines() if line.startswith("error:")]) == 1, err
    return code, err


def _engine(*args: object, cwd: Path = ROOT, timeout: float = 240) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "engine", *map(str, args)], cwd=cwd, capture_output=True, text=True,
                          timeout=timeout, check=False)  # fmt: skip


def _one_line_failure(done: subprocess.CompletedProcess, match: str) -> None:
    assert done.returncode == 2, done.stderr[-2000:]
    assert "Traceback" not in done.stderr, done.stderr[-2000:]
    errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and re.search(match, errors[0]), done.stderr[-2000:]


def _vrt(path: Path, source: str, relative: bool = True, size: int = 40) -> Path:
    """A 4-band VRT reading ``source`` (a path relative to the VRT, or any GDAL name)."""
    bands = "".join(
        f'<VRTRasterBand dataType="UInt16" band="{b}"><SimpleSource><SourceFilename relativeToVRT='
        f'"{int(relative)}">{source}</SourceFilename><SourceBand>{b}</SourceBand>'
        f'<SourceProperties RasterXSize="{size}" RasterYSize="{size}" DataType="UInt16" BlockXSize="{size}" '
        f'BlockYSize="{size}"/></SimpleSource></VRTRasterBand>'
        for b in range(1, 5)
    )
    gt = ", ".join(repr(v) for v in optical_transform().to_gdal())
    path.write_text(f'<VRTDataset rasterXSize="{size}" rasterYSize="{size}"><SRS>EPSG:32632</SRS>'
                    f"<GeoTransform>{gt}</GeoTransform>{bands}</VRTDataset>")  # fmt: skip
    return path


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


# --- 1. an output never replaces a file an input opens ------------------------------------------------------------


def _footprint_case(case: str, folder: Path, scene: tuple[Path, Path]) -> tuple[str, Path]:
    """(the --optical value, the --out path) of a case where the output is a file the optical input opens."""
    opt = scene[0]
    if case == "vrt_source":
        return str(_vrt(folder / "opt.vrt", opt.name)), opt
    if case == "nested_vrt_source":
        inner = _vrt(folder / "inner.vrt", opt.name)
        return str(_vrt(folder / "outer.vrt", inner.name)), opt
    if case == "zip_archive":
        with zipfile.ZipFile(folder / "in.zip", "w") as zf:
            zf.write(opt, "a.tif")
        return f"/vsizip/{folder / 'in.zip'}/a.tif", folder / "in.zip"
    if case == "existing_aux_xml":
        side = Path(str(opt) + ".aux.xml")
        side.write_text("<PAMDataset><Metadata><MDI key='X'>1</MDI></Metadata></PAMDataset>")
        return str(opt), side
    if case == "overview_name":  # no such file yet: a GeoTIFF there would become opt.tif's overviews
        return str(opt), Path(str(opt) + ".ovr")
    if case == "world_file_name":
        return str(opt), opt.with_suffix(".tfw")
    if case == "symlink_to_input":
        (folder / "link.tif").symlink_to(opt)
        return str(opt), folder / "link.tif"
    if case == "dotdot_path":
        (folder / "sub").mkdir()
        return str(opt), folder / "sub" / ".." / opt.name
    if case == "vrt_source_through_symlinked_folder":
        (folder / "alias").symlink_to(folder, target_is_directory=True)
        return str(_vrt(folder / "opt.vrt", opt.name)), folder / "alias" / opt.name
    raise AssertionError(case)


@pytest.mark.parametrize("case", ["vrt_source", "nested_vrt_source", "zip_archive", "existing_aux_xml",
                                  "overview_name", "world_file_name", "symlink_to_input", "dotdot_path",
                                  "vrt_source_through_symlinked_folder"])  # fmt: skip
def test_run_output_never_replaces_a_file_the_inputs_open(tmp_path, scene, capsys, case):
    optical, out = _footprint_case(case, tmp_path, scene)
    before = _snapshot(tmp_path)
    code, err = _cli(capsys, "run", "--optical", optical, "--sar", scene[1], "--out", out, *FAST)
    assert code == 2 and ("would overwrite an input file" in err or "would change how an input reads" in err), err
    assert _snapshot(tmp_path) == before  # the input, its archive and sidecars as they were; no temporary


@pytest.mark.parametrize("flag", ["--qa", "--confidence"])
def test_qa_and_confidence_outputs_never_replace_a_vrt_source(tmp_path, scene, capsys, flag):
    vrt = _vrt(tmp_path / "opt.vrt", scene[0].name)
    before = _snapshot(tmp_path)
    code, err = _cli(capsys, "run", "--optical", vrt, "--sar", scene[1], "--out", tmp_path / "o.tif", flag, scene[0],
                     *FAST)  # fmt: skip
    assert code == 2 and "(optical input" in err and _snapshot(tmp_path) == before


def test_ndvi_evaluate_and_report_outputs_never_replace_what_the_inputs_open(tmp_path, scene, capsys):
    vrt = _vrt(tmp_path / "opt.vrt", scene[0].name)
    before = _snapshot(tmp_path)
    code, err = _cli(capsys, "ndvi", "--optical", vrt, "--out", scene[0])
    assert code == 2 and "VRT source" in err
    report = tmp_path / "rep"
    report.mkdir()
    mask = write_raster(report / "cloud_mask.tif", np.zeros((1, 40, 40), np.uint8), transform=optical_transform())
    before = _snapshot(tmp_path)
    code, err = _cli(capsys, "evaluate", "--optical", vrt, "--prediction", scene[0], "--reference", scene[0],
                     "--mask", mask, "--out", report)  # fmt: skip
    assert code == 2 and "is the mask input" in err
    code, err = _cli(capsys, "run", "--optical", vrt, "--sar", scene[1], "--mask", mask, "--out", tmp_path / "o.tif",
                     "--report", report, *FAST)  # fmt: skip
    assert code == 2 and "is the mask input" in err
    assert _snapshot(tmp_path) == before


def test_batch_outputs_never_replace_what_any_scene_s_inputs_open(tmp_path, scene):
    from engine.batch import BatchConfig, ManifestError, read_manifest, run_batch

    vrt = _vrt(tmp_path / "opt.vrt", scene[0].name)
    manifest = tmp_path / "m.csv"
    manifest.write_text(f"id,optical,sar,out\na,{vrt},{scene[1]},a.tif\nb,{scene[0]},{scene[1]},{scene[0]}.ovr\n"
                        f"c,{scene[0]},{scene[1]},opt.tif\n")  # fmt: skip
    jobs = read_manifest(manifest)
    before = _snapshot(tmp_path)
    with pytest.raises(ManifestError, match="would change how an input reads"):
        run_batch(jobs[:2], BatchConfig(), tmp_path / "s.csv", client=object(), manifest=manifest)
    with pytest.raises(ManifestError, match="VRT source"):  # scene c's output is what scene a's VRT reads
        run_batch([jobs[0], jobs[2]], BatchConfig(), tmp_path / "s.csv", client=object(), manifest=manifest)
    assert _snapshot(tmp_path) == before


def test_finetune_never_overwrites_its_base_weights(tmp_path, capsys):
    weights = tmp_path / "w.safetensors"
    weights.write_bytes((ROOT / "resources" / "weights" / "aligncr-lite.safetensors").read_bytes())
    before = _snapshot(tmp_path)
    code, err = _cli(capsys, "finetune", "--archive", tmp_path, "--weights", weights, "--out", weights, "--steps", 3)
    assert code == 2 and "is the base weights input" in err and _snapshot(tmp_path) == before


def test_import_official_never_overwrites_its_checkpoint(tmp_path, capsys):
    ckpt = tmp_path / "official.pth"
    torch.save({"network": {"w": torch.zeros(1)}}, ckpt)
    before = _snapshot(tmp_path)
    code, err = _cli(capsys, "models", "--import-official", ckpt, "--out", ckpt)
    assert code == 2 and "is the checkpoint input" in err and _snapshot(tmp_path) == before


def test_no_clobber_refuses_an_existing_output_in_every_writer(tmp_path, scene, capsys):
    out = tmp_path / "o.tif"
    assert _cli(capsys, "run", "--optical", scene[0], "--sar", scene[1], "--out", out, *FAST)[0] == 0
    assert _cli(capsys, "run", "--optical", scene[0], "--sar", scene[1], "--out", out, *FAST)[0] == 0  # replaced
    for args in (["run", "--optical", scene[0], "--sar", scene[1], "--out", out, *FAST],
                 ["run", "--optical", scene[0], "--sar", scene[1], "--out", tmp_path / "new.tif", "--qa", out,
                  *FAST],
                 ["ndvi", "--optical", scene[0], "--out", out],
                 ["models", "--import-official", scene[0], "--out", out],
                 ["finetune", "--archive", tmp_path / "archive", "--out", out.with_suffix(".safetensors"), "--steps",
                  3]):  # fmt: skip
        if args[0] == "finetune":
            out.with_suffix(".safetensors").write_bytes(b"user's")
        before = _snapshot(tmp_path)
        code, err = _cli(capsys, *args, "--no-clobber")
        assert code == 2 and "--no-clobber" in err, (args, err)
        assert _snapshot(tmp_path) == before
    report = tmp_path / "rep"
    report.mkdir()
    (report / "report.json").write_text("{}")
    code, err = _cli(capsys, "evaluate", "--optical", scene[0], "--prediction", out, "--reference", scene[0], "--out",
                     report, "--no-clobber")  # fmt: skip
    assert code == 2 and "--no-clobber" in err and os.listdir(report) == ["report.json"]


def test_the_plugin_s_command_line_carries_no_clobber_from_the_options_table():
    assert OPTIONS["clobber"].flag == "--no-clobber" and OPTIONS["clobber"].group == "output"
    assert "--no-clobber" in run_arguments({"optical": "o.tif", "out": "x.tif", "clobber": False})
    assert "--no-clobber" not in run_arguments({"optical": "o.tif", "out": "x.tif", "clobber": True})


def test_a_no_clobber_rename_never_replaces_a_file_that_appeared_during_the_run(tmp_path):
    target = tmp_path / "o.tif"
    writer = AtomicFile(target, clobber=False)
    writer.claim(writer.tmp)
    writer.tmp.write_bytes(b"engine")
    writer.finished = writer.tmp
    target.write_bytes(b"user's")  # another program wrote it meanwhile
    with pytest.raises(OutputError, match="created by someone else during the run"):
        writer.commit()
    assert target.read_bytes() == b"user's" and os.listdir(tmp_path) == ["o.tif"]


def test_two_runs_writing_one_path_at_once_cannot_both_succeed(tmp_path, scene, capsys):
    out = tmp_path / "o.tif"
    first = start_slow_run(scene, out)
    try:
        wait_for_temporary(tmp_path, first)
        code, err = _cli(capsys, "run", "--optical", scene[0], "--sar", scene[1], "--out", out, *FAST)
        assert code == 2 and f"(PID {first.pid}) is writing" in err
    finally:
        first.send_signal(signal.SIGTERM)
        first.communicate(timeout=60)
    assert not out.exists() and not [p for p in os.listdir(tmp_path) if p.startswith(".")]


def test_stale_cleanup_removes_only_the_writer_s_own_names(tmp_path):
    pid = dead_pid()
    stale = [tmp_path / f".o.tif.{pid}.0badf00d.tmp.tif", tmp_path / f".o.tif.{pid}.0badf00d.cog.tmp.tif",
             tmp_path / f".o.tif.{pid}.0badf00d.tmp.tif.aux.xml"]  # fmt: skip
    users = [tmp_path / f".o.tif.{pid}.0badf00d.notes-tmp.txt", tmp_path / f".o.tif.{pid}.0badf00d.tmp.tif.bak",
             tmp_path / f".o.tif.{pid}.0badf00d.mytmp.tif", tmp_path / f".o.tif.{pid}.deadbeef0.tmp.tif",
             tmp_path / f".o.tif.x{pid}.0badf00d.tmp.tif"]  # fmt: skip
    for p in stale + users:
        p.write_bytes(b"x")
    assert sorted(remove_stale_temporaries(tmp_path / "o.tif")) == sorted(stale)
    assert all(p.exists() for p in users)


# --- 2. no wrong output with exit 0 ------------------------------------------------------------------------------

# every data type GDAL holds: (GDAL name, the file's values, what the run must do)
GDAL_TYPES = [("Byte", "refused"), ("Int8", "refused"), ("UInt16", 2000), ("Int16", 2000), ("UInt32", 2000),
              ("Int32", 2000), ("UInt64", 2000), ("Int64", 2000), ("Float32", 0.2), ("Float64", 0.2),
              ("CInt16", "refused"), ("CInt32", "refused"), ("CFloat32", "refused"), ("CFloat64", "refused")]


def _typed_optical(folder: Path, gdal_type: str) -> Path:
    """A 4-band optical of ``gdal_type`` (a VRT over a float64 GeoTIFF of plausible values for the type)."""
    values = np.full((4, 40, 40), 0.3 if gdal_type.startswith("Float") else 60 if gdal_type in ("Byte", "Int8")
                     else 3000, dtype=np.float64)  # fmt: skip
    values[:, :5] = 0  # nodata
    base = write_raster(folder / "base.tif", values, transform=optical_transform())
    xml = _vrt(folder / f"{gdal_type}.vrt", base.name).read_text()
    xml = xml.replace('dataType="UInt16"', f'dataType="{gdal_type}"').replace('DataType="UInt16"', 'DataType="Float64"')
    xml = xml.replace("<SimpleSource>", "<NoDataValue>0</NoDataValue><SimpleSource>")
    (folder / f"{gdal_type}.vrt").write_text(xml)
    return folder / f"{gdal_type}.vrt"


@pytest.mark.parametrize("gdal_type,expected", GDAL_TYPES)
def test_every_gdal_data_type_is_refused_or_converted_right(tmp_path, capsys, gdal_type, expected):
    optical = _typed_optical(tmp_path, gdal_type)
    sar = write_sar(tmp_path / "s1.tif", like=tmp_path / "base.tif")
    out = tmp_path / "o.tif"
    code, err = _cli(capsys, "run", "--optical", optical, "--sar", sar, "--out", out,
                     *[a if a != "identity" else "test-constant" for a in FAST])  # fmt: skip
    if expected == "refused":
        assert code == 2 and ("complex" in err or "cannot hold reflectance" in err) and not out.exists(), err
        return
    assert code == 0, err
    with rasterio.open(out) as ds:
        data = ds.read()
    np.testing.assert_allclose(data[:, 5:], expected, rtol=1e-6)  # the model's 0.2 in the file's own units
    assert (data[:, :5] == 0).all()  # nodata kept


def test_ndvi_refuses_complex_values(tmp_path, capsys):
    optical = _typed_optical(tmp_path, "CFloat32")
    code, err = _cli(capsys, "ndvi", "--optical", optical, "--out", tmp_path / "n.tif")
    assert code == 2 and "complex" in err and not (tmp_path / "n.tif").exists()


def test_bounds_half_outside_the_image_say_so_and_tag_the_output(tmp_path, scene, capsys):
    out = tmp_path / "o.tif"
    x0, y0 = 550_000 + 60, 5_000_000 - 60  # the image is 120 m square from (550000, 5000000)
    code, err = _cli(capsys, "run", "--optical", scene[0], "--sar", scene[1], "--out", out, "--bounds",
                     f"{x0},{y0 - 120},{x0 + 120},{y0}", *FAST)  # fmt: skip
    assert code == 0 and "the optical image covers only 20×20 px of them (25.0 %)" in err, err
    with rasterio.open(out) as ds:
        tag = json.loads(ds.tags()["ALIGNCR_BOUNDS"])
        assert (ds.width, ds.height) == (20, 20) and tag["cut_to_the_image"] and tag["processed"][0] == x0
    code, err = _cli(capsys, "run", "--optical", scene[0], "--sar", scene[1], "--out", out, "--bounds",
                     f"{x0},{y0 - 30},{x0 + 30},{y0}", *FAST)  # fmt: skip
    assert code == 0 and "WARNING" not in err
    with rasterio.open(out) as ds:
        assert not json.loads(ds.tags()["ALIGNCR_BOUNDS"])["cut_to_the_image"]


def test_evaluate_refuses_a_reference_without_a_valid_pixel_and_leaves_nothing(tmp_path, scene, capsys):
    nan = write_raster(tmp_path / "nan.tif", np.full((4, 40, 40), np.nan, np.float32), transform=optical_transform())
    before = _snapshot(tmp_path)
    code, err = _cli(capsys, "evaluate", "--optical", scene[0], "--prediction", scene[0], "--reference", nan, "--out",
                     tmp_path / "rep" / "deeper")  # fmt: skip
    assert code == 2 and "reference raster has no valid pixel" in err
    assert _snapshot(tmp_path) == before and not (tmp_path / "rep").exists()


def test_a_report_that_fails_at_its_end_leaves_none_of_its_files(tmp_path, scene, monkeypatch):
    import engine.report.build as build

    def broken(*args, **kwargs):
        raise OutputError("html: disk full (injected)")

    monkeypatch.setattr(build, "render_html", broken)
    with pytest.raises(OutputError, match="injected"):
        run(RunConfig(optical=scene[0], sar=scene[1], out=tmp_path / "o.tif", report=tmp_path / "rep" / "x",
                      model="identity", tile=32, overlap=8, device="cpu"))  # fmt: skip
    assert sorted(os.listdir(tmp_path)) == ["opt.tif", "s1.tif"]


# --- 3. resources and the network --------------------------------------------------------------------------------


def _s1_zip_with(tmp_path: Path, replace: str) -> Path:
    """A Sentinel-1 GRD zip whose first calibration annotation is ``replace`` (a bomb, entities)."""
    from helpers_sentinel import write_s1_safe

    safe = write_s1_safe(tmp_path / "s1", lines=20, samples=20)
    calibration = sorted((safe / "annotation" / "calibration").glob("calibration-*.xml"))[0]
    calibration.write_text(replace)
    with zipfile.ZipFile(tmp_path / f"{safe.stem}.zip", "w", zipfile.ZIP_DEFLATED) as zf:
        for f in sorted(safe.rglob("*")):
            zf.write(f, f.relative_to(safe.parent))
    return tmp_path / f"{safe.stem}.zip"


def test_a_zip_member_that_inflates_beyond_the_cap_is_refused(tmp_path, scene, capsys):
    bomb = '<?xml version="1.0"?>\n<calibration>' + " " * (80 * 2**20) + "</calibration>"
    s1 = _s1_zip_with(tmp_path, bomb)
    assert s1.stat().st_size < 2**20
    code, err = _cli(capsys, "run", "--optical", scene[0], "--sar", s1, "--out", tmp_path / "o.tif", *FAST)
    assert code == 2 and "refused:" in err and "larger than the engine reads from one file" in err


BILLION_LAUGHS = ('<?xml version="1.0"?><!DOCTYPE lolz [<!ENTITY lol "lol"><!ENTITY lol2 "&lol;&lol;&lol;&lol;">]>'
                  "<calibration>&lol2;</calibration>")
EXTERNAL_ENTITY = ('<?xml version="1.0"?><!DOCTYPE c [<!ENTITY x SYSTEM "file:///etc/passwd">]>'
                   "<calibration>&x;</calibration>")


@pytest.mark.parametrize("xml", [BILLION_LAUGHS, EXTERNAL_ENTITY], ids=["entity_expansion", "external_entity"])
def test_xml_entities_in_a_product_are_one_line_naming_the_member(tmp_path, scene, capsys, xml):
    s1 = _s1_zip_with(tmp_path, xml)
    code, err = _cli(capsys, "run", "--optical", scene[0], "--sar", s1, "--out", tmp_path / "o.tif", *FAST)
    assert code == 2 and re.search(r"refused: the product's XML calibration-.*\.xml declares entities", err), err
    code = cli_main([str(a) for a in ("run", "--json", "--optical", scene[0], "--sar", s1, "--out",
                                      tmp_path / "o.tif", *FAST)])  # fmt: skip
    event = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert code == 2 and event["kind"] == "InputError" and "internal error" not in event["message"]


@pytest.fixture()
def http_server() -> Iterator[tuple[str, list[str]]]:
    """A local HTTP server that records every request (none may come)."""
    hits: list[str] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - http.server's name
            hits.append(self.path)
            self.send_response(404)
            self.end_headers()

        do_HEAD = do_GET  # noqa: N815

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}", hits
    server.shutdown()


@pytest.mark.parametrize("remote", ["/vsicurl/{url}/x.tif", "/vsizip//vsicurl/{url}/x.zip/a.tif", "WMS:{url}/wms"])
def test_a_local_vrt_reaching_the_network_is_refused_without_a_request(tmp_path, scene, capsys, http_server, remote):
    url, hits = http_server
    vrt = _vrt(tmp_path / "net.vrt", remote.format(url=url), relative=False)
    nested = _vrt(tmp_path / "outer.vrt", vrt.name)
    inline = vrt.read_text()  # a VRT given as XML on the command line is local too (hostile pass)
    for args in (["run", "--optical", nested, "--sar", scene[1], "--out", tmp_path / "o.tif", *FAST],
                 ["run", "--optical", inline, "--sar", scene[1], "--out", tmp_path / "o.tif", *FAST],
                 ["ndvi", "--optical", vrt, "--out", tmp_path / "n.tif"],
                 ["info", "--optical", vrt, "--sar", scene[1]],
                 ["evaluate", "--optical", scene[0], "--prediction", scene[0], "--reference", vrt, "--out",
                  tmp_path / "rep"]):  # fmt: skip
        code, err = _cli(capsys, *args)
        assert code == 2 and "over the network" in err and "--allow-network" in err, (args, err)
    assert hits == [] and sorted(os.listdir(tmp_path)) == ["net.vrt", "opt.tif", "outer.vrt", "s1.tif"]


def test_allow_network_lets_a_local_vrt_read_a_remote_source(tmp_path, capsys, http_server, monkeypatch):
    url, hits = http_server
    vrt = _vrt(tmp_path / "net.vrt", f"/vsicurl/{url}/x.tif", relative=False)
    monkeypatch.delenv("ALIGNCR_ALLOW_NETWORK", raising=False)
    code, err = _cli(capsys, "--allow-network", "ndvi", "--optical", vrt, "--out", tmp_path / "n.tif")
    monkeypatch.delenv("ALIGNCR_ALLOW_NETWORK", raising=False)
    assert code == 2 and "over the network" not in err and hits  # asked the server (which has no such file)


@pytest.mark.parametrize("args,match", [
    (["--threads", "100000"], r"--threads must be 1 to \d+"), (["--threads", "0"], r"--threads must be 1 to"),
    (["--memory-budget", "inf"], "positive, finite"), (["--memory-budget", "nan"], "positive, finite"),
    (["--memory-budget", "-1"], "positive, finite"),
])  # fmt: skip
def test_resource_options_are_bounded_before_any_work(tmp_path, scene, capsys, args, match):
    code, err = _cli(capsys, "run", "--optical", scene[0], "--sar", scene[1], "--out", tmp_path / "o.tif",
                     *FAST[:-2], *args)  # fmt: skip
    assert code == 2 and re.search(match, err), err
    assert sorted(os.listdir(tmp_path)) == ["opt.tif", "s1.tif"]


# --- 4. one line, exit 2; the traceback only under --debug --------------------------------------------------------


@pytest.mark.parametrize("size", [(1, 1), (1, 5), (3, 1)])
@pytest.mark.parametrize("option", [["--tta", "2"], ["--tta", "8"], ["--confidence", "c.tif"]])
def test_tta_and_confidence_on_a_tiny_image(tmp_path, capsys, size, option):
    from helpers_models import registered_test_models

    opt = write_optical(tmp_path / "tiny.tif", height=size[0], width=size[1])
    sar = write_sar(tmp_path / "s1.tif", like=opt)
    args = [a if not a.endswith(".tif") else tmp_path / a for a in option]
    with registered_test_models():
        code, err = _cli(capsys, "run", "--optical", opt, "--sar", sar, "--out", tmp_path / "o.tif", "--model",
                         "test-ramp", "--device", "cpu", "--threads", "1", *args)  # fmt: skip
    assert code == 0, err
    with rasterio.open(tmp_path / "o.tif") as ds:
        assert (ds.width, ds.height) == (size[1], size[0])


@pytest.mark.parametrize("args,match", [
    (["--lr", "nan"], "--lr must be a finite number > 0"), (["--lr", "inf"], "--lr must be"),
    (["--lr", "-1"], "--lr must be"), (["--minutes", "-5"], "--minutes must be a finite number >= 0"),
    (["--minutes", "nan"], "--minutes must be"), (["--minutes", "0"], "no budget"), (["--steps", "-1"], "--steps"),
    (["--val-fraction", "nan"], "--val-fraction"), (["--pair-days", "inf"], "--pair-days"),
    (["--batch", "0"], "--batch must be"), (["--patch-size", "8"], "--patch-size"),
    (["--threads", "100000"], "--threads must be 1 to"),
])  # fmt: skip
def test_finetune_numbers_are_checked_before_any_work(tmp_path, capsys, args, match):
    out = tmp_path / "w.safetensors"
    code, err = _cli(capsys, "finetune", "--archive", tmp_path / "none", "--out", out, *args)
    assert code == 2 and match in err, err
    assert os.listdir(tmp_path) == []  # no OUT.finetune/ folder, no probe


def test_finetune_minutes_zero_means_no_time_limit_in_the_help():
    from engine.cli import build_parser

    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, __import__("argparse")._SubParsersAction))
    help_text = " ".join(a.help or "" for a in sub.choices["finetune"]._actions)
    assert "0 = no time limit" in help_text and "0 = no step limit" in help_text


def test_debug_adds_the_traceback_but_keeps_exit_code_2(tmp_path, scene, capsys):
    code = cli_main(["--debug", "run", "--optical", str(tmp_path / "missing.tif"), "--sar", str(scene[1]), "--out",
                     str(tmp_path / "o.tif")])  # fmt: skip
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" in err and err.strip().splitlines()[-1].startswith("error: optical file not found")


def test_a_corrupt_block_names_the_file_band_and_block(tmp_path, capsys):
    data = np.random.default_rng(1).integers(200, 6000, (4, 64, 64)).astype(np.uint16)
    opt = tmp_path / "corrupt.tif"
    profile = {"driver": "GTiff", "width": 64, "height": 64, "count": 4, "dtype": "uint16", "crs": "EPSG:32632",
               "transform": optical_transform(), "nodata": 0, "tiled": True, "blockxsize": 16, "blockysize": 16,
               "compress": "deflate"}  # fmt: skip
    with rasterio.open(opt, "w", **profile) as ds:
        ds.write(data)
    with rasterio.open(opt) as ds:
        offset = int(ds.get_tag_item("BLOCK_OFFSET_1_1", "TIFF", bidx=1))
    raw = bytearray(opt.read_bytes())
    raw[offset : offset + 64] = b"\xff" * 64
    opt.write_bytes(bytes(raw))
    sar = write_sar(tmp_path / "s1.tif", like=opt)
    for args in (["run", "--optical", opt, "--sar", sar, "--out", tmp_path / "o.tif", *FAST],
                 ["ndvi", "--optical", opt, "--out", tmp_path / "n.tif"]):  # fmt: skip
        code, err = _cli(capsys, *args)
        assert code == 2 and "See previous exception" not in err, err
        assert re.search(r"corrupt\.tif, band \d: IReadBlock failed at X offset 1, Y offset 1", err), err


def test_import_official_of_a_pickle_with_code_is_one_line_and_not_loaded(tmp_path, capsys):
    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {tmp_path / 'pwned'}",))

    torch.save({"network": Evil()}, tmp_path / "evil.pth")
    code, err = _cli(capsys, "models", "--import-official", tmp_path / "evil.pth", "--out", tmp_path / "x.safetensors")
    assert code == 2 and "is not a plain state dict of tensors" in err and "it was not loaded" in err
    assert "weights_only" not in err and not (tmp_path / "pwned").exists()


# --- 5. paths and signals ------------------------------------------------------------------------------------------


def test_finetune_paths_resolve_against_the_current_folder(tmp_path, monkeypatch, capsys):
    from engine.cli import build_parser
    from engine.commands.finetune import config_from_args

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    args = build_parser().parse_args(["finetune", "--archive", "arch", "--out", "rel.safetensors", "--weights",
                                      "w.safetensors"])  # fmt: skip
    cfg = config_from_args(args)
    assert (cfg.archive, cfg.out, cfg.weights) == (elsewhere / "arch", elsewhere / "rel.safetensors",
                                                   elsewhere / "w.safetensors")  # fmt: skip
    assert cfg.work_dir == elsewhere / "rel.safetensors.finetune"
    (elsewhere / "arch" / "optical").mkdir(parents=True)
    code, err = _cli(capsys, "finetune", "--archive", "arch", "--out", "rel.safetensors", "--steps", 3)
    assert code == 2 and sorted(os.listdir(elsewhere)) == ["arch"]  # a failed run leaves nothing, here or there
    assert not (ROOT / "rel.safetensors.finetune").exists() and not (ROOT / "rel.safetensors").exists()


def test_the_plugin_passes_absolute_file_names(tmp_path, monkeypatch):
    """The plugin starts the engine in its own folder: a relative name must not be read or written there."""
    from aligncr_qgis.finetune_request import FinetuneRequest
    from aligncr_qgis.run_options import RunCommand

    monkeypatch.chdir(tmp_path)
    args = RunCommand(optical="opt.tif", sar="/vsizip/s1.zip/s1.tif", out="o.tif", mask="auto", report="rep",
                      bounds="-1,-2,1,2").to_args()  # fmt: skip
    value = {flag: args[i + 1] for i, flag in enumerate(args[:-1]) if flag.startswith("--") and "=" not in flag}
    assert value["--optical"] == str(tmp_path / "opt.tif") and value["--out"] == str(tmp_path / "o.tif")
    assert value["--report"] == str(tmp_path / "rep") and value["--mask"] == "auto"
    assert value["--sar"] == "/vsizip/s1.zip/s1.tif" and "--bounds=-1,-2,1,2" in args
    ft = FinetuneRequest(archive="area", out="w.safetensors", base="mine.safetensors").to_args()
    assert ft[ft.index("--archive") + 1] == str(tmp_path / "area") and ft[ft.index("--out") + 1] == str(
        tmp_path / "w.safetensors") and ft[ft.index("--weights") + 1] == str(tmp_path / "mine.safetensors")


@pytest.mark.parametrize("cog", [False, True])
def test_a_240_character_output_name_is_written(tmp_path, scene, capsys, cog):
    out = tmp_path / ("o" * 236 + ".tif")
    code, err = _cli(capsys, "run", "--optical", scene[0], "--sar", scene[1], "--out", out, "--qa",
                     tmp_path / ("q" * 250 + ".tif"), *FAST, *(["--cog"] if cog else []))  # fmt: skip
    assert code == 0, err
    assert sorted(os.listdir(tmp_path)) == sorted(["opt.tif", "s1.tif", out.name, "q" * 250 + ".tif"])


def test_a_long_name_s_stale_temporaries_are_found_again(tmp_path):
    from engine.names import NAME_MAX, temporary_name

    out = tmp_path / ("é" * 120 + ".tif")  # 244 bytes in UTF-8
    stale = tmp_path / temporary_name(out.name, f"{dead_pid()}.0badf00d", "cog")
    assert len(stale.name.encode()) <= NAME_MAX
    stale.write_bytes(b"x")
    assert remove_stale_temporaries(out) == [stale]


@pytest.mark.parametrize("signum,code", [(signal.SIGTERM, 143), (signal.SIGHUP, 129)])
def test_sigterm_and_sighup_remove_the_temporary(tmp_path, scene, signum, code):
    child = start_slow_run(scene, tmp_path / "o.tif")
    wait_for_temporary(tmp_path, child)
    child.send_signal(signum)
    _, err = child.communicate(timeout=60)
    assert child.returncode == code and "Traceback" not in err, err
    assert sorted(os.listdir(tmp_path)) == ["opt.tif", "s1.tif"]


def test_sigint_stops_the_run_even_when_inherited_ignored(tmp_path, scene):
    """The plugin's Cancel is a SIGINT; a parent that ignores SIGINT (a GUI, a background job) hands the ignore down,
    and the run then went on until the plugin's kill, leaving its temporary. It must unwind like Ctrl-C."""
    child = start_slow_run(scene, tmp_path / "o.tif", sigint_ignored=True)
    wait_for_temporary(tmp_path, child)
    child.send_signal(signal.SIGINT)
    _, err = child.communicate(timeout=60)
    assert child.returncode == 130 and "Traceback" not in err, err
    assert sorted(os.listdir(tmp_path)) == ["opt.tif", "s1.tif"]


SLOW_PREDICT = (  # imported by every Python process started with this folder on PYTHONPATH: the batch's workers too
    "import os\n"
    "if os.environ.get('ALIGNCR_TEST_SLOW_PREDICT'):\n" + slowed_network(300, "    ")
)


@pytest.mark.parametrize("signum,code", [(signal.SIGTERM, 143), (signal.SIGHUP, 129)])
def test_stopping_a_batch_removes_its_workerswait_for_temporary(tmp_path, scene, signum, code):
    """The workers (Dask processes) die with their cluster; the batch removes what they left once they are gone."""
    pytest.importorskip("distributed")
    hooks = tmp_path / "hooks"
    hooks.mkdir()
    (hooks / "sitecustomize.py").write_text(SLOW_PREDICT)
    manifest = tmp_path / "m.csv"
    manifest.write_text(f"id,optical,sar,out,model\na,{scene[0]},{scene[1]},out/a.tif,identity\n")
    (tmp_path / "out").mkdir()
    env = {**os.environ, "PYTHONPATH": f"{hooks}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
           "ALIGNCR_TEST_SLOW_PREDICT": "1"}  # fmt: skip
    child = subprocess.Popen([sys.executable, "-m", "engine", "batch", "--manifest", str(manifest), "--workers", "1",
                              "--tile", "32", "--overlap", "8", "--device", "cpu"], cwd=ROOT, env=env,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip
    try:
        for _ in range(1800):  # the worker's scene is running: its temporary exists
            if any(p.name.endswith(".tmp.tif") and ".probe." not in p.name for p in (tmp_path / "out").iterdir()):
                break
            assert child.poll() is None, child.communicate()
            time.sleep(0.1)
        child.send_signal(signum)
        _, err = child.communicate(timeout=120)
    finally:
        if child.poll() is None:
            child.kill()
    assert child.returncode == code, err[-2000:]
    assert os.listdir(tmp_path / "out") == []


# --- 6. negative --bounds (the western hemisphere) -----------------------------------------------------------------


def test_negative_bounds_on_the_command_line_and_from_the_plugin_s_builder(tmp_path, capsys):
    """A scene in EPSG:3857 west of Greenwich and south of the equator: every coordinate is negative."""
    transform = rasterio.transform.from_origin(-7_850_000.0, -3_920_000.0, 3.0, 3.0)
    opt = write_optical(tmp_path / "chile.tif", height=40, width=40, crs="EPSG:3857", transform=transform)
    sar = write_sar(tmp_path / "s1.tif", like=opt)
    bounds = "-7849970.0,-3920090.0,-7849910.0,-3920030.0"
    builder = run_arguments({"optical": str(opt), "sar": str(sar), "out": str(tmp_path / "a.tif"), "bounds": bounds,
                             "model": "identity", "tile": 32, "overlap": 8, "device": "cpu"})  # fmt: skip
    assert f"--bounds={bounds}" in builder
    assert _cli(capsys, *builder[:], "--threads", "1")[0] == 0
    typed = ["run", "--optical", opt, "--sar", sar, "--out", tmp_path / "b.tif", "--bounds", bounds, *FAST]
    assert _cli(capsys, *typed)[0] == 0
    west, south, east, north = rasterio.warp.transform_bounds("EPSG:3857", "EPSG:4326", -7849970.0, -3920090.0,
                                                              -7849910.0, -3920030.0)  # fmt: skip
    assert west < 0 and north < 0
    lonlat = ["--bounds", f"{west!r},{south!r},{east!r},{north!r},EPSG:4326"]
    assert _cli(capsys, *typed[:6], tmp_path / "c.tif", *lonlat, *FAST)[0] == 0
    for name in ("a.tif", "b.tif"):
        with rasterio.open(tmp_path / name) as ds:
            assert (ds.width, ds.height) == (20, 20) and ds.transform.c == -7_849_970.0


# --- the extra hostile pass: what failed besides the cases -------------------------------------------------


def test_a_netcdf_with_several_variables_names_its_subdatasets(tmp_path, scene, capsys):
    """A 4-band GeoTIFF copied to NetCDF is four variables: the file itself has no band (an IndexError traceback)."""
    import rasterio.shutil

    nc = tmp_path / "opt.nc"
    rasterio.shutil.copy(scene[0], nc, driver="netCDF")
    code, err = _cli(capsys, "run", "--optical", nc, "--sar", scene[1], "--out", tmp_path / "o.tif", *FAST)
    assert code == 2 and "holds no raster band; give one of its 4 subdatasets" in err


def test_mask_auto_protects_the_udm2_found_beside_the_optical(tmp_path, capsys):
    opt = write_optical(tmp_path / "20230101_AnalyticMS_SR.tif", height=40, width=40)
    sar = write_sar(tmp_path / "s1.tif", like=opt)
    udm2 = write_raster(tmp_path / "20230101_udm2.tif", np.zeros((8, 40, 40), np.uint8), transform=optical_transform())
    before = _snapshot(tmp_path)
    code, err = _cli(capsys, "run", "--optical", opt, "--sar", sar, "--mask", "auto", "--out", udm2, *FAST)
    assert code == 2 and "is the mask input" in err and _snapshot(tmp_path) == before


@pytest.mark.parametrize("name,match", [("o.gpkg", "reads a '.gpkg' name as GPKG"), ("o.png", "as PNG"),
                                        ("o.vrt", "as VRT"), ("o.nc", "as netCDF")])  # fmt: skip
def test_a_geotiff_output_named_as_another_format_is_refused(tmp_path, scene, capsys, name, match):
    code, err = _cli(capsys, "run", "--optical", scene[0], "--sar", scene[1], "--out", tmp_path / name, *FAST)
    assert code == 2 and match in err and not (tmp_path / name).exists()
    code, err = _cli(capsys, "ndvi", "--optical", scene[0], "--out", tmp_path / name)
    assert code == 2 and match in err and not (tmp_path / name).exists()


def test_an_output_that_is_a_symbolic_link_is_refused_not_replaced(tmp_path, scene, capsys):
    """``--out /dev/stdout`` with stdout redirected to a file: the rename replaced the link /dev/stdout itself."""
    (tmp_path / "log.txt").write_text("the user's log")
    (tmp_path / "stdout").symlink_to(tmp_path / "log.txt")
    code, err = _cli(capsys, "run", "--optical", scene[0], "--sar", scene[1], "--out", tmp_path / "stdout", *FAST)
    assert code == 2 and "is a symbolic link" in err
    assert (tmp_path / "stdout").is_symlink() and (tmp_path / "log.txt").read_text() == "the user's log"


def test_an_output_name_ending_with_a_slash_is_refused(tmp_path, scene, capsys):
    with pytest.raises(SystemExit) as info:
        cli_main(["run", "--optical", str(scene[0]), "--sar", str(scene[1]), "--out", f"{tmp_path / 'new'}/"])
    assert info.value.code == 2 and "ends with a slash: give a file name" in capsys.readouterr().err
    assert not (tmp_path / "new").exists()


def test_memory_budget_and_batch_workers_are_bounded(tmp_path, scene, capsys):
    code, err = _cli(capsys, "run", "--optical", scene[0], "--sar", scene[1], "--out", tmp_path / "o.tif",
                     "--memory-budget", "1e300", *FAST)  # fmt: skip
    assert code == 2 and "at most 1e+06" in err
    manifest = tmp_path / "m.csv"
    manifest.write_text(f"id,optical,sar,out\na,{scene[0]},{scene[1]},a.tif\n")
    code, err = _cli(capsys, "batch", "--manifest", manifest, "--workers", 100_000)
    assert code == 2 and "--workers must be 1 to" in err and not (tmp_path / "a.tif").exists()


def test_a_vrt_source_that_is_a_fifo_is_refused_instead_of_blocking(tmp_path, scene, capsys):
    os.mkfifo(tmp_path / "pipe.tif")
    vrt = _vrt(tmp_path / "fifo.vrt", "pipe.tif")
    code, err = _cli(capsys, "run", "--optical", vrt, "--sar", scene[1], "--out", tmp_path / "o.tif", *FAST)
    assert code == 2 and "which is not a regular file" in err
