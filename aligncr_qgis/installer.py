"""*Install engine…*: a virtual environment with the engine's packages, made from QGIS without a terminal.

QGIS's own Python has no torch, and a Debian system Python refuses ``pip install`` (PEP 668), so the engine gets a
venv in the plugin's data folder: created by QGIS's Python (or one the user picks) — with
``--system-site-packages`` for QGIS's Python, so its GDAL and numpy stay visible as the install hint always advised
— then ``pip install`` of :data:`REQUIREMENTS` (pyproject's dependencies; a test keeps them equal): from PyPI with
PyTorch's CUDA wheels when an NVIDIA GPU is present (its CPU wheels on Linux otherwise, a tenth of the download),
or offline from a wheel folder (``--no-index --find-links``). Where QGIS's Python lives differs per platform —
OSGeo4W and the standalone Windows installer (``bin\\python3.exe``, ``apps\\Python3*\\python.exe``), the macOS app
bundle (``Contents/MacOS/bin/python3``), Linux (``/usr/bin/python3``) — so every path here takes the platform as an
argument and is unit-tested for all three. No QGIS import: the steps run as :class:`aligncr_qgis.task.EngineStep`.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

REQUIREMENTS = [
    "torch>=2.1",
    "numpy<2",
    "rasterio>=1.3",
    "affine>=2.4,<3",
    "scikit-image>=0.21",
    "tqdm>=4.60",
    "safetensors>=0.4",
    "defusedxml>=0.7",
    "rtree>=1.0",
]
"""What the engine needs (pyproject.toml's ``dependencies``; tests/test_installer.py checks they agree)."""

TORCH_INDEX = "https://download.pytorch.org/whl/{}"
CUDA_FLAVOUR = "cu124"  # PyTorch's CUDA 12.4 wheels: run on any driver from CUDA 12.x
WINDOWS, MACOS, LINUX = "win32", "darwin", "linux"


def platform_key(platform: str = sys.platform) -> str:
    """``win32``, ``darwin`` or ``linux`` (any other POSIX counts as Linux)."""
    return platform if platform in (WINDOWS, MACOS) else LINUX


def venv_python(venv: Path, platform: str = sys.platform) -> Path:
    """The interpreter inside a venv: ``Scripts\\python.exe`` on Windows, ``bin/python`` elsewhere."""
    if platform_key(platform) == WINDOWS:
        return venv / "Scripts" / "python.exe"
    return venv / "bin" / "python"


def qgis_python_candidates(executable: str, prefix: str, platform: str = sys.platform) -> list[Path]:
    """Where QGIS's own Python may be, best first. Inside QGIS ``sys.executable`` is the QGIS binary, not Python:
    ``…\\bin\\qgis-bin.exe`` (OSGeo4W and the standalone installer put ``python3.exe`` beside it and the real one
    in ``apps\\Python3*``), ``QGIS.app/Contents/MacOS/QGIS`` (``bin/python3`` beside it) or ``/usr/bin/qgis``."""
    exe, root = Path(executable), Path(prefix)
    if exe.name.lower().startswith("python"):
        return [exe]
    key = platform_key(platform)
    if key == WINDOWS:
        apps = sorted(exe.parent.parent.glob("apps/Python3*/python.exe"), reverse=True)
        return [exe.parent / "python3.exe", exe.parent / "python.exe", root / "python.exe", *apps]
    if key == MACOS:
        return [exe.parent / "bin" / "python3", root / "bin" / "python3"]
    return [root / "bin" / "python3", Path("/usr/bin/python3")]


def qgis_python(executable: str = sys.executable, prefix: str = sys.prefix, platform: str = sys.platform) -> str:
    """The first existing candidate of :func:`qgis_python_candidates`, else ``python3`` on PATH, else ""."""
    for candidate in qgis_python_candidates(executable, prefix, platform):
        if candidate.is_file():
            return str(candidate)
    return shutil.which("python3") or shutil.which("python") or ""


def has_nvidia_gpu() -> bool:
    """Whether ``nvidia-smi`` runs: then PyTorch's CUDA wheels are worth their size."""
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return False
    try:
        return subprocess.run([smi, "-L"], capture_output=True, timeout=20, check=False).returncode == 0
    except (OSError, subprocess.SubprocessError):
        return False


@dataclass(frozen=True)
class InstallPlan:
    """Everything one install needs; :meth:`steps` turns it into (label, python, module, args) commands."""

    base_python: str  # creates the venv
    venv: Path  # the folder to create (the plugin's data folder)
    wheel_dir: str = ""  # offline: install only from this folder
    cuda: bool = False  # PyTorch's CUDA wheels (ignored offline: the folder decides)
    system_site_packages: bool = True  # QGIS's GDAL / numpy stay visible (QGIS's own Python)
    platform: str = sys.platform

    @property
    def python(self) -> Path:
        return venv_python(self.venv, self.platform)

    def venv_args(self) -> list[str]:
        """``python -m venv [--system-site-packages] FOLDER``."""
        return [*(["--system-site-packages"] if self.system_site_packages else []), str(self.venv)]

    def pip_args(self) -> list[str]:
        """``python -m pip install …``: offline from the wheel folder, else PyPI plus PyTorch's CUDA index (GPU) or,
        on Linux, its CPU index (PyPI's Linux torch bundles CUDA: gigabytes for nothing without a GPU)."""
        args = ["install", "--disable-pip-version-check", "--no-input"]
        if self.wheel_dir:
            args += ["--no-index", "--find-links", self.wheel_dir]
        elif self.cuda:
            args += ["--extra-index-url", TORCH_INDEX.format(CUDA_FLAVOUR)]
        elif platform_key(self.platform) == LINUX:
            args += ["--extra-index-url", TORCH_INDEX.format("cpu")]
        return args + REQUIREMENTS

    def steps(self) -> list[tuple[str, str, str, list[str]]]:
        """(label, interpreter, module, arguments) of each command, in order."""
        return [
            ("create the virtual environment", self.base_python, "venv", self.venv_args()),
            ("install the engine's packages", str(self.python), "pip", self.pip_args()),
        ]
