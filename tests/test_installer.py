"""*Install engine…* logic on the three platforms QGIS ships for (issue 16): where QGIS's Python is, where the venv's
interpreter lands, the exact commands (offline from a wheel folder, CUDA or CPU wheels), and the requirements kept
equal to pyproject's. The end-to-end install is in tests/test_qgis_install.py."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

from aligncr_qgis.installer import (
    CUDA_FLAVOUR,
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
    assert REQUIREMENTS == tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]


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
    (label1, py1, mod1, args1), (label2, py2, mod2, args2) = plan.steps()
    assert (py1, mod1, args1) == ("/q/python3", "venv", ["--system-site-packages", str(tmp_path / "venv")])
    assert py2 == str(venv_python(tmp_path / "venv", platform)) and mod2 == "pip"
    assert args2[0] == "install" and args2[-len(REQUIREMENTS):] == REQUIREMENTS
    cpu_index = "https://download.pytorch.org/whl/cpu"
    assert (cpu_index in args2) == (platform == "linux")  # PyPI's Linux torch bundles CUDA; elsewhere it is CPU
    cuda = InstallPlan("/q/python3", tmp_path / "venv", cuda=True, platform=platform).pip_args()
    assert f"https://download.pytorch.org/whl/{CUDA_FLAVOUR}" in cuda and cpu_index not in cuda
    offline = InstallPlan("/q/python3", tmp_path / "venv", wheel_dir="/wheels", cuda=True, platform=platform)
    args = offline.pip_args()
    assert args[args.index("--find-links") + 1] == "/wheels" and "--no-index" in args
    assert not any(a.startswith("https://") for a in args)  # offline: nothing from the network
    chosen = InstallPlan("/my/python", tmp_path / "v", system_site_packages=False, platform=platform)
    assert chosen.venv_args() == [str(tmp_path / "v")]
