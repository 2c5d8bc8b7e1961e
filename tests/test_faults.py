"""Issue 15's hostile-input review as regression tests: nothing lost, nothing corrupt, no traceback.

One section per item of the issue (and of ``docs/reliability.md``). Every test uses small rasters on the CPU; the
ones that need root (a tmpfs) skip cleanly without it, and the disk-full case also runs without root through a
file-size limit (``RLIMIT_FSIZE``: writes past it fail with EFBIG, as on a full disk).
"""

from __future__ import annotations

import csv
import inspect
import json
import os
import re
import resource
import shutil
import signal
import socket
import stat
import struct
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
import rasterio
import torch
from helpers_models import Constant, ConstantConfig
from helpers_processes import dead_pid, start_slow_run, wait_for_temporary
from helpers_rasters import write_optical, write_sar

from engine.batch import BatchConfig, ManifestError, SceneJob, check_batch_paths, read_manifest, run_batch
from engine.cli import main as cli_main
from engine.config import RunConfig
from engine.errors import InputError, ModelError, OutputError
from engine.models import MODEL_REGISTRY, register_model
from engine.outputs.writer import AtomicFile, remove_stale_temporaries, verify_geotiff
from engine.stream.chunks import nodata_substitute
from engine.stream.pipeline import run
from engine.stream.tiling import TileGrid

ROOT = Path(__file__).resolve().parents[1]
FAST = {"tile": 32, "overlap": 8, "model": "identity", "device": "cpu", "mode": "raw"}


# --- helpers ----------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module", autouse=True)
def _fault_models() -> Iterator[None]:
    added = []
    for name, value in (("test-zeros", 0.0), ("test-nan", float("nan")), ("test-inf", float("inf"))):
        if name not in MODEL_REGISTRY:
            register_model(name, ConstantConfig(value=value), "test model", needs_weights=False)(Constant)
            added.append(name)
    yield
    for name in added:
        MODEL_REGISTRY.pop(name, None)


@pytest.fixture()
def scene(tmp_path: Path) -> tuple[Path, Path]:
    inputs = tmp_path / "in"
    inputs.mkdir()
    opt = write_optical(inputs / "opt.tif", height=40, width=40)
    return opt, write_sar(inputs / "s1.tif", like=opt)


def _noise_scene(folder: Path, size: int = 192) -> tuple[Path, Path]:
    """Incompressible optical (the output is about as large as 4 × size² × 2 bytes) and its SAR."""
    folder.mkdir(exist_ok=True)
    data = np.random.default_rng(5).integers(200, 6000, (4, size, size)).astype(np.uint16)
    opt = write_optical(folder / "noise.tif", data)
    return opt, write_sar(folder / "noise_s1.tif", like=opt)


def _leftovers(folder: Path) -> list[str]:
    """Everything in ``folder`` (outputs, temporaries, probes)."""
    return sorted(p.name for p in folder.iterdir())


def _cli(capsys, *args: str) -> tuple[int, str]:
    """Run the CLI in-process; returns (exit code, stderr), checking the error is one line without a traceback."""
    code = cli_main([str(a) for a in args])
    err = capsys.readouterr().err
    assert "Traceback" not in err
    if code != 0:
        errors = [line for line in err.splitlines() if line.startswith("error:")]
        assert len(errors) == 1, err
    return code, err


def _engine(*args: str, limit_bytes: int | None = None, timeout: float = 240) -> subprocess.CompletedProcess:
    """``python -m engine ARGS`` in a child process, optionally with a file-size limit (a full disk for GDAL)."""

    def limit() -> None:
        if limit_bytes is not None:
            resource.setrlimit(resource.RLIMIT_FSIZE, (limit_bytes, limit_bytes))

    return subprocess.run([sys.executable, "-m", "engine", *map(str, args)], cwd=ROOT, capture_output=True,
                          text=True, timeout=timeout, preexec_fn=limit, check=False)  # fmt: skip


def _assert_one_line_failure(done: subprocess.CompletedProcess, match: str) -> None:
    assert done.returncode == 2, done.stderr[-2000:]
    assert "Traceback" not in done.stderr, done.stderr[-2000:]
    errors = [line for line in done.stderr.splitlines() if line.lstrip().startswith("error:")]
    assert len(errors) == 1 and match in errors[0].lower(), done.stderr[-2000:]


# --- 1. disk full while writing or finishing the file -----------------------------------------------------------


@pytest.mark.parametrize("cog", [False, True])
def test_disk_full_is_one_line_no_output_no_temporary(tmp_path, cog):
    """A file-size limit makes every write past 64 kB fail as a full disk would (EFBIG instead of ENOSPC)."""
    opt, sar = _noise_scene(tmp_path / "in")
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    args = ["run", "--optical", opt, "--sar", sar, "--out", out_dir / "out.tif", "--model", "identity", "--tile", 64,
            "--overlap", 8, "--device", "cpu", *(["--cog"] if cog else [])]  # fmt: skip
    done = _engine(*args, limit_bytes=64 * 1024)
    _assert_one_line_failure(done, "cannot")
    assert _leftovers(out_dir) == []


@contextmanager
def _tmpfs(folder: Path, size_kb: int) -> Iterator[Path]:
    """A small tmpfs mounted on ``folder`` (root and a mount-capable container only; else the test skips)."""
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("mounting a tmpfs needs root")
    folder.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size_kb}k", "tmpfs", str(folder)],
                          capture_output=True, text=True, check=False)  # fmt: skip
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
    try:
        yield folder
    finally:
        subprocess.run(["umount", str(folder)], check=False)


@pytest.mark.parametrize("stage,size_kb", [("flush", 64), ("cog", None)])
def test_disk_full_on_a_real_small_file_system(tmp_path, stage, size_kb):
    """ENOSPC for real: a tmpfs too small for the output (flush) or for the COG copy beside the plain file."""
    opt, sar = _noise_scene(tmp_path / "in")
    config = RunConfig(optical=opt, sar=sar, out=tmp_path / "probe.tif", **FAST, cog=stage == "cog")
    if size_kb is None:  # room for the plain GeoTIFF, not for its COG copy too
        run(RunConfig(optical=opt, sar=sar, out=tmp_path / "plain.tif", **FAST))
        size_kb = (tmp_path / "plain.tif").stat().st_size * 3 // 2 // 1024
    with _tmpfs(tmp_path / "small", size_kb) as small:
        config.out = small / "out.tif"
        with pytest.raises(OutputError, match="no space left on device") as info:
            run(config)
        assert "\n" not in str(info.value)
        assert ("COG" in str(info.value)) == (stage == "cog")
        assert _leftovers(small) == []


def test_a_flush_failure_gdal_only_logs_is_raised(tmp_path, scene, monkeypatch):
    """GDAL reports a failed flush only through its error state: the writer reads it (injected here)."""
    import engine.sources.gdal_errors as ge

    assert ge.available()  # rasterio's GDAL was found: the check is live on this platform
    real = ge.last_failure

    def fail_on_close() -> str | None:  # the failure GDAL leaves behind when the close's flush fails
        if any(frame.function == "_finish" for frame in inspect.stack()[:6]):
            return "TIFFAppendToStrip:Write error at scanline 0"
        return real()

    out = tmp_path / "o.tif"
    monkeypatch.setattr(ge, "last_failure", fail_on_close)
    with pytest.raises(OutputError, match="cannot finish the output .* TIFFAppendToStrip"):
        run(RunConfig(optical=scene[0], sar=scene[1], out=out, **FAST))
    assert not out.exists() and _leftovers(tmp_path) == ["in"]


def test_a_file_that_lost_its_end_is_not_renamed_into_place(tmp_path, scene, monkeypatch):
    """Verification before the rename: a temporary file truncated after the flush (lost data) is refused."""
    import engine.outputs.writer as w

    real = w._Claim.fsync

    def truncate_then_sync(self) -> None:
        size = self.path.stat().st_size
        os.truncate(self.path, size - 64)
        real(self)

    monkeypatch.setattr(w._Claim, "fsync", truncate_then_sync)
    out = tmp_path / "o.tif"
    with pytest.raises(OutputError, match="damaged .* truncated"):
        run(RunConfig(optical=scene[0], sar=scene[1], out=out, **FAST))
    assert _leftovers(tmp_path) == ["in"]


def test_verify_geotiff_reads_a_whole_file_and_refuses_a_truncated_one(tmp_path, scene):
    good = tmp_path / "good.tif"
    run(RunConfig(optical=scene[0], sar=scene[1], out=good, **FAST))
    verify_geotiff(good, width=40, height=40, count=4, dtype="uint16")
    with pytest.raises(OutputError, match="expected 40×40×3"):
        verify_geotiff(good, width=40, height=40, count=3, dtype="uint16")
    cut = tmp_path / "cut.tif"
    cut.write_bytes(good.read_bytes()[:-100])
    with pytest.raises(OutputError, match="damaged"):
        verify_geotiff(cut, width=40, height=40, count=4, dtype="uint16")


# --- 2. outputs onto devices, FIFOs, sockets, folders ------------------------------------------------------------


def _device(folder: Path) -> Path:
    """A character device to write onto. As root, a private copy of /dev/null made with mknod: a regression (or
    this test run on the old code) must not turn the system's /dev/null into a regular file, as the review saw.
    Without root, /dev/null itself (which a non-root process cannot replace)."""
    if os.geteuid() != 0:
        return Path("/dev/null")
    path = folder / "null.tif"
    os.mknod(path, 0o666 | stat.S_IFCHR, os.makedev(1, 3))
    return path


def _fifo(path: Path) -> Path:
    os.mkfifo(path)
    return path


def _socket(path: Path) -> Path:
    s = socket.socket(socket.AF_UNIX)
    s.bind(str(path))
    s.close()
    return path


@pytest.mark.parametrize("kind", ["device", "fifo", "socket", "folder"])
@pytest.mark.parametrize("flag", ["out", "qa"])
def test_an_existing_non_regular_output_path_is_refused(tmp_path, scene, kind, flag):
    target = {"device": lambda: _device(tmp_path), "fifo": lambda: _fifo(tmp_path / "pipe.tif"),
              "socket": lambda: _socket(tmp_path / "sock.tif"),
              "folder": lambda: (tmp_path / "dir.tif").mkdir() or tmp_path / "dir.tif"}[kind]()  # fmt: skip
    mode = target.stat().st_mode
    paths = {"out": tmp_path / "o.tif", flag: target}
    with pytest.raises(OutputError, match="folder|not a regular file") as info:
        run(RunConfig(optical=scene[0], sar=scene[1], **paths, **FAST))
    assert "\n" not in str(info.value)
    assert target.stat().st_mode == mode  # the device / FIFO / socket / folder is still what it was
    assert not (tmp_path / "o.tif").exists()


def test_report_folder_that_is_a_file_or_holds_a_fifo_is_refused_before_the_run(tmp_path, scene, monkeypatch):
    import engine.stream.pipeline as pipeline

    monkeypatch.setattr(pipeline, "_decloud", lambda *a, **k: pytest.fail("the run started"))
    a_file = tmp_path / "report.txt"
    a_file.write_text("x")
    for report, match in ((a_file, "is a file"), (a_file / "sub", "cannot be created")):
        with pytest.raises(OutputError, match=match):
            run(RunConfig(optical=scene[0], sar=scene[1], out=tmp_path / "o.tif", report=report, **FAST))
    folder = tmp_path / "rep"
    folder.mkdir()
    _fifo(folder / "report.json")
    with pytest.raises(OutputError, match="report .*not a regular file"):
        run(RunConfig(optical=scene[0], sar=scene[1], out=tmp_path / "o.tif", report=folder, **FAST))


def test_report_of_a_run_whose_report_fails_leaves_no_output(tmp_path, scene, monkeypatch):
    """Outputs are committed after the report: a failing report leaves neither output nor temporary."""
    import engine.stream.pipeline as pipeline

    def broken_report(*args, **kwargs):
        raise OutputError("report: disk full (injected)")

    monkeypatch.setattr(pipeline, "_write_report", broken_report)
    with pytest.raises(OutputError, match="injected"):
        run(RunConfig(optical=scene[0], sar=scene[1], out=tmp_path / "o.tif", qa=tmp_path / "qa.tif",
                      report=tmp_path / "rep", **FAST))  # fmt: skip
    assert _leftovers(tmp_path) == ["in"]


# --- 3. stale temporaries: literal names, live owners ------------------------------------------------------------


def test_cleanup_of_scene_bracket_1_leaves_scene1s_live_temporary(tmp_path):
    live = AtomicFile(tmp_path / "scene1.tif")
    live.claim(live.tmp)  # a running writer of scene1.tif (this process, its lock held)
    dead = tmp_path / f".scene[1].tif.{dead_pid()}.0badf00d.tmp.tif"
    dead.write_bytes(b"half")
    sidecar = Path(str(dead) + ".aux.xml")
    sidecar.write_text("<PAMDataset/>")
    assert set(remove_stale_temporaries(tmp_path / "scene[1].tif")) == {dead, sidecar}
    assert live.tmp.exists()
    assert remove_stale_temporaries(tmp_path / "scene1.tif") == []  # its owner is alive (and holds the lock)
    assert live.tmp.exists()
    live.discard()
    assert not live.tmp.exists()


def test_cleanup_keeps_a_temporary_whose_owner_process_is_alive(tmp_path):
    """Another live process's temporary (lock held there) survives; after that process ends it is removed."""
    script = (
        "import sys, time; from pathlib import Path; from engine.outputs.writer import AtomicFile; "
        f"f = AtomicFile(Path({str(tmp_path / 'a.tif')!r})); f.claim(f.tmp); print(f.tmp, flush=True); "
        "time.sleep(60)"
    )
    child = subprocess.Popen([sys.executable, "-c", script], cwd=ROOT, stdout=subprocess.PIPE, text=True)
    try:
        tmp = Path(child.stdout.readline().strip())
        assert tmp.exists()
        assert remove_stale_temporaries(tmp_path / "a.tif") == [] and tmp.exists()
    finally:
        child.kill()
        child.wait()
    assert remove_stale_temporaries(tmp_path / "a.tif") == [tmp] and not tmp.exists()


# --- 4. non-finite network output --------------------------------------------------------------------------------


@pytest.mark.parametrize("model", ["test-nan", "test-inf"])
def test_non_finite_network_output_stops_the_run_naming_the_tile(tmp_path, scene, model):
    out = tmp_path / "o.tif"
    with pytest.raises(ModelError, match=r"NaN or infinite values for tile row 0, column 0 \(pixels x 0–31, y 0–31"):
        run(RunConfig(optical=scene[0], sar=scene[1], out=out, **{**FAST, "model": model}))
    assert _leftovers(tmp_path) == ["in"]


def test_weights_full_of_nan_are_an_error_not_a_nodata_scene(tmp_path, scene, capsys):
    from engine.models import build_model, save

    module = build_model("aligncr-lite")
    with torch.no_grad():
        for p in module.parameters():
            p.fill_(float("nan"))
    weights = tmp_path / "nan.safetensors"
    save(module, weights)
    out = tmp_path / "o.tif"
    code, err = _cli(capsys, "run", "--optical", scene[0], "--sar", scene[1], "--out", out, "--weights", weights,
                     "--tile", 32, "--overlap", 8, "--device", "cpu", "--dtype", "fp32")  # fmt: skip
    assert code == 2 and "NaN or infinite values for tile row 0, column 0" in err and not out.exists()


# --- 5. batch outputs that overwrite the batch's own files ------------------------------------------------------


def _manifest(path: Path, rows: list[dict[str, str]]) -> Path:
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=["id", "optical", "sar", "out", "qa"])
        w.writeheader()
        w.writerows(rows)
    return path


@pytest.mark.parametrize("case", ["out_is_manifest", "summary_is_output", "out_is_other_input", "out_is_own_input",
                                  "qa_is_other_out", "out_is_a_device", "summary_is_manifest"])  # fmt: skip
def test_batch_rejects_self_overwrites_before_any_scene_runs(tmp_path, scene, case):
    opt, sar = scene
    m = tmp_path / "m.csv"
    rows = [{"id": "a", "optical": str(opt), "sar": str(sar), "out": "a.tif", "qa": ""},
            {"id": "b", "optical": str(tmp_path / "b_in.tif"), "sar": str(sar), "out": "b.tif", "qa": ""}]
    summary = tmp_path / "m.summary.csv"
    if case == "out_is_manifest":
        rows[0]["out"] = "m.csv"
    elif case == "summary_is_output":
        summary = tmp_path / "b.tif"
    elif case == "out_is_other_input":
        rows[0]["out"] = "b_in.tif"
    elif case == "out_is_own_input":
        rows[0]["out"] = str(opt)
    elif case == "qa_is_other_out":
        rows[1]["qa"] = "a.tif"
    elif case == "out_is_a_device":
        rows[0]["out"] = str(_device(tmp_path))
    elif case == "summary_is_manifest":
        summary = m
    write_optical(tmp_path / "b_in.tif", height=40, width=40)
    jobs = read_manifest(_manifest(m, rows))
    before = {p.name: p.stat().st_mtime_ns for p in tmp_path.iterdir() if p.is_file()}
    with pytest.raises(ManifestError, match="would overwrite|not a regular file"):
        run_batch(jobs, BatchConfig(), summary, client=object(), manifest=m)
    assert {p.name: p.stat().st_mtime_ns for p in tmp_path.iterdir() if p.is_file()} == before


def test_batch_paths_that_collide_with_nothing_pass(tmp_path, scene):
    job = SceneJob("a", scene[0], scene[1], tmp_path / "a.tif", qa=tmp_path / "a_qa.tif")
    check_batch_paths([job], tmp_path / "m.summary.csv", tmp_path / "m.csv")


# --- 6. tile size: never larger than the scene, never more memory than the budget --------------------------------


@pytest.mark.parametrize("tile", [4096, 100_000])
def test_a_huge_tile_shrinks_to_the_scene(tmp_path, scene, tile):
    """--tile 4096 on a 300² image padded every tile to 4096² (20 GB); 100000 was a MemoryError traceback."""
    from helpers_models import Probe, registered_test_models

    with registered_test_models():
        Probe.seen.clear()
        result = run(RunConfig(optical=scene[0], sar=scene[1], out=tmp_path / "o.tif",
                               **{**FAST, "tile": tile, "model": "test-probe"}))  # fmt: skip
        shapes = [tuple(o.shape) for o, _ in Probe.seen]
    assert result.total_tiles == 1 and shapes == [(1, 4, 40, 40)]
    with rasterio.open(scene[0]) as a, rasterio.open(tmp_path / "o.tif") as b:
        np.testing.assert_array_equal(a.read(), b.read())


def test_a_tile_beyond_the_memory_budget_is_refused_with_the_largest_that_fits(tmp_path, monkeypatch):
    """... before any work: the scene check (and adaptation, the detector) would make the user wait for nothing."""
    from engine.stream import pipeline

    def no_work(*args, **kwargs):
        raise AssertionError("the scene check ran before the memory refusal")

    monkeypatch.setattr(pipeline, "_plan_scene_check", no_work)
    opt = write_optical(tmp_path / "big.tif", height=600, width=600)
    sar = write_sar(tmp_path / "s1.tif", like=opt)
    refused = r"--tile 512 .* more than the 0\.2 GB memory budget .*use --tile (\d+) or less"
    with pytest.raises(InputError, match=refused):
        run(RunConfig(optical=opt, sar=sar, out=tmp_path / "o.tif", model="aligncr-lite", tile=512, overlap=32,
                      device="cpu", memory_budget=0.2))  # fmt: skip
    assert not (tmp_path / "o.tif").exists()


def test_memory_plan_lowers_cpu_concurrency_to_what_fits():
    from engine.stream.accel import AccelConfig
    from engine.stream.memory import pipeline_bytes, plan_memory, tile_bytes

    grid = TileGrid(2000, 2000, 256, 32)
    per_tile = tile_bytes("aligncr-lite", 256, 256)
    budget_gb = (per_tile * 2.5 + pipeline_bytes(grid, 1024)) / 1e9
    plan, accel = plan_memory("aligncr-lite", grid, 1024, torch.device("cpu"), AccelConfig(threads=8, cpu_workers=4),
                              4, budget_gb)  # fmt: skip
    assert plan.concurrent == 2 and accel.cpu_workers == 2


def test_a_one_pixel_strip_costs_its_pixels_not_full_tiles(tmp_path):
    """1 × 3000: tiles of 1 × 256 (the network pads them itself), not 256 × 256 of reflection."""
    from helpers_models import Probe, registered_test_models

    opt = write_optical(tmp_path / "strip.tif", height=1, width=3000)
    sar = write_sar(tmp_path / "s1.tif", like=opt)
    grid = TileGrid(1, 100_000, 256, 32)
    assert grid.tile_h == 1 and len(grid) == 447 and len(grid) * grid.tile_h * grid.tile_w < 1.2 * 100_000
    with registered_test_models():
        Probe.seen.clear()
        result = run(RunConfig(optical=opt, sar=sar, out=tmp_path / "o.tif", model="test-probe", tile=256,
                               overlap=32, device="cpu"))  # fmt: skip
        shapes = {tuple(o.shape[-2:]) for o, _ in Probe.seen}
    assert shapes == {(1, 256)} and result.total_tiles == 14
    with rasterio.open(opt) as a, rasterio.open(tmp_path / "o.tif") as b:
        np.testing.assert_array_equal(a.read(), b.read())


# --- 7. one-line errors: truncated inputs, read errors, manifests, --debug ---------------------------------------


def _truncated(src: Path, dst: Path, keep: float = 0.6) -> Path:
    data = src.read_bytes()
    dst.write_bytes(data[: int(len(data) * keep)])
    return dst


@pytest.mark.parametrize("role", ["optical", "sar", "reference"])
def test_a_truncated_input_fails_before_anything_is_written(tmp_path, scene, capsys, role):
    opt, sar = scene
    ref = write_optical(tmp_path / "in" / "ref.tif", height=40, width=40, seed=3)
    bad = _truncated({"optical": opt, "sar": sar, "reference": ref}[role], tmp_path / "in" / f"bad_{role}.tif")
    paths = {"optical": opt, "sar": sar, "reference": ref, role: bad}
    out = tmp_path / "o.tif"
    code, err = _cli(capsys, "run", "--optical", paths["optical"], "--sar", paths["sar"], "--reference",
                     paths["reference"], "--report", tmp_path / "rep", "--out", out, "--model", "identity",
                     "--tile", 32, "--overlap", 8, "--device", "cpu")  # fmt: skip
    assert code == 2 and "truncated" in err and bad.name in err
    assert _leftovers(tmp_path) == ["in"]


def test_a_corrupt_block_in_the_middle_is_one_line_and_no_output(tmp_path, capsys):
    data = np.random.default_rng(1).integers(200, 6000, (4, 64, 64)).astype(np.uint16)
    opt = tmp_path / "opt.tif"
    profile = {"driver": "GTiff", "width": 64, "height": 64, "count": 4, "dtype": "uint16", "crs": "EPSG:32632",
               "transform": rasterio.transform.from_origin(550_000, 5_000_000, 3, 3), "nodata": 0, "tiled": True,
               "blockxsize": 16, "blockysize": 16, "compress": "deflate"}  # fmt: skip
    with rasterio.open(opt, "w", **profile) as ds:
        ds.write(data)
    with rasterio.open(opt) as ds:
        offset = int(ds.get_tag_item("BLOCK_OFFSET_1_1", "TIFF", bidx=1))
    raw = bytearray(opt.read_bytes())
    raw[offset : offset + 64] = b"\xff" * 64  # the deflate stream of block (1, 1) no longer decodes
    opt.write_bytes(bytes(raw))
    sar = write_sar(tmp_path / "s1.tif", like=opt)
    code, err = _cli(capsys, "run", "--optical", opt, "--sar", sar, "--out", tmp_path / "o.tif", "--model",
                     "identity", "--tile", 32, "--overlap", 8, "--device", "cpu")  # fmt: skip
    assert code == 2 and "cannot read an input raster" in err
    assert _leftovers(tmp_path) == ["opt.tif", "s1.tif"]


@pytest.mark.parametrize("content,match", [
    (b"id,optical,sar,out\na,o.tif,s.tif,a.tif,\n", "row 2 has 5 cells but the header has 4"),
    (b"id,optical,sar,out,\na,o.tif,s.tif,a.tif,\n", "empty column name"),
    ("id,optical,sar,out\nsc\u00e8ne,o.tif,s.tif,a.tif\n".encode("latin-1"), "not UTF-8"),
    (b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + bytes(range(256)), "not UTF-8|binary"),
    (b"II*\x00\x08\x00\x00\x00" + b"\x00" * 64, "binary"),
])  # fmt: skip
def test_bad_manifests_are_one_line_errors(tmp_path, capsys, content, match):
    m = tmp_path / "m.csv"
    m.write_bytes(content)
    code, err = _cli(capsys, "batch", "--manifest", m)
    assert code == 2 and re.search(match, err), err


def test_debug_shows_the_traceback(tmp_path, scene, capsys):
    """--debug adds the traceback; the exit code stays 2 (issue 25)."""
    fifo = _fifo(tmp_path / "pipe.tif")
    code = cli_main(["--debug", "run", "--optical", str(scene[0]), "--sar", str(scene[1]), "--out", str(fifo)])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" in err and "OutputError" in err


def test_out_of_memory_and_os_errors_are_one_line(tmp_path, scene, capsys, monkeypatch):
    import engine.stream.pipeline as pipeline

    for exc in (MemoryError(), PermissionError(13, "Permission denied", "/x/y.tif")):

        def boom(*args, _exc=exc, **kwargs):
            raise _exc

        monkeypatch.setattr(pipeline, "_decloud", boom)
        code, err = _cli(capsys, "run", "--optical", scene[0], "--sar", scene[1], "--out", tmp_path / "o.tif")
        assert code == 2 and ("out of memory" in err or "Permission denied: /x/y.tif" in err)


# --- 8. valid pixels never read as nodata ------------------------------------------------------------------------


def test_model_output_equal_to_nodata_is_written_as_the_next_value_and_said_so(tmp_path, scene):
    out = tmp_path / "o.tif"
    run(RunConfig(optical=scene[0], sar=scene[1], out=out, **{**FAST, "model": "test-zeros"}))
    with rasterio.open(out) as ds:
        data, mask = ds.read(), ds.dataset_mask()
        tag = ds.tags(1).get("ALIGNCR_NODATA_SUBSTITUTE", "")
    assert ds.nodata == 0 and (data == 1).all() and (mask == 255).all()
    assert "nodata value 0 is written as 1" in tag


@pytest.mark.parametrize("nodata,dtype,expected", [
    (0, "uint16", 1), (65535, "uint16", 65534), (-9999, "int16", -9998), (None, "uint16", None),
    (float("nan"), "float32", None), (300, "uint8", None),
    (0.0, "float32", float(np.nextafter(np.float32(0), np.float32(1)))),
])  # fmt: skip
def test_nodata_substitute(nodata, dtype, expected):
    assert nodata_substitute(nodata, dtype) == expected


# --- 9. smaller ones: temporaries of killed runs, the plugin's card reader and interpreter ------------------------

def test_sigterm_removes_the_temporary_and_exits_143(tmp_path, scene):
    out = tmp_path / "o.tif"
    child = start_slow_run(scene, out)
    wait_for_temporary(tmp_path, child)
    child.send_signal(signal.SIGTERM)
    _, err = child.communicate(timeout=60)
    assert child.returncode == 143 and "Traceback" not in err, err
    assert _leftovers(tmp_path) == ["in"]


def test_kill_9_leaves_a_temporary_that_the_next_run_removes(tmp_path, scene):
    out = tmp_path / "o.tif"
    child = start_slow_run(scene, out)
    stale = wait_for_temporary(tmp_path, child)
    child.kill()
    child.communicate()
    assert all(p.exists() for p in stale)
    run(RunConfig(optical=scene[0], sar=scene[1], out=out, **FAST))
    assert _leftovers(tmp_path) == ["in", "o.tif"]


def _safetensors(path: Path, header: object) -> Path:
    raw = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(raw)) + raw)
    return path


@pytest.mark.parametrize("header", [
    {"w": {"dtype": "F32", "shape": "abc", "data_offsets": [0, 4]}},
    {"w": {"dtype": "F32", "shape": [2, "x"], "data_offsets": [0, 4]}},
    {"w": {"dtype": "F32", "shape": [[2]], "data_offsets": [0, 4]}},
    {"w": {"dtype": "F32", "shape": None, "data_offsets": [0, 4]}},
    {"__metadata__": ["not", "a", "map"]},
    {"__metadata__": "text"},
])  # fmt: skip
def test_plugin_read_card_raises_only_model_card_error(tmp_path, header):
    from aligncr_qgis.model_cards import ModelCardError, read_card

    with pytest.raises(ModelCardError):
        read_card(_safetensors(tmp_path / "crafted.safetensors", header))


def test_plugin_python_only_from_its_own_folders_and_only_one_that_runs_the_engine(tmp_path, monkeypatch):
    from aligncr_qgis import paths

    plugin = tmp_path / "home" / "qgis" / "plugins" / "aligncr_qgis"
    plugin.mkdir(parents=True)
    (plugin / "engine").symlink_to(ROOT / "engine")  # the packaged layout: engine inside the plugin folder
    stray = tmp_path / "home" / ".venv" / "bin"  # a venv in a parent folder: never picked
    stray.mkdir(parents=True)
    (stray / "python").symlink_to(sys.executable)
    monkeypatch.setattr(paths, "PLUGIN_DIR", plugin)
    paths.runs_engine.cache_clear()
    assert paths.default_python() != str(stray / "python")
    broken = plugin / ".venv" / "bin"
    broken.mkdir(parents=True)
    fake = broken / "python"
    fake.write_text("#!/bin/sh\nexit 1\n")
    fake.chmod(fake.stat().st_mode | stat.S_IXUSR)
    paths.runs_engine.cache_clear()
    assert paths.default_python() != str(fake)  # a venv that cannot run the engine is not picked either
    fake.write_text(f"#!/bin/sh\nexec {sys.executable} \"$@\"\n")  # a working interpreter
    paths.runs_engine.cache_clear()
    assert paths.default_python() == str(fake)
    paths.runs_engine.cache_clear()
