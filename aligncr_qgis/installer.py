"""*Install engine…*: a virtual environment with the engine's packages, made from QGIS without a terminal.

QGIS's own Python has no torch, and a Debian system Python refuses ``pip install`` (PEP 668), so the engine gets a
venv in the plugin's data folder: created by QGIS's Python (or one the user picks) — with
``--system-site-packages`` for QGIS's Python, so its GDAL and numpy stay visible as the install hint always advised
— then ``pip install`` of :data:`REQUIREMENTS` (pyproject's dependencies; a test keeps them equal) and, unless
unticked, :data:`MASKS_REQUIREMENTS` (the ``masks`` extra: the trained cloud detector): from PyPI with
PyTorch's CUDA wheels when an NVIDIA GPU is present, or offline from a wheel folder (``--no-index --find-links``).
Without a GPU on Linux, PyTorch comes first and alone from PyTorch's CPU index (``--index-url``, no PyPI): PyPI's
Linux PyTorch bundles CUDA, and with the CPU index only an *extra* index pip fell back to it when that index could
not be reached — a 5.8 GB venv where about 1 GB was promised (issue 28). Now that step fails instead, and
:func:`explain_failure` says why and what the alternative would cost. :class:`PipProgress` turns pip's output (and
the bytes its downloads have written so far) into a progress figure. Where QGIS's Python lives differs per platform —
OSGeo4W and the standalone Windows installer (``bin\\python3.exe``, ``apps\\Python3*\\python.exe``), the macOS app
bundle (``Contents/MacOS/bin/python3``), Linux (``/usr/bin/python3``) — so every path here takes the platform as an
argument and is unit-tested for all three. No QGIS import: the steps run as :class:`aligncr_qgis.task.EngineStep`.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
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
MASKS_REQUIREMENTS = ["ukis-csmask[cpu]>=1.0,<2"]
"""The trained cloud and shadow detector (pyproject.toml's ``masks`` extra), installed by default: without it the
engine takes its cloud from the hand-made brightness rule and says so once per run (issue 29)."""
MASKS_WHEEL = "ukis_csmask-*.whl"  # offline, the detector is installed only when the wheel folder holds it
MASKS_GB, MASKS_MB = 0.25, 165.0  # installed (ukis-csmask's four ONNX models + onnxruntime) / downloaded, measured

CPU_BACKEND = ["onnxruntime>=1.31", "onnx>=1.14"]
"""pyproject's ``cpu`` extra (issue 30): ONNX Runtime runs the network faster than PyTorch on CPUs without native bf16
(benchmarks/README.md, "CPU backends"). Installed as an optional last step where no CUDA build is installed (offline:
only when the wheel folder has it): if it fails the engine is still complete and runs PyTorch."""
BACKEND_STEP = "install ONNX Runtime (optional: faster CPU runs)"
BACKEND_MB = 34.0  # the onnxruntime and onnx wheels, about (Linux x86-64)

TORCH_INDEX = "https://download.pytorch.org/whl/{}"
CUDA_FLAVOUR = "cu124"  # PyTorch's CUDA 12.4 wheels: run on any driver from CUDA 12.x
WINDOWS, MACOS, LINUX = "win32", "darwin", "linux"
CPU_VENV_GB, CUDA_VENV_GB = 1.0, 5.8  # what the venv weighs once installed (measured, issue 28)
# What pip downloads, roughly (MB): only sizes the progress bar until pip names each file's size.
TORCH_CPU_MB, OTHERS_MB, CUDA_MB = 190.0, 120.0, 2800.0
TORCH_STEP = "install PyTorch (CPU build) from PyTorch's index"
PIP_RETRIES, PIP_TIMEOUT = 2, 30  # an unreachable index fails in seconds, not after pip's 5 retries of 15 s
OPTIONAL_STEPS = frozenset({BACKEND_STEP})  # a failure is logged and the install still succeeds
UNREACHABLE = ("NewConnectionError", "Max retries exceeded", "Could not fetch URL", "ConnectTimeout", "ProxyError",
               "Temporary failure in name resolution", "Name or service not known", "Connection refused",
               "Network is unreachable", "No matching distribution found for torch")


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
    cpu_index: str = TORCH_INDEX.format("cpu")  # PyTorch's CPU wheels (Linux without a GPU)
    masks: bool = True  # the trained cloud detector (the ``masks`` extra: ukis-csmask with onnxruntime's CPU build)

    @property
    def python(self) -> Path:
        return venv_python(self.venv, self.platform)

    @property
    def torch_first(self) -> bool:
        """Whether PyTorch comes alone from its CPU index before the rest (Linux, no CUDA, online)."""
        return not self.wheel_dir and not self.cuda and platform_key(self.platform) == LINUX

    @property
    def with_masks(self) -> bool:
        """Whether the trained cloud detector is installed: when asked for, and offline only when the wheel folder
        holds its wheel (the engine works without it: the install must not fail for want of it)."""
        if not self.masks:
            return False
        return not self.wheel_dir or any(Path(self.wheel_dir).glob(MASKS_WHEEL))

    @property
    def size_gb(self) -> float:
        """What the installed venv will weigh, about."""
        base = CUDA_VENV_GB if self.cuda and not self.wheel_dir else CPU_VENV_GB
        return base + (MASKS_GB if self.with_masks else 0.0)

    @property
    def pip_tmp(self) -> Path:
        """pip's temporary folder (``TMPDIR``): its downloads grow there, which :class:`PipProgress` measures."""
        return self.venv.parent / (self.venv.name + "-pip-tmp")

    def venv_args(self) -> list[str]:
        """``python -m venv [--system-site-packages] FOLDER``."""
        return [*(["--system-site-packages"] if self.system_site_packages else []), str(self.venv)]

    def pip_args(self) -> list[str]:
        """``python -m pip install …`` of every requirement: offline from the wheel folder, else PyPI plus PyTorch's
        CUDA index (GPU); on Linux without CUDA PyTorch is already installed by :meth:`torch_args`."""
        args = ["install", "--disable-pip-version-check", "--no-input", "--retries", str(PIP_RETRIES), "--timeout",
                str(PIP_TIMEOUT)]
        if self.wheel_dir:
            args += ["--no-index", "--find-links", self.wheel_dir]
        elif self.cuda:
            args += ["--extra-index-url", TORCH_INDEX.format(CUDA_FLAVOUR)]
        return args + REQUIREMENTS + (MASKS_REQUIREMENTS if self.with_masks else [])

    def torch_args(self) -> list[str]:
        """PyTorch alone from its CPU index and nowhere else (``--index-url``: no PyPI to fall back to; its few
        pure-Python dependencies come with the next step)."""
        return ["install", "--disable-pip-version-check", "--no-input", "--retries", str(PIP_RETRIES), "--timeout",
                str(PIP_TIMEOUT), "--index-url", self.cpu_index, "--no-deps", REQUIREMENTS[0]]

    @property
    def cpu_backend(self) -> bool:
        """Whether the optional CPU backend (:data:`CPU_BACKEND`) is installed: not beside PyTorch's CUDA build (a
        GPU runs PyTorch), and offline only from a wheel folder that holds it."""
        if self.wheel_dir:
            return all(any(Path(self.wheel_dir).glob(f"{name}-*.whl")) for name in ("onnxruntime", "onnx"))
        return not self.cuda

    def backend_args(self) -> list[str]:
        """``python -m pip install`` of the optional CPU backend, from where the rest came."""
        args = ["install", "--disable-pip-version-check", "--no-input", "--retries", str(PIP_RETRIES), "--timeout",
                str(PIP_TIMEOUT)]
        if self.wheel_dir:
            args += ["--no-index", "--find-links", self.wheel_dir]
        return args + CPU_BACKEND

    def steps(self) -> list[tuple[str, str, str, list[str]]]:
        """(label, interpreter, module, arguments) of each command, in order; :data:`BACKEND_STEP` last, where
        there is one, is optional (:data:`OPTIONAL_STEPS`)."""
        torch = [(TORCH_STEP, str(self.python), "pip", self.torch_args())] if self.torch_first else []
        backend = [(BACKEND_STEP, str(self.python), "pip", self.backend_args())] if self.cpu_backend else []
        return [
            ("create the virtual environment", self.base_python, "venv", self.venv_args()),
            *torch,
            ("install the engine's packages", str(self.python), "pip", self.pip_args()),
            *backend,
        ]

    def expected_mb(self, label: str) -> float:
        """What a step downloads, about (MB): the wheel folder's size offline."""
        if self.wheel_dir:
            return sum(p.stat().st_size for p in Path(self.wheel_dir).glob("*.whl")) / 1e6 or OTHERS_MB
        if label == TORCH_STEP:
            return TORCH_CPU_MB
        if label == BACKEND_STEP:
            return BACKEND_MB
        masks = MASKS_MB if self.with_masks else 0.0
        return masks + (CUDA_MB if self.cuda else OTHERS_MB + (0.0 if self.torch_first else TORCH_CPU_MB))


def explain_failure(plan: InstallPlan, step: str, output: str) -> str | None:
    """The sentence for an install that stopped because PyTorch's CPU index could not be reached (None for any
    other failure): nothing else was tried, and what the alternative would have cost."""
    if step != TORCH_STEP or not any(sign in output for sign in UNREACHABLE):
        return None
    return (f"PyTorch's CPU index ({plan.cpu_index}) could not be reached, so the install stopped before anything "
            f"else was downloaded: from PyPI, Linux gets PyTorch's CUDA build, about {CUDA_VENV_GB:g} GB instead of "
            f"about {CPU_VENV_GB:g} GB. Check the connection (or proxy) and press Install engine… again, install "
            "offline from a wheel folder, or tick 'PyTorch for NVIDIA GPUs (CUDA)' to accept the larger download.")


_DOWNLOADING = re.compile(r"^\s*(Downloading|Using cached) (\S+) \(([\d.]+) (kB|MB|GB)\)")
_PROCESSING = re.compile(r"^\s*Processing (\S+\.whl)")
_COLLECTING = re.compile(r"^\s*Collecting (\S+)")
_UNITS = {"kB": 1e-3, "MB": 1.0, "GB": 1e3}
DOWNLOAD_SHARE = 0.9  # of a pip step's bar; installing the downloaded wheels is the rest


@dataclass
class PipProgress:
    """A pip step's progress from what pip prints (``Collecting``, ``Downloading NAME (SIZE)``, ``Processing
    FILE.whl``, ``Installing collected packages``) and the bytes the current download has written into pip's
    temporary folder, against the step's expected download (:meth:`InstallPlan.expected_mb`)."""

    expected_mb: float
    tmp: Path | None = None
    clock: Callable[[], float] = time.monotonic
    done_mb: float = 0.0
    current: tuple[str, float] | None = None  # the file being downloaded and its size (MB)
    files: int = 0
    fraction: float = 0.0
    _last_tick: float = field(default=0.0, repr=False)

    def line(self, text: str) -> tuple[float, str] | None:
        """Progress after one line pip printed, or None when the line says nothing about it."""
        found = _DOWNLOADING.match(text)
        if found:
            self._finish_current()
            size = float(found.group(3)) * _UNITS[found.group(4)]
            if found.group(1) == "Using cached":
                self.done_mb += size
            else:
                self.current = (found.group(2), size)
            return self._report(f"{found.group(1).lower()} {found.group(2).split('/')[-1]} ({size:.1f} MB)")
        found = _PROCESSING.match(text)
        if found:
            self._finish_current()
            path = Path(found.group(1))
            self.done_mb += path.stat().st_size / 1e6 if path.is_file() else 0.0
            return self._report(f"unpacking {path.name}")
        if text.startswith("Installing collected packages"):
            self._finish_current()
            self.fraction = max(self.fraction, DOWNLOAD_SHARE)
            return self.fraction, f"installing {len(text.split(':', 1)[-1].split(','))} packages"
        if text.startswith("Successfully installed"):
            self.fraction = 1.0
            return 1.0, "installed"
        found = _COLLECTING.match(text)
        return self._report(f"collecting {found.group(1)}") if found else None

    def tick(self) -> tuple[float, str] | None:
        """Progress of the download under way, from the bytes pip has written (at most twice a second)."""
        now = self.clock()
        if self.current is None or self.tmp is None or now - self._last_tick < 0.5:
            return None
        self._last_tick = now
        name, size = self.current
        got = min(size, _folder_mb(self.tmp))
        return self._report(f"downloading {name.split('/')[-1]}: {got:.0f} of {size:.0f} MB", got)

    def update(self, fraction: float, message: str) -> tuple[float, str]:
        """A progress event of the child (venv and pip print none): kept as it is."""
        return self.fraction, message

    def _finish_current(self) -> None:
        if self.current is not None:
            self.done_mb += self.current[1]
            self.current = None

    def _report(self, message: str, partial_mb: float = 0.0) -> tuple[float, str]:
        got = self.done_mb + partial_mb
        total = max(self.expected_mb, got + (self.current[1] - partial_mb if self.current else 0.0), 1e-6)
        self.fraction = max(self.fraction, DOWNLOAD_SHARE * got / total)
        return self.fraction, f"{message} · {got:.0f} of about {total:.0f} MB"


def _folder_mb(folder: Path) -> float:
    """Megabytes of the files under ``folder`` (pip's temporary downloads)."""
    total = 0
    for root, _dirs, names in os.walk(folder):
        for name in names:
            try:
                total += os.path.getsize(os.path.join(root, name))
            except OSError:
                continue
    return total / 1e6
