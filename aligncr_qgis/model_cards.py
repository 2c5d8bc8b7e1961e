"""Read a ``.safetensors`` model card without torch; tell which models are temporal.

The plugin runs inside QGIS, whose Python has no torch; the model card still has to show up in the dialog. A
safetensors file starts with an 8-byte little-endian header length, then that many bytes of JSON; the writer's
free-form string map lives under ``"__metadata__"`` (values are strings; the engine stores nested structures
as JSON text, which is decoded here for display).

:func:`temporal_info` reads the ``temporal_inputs`` / ``needs_dates`` / ``uses_sar`` fields of an ``engine models
--json`` entry (the registry classes' attributes), which decide whether the dialog shows its "Extra dates" group;
:func:`uses_sar` whether the SAR layer is needed at all (not for ``gapfill``); :func:`uses_dem` whether the model
takes a DEM (``uses_dem`` there, or ``dem`` in a weights file's card config), which shows the DEM picker.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

CARD_KEY = "aligncr_card"  # engine.models.weights.CARD_KEY (not imported: that module needs torch)
MAX_HEADER_BYTES = 100 * 2**20  # the format's own limit; a bigger number means "not a safetensors file"


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

    def to_text(self) -> str:
        """Human-readable card for the dialog's text box: the fields a user decides on first."""
        lines = [f"{self.title}  ({self.path.name})", f"{self.tensors} tensors, {self.parameters:,} parameters"]
        card = dict(self.card)
        if not card:
            lines.append("No Align-CR model card in this file; the engine will refuse it.")
        for key in ("training_data", "metrics", "bands", "sar_bands", "sar_units", "created", "engine_version",
                    "notes", "normalisation", "config"):
            if card.get(key) not in (None, "", [], {}):
                lines.append(f"{key}: {_fmt(card.pop(key))}")
        for key in sorted(k for k in card if k not in ("arch", "name", "version")):
            lines.append(f"{key}: {_fmt(card[key])}")
        for key in sorted(k for k in self.metadata if k != CARD_KEY):
            lines.append(f"{key}: {_fmt(self.metadata[key])}")
        return "\n".join(lines)


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
    """The model card of a ``.safetensors`` file; anything wrong with the file — unreadable, not safetensors, or
    a header crafted to break the parser (a shape that is not a list of integers, metadata that is not a string map)
    — is one :class:`ModelCardError` (issue 15: raw ValueError/AttributeError/TypeError escaped)."""
    path = Path(path)
    try:
        with path.open("rb") as fh:
            raw_len = fh.read(8)
            if len(raw_len) != 8:
                raise ModelCardError(f"{path.name}: too short to be a safetensors file")
            (length,) = struct.unpack("<Q", raw_len)
            if length <= 0 or length > MAX_HEADER_BYTES:
                raise ModelCardError(f"{path.name}: not a safetensors file (header length {length})")
            header = json.loads(fh.read(length).decode("utf-8"))
    except OSError as exc:
        raise ModelCardError(f"cannot read {path}: {exc.strerror or exc}") from None
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError):
        raise ModelCardError(f"{path.name}: not a safetensors file (header is not JSON)") from None
    if not isinstance(header, dict):
        raise ModelCardError(f"{path.name}: not a safetensors file (header is not an object)")
    try:
        return _card_from_header(path, header)
    except (ValueError, TypeError, AttributeError, OverflowError, RecursionError) as exc:
        raise ModelCardError(f"{path.name}: malformed safetensors header ({type(exc).__name__}: {exc})") from None


def _card_from_header(path: Path, header: dict[str, Any]) -> ModelCard:
    meta = header.pop("__metadata__", None) or {}
    if not isinstance(meta, dict):
        raise TypeError("__metadata__ is not an object")
    card = ModelCard(path=path, metadata={str(k): _decode(str(v)) for k, v in meta.items()})
    for info in header.values():
        if isinstance(info, dict) and "shape" in info:
            shape = info["shape"]
            if not isinstance(shape, list) or not all(isinstance(d, int) and d >= 0 for d in shape):
                raise ValueError(f"tensor shape {str(shape)[:40]} is not a list of non-negative integers")
            card.tensors += 1
            n = 1
            for dim in shape:
                n *= dim
            card.parameters += n
    return card
