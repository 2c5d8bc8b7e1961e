"""Where the plugin finds the engine, the Python that runs it, icons and bundled weights.

Two layouts must work without configuration:

* development — the plugin is ``<repo>/aligncr_qgis`` (symlinked into QGIS's plugin folder or found through
  ``QGIS_PLUGINPATH``); the engine is ``<repo>/engine``, icons ``<repo>/resources/icons``, the venv ``<repo>/.venv``;
* packaged zip — ``python -m aligncr_qgis.package`` puts ``engine/`` and ``resources/`` *inside* the plugin folder.

No QGIS import here: the packaging command and the tests use these helpers too.
"""

from __future__ import annotations

import configparser
import functools
import importlib
import os
import shutil
import subprocess
import sys
from pathlib import Path
from types import ModuleType

PLUGIN_DIR = Path(__file__).resolve().parent

PYTHON_ENV = "ALIGNCR_PYTHON"
"""Environment variable naming the interpreter (beats the saved setting; handy for qgis_process and CI)."""


def _roots() -> list[Path]:
    """The plugin folder first (packaged layout), then its parent (development layout)."""
    return [PLUGIN_DIR, PLUGIN_DIR.parent]


def engine_root() -> Path | None:
    """The folder holding the ``engine`` package (the child's cwd and PYTHONPATH), or None if absent."""
    for root in _roots():
        if (root / "engine" / "__main__.py").is_file():
            return root
    return None


def engine_module(name: str) -> ModuleType:
    """The engine's torch-free module ``engine.<name>`` imported into this (QGIS's) Python from :func:`engine_root`,
    so the plugin reads what the engine defines (the safetensors header reader) instead of keeping its own copy.
    Only standard-library modules of the engine are imported this way; everything else runs in the child process."""
    root = engine_root()
    if root is None:
        raise ImportError("the engine package was not found next to the plugin; reinstall the plugin")
    if str(root) not in sys.path:
        sys.path.append(str(root))
    return importlib.import_module(f"engine.{name}")


def resource_dirs(kind: str) -> list[Path]:
    """Existing ``resources/<kind>`` folders, packaged layout first."""
    return [root / "resources" / kind for root in _roots() if (root / "resources" / kind).is_dir()]


def icon_path(name: str = "aligncr.svg") -> str:
    for folder in resource_dirs("icons"):
        if (folder / name).is_file():
            return str(folder / name)
    return ""


def bundled_weights() -> list[Path]:
    """``resources/weights/*.safetensors`` shipped with the plugin (or in the repo), sorted by name."""
    seen: dict[str, Path] = {}
    for folder in resource_dirs("weights"):
        for path in sorted(folder.glob("*.safetensors")):
            seen.setdefault(path.name, path)
    return [seen[k] for k in sorted(seen)]


def help_url(section: str = "qgis-plugin") -> str:
    """The README section on the project's home page (``homepage`` in metadata.txt, the one place it is written):
    the dialog's *Help* button and Processing's ``helpUrl()``."""
    parser = configparser.ConfigParser(interpolation=None)
    for root in _roots():
        if (root / "metadata.txt").is_file():
            parser.read(root / "metadata.txt", encoding="utf-8")
            break
    home = parser.get("general", "homepage", fallback="").strip()
    return f"{home}#{section}" if home else ""


def _venv_python(folder: Path) -> Path | None:
    for rel in (".venv/bin/python", "venv/bin/python", ".venv/Scripts/python.exe", "venv/Scripts/python.exe"):
        candidate = folder / rel
        if candidate.is_file():
            return candidate
    return None


ENGINE_PROBE = (
    "import importlib.util as u, sys; "
    "sys.exit(0 if all(u.find_spec(m) for m in ('engine', 'torch', 'rasterio', 'numpy')) else 1)"
)


@functools.cache
def runs_engine(python: str) -> bool:
    """Whether ``python`` can import the engine (from :func:`engine_root`) and the packages it needs; looked up
    without importing them (a fraction of a second), once per interpreter and QGIS session."""
    root = engine_root()
    env = {**os.environ, "PYTHONPATH": str(root) if root else ""}
    try:
        done = subprocess.run([python, "-c", ENGINE_PROBE], cwd=root, env=env, capture_output=True, timeout=30,
                              check=False)  # fmt: skip
    except (OSError, subprocess.SubprocessError):
        return False
    return done.returncode == 0


def candidate_venvs() -> list[Path]:
    """Folders whose ``.venv``/``venv`` the plugin may pick by itself: its own folder and the folder holding its
    engine (the repository in the development layout) — never any other parent (issue 15: a ``venv`` found
    anywhere above the plugin, e.g. in the user's home, was picked)."""
    folders = [PLUGIN_DIR]
    root = engine_root()
    if root is not None and root not in folders:
        folders.append(root)
    return folders


def default_python() -> str:
    """The interpreter used when the user has not picked one.

    A venv in :func:`candidate_venvs` whose Python runs the engine (:func:`runs_engine`), else the Python QGIS
    itself runs (whose ``sys.executable`` is the QGIS binary on Linux, hence the ``python3`` lookup). A configured
    interpreter (``$ALIGNCR_PYTHON``, the dialog's setting) is used as given: :func:`resolve_python`.
    """
    for folder in candidate_venvs():
        found = _venv_python(folder)
        if found is not None and runs_engine(str(found)):
            return str(found)
    exe = Path(sys.executable or "")
    if exe.name.lower().startswith("python") and exe.is_file():
        return str(exe)
    # Inside QGIS on Windows the interpreter sits beside qgis-bin.exe; on Linux/macOS look it up on PATH.
    if exe.parent.joinpath("python3.exe").is_file():
        return str(exe.parent / "python3.exe")
    return shutil.which("python3") or shutil.which("python") or "python3"


def resolve_python(saved: str | None) -> str:
    """``$ALIGNCR_PYTHON`` > the saved setting > :func:`default_python`."""
    return os.environ.get(PYTHON_ENV) or saved or default_python()
