"""Where the plugin finds the engine, the Python that runs it, icons and bundled weights.

Two layouts must work without configuration:

* development — the plugin is ``<repo>/aligncr_qgis`` (symlinked into QGIS's plugin folder or found through
  ``QGIS_PLUGINPATH``); the engine is ``<repo>/engine``, icons ``<repo>/resources/icons``, the venv ``<repo>/.venv``;
* packaged zip — ``python -m aligncr_qgis.package`` puts ``engine/`` and ``resources/`` *inside* the plugin folder.

No QGIS import here: the packaging command and the tests use these helpers too.
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

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


def _venv_python(folder: Path) -> Path | None:
    for rel in (".venv/bin/python", "venv/bin/python", ".venv/Scripts/python.exe", "venv/Scripts/python.exe"):
        candidate = folder / rel
        if candidate.is_file():
            return candidate
    return None


def default_python() -> str:
    """The interpreter used when the user has not picked one.

    A venv next to the engine or in one of the plugin folder's parents (the developer's ``.venv``), else the
    Python QGIS itself runs (whose ``sys.executable`` is the QGIS binary on Linux, hence the ``python3`` lookup).
    """
    for folder in [PLUGIN_DIR, *PLUGIN_DIR.parents]:
        found = _venv_python(folder)
        if found is not None:
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
