"""Release checks for plugins.qgis.org (issue 16): LICENSE and ``supportsQt6=True`` in the zip, one version number,
the repository's bandit scan, and no short-form Qt/QGIS enum access (``Qt.AlignTop``) that PyQt6 / QGIS 4 reject."""

from __future__ import annotations

import ast
import importlib
import tomllib
import zipfile
from pathlib import Path

import pytest

from aligncr_qgis.package import PLUGIN, REPO, build, check, engine_version


@pytest.fixture(scope="module")
def plugin_zip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build(tmp_path_factory.mktemp("zip") / "aligncr_qgis.zip")


def test_one_version_number() -> None:
    """engine/__init__.py holds it; pyproject reads it from there; metadata.txt (static for QGIS) agrees."""
    import engine

    project = tomllib.loads((REPO / "pyproject.toml").read_text())
    assert "version" not in project["project"] and "version" in project["project"]["dynamic"]
    assert project["tool"]["setuptools"]["dynamic"]["version"] == {"attr": "engine.__version__"}
    assert engine_version() == engine.__version__
    meta = dict(line.split("=", 1) for line in (REPO / "metadata.txt").read_text().splitlines() if "=" in line)
    assert meta["version"] == engine.__version__


def test_license_stated_everywhere(plugin_zip: Path) -> None:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())
    assert project["project"]["license"] == {"text": "GPL-2.0-or-later"}
    assert "GPL-2.0-or-later" in (REPO / "metadata.txt").read_text()
    with zipfile.ZipFile(plugin_zip) as zf:
        text = zf.read(f"{PLUGIN}/LICENSE").decode()
        assert "GNU GENERAL PUBLIC LICENSE" in text and "Version 2, June 1991" in text
        assert "supportsQt6=True" in zf.read(f"{PLUGIN}/metadata.txt").decode().splitlines()


def test_release_check_passes(plugin_zip: Path) -> None:
    pytest.importorskip("bandit")
    assert check(plugin_zip) == []


def test_release_check_catches_each_problem(tmp_path: Path) -> None:
    """No LICENSE, no Qt6 flag, another version, and code the scan flags (exec of input): four problems."""
    pytest.importorskip("bandit")
    bad = tmp_path / "bad.zip"
    with zipfile.ZipFile(bad, "w") as zf:
        zf.writestr(f"{PLUGIN}/metadata.txt", "[general]\nname=x\nversion=9.9.9\n")
        zf.writestr(f"{PLUGIN}/__init__.py", "def run():\n    exec(input())\n")
    problems = check(bad)
    assert len(problems) >= 4, problems
    assert any("LICENSE" in p for p in problems) and any("supportsQt6" in p for p in problems)
    assert any("9.9.9" in p for p in problems) and any("bandit" in p and "exec" in p for p in problems)


def short_form_enums(path: Path) -> list[str]:
    """``Cls.Member`` where ``Cls`` comes from ``qgis.*`` and ``Member`` is a value of one of its enums: PyQt6 and
    QGIS 4 only know ``Cls.Enum.Member`` (which PyQt5 ≥ 5.11, hence QGIS 3.22, accepts too)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    classes = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("qgis."):
            module = importlib.import_module(node.module)
            classes.update({a.asname or a.name: getattr(module, a.name) for a in node.names
                            if isinstance(getattr(module, a.name, None), type)})  # fmt: skip
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in classes:
            value = getattr(classes[node.value.id], node.attr, None)
            if value is not None and type(type(value)).__name__ == "enumtype":  # a sip enum member
                out.append(f"{path.name}:{node.lineno}: {node.value.id}.{node.attr} → "
                           f"{node.value.id}.{type(value).__name__}.{node.attr}")
    return out


def test_no_short_form_enums() -> None:
    pytest.importorskip("qgis.core")
    import sys

    sys.path.append("/usr/share/qgis/python/plugins")  # `processing`, which some plugin modules import
    found = [p for path in sorted((REPO / PLUGIN).rglob("*.py")) for p in short_form_enums(path)]
    assert not found, "\n".join(found)


def test_enum_check_catches_short_form(tmp_path: Path) -> None:
    pytest.importorskip("qgis.core")
    path = tmp_path / "mod.py"
    path.write_text("from qgis.PyQt.QtCore import Qt\nfrom qgis.core import Qgis\n"
                    "a = Qt.AlignLeft\nb = Qt.AlignmentFlag.AlignLeft\nc = Qgis.Info\nd = Qgis.MessageLevel.Info\n")
    assert [p.split(": ")[1] for p in short_form_enums(path)] == [
        "Qt.AlignLeft → Qt.AlignmentFlag.AlignLeft", "Qgis.Info → Qgis.MessageLevel.Info"]
