"""Every user-visible string of the plugin's GUI and Processing algorithms goes through ``tr()`` so the plugin can be
translated (issue 16):
the string literals and f-strings given to Qt's text setters, widget constructors and message calls in the dialog
and the plugin entry must be wrapped (an f-string becomes ``self.tr("… {0} …").format(x)``, which translators see
whole)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PLUGIN = Path(__file__).resolve().parent.parent / "aligncr_qgis"
TEXT_ARG = {  # call → index of its user-visible text argument
    "QGroupBox": 0, "QLabel": 0, "QCheckBox": 0, "QPushButton": 0, "QMenu": 0, "addRow": 0, "addItem": 0,
    "setToolTip": 0, "setText": 0, "setTitle": 0, "setDialogTitle": 0, "setPlaceholderText": 0,
    "setWindowTitle": 0, "setPlainText": 0, "_error": 0, "pushMessage": 1, "addPluginToRasterMenu": 0,
    "error": 0, "warning": 0, "LayerError": 0,  # validation messages (CheckResult), shown in the dialog
}


def _is_text(arg: ast.expr) -> bool:
    """A literal a user reads: a string, or an f-string, with a letter in its literal part."""
    if isinstance(arg, ast.JoinedStr):
        return any(_is_text(part) for part in arg.values if isinstance(part, ast.Constant))
    return isinstance(arg, ast.Constant) and isinstance(arg.value, str) and any(c.isalpha() for c in arg.value)


def _text_index(func: str) -> int | None:
    """Which argument of a call is user-visible text (Processing: a parameter's description, an exception)."""
    if func.startswith("QgsProcessingParameter"):
        return 1
    if func == "QgsProcessingException":
        return 0
    return TEXT_ARG.get(func)


def untranslated(source: str, name: str = "<src>") -> list[str]:
    out = []
    for node in ast.walk(ast.parse(source)):
        if not isinstance(node, ast.Call):
            continue
        func = node.func.id if isinstance(node.func, ast.Name) else getattr(node.func, "attr", "")
        index = _text_index(func)
        if index is not None and len(node.args) > index and _is_text(node.args[index]):
            out.append(f"{name}:{node.lineno}: {func}({ast.unparse(node.args[index])[:60]})")
    return out


DIALOG = sorted(p.relative_to(PLUGIN).as_posix() for p in (PLUGIN / "dialog").glob("*.py"))  # one module a panel


@pytest.mark.parametrize("module", [*DIALOG, "plugin.py", "install_dialog.py", "provider.py", "layers.py",
                                    "algorithms/base.py", "algorithms/declouding.py", "algorithms/evaluate.py",
                                    "algorithms/ndvi.py"])
def test_gui_strings_go_through_tr(module: str) -> None:
    found = untranslated((PLUGIN / module).read_text(encoding="utf-8"), module)
    assert not found, "\n".join(found)


def test_checker_sees_bare_and_formatted_strings() -> None:
    src = ("b = QPushButton('Run', self)\nlabel.setText(f'Done in {s} s')\nbar.pushMessage('Align-CR', 'Ready', 0)\n"
           "ok = QPushButton(self.tr('Run'), self)\nlabel.setText(self.tr('Done in {0} s').format(s))\n"
           "combo.addItem(self.tr('CPU'), 'cpu')\nlabel.setText('—')\n"
           "p = QgsProcessingParameterBand('B', 'Blue band', 1)\nraise QgsProcessingException(f'{name}: {exc}')\n")
    assert [line.split(": ")[1].split("(")[0] for line in untranslated(src)] == ["QPushButton", "setText",
                                                                                 "pushMessage",
                                                                                 "QgsProcessingParameterBand"]
