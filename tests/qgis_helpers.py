"""Helpers for the QGIS tests: tiny georeferenced rasters, a fake engine, and waiting on QgsTasks.

The rasters are small (64×64 optical at 3 m, SAR at 10 m in a *different* CRS) so that the real engine with the
``identity`` model finishes in about a second while still exercising reprojection of SAR onto the optical grid.
"""

from __future__ import annotations

import os
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import rasterio
from rasterio.crs import CRS
from rasterio.transform import from_origin
from rasterio.warp import transform_bounds

ROOT = Path(__file__).resolve().parents[1]
VENV_PYTHON = ROOT / ".venv" / "bin" / "python"
PYTHON = str(VENV_PYTHON if VENV_PYTHON.is_file() else Path(sys.executable))

UTM = "EPSG:32633"
ORIGIN = (500_000.0, 5_000_000.0)  # upper-left corner in UTM 33N (15° E, ~45° N)


def write_optical(path: Path, size: int = 64, *, crs: str = UTM, descriptions: bool = True, bands: int = 4,
                  seed: int = 0) -> Path:
    """A 4-band uint16 reflectance ×10⁴ raster (B, G, R, NIR) with band descriptions like Planet's."""
    rng = np.random.default_rng(seed)
    data = rng.integers(200, 4000, size=(bands, size, size), dtype=np.uint16)
    if crs == UTM:
        transform = from_origin(ORIGIN[0], ORIGIN[1], 3.0, 3.0)
    else:  # geographic: ~3 m in degrees near 45° N
        transform = from_origin(15.0, 45.15, 3.0e-5, 3.0e-5)
    with rasterio.open(path, "w", driver="GTiff", width=size, height=size, count=bands, dtype="uint16",
                       crs=CRS.from_string(crs), transform=transform) as dst:
        dst.write(data)
        if descriptions:
            for i, name in enumerate(("blue", "green", "red", "nir")[:bands]):
                dst.set_band_description(i + 1, name)
    return path


def write_sar(path: Path, optical_size: int = 64, *, crs: str = "EPSG:4326", shift_m: float = 0.0,
              bands: int = 2) -> Path:
    """A 2-band float32 dB raster (VV, VH) at ~10 m covering the optical footprint (plus margin), in ``crs``."""
    extent_m = optical_size * 3.0
    left, top = ORIGIN[0] + shift_m - 30.0, ORIGIN[1] + 30.0
    right, bottom = ORIGIN[0] + shift_m + extent_m + 30.0, ORIGIN[1] - extent_m - 30.0
    w, s, e, n = transform_bounds(UTM, crs, left, bottom, right, top)
    width = height = int(round((extent_m + 60.0) / 10.0))
    transform = from_origin(w, n, (e - w) / width, (n - s) / height)
    rng = np.random.default_rng(1)
    vv = rng.uniform(-20.0, -5.0, size=(height, width)).astype(np.float32)
    vh = rng.uniform(-28.0, -12.0, size=(height, width)).astype(np.float32)
    with rasterio.open(path, "w", driver="GTiff", width=width, height=height, count=bands, dtype="float32",
                       crs=CRS.from_string(crs), transform=transform) as dst:
        dst.write(np.stack([vv, vh][:bands]))
        for i, name in enumerate(("VV", "VH")[:bands]):
            dst.set_band_description(i + 1, name)
    return path


def make_scene(folder: Path, **kw: object) -> tuple[Path, Path]:
    folder.mkdir(parents=True, exist_ok=True)
    return write_optical(folder / "optical.tif"), write_sar(folder / "sar.tif", **kw)  # type: ignore[arg-type]


def fake_engine(folder: Path, *, tiles: int = 5, delay: float = 0.0, fail: str | None = None) -> Path:
    """A stand-in ``engine`` package printing the --progress-json protocol (tests of the runner only).

    It copies the optical input to ``--out`` through a temporary file, like the real atomic writer, so a cancel
    can be checked to leave nothing behind. ``delay`` seconds between tiles make cancellation observable.
    """
    pkg = folder / "engine"
    pkg.mkdir(parents=True, exist_ok=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "__main__.py").write_text(textwrap.dedent(f"""
        import json, os, shutil, signal, sys, time
        signal.signal(signal.SIGINT, signal.default_int_handler)  # as engine.cli: Cancel works under an ignoring parent
        args = sys.argv[1:]
        def opt(flag):
            return args[args.index(flag) + 1] if flag in args else None
        def emit(**ev):
            print(json.dumps(ev), flush=True)
        print("fake engine starting", file=sys.stderr, flush=True)
        if {fail!r} == "error":
            emit(event="error", message="optical and SAR do not overlap", kind="InputError")
            sys.exit(2)
        if {fail!r} == "crash":
            print("Traceback (most recent call last):", file=sys.stderr)
            print("ModuleNotFoundError: No module named 'torch'", file=sys.stderr)
            sys.exit(1)
        out = opt("--out")
        emit(event="start", total_tiles={tiles}, width=64, height=64, output=out)
        emit(event="warning", message="SAR covers 90 % of the optical image")
        tmp = out + ".part.tmp.tif"
        try:
            shutil.copyfile(opt("--optical"), tmp)
            for i in range({tiles}):
                time.sleep({delay})
                emit(event="progress", fraction=(i + 1) / {tiles}, message=f"tile {{i + 1}}/{tiles}")
            os.replace(tmp, out)
        except KeyboardInterrupt:
            os.remove(tmp)
            print("interrupted; no output was written", file=sys.stderr)
            sys.exit(130)
        emit(event="result", output=out, seconds=0.1, model="fake", device="cpu", report=None)
    """))
    return folder


def add_layer(project, path: Path, name: str):  # noqa: ANN001, ANN201 - QGIS types imported lazily
    """A raster layer of ``path`` named ``name``, checked valid and added to ``project``."""
    from qgis.core import QgsRasterLayer

    layer = QgsRasterLayer(str(path), name)
    assert layer.isValid(), path
    project.addMapLayer(layer)
    return layer


def wait_for(predicate, timeout: float = 60.0, step: float = 0.02) -> bool:  # noqa: ANN001
    """Spin the Qt event loop until ``predicate()`` is true (task signals are delivered through it)."""
    from qgis.PyQt.QtCore import QCoreApplication

    end = time.monotonic() + timeout
    while time.monotonic() < end:
        QCoreApplication.processEvents()
        if predicate():
            return True
        time.sleep(step)
    QCoreApplication.processEvents()
    return bool(predicate())


def run_and_wait(d, timeout: float = 60.0) -> list[bool]:  # noqa: ANN001 - an AlignCRDialog
    """Start the dialog's run and spin the event loop until it finishes; ``[ok]``."""
    finished: list[bool] = []
    d.runFinished.connect(finished.append)
    assert d.run() is not None, d.issue_messages()
    assert wait_for(lambda: bool(finished), timeout), "the task did not finish"
    return finished


def enabled_plugin_env(folder: Path) -> dict[str, str]:
    """The built zip unpacked under ``folder`` and enabled in an isolated profile there: the environment for
    ``qgis_process.bin`` runs of the packaged plugin."""
    import shutil
    import subprocess
    import zipfile

    from aligncr_qgis.package import build

    with zipfile.ZipFile(build(folder / "aligncr_qgis.zip")) as zf:
        zf.extractall(folder / "plugins")
    env = qgis_env(folder / "plugins", folder / "profile")
    enable = subprocess.run([str(shutil.which("qgis_process.bin")), "plugins", "enable", "aligncr_qgis"], env=env,
                            capture_output=True, text=True, timeout=120, check=False)  # fmt: skip
    assert enable.returncode == 0, enable.stderr[-2000:]
    return env


def qgis_env(plugin_path: Path, config_path: Path) -> dict[str, str]:
    """Environment for ``qgis_process.bin`` with the unpacked plugin and an isolated profile."""
    env = dict(os.environ)
    env.update(
        QT_QPA_PLATFORM="offscreen",
        QGIS_PLUGINPATH=str(plugin_path),
        QGIS_CUSTOM_CONFIG_PATH=str(config_path),
        ALIGNCR_PYTHON=PYTHON,
    )
    return env


def write_scene_optical(path: Path, *, cloud: float = 0.0, bands: int = 4, s2_stack: bool = False, size: int = 64,
                        shift_m: float = 0.0, date: str | None = None) -> Path:
    """A vegetated 3 m scene (B, G, R, NIR ≈ 400, 700, 500, 3000 DN with texture) with a bright, flat cloud over the
    left ``cloud`` share of the columns. ``s2_stack``: 13 Sentinel-2 bands without descriptions, the scene in B2,
    B3, B4, B8 (bands 2, 3, 4, 8) and a dark coastal band 1 — read as bands 1–4 it shows no cloud."""
    rng = np.random.default_rng(7)
    ground = {"B": 400, "G": 700, "R": 500, "NIR": 3000}
    count = 13 if s2_stack else bands
    where = {"B": 2, "G": 3, "R": 4, "NIR": 8} if s2_stack else {"B": 1, "G": 2, "R": 3, "NIR": 4}
    data = np.full((count, size, size), 300, dtype=np.uint16)
    cols = int(round(cloud * size))
    for role, band in where.items():
        layer = ground[role] + rng.integers(-80, 80, size=(size, size))
        layer[:, :cols] = 7000
        data[band - 1] = layer.astype(np.uint16)
    if s2_stack:
        data[0] = 150  # coastal aerosol: dark even under the cloud
    transform = from_origin(ORIGIN[0] + shift_m, ORIGIN[1], 3.0, 3.0)
    with rasterio.open(path, "w", driver="GTiff", width=size, height=size, count=count, dtype="uint16",
                       crs=CRS.from_string(UTM), transform=transform) as dst:
        dst.write(data)
        if not s2_stack:
            for i, name in enumerate(("blue", "green", "red", "nir")):
                dst.set_band_description(i + 1, name)
        if date:
            dst.update_tags(TIFFTAG_DATETIME=date)
    return path


def scripted_engine(folder: Path, events: list[dict], *, delay: float = 0.0, result: dict | None = None,
                    args_file: Path | None = None) -> Path:
    """A stand-in ``engine`` that prints ``events`` (JSON lines, ``delay`` s apart), copies ``--optical`` to
    ``--out`` and reports ``result`` (merged into a plain one): what a real run printed, replayed in a second.
    ``args_file``: where it writes its command line (JSON), for tests of what the plugin passes."""
    pkg = folder / "engine"
    pkg.mkdir(parents=True, exist_ok=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "__main__.py").write_text(textwrap.dedent(f"""
        import json, shutil, sys, time
        args = sys.argv[1:]
        if {str(args_file) if args_file else None!r}:
            open({str(args_file)!r}, "w").write(json.dumps(args))
        out = args[args.index("--out") + 1]
        for event in {events!r}:
            time.sleep({delay})
            print(json.dumps(event), flush=True)
        shutil.copyfile(args[args.index("--optical") + 1], out)
        print(json.dumps({{"event": "result", "output": out, "seconds": 1.0, "model": "fake", "device": "cpu",
                           **{result or {}!r}}}), flush=True)
    """))
    return folder
