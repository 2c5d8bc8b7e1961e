"""``python -m aligncr_qgis.package``: build ``dist/aligncr_qgis.zip`` for QGIS's "Install from ZIP".

The zip holds one folder, ``aligncr_qgis/``, with the plugin code, ``metadata.txt`` (kept at the repository root
for the plugin repository tooling, copied in here), ``resources/icons``, ``resources/styles``, bundled weights
(``resources/weights/*.safetensors`` when present), the ``engine`` package itself — so the installed plugin
finds the engine next to it (:func:`aligncr_qgis.paths.engine_root`) and only needs an interpreter with torch — and
the ``training`` package's Python files, which ``engine finetune`` (*Train on my area…*) runs in that interpreter.
Byte-code caches and editor droppings are left out; entries are sorted and time-stamped with a fixed date so two
builds of the same tree give the same bytes.

``--check`` is the release check: what plugins.qgis.org refuses or flags — no ``LICENSE`` in the zip, no
``supportsQt6=True``, a ``metadata.txt`` version other than the engine's ``__version__`` (the one version number;
pyproject reads it too), and the security scan the plugin repository runs (bandit, medium severity and up; a dev
dependency).
"""

from __future__ import annotations

import argparse
import ast
import configparser
import importlib.util
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Iterator
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
PLUGIN = "aligncr_qgis"
FIXED_DATE = (2024, 1, 1, 0, 0, 0)
SKIP_DIRS = {"__pycache__", ".pytest_cache", ".mypy_cache", ".ruff_cache"}
SKIP_SUFFIXES = {".pyc", ".pyo", ".tmp", ".swp", ".orig"}


def _files(folder: Path, suffixes: set[str] | None = None) -> Iterator[Path]:
    if not folder.is_dir():
        return
    for path in sorted(folder.rglob("*")):
        if not path.is_file() or SKIP_DIRS.intersection(path.relative_to(folder).parts):
            continue
        if path.suffix in SKIP_SUFFIXES or path.name.startswith("."):
            continue
        if suffixes is not None and path.suffix not in suffixes:
            continue
        yield path


def plan(repo: Path = REPO) -> list[tuple[Path, str]]:
    """(source file, name inside the zip) for everything the plugin needs."""
    entries: list[tuple[Path, str]] = []
    for path in _files(repo / PLUGIN):
        entries.append((path, f"{PLUGIN}/{path.relative_to(repo / PLUGIN).as_posix()}"))
    entries.append((repo / "metadata.txt", f"{PLUGIN}/metadata.txt"))
    for path in _files(repo / "engine"):
        entries.append((path, f"{PLUGIN}/engine/{path.relative_to(repo / 'engine').as_posix()}"))
    for path in _files(repo / "training", {".py"}):  # `engine finetune` is the training loop on the user's archive
        entries.append((path, f"{PLUGIN}/training/{path.relative_to(repo / 'training').as_posix()}"))
    for kind, suffixes in (("icons", None), ("styles", None), ("weights", {".safetensors"})):
        folder = repo / "resources" / kind
        for path in _files(folder, suffixes):
            entries.append((path, f"{PLUGIN}/resources/{kind}/{path.relative_to(folder).as_posix()}"))
    for name in ("LICENSE", "LICENSE.txt", "README.md"):
        if (repo / name).is_file():
            entries.append((repo / name, f"{PLUGIN}/{name}"))
    return entries


def build(out: Path | None = None, repo: Path = REPO) -> Path:
    out = out or repo / "dist" / f"{PLUGIN}.zip"
    out.parent.mkdir(parents=True, exist_ok=True)
    if not (repo / "metadata.txt").is_file():
        raise SystemExit(f"error: {repo / 'metadata.txt'} is missing")
    tmp = out.with_suffix(".zip.part")
    with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for src, name in plan(repo):
            info = zipfile.ZipInfo(name, FIXED_DATE)
            info.compress_type = zipfile.ZIP_STORED if src.suffix == ".safetensors" else zipfile.ZIP_DEFLATED
            info.external_attr = 0o644 << 16
            zf.writestr(info, src.read_bytes())
    tmp.replace(out)
    return out


def engine_version(repo: Path = REPO) -> str:
    """``engine.__version__``, read from the source (the engine needs torch; this must not)."""
    tree = ast.parse((repo / "engine" / "__init__.py").read_text(encoding="utf-8"))
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(getattr(t, "id", "") == "__version__" for t in node.targets):
            return str(ast.literal_eval(node.value))
    raise SystemExit("error: engine/__init__.py sets no __version__")


def check(zip_path: Path, repo: Path = REPO) -> list[str]:
    """Every reason plugins.qgis.org would refuse or flag the zip, one line each; [] when it passes."""
    problems = []
    with zipfile.ZipFile(zip_path) as zf:
        names = set(zf.namelist())
        if f"{PLUGIN}/LICENSE" not in names:
            problems.append("no LICENSE file in the zip (plugins.qgis.org refuses it)")
        meta = configparser.ConfigParser(interpolation=None)
        meta.read_string(zf.read(f"{PLUGIN}/metadata.txt").decode("utf-8"))
        general = meta["general"]
        if general.get("supportsQt6", "").strip() != "True":
            problems.append("metadata.txt lacks supportsQt6=True")
        if general.get("version", "").strip() != engine_version(repo):
            problems.append(f"metadata.txt version {general.get('version')} is not the engine's "
                            f"{engine_version(repo)} (engine/__init__.py __version__ is the one version number)")
        with tempfile.TemporaryDirectory() as folder:
            zf.extractall(folder)
            problems.extend(bandit(Path(folder)))
    return problems


def bandit(folder: Path) -> list[str]:
    """bandit's findings of medium severity and up in ``folder`` (the plugin repository's security scan)."""
    if importlib.util.find_spec("bandit") is None:
        return ["bandit is not installed: pip install bandit (the dev extra) to run the security scan"]
    done = subprocess.run([sys.executable, "-m", "bandit", "-r", "-q", "--severity-level", "medium", "-f", "txt",
                           str(folder)], capture_output=True, text=True, check=False)  # fmt: skip
    if done.returncode == 0:
        return []
    return [f"bandit: {line.strip()}" for line in done.stdout.splitlines()
            if line.strip().startswith((">> Issue:", "Location:"))] or [f"bandit failed: {done.stderr.strip()}"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m aligncr_qgis.package", description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, help="zip to write (default: dist/aligncr_qgis.zip)")
    parser.add_argument("--check", action="store_true", help="release check: LICENSE, Qt6 flag, version, bandit")
    args = parser.parse_args(argv)
    out = build(args.out)
    with zipfile.ZipFile(out) as zf:
        names = zf.namelist()
    size = out.stat().st_size / 2**20
    print(f"wrote {out} ({len(names)} files, {size:.1f} MiB)")
    if args.check:
        problems = check(out)
        for line in problems:
            print(f"error: {line}", file=sys.stderr)
        if problems:
            return 1
        print("release check passed: LICENSE, supportsQt6, version, bandit")
    return 0


if __name__ == "__main__":
    sys.exit(main())
