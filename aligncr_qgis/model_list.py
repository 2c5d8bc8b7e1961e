"""The installed models, read without torch: the one list behind the dialog's model picker and Processing's MODEL.

QGIS's Python has no torch, and a Processing algorithm's parameters are built when the provider loads — long before
anyone runs *Check environment* (``engine models --json``, whose answer is cached in the settings). So the names
come from the engine the plugin runs itself: every ``@register_model("name", config, "description", ...)`` in
``engine/models/*_arch.py``, read with :mod:`ast` (no import). The cached ``models --json`` entries, when there are
any, add what needs torch (parameter counts, temporal inputs); the bundled ``.safetensors`` cards say which models
have trained weights installed. One entry per model name, whatever the sources say.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from html import escape
from pathlib import Path
from typing import Any

from aligncr_qgis.model_cards import ModelCardError, read_card
from aligncr_qgis.paths import bundled_weights, engine_root
from aligncr_qgis.run_options import OPTIONS, mode_model

NO_WEIGHTS = "No trained weights installed for this model: browse for a .safetensors file."
DEFAULT = "default"
"""Processing's MODEL value for "the engine's own default" (no ``--model``: the mode's bundled model, else
another bundled one, else identity)."""


@dataclass(frozen=True)
class RegisteredModel:
    """A ``register_model`` call found in the engine's source."""

    name: str
    description: str = ""
    needs_weights: bool = True


def _literal(node: ast.expr, default: Any) -> Any:
    try:
        return ast.literal_eval(node)
    except ValueError:
        return default


def _registrations(tree: ast.AST) -> list[RegisteredModel]:
    """The ``@register_model(...)`` decorators of one module, in source order."""
    found = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.ClassDef):
            continue
        for deco in node.decorator_list:
            if not (isinstance(deco, ast.Call) and getattr(deco.func, "id", "") == "register_model" and deco.args):
                continue
            name = _literal(deco.args[0], None)
            if not isinstance(name, str):
                continue
            desc = _literal(deco.args[2], "") if len(deco.args) > 2 else ""
            needs = next((_literal(k.value, True) for k in deco.keywords if k.arg == "needs_weights"), True)
            found.append(RegisteredModel(name, str(desc), bool(needs)))
    return found


def scan_registry(root: Path | None = None) -> list[RegisteredModel]:
    """Every model the engine at ``root`` (default :func:`engine_root`) registers; [] when there is no engine."""
    root = root if root is not None else engine_root()
    if root is None:
        return []
    out: list[RegisteredModel] = []
    for path in sorted((root / "engine" / "models").glob("*_arch.py")):
        try:
            out.extend(_registrations(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))))
        except (OSError, SyntaxError, UnicodeDecodeError):
            continue  # the engine itself will say what is wrong with it when it runs
    return out


def bundled_by_model() -> dict[str, list[str]]:
    """Model name → the bundled weights files whose card names it (read from the card header, no torch)."""
    out: dict[str, list[str]] = {}
    for path in bundled_weights():
        try:
            arch = str(read_card(path).card.get("arch") or "")
        except ModelCardError:
            continue
        if arch:
            out.setdefault(arch, []).append(str(path))
    return out


def registry_models(cache: list[dict[str, Any]] | None = None,
                    root: Path | None = None) -> list[dict[str, Any]]:
    """One ``models --json``-shaped entry per model: the cached entries (their order and details) first, then the
    registered names the cache lacks; ``bundled_weights`` filled from the bundled cards when the cache has none."""
    entries: dict[str, dict[str, Any]] = {}
    for entry in cache or []:
        name = str(entry.get("name", "")) if isinstance(entry, dict) else ""
        if name and name not in entries:
            entries[name] = dict(entry)
    for reg in scan_registry(root):
        entries.setdefault(reg.name, {"name": reg.name, "description": reg.description,
                                      "needs_weights": reg.needs_weights})
    bundled = bundled_by_model()
    for name, entry in entries.items():
        if not entry.get("bundled_weights") and bundled.get(name):
            entry["bundled_weights"] = bundled[name]
    return list(entries.values())


def has_weights(entry: dict[str, Any]) -> bool:
    """Whether the model can run as listed: it needs no weights, or trained weights are installed for it."""
    return not entry.get("needs_weights", True) or bool(entry.get("bundled_weights"))


def engine_default(entries: list[dict[str, Any]], mode: str = OPTIONS["mode"].default) -> str:
    """What the engine runs in ``mode`` without ``--model`` (``engine.stream.mode.default_model``): the rule is
    the engine's own (:func:`engine.config.mode_model`), applied to the models whose bundled weights the cards
    name, since the plugin cannot import torch to ask."""
    return mode_model(mode, {str(e.get("name")) for e in entries if e.get("bundled_weights")})


def entry_html(entry: dict[str, Any]) -> str:
    """The dialog's card box for a registry model: name, size, description, why it cannot run, and the summary of
    each bundled weights file's card."""
    head = f"<b>{escape(str(entry.get('name', '')))}</b> — engine model"
    if entry.get("params"):
        head += f", {int(entry['params']) / 1e6:.2f} M parameters"
    parts = [head]
    if entry.get("description"):
        parts.append(escape(str(entry["description"])))
    if not has_weights(entry):
        parts.append(f"<span style='color:#b00020'>{NO_WEIGHTS}</span>")
    text = "<br>".join(parts)
    for path in entry.get("bundled_weights") or []:
        try:
            text += "<br>" + read_card(path).summary_html(title=False)
        except ModelCardError as exc:
            text += f"<br>{escape(str(exc))}"
    return text
