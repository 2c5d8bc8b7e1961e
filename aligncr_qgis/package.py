"""``python -m aligncr_qgis.package``: build ``dist/aligncr_qgis.zip`` for QGIS's "Install from ZIP".

The zip holds one folder, ``aligncr_qgis/``, with the plugin code, ``metadata.txt`` (kept at the repository root
for the plugin repository tooling, copied in here), ``resources/icons``, ``resources/styles``, bundled weights
(``resources/weights/*.safetensors`` when present) and the ``engine`` package itself — so the installed plugin
finds the engine next to it (:func:`aligncr_qgis.paths.engine_root`) and only needs an interpreter with torch.
Byte-code caches and editor droppings are left out; entries are sorted and time-stamped with a fixed date so two
builds of the same tree give the same bytes.
"""

from __future__ import annotations

import argparse
import sys
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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m aligncr_qgis.package", description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, help="zip to write (default: dist/aligncr_qgis.zip)")
    args = parser.parse_args(argv)
    out = build(args.out)
    with zipfile.ZipFile(out) as zf:
        names = zf.namelist()
    size = out.stat().st_size / 2**20
    print(f"wrote {out} ({len(names)} files, {size:.1f} MiB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
