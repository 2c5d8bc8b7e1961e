"""*Install engine…* logic on the three platforms QGIS ships for (issue 16): where QGIS's Python is, where the venv's
interpreter lands, the exact commands (offline from a wheel folder, CUDA or CPU wheels), and the requirements kept
equal to pyproject's. The end-to-end install is in tests/test_qgis_install.py."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

from aligncr_qgis.installer import (
    BACKEND_STEP,
    CPU_BACKEND,
    CUDA_FLAVOUR,
    MASKS_REQUIREMENTS,
    OPTIONAL_STEPS,
    REQUIREMENTS,
    InstallPlan,
    qgis_python,
    qgis_python_candidates,
    venv_python,
)

ROOT = Path(__file__).resolve().parents[1]


def touch(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("")
    return path


def test_requirements_are_pyprojects() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert REQUIREMENTS == project["dependencies"]
    assert MASKS_REQUIREMENTS == project["optional-dependencies"]["masks"]
    assert CPU_BACKEND == project["optional-dependencies"]["cpu"]


def test_trained_cloud_detector_by_default(tmp_path: Path) -> None:
    """The ``masks`` extra goes with the engine's packages unless unticked; offline only when the wheel folder holds
    its wheel (without it the engine works with the hand-made rule, so its absence must not fail the install)."""
    plan = InstallPlan("/q/python3", tmp_path / "venv", platform="linux")
    assert plan.pip_args()[-len(MASKS_REQUIREMENTS):] == MASKS_REQUIREMENTS
    without = InstallPlan("/q/python3", tmp_path / "venv", platform="linux", masks=False)
    assert not set(MASKS_REQUIREMENTS) & set(without.pip_args()) and without.size_gb < plan.size_gb
    assert without.expected_mb("install the engine's packages") < plan.expected_mb("install the engine's packages")
    wheels = tmp_path / "wheels"
    touch(wheels / "torch-2.3.0-cp311-none-linux_x86_64.whl")
    assert not set(MASKS_REQUIREMENTS) & set(InstallPlan("/q/python3", tmp_path / "v", str(wheels)).pip_args())
    touch(wheels / "ukis_csmask-1.0.0-py3-none-any.whl")
    assert InstallPlan("/q/python3", tmp_path / "v", str(wheels)).pip_args()[-1] == MASKS_REQUIREMENTS[-1]


@pytest.mark.parametrize("platform, rel", [("win32", "Scripts/python.exe"), ("darwin", "bin/python"),
                                           ("linux", "bin/python")])
def test_venv_python(tmp_path: Path, platform: str, rel: str) -> None:
    assert venv_python(tmp_path / "venv", platform) == tmp_path / "venv" / rel


def test_qgis_python_osgeo4w(tmp_path: Path) -> None:
    """OSGeo4W: qgis-bin.exe in bin\\, python3.exe beside it (preferred), the real one in apps\\Python39."""
    root = tmp_path / "OSGeo4W"
    exe = touch(root / "bin" / "qgis-bin.exe")
    real = touch(root / "apps" / "Python39" / "python.exe")
    assert qgis_python(str(exe), str(root / "apps" / "Python39"), "win32") == str(real)  # no bin\python3.exe
    wrapper = touch(root / "bin" / "python3.exe")
    assert qgis_python(str(exe), str(root / "apps" / "Python39"), "win32") == str(wrapper)


def test_qgis_python_windows_standalone(tmp_path: Path) -> None:
    """The standalone installer: C:\\Program Files\\QGIS 3.22\\bin\\qgis-bin.exe, apps\\Python39 (newest first)."""
    root = tmp_path / "QGIS 3.22.16"
    exe = touch(root / "bin" / "qgis-bin.exe")
    touch(root / "apps" / "Python37" / "python.exe")
    newest = touch(root / "apps" / "Python39" / "python.exe")
    candidates = qgis_python_candidates(str(exe), str(tmp_path / "elsewhere"), "win32")
    assert candidates[0] == root / "bin" / "python3.exe"
    assert candidates[-2:] == [newest, root / "apps" / "Python37" / "python.exe"]
    assert qgis_python(str(exe), str(tmp_path / "elsewhere"), "win32") == str(newest)


def test_qgis_python_macos(tmp_path: Path) -> None:
    macos = tmp_path / "QGIS.app" / "Contents" / "MacOS"
    exe = touch(macos / "QGIS")
    py = touch(macos / "bin" / "python3")
    assert qgis_python(str(exe), str(tmp_path / "Frameworks"), "darwin") == str(py)


def test_qgis_python_linux(tmp_path: Path) -> None:
    prefix = tmp_path / "usr"
    py = touch(prefix / "bin" / "python3")
    assert qgis_python(str(prefix / "bin" / "qgis"), str(prefix), "linux") == str(py)
    inside = touch(tmp_path / "venv" / "bin" / "python3.11")  # already a Python: itself
    assert qgis_python(str(inside), str(prefix), "linux") == str(inside)


@pytest.mark.parametrize("platform", ["win32", "darwin", "linux"])
def test_install_commands(tmp_path: Path, platform: str) -> None:
    plan = InstallPlan(base_python="/q/python3", venv=tmp_path / "venv", platform=platform)
    (label1, py1, mod1, args1), *torch, (label2, py2, mod2, args2), backend = plan.steps()
    assert (py1, mod1, args1) == ("/q/python3", "venv", ["--system-site-packages", str(tmp_path / "venv")])
    assert py2 == str(venv_python(tmp_path / "venv", platform)) and mod2 == "pip"
    everything = REQUIREMENTS + MASKS_REQUIREMENTS
    assert args2[0] == "install" and args2[-len(everything):] == everything
    cpu_index = "https://download.pytorch.org/whl/cpu"
    assert cpu_index not in args2  # issue 28: never an *extra* index pip may fall back from to PyPI's CUDA build
    # PyPI's Linux torch bundles CUDA; elsewhere it is CPU: on Linux torch comes first, alone, from the CPU index
    assert bool(torch) == (platform == "linux") and plan.size_gb == 1.25
    if torch:
        (label, _py, module, targs), = torch
        assert module == "pip" and targs[targs.index("--index-url") + 1] == cpu_index and "--no-deps" in targs
        assert "--extra-index-url" not in targs and targs[-1] == REQUIREMENTS[0]
    # issue 30: without CUDA the CPU backend comes last, from PyPI, as its own optional step
    assert backend[0] == BACKEND_STEP and backend[0] in OPTIONAL_STEPS and backend[2] == "pip"
    assert backend[3][-len(CPU_BACKEND):] == CPU_BACKEND and not any(a.startswith("https://") for a in backend[3])
    cuda_plan = InstallPlan("/q/python3", tmp_path / "venv", cuda=True, platform=platform)
    cuda = cuda_plan.pip_args()
    assert f"https://download.pytorch.org/whl/{CUDA_FLAVOUR}" in cuda and cpu_index not in cuda
    assert len(cuda_plan.steps()) == 2 and cuda_plan.size_gb == 6.05  # a GPU runs PyTorch: no CPU backend
    offline = InstallPlan("/q/python3", tmp_path / "venv", wheel_dir="/wheels", cuda=True, platform=platform)
    args = offline.pip_args()
    assert args[args.index("--find-links") + 1] == "/wheels" and "--no-index" in args
    assert not any(a.startswith("https://") for a in args)  # offline: nothing from the network
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    without = InstallPlan("/q/python3", tmp_path / "venv", wheel_dir=str(wheels), platform=platform)
    assert BACKEND_STEP not in [step[0] for step in without.steps()]  # offline: only if the folder has the wheel
    (wheels / "onnxruntime-1.31.1-cp311-cp311-manylinux_2_27_x86_64.whl").touch()
    assert BACKEND_STEP not in [step[0] for step in without.steps()]  # the exporter's onnx wheel is needed too
    (wheels / "onnx-1.23.2-cp311-cp311-manylinux_2_27_x86_64.whl").touch()
    label, _py, _module, bargs = without.steps()[-1]
    assert label == BACKEND_STEP and bargs[bargs.index("--find-links") + 1] == str(wheels) and "--no-index" in bargs
    chosen = InstallPlan("/my/python", tmp_path / "v", system_site_packages=False, platform=platform)
    assert chosen.venv_args() == [str(tmp_path / "v")]


def test_unreachable_cpu_index_is_explained(tmp_path: Path) -> None:
    from aligncr_qgis.installer import TORCH_STEP, explain_failure

    plan = InstallPlan("/q/python3", tmp_path / "venv", platform="linux", cpu_index="http://127.0.0.1:9/whl/cpu")
    output = ("WARNING: Retrying (Retry(total=1, connect=None)) after connection broken by 'NewConnectionError(...: "
              "Failed to establish a new connection: [Errno 111] Connection refused')': /whl/cpu/torch/\n"
              "ERROR: No matching distribution found for torch>=2.1")
    text = explain_failure(plan, TORCH_STEP, output)
    assert text is not None and "http://127.0.0.1:9/whl/cpu" in text and "5.8 GB" in text and "1 GB" in text
    assert explain_failure(plan, "install the engine's packages", output) is None
    assert explain_failure(plan, TORCH_STEP, "ERROR: disk full") is None


def test_pip_progress_reads_pips_output(tmp_path: Path) -> None:
    """Issue 28: the bar sat at 10 % for 7 minutes. pip's lines and the bytes of the download under way move it."""
    from aligncr_qgis.installer import DOWNLOAD_SHARE, PipProgress

    clock = [0.0]
    progress = PipProgress(300.0, tmp_path, clock=lambda: clock[0])
    assert progress.line("Collecting torch>=2.1")[0] == 0.0
    fraction, message = progress.line("  Downloading torch-2.5.1%2Bcpu-cp311-cp311-linux_x86_64.whl (190.0 MB)")
    assert fraction == 0.0 and "torch-2.5.1" in message and "190.0 MB" in message
    (tmp_path / "pip-unpack-x").mkdir()
    (tmp_path / "pip-unpack-x" / "torch.whl").write_bytes(b"0" * 95_000_000)
    clock[0] = 1.0
    fraction, message = progress.tick()
    assert fraction == pytest.approx(DOWNLOAD_SHARE * 95 / 300, abs=0.01) and "95 of 190 MB" in message
    assert progress.tick() is None  # at most twice a second
    progress.line("Collecting numpy<2")
    fraction, _ = progress.line("  Using cached numpy-1.26.4-cp311.whl (18.2 MB)")
    assert fraction == pytest.approx(DOWNLOAD_SHARE * 208.2 / 300, abs=0.01)
    assert progress.line("Installing collected packages: numpy, torch")[0] == DOWNLOAD_SHARE
    assert progress.line("Successfully installed numpy-1.26.4 torch-2.5.1")[0] == 1.0
    assert progress.line("Requirement already satisfied: tqdm") is None
