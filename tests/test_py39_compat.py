"""What QGIS's own Python imports must run on Python 3.9 (issue 16).

The plugin claims QGIS ≥ 3.22, whose Windows and macOS builds ship Python 3.9, while this repository is developed on
3.11. No 3.9 interpreter is installable here, so the plugin's files — and any engine module the plugin imports, found
by importing every plugin module in a fresh interpreter — are parsed with ``feature_version=(3, 9)`` (match
statements, ``except*``, PEP 695 …) and walked for what parses on 3.9 but fails when it runs there: ``X | Y`` of types
evaluated at runtime (``isinstance``, aliases, annotations without ``from __future__ import annotations``),
parenthesised context managers, ``zip(strict=)``, ``dataclass(slots=/kw_only=)`` and 3.10+ standard-library names.
"""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
PLUGIN = REPO / "aligncr_qgis"
BUILTIN_TYPES = {"int", "float", "str", "bytes", "bool", "dict", "list", "tuple", "set", "frozenset", "type",
                 "object", "complex", "bytearray", "Path"}
NEW_NAMES = {  # module → names added after 3.9
    "typing": {"TypeAlias", "ParamSpec", "Concatenate", "TypeGuard", "Self", "Never", "LiteralString",
               "assert_never", "assert_type", "reveal_type", "Required", "NotRequired", "dataclass_transform",
               "override", "Unpack", "TypeVarTuple", "is_typeddict", "get_overloads"},
    "itertools": {"pairwise", "batched"},
    "enum": {"StrEnum", "verify", "member", "nonmember", "ReprEnum"},
    "datetime": {"UTC"},
    "contextlib": {"chdir", "aclosing"},
}
NEW_MODULES = {"tomllib", "zoneinfo._tzpath"}
NEW_KEYWORDS = {"zip": {"strict"}, "dataclass": {"slots", "kw_only", "match_args"}}

IMPORT_PLUGIN = """
import importlib, json, pkgutil, sys
sys.path.append('/usr/share/qgis/python/plugins')
import aligncr_qgis
for info in pkgutil.walk_packages(aligncr_qgis.__path__, 'aligncr_qgis.'):
    importlib.import_module(info.name)
print(json.dumps(sorted(m.__file__ for n, m in sys.modules.items()
                        if (n == 'engine' or n.startswith('engine.')) and getattr(m, '__file__', None))))
"""


def _is_type(node: ast.expr) -> bool:
    if isinstance(node, ast.Constant):
        return node.value is None
    if isinstance(node, ast.Subscript):
        return _is_type(node.value)
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.BitOr):
        return _is_type(node.left) or _is_type(node.right)
    return isinstance(node, ast.Name) and node.id in BUILTIN_TYPES


def _annotations(tree: ast.AST) -> set[int]:
    """ids of every annotation node (and their sub-nodes)."""
    out: set[int] = set()
    for node in ast.walk(tree):
        anns: list[ast.expr | None] = []
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            args = node.args
            anns = [a.annotation for a in (*args.posonlyargs, *args.args, *args.kwonlyargs)] + [node.returns]
            anns += [a.annotation for a in (args.vararg, args.kwarg) if a is not None]
        elif isinstance(node, ast.AnnAssign):
            anns = [node.annotation]
        for ann in filter(None, anns):
            out.update(id(n) for n in ast.walk(ann))
    return out


def _parenthesised_with(src_lines: list[str], node: ast.With) -> bool:
    """``with (a as b, c):`` — 3.10 grammar; ``with (a) as b:`` and ``with (a, b):`` (one tuple item) are 3.9's."""
    first = node.items[0]
    if len(node.items) == 1 and first.optional_vars is None:
        return False
    line = src_lines[first.context_expr.lineno - 1][: first.context_expr.col_offset]
    if not line.rstrip().endswith("("):
        return False
    end = first.optional_vars if first.optional_vars is not None else node.items[1].context_expr
    start = first.context_expr
    if start.end_lineno != end.lineno:
        return True
    between = src_lines[end.lineno - 1][start.end_col_offset: end.col_offset]
    return ")" not in between


def problems(path: Path) -> list[str]:
    """Every 3.10+ construct in ``path``, as ``file:line: what``."""
    src = path.read_text(encoding="utf-8")
    try:
        tree = ast.parse(src, filename=str(path), feature_version=(3, 9))
    except SyntaxError as exc:
        return [f"{path.name}:{exc.lineno}: not Python 3.9 syntax: {exc.msg}"]
    lazy = any(isinstance(n, ast.ImportFrom) and n.module == "__future__" and any(a.name == "annotations"
               for a in n.names) for n in tree.body)  # fmt: skip
    annotations = _annotations(tree) if lazy else set()
    lines, out = src.splitlines(), []

    def bad(node: ast.AST, what: str) -> None:
        out.append(f"{path.name}:{getattr(node, 'lineno', 0)}: {what}")

    for node in ast.walk(tree):
        if isinstance(node, ast.BinOp) and isinstance(node.op, ast.BitOr) and id(node) not in annotations:
            if _is_type(node.left) or _is_type(node.right):
                bad(node, "X | Y of types evaluated at runtime (3.10+): use a tuple or typing.Union/Optional")
        elif isinstance(node, ast.With) and _parenthesised_with(lines, node):
            bad(node, "parenthesised context managers (3.10+)")
        elif isinstance(node, ast.Call):
            func = node.func.id if isinstance(node.func, ast.Name) else getattr(node.func, "attr", "")
            for kw in node.keywords:
                if kw.arg in NEW_KEYWORDS.get(func, ()):
                    bad(node, f"{func}({kw.arg}=) (3.10+)")
        elif isinstance(node, ast.ImportFrom) and node.module in NEW_NAMES:
            for alias in node.names:
                if alias.name in NEW_NAMES[node.module]:
                    bad(node, f"from {node.module} import {alias.name} (3.10+)")
        elif isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name):
            if node.attr in NEW_NAMES.get(node.value.id, ()):
                bad(node, f"{node.value.id}.{node.attr} (3.10+)")
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""]
            for name in names:
                if name in NEW_MODULES:
                    bad(node, f"import {name} (3.11+)")
    return out


def plugin_files() -> list[Path]:
    """The plugin's modules and every engine module they import (in a fresh interpreter with QGIS)."""
    files = sorted(PLUGIN.rglob("*.py"))
    env = {**os.environ, "QT_QPA_PLATFORM": "offscreen", "PYTHONPATH": str(REPO)}
    done = subprocess.run([sys.executable, "-c", IMPORT_PLUGIN], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=120, check=False)  # fmt: skip
    if done.returncode != 0:
        pytest.skip(f"cannot import the plugin here (no QGIS?): {done.stderr.strip().splitlines()[-1:]}")
    engine = [Path(f) for f in json.loads(done.stdout.strip().splitlines()[-1])]
    return files + sorted(engine)


def test_the_plugin_runs_on_python_39() -> None:
    files = plugin_files()
    assert PLUGIN / "settings.py" in files and PLUGIN / "algorithms" / "declouding.py" in files
    found = [p for path in files for p in problems(path)]
    assert not found, "\n".join(found)


@pytest.mark.parametrize("src, what", [
    ("def f(x):\n    return isinstance(x, dict | list)\n", "X | Y of types"),
    ("Alias = int | None\n", "X | Y of types"),
    ("def f(x: int | None) -> None:\n    pass\n", "X | Y of types"),  # evaluated: no __future__ import
    ("match x:\n    case 1:\n        pass\n", "not Python 3.9 syntax"),
    ("with (open('a') as f, open('b') as g):\n    pass\n", "parenthesised context managers"),
    ("pairs = list(zip(a, b, strict=True))\n", "zip(strict=)"),
    ("from dataclasses import dataclass\n@dataclass(slots=True)\nclass A:\n    x: int\n", "dataclass(slots=)"),
    ("from typing import TypeAlias\n", "TypeAlias"),
    ("import tomllib\n", "import tomllib"),
    ("import datetime\nnow = datetime.datetime.now(datetime.UTC)\n", "datetime.UTC"),
])
def test_checker_catches_310_features(tmp_path: Path, src: str, what: str) -> None:
    path = tmp_path / "mod.py"
    path.write_text(src)
    assert any(what in p for p in problems(path)), problems(path)


def test_checker_accepts_39_code(tmp_path: Path) -> None:
    """Lazy annotations, flag arithmetic, tuples in isinstance and 3.9's parenthesised forms are all fine."""
    path = tmp_path / "mod.py"
    path.write_text("from __future__ import annotations\n"
                    "def f(x: int | None, y: dict[str, list[int]] | None = None) -> str | None:\n"
                    "    flags = x.flags() | Flag.Advanced\n"
                    "    with (open('a')) as fh, open('b') as g:\n"
                    "        pass\n"
                    "    return isinstance(x, (dict, list)) and zip(a, b)\n")
    assert problems(path) == []
