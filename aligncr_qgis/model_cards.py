"""Read a ``.safetensors`` model card without torch; tell which models are temporal.

The plugin runs inside QGIS, whose Python has no torch; the model card still has to show up in the dialog. The
header is read by the engine's own torch-free reader (:mod:`engine.models.safetensors_header`); the writer's free-form
string map (``"__metadata__"``: the engine stores nested structures as JSON text) is decoded here for display.

:func:`temporal_info` reads the ``temporal_inputs`` / ``needs_dates`` / ``uses_sar`` fields of an ``engine models
--json`` entry (the registry classes' attributes), which decide whether the dialog shows its "Extra dates" group;
:func:`uses_sar` whether the SAR layer is needed at all (not for ``gapfill``); :func:`uses_dem` whether the model
takes a DEM (``uses_dem`` there, or ``dem`` in a weights file's card config), which shows the DEM picker.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from html import escape
from pathlib import Path
from typing import Any

from aligncr_qgis.paths import engine_module

CARD_KEY = "aligncr_card"  # engine.models.weights.CARD_KEY (not imported: that module needs torch)


class ModelCardError(ValueError):
    """The file is not a readable safetensors file."""


@dataclass
class ModelCard:
    path: Path
    metadata: dict[str, Any] = field(default_factory=dict)  # __metadata__, JSON-looking values decoded
    tensors: int = 0
    parameters: int = 0

    @property
    def card(self) -> dict[str, Any]:
        """The engine's model card (``aligncr_card``: arch, config, bands, training data, metrics …), or {}."""
        value = self.metadata.get(CARD_KEY)
        return value if isinstance(value, dict) else {}

    @property
    def title(self) -> str:
        for source in (self.card, self.metadata):
            for key in ("name", "arch", "model", "model_name"):
                if source.get(key):
                    return str(source[key])
        return self.path.stem

    def summary_html(self, title: bool = True) -> str:
        """The dialog's card box: name, file size, parameters, what it was trained on, the validation table — what
        a user decides on; not the raw card (issue 16: the box showed the JSON, training recipe included).
        ``title=False`` leaves out the model's name (shown under its registry entry)."""
        size = self.path.stat().st_size / 1e6 if self.path.is_file() else 0.0
        head = f"<b>{escape(self.title)}</b> — " if title else "<b>Weights:</b> "
        parts = [f"{head}{escape(self.path.name)}, {size:.1f} MB, {self.parameters / 1e6:.2f} M parameters"]
        card = self.card
        if not card:
            parts.append("No Align-CR model card in this file; the engine will refuse it.")
        notes = str(card.get("notes") or "").strip().splitlines()
        extra = [f"<b>{label}:</b> {escape(str(value))}" for label, value in (
            ("Trained on", card.get("training_data")), ("Notes", notes[0] if notes else ""),
            ("Created", card.get("created"))) if value]  # fmt: skip
        return "<br>".join(parts) + metrics_table(card.get("metrics")) + "<br>".join(extra)


BASELINES = {"identity": "cloudy input", "flat": "flat", "fill": "fill"}  # metric prefix in a card → column title
METRIC_ORDER = ("psnr", "ssim", "mae", "rmse", "sam")
# rows worth a user's glance when a split scores inside/outside the cloud (training.scoring): the rest stay in the card
SHOWN_ROWS = ("psnr_in", "ssim_in", "sam_in", "margin_in", "psnr_out", "psnr")
ROW_LABELS = {"psnr_in": "PSNR in cloud", "ssim_in": "SSIM in cloud", "sam_in": "SAM in cloud",
              "margin_in": "Margin over best baseline (dB)", "psnr_out": "PSNR outside cloud"}


def _numeric_splits(metrics: dict) -> dict[str, dict[str, Any]]:
    """The card's metric splits that hold numbers, keys without the ``model_`` prefix training.scoring writes."""
    def numbers(d: dict) -> dict[str, Any]:
        return {str(k).removeprefix("model_"): v for k, v in d.items()
                if isinstance(v, (int, float)) and not isinstance(v, bool)}

    splits = {k: numbers(v) for k, v in metrics.items() if isinstance(v, dict) and numbers(v)}
    if not splits and numbers(metrics):
        splits = {"": numbers(metrics)}
    return splits


def metrics_table(metrics: Any) -> str:
    """An HTML table per split of a card's ``metrics`` (``{"validation": {"psnr": …, "identity_psnr": …}}`` or
    flat): one row per metric, the model's column first, then one per baseline prefix (``identity_`` = the
    cloudy input); "" when there are none."""
    if not isinstance(metrics, dict) or not metrics:
        return ""
    out = []
    for split, values in _numeric_splits(metrics).items():
        if "psnr_in" in values:
            values = {k: v for k, v in values.items() if any(k in (r, f"{p}_{r}") for r in SHOWN_ROWS
                                                              for p in BASELINES)}
        columns: dict[str, dict[str, Any]] = {"model": {}}
        for key, value in values.items():
            prefix, _, base = str(key).partition("_")
            if base and base in values:
                columns.setdefault(BASELINES.get(prefix, prefix), {})[base] = value
            else:
                columns["model"][str(key)] = value
        rows = sorted(columns["model"], key=lambda m: (METRIC_ORDER.index(m) if m in METRIC_ORDER else 99, m))
        head = "".join(f"<th>{escape(c)}</th>" for c in columns)
        body = "".join(
            f"<tr><td>{escape(ROW_LABELS.get(m, m.upper()))}</td>"
            + "".join(f"<td>{escape(_fmt(col.get(m, '')))}</td>" for col in columns.values()) + "</tr>"
            for m in rows
        )
        title = f"<b>{escape(split.replace('_', ' ').capitalize())}</b>" if split else "<b>Metrics</b>"
        out.append(f"<p>{title}</p><table border='0' cellspacing='0' cellpadding='2'><tr><th></th>{head}</tr>"
                   f"{body}</table>")
    return "".join(out)


@dataclass(frozen=True)
class TemporalInfo:
    """What a temporal model needs besides the cloudy image and its SAR."""

    inputs: tuple[str, ...]  # ("prev", "next"): the images before and after the cloudy one
    needs_dates: bool = False  # acquisition times (gapfill)
    uses_sar: bool = True  # SAR at the extra dates too (msop-unet)

    def keys(self) -> list[str]:
        """The engine's names of the extra rasters: ``optical_prev``, ``sar_prev``, …"""
        out = []
        for suffix in self.inputs:
            out.append(f"optical_{suffix}")
            if self.uses_sar:
                out.append(f"sar_{suffix}")
        return out


# Models cached by a plugin version whose `models --json` did not report temporal_inputs yet: until the next
# "Check environment", these two registry models are still recognised.
_KNOWN_TEMPORAL = {
    "msop-unet": TemporalInfo(("prev", "next"), needs_dates=False, uses_sar=True),
    "gapfill": TemporalInfo(("prev", "next"), needs_dates=True, uses_sar=False),
}


def temporal_info(entry: dict[str, Any] | None, name: str = "") -> TemporalInfo | None:
    """The temporal needs of a registry model from its ``models --json`` entry; ``None`` when it is not temporal."""
    if entry and "temporal_inputs" in entry:
        inputs = tuple(str(i) for i in entry.get("temporal_inputs") or ())
        if not inputs:
            return None
        return TemporalInfo(inputs, bool(entry.get("needs_dates", False)), bool(entry.get("uses_sar", True)))
    return _KNOWN_TEMPORAL.get(name or str((entry or {}).get("name", "")))


def uses_dem(entry: dict[str, Any] | None, card: ModelCard | None = None) -> bool:
    """Whether the model takes a DEM (``dem=True`` in its config): from a weights file's card when one is given,
    else from the ``uses_dem`` field of its ``models --json`` entry."""
    if card is not None:
        config = card.card.get("config")
        return bool(isinstance(config, dict) and config.get("dem", False))
    return bool((entry or {}).get("uses_dem", False))


def uses_sar(entry: dict[str, Any] | None, name: str = "") -> bool:
    """Whether a registry model takes SAR (``uses_sar`` of its ``models --json`` entry; ``gapfill`` does not)."""
    if entry and "uses_sar" in entry:
        return bool(entry["uses_sar"])
    known = _KNOWN_TEMPORAL.get(name or str((entry or {}).get("name", "")))
    return known.uses_sar if known is not None else True


def _fmt(value: Any) -> str:
    if isinstance(value, dict):
        return ", ".join(f"{k}={_fmt(v)}" for k, v in value.items())
    if isinstance(value, list):
        return ", ".join(_fmt(v) for v in value)
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def _decode(value: str) -> Any:
    text = value.strip()
    if text[:1] in "{[":
        try:
            return json.loads(text)
        except json.JSONDecodeError:
            return value
    return value


def read_card(path: str | Path) -> ModelCard:
    """The model card of a ``.safetensors`` file, read by the engine's torch-free header reader
    (:mod:`engine.models.safetensors_header`); anything wrong with the file is one :class:`ModelCardError`."""
    reader = engine_module("models.safetensors_header")
    try:
        header = reader.read_header(path)
    except reader.HeaderError as exc:
        raise ModelCardError(str(exc)) from None
    metadata = {k: _decode(v) for k, v in header.metadata.items()}
    return ModelCard(path=Path(path), metadata=metadata, tensors=len(header.tensors), parameters=header.parameters)
